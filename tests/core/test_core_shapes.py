"""What we emit matches the AWS IoT API shapes in botocore's service model: members,
types, enums, ranges; timestamps are epoch-seconds numbers."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.core.evaluator import Detector
from agent.core.metrics import OPERATORS
from agent.core.profile import (
    BEHAVIOR_KEYS,
    CRITERIA_KEYS,
    STATISTICS,
    VALUE_KEYS,
    parse_dimension,
    parse_profile,
)
from tests.shapes import MODEL, shape_problems

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detect"


def emitted() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events of every type and value kind, and the active violations left."""
    doc = json.loads((FIXTURES / "profile-baseline.json").read_text())
    doc["behaviors"] += [
        {
            "name": "ssids",
            "metric": "ssids",
            "criteria": {"comparisonOperator": "in-set", "value": {"strings": ["home"]}},
        },
        {
            "name": "fds",
            "metric": "fds",
            "criteria": {"comparisonOperator": "not-in-set", "value": {"numbers": [6]}},
        },
        {
            "name": "msgs",
            "metric": "aws:num-messages-sent",
            "metricDimension": {"dimensionName": "sensor-topics", "operator": "NOT_IN"},
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}},
        },
    ]
    dimension = parse_dimension(json.loads((FIXTURES / "dimension-sensors.json").read_text()))
    d = Detector([parse_profile(doc)], "pi-7", dimensions=[dimension], stale_after_s=1000)
    bad = {
        "aws:all-bytes-out": 10**9,
        "aws:listening-tcp-ports": [22, 8080],
        "aws:destination-ip-addresses": ["203.0.113.9", "2001:db9::1"],
        "cpu_usage": 99.5,
        "ssids": ["evil"],
        "fds": [6],
        "aws:num-messages-sent": {"other/topic": 9},
    }
    good = {
        "aws:listening-tcp-ports": [22],
        "aws:destination-ip-addresses": ["192.0.2.1"],
        "cpu_usage": 1.0,
        "ssids": [],
        "fds": [],
    }
    events = []
    for t, metrics in [(0, bad), (10, bad), (400, bad), (410, good), (420, good)]:
        events += d.observe(1730000000 + t, metrics)
    active = [a.to_json() for a in d.active_violations()]
    events += d.tick(1730000000 + 5000)
    return [e.to_json() for e in events], active


def test_events_and_active_violations_match_the_aws_shapes():
    events, active = emitted()
    kinds = {(e["violationEventType"], next(iter(e["metricValue"]))) for e in events}
    assert {k for k, _ in kinds} == {"in-alarm", "alarm-cleared", "alarm-invalidated"}
    assert {v for _, v in kinds} == {"count", "number", "ports", "cidrs", "strings", "numbers"}
    assert active
    for event in events:
        assert shape_problems(event, MODEL.shape_for("ViolationEvent")) == []
    for violation in active:
        assert shape_problems(violation, MODEL.shape_for("ActiveViolation")) == []


def test_behaviors_match_the_aws_shape():
    events, _ = emitted()
    behaviors = json.loads((FIXTURES / "profile-baseline.json").read_text())["behaviors"]
    for behavior in behaviors + [e["behavior"] for e in events]:
        assert shape_problems(behavior, MODEL.shape_for("Behavior")) == []


def test_our_field_lists_are_the_aws_members():
    assert set(BEHAVIOR_KEYS) == set(MODEL.shape_for("Behavior").members)
    assert set(CRITERIA_KEYS) == set(MODEL.shape_for("BehaviorCriteria").members)
    assert set(VALUE_KEYS) == set(MODEL.shape_for("MetricValue").members)
    assert set(OPERATORS) == set(MODEL.shape_for("ComparisonOperator").enum)
    pattern = MODEL.shape_for("EvaluationStatistic").metadata["pattern"]
    assert all(re.fullmatch(pattern, s) for s in STATISTICS)
    assert len(STATISTICS) == pattern.count("|") + 1


@pytest.mark.parametrize("shape", ["ViolationEvent", "ActiveViolation"])
def test_the_checker_itself_catches_a_wrong_type(shape):
    events, active = emitted()
    doc = (events if shape == "ViolationEvent" else active)[0]
    time_key = "violationEventTime" if shape == "ViolationEvent" else "lastViolationTime"
    assert shape_problems({**doc, time_key: "2024-10-27T00:00:00Z"}, MODEL.shape_for(shape))
    assert shape_problems({**doc, "extra": 1}, MODEL.shape_for(shape))

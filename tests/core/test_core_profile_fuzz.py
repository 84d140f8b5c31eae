"""Fuzzed profile files: the validator accepts or refuses with ProfileError, never
anything else; and whatever it accepts runs: every judged behavior can be made to alarm,
and every event it raises encodes as JSON and as CBOR (no crash at the first alarm)."""

from __future__ import annotations

import copy
import ipaddress
import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as statistic
from hypothesis import strategies as st

from agent.core.cidr import CidrSet
from agent.core.evaluator import Detector
from agent.core.events import EventType, ViolationEvent
from agent.core.metrics import NUMERIC_KINDS, Kind
from agent.core.profile import (
    Behavior,
    ProfileError,
    SecurityProfile,
    aws_differences,
    check_behaviors,
    parse_detect_document,
)
from agent.publish.codec import encode

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "detect"


def _behavior(name: str, metric: str, **criteria: Any) -> dict[str, Any]:
    return {"name": name, "metric": metric, "criteria": criteria}


# Every kind of behavior, so that mutations reach every check and every judging path.
KITCHEN_SINK: dict[str, Any] = {
    "securityProfileName": "kitchen-sink",
    "behaviors": [
        _behavior(
            "ssids", "wifi_ssids", comparisonOperator="not-in-set", value={"strings": ["evil"]}
        ),
        _behavior("fds", "fds", comparisonOperator="in-set", value={"numbers": [1, 2.5]}),
        _behavior(
            "peers", "peers", comparisonOperator="not-in-cidr-set", value={"cidrs": ["::/0"]}
        ),
        _behavior(
            "udp",
            "aws:listening-udp-ports",
            comparisonOperator="in-port-set",
            value={"ports": [53, 123]},
        ),
        _behavior(
            "dest",
            "aws:destination-ip-addresses",
            comparisonOperator="in-cidr-set",
            value={"cidrs": ["10.0.0.0/8"]},
            consecutiveDatapointsToAlarm=2,
        ),
        _behavior(
            "stat",
            "aws:all-packets-in",
            comparisonOperator="greater-than",
            statisticalThreshold={"statistic": "p10"},
            durationSeconds=300,
        ),
        _behavior(
            "gauge",
            "aws:num-established-tcp-connections",
            comparisonOperator="greater-than-equals",
            value={"count": 2},
            durationSeconds=600,
            consecutiveDatapointsToClear=2,
        ),
        _behavior("cpu", "cpu", comparisonOperator="less-than", value={"number": 1e308}),
        _behavior(
            "msgs", "aws:num-messages-sent", comparisonOperator="less-than", value={"count": 9}
        ),
        {
            **_behavior(
                "topic-bytes",
                "aws:message-byte-size",
                comparisonOperator="less-than",
                value={"count": 100},
            ),
            "metricDimension": {"dimensionName": "sensor-topics", "operator": "NOT_IN"},
            "suppressAlerts": True,
        },
        _behavior("ml", "aws:all-bytes-in", mlDetectionConfig={"confidenceLevel": "LOW"}),
        {"name": "no-criteria", "metric": "aws:num-listening-udp-ports"},
    ],
}
SEEDS: list[object] = [
    KITCHEN_SINK,
    # One behavior each: a mutation lands on each field more often.
    *({"securityProfileName": "one", "behaviors": [b]} for b in KITCHEN_SINK["behaviors"]),
    json.loads((ROOT / "agent" / "data" / "default-profile.json").read_bytes()),
    json.loads((ROOT / "agent" / "data" / "example-profile.json").read_bytes()),
    *(json.loads(p.read_bytes()) for p in sorted(FIXTURES.glob("*.json"))),
]

# Placeholders for what json.dumps cannot write; the text gets the literal itself.
LITERALS = {
    "@@long-integer@@": "9" * 5000,
    "@@1e400@@": "1e400",
    "@@-1e400@@": "-1e400",
    "@@deep@@": "[" * 5000 + "]" * 5000,
    "@@deep-object@@": '{"a":' * 40 + "1" + "}" * 40,
}
NASTY: list[object] = [
    *LITERALS,
    "\ud800",
    "ok\udfffok",
    "\udc00\ud800",
    math.nan,
    math.inf,
    -math.inf,
    2**63 - 1,
    2**63,
    10**400,
    -1,
    0,
    65536,
    1e308,
    -0.0,
    "",
    "x" * 300,
    "\x00",
    list(range(30_000)),
    ["x"] * 20_000,
]
VOCABULARY: list[object] = [
    *(k for k in ("count", "number", "numbers", "strings", "ports", "cidrs")),
    "less-than",
    "less-than-equals",
    "greater-than",
    "greater-than-equals",
    "in-cidr-set",
    "not-in-cidr-set",
    "in-port-set",
    "not-in-port-set",
    "in-set",
    "not-in-set",
    "aws:all-bytes-out",
    "aws:listening-tcp-ports",
    "aws:destination-ip-addresses",
    "aws:num-messages-sent",
    "cpu",
    "p0",
    "p99.99",
    "HIGH",
    "IN",
    "NOT_IN",
    "10.0.0.0/8",
    "192.0.2.7/24",
    "2001:db8::/32",
    "sensor-topics",
    "a/#",
    True,
    False,
    None,
    1,
    22,
    300,
    2.5,
    [22, 443],
    ["a", "b"],
    [1.5, 2],
    ["10.0.0.0/8", "::/0"],
    {"count": 5},
    {"number": -2.5},
    {"strings": ["x", "y"]},
    {"ports": [22]},
    {"cidrs": ["192.0.2.0/24"]},
    {"numbers": [3]},
    {"statistic": "p50"},
    {"confidenceLevel": "HIGH"},
    {"dimensionName": "sensor-topics", "operator": "IN"},
    10,
    ["fe80::1%eth0/64"],
    [{"metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "t"}}],
]
KEYS = [
    "name",
    "metric",
    "criteria",
    "comparisonOperator",
    "value",
    "durationSeconds",
    "consecutiveDatapointsToAlarm",
    "statisticalThreshold",
    "mlDetectionConfig",
    "metricDimension",
    "suppressAlerts",
    "exportMetric",
    "behaviors",
    "securityProfileName",
    "stringValues",
    "additionalMetricsToRetainV2",
    "extra",
]

any_text = st.text(st.characters(exclude_categories=()), max_size=6)  # surrogates too
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
# Copies: a later mutation must not change the pools.
values = st.one_of(st.sampled_from(VOCABULARY), st.sampled_from(NASTY), json_values).map(
    copy.deepcopy
)


def tweaks(value: object) -> st.SearchStrategy[object]:
    """Values of the same JSON type as `value`, the odd ones among them likely."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, str):
        return st.sampled_from(["\ud800", "ok\udfffok", "", "x" * 300]) | any_text
    if isinstance(value, int | float):
        odd = [-1, 0, 2**63 - 1, 2**63, 10**400, "@@long-integer@@", "@@1e400@@", math.nan]
        return st.sampled_from(odd) | st.integers() | st.floats()
    if isinstance(value, list):  # the list with one more item like its first
        like = tweaks(value[0]) if value else values
        return like.map(lambda item: [*value, item])
    return values


def _places(doc: object) -> list[tuple[Any, Any]]:
    """(container, key or index) of every value below the root."""
    places: list[tuple[Any, Any]] = []
    stack: list[Any] = [doc]
    while stack:
        x = stack.pop()
        keys = range(len(x)) if isinstance(x, list) else list(x) if isinstance(x, dict) else ()
        for k in keys:
            places.append((x, k))
            stack.append(x[k])
    return places


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A seed document with a few values replaced, removed or added, as file bytes; now
    and then with its bytes damaged too."""
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        places = _places(doc)
        in_lists = [(c, k) for c, k in places if isinstance(c, list)]  # set members
        if not places:
            break
        container, key = draw(st.sampled_from(places) | st.sampled_from(in_lists or places))
        action = draw(st.sampled_from(["tweak", "tweak", "replace", "delete", "add"]))
        if action == "tweak":
            container[key] = copy.deepcopy(draw(tweaks(container[key])))
        elif action == "replace":
            container[key] = draw(values)
        elif action == "delete":
            del container[key]
        elif isinstance(container, list):
            container.insert(key, copy.deepcopy(draw(st.sampled_from(container) | values)))
        else:
            container[draw(st.sampled_from(KEYS) | any_text)] = draw(values)
    text = json.dumps(doc)  # NaN and Infinity as the JSON extensions Python reads
    for placeholder, literal in LITERALS.items():
        text = text.replace(json.dumps(placeholder), literal)
    data = text.encode()
    damage = draw(st.sampled_from(["none"] * 8 + ["byte", "cut"]))
    if damage != "none" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] if damage == "cut" else data[:at] + bytes([draw(st.integers(0, 255))])
    return data


def validate(data: bytes) -> list[SecurityProfile] | None:
    """The profiles accepted from `data`, or None when refused; a refusal is a
    ProfileError whose every line names the file and is printable."""
    try:
        items = parse_detect_document(data, "fuzz.json")
    except ProfileError as e:
        assert e.errors
        for line in e.located():
            assert line.startswith("fuzz.json")
            assert len(line) < 1000
            line.encode("utf-8")  # no lone surrogate reaches a terminal or a log
        return None
    profiles = [p for p in items if isinstance(p, SecurityProfile)]
    for profile in profiles:  # what loads has no device error; AWS's verdict adds extensions
        differences = aws_differences(profile)
        assert check_behaviors(profile.doc) == ([], differences)
    return profiles


# --- Making a behavior alarm ---------------------------------------------------------

ADDRESSES = ["0.0.0.0", "255.255.255.255", "10.1.2.3", "192.0.2.1", "::", "2001:db8::1"]


def _finite(x: int | float) -> bool:
    return type(x) is int or math.isfinite(x)


def _above(x: int | float) -> int | float:
    return x + 1 if type(x) is int else math.nextafter(x, math.inf)


def _below(x: int | float) -> int | float:
    return x - 1 if type(x) is int else math.nextafter(x, -math.inf)


# The operator says what is normal (value <op> threshold); these values are not.
VIOLATING = {
    "less-than": lambda threshold: threshold,
    "less-than-equals": _above,
    "greater-than": lambda threshold: threshold,
    "greater-than-equals": _below,
}


def _set_violation(behavior: Behavior) -> list[object] | None:
    """A list value that violates a set criterion, or None when none can."""
    criteria = behavior.criteria
    assert criteria is not None and criteria.operator is not None and criteria.value
    op = criteria.operator
    (members,) = criteria.value.values()
    if op.startswith("not-in-"):  # any member violates; an empty set never does
        if not members:
            return None
        if op == "not-in-cidr-set":
            return [str(ipaddress.ip_network(members[0], strict=False).network_address)]
        return [members[0]]
    if op == "in-cidr-set":
        cidrs = CidrSet(members)
        outside: list[object] = [a for a in ADDRESSES if a not in cidrs]
        return outside[:1] or None
    if op == "in-port-set":
        free = next((p for p in range(65536) if p not in set(members)), None)
        return None if free is None else [free]
    if behavior.kind is Kind.NUMBER_LIST:
        above = _above(max(members, default=0))
        return [above] if _finite(above) else None
    return ["".join(members) + "?"]


def alarm_values(behavior: Behavior) -> list[object] | None:
    """Sample values that, fed in order, make `behavior` alarm; None when no value can."""
    criteria = behavior.criteria
    assert criteria is not None and criteria.operator is not None
    n = criteria.to_alarm
    if criteria.statistic is not None:  # a baseline, then values beyond all before
        if criteria.operator.startswith("less"):
            return [5, *(10 * (j + 1) for j in range(n))]
        return [1000, *(100 - j for j in range(n))]
    assert criteria.value is not None
    if behavior.kind in NUMERIC_KINDS:
        (threshold,) = criteria.value.values()
        value = VIOLATING[criteria.operator](threshold)
        return [value] * n if _finite(value) else None
    value = _set_violation(behavior)
    return None if value is None else [value] * n


def drive(profile: SecurityProfile) -> list[ViolationEvent]:
    """Each judged behavior made to alarm on its own detector, then left to go stale;
    asserts that it alarmed. Returns every event."""
    events: list[ViolationEvent] = []
    inactive = {b for _, b, _ in Detector([profile], "t").inactive_behaviors()}
    for behavior in profile.behaviors:
        if behavior.criteria is None or behavior.name in inactive:
            continue
        samples = alarm_values(behavior)
        if samples is None:
            continue
        detector = Detector(
            [profile], "thing-1", stale_after_s=1000, baseline_s=1e300, min_baseline_datapoints=1
        )
        step = behavior.criteria.duration_s or 10
        t = 0.0
        for value in samples:
            events += detector.observe(t, {behavior.metric: value})
            t += step
        events += detector.tick(t)
        alarms = [
            e
            for e in events
            if e.behavior is behavior.doc and e.violation_event_type is EventType.IN_ALARM
        ]
        assert alarms, f"{behavior.name} did not alarm on {samples}"
        events += detector.tick(t + 10_000)  # stale: alarm-invalidated
    return events


def assert_encodable(events: list[ViolationEvent]) -> None:
    for event in events:
        doc = event.to_json()
        for fmt in ("json", "cbor"):
            encode(doc, fmt)


# Sample values as collectors produce them: JSON-able, any shape (a mismatch is ignored).
sample_values = st.one_of(
    st.integers(0, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 65535), max_size=4),
    st.lists(st.sampled_from(ADDRESSES), max_size=4),
    st.lists(st.text(max_size=4), max_size=4),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4),
)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(documents(), st.lists(sample_values, max_size=6))
def test_fuzzed_profiles_are_refused_cleanly_or_run_and_encode(data, randoms):
    profiles = validate(data)
    statistic("refused" if profiles is None else f"accepted {min(len(profiles), 2)} profiles")
    for profile in profiles or []:
        events = drive(profile)
        detector = Detector([profile], "thing-1", min_baseline_datapoints=1)
        metrics = sorted({b.metric for b in profile.behaviors})
        for i, value in enumerate(randoms):
            if metrics:
                events += detector.observe(i * 100.0, {metrics[i % len(metrics)]: value})
        assert_encodable(events)


def test_the_seeds_are_accepted_and_every_kind_alarms():
    accepted = [validate(json.dumps(seed).encode()) for seed in SEEDS]
    names = [p.name for ps in accepted for p in ps or []]
    assert {"kitchen-sink", "edge-defender-default", "raspberry-pi-baseline"} <= set(names)
    (sink,) = validate(json.dumps(KITCHEN_SINK).encode()) or []
    events = drive(sink)
    alarmed = {e.behavior["name"] for e in events if e.violation_event_type is EventType.IN_ALARM}
    assert alarmed == {"ssids", "fds", "peers", "udp", "dest", "stat", "gauge", "cpu", "msgs"}
    assert_encodable(events)

"""The alarm state machine: datapoints, windows, consecutive counts, staleness, profile
updates, statistical thresholds, dimensions, state export and restore."""

import itertools
import json
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.evaluator import Detector, StateChanges
from agent.core.profile import SecurityProfile, parse_dimension, parse_profile

BYTES = "aws:all-bytes-out"
DAY = 86400


def behavior(
    name: str, metric: str = BYTES, op: str = "less-than", value: Any = 100, **criteria: Any
) -> dict[str, Any]:
    suppress = criteria.pop("suppressAlerts", None)
    crit: dict[str, Any] = {"comparisonOperator": op, **criteria}
    if "statisticalThreshold" not in criteria:
        crit["value"] = value if isinstance(value, dict) else {"count": value}
    doc: dict[str, Any] = {"name": name, "metric": metric, "criteria": crit}
    if suppress is not None:
        doc["suppressAlerts"] = suppress
    return doc


def profile(*behaviors: dict[str, Any], name: str = "p") -> SecurityProfile:
    return parse_profile({"securityProfileName": name, "behaviors": list(behaviors)})


def detector(*profiles: SecurityProfile, **kwargs: Any) -> Detector:
    ids = itertools.count(1)
    return Detector(list(profiles), "thing-1", id_factory=lambda: f"id-{next(ids)}", **kwargs)


def run(
    d: Detector, samples: list[tuple[float, dict[str, object]]]
) -> list[tuple[str, str, float, Any]]:
    """(type, behavior, time, metricValue) of every event."""
    out = []
    for t, metrics in samples:
        for e in d.observe(t, metrics):
            out.append(
                (
                    e.violation_event_type.value,
                    e.behavior["name"],
                    e.violation_event_time,
                    dict(e.metric_value),
                )
            )
    return out


def series(
    values: list[object], metric: str = BYTES, step: float = 10
) -> list[tuple[float, dict[str, object]]]:
    return [(i * step, {} if v is None else {metric: v}) for i, v in enumerate(values)]


# --- datapoints and consecutive counts ------------------------------------------------


@pytest.mark.parametrize(
    ("values", "to_alarm", "to_clear", "expected"),
    [
        # each sample is a datapoint; less-than 100 is violated by 100 and above
        ([50, 100, 50], 1, 1, [("in-alarm", 10), ("alarm-cleared", 20)]),
        ([99, 99.5, 50], 1, 1, []),
        # three violating in a row, broken once by a conforming one
        ([200, 200, 50, 200, 200, 200], 3, 1, [("in-alarm", 50)]),
        # while in alarm, a violating datapoint resets the conforming count
        ([200, 50, 200, 50, 50], 1, 2, [("in-alarm", 0), ("alarm-cleared", 40)]),
        # a missing metric makes no datapoint and breaks no run
        ([200, None, 200], 2, 1, [("in-alarm", 20)]),
        ([200, None, None], 1, 1, [("in-alarm", 0)]),
    ],
)
def test_consecutive_datapoints(values, to_alarm, to_clear, expected):
    d = detector(
        profile(
            behavior(
                "b", consecutiveDatapointsToAlarm=to_alarm, consecutiveDatapointsToClear=to_clear
            )
        )
    )
    assert [(kind, t) for kind, _, t, _ in run(d, series(values))] == expected


def test_event_fields_and_shared_violation_id():
    p = profile(behavior("out", value=100))
    d = detector(p)
    first = d.observe(0, {BYTES: 500})
    assert len(first) == 1
    assert first[0].to_json() == {
        "violationId": "id-1",
        "thingName": "thing-1",
        "securityProfileName": "p",
        "behavior": p.behaviors[0].doc,
        "metricValue": {"count": 500},
        "violationEventType": "in-alarm",
        "verificationState": "UNKNOWN",
        "violationEventTime": 0,
    }
    (active,) = d.active_violations()
    assert (active.violation_id, active.last_violation_value, active.violation_start_time) == (
        "id-1",
        {"count": 500},
        0,
    )
    d.observe(10, {BYTES: 700})
    (active,) = d.active_violations()
    assert (
        active.last_violation_value,
        active.last_violation_time,
        active.violation_start_time,
    ) == ({"count": 700}, 10, 0)
    (cleared,) = d.observe(20, {BYTES: 3})
    assert (cleared.violation_id, cleared.metric_value) == ("id-1", {"count": 3})
    assert d.active_violations() == []
    (again,) = d.observe(30, {BYTES: 900})
    assert again.violation_id == "id-2"


def test_in_alarm_emits_once_while_violating():
    d = detector(profile(behavior("b")))
    events = run(d, series([500] * 20))
    assert [kind for kind, *_ in events] == ["in-alarm"]


def test_suppressed_alerts_still_recorded_and_marked():
    d = detector(profile(behavior("quiet", suppressAlerts=True), behavior("loud")))
    events = d.observe(0, {BYTES: 500})
    assert [(e.behavior["name"], e.suppressed) for e in events] == [
        ("quiet", True),
        ("loud", False),
    ]
    assert sorted((a.behavior["name"], a.suppressed) for a in d.active_violations()) == [
        ("loud", False),
        ("quiet", True),
    ]


def test_behavior_without_criteria_never_alarms():
    p = parse_profile(
        {"securityProfileName": "p", "behaviors": [{"name": "keep", "metric": BYTES}]}
    )
    d = detector(p)
    assert run(d, series([10**12, 0, 10**12])) == []
    assert d.inactive_behaviors() == []


def test_ml_behaviors_are_reported_inactive_and_not_judged():
    ml = {
        "name": "ml",
        "metric": BYTES,
        "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
    }
    d = detector(parse_profile({"securityProfileName": "p", "behaviors": [ml, behavior("b")]}))
    (inactive,) = d.inactive_behaviors()
    assert (inactive.profile, inactive.behavior) == ("p", "ml")
    assert "mlDetectionConfig" in inactive.reason
    assert [name for _, name, _, _ in run(d, series([500]))] == ["b"]


def test_events_of_one_instant_come_in_profile_then_behavior_order():
    a = profile(behavior("z"), behavior("a"), name="second-loaded-first")
    b = profile(behavior("m"), name="alpha")
    d = detector(a, b)
    events = d.observe(0, {BYTES: 500})
    assert [(e.security_profile_name, e.behavior["name"]) for e in events] == [
        ("second-loaded-first", "z"),
        ("second-loaded-first", "a"),
        ("alpha", "m"),
    ]


def test_time_going_back_is_refused():
    d = detector(profile(behavior("b")))
    d.observe(100, {BYTES: 1})
    d.observe(100, {BYTES: 1})  # the same instant is fine
    with pytest.raises(ValueError, match="time went back"):
        d.observe(99.5, {BYTES: 1})
    with pytest.raises(ValueError, match="time went back"):
        d.tick(50)


# --- operators end to end, with the measured value in the event ---------------------


@pytest.mark.parametrize(
    ("b", "metric", "value", "event_value"),
    [
        (
            behavior("ports", "aws:listening-tcp-ports", "in-port-set", {"ports": [22]}),
            "aws:listening-tcp-ports",
            [22, 8080],
            {"ports": [22, 8080]},
        ),
        (
            behavior(
                "ip",
                "aws:destination-ip-addresses",
                "not-in-cidr-set",
                {"cidrs": ["2001:db8::/32"]},
            ),
            "aws:destination-ip-addresses",
            ["2001:db8::9"],
            {"cidrs": ["2001:db8::9"]},
        ),
        (
            behavior("cpu", "cpu_usage", "less-than", {"number": 50.5}),
            "cpu_usage",
            75.25,
            {"number": 75.25},
        ),
        (
            behavior("ssid", "ssids", "in-set", {"strings": ["home"]}),
            "ssids",
            ["home", "evil"],
            {"strings": ["home", "evil"]},
        ),
        (
            behavior("fds", "fds", "not-in-set", {"numbers": [6]}),
            "fds",
            [1, 6.0],
            {"numbers": [1, 6.0]},
        ),
        (
            behavior("conns", "aws:num-established-tcp-connections", "less-than-equals", 3),
            "aws:num-established-tcp-connections",
            4,
            {"count": 4},
        ),
    ],
)
def test_event_metric_value_holds_the_measured_value(b, metric, value, event_value):
    d = detector(profile(b))
    (event,) = d.observe(0, {metric: value})
    assert event.to_json()["metricValue"] == event_value


def test_value_of_the_wrong_shape_makes_no_datapoint_and_is_reported():
    d = detector(
        profile(behavior("ports", "aws:listening-tcp-ports", "in-port-set", {"ports": [22]}))
    )
    assert d.observe(0, {"aws:listening-tcp-ports": 8080}) == []
    (m,) = d.mismatches()
    assert (m.profile, m.behavior) == ("p", "ports") and "list" in m.reason
    assert d.datapoints == 0


def test_non_finite_number_is_reported_not_judged():
    d = detector(profile(behavior("cpu", "cpu", "less-than", {"number": 1})))
    assert d.observe(0, {"cpu": float("nan")}) == []
    assert [m.behavior for m in d.mismatches()] == ["cpu"]


# --- windows -------------------------------------------------------------------------


def test_window_sums_deltas_and_closes_on_the_next_sample_at_or_after_its_end():
    d = detector(profile(behavior("w", value=100, durationSeconds=60)))
    assert d.observe(0, {BYTES: 60}) == []
    assert d.observe(30, {BYTES: 50}) == []  # window [0, 60) holds 110, still open
    assert d.next_deadline() == 60
    (event,) = d.observe(60, {BYTES: 1})  # a sample at the end closes it
    assert (event.violation_event_time, event.metric_value) == (60, {"count": 110})


def test_any_sample_closes_a_window_even_without_the_metric():
    d = detector(profile(behavior("w", value=100, durationSeconds=60)))
    d.observe(10, {BYTES: 500})
    (event,) = d.observe(200, {"aws:all-bytes-in": 1})
    assert event.violation_event_time == 60


def test_gauge_window_keeps_the_last_value():
    metric = "aws:num-established-tcp-connections"
    d = detector(profile(behavior("c", metric, "less-than", 5, durationSeconds=60)))
    d.observe(0, {metric: 50})
    d.observe(50, {metric: 2})
    assert d.observe(60, {metric: 50}) == []  # [0, 60) ends with 2: normal
    (event,) = d.observe(125, {metric: 1})  # [60, 120) ends with 50
    assert (event.violation_event_time, event.metric_value) == (120, {"count": 50})


def test_windows_without_samples_make_no_datapoint_and_the_clock_closes_windows():
    d = detector(
        profile(behavior("w", value=100, durationSeconds=60, consecutiveDatapointsToAlarm=2))
    )
    d.observe(0, {BYTES: 500})
    assert d.tick(59.9) == []
    assert d.tick(60) == []  # first violating datapoint, at 60
    assert d.next_deadline() is None
    d.observe(600, {BYTES: 500})  # windows [60, 600) were empty: no datapoints
    (event,) = d.tick(660)
    assert (event.violation_event_type, event.violation_event_time) == ("in-alarm", 660)


def test_open_windows_are_not_judged_without_a_later_sample():
    d = detector(profile(behavior("w", value=100, durationSeconds=300)))
    assert run(d, series([500, 500, 500])) == []


def test_windows_of_different_lengths_close_in_time_order():
    d = detector(
        profile(
            behavior("long", value=10, durationSeconds=120),
            behavior("short", value=10, durationSeconds=60),
        )
    )
    d.observe(10, {BYTES: 50})
    events = d.observe(500, {})
    assert [(e.behavior["name"], e.violation_event_time) for e in events] == [
        ("short", 60),
        ("long", 120),
    ]


# --- staleness --------------------------------------------------------------------------


def test_stale_alarm_is_invalidated_at_exactly_last_datapoint_plus_two_days():
    d = detector(profile(behavior("b")))
    d.observe(1000, {BYTES: 500})
    assert d.next_deadline() == 1000 + 172800
    assert d.tick(1000 + 172800 - 0.001) == []
    (event,) = d.tick(1000 + 172800 + 5000)
    assert (event.violation_event_type, event.violation_event_time) == (
        "alarm-invalidated",
        1000 + 172800,
    )
    assert event.violation_id == "id-1" and event.metric_value == {"count": 500}
    assert d.active_violations() == [] and d.next_deadline() is None


def test_a_datapoint_at_the_stale_instant_comes_after_the_invalidation():
    d = detector(profile(behavior("b")))
    d.observe(0, {BYTES: 500})
    events = d.observe(172800, {BYTES: 600})
    assert [
        (e.violation_event_type.value, e.violation_id, e.violation_event_time) for e in events
    ] == [
        ("alarm-invalidated", "id-1", 172800),
        ("in-alarm", "id-2", 172800),
    ]


def test_datapoints_while_in_alarm_keep_it_fresh():
    d = detector(
        profile(behavior("b", consecutiveDatapointsToAlarm=2, consecutiveDatapointsToClear=2)),
        stale_after_s=100,
    )
    samples = [(0, {BYTES: 500}), (10, {BYTES: 500}), (20, {BYTES: 1}), (100, {BYTES: 500})]
    assert [(kind, t) for kind, _, t, _ in run(d, samples)] == [("in-alarm", 10)]
    # the last datapoint at 100 (not the in-alarm at 10) sets the deadline: 200
    assert d.next_deadline() == 200
    events = run(d, [(250, {BYTES: 1}), (260, {BYTES: 500})])
    # after the invalidation the violating count starts from zero: 1 of 2, no alarm
    assert [(kind, t) for kind, _, t, _ in events] == [("alarm-invalidated", 200)]


def test_staleness_is_configurable_and_sits_between_windows_in_time_order():
    d = detector(profile(behavior("w", value=100, durationSeconds=60)), stale_after_s=90)
    d.observe(0, {BYTES: 500})
    (alarm,) = d.observe(100, {BYTES: 500})  # closes [0, 60): in alarm at 60
    assert alarm.violation_event_time == 60
    # [60, 120) closes at 120 (violating: fresh again), so staleness comes at 210
    events = d.observe(400, {})
    assert [(e.violation_event_type.value, e.violation_event_time) for e in events] == [
        ("alarm-invalidated", 210)
    ]


# --- profile updates ------------------------------------------------------------------


def test_update_keeps_unchanged_and_invalidates_changed_and_removed():
    old = profile(behavior("same"), behavior("changed"), behavior("removed"), behavior("quiet"))
    other = profile(behavior("x"), name="gone")
    d = detector(old, other)
    assert len(d.observe(0, {BYTES: 500})) == 5
    new = profile(
        behavior("quiet", suppressAlerts=True),  # only suppressAlerts changed: state kept
        behavior("same"),
        behavior("changed", value=1000),
        behavior("fresh"),
    )
    events = d.update_profiles([new], now=50)
    assert [
        (
            e.security_profile_name,
            e.behavior["name"],
            e.violation_event_type.value,
            e.violation_event_time,
        )
        for e in events
    ] == [
        ("p", "changed", "alarm-invalidated", 50),
        ("p", "removed", "alarm-invalidated", 50),
        ("gone", "x", "alarm-invalidated", 50),
    ]
    active = {a.behavior["name"]: a for a in d.active_violations()}
    assert sorted(active) == ["quiet", "same"]
    assert active["quiet"].suppressed and active["quiet"].violation_id == "id-4"
    # the kept alarms continue: no new in-alarm for them; changed and fresh start over
    events = d.observe(60, {BYTES: 500})
    assert [e.behavior["name"] for e in events] == ["fresh"]
    assert [e.violation_event_type.value for e in events] == ["in-alarm"]


def test_update_closes_windows_the_clock_passed_before_switching():
    d = detector(profile(behavior("w", value=100, durationSeconds=60)))
    d.observe(0, {BYTES: 500})
    events = d.update_profiles([profile(behavior("w", value=100, durationSeconds=60))], now=70)
    assert [(e.violation_event_type.value, e.violation_event_time) for e in events] == [
        ("in-alarm", 60)
    ]


def test_duplicate_profile_names_are_refused():
    with pytest.raises(ValueError, match="given twice"):
        detector(profile(behavior("a")), profile(behavior("b")))


# --- statistical thresholds -----------------------------------------------------------


def stat_behavior(
    statistic: str, metric: str = BYTES, op: str = "less-than-equals", **criteria: Any
) -> dict[str, Any]:
    return behavior("stat", metric, op, statisticalThreshold={"statistic": statistic}, **criteria)


def test_statistical_threshold_needs_the_minimum_baseline():
    d = detector(profile(stat_behavior("p100")), min_baseline_datapoints=30)
    # 30 datapoints judge nothing, however large the last
    assert run(d, [(i, {BYTES: v}) for i, v in enumerate([*range(1, 30), 10**9])]) == []
    # the 31st is judged against p100 of the 30 before it (10**9): normal
    assert run(d, [(30, {BYTES: 10**9})]) == []
    assert [kind for kind, *_ in run(d, [(31, {BYTES: 10**9 + 1})])] == ["in-alarm"]


def test_statistical_threshold_interpolates_like_numpy():
    d = detector(profile(stat_behavior("p50")), min_baseline_datapoints=4)
    run(d, [(i, {BYTES: v}) for i, v in enumerate([10, 40, 20, 30])])
    # p50 of 10, 20, 30, 40 is 25: 25 conforms to less-than-equals
    assert run(d, [(4, {BYTES: 25})]) == []
    # now 10, 20, 25, 30, 40: p50 is 25 and 25.5 violates
    assert [kind for kind, *_ in run(d, [(5, {BYTES: 25.5})])] == ["in-alarm"]


def test_violating_datapoints_join_the_baseline():
    d = detector(profile(stat_behavior("p0", op="greater-than-equals")), min_baseline_datapoints=1)
    d.observe(0, {BYTES: 100})
    assert [kind for kind, *_ in run(d, [(1, {BYTES: 50})])] == ["in-alarm"]  # below p0 = 100
    # the baseline is now 100, 50: p0 = 50, so 50 conforms and clears
    assert [kind for kind, *_ in run(d, [(2, {BYTES: 50})])] == ["alarm-cleared"]


def test_baseline_counts_only_earlier_datapoints_in_the_period():
    d = detector(profile(stat_behavior("p100")), min_baseline_datapoints=2, baseline_s=100)
    run(d, [(0, {BYTES: 1000}), (50, {BYTES: 10}), (60, {BYTES: 20})])
    # at 100 the baseline is [0, 100): 1000 at t=0 is still in it
    assert run(d, [(100, {BYTES: 900})]) == []
    # at 101 it has gone: p100 of 10, 20, 900 is 900
    assert run(d, [(101, {BYTES: 800})]) == []
    assert [kind for kind, *_ in run(d, [(102, {BYTES: 901})])] == ["in-alarm"]


def test_datapoints_of_the_same_instant_do_not_judge_each_other():
    d = detector(profile(stat_behavior("p100")), min_baseline_datapoints=1)
    d.observe(0, {BYTES: 5})
    # both at t=1 are judged against [5] only
    assert run(d, [(1, {BYTES: 5}), (1, {BYTES: 6})]) == [("in-alarm", "stat", 1, {"count": 6})]


def test_negative_baseline_value_stops_judging_until_it_leaves():
    d = detector(
        profile(stat_behavior("p100", metric="temp")), min_baseline_datapoints=2, baseline_s=100
    )
    samples = [(0, -5), (10, 1), (20, 2), (30, 1000)]
    assert run(d, [(t, {"temp": v}) for t, v in samples]) == []  # -5 in every baseline
    assert run(d, [(101, {"temp": 1000})]) == []  # -5 has left: p100 = 1000, conforms
    events = run(d, [(102, {"temp": 1000.5})])
    assert events == [("in-alarm", "stat", 102, {"number": 1000.5})]


def test_sketched_baseline_keeps_the_whole_period():
    d = detector(
        profile(stat_behavior("p100")), min_baseline_datapoints=2, exact_baseline_datapoints=3
    )
    run(d, [(i, {BYTES: v}) for i, v in enumerate([10**6, 1, 2, 3])])
    # beyond 3 datapoints the baseline is a sketch, and nothing is dropped: p100 stays
    # 10**6 (exact: the maximum is kept)
    assert run(d, [(4, {BYTES: 10**6})]) == []
    assert [kind for kind, *_ in run(d, [(5, {BYTES: 10**6 + 1})])] == ["in-alarm"]


def test_fleet_threshold_overrides_the_local_one():
    d = detector(profile(stat_behavior("p99")))
    d.set_fleet_threshold("p", "stat", 50)
    (event,) = d.observe(0, {BYTES: 51})  # judged at once, no baseline needed
    assert event.violation_event_type == "in-alarm"
    d.set_fleet_threshold("p", "stat", None)  # back to local: a baseline of 1 is too short
    assert d.observe(1, {BYTES: 1}) == []
    assert len(d.active_violations()) == 1
    with pytest.raises(KeyError):
        d.set_fleet_threshold("p", "nope", 1)
    plain = detector(profile(behavior("b")))
    with pytest.raises(ValueError, match="statisticalThreshold"):
        plain.set_fleet_threshold("p", "b", 1)


# --- dimensions -------------------------------------------------------------------------

SENT = "aws:num-messages-sent"
SENSORS = parse_dimension(
    {"name": "sensors", "type": "TOPIC_FILTER", "stringValues": ["sensors/+/temp", "alerts/#"]}
)


def dimensioned(name: str, operator: str | None, metric: str = SENT, limit: int = 10) -> dict:
    doc = behavior(name, metric, "less-than", limit)
    doc["metricDimension"] = {"dimensionName": "sensors"}
    if operator:
        doc["metricDimension"]["operator"] = operator
    return doc


def test_topic_filter_dimension_narrows_message_metrics():
    p = profile(
        dimensioned("in", None),
        dimensioned("out", "NOT_IN"),
        behavior("all", SENT, "less-than", 10),
        dimensioned("size", "IN", "aws:message-byte-size", 100),
    )
    d = detector(p, dimensions=[SENSORS])
    per_topic = {"sensors/a/temp": 6, "alerts": 5, "other/x": 2, "sensors/a/temp/x": 1}
    events = d.observe(0, {SENT: per_topic, "aws:message-byte-size": {"alerts/y": 150, "z": 999}})
    assert [(e.behavior["name"], dict(e.metric_value)) for e in events] == [
        ("in", {"count": 11}),
        ("all", {"count": 14}),
        ("size", {"count": 150}),
    ]


def test_per_topic_values_must_be_numbers():
    d = detector(profile(behavior("all", SENT, "less-than", 10)))
    assert d.observe(0, {SENT: {"a": "many"}}) == []
    assert [m.reason for m in d.mismatches()] == ["per-topic values must be finite numbers"]


def test_a_plain_number_serves_behaviors_without_a_dimension_only():
    d = detector(
        profile(dimensioned("in", None), behavior("all", SENT, "less-than", 10)),
        dimensions=[SENSORS],
    )
    assert [e.behavior["name"] for e in d.observe(0, {SENT: 50})] == ["all"]
    assert [m.behavior for m in d.mismatches()] == ["in"]


def test_behavior_on_a_missing_dimension_is_inactive():
    d = detector(profile(dimensioned("in", None)))
    (inactive,) = d.inactive_behaviors()
    assert inactive.behavior == "in" and "sensors" in inactive.reason
    # a new dimension set makes it judged
    d.update_profiles([profile(dimensioned("in", None))], now=0, dimensions=[SENSORS])
    assert d.inactive_behaviors() == []
    assert [e.behavior["name"] for e in d.observe(1, {SENT: {"alerts": 99}})] == ["in"]


def test_changed_dimension_filters_invalidate_the_alarm():
    d = detector(profile(dimensioned("in", None)), dimensions=[SENSORS])
    d.observe(0, {SENT: {"alerts": 99}})
    narrower = parse_dimension(
        {"name": "sensors", "type": "TOPIC_FILTER", "stringValues": ["alerts"]}
    )
    events = d.update_profiles([profile(dimensioned("in", None))], now=5, dimensions=[narrower])
    assert [e.violation_event_type.value for e in events] == ["alarm-invalidated"]


# --- export and restore -----------------------------------------------------------------


def test_restored_detector_neither_repeats_nor_forgets_an_alarm():
    p = profile(
        behavior("plain", consecutiveDatapointsToClear=2),
        behavior("w", value=100, durationSeconds=60),
        stat_behavior("p100"),
    )
    d = detector(p, min_baseline_datapoints=3)
    run(d, [(0, {BYTES: 5}), (1, {BYTES: 6}), (2, {BYTES: 7}), (3, {BYTES: 500}), (4, {BYTES: 1})])
    state = json.loads(json.dumps(d.export_state()))  # JSON-able
    assert state["format"] == 2

    again = detector(p, min_baseline_datapoints=3)
    again.restore_state(state)
    assert [a.to_json() for a in again.active_violations()] == [
        a.to_json() for a in d.active_violations()
    ]
    assert again.next_deadline() == d.next_deadline()
    (cleared,) = again.observe(5, {BYTES: 1})  # the plain alarm's second conforming one
    assert (cleared.violation_event_type, cleared.violation_id) == ("alarm-cleared", "id-1")
    d.observe(5, {BYTES: 1})
    # the open window [0, 60) and the baseline came back too
    samples = [(61, {BYTES: 1}), (62, {BYTES: 10**6})]
    events = run(again, samples)
    assert events == run(d, samples)
    assert [(kind, name, t) for kind, name, t, _ in events] == [
        ("in-alarm", "w", 60),  # 520 bytes in [0, 60), most of them before the restart
        ("in-alarm", "plain", 62),
        ("in-alarm", "stat", 62),  # judged: the restored baseline holds enough datapoints
    ]


def test_restore_invalidates_alarms_of_behaviors_changed_meanwhile():
    d = detector(profile(behavior("a"), behavior("b")))
    d.observe(0, {BYTES: 500})
    state = d.export_state()
    changed = detector(profile(behavior("a"), behavior("b", value=1000)))
    changed.restore_state(state)
    assert changed.next_deadline() == 0  # due at once
    events = changed.tick(30)
    assert [
        (e.behavior["name"], e.violation_event_type.value, e.violation_id, e.violation_event_time)
        for e in events
    ] == [("b", "alarm-invalidated", "id-2", 30)]
    assert [a.behavior["name"] for a in changed.active_violations()] == ["a"]
    with pytest.raises(ValueError, match="time went back"):
        changed.observe(-1, {})


def rule_states(d: Detector) -> dict[str, dict[str, Any]]:
    """The behavior name -> its saved state."""
    rules = d.export_state()["rules"]
    return {r["behavior"]: r for r in rules.values() if "behavior" in r}


def old_state(d: Detector, **extra: dict[str, Any]) -> dict[str, Any]:
    """A format 1 state of `d`'s rules (their signatures as the detector makes them)."""
    signatures = {r.behavior.name: r.signature for r in d._rules}
    rules = [
        {**state, "signature": signatures[name], **extra.get(name, {})}
        for name, state in rule_states(d).items()
    ]
    return {"format": 1, "now": 0, "orphans": [], "rules": rules}


@pytest.mark.parametrize(
    "bad",
    [
        {"window": {"end": "soon", "value": 1}},
        {"window": {"end": 60, "value": float("nan")}},
        {"fleetThreshold": "high"},
        {"run": "x"},
        {"violation": {"violationId": "v"}},
        {"pending": [[2, 1], [3, 1]]},
    ],
)
def test_malformed_state_is_refused_and_changes_nothing(bad):
    d = detector(profile(behavior("a"), stat_behavior("p50")))
    state = d.export_state()
    for rule in state["rules"].values():
        rule.update({"a": {"run": 1}, "stat": bad}.get(rule.get("behavior"), {}))
    with pytest.raises(ValueError, match="alarm state: malformed"):
        d.restore_state(state)
    assert [r["run"] for r in rule_states(d).values()] == [0, 0]
    # the same in a format 1 state, and a raw baseline out of time order
    for old_bad in (bad, {"baseline": [[2, 1], [1, 1]]}):
        with pytest.raises(ValueError, match="alarm state: malformed"):
            d.restore_state(old_state(d, a={"run": 1}, stat=old_bad))
        assert [r["run"] for r in rule_states(d).values()] == [0, 0]


@pytest.mark.parametrize("state", [None, {}, {"format": 99}, [1]])
def test_state_of_another_format_is_refused(state):
    with pytest.raises(ValueError, match="not a format 2 state"):
        detector(profile(behavior("a"))).restore_state(state)


# --- incremental state ------------------------------------------------------------------


def keys_of(changes: dict[str, Any], name: str) -> list[str]:
    return [k for k in changes if k.startswith(f"p/{name}#")]


def apply(store: dict[str, dict[str, Any]], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = json.loads(json.dumps(value))  # what a store gives back


def test_export_changes_gives_only_what_changed():
    d = detector(profile(behavior("plain"), stat_behavior("p99")), min_baseline_datapoints=3)
    first = d.export_changes()
    (plain,) = keys_of(first.rules, "plain")
    (stat,) = keys_of(first.rules, "stat")
    assert set(first.rules) == {"detector", plain, stat} and first.buckets == {}
    for key in (plain, stat):
        assert re.fullmatch(r"[A-Za-z0-9:_-]+/[A-Za-z0-9:_-]+#[0-9a-f]{16}", key)
    run(d, [(0, {BYTES: 5}), (10, {BYTES: 6})])
    changes = d.export_changes()
    # the plain rule stayed normal; the statistical one has a datapoint pending and one in
    # its current time bucket (14 d / 84 = 4 h wide: bucket 0)
    assert set(changes.rules) == {"detector", stat}
    assert changes.rules[stat]["pending"] == [[10, 6]]
    assert changes.buckets == {f"{stat}@0": {"raw": [[0, 5]]}}
    assert d.export_changes() == StateChanges({}, {})
    everything = d.export_state_changes()  # for a store that starts afresh
    assert set(everything.rules) == {"detector", plain, stat}
    assert list(everything.buckets) == [f"{stat}@0"]
    assert d.export_changes() == StateChanges({}, {})


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 399), st.lists(st.integers(0, 399), max_size=20))
def test_a_store_of_the_changes_restores_the_same_run(seed, cut, saves):
    """Saving at random instants and restarting from the store changes no event, and the
    baseline comes back bucket for bucket (exact, then sketched, then expiring)."""
    p = profile(
        behavior("plain", consecutiveDatapointsToAlarm=2, consecutiveDatapointsToClear=2),
        behavior("w", value=300, durationSeconds=20),
        stat_behavior("p90"),
    )
    rng = random.Random(seed)
    samples = [(i * 3.0, {BYTES: rng.choice([1, 50, 99, 150, 10**6])}) for i in range(400)]
    options = {"min_baseline_datapoints": 5, "exact_baseline_datapoints": 20, "baseline_s": 300}
    d = detector(p, **options)
    twin = detector(p, **options)
    store: dict[str, dict[str, Any]] = {}
    buckets: dict[str, dict[str, Any]] = {}
    for i, sample in enumerate(samples[:cut]):
        assert run(d, [sample]) == run(twin, [sample])
        if i in saves:
            changes = d.export_changes()
            assert changes == twin.export_changes()  # nothing depends on chance or order
            apply(store, changes.rules)
            apply(buckets, changes.buckets)
    changes = d.export_changes()
    apply(store, changes.rules)
    apply(buckets, changes.buckets)
    again = detector(p, **options)
    again.restore(store, buckets)
    assert again.export_changes() == StateChanges({}, {})  # a restart rewrites nothing
    assert run(again, samples[cut:]) == run(d, samples[cut:])
    assert again.export_state()["buckets"] == d.export_state()["buckets"]
    # the first save after the restart keeps the store whole, though it wrote only changes
    changes = again.export_changes()
    apply(store, changes.rules)
    apply(buckets, changes.buckets)
    whole = json.loads(json.dumps(again.export_state()))
    assert (store, buckets) == (whole["rules"], whole["buckets"])


def test_a_dropped_behavior_takes_its_keys_and_buckets_with_it():
    d = detector(profile(behavior("plain"), stat_behavior("p99")))
    run(d, [(t * 5000.0, {BYTES: 1}) for t in range(8)])  # 4 h buckets 0 to 2
    (stat,) = keys_of(d.export_changes().rules, "stat")
    d.update_profiles([profile(behavior("plain"))], now=40000)
    changes = d.export_changes()
    assert changes.rules == {"detector": {"now": 40000}, stat: None}
    assert changes.buckets == {f"{stat}@{k}": None for k in range(3)}


def test_an_orphaned_alarm_is_kept_in_the_store_until_it_ends():
    d = detector(profile(behavior("b")))
    d.observe(0, {BYTES: 500})
    store: dict[str, dict[str, Any]] = {}
    apply(store, d.export_changes().rules)
    (old,) = keys_of(store, "b")
    changed = detector(profile(behavior("b", value=1000)))
    changed.restore(store, {})
    changes = changed.export_changes()
    assert len([k for k in keys_of(changes.rules, "b") if k != old]) == 1  # the new rule
    # the alarm is not forgotten before it ends
    assert changes.rules[old] == {"violation": store[old]["violation"]}
    (event,) = changed.tick(30)
    assert (event.violation_event_type, event.violation_id) == ("alarm-invalidated", "id-1")
    assert changed.export_changes().rules == {"detector": {"now": 30}, old: None}


def test_a_format_1_state_keeps_its_raw_baseline():
    """An upgraded device keeps its baseline: the raw datapoints become time buckets."""
    p = profile(stat_behavior("p100"))
    values = [5, 4, 3, 2, 1] * 8
    lived = detector(p, min_baseline_datapoints=30)
    run(lived, [(t, {BYTES: v}) for t, v in enumerate(values)])
    (rule,) = lived._rules
    old = {
        "format": 1,
        "now": 39,
        "orphans": [],
        "rules": [
            {
                "profile": "p",
                "behavior": "stat",
                "signature": rule.signature,
                "run": 0,
                "baseline": [[t, v] for t, v in enumerate(values)],
            }
        ],
    }
    upgraded = detector(p, min_baseline_datapoints=30)
    upgraded.restore_state(old)
    samples = [(40, {BYTES: 5}), (41, {BYTES: 6})]  # p100 of them is 5
    assert run(upgraded, samples) == run(lived, samples) == [("in-alarm", "stat", 41, {"count": 6})]
    assert upgraded.export_state() == lived.export_state()

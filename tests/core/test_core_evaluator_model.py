"""The detector against tiny reference models of the spec, on generated histories."""

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.evaluator import Detector
from agent.core.profile import parse_profile

BYTES = "aws:all-bytes-out"
LIMIT = 100


def make(to_alarm: int, to_clear: int, duration: int | None = None, stale: float = 150) -> Detector:
    criteria: dict[str, Any] = {
        "comparisonOperator": "less-than",
        "value": {"count": LIMIT},
        "consecutiveDatapointsToAlarm": to_alarm,
        "consecutiveDatapointsToClear": to_clear,
    }
    if duration:
        criteria["durationSeconds"] = duration
    doc = {
        "securityProfileName": "p",
        "behaviors": [{"name": "b", "metric": BYTES, "criteria": criteria}],
    }
    return Detector([parse_profile(doc)], "t", stale_after_s=stale)


def alarm_model(
    datapoints: list[tuple[float, int]],
    clock: list[float],
    to_alarm: int,
    to_clear: int,
    stale: float,
) -> list[tuple[str, float, int]]:
    """Two counters, as the spec words it; staleness checked whenever the clock moves."""
    events: list[tuple[str, float, int]] = []
    in_alarm = False
    violating = conforming = 0
    last = 0.0
    alarm_number = 0
    # at one instant the clock (staleness) comes first, datapoints keep their order
    moments = sorted(
        [(t, 1, v) for t, v in datapoints] + [(t, 0, 0) for t in clock], key=lambda m: m[:2]
    )
    for t, is_datapoint, value in moments:
        if in_alarm and t >= last + stale:
            events.append(("alarm-invalidated", last + stale, alarm_number))
            in_alarm = False
            violating = conforming = 0
        if not is_datapoint:
            continue
        last = t
        if value >= LIMIT:
            violating, conforming = violating + 1, 0
        else:
            violating, conforming = 0, conforming + 1
        if not in_alarm and violating >= to_alarm:
            alarm_number += 1
            events.append(("in-alarm", t, alarm_number))
            in_alarm, violating, conforming = True, 0, 0
        elif in_alarm and conforming >= to_clear:
            events.append(("alarm-cleared", t, alarm_number))
            in_alarm, violating, conforming = False, 0, 0
    return events


def normalised(events: list[Any]) -> list[tuple[str, float, int]]:
    """(type, time, alarm number): ids become the order of their first appearance."""
    numbers: dict[str, int] = {}
    return [
        (
            e.violation_event_type.value,
            e.violation_event_time,
            numbers.setdefault(e.violation_id, len(numbers) + 1),
        )
        for e in events
    ]


history = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 10, 60, 149, 150, 151, 400]),
        st.one_of(st.none(), st.sampled_from([0, 99, 100, 500])),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(history, st.integers(1, 4), st.integers(1, 4))
def test_alarm_logic_matches_the_model(steps, to_alarm, to_clear):
    d = make(to_alarm, to_clear)
    t = 0.0
    got = []
    datapoints = []
    clock = []
    for gap, value in steps:
        t += gap
        clock.append(t)
        if value is None:
            got += d.observe(t, {"aws:all-bytes-in": 1})  # a sample without the metric
        else:
            datapoints.append((t, value))
            got += d.observe(t, {BYTES: value})
    assert normalised(got) == alarm_model(datapoints, clock, to_alarm, to_clear, 150)


@settings(max_examples=150, deadline=None)
@given(history, st.integers(1, 3), st.integers(1, 3), st.sampled_from([20, 60]))
def test_windows_match_the_model(steps, to_alarm, to_clear, duration):
    d = make(to_alarm, to_clear, duration, stale=10**9)
    t = 0.0
    got = []
    samples = []
    for gap, value in steps:
        t += gap
        samples.append((t, value))
        got += d.observe(t, {} if value is None else {BYTES: value})
    # A window [kD, (k+1)D) with samples is one datapoint, the sum of its deltas, once a
    # sample at or after its end is seen; windows still open at the end are not judged.
    sums: dict[int, int] = {}
    for ts, value in samples:
        if value is not None:
            sums[int(ts // duration)] = sums.get(int(ts // duration), 0) + value
    end = samples[-1][0] if samples else 0
    datapoints = [
        ((k + 1) * duration, v) for k, v in sorted(sums.items()) if (k + 1) * duration <= end
    ]
    assert normalised(got) == alarm_model(datapoints, [], to_alarm, to_clear, 10**9)

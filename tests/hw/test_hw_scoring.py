"""hw/scoring.py: detection, latency against the goal, false alarms, on hand-made events
and on events of the agent's own evaluator."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from agent.core.evaluator import Detector
from agent.core.profile import parse_profile
from hw.scenario import EXAMPLE_ADDRESSES, load_scenarios
from hw.scoring import TOLERANCE_S, ScenarioResult, score, score_scenario, summary

T0 = 1_800_000_005.0  # attack start, 5 s into a 10 s window (1_800_000_000 is a multiple of 10, 30)

LISTENER = {
    "securityProfileName": "listener",
    "behaviors": [
        {
            "name": "tcp-ports",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
        },
        {
            "name": "udp-count",
            "metric": "aws:num-listening-udp-ports",
            "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 1}},
        },
    ],
}
EXFIL = {
    "securityProfileName": "exfil",
    "behaviors": [
        {
            "name": "bytes-out",
            "metric": "aws:all-bytes-out",
            "criteria": {
                "comparisonOperator": "less-than",
                "value": {"count": 100_000},
                "durationSeconds": 30,
            },
        }
    ],
}

SCENARIOS = Path(__file__).resolve().parents[2] / "hw" / "scenarios"
_ids = itertools.count()


def event(
    profile: str, behavior: str, t: float, kind: str = "in-alarm", thing: str = "rig-dut"
) -> dict[str, Any]:
    return {
        "violationId": f"v{next(_ids)}",
        "thingName": thing,
        "securityProfileName": profile,
        "behavior": {"name": behavior},
        "metricValue": {"count": 1},
        "violationEventType": kind,
        "verificationState": "UNKNOWN",
        "violationEventTime": t,
    }


def run(
    events: list[dict[str, Any]],
    *,
    expected: tuple[tuple[str, str] | tuple[str, str, str | None], ...] = (
        ("listener", "tcp-ports"),
    ),
    profiles: tuple[dict[str, Any], ...] = (LISTENER,),
    attack_start: float | None = T0,
    deadline_s: float = 30.0,
    interval_s: float = 1.0,
    clock_offset_s: float = 0.0,
    end: float = T0 + 60,
    lead_s: float = 0.0,
) -> ScenarioResult:
    return score(
        name="s",
        expected=list(expected),
        profiles=list(profiles),
        interval_s=interval_s,
        deadline_s=deadline_s,
        benign=attack_start is None,
        attack_start=attack_start,
        end=end,
        events=events,
        metrics=[],
        clock_offset_s=clock_offset_s,
        lead_s=lead_s,
    )


def test_detected_within_one_interval_meets_the_goal() -> None:
    r = run([event("listener", "tcp-ports", T0 + 1.2)])
    assert r.detected and r.met
    assert r.latency_s == pytest.approx(1.2)
    assert r.goal_s == pytest.approx(2.0)  # one interval + 1 s
    assert r.false_alarms == 0


def test_late_detection_is_detected_but_misses_the_goal() -> None:
    r = run([event("listener", "tcp-ports", T0 + 5.0)])
    assert r.detected and not r.met
    assert r.latency_s == pytest.approx(5.0)


def test_alarm_after_the_deadline_or_before_the_attack_is_a_miss() -> None:
    r = run(
        [
            event("listener", "tcp-ports", T0 - TOLERANCE_S - 0.1),  # warm-up
            event("listener", "tcp-ports", T0 + 30.5),
        ]
    )
    assert not r.detected and not r.met
    assert r.latency_s is None and r.latencies_s == [None]
    assert r.false_alarms == 0  # an expected behavior's alarm is never a false one


def test_alarm_just_before_the_attack_within_tolerance_counts() -> None:
    r = run([event("listener", "tcp-ports", T0 - TOLERANCE_S / 2)])
    assert r.detected and r.met
    assert r.latency_s == pytest.approx(-TOLERANCE_S / 2)


def test_wrong_behavior_is_a_miss_and_a_false_alarm() -> None:
    r = run([event("listener", "udp-count", T0 + 1.0)])
    assert not r.detected
    assert r.false_alarms == 1


def test_alarm_ends_are_not_alarms() -> None:
    r = run(
        [
            event("listener", "tcp-ports", T0 + 1.0, "alarm-cleared"),
            event("listener", "udp-count", T0 + 1.0, "alarm-invalidated"),
        ]
    )
    assert not r.detected and r.false_alarms == 0


def test_false_alarms_counted_from_attack_start_to_end_only() -> None:
    r = run(
        [
            event("listener", "udp-count", T0 - 3.0),  # warm-up: not judged
            event("listener", "tcp-ports", T0 + 1.0),
            event("listener", "udp-count", T0 + 2.0),
            event("listener", "udp-count", T0 + 61.0),  # after end
        ]
    )
    assert r.detected and r.met
    assert r.false_alarms == 1


def test_device_clock_offset_is_corrected() -> None:
    offset = 100.0  # the device's clock is 100 s ahead of the rig's
    r = run([event("listener", "tcp-ports", T0 + offset + 1.5)], clock_offset_s=offset)
    assert r.detected and r.met
    assert r.latency_s == pytest.approx(1.5)
    uncorrected = run([event("listener", "tcp-ports", T0 + offset + 1.5)])
    assert not uncorrected.detected


def test_every_expected_behavior_must_alarm_and_latency_is_the_largest() -> None:
    both = (("listener", "tcp-ports"), ("listener", "udp-count"))
    r = run(
        [event("listener", "tcp-ports", T0 + 0.5), event("listener", "udp-count", T0 + 1.5)],
        expected=both,
    )
    assert r.detected and r.latency_s == pytest.approx(1.5)
    assert r.latencies_s == [pytest.approx(0.5), pytest.approx(1.5)]
    one = run([event("listener", "tcp-ports", T0 + 0.5)], expected=both)
    assert not one.detected and one.latency_s is None
    assert one.latencies_s == [pytest.approx(0.5), None]


def test_benign_every_alarm_in_the_span_is_false() -> None:
    events = [
        event("listener", "tcp-ports", T0 + 1.0),
        event("listener", "tcp-ports", T0 + 2.0, "alarm-cleared"),
        event("exfil", "bytes-out", T0 + 10.0),
        event("exfil", "bytes-out", T0 + 100.0),  # after end
    ]
    r = run(events, expected=(), profiles=(LISTENER, EXFIL), attack_start=None)
    assert r.false_alarms == 2
    assert not r.met and not r.detected
    assert r.goal_s is None and r.latency_s is None
    quiet = run(events[1:2], expected=(), attack_start=None)
    assert quiet.met and quiet.false_alarms == 0


@pytest.mark.parametrize(
    ("attack_start", "offset", "goal"),
    [
        (1_800_000_000.0, 0.0, 30 + 1),  # at a window's start: that window's end
        (1_800_000_020.0, 0.0, 10 + 1),  # 20 s in: the same window's end
        (1_800_000_028.5, 0.0, 1.5 + 1),  # its first sample is still in the window
        (1_800_000_029.5, 0.0, 30.5 + 1),  # its first sample may be in the next one
        (1_800_000_020.0, 5.0, 5 + 1),  # windows align on the device's clock
    ],
)
def test_windowed_goal_is_the_aligned_window_end_plus_one_second(
    attack_start: float, offset: float, goal: float
) -> None:
    r = run(
        [],
        expected=(("exfil", "bytes-out"),),
        profiles=(EXFIL,),
        attack_start=attack_start,
        clock_offset_s=offset,
    )
    assert r.goal_s == pytest.approx(goal)


def test_goal_is_the_largest_among_expected_behaviors() -> None:
    r = run(
        [],
        expected=(("listener", "tcp-ports"), ("exfil", "bytes-out")),
        profiles=(LISTENER, EXFIL),
        attack_start=1_800_000_020.0,
    )
    assert r.goal_s == pytest.approx(11.0)


def test_consecutive_datapoints_to_alarm_add_intervals() -> None:
    doc = {
        "securityProfileName": "slow",
        "behaviors": [
            {
                "name": "b",
                "metric": "aws:num-listening-tcp-ports",
                "criteria": {
                    "comparisonOperator": "less-than",
                    "value": {"count": 3},
                    "consecutiveDatapointsToAlarm": 3,
                },
            }
        ],
    }
    r = run([], expected=(("slow", "b"),), profiles=(doc,), interval_s=2.0)
    assert r.goal_s == pytest.approx(3 * 2.0 + 1)


def test_agent_evaluator_windowed_alarm_meets_the_goal() -> None:
    """The agent's own Detector, fed 1 s samples with a burst from the attack on: its
    in-alarm is timed at the window end the goal is computed from."""
    detector = Detector([parse_profile(EXFIL)], "rig-dut")
    attack_start = 1_800_000_012.3
    events = []
    t = 1_800_000_000.0
    while t < 1_800_000_075:
        burst = 60_000 if t > attack_start else 0
        events += [e.to_json() for e in detector.observe(t, {"aws:all-bytes-out": 500 + burst})]
        t += 1.0
    r = run(
        events,
        expected=(("exfil", "bytes-out"),),
        profiles=(EXFIL,),
        attack_start=attack_start,
        end=t,
    )
    assert r.detected and r.met
    assert r.latency_s == pytest.approx(1_800_000_030 - attack_start)
    assert r.goal_s == pytest.approx(1_800_000_030 - attack_start + 1)


def test_expected_behavior_missing_from_profiles_is_named() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*'listener'"):
        run([], expected=(("listener", "nope"),))


def test_benign_flag_must_agree_with_expected_and_attack_start() -> None:
    with pytest.raises(ValueError, match="benign"):
        run([], attack_start=None)  # expected given, no attack


TCP = ("listener", "tcp-ports")


def test_an_expected_thing_must_be_the_alarms_thing_name() -> None:
    right = run([event(*TCP, T0 + 1.0, thing="sensor2")], expected=((*TCP, "sensor2"),))
    assert right.detected and right.met and right.false_alarms == 0
    assert right.expected == [{"profile": "listener", "behavior": "tcp-ports", "thing": "sensor2"}]
    wrong = run([event(*TCP, T0 + 1.0, thing="sensor1")], expected=((*TCP, "sensor2"),))
    assert not wrong.detected and not wrong.met and wrong.latencies_s == [None]
    assert wrong.false_alarms == 1  # another thing's alarm: one the attack should not raise


def test_without_a_thing_any_thing_name_matches() -> None:
    for expected in ((TCP,), ((*TCP, None),)):
        r = run([event(*TCP, T0 + 1.0, thing="sensor1")], expected=expected)
        assert r.detected and r.met and r.false_alarms == 0
        assert r.expected == [{"profile": "listener", "behavior": "tcp-ports"}]


def test_each_named_thing_must_alarm_and_others_are_false_alarms() -> None:
    both = ((*TCP, "sensor2"), (*TCP, "intruder"))
    events = [
        event(*TCP, T0 + 0.5, thing="intruder"),
        event(*TCP, T0 + 1.5, thing="sensor2"),
        event(*TCP, T0 + 1.8, thing="sensor1"),
        event(*TCP, T0 + 1.9, "alarm-cleared", thing="sensor1"),  # never an alarm
    ]
    r = run(events, expected=both)
    assert r.detected and r.latency_s == pytest.approx(1.5)
    assert r.latencies_s == [pytest.approx(1.5), pytest.approx(0.5)]
    assert r.false_alarms == 1  # sensor1's
    one = run(events[:1], expected=both)
    assert not one.detected and one.latencies_s == [None, pytest.approx(0.5)]


def test_the_lead_is_added_to_the_goal_and_latency_counts_from_the_attack_start() -> None:
    slow = [event(*TCP, T0 + 5.5)]
    r = run(slow, lead_s=4.0)
    assert r.goal_s == pytest.approx(1 + 1 + 4.0) and r.lead_s == 4.0
    assert r.latency_s == pytest.approx(5.5) and r.met
    assert not run(slow, lead_s=3.0).met  # goal 5 s
    assert not run(slow).met  # no lead: goal 2 s
    windowed = run(
        [], expected=(("exfil", "bytes-out"),), profiles=(EXFIL,), attack_start=1_800_000_020.0
    )
    with_lead = run(
        [],
        expected=(("exfil", "bytes-out"),),
        profiles=(EXFIL,),
        attack_start=1_800_000_020.0,
        lead_s=2.5,
    )
    assert with_lead.goal_s == pytest.approx(windowed.goal_s + 2.5)  # type: ignore[operator]


@pytest.mark.parametrize(("lead_s", "attack_start"), [(-1.0, T0), (31.0, T0), (1.0, None)], ids=str)
def test_a_lead_out_of_range_or_for_benign_is_refused(
    lead_s: float, attack_start: float | None
) -> None:
    expected = () if attack_start is None else (TCP,)
    with pytest.raises(ValueError, match="lead_s"):
        run([], expected=expected, attack_start=attack_start, lead_s=lead_s)


def test_score_scenario_reads_the_rigs_scenarios() -> None:
    scenarios = load_scenarios(SCENARIOS, None, EXAMPLE_ADDRESSES, quick=True)
    attack = next(s for s in scenarios if not s.benign)
    alarms = [event(e.profile, e.behavior, T0 + 0.5) for e in attack.expected]
    r = score_scenario(attack, T0, T0 + 10, alarms, [])
    assert r.name == attack.name and r.detected and r.met
    assert r.expected == [{"profile": e.profile, "behavior": e.behavior} for e in attack.expected]
    assert r.goal_s == pytest.approx(attack.interval_s + 1 + attack.lead_s)
    benign = next(s for s in scenarios if s.benign)
    everyone = [p for s in scenarios for p in s.profiles]
    b = score_scenario(benign, None, T0 + 10, alarms, [], profiles=everyone)
    assert b.profiles == everyone  # the report plots what the agent ran under
    assert b.false_alarms == len(alarms) and not b.met


def test_score_scenario_takes_the_things_and_the_lead_of_a_scenario() -> None:
    by_name = {s.name: s for s in load_scenarios(SCENARIOS, None, EXAMPLE_ADDRESSES, quick=True)}
    slow = by_name["slow-scan"]
    (want,) = slow.expected
    late = [event(want.profile, want.behavior, T0 + 5.5)]
    r = score_scenario(slow, T0, T0 + 10, late, [])
    assert r.lead_s == 4 and r.goal_s == pytest.approx(6.0) and r.met  # the 5th probe at 4 s
    storm = by_name["mqtt-auth-failure-storm"]
    assert [e.thing for e in storm.expected] == ["sensor2", "intruder"]
    profile, behavior = storm.expected[0].profile, storm.expected[0].behavior
    alarms = [event(profile, behavior, T0 + 1.0, thing=t) for t in ("sensor2", "intruder")]
    assert score_scenario(storm, T0, T0 + 10, alarms, []).met
    only_sensor1 = [event(profile, behavior, T0 + 1.0, thing="sensor1")]
    missed = score_scenario(storm, T0, T0 + 10, only_sensor1, [])
    assert not missed.detected and missed.false_alarms == 1


def test_summary_is_a_markdown_table() -> None:
    results = [
        run([event("listener", "tcp-ports", T0 + 1.25)]),
        run([], expected=(), attack_start=None),
        run([event(*TCP, T0 + 1.25, thing="sensor2")], expected=((*TCP, "sensor2"),), lead_s=0.2),
    ]
    lines = summary(results)
    assert lines[0].startswith("| scenario | expected | detected | latency (s) | goal (s) | met")
    assert lines[2] == "| s | listener/tcp-ports | yes | 1.2 | 2.0 | yes | 0 | - |"
    assert lines[3] == "| s | none (benign) | - | - | no alarm | yes | 0 | - |"
    assert (
        lines[4]
        == "| s | listener/tcp-ports for sensor2 | yes | 1.2 | 2.2 (lead 0.2) | yes | 0 | - |"
    )

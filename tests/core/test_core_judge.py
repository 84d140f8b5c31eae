"""The Judge: the device's Detector and a Detector per MQTT client of a gateway's broker,
fed samples and times by hand."""

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from agent.core.evaluator import Detector
from agent.core.judge import Judge, client_prefix
from agent.core.profile import SecurityProfile, parse_dimension, parse_profile

SENT = "aws:num-messages-sent"
FAILS = "aws:num-authorization-failures"
BYTES = "aws:all-bytes-out"


def profile() -> SecurityProfile:
    return parse_profile(
        {
            "securityProfileName": "gw",
            "behaviors": [
                {
                    "name": "few-messages",
                    "metric": SENT,
                    "criteria": {"comparisonOperator": "less-than", "value": {"count": 10}},
                },
                {
                    "name": "no-auth-failures",
                    "metric": FAILS,
                    "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}},
                },
                {
                    "name": "sensor-messages",
                    "metric": SENT,
                    "metricDimension": {"dimensionName": "sensors"},
                    "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}},
                },
                {
                    "name": "little-upload",
                    "metric": BYTES,
                    "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}},
                },
            ],
        }
    )


SENSORS = parse_dimension({"name": "sensors", "type": "TOPIC_FILTER", "stringValues": ["s/#"]})


def judge(clients: bool = True, max_clients: int = 100, dims: Any = (SENSORS,)) -> Judge:
    ids = itertools.count(1)

    def make(thing: str, profiles: list[SecurityProfile], unsourced: Mapping[str, str]) -> Detector:
        return Detector(
            profiles,
            thing,
            dimensions=dims,
            unsourced=unsourced,
            id_factory=lambda: f"id-{next(ids)}",
        )

    unsourced = {} if clients else {SENT: "watch off", FAILS: "watch off"}
    return Judge([profile()], "gateway", make, unsourced, clients=clients, max_clients=max_clients)


def brief(events: Any) -> list[tuple[str, str, str]]:
    return [(e.thing_name, e.behavior["name"], e.violation_event_type.value) for e in events]


def quiet(**extra: Any) -> dict[str, object]:
    return {SENT: {}, FAILS: {}, **extra}


def test_cloud_behaviors_are_judged_per_client_and_carry_its_id() -> None:
    j = judge()
    events = j.observe(
        10.0,
        {BYTES: 5000},
        {"sensor-1": quiet(**{SENT: {"s/1": 3, "cmd": 20}}), "sensor-2": quiet()},
    )
    assert brief(events) == [
        ("gateway", "little-upload", "in-alarm"),
        ("sensor-1", "few-messages", "in-alarm"),
    ]
    # The dimension narrows to s/#: 6 messages there make the second alarm.
    events = j.observe(20.0, {BYTES: 0}, {"sensor-1": quiet(**{SENT: {"s/1": 6}})})
    assert brief(events) == [
        ("gateway", "little-upload", "alarm-cleared"),
        ("sensor-1", "few-messages", "alarm-cleared"),
        ("sensor-1", "sensor-messages", "in-alarm"),
    ]
    assert sorted(v.thing_name for v in j.active_violations()) == ["sensor-1"]
    assert j.clients == ["sensor-2", "sensor-1"]


def test_device_detector_does_not_hold_cloud_behaviors_when_watching() -> None:
    j = judge()
    assert j.inactive_behaviors() == []
    # A client's values never reach the device's alarms, nor the reverse.
    events = j.observe(1.0, {SENT: 100}, {"c": {BYTES: 10**9}})
    assert events == []


def test_without_the_watch_cloud_behaviors_are_inactive_and_say_why() -> None:
    j = judge(clients=False)
    reasons = {(i.behavior, i.reason) for i in j.inactive_behaviors()}
    assert ("few-messages", f"{SENT}: watch off") in reasons
    assert ("no-auth-failures", f"{FAILS}: watch off") in reasons
    assert j.observe(1.0, {BYTES: 0}, {"c": quiet(**{FAILS: {"": 3}})}) == []
    assert j.clients == []


def test_state_round_trip_keeps_client_alarms() -> None:
    j = judge()
    j.observe(1.0, {}, {"a/b ü": quiet(**{FAILS: {"": 2}})})
    changes = j.export_changes()
    prefix = client_prefix("a/b ü")
    assert changes.rules[prefix + "client"] == {"clientId": "a/b ü"}
    assert any(k.startswith(prefix) and "no-auth-failures" in k for k in changes.rules)
    stored = {k: v for k, v in changes.rules.items() if v is not None}

    again = judge()
    again.restore(stored, {})
    assert [v.thing_name for v in again.active_violations()] == ["a/b ü"]
    (ended,) = again.observe(2.0, {}, {"a/b ü": quiet()})
    assert (ended.thing_name, ended.violation_event_type.value) == ("a/b ü", "alarm-cleared")
    assert ended.violation_id == j.active_violations()[0].violation_id
    # Nothing loaded unchanged is written again but what the datapoint changed.
    assert prefix + "client" not in again.export_changes().rules


def test_a_client_group_without_its_id_row_is_deleted() -> None:
    j = judge()
    j.observe(1.0, {}, {"c1": quiet(**{FAILS: {"": 2}})})
    stored = {k: v for k, v in j.export_changes().rules.items() if v is not None}
    prefix = client_prefix("c1")
    del stored[prefix + "client"]
    again = judge()
    again.restore(stored, {})
    assert again.active_violations() == []
    deleted = {k for k, v in again.export_changes().rules.items() if v is None}
    assert deleted == {k for k in stored if k.startswith(prefix)}


def test_the_least_recently_seen_client_without_an_alarm_makes_room() -> None:
    j = judge(max_clients=2)
    j.observe(1.0, {}, {"alarmed": quiet(**{FAILS: {"": 1}}), "idle": quiet()})
    j.export_changes()
    j.observe(2.0, {}, {"new": quiet()})
    assert sorted(j.clients) == ["alarmed", "new"]
    deleted = {k for k, v in j.export_changes().rules.items() if v is None}
    assert client_prefix("idle") + "client" in deleted
    assert all(k.startswith(client_prefix("idle")) for k in deleted)
    # With an alarm in both slots, a new client cannot be judged: it is counted.
    j.observe(3.0, {}, {"new": quiet(**{FAILS: {"": 1}})})
    j.observe(4.0, {}, {"third": quiet(**{FAILS: {"": 5}})})
    assert sorted(j.clients) == ["alarmed", "new"]
    assert j.unjudged_clients == 1


def test_switching_the_watch_off_ends_client_alarms() -> None:
    j = judge()
    j.observe(1.0, {}, {"c": quiet(**{FAILS: {"": 1}})})
    events = j.update_profiles(
        [profile()], 2.0, [SENSORS], unsourced={FAILS: "watch off"}, clients=False
    )
    assert brief(events) == [("c", "no-auth-failures", "alarm-invalidated")]
    assert j.clients == []
    assert j.active_violations() == []
    assert any(r.behavior == "no-auth-failures" for r in j.inactive_behaviors())


def test_time_never_goes_back() -> None:
    j = judge()
    j.observe(5.0, {}, {"c": quiet()})
    with pytest.raises(ValueError):
        j.observe(4.0, {}, {"c": quiet()})


def test_a_client_id_variable_scopes_each_client_to_its_own_topics() -> None:
    # An on-device extension: AWS IoT takes ${iot:ClientId} in a dimension literally.
    own = parse_dimension(
        {"name": "sensors", "type": "TOPIC_FILTER", "stringValues": ["d/${iot:ClientId}/#"]}
    )
    j = judge(dims=(own,))
    others = {"d/c1/t": 2, "d/c2/t": 9}
    events = j.observe(1.0, {}, {"c1": quiet(**{SENT: others}), "c2": quiet(**{SENT: others})})
    # Only c2's 9 messages on its own topics pass 5; c1 published 2 on its own.
    assert ("c2", "sensor-messages", "in-alarm") in brief(events)
    assert ("c1", "sensor-messages", "in-alarm") not in brief(events)
    # An id that would widen the filter keeps the variable: it matches only itself.
    events = j.observe(2.0, {}, {"a/+": quiet(**{SENT: {"d/a/+/t": 9, "d/x/t": 9}})})
    assert ("a/+", "sensor-messages", "in-alarm") not in brief(events)
    # A reload with new dimensions reads them for each client again.
    j.update_profiles([profile()], 3.0, [own])
    events = j.observe(4.0, {}, {"c1": quiet(**{SENT: {"d/c1/t": 7}})})
    assert ("c1", "sensor-messages", "in-alarm") in brief(events)

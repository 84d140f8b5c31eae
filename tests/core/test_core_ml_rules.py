"""ML behaviors in the rule core: judged by the model of their metric once the Detector
holds one, on the metric's rolling aggregate (sums of counters, largest gauge values over
the model's window, 5 minutes by default), with the consecutive counts, events carrying
violationEventAdditionalInfo, the window and the alarm kept across a restart; inactive
with a reason until then, and per MQTT client."""

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.core.evaluator import Detector, MlJudgement
from agent.core.judge import CLIENT_ML_REASON, Judge
from agent.core.ml import MIN_TRAINING_DAYS, Trainer
from agent.core.ml_window import Window, metric_kind
from agent.core.profile import SecurityProfile, parse_profile

BYTES = "aws:all-bytes-out"
LEVEL_LIMITS = {"LOW": 100.0, "MEDIUM": 200.0, "HIGH": 300.0}


class NoDrift:
    """No hourly drift judgement (agent.core.ml.Model.drift None)."""

    utc_offset_s = 0

    def drift_step(self, cusum: float, hour: int, median_y: float) -> float:
        return 0.0

    def drift_threshold(self, confidence: str) -> float | None:
        return None

    def drifting(self, cusum: float, confidence: str) -> bool:
        return False


@dataclass(frozen=True)
class StepModel(NoDrift):
    """A model whose verdict is plain to read: anomalous above the level's limit. Its
    10 s window holds one 10 s sample: a datapoint is that sample, from the second on."""

    window_s: float = 10.0

    def anomalous(self, t: float, value: float, confidence: str) -> bool:
        return value > LEVEL_LIMITS[confidence]


@dataclass
class Seen(NoDrift):
    """A 5-minute model that notes what it was asked to judge."""

    limit: float
    window_s: float = 300.0
    judged: list[tuple[float, float]] = field(default_factory=list)

    def anomalous(self, t: float, value: float, confidence: str) -> bool:
        if confidence == "LOW":
            self.judged.append((t, value))
        return value > self.limit


def ml(name: str, level: str, metric: str = BYTES, **criteria: Any) -> dict[str, Any]:
    crit = {"mlDetectionConfig": {"confidenceLevel": level}, **criteria}
    return {"name": name, "metric": metric, "criteria": crit}


def profile(*behaviors: dict[str, Any], name: str = "p") -> SecurityProfile:
    return parse_profile({"securityProfileName": name, "behaviors": list(behaviors)})


def detector(*profiles: SecurityProfile) -> Detector:
    ids = itertools.count(1)
    return Detector(list(profiles), "thing-1", id_factory=lambda: f"id-{next(ids)}")


def feed(d: Detector, values: Sequence[float], start: float = 0.0) -> list[dict[str, Any]]:
    out = []
    for i, v in enumerate(values):
        out += [e.to_json() for e in d.observe(start + 10 * i, {BYTES: v})]
    return out


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    return [
        (e["violationEventType"], e["behavior"]["name"], e["violationEventTime"]) for e in events
    ]


def test_without_a_model_ml_behaviors_are_inactive_with_the_models_status():
    d = detector(profile(ml("low", "LOW"), ml("high", "HIGH")))
    assert feed(d, [10_000]) == []
    reasons = {i.behavior: i.reason for i in d.inactive_behaviors()}
    assert reasons == {
        "low": f"mlDetectionConfig: no active model of {BYTES}: no model trained yet"
        " (PENDING_BUILD)",
        "high": f"mlDetectionConfig: no active model of {BYTES}: no model trained yet"
        " (PENDING_BUILD)",
    }
    d.set_models({BYTES: None}, {BYTES: "PENDING_BUILD: 40% of the datapoints"})
    assert {i.reason for i in d.inactive_behaviors()} == {
        f"mlDetectionConfig: no active model of {BYTES}: PENDING_BUILD: 40% of the datapoints"
    }
    assert d.ml_metrics() == [BYTES]


def test_one_model_judges_each_confidence_level_with_its_counts():
    d = detector(profile(ml("low", "LOW"), ml("high", "HIGH", consecutiveDatapointsToAlarm=2)))
    d.set_models({BYTES: StepModel()})
    assert d.inactive_behaviors() == []
    events = feed(d, [50, 50, 150, 350, 350, 50])
    assert brief(events) == [
        ("in-alarm", "low", 20.0),
        ("in-alarm", "high", 40.0),  # the second anomalous datapoint at HIGH
        ("alarm-cleared", "low", 50.0),
        ("alarm-cleared", "high", 50.0),
    ]
    assert [e["violationEventAdditionalInfo"] for e in events] == [
        {"confidenceLevel": "LOW"},
        {"confidenceLevel": "HIGH"},
        {"confidenceLevel": "LOW"},
        {"confidenceLevel": "HIGH"},
    ]
    assert events[0]["metricValue"] == {"count": 150}


def test_a_negative_value_is_a_mismatch_not_a_judgement():
    d = detector(profile(ml("temp", "LOW", metric="temp")))
    d.set_models({"temp": StepModel()})
    assert d.observe(0.0, {"temp": 1.0}) == []
    assert d.observe(10.0, {"temp": -5.0}) == []
    assert [(m.behavior, m.reason) for m in d.mismatches()] == [
        ("temp", "ML detection needs values >= 0, got -5.0")
    ]


def test_a_custom_metric_named_a_counter_is_summed_over_the_window():
    """A beacon's one connection every 5 minutes, then a second one beside it: summed,
    the windows that hold both say 2; as a plain custom number (the largest sample in the
    window) they say 1, as the windows with one connection do."""
    beacon = [1 if i % 30 == 0 else 0 for i in range(61)]  # 10 s samples
    doubled = [*beacon[:31], 1, *beacon[32:]]

    def judged(counts: list[int], counters: frozenset[str]) -> list[float]:
        model = Seen(limit=math.inf)
        d = Detector([profile(ml("conns", "LOW", metric="opened"))], "t", counters=counters)
        d.set_models({"opened": model})
        for i, n in enumerate(counts):
            assert d.observe(10.0 * i, {"opened": n}) == []
        return [v for _, v in model.judged]

    summed = judged(beacon, frozenset({"opened"}))
    assert len(summed) == 31 and set(summed) == {1}  # from 300 s on, one in each window
    assert max(judged(doubled, frozenset({"opened"}))) == 2
    assert set(judged(doubled, frozenset())) == {1}  # the largest sample: no difference


def test_a_real_model_judges_through_the_detector():
    """Trained on 5-minute sums of 10 s counts around 1000 (the same Window as the rule
    core's); a 10 s count of 10**6 alarms at once, as its sum does."""
    trainer = Trainer(0.0)
    window = Window(metric_kind(BYTES))
    t0 = MIN_TRAINING_DAYS * 86400.0 + 300  # 14 days of sums: the first at 300 s
    for i in range(round(t0 / 10)):
        total = window.add(i * 10.0, 1000 + (i % 7) * 10)
        if total is not None:
            trainer.add(i * 10.0, total)
    model = trainer.build(t0)
    assert model is not None and model.window_s == 300.0
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: model})
    assert feed(d, [1000 + (i % 7) * 10 for i in range(31)], start=t0) == []  # its first 300 s
    (event,) = feed(d, [10**6], start=t0 + 310)
    assert brief([event]) == [("in-alarm", "low", t0 + 310)]
    assert event["metricValue"]["count"] > 10**6  # the sum over the window


def test_active_violations_carry_the_confidence_level():
    d = detector(profile(ml("medium", "MEDIUM"), name="ml-prof"))
    d.set_models({BYTES: StepModel()})
    feed(d, [0, 250])
    (active,) = d.active_violations()
    doc = active.to_json()
    assert doc["violationEventAdditionalInfo"] == {"confidenceLevel": "MEDIUM"}
    assert doc["lastViolationValue"] == {"count": 250}


def test_static_behaviors_carry_no_additional_info():
    static = {
        "name": "static",
        "metric": BYTES,
        "criteria": {"comparisonOperator": "less-than", "value": {"count": 100}},
    }
    d = detector(profile(static))
    (event,) = feed(d, [500])
    assert "violationEventAdditionalInfo" not in event


def test_a_model_withdrawn_stops_judging_and_the_alarm_goes_stale():
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: StepModel()})
    assert brief(feed(d, [0, 500])) == [("in-alarm", "low", 10.0)]
    d.set_models({})
    assert feed(d, [0, 0], start=20) == []  # not judged: no clear
    assert [i.behavior for i in d.inactive_behaviors()] == ["low"]
    (ended,) = d.tick(172810.0)
    assert ended.violation_event_type.value == "alarm-invalidated"
    assert ended.to_json()["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}


def test_a_new_behavior_after_a_profile_update_gets_the_model_in_force():
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: StepModel()})
    feed(d, [0])
    d.update_profiles([profile(ml("low", "LOW"), ml("high", "HIGH"))], 0.0)
    assert d.inactive_behaviors() == []
    # the kept behavior's window goes on; the new one's starts empty
    assert brief(feed(d, [400, 400], start=10)) == [
        ("in-alarm", "low", 10.0),
        ("in-alarm", "high", 20.0),
    ]


def test_a_changed_confidence_level_invalidates_the_alarm():
    d = detector(profile(ml("b", "LOW")))
    d.set_models({BYTES: StepModel()})
    feed(d, [0, 150])
    (event,) = d.update_profiles([profile(ml("b", "HIGH"))], 20.0)
    assert event.violation_event_type.value == "alarm-invalidated"
    assert event.to_json()["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}
    assert feed(d, [150, 150], start=30) == []  # HIGH lets 150 pass


def test_an_alarm_survives_a_restart_and_clears_once_the_model_is_back():
    p = profile(ml("low", "LOW"))
    d = detector(p)
    d.set_models({BYTES: StepModel()})
    (first,) = feed(d, [0, 500])
    state = json.loads(json.dumps(d.export_state()))
    again = detector(p)
    again.restore_state(state)
    (active,) = again.active_violations()
    assert active.violation_id == first["violationId"]
    assert active.to_json()["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}
    assert feed(again, [500, 0], start=20) == []  # no model yet after the start
    again.set_models({BYTES: StepModel()})
    (cleared,) = feed(again, [0], start=40)
    assert (cleared["violationEventType"], cleared["violationId"]) == (
        "alarm-cleared",
        first["violationId"],
    )


def test_an_orphaned_ml_alarm_ends_with_its_confidence_level():
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: StepModel()})
    feed(d, [0, 500])
    state = d.export_state()
    changed = detector(profile(name="p"))
    changed.restore_state(state)
    (event,) = changed.tick(100.0)
    assert event.to_json()["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}


def test_client_ml_behaviors_stay_inactive_and_the_device_gets_the_models():
    sent = "aws:num-messages-sent"
    p = profile(ml("dev", "LOW"), ml("msgs", "LOW", metric=sent))

    def make(thing: str, profiles: list[SecurityProfile], unsourced: Any) -> Detector:
        return Detector(profiles, thing, unsourced=unsourced)

    judge = Judge([p], "gw", make, {}, clients=True)
    judge.set_models({BYTES: StepModel(), sent: StepModel()})
    assert judge.ml_metrics() == [BYTES]
    assert [(i.behavior, i.reason) for i in judge.inactive_behaviors()] == [
        ("msgs", CLIENT_ML_REASON)
    ]
    judge.observe(0.0, {BYTES: 500}, {"client-a": {sent: 10**6}})
    events = judge.observe(10.0, {BYTES: 500}, {"client-a": {sent: 10**6}})
    assert [(e.behavior["name"], e.thing_name) for e in events] == [("dev", "gw")]
    assert judge.clients == ["client-a"]  # judged for its other behaviors, not ML


CONNECTIONS = "aws:num-established-tcp-connections"


def test_a_counter_is_judged_by_its_sum_over_the_last_5_minutes():
    """20 B every 10 s: no datapoint is above the limit, their 5-minute sum is."""
    model = Seen(limit=500.0)
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: model})
    events = feed(d, [20] * 40)
    assert brief(events) == [("in-alarm", "low", 300.0)]  # judged once 300 s are covered
    assert model.judged[0] == (300.0, 600)
    assert [v for _, v in model.judged] == [600] * 10
    assert events[0]["metricValue"] == {"count": 600}  # the sum that was judged
    (active,) = d.active_violations()
    assert active.to_json()["lastViolationValue"] == {"count": 600}


def test_a_gauge_is_judged_by_its_largest_value_in_the_window():
    """A beacon: one more connection for one sample every 5 minutes is there at every
    datapoint."""
    model = Seen(limit=2.0)
    d = detector(profile(ml("low", "LOW", metric=CONNECTIONS)))
    d.set_models({CONNECTIONS: model})
    events = []
    for i in range(90):
        value = 3 if i % 30 == 12 else 2
        events += d.observe(10.0 * i, {CONNECTIONS: value})
    assert [v for _, v in model.judged] == [3] * 60
    assert brief([e.to_json() for e in events]) == [("in-alarm", "low", 300.0)]


def test_after_a_gap_no_judgement_until_the_window_is_full_again():
    """The agent down for 20 minutes: the first count after covers the gap and is never
    summed; the window judges again 300 s later."""
    model = Seen(limit=10**9)
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: model})
    feed(d, [10] * 40)
    judged = len(model.judged)
    feed(d, [10**6] + [10] * 29, start=1590.0)
    assert len(model.judged) == judged  # 1590 .. 1880 s: no datapoint
    feed(d, [10] * 3, start=1890.0)
    assert model.judged[judged:] == [(1890.0, 300), (1900.0, 300), (1910.0, 300)]


def test_the_window_survives_a_restart_like_the_alarm_state():
    """Restored within 5 minutes, the window goes on: no 5-minute blind spot after a
    restart, and the sums hold the samples from before it. 1 B/s throughout."""
    p = profile(ml("low", "LOW"))
    d = detector(p)
    d.set_models({BYTES: Seen(limit=10**9)})
    feed(d, [10] * 20)  # 0 .. 190 s
    rules = d.export_changes().rules
    (entry,) = [e for k, e in rules.items() if k != "detector"]
    assert entry is not None and len(entry["mlWindow"]["samples"]) == 20
    again = detector(p)
    again.restore(json.loads(json.dumps(rules)), {})
    model = Seen(limit=10**9)
    again.set_models({BYTES: model})
    feed(again, [60] + [10] * 12, start=250.0)  # down 60 s: the count at 250 covers it
    assert model.judged == [(300.0 + 10 * i, 300) for i in range(8)]
    fresh = detector(p)  # without the saved window: nothing judged before 550 s
    fresh.set_models({BYTES: (blind := Seen(limit=10**9))})
    feed(fresh, [60] + [10] * 12, start=250.0)
    assert blind.judged == []


def test_a_model_of_another_window_length_starts_the_window_again():
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: Seen(limit=10**9)})
    feed(d, [10] * 40)
    short = Seen(limit=10**9, window_s=30.0)
    d.set_models({BYTES: short})
    feed(d, [10] * 4, start=400.0)
    assert short.judged == [(430.0, 30)]
    same = Seen(limit=10**9, window_s=30.0)
    d.set_models({BYTES: same})  # the same length: the window goes on
    feed(d, [10], start=440.0)
    assert same.judged == [(440.0, 30)]


@dataclass
class Drifting(Seen):
    """Normal datapoint by datapoint; each whole hour adds 1 to the cusum, and a level
    alarms above its number of hours."""

    def drift_step(self, cusum: float, hour: int, median_y: float) -> float:
        return cusum + 1

    def drift_threshold(self, confidence: str) -> float | None:
        return {"LOW": 2, "MEDIUM": 3, "HIGH": 4}[confidence]

    def drifting(self, cusum: float, confidence: str) -> bool:
        return cusum > {"LOW": 2, "MEDIUM": 3, "HIGH": 4}[confidence]


def test_an_hourly_drift_alarms_and_its_cusum_survives_a_restart():
    p = profile(ml("low", "LOW"), ml("high", "HIGH"))
    d = detector(p)
    d.set_models({BYTES: Drifting(limit=10**9)})
    hour = 360  # samples of 10 s
    events = feed(d, [10] * (3 * hour + 1))
    # the window's first datapoint is at 300 s; hours 0, 1 and 2 end at 3600, 7200, 10800
    assert brief(events) == [("in-alarm", "low", 10800.0)]
    rules = d.export_changes().rules
    entries = [e for k, e in rules.items() if k != "detector"]
    assert sorted(e["mlDrift"]["cusum"] for e in entries) == [3, 3]
    again = detector(p)
    again.restore(json.loads(json.dumps(rules)), {})
    again.set_models({BYTES: Drifting(limit=10**9)})
    # back 10 minutes into hour 3 (its datapoints before the restart are lost, the rest
    # count), on into hour 5
    events = feed(again, [10] * (2 * hour), start=3 * 3600.0 + 600)
    assert brief(events) == [("in-alarm", "high", 5 * 3600.0)]


def test_ml_judgements_say_when_each_window_is_full_and_the_drift_sum():
    d = detector(profile(ml("low", "LOW"), ml("high", "HIGH"), ml("other", "LOW", metric="x")))
    assert d.ml_judgements() == []  # no model yet: inactive instead
    d.set_models({BYTES: Drifting(limit=10**9)})
    assert d.ml_judgements() == [
        MlJudgement("p", "low", None, 0.0, 2),
        MlJudgement("p", "high", None, 0.0, 4),
    ]
    feed(d, [10] * 2, start=100.0)
    assert [j.judged_from for j in d.ml_judgements()] == [400.0, 400.0]
    feed(d, [10] * 361, start=110.0)  # into the next hour: one whole hour done
    assert [j.cusum for j in d.ml_judgements()] == [1, 1]

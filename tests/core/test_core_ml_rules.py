"""ML behaviors in the rule core: judged by the model of their metric once the Detector
holds one, with the consecutive counts, events carrying violationEventAdditionalInfo,
state across a restart; inactive with a reason until then, and per MQTT client."""

import itertools
import json
from dataclasses import dataclass
from typing import Any

from agent.core.evaluator import Detector
from agent.core.judge import CLIENT_ML_REASON, Judge
from agent.core.ml import MIN_TRAINING_DAYS, Trainer
from agent.core.profile import SecurityProfile, parse_profile

BYTES = "aws:all-bytes-out"
LEVEL_LIMITS = {"LOW": 100.0, "MEDIUM": 200.0, "HIGH": 300.0}


@dataclass(frozen=True)
class StepModel:
    """A model whose verdict is plain to read: anomalous above the level's limit."""

    def anomalous(self, t: float, value: float, confidence: str) -> bool:
        return value > LEVEL_LIMITS[confidence]


def ml(name: str, level: str, metric: str = BYTES, **criteria: Any) -> dict[str, Any]:
    crit = {"mlDetectionConfig": {"confidenceLevel": level}, **criteria}
    return {"name": name, "metric": metric, "criteria": crit}


def profile(*behaviors: dict[str, Any], name: str = "p") -> SecurityProfile:
    return parse_profile({"securityProfileName": name, "behaviors": list(behaviors)})


def detector(*profiles: SecurityProfile) -> Detector:
    ids = itertools.count(1)
    return Detector(list(profiles), "thing-1", id_factory=lambda: f"id-{next(ids)}")


def feed(d: Detector, values: list[float], start: float = 0.0) -> list[dict[str, Any]]:
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
    events = feed(d, [50, 150, 350, 350, 50])
    assert brief(events) == [
        ("in-alarm", "low", 10.0),
        ("in-alarm", "high", 30.0),  # the second anomalous datapoint at HIGH
        ("alarm-cleared", "low", 40.0),
        ("alarm-cleared", "high", 40.0),
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
    assert d.observe(0.0, {"temp": -5.0}) == []
    assert [(m.behavior, m.reason) for m in d.mismatches()] == [
        ("temp", "ML detection needs values >= 0, got -5.0")
    ]


def test_a_real_model_judges_through_the_detector():
    trainer = Trainer(0.0)
    for i in range(MIN_TRAINING_DAYS * 24 * 120):  # 14 days at 30 s, around 1000
        trainer.add(i * 30.0, 1000.0 + (i % 7) * 10)
    model = trainer.build(MIN_TRAINING_DAYS * 86400.0)
    assert model is not None
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: model})
    t0 = MIN_TRAINING_DAYS * 86400.0
    events = feed(d, [1030, 1000, 10**6], start=t0)
    assert brief(events) == [("in-alarm", "low", t0 + 20)]


def test_active_violations_carry_the_confidence_level():
    d = detector(profile(ml("medium", "MEDIUM"), name="ml-prof"))
    d.set_models({BYTES: StepModel()})
    feed(d, [250])
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
    assert brief(feed(d, [500])) == [("in-alarm", "low", 0.0)]
    d.set_models({})
    assert feed(d, [0, 0], start=10) == []  # not judged: no clear
    assert [i.behavior for i in d.inactive_behaviors()] == ["low"]
    (ended,) = d.tick(172800.0)
    assert ended.violation_event_type.value == "alarm-invalidated"
    assert ended.to_json()["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}


def test_a_new_behavior_after_a_profile_update_gets_the_model_in_force():
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: StepModel()})
    d.update_profiles([profile(ml("low", "LOW"), ml("high", "HIGH"))], 0.0)
    assert d.inactive_behaviors() == []
    assert brief(feed(d, [400], start=10)) == [
        ("in-alarm", "low", 10.0),
        ("in-alarm", "high", 10.0),
    ]


def test_a_changed_confidence_level_invalidates_the_alarm():
    d = detector(profile(ml("b", "LOW")))
    d.set_models({BYTES: StepModel()})
    feed(d, [150])
    (event,) = d.update_profiles([profile(ml("b", "HIGH"))], 20.0)
    assert event.violation_event_type.value == "alarm-invalidated"
    assert event.to_json()["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}
    assert feed(d, [150], start=30) == []  # HIGH lets 150 pass


def test_an_alarm_survives_a_restart_and_clears_once_the_model_is_back():
    p = profile(ml("low", "LOW"))
    d = detector(p)
    d.set_models({BYTES: StepModel()})
    (first,) = feed(d, [500])
    state = json.loads(json.dumps(d.export_state()))
    again = detector(p)
    again.restore_state(state)
    (active,) = again.active_violations()
    assert active.violation_id == first["violationId"]
    assert active.to_json()["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}
    assert feed(again, [500, 0], start=10) == []  # no model yet after the start
    again.set_models({BYTES: StepModel()})
    (cleared,) = feed(again, [0], start=30)
    assert (cleared["violationEventType"], cleared["violationId"]) == (
        "alarm-cleared",
        first["violationId"],
    )


def test_an_orphaned_ml_alarm_ends_with_its_confidence_level():
    d = detector(profile(ml("low", "LOW")))
    d.set_models({BYTES: StepModel()})
    feed(d, [500])
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
    events = judge.observe(0.0, {BYTES: 500}, {"client-a": {sent: 10**6}})
    assert [(e.behavior["name"], e.thing_name) for e in events] == [("dev", "gw")]
    assert judge.clients == ["client-a"]  # judged for its other behaviors, not ML

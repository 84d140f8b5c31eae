"""The ML Detect model (agent.core.ml): when a model exists, that it follows the daily and
weekly cycle in local time, what each confidence level flags, bounded training state,
bad input refused by name, and the saved form."""

from __future__ import annotations

import json
import math
import random
import re
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from agent.core.ml import (
    CONFIDENCE_LEVELS,
    DRIFT_CAP_ABOVE,
    MIN_DATAPOINTS,
    MIN_DRIFT_HOURS,
    MIN_TRAINING_DAYS,
    Drift,
    Model,
    Trainer,
)

DAY = 86_400.0
HOUR = 3_600.0
T0 = 1_767_571_200.0  # Monday 2026-01-05 00:00 UTC
TRAIN_S = MIN_TRAINING_DAYS * DAY
Source = Callable[[random.Random, float], float]


def local_hour(t: float, offset: int = 0) -> float:
    return ((t + offset) % DAY) / HOUR


def daily(r: random.Random, t: float) -> float:
    """Bytes out: quiet at night (about 2 kB), busy in the evening (about 40 kB)."""
    d = abs(local_hour(t) - 20)
    busy = math.exp(-0.5 * (min(d, 24 - d) / 3) ** 2)
    return (2000 + 40_000 * busy) * r.lognormvariate(0, 0.2)


def points(source: Source, step: float, seed: int = 1, days: float = 14) -> Iterator[tuple]:
    r = random.Random(seed)
    for i in range(round(days * DAY / step)):
        t = T0 + i * step
        yield t, source(r, t)


def train(source: Source, step: float = 30.0, seed: int = 1, offset: int = 0) -> Model:
    trainer = Trainer(T0, utc_offset_s=offset)
    for t, v in points(source, step, seed):
        trainer.add(t, v)
    model = trainer.build(T0 + TRAIN_S)
    assert model is not None
    return model


@pytest.fixture(scope="module")
def model() -> Model:
    return train(daily)


def test_no_model_before_14_days_and_25000_datapoints() -> None:
    trainer = Trainer(T0)
    for t, v in points(daily, 60.0):  # 14 days at 60 s: 20,160 datapoints
        trainer.add(t, v)
    assert trainer.datapoints == 20_160 < MIN_DATAPOINTS
    assert trainer.build(T0 + 30 * DAY) is None
    dense = Trainer(T0)
    for t, v in points(daily, 30.0):
        dense.add(t, v)
    assert dense.first_t == T0
    assert dense.build(T0 + TRAIN_S - 1) is None  # a second short of 14 days
    built = dense.build(T0 + TRAIN_S)
    assert built is not None
    assert (built.trained_at, built.datapoints, built.first_t) == (T0 + TRAIN_S, 40_320, T0)


def test_the_same_value_is_normal_in_the_evening_and_anomalous_at_night(model: Model) -> None:
    night, evening = T0 + TRAIN_S + 3 * HOUR, T0 + TRAIN_S + 20 * HOUR
    evening_value = 42_000.0
    assert model.score(evening, evening_value) < 1
    for level in CONFIDENCE_LEVELS:
        assert not model.anomalous(evening, evening_value, level)
        assert model.anomalous(night, evening_value, level)
    median = 2000 + 40_000 * math.exp(-0.5 * (7 / 3) ** 2)  # of the source at 03:00
    explained = model.explain(night, median)
    assert explained["expected"] == pytest.approx(median, rel=0.05)
    assert explained["score"] < 0.2


def test_a_doubled_night_is_seen_at_low(model: Model) -> None:
    r = random.Random(7)
    night = [T0 + TRAIN_S + 2 * HOUR + i * 30 for i in range(120)]  # 02:00-03:00
    doubled = [model.anomalous(t, 2 * daily(r, t), "LOW") for t in night]
    normal = [model.anomalous(t, daily(r, t), "LOW") for t in night]
    assert sum(doubled) > 10 * max(1, sum(normal))


def test_less_than_normal_is_not_anomalous(model: Model) -> None:
    evening = T0 + TRAIN_S + 20 * HOUR
    assert model.score(evening, 0) == 0.0
    assert not any(model.anomalous(evening, 0, level) for level in CONFIDENCE_LEVELS)


def test_levels_are_nested_and_low_flags_most(model: Model) -> None:
    r = random.Random(3)
    flags = dict.fromkeys(CONFIDENCE_LEVELS, 0)
    for t, v in points(daily, 30.0, seed=99, days=3):
        t += TRAIN_S
        v *= r.choice((1, 1, 1, 1.5, 2, 3))
        low, medium, high = (model.anomalous(t, v, level) for level in CONFIDENCE_LEVELS)
        assert low >= medium >= high
        assert (
            model.threshold(t, "LOW") <= model.threshold(t, "MEDIUM") <= model.threshold(t, "HIGH")
        )
        flags["LOW"] += low
        flags["MEDIUM"] += medium
        flags["HIGH"] += high
    assert flags["LOW"] > flags["MEDIUM"] > flags["HIGH"] > 0


def test_few_false_flags_on_fresh_benign_data(model: Model) -> None:
    benign = [(t + TRAIN_S, v) for t, v in points(daily, 30.0, seed=2, days=7)]
    rate = {
        level: sum(model.anomalous(t, v, level) for t, v in benign) / len(benign)
        for level in CONFIDENCE_LEVELS
    }
    assert rate["LOW"] < 0.005
    assert rate["HIGH"] < 0.0005


def test_limits_in_explain_are_where_each_level_starts(model: Model) -> None:
    t = T0 + TRAIN_S + 3.3 * HOUR
    explained = model.explain(t, 1.0)
    for level in CONFIDENCE_LEVELS:
        limit = explained[f"limit_{level}"]
        assert model.anomalous(t, limit * 1.001, level)
        assert not model.anomalous(t, limit * 0.999, level)


def test_no_step_on_the_hour(model: Model) -> None:
    before = model.explain(T0 + TRAIN_S + 7 * HOUR - 1, 5000)
    after = model.explain(T0 + TRAIN_S + 7 * HOUR, 5000)
    assert after["expected"] == pytest.approx(before["expected"], rel=1e-3)


def test_weekends_have_their_own_baseline() -> None:
    def weekend_busy(r: random.Random, t: float) -> float:
        weekend = ((t - T0) // DAY) % 7 >= 5  # T0 is a Monday
        return (50_000.0 if weekend else 1000.0) * r.lognormvariate(0, 0.1)

    model = train(weekend_busy)
    saturday, wednesday = T0 + 19 * DAY + 12 * HOUR, T0 + 16 * DAY + 12 * HOUR
    assert not model.anomalous(saturday, 50_000, "LOW")
    assert model.anomalous(wednesday, 50_000, "HIGH")


def test_night_is_local_night() -> None:
    offset = -5 * 3600  # UTC-5: local 03:00 is 08:00 UTC

    def local_cycle(r: random.Random, t: float) -> float:
        h = local_hour(t, offset)
        return (1000.0 if h < 6 else 30_000.0) * r.lognormvariate(0, 0.1)

    model = train(local_cycle, offset=offset)
    assert model.utc_offset_s == offset
    local_3am = T0 + TRAIN_S + 8 * HOUR
    assert model.explain(local_3am, 0)["expected"] == pytest.approx(1000, rel=0.1)
    assert model.anomalous(local_3am, 30_000, "HIGH")
    assert not model.anomalous(local_3am + 10 * HOUR, 30_000, "LOW")


def test_a_constant_metric_alarms_on_any_increase() -> None:
    model = train(lambda r, t: 3.0)  # listening ports
    t = T0 + TRAIN_S + 11 * HOUR
    assert model.score(t, 3) == 0.0
    assert model.spread[0] > 0
    assert all(model.anomalous(t, 4, level) for level in CONFIDENCE_LEVELS)
    assert not model.anomalous(t, 3, "LOW")


def test_a_counter_zero_most_of_the_time() -> None:
    # authorization failures: one now and then (0.2% of datapoints), never more than 2
    model = train(lambda r, t: float(r.random() < 0.002) * r.choice((1, 1, 2)))
    t = T0 + TRAIN_S + 11 * HOUR
    assert model.score(t, 0) == 0.0
    assert not model.anomalous(t, 1, "HIGH")  # as seen in training
    assert all(model.anomalous(t, 10, level) for level in CONFIDENCE_LEVELS)


def test_datapoints_out_of_time_order_are_refused() -> None:
    trainer = Trainer(T0)
    trainer.add(T0 + 100, 1.0)
    trainer.add(T0 + 100, 2.0)  # the same instant is in order
    with pytest.raises(ValueError, match=r"ML datapoint time 1.+ is before the last one"):
        trainer.add(T0 + 99, 1.0)
    assert trainer.datapoints == 2


def test_training_state_is_bounded_whatever_the_count() -> None:
    """14 days at 10 s (120,960 datapoints) in at most 256 KiB, no more than 1 day but
    for the hours' medians (16 B an hour)."""
    sizes = []
    for days in (1, 14):
        tracemalloc.start()
        trainer = Trainer(T0)
        for t, v in points(daily, 10.0, days=days):
            trainer.add(t, v)
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        sizes.append(size)
        assert trainer.datapoints == days * 8640
    assert sizes[1] <= 256 * 1024
    assert sizes[1] < sizes[0] + 13 * 24 * 16 * 2  # arrays grow by more than they need


def test_huge_values_are_counted_and_scored() -> None:
    model = train(lambda r, t: 1e15 * r.uniform(1, 2))  # above 2**48: the top bin
    t = T0 + TRAIN_S
    assert math.isfinite(model.score(t, 1e300))
    assert model.anomalous(t, 1e300, "HIGH")


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, math.inf, -math.inf, True, "5", None])
def test_bad_values_are_refused_by_name(model: Model, bad: object) -> None:
    trainer = Trainer(T0)
    with pytest.raises(ValueError, match=re_of(bad)):
        trainer.add(T0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re_of(bad)):
        model.score(T0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re_of(bad)):
        model.anomalous(T0, bad, "LOW")  # type: ignore[arg-type]
    assert trainer.datapoints == 0


def re_of(x: object) -> str:
    return re.escape(repr(x))


def test_bad_times_levels_and_offsets_are_refused(model: Model) -> None:
    trainer = Trainer(T0)
    with pytest.raises(ValueError, match="before the training start"):
        trainer.add(T0 - 1, 5)
    with pytest.raises(ValueError, match="nan"):
        trainer.add(math.nan, 5)
    with pytest.raises(ValueError, match="'CRITICAL'"):
        model.anomalous(T0, 5, "CRITICAL")
    with pytest.raises(ValueError, match="utc_offset_s 86400"):
        Trainer(T0, utc_offset_s=86_400)
    assert trainer.datapoints == 0


def test_json_round_trip_is_small_and_exact(model: Model) -> None:
    doc = json.loads(json.dumps(model.to_json()))
    assert Model.from_json(doc) == model
    assert len(json.dumps(doc)) < 8 * 1024
    assert doc["format"] == 4 and doc["windowS"] == 300.0  # the window it judges over
    assert doc["drift"] is not None
    assert Model.from_json({**doc, "drift": None}).drift is None  # too few hours trained


def test_a_model_keeps_the_window_it_was_trained_on() -> None:
    trainer = Trainer(T0, window_s=60.0)
    for t, v in points(daily, 30.0):
        trainer.add(t, v)
    model = trainer.build(T0 + TRAIN_S)
    assert model is not None and model.window_s == 60.0
    assert Model.from_json(model.to_json()).window_s == 60.0
    with pytest.raises(ValueError, match="ML window 0 is not a number of seconds"):
        Trainer(T0, window_s=0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("format"), "format"),
        (lambda d: d.update(format=3), "format: 3 is not 4 \\(format 3 models had no hourly"),
        (lambda d: d.pop("windowS"), "windowS"),
        (lambda d: d.update(windowS=-300), "windowS"),
        (lambda d: d.update(datapoints=-1), "datapoints"),
        (lambda d: d.update(trainedAt="x"), "trainedAt"),
        (lambda d: d.update(utcOffsetS=1.5), "utcOffsetS"),
        (lambda d: d["expected"].pop(), "expected"),
        (lambda d: d["spread"].__setitem__(3, 0.0), "spread"),
        (lambda d: d["spread"].__setitem__(3, math.nan), "spread"),
        (lambda d: d["thresholds"].pop("HIGH"), "thresholds"),
        (lambda d: d["thresholds"]["LOW"].__setitem__(0, 99.0), "thresholds"),
        (lambda d: d["thresholds"]["MEDIUM"].__setitem__(0, "4"), "thresholds.MEDIUM"),
        (lambda d: d.update(drift=[]), "drift: \\[\\] is not an object or null"),
        (lambda d: d["drift"].pop("scale"), "drift.scale"),
        (lambda d: d["drift"].update(scale=0), "drift.scale: 0.0 is not > 0"),
        (lambda d: d["drift"]["thresholds"].pop("LOW"), "drift.thresholds: must map"),
        (lambda d: d["drift"]["thresholds"].update(LOW=99), "drift.thresholds: 0 <= LOW"),
        (lambda d: d["drift"]["thresholds"].update(HIGH="x"), "drift.thresholds.HIGH"),
    ],
)
def test_a_bad_saved_model_names_its_field(
    model: Model, change: Callable[[dict], object], field: str
) -> None:
    doc = json.loads(json.dumps(model.to_json()))
    change(doc)
    with pytest.raises(ValueError, match=f"ML model {field}"):
        Model.from_json(doc)


def judge_drift(model: Model, factor: Callable[[float], float], days: float = 5) -> dict:
    """Fresh daily traffic after the training, times factor(hours since its start): the
    hour each level first drifted into alarm, the first datapoint anomalous at LOW on its
    own while changed, and the largest cusum."""
    drift, found, top = Drift(), {}, 0.0
    for t, v in points(daily, 30.0, seed=7, days=days):
        t += TRAIN_S
        hours = (t - T0 - TRAIN_S) / HOUR
        v *= factor(hours)
        drift.add(model, t, v)
        top = max(top, drift.cusum)
        for level in CONFIDENCE_LEVELS:
            if model.drifting(drift.cusum, level):
                found.setdefault(level, hours)
            elif level in found and level == "LOW":
                found.setdefault("LOW ended", hours)
        if model.anomalous(t, v, "LOW") and factor(hours) > 1:
            found.setdefault("datapoint", hours)
    return {**found, "top": top}


def test_a_slow_ramp_drifts_into_alarm_hours_before_a_datapoint_alarms(model: Model) -> None:
    """+30% over 24 h from hour 24, held for a day, then normal again."""

    def ramp(h: float) -> float:
        return 1.0 if not 24 <= h < 72 else 1 + 0.3 * min((h - 24) / 24, 1)

    found = judge_drift(model, ramp)
    assert found["LOW"] <= found["MEDIUM"] <= found["HIGH"] < 24 + 12
    assert found["datapoint"] > found["HIGH"] + 4  # at about +20%
    assert model.drift is not None
    assert found["top"] == model.drift.thresholds[-1] + DRIFT_CAP_ABOVE  # capped
    assert 72 < found["LOW ended"] < 72 + 14  # the cap lets it end within hours


def test_benign_days_do_not_drift(model: Model) -> None:
    found = judge_drift(model, lambda h: 1.0, days=7)
    assert set(found) == {"top"} and found["top"] < 6


def test_drift_needs_a_week_of_hours_in_training() -> None:
    trainer = Trainer(T0)
    trainer.add(T0, 2000.0)
    for t, v in points(daily, 20.0, days=6):  # 25,920 datapoints in 144 hours
        trainer.add(t + 8 * DAY, v)
    model = trainer.build(T0 + TRAIN_S)
    assert model is not None and model.drift is None
    assert MIN_DRIFT_HOURS > 6 * 24
    drift = Drift()
    for t, v in points(lambda r, t: 1e9, 30.0, days=1):  # far above normal for a day
        drift.add(model, t + TRAIN_S, v)
    assert drift.cusum == 0 and not model.drifting(drift.cusum, "LOW")


def test_drift_state_keeps_the_cusum_not_the_hour_in_progress(model: Model) -> None:
    drift = Drift()
    for t, v in points(daily, 30.0, days=1):
        drift.add(model, t + TRAIN_S, 3 * v)
    saved = json.loads(json.dumps(drift.to_json()))
    assert saved["cusum"] > 0 and saved["hour"] == (T0 + TRAIN_S + DAY) // HOUR - 1
    again = Drift.from_json(saved)
    assert (again.hour, again.cusum) == (drift.hour, drift.cusum)
    again.add(model, T0 + TRAIN_S, 1.0)  # an earlier hour (the clock set back): left out
    assert (again.hour, again.cusum) == (drift.hour, drift.cusum)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "ML drift state \\[\\] is not an object"),
        ({"hour": 1.5, "cusum": 0}, "ML drift state hour: 1.5 is not an integer or null"),
        ({"hour": None, "cusum": -1}, "ML drift state cusum: -1 is not a number >= 0"),
        ({"hour": None}, "ML drift state cusum: None is not a number >= 0"),
    ],
)
def test_a_bad_drift_state_names_what_is_wrong(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Drift.from_json(doc)

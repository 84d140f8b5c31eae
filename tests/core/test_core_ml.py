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
    MIN_DATAPOINTS,
    MIN_TRAINING_DAYS,
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


def test_order_of_datapoints_does_not_matter() -> None:
    data = list(points(daily, 30.0))
    shuffled = data[:]
    random.Random(5).shuffle(shuffled)
    models = []
    for feed in (data, shuffled):
        trainer = Trainer(T0)
        for t, v in feed:
            trainer.add(t, v)
        models.append(trainer.build(T0 + TRAIN_S))
    assert models[0] == models[1]


def test_training_state_is_bounded_whatever_the_count() -> None:
    """14 days at 10 s (120,960 datapoints) in at most 256 KiB, no more than 1 day."""
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
    assert sizes[1] < sizes[0] + 4096


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
    assert doc["format"] == 3 and doc["windowS"] == 300.0  # the window it judges over


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
        (lambda d: d.update(format=2), "format: 2 is not 3 \\(format 2 models judged single"),
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
    ],
)
def test_a_bad_saved_model_names_its_field(
    model: Model, change: Callable[[dict], object], field: str
) -> None:
    doc = json.loads(json.dumps(model.to_json()))
    change(doc)
    with pytest.raises(ValueError, match=f"ML model {field}"):
        Model.from_json(doc)

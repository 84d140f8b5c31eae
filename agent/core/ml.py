"""ML Detect on the device: a per-metric model of normal behavior, trained from the
metric's own history and judging each new datapoint at a confidence level. A datapoint
is the metric's aggregate over a rolling window (agent.core.ml_window: the sum of a
counter, the largest value of a gauge over the last 5 minutes, at every sample); the
model keeps the window it was trained on, and is judged on the same.

The model is a seasonal baseline: 48 buckets, one per local hour of the day for weekdays
and one for weekend days (Saturday, Sunday). Values are compared on y = log2(1 + value),
so traffic that varies by a factor is judged by the factor, and counts near zero by the
count. Each bucket keeps its median of y and an upper spread: the p99 of how far above
their bucket's median the datapoints of that hour and the next hour on each side were,
divided by 2.326 (the standard deviation a normal distribution with that p99 would
have), floored at SPREAD_FLOOR so that a constant metric still has a scale. A
datapoint's score is

    score = max(0, y - expected) / spread

with expected, spread and thresholds interpolated between the centres of the two
nearest hour buckets, so the baseline has no step on the hour. Only values above normal
score: an anomaly is more of something (bytes out, connections, listening ports,
failures); less of it is not judged (docs/ml-model.md says why).

A confidence level alarms when the score is above its threshold in that bucket: the
level's base (LOW 3, MEDIUM 4.5, HIGH 6 spreads) or, if higher, the score the level's
quantile of the bucket's training datapoints reached (99.9%, 99.99%, the largest; the
same three hours pooled). So LOW alarms most, HIGH least, and HIGH never alarms on a
value like one the same hours saw in training.

A slow drift (an exfiltration growing by a few percent an hour, or a beacon's extra
connections every hour) stays below every datapoint's threshold for hours; the model
also judges each local hour as a whole. An hour's drift score is how far the median of
its datapoints' y lies above the hour's expected value, in spreads, less the training
hours' median of that, over their robust spread (1.4826 x their median absolute
deviation, at least DRIFT_SCALE_FLOOR). The scores add up hour by hour in a one-sided
CUSUM, each clipped at DRIFT_CLIP and less DRIFT_K, and an hour at or below normal
halves it (so that a drift's alarms end within hours of it, and benign hours do not
pile up):

    cusum = cusum / 2                                   if score <= 0
            min(cap, max(0, cusum + min(score, DRIFT_CLIP) - DRIFT_K))  otherwise

A level alarms while the cusum is above its drift threshold: the level's base (LOW 6,
MEDIUM 8, HIGH 10) or, if higher, DRIFT_FACTOR (1.5, 2, 2.5) times the largest cusum
the training hours themselves reached. The cusum is capped at DRIFT_CAP_ABOVE (2) over
HIGH's threshold, which also keeps its alarms short after a drift ends. A median
ignores a burst that fills less than half an hour; an hour with fewer than
MIN_HOUR_DATAPOINTS datapoints, or a gap, leaves the cusum as it was. With fewer than
MIN_DRIFT_HOURS hours in training the model has no drift judgement.

Training streams datapoints into a fixed array of counts, 48 buckets of 768 bins of
1/16 on y (a bin is 4.4% wide in value; values up to 2**48 - 1, larger ones are counted
in the top bin; each bucket's least and largest value kept exact), so its state is
about 150 KiB however many datapoints it sees, and each hour's median (the datapoints
of the hour in progress, and at most MAX_DRIFT_HOURS medians: about 23 KiB). Datapoints
come in time order, as a history gives them. Pure: time comes in as arguments, as does
the device's UTC offset that makes "night" local.
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol

from agent.core.ml_window import WINDOW_S, check_window_s
from agent.core.profile import CONFIDENCE_LEVELS as CONFIDENCE_LEVELS

MIN_TRAINING_DAYS = 14  # AWS: a model needs 14 days ...
MIN_DATAPOINTS = 25_000  # ... and at least 25,000 datapoints before it is active
RETRAIN_S = 86_400.0  # retrained daily

HOURS = 24
BUCKETS = 2 * HOURS  # weekday hours, then weekend hours
BINS_PER_UNIT = 16  # bins per unit of y = log2(1 + value)
MAX_Y = 48
BINS = MAX_Y * BINS_PER_UNIT
MIN_BUCKET_DATAPOINTS = 50  # fewer: the bucket borrows the hour's other day type, or all
SPREAD_HOURS = 1  # the spread pools this many hours on each side
SPREAD_FLOOR = 0.05  # on y: about 3.5% of a large value; a 0 -> 1 step scores 20
P99_Z = 2.326  # the standard normal's 99th percentile
# Per level: the base threshold (in spreads) and the share of training scores it passes.
LEVEL_BASE = {"LOW": 3.0, "MEDIUM": 4.5, "HIGH": 6.0}
LEVEL_QUANTILE = {"LOW": 0.999, "MEDIUM": 0.9999, "HIGH": 1.0}
# The hourly drift (a CUSUM of the hours' medians): see the module's docstring.
DRIFT_K = 0.5
DRIFT_CLIP = 3.0
DRIFT_SCALE_FLOOR = 0.1  # in spreads
DRIFT_BASE = {"LOW": 6.0, "MEDIUM": 8.0, "HIGH": 10.0}
DRIFT_FACTOR = {"LOW": 1.5, "MEDIUM": 2.0, "HIGH": 2.5}
DRIFT_CAP_ABOVE = 2.0
MIN_HOUR_DATAPOINTS = 6
MIN_DRIFT_HOURS = 7 * HOURS
MAX_DRIFT_HOURS = 60 * HOURS  # a longer training keeps its last 60 days' hours
MAD_SD = 1.4826  # a normal distribution's standard deviation per median absolute deviation
# of to_json (1: one threshold per level; 2: trained on single samples; 3: no drift)
FORMAT = 4


def _y(value: float) -> float:
    return math.log2(1.0 + value)


def _value(y: float) -> float:
    return math.exp2(y) - 1.0


def _finite(x: object) -> float | None:
    """x as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def check_value(value: object) -> float:
    """A datapoint's value as a float; ValueError naming it unless finite and >= 0."""
    v = _finite(value)
    if v is None or v < 0:
        raise ValueError(f"ML datapoint value {value!r} is not a finite number >= 0")
    return v


def check_time(t: object) -> float:
    """A time as a float; ValueError naming it unless finite."""
    x = _finite(t)
    if x is None:
        raise ValueError(f"ML datapoint time {t!r} is not a finite number")
    return x


def _hour_index(local_t: float) -> int:
    """Hours since the epoch in local time."""
    return math.floor(local_t / 3600.0)


def _bucket(hour: int) -> int:
    """The bucket of a local hour since the epoch: 1970-01-01 was a Thursday (weekday 3
    counting Monday as 0), so Saturday and Sunday are weekdays 5 and 6."""
    weekend = (hour // HOURS + 3) % 7 >= 5
    return hour % HOURS + (HOURS if weekend else 0)


class Trainer:
    """Streams (t, value) datapoints of one metric into bounded state (a fixed array of
    counts, whatever the number of points, and the hours' medians), then builds a Model.
    Feed in time order; datapoints before `start` (the start of the training window) or
    before the one fed last are refused. The
    datapoints are aggregates over `window_s` (agent.core.ml_window.Window gives them);
    the model records it so that the rule core judges the same aggregates."""

    __slots__ = (
        "_counts",
        "_first_t",
        "_high",
        "_hour",
        "_hour_ys",
        "_hours",
        "_last_t",
        "_low",
        "_medians",
        "_n",
        "_offset",
        "_start",
        "_window_s",
    )

    def __init__(self, start: float, utc_offset_s: int = 0, window_s: float = WINDOW_S) -> None:
        self._start = check_time(start)
        if type(utc_offset_s) is not int or abs(utc_offset_s) > 18 * 3600:
            raise ValueError(f"utc_offset_s {utc_offset_s!r} is not an integer within ±18 h")
        self._offset = utc_offset_s
        self._window_s = check_window_s(window_s)
        self._counts = array("I", [0]) * (BUCKETS * BINS)
        self._low = [math.inf] * BUCKETS  # each bucket's smallest and largest value
        self._high = [0.0] * BUCKETS
        self._n = 0
        self._first_t: float | None = None
        self._last_t = -math.inf
        self._hour: int | None = None  # the local hour in progress, and its datapoints' y
        self._hour_ys = array("d")
        self._hours = array("q")  # the hours done, and their medians of y
        self._medians = array("d")

    @property
    def start(self) -> float:
        return self._start

    @property
    def utc_offset_s(self) -> int:
        return self._offset

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def datapoints(self) -> int:
        return self._n

    @property
    def first_t(self) -> float | None:
        return self._first_t

    def add(self, t: float, value: float) -> None:
        t = check_time(t)
        v = check_value(value)
        if t < self._start:
            raise ValueError(
                f"ML datapoint time {t!r} is before the training start {self._start!r}"
            )
        if t < self._last_t:
            raise ValueError(f"ML datapoint time {t!r} is before the last one, {self._last_t!r}")
        self._last_t = t
        hour = _hour_index(t + self._offset)
        if hour != self._hour:
            self._end_hour()
            self._hour = hour
        y = _y(v)
        self._hour_ys.append(y)
        b = _bucket(hour)
        i = int(y * BINS_PER_UNIT)
        self._counts[b * BINS + (i if i < BINS else BINS - 1)] += 1
        if v > self._high[b]:
            self._high[b] = v
        if v < self._low[b]:
            self._low[b] = v
        self._n += 1
        if self._first_t is None:
            self._first_t = t

    def _end_hour(self) -> None:
        if len(self._hour_ys) >= MIN_HOUR_DATAPOINTS and self._hour is not None:
            self._hours.append(self._hour)
            self._medians.append(statistics.median(self._hour_ys))
            if len(self._hours) > MAX_DRIFT_HOURS:
                del self._hours[0], self._medians[0]
        self._hour_ys = array("d")

    def build(self, now: float) -> Model | None:
        """The model, or None until the data spans MIN_TRAINING_DAYS before `now` and
        holds MIN_DATAPOINTS."""
        now = check_time(now)
        first = self._first_t
        if first is None or self._n < MIN_DATAPOINTS or now - first < MIN_TRAINING_DAYS * 86400:
            return None
        pooled = [self._pool(b) for b in range(BUCKETS)]
        expected = [_quantile(bins, 0.5, low, high) for bins, low, high in pooled]
        tails = [_tail(pooled, expected, b) for b in range(BUCKETS)]
        spread = [s for s, _ in tails]
        # the hour in progress is not whole: its median is not one the judging would take
        scores = [
            (m - expected[_bucket(h)]) / spread[_bucket(h)]
            for h, m in zip(self._hours, self._medians, strict=True)
        ]
        return Model(
            trained_at=now,
            datapoints=self._n,
            first_t=first,
            utc_offset_s=self._offset,
            window_s=self._window_s,
            expected=tuple(expected),
            spread=tuple(spread),
            thresholds=tuple(tuple(levels[i] for _, levels in tails) for i in range(3)),
            drift=_drift(scores),
        )

    def _pool(self, b: int) -> tuple[Sequence[int], float, float]:
        """A bucket's bin counts (a view, no copy) and smallest and largest y; a thin
        bucket takes in the same hour of the other day type, and if still thin, every
        bucket."""
        view = memoryview(self._counts)
        groups = [[b], [b % HOURS, b % HOURS + HOURS], list(range(BUCKETS))]
        for group in groups:
            if len(group) == 1:
                bins: Sequence[int] = view[b * BINS : (b + 1) * BINS]
            else:
                merged = array("I", [0]) * BINS
                for g in group:
                    for i, c in enumerate(view[g * BINS : (g + 1) * BINS]):
                        merged[i] += c
                bins = merged
            if sum(bins) >= MIN_BUCKET_DATAPOINTS or group is groups[-1]:
                low = min(self._low[g] for g in group)
                high = max(self._high[g] for g in group)
                return bins, (_y(low) if low <= high else 0.0), _y(high)
        raise AssertionError("unreachable")


def _quantile(bins: Sequence[int], q: float, low: float, high: float) -> float:
    """The q-quantile of y from bin counts, linear within its bin, within [low, high]."""
    total = sum(bins)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, c in enumerate(bins):
        if c and seen + c >= rank:
            y = (i + (rank - seen) / c) / BINS_PER_UNIT
            return min(max(y, low), high)
        seen += c
    return high


def _tail(
    pooled: list[tuple[Sequence[int], float, float]], expected: list[float], b: int
) -> tuple[float, tuple[float, ...]]:
    """Bucket b's spread and its thresholds per level, from how far above their own
    bucket's median the datapoints of its hour and the SPREAD_HOURS on each side (same
    day type) were: the spread is their p99 as the standard deviation of a normal
    distribution with that p99 (at least SPREAD_FLOOR); a level's threshold is its base
    or, if higher, the score of its LEVEL_QUANTILE of them (the largest exact). Pooling
    neighbours steadies the tail: a burst at 10:40 in training says something of 11:15."""
    hour, kind = b % HOURS, b - b % HOURS
    residuals = array("I", [0]) * (2 * BINS)  # bin i - median's bin + BINS
    top = 0.0
    for d in range(-SPREAD_HOURS, SPREAD_HOURS + 1):
        n = kind + (hour + d) % HOURS
        bins, _, high = pooled[n]
        top = max(top, high - expected[n])
        shift = BINS - round(expected[n] * BINS_PER_UNIT)
        for i, c in enumerate(bins):
            if c:
                residuals[i + shift] += c
    total = sum(residuals)

    def quantile(q: float) -> float:
        rank, seen = q * total, 0
        for i, c in enumerate(residuals):
            if c and seen + c >= rank:
                return min((i - BINS + (rank - seen) / c) / BINS_PER_UNIT, top)
            seen += c
        return top

    spread = max(quantile(0.99) / P99_Z, SPREAD_FLOOR)
    levels = tuple(
        max(LEVEL_BASE[level], quantile(LEVEL_QUANTILE[level]) / spread)
        for level in CONFIDENCE_LEVELS
    )
    return spread, levels


def _drift(scores: Sequence[float]) -> DriftParams | None:
    """The drift judgement from the training hours' scores (in time order): their
    centre and robust scale, and each level's threshold; None with too few hours."""
    if len(scores) < MIN_DRIFT_HOURS:
        return None
    center = statistics.median(scores)
    scale = max(MAD_SD * statistics.median(abs(x - center) for x in scores), DRIFT_SCALE_FLOOR)
    top = max(
        accumulate((min((x - center) / scale, DRIFT_CLIP) for x in scores), _cusum, initial=0.0)
    )
    return DriftParams(
        center,
        scale,
        tuple(max(DRIFT_BASE[lv], DRIFT_FACTOR[lv] * top) for lv in CONFIDENCE_LEVELS),
    )


def _cusum(total: float, score: float) -> float:
    """The one-sided CUSUM's step, uncapped; an hour at or below normal halves it."""
    return total / 2 if score <= 0 else max(0.0, total + score - DRIFT_K)


@dataclass(frozen=True)
class DriftParams:
    """A model's drift judgement: the training hours' median score and robust scale, and
    per level of CONFIDENCE_LEVELS the cusum above which it alarms."""

    center: float
    scale: float
    thresholds: tuple[float, ...]


@dataclass(frozen=True)
class Model:
    """A trained model of one metric. Per bucket, on y = log2(1 + value): `expected`
    (the median) and `spread`; `thresholds` holds, per level of CONFIDENCE_LEVELS, the
    score above which that level alarms in each bucket. `window_s`: the rolling window
    its datapoints aggregate (agent.core.ml_window), which the rule core judges on.
    `drift`: the hourly drift's parameters (None: too few hours in training)."""

    trained_at: float
    datapoints: int
    first_t: float
    utc_offset_s: int
    window_s: float
    expected: tuple[float, ...]
    spread: tuple[float, ...]
    thresholds: tuple[tuple[float, ...], ...]
    drift: DriftParams | None = None

    def _at(self, t: float, per_bucket: tuple[float, ...]) -> float:
        """A per-bucket figure at t: linear between the two nearest hour centres, so
        the baseline has no step on the hour."""
        pos = (check_time(t) + self.utc_offset_s) / 3600.0 - 0.5
        hour = math.floor(pos)
        a, b = per_bucket[_bucket(hour)], per_bucket[_bucket(hour + 1)]
        return a + (b - a) * (pos - hour)

    def score(self, t: float, value: float) -> float:
        """How far above normal the value is, in spreads (>= 0; 0 at or below normal)."""
        y = math.log2(1.0 + check_value(value))
        e = self._at(t, self.expected)
        return 0.0 if y <= e else (y - e) / self._at(t, self.spread)

    def threshold(self, t: float, confidence: str) -> float:
        """The score above which `confidence` alarms at t."""
        return self._at(t, self.thresholds[_level(confidence)])

    def anomalous(self, t: float, value: float, confidence: str) -> bool:
        return self.score(t, value) > self.threshold(t, confidence)

    def drift_step(self, cusum: float, hour: int, median_y: float) -> float:
        """The cusum after a whole local hour (hours since the epoch) whose datapoints'
        median y was `median_y` (0 without a drift judgement)."""
        d = self.drift
        if d is None:
            return 0.0
        b = _bucket(hour)
        score = ((median_y - self.expected[b]) / self.spread[b] - d.center) / d.scale
        return min(_cusum(cusum, min(score, DRIFT_CLIP)), d.thresholds[-1] + DRIFT_CAP_ABOVE)

    def drift_threshold(self, confidence: str) -> float | None:
        """The cusum above which `confidence` alarms (None: no drift judgement)."""
        level = _level(confidence)
        return None if self.drift is None else self.drift.thresholds[level]

    def drifting(self, cusum: float, confidence: str) -> bool:
        """Whether `confidence` alarms on this cusum."""
        threshold = self.drift_threshold(confidence)
        return threshold is not None and cusum > threshold

    def explain(self, t: float, value: float) -> dict[str, float]:
        """The value, the expected value at t, the spread (on log2(1 + value)), the
        score and, per level, its threshold and the value above which it alarms."""
        e, s = self._at(t, self.expected), self._at(t, self.spread)
        out = {
            "value": check_value(value),
            "expected": _value(e),
            "spread": s,
            "score": self.score(t, value),
        }
        for level in CONFIDENCE_LEVELS:
            threshold = self.threshold(t, level)
            out[f"threshold_{level}"] = threshold
            out[f"limit_{level}"] = _value(e + threshold * s)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "trainedAt": self.trained_at,
            "datapoints": self.datapoints,
            "firstT": self.first_t,
            "utcOffsetS": self.utc_offset_s,
            "windowS": self.window_s,
            "expected": list(self.expected),
            "spread": list(self.spread),
            "thresholds": {
                level: list(self.thresholds[i]) for i, level in enumerate(CONFIDENCE_LEVELS)
            },
            "drift": None
            if self.drift is None
            else {
                "center": self.drift.center,
                "scale": self.drift.scale,
                "thresholds": dict(zip(CONFIDENCE_LEVELS, self.drift.thresholds, strict=True)),
            },
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Model:
        """Raises ValueError naming the field that is missing or wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"ML model {doc!r} is not an object")
        if doc.get("format") != FORMAT:
            raise ValueError(
                f"ML model format: {doc.get('format')!r} is not {FORMAT} (format 3 models"
                " had no hourly drift, format 2 ones judged single samples)"
            )
        datapoints = doc.get("datapoints")
        if type(datapoints) is not int or datapoints < 0:
            raise ValueError(f"ML model datapoints: {datapoints!r} is not a count")
        offset = doc.get("utcOffsetS")
        if type(offset) is not int or abs(offset) > 18 * 3600:
            raise ValueError(f"ML model utcOffsetS: {offset!r} is not an integer within ±18 h")
        thresholds = doc.get("thresholds")
        if not isinstance(thresholds, Mapping) or set(thresholds) != set(CONFIDENCE_LEVELS):
            raise ValueError(
                f"ML model thresholds: must map each of {CONFIDENCE_LEVELS} to {BUCKETS} numbers"
            )
        levels = tuple(_numbers(thresholds, k, 0.0, "thresholds.") for k in CONFIDENCE_LEVELS)
        if not all(lo <= mid <= hi for lo, mid, hi in zip(*levels, strict=True)):
            raise ValueError("ML model thresholds: LOW <= MEDIUM <= HIGH does not hold")
        return cls(
            trained_at=_number(doc, "trainedAt"),
            datapoints=datapoints,
            first_t=_number(doc, "firstT"),
            utc_offset_s=offset,
            window_s=_window(doc),
            expected=_numbers(doc, "expected", 0.0),
            spread=_numbers(doc, "spread", SPREAD_FLOOR),
            thresholds=levels,
            drift=_drift_from_json(doc.get("drift")),
        )


def _drift_from_json(doc: object) -> DriftParams | None:
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise ValueError(f"ML model drift: {doc!r} is not an object or null")
    thresholds = doc.get("thresholds")
    if not isinstance(thresholds, Mapping) or set(thresholds) != set(CONFIDENCE_LEVELS):
        raise ValueError(
            f"ML model drift.thresholds: must map each of {CONFIDENCE_LEVELS} to a number"
        )
    levels = tuple(_number(thresholds, k, "drift.thresholds.") for k in CONFIDENCE_LEVELS)
    if not 0 <= levels[0] <= levels[1] <= levels[2]:
        raise ValueError("ML model drift.thresholds: 0 <= LOW <= MEDIUM <= HIGH does not hold")
    scale = _number(doc, "scale", "drift.")
    if scale <= 0:
        raise ValueError(f"ML model drift.scale: {scale!r} is not > 0")
    return DriftParams(_number(doc, "center", "drift."), scale, levels)


class Hourly(Protocol):
    """What Drift needs of a model."""

    @property
    def utc_offset_s(self) -> int: ...

    def drift_step(self, cusum: float, hour: int, median_y: float) -> float: ...


class Drift:
    """One judged ML behavior's hourly drift: the local hour in progress, its datapoints'
    y, and the cusum of the hours before (Model.drift_step). The hour in progress is not
    kept across restarts (to_json): a restart loses it, not the cusum."""

    __slots__ = ("_ys", "cusum", "hour")

    def __init__(self, hour: int | None = None, cusum: float = 0.0) -> None:
        self.hour = hour
        self.cusum = cusum
        self._ys = array("d")

    def add(self, model: Hourly, t: float, value: float) -> None:
        """A datapoint judged with `model`; a new hour first ends the one before. A
        datapoint of an earlier hour (the clock set back) is left out."""
        hour = _hour_index(t + model.utc_offset_s)
        if self.hour is not None and hour < self.hour:
            return
        if hour != self.hour:
            if self.hour is not None and len(self._ys) >= MIN_HOUR_DATAPOINTS:
                self.cusum = model.drift_step(self.cusum, self.hour, statistics.median(self._ys))
            self.hour, self._ys = hour, array("d")
        self._ys.append(_y(value))

    def to_json(self) -> dict[str, Any]:
        return {"hour": self.hour, "cusum": self.cusum}

    @classmethod
    def from_json(cls, doc: object) -> Drift:
        """Raises ValueError naming what is wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"ML drift state {doc!r} is not an object")
        hour, cusum = doc.get("hour"), _finite(doc.get("cusum"))
        if hour is not None and type(hour) is not int:
            raise ValueError(f"ML drift state hour: {hour!r} is not an integer or null")
        if cusum is None or cusum < 0:
            raise ValueError(f"ML drift state cusum: {doc.get('cusum')!r} is not a number >= 0")
        return cls(hour, cusum)


def _level(confidence: str) -> int:
    """The index of a confidence level in CONFIDENCE_LEVELS; ValueError naming it."""
    if confidence not in CONFIDENCE_LEVELS:
        raise ValueError(f"confidence level {confidence!r} is not one of {CONFIDENCE_LEVELS}")
    return CONFIDENCE_LEVELS.index(confidence)


def _number(doc: Mapping[str, Any], key: str, where: str = "") -> float:
    x = _finite(doc.get(key))
    if x is None:
        raise ValueError(f"ML model {where}{key}: {doc.get(key)!r} is not a finite number")
    return x


def _window(doc: Mapping[str, Any]) -> float:
    try:
        return check_window_s(doc.get("windowS"))
    except ValueError as e:
        raise ValueError(f"ML model windowS: {e}") from None


def _numbers(doc: Mapping[str, Any], key: str, low: float, where: str = "") -> tuple[float, ...]:
    xs = doc.get(key)
    if not isinstance(xs, list) or len(xs) != BUCKETS:
        raise ValueError(f"ML model {where}{key}: must be a list of {BUCKETS} numbers")
    out: list[float] = []
    for x in xs:
        v = _finite(x)
        if v is None or v < low:
            raise ValueError(f"ML model {where}{key}: {x!r} is not a finite number >= {low}")
        out.append(v)
    return tuple(out)

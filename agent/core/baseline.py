"""A behavior's own earlier datapoints for its statistical threshold: the values with time
in [t - period, t), kept in time buckets that a store saves one by one.

Small baselines stay exact: while the baseline holds at most `exact_max` datapoints the
raw (time, value) pairs are kept, the window is exact to the datapoint and the percentile
is numpy's. Beyond that every time bucket is a DDSketch-style histogram: counts of the
positive values in bins (gamma**(i-1), gamma**i], gamma = (1 + alpha) / (1 - alpha),
with zeros and negatives counted apart and min and max kept exactly. So:
- a value at a rank is read back within relative error alpha (1% at level 0); a
  percentile, a convex combination of two such values, is too. The min and max are
  exact, so p0, p100 and every rank-0 or rank-(n-1) end of an interpolation are exact;
- the window is [t - period, t) at bucket granularity: a bucket (period / 84 wide, 4 h
  at 14 days) leaves as a whole once its first datapoint is older than t - period, so
  the baseline is the exact window minus at most one bucket's oldest datapoints (never
  an older one); counts (for min_baseline_datapoints) and negatives are exact for it.
Histograms add exactly, so buckets merge into a running total and a bucket that expires
is subtracted from it. When the encoded bins would pass MAX_BIN_TEXT (values spread over
many decades), every bin merges with its neighbour (gamma -> gamma**2, alpha about
doubles: UDDSketch's uniform collapse): the size stays bounded, and `relative_accuracy`
gives the bound at the level reached.

DDSketch over KLL or t-digest: it merges exactly (bucket sums), so expiring a bucket is
a subtraction; its bound is a relative one, per value, the same at p0.01 and p99.99; and
a closed bucket is a short varint string."""

from __future__ import annotations

import base64
import binascii
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

BUCKETS_PER_PERIOD = 84  # 4 h buckets over 14 days
ALPHA = 0.01
_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
# Encoded bins of all buckets together, the open one counted at the most a bin can take:
# with at most 85 bucket headers of at most 162 bytes, a baseline's JSON stays under
# 64 KiB (about 18,000 bins at 2.7 bytes).
MAX_BIN_TEXT = 50_000
_OPEN_BIN_TEXT = 8  # two 3-byte varints in base64
MAX_LEVEL = 12  # from level 11 on any float range fits


def _gamma(level: int) -> float:
    return math.exp(_LOG_GAMMA * (1 << level))


def accuracy(level: int) -> float:
    """The relative error bound of a value read back at collapse level `level`."""
    gamma = _gamma(level)
    return (gamma - 1) / (gamma + 1)


def _bin(value: float, level: int) -> int:
    """The bin (gamma**(i-1), gamma**i] of a positive value at `level`."""
    return -(-math.ceil(math.log(value) / _LOG_GAMMA) >> level)


def _collapse(bins: Mapping[int, int], levels: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for i, c in bins.items():
        j = -(-i >> levels)
        out[j] = out.get(j, 0) + c
    return out


class SortedValues:
    """A sorted multiset of numbers kept in buckets of at most 2 * load, so that adding
    and removing move O(sqrt n) items rather than the whole list."""

    __slots__ = ("_buckets", "_len", "_load", "_maxes")

    def __init__(self, load: int = 1000) -> None:
        self._load = load
        self._buckets: list[list[float]] = []
        self._maxes: list[float] = []  # the last (largest) value of each bucket
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def add(self, value: float) -> None:
        self._len += 1
        if not self._buckets:
            self._buckets.append([value])
            self._maxes.append(value)
            return
        i = min(bisect_left(self._maxes, value), len(self._maxes) - 1)
        bucket = self._buckets[i]
        insort(bucket, value)
        self._maxes[i] = bucket[-1]
        load = self._load
        if len(bucket) > 2 * load:
            self._buckets[i : i + 1] = [bucket[:load], bucket[load:]]
            self._maxes[i : i + 1] = [bucket[load - 1], bucket[-1]]

    def remove(self, value: float) -> None:
        """Remove one `value`, which must be present."""
        i = bisect_left(self._maxes, value)
        bucket = self._buckets[i]
        del bucket[bisect_left(bucket, value)]
        self._len -= 1
        if bucket:
            self._maxes[i] = bucket[-1]
        else:
            del self._buckets[i]
            del self._maxes[i]

    def percentile(self, percent: float) -> float:
        """Linear interpolation at zero-based rank percent/100*(n-1), numpy's default;
        needs at least one value."""
        rank = percent / 100 * (self._len - 1)
        index = int(rank)
        frac = rank - index
        low = self._at(index)
        if frac == 0:
            return low
        return low + (self._at(index + 1) - low) * frac

    def _at(self, index: int) -> float:
        """The value at sorted position `index`, walking the buckets from the nearer end
        (the high percentiles people use sit at the end)."""
        buckets = self._buckets
        if index < self._len // 2:
            for bucket in buckets:
                if index < len(bucket):
                    return bucket[index]
                index -= len(bucket)
        else:
            index -= self._len
            for bucket in reversed(buckets):
                if -index <= len(bucket):
                    return bucket[index]
                index += len(bucket)
        raise IndexError(index)


class _Sketch:
    """The datapoints of one time bucket as a histogram. A bucket the clock has left is
    closed: its bins are kept encoded (2.7 bytes a bin rather than about 70 in a dict)."""

    __slots__ = ("bins", "first", "high", "low", "n", "negatives", "size", "text", "zeros")

    def __init__(self, first: float) -> None:
        self.first = first  # the time of its earliest datapoint
        self.n = 0
        self.zeros = 0
        self.negatives = 0
        self.low = math.inf
        self.high = -math.inf
        self.bins: dict[int, int] = {}  # while open
        self.text: str | None = None  # the encoded bins once closed
        self.size = 0  # bins held

    def all_bins(self) -> dict[int, int]:
        return self.bins if self.text is None else _decode_bins(self.text)

    def set_bins(self, bins: dict[int, int]) -> None:
        self.size = len(bins)
        if self.text is None:
            self.bins = bins
        else:
            self.text = _encode_bins(bins)

    def close(self) -> None:
        if self.text is None:
            self.text, self.bins = _encode_bins(self.bins), {}

    def open(self) -> None:
        if self.text is not None:
            self.bins, self.text = _decode_bins(self.text), None

    def to_json(self, level: int) -> dict[str, Any]:
        return {
            "first": self.first,
            "zeros": self.zeros,
            "negatives": self.negatives,
            "min": self.low,
            "max": self.high,
            "level": level,
            "bins": _encode_bins(self.bins) if self.text is None else self.text,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> tuple[_Sketch, int]:
        s = cls(_finite(doc["first"]))
        s.zeros, s.negatives = _count(doc["zeros"]), _count(doc["negatives"])
        s.low, s.high = _finite(doc["min"]), _finite(doc["max"])
        level = _count(doc["level"])
        if level > MAX_LEVEL:
            raise ValueError(f"baseline level {level} is above {MAX_LEVEL}")
        bins = _decode_bins(doc["bins"])
        s.text, s.size = doc["bins"], len(bins)
        s.n = s.zeros + s.negatives + sum(bins.values())
        if s.n < 1 or s.low > s.high:
            raise ValueError(f"baseline bucket {doc!r} is empty or its min is above its max")
        return s, level


def _encode_bins(bins: Mapping[int, int]) -> str:
    """Bins as base64 of varints: the first index zigzag-coded, then (index delta, count)
    pairs; about 2.7 bytes a bin, a fifth of JSON lists."""
    out = bytearray()
    last = None
    for i in sorted(bins):
        _varint(out, (i << 1) ^ (i >> 63) if last is None else i - last)
        _varint(out, bins[i])
        last = i
    return base64.b64encode(out).decode("ascii")


def _varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _decode_bins(text: object) -> dict[int, int]:
    if not isinstance(text, str):
        raise ValueError(f"baseline bins {text!r} are not a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError(f"baseline bins {text!r} are not base64") from None
    numbers: list[int] = []
    n = shift = 0
    for byte in data:
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            numbers.append(n)
            n = shift = 0
    if shift or len(numbers) % 2:
        raise ValueError(f"baseline bins {text!r} are cut short")
    bins: dict[int, int] = {}
    i = 0
    for j, (delta, c) in enumerate(zip(numbers[::2], numbers[1::2], strict=True)):
        if j == 0:
            i = (delta >> 1) ^ -(delta & 1)
        elif delta == 0:
            raise ValueError(f"baseline bins {text!r} repeat an index")
        else:
            i += delta
        if c == 0:
            raise ValueError(f"baseline bins {text!r} hold an empty bin")
        bins[i] = c
    return bins


def _count(x: object) -> int:
    if type(x) is not int or x < 0:
        raise ValueError(f"{x!r} is not a count")
    return x


def _finite(x: object) -> float:
    if type(x) not in (int, float) or not math.isfinite(x):  # type: ignore[arg-type]
        raise ValueError(f"{x!r} is not a finite number")
    return x  # type: ignore[return-value]


class Baseline:
    """Datapoints are added after they are judged and join the baseline once a later
    instant is asked for, so a datapoint never judges itself nor others of its time.

    Time bucket k holds the datapoints with time in [k * width, (k + 1) * width). The
    buckets changed and gone since `take_changes()` are what a store has to write."""

    __slots__ = (
        "_current",
        "_exact",
        "_extremes",
        "_keys",
        "_level",
        "_n",
        "_negatives",
        "_raw",
        "_sketches",
        "_sorted",
        "_text",
        "_total",
        "_zeros",
        "changed",
        "exact_max",
        "gone",
        "pending",
        "period_s",
        "width",
    )

    def __init__(self, period_s: float, exact_max: int) -> None:
        self.period_s = period_s
        self.width = period_s / BUCKETS_PER_PERIOD
        self.exact_max = exact_max
        self.pending: list[tuple[float, float]] = []  # datapoints of the latest instant
        self.changed: set[int] = set()  # bucket numbers changed since take_changes
        self.gone: set[int] = set()  # bucket numbers removed since take_changes
        # exact mode: raw datapoints per bucket, in time order, and their values sorted
        self._exact = True
        self._raw: dict[int, deque[tuple[float, float]]] = {}
        self._sorted = SortedValues()
        # sketch mode: histograms per bucket (in time order) and their running total
        self._sketches: dict[int, _Sketch] = {}
        self._current: _Sketch | None = None  # the open one, where datapoints go
        self._level = 0
        self._total: dict[int, int] = {}
        self._keys: list[int] = []  # the bins of _total, sorted
        self._text = 0  # encoded bins of the closed sketches, for the size bound
        self._extremes: tuple[float, float] | None = None  # (min, max), None: recompute
        self._n = self._zeros = self._negatives = 0  # over the buckets, both modes

    # --- adding and the window --------------------------------------------------------

    def add(self, t: float, value: float) -> None:
        """Add the datapoint judged at `t`, the latest instant so far."""
        if self.pending and self.pending[0][0] != t:
            self._flush()
        self.pending.append((t, value))

    def _flush(self) -> None:
        for t, v in self.pending:
            self._insert(t, v)
        self.pending.clear()

    def _insert(self, t: float, v: float) -> None:
        k = math.floor(t / self.width)
        self.changed.add(k)
        self._n += 1
        self._negatives += v < 0
        self._zeros += v == 0
        if self._exact:
            self._raw.setdefault(k, deque()).append((t, v))
            self._sorted.add(v)
            if self._n > self.exact_max:
                self._to_sketches()
            return
        sketch = self._sketches.get(k)
        if sketch is None:
            sketch = self._sketches[k] = _Sketch(t)
        if sketch is not self._current:
            if self._current is not None:
                self._current.close()
                self._text += len(self._current.text or "")
            self._text -= len(sketch.text or "")
            sketch.open()
            self._current = sketch
        self._count_into(sketch, v)
        if self._too_big():
            self._collapse_all()

    def _count_into(self, sketch: _Sketch, v: float) -> None:
        sketch.n += 1
        sketch.low = min(sketch.low, v)
        sketch.high = max(sketch.high, v)
        if self._extremes is not None:
            low, high = self._extremes
            self._extremes = (min(low, v), max(high, v))
        if v < 0:
            sketch.negatives += 1
        elif v == 0:
            sketch.zeros += 1
        else:
            i = _bin(v, self._level)
            c = sketch.bins.get(i, 0)
            if c == 0:
                sketch.size += 1
            sketch.bins[i] = c + 1
            self._add_total(i, 1)

    def _add_total(self, i: int, c: int) -> None:
        total = self._total.get(i, 0) + c
        if total:
            if i not in self._total:
                insort(self._keys, i)
            self._total[i] = total
        else:
            del self._total[i]
            del self._keys[bisect_left(self._keys, i)]

    def _to_sketches(self) -> None:
        """Leave exact mode: every bucket becomes a histogram (and is saved again)."""
        self._exact = False
        self._extremes = None
        for k, entries in self._raw.items():
            sketch = self._sketches[k] = _Sketch(entries[0][0])
            for _, v in entries:
                self._count_into(sketch, v)
            sketch.close()
            self.changed.add(k)
        self._raw = {}
        self._sorted = SortedValues()
        self._recount()
        if self._too_big():
            self._collapse_all()

    def _collapse_all(self) -> None:
        """Merge neighbouring bins until the sketches fit MAX_BIN_TEXT again."""
        while self._too_big() and self._level < MAX_LEVEL:
            self._level += 1
            for s in self._sketches.values():
                s.set_bins(_collapse(s.all_bins(), 1))
            self._recount()
        self.changed.update(self._sketches)

    def _recount(self) -> None:
        self._total = {}
        for s in self._sketches.values():
            for i, c in s.all_bins().items():
                self._total[i] = self._total.get(i, 0) + c
        self._keys = sorted(self._total)
        self._text = sum(len(s.text or "") for s in self._sketches.values())

    def _too_big(self) -> bool:
        current = self._current
        open_bins = 0 if current is None or current.text is not None else current.size
        return self._text + open_bins * _OPEN_BIN_TEXT > MAX_BIN_TEXT

    def _expire(self, start: float) -> None:
        """Drop what is older than `start`: datapoints in exact mode, whole buckets whose
        first datapoint is older in sketch mode."""
        if self._exact:
            raw = self._raw
            while raw:
                k = next(iter(raw))
                entries = raw[k]
                while entries and entries[0][0] < start:
                    _, v = entries.popleft()
                    self._sorted.remove(v)
                    self._uncount(v)
                    self.changed.add(k)
                if entries:
                    return
                del raw[k]
                self._gone(k)
            return
        sketches = self._sketches
        while sketches:
            k = next(iter(sketches))
            s = sketches[k]
            if s.first >= start:
                return
            del sketches[k]
            self._gone(k)
            self._n -= s.n
            self._zeros -= s.zeros
            self._negatives -= s.negatives
            self._text -= len(s.text or "")
            if s is self._current:
                self._current = None
            for i, c in s.all_bins().items():
                self._add_total(i, -c)
            self._extremes = None
        # empty again: start over exact, at the finest level
        self._exact, self._level = True, 0

    def _uncount(self, v: float) -> None:
        self._n -= 1
        self._negatives -= v < 0
        self._zeros -= v == 0

    def _gone(self, k: int) -> None:
        self.changed.discard(k)
        self.gone.add(k)

    def advance(self, t: float) -> None:
        """Make the baseline the datapoints with time in [t - period, t)."""
        if self.pending and self.pending[0][0] < t:
            self._flush()
        self._expire(t - self.period_s)

    # --- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Datapoints in the baseline (exact, for min_baseline_datapoints)."""
        return self._n

    @property
    def has_negative(self) -> bool:
        return self._negatives > 0

    @property
    def relative_accuracy(self) -> float:
        """The bound of a percentile's relative error: 0 while exact."""
        return 0.0 if self._exact else accuracy(self._level)

    def percentile(self, percent: float) -> float:
        """Linear interpolation at zero-based rank percent/100*(n-1), numpy's default;
        needs at least one value, and none negative once sketched."""
        if self._exact:
            return self._sorted.percentile(percent)
        assert self._negatives == 0 and self._n > 0
        rank = percent / 100 * (self._n - 1)
        index = int(rank)
        frac = rank - index
        low, high = self._ranked(index, 2 if frac else 1)
        return low if frac == 0 else low + (high - low) * frac

    def _ranked(self, index: int, count: int) -> tuple[float, float]:
        """The values at sorted positions index and index + 1 (when count is 2), walking
        the bins from the nearer end; min and max are exact, other bins read back as
        2 gamma**i / (gamma + 1), clamped to [min, max]."""
        low, high = self._min_max()
        n = self._n
        gamma = _gamma(self._level)
        out: list[float] = []
        for j in range(index, index + count):
            if j == 0:
                out.append(low)
            elif j == n - 1:
                out.append(high)
            elif j < self._zeros:
                out.append(0.0)
            else:
                i = self._bin_at(j - self._zeros)
                out.append(min(max(2 * gamma**i / (gamma + 1), low), high))
        return out[0], out[-1]

    def _bin_at(self, index: int) -> int:
        """The bin holding the positive value at sorted position `index`."""
        total = self._total
        positives = self._n - self._zeros
        if index < positives // 2:
            for i in self._keys:
                index -= total[i]
                if index < 0:
                    return i
        else:
            index -= positives
            for i in reversed(self._keys):
                index += total[i]
                if index >= 0:
                    return i
        raise IndexError(index)

    def _min_max(self) -> tuple[float, float]:
        if self._extremes is None:
            sketches = self._sketches.values()
            self._extremes = (min(s.low for s in sketches), max(s.high for s in sketches))
        return self._extremes

    # --- saving -----------------------------------------------------------------------

    def bucket_json(self, k: int) -> dict[str, Any]:
        """What a store keeps of bucket `k`: raw [time, value] pairs while exact."""
        if self._exact:
            return {"raw": [[t, v] for t, v in self._raw[k]]}
        return self._sketches[k].to_json(self._level)

    def buckets(self) -> list[int]:
        """The bucket numbers held, in time order."""
        return list(self._raw if self._exact else self._sketches)

    def take_changes(self) -> tuple[set[int], set[int]]:
        """The buckets changed and gone since the last call."""
        changed, gone = self.changed, self.gone
        self.changed, self.gone = set(), set()
        return changed, gone

    def load(self, buckets: Mapping[int, Mapping[str, Any]]) -> None:
        """Take back `bucket_json` output of an empty baseline ({bucket number: doc});
        raises ValueError for a malformed bucket. Only the buckets whose form here is not
        the doc given (raw datapoints turned into a sketch, bins merged to a coarser
        level) are marked changed: a store holds the rest as they are."""
        raw: list[tuple[float, float]] = []
        sketches: dict[int, _Sketch] = {}
        levels: dict[int, int] = {}
        for k in sorted(buckets):
            doc = buckets[k]
            if "raw" in doc:
                raw += raw_entries(doc["raw"])
            else:
                sketches[k], levels[k] = _Sketch.from_json(doc)
        self._load_raw(raw)
        # raw buckets stay as given, unless they outgrew exact mode on the way in
        self.changed, self.gone = (set(), set()) if self._exact else (set(self._sketches), set())
        if sketches:
            if self._exact:
                self._to_sketches()
            level = max(levels.values(), default=0)
            if level > self._level:
                for s in self._sketches.values():
                    s.set_bins(_collapse(s.all_bins(), level - self._level))
                self._level = level
            for k, s in sketches.items():
                if levels[k] < level:
                    s.set_bins(_collapse(s.all_bins(), level - levels[k]))
                    self.changed.add(k)
                self._sketches[k] = s
                self._n += s.n
                self._zeros += s.zeros
                self._negatives += s.negatives
            self._sketches = dict(sorted(self._sketches.items()))
            self._recount()
            self._extremes = None
            if self._too_big():
                self._collapse_all()

    def load_raw(self, entries: Iterable[object]) -> None:
        """Take back raw [time, value] pairs in time order (the format 1 state); those of
        the latest instant stay pending."""
        for t, v in raw_entries(entries):
            self.add(t, v)

    def _load_raw(self, entries: list[tuple[float, float]]) -> None:
        for t, v in entries:
            self._insert(t, v)


def raw_entries(entries: Iterable[object]) -> list[tuple[float, float]]:
    """Validated [time, number] pairs in time order."""
    out: list[tuple[float, float]] = []
    last = -math.inf
    for entry in entries:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise ValueError(f"baseline entry {entry!r} is not [time, number]")
        t, value = entry
        if not _is_number(t) or not _is_number(value):
            raise ValueError(f"baseline entry {entry!r} is not [time, number]")
        if t < last:
            raise ValueError(f"baseline entry {entry!r} is out of time order")
        last = t
        out.append((t, value))
    return out


def _is_number(x: object) -> bool:
    return type(x) in (int, float) and math.isfinite(x)  # type: ignore[arg-type]

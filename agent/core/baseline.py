"""A behavior's own earlier datapoints for its statistical threshold: the values with time
in [t - period, t), kept sorted, bounded by a cap."""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from typing import Any


class SortedValues:
    """A sorted multiset of numbers kept in buckets of at most 2 * load, so that adding
    and removing move O(sqrt n) items rather than the whole list (8 us per update at
    20,000 values with one flat list)."""

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


class Baseline:
    """Datapoints are added after they are judged and join the baseline once a later
    instant is asked for, so a datapoint never judges itself nor others of its time.
    Beyond `cap` datapoints the oldest go first: memory stays bounded whatever the
    sampling rate, at the cost of a shorter effective period."""

    __slots__ = ("_entries", "_negatives", "_pending", "_sorted", "cap", "period_s")

    def __init__(self, period_s: float, cap: int) -> None:
        self.period_s = period_s
        self.cap = cap
        self._entries: deque[tuple[float, float]] = deque()  # in time order
        self._sorted = SortedValues()
        self._pending: list[tuple[float, float]] = []  # datapoints of the latest instant
        self._negatives = 0

    def add(self, t: float, value: float) -> None:
        """Add the datapoint judged at `t`, the latest instant so far."""
        if self._pending and self._pending[0][0] != t:
            self._flush()
        self._pending.append((t, value))

    def _flush(self) -> None:
        for entry in self._pending:
            self._entries.append(entry)
            self._sorted.add(entry[1])
            self._negatives += entry[1] < 0
        self._pending.clear()
        while len(self._entries) > self.cap:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, value = self._entries.popleft()
        self._sorted.remove(value)
        self._negatives -= value < 0

    def before(self, t: float) -> SortedValues:
        """The sorted values with time in [t - period, t)."""
        if self._pending and self._pending[0][0] < t:
            self._flush()
        start = t - self.period_s
        entries = self._entries
        while entries and entries[0][0] < start:
            self._drop_oldest()
        return self._sorted

    @property
    def has_negative(self) -> bool:
        """Whether a value returned by the last `before` call is negative."""
        return self._negatives > 0

    def to_json(self) -> list[list[float]]:
        return [[t, v] for t, v in (*self._entries, *self._pending)]

    def load(self, entries: Any) -> None:
        """Restore `to_json` output."""
        last = -math.inf
        for entry in entries:
            t, value = entry
            if not isinstance(t, int | float) or not isinstance(value, int | float):
                raise ValueError(f"baseline entry {entry!r} is not [time, number]")
            if t < last:
                raise ValueError(f"baseline entry {entry!r} is out of time order")
            last = t
            self.add(t, value)

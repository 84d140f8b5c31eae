"""Destinations this host connects to at a regular interval: how a beacon shows. A
beacon's connection every few minutes moves no volume metric and adds one to the count
of connections opened, which people's own connections drown by day; its regularity is
what sets it apart (docs/ml-model.md). Keys are whatever the caller contacts, here
(source, destination, destination port) of each TCP connection opened.

A contact is a connection to a key more than MERGE_S after the key's previous contact
(a client that opens a few connections at once makes one contact). A key is periodic
when its last INTERVALS intervals between contacts spread (largest minus smallest) by at
most SPREAD times their median, the period, and stays so until LIVE_PERIODS periods
pass without a contact. Eight intervals within 60%: random (Poisson) contacts pass about
once in 10,000 tries; a beacon jittered by up to ±20% passes every time, ±30% at 93% of
tries, more than that rarely. A contact that breaks the rhythm ends it at once.

At most `max_keys` keys are remembered, the least recently contacted forgotten first,
so memory stays bounded (about 470 B a key, 1.9 MiB full: bench/periodic.py) whatever
the host connects to. Pure: time comes in as arguments."""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Hashable
from itertools import pairwise
from statistics import median
from typing import Generic, TypeVar

INTERVALS = 8
SPREAD = 0.6
MERGE_S = 1.0
LIVE_PERIODS = 2.5
MAX_KEYS = 4096

K = TypeVar("K", bound=Hashable)


class Periodicity(Generic[K]):
    """Keys contacted at a regular interval, from their contacts in time order."""

    def __init__(self, *, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._contacts: OrderedDict[K, array[float]] = OrderedDict()  # least recent first
        self._periodic: dict[K, float] = {}  # key -> its period
        self._forgotten = 0

    def add(self, ts: float, key: K) -> None:
        """A connection to `key` at `ts`."""
        times = self._contacts.get(key)
        if times is None:
            if len(self._contacts) >= self.max_keys:
                old, _ = self._contacts.popitem(last=False)
                self._periodic.pop(old, None)
                self._forgotten += 1
            times = self._contacts[key] = array("d")
        else:
            self._contacts.move_to_end(key)
            if ts - times[-1] <= MERGE_S:
                return
        times.append(ts)
        if len(times) > INTERVALS + 1:
            del times[0]
        period = _period(times)
        if period is None:
            self._periodic.pop(key, None)
        else:
            self._periodic[key] = period

    def periodic(self, now: float) -> dict[K, float]:
        """The keys periodic at `now`, with their periods."""
        out: dict[K, float] = {}
        for key, period in list(self._periodic.items()):
            if now - self._contacts[key][-1] > LIVE_PERIODS * period:
                del self._periodic[key]  # it stopped
            else:
                out[key] = period
        return out

    def stats(self) -> dict[str, int]:
        """Keys remembered, keys periodic (until their next check), keys forgotten for
        max_keys."""
        return {
            "keys": len(self._contacts),
            "periodic": len(self._periodic),
            "forgotten": self._forgotten,
        }


def _period(times: array[float]) -> float | None:
    """The median interval if the last INTERVALS spread by at most SPREAD times it."""
    if len(times) <= INTERVALS:
        return None
    gaps = [b - a for a, b in pairwise(times)]
    m = median(gaps)
    return m if max(gaps) - min(gaps) <= SPREAD * m else None

"""Periodicity: keys contacted at a regular interval, fed contacts and times by hand."""

from __future__ import annotations

import random

import pytest

from agent.core.periodic import INTERVALS, LIVE_PERIODS, MERGE_S, SPREAD, Periodicity


def fed(times: list[float], key: str = "c2") -> Periodicity[str]:
    p: Periodicity[str] = Periodicity()
    for t in times:
        p.add(t, key)
    return p


def test_contacts_a_period_apart_make_a_periodic_key_after_intervals_of_them() -> None:
    times = [300.0 * i for i in range(INTERVALS + 1)]
    assert fed(times).periodic(times[-1]) == {"c2": 300.0}
    assert fed(times[:-1]).periodic(times[-2]) == {}


def test_jitter_within_the_spread_is_periodic_and_one_interval_beyond_it_is_not() -> None:
    """±20% around 300 s, as a beacon's sleep(300 * uniform(0.8, 1.2)) gives."""
    gaps = [300 * (1 + 0.2 * s) for s in (1, -1, 0.5, -0.5, 0, 1, -1, 0.25)]
    times = [sum(gaps[:i]) for i in range(len(gaps) + 1)]
    assert fed(times).periodic(times[-1]) == {"c2": 307.5}  # the median interval
    times[-1] = times[-2] + 240 + SPREAD * 315 * 1.1  # smallest + beyond SPREAD x median
    assert fed(times).periodic(times[-1]) == {}


def test_connections_within_merge_s_are_one_contact() -> None:
    times = [t for i in range(INTERVALS + 1) for t in (60.0 * i, 60.0 * i + MERGE_S * 0.9)]
    assert fed(times).periodic(times[-1]) == {"c2": 60.0}
    # without merging, the pairs' short intervals would have broken the rhythm
    assert fed([60.0 * i + (MERGE_S * 1.5 if i % 2 else 0) for i in range(8)]).periodic(420.0) == {}


def test_a_key_stops_being_periodic_after_live_periods_without_a_contact() -> None:
    p = fed([10.0 * i for i in range(INTERVALS + 1)])
    last = 10.0 * INTERVALS
    assert p.periodic(last + LIVE_PERIODS * 10.0) == {"c2": 10.0}
    assert p.periodic(last + LIVE_PERIODS * 10.0 + 0.1) == {}
    assert p.stats()["periodic"] == 0


def test_a_contact_that_breaks_the_rhythm_ends_it_and_a_new_rhythm_takes_7_contacts() -> None:
    times = [10.0 * i for i in range(INTERVALS + 1)]
    p = fed(times)
    p.add(times[-1] + 3.0, "c2")
    assert p.periodic(times[-1] + 3.0) == {}
    t = times[-1] + 3.0
    for i in range(1, INTERVALS + 1):
        t += 20.0
        p.add(t, "c2")
        assert ("c2" in p.periodic(t)) == (i == INTERVALS)


def test_a_time_before_the_last_contact_merges_into_it() -> None:
    p = fed([10.0 * i for i in range(INTERVALS + 1)])
    p.add(5.0, "c2")  # a frame out of order
    assert p.periodic(10.0 * INTERVALS) == {"c2": 10.0}


def test_random_contacts_are_rarely_periodic() -> None:
    """Poisson contacts to 20 keys, 40,000 of them: a key turns periodic a few times."""
    rng = random.Random(7)
    p: Periodicity[int] = Periodicity()
    t, turned, was = 0.0, 0, set[int]()
    for _ in range(40_000):
        t += rng.expovariate(1 / 30)
        p.add(t, rng.randrange(20))
        now = set(p.periodic(t))
        turned += len(now - was)
        was = now
    assert turned <= 12  # about once in 10,000 contacts


def test_keys_beyond_max_keys_forget_the_least_recently_contacted() -> None:
    p: Periodicity[str] = Periodicity(max_keys=2)
    for i in range(INTERVALS + 1):
        p.add(10.0 * i, "beacon")
    last = 10.0 * INTERVALS
    p.add(last + 0.1, "a")
    p.add(last + 0.2, "beacon")  # merged: it is the most recent again
    p.add(last + 0.3, "b")  # "a" goes
    assert p.stats() == {"keys": 2, "periodic": 1, "forgotten": 1}
    p.add(last + 0.4, "c")  # now the beacon goes, and with it its period
    assert p.periodic(last + 0.4) == {}
    assert p.stats() == {"keys": 2, "periodic": 0, "forgotten": 2}


def test_max_keys_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_keys must be >= 1, got 0"):
        Periodicity(max_keys=0)

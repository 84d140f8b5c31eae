"""The statistical baseline: sorted storage, numpy-style percentiles, the exact window of
small baselines, time buckets, their JSON and the changes a store writes."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.baseline import (
    ALPHA,
    BUCKETS_PER_PERIOD,
    Baseline,
    SortedValues,
    _decode_bins,
    _encode_bins,
)


def reference_percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    rank = percent / 100 * (len(ordered) - 1)
    low, high = ordered[int(rank)], ordered[min(int(rank) + 1, len(ordered) - 1)]
    return low + (high - low) * (rank - int(rank))


numbers = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
STATISTICS = [0, 0.01, 0.1, 1, 10, 50, 90, 99, 99.9, 99.99, 100]


@settings(max_examples=60)
@given(
    st.lists(numbers, min_size=1, max_size=300),
    st.lists(st.integers(0, 10**6)),
    st.sampled_from(STATISTICS),
)
def test_sorted_values_percentile_matches_reference(values, removals, percent):
    sv = SortedValues(load=4)  # small buckets, so that splits and walks are exercised
    for v in values:
        sv.add(v)
    kept = list(values)
    for r in removals[: len(values) - 1]:
        sv.remove(kept.pop(r % len(kept)))
    assert len(sv) == len(kept)
    assert sv.percentile(percent) == pytest.approx(reference_percentile(kept, percent))


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(IndexError):
        SortedValues().percentile(50)


def feed(b: Baseline, points: list[tuple[float, float]]) -> None:
    for t, v in points:
        b.advance(t)
        b.add(t, v)


def test_small_baseline_is_exact_to_the_datapoint():
    b = Baseline(period_s=10, exact_max=100)
    feed(b, [(0, 1.0), (1, 2.0), (1, -3.0), (2, 4.0)])
    b.advance(5)
    assert (len(b), b.percentile(0), b.percentile(100), b.has_negative) == (4, -3.0, 4.0, True)
    b.advance(11.5)  # [1.5, 11.5): only t=2 is left
    assert (len(b), b.percentile(50), b.has_negative, b.relative_accuracy) == (1, 4.0, False, 0)


def test_datapoints_of_the_latest_instant_wait():
    b = Baseline(period_s=100, exact_max=100)
    feed(b, [(0, 1.0), (1, 50.0)])
    b.advance(1)  # a second datapoint at 1 sees only the one at 0
    assert (len(b), b.pending) == (1, [(1, 50.0)])
    b.advance(2)
    assert (len(b), b.percentile(100), b.pending) == (2, 50.0, [])


def test_beyond_exact_max_buckets_are_sketches_that_keep_counts_and_extremes():
    period = BUCKETS_PER_PERIOD * 10.0  # buckets 10 s wide
    b = Baseline(period_s=period, exact_max=5)
    feed(b, [(t, 100.0 + t) for t in range(40)])
    b.advance(40)
    assert len(b) == 40 and b.relative_accuracy == pytest.approx(ALPHA)
    assert (b.percentile(0), b.percentile(100)) == (100.0, 139.0)  # exact
    assert b.percentile(50) == pytest.approx(119.5, rel=ALPHA)
    # the bucket [0, 10) leaves whole once its first datapoint (t=0) is out
    b.advance(period + 0.5)
    assert (len(b), b.percentile(0)) == (30, 110.0)


def test_changes_are_the_buckets_touched_and_gone():
    period = BUCKETS_PER_PERIOD * 10.0
    b = Baseline(period_s=period, exact_max=1000)
    feed(b, [(t, 1.0) for t in range(0, 30, 2)])
    b.advance(30)
    assert b.take_changes() == ({0, 1, 2}, set())
    feed(b, [(30, 1.0), (31, 1.0)])
    b.advance(32)
    assert b.take_changes() == ({3}, set())
    b.advance(period + 13)  # exact: datapoint by datapoint; bucket 0 empties
    changed, gone = b.take_changes()
    assert (changed, gone, len(b)) == ({1}, {0}, 10)
    assert [t for t, _ in b.bucket_json(1)["raw"]] == [14, 16, 18]


def test_leaving_exact_mode_rewrites_every_bucket_once():
    period = BUCKETS_PER_PERIOD * 10.0
    b = Baseline(period_s=period, exact_max=10)
    feed(b, [(t, float(t)) for t in range(10)])
    b.advance(25)
    b.take_changes()
    feed(b, [(25, 1.0), (26, 2.0)])  # 11 datapoints at 26: sketches from now on
    b.advance(27)
    assert b.take_changes() == ({0, 2}, set())
    assert "raw" not in b.bucket_json(0)
    b.advance(10 * period)  # empty again: exact again
    assert (len(b), b.relative_accuracy, b.buckets()) == (0, 0, [])


def test_negatives_are_counted_until_their_bucket_leaves():
    period = BUCKETS_PER_PERIOD * 10.0
    b = Baseline(period_s=period, exact_max=2)
    feed(b, [(0, -5.0), (12, 1.0), (13, 2.0), (25, 3.0)])
    b.advance(period)
    assert b.has_negative
    b.advance(period + 1)
    assert not b.has_negative and len(b) == 3


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(-(10**6), 10**6), st.integers(1, 10**7), max_size=50))
def test_bins_encoding_round_trips(bins):
    assert _decode_bins(_encode_bins(bins)) == bins


@pytest.mark.parametrize("text", ["!!", 5, "gA==", "AAA=", "AgA="])
def test_malformed_bins_are_refused(text):
    with pytest.raises(ValueError, match="baseline bins"):
        _decode_bins(text)


def spread(n: int, seed: int) -> list[float]:
    """Values over many decades, zeros and ties among them."""
    out = []
    x = seed
    for i in range(n):
        x = (x * 1103515245 + 12345) % 2**31
        out.append(0.0 if i % 17 == 0 else float(int(10 ** (x / 2**31 * 12))))
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 400), st.integers(0, 60))
def test_buckets_saved_and_loaded_judge_alike(seed, n, exact_max):
    """A baseline loaded from its buckets (the union of what was saved) gives the same
    percentiles as the one that made them, in exact and sketch mode."""
    period = BUCKETS_PER_PERIOD * 7.0
    b = Baseline(period_s=period, exact_max=exact_max)
    feed(b, [(i * 3.0, v) for i, v in enumerate(spread(n, seed))])
    saved = {k: json.loads(json.dumps(b.bucket_json(k))) for k in b.buckets()}
    copy = Baseline(period_s=period, exact_max=exact_max)
    copy.load(saved)
    changed, gone = copy.take_changes()
    assert not gone
    # what the store must rewrite: every bucket held here other than as it was given
    assert {k for k in copy.buckets() if roundtrip(copy.bucket_json(k)) != saved[k]} <= changed
    copy.pending = list(b.pending)
    for t in (n * 3.0, n * 3.0 + period / 2):
        b.advance(t)
        copy.advance(t)
        assert len(copy) == len(b)
        if len(b):
            assert [copy.percentile(p) for p in STATISTICS] == [b.percentile(p) for p in STATISTICS]
    assert {k: copy.bucket_json(k) for k in copy.buckets()} == {
        k: b.bucket_json(k) for k in b.buckets()
    }


def roundtrip(doc: object) -> object:
    return json.loads(json.dumps(doc))


def test_bins_collapse_when_values_spread_over_many_decades():
    period = 14 * 86400.0
    b = Baseline(period_s=period, exact_max=0)
    values = spread(60_000, 7)
    feed(b, [(i * 20.0, v) for i, v in enumerate(values)])
    b.advance(len(values) * 20.0)
    size = sum(len(json.dumps(b.bucket_json(k))) for k in b.buckets())
    assert size <= 64 * 1024
    assert b.relative_accuracy > ALPHA  # collapsed at least once
    for p in STATISTICS:
        expected = reference_percentile(values, p)
        assert b.percentile(p) == pytest.approx(expected, rel=b.relative_accuracy * 1.000001)
    # the level is saved: a load at another level merges to the coarser one
    copy = Baseline(period_s=period, exact_max=0)
    copy.load({k: b.bucket_json(k) for k in b.buckets()})
    assert copy.relative_accuracy == b.relative_accuracy
    assert copy.take_changes() == (set(), set())  # loaded as given: nothing to rewrite
    # buckets saved before the bins collapsed come back merged, and are rewritten
    early = Baseline(period_s=period, exact_max=0)
    feed(early, [(i * 20.0, v) for i, v in enumerate(values[:2000])])
    older = {k: early.bucket_json(k) for k in early.buckets()[:-1]}
    assert older and early.relative_accuracy < b.relative_accuracy
    mixed = Baseline(period_s=period, exact_max=0)
    mixed.load({**{k: b.bucket_json(k) for k in b.buckets()}, **older})
    assert mixed.relative_accuracy == b.relative_accuracy
    assert mixed.take_changes() == (set(older), set())


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"raw": [[2, 1], [1, 1]]}, "time order"),
        ({"raw": [["x", 1.0]]}, "time, number"),
        ({"raw": [[1, math.inf]]}, "time, number"),
        (
            {"first": 0, "zeros": 0, "negatives": 0, "min": 1, "max": 1, "level": 0, "bins": ""},
            "empty",
        ),
        (
            {"first": 0, "zeros": 1, "negatives": 0, "min": 0, "max": 0, "level": 99, "bins": ""},
            "level",
        ),
        ({"first": 0, "zeros": -1}, "count"),
    ],
)
def test_malformed_buckets_are_refused(doc, why):
    with pytest.raises((ValueError, KeyError), match=why):
        Baseline(100, 10).load({0: doc})

"""The statistical baseline: sorted storage, numpy-style percentiles, the period and cap."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.baseline import Baseline, SortedValues


def reference_percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    rank = percent / 100 * (len(ordered) - 1)
    low, high = ordered[int(rank)], ordered[min(int(rank) + 1, len(ordered) - 1)]
    return low + (high - low) * (rank - int(rank))


numbers = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=60)
@given(
    st.lists(numbers, min_size=1, max_size=300),
    st.lists(st.integers(0, 10**6)),
    st.sampled_from([0, 0.01, 0.1, 1, 10, 50, 90, 99, 99.9, 99.99, 100]),
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


def test_baseline_window_and_cap():
    b = Baseline(period_s=10, cap=3)
    for t, v in [(0, 1.0), (1, 2.0), (1, -3.0), (2, 4.0)]:
        b.before(t)
        b.add(t, v)
    earlier = b.before(5)
    assert (len(earlier), earlier.percentile(0), earlier.percentile(100)) == (3, -3.0, 4.0)
    assert b.has_negative  # the cap dropped the oldest (1.0) only
    earlier = b.before(11.5)  # [1.5, 11.5): only t=2 is left
    assert (len(earlier), earlier.percentile(50), b.has_negative) == (1, 4.0, False)


def test_baseline_json_round_trip_and_order_check():
    b = Baseline(period_s=100, cap=10)
    for t in range(5):
        b.before(t)
        b.add(t, float(t))
    copy = Baseline(period_s=100, cap=10)
    copy.load(b.to_json())
    assert copy.to_json() == b.to_json()
    assert len(copy.before(10)) == 5
    with pytest.raises(ValueError, match="time order"):
        Baseline(100, 10).load([[5, 1.0], [4, 1.0]])
    with pytest.raises(ValueError, match="time, number"):
        Baseline(100, 10).load([["x", 1.0]])

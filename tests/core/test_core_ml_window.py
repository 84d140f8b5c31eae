"""The rolling window of ML behaviors (agent.core.ml_window): sums of counters over the
last 5 minutes, largest values of gauges, no value before a full window, gaps start it
again, counts straddling the window's start counted for their part inside, the saved
form, and bad input refused by name."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Sequence
from typing import Any

import pytest

from agent.core.metrics import Kind
from agent.core.ml_window import AGGREGATES, WINDOW_S, Window, metric_kind


def run(window: Window, samples: Sequence[tuple[float, float]]) -> list[float | None]:
    return [window.add(t, v) for t, v in samples]


def test_the_table_of_aggregates() -> None:
    assert WINDOW_S == 300.0
    assert AGGREGATES == {Kind.COUNTER: "sum", Kind.GAUGE: "max", Kind.NUMBER: "max"}
    assert metric_kind("aws:all-bytes-out") is Kind.COUNTER
    assert metric_kind("aws:all-packets-in") is Kind.COUNTER
    assert metric_kind("aws:num-established-tcp-connections") is Kind.GAUGE
    assert metric_kind("aws:num-listening-udp-ports") is Kind.GAUGE
    assert metric_kind("temperature") is Kind.NUMBER  # a custom number
    # a custom metric the device says is a count since the previous sample
    counts = frozenset({"num_connections_opened", "aws:num-listening-udp-ports"})
    assert metric_kind("num_connections_opened", counts) is Kind.COUNTER
    assert metric_kind("temperature", counts) is Kind.NUMBER
    assert metric_kind("aws:num-listening-udp-ports", counts) is Kind.GAUGE  # aws: its own
    with pytest.raises(ValueError, match="aws:listening-tcp-ports"):
        metric_kind("aws:listening-tcp-ports")
    with pytest.raises(ValueError, match="port-list"):
        Window(Kind.PORT_LIST)


def test_a_counter_is_summed_over_the_last_300_s_once_it_covers_them() -> None:
    w = Window(Kind.COUNTER)
    out = run(w, [(10.0 * i, 7) for i in range(40)])
    assert out[:30] == [None] * 30  # 0 .. 290 s: less than 300 s seen
    assert out[30:] == [210] * 10  # 30 samples of 7: what the last 300 s held
    assert len(w) == 31  # the 30 counted and the one that marks where they began


def test_a_gauge_is_the_largest_value_in_the_window() -> None:
    """A beacon's connection, seen in one sample every 5 min, is there at every sample."""
    w = Window(Kind.GAUGE)
    samples = [(10.0 * i, 3 if i % 30 == 7 else 2) for i in range(100)]
    out = run(w, samples)
    assert out[:30] == [None] * 30
    assert set(out[30:]) == {3}
    assert out[37 + 29] == 3 and out[37 + 30] == 3  # the next one came in time


def test_a_gauge_spike_leaves_the_window_after_300_s() -> None:
    w = Window(Kind.NUMBER)
    out = run(w, [(10.0 * i, 50.0 if i == 35 else 1.0) for i in range(80)])
    assert out[34] == 1.0
    assert out[35:65] == [50.0] * 30  # in (t - 300, t]
    assert out[65] == 1.0


def test_a_count_straddling_the_window_start_counts_for_its_part_inside() -> None:
    """A sample's count covers the time since the previous sample: the sum covers exactly
    300 s whatever the interval, so a model trained at 10 s judges a device at 200 s."""
    w = Window(Kind.COUNTER)
    assert run(w, [(0.0, 999), (200.0, 200), (400.0, 200)]) == [None, None, 300]
    assert w.add(600.0, 200) == 300  # half of the one at 400, the one at 600
    jittery = Window(Kind.COUNTER)
    times = [0.0, 9.0, 21.0, 30.0, 38.0, 52.0]  # a count of 1 a second, taken unevenly
    values = [0] + [round(b - a) for a, b in itertools.pairwise(times)]
    samples = list(zip(times, values, strict=True))
    samples += [(52.0 + 10 * i, 10) for i in range(1, 40)]
    out = run(jittery, samples)
    assert set(out[31:]) == {300}


def test_a_gap_longer_than_the_window_starts_it_again() -> None:
    """Agent down 20 min: the first count after it covers the gap and is never summed;
    no value until 300 s after the gap."""
    w = Window(Kind.COUNTER)
    before = run(w, [(10.0 * i, 1) for i in range(40)])
    assert before[-1] == 30
    after = run(w, [(1590.0, 120_000)] + [(1590.0 + 10 * i, 1) for i in range(1, 35)])
    assert w.since == 1590.0
    assert after[:30] == [None] * 30
    assert after[30:] == [30] * 5
    # a gap of exactly 300 s is not one: samples every 5 minutes are judged
    sparse = Window(Kind.COUNTER)
    assert run(sparse, [(0.0, 5), (300.0, 6), (600.0, 7), (901.0, 8)]) == [None, 6, 7, None]


def test_missed_samples_shorter_than_the_window_lose_no_count() -> None:
    w = Window(Kind.COUNTER)
    samples = [(10.0 * i, 10) for i in range(40)]
    samples += [(600.0, 210)]  # 20 samples missed: the count covers their 210 s
    samples += [(600.0 + 10 * i, 10) for i in range(1, 10)]
    out = run(w, samples)
    assert out[40] == 300
    assert set(out[41:]) == {300}


def test_time_going_back_is_refused_and_equal_times_add_up() -> None:
    w = Window(Kind.COUNTER)
    w.add(100.0, 1)
    said = re.escape("sample time 99.0 is before the previous 100.0")
    with pytest.raises(ValueError, match=said):
        w.add(99.0, 1)
    w.add(100.0, 2)
    out = run(w, [(100.0 + 10 * i, 1) for i in range(1, 31)])
    assert out[-1] == 30


def test_the_saved_form_goes_on_where_it_was() -> None:
    w = Window(Kind.COUNTER, window_s=60.0)
    run(w, [(10.0 * i, i) for i in range(9)])
    doc = json.loads(json.dumps(w.to_json()))
    again = Window.from_json(Kind.COUNTER, doc)
    assert (again.window_s, again.since, len(again)) == (60.0, 0.0, len(w))
    assert again.add(90.0, 9) == w.add(90.0, 9) == sum(range(4, 10))
    assert len(json.dumps(doc)) < 40 * 31  # 30 samples at 10 s: about a kilobyte


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ([], "is not an object"),
        ({"windowS": 0, "since": 0, "samples": [[0, 1]]}, "ML window 0 "),
        ({"windowS": 300, "since": 0, "samples": []}, "samples"),
        ({"windowS": 300, "since": 0, "samples": [[0, -1]]}, "sample \\[0, -1\\]"),
        ({"windowS": 300, "since": 0, "samples": [[5, 1], [4, 1]]}, "time order"),
        ({"windowS": 300, "since": 9, "samples": [[5, 1]]}, "since"),
        ({"windowS": 300, "since": None, "samples": [[5, 1]]}, "since"),
    ],
)
def test_a_bad_saved_window_names_what_is_wrong(doc: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Window.from_json(Kind.COUNTER, doc)


@pytest.mark.parametrize("bad", [0, -5.0, 86_401.0, True, "300", float("nan")])
def test_a_bad_window_length_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a number of seconds"):
        Window(Kind.COUNTER, bad)  # type: ignore[arg-type]


def reference(kind: Kind, samples: Sequence[tuple[float, int]], w: float) -> list[float | None]:
    """What each add should give, from every sample seen, by the rule written out."""
    out: list[float | None] = []
    since = 0
    for i, (t, _) in enumerate(samples):
        if i and t - samples[i - 1][0] > w:
            since = i
        start = t - w
        if samples[since][0] > start:
            out.append(None)
            continue
        run = samples[since : i + 1]
        if AGGREGATES[kind] == "max":
            out.append(max(v for s, v in run[1:] if s > start))
            continue
        total = 0.0
        for (p, _), (s, v) in itertools.pairwise(run):
            if s > start:
                total += v * (s - max(p, start)) / (s - p)
        out.append(round(total))
    return out


@pytest.mark.parametrize("kind", [Kind.COUNTER, Kind.GAUGE])
@pytest.mark.parametrize("top", [10**6, 4])  # 4: a gauge's largest value is often tied
@pytest.mark.parametrize("seed", range(5))
def test_the_window_agrees_with_the_rule_written_out(kind: Kind, top: int, seed: int) -> None:
    """Random intervals (1-60 s, now and then a gap of 5-30 minutes) and values."""
    rng = random.Random(seed)
    t, samples = 0.0, []
    for _ in range(3000):
        t += rng.uniform(300, 1800) if rng.random() < 0.005 else rng.uniform(1, 60)
        samples.append((t, rng.randrange(0, top) if rng.random() < 0.9 else 0))
    got = run(Window(kind), samples)
    want = reference(kind, samples, WINDOW_S)
    assert [g is None for g in got] == [w is None for w in want]
    assert sum(g is not None for g in got) > 2000
    for g, w in zip(got, want, strict=True):
        if g is not None and w is not None:
            assert abs(g - w) <= 1

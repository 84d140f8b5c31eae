"""The ML Detect evaluation (hw/ml_eval.py) in its quick setting: 14 days of 30 s
datapoints to train, then a benign day, a day with the upload doubled from 01:00 to
04:00, and a benign weekday; judged as the agent does (the rolling 5-minute aggregate at
every datapoint) and, for comparison, each datapoint alone. Judged as the agent does,
the doubling is caught at HIGH within 45 minutes, on more than 40% of its datapoints,
with no false flag on the benign days at MEDIUM or HIGH; each level catches more of it
than judging each datapoint alone did. Over seeds 1-5 the first HIGH flag came 5-34 min
in (recall 50-60%): the bounds leave room."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.core.ml import CONFIDENCE_LEVELS
from hw.ml_eval import DETECTORS, QUICK, Result, evaluate, main, report

DOUBLING = "night doubling"


@pytest.fixture(scope="module")
def rolling() -> Result:
    return evaluate("rolling", replace(QUICK, window_s=300.0), seed=1)


@pytest.fixture(scope="module")
def alone() -> Result:
    return evaluate("alone", QUICK, seed=1)


def test_the_night_doubling_is_caught_at_high_within_45_minutes(rolling: Result) -> None:
    assert rolling.labelled[DOUBLING] == 738  # 3 h and the 4.5 min its windows still hold, x2
    high = rolling.tallies["HIGH"]
    assert high.first[DOUBLING] - rolling.anomaly_start[DOUBLING] < 45 * 60
    assert high.hit[DOUBLING] / rolling.labelled[DOUBLING] > 0.4
    hits = [rolling.tallies[level].hit[DOUBLING] for level in CONFIDENCE_LEVELS]
    assert hits[0] >= hits[1] >= hits[2]


def test_no_false_flag_on_the_benign_days_at_medium_or_high(rolling: Result) -> None:
    assert QUICK.benign_days == [0, 2]
    for level in ("MEDIUM", "HIGH"):
        assert rolling.tallies[level].benign_fp == 0, level
        assert rolling.tallies[level].fp == 0, level
    # the static rule that catches as much is noisy: the comparison means something
    assert rolling.tallies["static, best F1"].benign_alarms > 50


def test_the_rolling_window_catches_more_than_each_datapoint_alone(
    rolling: Result, alone: Result
) -> None:
    for level in CONFIDENCE_LEVELS:
        new = rolling.tallies[level].hit[DOUBLING] / rolling.labelled[DOUBLING]
        old = alone.tallies[level].hit[DOUBLING] / alone.labelled[DOUBLING]
        assert new > old + 0.2, level
    old_high = alone.tallies["HIGH"].first[DOUBLING] - alone.anomaly_start[DOUBLING]
    new_high = rolling.tallies["HIGH"].first[DOUBLING] - rolling.anomaly_start[DOUBLING]
    assert new_high < old_high


def test_the_report_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "ml-eval.md").read_text()
    assert text == capsys.readouterr().out
    for name in DETECTORS:
        assert f"| rolling 5 min | {name} |" in text
        assert f"| each 30 s | {name} |" in text
    assert "| night doubling | 720 |" in text  # each datapoint alone
    assert "| night doubling | 738 |" in text  # rolling


def test_the_report_counts_what_was_flagged(rolling: Result) -> None:
    text = report(rolling)
    high = rolling.tallies["HIGH"]
    share = high.hit[DOUBLING] / 738
    assert f"| HIGH | 100.0% | {share:.1%} | 0 | 0 |" in text

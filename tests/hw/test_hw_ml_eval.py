"""The ML Detect evaluation (hw/ml_eval.py) in its quick setting: 14 days of 30 s
datapoints to train, then a benign day, a day with the upload doubled from 01:00 to
04:00, and a benign weekday. The model must see the doubling at every confidence level
and raise no false flag on the benign days at HIGH; its report holds the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.ml import CONFIDENCE_LEVELS
from hw.ml_eval import DETECTORS, QUICK, Result, evaluate, main, report


@pytest.fixture(scope="module")
def result() -> Result:
    return evaluate("quick", QUICK, seed=1)


def test_the_night_doubling_is_detected_at_every_level(result: Result) -> None:
    labelled = result.labelled["night doubling"]
    assert labelled == 720  # 3 h of 30 s datapoints, bytes and packets
    for level in CONFIDENCE_LEVELS:
        tally = result.tallies[level]
        assert tally.hit.get("night doubling", 0) > 0, level
        assert tally.first["night doubling"] - result.anomaly_start["night doubling"] < 3 * 3600
    hits = [result.tallies[level].hit["night doubling"] for level in CONFIDENCE_LEVELS]
    assert hits[0] >= hits[1] >= hits[2]


def test_no_false_flag_on_the_benign_days_at_high(result: Result) -> None:
    assert QUICK.benign_days == [0, 2]
    assert result.tallies["HIGH"].benign_fp == 0
    assert result.tallies["HIGH"].fp == 0
    # the static rule that catches as much is noisy: the comparison means something
    assert result.tallies["static, best F1"].benign_fp > 100


def test_the_report_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "ml-eval.md").read_text()
    assert text == capsys.readouterr().out
    for name in DETECTORS:
        assert f"| {name} |" in text
    assert "| night doubling | 720 |" in text


def test_the_report_counts_what_was_flagged(result: Result) -> None:
    text = report(result)
    high = result.tallies["HIGH"]
    share = high.hit["night doubling"] / 720
    assert f"| HIGH | 100.0% | {share:.1%} | 0 | 0 |" in text

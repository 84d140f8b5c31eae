"""The ML Detect evaluation (hw/ml_eval.py) in its quick setting: 14 days of 30 s
datapoints to train, then a benign day, a day with the upload doubled from 01:00 to
04:00, a benign weekday and a day with a beacon (a connection and 800 B every 5 minutes);
judged as the agent does (the rolling 5-minute aggregate at every datapoint) and, for
comparison, each datapoint alone. Judged as the agent does, the doubling is caught at
HIGH within 45 minutes, on more than 40% of its datapoints, with no false flag on the
benign days at MEDIUM or HIGH; each level catches more of it than judging each datapoint
alone did. Over seeds 1-5 the first HIGH flag came 5-34 min in (recall 50-60%): the
bounds leave room.

The beacon (every 5 minutes ±20%) is one more destination the device connects to at a
regular interval (num_periodic_destinations), against the check-in and the nightly sync
it always has: every level flags it from its 9th connection, about 40 minutes in, day
and night, and flags nothing of that metric on the benign days.

The beacon also moves the count of connections opened (num_connections_opened) by one
every 5 minutes: a 5-minute sum of 1, which benign nights hold too, so no level sees it there
(over seeds 1-5: at most 11 of about 700 night datapoints flagged, at LOW). Summed over an hour
(`train --window-s 3600` for that metric) it is 12 against a benign 2 or so: LOW flags
42-74% of the night's datapoints, the first 1.1-2.5 h in, MEDIUM 0-30%, HIGH none; and
MEDIUM and HIGH flag nothing on the benign days."""

from __future__ import annotations

import pytest

from agent.core.ml import CONFIDENCE_LEVELS
from hw.ml_eval import (
    BEACON,
    DETECTORS,
    OPENED,
    PERIODIC,
    QUICK,
    Result,
    document,
    evaluate,
    report,
    runs,
)

DOUBLING = "night doubling"
NIGHT = (BEACON, OPENED, "night")  # the beacon on the connections opened, 00:00-06:00


@pytest.fixture(scope="module")
def quick() -> list[Result]:
    """The runs `python -m hw.ml_eval --quick` makes: alone, rolling, hourly."""
    return [evaluate(title, setting, 1, short) for title, short, setting in runs(QUICK)]


@pytest.fixture(scope="module")
def alone(quick: list[Result]) -> Result:
    return quick[0]


@pytest.fixture(scope="module")
def rolling(quick: list[Result]) -> Result:
    """As the agent does: the rolling 5-minute window."""
    assert quick[1].setting.window_s == 300.0 and not quick[1].setting.windows
    return quick[1]


@pytest.fixture(scope="module")
def hourly(quick: list[Result]) -> Result:
    """As the agent does, with the connections opened trained and judged over an hour."""
    assert quick[2].setting.windows == ((OPENED, 3600.0),)
    return quick[2]


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
        # elsewhere: mostly the hourly drift's alarms that end hours after an anomaly
        t = rolling.tallies[level]
        assert t.fp - t.tail_fp <= 0.02 * t.tp, level
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


def test_the_beacon_is_seen_at_night_on_the_hourly_count_of_connections_opened(
    rolling: Result, hourly: Result
) -> None:
    assert QUICK.benign_days == [0, 2]
    # 6 h of 30 s datapoints, less those whose window the jittered beacon skipped
    assert 650 < rolling.labelled_on[NIGHT] < hourly.labelled_on[NIGHT] == 720
    for level in CONFIDENCE_LEVELS:  # a 5-minute sum of 1: benign nights have those
        assert rolling.tallies[level].hit_on.get(NIGHT, 0) < 0.05 * rolling.labelled_on[NIGHT]
    low = hourly.tallies["LOW"]
    assert low.hit_on[NIGHT] / hourly.labelled_on[NIGHT] > 0.35
    assert low.first_on[(BEACON, OPENED)] - hourly.anomaly_start[BEACON] < 3 * 3600
    for level in ("MEDIUM", "HIGH"):
        assert hourly.tallies[level].benign_fp == 0, level


def test_the_beacon_is_caught_at_every_level_as_one_more_periodic_destination(
    rolling: Result,
) -> None:
    day = (BEACON, PERIODIC, "day")
    for level in CONFIDENCE_LEVELS:
        t = rolling.tallies[level]
        assert t.first_on[(BEACON, PERIODIC)] - rolling.anomaly_start[BEACON] < 45 * 60, level
        assert t.hit_on[day] >= 0.99 * rolling.labelled_on[day], level
        night = (BEACON, PERIODIC, "night")
        assert t.hit_on[night] / rolling.labelled_on[night] > 0.8, level
    # the device's check-in and nightly sync are periodic too: the model's normal is 2
    model = rolling.models[PERIODIC]
    assert {round(model.explain(t, 0)["expected"]) for t in range(0, 7 * 86400, 3600)} == {2}


def test_the_document_holds_every_run(quick: list[Result]) -> None:
    text = document(QUICK, 1, quick)
    for name in DETECTORS:
        assert f"| rolling 5 min | {name} |" in text
        assert f"| each 30 s | {name} |" in text
        assert f"| rolling 5 min, {OPENED} 1 h | {name} |" in text
    assert "| night doubling | 720 |" in text  # each datapoint alone
    assert "| night doubling | 738 |" in text  # rolling
    assert "## Compared (seed 1)" in text and text.count("\n## ") == 4


def test_the_report_counts_what_was_flagged(rolling: Result) -> None:
    text = report(rolling)
    high = rolling.tallies["HIGH"]
    share = high.tp / sum(rolling.labelled.values())  # the doubling's and the beacon's
    assert f"| HIGH | {high.precision():.1%} | {share:.1%} | 0 | 0 | {high.tail_fp} |" in text

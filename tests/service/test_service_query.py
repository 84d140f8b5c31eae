"""The query verbs as a user runs them: `python -m agent <verb> --config ...` in a real
subprocess against a store filled through the store API, also while a writer is busy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent.core.report import parse_envelope
from agent.store.db import open_db
from agent.store.history import MIGRATIONS, History, history_path, open_history

REPO = Path(__file__).resolve().parents[2]
T0 = 1_730_000_000.0  # 2024-10-27T03:33:20Z

STATIC = {
    "name": "tcp-ports",
    "metric": "aws:num-listening-tcp-ports",
    "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}},
}
STATISTICAL = {
    "name": "bytes-out",
    "metric": "aws:all-bytes-out",
    "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p99"}},
    "suppressAlerts": True,
}
ML = {
    "name": "packets-in",
    "metric": "aws:all-packets-in",
    "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}},
}
# (violation id, thing, profile, behavior, start step, end step and type or None)
VIOLATIONS = [
    ("a1", "pi-1", "base", STATIC, 0, (3, "alarm-cleared")),
    ("a2", "pi-1", "strict", STATISTICAL, 1, None),
    ("a3", "gw-2", "base", ML, 1, (6, "alarm-invalidated")),
    ("a4", "gw-2", "strict", STATIC, 2, None),
    ("a5", "pi-1", "base", ML, 4, None),
    ("a6", "gw-2", "base", STATISTICAL, 5, (7, "alarm-cleared")),
]
STEP_S = 300.0


def _event(
    vid: str, thing: str, profile: str, behavior: dict[str, Any], kind: str, at: float
) -> dict[str, Any]:
    return {
        "violationId": vid,
        "thingName": thing,
        "securityProfileName": profile,
        "behavior": behavior,
        "metricValue": {"count": 7},
        "violationEventType": kind,
        "verificationState": "UNKNOWN",
        "violationEventTime": at,
    }


def fill(store: History) -> None:
    """Record VIOLATIONS step by step as the daemon would, with a metrics report per step."""
    for step in range(8):
        now = T0 + step * STEP_S
        events, active = [], []
        for vid, thing, profile, behavior, start, end in VIOLATIONS:
            if start == step:
                events.append(_event(vid, thing, profile, behavior, "in-alarm", now))
            if end is not None and end[0] == step:
                events.append(_event(vid, thing, profile, behavior, end[1], now))
            if start <= step and (end is None or step < end[0]):
                active.append(
                    {
                        "violationId": vid,
                        "thingName": thing,
                        "securityProfileName": profile,
                        "behavior": behavior,
                        "lastViolationValue": {"count": 7},
                        "lastViolationTime": now,
                        "violationStartTime": T0 + start * STEP_S,
                        "verificationState": "UNKNOWN",
                    }
                )
        store.record(events, active, {"step": step})
        store.add_metrics(
            now, {"hed": {"rid": step + 1, "v": "1.0"}, "met": {"tp": {"pts": [], "t": step}}}
        )
    store.flush_metrics()  # the metrics history is written in batches


@pytest.fixture
def config(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    path = tmp_path / "config.toml"
    path.write_text(f'state_dir = "{state}"\n')
    return path


@pytest.fixture
def store(config: Path) -> Iterator[History]:
    with open_history(history_path(config.parent / "state")) as h:
        fill(h)
        yield h


def cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *argv, "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )


def ok_json(config: Path, *argv: str) -> dict[str, Any]:
    done = cli(config, *argv)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


EVERYTHING = ("--start-time", "0", "--end-time", str(T0 + 1e6))


def test_list_violation_events_prints_the_aws_answer(config: Path, store: History) -> None:
    answer = ok_json(config, "list-violation-events", *EVERYTHING)
    assert answer == store.list_violation_events(0, T0 + 1e6)
    assert "nextToken" not in answer
    events = answer["violationEvents"]
    assert len(events) == 9
    assert all(isinstance(e["violationEventTime"], float) for e in events)


@pytest.mark.parametrize(
    ("flags", "filters"),
    [
        (["--thing-name", "gw-2"], {"thing_name": "gw-2"}),
        (["--security-profile-name", "strict"], {"security_profile_name": "strict"}),
        (["--behavior-criteria-type", "STATIC"], {"behavior_criteria_type": "STATIC"}),
        (
            ["--behavior-criteria-type", "MACHINE_LEARNING"],
            {"behavior_criteria_type": "MACHINE_LEARNING"},
        ),
        (["--list-suppressed-alerts"], {"list_suppressed_alerts": True}),
        (["--no-list-suppressed-alerts"], {"list_suppressed_alerts": False}),
        (
            ["--thing-name", "pi-1", "--no-list-suppressed-alerts"],
            {"thing_name": "pi-1", "list_suppressed_alerts": False},
        ),
    ],
)
def test_filter_flags(
    config: Path, store: History, flags: list[str], filters: dict[str, Any]
) -> None:
    events = ok_json(config, "list-violation-events", *EVERYTHING, *flags)
    expected = store.list_violation_events(0, T0 + 1e6, **filters)
    assert events == expected
    assert 0 < len(expected["violationEvents"]) < 9
    active = ok_json(config, "list-active-violations", *flags)
    assert active == store.list_active_violations(**filters)


def test_pages_through_next_token(config: Path, store: History) -> None:
    listed: list[dict[str, Any]] = []
    token: list[str] = []
    pages = 0
    while True:
        answer = ok_json(config, "list-violation-events", *EVERYTHING, "--max-results", "4", *token)
        pages += 1
        assert len(answer["violationEvents"]) <= 4
        listed += answer["violationEvents"]
        if "nextToken" not in answer:
            break
        token = ["--next-token", answer["nextToken"]]
    assert pages == 3
    assert listed == store.list_violation_events(0, math.inf)["violationEvents"]


def _iso_forms(t: float) -> list[str]:
    moment = datetime.fromtimestamp(t, UTC)
    return [
        moment.isoformat().replace("+00:00", "Z"),
        moment.astimezone(timezone(timedelta(hours=2))).isoformat(),
        moment.replace(tzinfo=None).isoformat(),  # no offset: UTC, as the AWS CLI reads it
        repr(t),
    ]


def test_times_as_iso_8601_or_epoch_seconds(config: Path, store: History) -> None:
    start, end = T0 + 2 * STEP_S, T0 + 6 * STEP_S
    expected = store.list_violation_events(start, end)
    assert 0 < len(expected["violationEvents"]) < 9
    for start_text, end_text in zip(_iso_forms(start), _iso_forms(end), strict=True):
        answer = ok_json(
            config, "list-violation-events", "--start-time", start_text, "--end-time", end_text
        )
        assert answer == expected, (start_text, end_text)


@pytest.mark.parametrize(
    ("argv", "status", "named"),
    [
        (
            ["list-violation-events", "--start-time", "yesterday", "--end-time", "0"],
            2,
            "--start-time",
        ),
        (["list-violation-events", "--start-time", "0", "--end-time", "nan"], 2, "--end-time"),
        (["export-metrics", "--start-time", "-1", "--end-time", "0"], 2, "before 1970"),
        (["export-metrics", "--start-time", "0", "--end-time", "1e12"], 2, "after 9999"),
        (
            ["list-violation-events", "--start-time", "1969-12-31T23:00:00", "--end-time", "0"],
            2,
            "--start-time: -3600.0 is before 1970",
        ),
        # A forged token holding NaN, then one holding an integer beyond 64 bits
        (["list-active-violations", "--next-token", "WyJhY3RpdmUiLE5hTiwieCJd"], 2, "--next-token"),
        (
            [
                "list-active-violations",
                "--next-token",
                "WyJhY3RpdmUiLDEuMCw5MjIzMzcyMDM2ODU0Nzc1ODA4XQ",
            ],
            2,
            "--next-token",
        ),
        (["list-violation-events", *EVERYTHING, "--next-token", "Zm9v"], 2, "--next-token"),
        (["list-active-violations", "--max-results", "251"], 2, "--max-results"),
        (["list-active-violations", "--max-results", "lots"], 2, "--max-results"),
        (
            ["list-active-violations", "--behavior-criteria-type", "FUZZY"],
            2,
            "--behavior-criteria-type",
        ),
        (["list-violation-events", "--start-time", "9", "--end-time", "1"], 2, "--end-time"),
        (
            [
                "put-verification-state-on-violation",
                "--violation-id",
                "nope",
                "--verification-state",
                "UNKNOWN",
            ],
            1,
            "'nope'",
        ),
    ],
)
def test_bad_input_is_a_clear_error(
    config: Path, store: History, argv: list[str], status: int, named: str
) -> None:
    done = cli(config, *argv)
    assert done.returncode == status
    assert named in done.stderr
    assert done.stdout == ""


def test_missing_store_is_reported(config: Path) -> None:
    done = cli(config, "list-active-violations")
    assert done.returncode == 1
    assert "no store at" in done.stderr
    assert str(history_path(config.parent / "state")) in done.stderr
    assert not history_path(config.parent / "state").exists()


def test_put_verification_state(config: Path, store: History) -> None:
    done = cli(
        config,
        "put-verification-state-on-violation",
        "--violation-id",
        "a2",
        "--verification-state",
        "BENIGN_POSITIVE",
        "--verification-state-description",
        "nightly backup",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {}
    marked = ok_json(config, "list-active-violations", "--verification-state", "BENIGN_POSITIVE")
    assert [a["violationId"] for a in marked["activeViolations"]] == ["a2"]
    assert marked["activeViolations"][0]["verificationStateDescription"] == "nightly backup"
    events = ok_json(
        config, "list-violation-events", *EVERYTHING, "--verification-state", "UNKNOWN"
    )
    assert len(events["violationEvents"]) == 8
    assert "a2" not in {e["violationId"] for e in events["violationEvents"]}


def test_table_output(config: Path, store: History) -> None:
    done = cli(
        config, "list-violation-events", *EVERYTHING, "--max-results", "5", "--output", "table"
    )
    assert done.returncode == 0, done.stderr
    header, *rows, token = done.stdout.splitlines()
    assert header.split()[:3] == ["TIME", "TYPE", "THING"]
    assert len(rows) == 5
    assert rows[0].split()[:3] == ["2024-10-27T03:33:20Z", "in-alarm", "pi-1"]
    assert token.startswith("nextToken: ")
    rest = ok_json(config, "list-violation-events", *EVERYTHING, "--next-token", token.split()[1])
    assert len(rest["violationEvents"]) == 4

    done = cli(config, "list-active-violations", "--output", "table", "--list-suppressed-alerts")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert "bytes-out (suppressed)" in lines[1]
    assert lines[1].split()[-1] == "a2"


def test_export_metrics_is_replay_input(config: Path, store: History) -> None:
    done = cli(
        config,
        "export-metrics",
        "--start-time",
        str(T0 + STEP_S),
        "--end-time",
        str(T0 + 4 * STEP_S),
    )
    assert done.returncode == 0, done.stderr
    records = [parse_envelope(json.loads(line)) for line in done.stdout.splitlines()]
    assert [ts for ts, _ in records] == [T0 + s * STEP_S for s in (1, 2, 3)]
    assert [r["metrics"]["listening_tcp_ports"]["total"] for _, r in records] == [1, 2, 3]
    assert records[0][1]["header"] == {"report_id": 2, "version": "1.0"}


def test_reader_is_not_blocked_by_a_writer_transaction(config: Path, store: History) -> None:
    before = store.list_violation_events(0, math.inf)
    writer = open_db(history_path(config.parent / "state"), MIGRATIONS)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM violation_events")  # uncommitted: readers must not see it
    try:
        assert ok_json(config, "list-violation-events", *EVERYTHING) == before
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_reader_works_while_a_writer_records(config: Path, store: History) -> None:
    stop = threading.Event()
    steps: list[int] = []

    def write() -> None:
        with open_history(history_path(config.parent / "state")) as own:
            step = 100
            while not stop.is_set():
                at = T0 + step * STEP_S
                own.record(
                    [_event(f"w{step}", "pi-1", "base", STATIC, "in-alarm", at)], [], {"step": step}
                )
                steps.append(step)
                step += 1
                stop.wait(0.01)  # a daemon's pace, and the event count stays under a page

    thread = threading.Thread(target=write)
    thread.start()
    try:
        counts = []
        for _ in range(4):
            answer = ok_json(
                config, "list-violation-events", "--start-time", "0", "--end-time", "253402300799"
            )
            counts.append(len(answer["violationEvents"]))
    finally:
        stop.set()
        thread.join()
    assert counts == sorted(counts)
    assert counts[-1] > counts[0] >= 9
    assert len(steps) >= counts[-1] - 9

"""The status file (written atomically by the daemon each cycle) and `edge-defender
status`, which reads it and the store without talking to the daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.service.status import (
    STATUS_FILE,
    AgentStatus,
    StatusError,
    not_running_reason,
    read_status,
    write_status,
)
from agent.store.history import history_path, open_history


def sample_status(**changes: Any) -> AgentStatus:
    now = time.time()
    status: AgentStatus = {
        "pid": os.getpid(),
        "started_at": now - 3600,
        "updated_at": now - 2,
        "interval_s": 10.0,
        "last_sample_time": now - 2,
        "samples": 360,
        "reports": {"sent": 12, "accepted": 11, "rejected": 1},
        "broker": {"endpoint": "a1b2-ats.iot.eu-west-1.amazonaws.com", "connected": True},
        "spool": {"depth": 2, "bytes": 900, "dropped": {"metrics": 4, "violation": 0}},
        "active_violations": 1,
        "profiles": ["raspberry-pi-baseline"],
        "inactive_behaviors": ["raspberry-pi-baseline/cpu-usage: no custom metric cpu_usage"],
    }
    status.update(changes)
    return status


def active_violation(n: int) -> dict[str, Any]:
    return {
        "violationId": f"v{n:04d}",
        "thingName": "pi-1",
        "securityProfileName": "raspberry-pi-baseline",
        "behavior": {
            "name": "listening-tcp-ports",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
        },
        "lastViolationValue": {"ports": [22, 8080]},
        "lastViolationTime": 1767600000.0 + n,
        "violationStartTime": 1767600000.0 + n,
    }


def status_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, str, str]:
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    code = main(["status", "--config", str(config), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_write_then_read_gives_the_same_status(tmp_path: Path) -> None:
    status = sample_status()
    write_status(tmp_path, status)
    assert read_status(tmp_path) == status
    write_status(tmp_path, sample_status(samples=361))
    assert read_status(tmp_path)["samples"] == 361
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATUS_FILE]  # no temp left


def test_no_status_file_is_none(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{", "not valid JSON"),
        ("[1]", "not a JSON object"),
        ('{"updated_at": 1, "interval_s": 10}', "pid: missing or not a number"),
        ('{"pid": 1, "updated_at": "today", "interval_s": 10}', "updated_at: missing"),
        ('{"pid": true, "updated_at": 1, "interval_s": 10}', "pid: missing"),
    ],
)
def test_a_bad_status_file_is_named(tmp_path: Path, content: str, complaint: str) -> None:
    (tmp_path / STATUS_FILE).write_text(content)
    with pytest.raises(StatusError, match=f"{tmp_path / STATUS_FILE}: {complaint}"):
        read_status(tmp_path)


def test_liveness() -> None:
    now = time.time()
    assert not_running_reason(dict(sample_status(updated_at=now - 29)), now) is None
    stale = not_running_reason(dict(sample_status(updated_at=now - 31)), now)
    assert stale == "last update 31 s ago, more than 3 sampling intervals of 10 s"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = int(child.stdout)  # reaped: no process has this pid now
    assert not_running_reason(dict(sample_status(pid=gone)), now) == f"process {gone} is gone"
    assert not_running_reason(None, now) == (
        "no status file: the agent has not run with this state_dir"
    )


def test_another_users_process_counts_as_alive() -> None:
    # pid 1 exists and, unless we are root, signalling it is refused: still alive.
    assert not_running_reason(dict(sample_status(pid=1)), time.time()) is None


def test_status_table_of_a_running_agent_without_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(tmp_path, sample_status())
    code, out, _ = status_cli(tmp_path, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "state               running"
    assert lines[1] == f"pid                 {os.getpid()}"
    assert "reports             sent 12, accepted 11, rejected 1" in lines
    assert "broker              a1b2-ats.iot.eu-west-1.amazonaws.com, connected" in lines
    assert "spool               2 messages, 900 bytes; dropped 4 metrics, 0 violation" in lines
    assert "active violations   1" in lines  # from the status file: no store yet
    assert "profiles            raspberry-pi-baseline" in lines
    assert (
        lines[-1]
        == "                    raspberry-pi-baseline/cpu-usage: no custom metric cpu_usage"
    )


def test_status_counts_active_violations_from_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(tmp_path, sample_status(active_violations=0))
    with open_history(history_path(tmp_path)) as store:
        # More than one page of the store's listing (250).
        store.record([], [active_violation(n) for n in range(260)], {})
    code, out, _ = status_cli(tmp_path, capsys, "--output", "json")
    assert code == 0
    answer = json.loads(out)
    assert answer["running"] is True
    assert len(answer["active_violations"]) == 260
    code, out, _ = status_cli(tmp_path, capsys)
    assert "active violations   260" in out.splitlines()
    assert (
        "                    raspberry-pi-baseline/listening-tcp-ports"
        " since 2026-01-05T08:00:00Z" in out
    )


def test_status_json_of_a_stale_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = sample_status(updated_at=time.time() - 600)
    write_status(tmp_path, written)
    code, out, _ = status_cli(tmp_path, capsys, "--output", "json")
    assert code == 3
    answer = json.loads(out)
    assert answer["running"] is False
    assert answer["reason"].startswith("last update 600 s ago")
    assert answer["status"] == written
    assert answer["status_file"] == str(tmp_path / STATUS_FILE)
    assert answer["active_violations"] is None


def test_status_without_status_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = status_cli(tmp_path, capsys)
    assert code == 3
    assert out == (
        "state               not running: no status file: the agent has not run with this"
        " state_dir\n"
    )


def test_status_with_a_broken_file_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / STATUS_FILE).write_text("{")
    code, out, err = status_cli(tmp_path, capsys)
    assert code == 1
    assert out == ""
    assert err.startswith(f"edge-defender: status: {tmp_path / STATUS_FILE}: not valid JSON")

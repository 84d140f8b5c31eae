"""The status file the daemon rewrites each cycle in its state directory, and the
`edge-defender status` command that reads it (and the store's active violations), so
an operator sees what the agent is doing without talking to the daemon."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Literal, TypedDict

from agent.config import Config
from agent.service.text import iso_time
from agent.store.history import StoreNotFound, history_path, open_history

STATUS_FILE = "status.json"
# Missed updates before the agent counts as not running: one late cycle is not a hang.
STALE_INTERVALS = 3


class Reports(TypedDict):
    sent: int
    accepted: int
    rejected: int


class Broker(TypedDict):
    endpoint: str | None
    connected: bool


class Dropped(TypedDict):
    metrics: int
    violation: int


class Spool(TypedDict):
    depth: int  # messages waiting
    bytes: int
    dropped: Dropped


class AgentStatus(TypedDict):
    """What the daemon writes each cycle. Times are epoch seconds."""

    pid: int
    started_at: float
    updated_at: float
    interval_s: float  # the sampling interval, to judge how old is too old
    last_sample_time: float | None  # None until the first sample
    samples: int
    reports: Reports
    broker: Broker
    spool: Spool
    active_violations: int
    profiles: list[str]  # security profile names
    inactive_behaviors: list[str]  # "profile/behavior: why it is not judged"


class StatusError(ValueError):
    """A status file that cannot be read; the message names it."""


def write_status(state_dir: Path, status: AgentStatus) -> None:
    """Replace the status file atomically: readers see the old or the new one, never half.
    No fsync: the file is advisory and rewritten next cycle."""
    path = Path(state_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.tmp")
    tmp.write_text(json.dumps(status, separators=(",", ":")))
    os.replace(tmp, path)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status the daemon wrote, or None when it never wrote one."""
    path = Path(state_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StatusError(f"{path}: cannot read: {e.strerror}") from None
    except ValueError as e:
        raise StatusError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(status, dict):
        raise StatusError(f"{path}: not a JSON object")
    for key, kind in (("pid", int), ("updated_at", int | float), ("interval_s", int | float)):
        if not isinstance(status.get(key), kind) or isinstance(status[key], bool):
            raise StatusError(f"{path}: {key}: missing or not a number")
    return status


def not_running_reason(status: dict[str, Any] | None, now: float) -> str | None:
    """Why the agent that wrote `status` is not running, or None when it is."""
    if status is None:
        return "no status file: the agent has not run with this state_dir"
    age = now - status["updated_at"]
    if age > STALE_INTERVALS * status["interval_s"]:
        return (
            f"last update {age:.0f} s ago, more than {STALE_INTERVALS} sampling intervals"
            f" of {status['interval_s']:g} s"
        )
    try:
        os.kill(status["pid"], 0)
    except ProcessLookupError:
        return f"process {status['pid']} is gone"
    except PermissionError:
        pass  # it exists, as another user
    return None


def _active_violations(state_dir: str) -> list[dict[str, Any]] | None:
    """Every active violation in the store, or None when there is no store yet."""
    found: list[dict[str, Any]] = []
    token: str | None = None
    try:
        with open_history(history_path(state_dir), create=False) as store:
            while True:
                page = store.list_active_violations(next_token=token)
                found.extend(page["activeViolations"])
                token = page.get("nextToken")
                if token is None:
                    return found
    except StoreNotFound:
        return None


def _when(seconds: float | None, now: float) -> str:
    if seconds is None:
        return "never"
    return f"{iso_time(seconds)} ({now - seconds:.0f} s ago)"


def _table(answer: dict[str, Any], now: float) -> str:
    status, reason, active = answer["status"], answer["reason"], answer["active_violations"]
    state = "running" if reason is None else f"not running: {reason}"
    if status is None:
        return f"{'state':<20}{state}"
    reports = status.get("reports", {})
    broker = status.get("broker", {})
    spool = status.get("spool", {})
    dropped = spool.get("dropped", {})
    rows = [
        ("state", state),
        ("pid", str(status["pid"])),
        ("started", _when(status.get("started_at"), now)),
        ("last update", _when(status["updated_at"], now)),
        ("last sample", _when(status.get("last_sample_time"), now)),
        ("samples", str(status.get("samples", 0))),
        (
            "reports",
            f"sent {reports.get('sent', 0)}, accepted {reports.get('accepted', 0)},"
            f" rejected {reports.get('rejected', 0)}",
        ),
        (
            "broker",
            f"{broker.get('endpoint') or '(none)'},"
            f" {'connected' if broker.get('connected') else 'not connected'}",
        ),
        (
            "spool",
            f"{spool.get('depth', 0)} messages, {spool.get('bytes', 0)} bytes; dropped"
            f" {dropped.get('metrics', 0)} metrics, {dropped.get('violation', 0)} violation",
        ),
        (
            "active violations",
            str(status.get("active_violations", 0) if active is None else len(active)),
        ),
        *(
            (
                "",
                f"{v.get('securityProfileName')}/{v.get('behavior', {}).get('name')}"
                f" since {_when(v.get('violationStartTime'), now)}",
            )
            for v in active or []
        ),
        ("profiles", ", ".join(status.get("profiles", [])) or "none"),
        ("inactive behaviors", str(len(status.get("inactive_behaviors", [])))),
        *(("", text) for text in status.get("inactive_behaviors", [])),
    ]
    return "\n".join(f"{key:<20}{value}".rstrip() for key, value in rows)


def run_status(cfg: Config, output: Literal["table", "json"]) -> int:
    """Print what the agent is doing. Exit status: 0 running, 3 not running (as systemctl's),
    1 the status file or the store cannot be read."""
    now = time.time()
    try:
        status = read_status(Path(cfg.state_dir))
        active = _active_violations(cfg.state_dir)
    except StatusError as e:
        print(f"edge-defender: status: {e}", file=sys.stderr)
        return 1
    except sqlite3.Error as e:
        print(f"edge-defender: status: {history_path(cfg.state_dir)}: {e}", file=sys.stderr)
        return 1
    reason = not_running_reason(status, now)
    answer = {
        "running": reason is None,
        "reason": reason,
        "status_file": str(Path(cfg.state_dir) / STATUS_FILE),
        "status": status,
        "active_violations": active,
    }
    if output == "json":
        print(json.dumps(answer, indent=4))
    else:
        print(_table(answer, now))
    return 0 if reason is None else 3

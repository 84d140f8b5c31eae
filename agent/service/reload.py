"""`edge-defender reload --pid PID`: the unit's ExecReload=. It sends SIGHUP to the agent
and waits for the agent's verdict in the status file (the `reload` field the daemon
writes after each attempt), so `systemctl reload` fails when the agent refuses the new
configuration and keeps the old one. A bare `kill -HUP` exits 0 whatever happens."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.service.status import STATUS_FILE, StatusError, not_running_reason, read_status

POLL_S = 0.1


class ReloadError(Exception):
    """The reload did not happen or was refused; the message says why."""


def _verdict(state_dir: Path, pid: int) -> dict[str, Any] | None:
    """The last reload verdict of agent `pid`, or None when it has given none."""
    status = read_status(state_dir)
    if status is None:
        return None
    if status["pid"] != pid:
        raise ReloadError(
            f"{state_dir / STATUS_FILE} is written by process {status['pid']}, not {pid}:"
            " pass the --config the agent runs with"
        )
    verdict = status.get("reload")
    return verdict if isinstance(verdict, dict) else None


def _alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def running_pid(cfg: Config) -> int | None:
    """The pid of the agent running with this config's state_dir, or None."""
    try:
        status = read_status(Path(cfg.state_dir))
    except StatusError:
        return None
    if status is None or not_running_reason(status, time.time()) is not None:
        return None
    pid: int = status["pid"]
    return pid


def reload(
    state_dir: Path, pid: int, timeout_s: float, ask: Callable[[], None] | None = None
) -> None:
    """Ask agent `pid` to reload and wait for its verdict; raise ReloadError unless it
    took the new configuration. Inside the agent (remote control), `ask` is its own
    reload request: a SIGHUP the kernel gives to the asking thread waits for the main
    thread's next wake-up, up to a sampling interval."""
    before = _verdict(state_dir, pid)
    try:
        if ask is not None:
            ask()
        else:
            os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"process {pid} is not running") from None
    except PermissionError:
        raise ReloadError(f"not allowed to signal process {pid}") from None
    deadline = time.monotonic() + timeout_s
    while True:
        verdict = _verdict(state_dir, pid)
        # A new verdict has another `at`; not "later": the wall clock may have stepped back.
        if verdict is not None and (before is None or verdict.get("at") != before.get("at")):
            if verdict.get("ok") is True:
                return
            raise ReloadError(f"refused: {verdict.get('error') or 'no reason given'}")
        if not _alive(pid):
            raise ReloadError(f"process {pid} exited before giving a verdict")
        if time.monotonic() >= deadline:
            raise ReloadError(
                f"no verdict from process {pid} in {state_dir / STATUS_FILE} within {timeout_s:g} s"
            )
        time.sleep(POLL_S)


def run_reload(cfg: Config, pid: int, timeout_s: float) -> int:
    """Exit status 0 when the agent took the new configuration, 1 when it did not, 2 for
    bad arguments."""
    if pid <= 1:
        print(f"edge-defender: reload: --pid: {pid} is not an agent's process id", file=sys.stderr)
        return 2
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        print(f"edge-defender: reload: --timeout: {timeout_s} is not > 0 s", file=sys.stderr)
        return 2
    try:
        reload(Path(cfg.state_dir), pid, timeout_s)
    except (ReloadError, StatusError) as e:
        print(f"edge-defender: reload: {e}", file=sys.stderr)
        return 1
    print(f"edge-defender: reload: process {pid} took the new configuration")
    return 0

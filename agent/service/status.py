"""The status file the daemon rewrites each cycle in its state directory, and the
`edge-defender status` command that reads it (and the store's active violations), so
an operator sees what the agent is doing without talking to the daemon."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from agent.config import SERVICE_USER, Config
from agent.core.evaluator import MlJudgement
from agent.files import replace_file
from agent.service.text import iso_time, printable
from agent.store.history import StoreError, StoreNotFound, history_path, open_history

STATUS_FILE = "status.json"
# Missed updates before the agent counts as not running: one late cycle is not a hang.
STALE_INTERVALS = 3
# The daemon writes a few KiB; anything far larger is not its file, and is not read whole.
STATUS_MAX_BYTES = 1024 * 1024
_PID_MAX = 2**22  # Linux's highest pid_max: a larger "pid" is no process


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


class CaptureStatus(TypedDict):
    features: list[str]  # the capture features on: scan, dns, broker, connections
    packets: int  # packets the kernel filter passed to the agent since it started
    drops: int  # of those, dropped by the kernel: the agent read too slowly
    problem: str | None  # why capture is not running (no CAP_NET_RAW...), None when it is
    clients: int  # MQTT clients of the gateway's broker judged now
    unjudged_clients: int  # new clients not judged because every slot held an alarm
    counts: dict[str, int]  # the features' own counters (flows, decode errors, gaps...)


class MitigationStatus(TypedDict):
    auto_rules: int  # [[mitigation.auto]] rules in force
    dry_run: bool  # the automatic response records what it would do, does nothing
    rate_limited: int  # automatic responses not made: over max_auto_tasks_per_minute


class ControlStatus(TypedDict):
    done: int  # requests done
    refused: int  # refused: invalid, or the verb said no
    busy: int  # refused at once: too many waiting
    pending: int
    shadow_syncs: int
    shadow_errors: int
    shadow_error: str | None  # the last sync's failure, None once one succeeds


class Reload(TypedDict):
    at: float
    ok: bool
    error: str | None  # why the new config was refused; None when it is in force


class AgentStatus(TypedDict):
    """What the daemon writes each cycle. Times are epoch seconds. The NotRequired keys
    came later: a status file without them is still read."""

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
    ml: NotRequired[list[str]]  # "profile/behavior: ..." per ML behavior with a model (ml_line)
    degraded: NotRequired[list[str]]  # one line per current problem (store unwritable...)
    errors: NotRequired[dict[str, int]]  # failures per job, counted by the error boundary
    quarantined: NotRequired[int]  # messages that cannot be sent, kept aside
    reload: NotRequired[Reload]  # the verdict of the last reload
    capture: NotRequired[CaptureStatus]  # when [capture] is on
    mitigation: NotRequired[MitigationStatus]  # when [mitigation] is on
    control: NotRequired[ControlStatus]  # when [control] is on


def write_status(state_dir: Path, status: AgentStatus) -> None:
    """Replace the status file atomically: readers see the old or the new one, never half.
    No fsync: the file is advisory and rewritten next cycle."""
    replace_file(Path(state_dir) / STATUS_FILE, json.dumps(status, separators=(",", ":")))


def link_status(state_dir: Path, runtime_dir: Path) -> None:
    """Make state_dir/status.json a link to the one the daemon rewrites in runtime_dir,
    so that readers (`status`, `reload`) look in one place. Once per start, not per
    cycle: the status file is rewritten every cycle and belongs on a tmpfs."""
    link, target = Path(state_dir) / STATUS_FILE, Path(runtime_dir) / STATUS_FILE
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{STATUS_FILE}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def cannot_read(path: Path, e: OSError) -> str:
    """One line for an unreadable file; for a permission, who can read it."""
    if isinstance(e, PermissionError):
        return (
            f"cannot read {path}: permission denied; run as root or as user {SERVICE_USER}"
            " (the state directory is its alone)"
        )
    return f"cannot read {path}: {e.strerror or e}"


def _is(value: object, tp: Any) -> bool:
    """Whether JSON `value` is of the annotation `tp` (a number is finite; a bool is no
    number)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_is(v, args[1]) for v in value.values())
    if tp is float:
        return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]
    if tp is type(None):
        return value is None
    return type(value) is tp


def _fitting(doc: dict[str, Any], shape: Any, where: str, wrong: list[str]) -> dict[str, Any]:
    """The keys of `doc` that hold what the TypedDict `shape` says (nested ones kept in
    part); each other key of `shape` is added to `wrong`. Unknown keys are left out."""
    kept: dict[str, Any] = {}
    # Read from the hints: __required_keys__ misses NotRequired in string annotations.
    for key, tp in typing.get_type_hints(shape, include_extras=True).items():
        required = typing.get_origin(tp) is not NotRequired
        tp = tp if required else typing.get_args(tp)[0]
        if key not in doc:
            if required:
                wrong.append(f"{where}{key} (missing)")
        elif typing.is_typeddict(tp) and isinstance(doc[key], dict):
            kept[key] = _fitting(doc[key], tp, f"{where}{key}.", wrong)
        elif not typing.is_typeddict(tp) and _is(doc[key], tp):
            kept[key] = doc[key]
        else:
            wrong.append(f"{where}{key}")
    return kept


class StatusError(ValueError):
    """A status file that cannot be read whole; the message names it."""


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status the daemon wrote, or None when it never wrote one; StatusError
    saying what is wrong when any of it does not fit AgentStatus."""
    status, problem = salvage_status(state_dir)
    if problem is not None:
        raise StatusError(problem)
    return status


def salvage_status(state_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The last status the daemon wrote, as far as it can be read, and one line saying
    what is wrong with the rest (None when nothing is): the fields that do not hold what
    AgentStatus says are left out. (None, None) when the daemon never wrote one."""
    path = Path(state_dir) / STATUS_FILE
    try:
        with path.open("rb") as f:
            data = f.read(STATUS_MAX_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, cannot_read(path, e)
    if len(data) > STATUS_MAX_BYTES:
        return None, f"{path}: larger than {STATUS_MAX_BYTES} bytes: not a status file"
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
        return None, f"{path}: not valid JSON: {str(e)[:120]}"
    if not isinstance(doc, dict):
        return None, f"{path}: not a JSON object"
    wrong: list[str] = []
    status = _fitting(doc, AgentStatus, "", wrong)
    if not wrong:
        return status, None
    shown = ", ".join(wrong[:6]) + (f" and {len(wrong) - 6} more" if len(wrong) > 6 else "")
    return status, f"{path}: left out what does not fit the status format: {shown}"


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


def _judgeable(status: dict[str, Any]) -> bool:
    """Whether `status` holds what liveness is judged by, with values that make sense."""
    pid, interval = status.get("pid"), status.get("interval_s")
    return (
        isinstance(pid, int)
        and 0 < pid <= _PID_MAX
        and "updated_at" in status
        and isinstance(interval, int | float)
        and interval > 0
    )


def _active_violations(state_dir: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Every active violation in the store (None when there is no store yet), and why
    the store could not be read."""
    path = history_path(state_dir)
    found: list[dict[str, Any]] = []
    token: str | None = None
    try:
        with open_history(path, create=False) as store:
            while True:
                page = store.list_active_violations(next_token=token)
                found.extend(page["activeViolations"])
                token = page.get("nextToken")
                if token is None:
                    return found, None
    except StoreNotFound:
        return None, None
    except PermissionError as e:
        return None, cannot_read(path, e)
    except StoreError as e:  # its message names the file
        return None, f"store {e}"


def _when(seconds: float | None, now: float) -> str:
    if seconds is None:
        return "never"
    age = now - seconds
    return iso_time(seconds) + (f" ({age:.0f} s ago)" if abs(age) < 1e10 else "")


def _state(answer: dict[str, Any]) -> str:
    if answer["running"] is not None:
        return "running" if answer["running"] else f"not running: {answer['reason']}"
    if answer["status"] is None:
        return "unknown: the status file cannot be read"
    return "unknown: the status file lacks a sound pid, updated_at or interval_s"


def _table(answer: dict[str, Any], now: float) -> str:
    """The answer for people, one row per field the status file holds soundly."""
    status, active = answer["status"] or {}, answer["active_violations"]
    rows = [("state", _state(answer)), *(("problem", p) for p in answer["problems"])]

    def row(key: str, label: str, text: Callable[[Any], str]) -> None:
        if key in status:
            rows.append((label, text(status[key])))

    def lines(label: str, items: list[str]) -> None:
        rows.extend((label if i == 0 else "", item) for i, item in enumerate(items))

    def part(doc: dict[str, Any], key: str) -> object:
        return doc.get(key, "?")

    row("pid", "pid", str)
    lines("degraded", status.get("degraded", []))
    errors = {job: n for job, n in status.get("errors", {}).items() if n}
    if errors:
        rows.append(("errors", ", ".join(f"{job} {n}" for job, n in sorted(errors.items()))))
    row("started_at", "started", lambda t: _when(t, now))
    row("updated_at", "last update", lambda t: _when(t, now))
    row("last_sample_time", "last sample", lambda t: _when(t, now))
    row("samples", "samples", str)
    row(
        "reports",
        "reports",
        lambda r: (
            f"sent {part(r, 'sent')}, accepted {part(r, 'accepted')},"
            f" rejected {part(r, 'rejected')}"
        ),
    )
    row(
        "broker",
        "broker",
        lambda b: (
            f"{b.get('endpoint') or '(none)'},"
            f" {'connected' if b.get('connected') else 'not connected'}"
        ),
    )
    row(
        "spool",
        "spool",
        lambda s: (
            f"{part(s, 'depth')} messages, {part(s, 'bytes')} bytes; dropped"
            f" {part(s.get('dropped', {}), 'metrics')} metrics,"
            f" {part(s.get('dropped', {}), 'violation')} violation"
        ),
    )
    if status.get("quarantined"):
        rows.append(("quarantined", f"{status['quarantined']} messages that cannot be sent"))
    if active is not None:  # the store knows better than the last status
        rows.append(("active violations", str(len(active))))
        lines(
            "",
            [
                f"{v.get('securityProfileName')}/{v.get('behavior', {}).get('name')}"
                f" since {_when(v.get('violationStartTime'), now)}"
                for v in active
            ],
        )
    else:
        row("active_violations", "active violations", str)
    row("capture", "capture", _capture_text)
    row(
        "mitigation",
        "mitigation",
        lambda m: (
            f"on, {m.get('auto_rules', '?')} automatic response rules"
            + (" (dry run)" if m.get("dry_run") else "")
            + (f", {m['rate_limited']} over the rate limit" if m.get("rate_limited") else "")
        ),
    )
    row(
        "control",
        "remote control",
        lambda c: (
            f"on, {c.get('done', 0)} requests done, {c.get('refused', 0)} refused,"
            f" {c.get('busy', 0)} refused busy; {c.get('shadow_syncs', 0)} shadow syncs"
            + (f", shadow error: {c['shadow_error']}" if c.get("shadow_error") else "")
        ),
    )
    row("profiles", "profiles", lambda names: ", ".join(names) or "none")
    row("reload", "last reload", lambda r: _reload_text(r, now))
    row("inactive_behaviors", "inactive behaviors", lambda items: str(len(items)))
    lines("", status.get("inactive_behaviors", []))
    row("ml", "ML behaviors", lambda items: str(len(items)))
    lines("", status.get("ml", []))
    return "\n".join(f"{key:<20}{printable(value)}".rstrip() for key, value in rows)


def ml_line(j: MlJudgement, now: float) -> str:
    """An ML behavior's state in one line: judging or filling its window, and its drift
    sum against its level's drift threshold."""
    if j.judged_from is None:
        state = "no sample yet"
    elif j.judged_from > now:
        state = f"filling its window, judging in {j.judged_from - now:.0f} s"
    else:
        state = "judging"
    drift = (
        "no drift judgement (too few hours trained)"
        if j.drift_threshold is None
        else f"drift {j.cusum:.1f} of {j.drift_threshold:.1f}"
    )
    return f"{j.profile}/{j.behavior}: {state}; {drift}"


def _capture_text(c: dict[str, Any]) -> str:
    if c.get("problem"):
        return f"not running: {c['problem']}"
    text = (
        f"{', '.join(c.get('features', [])) or 'no feature'}: {c.get('packets', '?')} packets,"
        f" {c.get('drops', '?')} dropped by the kernel"
    )
    if "broker" in c.get("features", []):
        text += f"; {c.get('clients', '?')} MQTT clients judged"
        if c.get("unjudged_clients"):
            text += f", {c['unjudged_clients']} not judged (every slot held an alarm)"
    counts = c.get("counts") or {}
    return text + "".join(f", {k} {v}" for k, v in sorted(counts.items()))


def _reload_text(reload: dict[str, Any], now: float) -> str:
    verdict = {True: "ok", False: "refused"}.get(reload.get("ok"), "?")  # type: ignore[arg-type]
    error = reload.get("error")
    return f"{_when(reload.get('at'), now)} {verdict}" + (f": {error}" if error else "")


def run_status(cfg: Config, output: Literal["table", "json"]) -> int:
    """Print what the agent is doing, and what cannot be read, one line each. Exit
    status: 0 running, 3 not running (as systemctl's), 1 unknown (the status file
    cannot be read)."""
    now = time.time()
    state_dir = Path(cfg.state_dir)
    if state_dir.is_dir() and not os.access(state_dir, os.R_OK | os.X_OK):
        # Neither the status file nor the store can be read: one line says so.
        status, active, problems = None, None, [cannot_read(state_dir, PermissionError())]
    else:
        status, status_problem = salvage_status(state_dir)
        active, store_problem = _active_violations(cfg.state_dir)
        problems = [p for p in (status_problem, store_problem) if p is not None]
    # Liveness is known from a status file with sound pid and times, or from none at all.
    known = _judgeable(status) if status is not None else not problems
    reason = not_running_reason(status, now) if known else None
    running = (reason is None) if known else None
    answer = {
        "running": running,
        "reason": reason,
        "status_file": str(Path(cfg.state_dir) / STATUS_FILE),
        "status": status,
        "active_violations": active,
        "problems": problems,
    }
    if output == "json":
        for problem in problems:  # the table shows them in its rows
            print(f"edge-defender: status: {problem}", file=sys.stderr)
        print(json.dumps(answer, indent=4))
    else:
        print(_table(answer, now))
    return {True: 0, False: 3, None: 1}[running]

"""The status file (written atomically by the daemon each cycle) and `edge-defender
status`, which reads it and the store without talking to the daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.core.evaluator import MlJudgement
from agent.service.status import (
    STATUS_FILE,
    AgentStatus,
    StatusError,
    ml_line,
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
        (
            '{"updated_at": 1, "interval_s": 10}',
            "left out what does not fit the status format: pid (missing)",
        ),
        (
            '{"pid": 1, "updated_at": "today", "interval_s": 10}',
            "left out what does not fit the status format: started_at (missing), updated_at,",
        ),
        (
            '{"pid": true, "updated_at": 1, "interval_s": 10}',
            "left out what does not fit the status format: pid, started_at (missing)",
        ),
    ],
)
def test_a_bad_status_file_is_named(tmp_path: Path, content: str, complaint: str) -> None:
    (tmp_path / STATUS_FILE).write_text(content)
    with pytest.raises(StatusError, match=re.escape(f"{tmp_path / STATUS_FILE}: {complaint}")):
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
    assert out.splitlines() == [
        "state               unknown: the status file cannot be read",
        f"problem             {tmp_path / STATUS_FILE}: not valid JSON: Expecting property name"
        " enclosed in double quotes: line 1 column 2 (char 1)",
    ]
    assert err == ""


def _damage(tmp_path: Path, kind: str) -> None:
    path = tmp_path / STATUS_FILE
    good = json.dumps(sample_status())
    match kind:
        case "truncated":
            path.write_text(good[: len(good) // 2])
        case "binary":
            path.write_bytes(bytes(range(256)))
        case "huge":
            path.write_text('{"pid": 1, "pad": "' + "x" * (2 * 1024 * 1024) + '"}')
        case "deep":
            path.write_text("[" * 100_000 + "]" * 100_000)
        case "directory":
            path.mkdir()
        case "nan-times":
            path.write_text(good.replace('"updated_at": ', '"updated_at": NaN, "x": '))
        case "absurd-pid":
            path.write_text(json.dumps(sample_status(pid=2**70)))


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [
        ("truncated", "not valid JSON"),
        ("binary", "not valid JSON"),
        ("huge", "larger than 1048576 bytes: not a status file"),
        ("deep", "not valid JSON"),
        ("directory", "cannot read"),
        ("nan-times", "left out what does not fit the status format: updated_at"),
        ("absurd-pid", None),  # a sound int, but no process can have it
    ],
)
def test_a_damaged_status_file_is_one_line_and_the_rest_is_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, complaint: str | None
) -> None:
    _damage(tmp_path, kind)
    with open_history(history_path(tmp_path)) as store:
        store.record([], [active_violation(1)], {})
    code, out, err = status_cli(tmp_path, capsys)
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("state               unknown: the status file")
    problems = [line for line in lines if line.startswith("problem")]
    if complaint is None:
        assert problems == []
    else:
        assert len(problems) == 1 and complaint in problems[0]
        assert str(tmp_path / STATUS_FILE) in problems[0] and len(problems[0]) < 300
    assert "active violations   1" in lines  # the store is still read
    if kind == "nan-times":  # the sound fields are still shown
        assert "samples             360" in lines and "last update" not in out


def test_degraded_agent_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reload = {"at": time.time() - 60, "ok": False, "error": "p.json: behaviors[0]: bad"}
    written = sample_status(
        degraded=["store unwritable: disk full", "state dir gone"],
        errors={"cycle": 3, "report": 0, "prune": 1},
        quarantined=2,
        reload=reload,
    )
    write_status(tmp_path, written)
    code, out, _ = status_cli(tmp_path, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[2:5] == [
        "degraded            store unwritable: disk full",
        "                    state dir gone",
        "errors              cycle 3, prune 1",
    ]
    assert "quarantined         2 messages that cannot be sent" in lines
    assert any(
        line.startswith("last reload")
        and line.endswith("s ago) refused: p.json: behaviors[0]: bad")
        for line in lines
    )
    code, out, _ = status_cli(tmp_path, capsys, "--output", "json")
    assert json.loads(out)["status"] == written
    # A healthy agent shows none of those lines.
    write_status(tmp_path, sample_status(degraded=[], errors={"cycle": 0}, quarantined=0))
    code, out, _ = status_cli(tmp_path, capsys)
    assert not any(w in out for w in ("degraded", "errors", "quarantined", "reload"))


def _status_as_nobody(config: Path) -> tuple[int, str]:
    """`edge-defender status` run by uid/gid 65534 with no groups, in a forked child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, and leave without pytest's cleanup
        code = 99
        try:
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            sys.stdout = os.fdopen(1, "w")
            sys.stderr = os.fdopen(2, "w")
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(["status", "--config", str(config)])
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        output = f.read()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), output


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_status_as_a_user_the_state_dir_is_closed_to() -> None:
    # pytest's tmp_path lies under a directory only root can enter.
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        _status_as_a_user_the_state_dir_is_closed_to(Path(top))


def _status_as_a_user_the_state_dir_is_closed_to(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    write_status(state, sample_status())
    with open_history(history_path(state)) as store:
        store.record([], [active_violation(1)], {})
    os.chown(state, 999, 999)  # the service user's, as StateDirectory= makes it
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{state}"\n')
    config.chmod(0o644)
    code, output = _status_as_nobody(config)
    assert code == 1, output
    assert "Traceback" not in output
    assert output.splitlines() == [
        "state               unknown: the status file cannot be read",
        f"problem             cannot read {state}: permission denied; run as root or as user"
        " edge-defender (the state directory is its alone)",
    ]
    # The directory open but the files the service user's alone (0600).
    state.chmod(0o755)
    (state / STATUS_FILE).chmod(0o600)
    code, output = _status_as_nobody(config)
    assert code == 1 and "Traceback" not in output, output
    assert f"cannot read {state / STATUS_FILE}: permission denied; run as root" in output


def test_the_status_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    status = sample_status()
    old = os.umask(0o000)
    try:
        write_status(tmp_path, status)
        write_status(tmp_path, status)  # replacing keeps it private
    finally:
        os.umask(old)
    assert (tmp_path / STATUS_FILE).stat().st_mode & 0o777 == 0o600
    assert read_status(tmp_path) == status


def test_capture_is_shown_with_its_drops_and_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = {
        "features": ["scan", "broker"],
        "packets": 5000,
        "drops": 7,
        "problem": None,
        "clients": 12,
        "unjudged_clients": 2,
        "counts": {"broker_gaps": 1},
    }
    write_status(tmp_path, sample_status(capture=capture))
    _, out, _ = status_cli(tmp_path, capsys)
    assert (
        "capture             scan, broker: 5000 packets, 7 dropped by the kernel; 12 MQTT"
        " clients judged, 2 not judged (every slot held an alarm), broker_gaps 1"
    ) in out.splitlines()
    blind = {**capture, "problem": "no CAP_NET_RAW"}
    write_status(tmp_path, sample_status(capture=blind))
    _, out, _ = status_cli(tmp_path, capsys)
    assert "capture             not running: no CAP_NET_RAW" in out.splitlines()


def test_mitigation_is_shown_when_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(
        tmp_path,
        sample_status(mitigation={"auto_rules": 2, "dry_run": True, "rate_limited": 3}),
    )
    _, out, _ = status_cli(tmp_path, capsys)
    assert (
        "mitigation          on, 2 automatic response rules (dry run), 3 over the rate limit"
        in out.splitlines()
    )
    write_status(tmp_path, sample_status())
    _, out, _ = status_cli(tmp_path, capsys)
    assert "mitigation" not in out


def test_ml_behaviors_say_whether_they_judge_and_their_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = 1_800_000_000.0
    lines = [
        ml_line(MlJudgement("p", "filling", now + 120.4, 0.0, 6.0), now),
        ml_line(MlJudgement("p", "judging", now - 1, 4.25, 10.0), now),
        ml_line(MlJudgement("p", "young", None, 0.0, None), now),
    ]
    assert lines == [
        "p/filling: filling its window, judging in 120 s; drift 0.0 of 6.0",
        "p/judging: judging; drift 4.2 of 10.0",
        "p/young: no sample yet; no drift judgement (too few hours trained)",
    ]
    write_status(tmp_path, sample_status(ml=lines))
    _, out, _ = status_cli(tmp_path, capsys)
    shown = out.splitlines()
    assert "ML behaviors        3" in shown
    assert all(any(line in s for s in shown) for line in lines)

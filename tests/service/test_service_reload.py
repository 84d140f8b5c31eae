"""`edge-defender reload --pid PID` against a real child process that plays the daemon:
it writes status.json, and on SIGHUP a reload verdict (taken, refused, none at all) a
moment later, or dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cli import main

# argv: state_dir, then one action per SIGHUP: "ok", "refuse", "silent" or "die".
FAKE_DAEMON = r"""
import json, os, signal, sys, time
state_dir, actions = sys.argv[1], sys.argv[2:]
now = time.time()
status = {
    "pid": os.getpid(), "started_at": now, "updated_at": now, "interval_s": 10.0,
    "last_sample_time": now, "samples": 1, "reports": {"sent": 0, "accepted": 0, "rejected": 0},
    "broker": {"endpoint": None, "connected": False},
    "spool": {"depth": 0, "bytes": 0, "dropped": {"metrics": 0, "violation": 0}},
    "active_violations": 0, "profiles": ["test"], "inactive_behaviors": [],
}
hups = []

def write():
    tmp = os.path.join(state_dir, ".status.json.tmp")
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, os.path.join(state_dir, "status.json"))

signal.signal(signal.SIGHUP, lambda *_: hups.append(1))
write()
while True:
    time.sleep(0.02)
    if not hups:
        continue
    hups.pop()
    action = actions.pop(0)
    time.sleep(VERDICT_DELAY_S)  # the reload takes a while: the verb must wait for it
    if action == "die":
        sys.exit(3)
    if action != "silent":
        ok = action == "ok"
        error = None if ok else "profiles/bad.json: not valid JSON"
        status["reload"] = {"at": time.time(), "ok": ok, "error": error}
    status["updated_at"] = time.time()
    write()
"""
VERDICT_DELAY_S = 0.3


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    path.chmod(0o600)
    (tmp_path / "state").mkdir()
    return path


@pytest.fixture
def fake_daemon(config: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    state_dir = config.parent / "state"

    def start(*actions: str) -> subprocess.Popen[bytes]:
        script = FAKE_DAEMON.replace("VERDICT_DELAY_S", repr(VERDICT_DELAY_S))
        child = subprocess.Popen([sys.executable, "-c", script, str(state_dir), *actions])
        started.append(child)
        deadline = time.monotonic() + 10
        while not (state_dir / "status.json").exists():
            assert child.poll() is None and time.monotonic() < deadline, "fake daemon did not start"
            time.sleep(0.02)
        return child

    yield start
    for child in started:
        child.kill()
        child.wait()


def reload(config: Path, pid: int, timeout_s: float = 10.0) -> int:
    return main(["reload", "--config", str(config), "--pid", str(pid), "--timeout", str(timeout_s)])


def test_taken_then_refused_each_waits_for_its_own_verdict(
    config: Path,
    fake_daemon: Callable[..., subprocess.Popen[bytes]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    daemon = fake_daemon("ok", "refuse", "ok")
    began = time.monotonic()
    assert reload(config, daemon.pid) == 0
    assert time.monotonic() - began >= VERDICT_DELAY_S
    assert f"process {daemon.pid} took the new configuration" in capfd.readouterr().out
    # The "ok" verdict of the first reload is still in the file: the second must not take it.
    assert reload(config, daemon.pid) == 1
    assert (
        "edge-defender: reload: refused: profiles/bad.json: not valid JSON"
        in capfd.readouterr().err
    )
    assert reload(config, daemon.pid) == 0
    assert daemon.poll() is None


def test_no_verdict_within_the_timeout_fails(
    config: Path,
    fake_daemon: Callable[..., subprocess.Popen[bytes]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    daemon = fake_daemon("silent")
    began = time.monotonic()
    assert reload(config, daemon.pid, timeout_s=1.0) == 1
    assert 1.0 <= time.monotonic() - began < 3.0
    err = capfd.readouterr().err
    assert f"no verdict from process {daemon.pid} in {config.parent}/state/status.json" in err
    assert "within 1 s" in err


def test_an_agent_that_dies_on_reload_fails_at_once(
    config: Path,
    fake_daemon: Callable[..., subprocess.Popen[bytes]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    daemon = fake_daemon("die")
    began = time.monotonic()
    assert reload(config, daemon.pid) == 1
    assert time.monotonic() - began < 5.0
    assert f"process {daemon.pid} exited before giving a verdict" in capfd.readouterr().err


def test_a_status_file_of_another_process_names_the_config(
    config: Path,
    fake_daemon: Callable[..., subprocess.Popen[bytes]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    daemon = fake_daemon("ok")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert reload(config, other.pid) == 1
        assert other.poll() is None  # not signalled: SIGHUP would have killed it
    finally:
        other.kill()
        other.wait()
    err = capfd.readouterr().err
    assert f"is written by process {daemon.pid}, not {other.pid}" in err
    assert "pass the --config the agent runs with" in err


def test_a_gone_process_and_bad_arguments(config: Path, capfd: pytest.CaptureFixture[str]) -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    assert reload(config, gone.pid) == 1
    assert f"process {gone.pid} is not running" in capfd.readouterr().err
    for pid, timeout_s in ((0, 1.0), (1, 1.0), (-1, 1.0), (gone.pid, float("nan"))):
        assert reload(config, pid, timeout_s) == 2
    assert capfd.readouterr().err.count("edge-defender: reload: --") == 4


def test_a_damaged_status_file_is_named(
    config: Path,
    fake_daemon: Callable[..., subprocess.Popen[bytes]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    daemon = fake_daemon("silent")
    daemon.send_signal(signal.SIGSTOP)  # no rewrite under the test's feet
    try:
        (config.parent / "state" / "status.json").write_text("{not json")
        assert reload(config, daemon.pid) == 1
    finally:
        daemon.send_signal(signal.SIGCONT)
    assert f"{config.parent}/state/status.json: not valid JSON" in capfd.readouterr().err

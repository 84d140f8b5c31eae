"""The shipped unit, as install-service renders it, against systemd's own checks:
`systemd-analyze verify` and the `security --offline=yes` exposure (at most 2.0)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.service.install import PLACEHOLDER, UNIT, data, render_unit

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt install systemd)",
)

# verify checks that every Exec program exists, so the unit names one that does here.
COMMAND = [sys.executable, "-m", "agent"]


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    path = tmp_path / UNIT
    path.write_text(render_unit(COMMAND))
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def exposure(unit: Path) -> float:
    done = analyze("security", "--offline=yes", str(unit))
    found = re.search(rf"Overall exposure level for {re.escape(UNIT)}: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found[1])


def test_verify_passes_without_warnings(unit: Path) -> None:
    done = analyze("verify", str(unit))
    assert done.returncode == 0, done.stderr
    # Unknown or misspelt keys are only warnings (exit 0): none may name our file.
    assert str(unit.parent) not in done.stderr, done.stderr


def test_exposure_is_at_most_2(unit: Path) -> None:
    assert exposure(unit) <= 2.0


def test_net_admin_drop_in_verifies_and_is_applied(unit: Path) -> None:
    drop_in = unit.parent / f"{UNIT}.d" / "net-admin.conf"
    drop_in.parent.mkdir()
    drop_in.write_bytes(data("net-admin.conf"))
    done = analyze("verify", str(unit))
    assert done.returncode == 0, done.stderr
    assert str(unit.parent) not in done.stderr, done.stderr
    report = analyze("security", "--offline=yes", str(unit)).stdout
    assert re.search(r"✗ CapabilityBoundingSet=~CAP_NET_ADMIN", report), report
    assert exposure(unit) <= 2.0


def test_base_unit_grants_no_net_admin(unit: Path) -> None:
    report = analyze("security", "--offline=yes", str(unit)).stdout
    assert re.search(r"✓ CapabilityBoundingSet=~CAP_NET_ADMIN", report), report


def test_render_puts_the_command_in_every_exec_line(unit: Path) -> None:
    text = unit.read_text()
    assert PLACEHOLDER not in text
    exec_lines = [line for line in text.splitlines() if line.startswith("Exec")]
    assert len(exec_lines) == 3
    for line in exec_lines:
        assert shlex.split(line.partition("=")[2])[:3] == COMMAND


def test_exec_start_pre_is_a_valid_check_config_call(unit: Path) -> None:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStartPre="))
    args = build_parser().parse_args(shlex.split(line.partition("=")[2])[3:])
    assert args.command == "check-config"
    assert args.config == "/etc/edge-defender/config.toml"


def test_exec_reload_waits_for_the_verdict_of_the_main_process(unit: Path) -> None:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecReload="))
    argv = shlex.split(line.partition("=")[2])[3:]
    assert argv[-2:] == ["--pid", "$MAINPID"]  # systemd puts the main PID in its place
    args = build_parser().parse_args([*argv[:-1], "1234"])
    assert (args.command, args.config, args.pid) == (
        "reload",
        "/etc/edge-defender/config.toml",
        1234,
    )

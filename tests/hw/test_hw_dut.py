"""The rig's devices under test (hw/dut.py) with the real agent in a real lab: in the dut
namespace (NetnsDut), installed as the service in a booted container (NspawnDut), and
over SSH to a real sshd (SshDut). Each opens a listener the profile forbids and reads
the agent's in-alarm event back through the agent's own CLI on the device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hw.dut import AgentSetup, Dut, NetnsDut, NspawnDut, Service, SshDut
from hw.lab import Lab, stop_processes
from hw.lab import missing as lab_missing
from hw.machine import REPO, missing


def _missing_ssh() -> str | None:
    for tool in ("/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"):
        if not Path(tool).exists():
            return f"{tool} is not installed (Debian: apt-get install openssh-server)"
    return None


pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(lab_missing() is not None, reason=lab_missing() or ""),
]

EVENT_WAIT_S = 5.0
PROFILE = {
    "securityProfileName": "only-ssh",
    "behaviors": [
        {
            "name": "listening-tcp-ports",
            "metric": "aws:listening-tcp-ports",
            "criteria": {
                "comparisonOperator": "in-port-set",
                "value": {"ports": [22]},
                "consecutiveDatapointsToAlarm": 1,
                "consecutiveDatapointsToClear": 1,
            },
        }
    ],
}
SETUP = AgentSetup(profiles=[PROFILE], interval_s=0.5)
BACKDOOR = 31337
LISTENER = f"import socket, time; s = socket.create_server(('0.0.0.0', {BACKDOOR})); time.sleep(60)"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as lab:
        yield lab


def _in_alarm(dut: Dut) -> list[dict[str, Any]]:
    return [e for e in dut.events() if e["violationEventType"] == "in-alarm"]


def _assert_detects_a_backdoor(dut: Dut) -> None:
    """A listener on a port the profile forbids: an in-alarm event within seconds."""
    assert dut.events() == []  # a fresh store
    opened = time.time()
    listener = dut.node.spawn(["python3", "-c", LISTENER])
    try:
        deadline = time.monotonic() + EVENT_WAIT_S
        while not (found := _in_alarm(dut)):
            assert listener.poll() is None, "the listener ended"
            assert time.monotonic() < deadline, f"no in-alarm event in {EVENT_WAIT_S} s"
            time.sleep(0.2)
    finally:
        stop_processes([listener])
    [event] = found
    assert (event["thingName"], event["securityProfileName"]) == ("rig-dut", "only-ssh")
    assert event["behavior"]["name"] == "listening-tcp-ports"
    assert BACKDOOR in event["metricValue"]["ports"]
    assert isinstance(event["violationEventTime"], float)
    assert opened - 1 <= event["violationEventTime"] - dut.clock_offset_s() <= time.time()


def _assert_has_history(dut: Dut) -> None:
    dut.stop()  # the agent flushes its history on the way out
    history = dut.metrics()
    assert history, "no metrics history"
    assert all("listening_tcp_ports" in r["report"]["metrics"] for r in history)


def test_netns_dut_runs_the_agent_and_reads_its_events(lab: Lab, tmp_path: Path) -> None:
    dut = NetnsDut(lab, tmp_path)
    try:
        began = time.monotonic()
        dut.start(SETUP)
        print(f"NetnsDut.start: {time.monotonic() - began:.1f} s")
        assert "u'rig-dut'" in lab.broker_log.read_text()  # mutual TLS with the device cert
        _assert_detects_a_backdoor(dut)
        _assert_has_history(dut)
        dut.start(SETUP)
        assert dut.events() == []  # every start has a fresh store
    finally:
        dut.close()


def test_a_failed_start_says_why(lab: Lab, tmp_path: Path) -> None:
    dut = NetnsDut(lab, tmp_path)
    bad = AgentSetup(profiles=[{"securityProfileName": "bad", "behaviors": "none"}], interval_s=1)
    with pytest.raises(RuntimeError, match=r"did not start(.|\n)*profile-0\.json"):
        dut.start(bad)
    dut.close()


# -- SshDut against a real sshd in the dut namespace --------------------------------------


def _keys(d: Path) -> None:
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    shutil.copy(d / "client_key.pub", d / "authorized_keys")


@pytest.fixture
def sshd(lab: Lab, tmp_path: Path) -> Iterator[Path]:
    """sshd on the dut's port 22, root logins with the key tmp/ssh/client_key only."""
    if _missing_ssh():
        pytest.skip(_missing_ssh() or "")
    d = tmp_path / "ssh"
    d.mkdir()
    _keys(d)
    conf = d / "sshd_config"
    conf.write_text(
        f"""\
ListenAddress {lab.nodes["dut"].address}:22
HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
"""
    )
    # sshd's privilege separation directory, which Debian makes at boot; left in place,
    # as another sshd may have come to use it meanwhile.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    with (d / "sshd.log").open("wb") as log:
        process = lab.nodes["dut"].spawn(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 10
        while not lab.nodes["dut"].exec(["ss", "-Htln", "sport = :22"]).stdout:
            assert process.poll() is None, (d / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd does not listen"
            time.sleep(0.05)
        yield d / "client_key"
    finally:
        stop_processes([process])


def _shell_service(d: Path) -> Service:
    """The agent of this checkout run as root by a shell over SSH, in place of systemd:
    its files in d, started in the background (nohup), stopped by its pid file."""
    pid, log = d / "agent.pid", d / "agent.log"
    agent = f"env RUNTIME_DIRECTORY={d / 'runtime'} PYTHONPATH={REPO} {sys.executable} -m agent"
    start = (
        f"nohup {agent} run --config {d / 'config.toml'} >>{log} 2>&1 </dev/null & echo $! >{pid}"
    )
    # Gone, or a zombie nobody reaps yet: either way it wrote its last.
    stop = (
        f"[ -f {pid} ] || exit 0; p=$(cat {pid}); kill $p 2>/dev/null; for i in $(seq 100); do "
        f"kill -0 $p 2>/dev/null && ! grep -q '^State:.Z' /proc/$p/status || break; sleep 0.1; "
        f"done; rm -f {pid}"
    )
    return Service(
        program=("env", f"PYTHONPATH={REPO}", sys.executable, "-m", "agent"),
        config=str(d / "config.toml"),
        state_dir=str(d / "state"),
        runtime_dir=str(d / "runtime"),
        user=None,
        stop=("sh", "-c", stop),
        restart=("sh", "-c", f"({stop}); {start}"),
        log=("tail", "-n", "40", str(log)),
    )


def test_ssh_dut_drives_the_agent_over_ssh(lab: Lab, sshd: Path, tmp_path: Path) -> None:
    d = tmp_path / "device"
    d.mkdir()
    dut = SshDut(
        "ssh://root@10.77.0.2",
        tmp_path,
        via=lab.nodes["attacker"],
        key=sshd,
        broker=lab.broker,
        service=_shell_service(d),
    )
    try:
        on_dut = dut.node.exec(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.decode()
        assert "10.77.0.2/24" in on_dut  # the dut namespace, reached from the attacker's
        said = dut.node.exec(["printf", "%s|", "two words", "it's", "$HOME"]).stdout
        assert said == b"two words|it's|$HOME|"  # argv arrives whole, unexpanded
        assert dut.node.exec(["cat"], stdin=b"piped").stdout == b"piped"
        assert abs(dut.clock_offset_s()) < 1.0  # one clock here
        dut.start(SETUP)
        assert (d / "rig" / "device.key").stat().st_mode & 0o777 == 0o600
        assert "u'rig-dut'" in lab.broker_log.read_text()  # with the certificate it was given
        _assert_detects_a_backdoor(dut)
        _assert_has_history(dut)
    finally:
        dut.close()


# -- NspawnDut: the installed service in a container --------------------------------------


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_nspawn_dut_runs_the_installed_service(lab: Lab, tmp_path: Path) -> None:
    began = time.monotonic()
    dut = NspawnDut(lab, tmp_path)
    try:
        made = time.monotonic()
        dut.start(SETUP)
        print(f"NspawnDut: made {made - began:.1f} s, started {time.monotonic() - made:.1f} s")
        show = dut.machine.show("User", "NoNewPrivileges", "ActiveState", "MainPID")
        assert show["ActiveState"] == "active"
        assert (show["User"], show["NoNewPrivileges"]) == ("edge-defender", "yes")  # hardened
        assert dut.machine.status()["pid"] == int(show["MainPID"])
        _assert_detects_a_backdoor(dut)
        _assert_has_history(dut)
    finally:
        dut.close()
    assert not os.path.ismount(dut.machine.root)

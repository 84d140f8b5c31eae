"""The agent as a real systemd service. A Debian bookworm rootfs (scripts/rootfs.sh,
built once and cached outside the checkout) gets the package installed offline in a
venv at /opt/edge-defender and `edge-defender install-service` run in a chroot; then
systemd-nspawn boots it (../shared/notes/systemd-nspawn.md) and the tests drive its
systemd: the unit is active only after READY, the journal has the right priorities,
collection as the service user equals `ss`, `systemctl reload` takes a good profile and
fails on a bad one, the watchdog restarts a stopped agent (leaving its Python stack in
the journal), and `uninstall-service` removes it all.

The tests run in file order against one booted container: about 20 s once the rootfs
and the wheels are cached, about 2 minutes on a cold cache (debootstrap, pip download).
The container, the rootfs cache and the wheels are hw/machine.py's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hw.machine import (
    CONFIG,
    PROFILES,
    PROGRAM,
    UNIT,
    Machine,
    build_rootfs,
    build_wheels,
    missing,
)

AS_SERVICE_USER = ("setpriv", "--reuid=edge-defender", "--regid=edge-defender", "--init-groups")
LISTEN_TCP, LISTEN_UDP = 31337, 31338  # outside the example profile's port set (22)
# A listener and an established connection to it, kept open until the container stops.
LISTENER = f"""
import socket, time
tcp = socket.create_server(("0.0.0.0", {LISTEN_TCP}))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", {LISTEN_UDP}))
client = socket.create_connection(("127.0.0.1", {LISTEN_TCP}))
server, _ = tcp.accept()
time.sleep(3600)
"""
# Fast enough for a test: a sample a second, the watchdog bites after 5 s without one.
TEST_DROP_IN = "[Service]\nWatchdogSec=5s\nRestartSec=1s\n"


pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(missing() is not None, reason=missing() or ""),
]


@pytest.fixture(scope="module")
def rootfs() -> Path:
    return build_rootfs()


@pytest.fixture(scope="module")
def wheels(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheels(rootfs, tmp_path_factory.mktemp("wheels"))


def _service_user_ports(machine: Machine) -> dict[str, Any]:
    out = machine.run(*AS_SERVICE_USER, PROGRAM, "collect", "--once", "--config", CONFIG).stdout
    metrics = json.loads(out)["metrics"]
    return {
        "tcp": {p["port"] for p in metrics["listening_tcp_ports"]["ports"]},
        "udp": {p["port"] for p in metrics["listening_udp_ports"]["ports"]},
        "established": metrics["tcp_connections"]["established_connections"]["total"],
    }


def _ss_ports(machine: Machine) -> dict[str, Any]:
    def ports(*args: str) -> set[int]:
        lines = machine.run("ss", "-Hn", *args).stdout.splitlines()
        return {int(line.split()[3].rsplit(":", 1)[1]) for line in lines}

    established = machine.run("ss", "-Htn", "state", "established").stdout.splitlines()
    return {"tcp": ports("-tl"), "udp": ports("-ul"), "established": len(established)}


@pytest.fixture(scope="module")
def installed(
    rootfs: Path, wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Machine, str]]:
    """The container tree with the package and the service installed, not yet booted;
    with the output of install-service."""
    machine = Machine(tmp_path_factory.mktemp("machine"), rootfs)
    try:
        machine.mount()
        output = machine.install(wheels)
        machine.write(CONFIG, "[sampling]\ninterval_s = 1.0\n", 0o640)
        machine.write(f"/etc/systemd/system/{UNIT}.d/test.conf", TEST_DROP_IN)
        machine.chroot("systemctl", "enable", UNIT)
        yield machine, output
    finally:
        machine.stop()


@pytest.fixture(scope="module")
def machine(installed: tuple[Machine, str]) -> Machine:
    machine = installed[0]
    machine.boot()
    return machine


# -- the tests, in order ---------------------------------------------------------------


def test_install_service_output_is_in_order(installed: tuple[Machine, str]) -> None:
    lines = installed[1].splitlines()
    ran = lines.index("running systemd-sysusers /etc/sysusers.d/edge-defender.conf")
    created = next(i for i, line in enumerate(lines) if "Creating group 'edge-defender'" in line)
    assert lines.index("created /etc/systemd/system/edge-defender.service") < ran < created
    assert lines[-1].startswith("next: edit /etc/edge-defender/config.toml")


def test_active_only_after_ready(machine: Machine) -> None:
    show = machine.wait_for(
        "the unit to be active",
        lambda: (
            (s := machine.show("ActiveState", "SubState", "Type", "MainPID"))["ActiveState"]
            == "active"
            and s
        ),
    )
    assert (show["SubState"], show["Type"]) == ("running", "notify")
    entries = machine.journal("-u", UNIT)
    started = next(e for e in entries if e["MESSAGE"].startswith("started "))
    active = next(
        e for e in entries if e.get("MESSAGE_ID") == "39f53479d3a045ac8e11786248231fbf"
    )  # systemd's "Started edge-defender.service"
    assert int(started["__REALTIME_TIMESTAMP"]) < int(active["__REALTIME_TIMESTAMP"])
    status = machine.status()
    assert status["pid"] == int(show["MainPID"])
    assert status["samples"] >= 1


def test_collection_as_the_service_user_equals_ss(machine: Machine) -> None:
    machine.run(
        "systemd-run",
        "--unit=test-listener",
        "--property=Type=exec",
        "/usr/bin/python3",
        "-c",
        LISTENER,
    )
    machine.wait_for(
        "the test listener",
        lambda: LISTEN_TCP in _ss_ports(machine)["tcp"] and _ss_ports(machine)["established"],
    )
    agent, ss = _service_user_ports(machine), _ss_ports(machine)
    assert agent == ss
    assert {LISTEN_TCP} <= agent["tcp"] and {LISTEN_UDP} <= agent["udp"]
    assert agent["established"] == 2  # both ends of the test connection


def test_status_as_root_the_service_user_and_an_outsider(machine: Machine) -> None:
    for prefix in ((), AS_SERVICE_USER):
        out = machine.run(*prefix, PROGRAM, "status", check=False)
        assert out.returncode == 0 and out.stdout.startswith("state               running"), out
    # Outside the service group the config cannot be read: one line that says so.
    machine.run("useradd", "--create-home", "outsider")
    out = machine.run(
        *("setpriv", "--reuid=outsider", "--regid=outsider", "--init-groups"),
        *("env", "HOME=/home/outsider", PROGRAM, "status"),
        check=False,
    )
    assert out.returncode != 0
    assert len(out.stderr.splitlines()) == 1, out.stderr  # no traceback
    assert CONFIG in out.stderr and "Permission denied" in out.stderr, out.stderr


def test_journal_priorities(machine: Machine) -> None:
    # The listener on 31337 is outside the example profile's port set: a violation.
    def violation() -> dict[str, Any] | None:
        found = [e for e in machine.journal("-u", UNIT) if e["MESSAGE"].startswith("violation ")]
        return found[0] if found else None

    warning = machine.wait_for("a violation in the journal", violation)
    assert warning["PRIORITY"] == "4", warning
    assert "behavior=listening-tcp-ports" in warning["MESSAGE"]
    started = next(e for e in machine.journal("-u", UNIT) if e["MESSAGE"].startswith("started "))
    assert started["PRIORITY"] == "6", started


def test_reload_takes_a_good_profile_and_refuses_a_bad_one(machine: Machine) -> None:
    example = json.loads((machine.root / PROFILES.lstrip("/") / "example-profile.json").read_text())
    example["securityProfileName"] = "second"
    machine.write(f"{PROFILES}/second.json", json.dumps(example))
    pid = machine.show("MainPID")["MainPID"]
    machine.run("systemctl", "reload", UNIT)
    status = machine.status()
    assert status["reload"]["ok"] is True
    assert sorted(status["profiles"]) == ["raspberry-pi-baseline", "second"]

    machine.write(f"{PROFILES}/bad.json", '{"securityProfileName": "bad", "behaviors": [')
    done = machine.run("systemctl", "reload", UNIT, check=False)
    assert done.returncode != 0, done.stdout + done.stderr
    status = machine.status()
    assert status["reload"]["ok"] is False
    assert "bad.json" in status["reload"]["error"]
    assert sorted(status["profiles"]) == ["raspberry-pi-baseline", "second"]  # old ones in force
    show = machine.show("ActiveState", "MainPID")
    assert show == {"ActiveState": "active", "MainPID": pid}
    journal = machine.journal("-u", UNIT)
    said = [e for e in journal if e["MESSAGE"].startswith("edge-defender: reload: refused: ")]
    assert said and "bad.json" in said[0]["MESSAGE"], said  # ExecReload's own words
    logged = [e for e in journal if e["MESSAGE"].startswith("reload_refused ")]
    assert logged and logged[0]["PRIORITY"] == "3", logged  # the agent's, as an error
    (machine.root / PROFILES.lstrip("/") / "bad.json").unlink()
    machine.run("systemctl", "reload", UNIT)


def test_watchdog_restarts_a_stopped_agent_and_leaves_its_stack(machine: Machine) -> None:
    before = machine.show("MainPID", "NRestarts")
    machine.run("kill", "-STOP", before["MainPID"])
    after = machine.wait_for(
        "a restart",
        lambda: (
            (s := machine.show("ActiveState", "MainPID", "NRestarts"))["ActiveState"] == "active"
            and s["MainPID"] not in ("0", before["MainPID"])
            and s
        ),
        timeout_s=30,
    )
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    messages = [e["MESSAGE"] for e in machine.journal("-u", UNIT)]
    assert any("Watchdog timeout" in m for m in messages), messages[-30:]
    assert any("status=6/ABRT" in m for m in messages), messages[-30:]
    abort = messages.index("Fatal Python error: Aborted")
    assert any(m.strip().startswith('File "') for m in messages[abort : abort + 20])


def test_uninstall_service_removes_it_quietly(machine: Machine) -> None:
    out = machine.run(PROGRAM, "uninstall-service", "--purge")
    assert out.stderr == ""
    assert out.stdout.splitlines()[0] == f"running systemctl stop {UNIT}"
    assert f"removed /etc/systemd/system/{UNIT}" in out.stdout
    assert machine.show("LoadState", "ActiveState") == {
        "LoadState": "not-found",
        "ActiveState": "inactive",
    }
    assert not (machine.root / "etc/edge-defender").exists()
    again = machine.run(PROGRAM, "uninstall-service")
    assert again.stderr == ""
    # No stop of a unit that is not there, no daemon-reload when nothing changed.
    assert "systemctl" not in again.stdout, again.stdout
    assert again.stdout.splitlines()[0] == "nothing to remove"

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
The container only sees an overlay of the cached rootfs: the cache stays pristine.
EDGE_DEFENDER_TEST_CACHE moves the cache (default /var/cache/edge-defender-test).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGE_DEFENDER_TEST_CACHE", "/var/cache/edge-defender-test"))
VENV = "/opt/edge-defender"
PROGRAM = f"{VENV}/bin/edge-defender"
UNIT = "edge-defender.service"
CONFIG = "/etc/edge-defender/config.toml"
PROFILES = "/etc/edge-defender/profiles"
STATUS = "/var/lib/edge-defender/status.json"
AS_SERVICE_USER = ("setpriv", "--reuid=edge-defender", "--regid=edge-defender", "--init-groups")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_S = 60.0
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


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, systemd-nspawn)"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install {package})"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system"
    return None


pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(_missing() is not None, reason=_missing() or ""),
]


def _run(argv: list[str], *, timeout_s: float = TIMEOUT_S) -> str:
    """stdout and stderr of a host command, in one pipe as on a terminal."""
    done = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit status {done.returncode}\n{done.stdout}")
    return done.stdout


# -- what goes into the container: the rootfs, the wheels ------------------------------


@pytest.fixture(scope="module")
def rootfs() -> Path:
    out = _run(["bash", str(REPO / "scripts" / "rootfs.sh"), str(CACHE)], timeout_s=900)
    return Path(out.strip().splitlines()[-1])


def _python_version(root: Path) -> str:
    """The X.Y of the rootfs's python3 (a symlink to pythonX.Y)."""
    return os.readlink(root / "usr/bin/python3").removeprefix("python")


@pytest.fixture(scope="module")
def wheels(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from this working tree, and its dependencies' wheels
    for the rootfs's Python (downloaded once into the cache, keyed by the requirements)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = sorted(
        [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    )
    version = _python_version(rootfs)
    key = hashlib.sha256(json.dumps([version, requirements]).encode()).hexdigest()[:12]
    deps = CACHE / f"wheels-{key}"
    if not deps.is_dir():
        partial = deps.with_name(deps.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _run(
            [
                *(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"),
                *("--python-version", version, "-d", str(partial), *requirements),
            ],
            timeout_s=600,
        )
        partial.rename(deps)
    out = tmp_path_factory.mktemp("wheels")
    for wheel in deps.glob("*.whl"):
        shutil.copy(wheel, out)
    # A copy of the tree: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(REPO / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    _run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index"),
            *("--find-links", str(deps), "-w", str(out), str(src)),
        ],
        timeout_s=300,
    )
    return out


# -- the container -----------------------------------------------------------------------


class Machine:
    """An overlay of the cached rootfs, booted with systemd-nspawn and driven with nsenter."""

    def __init__(self, work: Path, rootfs: Path) -> None:
        self.work = work
        self.root = work / "merged"
        self.boot_log = work / "boot.log"
        self._lower = rootfs
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None  # the container's systemd, as the host sees it

    # Before boot: the tree, and commands in a chroot.

    def mount(self) -> None:
        for d in ("upper", "overlay-work", "merged"):
            (self.work / d).mkdir()
        _run(
            [
                *("mount", "-t", "overlay", "overlay", "-o"),
                f"lowerdir={self._lower},upperdir={self.work / 'upper'},"
                f"workdir={self.work / 'overlay-work'}",
                str(self.root),
            ]
        )

    def chroot(self, *argv: str, timeout_s: float = TIMEOUT_S) -> str:
        proc = self.root / "proc"
        _run(["mount", "-t", "proc", "proc", str(proc)])
        try:
            return _run(
                ["chroot", str(self.root), "env", "-i", f"PATH={PATH}", *argv],
                timeout_s=timeout_s,
            )
        finally:
            _run(["umount", str(proc)])

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        where = self.root / path.lstrip("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(text)
        where.chmod(mode)

    # Booted.

    def boot(self) -> None:
        with self.boot_log.open("wb") as log:
            self._nspawn = subprocess.Popen(
                [
                    *("systemd-nspawn", "-D", str(self.root), "--boot", "--register=no"),
                    *("--keep-unit", "--private-network", "--console=read-only"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + TIMEOUT_S
        while self.leader is None:
            assert self._nspawn.poll() is None, f"nspawn exited:\n{self.boot_log.read_text()}"
            assert time.monotonic() < deadline, f"no container init:\n{self.boot_log.read_text()}"
            children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children")
            found = children.read_text().split()
            if found and Path(f"/proc/{found[0]}/comm").read_text().strip() == "systemd":
                self.leader = int(found[0])
            time.sleep(0.05)
        # Until systemd listens, systemctl only says it cannot connect.
        state = self.wait_for(
            "the boot to finish",
            lambda: (
                (out := self.run("systemctl", "is-system-running", check=False).stdout.strip())
                in ("running", "degraded")
                and out
            ),
        )
        if state == "degraded":  # say which unit failed; the tests judge ours
            print(self.run("systemctl", "--failed", "--no-legend").stdout)

    def run(
        self, *argv: str, check: bool = True, timeout_s: float = TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the running container, as root, with a clean environment."""
        assert self.leader is not None
        done = subprocess.run(
            [
                *("nsenter", "-t", str(self.leader), "-a", "-r", "-w"),
                *("env", "-i", f"PATH={PATH}", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", *argv),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)}: exit status {done.returncode}\n{done.stdout}{done.stderr}"
            )
        return done

    def show(self, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", UNIT, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in out.stdout.splitlines())

    def journal(self, *args: str) -> list[dict[str, Any]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", *args).stdout
        return [json.loads(line) for line in out.splitlines()]

    def status(self) -> dict[str, Any]:
        # Read inside: it links to /run/edge-defender, the container's own tmpfs.
        return json.loads(self.run("cat", STATUS).stdout)

    def wait_for(self, what: str, check: Any, timeout_s: float = TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (result := check()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)
        return result

    def stop(self) -> None:
        """Power off (or kill) the container and unmount the tree; safe to call twice."""
        if self._nspawn is not None:
            if self.leader is not None and self._nspawn.poll() is None:
                with contextlib.suppress(Exception):
                    self.run("systemctl", "poweroff", "--no-block", check=False)
            try:
                self._nspawn.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._nspawn.pid, signal.SIGKILL)
                self._nspawn.wait(10)
            self._nspawn = None
        for mount in (self.root / "proc", self.root):
            if os.path.ismount(mount):
                subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)
        if not os.path.ismount(self.root):  # the venv and the journal: ~100 MB a run
            shutil.rmtree(self.work / "upper", ignore_errors=True)


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
        shutil.copytree(wheels, machine.root / "tmp/wheels")
        machine.chroot("python3", "-m", "venv", VENV)
        machine.chroot(
            f"{VENV}/bin/pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            "/tmp/wheels",
            "edge-defender",
            timeout_s=300,
        )
        output = machine.chroot(PROGRAM, "install-service")
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

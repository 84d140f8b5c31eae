"""The agent as a real systemd service in a container. A Debian bookworm rootfs
(scripts/rootfs.sh, built once and cached outside the checkout) is mounted as an overlay,
gets the package installed offline in a venv at /opt/edge-defender and
`edge-defender install-service` run in a chroot; then systemd-nspawn boots it
(../shared/notes/systemd-nspawn.md) and commands run inside with nsenter. The container
only sees an overlay of the cached rootfs: the cache stays pristine.
EDGE_DEFENDER_TEST_CACHE moves the cache (default /var/cache/edge-defender-test).
Used by tests/system/test_system_service.py and the rig's NspawnDut (hw/dut.py).
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGE_DEFENDER_TEST_CACHE", "/var/cache/edge-defender-test"))
VENV = "/opt/edge-defender"
PROGRAM = f"{VENV}/bin/edge-defender"
UNIT = "edge-defender.service"
CONFIG = "/etc/edge-defender/config.toml"
PROFILES = "/etc/edge-defender/profiles"
STATUS = "/var/lib/edge-defender/status.json"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_S = 60.0
T = TypeVar("T")


def missing() -> str | None:
    """Why a container cannot be made here, or None when it can."""
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


def run_host(argv: list[str], *, timeout_s: float = TIMEOUT_S) -> str:
    """stdout and stderr of a host command, in one pipe as on a terminal; RuntimeError
    with that output when it fails."""
    done = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit status {done.returncode}\n{done.stdout}")
    return done.stdout


# -- what goes into the container: the rootfs, the wheels ------------------------------


def build_rootfs(cache: Path = CACHE) -> Path:
    """The cached rootfs, built first when absent (debootstrap: about 3 minutes)."""
    out = run_host(["bash", str(REPO / "scripts" / "rootfs.sh"), str(cache)], timeout_s=900)
    return Path(out.strip().splitlines()[-1])


def _python_version(root: Path) -> str:
    """The X.Y of the rootfs's python3 (a symlink to pythonX.Y)."""
    return os.readlink(root / "usr/bin/python3").removeprefix("python")


def build_wheels(rootfs: Path, work: Path, cache: Path = CACHE) -> Path:
    """work/wheels: the project's wheel, built from this working tree, and its
    dependencies' wheels for the rootfs's Python (downloaded once into the cache, keyed
    by the requirements)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = sorted(
        [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    )
    version = _python_version(rootfs)
    key = hashlib.sha256(json.dumps([version, requirements]).encode()).hexdigest()[:12]
    deps = cache / f"wheels-{key}"
    if not deps.is_dir():
        partial = deps.with_name(deps.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        run_host(
            [
                *(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"),
                *("--python-version", version, "-d", str(partial), *requirements),
            ],
            timeout_s=600,
        )
        partial.rename(deps)
    out = work / "wheels"
    out.mkdir(parents=True)
    for wheel in deps.glob("*.whl"):
        shutil.copy(wheel, out)
    # A copy of the tree: setuptools writes build/ and *.egg-info beside the sources.
    src = work / "src"
    shutil.copytree(REPO / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    run_host(
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
        run_host(
            [
                *("mount", "-t", "overlay", "overlay", "-o"),
                f"lowerdir={self._lower},upperdir={self.work / 'upper'},"
                f"workdir={self.work / 'overlay-work'}",
                str(self.root),
            ]
        )

    def chroot(self, *argv: str, timeout_s: float = TIMEOUT_S) -> str:
        proc = self.root / "proc"
        run_host(["mount", "-t", "proc", "proc", str(proc)])
        try:
            return run_host(
                ["chroot", str(self.root), "env", "-i", f"PATH={PATH}", *argv],
                timeout_s=timeout_s,
            )
        finally:
            run_host(["umount", str(proc)])

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        where = self.root / path.lstrip("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(text)
        where.chmod(mode)

    def install(self, wheels: Path) -> str:
        """The package in a venv at VENV from `wheels`, offline, then install-service;
        returns what install-service printed. The unit is neither enabled nor started."""
        shutil.copytree(wheels, self.root / "tmp/wheels")
        self.chroot("python3", "-m", "venv", VENV)
        self.chroot(
            *(f"{VENV}/bin/pip", "install", "-q", "--no-index"),
            *("--find-links", "/tmp/wheels", "edge-defender"),
            timeout_s=300,
        )
        return self.chroot(PROGRAM, "install-service")

    # Booted.

    def boot(self, netns: str | None = None, *, capabilities: Sequence[str] = ()) -> None:
        """Boot with systemd and return once it runs. In the named network namespace
        (/run/netns/NAME) when given, else in a private one with only lo. `capabilities`
        are kept beside nspawn's default set: with a namespace of ours it drops
        CAP_NET_ADMIN, which a firewall in the container needs."""
        network = f"--network-namespace-path=/run/netns/{netns}" if netns else "--private-network"
        kept = [f"--capability={','.join(capabilities)}"] if capabilities else []
        with self.boot_log.open("wb") as log:
            self._nspawn = subprocess.Popen(
                [
                    *("systemd-nspawn", "-D", str(self.root), "--boot", "--register=no"),
                    *("--keep-unit", network, "--console=read-only", *kept),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + TIMEOUT_S
        while self.leader is None:
            if self._nspawn.poll() is not None:
                raise RuntimeError(f"nspawn exited:\n{self.boot_log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no container init:\n{self.boot_log.read_text()}")
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
        if state == "degraded":  # say which unit failed; the callers judge theirs
            print(self.run("systemctl", "--failed", "--no-legend").stdout)

    @property
    def enter(self) -> tuple[str, ...]:
        """The argv prefix that runs a command inside the running container, as root,
        with a clean environment."""
        assert self.leader is not None, "the container is not booted"
        return (
            *("nsenter", "-t", str(self.leader), "-a", "-r", "-w"),
            *("env", "-i", f"PATH={PATH}", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"),
        )

    def run(
        self, *argv: str, check: bool = True, timeout_s: float = TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the running container; RuntimeError when `check` and it fails."""
        done = subprocess.run(
            [*self.enter, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
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

    def wait_for(self, what: str, check: Callable[[], T | None], timeout_s: float = TIMEOUT_S) -> T:
        """The first true result of `check`, polled; RuntimeError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not (result := check()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
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
            self.leader = None
        for mount in (self.root / "proc", self.root):
            if os.path.ismount(mount):
                subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)
        if not os.path.ismount(self.root):  # the venv and the journal: ~100 MB a run
            shutil.rmtree(self.work / "upper", ignore_errors=True)

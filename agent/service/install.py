"""`edge-defender install-service` / `uninstall-service`: put the systemd unit, its
sysusers.d and tmpfiles.d pieces, an example config and profile in place, from the
installed package (agent/data), on this system or under a --root for an image.

Where things go: the unit in /etc/systemd/system (the place for units a local
administrator installs; /usr/lib/systemd/system belongs to the distribution's
packages), sysusers.d and tmpfiles.d files in /etc likewise. The tmpfiles.d file is
the one table of directories, owners and modes: systemd-tmpfiles applies it at boot,
and the installer applies it here too, so a --root tree is right without systemd.

Owners come from the root's /etc/passwd and /etc/group. Under a --root where the
service user does not exist yet, files stay root-owned, and systemd-sysusers and
systemd-tmpfiles, which run at every boot, create the user and fix the owners. Each
step only acts on what differs, so a second run changes nothing."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, SERVICE_USER
from agent.files import data

UNIT = "edge-defender.service"
PLACEHOLDER = "@EDGE_DEFENDER@"

_UNIT_PATH = f"etc/systemd/system/{UNIT}"
_DROP_IN_DIR = f"etc/systemd/system/{UNIT}.d"
_WANTS = f"etc/systemd/system/multi-user.target.wants/{UNIT}"  # from [Install] WantedBy=
_SYSUSERS = "etc/sysusers.d/edge-defender.conf"
_TMPFILES = "etc/tmpfiles.d/edge-defender.conf"
_CONFIG = str(DEFAULT_CONFIG_PATH.relative_to("/"))
_CONFIG_DIR = str(DEFAULT_CONFIG_PATH.parent.relative_to("/"))
_PROFILES = f"{_CONFIG_DIR}/profiles"
_STATE_DIR = "var/lib/edge-defender"  # the unit's StateDirectory=
# (package data file, where it goes, replaced when it differs)
_MANAGED = (
    ("edge-defender.sysusers", _SYSUSERS),
    ("edge-defender.tmpfiles", _TMPFILES),
)
_NET_ADMIN = ("net-admin.conf", f"{_DROP_IN_DIR}/net-admin.conf")
# ProtectHome=yes and PrivateTmp=yes hide these from the service: a program there
# would not start.
_HIDDEN_FROM_UNIT = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
# What an Exec line holds without quoting or %/$ escapes.
_UNIT_SAFE = re.compile(r"[A-Za-z0-9/._+=:-]+")


class InstallError(Exception):
    """The service cannot be installed as asked; the message says why and what to do."""


@dataclass(frozen=True)
class TmpfilesEntry:
    type: str  # "d": create the directory; "z": adjust a path that exists
    path: str  # absolute, as on the device
    mode: int
    user: str
    group: str


def default_command() -> list[str]:
    """The command that runs this installation: the `edge-defender` script beside this
    Python (a venv or pipx install), else `python -m agent`. Symlinks are kept as they
    are: a venv's python is a symlink, and resolving it would leave the venv."""
    script = Path(sys.executable).with_name("edge-defender")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "agent"]


def render_unit(command: Sequence[str]) -> str:
    return data("edge-defender.service").decode().replace(PLACEHOLDER, " ".join(command))


def tmpfiles_entries() -> list[TmpfilesEntry]:
    entries = []
    for line in data("edge-defender.tmpfiles").decode().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, path, mode, user, group, _age = line.split()
            entries.append(TmpfilesEntry(kind, path, int(mode, 8), user, group))
    return entries


def check_command(root: Path, command: Sequence[str]) -> None:
    """Refuse a command the unit could not run on the device."""
    program = command[0]
    if not program.startswith("/"):
        raise InstallError(f"{program}: the unit needs an absolute path")
    for arg in command:
        if not _UNIT_SAFE.fullmatch(arg):
            raise InstallError(
                f"{arg!r}: a unit's command line here may only hold letters, digits and"
                " / . _ + = : -; install the package in a path without spaces"
            )
    for hidden in _HIDDEN_FROM_UNIT:
        if program == hidden or program.startswith(hidden + "/"):
            raise InstallError(
                f"{program}: {hidden} is hidden from the service (ProtectHome=, PrivateTmp=);"
                " install the package elsewhere, e.g. a venv in /opt/edge-defender"
                " (README: Deploy on a Raspberry Pi)"
            )
    where = root / program.lstrip("/")
    if not (where.is_file() and os.access(where, os.X_OK)):
        raise InstallError(
            f"{where}: not an executable file; pass --exec with the program's path on the device"
        )


def install_files(root: Path, command: Sequence[str], *, net_admin: bool) -> list[str]:
    """Lay out the service under `root`; returns one line per change made."""
    check_command(root, command)
    changes: list[str] = []
    _write(root / _UNIT_PATH, render_unit(command).encode(), changes)
    files = [*_MANAGED, _NET_ADMIN] if net_admin else list(_MANAGED)
    for name, target in files:
        _write(root / target, data(name), changes)
    entries = tmpfiles_entries()
    for entry in entries:
        if entry.type == "d":
            _apply(root, entry, changes)
    _write(root / _CONFIG, data("config.toml"), changes, replace=False)
    profiles = root / _PROFILES
    if not any(profiles.glob("*.json")):
        _write(profiles / "example-profile.json", data("example-profile.json"), changes)
    for entry in entries:
        if entry.type == "z":
            _apply(root, entry, changes)
    return changes


def remove_files(root: Path, *, purge: bool) -> list[str]:
    """Remove what install_files made; with `purge` also the config, keys and state.
    The system user stays: files it owned elsewhere (backups) keep a named owner."""
    removed = []
    paths = [_UNIT_PATH, _WANTS, _NET_ADMIN[1], *(target for _, target in _MANAGED)]
    for path in (root / p for p in paths):
        if path.is_symlink() or path.exists():
            path.unlink()
            removed.append(f"removed {path}")
    drop_ins = root / _DROP_IN_DIR
    # Without purge, drop-ins of `systemctl edit` are settings, kept like the config.
    trees = [drop_ins, root / _CONFIG_DIR, root / _STATE_DIR] if purge else []
    for tree in trees:
        if tree.exists():
            shutil.rmtree(tree)
            removed.append(f"removed {tree}")
    if drop_ins.is_dir() and not any(drop_ins.iterdir()):
        drop_ins.rmdir()
        removed.append(f"removed {drop_ins}")
    return removed


def _write(path: Path, content: bytes, changes: list[str], *, replace: bool = True) -> None:
    if path.exists():
        if path.read_bytes() == content:
            return
        if not replace:
            changes.append(f"kept {path} (exists; not overwritten)")
            return
        verb = "updated"
    else:
        verb = "created"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    tmp.chmod(0o644)  # modes that differ come from the tmpfiles.d entries
    os.replace(tmp, path)
    changes.append(f"{verb} {path}")


def _apply(root: Path, entry: TmpfilesEntry, changes: list[str]) -> None:
    path = root / entry.path.lstrip("/")
    created = entry.type == "d" and not path.exists()
    if created:
        path.mkdir(parents=True)
    if not path.exists():
        return
    st = path.stat()
    fixed = []
    if stat.S_IMODE(st.st_mode) != entry.mode:
        path.chmod(entry.mode)
        fixed.append(f"mode {entry.mode:04o}")
    # Unknown names stay root until first boot; only root can give files away.
    owner = (
        _user_id(root, "passwd", entry.user) or 0,
        _user_id(root, "group", entry.group) or 0,
    )
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner)
        fixed.append(f"owner {entry.user}:{entry.group}")
    if created:
        changes.append(f"created {path}")
    elif fixed:
        changes.append(f"set {', '.join(fixed)} on {path}")


def _user_id(root: Path, database: str, name: str) -> int | None:
    """The id of `name` in root's /etc/passwd or /etc/group."""
    if name == "root":
        return 0
    try:
        lines = (root / "etc" / database).read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split(":")
        if fields[0] == name and len(fields) > 2:
            return int(fields[2])
    return None


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()  # sd_booted(3)


def _unit_known() -> bool:
    """Whether systemd has the unit's file; `systemctl stop` of an unknown unit only says
    that it is not loaded."""
    done = subprocess.run(
        ["systemctl", "cat", UNIT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return done.returncode == 0


def _run(argv: Sequence[str]) -> None:
    # Flushed first: the tool writes to the same terminal or pipe, and a pipe buffers ours.
    print("running", " ".join(argv), flush=True)
    done = subprocess.run(argv, check=False)
    if done.returncode != 0:
        raise InstallError(f"{' '.join(argv)} failed with exit status {done.returncode}")


def run_install_service(root: str | None, exec_path: str | None, *, net_admin: bool) -> int:
    try:
        _install_service(root, exec_path, net_admin=net_admin)
    except (InstallError, OSError) as e:
        sys.stdout.flush()  # what was done, then why it stopped
        print(f"edge-defender: install-service: {_error_text(e)}", file=sys.stderr)
        return 1
    return 0


def run_uninstall_service(root: str | None, *, purge: bool) -> int:
    try:
        _uninstall_service(root, purge=purge)
    except (InstallError, OSError) as e:
        sys.stdout.flush()  # what was done, then why it stopped
        print(f"edge-defender: uninstall-service: {_error_text(e)}", file=sys.stderr)
        return 1
    return 0


def _error_text(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _need_root(root: str | None) -> None:
    if root is None and os.geteuid() != 0:
        raise InstallError("must run as root (or work on a tree with --root DIR)")


def _install_service(root: str | None, exec_path: str | None, *, net_admin: bool) -> None:
    _need_root(root)
    command = [exec_path] if exec_path else default_command()
    for line in install_files(Path(root or "/"), command, net_admin=net_admin) or ["no changes"]:
        print(line)
    if root is not None:
        if _user_id(Path(root), "passwd", SERVICE_USER) is None:
            print(
                f"note: user {SERVICE_USER} is not in {root}/etc/passwd yet: its files stay"
                " root-owned until systemd-sysusers and systemd-tmpfiles run at boot"
            )
        print(f"next, to start it at boot: systemctl --root={root} enable {UNIT}")
        return
    # Neither tool needs a running systemd, so a chroot gets its user and owners too.
    for argv in (
        ["systemd-sysusers", f"/{_SYSUSERS}"],
        ["systemd-tmpfiles", "--create", f"/{_TMPFILES}"],
    ):
        if shutil.which(argv[0]):
            _run(argv)
        else:
            print(f"{argv[0]} not found: skipped; create the user and fix the owners by hand")
    if _systemd_running():
        _run(["systemctl", "daemon-reload"])
    else:
        print("systemd is not running here: skipped systemctl daemon-reload")
    print(
        f"next: edit /{_CONFIG}, put the certificates in /{_CONFIG_DIR}/certs"
        " (README: Deploy on a Raspberry Pi),"
        f" run `edge-defender check-config`, then `systemctl enable --now {UNIT}`"
        f" (after an upgrade: `systemctl restart {UNIT}`)"
    )


def _remove_firewall() -> list[str]:
    """The mitigation table goes with the service, and the blocks in it."""
    from agent.collect.firewall import Allowlist, Firewall, FirewallError

    firewall = Firewall(allow=Allowlist())
    if not firewall.installed():
        return []
    try:
        if not firewall.state()["present"]:
            return []
        firewall.remove()
    except FirewallError as e:
        return [f"note: nftables table inet {firewall.table} not removed: {e}"]
    return [f"removed nftables table inet {firewall.table}"]


def _uninstall_service(root: str | None, *, purge: bool) -> None:
    _need_root(root)
    top = Path(root or "/")
    live = root is None and _systemd_running()
    if live and _unit_known():
        _run(["systemctl", "stop", UNIT])
    removed = remove_files(top, purge=purge)
    if root is None:
        removed += _remove_firewall()
    for line in removed or ["nothing to remove"]:
        print(line)
    if live and removed:
        _run(["systemctl", "daemon-reload"])
    kept = [str(path) for path in (top / _CONFIG_DIR, top / _STATE_DIR) if path.exists()]
    if kept and not purge:
        print(f"kept {' and '.join(kept)}; --purge removes them")

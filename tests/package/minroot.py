"""A small Debian bookworm root for any architecture, in seconds instead of debootstrap's
minutes: a private apt (its own lists, cache and an empty dpkg status, the host's mirror
and keyring) resolves and downloads the packages asked for and everything they depend
on; each is unpacked with dpkg-deb and recorded as installed in the root's dpkg
database, so a real `dpkg -i` inside sees its dependencies met. No maintainer script
of those packages runs (they need the root to exist first); the few things they would
have made are made here: the merged /usr links, /etc/passwd and /etc/group.
The result is cached, keyed by architecture and package list, and never changed: the
tests work on copies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO

SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
TIMEOUT_S = 600


def run(argv: list[str], stdin: IO[bytes] | None = None) -> str:
    """stdout of a host command; RuntimeError with its output when it fails."""
    done = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}\n{output}")
    return done.stdout.decode()


def mirror() -> str:
    """The host's Debian mirror for SUITE, as apt resolved its sources."""
    out = run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(CODENAME) $(TARGET_OF)"])
    for line in out.splitlines():
        uri, codename, kind = line.split()
        if codename == SUITE and kind == "deb":
            return uri
    raise RuntimeError(f"no {SUITE} mirror in the host's apt sources")


def _apt(arch: str, cache: Path) -> list[str]:
    """apt-get with its own state for `arch`, blind to the host's packages."""
    base = cache / f"apt-{arch}"
    (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "sources.list").write_text(f"deb [arch={arch}] {mirror()} {SUITE} main\n")
    (base / "status").touch()
    options = {
        "APT::Architecture": arch,
        "APT::Architectures": arch,
        "Dir::Etc::SourceList": str(base / "sources.list"),
        "Dir::Etc::SourceParts": str(base / "no-parts"),
        "Dir::Etc::Preferences": str(base / "no-preferences"),
        "Dir::Etc::PreferencesParts": str(base / "no-parts"),
        "Dir::State::Lists": str(base / "lists"),
        "Dir::State::status": str(base / "status"),
        "Dir::Cache": str(base),
        "Dir::Cache::archives": str(base / "archives"),
        "Dir::Etc::Trusted": KEYRING,
        "Dir::Etc::TrustedParts": str(base / "no-parts"),
        "APT::Install-Recommends": "false",
        "Debug::NoLocking": "true",
    }
    return ["apt-get", "-q", "-y", *(f"-o{k}={v}" for k, v in options.items())]


def _record(root: Path, deb: Path, status: list[str]) -> None:
    """Unpack `deb` into `root` and add it, as installed, to the dpkg database."""
    control = run(["dpkg-deb", "-f", str(deb)])
    fields = dict(
        line.split(": ", 1) for line in control.splitlines() if ": " in line and line[0] != " "
    )
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    listing = run(
        ["tar", "-x", "-v", "--keep-directory-symlink", "-C", str(root)], stdin=tar.stdout
    )
    if tar.wait() != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed")
    name = fields["Package"]
    if fields.get("Multi-Arch") == "same":
        name += f":{fields['Architecture']}"
    paths = [
        "/." if p in ("./", ".") else "/" + p.removeprefix("./").rstrip("/")
        for p in listing.splitlines()
    ]
    (root / "var/lib/dpkg/info" / f"{name}.list").write_text("\n".join(paths) + "\n")
    status.append(
        control.rstrip("\n").replace(
            f"Package: {fields['Package']}\n",
            f"Package: {fields['Package']}\nStatus: install ok installed\n",
            1,
        )
    )


def build(arch: str, packages: list[str], cache: Path) -> Path:
    """The cached root with `packages` and their dependencies for `arch`."""
    key = hashlib.sha256(f"{SUITE} {arch} {' '.join(sorted(packages))}".encode()).hexdigest()[:12]
    root = cache / f"root-{SUITE}-{arch}-{key}"
    if (root / ".complete").exists():
        return root
    apt = _apt(arch, cache)
    run([*apt, "update"])
    run([*apt, "install", "--download-only", *packages])
    debs = sorted((cache / f"apt-{arch}" / "archives").glob("*.deb"))
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "usr").mkdir(parents=True)
    # Debian bookworm's merged /usr: what usrmerge or debootstrap would have linked.
    for d in ("bin", "sbin", "lib", *(["lib64"] if arch == "amd64" else [])):
        (tmp / "usr" / d).mkdir()
        (tmp / d).symlink_to(f"usr/{d}")
    (tmp / "var/lib/dpkg/info").mkdir(parents=True)
    wanted = _closure(apt, packages)
    status: list[str] = []
    for deb in debs:
        if deb.name.split("_", 1)[0] in wanted:
            _record(tmp, deb, status)
    (tmp / "var/lib/dpkg/status").write_text("\n\n".join(status) + "\n")
    for f in ("available", "diversions", "statoverride"):
        (tmp / "var/lib/dpkg" / f).touch()
    for db in ("passwd", "group"):  # base-passwd's postinst would copy them
        shutil.copy(tmp / f"usr/share/base-passwd/{db}.master", tmp / "etc" / db)
    (tmp / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (tmp / "etc/shadow").chmod(0o640)
    for d in ("proc", "sys", "dev", "tmp", "run"):
        (tmp / d).mkdir(exist_ok=True)
    os.chmod(tmp / "tmp", 0o1777)
    (tmp / ".complete").touch()
    tmp.rename(root)
    return root


def _closure(apt: list[str], packages: list[str]) -> set[str]:
    """The names apt would install for `packages` into an empty root."""
    out = run([*apt, "install", "--simulate", *packages])
    return {line.split()[1] for line in out.splitlines() if line.startswith("Inst ")}

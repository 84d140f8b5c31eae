"""Building the packages for the tests: both .debs from this checkout, a later version of
one, and qemu's binfmt handler; shared by test_package.py and test_image.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGE_DEFENDER_TEST_CACHE", "/var/cache/edge-defender-test"))
PACKAGE_CACHE = CACHE / "package"
VERSION = "0.1.0"  # agent/__init__.py, as build-deb.sh reads it
CONFIG = "/etc/edge-defender/config.toml"
NEW_CONFIG_LINE = "# a line the new version adds\n"


def host(argv: list[str], timeout_s: float = 900) -> str:
    """stdout of a host command; RuntimeError with its output when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout


def binfmt(arch: str) -> None:
    """Foreign binaries of `arch` run through qemu-user-static, also inside a chroot."""
    host(["bash", "-c", f'. "{REPO}/packaging/lib.sh" && binfmt_enable {arch}'])


def build_debs(out: Path) -> dict[str, Path]:
    """Both packages, gzip-compressed (5x faster than xz, and an upper bound of its size)."""
    host(
        [
            *("bash", str(REPO / "scripts/build-deb.sh"), "--out", str(out)),
            *("--cache", str(PACKAGE_CACHE / "wheels"), "--compression", "gzip"),
        ]
    )
    return {arch: out / f"edge-defender_{VERSION}_{arch}.deb" for arch in ("arm64", "amd64")}


def later_version(deb: Path, work: Path) -> Path:
    """`deb` as version VERSION+1 whose shipped config gained a line."""
    tree = work / "tree"
    host(["dpkg-deb", "-R", str(deb), str(tree)])
    control = tree / "DEBIAN/control"
    control.write_text(control.read_text().replace(f"Version: {VERSION}", f"Version: {VERSION}+1"))
    arch = host(["dpkg-deb", "-f", str(deb), "Architecture"]).strip()
    config = tree / CONFIG.lstrip("/")
    config.write_text(config.read_text() + NEW_CONFIG_LINE)
    later = work / f"edge-defender_{VERSION}+1_{arch}.deb"
    host(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), str(later)])
    return later

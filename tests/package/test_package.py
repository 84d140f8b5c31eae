"""The .deb packages (scripts/build-deb.sh): both are built from this checkout; the arm64
one is installed with dpkg into a small arm64 bookworm root and run there under qemu
(binfmt_misc); the amd64 one goes through install, a changed config, upgrade, remove and
purge with a real dpkg in an amd64 root. The roots come from tests/package/minroot.py.

Measured on 2 shared cores: 73 s on a cold cache (wheels and ~100 MB of Debian packages
downloaded into $EDGE_DEFENDER_TEST_CACHE/package, default
/var/cache/edge-defender-test/package), 59 s warm: building the two packages is a
third of it, the arm64 steps under qemu another. The booted gateway image is
tests/package/test_image.py (slow, not run by default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hw.machine import Machine
from hw.pki import Ca
from tests.package import minroot
from tests.package.debs import (
    CONFIG,
    NEW_CONFIG_LINE,
    PACKAGE_CACHE,
    REPO,
    VERSION,
    binfmt,
    build_debs,
    host,
    later_version,
)

# Built with gzip for speed: an upper bound of the release (xz) packages' size.
MAX_DEB_BYTES = 25 * 1024 * 1024
# What dpkg and the maintainer scripts need in the root beside the package's own
# dependencies (python3.11, libc6, systemd).
ROOT_PACKAGES = [
    *("base-files", "base-passwd", "bash", "coreutils", "dash", "diffutils", "dpkg"),
    *("findutils", "grep", "libc-bin", "sed", "tar", "util-linux"),
    *("python3.11", "systemd"),
]
ELF_MACHINE = {"arm64": 0xB7, "amd64": 0x3E}  # e_machine: EM_AARCH64, EM_X86_64
STATE = "/var/lib/edge-defender"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, dpkg into a root, binfmt_misc)"
    for tool, package in (
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
        ("qemu-aarch64-static", "qemu-user-static"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install {package})"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system (the tests work on overlays of a root)"
    if not Path("/usr/share/binfmts/qemu-aarch64").exists():
        return "qemu-user-static has no binfmt description for aarch64"
    return None


pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(_missing() is not None, reason=_missing() or ""),
]


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_debs(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def upgrade_deb(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The amd64 package as a later version whose shipped config changed."""
    return later_version(debs["amd64"], tmp_path_factory.mktemp("upgrade"))


def _machine(arch: str, work: Path) -> Iterator[Machine]:
    """An overlay of the cached small root for `arch`; the cache stays untouched."""
    binfmt(arch)
    machine = Machine(work, minroot.build(arch, ROOT_PACKAGES, PACKAGE_CACHE))
    machine.mount()
    try:
        yield machine
    finally:
        machine.stop()


@pytest.fixture(scope="module")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    yield from _machine("arm64", tmp_path_factory.mktemp("arm64"))


@pytest.fixture
def amd64(tmp_path: Path) -> Iterator[Machine]:
    yield from _machine("amd64", tmp_path)


def _dpkg(machine: Machine, *args: str, deb: Path | None = None) -> str:
    argv = ["dpkg", *args]
    if deb is not None:
        shutil.copy(deb, machine.root / "tmp" / deb.name)
        argv.append(f"/tmp/{deb.name}")
    return machine.chroot(*argv, timeout_s=300)


def _elf_machine(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[18:20], "little")


# -- the packages ---------------------------------------------------------------------


def test_packages_are_small_and_hold_the_target_code(debs: dict[str, Path], tmp_path: Path) -> None:
    for arch, deb in debs.items():
        assert deb.stat().st_size <= MAX_DEB_BYTES, f"{deb.name}: {deb.stat().st_size} bytes"
        fields = host(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"])
        assert fields.split() == [
            "Package:",
            "edge-defender",
            "Version:",
            VERSION,
            "Architecture:",
            arch,
        ]
        tree = tmp_path / arch
        host(["dpkg-deb", "-x", str(deb), str(tree)])
        site = tree / "opt/edge-defender/lib/python3.11/site-packages"
        extensions = sorted(site.rglob("*.so"))
        assert {p.name.split(".")[0] for p in extensions} >= {"_awscrt", "_psutil_linux", "_cbor2"}
        for so in extensions:
            assert _elf_machine(so) == ELF_MACHINE[arch], f"{so.name} is not {arch} code"
        assert os.readlink(tree / "opt/edge-defender/bin/python3") == "/usr/bin/python3.11"
        # Bytecode is shipped: the service cannot write beside the code.
        assert list((site / "agent/__pycache__").glob("cli.cpython-311.pyc"))
        control = tmp_path / f"{arch}-control"
        host(["dpkg-deb", "-e", str(deb), str(control)])
        assert (control / "conffiles").read_text().split() == [CONFIG]


# -- arm64 under qemu -----------------------------------------------------------------


def test_arm64_package_installs_and_runs_under_emulation(
    debs: dict[str, Path], arm64: Machine
) -> None:
    out = _dpkg(arm64, "-i", deb=debs["arm64"])
    assert "created /etc/systemd/system/edge-defender.service" in out
    assert arm64.chroot("uname", "-m").strip() == "aarch64"  # qemu, not the host
    assert arm64.chroot("edge-defender", "--version").strip() == f"edge-defender {VERSION}"
    assert "configuration ok" in arm64.chroot("edge-defender", "check-config", "--config", CONFIG)
    # stderr apart: qemu-user has no NETLINK_SOCK_DIAG, so the agent warns and reads
    # /proc/net instead (a real arm64 kernel has it).
    out = arm64.chroot("sh", "-c", "edge-defender collect --once 2>/dev/null", timeout_s=120)
    report = json.loads(out)
    assert {"listening_tcp_ports", "listening_udp_ports", "tcp_connections"} <= set(
        report["metrics"]
    )
    # The MQTT and CBOR extensions load on the target too (collect does not need them).
    arm64.chroot(
        "/opt/edge-defender/bin/python3",
        "-c",
        "import _awscrt, cbor2._cbor2, awsiot.mqtt5_client_builder",
    )


# -- amd64 with dpkg: conffiles, upgrade, remove, purge -------------------------------


def _passwd_has_user(machine: Machine) -> bool:
    return any(
        line.startswith("edge-defender:")
        for line in (machine.root / "etc/passwd").read_text().splitlines()
    )


def test_install_makes_the_service_user_dirs_and_enabled_unit(
    debs: dict[str, Path], amd64: Machine
) -> None:
    _dpkg(amd64, "-i", deb=debs["amd64"])
    root = amd64.root
    assert _passwd_has_user(amd64)
    unit = (root / "etc/systemd/system/edge-defender.service").read_text()
    assert "ExecStart=/opt/edge-defender/bin/edge-defender run" in unit
    assert (root / "etc/systemd/system/multi-user.target.wants/edge-defender.service").is_symlink()
    config = root / CONFIG.lstrip("/")
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    group = amd64.chroot(
        "stat", "-c", "%U:%G %a", "/etc/edge-defender", CONFIG, "/etc/edge-defender/certs"
    )
    assert group.split("\n")[:3] == [
        "root:edge-defender 750",
        "root:edge-defender 640",
        "edge-defender:edge-defender 700",
    ]
    assert (root / "etc/edge-defender/profiles/example-profile.json").exists()


def test_upgrade_keeps_a_changed_config_and_the_state(
    debs: dict[str, Path], upgrade_deb: Path, amd64: Machine
) -> None:
    _dpkg(amd64, "-i", deb=debs["amd64"])
    config = amd64.root / CONFIG.lstrip("/")
    mine = config.read_text().replace('# thing_name = "pi-kitchen-01"', 'thing_name = "pi-7"')
    config.write_text(mine)
    state = amd64.root / STATE.lstrip("/")
    state.mkdir(exist_ok=True)
    (state / "history.db").write_text("violations")
    (amd64.root / "etc/edge-defender/certs/device.pem.crt").write_text("cert")
    # As apt with DEBIAN_FRONTEND=noninteractive: no questions, the administrator's file wins.
    out = _dpkg(amd64, "--force-confdef", "--force-confold", "-i", deb=upgrade_deb)
    assert "Setting up edge-defender (0.1.0+1)" in out
    assert config.read_text() == mine
    assert NEW_CONFIG_LINE in (config.parent / "config.toml.dpkg-dist").read_text()
    assert (state / "history.db").read_text() == "violations"
    assert (amd64.root / "etc/edge-defender/certs/device.pem.crt").exists()
    assert "configuration ok" in amd64.chroot("edge-defender", "check-config", "--config", CONFIG)


def test_upgrade_replaces_an_unchanged_config(
    debs: dict[str, Path], upgrade_deb: Path, amd64: Machine
) -> None:
    _dpkg(amd64, "-i", deb=debs["amd64"])
    _dpkg(amd64, "--force-confdef", "--force-confold", "-i", deb=upgrade_deb)
    config = amd64.root / CONFIG.lstrip("/")
    assert config.read_text().endswith(NEW_CONFIG_LINE)
    assert amd64.chroot("stat", "-c", "%U:%G %a", CONFIG).strip() == "root:edge-defender 640"


def test_remove_keeps_config_and_state_and_purge_removes_them(
    debs: dict[str, Path], amd64: Machine
) -> None:
    _dpkg(amd64, "-i", deb=debs["amd64"])
    root = amd64.root
    (root / STATE.lstrip("/")).mkdir(exist_ok=True)
    (root / STATE.lstrip("/") / "history.db").write_text("violations")
    _dpkg(amd64, "-r", "edge-defender")
    for gone in (
        "etc/systemd/system/edge-defender.service",
        "opt/edge-defender",
        "usr/bin/edge-defender",
    ):
        assert not (root / gone).exists(), gone
    assert (root / CONFIG.lstrip("/")).exists()
    assert (root / STATE.lstrip("/") / "history.db").exists()
    _dpkg(amd64, "-P", "edge-defender")
    for gone in ("etc/edge-defender", STATE.lstrip("/")):
        assert not (root / gone).exists(), gone
    assert "edge-defender" not in amd64.chroot("dpkg-query", "-W", "-f", "${Package}\n")
    # Installed again after a purge: a fresh install, enabled again.
    _dpkg(amd64, "-i", deb=debs["amd64"])
    assert (root / "etc/systemd/system/multi-user.target.wants/edge-defender.service").is_symlink()


# -- the gateway image's first-boot script, in the amd64 root --------------------------


def _firstboot(machine: Machine, boot: str) -> subprocess.CompletedProcess[str]:
    script = machine.root / "usr/local/sbin/edge-defender-firstboot"
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "packaging/image/edge-defender-firstboot", script)
    return subprocess.run(
        [
            *("chroot", str(machine.root), "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"),
            *(f"EDGE_DEFENDER_BOOT={boot}", "/usr/local/sbin/edge-defender-firstboot"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_firstboot_applies_the_boot_folder(
    debs: dict[str, Path], amd64: Machine, tmp_path: Path
) -> None:
    _dpkg(amd64, "-i", deb=debs["amd64"])
    boot = amd64.root / "boot/firmware/edge-defender"
    (boot / "certs").mkdir(parents=True)
    (boot / "profiles").mkdir()
    (boot / "thing-name").write_text("gw-0042\n")
    (boot / "endpoint").write_text("broker.example.net:8884\n")
    ca = Ca("firstboot-ca")
    ca.write(boot / "certs/AmazonRootCA1.pem")
    ca.client("gw-0042", boot / "certs/gw-certificate.pem.crt", boot / "certs/gw-private.pem.key")
    profile = json.loads((REPO / "agent/data/example-profile.json").read_text())
    profile["securityProfileName"] = "gateway"
    (boot / "profiles/gateway.json").write_text(json.dumps(profile))

    done = _firstboot(amd64, "/boot/firmware/edge-defender")
    assert done.returncode == 0, done.stdout + done.stderr
    config = tomllib.loads((amd64.root / CONFIG.lstrip("/")).read_text())
    assert config["thing_name"] == "gw-0042"
    certs = "/etc/edge-defender/certs"
    assert config["mqtt"] == {
        "endpoint": "broker.example.net",
        "port": 8884,
        "cert_file": f"{certs}/gw-certificate.pem.crt",
        "key_file": f"{certs}/gw-private.pem.key",
        "ca_file": f"{certs}/AmazonRootCA1.pem",
    }
    modes = amd64.chroot("stat", "-c", "%n %U %a", f"{certs}/gw-private.pem.key", CONFIG)
    assert modes.split("\n")[:2] == [
        f"{certs}/gw-private.pem.key edge-defender 600",
        f"{CONFIG} root 640",
    ]
    profiles = sorted(p.name for p in (amd64.root / "etc/edge-defender/profiles").iterdir())
    assert profiles == ["gateway.json"]  # the example profile made way
    applied = amd64.root / "boot/firmware/edge-defender.applied"
    assert not boot.exists() and (applied / "thing-name").exists()
    assert not list(applied.glob("certs/*.key"))  # the key left the FAT partition


def test_firstboot_refuses_a_bad_file_and_changes_nothing(
    debs: dict[str, Path], amd64: Machine
) -> None:
    _dpkg(amd64, "-i", deb=debs["amd64"])
    before = (amd64.root / CONFIG.lstrip("/")).read_text()
    boot = amd64.root / "boot/firmware/edge-defender"
    boot.mkdir(parents=True)
    (boot / "thing-name").write_text("kitchen pi\n")
    done = _firstboot(amd64, "/boot/firmware/edge-defender")
    assert done.returncode == 1
    assert "/boot/firmware/edge-defender/thing-name: 'kitchen pi'" in done.stderr
    assert (amd64.root / CONFIG.lstrip("/")).read_text() == before
    assert boot.is_dir()

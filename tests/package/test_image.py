"""The arm64 gateway image (scripts/build-image.sh) booted: its root under systemd-nspawn,
every arm64 binary run by qemu-user-static through binfmt_misc. The per-device files go
in the boot folder as an operator would drop them; the first-boot service applies them,
the agent's service becomes active and connects with mutual TLS to mosquitto on the host
(tests/system/conftest.py's broker and certificates), `collect --once` as the service
user agrees with `ss`, an upgrade to a later package restarts it cleanly with its state
kept, and a purge removes it all.

Slow, so not run by default: EDGE_DEFENDER_SLOW=1 runs it. Measured on 2 shared
cores: 65 s warm; a cold cache adds the image's debootstrap (366 s, most of it the second
stage under emulation).
The container shares the host's network namespace, so that it reaches the broker on
127.0.0.1 (the name its certificate carries); systemd-networkd is masked inside, and
without CAP_NET_ADMIN the container cannot change the host's network anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hw.machine import PROGRAM, UNIT, Machine
from tests.package.debs import PACKAGE_CACHE, REPO, VERSION, binfmt, build_debs, host, later_version
from tests.system import conftest as system_conftest
from tests.system.conftest import CLIENT_NAME, MOSQUITTO, Broker
from tests.system.test_system_service import _service_user_ports, _ss_ports

# The mosquitto broker and certificates of the system tests, as this module's fixtures.
broker = system_conftest.broker
pki = system_conftest.pki
SLOW = os.environ.get("EDGE_DEFENDER_SLOW") == "1"
BOOT = "boot/firmware/edge-defender"
STATE = "/var/lib/edge-defender"
NETNS = f"edpkg-host-{os.getpid()}"  # /run/netns name for the host's own namespace
BOOT_TIMEOUT_S = 300.0  # systemd and Python under emulation


def _missing() -> str | None:
    if not SLOW:
        return "slow (builds and boots the arm64 image under emulation): EDGE_DEFENDER_SLOW=1"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, systemd-nspawn, binfmt_misc)"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("qemu-aarch64-static", "qemu-user-static"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install {package})"
    if MOSQUITTO is None:
        return "mosquitto is not installed (apt-get install mosquitto)"
    return None


pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(_missing() is not None, reason=_missing() or ""),
]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The image (root tree and disk) and a later arm64 package."""
    work = tmp_path_factory.mktemp("image")
    arm64 = build_debs(work / "dist")["arm64"]
    binfmt("arm64")
    out = work / "out"
    host(
        [
            *("bash", str(REPO / "scripts/build-image.sh"), "--deb", str(arm64)),
            *("--out", str(out), "--cache", str(PACKAGE_CACHE / "image")),
        ],
        timeout_s=3600,
    )
    return {
        "rootfs": out / "rootfs",
        "disk": out / f"edge-defender-gateway_{VERSION}_arm64.img",
        "later": later_version(arm64, work),
    }


@pytest.fixture(scope="module")
def host_netns() -> Iterator[str]:
    """The host's network namespace under a /run/netns name, for Machine.boot(netns=)."""
    path = Path("/run/netns") / NETNS
    path.parent.mkdir(exist_ok=True)
    path.touch()
    host(["mount", "--bind", "/proc/self/ns/net", str(path)])
    yield NETNS
    subprocess.run(["umount", str(path)], check=False)
    path.unlink()


def _boot_folder(root: Path, broker: Broker) -> None:
    """The per-device files, as an operator drops them on the boot partition."""
    boot = root / BOOT
    (boot / "certs").mkdir(parents=True)
    (boot / "thing-name").write_text(f"{CLIENT_NAME}\n")
    (boot / "endpoint").write_text(f"localhost:{broker.port}\n")
    shutil.copy(broker.pki.ca_cert, boot / "certs/ca.pem")
    shutil.copy(broker.pki.client_cert, boot / "certs/device.pem.crt")
    shutil.copy(broker.pki.client_key, boot / "certs/private.pem.key")
    # Quick enough for a test: a sample every 2 s, a report every 5 s.
    (boot / "config.toml").write_text(
        (root / "etc/edge-defender/config.toml")
        .read_text()
        .replace("# interval_s = 10.0", "interval_s = 2.0")
        .replace("# report_interval_s = 300.0", "report_interval_s = 5.0")
    )


@pytest.fixture
def gateway(
    image: dict[str, Path], broker: Broker, host_netns: str, tmp_path: Path
) -> Iterator[Machine]:
    machine = Machine(tmp_path, image["rootfs"])
    machine.mount()
    try:
        _boot_folder(machine.root, broker)
        for unit in (
            "systemd-networkd.service",
            "systemd-networkd.socket",
            "systemd-networkd-wait-online.service",
        ):
            (machine.root / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (machine.root / "etc/systemd/system" / unit).symlink_to("/dev/null")
        machine.boot(host_netns)
        yield machine
    finally:
        machine.stop()


def _status(machine: Machine) -> dict[str, Any] | None:
    done = machine.run("cat", f"{STATE}/status.json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def _listening(machine: Machine) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The agent's and ss's listening ports when they agree; the host's namespace is
    shared with other programs, so a port may come or go between the two."""
    agent = _service_user_ports(machine)
    ss = _ss_ports(machine)
    pair = ({k: agent[k] for k in ("tcp", "udp")}, {k: ss[k] for k in ("tcp", "udp")})
    return pair if pair[0] == pair[1] else None


def test_disk_has_a_boot_and_a_root_partition(image: dict[str, Path]) -> None:
    table = json.loads(host(["sfdisk", "--json", str(image["disk"])]))["partitiontable"]
    assert [p["type"] for p in table["partitions"]] == ["c", "83"]
    listing = host(["mdir", "-i", f"{image['disk']}@@1M", "-b", "::/edge-defender"])
    assert "README.TXT" in listing.upper()


def test_image_boots_configures_connects_upgrades_and_purges(
    image: dict[str, Path], gateway: Machine, broker: Broker
) -> None:
    m = gateway
    assert m.run("uname", "-m").stdout.strip() == "aarch64"
    firstboot = m.show("ActiveState")  # of edge-defender.service, shown for the log
    print("edge-defender.service", firstboot)
    out = m.run("journalctl", "-u", "edge-defender-firstboot", "--no-pager").stdout
    assert f"thing_name={CLIENT_NAME}" in out, out
    assert (m.root / "boot/firmware/edge-defender.applied").is_dir()

    # Active after READY (the first sample), connected with the device's certificate.
    m.wait_for(
        "the service to be active",
        lambda: m.show("ActiveState")["ActiveState"] == "active",
        BOOT_TIMEOUT_S,
    )
    # (sent: PUBACKed by the broker; mosquitto does not answer on AWS's accepted topic)
    status = m.wait_for(
        "a report delivered to the broker",
        lambda: (s := _status(m)) is not None and s["reports"]["sent"] > 0 and s,
        BOOT_TIMEOUT_S,
    )
    assert status["broker"]["connected"] is True
    assert f"as {CLIENT_NAME}" in broker.log_text()

    # What the agent collects as its user is what ss sees.
    m.wait_for("collect --once to agree with ss", lambda: _listening(m), BOOT_TIMEOUT_S)

    # Upgrade: stopped before the files change, started after, state kept. The first boot
    # changed config.toml, and the new package ships a changed one: keep ours, as apt does
    # unattended (Dpkg::Options::=--force-confold), instead of a question on no terminal.
    before = m.show("MainPID", "NRestarts")
    state_before = set(m.run("ls", STATE).stdout.split())
    shutil.copy(image["later"], m.root / "root/later.deb")  # /tmp: a tmpfs inside
    m.run(
        "dpkg",
        "--force-confdef",
        "--force-confold",
        "-i",
        "/root/later.deb",
        timeout_s=BOOT_TIMEOUT_S,
    )
    assert m.run(PROGRAM, "--version").stdout.strip() == f"edge-defender {VERSION}"
    m.wait_for(
        "the upgraded service to be active",
        lambda: m.show("ActiveState")["ActiveState"] == "active",
        BOOT_TIMEOUT_S,
    )
    after = m.show("MainPID", "NRestarts", "Result")
    assert after["MainPID"] != before["MainPID"]
    assert after["NRestarts"] == "0" and after["Result"] == "success"
    assert state_before <= set(m.run("ls", STATE).stdout.split())
    assert not (m.root / "run/edge-defender.dpkg-restart").exists()
    m.wait_for(
        "a reconnect after the upgrade",
        lambda: (
            (s := _status(m)) is not None
            and s["pid"] == int(after["MainPID"])
            and s["broker"]["connected"]
        ),
        BOOT_TIMEOUT_S,
    )

    # Purge: the service stops and goes, with its config and state.
    m.run("dpkg", "-P", "edge-defender", timeout_s=BOOT_TIMEOUT_S)
    assert m.run("systemctl", "is-active", UNIT, check=False).stdout.strip() in (
        "inactive",
        "unknown",
    )
    for gone in ("/etc/edge-defender", STATE, "/opt/edge-defender", f"/etc/systemd/system/{UNIT}"):
        assert m.run("test", "-e", gone, check=False).returncode == 1, gone

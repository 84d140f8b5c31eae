"""The lab: network namespaces for the device under test, an attacker, two LAN peers and
an MQTT broker, joined by a bridge, with mosquitto on mutual TLS; and the gateway's own
broker, plaintext mosquitto with user names, passwords and an ACL in the device's
namespace, for the agent's broker watch. Every address lives
inside the lab's own namespaces; the host's network is never touched. Leaving the `with`
block, however it is left, kills what the lab started and deletes the namespaces it made.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from hw.pki import Ca

LAN = "10.77.0.0/24"
C2_NET = "198.51.100.0/24"
C2_ADDRESS = "198.51.100.66"
BROKER_PORT = 8883
MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
GATEWAY_PORT = 1883
# The gateway broker's users (fixed lab credentials, not secrets) and what each may do:
# a sensor publishes under its own id and reads commands; the controller reads every
# sensor and sends commands. Everything else is refused.
GATEWAY_USERS = {
    "sensor1": "sensor1-pass",
    "sensor2": "sensor2-pass",
    "controller": "controller-pass",
}
GATEWAY_ACL = {
    "sensor1": ("topic write sensors/sensor1/#", "topic read cmd/#"),
    "sensor2": ("topic write sensors/sensor2/#", "topic read cmd/#"),
    "controller": ("topic read sensors/#", "topic write cmd/#"),
}
DEVICE_CN = "rig-dut"  # the device certificate's CN, the broker's user name for it
# role -> (namespace suffix, host part of its LAN address)
ROLES = {
    "dut": ("dut", 2),
    "broker": ("brk", 5),
    "peer1": ("peer1", 11),
    "peer2": ("peer2", 12),
    "attacker": ("atk", 66),
}
STOP_S = 3.0  # from SIGTERM to SIGKILL
TIMEOUT_S = 10.0

Output = int | IO[bytes] | None


class NodeCommandError(subprocess.CalledProcessError):
    """A command on a node failed; the message names the node and holds its stderr."""

    def __init__(self, node: str, done: subprocess.CompletedProcess[bytes]) -> None:
        super().__init__(done.returncode, done.args, done.stdout, done.stderr)
        self.node = node

    def __str__(self) -> str:
        said = (self.stderr or self.stdout or b"").decode(errors="replace").strip()
        tail = "\n".join(said.splitlines()[-20:])
        return f"on {self.node}: {shlex.join(self.cmd)}: exit status {self.returncode}\n{tail}"


@dataclass(frozen=True)
class Node:
    """Where commands run: a namespace of the lab, a container, or a device over SSH."""

    name: str  # "dut", "attacker", "peer1", "peer2", "broker", or "host"
    address: str  # its IPv4 address as the other nodes reach it
    prefix: tuple[str, ...]  # argv prefix: ("ip", "netns", "exec", NS), ("nsenter", ...), ...
    remote: bool = False  # True for ssh: the argv is joined with shlex.join after the prefix
    # Where spawn() records its processes, so that whoever owns the list (the Lab) can
    # kill the ones still running at the end.
    spawned: list[subprocess.Popen[bytes]] | None = field(default=None, compare=False, repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """The full argv to run on the host."""
        if self.remote:
            return [*self.prefix, shlex.join(argv)]
        return [*self.prefix, *argv]

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout_s: float = 60.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run to the end; stdout and stderr captured. NodeCommandError when `check` and
        the exit status is not 0."""
        done = subprocess.run(
            self.command(argv),
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise NodeCommandError(self.name, done)
        return done

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        stdout: Output = None,
        stderr: Output = None,
    ) -> subprocess.Popen[bytes]:
        """Background process; stdin bytes are written then closed (so `python3 -` runs a
        script given on stdin); stdout/stderr go to DEVNULL unless given. The caller
        stops it (terminate, then kill)."""
        process = subprocess.Popen(
            self.command(argv),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=subprocess.DEVNULL if stderr is None else stderr,
            start_new_session=True,  # a Ctrl-C at the terminal reaches the rig, not these
        )
        if self.spawned is not None:
            self.spawned.append(process)
        if process.stdin is not None:
            # A process that exits at once leaves a broken pipe; its status tells why.
            with contextlib.suppress(BrokenPipeError), process.stdin:
                process.stdin.write(stdin or b"")
        return process


def missing() -> str | None:
    """Why a lab cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "ip is not installed (Debian: apt-get install iproute2)"
    for program in (MOSQUITTO, MOSQUITTO_PASSWD):
        if not Path(program).exists():
            return f"{program} is not installed (Debian: apt-get install mosquitto)"
    return None


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to those still running, SIGKILL after STOP_S to those that stay."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    deadline = time.monotonic() + STOP_S
    for p in running:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(TIMEOUT_S)


def write_gateway_config(directory: Path, log: Path, port: int = GATEWAY_PORT) -> Path:
    """The gateway broker's files in `directory`: GATEWAY_USERS with hashed passwords
    (mosquitto_passwd), GATEWAY_ACL, and the mosquitto config (plaintext on `port`, no
    anonymous clients) whose path is returned. Refused logins and topics are then the
    broker's real answers."""
    passwords = directory / "gateway.passwd"
    passwords.write_text("".join(f"{u}:{p}\n" for u, p in GATEWAY_USERS.items()))
    passwords.chmod(0o600)
    done = subprocess.run(
        [MOSQUITTO_PASSWD, "-U", str(passwords)], capture_output=True, timeout=TIMEOUT_S
    )
    if done.returncode != 0:
        raise NodeCommandError("host", done)
    acl = directory / "gateway.acl"
    acl.write_text(
        "".join(
            f"user {u}\n" + "".join(f"{r}\n" for r in rules) + "\n"
            for u, rules in GATEWAY_ACL.items()
        )
    )
    conf = directory / "gateway.conf"
    conf.write_text(
        f"""\
persistence false
# As root mosquitto would otherwise switch to a user who cannot read the rig's files.
user root
log_dest file {log}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

listener {port} 0.0.0.0
allow_anonymous false
password_file {passwords}
acl_file {acl}
"""
    )
    return conf


@dataclass(frozen=True)
class BrokerInfo:
    host: str  # the broker node's address
    port: int  # mutual TLS
    ca_file: Path  # the rig's CA (on the host)
    device_cert: Path  # the DUT's client certificate (CN = DEVICE_CN)
    device_key: Path
    rig_cert: Path  # the rig's own client certificate (to subscribe)
    rig_key: Path


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise NodeCommandError("host", done)


def _unused_prefix() -> str:
    """A short name for this run's namespaces that no other run uses."""
    while True:
        prefix = "ed" + secrets.token_hex(2)
        if not any(p.name.startswith(prefix + "-") for p in Path("/run/netns").glob("*")):
            return prefix


class Lab:
    """Context manager. Namespaces named f"{prefix}-lan" (holds the bridge), -dut, -atk,
    -peer1, -peer2, -brk, with a short unique prefix per run so two runs never collide;
    veth pairs into the bridge; LAN 10.77.0.0/24: dut .2, broker .5, peer1 .11, peer2 .12,
    attacker .66; the attacker also holds the C2 address 198.51.100.66/24 and the dut
    routes 198.51.100.0/24 via the attacker. lo up everywhere. mosquitto with mutual TLS
    (a CA made by the rig) listens on broker:8883; start_gateway() adds the gateway
    broker (plaintext, GATEWAY_USERS with passwords, GATEWAY_ACL) on dut:1883 in the
    dut namespace.
    __exit__ (also after a failure or Ctrl-C) kills what it started and deletes every
    namespace it made, and nothing else. Its files (certificates, the brokers' configs,
    passwords, ACL and logs) go in work/lab."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "lab"
        self.prefix = _unused_prefix()
        self.netns = {role: f"{self.prefix}-{suffix}" for role, (suffix, _) in ROLES.items()}
        self.netns["lan"] = f"{self.prefix}-lan"
        self.c2_address = C2_ADDRESS
        self.spawned: list[subprocess.Popen[bytes]] = []
        self.nodes = {
            role: Node(
                role,
                f"10.77.0.{host}",
                ("ip", "netns", "exec", self.netns[role]),
                spawned=self.spawned,
            )
            for role, (_, host) in ROLES.items()
        }
        pki = self.dir / "pki"
        self.broker = BrokerInfo(
            host=self.nodes["broker"].address,
            port=BROKER_PORT,
            ca_file=pki / "ca.pem",
            device_cert=pki / "device.pem",
            device_key=pki / "device.key",
            rig_cert=pki / "rig.pem",
            rig_key=pki / "rig.key",
        )
        self.broker_log = self.dir / "mosquitto.log"
        self.gateway_log = self.dir / "gateway.log"
        self._made: list[str] = []  # namespaces this lab created, in order

    def addresses(self) -> dict[str, str]:
        """Scenario placeholder -> value."""
        found = {role: node.address for role, node in self.nodes.items()}
        return {**found, "c2": self.c2_address, "lan": LAN}

    def __enter__(self) -> Lab:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._make_network()
            self._make_pki()
            self._start_broker()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _make_network(self) -> None:
        lan = self.netns["lan"]
        for name in self.netns.values():
            _ip("netns", "add", name)
            self._made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", lan, "link", "set", "br0", "up")
        for role, node in self.nodes.items():
            ns = self.netns[role]
            _ip("-n", lan, "link", "add", role, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", lan, "link", "set", role, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", self.netns["attacker"], "addr", "add", f"{C2_ADDRESS}/24", "dev", "eth0")
        gateway = self.nodes["attacker"].address
        _ip("-n", self.netns["dut"], "route", "add", C2_NET, "via", gateway)

    def _make_pki(self) -> None:
        (self.dir / "pki").mkdir(exist_ok=True)
        b = self.broker
        ca = Ca(f"edge-defender-rig-{self.prefix}")
        ca.write(b.ca_file)
        pki = self.dir / "pki"
        ca.server("broker", [b.host], pki / "broker.pem", pki / "broker.key")
        ca.client(DEVICE_CN, b.device_cert, b.device_key)
        ca.client("rig", b.rig_cert, b.rig_key)

    def _start_broker(self) -> None:
        pki = self.dir / "pki"
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"""\
per_listener_settings true
persistence false
# As root mosquitto would otherwise switch to a user who cannot read the rig's files.
user root
log_dest file {self.broker_log}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

listener {self.broker.port} {self.broker.host}
cafile {self.broker.ca_file}
certfile {pki / "broker.pem"}
keyfile {pki / "broker.key"}
require_certificate true
use_identity_as_username true
allow_anonymous false
"""
        )
        self._run_mosquitto("broker", conf, self.broker.port, self.broker_log)

    def start_gateway(self) -> None:
        """The gateway's own broker: plaintext on 1883 in the dut namespace (to the agent
        its socket is the device's), until the lab closes. Started only for the runs
        that use it: an open 1883 is part of what the agent sees on the device."""
        conf = write_gateway_config(self.dir, self.gateway_log)
        self._run_mosquitto("dut", conf, GATEWAY_PORT, self.gateway_log)

    def _run_mosquitto(self, role: str, conf: Path, port: int, log: Path) -> None:
        """mosquitto with `conf` on the role's node; returns once it listens on `port`."""
        node = self.nodes[role]
        process = node.spawn([MOSQUITTO, "-c", str(conf)])
        deadline = time.monotonic() + TIMEOUT_S
        while not node.exec(["ss", "-Htln", f"sport = :{port}"]).stdout:
            if process.poll() is not None or time.monotonic() > deadline:
                said = log.read_text() if log.exists() else ""
                raise RuntimeError(f"mosquitto on {role} did not listen on {port}:\n{said}")
            time.sleep(0.05)

    def close(self) -> None:
        """Kill what the lab started, then anything else left in its namespaces, and
        delete them (the bridge and the veth pairs go with them). Safe to call twice."""
        stop_processes(self.spawned)
        for name in reversed(self._made):
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        self._made.clear()

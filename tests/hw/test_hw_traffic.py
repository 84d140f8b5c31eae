"""Each actor of hw/actors.py really does its job, checked from outside (ss, pgrep, the
servers' own counts, mosquitto's log), in two network namespaces joined by a veth pair
that the fixture makes and deletes; and stop_actions leaves no process behind."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hw.actors import STARTUP_S
from hw.lab import Node
from hw.pki import Ca
from hw.scenario import Action
from hw.traffic import Running, start_actions, stop_actions

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 (network namespaces)",
)

DUT = "10.88.0.2"
PEER = "10.88.0.11"
MOSQUITTO = "/usr/sbin/mosquitto"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Net:
    nodes: dict[str, Node]
    netns: dict[str, str]  # node name -> namespace

    def run(self, node: str, *argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns[node], *argv],
            capture_output=True,
            text=True,
            check=False,
        ).stdout

    def pids(self, node: str) -> list[str]:
        return subprocess.run(
            ["ip", "netns", "pids", self.netns[node]], capture_output=True, text=True, check=True
        ).stdout.split()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@pytest.fixture
def net() -> Iterator[Net]:
    prefix = "edt" + secrets.token_hex(2)
    netns = {"dut": f"{prefix}-dut", "peer1": f"{prefix}-peer"}
    made = []
    try:
        for ns in netns.values():
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        a, b = netns["dut"], netns["peer1"]
        ip("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, address in ((a, DUT), (b, PEER)):
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        nodes = {
            name: Node(name, address, ("ip", "netns", "exec", netns[name]))
            for name, address in (("dut", DUT), ("peer1", PEER))
        }
        yield Net(nodes, netns)
    finally:
        for ns in made:
            for pid in subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split():
                subprocess.run(["kill", "-9", pid], check=False)
            subprocess.run(["ip", "netns", "delete", ns], check=False)


@pytest.fixture
def start(net: Net) -> Iterator[Callable[..., Running]]:
    """start_actions on the test's namespaces; at the end every start is stopped and no
    process may be left in either namespace."""
    started: list[Running] = []

    def go(*actions: Action, tls: tuple[str, str, str] | None = None) -> Running:
        running = start_actions(actions, net.nodes, tls=tls, broker=PEER)
        started.append(running)
        return running

    yield go
    for running in started:
        stop_actions(running)
        assert not running.scratch.exists()
    assert net.pids("dut") == [] and net.pids("peer1") == []


def eventually(check: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)


def count_in(path: Path) -> int:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def established(net: Net, node: str, port_filter: str) -> int:
    return len(net.run(node, "ss", "-Htn", "state", "established", port_filter).splitlines())


def test_listen_opens_a_tcp_and_a_udp_port_until_stopped(
    net: Net, start: Callable[..., Running]
) -> None:
    running = start(
        Action("dut", "listen", {"proto": "tcp", "port": 4444}),
        Action("dut", "listen", {"proto": "udp", "port": 31337}),
    )
    eventually(lambda: net.run("dut", "ss", "-Hltn", "sport = :4444"), "tcp 4444 listening")
    eventually(lambda: net.run("dut", "ss", "-Hlun", "sport = :31337"), "udp 31337 open")
    assert net.run("peer1", "ss", "-Hltn", "sport = :4444") == ""  # in its namespace only
    stop_actions(running)
    assert net.run("dut", "ss", "-Hltan", "sport = :4444") == ""
    assert net.pids("dut") == []


def test_connect_holds_n_connections_to_a_sink(net: Net, start: Callable[..., Running]) -> None:
    start(
        Action("peer1", "sink", {"port": 9000}),
        Action("dut", "connect", {"host": PEER, "port": 9000, "n": 30}),
    )
    eventually(lambda: established(net, "dut", "dport = :9000") == 30, "30 established")
    time.sleep(0.3)  # held, not more
    assert established(net, "dut", "dport = :9000") == 30
    assert established(net, "peer1", "sport = :9000") == 30


def test_flood_keeps_n_connections_open(net: Net, start: Callable[..., Running]) -> None:
    start(
        Action("dut", "sink", {"port": 8080}),
        Action("peer1", "flood", {"host": DUT, "port": 8080, "n": 120}),
    )
    eventually(lambda: established(net, "dut", "sport = :8080") == 120, "120 established")


def test_exfil_moves_the_bytes_and_ends(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    counted = tmp_path / "sink.count"
    start(Action("peer1", "sink", {"port": 8443, "count_file": str(counted)}))
    t0 = time.monotonic()
    running = start(
        Action("dut", "exfil", {"host": PEER, "port": 8443, "size": 3_000_000, "rate_bps": 6e6})
    )
    process = running.started[0].process
    assert process.wait(TIMEOUT_S) == 0
    took = time.monotonic() - t0
    assert 0.4 < took < 3.0  # paced at 6 MB/s: about half a second
    eventually(lambda: count_in(counted) == 3_000_000, "3 MB counted by the sink")
    stop_actions(running)  # an action that already ended: no error


def test_spawn_makes_n_processes_that_go_with_it(net: Net, start: Callable[..., Running]) -> None:
    name = "edrig-test-" + secrets.token_hex(3)

    def workers() -> int:
        found = subprocess.run(["pgrep", "-c", "-f", f"^{name}"], capture_output=True, text=True)
        return int(found.stdout or 0)

    running = start(Action("dut", "spawn", {"n": 12, "name": name}))
    eventually(lambda: workers() == 12, "12 workers")
    stop_actions(running)
    assert workers() == 0


@pytest.mark.parametrize(
    ("server", "client"),
    [
        (
            Action("peer1", "dns-server", {"port": 53}),
            Action("dut", "dns", {"server": PEER, "names": ["a.example", "b.example"]}),
        ),
        (
            Action("peer1", "http-server", {"port": 80}),
            Action("dut", "http", {"url": f"http://{PEER}/status"}),
        ),
        (Action("peer1", "ntp-server", {}), Action("dut", "ntp", {"server": PEER})),
    ],
    ids=["dns", "http", "ntp"],
)
def test_clients_get_answers_from_their_servers(
    net: Net, start: Callable[..., Running], tmp_path: Path, server: Action, client: Action
) -> None:
    counted = tmp_path / "answers"
    params = {**client.params, "every_s": 0.2, "count_file": str(counted)}
    start(server, Action(client.node, client.kind, params))
    eventually(lambda: count_in(counted) >= 3, f"3 answers to {client.kind}")


def test_client_without_a_server_counts_nothing_and_says_why(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    counted = tmp_path / "answers"
    running = start(
        Action("dut", "dns", {"server": PEER, "every_s": 0.1, "count_file": str(counted)})
    )
    time.sleep(1.0)
    assert running.errors() == []  # quiet while the server may still be starting
    # Read before stop_actions removes the scratch directory.
    errors = eventually(running.errors, "the client says why", timeout_s=STARTUP_S + 2)
    assert count_in(counted) == 0
    assert "dut dns" in errors[0] and "refused" in errors[0]


def test_ssh_sessions_into_sshd_in_the_namespace(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("openssh-server is not installed")
    counted = tmp_path / "sessions"
    start(
        Action("dut", "sshd", {"port": 22}),
        Action("peer1", "ssh", {"host": DUT, "every_s": 0.5, "count_file": str(counted)}),
    )
    eventually(lambda: net.run("dut", "ss", "-Hltn", "sport = :22"), "sshd listening")
    eventually(lambda: count_in(counted) >= 2, "2 ssh sessions")


def test_mqtt_publishes_to_mosquitto_with_mutual_tls(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed")
    ca = Ca("edt-ca")
    ca.write(tmp_path / "ca.pem")
    ca.server("broker", [PEER], tmp_path / "broker.pem", tmp_path / "broker.key")
    ca.client("rig-dut", tmp_path / "dut.pem", tmp_path / "dut.key")
    log = tmp_path / "mosquitto.log"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"""\
persistence false
user root
log_dest file {log}
log_type all
listener 8883 {PEER}
cafile {tmp_path / "ca.pem"}
certfile {tmp_path / "broker.pem"}
keyfile {tmp_path / "broker.key"}
require_certificate true
use_identity_as_username true
"""
    )
    broker = net.nodes["peer1"].spawn([MOSQUITTO, "-c", str(conf)])
    try:
        eventually(lambda: net.run("peer1", "ss", "-Hltn", "sport = :8883"), "broker up")
        counted = tmp_path / "published"
        tls = (str(tmp_path / "ca.pem"), str(tmp_path / "dut.pem"), str(tmp_path / "dut.key"))
        params = {"client_id": "rig-telemetry-test", "every_s": 0.2, "count_file": str(counted)}
        start(Action("dut", "mqtt", params), tls=tls)
        eventually(lambda: count_in(counted) >= 3, "3 messages published")
        text = eventually(
            lambda: (
                (t := log.read_text()).count("Received PUBLISH from rig-telemetry-test") >= 3 and t
            ),
            "the broker received them",
        )
        assert "rig-telemetry-test" in text and "u'rig-dut'" in text  # the cert's CN
    finally:
        broker.terminate()
        broker.wait(TIMEOUT_S)


def test_mqtt_refuses_a_broker_certified_by_another_ca(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    """The actor verifies the broker: a broker certificate from another CA is refused."""
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed")
    ca, other = Ca("edt-ca"), Ca("edt-other")
    ca.write(tmp_path / "ca.pem")
    other.server("broker", [PEER], tmp_path / "broker.pem", tmp_path / "broker.key")
    ca.client("rig-dut", tmp_path / "dut.pem", tmp_path / "dut.key")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"""\
persistence false
user root
listener 8883 {PEER}
cafile {tmp_path / "ca.pem"}
certfile {tmp_path / "broker.pem"}
keyfile {tmp_path / "broker.key"}
require_certificate true
"""
    )
    broker = net.nodes["peer1"].spawn([MOSQUITTO, "-c", str(conf)])
    try:
        eventually(lambda: net.run("peer1", "ss", "-Hltn", "sport = :8883"), "broker up")
        counted = tmp_path / "published"
        tls = (str(tmp_path / "ca.pem"), str(tmp_path / "dut.pem"), str(tmp_path / "dut.key"))
        running = start(
            Action("dut", "mqtt", {"every_s": 0.2, "count_file": str(counted)}), tls=tls
        )
        errors = eventually(running.errors, "the actor says why")
        assert count_in(counted) == 0
        assert "CERTIFICATE_VERIFY_FAILED" in errors[0]
    finally:
        broker.terminate()
        broker.wait(TIMEOUT_S)

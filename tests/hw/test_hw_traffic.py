"""Each actor of hw/actors.py really does its job, checked from outside (ss, pgrep, the
servers' own counts, mosquitto's log), in two network namespaces joined by a veth pair
that the fixture makes and deletes; and stop_actions leaves no process behind."""

from __future__ import annotations

import json
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
from hw.lab import GATEWAY_USERS, Node, write_gateway_config
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
    # A busy machine may first report a timeout (no ICMP answer in time): wait for the
    # refusal itself.
    errors = eventually(
        lambda: [e for e in running.errors() if "refused" in e],
        "the client says why",
        timeout_s=STARTUP_S + 2,
    )
    assert count_in(counted) == 0
    assert "dut dns" in errors[0]


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


# -- scans --------------------------------------------------------------------------------


def tcp_counters(net: Net, node: str) -> dict[str, int]:
    """The namespace's own TCP counters (/proc/net/snmp is per network namespace)."""
    lines = [line.split() for line in net.run(node, "cat", "/proc/net/snmp").splitlines()]
    names, values = [line for line in lines if line[0] == "Tcp:"]
    return {k: int(v) for k, v in zip(names[1:], values[1:], strict=True)}


def test_syn_scan_probes_reach_the_target_and_are_answered(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    """Ten crafted SYNs: the target's kernel answers each (9 RSTs for the closed ports,
    a SYN-ACK for the open one), and no connection is ever established."""
    start(Action("dut", "sink", {"port": 8080}))
    eventually(lambda: net.run("dut", "ss", "-Hltn", "sport = :8080"), "sink listening")
    before = tcp_counters(net, "dut")
    counted = tmp_path / "answered"
    t0 = time.monotonic()
    running = start(
        Action(
            "peer1",
            "syn-scan",
            {"host": DUT, "ports": "8075-8084", "rate_per_s": 50, "count_file": str(counted)},
        )
    )
    assert running.started[0].process.wait(TIMEOUT_S) == 0, running.errors()
    assert time.monotonic() - t0 >= 9 / 50  # paced
    assert count_in(counted) == 10
    after = tcp_counters(net, "dut")
    assert after["OutRsts"] - before["OutRsts"] >= 9  # the closed ports' RSTs
    assert after["PassiveOpens"] == before["PassiveOpens"]  # half-open: never accepted
    assert established(net, "dut", "sport = :8080") == 0


def test_connect_scan_completes_handshakes_to_open_ports(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    start(Action("dut", "sink", {"port": 8080}))
    eventually(lambda: net.run("dut", "ss", "-Hltn", "sport = :8080"), "sink listening")
    before = tcp_counters(net, "dut")
    counted = tmp_path / "answered"
    params = {"host": DUT, "ports": "8078-8082", "rate_per_s": 50, "count_file": str(counted)}
    running = start(Action("peer1", "connect-scan", params))
    assert running.started[0].process.wait(TIMEOUT_S) == 0, running.errors()
    assert count_in(counted) == 5
    after = tcp_counters(net, "dut")
    assert after["PassiveOpens"] - before["PassiveOpens"] == 1  # the open port, accepted
    assert after["OutRsts"] - before["OutRsts"] >= 4  # the closed ones refused


def test_slow_scan_sends_one_probe_a_second(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    counted = tmp_path / "answered"
    t0 = time.monotonic()
    params = {"host": DUT, "ports": "7001-7003", "method": "syn", "count_file": str(counted)}
    running = start(Action("peer1", "slow-scan", params))
    assert running.started[0].process.wait(TIMEOUT_S) == 0, running.errors()
    assert 2.0 <= time.monotonic() - t0 < 4.0  # probes at 0, 1 and 2 s
    assert count_in(counted) == 3


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"ports": "80-22"}, "'80-22' is not a port or a range"),
        ({"ports": "http"}, "'http' is not a port or a range"),
        ({"ports": "80", "method": "xmas"}, "method must be 'syn' or 'connect'"),
    ],
)
def test_a_scan_with_bad_parameters_says_what_is_wrong(
    net: Net, start: Callable[..., Running], params: dict[str, str], said: str
) -> None:
    running = start(Action("peer1", "slow-scan", {"host": DUT, **params}))
    assert running.started[0].process.wait(TIMEOUT_S) == 1
    assert said in running.errors()[0]


# -- DNS ----------------------------------------------------------------------------------

# One A query per name; prints the response codes in order.
RCODES = """
import json, socket, struct, sys
codes = []
for k, name in enumerate(sys.argv[2:]):
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
    query = struct.pack("!HHHHHH", k, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, (sys.argv[1], 53))
        reply = s.recv(512)
    flags, answers = struct.unpack("!H", reply[2:4])[0], struct.unpack("!H", reply[6:8])[0]
    codes.append([flags & 0xF, answers])
print(json.dumps(codes))
"""


def test_dns_server_refuses_the_listed_names_and_answers_the_rest(
    net: Net, start: Callable[..., Running], tmp_path: Path
) -> None:
    start(Action("peer1", "dns-server", {"port": 53, "nxdomain": ["*.evil.example", "x.test"]}))
    names = ["c2.evil.example", "evil.example", "EVIL.example.", "notevil.example", "x.test"]
    names += ["y.x.test", "telemetry.example.com"]

    def codes() -> list[list[int]] | None:
        out = net.run("dut", "python3", "-c", RCODES, PEER, *names)
        return json.loads(out) if out else None

    found = eventually(codes, "the server answers")
    # NXDOMAIN (3, no answer) for the wildcard's domain and names under it and the exact
    # name; an A record (0, one answer) for the rest
    assert found == [[3, 0], [3, 0], [3, 0], [0, 1], [3, 0], [0, 1], [0, 1]]
    counted = tmp_path / "answers"
    params = {"server": PEER, "names": ["c2.evil.example", "ok.example"], "every_s": 0.1}
    start(Action("dut", "dns", {**params, "count_file": str(counted)}))
    eventually(lambda: count_in(counted) >= 4, "NXDOMAIN and A answers both count")


# -- MQTT on a gateway broker (plaintext, passwords, ACL) -------------------------------


@pytest.fixture
def gateway(net: Net, tmp_path: Path) -> Iterator[Path]:
    """The lab's gateway broker config on peer1:1883; yields its log."""
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed")
    log = tmp_path / "gateway.log"
    conf = write_gateway_config(tmp_path, log)
    broker = net.nodes["peer1"].spawn([MOSQUITTO, "-c", str(conf)])
    try:
        eventually(lambda: net.run("peer1", "ss", "-Hltn", "sport = :1883"), "broker up")
        yield log
    finally:
        broker.terminate()
        broker.wait(TIMEOUT_S)


def mqtt(
    start: Callable[..., Running], tmp_path: Path, name: str, **params: Any
) -> tuple[Running, Path]:
    counted = tmp_path / name
    base = {"host": PEER, "rate_per_s": 50, "count_file": str(counted)}
    return start(Action("dut", "mqtt-client", {**base, **params})), counted


def finished(running: Running) -> int:
    return running.started[0].process.wait(TIMEOUT_S)


def test_mqtt_client_publishes_with_its_password_within_its_acl(
    net: Net, start: Callable[..., Running], tmp_path: Path, gateway: Path
) -> None:
    sensor = {"username": "sensor1", "password": GATEWAY_USERS["sensor1"]}
    # QoS 1: each message acknowledged; a 200 kB one too (a size spike); MQTT 5 as well
    running, counted = mqtt(start, tmp_path, "ok", **sensor, n=5, qos=1, subscribe="cmd/#")
    assert finished(running) == 0 and count_in(counted) == 5, running.errors()
    running, counted = mqtt(start, tmp_path, "big", **sensor, n=2, qos=1, size=200_000)
    assert finished(running) == 0 and count_in(counted) == 2, running.errors()
    running, counted = mqtt(start, tmp_path, "v5", **sensor, n=3, qos=1, version=5)
    assert finished(running) == 0 and count_in(counted) == 3, running.errors()
    # a flood: 1000 messages at 1000/s over ten topics
    topics = [f"sensors/sensor1/flood/{i}" for i in range(10)]
    t0 = time.monotonic()
    running, counted = mqtt(
        start, tmp_path, "flood", **sensor, n=1000, rate_per_s=1000, topics=topics
    )
    assert finished(running) == 0 and count_in(counted) == 1000, running.errors()
    assert time.monotonic() - t0 < 5
    text = gateway.read_text()
    assert "as sensor1 (p2, c1, k60, u'sensor1')" in text  # 3.1.1
    assert "as sensor1 (p5, c1, k60, u'sensor1')" in text  # 5
    assert "not authorised" not in text


def test_mqtt_auth_storm_counts_the_brokers_refusals(
    net: Net, start: Callable[..., Running], tmp_path: Path, gateway: Path
) -> None:
    storm = {"mode": "auth-storm", "n": 4}
    # a wrong password: every CONNECT refused, in either version
    for version in (4, 5):
        running, counted = mqtt(
            start,
            tmp_path,
            f"bad{version}",
            username="sensor2",
            password="nope",
            **storm,
            version=version,
        )
        assert finished(running) == 0 and count_in(counted) == 4, running.errors()
    # the right password, forbidden topics: MQTT 5 at QoS 1 gets a PUBACK refusal for
    # each of the two (an allowed one passes); MQTT 3.1.1 is refused silently
    right = {"username": "sensor2", "password": GATEWAY_USERS["sensor2"], **storm}
    topics = ["sensors/sensor1/temp", "cmd/sensor1", "sensors/sensor2/temp"]
    running, counted = mqtt(start, tmp_path, "acl5", **right, topics=topics, qos=1, version=5)
    assert finished(running) == 0 and count_in(counted) == 8, running.errors()
    running, counted = mqtt(start, tmp_path, "acl4", **right, topics=topics, qos=1, version=4)
    assert finished(running) == 0 and count_in(counted) == 0, running.errors()
    text = gateway.read_text()
    assert text.count("disconnected, not authorised") == 8
    assert "as sensor2 (p5, c1, k60, u'sensor2')" in text


def test_mqtt_publisher_refused_says_why_and_counts_nothing(
    net: Net, start: Callable[..., Running], tmp_path: Path, gateway: Path
) -> None:
    running, counted = mqtt(
        start, tmp_path, "refused", username="sensor1", password="wrong", rate_per_s=5
    )
    errors = eventually(running.errors, "the client says why", timeout_s=STARTUP_S + 3)
    assert "refused CONNECT of sensor1" in errors[0]
    assert count_in(counted) == 0

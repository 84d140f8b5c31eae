"""The rig's lab (hw/lab.py) made for real: namespaces joined by a bridge, mosquitto on
mutual TLS, the gateway broker with passwords in the device's namespace, and everything
gone after the `with`, however it is left."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hw.lab import GATEWAY_USERS, Lab, missing, stop_processes
from hw.scenario import EXAMPLE_ADDRESSES

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(missing() is not None, reason=missing() or ""),
]

PORT = 7000
# Accepts and answers with this node's name until killed.
SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    conn, _ = server.accept()
    conn.sendall(sys.argv[3].encode())
    conn.close()
"""
# Connects to each address given; prints {address: the name it answered, or the error}.
CLIENT = """
import json, socket, sys
found = {}
for address in sys.argv[2:]:
    try:
        with socket.create_connection((address, int(sys.argv[1])), timeout=3) as s:
            found[address] = s.recv(64).decode()
    except OSError as e:
        found[address] = repr(e)
print(json.dumps(found))
"""
# An MQTT 3.1.1 CONNECT over TLS with the rig's CA, with or without a client certificate;
# prints the CONNACK's bytes in hex, or the error that ended the connection.
MQTT_CONNECT = """
import socket, ssl, sys
host, port, ca, cert, key = sys.argv[1:6]
context = ssl.create_default_context(cafile=ca)
if cert:
    context.load_cert_chain(cert, key)
client_id = b"lab-test"
body = b"\\x00\\x04MQTT\\x04\\x02\\x00\\x3c" + len(client_id).to_bytes(2, "big") + client_id
try:
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(bytes([0x10, len(body)]) + body)
            print(tls.recv(4).hex() or "closed")
except (OSError, ssl.SSLError) as e:
    print(type(e).__name__)
"""
CONNACK_ACCEPTED = "20020000"
# An MQTT 3.1.1 CONNECT in plaintext, with a user name and password when given; prints
# the CONNACK's bytes in hex.
GATEWAY_CONNECT = """
import socket, struct, sys
host, user, password = sys.argv[1:4]
def s(x):
    return struct.pack("!H", len(x)) + x.encode()
flags = 0xC2 if user else 0x02
body = s("MQTT") + bytes([4, flags, 0, 60]) + s("lab-gw") + (s(user) + s(password) if user else b"")
with socket.create_connection((host, 1883), timeout=5) as c:
    c.sendall(bytes([0x10, len(body)]) + body)
    print(c.recv(4).hex() or "closed")
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("lab")) as lab:
        yield lab


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines()}


def test_every_node_reaches_every_other_over_the_bridge(lab: Lab) -> None:
    servers = [
        node.spawn(["python3", "-c", SERVER, node.address, str(PORT), name])
        for name, node in lab.nodes.items()
    ]
    try:
        for name, node in lab.nodes.items():
            others = {n.address: n.name for n in lab.nodes.values() if n.name != name}
            for _ in range(50):  # until the servers listen
                out = node.exec(["python3", "-c", CLIENT, str(PORT), *others])
                answered = json.loads(out.stdout)
                if answered == others:
                    break
                time.sleep(0.05)
            assert answered == others, (name, answered)
    finally:
        stop_processes(servers)


def test_addresses_stay_inside_the_lab(lab: Lab) -> None:
    assert lab.addresses() == EXAMPLE_ADDRESSES  # as hw/README.md draws them
    host = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert "10.77.0." not in host and lab.c2_address not in host
    atk = lab.nodes["attacker"].exec(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.decode()
    assert "10.77.0.66/24" in atk and "198.51.100.66/24" in atk


def test_the_broker_wants_a_client_certificate_of_the_rigs_ca(lab: Lab) -> None:
    b = lab.broker

    def connect(cert: Path | None, key: Path | None) -> str:
        argv = ["python3", "-c", MQTT_CONNECT, b.host, str(b.port), str(b.ca_file)]
        argv += [str(cert or ""), str(key or "")]
        return lab.nodes["dut"].exec(argv).stdout.decode().strip()

    assert connect(b.device_cert, b.device_key) == CONNACK_ACCEPTED
    assert connect(b.rig_cert, b.rig_key) == CONNACK_ACCEPTED
    refused = connect(None, None)
    assert not refused.startswith("20"), refused  # no CONNACK at all
    log = lab.broker_log.read_text()
    assert "as lab-test (" in log and "u'rig-dut'" in log, log


def test_the_gateway_broker_listens_on_the_dut_and_checks_passwords(lab: Lab) -> None:
    assert not lab.nodes["dut"].exec(["ss", "-Htln", "sport = :1883"]).stdout  # on demand
    lab.start_gateway()

    def connect(user: str, password: str) -> str:
        argv = ["python3", "-c", GATEWAY_CONNECT, lab.nodes["dut"].address, user, password]
        return lab.nodes["peer1"].exec(argv).stdout.decode().strip()

    assert connect("sensor1", GATEWAY_USERS["sensor1"]) == CONNACK_ACCEPTED
    assert connect("controller", GATEWAY_USERS["controller"]) == CONNACK_ACCEPTED
    assert connect("sensor1", "wrong") == "20020005"  # not authorised
    assert connect("", "") == "20020005"  # no anonymous clients
    # in the device's namespace only
    assert lab.nodes["dut"].exec(["ss", "-Htln", "sport = :1883"]).stdout
    assert not lab.nodes["broker"].exec(["ss", "-Htln", "sport = :1883"]).stdout
    log = lab.gateway_log.read_text()
    assert "as lab-gw (p2, c1, k60, u'sensor1')" in log, log


def test_the_dut_reaches_c2_through_the_attacker(lab: Lab) -> None:
    route = lab.nodes["dut"].exec(["ip", "route", "get", lab.c2_address]).stdout.decode()
    assert f"via {lab.nodes['attacker'].address}" in route, route
    server = lab.nodes["attacker"].spawn(["python3", "-c", SERVER, lab.c2_address, "4444", "c2"])
    try:
        for _ in range(50):
            out = lab.nodes["dut"].exec(["python3", "-c", CLIENT, "4444", lab.c2_address])
            if json.loads(out.stdout) == {lab.c2_address: "c2"}:
                break
            time.sleep(0.05)
        assert json.loads(out.stdout) == {lab.c2_address: "c2"}
    finally:
        stop_processes([server])


@pytest.mark.parametrize("leave", [None, RuntimeError, KeyboardInterrupt, SystemExit])
def test_nothing_of_the_lab_outlives_it(tmp_path: Path, leave: type[BaseException] | None) -> None:
    with pytest.raises(leave) if leave else contextlib.nullcontext(), Lab(tmp_path) as lab:
        made = set(lab.netns.values())
        assert made <= _namespaces()
        tracked = lab.nodes["attacker"].spawn(["sleep", "60"])
        # Not started through the lab: found in its namespace all the same.
        stray = subprocess.Popen(["ip", "netns", "exec", lab.netns["peer1"], "sleep", "60"])
        if leave:
            raise leave()
    assert not made & _namespaces()
    assert tracked.poll() is not None
    assert stray.wait(5) == -9

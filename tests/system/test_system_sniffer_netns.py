"""Packet capture end to end, below the daemon: the Sniffer (kernel filter, reader
thread, scan, DNS and connections features) in a device namespace, real traffic from a peer
namespace over a veth pair, and the metrics a cycle would take."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVICE, SCANNER, CLIENT = "10.203.0.1", "10.203.0.2", "10.203.0.3"
OPEN_PORT = 8080

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

# Runs in the device namespace: the Sniffer, an open port, and a DNS query out.
DEVICE_SCRIPT = f"""
import json, socket, struct, sys, time
from agent.collect.sniffer import Sniffer
from agent.config import CaptureConfig
sniffer = Sniffer(CaptureConfig(enabled=True))
listener = socket.create_server(("0.0.0.0", {OPEN_PORT}))
listener.settimeout(0.1)
print(json.dumps({{"problem": sniffer.problem}}), flush=True)
sys.stdin.readline()
query = struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0)
for label in b"C2.Evil.example".split(b"."):
    query += bytes([len(label)]) + label
query += b"\\0" + struct.pack("!2H", 1, 1)
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(query, ("{SCANNER}", 53))
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:  # accept the benign client's connections
    try:
        listener.accept()[0].close()
    except TimeoutError:
        pass
custom, clients = sniffer.collect(time.time())
packets, drops, counts = sniffer.status()
print(json.dumps({{
    "custom": {{m.name: m.value for m in custom}}, "clients": clients,
    "packets": packets, "drops": drops, "counts": counts,
}}), flush=True)
sniffer.close()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    device, peer = f"sniff-{os.getpid()}-d", f"sniff-{os.getpid()}-p"
    ip("netns", "add", device)
    ip("netns", "add", peer)
    try:
        ip("-n", device, "link", "add", "eth0", "type", "veth", "peer", "eth0", "netns", peer)
        ip("-n", device, "addr", "add", f"{DEVICE}/24", "dev", "eth0")
        ip("-n", peer, "addr", "add", f"{SCANNER}/24", "dev", "eth0")
        ip("-n", peer, "addr", "add", f"{CLIENT}/24", "dev", "eth0")
        for ns in (device, peer):
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield device, peer
    finally:
        ip("netns", "del", device)
        ip("netns", "del", peer)


def in_netns(ns: str, code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


PEER_SCRIPT = f"""
import socket
for port in range(9001, 9007):  # a connect scan of closed ports: each answered by RST
    s = socket.socket()
    s.bind(("{SCANNER}", 0))
    s.settimeout(2)
    assert s.connect_ex(("{DEVICE}", port)) != 0
    s.close()
for _ in range(10):  # a client of the open port, again and again
    c = socket.socket()
    c.bind(("{CLIENT}", 0))
    c.connect(("{DEVICE}", {OPEN_PORT}))
    c.close()
"""


def test_a_scan_and_a_dns_query_reach_the_metrics_and_a_client_does_not(
    namespaces: tuple[str, str],
) -> None:
    device_ns, peer_ns = namespaces
    device = in_netns(device_ns, DEVICE_SCRIPT)
    assert device.stdin is not None and device.stdout is not None
    try:
        assert json.loads(device.stdout.readline()) == {"problem": None}
        subprocess.run(
            ["ip", "netns", "exec", peer_ns, sys.executable, "-c", PEER_SCRIPT],
            check=True,
            timeout=30,
        )
        time.sleep(0.2)  # the reader thread polls; let it drain
        device.stdin.write("go\n")
        device.stdin.flush()
        result = json.loads(device.stdout.readline())
    finally:
        device.kill()
        device.wait()
    assert result["custom"] == {
        "scan_sources": [SCANNER],
        "num_scan_sources": 1,
        "dns_names": ["c2.evil.example"],
        "dns_resolvers": [SCANNER],
        "num_connections_opened": 0,  # the device answered; it opened nothing
        "periodic_destinations": [],
        "num_periodic_destinations": 0,
    }
    assert result["clients"] is None  # the broker watch is off
    assert result["drops"] == 0
    # The kernel filter passed the probes, their RSTs, the client's SYNs and SYN-ACKs
    # and the query: not the client's data and ACKs.
    assert 6 * 2 + 10 * 2 + 1 <= result["packets"] < 6 * 2 + 10 * 2 + 1 + 10


ANSWERED = 9  # 8 intervals: periodic (agent.core.periodic needs 8)
SILENT = "10.203.0.9"  # a neighbour nobody is: a SYN goes out and is never answered
CLOSED_PORT = 9009

# Runs in the device namespace: the connections feature alone, the device's own connections
# (answered, refused, unanswered), and connections to it that it must not count.
CONNECTIONS_DEVICE_SCRIPT = f"""
import json, socket, sys, time
ANSWERED = {ANSWERED}
from agent.collect.sniffer import Sniffer
from agent.config import CaptureConfig, DnsCaptureConfig, ScanCaptureConfig
sniffer = Sniffer(CaptureConfig(
    enabled=True, scan=ScanCaptureConfig(enabled=False), dns=DnsCaptureConfig(enabled=False)
))
listener = socket.create_server(("0.0.0.0", {OPEN_PORT}))
print(json.dumps({{"problem": sniffer.problem, "features": sniffer.features}}), flush=True)
sys.stdin.readline()  # the peer listens, and has connected to us twice
for _ in range(2):
    s = socket.socket()
    s.settimeout(2)
    assert s.connect_ex(("{SCANNER}", {CLOSED_PORT})) != 0  # refused: a RST
    s.close()
s = socket.socket()
s.settimeout(3.5)  # the SYN and its retransmits
assert s.connect_ex(("{SILENT}", {OPEN_PORT})) != 0
s.close()
for i in range(ANSWERED):  # a beacon, every 1.1 s (contacts under 1 s apart merge)
    time.sleep(1.1 if i else 0)
    socket.create_connection(("{SCANNER}", {OPEN_PORT}), timeout=2).close()
time.sleep(0.3)  # the reader thread polls; let it drain
custom, _ = sniffer.collect(time.time())
packets, drops, counts = sniffer.status()
print(json.dumps({{"custom": {{m.name: m.value for m in custom}}, "counts": counts}}), flush=True)
sniffer.close()
"""

CONNECTIONS_PEER_SCRIPT = f"""
import socket, time
listener = socket.create_server(("{SCANNER}", {OPEN_PORT}))
for _ in range(2):
    socket.create_connection(("{DEVICE}", {OPEN_PORT}), timeout=2).close()
print("ready", flush=True)
listener.settimeout(10)
for _ in range({ANSWERED}):
    listener.accept()[0].close()
"""


def test_the_connections_the_device_opens_are_counted_exactly(
    namespaces: tuple[str, str],
) -> None:
    device_ns, peer_ns = namespaces
    ip("-n", device_ns, "neigh", "add", SILENT, "lladdr", "02:00:00:00:00:09", "dev", "eth0")
    device = in_netns(device_ns, CONNECTIONS_DEVICE_SCRIPT)
    assert device.stdin is not None and device.stdout is not None
    peer: subprocess.Popen[str] | None = None
    try:
        assert json.loads(device.stdout.readline()) == {
            "problem": None,
            "features": ["connections"],
        }
        peer = in_netns(peer_ns, CONNECTIONS_PEER_SCRIPT)  # once the device listens
        assert peer.stdout is not None
        assert peer.stdout.readline() == "ready\n"
        device.stdin.write("go\n")
        device.stdin.flush()
        result = json.loads(device.stdout.readline())
        assert peer.wait(timeout=10) == 0
    finally:
        for p in (device, peer):
            if p is not None:
                p.kill()
                p.wait()
    # 8 answered, 2 refused, 1 unanswered; not the peer's 2 connections to the device.
    # The answered ones came every 1.1 s: one periodic destination, still live.
    assert result["custom"] == {
        "num_connections_opened": ANSWERED + 3,
        "periodic_destinations": [SCANNER],
        "num_periodic_destinations": 1,
    }
    counts = result["counts"]
    assert counts["connections_opened"] == ANSWERED + 3
    # the silent address's SYN again after 1 s and 3 s (or every second since Linux 6.5:
    # net.ipv4.tcp_syn_linear_timeouts), each one the same attempt
    assert counts["connections_retransmits"] in (2, 3)
    assert counts["connections_syns"] == ANSWERED + 3 + counts["connections_retransmits"]
    assert counts["connections_overflow"] == 0


def test_without_cap_net_raw_capture_says_why_and_gives_no_values() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    code = (
        "import json, time\n"
        "from agent.collect.sniffer import Sniffer\n"
        "from agent.config import CaptureConfig\n"
        "s = Sniffer(CaptureConfig(enabled=True))\n"
        "print(json.dumps([s.problem, s.collect(time.time())[0]]))\n"
        "s.close()\n"
    )
    out = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-net_raw", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    ).stdout
    problem, custom = json.loads(out)
    assert "CAP_NET_RAW" in problem
    assert custom == []  # blind: no "0 scanners" that would read as all clear

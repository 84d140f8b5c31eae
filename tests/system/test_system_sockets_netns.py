"""Sockets in two network namespaces joined by a veth pair, read by the collector over
netlink and over /proc inside one of them, and checked against `ss` there.

Run as a script, it sets up the same scenario and captures the parser fixtures of
tests/collect (raw netlink replies, /proc/net files, interface addresses and what ss
saw):  python tests/system/test_system_sockets_netns.py capture tests/fixtures/collect/sockets
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 20.0
IFACE = "veth0"  # the veth end in each namespace, renamed so fixtures do not vary

# The namespace the collector reads ("agent") opens, on 192.0.2.1 / 2001:db8::1:
SERVER = r"""
import socket, sys
A4, A6, B4, B6 = "192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2"
keep = []

def sock(family, kind, addr, v6only=None, listen=True):
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind(addr)
    if listen and kind == socket.SOCK_STREAM:
        s.listen(16)
    keep.append(s)
    return s

T, U, V4, V6 = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.AF_INET, socket.AF_INET6
tcp = {
    7001: sock(V4, T, ("0.0.0.0", 7001)),                 # wildcard
    7002: sock(V4, T, (A4, 7002)),                        # specific address
    7003: sock(V4, T, ("127.0.0.1", 7003)),               # loopback
    7004: sock(V6, T, ("::", 7004), v6only=1),            # v6-only wildcard
    7005: sock(V6, T, ("::", 7005), v6only=0),            # dual-stack wildcard
    7006: sock(V6, T, (A6, 7006)),
    7007: sock(V6, T, ("::1", 7007)),
    7008: sock(V4, T, (A4, 7008)),                        # one port on both stacks
    70080: sock(V6, T, (A6, 7008)),
    7009: sock(V4, T, ("127.0.0.53", 7009)),              # loopback, on no interface list
    7010: sock(V6, T, ("::ffff:" + A4, 7010), v6only=0),  # v4-mapped
}
sock(V4, T, (A4, 7011), listen=False)                     # bound, not listening
for addr, v6only in [
    (("0.0.0.0", 7101), None), ((A4, 7102), None), (("127.0.0.1", 7103), None),
    (("::", 7104), 1), (("::", 7105), 0), ((A6, 7106), None), (("::1", 7107), None),
    (("0.0.0.0", 7108), None), (("::", 7108), 1),
]:
    sock(V6 if ":" in addr[0] else V4, U, addr, v6only)
# Connected UDP sockets are clients, not listeners.
sock(V4, U, (A4, 7150), listen=False).connect((B4, 9))
client = socket.socket(V4, U); client.connect((B4, 53)); keep.append(client)
client6 = socket.socket(V6, U); client6.connect((B6, 53)); keep.append(client6)
print("ready", flush=True)

sys.stdin.readline()
keep.append(socket.create_connection((B4, 7201)))
keep.append(socket.create_connection(("127.0.0.1", 7003)))
keep.append(socket.create_connection(("::1", 7007)))
# Accept what the peer and the loopback clients opened, so the server ends are
# established before anyone looks.
for port, count in [(7001, 1), (7002, 1), (7004, 1), (7005, 2), (7008, 1), (70080, 1),
                    (7003, 1), (7007, 1)]:
    tcp[port].settimeout(10)
    for _ in range(count):
        keep.append(tcp[port].accept()[0])
print("connected", flush=True)
sys.stdin.read()
"""

# The peer namespace, on 192.0.2.2 / 2001:db8::2: connects in, and takes one connection.
PEER = r"""
import socket, sys
listener = socket.socket(); listener.bind(("192.0.2.2", 7201)); listener.listen(4)
keep = [listener]
for addr in [("192.0.2.1", 7001), ("192.0.2.1", 7002), ("2001:db8::1", 7004),
             ("192.0.2.1", 7005), ("2001:db8::1", 7005), ("192.0.2.1", 7008),
             ("2001:db8::1", 7008)]:
    keep.append(socket.create_connection(addr, timeout=10))
print("ready", flush=True)
sys.stdin.read()
"""

# Runs in the agent namespace: the full sampler on each socket source, as JSON.
COLLECT = r"""
import json
from agent.collect.sampler import Sampler
from agent.config import Config, SamplingConfig
out = {}
for source in ("netlink", "proc"):
    cfg = Config(sampling=SamplingConfig(socket_source=source))
    sample = Sampler(cfg, counters_path=None).sample()
    out[source] = {
        "tcp_ports": [[p.port, p.interface] for p in sample.tcp_ports],
        "udp_ports": [[p.port, p.interface] for p in sample.udp_ports],
        "connections": [[c.remote_ip, c.remote_port, c.local_port, c.local_interface]
                        for c in sample.connections],
    }
print(json.dumps(out))
"""

# Capture mode: the raw inputs of both socket sources, from inside the agent namespace.
CAPTURE = r"""
import json, shutil, socket, sys
from pathlib import Path
import psutil
from agent.collect.sockets import (TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, NETLINK_SOCK_DIAG,
                                   diag_request, parse_diag_messages)
out = Path(sys.argv[1])
(out / "netlink").mkdir(parents=True, exist_ok=True)
(out / "proc" / "net").mkdir(parents=True, exist_ok=True)
with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
    for name, family, proto, states in [
        ("tcp4", socket.AF_INET, socket.IPPROTO_TCP, 1 << TCP_LISTEN | 1 << TCP_ESTABLISHED),
        ("tcp6", socket.AF_INET6, socket.IPPROTO_TCP, 1 << TCP_LISTEN | 1 << TCP_ESTABLISHED),
        ("udp4", socket.AF_INET, socket.IPPROTO_UDP, 1 << TCP_CLOSE),
        ("udp6", socket.AF_INET6, socket.IPPROTO_UDP, 1 << TCP_CLOSE),
    ]:
        nl.send(diag_request(family, proto, states))
        chunks = []
        while True:
            chunks.append(nl.recv(65536))
            if parse_diag_messages(chunks[-1], []):
                break
        (out / "netlink" / f"{name}.bin").write_bytes(b"".join(chunks))
for name in ("tcp", "tcp6", "udp", "udp6"):
    shutil.copyfile(f"/proc/net/{name}", out / "proc" / "net" / name)
addrs = {n: [[int(a.family), a.address] for a in entries if a.family in (2, 10)]
         for n, entries in psutil.net_if_addrs().items()}
(out / "ifaddrs.json").write_text(json.dumps(addrs, indent=1, sort_keys=True) + "\n")
"""


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _python_in(ns: str, script: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args]


class Scenario:
    """Namespaces `agent` and `peer`, the veth between them, and the socket processes."""

    def __init__(self) -> None:
        tag = f"ed{os.getpid()}"
        self.agent, self.peer = f"{tag}a", f"{tag}p"
        self._procs: list[subprocess.Popen[str]] = []
        self._made: list[str] = []

    def start(self) -> None:
        for ns in (self.agent, self.peer):
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
        host_a, host_p = f"{self.agent}v", f"{self.peer}v"
        _run("ip", "link", "add", host_a, "type", "veth", "peer", "name", host_p)
        for ns, dev, n in ((self.agent, host_a, 1), (self.peer, host_p, 2)):
            _run("ip", "link", "set", dev, "netns", ns)
            _run("ip", "-n", ns, "link", "set", dev, "name", IFACE)
            _run("ip", "-n", ns, "addr", "add", f"192.0.2.{n}/24", "dev", IFACE)
            _run("ip", "-n", ns, "addr", "add", f"2001:db8::{n}/64", "dev", IFACE, "nodad")
            _run("ip", "-n", ns, "link", "set", IFACE, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        server = self._spawn(self.agent, SERVER)
        self._spawn(self.peer, PEER)
        assert server.stdin is not None
        server.stdin.write("connect\n")
        server.stdin.flush()
        self._expect(server, "connected")

    def _spawn(self, ns: str, script: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            _python_in(ns, script),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        self._expect(proc, "ready")
        return proc

    @staticmethod
    def _expect(proc: subprocess.Popen[str], word: str) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != word:
            proc.kill()
            raise RuntimeError(f"socket script said {line!r}, not {word!r}: {proc.stderr.read()}")

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.communicate(timeout=TIMEOUT_S)
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT_S)

    def in_agent(self, *argv: str) -> str:
        return _run("ip", "netns", "exec", self.agent, *argv)

    def collect(self) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            _python_in(self.agent, COLLECT),
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT_S,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


# -- what ss says, with addresses named the way the collector names them --------------


def _interfaces(ip_json: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for link in json.loads(ip_json):
        for info in link.get("addr_info", []):
            names.setdefault(str(ipaddress.ip_address(info["local"])), link["ifname"])
    return names


def _host(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def _ss_endpoint(text: str, names: dict[str, str]) -> tuple[str | None, int, str | None]:
    """(address, port, interface) of an ss column such as `[::ffff:192.0.2.1]:7010`."""
    host, _, port = text.rpartition(":")
    host = host.partition("%")[0].strip("[]")  # ss appends %dev for a bound device
    if host == "*":
        return None, int(port), None
    address = _host(ipaddress.ip_address(host))
    interface = names.get(address)
    if interface is None and ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8"):
        interface = "lo"
    return address, int(port), interface


def ss_view(listen_tcp: str, listen_udp: str, established: str, ip_json: str) -> dict[str, Any]:
    """The collector's view, rebuilt from `ss -H -tlnp`, `ss -H -ulnp`,
    `ss -H -tn state established` and `ip -j addr` (ports sorted, connections a sorted list)."""
    names = _interfaces(ip_json)

    def ports(text: str) -> list[list[Any]]:
        found = {_ss_endpoint(line.split()[3], names)[1:] for line in text.splitlines()}
        return [list(p) for p in sorted(found, key=lambda p: (p[0], p[1] or ""))]

    connections = []
    for line in established.splitlines():
        local, peer = line.split()[2:4]  # with a state filter ss leaves out the State column
        _, lport, interface = _ss_endpoint(local, names)
        remote, rport, _ = _ss_endpoint(peer, names)
        connections.append([remote, rport, lport, interface])
    return {
        "tcp_ports": ports(listen_tcp),
        "udp_ports": ports(listen_udp),
        "connections": sorted(connections),
    }


def ss_in(scenario: Scenario) -> dict[str, Any]:
    return ss_view(
        scenario.in_agent("ss", "-H", "-tlnp"),
        scenario.in_agent("ss", "-H", "-ulnp"),
        scenario.in_agent("ss", "-H", "-tn", "state", "established"),
        scenario.in_agent("ip", "-j", "addr"),
    )


# -- the test -----------------------------------------------------------------------


def _namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not (shutil.which("ip") and shutil.which("ss")):
        return "needs iproute2 (ip, ss)"
    probe = f"edprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` is not permitted here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    reason = _namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    s = Scenario()
    try:
        s.start()
        yield s
    finally:
        s.stop()


pytestmark = pytest.mark.system


def test_netlink_and_proc_agree_with_each_other_and_with_ss(scenario: Scenario) -> None:
    seen = scenario.collect()
    assert seen["netlink"] == seen["proc"]
    ours = {**seen["netlink"], "connections": sorted(seen["netlink"]["connections"])}
    assert ours == ss_in(scenario)


def test_ports_are_named_by_interface_once_and_udp_clients_left_out(scenario: Scenario) -> None:
    seen = scenario.collect()["netlink"]
    assert seen["tcp_ports"] == [
        [7001, None],
        [7002, IFACE],
        [7003, "lo"],
        [7004, None],
        [7005, None],
        [7006, IFACE],
        [7007, "lo"],
        [7008, IFACE],
        [7009, "lo"],
        [7010, IFACE],
    ]
    assert seen["udp_ports"] == [
        [7101, None],
        [7102, IFACE],
        [7103, "lo"],
        [7104, None],
        [7105, None],
        [7106, IFACE],
        [7107, "lo"],
        [7108, None],
    ]


def test_established_connections_over_both_stacks(scenario: Scenario) -> None:
    seen = scenario.collect()["netlink"]["connections"]
    inbound = Counter((ip, lport, iface) for ip, _, lport, iface in seen if lport < 7100)
    assert inbound == Counter(
        {
            ("192.0.2.2", 7001, IFACE): 1,
            ("192.0.2.2", 7002, IFACE): 1,
            ("2001:db8::2", 7004, IFACE): 1,
            ("192.0.2.2", 7005, IFACE): 1,  # v4 on a dual-stack socket, shown as v4
            ("2001:db8::2", 7005, IFACE): 1,
            ("192.0.2.2", 7008, IFACE): 1,
            ("2001:db8::2", 7008, IFACE): 1,
            ("127.0.0.1", 7003, "lo"): 1,
            ("::1", 7007, "lo"): 1,
        }
    )
    outbound = Counter((ip, rport, iface) for ip, rport, lport, iface in seen if lport >= 7100)
    assert outbound == Counter(
        {("192.0.2.2", 7201, IFACE): 1, ("127.0.0.1", 7003, "lo"): 1, ("::1", 7007, "lo"): 1}
    )


def capture(out: Path) -> None:
    """Write the parser fixtures of tests/collect from a fresh scenario."""
    s = Scenario()
    try:
        s.start()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(
            _python_in(s.agent, CAPTURE, str(out)), check=True, env=env, timeout=TIMEOUT_S
        )
        expected = ss_in(s)
        (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    finally:
        s.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "capture":
        sys.exit(f"usage: {sys.argv[0]} capture DIR")
    capture(Path(sys.argv[2]).resolve())

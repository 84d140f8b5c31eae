"""PacketReader on real traffic: two network namespaces joined by a veth pair, the reader
in one ("a", 10.201.N.1 / fd00:201:N::1), the peer in the other ("b", .2 / ::2).
Real TCP handshakes and UDP datagrams cross the veth, plus frames crafted with scapy and
sent out of a's veth with a raw socket (a VLAN tag, IPv4 options, fragments, an IPv6
extension header); the kernel filter must pass exactly the frames the clauses ask for,
with their direction and ports. Drops are counted when the reader does not read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 20.0
IFACE = "veth0"

# Runs in a: opens a PacketReader with the clauses given as JSON, says "ready", reads
# until a line arrives on stdin (unless told not to read), then prints what it got.
READER = r"""
import json, select, socket, sys
from agent.collect.capture import Match, PacketReader
args = json.loads(sys.argv[1])
matches = [Match(m["proto"], frozenset(m.get("ports", ())), m.get("direction", "any"),
                 tuple(m["tcp_flags"]) if m.get("tcp_flags") else None,
                 m.get("local_port", False), m.get("snaplen")) for m in args["matches"]]
listeners = []
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in args.get("listen", ()):
        s = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port)); s.listen(8); listeners.append(s)
reader = PacketReader(matches, interfaces=args.get("interfaces", ()), ring=args["ring"],
                      ring_bytes=args.get("ring_bytes", 1 << 20))
frames = []
def keep(f):
    frames.append([f.outgoing, f.proto, socket.inet_ntop(socket.AF_INET if len(f.src) == 4
                   else socket.AF_INET6, f.src), socket.inet_ntop(socket.AF_INET if
                   len(f.dst) == 4 else socket.AF_INET6, f.dst), f.sport, f.dport, f.flags,
                   f.payload.decode("latin-1"), f.length, f.ts])
print("ready", flush=True)
if args.get("read", True):
    while not select.select([sys.stdin], [], [], 0)[0]:
        reader.read(keep, 0.05)
    reader.read(keep, 0.2)
else:
    sys.stdin.readline()
stopped = reader.stats()
handled = 0
while (n := reader.read(keep, 0.2)):
    handled += n
print(json.dumps({"frames": frames, "stats": list(stopped), "after": list(reader.stats()),
                  "handled_after": handled}))
"""

# Runs in either namespace: the traffic of a JSON list of steps; prints the local ports.
TRAFFIC = r"""
import json, socket, sys, time
out = []
for step in json.loads(sys.argv[1]):
    kind = step[0]
    if kind == "connect":
        _, host, port = step
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            pass
        out.append(s.getsockname()[1])
        s.close()
    elif kind == "udp":
        _, host, port, payload, count = step
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        for _ in range(count):
            s.sendto(payload.encode(), (host, port))
        out.append(s.getsockname()[1])
        s.close()
    elif kind == "raw":
        _, iface, frames = step
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((iface, 0))
        for frame in frames:
            s.send(bytes.fromhex(frame))
        s.close()
    time.sleep(0.02)
print(json.dumps(out))
"""


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class Pair:
    """Namespaces a and b, one veth between them, addresses only inside."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.a, self.b = f"capt-{pid}-a", f"capt-{pid}-b"
        n = pid % 250 + 1
        self.a4, self.b4 = f"10.201.{n}.1", f"10.201.{n}.2"
        self.a6, self.b6 = f"fd00:201:{n:x}::1", f"fd00:201:{n:x}::2"
        self._made: list[str] = []

    def start(self) -> None:
        for ns in (self.a, self.b):
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
        host_a, host_b = f"capt{os.getpid()}a", f"capt{os.getpid()}b"
        _run("ip", "link", "add", host_a, "type", "veth", "peer", "name", host_b)
        for ns, dev, ip4, ip6 in (
            (self.a, host_a, self.a4, self.a6),
            (self.b, host_b, self.b4, self.b6),
        ):
            _run("ip", "link", "set", dev, "netns", ns)
            _run("ip", "-n", ns, "link", "set", dev, "name", IFACE)
            _run("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", IFACE)
            _run("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", IFACE, "nodad")
            _run("ip", "-n", ns, "link", "set", IFACE, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # Neighbours known up front: no ARP/ND exchange in the middle of a test.
        mac = {
            ns: json.loads(_run("ip", "-n", ns, "-j", "link", "show", IFACE))[0]["address"]
            for ns in (self.a, self.b)
        }
        for ns, other, ip4, ip6 in (
            (self.a, self.b, self.b4, self.b6),
            (self.b, self.a, self.a4, self.a6),
        ):
            _run("ip", "-n", ns, "neigh", "replace", ip4, "lladdr", mac[other], "dev", IFACE)
            _run("ip", "-n", ns, "neigh", "replace", ip6, "lladdr", mac[other], "dev", IFACE)
        self.mac_a, self.mac_b = mac[self.a], mac[self.b]

    def stop(self) -> None:
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT_S)

    def reader(self, **args: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.a, sys.executable, "-c", READER, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            raise RuntimeError(f"reader said {line!r}: {proc.communicate()[1]}")
        return proc

    def traffic(self, ns: str, steps: list[Any]) -> list[int]:
        return json.loads(
            _run("ip", "netns", "exec", ns, sys.executable, "-c", TRAFFIC, json.dumps(steps))
        )


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate("stop\n", timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    return json.loads(out)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2 (ip)"
    probe = f"capt-{os.getpid()}-probe"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` is not permitted here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    p = Pair()
    try:
        p.start()
        yield p
    finally:
        p.stop()


pytestmark = pytest.mark.system
SYN, ACK = 0x02, 0x10
CLAUSES = [
    # inbound SYNs to our port 8080, our SYN-ACKs from it, our UDP to or from port 5353
    {
        "proto": "tcp",
        "ports": [8080],
        "direction": "in",
        "tcp_flags": [SYN | ACK, SYN],
        "local_port": True,
    },
    {
        "proto": "tcp",
        "ports": [8080],
        "direction": "out",
        "tcp_flags": [SYN | ACK, SYN | ACK],
        "local_port": True,
    },
    {"proto": "udp", "ports": [5353], "direction": "out"},
]


def crafted(pair: Pair) -> list[str]:
    """Frames sent out of a's veth: sport says which one; 1, 3 and 5 must pass."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
    from scapy.layers.l2 import Dot1Q, Ether

    eth = Ether(src=pair.mac_a, dst=pair.mac_b)
    ip = IP(src=pair.a4, dst=pair.b4)
    frames = [
        eth / Dot1Q(vlan=100) / ip / UDP(sport=40001, dport=5353) / b"vlan",
        eth / IP(src=pair.a4, dst=pair.b4, frag=64) / UDP(sport=40002, dport=5353) / b"later",
        eth
        / IP(src=pair.a4, dst=pair.b4, options=[b"\x01\x01\x01\x00"])
        / UDP(sport=40003, dport=5353)
        / b"opts",
        eth
        / IPv6(src=pair.a6, dst=pair.b6)
        / IPv6ExtHdrHopByHop()
        / UDP(sport=40004, dport=5353)
        / b"ext",
        eth / IP(src=pair.a4, dst=pair.b4, flags="MF") / UDP(sport=40005, dport=5353) / b"first",
    ]
    return [bytes(f).hex() for f in frames]


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "recvmsg"])
def test_the_filter_passes_exactly_what_it_should(pair: Pair, ring: bool) -> None:
    reader = pair.reader(matches=CLAUSES, ring=ring, listen=[8080])
    try:
        p4, p6, refused, udp_in = pair.traffic(
            pair.b,
            [
                ["connect", pair.a4, 8080],
                ["connect", pair.a6, 8080],
                ["connect", pair.a4, 8081],  # refused: our RST is not asked for
                ["udp", pair.a4, 5353, "in", 1],  # inbound: the clause wants outbound
            ],
        )
        q4, q6, other = pair.traffic(
            pair.a,
            [
                ["udp", pair.b4, 5353, "query4", 1],
                ["udp", pair.b6, 5353, "query6", 1],
                ["udp", pair.b4, 5354, "other", 1],
                ["raw", IFACE, crafted(pair)],
            ],
        )
    finally:
        result = finish(reader)
    got = sorted(tuple(f[:9]) for f in result["frames"])
    a4, b4, a6, b6 = pair.a4, pair.b4, pair.a6, pair.b6
    assert got == sorted(
        [
            (False, 6, b4, a4, p4, 8080, SYN, "", 0),
            (True, 6, a4, b4, 8080, p4, SYN | ACK, "", 0),
            (False, 6, b6, a6, p6, 8080, SYN, "", 0),
            (True, 6, a6, b6, 8080, p6, SYN | ACK, "", 0),
            (True, 17, a4, b4, q4, 5353, 0, "query4", 6),
            (True, 17, a6, b6, q6, 5353, 0, "query6", 6),
            (True, 17, a4, b4, 40001, 5353, 0, "vlan", 4),
            (True, 17, a4, b4, 40003, 5353, 0, "opts", 4),
            (True, 17, a4, b4, 40005, 5353, 0, "first", 5),
        ]
    )
    assert refused and udp_in and other  # sent, and not seen
    stamps = [f[9] for f in result["frames"]]
    assert all(abs(ts - stamps[0]) < 10 for ts in stamps) and stamps[0] > 1.6e9
    packets, drops, _ = result["stats"]
    assert (packets, drops) == (9, 0)


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "recvmsg"])
def test_drops_are_counted_when_the_reader_does_not_read(pair: Pair, ring: bool) -> None:
    reader = pair.reader(
        matches=[{"proto": "udp", "ports": [5353]}], ring=ring, ring_bytes=1 << 16, read=False
    )
    try:
        pair.traffic(pair.b, [["udp", pair.a4, 5353, "x" * 100, 20000]])
    finally:
        result = finish(reader)
    packets, drops, freezes = result["stats"]
    assert drops > 0 and packets > drops
    if ring:
        assert freezes > 0
    # What was not dropped is still there to read; and the counts are cumulative.
    assert result["handled_after"] == packets - drops
    assert result["after"][:2] == [packets, drops]


def test_loopback_is_seen_once_as_outgoing(pair: Pair) -> None:
    reader = pair.reader(matches=[{"proto": "udp", "ports": [5353], "local_port": True}], ring=True)
    try:
        pair.traffic(pair.a, [["udp", "127.0.0.1", 5353, "lo4", 1], ["udp", "::1", 5353, "lo6", 1]])
    finally:
        result = finish(reader)
    seen = sorted((f[0], f[2], f[7]) for f in result["frames"])
    assert seen == [(True, "127.0.0.1", "lo4"), (True, "::1", "lo6")]


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "recvmsg"])
def test_a_clause_keeps_whole_segments_when_it_asks(pair: Pair, ring: bool) -> None:
    clauses = [
        {"proto": "udp", "ports": [5353]},  # the reader's 256 bytes
        {"proto": "udp", "ports": [5354], "snaplen": 65535},
    ]
    reader = pair.reader(matches=clauses, ring=ring, interfaces=["lo"])
    try:
        pair.traffic(
            pair.a,
            [
                ["udp", "127.0.0.1", 5353, "a" * 20000, 1],
                ["udp", "127.0.0.1", 5354, "b" * 20000, 1],
            ],
        )
    finally:
        result = finish(reader)
    got = sorted((f[5], len(f[7]), f[8]) for f in result["frames"])
    assert got == [(5353, 256 - 14 - 20 - 8, 20000), (5354, 20000, 20000)]


def test_interfaces_limit_what_is_seen(pair: Pair) -> None:
    clause = [{"proto": "udp", "ports": [5353]}]
    only_veth = pair.reader(matches=clause, ring=True, interfaces=[IFACE])
    both = pair.reader(matches=clause, ring=True, interfaces=[IFACE, "lo"])
    try:
        pair.traffic(
            pair.a, [["udp", "127.0.0.1", 5353, "lo", 1], ["udp", pair.b4, 5353, "veth", 1]]
        )
    finally:
        results = [finish(only_veth), finish(both)]
    assert [sorted(f[7] for f in r["frames"]) for r in results] == [["veth"], ["lo", "veth"]]


def test_nothing_unfiltered_is_read_after_open(pair: Pair) -> None:
    """The unbound socket sees every packet from socket() on; what queued before the
    filter is drained, so a flood of other traffic while opening never reaches read()."""
    flood = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.b,
            sys.executable,
            "-c",
            TRAFFIC,
            json.dumps([["udp", pair.a4, 9, "flood", 5_000_000]]),
        ],
        stdout=subprocess.DEVNULL,
    )
    readers: list[subprocess.Popen[str]] = []
    try:
        counter = f"/sys/class/net/{IFACE}/statistics/rx_packets"
        start = int(_run("ip", "netns", "exec", pair.a, "cat", counter))
        deadline = time.monotonic() + TIMEOUT_S
        while int(_run("ip", "netns", "exec", pair.a, "cat", counter)) < start + 10000:
            assert time.monotonic() < deadline, "the flood did not start"
        for _ in range(5):
            readers.append(pair.reader(matches=[{"proto": "udp", "ports": [5353]}], ring=False))
        assert flood.poll() is None, "the flood ended before the readers opened"
    finally:
        flood.kill()
        flood.wait()
    try:
        pair.traffic(pair.b, [["udp", pair.a4, 5353, "wanted", 1]])
    finally:
        results = [finish(r) for r in readers]
    for r in results:
        assert [f[5] for f in r["frames"]] == [5353]


def test_clear_errors() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = (
        "from agent.collect.capture import CaptureError, Match, PacketReader\n"
        "import sys\n"
        "try:\n"
        "    PacketReader([Match('udp')], interfaces=sys.argv[1:])\n"
        "except CaptureError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "nosuch0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
    )
    assert done.stdout.strip() == "unknown interface 'nosuch0'", done.stderr
    if os.geteuid() != 0 or not shutil.which("capsh"):
        pytest.skip("needs root and capsh to drop CAP_NET_RAW")
    done = subprocess.run(
        ["capsh", "--drop=cap_net_raw", "--", "-c", f'exec {sys.executable} -c "$0"', script],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
    )
    assert "packet capture needs CAP_NET_RAW" in done.stdout, done.stderr

"""The firewall in the kernel, measured: two network namespaces joined by a veth pair, the
device ("dut", 10.204.N.1 / fd00:204:N::1) and its peers ("peer": the attacker .2 / ::2,
the broker .3 (allowlisted), a DNS server .4). Each firewall call runs in its own short
Python process inside dut, so what stays in force after it exits is the kernel's doing.
Traffic is counted: ICMP echoes (raw sockets) and TCP connects that get their echo back.
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

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 20.0
IFACE = "veth0"
OPEN, OTHER = 7001, 7002  # ports dut and peer listen on
PINGS, CONNECTS = 20, 10

# Runs in dut: the calls in order on one Firewall; prints each result or error.
DRIVER = r"""
import json, sys, time
from agent.collect.firewall import Allowlist, Firewall, FirewallError
args = json.loads(sys.argv[1])
fw = Firewall(allow=Allowlist(tuple(args["allow"])))
out = []
for method, *params in args["calls"]:
    try:
        result = getattr(fw, method)(*params)
        ok = result if isinstance(result, dict) else {"action": result.action,
                                                      "applied": result.applied}
        out.append({"ok": ok, "t": time.time()})
    except (FirewallError, ValueError) as e:
        out.append({"error": str(e), "t": time.time()})
print(json.dumps(out))
"""

# Runs in either namespace: a TCP echo server (a line back) on the given ports, v4 and v6.
SERVER = r"""
import json, socket, sys, threading
def serve(conn):
    with conn:
        try:
            while data := conn.recv(64):
                conn.sendall(data)
        except OSError:
            pass
def listen(family, host, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port)); s.listen(64)
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
for port in json.loads(sys.argv[1]):
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        threading.Thread(target=listen, args=(family, host, port), daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""

# Runs in either namespace: probes as a JSON list; prints one figure per probe.
#   ["ping", src, dst, count]         -> echo replies received
#   ["tcp", src, dst, port, count]    -> connects that got their echo back
#   ["tcp_until", src, dst, port, s]  -> [time of the first success or null, failures]
PROBE = r"""
import json, os, select, socket, struct, sys, time

def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def ping(src, dst, count):
    v6 = ":" in dst
    s = socket.socket(family(dst), socket.SOCK_RAW,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.bind((src, 0))
    ident = os.getpid() & 0xFFFF
    for seq in range(count):
        packet = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq) + b"edge"
        if not v6:  # the kernel fills in ICMPv6 checksums itself
            packet = packet[:2] + struct.pack("!H", checksum(packet)) + packet[4:]
        try:
            s.sendto(packet, (dst, 0))
        except OSError:  # EPERM: our own output chain dropped it
            pass
        time.sleep(0.01)
    seen, end = set(), time.monotonic() + 0.5
    while (left := end - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
        data, peer = s.recvfrom(2048)
        if not v6:
            data = data[(data[0] & 0xF) * 4:]
        kind, _, _, got, seq = struct.unpack("!BBHHH", data[:8])
        if kind == (129 if v6 else 0) and got == ident and peer[0] == dst:
            seen.add(seq)
    return len(seen)

def connect(src, dst, port, timeout):
    with socket.socket(family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            if src:
                s.bind((src, 0))
            s.connect((dst, port))
            s.sendall(b"x\n")
            return s.recv(8) == b"x\n"
        except OSError:
            return False

out = []
for kind, src, dst, *rest in json.loads(sys.argv[1]):
    if kind == "ping":
        out.append(ping(src, dst, rest[0]))
    elif kind == "tcp":
        out.append(sum(connect(src, dst, rest[0], 0.2) for _ in range(rest[1])))
    else:
        end, failures = time.time() + rest[1], 0
        while time.time() < end and not connect(src, dst, rest[0], 0.1):
            failures += 1
            time.sleep(0.02)
        out.append([time.time() if time.time() < end else None, failures])
print(json.dumps(out))
"""

# Runs in peer: opens connections, says "connected", and on a line from stdin sends a
# line on each and reports which got it echoed within 1 s.
HOLD = r"""
import json, socket, sys
conns = []
for src, dst, port in json.loads(sys.argv[1]):
    s = socket.create_connection((dst, port), timeout=2, source_address=(src, 0))
    conns.append(s)
print("connected", flush=True)
sys.stdin.readline()
out = []
for s in conns:
    s.settimeout(1)
    try:
        s.sendall(b"y\n")
        out.append(s.recv(8) == b"y\n")
    except OSError:
        out.append(False)
print(json.dumps(out))
"""


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class Lab:
    """Namespaces dut and peer, one veth between them, addresses only inside."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.dut, self.peer = f"fw-{pid}-dut", f"fw-{pid}-peer"
        n = pid % 250 + 1
        self.net = f"10.204.{n}.0/24"
        self.dut4, self.attacker, self.broker, self.dns = (f"10.204.{n}.{i}" for i in (1, 2, 3, 4))
        self.dut6, self.attacker6 = f"fd00:204:{n:x}::1", f"fd00:204:{n:x}::2"
        self.allow = [self.broker]
        self._made: list[str] = []
        self._servers: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        for ns in (self.dut, self.peer):
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
        host_a, host_b = f"fw{os.getpid()}a", f"fw{os.getpid()}b"
        _run("ip", "link", "add", host_a, "type", "veth", "peer", "name", host_b)
        for ns, dev, ip4s, ip6 in (
            (self.dut, host_a, [self.dut4], self.dut6),
            (self.peer, host_b, [self.attacker, self.broker, self.dns], self.attacker6),
        ):
            _run("ip", "link", "set", dev, "netns", ns)
            _run("ip", "-n", ns, "link", "set", dev, "name", IFACE)
            for ip4 in ip4s:
                _run("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", IFACE)
            _run("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", IFACE, "nodad")
            _run("ip", "-n", ns, "link", "set", IFACE, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        for ns in (self.dut, self.peer):
            self._servers.append(self._server(ns))

    def _server(self, ns: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, json.dumps([OPEN, OTHER])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def stop(self) -> None:
        for proc in self._servers:
            proc.kill()
            proc.wait(TIMEOUT_S)
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT_S)

    def fw(
        self,
        *calls: list[Any],
        allow: list[str] | None = None,
        prefix: tuple[str, ...] = (),
        python: str = sys.executable,
    ) -> list[dict[str, Any]]:
        """Firewall calls in a new process in dut; one {"ok"|"error", "t"} per call."""
        args = {"allow": self.allow if allow is None else allow, "calls": calls}
        argv = ["ip", "netns", "exec", self.dut, *prefix, python, "-c", DRIVER, json.dumps(args)]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def ok(self, *calls: list[Any], **kw: Any) -> list[Any]:
        results = self.fw(*calls, **kw)
        assert all("ok" in r for r in results), results
        return [r["ok"] for r in results]

    def probe(self, steps: list[list[Any]], ns: str | None = None) -> list[Any]:
        argv = ["ip", "netns", "exec", ns or self.peer, sys.executable, "-c", PROBE]
        return json.loads(_run(*argv, json.dumps(steps)))

    def hold(self, conns: list[tuple[str, str, int]]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.peer, sys.executable, "-c", HOLD, json.dumps(conns)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        return proc

    def reach(self, src: str) -> tuple[int, int]:
        """(pings answered of PINGS, connects echoed of CONNECTS) from src in peer to dut."""
        dst = self.dut6 if ":" in src else self.dut4
        pings, connects = self.probe([["ping", src, dst, PINGS], ["tcp", src, dst, OPEN, CONNECTS]])
        return pings, connects


def finish(proc: subprocess.Popen[str]) -> list[bool]:
    out, _ = proc.communicate("go\n", timeout=TIMEOUT_S)
    return json.loads(out)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "setpriv"):
        if not shutil.which(tool):
            return f"needs {tool} (iproute2, util-linux)"
    if not (shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")):
        return "needs nft (apt install nftables)"
    probe = f"fw-{os.getpid()}-probe"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` is not permitted here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="module")
def lab_once() -> Iterator[Lab]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def lab(lab_once: Lab) -> Iterator[Lab]:
    """The lab with a fresh table for each test."""
    lab_once.ok(["remove"], ["ensure"])
    yield lab_once
    lab_once.ok(["remove"])


def test_a_block_drops_the_attackers_traffic_and_only_theirs(lab: Lab) -> None:
    assert lab.reach(lab.attacker) == (PINGS, CONNECTS)
    held = lab.hold([(lab.attacker, lab.dut4, OPEN), (lab.broker, lab.dut4, OPEN)])
    lab.ok(["block_address", lab.attacker, 60])
    assert lab.reach(lab.attacker) == (0, 0)
    assert lab.reach(lab.broker) == (PINGS, CONNECTS)
    # An established connection is cut too, and the device cannot reach the attacker.
    assert finish(held) == [False, True]
    outbound = lab.probe(
        [["tcp", None, lab.attacker, OTHER, 5], ["tcp", None, lab.dns, OTHER, 5]], ns=lab.dut
    )
    assert outbound == [0, 5]
    lab.ok(["unblock_address", lab.attacker])
    assert lab.reach(lab.attacker) == (PINGS, CONNECTS)


def test_an_ipv6_block_drops_the_attacker(lab: Lab) -> None:
    assert lab.reach(lab.attacker6) == (PINGS, CONNECTS)
    lab.ok(["block_address", lab.attacker6, 60])
    assert lab.reach(lab.attacker6) == (0, 0)
    assert lab.reach(lab.attacker) == (PINGS, CONNECTS)  # the same host's IPv4 is not blocked
    lab.ok(["unblock_address", lab.attacker6])
    assert lab.reach(lab.attacker6) == (PINGS, CONNECTS)


def test_a_block_expires_in_the_kernel_on_time(lab: Lab) -> None:
    (block,) = lab.fw(["block_address", lab.attacker, 2])  # that process has exited now
    first_ok, failures = lab.probe([["tcp_until", lab.attacker, lab.dut4, OPEN, 6]])[0]
    assert first_ok is not None, "still blocked 6 s after a block of 2 s"
    elapsed = first_ok - block["t"]
    print(f"block of 2 s: traffic again after {elapsed:.2f} s, {failures} connects failed before")
    assert failures >= 10 and 1.8 <= elapsed <= 2.6
    assert lab.ok(["state"])[0]["blocked"] == []
    # An expired interval leaves nothing behind that would refuse blocking it again.
    lab.ok(["block_address", lab.attacker, 60])
    assert lab.reach(lab.attacker) == (0, 0)


def test_blocking_twice_is_one_element_with_the_timeout_refreshed(lab: Lab) -> None:
    lab.ok(["block_address", lab.attacker, 30])
    time.sleep(1.2)
    before = lab.ok(["state"])[0]["blocked"]
    lab.ok(["block_address", lab.attacker, 30])
    after = lab.ok(["state"])[0]["blocked"]
    print(f"expires_s before the second block: {before[0]['expires_s']}, after: {after}")
    assert len(before) == 1 and before[0]["expires_s"] <= 28
    assert len(after) == 1 and after[0]["cidr"] == f"{lab.attacker}/32"
    assert after[0]["expires_s"] >= 29
    assert lab.reach(lab.attacker) == (0, 0)
    longer = lab.ok(["block_address", lab.attacker, 600], ["state"])[1]["blocked"]
    assert [(b["timeout_s"], b["expires_s"] >= 599) for b in longer] == [(600, True)]
    lab.ok(["unblock_address", lab.attacker], ["unblock_address", lab.attacker])
    assert lab.reach(lab.attacker) == (PINGS, CONNECTS)


def test_blocks_survive_a_restart_of_the_agent(lab: Lab) -> None:
    lab.ok(["block_address", lab.attacker, 60], ["block_port", "tcp", OTHER, 60])
    # A new agent, with a wider allowlist now, sets its table up again.
    state = lab.ok(["ensure"], ["state"], allow=[lab.broker, lab.dns])[1]
    assert [b["cidr"] for b in state["blocked"]] == [f"{lab.attacker}/32"]
    assert 55 <= state["blocked"][0]["expires_s"] <= 60
    assert [(p["proto"], p["port"]) for p in state["ports"]] == [("tcp", OTHER)]
    assert f"{lab.dns}/32" in state["allow"]
    assert lab.reach(lab.attacker) == (0, 0)


def test_the_allowlist_refuses_and_holds_in_the_kernel(lab: Lab) -> None:
    refused = lab.fw(["block_address", lab.broker, 60], ["block_address", lab.net, 60])
    assert [r.get("error", "")[:40] for r in refused] == [
        f"{lab.broker}/32 is allowlisted (overlaps {lab.broker}/32)"[:40],
        f"{lab.net} is allowlisted (overlaps {lab.broker}/32)"[:40],
    ]
    assert lab.ok(["state"])[0]["blocked"] == []
    # Even a range put in by hand that covers the broker leaves the broker reachable.
    by_hand = f"add element inet edge_defender blocked_v4 {{ {lab.net} }}"
    _run("ip", "netns", "exec", lab.dut, "nft", by_hand)
    assert lab.reach(lab.attacker) == (0, 0)
    assert lab.reach(lab.broker) == (PINGS, CONNECTS)


def test_an_overlapping_block_is_refused_with_the_range_it_overlaps(lab: Lab) -> None:
    wide, inside = lab.net.replace(".0/24", ".8/29"), lab.net.replace(".0/24", ".9")
    lab.ok(["block_address", wide, 60])
    (refused,) = lab.fw(["block_address", inside, 60])
    assert refused["error"].startswith(f"{inside}/32 overlaps blocked {wide}: blocked ranges")
    (refused,) = lab.fw(["unblock_address", inside])
    assert refused["error"].startswith(f"{inside}/32 overlaps blocked {wide}")


def test_a_port_block_drops_inbound_to_that_port_only(lab: Lab) -> None:
    def connects() -> list[int]:
        return lab.probe(
            [
                ["tcp", lab.attacker, lab.dut4, OPEN, CONNECTS],
                ["tcp", lab.attacker, lab.dut4, OTHER, CONNECTS],
                ["tcp", lab.broker, lab.dut4, OPEN, CONNECTS],
                ["tcp", lab.attacker6, lab.dut6, OPEN, CONNECTS],
            ]
        )

    assert connects() == [CONNECTS] * 4
    lab.ok(["block_port", "tcp", OPEN, 60])
    assert connects() == [0, CONNECTS, CONNECTS, 0]  # the broker is allowlisted
    # Outbound from the device to that port elsewhere is not touched.
    assert lab.probe([["tcp", None, lab.attacker, OPEN, 5]], ns=lab.dut) == [5]
    lab.ok(["unblock_port", "tcp", OPEN])
    assert connects() == [CONNECTS] * 4


def test_isolation_keeps_the_broker_and_kept_addresses_only(lab: Lab) -> None:
    held = lab.hold([(lab.dns, lab.dut4, OPEN), (lab.attacker, lab.dut4, OPEN)])
    lab.ok(["isolate", [lab.dns], 60])
    assert lab.reach(lab.attacker) == (0, 0)
    assert lab.reach(lab.attacker6) == (0, 0)
    assert lab.reach(lab.broker) == (PINGS, CONNECTS)
    assert lab.reach(lab.dns) == (PINGS, CONNECTS)
    assert finish(held) == [True, False]  # the kept flow survives, the other is cut
    out = [["tcp", None, h, OTHER, 5] for h in (lab.attacker, lab.broker, lab.dns)]
    assert lab.probe(out, ns=lab.dut) == [0, 5, 5]
    state = lab.ok(["state"])[0]
    assert state["isolated"]["families"] == ["ipv4", "ipv6"]
    assert [k["cidr"] for k in state["keep"]] == [f"{lab.dns}/32"]
    lab.ok(["release_isolation"])
    assert lab.reach(lab.attacker) == (PINGS, CONNECTS)


def test_isolation_expires_in_the_kernel(lab: Lab) -> None:
    (isolated,) = lab.fw(["isolate", [], 2])
    first_ok, _ = lab.probe([["tcp_until", lab.attacker, lab.dut4, OPEN, 6]])[0]
    assert first_ok is not None
    elapsed = first_ok - isolated["t"]
    print(f"isolation of 2 s: traffic again after {elapsed:.2f} s")
    assert 1.8 <= elapsed <= 2.6


def test_without_net_admin_the_error_says_so(lab: Lab) -> None:
    results = lab.fw(
        ["ensure"],
        ["block_address", lab.attacker, 60],
        ["state"],
        prefix=("setpriv", "--bounding-set=-net_admin"),
    )
    for r in results:
        assert r.get("error", "").startswith("needs CAP_NET_ADMIN"), r
    assert "Operation not permitted" in results[1]["error"]
    assert lab.reach(lab.attacker) == (PINGS, CONNECTS)


@pytest.fixture
def system_python() -> str:
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"needs {python} (the venv's may be out of another user's reach)")
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
    )
    if version.stdout.strip() != "True":
        pytest.skip(f"{python} is not Python 3.11 or newer")
    return python


def test_the_unit_s_capabilities_are_enough(lab: Lab, system_python: str) -> None:
    """As the unit runs it: a user other than root with CAP_NET_ADMIN as an ambient
    capability (agent/data/net-admin.conf); the system python, since the venv may be out
    of that user's reach."""
    as_service = (
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+net_admin",
        "--ambient-caps=-all,+net_admin",
        "--bounding-set=-all,+net_admin",
    )
    lab.ok(["ensure"], ["block_address", lab.attacker, 60], prefix=as_service, python=system_python)
    assert lab.reach(lab.attacker) == (0, 0)

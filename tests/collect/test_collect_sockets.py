"""Socket readers: captured netlink replies and /proc/net files (from the scenario of
tests/system/test_system_sockets_netns.py, with what ss saw there), error replies built
with struct, live sockets of this test, and netlink refused by a seccomp filter."""

from __future__ import annotations

import errno
import json
import os
import platform
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.collect.interfaces import AddressMap
from agent.collect.sockets import (
    NLMSG_DONE,
    NLMSG_ERROR,
    SocketReader,
    SocketSnapshot,
    Summarizer,
    parse_diag_messages,
    parse_proc_net,
    read_proc,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "collect" / "sockets"
IFACE = "veth0"

# Netlink headers and /proc addresses are in host byte order; the fixtures come from x86.
little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="fixtures were captured on a little-endian host"
)


def fixture_addresses() -> AddressMap:
    return AddressMap(json.loads((FIXTURE / "ifaddrs.json").read_text()))


def fixture_netlink(name: str) -> bytes:
    return (FIXTURE / "netlink" / f"{name}.bin").read_bytes()


def netlink_snapshot(addresses: AddressMap) -> SocketSnapshot:
    tcp: list[bytes] = []
    udp: list[bytes] = []
    for name, into in (("tcp4", tcp), ("tcp6", tcp), ("udp4", udp), ("udp6", udp)):
        assert parse_diag_messages(fixture_netlink(name), into), f"{name}: dump not done"
    return Summarizer().summarize(tcp, udp, addresses)


def as_json(snap: SocketSnapshot) -> dict[str, Any]:
    """The shape of expected.json: ports as listed, connections sorted."""
    return {
        "tcp_ports": [[p.port, p.interface] for p in snap.tcp_ports],
        "udp_ports": [[p.port, p.interface] for p in snap.udp_ports],
        "connections": sorted(
            [c.remote_ip, c.remote_port, c.local_port, c.local_interface] for c in snap.connections
        ),
    }


def messages(data: bytes) -> Iterator[bytes]:
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("=I", data, offset)
        yield data[offset : offset + length]
        offset += (length + 3) & ~3


# -- captured fixtures ---------------------------------------------------------------


@little_endian_only
def test_netlink_replies_give_what_ss_saw() -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert as_json(netlink_snapshot(fixture_addresses())) == expected


@little_endian_only
def test_proc_files_give_the_same_as_netlink() -> None:
    addresses = fixture_addresses()
    from_proc = SocketReader("proc", proc_root=FIXTURE / "proc").read(addresses)
    assert from_proc == netlink_snapshot(addresses)


@little_endian_only
def test_connected_udp_sockets_are_not_listening_ports() -> None:
    # The scenario bound 192.0.2.1:7150 (0x1BEE) and connected it: state 01 in /proc.
    udp_lines = (FIXTURE / "proc" / "net" / "udp").read_text().splitlines()
    client = [line.split() for line in udp_lines if "010200C0:1BEE" in line]
    assert [fields[3] for fields in client] == ["01"]
    snap = SocketReader("proc", proc_root=FIXTURE / "proc").read(fixture_addresses())
    assert 7150 not in {p.port for p in snap.udp_ports}


@little_endian_only
def test_a_port_bound_on_both_stacks_is_listed_once_per_interface() -> None:
    snap = netlink_snapshot(fixture_addresses())
    # udp 7108 on 0.0.0.0 and on [::]; tcp 7008 on 192.0.2.1 and 2001:db8::1.
    assert [(p.port, p.interface) for p in snap.udp_ports if p.port == 7108] == [(7108, None)]
    assert [(p.port, p.interface) for p in snap.tcp_ports if p.port == 7008] == [(7008, IFACE)]


@little_endian_only
def test_v4_mapped_peers_are_shown_as_ipv4() -> None:
    snap = netlink_snapshot(fixture_addresses())
    on_dual_stack = sorted(
        c.remote_addr.rsplit(":", 1)[0] for c in snap.connections if c.local_port == 7005
    )
    assert on_dual_stack == ["192.0.2.2", "[2001:db8::2]"]


@little_endian_only
def test_a_dump_read_message_by_message_gives_the_same_records() -> None:
    whole: list[bytes] = []
    assert parse_diag_messages(fixture_netlink("tcp6"), whole)
    pieces: list[bytes] = []
    done = [parse_diag_messages(m, pieces) for m in messages(fixture_netlink("tcp6"))]
    assert pieces == whole
    assert done == [False] * (len(done) - 1) + [True]


@little_endian_only
def test_an_address_moving_to_another_interface_is_seen_next_cycle() -> None:
    tcp, udp = read_proc(FIXTURE / "proc")
    summarizer = Summarizer()
    before = summarizer.summarize(tcp, udp, fixture_addresses())
    raw = json.loads((FIXTURE / "ifaddrs.json").read_text())
    moved = AddressMap({"lo": raw["lo"], "wlan0": raw[IFACE]})
    after = summarizer.summarize(tcp, udp, moved)
    assert {c.local_interface for c in before.connections} == {"lo", IFACE}
    assert {c.local_interface for c in after.connections} == {"lo", "wlan0"}
    assert (7002, "wlan0") in {(p.port, p.interface) for p in after.tcp_ports}


# -- malformed input ------------------------------------------------------------------


def nlmsg(kind: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, 1, 0) + payload


def test_an_error_reply_raises_the_kernel_errno() -> None:
    reply = nlmsg(NLMSG_ERROR, struct.pack("=i", -errno.ENOENT) + bytes(16))
    with pytest.raises(OSError) as info:
        parse_diag_messages(reply, [])
    assert info.value.errno == errno.ENOENT


def test_a_dump_that_ends_in_error_raises() -> None:
    with pytest.raises(OSError) as info:
        parse_diag_messages(nlmsg(NLMSG_DONE, struct.pack("=i", -errno.EINTR)), [])
    assert info.value.errno == errno.EINTR
    assert parse_diag_messages(nlmsg(NLMSG_DONE, struct.pack("=i", 0)), [])


@little_endian_only
def test_truncated_and_unknown_messages_are_refused() -> None:
    data = fixture_netlink("tcp4")
    with pytest.raises(OSError, match="runs past"):
        parse_diag_messages(data[:100], [])
    with pytest.raises(OSError, match="truncated message header"):
        parse_diag_messages(data[:8], [])
    with pytest.raises(OSError, match="unexpected message type 99"):
        parse_diag_messages(nlmsg(99, bytes(4)), [])


def test_a_bad_proc_line_is_named() -> None:
    text = "  sl  local_address rem_address   st\n   0: 0100007F:0016 zz:0000 0A 0 0\n"
    with pytest.raises(ValueError, match=r"/x/tcp: line 2 is not a socket entry"):
        parse_proc_net(text, socket.AF_INET, "/x/tcp")


@little_endian_only
def test_proc_without_ipv6_files_reads_ipv4_only(tmp_path: Path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    for name in ("tcp", "udp"):
        (net / name).write_text((FIXTURE / "proc" / "net" / name).read_text())
    snap = SocketReader("proc", proc_root=tmp_path).read(fixture_addresses())
    assert (7001, None) in {(p.port, p.interface) for p in snap.tcp_ports}
    assert 7004 not in {p.port for p in snap.tcp_ports}  # v6-only: in tcp6
    (net / "tcp").unlink()
    with pytest.raises(FileNotFoundError):
        SocketReader("proc", proc_root=tmp_path).read(fixture_addresses())


# -- address map ----------------------------------------------------------------------


def test_address_map_names_interfaces() -> None:
    amap = AddressMap(
        {
            "lo": [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
            "eth0": [
                (socket.AF_INET, "192.0.2.7"),
                (socket.AF_INET6, "fe80::1%eth0"),
                (17, "02:00:00:00:00:01"),  # AF_PACKET: not an address of ours
            ],
            "eth1": [(socket.AF_INET, "192.0.2.7")],
        }
    )

    def name(text: str) -> str | None:
        family = socket.AF_INET6 if ":" in text else socket.AF_INET
        return amap.interface(socket.inet_pton(family, text))

    assert name("192.0.2.7") == "eth0"  # held twice: the first one
    assert name("::ffff:192.0.2.7") == "eth0"
    assert name("fe80::1") == "eth0"
    assert name("127.0.0.53") == "lo"
    assert name("::1") == "lo"
    assert name("0.0.0.0") is None
    assert name("::") is None
    assert name("198.51.100.1") is None


# -- live sockets ------------------------------------------------------------------------

# Opens a TCP listener with a connection to it and a connected UDP pair on 127.0.0.1,
# then prints the ports and what netlink and /proc show. argv[1] "isolated": it runs in
# a new network namespace, whose loopback it brings up.
LIVE = r"""
import fcntl, json, socket, struct, sys
from pathlib import Path
from agent.collect.interfaces import AddressMap
from agent.collect.sockets import Summarizer, read_netlink, read_proc

if sys.argv[1] == "isolated":
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 1))  # SIOCSIFFLAGS IFF_UP
with (
    socket.socket() as listener,
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server_udp,
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client_udp,
):
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server_udp.bind(("127.0.0.1", 0))
    client_udp.bind(("127.0.0.1", 0))
    client_udp.connect(server_udp.getsockname())
    with socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            ports = {
                "listener": listener.getsockname()[1],
                "client": client.getsockname()[1],
                "udp_server": server_udp.getsockname()[1],
                "udp_client": client_udp.getsockname()[1],
            }
            addresses = AddressMap.current()
            snaps = [
                Summarizer().summarize(*records, addresses)
                for records in (read_netlink(), read_proc(Path("/proc")))
            ]
views = [
    {
        "tcp": [[p.port, p.interface] for p in snap.tcp_ports],
        "udp": [[p.port, p.interface] for p in snap.udp_ports],
        "conn": [[c.remote_addr, c.local_port, c.local_interface] for c in snap.connections],
    }
    for snap in snaps
]
print(json.dumps({"ports": ports, "views": views}))
"""


def _unshare() -> list[str] | None:
    """The command prefix for a new network namespace (as root, or in a new user
    namespace where unprivileged ones are allowed), or None where there is none."""
    prefix = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "-U", "-r", "--net"]
    try:
        done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
    except FileNotFoundError:
        return None
    return prefix if done.returncode == 0 else None


View = dict[str, set[tuple[Any, ...]]]


def _live(prefix: list[str] | None) -> tuple[View, View, View]:
    """One run of LIVE: what netlink and /proc saw, and what they should have seen of the
    scenario's own sockets."""
    done = subprocess.run(
        [*(prefix or []), sys.executable, "-c", LIVE, "isolated" if prefix else "shared"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    ports = seen["ports"]
    lport, cport, uport = ports["listener"], ports["client"], ports["udp_server"]
    expected: View = {
        "tcp": {(lport, "lo")},
        "udp": {(uport, "lo")},  # the connected client is left out
        "conn": {(f"127.0.0.1:{lport}", cport, "lo"), (f"127.0.0.1:{cport}", lport, "lo")},
    }
    netlink, proc = (
        {key: {tuple(item) for item in items} for key, items in view.items()}
        for view in seen["views"]
    )
    return netlink, proc, expected


def _ours(view: View, expected: View) -> View:
    """What `view` shows on the scenario's own ports (by protocol) and connections."""
    ports = {key: {p[0] for p in expected[key]} for key in ("tcp", "udp")}
    return {
        "tcp": {p for p in view["tcp"] if p[0] in ports["tcp"]},
        "udp": {p for p in view["udp"] if p[0] in ports["udp"]},
        "conn": view["conn"] & expected["conn"],
    }


def test_netlink_and_proc_see_the_sockets_of_this_test() -> None:
    # Other processes' sockets come and go, and one may have a port number of ours in the
    # other protocol or on another address. In a namespace of its own the scenario sees
    # nothing else, and both views must be exactly what it opened.
    prefix = _unshare()
    if prefix:
        netlink, proc, expected = _live(prefix)
        assert netlink == proc == expected
        return
    # Without one, only its own sockets are compared, by protocol and port. /proc/net is
    # read page by page, and thousands of sockets of others opening and closing between
    # two pages can shift one of ours past the read: another run then sees it.
    for _ in range(3):
        netlink, proc, expected = _live(None)
        if _ours(netlink, expected) == _ours(proc, expected) == expected:
            break
    assert _ours(netlink, expected) == _ours(proc, expected) == expected


# -- netlink refused ----------------------------------------------------------------------

# Installs a seccomp filter that refuses socket(AF_NETLINK, *, NETLINK_SOCK_DIAG) the way
# a kernel without inet_diag does (gVisor, trimmed kernels), then reads twice.
REFUSED = r"""
import ctypes, errno, socket, struct, sys
from agent.collect.interfaces import AddressMap
from agent.collect.sockets import SocketReader
from agent.logs import setup_logging

def ins(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)

LD, JEQ, RET, ALLOW, ERRNO = 0x20, 0x15, 0x06, 0x7FFF0000, 0x00050000
prog = b"".join([
    ins(LD, 0, 0, 0), ins(JEQ, 0, 5, int(sys.argv[2])),            # socket()?
    ins(LD, 0, 0, 16), ins(JEQ, 0, 3, socket.AF_NETLINK),          # args[0]
    ins(LD, 0, 0, 32), ins(JEQ, 0, 1, 4),                          # args[2] sock_diag
    ins(RET, 0, 0, ERRNO | errno.EPROTONOSUPPORT), ins(RET, 0, 0, ALLOW),
])
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
buf = ctypes.create_string_buffer(prog)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Fprog(len(prog) // 8, ctypes.addressof(buf))), 0, 0) == 0
setup_logging()
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
reader = SocketReader(sys.argv[1])
for _ in range(2):
    try:
        snap = reader.read(AddressMap.current())
        seen = (listener.getsockname()[1], "lo") in {(p.port, p.interface) for p in snap.tcp_ports}
        print("ok", reader.source, "seen" if seen else "missing", flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)
"""
SOCKET_SYSCALL = {"x86_64": 41, "aarch64": 198, "armv7l": 281, "armv6l": 281, "riscv64": 198}


def run_refused(source: str) -> subprocess.CompletedProcess[str]:
    nr = SOCKET_SYSCALL.get(platform.machine())
    if nr is None:
        pytest.skip(f"no socket() syscall number known for {platform.machine()}")
    return subprocess.run(
        [sys.executable, "-c", REFUSED, source, str(nr)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_auto_falls_back_to_proc_once_and_says_so_once() -> None:
    done = run_refused("auto")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ok proc seen", "ok proc seen"]
    warnings = [
        line for line in done.stderr.splitlines() if "netlink_sock_diag_unavailable" in line
    ]
    assert len(warnings) == 1
    assert "fallback=proc" in warnings[0]


def test_netlink_forced_reports_the_refusal() -> None:
    done = run_refused("netlink")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"error {errno.EPROTONOSUPPORT}"] * 2

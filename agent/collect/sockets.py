"""Listening TCP/UDP ports and established TCP connections.

The fast path asks the kernel with netlink sock_diag (what `ss` uses), filtering the
states in the kernel; the fallback reads /proc/net/{tcp,tcp6,udp,udp6}. Both produce
the same records and go through one `Summarizer`, so they give identical results."""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.collect.interfaces import AddressMap, unmap
from agent.core.sample import Connection, ListeningPort
from agent.logs import kv

log = logging.getLogger(__name__)

SocketSource = Literal["auto", "netlink", "proc"]

# Kernel socket states (include/net/tcp_states.h); an unconnected UDP socket is CLOSE.
TCP_ESTABLISHED = 1
TCP_CLOSE = 7
TCP_LISTEN = 10

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

_NLMSGHDR = struct.Struct("=IHHII")
_NLMSG_ERRNO = struct.Struct("=i")  # the payload of NLMSG_ERROR and of NLMSG_DONE
# inet_diag_req_v2: family, protocol, ext, pad, states bitmask, zeroed inet_diag_sockid.
_DIAG_REQ = struct.Struct("=BBBxI48x")
_DIAG_MSG_LEN = 72  # sizeof(struct inet_diag_msg); attributes may follow
# A record is the head of inet_diag_msg: family, state, timer, retrans, then the
# big-endian ports and the addresses (IPv4 in the first 4 of 16 bytes).
_RECORD = struct.Struct("!BBxxHH16s16s")
_RECORD_START = _NLMSGHDR.size
_RECORD_END = _RECORD_START + _RECORD.size
# The kernel fills at most 32 KiB per dump chunk; a larger buffer never truncates.
_RECV_SIZE = 65536

# One socket as the raw head of its inet_diag_msg (see _RECORD). Kept as bytes so that
# a socket still there next cycle is recognised by one dict lookup; the /proc reader
# packs its lines into the same form (timer and retrans zero), so both sources share
# `Summarizer`. A change of timer or retrans only costs that lookup a miss.
Record = bytes


@dataclass(frozen=True, slots=True)
class SocketSnapshot:
    tcp_ports: list[ListeningPort]
    udp_ports: list[ListeningPort]
    connections: list[Connection]


def diag_request(family: int, protocol: int, states: int, seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for the sockets whose state bit is in `states`."""
    body = _DIAG_REQ.pack(family, protocol, 0, states)
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def _kernel_error(data: bytes, offset: int) -> OSError:
    (err,) = _NLMSG_ERRNO.unpack_from(data, offset + _NLMSGHDR.size)
    return OSError(-err, f"sock_diag: {os.strerror(-err)}")


def parse_diag_messages(data: bytes, into: list[Record]) -> bool:
    """Append the records in one chunk of sock_diag replies to `into`; True once the
    dump is done. An error reply raises OSError with the kernel's errno."""
    offset, end = 0, len(data)
    unpack_header = _NLMSGHDR.unpack_from
    append = into.append
    while offset < end:
        if end - offset < _NLMSGHDR.size:
            raise OSError(f"sock_diag: truncated message header at byte {offset}")
        length, kind, _, _, _ = unpack_header(data, offset)
        if kind == SOCK_DIAG_BY_FAMILY and _NLMSGHDR.size + _DIAG_MSG_LEN <= length:
            if offset + length > end:
                raise OSError(f"sock_diag: message at byte {offset} runs past the data")
            append(data[offset + _RECORD_START : offset + _RECORD_END])
        elif kind == NLMSG_DONE:
            if (
                length >= _NLMSGHDR.size + 4
                and _NLMSG_ERRNO.unpack_from(data, offset + _NLMSGHDR.size)[0]
            ):
                raise _kernel_error(data, offset)
            return True
        elif kind == NLMSG_ERROR:
            raise _kernel_error(data, offset)
        else:
            raise OSError(f"sock_diag: unexpected message type {kind}, length {length}")
        offset += (length + 3) & ~3
    return False


def _dump(sock: socket.socket, family: int, protocol: int, states: int, into: list[Record]) -> None:
    sock.send(diag_request(family, protocol, states))
    while not parse_diag_messages(sock.recv(_RECV_SIZE), into):
        pass


def read_netlink() -> tuple[list[Record], list[Record]]:
    """(TCP, UDP) records of this network namespace: TCP listening and established,
    UDP unconnected. OSError when netlink sock_diag is refused or unsupported."""
    tcp: list[Record] = []
    udp: list[Record] = []
    # No timeout: the kernel builds each chunk of a dump inside send() and recv() calls,
    # so a recv() never waits on anything else.
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        for family in (socket.AF_INET, socket.AF_INET6):
            _dump(sock, family, socket.IPPROTO_TCP, 1 << TCP_LISTEN | 1 << TCP_ESTABLISHED, tcp)
            _dump(sock, family, socket.IPPROTO_UDP, 1 << TCP_CLOSE, udp)
    return tcp, udp


def _unhex(text: str) -> bytes:
    # /proc prints each 32-bit word of the address as a host-order integer.
    if len(text) == 8:
        return struct.pack("=I", int(text, 16))
    return struct.pack("=4I", *struct.unpack(">4I", bytes.fromhex(text)))


def parse_proc_net(text: str, family: int, source: str) -> list[Record]:
    """The records of one /proc/net/{tcp,tcp6,udp,udp6} file (all states); `source`
    names the file in errors."""
    records = []
    for number, line in enumerate(text.splitlines()[1:], start=2):
        try:
            _, local, remote, state, _ = line.split(None, 4)
            laddr, lport = local.split(":")
            raddr, rport = remote.split(":")
            records.append(
                _RECORD.pack(
                    family,
                    int(state, 16),
                    int(lport, 16),
                    int(rport, 16),
                    _unhex(laddr),
                    _unhex(raddr),
                )
            )
        except (ValueError, struct.error):
            raise ValueError(f"{source}: line {number} is not a socket entry: {line!r}") from None
    return records


def _read_proc_file(net: Path, name: str, family: int) -> list[Record]:
    path = net / name
    try:
        text = path.read_text()
    except FileNotFoundError:
        if family == socket.AF_INET6:  # no tcp6/udp6 when IPv6 is disabled
            return []
        raise
    return parse_proc_net(text, family, str(path))


def read_proc(proc_root: Path) -> tuple[list[Record], list[Record]]:
    """(TCP, UDP) records from /proc/net, all states (the summary picks)."""
    net = proc_root / "net"
    v4, v6 = socket.AF_INET, socket.AF_INET6
    tcp = _read_proc_file(net, "tcp", v4) + _read_proc_file(net, "tcp6", v6)
    udp = _read_proc_file(net, "udp", v4) + _read_proc_file(net, "udp6", v6)
    return tcp, udp


def _address(family: int, raw: bytes) -> bytes:
    return raw[:4] if family == socket.AF_INET else raw


def _ip_text(packed: bytes) -> str:
    packed = unmap(packed)
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


# What a record means: a Connection or a listening (port, interface); None: ignored.
_Item = Connection | tuple[int, str | None]


def _tcp_item(record: Record, addresses: AddressMap) -> _Item | None:
    family, state, lport, rport, laddr, raddr = _RECORD.unpack(record)
    if state == TCP_ESTABLISHED:
        local = addresses.interface(_address(family, laddr))
        return Connection(_ip_text(_address(family, raddr)), rport, lport, local)
    if state == TCP_LISTEN:
        return lport, addresses.interface(_address(family, laddr))
    return None


def _udp_item(record: Record, addresses: AddressMap) -> _Item | None:
    # Only an unconnected socket listens; a connected one is a client.
    family, state, lport, _, laddr, _ = _RECORD.unpack(record)
    if state == TCP_CLOSE:
        return lport, addresses.interface(_address(family, laddr))
    return None


class Summarizer:
    """Records -> snapshot. Remembers what each record meant, so that a socket still there
    next cycle costs a dict lookup instead of building its objects again (that building
    is most of a cycle with thousands of connections)."""

    def __init__(self) -> None:
        self._addresses: AddressMap | None = None
        self._tcp: dict[Record, _Item] = {}
        self._udp: dict[Record, _Item] = {}

    def summarize(
        self, tcp: Sequence[Record], udp: Sequence[Record], addresses: AddressMap
    ) -> SocketSnapshot:
        """Listening ports once per (port, interface), sorted; established connections
        in record order."""
        if addresses != self._addresses:  # an address moved: any interface name may differ
            self._tcp.clear()
            self._udp.clear()
            self._addresses = addresses
        connections: list[Connection] = []
        tcp_ports: set[tuple[int, str | None]] = set()
        udp_ports: set[tuple[int, str | None]] = set()
        _classify(tcp, self._tcp, _tcp_item, addresses, tcp_ports, connections)
        _classify(udp, self._udp, _udp_item, addresses, udp_ports, connections)
        return SocketSnapshot(_ports(tcp_ports), _ports(udp_ports), connections)


def _classify(
    records: Sequence[Record],
    known: dict[Record, _Item],
    meaning: Callable[[Record, AddressMap], _Item | None],
    addresses: AddressMap,
    ports: set[tuple[int, str | None]],
    connections: list[Connection],
) -> None:
    for record in records:
        item = known.get(record)
        if item is None:
            item = meaning(record, addresses)
            if item is None:
                continue
            known[record] = item
        if isinstance(item, Connection):
            connections.append(item)
        else:
            ports.add(item)
    # Sockets that went away are forgotten only once they make up half of what is
    # remembered, rather than rebuilding the dict every cycle.
    if len(known) > 2 * len(records) + 64:
        current = {r: known[r] for r in records if r in known}
        known.clear()
        known.update(current)


def _ports(found: set[tuple[int, str | None]]) -> list[ListeningPort]:
    return [ListeningPort(p, i) for p, i in sorted(found, key=lambda e: (e[0], e[1] or ""))]


class SocketReader:
    """Reads sockets from the configured source. `auto` uses netlink and, the first
    time netlink is refused, logs it once and stays on /proc."""

    def __init__(self, source: SocketSource = "auto", proc_root: Path = Path("/proc")) -> None:
        self.source = source
        self._proc_root = proc_root
        self._summarizer = Summarizer()

    def read(self, addresses: AddressMap) -> SocketSnapshot:
        """OSError or ValueError when the sockets cannot be read."""
        return self._summarizer.summarize(*self._records(), addresses)

    def _records(self) -> tuple[list[Record], list[Record]]:
        if self.source != "proc":
            try:
                return read_netlink()
            except OSError as e:
                if self.source == "netlink":
                    raise
                log.warning(kv("netlink_sock_diag_unavailable", error=e, fallback="proc"))
                self.source = "proc"
        return read_proc(self._proc_root)

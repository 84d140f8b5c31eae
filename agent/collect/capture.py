"""Packet capture: an AF_PACKET socket with a classic BPF program in the kernel, so only
the packets a feature asked for (`Match` clauses) reach Python, read from a TPACKET_V3
mmap ring and parsed with precompiled structs into `agent.core.packet.Frame`s.

Imported by the daemon only when capture is on (no scapy here; scapy crafts test traffic).
Needs CAP_NET_RAW only. The clauses are `agent.core.packet.Match` (the features declare
theirs in the pure core), re-exported here; compile_filter checks them. A clause's own
`snaplen` (a stream decoder wants whole segments) overrides the reader's; with the ring,
a frame larger than a ring block (ring_bytes / 2, at most 128 KiB) is cut to fit it.

What the kernel filter passes (compile_filter):
 - Ethernet frames (ARPHRD_ETHER) and loopback (ARPHRD_LOOPBACK, a zeroed Ethernet
   header); other link types (tun, WireGuard, PPP: no Ethernet header) are not captured.
 - at most one inline 802.1Q tag. The kernel usually strips tags into metadata before the
   taps (RX always, TX with VLAN offload), so most tagged traffic reaches the filter
   untagged and matches on the untagged path; inline tags are TX without offload.
 - IPv4 with any header length, first fragments only (a later fragment has no ports).
 - IPv6 whose next header is TCP or UDP directly: extension headers (hop-by-hop,
   routing, fragment, ...) are not followed in the filter, so such packets are not
   captured. Plain TCP/UDP, which is nearly all of it, has none.
 - not PACKET_OTHERHOST: frames for other hosts seen in promiscuous mode (another tool may
   have turned it on) are not this device's traffic.
 - loopback: every packet sent on `lo` is seen twice, as sent (PACKET_OUTGOING) and as
   received (PACKET_HOST). The filter keeps the sent copy only, so each counts once and
   as outgoing: direction="in" never matches on lo, and `local_port` matches either
   port there (both ends are local).
"""

from __future__ import annotations

import logging
import mmap
import select
import socket
import struct
from array import array
from collections.abc import Callable, Sequence
from typing import NamedTuple

from agent.core.packet import TCP, UDP, Frame, Match
from agent.logs import kv

log = logging.getLogger(__name__)


class CaptureError(Exception):
    """Capture cannot start; the message says what and why."""


class CaptureStats(NamedTuple):
    """Cumulative since the reader opened (the kernel resets its counters on each read)."""

    packets: int  # passed the kernel filter, dropped ones included
    drops: int  # passed the filter but the ring or socket buffer was full
    freezes: int  # times the ring was full (TPACKET_V3 freeze_q_cnt)


MAX_PORTS = 100
DEFAULT_RING_BYTES = 1 << 20

# -- classic BPF (linux/filter.h, linux/bpf_common.h) ---------------------------------

_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_H_IND, _LD_B_IND = 0x48, 0x50
_LD_IMM, _LD_MEM, _LDX_IMM, _ST = 0x00, 0x60, 0x01, 0x02
_AND_K, _LSH_K, _ADD_K, _ADD_X = 0x54, 0x64, 0x04, 0x0C
_JA, _JEQ_K, _JSET_K = 0x05, 0x15, 0x45
_RET_K, _TAX, _TXA = 0x06, 0x07, 0x87
_SKF_AD_OFF = -0x1000 & 0xFFFFFFFF
_AD_PKTTYPE, _AD_IFINDEX, _AD_HATYPE = _SKF_AD_OFF + 4, _SKF_AD_OFF + 8, _SKF_AD_OFF + 28
# Scratch memory slots.
_SLOTS = 6
_M_PROTO, _M_SPORT, _M_DPORT, _M_LOCAL, _M_LO, _M_PKTTYPE = range(_SLOTS)

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
PACKET_HOST, PACKET_OTHERHOST, PACKET_OUTGOING = 0, 3, 4
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_ALL = 0x0800, 0x86DD, 0x8100, 0x0003

Insn = tuple[int, int, int, int]  # (code, jt, jf, k), as struct sock_filter


class _Asm:
    """Instructions with jumps to named labels, resolved at the end (forward only)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | None, str | None, int | str]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int = 0) -> None:
        self.code.append((code, None, None, k))

    def jump(self, code: int, k: int, jt: str | None, jf: str | None) -> None:
        """Conditional jump; None = fall through to the next instruction."""
        self.code.append((code, jt, jf, k))

    def ja(self, target: str) -> None:
        self.code.append((_JA, None, None, target))

    def assemble(self) -> list[Insn]:
        out: list[Insn] = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            if isinstance(k, str):
                k = self.labels[k] - i - 1
            offsets = [0 if t is None else self.labels[t] - i - 1 for t in (jt, jf)]
            if any(not 0 <= o <= 255 for o in offsets):
                raise ValueError(f"filter too large: a jump at instruction {i} is out of reach")
            out.append((code, offsets[0], offsets[1], k))
        if len(out) > 4096:  # BPF_MAXINSNS
            raise ValueError(f"filter too large: {len(out)} instructions, the kernel takes 4096")
        return out


def compile_filter(
    matches: Sequence[Match], *, snaplen: int = 256, ifindexes: Sequence[int] = ()
) -> list[Insn]:
    """The cBPF program that returns the snap length for a frame some clause matches (the
    first matching clause's `snaplen`, else `snaplen`), else 0. `ifindexes`: accept only
    these interfaces (for one socket over several of them). A bad clause: ValueError."""
    if not matches:
        raise ValueError("compile_filter: no Match clauses (nothing would be captured)")
    _check_snaplen(snaplen, "snaplen")
    for i, m in enumerate(matches):
        _check(m, f"Match {i} {m!r}")
    a = _Asm()
    # The kernel checks loads from scratch memory with a linear pass that does not stop at
    # a `ret`: a load after the early `drop` must see every slot stored on every path.
    a.op(_LD_IMM, 0)
    for slot in range(_SLOTS):
        a.op(_ST, slot)
    if ifindexes:
        a.op(_LD_W_ABS, _AD_IFINDEX)
        for index in ifindexes:
            a.jump(_JEQ_K, index, "ifok", None)
        a.ja("drop")
        a.label("ifok")
    a.op(_LD_W_ABS, _AD_PKTTYPE)
    a.op(_ST, _M_PKTTYPE)
    a.jump(_JEQ_K, PACKET_OTHERHOST, "drop", None)
    a.op(_TAX)
    a.op(_LD_W_ABS, _AD_HATYPE)
    a.jump(_JEQ_K, ARPHRD_ETHER, "eth", None)
    a.jump(_JEQ_K, ARPHRD_LOOPBACK, None, "drop")
    # Loopback: keep the sent copy of each packet, not the received one.
    a.op(_TXA)
    a.jump(_JEQ_K, PACKET_OUTGOING, None, "drop")
    a.op(_LD_IMM, 1)
    a.op(_ST, _M_LO)
    a.label("eth")  # X = offset of the layer-3 header from here on
    a.op(_LDX_IMM, 14)
    a.op(_LD_H_ABS, 12)
    a.jump(_JEQ_K, ETH_P_8021Q, None, "l3")
    a.op(_LDX_IMM, 18)
    a.op(_LD_H_ABS, 16)
    a.label("l3")
    a.jump(_JEQ_K, ETH_P_IP, None, "ip6")
    a.op(_LD_H_IND, 6)
    a.jump(_JSET_K, 0x1FFF, "drop", None)  # fragment offset: not the first fragment
    a.op(_LD_B_IND, 9)
    a.op(_ST, _M_PROTO)
    a.op(_LD_B_IND, 0)  # X += IHL * 4
    a.op(_AND_K, 0x0F)
    a.op(_LSH_K, 2)
    a.op(_ADD_X)
    a.op(_TAX)
    a.ja("l4")
    a.label("ip6")
    a.jump(_JEQ_K, ETH_P_IPV6, None, "drop")
    a.op(_LD_B_IND, 6)  # next header
    a.op(_ST, _M_PROTO)
    a.op(_TXA)
    a.op(_ADD_K, 40)
    a.op(_TAX)
    a.label("l4")  # X = offset of the TCP/UDP header
    a.op(_LD_H_IND, 0)
    a.op(_ST, _M_SPORT)
    a.op(_LD_H_IND, 2)
    a.op(_ST, _M_DPORT)
    a.op(_LD_MEM, _M_PKTTYPE)
    a.jump(_JEQ_K, PACKET_OUTGOING, None, "in")
    a.op(_LD_MEM, _M_SPORT)
    a.ja("local")
    a.label("in")
    a.op(_LD_MEM, _M_DPORT)
    a.label("local")
    a.op(_ST, _M_LOCAL)
    a.ja("clause0")
    a.label("drop")  # within jump reach of the prelude; the clauses end in their own
    a.op(_RET_K, 0)
    for i, m in enumerate(matches):
        _clause(a, m, i, snaplen)
    a.label(f"clause{len(matches)}")
    a.op(_RET_K, 0)
    return a.assemble()


def _check_snaplen(snaplen: int, what: str) -> None:
    if not 64 <= snaplen <= 0xFFFF:
        raise ValueError(f"{what} must be 64..65535, not {snaplen}")


def _check(m: Match, what: str) -> None:
    if m.proto not in ("tcp", "udp"):
        raise ValueError(f"{what}: proto must be 'tcp' or 'udp', not {m.proto!r}")
    if m.direction not in ("in", "out", "any"):
        raise ValueError(f"{what}: direction must be in/out/any, not {m.direction!r}")
    bad = sorted(p for p in m.ports if not (isinstance(p, int) and 0 <= p <= 0xFFFF))
    if bad:
        raise ValueError(f"{what}: not a port number: {bad!r}")
    if len(m.ports) > MAX_PORTS:
        # Each port is one conditional jump; cBPF jumps reach at most 255 forward.
        raise ValueError(f"{what}: at most {MAX_PORTS} ports a clause, not {len(m.ports)}")
    if m.local_port and not m.ports:
        raise ValueError(f"{what}: local_port needs ports")
    if m.tcp_flags is not None:
        if m.proto != "tcp":
            raise ValueError(f"{what}: tcp_flags is for proto 'tcp' only")
        mask, value = m.tcp_flags
        if not (0 <= mask <= 0xFF and 0 <= value <= 0xFF) or value & ~mask:
            raise ValueError(f"{what}: bad tcp_flags (mask, value) {m.tcp_flags!r}")
    if m.snaplen is not None:
        _check_snaplen(m.snaplen, f"{what}: snaplen")


def _clause(a: _Asm, m: Match, i: int, snaplen: int) -> None:
    fail, ok = f"clause{i + 1}", f"ok{i}"
    a.label(f"clause{i}")
    a.op(_LD_MEM, _M_PROTO)
    a.jump(_JEQ_K, TCP if m.proto == "tcp" else UDP, None, fail)
    if m.direction != "any":
        a.op(_LD_MEM, _M_PKTTYPE)
        out = m.direction == "out"
        a.jump(_JEQ_K, PACKET_OUTGOING, None if out else fail, fail if out else None)
    if m.ports:
        ports = sorted(m.ports)
        slots = [_M_LOCAL] if m.local_port else [_M_SPORT, _M_DPORT]
        for slot in slots:
            a.op(_LD_MEM, slot)
            for port in ports:
                a.jump(_JEQ_K, port, ok, None)
        if m.local_port and m.direction != "in":
            # On loopback both ends are local: the other port counts too.
            a.op(_LD_MEM, _M_LO)
            a.jump(_JEQ_K, 0, fail, None)
            a.op(_LD_MEM, _M_DPORT)
            for port in ports:
                a.jump(_JEQ_K, port, ok, None)
        a.ja(fail)
    a.label(ok)
    if m.tcp_flags is not None:
        a.op(_LD_B_IND, 13)
        a.op(_AND_K, m.tcp_flags[0])
        a.jump(_JEQ_K, m.tcp_flags[1], None, fail)
    a.op(_RET_K, snaplen if m.snaplen is None else m.snaplen)


# -- frame parsing ----------------------------------------------------------------------

_U16 = struct.Struct("!H")
# IPv4: version/IHL, total length, flags/fragment offset, protocol, source, destination.
_IP4 = struct.Struct("!BxHxxHxB2x4s4s")
# IPv6: version (high nibble), payload length, next header, source, destination.
_IP6 = struct.Struct("!B3xHBx16s16s")
# TCP: ports, sequence number, data offset, flags; UDP: ports.
_TCP = struct.Struct("!HHI4xBB")
_UDP = struct.Struct("!HH")


def parse_frame(buf: bytes | memoryview, ts: float, outgoing: bool) -> Frame | None:
    """The Frame of an Ethernet (+ one 802.1Q tag) / IPv4 or IPv6 / TCP or UDP frame;
    None for anything else, for a later IPv4 fragment and for a frame cut before the
    ports (never an exception)."""
    return _parse(buf, 0, len(buf), ts, outgoing)


def _parse(
    buf: bytes | memoryview | mmap.mmap, pos: int, end: int, ts: float, outgoing: bool
) -> Frame | None:
    """parse_frame on buf[pos:end] without copying it (the ring hands in the mmap)."""
    if end - pos < 34:
        return None
    (etype,) = _U16.unpack_from(buf, pos + 12)
    pos += 14
    if etype == ETH_P_8021Q:
        (etype,) = _U16.unpack_from(buf, pos + 2)
        pos += 4
    if etype == ETH_P_IP:
        if end - pos < 20:
            return None
        vihl, total, frag, proto, src, dst = _IP4.unpack_from(buf, pos)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or frag & 0x1FFF:
            return None
        pos += ihl
        l4len = total - ihl
    elif etype == ETH_P_IPV6:
        if end - pos < 40:
            return None
        ver, l4len, proto, src, dst = _IP6.unpack_from(buf, pos)
        if ver >> 4 != 6:
            return None
        pos += 40
    else:
        return None
    if proto == TCP:
        if end - pos < 20:
            return None
        sport, dport, seq, off, flags = _TCP.unpack_from(buf, pos)
        hlen = (off >> 4) * 4
        if hlen < 20:
            return None
    elif proto == UDP:
        if end - pos < 8:
            return None
        sport, dport = _UDP.unpack_from(buf, pos)
        seq = flags = 0
        hlen = 8
    else:
        return None
    length = l4len - hlen
    if length < 0:
        return None
    start = pos + hlen
    # Cut to the IP length: Ethernet pads short frames.
    payload = bytes(buf[start : min(end, start + length)]) if start < end else b""
    return Frame(ts, outgoing, src, dst, proto, sport, dport, flags, seq, payload, length)


# -- the socket ------------------------------------------------------------------------

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS_NEW = 64  # struct __kernel_timespec, 64-bit time on every arch
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
RETIRE_BLOCK_MS = 20  # a part-filled ring block is handed to us after this long

# tpacket_block_desc: version, offset_to_priv, then block_status, num_pkts,
# offset_to_first_pkt (tpacket_hdr_v1).
_BLOCK = struct.Struct("=III")
_BLOCK_STATUS = struct.Struct("=I")
# tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, (tp_len, tp_status), tp_mac;
# then sockaddr_ll at TPACKET_ALIGN(sizeof(tpacket3_hdr)) = 48, its sll_pkttype at +10.
_PKT = struct.Struct("=IIII8xH32xB")
_REQ3 = struct.Struct("=7I")  # tpacket_req3
_TIMESPEC = struct.Struct("=qq")
_DROP_ALL: list[Insn] = [(_RET_K, 0, 0, 0)]


def _attach(sock: socket.socket, program: Sequence[Insn]) -> None:
    """SO_ATTACH_FILTER with a struct sock_fprog {len; *filter}: the kernel copies the
    program during the call, so the buffer only has to live through it."""
    insns = array("B", b"".join(struct.pack("=HBBI", *insn) for insn in program))
    fprog = struct.pack("@HP", len(program), insns.buffer_info()[0])
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class PacketReader:
    """One AF_PACKET socket for all the interfaces asked for: bound to the interface when
    there is one; with several, unbound and the filter tests the interface index, so the
    daemon waits on one fd and keeps one ring (several sockets would each need a ring).
    The ring (TPACKET_V3, `ring_bytes` of kernel memory mapped here, counted in RSS) costs
    one poll per block instead of one recvmsg per packet: at 100k pkt/s about a quarter of
    a core against recvmsg's drops (bench/capture.py); ring=False reads with recvmsg.
    Interfaces are looked up when opened: one created later, or renamed or re-created
    with a new index, is not followed.

    Set-up order: a drop-all filter first, then bind, drain what queued before it (an
    unbound socket gets every packet from socket() on), then the ring and the real filter.
    Undrained packets would reach a recvmsg reader unfiltered, and with the ring they
    would sit in the socket queue and keep poll() reporting POLLIN: a busy loop.

    The ring's block status is read with a plain load: the kernel orders its writes
    (smp_wmb before the status), but Python has no acquire load, so on a weakly ordered
    CPU (ARM) a block's data read right after its status could in principle be stale.
    Not seen in practice; libpcap uses an acquire load here."""

    def __init__(
        self,
        matches: Sequence[Match],
        *,
        interfaces: Sequence[str] = (),
        snaplen: int = 256,
        ring: bool = True,
        ring_bytes: int = DEFAULT_RING_BYTES,
    ) -> None:
        if ring and (ring_bytes < 1 << 16 or ring_bytes & (ring_bytes - 1)):
            raise ValueError(f"ring_bytes must be a power of two >= 64 KiB, not {ring_bytes}")
        indexes = [_ifindex(name) for name in interfaces]
        program = compile_filter(
            matches, snaplen=snaplen, ifindexes=indexes if len(indexes) > 1 else ()
        )
        # The recvmsg buffer: the largest snap length the program can return.
        self._snaplen = max(snaplen, *(m.snaplen or 0 for m in matches))
        self._mm: mmap.mmap | None = None
        self._totals = [0, 0, 0]
        # Bound to one interface: created with protocol 0, so it sees nothing until bind.
        # Otherwise it sees every interface from socket() on, before any filter.
        proto = 0 if len(indexes) == 1 else socket.htons(ETH_P_ALL)
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, proto)
        except PermissionError as e:
            raise CaptureError(f"packet capture needs CAP_NET_RAW: {e.strerror}") from e
        except OSError as e:
            raise CaptureError(f"cannot open an AF_PACKET socket: {e.strerror}") from e
        try:
            self._open(program, interfaces, ring, ring_bytes)
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)
        log.info(
            kv(
                "capture_open",
                interfaces=",".join(interfaces) or "all",
                clauses=len(matches),
                instructions=len(program),
                ring_bytes=ring_bytes if ring else 0,
                snaplen=snaplen,
            )
        )

    def _open(
        self, program: list[Insn], interfaces: Sequence[str], ring: bool, ring_bytes: int
    ) -> None:
        sock = self._sock
        # Drop everything while setting up, drain what queued before the filter (the
        # unbound socket saw every packet since socket()), then attach the real filter.
        _attach(sock, _DROP_ALL)
        if len(interfaces) == 1:
            try:
                sock.bind((interfaces[0], ETH_P_ALL))
            except OSError as e:
                raise CaptureError(f"cannot bind to interface {interfaces[0]!r}: {e}") from e
        while True:
            try:
                sock.recv(1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        if ring:
            self._setup_ring(ring_bytes)
        else:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS_NEW, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ring_bytes)
        self._read_stats()  # zero the kernel counters
        self._totals = [0, 0, 0]
        _attach(sock, program)

    def _setup_ring(self, ring_bytes: int) -> None:
        block = min(1 << 17, ring_bytes // 2)
        frame = 1 << 11  # only checked by the kernel for V3: packets are packed in blocks
        nblocks = ring_bytes // block
        req = _REQ3.pack(block, nblocks, frame, block // frame * nblocks, RETIRE_BLOCK_MS, 0, 0)
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._mm = mmap.mmap(self._sock.fileno(), ring_bytes, mmap.MAP_SHARED)
        except OSError as e:
            raise CaptureError(f"cannot set up a {ring_bytes} byte TPACKET_V3 ring: {e}") from e
        self._block_size, self._nblocks, self._block = block, nblocks, 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, handle: Callable[[Frame], None], timeout_s: float) -> int:
        """Wait up to timeout_s for packets, pass the frames there are to `handle` (at most
        one lap of the ring, or as many packets as the ring would hold), return how many."""
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, not {timeout_s}")
        if not self._ready():
            self._poll.poll(int(timeout_s * 1000 + 0.999))
        return self._read_ring(handle) if self._mm is not None else self._read_socket(handle)

    def _ready(self) -> bool:
        if self._mm is None:
            return False
        (status,) = _BLOCK_STATUS.unpack_from(self._mm, self._block * self._block_size + 8)
        return bool(status & TP_STATUS_USER)

    def _read_ring(self, handle: Callable[[Frame], None]) -> int:
        mm = self._mm
        assert mm is not None
        parse, unpack_pkt = _parse, _PKT.unpack_from
        handled = 0
        for _ in range(self._nblocks):
            base = self._block * self._block_size
            status, count, pos = _BLOCK.unpack_from(mm, base + 8)
            if not status & TP_STATUS_USER:
                break
            pos += base
            try:
                for _ in range(count):
                    step, sec, nsec, snap, mac, pkttype = unpack_pkt(mm, pos)
                    start = pos + mac
                    frame = parse(mm, start, start + snap, sec + nsec * 1e-9, pkttype == 4)
                    if frame is not None:
                        handle(frame)
                        handled += 1
                    pos += step
            finally:
                _BLOCK_STATUS.pack_into(mm, base + 8, TP_STATUS_KERNEL)  # back to the kernel
                self._block = (self._block + 1) % self._nblocks
        return handled

    def _read_socket(self, handle: Callable[[Frame], None]) -> int:
        recvmsg, snaplen = self._sock.recvmsg, self._snaplen
        space = socket.CMSG_SPACE(_TIMESPEC.size)
        handled = 0
        for _ in range(4096):
            try:
                data, anc, _flags, addr = recvmsg(snaplen, space, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            ts = 0.0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS_NEW:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    ts = sec + nsec * 1e-9
            frame = _parse(data, 0, len(data), ts, addr[2] == PACKET_OUTGOING)
            if frame is not None:
                handle(frame)
                handled += 1
        return handled

    def _read_stats(self) -> None:
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        # tpacket_stats_v3 with the ring, tpacket_stats (no freeze count) without.
        values = struct.unpack(f"={len(raw) // 4}I", raw)
        for i, value in enumerate(values):
            self._totals[i] += value

    def stats(self) -> CaptureStats:
        """Cumulative counts (each read of PACKET_STATISTICS resets the kernel's)."""
        self._read_stats()
        packets, drops, freezes = self._totals
        return CaptureStats(packets, drops, freezes)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._sock.close()

    def __enter__(self) -> PacketReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError) as e:  # ValueError: an empty name or one with a NUL
        raise CaptureError(f"unknown interface {name!r}") from e


__all__ = [
    "CaptureError",
    "CaptureStats",
    "Match",
    "PacketReader",
    "compile_filter",
    "parse_frame",
]

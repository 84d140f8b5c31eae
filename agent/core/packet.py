"""One captured packet as the capture features see it: the layer-3/4 fields the
struct parser (agent.collect.capture) pulls out of a frame, nothing dissected further.
Pure: the features that consume frames (scan, DNS, broker watch) live in agent.core and
are tested by feeding them frames by hand."""

from __future__ import annotations

import ipaddress
from typing import Literal, NamedTuple

TCP = 6
UDP = 17
# TCP flag bits
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10


class Frame(NamedTuple):
    """A tuple, not a dataclass: the capture thread makes one per packet at 100k/s."""

    ts: float  # kernel receive/send time, epoch seconds
    outgoing: bool  # sent by this host (PACKET_OUTGOING), else received
    src: bytes  # packed address: 4 bytes (IPv4) or 16 (IPv6)
    dst: bytes
    proto: int  # TCP or UDP
    sport: int
    dport: int
    flags: int  # TCP flags byte; 0 for UDP
    seq: int  # TCP sequence number; 0 for UDP
    payload: bytes  # L4 payload as captured (cut to the snap length)
    length: int  # L4 payload length on the wire (> len(payload) when cut)


class Match(NamedTuple):
    """One clause of the kernel filter a capture feature needs (agent.collect.capture
    compiles them into one classic BPF program): a packet passes if any clause matches."""

    proto: Literal["tcp", "udp"]
    ports: frozenset[int] = frozenset()  # sport or dport in the set; empty: any port
    direction: Literal["in", "out", "any"] = "any"  # received, sent, either
    tcp_flags: tuple[int, int] | None = None  # (mask, value): flags & mask == value
    local_port: bool = False  # `ports` apply to this host's end only
    # Bytes kept of a matching packet; None: the reader's default. A stream decoder needs
    # whole segments (a client batches many small packets into one).
    snaplen: int | None = None


def ip_text(packed: bytes) -> str:
    """'192.0.2.1' or '2001:db8::1' for a packed address."""
    return str(ipaddress.ip_address(packed))

"""DNS as the device uses it: the names it queries and the resolvers it asks, from its
outbound UDP/53 queries (RFC 1035 section 4). Only the header and the question section are
decoded; answers are not needed. Responses coming in are not used (the question they
echo is the one already counted), nor are the responses a local DNS server sends out.
Not seen: DNS over TCP/53 (large answers, zone transfers: the filter takes UDP only), DoT,
DoH and mDNS. A device that runs a local stub or forwarder (systemd-resolved at
127.0.0.53, dnsmasq on a gateway) shows both hops: the stub among the resolvers, and the
upstream queries it makes, its clients' names included.

Names are text as on the wire: lowercased (ASCII only), IDNA left as its xn-- ASCII, no
trailing dot (the root is "."); a byte outside printable ASCII, a dot or a backslash inside
a label is written \\DDD (decimal), as in zone files, so no two names share a text.
Pure: no I/O, no clock."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.core.packet import UDP, Frame, Match, ip_text

DNS_PORT = 53
MAX_NAME_WIRE = 255  # RFC 1035 2.3.4: the name's wire form, length bytes included
MAX_LABEL = 63

MATCHES: tuple[Match, ...] = (
    # Outbound UDP with either port 53: the filter has no "remote port" form, so a local
    # DNS server's answers (source port 53) pass too and are dropped in feed().
    Match("udp", ports=frozenset({DNS_PORT}), direction="out"),
)

_HEADER = 12
# Label bytes that stand for themselves: printable ASCII except "." and "\".
_PLAIN = re.compile(rb"[\x21-\x2d\x2f-\x5b\x5d-\x7e]*").fullmatch
_BYTE_TEXT = [chr(b) if _PLAIN(bytes((b,))) else f"\\{b:03d}" for b in range(256)]


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    qr: bool  # True for a response
    opcode: int  # 0 = QUERY
    rcode: int
    names: tuple[str, ...]  # the question names


def parse_message(payload: bytes) -> DnsMessage | None:
    """The header and question names of a DNS message, or None when it is malformed or cut
    short: a name past the end, a label over 63 bytes or of a reserved type, a name over 255
    bytes, a compression pointer that does not point back (which also stops loops)."""
    if len(payload) < _HEADER:
        return None
    flags = payload[2] << 8 | payload[3]
    count = payload[4] << 8 | payload[5]
    names: list[str] = []
    pos = _HEADER
    for _ in range(count):
        read = _read_name(payload, pos)
        if read is None:
            return None
        name, pos = read
        pos += 4  # QTYPE, QCLASS
        if pos > len(payload):
            return None
        names.append(name)
    return DnsMessage(
        id=payload[0] << 8 | payload[1],
        qr=bool(flags & 0x8000),
        opcode=flags >> 11 & 0xF,
        rcode=flags & 0xF,
        names=tuple(names),
    )


def _read_name(buf: bytes, pos: int) -> tuple[str, int] | None:
    """(text, offset after the name) for the name at `pos`."""
    labels: list[str] = []
    wire = 1  # the root's zero length byte
    end = -1  # where the name ends in the message: after its first pointer, if any
    floor = pos  # a pointer must go below where the current run of labels began
    size = len(buf)
    while True:
        if pos >= size:
            return None
        length = buf[pos]
        if length == 0:
            break
        if length >= 0xC0:  # compression pointer (RFC 1035 4.1.4)
            if pos + 1 >= size:
                return None
            target = (length & 0x3F) << 8 | buf[pos + 1]
            if target >= floor:  # forward or to itself: a loop or garbage
                return None
            if end < 0:
                end = pos + 2
            pos = floor = target
            continue
        if length > MAX_LABEL:  # 0x40 and 0x80 label types: extended (obsolete), reserved
            return None
        wire += 1 + length
        if wire > MAX_NAME_WIRE:
            return None
        # A label cut short leaves pos past the end: refused at the top of the loop.
        labels.append(_label_text(buf[pos + 1 : pos + 1 + length].lower()))
        pos += 1 + length
    return (".".join(labels) if labels else "."), (end if end >= 0 else pos + 1)


def _label_text(label: bytes) -> str:
    if _PLAIN(label):
        return label.decode("ascii")
    return "".join(_BYTE_TEXT[b] for b in label)


class DnsWatch:
    """Names and resolvers from the device's outbound queries, gathered between takes."""

    def __init__(self, *, max_names: int = 1000, max_resolvers: int = 64) -> None:
        if max_names < 1 or max_resolvers < 1:
            raise ValueError(
                f"max_names and max_resolvers must be >= 1, got {max_names} and {max_resolvers}"
            )
        self.max_names = max_names
        self.max_resolvers = max_resolvers
        self._names: set[str] = set()
        self._resolvers: set[bytes] = set()
        self._stats = dict.fromkeys(
            ("queries", "malformed", "cut", "ignored", "names_dropped", "resolvers_dropped"), 0
        )

    def feed(self, f: Frame) -> None:
        if not f.outgoing or f.proto != UDP or f.dport != DNS_PORT:
            return
        msg = parse_message(f.payload)
        if msg is None:
            # Cut by the snap length (a name near 255 bytes) or not DNS at all.
            self._stats["cut" if f.length > len(f.payload) else "malformed"] += 1
            return
        if msg.qr or msg.opcode != 0:
            self._stats["ignored"] += 1  # not a query: UPDATE, NOTIFY, a stray response
            return
        self._stats["queries"] += 1
        # Past the bound new names are dropped, not old ones: a flood of random names under
        # one domain (tunnelling, DGA) still shows that domain in the names kept.
        for name in msg.names:
            if name in self._names:
                continue
            if len(self._names) >= self.max_names:
                self._stats["names_dropped"] += 1
            else:
                self._names.add(name)
        if f.dst not in self._resolvers:
            if len(self._resolvers) >= self.max_resolvers:
                self._stats["resolvers_dropped"] += 1
            else:
                self._resolvers.add(f.dst)

    def take(self) -> tuple[list[str], list[str]]:
        """(names, resolvers) seen since the last take, sorted; resolvers by address."""
        names = sorted(self._names)
        resolvers = [ip_text(ip) for ip in sorted(self._resolvers, key=lambda ip: (len(ip), ip))]
        self._names = set()
        self._resolvers = set()
        return names, resolvers

    def stats(self) -> dict[str, int]:
        """Cumulative counts: queries taken in, payloads malformed or cut short, messages
        ignored, names and resolvers dropped because a take was full."""
        return dict(self._stats)

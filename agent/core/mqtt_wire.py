"""Incremental decoder of one direction of an MQTT 3.1.1 / 5.0 byte stream, for the
gateway broker watch (agent.core.broker_watch).

A `StreamDecoder` takes the bytes of one TCP direction in order (`feed`) and returns the
events the broker metrics need; `skip(n)` stands for n bytes the capture did not keep
(a snap length cut). It decodes only what it must:

- The fixed header (type, flags, remaining length: a varint of at most 4 bytes) frames
  every packet; framing does not depend on the protocol level.
- CONNECT (level, client id, username flag), CONNACK (code, MQTT 5 assigned client id),
  PUBLISH (topic, QoS, packet id, payload length; MQTT 5 properties skipped, topic aliases
  resolved per direction), PUBACK / PUBREC (MQTT 5 reason code), SUBSCRIBE (packet id,
  filters), SUBACK (codes), DISCONNECT (MQTT 5 reason) are decoded. The bodies of other
  packets stream by without being kept.
- A PUBLISH is decoded from its first bytes (header, topic, packet id, properties); its
  payload is only counted, never buffered, and may be missing from the capture: a `skip`
  that falls inside a payload costs nothing. So a capture cut to ~190 bytes of TCP
  payload a segment still yields topics and sizes, as long as each segment that starts a
  packet holds that packet's header and topic.
- Bytes kept for one packet are bounded (`max_head`); a packet whose decoded part would
  need more, or that declares more than `max_packet` bytes, is reported as a `Problem`
  and its bytes are skipped as they stream by, framing intact.

The protocol level is the one the client's CONNECT names. The client direction decodes
it itself; the broker direction is told (`level`) by whoever owns both. While the level
is unknown (no CONNECT seen) packets are framed but not decoded: MQTT 5 adds property
blocks that a 3.1.1 reading would take for payload, and guessing would count wrong bytes.

Malformed input (a bad varint, a reserved type or flag, a field running past its packet,
a CONNECT not first or twice, a packet the direction may not send, unknown properties,
invalid UTF-8) puts the decoder in an error state (`error` names what was wrong) and it
returns nothing more: MQTT has no sync marker to find the next packet by. `feed` never
raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

MAX_REMAINING = 268_435_455  # the largest remaining length a 4-byte varint holds
MAX_HEAD = 16 * 1024  # bytes kept to decode one packet (topic, filters, client id)
MAX_ALIASES = 1024  # topic aliases remembered per direction


class Type(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # MQTT 5 only


# Who may send what (MQTT 5 section 2.1.2); AUTH and DISCONNECT go both ways in MQTT 5.
FROM_CLIENT = frozenset(
    {
        Type.CONNECT,
        Type.PUBLISH,
        Type.PUBACK,
        Type.PUBREC,
        Type.PUBREL,
        Type.PUBCOMP,
        Type.SUBSCRIBE,
        Type.UNSUBSCRIBE,
        Type.PINGREQ,
        Type.DISCONNECT,
        Type.AUTH,
    }
)
FROM_BROKER = frozenset(
    {
        Type.CONNACK,
        Type.PUBLISH,
        Type.PUBACK,
        Type.PUBREC,
        Type.PUBREL,
        Type.PUBCOMP,
        Type.SUBACK,
        Type.UNSUBACK,
        Type.PINGRESP,
        Type.DISCONNECT,
        Type.AUTH,
    }
)
# The fixed header flags each type must carry (PUBLISH's are its own).
_FLAGS = {t: (2 if t in (Type.PUBREL, Type.SUBSCRIBE, Type.UNSUBSCRIBE) else 0) for t in Type}
# Types whose whole body is kept and decoded; CONNECT and PUBLISH are decoded from a prefix.
_WHOLE = frozenset({Type.CONNACK, Type.PUBACK, Type.PUBREC, Type.SUBSCRIBE, Type.SUBACK})
_DECODED = _WHOLE | {Type.CONNECT, Type.PUBLISH, Type.DISCONNECT}

# MQTT 5 property identifiers by value type (MQTT 5 section 2.2.2.2).
_PROP_BYTE = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_PROP_U16 = frozenset({0x13, 0x21, 0x22, 0x23})
_PROP_U32 = frozenset({0x02, 0x11, 0x18, 0x27})
_PROP_VARINT = frozenset({0x0B})
_PROP_STRING = frozenset({0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F})
_PROP_BINARY = frozenset({0x09, 0x16})
_PROP_PAIR = frozenset({0x26})
TOPIC_ALIAS = 0x23
ASSIGNED_CLIENT_ID = 0x12


@dataclass(frozen=True, slots=True)
class Connect:
    level: int  # 3 (3.1), 4 (3.1.1) or 5
    client_id: str
    username: bool
    keepalive_s: int


@dataclass(frozen=True, slots=True)
class ConnAck:
    code: int  # 3.1.1 return code or MQTT 5 reason code
    assigned_client_id: str | None  # MQTT 5, when the client sent an empty id


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str  # aliases resolved
    payload_len: int
    qos: int
    packet_id: int | None  # None for QoS 0


@dataclass(frozen=True, slots=True)
class PubAck:
    type: Type  # PUBACK or PUBREC
    packet_id: int
    code: int  # MQTT 5 reason code; 0 in 3.1.1


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Disconnect:
    code: int  # MQTT 5 reason code; 0 in 3.1.1


@dataclass(frozen=True, slots=True)
class Problem:
    """A packet framed but not decoded (too large, unknown topic alias); decoding goes on."""

    reason: str


Event = Connect | ConnAck | Publish | PubAck | Subscribe | SubAck | Disconnect | Problem


class _Short(Exception):
    """The packet's bytes kept so far end before the field: keep `need` bytes, then retry."""

    def __init__(self, need: int) -> None:
        self.need = need


class _Malformed(Exception):
    pass


class _Reader:
    """Reads fields from the kept prefix `buf` of a body of `end` bytes."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytearray, end: int) -> None:
        self.buf = buf
        self.end = end
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        stop = self.pos + n
        if stop > self.end:
            raise _Malformed(f"{what} runs past the end of the packet")
        if stop > len(self.buf):
            raise _Short(stop)
        out = bytes(self.buf[self.pos : stop])
        self.pos = stop
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def varint(self, what: str) -> int:
        value = 0
        for i in range(4):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return value
        raise _Malformed(f"{what}: a variable byte integer longer than 4 bytes")

    def binary(self, what: str) -> bytes:
        return self.take(self.u16(what), what)

    def string(self, what: str) -> str:
        try:
            return self.binary(what).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Malformed(f"{what} is not UTF-8") from e

    def properties(self) -> dict[int, int | str]:
        """An MQTT 5 property block: the single-valued numbers and strings by identifier
        (what the decoder needs: topic alias, assigned client id); the rest skipped."""
        length = self.varint("property length")
        stop = self.pos + length
        if stop > self.end:
            raise _Malformed("the properties run past the end of the packet")
        found: dict[int, int | str] = {}
        while self.pos < stop:
            ident = self.varint("property identifier")
            if ident in _PROP_BYTE:
                found[ident] = self.u8("property")
            elif ident in _PROP_U16:
                found[ident] = self.u16("property")
            elif ident in _PROP_U32:
                found[ident] = int.from_bytes(self.take(4, "property"), "big")
            elif ident in _PROP_VARINT:
                found[ident] = self.varint("property")
            elif ident in _PROP_STRING:
                found[ident] = self.string("property")
            elif ident in _PROP_BINARY:
                self.binary("property")
            elif ident in _PROP_PAIR:
                self.binary("user property name")
                self.binary("user property value")
            else:
                raise _Malformed(f"unknown property identifier 0x{ident:02x}")
        if self.pos != stop:
            raise _Malformed("a property runs past the end of the property block")
        return found


class StreamDecoder:
    """One direction of one MQTT connection. `from_client` says which: it decides which
    packets are legal and who names the protocol level."""

    def __init__(
        self,
        from_client: bool,
        *,
        level: int | None = None,
        max_head: int = MAX_HEAD,
        max_packet: int = MAX_REMAINING,
    ) -> None:
        self.from_client = from_client
        self.level = level  # 3, 4 or 5 once known; set from outside for the broker side
        self.error: str | None = None
        self._max_head = max_head
        self._max_packet = max_packet
        self._allowed = FROM_CLIENT if from_client else FROM_BROKER
        self._header = bytearray()  # the fixed header, while it is incomplete
        self._type: Type | None = None  # the packet being read
        self._flags = 0
        self._remaining = 0
        self._body = bytearray()  # kept bytes of the packet being decoded
        self._need = 0  # body bytes to keep before the next decode attempt
        self._skip = 0  # bytes of the current packet left to pass over
        self._packets = 0  # packets framed so far
        self._aliases: dict[int, str] = {}

    def feed(self, data: bytes) -> list[Event]:
        """Decode `data`, the next bytes of the stream. Never raises."""
        events: list[Event] = []
        try:
            self._feed(memoryview(data), events)
        except _Malformed as e:
            self._fail(str(e))
        return events

    def skip(self, n: int) -> bool:
        """The next `n` bytes of the stream were not captured. True when they fall inside
        a PUBLISH payload (or another body not decoded) and decoding goes on; False puts
        the decoder in the error state (it cannot know where the next packet starts)."""
        if self.error is not None:
            return False
        if not n:
            return True
        if n <= self._skip:
            self._skip -= n
            if not self._skip:
                self._type = None
            return True
        self._fail(f"{n} bytes missing from the capture inside a packet header")
        return False

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._body = bytearray()
        self._header = bytearray()

    def _feed(self, data: memoryview, events: list[Event]) -> None:
        i = 0
        end = len(data)
        while i < end and self.error is None:
            if self._skip:
                n = min(self._skip, end - i)
                self._skip -= n
                i += n
                if not self._skip:
                    self._type = None
            elif self._type is None:
                self._header.append(data[i])
                i += 1
                self._read_fixed_header(events)
            else:
                # keep what is at hand up to the bound, so one decode attempt usually does
                n = min(min(self._remaining, self._max_head) - len(self._body), end - i)
                self._body += data[i : i + n]
                i += n
                if len(self._body) >= self._need:
                    self._decode(events)

    def _read_fixed_header(self, events: list[Event]) -> None:
        header = self._header
        if len(header) < 2 or header[-1] & 0x80:
            if len(header) == 5:
                raise _Malformed("remaining length: a variable byte integer longer than 4 bytes")
            return
        remaining = 0
        for i, byte in enumerate(header[1:]):
            remaining |= (byte & 0x7F) << (7 * i)
        first = header[0]
        self._header = bytearray()
        kind, flags = first >> 4, first & 0x0F
        if kind == 0 or (kind == Type.AUTH and self.level is not None and self.level < 5):
            raise _Malformed(f"reserved packet type {kind}")
        ptype = Type(kind)
        if ptype not in self._allowed:
            side = "client" if self.from_client else "broker"
            raise _Malformed(f"a {side} does not send {ptype.name}")
        if ptype is Type.PUBLISH:
            if flags & 0x06 == 0x06:
                raise _Malformed("PUBLISH with QoS 3")
            if flags & 0x08 and not flags & 0x06:
                raise _Malformed("PUBLISH QoS 0 with DUP set")
        elif flags != _FLAGS[ptype]:
            raise _Malformed(f"{ptype.name} with fixed header flags {flags:#x}")
        if self.from_client and (ptype is Type.CONNECT) != (self._packets == 0):
            raise _Malformed("CONNECT must be the client's first packet, and only once")
        if not self.from_client and ptype is Type.CONNACK and self._packets:
            raise _Malformed("CONNACK after the broker's first packet")
        self._packets += 1
        self._type, self._flags, self._remaining = ptype, flags, remaining
        self._body = bytearray()
        self._need = 0
        decode = False
        if remaining > self._max_packet:
            events.append(Problem(f"{ptype.name} of {remaining} bytes, over {self._max_packet}"))
        elif ptype not in _DECODED or (self.level is None and ptype is not Type.CONNECT):
            pass  # framed only
        elif ptype not in _WHOLE:
            decode = True
            self._need = min(remaining, 2)  # decoded from a prefix, field by field
        elif remaining <= self._max_head:
            decode = True
            self._need = remaining
        else:
            events.append(Problem(f"{ptype.name} of {remaining} bytes, not kept"))
        if not decode:
            self._skip = remaining
            if not remaining:
                self._type = None
        elif not self._need:
            self._decode(events)

    def _decode(self, events: list[Event]) -> None:
        """Decode the packet from the body kept so far, or say how much more to keep."""
        assert self._type is not None
        reader = _Reader(self._body, self._remaining)
        try:
            event = self._parse(self._type, reader)
        except _Short as short:
            if short.need > self._max_head:
                events.append(Problem(f"{self._type.name} header over {self._max_head} bytes"))
                self._skip = self._remaining - len(self._body)
                self._body = bytearray()
                if not self._skip:
                    self._type = None
            else:
                self._need = short.need
            return
        events.append(event)
        self._skip = self._remaining - len(self._body)
        self._body = bytearray()
        if not self._skip:
            self._type = None

    def _parse(self, ptype: Type, r: _Reader) -> Event:
        v5 = self.level == 5
        if ptype is Type.PUBLISH:
            return self._publish(r, v5)
        if ptype is Type.CONNECT:
            return self._connect(r)
        if ptype is Type.CONNACK:
            r.u8("CONNACK flags")
            code = r.u8("CONNACK code")
            props = r.properties() if v5 and r.pos < r.end else {}
            assigned = props.get(ASSIGNED_CLIENT_ID)
            return ConnAck(code, assigned if isinstance(assigned, str) else None)
        if ptype in (Type.PUBACK, Type.PUBREC):
            packet_id = r.u16("packet id")
            code = r.u8("reason code") if v5 and r.pos < r.end else 0
            if v5 and r.pos < r.end:
                r.properties()
            self._at_end(r, ptype)
            return PubAck(ptype, packet_id, code)
        if ptype is Type.SUBSCRIBE:
            packet_id = r.u16("packet id")
            if v5:
                r.properties()
            filters = []
            while r.pos < r.end:
                filters.append(r.string("topic filter"))
                r.u8("subscription options")
            if not filters:
                raise _Malformed("SUBSCRIBE without a topic filter")
            return Subscribe(packet_id, tuple(filters))
        if ptype is Type.SUBACK:
            packet_id = r.u16("packet id")
            if v5:
                r.properties()
            codes = r.take(r.end - r.pos, "SUBACK codes")
            return SubAck(packet_id, tuple(codes))
        # DISCONNECT
        code = r.u8("reason code") if v5 and r.pos < r.end else 0
        if v5 and r.pos < r.end:
            r.properties()
        self._at_end(r, ptype)
        return Disconnect(code)

    @staticmethod
    def _at_end(r: _Reader, ptype: Type) -> None:
        if r.pos != r.end:
            raise _Malformed(f"{ptype.name} has {r.end - r.pos} bytes too many")

    def _connect(self, r: _Reader) -> Connect:
        name = r.string("protocol name")
        level = r.u8("protocol level")
        if (name, level) not in (("MQIsdp", 3), ("MQTT", 4), ("MQTT", 5)):
            raise _Malformed(f"unsupported protocol {name!r} level {level}")
        flags = r.u8("connect flags")
        if flags & 0x01:
            raise _Malformed("CONNECT with the reserved flag set")
        keepalive = r.u16("keep alive")
        if level == 5:
            r.properties()
        client_id = r.string("client id")
        self.level = level
        return Connect(level, client_id, bool(flags & 0x80), keepalive)

    def _publish(self, r: _Reader, v5: bool) -> Event:
        qos = (self._flags >> 1) & 0x03
        topic = r.string("topic")
        packet_id = None
        if qos:
            packet_id = r.u16("packet id")
            if not packet_id:
                raise _Malformed("PUBLISH with packet id 0")
        alias = r.properties().get(TOPIC_ALIAS) if v5 else None
        payload_len = r.end - r.pos
        if alias is not None:
            assert isinstance(alias, int)
            if not alias:
                raise _Malformed("topic alias 0")
            if topic:
                if alias in self._aliases or len(self._aliases) < MAX_ALIASES:
                    self._aliases[alias] = topic
            elif alias in self._aliases:
                topic = self._aliases[alias]
            else:
                return Problem(f"PUBLISH with unknown topic alias {alias}")
        elif not topic:
            raise _Malformed("PUBLISH with an empty topic and no alias")
        if "+" in topic or "#" in topic:
            raise _Malformed(f"PUBLISH to a wildcard topic {topic!r}")
        return Publish(topic, payload_len, qos, packet_id)

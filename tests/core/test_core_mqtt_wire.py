"""The MQTT stream decoder on packets built by hand, 3.1.1 and 5 (properties, topic
aliases), fed whole, byte by byte and split at every boundary. The builders here are also
used by the broker watch tests."""

from __future__ import annotations

import pytest

from agent.core.mqtt_wire import (
    ConnAck,
    Connect,
    Disconnect,
    Event,
    Problem,
    PubAck,
    Publish,
    StreamDecoder,
    SubAck,
    Subscribe,
    Type,
)

# -- builders -----------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return varint(len(body)) + body


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


# A few MQTT 5 properties of every value type, to be skipped.
ALIAS = 0x23
SOME_PROPS = (
    bytes([0x01, 1])  # payload format indicator
    + bytes([0x02]) + (60).to_bytes(4, "big")  # message expiry interval
    + bytes([0x03]) + string("text/plain")  # content type
    + bytes([0x09]) + string(b"\x00\x01corr")  # correlation data
    + bytes([0x0B]) + varint(300)  # subscription identifier
    + bytes([0x26]) + string("k") + string("v" * 40)  # user property
)  # fmt: skip


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([ptype << 4 | flags]) + varint(len(body)) + body


def connect(
    client_id: str,
    *,
    level: int = 4,
    username: str | None = None,
    password: str = "secret",
    keepalive: int = 60,
) -> bytes:
    flags = 0x02 | (0xC0 if username is not None else 0)
    body = string("MQTT") + bytes([level, flags]) + u16(keepalive)
    if level == 5:
        body += props(bytes([0x11]) + (0).to_bytes(4, "big"), bytes([0x22]) + u16(10))
    body += string(client_id)
    if username is not None:
        body += string(username) + string(password)
    return packet(1, 0, body)


def connack(code: int, *, v5: bool = False, assigned: str | None = None) -> bytes:
    body = bytes([0, code])
    if v5:
        body += props(bytes([0x12]) + string(assigned) if assigned else b"", bytes([0x22, 0, 10]))
    return packet(2, 0, body)


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int = 1,
    v5: bool = False,
    alias: int | None = None,
    extra_props: bytes = b"",
) -> bytes:
    body = string(topic)
    if qos:
        body += u16(packet_id)
    if v5:
        body += props(extra_props, bytes([ALIAS]) + u16(alias) if alias is not None else b"")
    return packet(3, qos << 1, body + payload)


def puback(packet_id: int, code: int | None = None, *, ptype: int = 4) -> bytes:
    body = u16(packet_id)
    if code is not None:
        body += bytes([code]) + props(bytes([0x1F]) + string("reason"))
    return packet(ptype, 0, body)


def subscribe(packet_id: int, *filters: str, v5: bool = False) -> bytes:
    body = u16(packet_id) + (props(bytes([0x0B]) + varint(7)) if v5 else b"")
    body += b"".join(string(f) + b"\x01" for f in filters)
    return packet(8, 2, body)


def suback(packet_id: int, *codes: int, v5: bool = False) -> bytes:
    return packet(9, 0, u16(packet_id) + (props() if v5 else b"") + bytes(codes))


def disconnect(code: int | None = None) -> bytes:
    return packet(14, 0, b"" if code is None else bytes([code]) + props())


PINGREQ = packet(12, 0, b"")


# -- helpers ------------------------------------------------------------------------


def decode(data: bytes, *, from_client: bool = True, level: int | None = None) -> list[Event]:
    d = StreamDecoder(from_client, level=level)
    events = d.feed(data)
    assert d.error is None, d.error
    return events


def decode_split(
    data: bytes, *, from_client: bool = True, level: int | None = None
) -> list[list[Event]]:
    """The events of `data` fed in two parts, for every split point, and byte by byte."""
    results = []
    for cut in range(len(data) + 1):
        d = StreamDecoder(from_client, level=level)
        results.append(d.feed(data[:cut]) + d.feed(data[cut:]))
        assert d.error is None, (cut, d.error)
    d = StreamDecoder(from_client, level=level)
    results.append([e for i in range(len(data)) for e in d.feed(data[i : i + 1])])
    return results


# -- 3.1.1 --------------------------------------------------------------------------

CLIENT_V3 = (
    connect("dev-1", username="alice")
    + publish("a/b", b"x" * 300, qos=1, packet_id=7)
    + PINGREQ
    + subscribe(8, "a/#", "c/+")
    + publish("q0", b"")
    + disconnect()
)
CLIENT_V3_EVENTS: list[Event] = [
    Connect(4, "dev-1", True, 60),
    Publish("a/b", 300, 1, 7),
    Subscribe(8, ("a/#", "c/+")),
    Publish("q0", 0, 0, None),
    Disconnect(0),
]


def test_client_stream_v3_at_every_split() -> None:
    assert decode(CLIENT_V3) == CLIENT_V3_EVENTS
    for events in decode_split(CLIENT_V3):
        assert events == CLIENT_V3_EVENTS


def test_broker_stream_v3() -> None:
    stream = connack(0) + puback(7) + suback(8, 1, 0x80) + publish("down", b"hi", qos=1)
    want = [
        ConnAck(0, None),
        PubAck(Type.PUBACK, 7, 0),
        SubAck(8, (1, 0x80)),
        Publish("down", 2, 1, 1),
    ]
    for events in decode_split(stream, from_client=False, level=4):
        assert events == want


def test_broker_stream_is_framed_only_while_the_level_is_unknown() -> None:
    stream = connack(0) + publish("down", b"hi") + suback(8, 1)
    d = StreamDecoder(False)
    assert d.feed(stream) == []
    assert d.error is None
    d.level = 4  # framing kept in step: decoding starts at the next packet
    assert d.feed(publish("t", b"abc")) == [Publish("t", 3, 0, None)]


def test_mqtt_3_1_connect() -> None:
    body = string("MQIsdp") + bytes([3, 0x02]) + u16(10) + string("old")
    assert decode(packet(1, 0, body)) == [Connect(3, "old", False, 10)]


# -- 5.0 ----------------------------------------------------------------------------

CLIENT_V5 = (
    connect("dev-5", level=5)
    + publish("sensors/t", b"12345", qos=1, packet_id=1, v5=True, alias=3, extra_props=SOME_PROPS)
    + publish("", b"678", v5=True, alias=3)  # the alias alone names the topic
    + publish("other", b"", qos=2, packet_id=2, v5=True)
    + subscribe(9, "cmd/#", v5=True)
    + puback(77, 0x10)  # acking the broker's publish, with a reason and properties
    + disconnect(0x04)
)
CLIENT_V5_EVENTS: list[Event] = [
    Connect(5, "dev-5", False, 60),
    Publish("sensors/t", 5, 1, 1),
    Publish("sensors/t", 3, 0, None),
    Publish("other", 0, 2, 2),
    Subscribe(9, ("cmd/#",)),
    PubAck(Type.PUBACK, 77, 0x10),
    Disconnect(0x04),
]


def test_client_stream_v5_with_properties_and_aliases_at_every_split() -> None:
    for events in decode_split(CLIENT_V5):
        assert events == CLIENT_V5_EVENTS


def test_broker_stream_v5() -> None:
    stream = (
        connack(0, v5=True, assigned="auto-1")
        + puback(1, 0x87)
        + puback(2, 0x87, ptype=5)
        + puback(3)  # MQTT 5 allows the reason code left out: success
        + suback(9, 0x87, 1, v5=True)
        + publish("in/x", b"abc", v5=True, alias=1, extra_props=SOME_PROPS)
        + publish("", b"de", v5=True, alias=1)
        + disconnect(0x8E)
    )
    want = [
        ConnAck(0, "auto-1"),
        PubAck(Type.PUBACK, 1, 0x87),
        PubAck(Type.PUBREC, 2, 0x87),
        PubAck(Type.PUBACK, 3, 0),
        SubAck(9, (0x87, 1)),
        Publish("in/x", 3, 0, None),
        Publish("in/x", 2, 0, None),
        Disconnect(0x8E),
    ]
    for events in decode_split(stream, from_client=False, level=5):
        assert events == want


def test_aliases_are_per_direction() -> None:
    up = StreamDecoder(True)
    down = StreamDecoder(False, level=5)
    up.feed(connect("c", level=5) + publish("mine", b"", v5=True, alias=1))
    assert down.feed(publish("", b"", v5=True, alias=1)) == [
        Problem("PUBLISH with unknown topic alias 1")
    ]
    assert up.feed(publish("", b"z", v5=True, alias=1)) == [Publish("mine", 1, 0, None)]
    # a new topic for an alias replaces the old one
    assert up.feed(publish("new", b"", v5=True, alias=1) + publish("", b"", v5=True, alias=1)) == [
        Publish("new", 0, 0, None),
        Publish("new", 0, 0, None),
    ]


# -- bounds, gaps and errors -----------------------------------------------------------


def test_payload_bytes_missing_from_the_capture_are_skipped() -> None:
    d = StreamDecoder(True)
    big = publish("t/big", b"p" * 5000, qos=1, packet_id=4)
    d.feed(connect("c"))
    # the capture kept the first 40 bytes only
    assert d.feed(big[:40]) == [Publish("t/big", 5000, 1, 4)]
    assert d.skip(len(big) - 40)
    assert d.feed(PINGREQ + publish("after", b"1")) == [Publish("after", 1, 0, None)]


def test_bytes_missing_inside_a_header_are_a_gap() -> None:
    d = StreamDecoder(True)
    d.feed(connect("c"))
    p = publish("t", b"x" * 100)
    d.feed(p[:2])  # fixed header only, the topic is missing
    assert not d.skip(len(p) - 2)
    assert d.error is not None and "missing from the capture" in d.error
    assert d.feed(publish("t", b"")) == []


def test_gap_at_a_packet_boundary_cannot_be_skipped() -> None:
    d = StreamDecoder(True)
    d.feed(connect("c") + publish("t", b"x"))
    assert d.skip(0)
    assert not d.skip(10)


def test_oversized_packets_are_skipped_not_kept() -> None:
    d = StreamDecoder(True, max_head=64)
    d.feed(connect("c"))
    sub = subscribe(1, *[f"f/{i}" for i in range(30)])
    events = d.feed(sub + publish("t" * 100, b"") + publish("ok", b"1"))
    assert events == [
        Problem(f"SUBSCRIBE of {len(sub) - 3} bytes, not kept"),
        Problem("PUBLISH header over 64 bytes"),
        Publish("ok", 1, 0, None),
    ]
    assert d.error is None


def test_a_declared_length_over_the_packet_limit_streams_by() -> None:
    d = StreamDecoder(True, max_packet=1000)
    d.feed(connect("c"))
    huge = bytes([0x30]) + varint(100_000)
    assert d.feed(huge) == [Problem("PUBLISH of 100000 bytes, over 1000")]
    assert d.skip(99_000)  # nothing of it is kept, even when captured
    assert d.feed(b"\0" * 1000 + publish("next", b"")) == [Publish("next", 0, 0, None)]


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), "longer than 4 bytes"),
        (publish("t", b""), "CONNECT must be the client's first packet"),
        (connect("c") + connect("c"), "CONNECT must be the client's first packet"),
        (connect("c") + connack(0), "a client does not send CONNACK"),
        (connect("c") + bytes([0x00, 0x00]), "reserved packet type 0"),
        (connect("c") + bytes([0xF0, 0x00]), "reserved packet type 15"),
        (connect("c") + packet(8, 0, u16(1) + string("a") + b"\0"), "SUBSCRIBE with fixed"),
        (connect("c") + packet(3, 6, string("a")), "QoS 3"),
        (connect("c") + packet(3, 8, string("a")), "QoS 0 with DUP"),
        (connect("c") + packet(3, 2, string("a") + u16(0)), "packet id 0"),
        (connect("c") + packet(3, 0, string("a/+")), "wildcard topic"),
        (connect("c") + packet(3, 0, string(b"\xff\xfe")), "not UTF-8"),
        (connect("c") + packet(3, 0, b"\x00\x09ab"), "topic runs past the end"),
        (connect("c") + packet(8, 2, u16(1)), "SUBSCRIBE without a topic filter"),
        (connect("c") + packet(14, 0, b"\x00"), "DISCONNECT has 1 bytes too many"),
        (packet(1, 0, string("MQTT") + bytes([6, 2]) + u16(1) + string("c")), "level 6"),
        (packet(1, 0, string("MQTT") + bytes([4, 3]) + u16(1) + string("c")), "reserved flag"),
        (connect("c", level=5) + packet(3, 0, string("a") + b"\x02\x7f\x00"), "identifier 0x7f"),
        (connect("c", level=5) + packet(3, 0, string("a") + b"\x05\x23\x00\x01"), "properties"),
        (connect("c", level=5) + packet(3, 0, string("") + props()), "empty topic and no alias"),
        (connect("c", level=5) + publish("a", b"", v5=True, alias=0), "topic alias 0"),
    ],
)
def test_malformed_input_is_an_error_state_never_an_exception(stream: bytes, reason: str) -> None:
    for cut in range(len(stream) + 1):
        d = StreamDecoder(True)
        d.feed(stream[:cut])
        d.feed(stream[cut:])
        assert d.error is not None and reason in d.error, (cut, d.error)
        assert d.feed(connect("c") + publish("t", b"")) == []


def test_broker_may_not_connack_twice() -> None:
    d = StreamDecoder(False, level=4)
    d.feed(connack(0) + connack(0))
    assert d.error == "CONNACK after the broker's first packet"


def test_v3_reason_codes_are_not_read() -> None:
    d = StreamDecoder(False, level=4)
    d.feed(puback(1, 0x87))
    assert d.error is not None and "PUBACK has" in d.error

"""Fuzzed MQTT streams and TCP segments: the decoder and the broker watch never raise, a
valid stream decodes the same however it is cut, and the watch's books stay consistent."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.broker_watch import BrokerWatch
from agent.core.mqtt_wire import StreamDecoder
from agent.core.packet import ACK, FIN, PSH, RST, SYN, TCP, Frame
from tests.core.test_core_mqtt_wire import (
    PINGREQ,
    SOME_PROPS,
    connack,
    connect,
    disconnect,
    puback,
    publish,
    suback,
    subscribe,
)

topics = st.text(
    st.characters(blacklist_characters="+#\x00", codec="utf-8"), min_size=1, max_size=20
)


@st.composite
def up_packets(draw: st.DrawFn, v5: bool) -> list[bytes]:
    out = [connect(draw(st.text(max_size=8)), level=5 if v5 else 4, username="u")]
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["pub", "sub", "ack", "ping"]))
        pid = draw(st.integers(1, 65535))
        if kind == "pub":
            alias = draw(st.none() | st.integers(1, 4)) if v5 else None
            props = draw(st.sampled_from([b"", SOME_PROPS])) if v5 else b""
            payload = draw(st.binary(max_size=300))
            out.append(
                publish(
                    draw(topics),
                    payload,
                    qos=draw(st.integers(0, 2)),
                    packet_id=pid,
                    v5=v5,
                    alias=alias,
                    extra_props=props,
                )
            )
        elif kind == "sub":
            out.append(subscribe(pid, *draw(st.lists(topics, min_size=1, max_size=3)), v5=v5))
        elif kind == "ack":
            out.append(puback(pid, draw(st.integers(0, 255)) if v5 else None))
        else:
            out.append(PINGREQ)
    if draw(st.booleans()):
        out.append(disconnect(0 if v5 else None))
    return out


@st.composite
def down_packets(draw: st.DrawFn, v5: bool) -> list[bytes]:
    out = [connack(draw(st.sampled_from([0, 4, 5, 0x86, 0x87])), v5=v5)]
    for _ in range(draw(st.integers(0, 4))):
        pid = draw(st.integers(1, 65535))
        kind = draw(st.sampled_from(["ack", "suback", "pub"]))
        if kind == "ack":
            out.append(puback(pid, draw(st.sampled_from([0, 0x87]))) if v5 else puback(pid))
        elif kind == "suback":
            out.append(
                suback(pid, *draw(st.lists(st.sampled_from([0, 1, 0x80, 0x87]), min_size=1)), v5=v5)
            )
        else:
            out.append(publish(draw(topics), draw(st.binary(max_size=50)), v5=v5))
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=400),
    points=st.lists(st.integers(0, 400), max_size=8),
    from_client=st.booleans(),
    level=st.sampled_from([None, 3, 4, 5]),
    holes=st.lists(st.integers(0, 2000), max_size=3),
)
def test_random_bytes_never_raise(
    data: bytes, points: list[int], from_client: bool, level: int | None, holes: list[int]
) -> None:
    d = StreamDecoder(from_client, level=level, max_head=64, max_packet=10_000)
    for i, piece in enumerate(cut(data, points)):
        assert isinstance(d.feed(piece), list)
        if i < len(holes):
            d.skip(holes[i])
    assert d.error is None or isinstance(d.error, str)


@settings(max_examples=200, deadline=None)
@given(
    v5=st.booleans(),
    data=st.data(),
    points=st.lists(st.integers(0, 5000), max_size=10),
)
def test_a_valid_stream_decodes_the_same_however_it_is_cut(
    v5: bool, data: st.DataObject, points: list[int]
) -> None:
    stream = b"".join(data.draw(up_packets(v5)))
    whole = StreamDecoder(True)
    want = whole.feed(stream)
    assert whole.error is None, whole.error
    pieces = StreamDecoder(True)
    assert [e for piece in cut(stream, points) for e in pieces.feed(piece)] == want


@settings(max_examples=300, deadline=None)
@given(
    v5=st.booleans(),
    data=st.data(),
    mutations=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=4),
    points=st.lists(st.integers(0, 5000), max_size=6),
)
def test_a_mutated_stream_never_raises(
    v5: bool, data: st.DataObject, mutations: list[tuple[int, int]], points: list[int]
) -> None:
    stream = bytearray(b"".join(data.draw(up_packets(v5))))
    for pos, value in mutations:
        stream[pos % len(stream)] = value
    d = StreamDecoder(True)
    for piece in cut(bytes(stream), points):
        d.feed(piece)


segments = st.tuples(
    st.booleans(),  # up
    st.sampled_from([0, SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST, FIN | SYN | RST]),
    st.integers(-50, 400),  # seq offset from the direction's ISN
    st.integers(0, 5000),  # where in the direction's stream the payload comes from
    st.integers(0, 200),  # payload size
    st.integers(0, 100),  # bytes cut by the snap length
    st.integers(0, 2),  # flow
)


@settings(max_examples=300, deadline=None)
@given(
    v5=st.booleans(),
    data=st.data(),
    frames=st.lists(segments, max_size=40),
    takes=st.lists(st.floats(0, 10_000), max_size=3),
)
def test_the_watch_never_raises_on_random_segments(
    v5: bool,
    data: st.DataObject,
    frames: list[tuple[bool, int, int, int, int, int, int]],
    takes: list[float],
) -> None:
    """Segments cut from real session bytes (and from noise) at random sequence numbers,
    flags and snap lengths, on a few flows, with takes in between."""
    up = b"".join(data.draw(up_packets(v5))) + data.draw(st.binary(max_size=50))
    down = b"".join(data.draw(down_packets(v5)))
    watch = BrokerWatch([1883], max_flows=2, max_clients=2, max_topics=3)
    isn = {True: 0xFFFFFFF0, False: 7}
    client, broker = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
    for i, (is_up, flags, offset, start, size, snap, flow) in enumerate(frames):
        stream = up if is_up else down
        start %= len(stream) + 1
        payload = stream[start : start + size]
        seq = (isn[is_up] + 1 + start + offset % 3 - 1) & 0xFFFFFFFF
        if flags & SYN:
            seq = isn[is_up]
        kept = payload[: max(0, len(payload) - snap)]
        src, dst, sport, dport = client, broker, 40000 + flow, 1883
        if not is_up:
            src, dst, sport, dport = dst, src, dport, sport
        watch.feed(
            Frame(float(i), not is_up, src, dst, TCP, sport, dport, flags, seq, kept, len(payload))
        )
        if i < len(takes):
            watch.take(takes[i])
    taken = watch.take(20_000.0)
    stats = watch.stats()
    assert all(v >= 0 for v in stats.values()), stats
    assert stats["flows"] <= 2 and stats["clients"] <= 2
    for metrics in taken.values():
        assert isinstance(metrics["aws:num-connection-attempts"], int)
        assert metrics["aws:num-connection-attempts"] >= 0

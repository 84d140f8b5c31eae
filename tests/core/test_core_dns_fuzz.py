"""Fuzzed DNS payloads: parse_message never raises, whatever the bytes, and what it returns
keeps its promises; names built from labels come back as written, with or without
compression."""

from __future__ import annotations

import struct

from hypothesis import assume, example, given
from hypothesis import strategies as st

from agent.core.dns import DnsMessage, parse_message

QTAIL = struct.pack("!HH", 1, 1)


def check(msg: DnsMessage | None) -> None:
    if msg is None:
        return
    assert 0 <= msg.id <= 0xFFFF and 0 <= msg.opcode <= 15 and 0 <= msg.rcode <= 15
    for name in msg.names:
        assert name == "." or (name and not name.endswith(".") and ".." not in name)
        assert name == name.lower()
        # 255 wire bytes at most; each "\\DDD" escape stands for one byte.
        labels = [] if name == "." else name.split(".")
        assert sum(1 + len(x) - 3 * x.count("\\") for x in labels) + 1 <= 255


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    check(parse_message(payload))


# Bodies made of the pieces names are made of, so pointers, labels and ends meet often.
_piece = st.one_of(
    st.integers(0, 0x3FFF).map(lambda off: struct.pack("!H", 0xC000 | off % 200)),
    st.binary(min_size=1, max_size=70).map(lambda b: bytes((len(b) % 64,)) + b),
    st.sampled_from([b"\0", QTAIL, b"\x40", b"\x80", b"\xff", b"\x3f" + b"a" * 63]),
)


@given(st.integers(0, 8), st.lists(_piece, max_size=40))
def test_name_shaped_garbage_never_raises(qdcount: int, pieces: list[bytes]) -> None:
    payload = struct.pack("!6H", 1, 0x0100, qdcount, 0, 0, 0) + b"".join(pieces)
    check(parse_message(payload))


_label = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1)
_name = st.lists(_label.filter(lambda s: len(s) <= 63), min_size=1, max_size=6).filter(
    lambda labels: sum(len(x) + 1 for x in labels) + 1 <= 255
)


def wire(labels: list[str]) -> bytes:
    return b"".join(bytes((len(x),)) + x.encode() for x in labels)


@given(_name, _name, st.integers(0, 5))
def test_names_come_back_as_written_with_compression(
    first: list[str], second: list[str], shared: int
) -> None:
    """The second name is its own labels then a pointer to a suffix of the first."""
    shared = min(shared, len(first))
    keep = len(first) - shared  # the first name's labels before the shared suffix
    assume(sum(len(x) + 1 for x in second + first[keep:]) + 1 <= 255)
    suffix_at = 12 + sum(len(x) + 1 for x in first[:keep])
    tail = struct.pack("!H", 0xC000 | suffix_at) if shared else b"\0"
    payload = (
        struct.pack("!6H", 9, 0x0100, 2, 0, 0, 0)
        + wire(first)
        + b"\0"
        + QTAIL
        + wire(second)
        + tail
        + QTAIL
    )
    msg = parse_message(payload)
    assert msg is not None
    assert msg.names == (".".join(first).lower(), ".".join(second + first[keep:]).lower())


@given(st.data())
def test_every_single_byte_change_of_a_query_never_raises(data: st.DataObject) -> None:
    payload = bytearray(struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x03www\x07example\0")
    payload += QTAIL
    at = data.draw(st.integers(0, len(payload) - 1))
    payload[at] = data.draw(st.integers(0, 255))
    check(parse_message(bytes(payload)))


@given(st.integers(1, 10), st.integers(1, 63), st.booleans())
@example(5, 50, False)  # 256 bytes: one too many
@example(2, 63, True)  # 4 * 64 + 1 = 257 through the pointer
def test_names_over_255_bytes_are_refused(count: int, size: int, via_pointer: bool) -> None:
    labels = (bytes((size,)) + b"x" * size) * count
    size_wire = count * (size + 1) + 1
    if via_pointer:  # the same name, half of it reached through a pointer to question 1
        head = struct.pack("!6H", 1, 0x0100, 2, 0, 0, 0) + labels + b"\0" + QTAIL
        payload = head + labels + struct.pack("!H", 0xC000 | 12) + QTAIL
        size_wire += count * (size + 1)
    else:
        payload = struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + labels + b"\0" + QTAIL
    msg = parse_message(payload)
    assert (msg is not None) is (size_wire <= 255)

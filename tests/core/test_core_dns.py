"""DNS: question names from real query bytes (compression, loops, truncation, bounds),
DnsWatch's names and resolvers between takes, and the domain suffix rule."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from agent.core.dns import DnsMessage, DnsWatch, parse_message
from agent.core.packet import TCP, UDP, Frame

DEV = ipaddress.ip_address("192.0.2.1").packed


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def header(ident: int = 0x1234, flags: int = 0x0100, qdcount: int = 1) -> bytes:
    return struct.pack("!6H", ident, flags, qdcount, 0, 0, 0)


def name(text: str) -> bytes:
    """Wire form without compression; "" is the root."""
    out = b"".join(bytes((len(label),)) + label for label in text.encode().split(b".") if label)
    return out + b"\0"


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


QTYPE_A_IN = struct.pack("!HH", 1, 1)


def query(*names: str, ident: int = 0x1234, flags: int = 0x0100) -> bytes:
    return header(ident, flags, len(names)) + b"".join(name(n) + QTYPE_A_IN for n in names)


def test_a_query_parses() -> None:
    assert parse_message(query("WWW.Example.COM", ident=0xBEEF)) == DnsMessage(
        id=0xBEEF, qr=False, opcode=0, rcode=0, names=("www.example.com",)
    )


def test_a_response_header() -> None:
    msg = parse_message(query("example.com", flags=0x8183))  # response, RD RA, NXDOMAIN
    assert msg is not None
    assert (msg.qr, msg.opcode, msg.rcode) == (True, 0, 3)


def test_idna_stays_ascii_and_the_root_is_a_dot() -> None:
    msg = parse_message(query("xn--bcher-kva.Example", ""))
    assert msg is not None
    assert msg.names == ("xn--bcher-kva.example", ".")


def test_odd_bytes_in_labels_are_escaped_so_names_stay_distinct() -> None:
    payload = header() + b"\x03a.b\x03c\\d\x02\xc3\xa9\x00" + QTYPE_A_IN
    msg = parse_message(payload)
    assert msg is not None
    assert msg.names == ("a\\046b.c\\092d.\\195\\169",)


def test_compression_pointers_back_to_earlier_names() -> None:
    first = name("www.example.com")  # at offset 12; "example.com" at 16
    second = b"\x04mail" + ptr(16)  # mail.example.com
    third = ptr(12 + len(first) + 4)  # the whole second name: a pointer to a pointer
    fourth = b"\x03ftp" + ptr(16)  # read from where the third ended
    questions = (first, second, third, fourth)
    payload = header(qdcount=4) + b"".join(q + QTYPE_A_IN for q in questions)
    msg = parse_message(payload)
    assert msg is not None
    assert msg.names == (
        "www.example.com",
        "mail.example.com",
        "mail.example.com",
        "ftp.example.com",
    )


@pytest.mark.parametrize(
    "question",
    [
        ptr(12),  # to itself
        b"\x01a" + ptr(12),  # back to its own start: a loop through a label
        ptr(14) + b"\0",  # forward
        b"\x01a" + ptr(200),  # past the end
    ],
)
def test_pointer_loops_and_forward_pointers_are_refused(question: bytes) -> None:
    assert parse_message(header() + question + QTYPE_A_IN) is None


def test_two_pointers_pointing_at_each_other_are_refused() -> None:
    # Question 1 at 12 is the root; question 2 at 17 points at 19, which points at 17.
    payload = header(qdcount=2) + b"\x00" + QTYPE_A_IN + ptr(19) + ptr(17) + QTYPE_A_IN
    assert parse_message(payload) is None


def test_every_truncation_of_a_query_is_refused() -> None:
    payload = query("www.example.com", "mail.example.org")
    assert parse_message(payload) is not None
    for cut in range(len(payload)):
        assert parse_message(payload[:cut]) is None, cut


def test_label_and_name_length_bounds() -> None:
    assert parse_message(header() + b"\x3f" + b"a" * 63 + b"\0" + QTYPE_A_IN) is not None
    for kind in (0x40, 0x80):  # extended and reserved label types, with bytes enough
        label = bytes((kind | 1,)) + b"a" * (kind | 1)
        assert parse_message(header() + label + b"\0" + QTYPE_A_IN) is None
    # 4 labels of 63 + 1 label of 1: 4*64 + 2 + 1 = 259 wire bytes > 255.
    too_long = b"\x3f" + b"a" * 63
    assert parse_message(header() + too_long * 4 + b"\x01a\0" + QTYPE_A_IN) is None
    # 3 of 63 + one of 61: 3*64 + 62 + 1 = 255 bytes: the longest name there is.
    longest = header() + too_long * 3 + b"\x3d" + b"b" * 61 + b"\0" + QTYPE_A_IN
    msg = parse_message(longest)
    assert msg is not None
    assert len(msg.names[0]) == 253
    # The bound holds across pointers too.
    suffix = too_long * 3 + b"\0"  # 193 bytes at offset 12, followed by a question tail
    over = b"\x3f" + b"c" * 63 + ptr(12)  # 64 + 193 = 257
    payload = header(qdcount=2) + suffix + QTYPE_A_IN + over + QTYPE_A_IN
    assert parse_message(payload) is None


def test_short_header_and_garbage() -> None:
    assert parse_message(b"") is None
    assert parse_message(b"\x00" * 11) is None
    assert parse_message(header(qdcount=0)) == DnsMessage(0x1234, False, 0, 0, ())
    assert parse_message(header(qdcount=5) + b"\x00" * 5) is None


def test_scapy_built_query_and_response() -> None:
    scapy = pytest.importorskip("scapy.all")
    q = scapy.DNS(id=7, rd=1, qd=scapy.DNSQR(qname="Telemetry.Example.NET."))
    assert parse_message(bytes(q)) == DnsMessage(7, False, 0, 0, ("telemetry.example.net",))
    r = scapy.DNS(
        id=7,
        qr=1,
        rcode=3,
        qd=scapy.DNSQR(qname="telemetry.example.net"),
        an=scapy.DNSRR(rrname="telemetry.example.net", rdata="192.0.2.9"),
    )
    assert parse_message(bytes(r)) == DnsMessage(7, True, 0, 3, ("telemetry.example.net",))


def out_query(ts: float, resolver: str, *names: str, flags: int = 0x0100) -> Frame:
    payload = query(*names, flags=flags)
    return Frame(ts, True, DEV, ip(resolver), UDP, 51000, 53, 0, 0, payload, len(payload))


def test_watch_collects_names_and_resolvers_between_takes() -> None:
    w = DnsWatch()
    w.feed(out_query(1.0, "192.0.2.53", "b.example.com"))
    w.feed(out_query(2.0, "2001:db8::53", "A.example.com"))
    w.feed(out_query(3.0, "10.0.0.53", "b.example.com."))
    w.feed(out_query(4.0, "9.9.9.9", "a.example.com"))
    assert w.take() == (
        ["a.example.com", "b.example.com"],
        ["9.9.9.9", "10.0.0.53", "192.0.2.53", "2001:db8::53"],
    )
    assert w.take() == ([], [])
    assert w.stats()["queries"] == 4


def test_watch_ignores_what_is_not_an_outbound_query() -> None:
    w = DnsWatch()
    q = query("x.example")
    resp = query("x.example", flags=0x8180)
    frames = [
        # A response coming in from the resolver.
        Frame(1.0, False, ip("9.9.9.9"), DEV, UDP, 53, 51000, 0, 0, resp, len(resp)),
        # A query coming in (to a DNS server on the device).
        Frame(1.0, False, ip("10.0.0.7"), DEV, UDP, 41000, 53, 0, 0, q, len(q)),
        # That server's answer going out: source port 53.
        Frame(1.0, True, DEV, ip("10.0.0.7"), UDP, 53, 41000, 0, 0, resp, len(resp)),
        # Another port, and TCP/53.
        Frame(1.0, True, DEV, ip("9.9.9.9"), UDP, 51000, 5353, 0, 0, q, len(q)),
        Frame(1.0, True, DEV, ip("9.9.9.9"), TCP, 51000, 53, 0x18, 1, q, len(q)),
        # A response sent to port 53, an UPDATE (opcode 5).
        Frame(1.0, True, DEV, ip("9.9.9.9"), UDP, 51000, 53, 0, 0, resp, len(resp)),
        out_query(1.0, "9.9.9.9", "zone.example", flags=0x2800),
    ]
    for f in frames:
        w.feed(f)
    assert w.take() == ([], [])
    assert w.stats()["ignored"] == 2


def test_watch_counts_malformed_and_cut_payloads() -> None:
    w = DnsWatch()
    long_query = query(".".join(["a" * 60] * 4))
    cut = long_query[:100]
    w.feed(Frame(1.0, True, DEV, ip("9.9.9.9"), UDP, 5, 53, 0, 0, cut, len(long_query)))
    w.feed(Frame(1.0, True, DEV, ip("9.9.9.9"), UDP, 5, 53, 0, 0, b"\x01\x02", 2))
    assert w.stats() | {"queries": 0} == {
        "queries": 0,
        "malformed": 1,
        "cut": 1,
        "ignored": 0,
        "names_dropped": 0,
        "resolvers_dropped": 0,
    }
    assert w.take() == ([], [])


def test_watch_bounds_names_and_resolvers_per_take_and_counts_the_drop() -> None:
    w = DnsWatch(max_names=3, max_resolvers=2)
    for n in range(5):
        w.feed(out_query(float(n), f"10.0.0.{n + 1}", f"n{n}.example"))
    w.feed(out_query(9.0, "10.0.0.1", "n0.example"))  # already kept: no drop
    assert w.take() == (["n0.example", "n1.example", "n2.example"], ["10.0.0.1", "10.0.0.2"])
    assert (w.stats()["names_dropped"], w.stats()["resolvers_dropped"]) == (2, 3)
    w.feed(out_query(10.0, "10.0.0.9", "n4.example"))  # room again after the take
    assert w.take() == (["n4.example"], ["10.0.0.9"])


def test_watch_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError, match="max_names"):
        DnsWatch(max_names=0)

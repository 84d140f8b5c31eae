"""The capture filter and parser on hand-built frames (crafted with scapy, an oracle
independent of our struct layouts). compile_filter's program runs in a small reference
cBPF interpreter below, with the kernel's ancillary values (pkt_type, link type, ifindex)
chosen per case; that the kernel accepts each program is checked by attaching it to an
ordinary UDP socket (no privileges needed). tests/system runs it on real traffic."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether

from agent.collect.capture import (
    MAX_PORTS,
    Match,
    _attach,
    compile_filter,
    parse_frame,
)
from agent.core.packet import ACK, RST, SYN, Frame

HOST, OUTGOING, OTHERHOST = 0, 4, 3
ETHER, LOOPBACK, NONE = 1, 772, 0xFFFE
A4, B4 = "10.201.0.1", "10.201.0.2"
A6, B6 = "fd00:201::1", "fd00:201::2"


def run_bpf(
    prog: list[tuple[int, int, int, int]],
    pkt: bytes,
    *,
    pkttype: int = HOST,
    hatype: int = ETHER,
    ifindex: int = 2,
) -> int:
    """A reference interpreter for the cBPF subset compile_filter emits (kernel
    semantics: a load past the end of the packet drops it)."""
    anc = {4: pkttype, 8: ifindex, 28: hatype}
    sizes = {0x00: 4, 0x08: 2, 0x10: 1}
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00 and code & 0xE0 in (0x20, 0x40):  # ld abs / ind
            if code & 0xE0 == 0x20 and k >= 0xFFFFF000:
                a = anc[k - 0xFFFFF000]
                continue
            off, size = (k if code & 0xE0 == 0x20 else x + k), sizes[code & 0x18]
            if off + size > len(pkt):
                return 0
            a = int.from_bytes(pkt[off : off + size], "big")
        elif code == 0x00:
            a = k
        elif code == 0x60:
            a = mem[k]
        elif code == 0x01:
            x = k
        elif code == 0x02:
            mem[k] = a
        elif code == 0x54:
            a &= k
        elif code == 0x64:
            a = (a << k) & 0xFFFFFFFF
        elif code == 0x04:
            a = (a + k) & 0xFFFFFFFF
        elif code == 0x0C:
            a = (a + x) & 0xFFFFFFFF
        elif code == 0x05:
            pc += k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k
        elif code == 0x07:
            x = a
        elif code == 0x87:
            a = x
        else:
            raise AssertionError(f"opcode {code:#x} not in the reference interpreter")


def eth4(l4: object, **ip: object) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src=B4, dst=A4, **ip) / l4
    )


def eth6(l4: object) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IPv6(src=B6, dst=A6) / l4
    )


SYN_80 = eth4(TCP(sport=40000, dport=80, flags="S"))
SCAN = [
    Match("tcp", direction="in", tcp_flags=(SYN | ACK, SYN)),
    Match("tcp", direction="out", tcp_flags=(SYN | ACK, SYN | ACK)),
    Match("tcp", direction="out", tcp_flags=(RST, RST)),
]
DNS = [Match("udp", frozenset({53}), direction="out")]
BROKER = [Match("tcp", frozenset({1883}), local_port=True)]


# -- compile_filter ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "matches",
    [SCAN, DNS, BROKER, SCAN + DNS + BROKER, [Match("udp", frozenset(range(MAX_PORTS)))]],
)
def test_the_kernel_accepts_the_programs(matches: list[Match]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _attach(s, compile_filter(matches))
        _attach(s, compile_filter(matches, snaplen=65535, ifindexes=[2, 3, 7]))


def test_a_scan_filter_passes_inbound_syns_and_the_answers() -> None:
    prog = compile_filter(SCAN, snaplen=200)
    assert run_bpf(prog, SYN_80) == 200
    assert run_bpf(prog, SYN_80, pkttype=OUTGOING) == 0  # an outbound SYN: we connect
    synack = eth4(TCP(sport=80, dport=40000, flags="SA"))
    assert run_bpf(prog, synack, pkttype=OUTGOING) == 200
    assert run_bpf(prog, synack) == 0
    assert run_bpf(prog, eth4(TCP(sport=80, dport=40000, flags="RA")), pkttype=OUTGOING) == 200
    assert run_bpf(prog, eth4(TCP(sport=80, dport=40000, flags="A"))) == 0
    assert run_bpf(prog, eth4(TCP(sport=80, dport=40000, flags="PA")), pkttype=OUTGOING) == 0
    assert run_bpf(prog, eth4(UDP(sport=1, dport=80))) == 0
    assert run_bpf(prog, eth6(TCP(sport=40000, dport=22, flags="S"))) == 200


def test_ports_match_either_end_unless_local() -> None:
    any_end = compile_filter([Match("udp", frozenset({53}))])
    local = compile_filter([Match("udp", frozenset({53}), local_port=True)])
    query_in = eth4(UDP(sport=40000, dport=53))  # to our resolver: local port 53
    answer_in = eth4(UDP(sport=53, dport=40000))  # a resolver's answer: remote port 53
    for frame, pkttype, local_ok in [
        (query_in, HOST, True),
        (answer_in, HOST, False),
        (query_in, OUTGOING, False),
        (answer_in, OUTGOING, True),
    ]:
        assert run_bpf(any_end, frame, pkttype=pkttype) == 256
        assert (run_bpf(local, frame, pkttype=pkttype) == 256) is local_ok
    assert run_bpf(any_end, eth4(UDP(sport=40000, dport=54))) == 0


def test_directions() -> None:
    out = compile_filter(DNS)
    query = eth4(UDP(sport=40000, dport=53))
    assert run_bpf(out, query, pkttype=OUTGOING) == 256
    assert run_bpf(out, query, pkttype=HOST) == 0
    assert run_bpf(out, query, pkttype=1) == 0  # broadcast: inbound
    inbound = compile_filter([Match("udp", frozenset({53}), direction="in")])
    assert run_bpf(inbound, query, pkttype=2) == 256  # multicast: inbound
    assert run_bpf(inbound, query, pkttype=OUTGOING) == 0


def test_loopback_keeps_the_sent_copy_only_and_both_ends_are_local() -> None:
    broker = compile_filter(BROKER)
    to_broker = eth4(TCP(sport=40000, dport=1883, flags="PA"))
    from_broker = eth4(TCP(sport=1883, dport=40000, flags="PA"))
    for frame in (to_broker, from_broker):
        assert run_bpf(broker, frame, pkttype=OUTGOING, hatype=LOOPBACK) == 256
        assert run_bpf(broker, frame, pkttype=HOST, hatype=LOOPBACK) == 0
    # On Ethernet, the local end only: a packet we send to a remote broker is not ours.
    assert run_bpf(broker, to_broker, pkttype=OUTGOING) == 0
    inbound = compile_filter([Match("tcp", frozenset({1883}), direction="in")])
    assert run_bpf(inbound, to_broker, pkttype=OUTGOING, hatype=LOOPBACK) == 0


def test_frames_for_other_hosts_and_other_link_types_are_dropped() -> None:
    prog = compile_filter(SCAN)
    assert run_bpf(prog, SYN_80, pkttype=OTHERHOST) == 0
    assert run_bpf(prog, SYN_80, hatype=NONE) == 0
    assert run_bpf(prog, bytes(IP(src=B4, dst=A4) / TCP(dport=80, flags="S")), hatype=NONE) == 0


def test_interfaces() -> None:
    prog = compile_filter(SCAN, ifindexes=[3, 5])
    assert run_bpf(prog, SYN_80, ifindex=3) == 256
    assert run_bpf(prog, SYN_80, ifindex=5) == 256
    assert run_bpf(prog, SYN_80, ifindex=2) == 0


def test_vlan_options_fragments_and_ipv6_extension_headers() -> None:
    prog = compile_filter([Match("udp", frozenset({5353}))])
    udp = UDP(sport=40000, dport=5353) / b"x"
    tagged = Ether() / Dot1Q(vlan=100) / IP(src=B4, dst=A4) / udp
    assert run_bpf(prog, bytes(tagged)) == 256
    assert run_bpf(prog, bytes(Ether() / Dot1Q(vlan=100) / IPv6(src=B6, dst=A6) / udp)) == 256
    # Two tags: the inner one is read as the ethertype, not followed.
    assert run_bpf(prog, bytes(Ether() / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP() / udp)) == 0
    options = eth4(udp, options=[b"\x01\x01\x01\x00"])  # IHL 6
    assert options[14] == 0x46
    assert run_bpf(prog, options) == 256
    assert run_bpf(prog, eth4(udp, flags="MF", frag=0)) == 256  # the first fragment
    later = eth4(udp, frag=64)
    assert run_bpf(prog, later) == 0
    assert run_bpf(prog, eth6(IPv6ExtHdrHopByHop() / udp)) == 0  # documented limit
    assert run_bpf(prog, eth6(udp)) == 256
    assert run_bpf(prog, bytes(Ether() / ARP())) == 0
    assert run_bpf(prog, eth4(ICMP())) == 0
    assert run_bpf(prog, SYN_80[:30]) == 0  # cut before the ports


def test_bad_clauses_say_what_is_wrong() -> None:
    for clause, message in [
        (Match("icmp"), "proto must be 'tcp' or 'udp'"),  # type: ignore[arg-type]
        (Match("tcp", direction="up"), "direction"),  # type: ignore[arg-type]
        (Match("tcp", frozenset({70000})), r"not a port number: \[70000\]"),
        (Match("udp", tcp_flags=(SYN, SYN)), "tcp_flags is for proto 'tcp' only"),
        (Match("tcp", tcp_flags=(SYN, ACK)), "bad tcp_flags"),
        (Match("tcp", local_port=True), "local_port needs ports"),
        (Match("tcp", frozenset(range(MAX_PORTS + 1))), f"at most {MAX_PORTS} ports"),
        (Match("tcp", snaplen=20), "snaplen must be 64..65535, not 20"),
    ]:
        with pytest.raises(ValueError, match=f"Match 1 .*{message}"):
            compile_filter([*DNS, clause])
    with pytest.raises(ValueError, match="no Match clauses"):
        compile_filter([])
    with pytest.raises(ValueError, match="snaplen"):
        compile_filter(SCAN, snaplen=10)


def test_a_clause_can_keep_more_of_its_packets() -> None:
    prog = compile_filter([*DNS, Match("tcp", frozenset({1883}), snaplen=0xFFFF)], snaplen=300)
    assert run_bpf(prog, eth4(TCP(sport=40000, dport=1883)), pkttype=OUTGOING) == 0xFFFF
    assert run_bpf(prog, eth4(UDP(sport=40000, dport=53)), pkttype=OUTGOING) == 300


# -- parse_frame -----------------------------------------------------------------------


def test_ipv4_tcp_with_options_and_payload() -> None:
    raw = eth4(
        TCP(sport=40000, dport=443, seq=123456789, flags="PA", options=[("MSS", 1460)]) / b"hello",
        options=[b"\x01\x01\x01\x00"],
    )
    f = parse_frame(raw, 12.5, True)
    assert f == Frame(
        12.5,
        True,
        socket.inet_aton(B4),
        socket.inet_aton(A4),
        6,
        40000,
        443,
        0x18,
        123456789,
        b"hello",
        5,
    )


def test_padding_is_not_payload_and_a_cut_payload_keeps_its_length() -> None:
    raw = eth4(UDP(sport=5353, dport=5353) / b"ab")
    padded = raw + b"\x00" * (60 - len(raw))
    f = parse_frame(padded, 0.0, False)
    assert f is not None and f.payload == b"ab" and f.length == 2
    big = eth6(UDP(sport=1, dport=2) / (b"z" * 1000))
    cut = parse_frame(big[:256], 0.0, False)
    assert cut is not None
    assert cut.length == 1000 and cut.payload == b"z" * (256 - 14 - 40 - 8)
    assert cut.src == socket.inet_pton(socket.AF_INET6, B6) and cut.proto == 17


def test_vlan_ipv6_and_fragments() -> None:
    f = parse_frame(bytes(Ether() / Dot1Q(vlan=7) / IP(src=B4, dst=A4) / UDP(dport=53)), 0, False)
    assert f is not None and f.dport == 53 and f.src == socket.inet_aton(B4)
    f = parse_frame(eth6(TCP(sport=1, dport=22, flags="S")), 0, False)
    assert f is not None and f.flags == SYN and len(f.dst) == 16
    first = parse_frame(eth4(UDP(dport=53) / b"q", flags="MF"), 0, False)
    assert first is not None and first.dport == 53
    assert parse_frame(eth4(UDP(dport=53) / b"q", frag=8), 0, False) is None
    assert parse_frame(eth6(IPv6ExtHdrHopByHop() / UDP(dport=53)), 0, False) is None
    assert parse_frame(bytes(Ether() / ARP()), 0, False) is None
    assert parse_frame(eth4(ICMP()), 0, False) is None


def test_inconsistent_headers_are_none() -> None:
    good = bytearray(eth4(TCP(dport=80) / b"data"))
    bad_ihl = bytearray(good)
    bad_ihl[14] = 0x44  # IHL 4 < 5
    assert parse_frame(bytes(bad_ihl), 0, False) is None
    bad_version = bytearray(good)
    bad_version[14] = 0x65
    assert parse_frame(bytes(bad_version), 0, False) is None
    bad_offset = bytearray(good)
    bad_offset[14 + 20 + 12] = 0x40  # TCP data offset 4 words < 5
    assert parse_frame(bytes(bad_offset), 0, False) is None
    short_total = bytearray(good)
    struct.pack_into("!H", short_total, 16, 30)  # total length below the headers
    assert parse_frame(bytes(short_total), 0, False) is None


@pytest.mark.parametrize(
    "raw",
    [
        eth4(TCP(dport=80, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / (b"x" * 30)),
        eth6(UDP(dport=53) / (b"q" * 10)),
        bytes(Ether() / Dot1Q() / IP() / UDP() / b"abc"),
    ],
)
def test_every_truncation_is_none_or_a_frame(raw: bytes) -> None:
    full = parse_frame(raw, 0, False)
    assert full is not None
    for n in range(len(raw)):
        f = parse_frame(raw[:n], 0, False)
        if f is not None:  # cut in the payload or the TCP options: the header fields hold
            assert f[:9] == full[:9] and f.length == full.length
            assert full.payload.startswith(f.payload)
    assert parse_frame(memoryview(raw), 0, False) == full


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00"]))
def test_garbage_never_raises(tail: bytes, etype: bytes) -> None:
    parse_frame(b"\x00" * 12 + etype + tail, 0, False)
    parse_frame(tail, 0, False)

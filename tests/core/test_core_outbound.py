"""OutboundWatch: outbound SYNs counted as connection attempts, retransmits deduplicated
for dedup_s, the bound, and what is not an attempt of this host."""

from __future__ import annotations

import ipaddress

import pytest

from agent.core.outbound import MATCHES, OutboundWatch
from agent.core.packet import ACK, RST, SYN, TCP, UDP, Frame, Match

DEV = ipaddress.ip_address("192.0.2.1").packed
SERVER = ipaddress.ip_address("198.51.100.7").packed
DEV6 = ipaddress.ip_address("2001:db8::1").packed
SERVER6 = ipaddress.ip_address("2001:db8::2").packed


def syn(
    ts: float,
    sport: int = 40000,
    dport: int = 443,
    *,
    seq: int = 1000,
    src: bytes = DEV,
    dst: bytes = SERVER,
    flags: int = SYN,
    outgoing: bool = True,
    proto: int = TCP,
) -> Frame:
    return Frame(ts, outgoing, src, dst, proto, sport, dport, flags, seq, b"", 0)


def test_the_filter_takes_outbound_syns_without_ack() -> None:
    assert (Match("tcp", direction="out", tcp_flags=(SYN | ACK, SYN)),) == MATCHES


def test_each_connection_counts_once_and_take_resets() -> None:
    w = OutboundWatch()
    for i in range(5):
        w.feed(syn(100.0 + i, sport=40000 + i))
    w.feed(syn(101.0, sport=40001, dst=SERVER6, src=DEV6))  # another destination
    assert w.take() == 6
    assert w.take() == 0
    w.feed(syn(110.0, sport=41000))
    assert w.take() == 1


def test_retransmitted_syns_are_one_attempt_even_across_takes() -> None:
    w = OutboundWatch()
    for delay in (0, 1, 3, 7):  # Linux's backoff
        w.feed(syn(100.0 + delay))
    assert w.take() == 1
    for delay in (15, 31, 63):
        w.feed(syn(100.0 + delay))
    assert w.take() == 0
    assert w.stats() == {
        "syns": 7,
        "opened": 1,
        "retransmits": 6,
        "overflow": 0,
        "destinations_keys": 1,
        "destinations_periodic": 0,
        "destinations_forgotten": 0,
    }


def test_a_reused_four_tuple_with_a_new_isn_is_a_new_connection() -> None:
    w = OutboundWatch()
    w.feed(syn(100.0, seq=1))
    w.feed(syn(100.5, seq=2))  # refused, then connect() again from the same bound port
    assert w.take() == 2


def test_an_attempt_is_forgotten_after_dedup_s() -> None:
    w = OutboundWatch(dedup_s=10.0)
    w.feed(syn(100.0))
    w.feed(syn(109.9))
    w.feed(syn(110.0))  # as old as dedup_s: a new attempt
    assert w.take() == 2


def test_what_is_not_an_attempt_of_this_host() -> None:
    w = OutboundWatch()
    w.feed(syn(100.0, outgoing=False))  # a SYN to this host
    w.feed(syn(100.0, flags=SYN | ACK))  # this host answering
    w.feed(syn(100.0, flags=RST))
    w.feed(syn(100.0, flags=ACK))
    w.feed(syn(100.0, proto=UDP, flags=0))
    assert w.take() == 0
    assert w.stats()["syns"] == 0


def test_past_the_bound_attempts_count_without_dedup() -> None:
    w = OutboundWatch(max_entries=2)
    w.feed(syn(100.0, sport=1))
    w.feed(syn(100.0, sport=2))
    w.feed(syn(100.1, sport=3))  # counted, not remembered
    w.feed(syn(101.0, sport=3))  # so its retransmit counts again
    w.feed(syn(101.0, sport=1))  # a remembered one still does not
    assert w.take() == 4
    stats = w.stats()
    assert {k: stats[k] for k in ("syns", "opened", "retransmits", "overflow")} == {
        "syns": 5,
        "opened": 4,
        "retransmits": 1,
        "overflow": 2,
    }


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        OutboundWatch(max_entries=0)
    with pytest.raises(ValueError, match="dedup_s"):
        OutboundWatch(dedup_s=0)


def test_a_destination_contacted_every_minute_is_periodic_and_retransmits_are_not_contacts() -> (
    None
):
    w = OutboundWatch()
    for i in range(9):
        w.feed(syn(60.0 * i, sport=40000 + i, seq=i))
        w.feed(syn(60.0 * i + 1.0, sport=40000 + i, seq=i))  # a retransmit: the same attempt
        w.feed(syn(60.0 * i + 3.0, sport=40000 + i, seq=i))
    assert w.periodic(480.0) == (1, ["198.51.100.7"])
    assert w.stats()["destinations_keys"] == 1
    assert w.periodic(480.0 + 2.5 * 60 + 1) == (0, [])  # it stopped


def test_two_sources_beaconing_to_one_address_are_two_periodic_keys_and_one_address() -> None:
    w = OutboundWatch()
    other = ipaddress.ip_address("192.0.2.2").packed
    for i in range(9):
        for n, src in enumerate((DEV, other)):
            w.feed(syn(30.0 * i + n, sport=40000 + i, seq=i, src=src))
        w.feed(syn(30.0 * i + 5, sport=41000 + i, seq=i, src=DEV6, dst=SERVER6))
    assert w.periodic(245.0) == (3, ["198.51.100.7", "2001:db8::2"])

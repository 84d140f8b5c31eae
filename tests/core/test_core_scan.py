"""Port-scan detection (TRW) fed frames by hand: the probe counts that flag a scan, slow
scans, benign clients, timeouts, the open-ports rule, and the bounds on memory and time."""

from __future__ import annotations

import ipaddress

import pytest

from agent.core.packet import ACK, RST, SYN, TCP, UDP, Frame
from agent.core.scan import ScanDetector

DEV = ipaddress.ip_address("192.0.2.1").packed
ATT = ipaddress.ip_address("198.51.100.7").packed


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def syn(ts: float, port: int, src: bytes = ATT, sport: int = 40000, dst: bytes = DEV) -> Frame:
    return Frame(ts, False, src, dst, TCP, sport, port, SYN, 1, b"", 0)


def answer(
    ts: float, port: int, flags: int, src: bytes = ATT, sport: int = 40000, dst: bytes = DEV
) -> Frame:
    return Frame(ts, True, dst, src, TCP, port, sport, flags, 0, b"", 0)


def closed(d: ScanDetector, ts: float, port: int, src: bytes = ATT) -> None:
    d.feed(syn(ts, port, src))
    d.feed(answer(ts + 0.001, port, RST | ACK, src))


def opened(d: ScanDetector, ts: float, port: int, src: bytes = ATT, sport: int = 40000) -> None:
    d.feed(syn(ts, port, src, sport))
    d.feed(answer(ts + 0.001, port, SYN | ACK, src, sport))


def probes_to_flag(d: ScanDetector, step_s: float, first_port: int = 1000) -> int:
    """Closed ports probed one per step_s until the source is flagged."""
    for n in range(1, 100):
        ts = n * step_s
        closed(d, ts, first_port + n)
        if d.scanners(ts + 0.01) == ["198.51.100.7"]:
            return n
    raise AssertionError("never flagged")


def test_syn_scan_of_closed_ports_is_flagged_at_the_fourth_probe() -> None:
    d = ScanDetector()
    assert d.failures_to_flag() == 4
    assert probes_to_flag(d, step_s=0.001) == 4


@pytest.mark.parametrize("step_s", [1.0, 60.0])
def test_slow_scans_are_flagged_after_as_many_probes(step_s: float) -> None:
    assert probes_to_flag(ScanDetector(), step_s) == 4


def test_benign_client_reconnecting_to_one_open_port_is_never_flagged() -> None:
    d = ScanDetector()
    for n in range(2000):
        opened(d, n * 5.0, 22, sport=30000 + n % 20000)
        assert d.scanners(n * 5.0 + 1) == []
    assert d.stats()["probes"] == 1  # one service, one trial


def test_client_with_a_down_service_among_open_ones_is_not_flagged() -> None:
    d = ScanDetector()
    for n in range(200):
        ts = n * 10.0
        opened(d, ts, 22, sport=30000 + n)
        opened(d, ts + 1, 443, sport=31000 + n)
        closed(d, ts + 2, 8883)  # refused every time: still one failed trial
    assert d.scanners(2000.0) == []


def test_retransmitted_syns_to_one_closed_port_are_one_trial() -> None:
    d = ScanDetector()
    for n in range(10):
        closed(d, n * 1.0, 25)
    assert d.scanners(11.0) == []
    assert d.stats()["probes"] == 1


def test_mostly_successful_host_that_then_scans_is_flagged() -> None:
    d = ScanDetector()
    for n in range(10):  # 10 distinct open ports, slowly (below the open-ports rule)
        opened(d, n * 100.0, 2000 + n)
    assert d.scanners(1000.0) == []
    # The walk restarted at each benign verdict (after 4 and 8 successes): 2 successes
    # remain, 4**-2 * 4**6 >= 99 > 4**-2 * 4**5, so 6 failures (without restarts: 14).
    for n in range(1, 20):
        closed(d, 1000.0 + n, 5000 + n)
        if d.scanners(1000.0 + n + 0.5):
            break
    assert n == 6


@pytest.mark.parametrize("successes", range(12))
def test_any_source_is_flagged_within_7_failures(successes: int) -> None:
    """Benign verdicts restart the walk, so only successes % 4 stand against a scan."""
    d = ScanDetector()
    for n in range(successes):
        opened(d, n * 100.0, 2000 + n)
    start = successes * 100.0
    for n in range(1, 20):
        closed(d, start + n, 5000 + n)
        if d.scanners(start + n + 0.5):
            break
    assert n == 4 + successes % 4 <= 7


def test_unanswered_probes_fail_after_the_timeout() -> None:
    d = ScanDetector(probe_timeout_s=3.0)
    for n in range(4):  # a firewall drops them: no RST, no SYN-ACK
        d.feed(syn(float(n), 7000 + n))
    assert d.scanners(5.0) == []  # deadlines 3, 4, 5, 6: two have passed
    assert d.stats()["pending"] == 2
    assert d.scanners(6.0) == []  # the last deadline is not yet past
    assert d.scanners(6.001) == ["198.51.100.7"]


def test_timeouts_are_judged_by_the_sources_next_frame_too() -> None:
    d = ScanDetector(probe_timeout_s=3.0)
    for n in range(4):
        d.feed(syn(float(n), 7000 + n))
    d.feed(syn(10.0, 7000, src=ip("203.0.113.5")))  # another source's frame: not yet
    assert (d.stats()["flagged"], d.stats()["pending"]) == (0, 5)
    d.feed(syn(10.0, 7000))  # its own retransmission brings the time
    assert (d.stats()["flagged"], d.stats()["pending"]) == (1, 1)


def test_late_answers_and_answers_to_no_trial_change_nothing() -> None:
    d = ScanDetector(probe_timeout_s=3.0)
    for n in range(4):
        d.feed(syn(float(n), 7000 + n))
    # A SYN-ACK after the deadline does not undo the failure.
    d.feed(answer(4.5, 7000, SYN | ACK))
    d.feed(answer(5.5, 7001, SYN | ACK))
    # Resets and SYN-ACKs of connections that were no trial are ignored.
    for n in range(20):
        d.feed(answer(6.0, 9000 + n, SYN | ACK))
    assert d.scanners(7.0) == ["198.51.100.7"]


def test_a_flagged_source_keeps_no_trials() -> None:
    d = ScanDetector()
    d.feed(syn(0.0, 9000))  # unanswered, still waiting when the source is flagged
    for n in range(4):
        closed(d, 0.1 * (n + 1), 1000 + n)
    assert (d.stats()["flagged"], d.stats()["pending"]) == (1, 0)
    for port in range(2000, 3000):  # nor does it gather any more
        d.feed(syn(1.0, port))
    assert d.stats()["pending"] == 0


@pytest.mark.parametrize(
    ("src", "dst"),
    [("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "127.0.0.53"), ("::1", "::1"), (None, None)],
)
def test_the_device_talking_to_itself_is_no_scanner(src: str | None, dst: str | None) -> None:
    d = ScanDetector()
    for port in range(1, 20):  # unanswered: as if the reader kept only lo's inbound copies
        d.feed(syn(0.0, port, src=ip(src) if src else DEV, dst=ip(dst) if dst else DEV))
    assert d.scanners(10.0) == []
    assert d.stats()["probes"] == 0


def test_udp_and_outbound_syns_are_not_probes() -> None:
    d = ScanDetector()
    for n in range(20):
        d.feed(Frame(float(n), False, ATT, DEV, UDP, 5000, 100 + n, 0, 0, b"", 0))
        d.feed(Frame(float(n), True, DEV, ATT, TCP, 40000, 100 + n, SYN, 0, b"", 0))
        d.feed(Frame(float(n), False, ATT, DEV, TCP, 100 + n, 40000, RST, 0, b"", 0))
    assert d.stats()["probes"] == 0
    assert d.scanners(30.0) == []


def test_connect_scan_of_open_ports_is_flagged_by_the_open_ports_rule() -> None:
    d = ScanDetector()
    assert (d.open_ports, d.open_window_s) == (12, 600.0)
    for n in range(1, 13):
        opened(d, float(n), 100 + n)
        assert d.scanners(n + 0.5) == ([] if n < 12 else ["198.51.100.7"])


def test_open_ports_spread_beyond_the_window_are_not_flagged() -> None:
    d = ScanDetector()
    for n in range(1, 40):
        opened(d, n * 60.0, 100 + n)  # 12 opened take 660 s
    assert d.scanners(40 * 60.0) == []


def test_flag_is_held_for_hold_s_after_the_last_probe_then_a_new_scan_counts_again() -> None:
    d = ScanDetector(hold_s=300.0)
    for n in range(10):
        closed(d, float(n), 1000 + n)  # last probe at t=9
    assert d.scanners(309.0) == ["198.51.100.7"]
    assert d.scanners(309.01) == []
    # The same ports again, after the hold: a fresh walk, flagged again at the 4th.
    for n in range(10):
        closed(d, 400.0 + n, 1000 + n)
        assert d.scanners(400.5 + n) == ([] if n < 3 else ["198.51.100.7"])


def test_probes_of_a_flagged_source_extend_the_hold() -> None:
    d = ScanDetector(hold_s=300.0)
    for n in range(200):
        closed(d, n * 60.0, 1000 + n)
    assert d.scanners(199 * 60.0 + 299.0) == ["198.51.100.7"]


def test_max_sources_bounds_memory_and_drops_the_least_recently_seen() -> None:
    d = ScanDetector(max_sources=100)
    for n in range(3):
        closed(d, float(n), 1000 + n)  # 3 failures: one short of a flag
    for n in range(99):
        closed(d, 10.0, 80, src=ip(f"10.1.0.{n}"))
    assert d.stats()["sources"] == 100
    closed(d, 11.0, 80, src=ip("10.2.0.1"))  # the 101st: the attacker, least recent, goes
    assert d.stats() | {"probes": 0} == {
        "sources": 100,
        "pending": 0,
        "flagged": 0,
        "probes": 0,
        "evicted": 1,
    }
    closed(d, 12.0, 1003)
    assert d.scanners(12.5) == []  # its walk started over
    for n in range(4, 7):
        closed(d, 12.0 + n, 1000 + n)
    assert d.scanners(20.0) == ["198.51.100.7"]
    for n in range(10000):
        d.feed(syn(30.0, 80, src=(0x0A000000 + n).to_bytes(4, "big")))
    assert d.stats()["sources"] == 100
    assert d.stats()["pending"] <= 100


def test_a_source_seen_again_is_not_the_one_dropped() -> None:
    d = ScanDetector(max_sources=3)
    for n in range(3):
        closed(d, float(n), 1000 + n)  # the attacker: first in, 3 failures
    closed(d, 5.0, 80, src=ip("10.1.0.1"))
    closed(d, 6.0, 80, src=ip("10.1.0.2"))
    d.feed(syn(7.0, 1003))  # seen again, now the most recent; unanswered: the 4th failure
    closed(d, 8.0, 80, src=ip("10.1.0.3"))  # drops 10.1.0.1, the least recently seen
    assert d.scanners(10.01) == ["198.51.100.7"]
    assert d.stats()["evicted"] == 1


def test_pending_trials_per_source_are_bounded() -> None:
    d = ScanDetector(max_ports=16, probe_timeout_s=3.0)
    for port in range(1, 5000):  # a fast scan, nothing answered yet
        d.feed(syn(0.0, port, src=ATT))
    assert d.stats()["pending"] == 16
    assert d.scanners(4.0) == ["198.51.100.7"]


def test_idle_sources_are_forgotten() -> None:
    d = ScanDetector(idle_s=3600.0)
    for n in range(3):
        closed(d, float(n), 1000 + n)
    assert d.scanners(3602.0) == []
    assert d.stats()["sources"] == 1
    assert d.scanners(3602.01) == []
    assert d.stats()["sources"] == 0
    closed(d, 3700.0, 1003)
    assert d.scanners(3701.0) == []  # a fresh walk: one failure only


def test_scanners_are_sorted_by_address_and_v6_works() -> None:
    d = ScanDetector()
    sources = [ip("2001:db8::1"), ip("10.0.0.10"), ip("10.0.0.9")]
    for src in sources:
        for n in range(4):
            closed(d, float(n), 1000 + n, src=src)
    assert d.scanners(5.0) == ["10.0.0.9", "10.0.0.10", "2001:db8::1"]


def test_each_local_address_is_a_separate_service() -> None:
    d = ScanDetector()
    for n in range(4):  # one port on four addresses of a router: four trials
        d.feed(syn(float(n), 22, dst=ip(f"192.0.2.{n + 1}")))
        d.feed(answer(n + 0.001, 22, RST | ACK, dst=ip(f"192.0.2.{n + 1}")))
    assert d.scanners(5.0) == ["198.51.100.7"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"theta0": 0.2, "theta1": 0.8}, "theta1 < theta0"),
        ({"pd": 0.01, "pf": 0.99}, "pf < pd"),
        ({"hold_s": 0}, "hold_s must be > 0"),
        ({"probe_timeout_s": -1}, "probe_timeout_s must be > 0"),
        ({"idle_s": 10.0}, "idle_s must be >= hold_s"),
        ({"max_sources": 0}, "max_sources must be >= 1"),
        ({"open_ports": 40, "max_ports": 32}, "open_ports <= max_ports"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScanDetector(**kwargs)  # type: ignore[arg-type]

"""BrokerWatch fed TCP frames built by hand: reassembly (splits at every byte, out of order,
duplicates, gaps, snap length cuts), sessions and the AWS metrics per client id."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from agent.core.broker_watch import MAX_HELD, BrokerWatch, matches
from agent.core.packet import ACK, FIN, PSH, RST, SYN, TCP, UDP, Frame, Match
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

PORT = 1883
BROKER = bytes([192, 0, 2, 1])
CLIENT = bytes([192, 0, 2, 10])


class Conn:
    """One TCP connection between a client and the broker, as frames."""

    def __init__(
        self,
        watch: BrokerWatch,
        *,
        sport: int = 50000,
        src: bytes = CLIENT,
        up_isn: int = 1000,
        down_isn: int = 900_000,
    ) -> None:
        self.watch = watch
        self.sport = sport
        self.src = src
        self.up_isn = up_isn
        self.down_isn = down_isn
        self.up_seq = (up_isn + 1) & 0xFFFFFFFF
        self.down_seq = (down_isn + 1) & 0xFFFFFFFF
        self.ts = 100.0

    def frame(self, up: bool, flags: int, seq: int, payload: bytes, length: int = -1) -> Frame:
        self.ts += 0.001
        length = len(payload) if length < 0 else length
        if up:
            return Frame(
                self.ts, False, self.src, BROKER, TCP, self.sport, PORT, flags, seq, payload, length
            )
        return Frame(
            self.ts, True, BROKER, self.src, TCP, PORT, self.sport, flags, seq, payload, length
        )

    def open(self) -> Conn:
        self.watch.feed(self.frame(True, SYN, self.up_isn, b""))
        self.watch.feed(self.frame(False, SYN | ACK, self.down_isn, b""))
        self.watch.feed(self.frame(True, ACK, self.up_seq, b""))
        return self

    def segments(self, up: bool, data: bytes, sizes: Iterable[int] = ()) -> list[Frame]:
        """Frames carrying `data` in pieces of `sizes` (the rest in one), advancing seq."""
        frames = []
        pos = 0
        for size in [*sizes, len(data)]:
            piece = data[pos : pos + size]
            if not piece:
                continue
            seq = self.up_seq if up else self.down_seq
            frames.append(self.frame(up, PSH | ACK, seq, piece))
            pos += len(piece)
            if up:
                self.up_seq = (self.up_seq + len(piece)) & 0xFFFFFFFF
            else:
                self.down_seq = (self.down_seq + len(piece)) & 0xFFFFFFFF
        return frames

    def up(self, data: bytes, sizes: Iterable[int] = ()) -> None:
        for f in self.segments(True, data, sizes):
            self.watch.feed(f)

    def down(self, data: bytes, sizes: Iterable[int] = ()) -> None:
        for f in self.segments(False, data, sizes):
            self.watch.feed(f)

    def fin(self, up: bool) -> None:
        seq = self.up_seq if up else self.down_seq
        self.watch.feed(self.frame(up, FIN | ACK, seq, b""))
        if up:
            self.up_seq += 1
        else:
            self.down_seq += 1

    def close(self) -> None:
        self.fin(True)
        self.fin(False)

    def rst(self, up: bool = True) -> None:
        self.watch.feed(self.frame(up, RST, self.up_seq if up else self.down_seq, b""))


def metrics(
    sent: dict[str, int] | None = None,
    received: dict[str, int] | None = None,
    sizes: dict[str, int] | None = None,
    auth: dict[str, int] | None = None,
    attempts: int = 0,
    disconnects: int = 0,
    ips: tuple[str, ...] = ("192.0.2.10",),
) -> dict[str, object]:
    out: dict[str, object] = {
        "aws:num-messages-sent": sent or {},
        "aws:num-messages-received": received or {},
        "aws:num-authorization-failures": auth or {},
        "aws:num-connection-attempts": attempts,
        "aws:num-disconnects": disconnects,
        "aws:source-ip-address": list(ips),
    }
    if sizes:
        out["aws:message-byte-size"] = sizes
    return out


# -- a whole MQTT 5 session, at every split ---------------------------------------------

V5_UP = (
    connect("dev-5", level=5, username="dev")
    + publish("tele/a", b"x" * 40, qos=1, packet_id=1, v5=True, alias=2, extra_props=SOME_PROPS)
    + publish("", b"y" * 90, v5=True, alias=2)
    + publish("denied/x", b"z" * 7, qos=1, packet_id=2, v5=True)
    + publish("denied/y", b"", qos=2, packet_id=3, v5=True)
    + subscribe(4, "cmd/#", "secret/#", "bad/#", v5=True)
    + PINGREQ
    + disconnect(0)
)
V5_DOWN = (
    connack(0, v5=True)
    + puback(1)
    + puback(2, 0x87)
    + puback(3, 0x87, ptype=5)
    + suback(4, 1, 0x87, 0x80, v5=True)  # 0x80 is not an authorization failure in MQTT 5
    + publish("cmd/go", b"1", v5=True, alias=1)
    + publish("", b"2", v5=True, alias=1)
)
V5_WANT = {
    "dev-5": metrics(
        sent={"tele/a": 2, "denied/x": 1, "denied/y": 1},
        received={"cmd/go": 2},
        sizes={"tele/a": 90, "denied/x": 7, "denied/y": 0},
        auth={"denied/x": 1, "denied/y": 1, "secret/#": 1},
        attempts=1,
        disconnects=1,
    )
}


def run_v5(up_sizes: Iterable[int] = (), down_sizes: Iterable[int] = ()) -> BrokerWatch:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(V5_UP, up_sizes)
    c.down(V5_DOWN, down_sizes)
    c.close()
    return watch


def test_v5_session_metrics() -> None:
    watch = run_v5()
    assert watch.take(200.0) == V5_WANT
    assert watch.stats()["flows"] == 0
    assert watch.take(300.0) == {}


def test_split_at_every_byte_boundary_across_frames() -> None:
    for cut in range(1, len(V5_UP)):
        assert run_v5(up_sizes=[cut]).take(200.0) == V5_WANT, cut
    for cut in range(1, len(V5_DOWN)):
        assert run_v5(down_sizes=[cut]).take(200.0) == V5_WANT, cut
    assert run_v5([1] * len(V5_UP), [1] * len(V5_DOWN)).take(200.0) == V5_WANT


# -- reassembly -----------------------------------------------------------------------


def test_out_of_order_and_duplicate_segments() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch, up_isn=0xFFFFFF00).open()  # the sequence numbers wrap inside the stream
    frames = c.segments(True, V5_UP, [30, 50, 7, 100, 3, 60])
    assert len(frames) == 7
    order = [0, 2, 1, 1, 4, 3, 0, 6, 5, 5, 2]
    for i in order:
        watch.feed(frames[i])
    # a retransmission that overlaps what was delivered and brings nothing new
    f = frames[3]
    watch.feed(f._replace(seq=f.seq - 5, payload=V5_UP[82:100], length=18))
    c.down(V5_DOWN)
    c.close()
    assert watch.take(200.0) == V5_WANT
    assert watch.stats()["gaps"] == 0


def test_a_retransmission_overlapping_new_bytes_delivers_the_new_part() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    first, second = c.segments(True, V5_UP, [100])
    watch.feed(first)
    # the same start again, now carrying the rest too
    watch.feed(second._replace(seq=first.seq, payload=V5_UP, length=len(V5_UP)))
    c.down(V5_DOWN)
    c.close()
    assert watch.take(200.0) == V5_WANT


def test_a_gap_that_does_not_fill_stops_that_direction_only() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev", username="u") + publish("before", b"1"))
    c.down(connack(0))
    lost = c.segments(True, publish("lost", b"2"))
    assert lost
    for _ in range(MAX_HELD + 1):
        c.up(publish("after", b"3"))
    c.down(publish("in", b"4"))  # the other direction goes on
    c.fin(True)
    c.fin(False)
    assert watch.take(200.0) == {
        "dev": metrics(
            sent={"before": 1}, received={"in": 1}, sizes={"before": 1}, attempts=1, disconnects=1
        )
    }
    stats = watch.stats()
    assert stats["gaps"] == 1
    assert stats["unsynced_packets"] == 1
    assert stats["flows"] == 0


def test_a_gap_filled_in_time_is_no_gap() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev"))
    c.down(connack(0))
    first = c.segments(True, publish("t", b"1"))
    rest = [f for _ in range(MAX_HELD) for f in c.segments(True, publish("t", b"22"))]
    for f in rest + first:
        watch.feed(f)
    assert watch.take(200.0)["dev"]["aws:num-messages-sent"] == {"t": MAX_HELD + 1}
    assert watch.stats()["gaps"] == 0


def test_snap_length_cuts_payloads_but_not_topics_or_sizes() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    packets = [
        connect("dev", level=5),
        publish("big/1", b"a" * 5000, qos=1, packet_id=1, v5=True, alias=1, extra_props=SOME_PROPS),
        publish("", b"b" * 3000, v5=True, alias=1),
        publish("big/2", b"c" * 1000, v5=True),
    ]
    for p in packets:
        # a big PUBLISH spans several segments, each cut to 190 bytes
        for f in c.segments(True, p, [1400] * 4):
            watch.feed(f._replace(payload=f.payload[:190]))
    c.down(connack(0, v5=True) + puback(1))
    assert watch.take(200.0) == {
        "dev": metrics(
            sent={"big/1": 2, "big/2": 1}, sizes={"big/1": 5000, "big/2": 1000}, attempts=1
        )
    }
    assert watch.stats()["gaps"] == 0


def test_a_snap_length_cut_inside_a_header_is_a_gap() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev"))
    # two publishes in one segment: the second one's header lies in the cut part
    (f,) = c.segments(True, publish("one", b"x" * 300) + publish("two", b"y"))
    watch.feed(f._replace(payload=f.payload[:100]))
    c.up(publish("three", b""))
    assert watch.take(200.0)["dev"]["aws:num-messages-sent"] == {"one": 1}
    assert watch.stats()["gaps"] == 1


# -- sessions and authorization -------------------------------------------------------


@pytest.mark.parametrize(("level", "code"), [(4, 4), (4, 5), (5, 0x86), (5, 0x87)])
def test_a_refused_connect_is_an_authorization_failure(level: int, code: int) -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev", level=level, username="u"))
    c.down(connack(code, v5=level == 5))
    c.close()
    assert watch.take(200.0) == {"dev": metrics(auth={"": 1}, attempts=1)}
    assert watch.take(300.0) == {}


def test_other_connack_refusals_are_not_authorization_failures() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev"))
    c.down(connack(2))  # identifier rejected
    c.rst(False)
    assert watch.take(200.0) == {"dev": metrics(attempts=1)}


def test_v3_suback_failure_and_v3_puback() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev") + subscribe(1, "a/#", "b/#") + publish("t", b"12", qos=1, packet_id=9))
    c.down(connack(0) + suback(1, 0x80, 0) + puback(9) + publish("a/1", b"", qos=1))
    assert watch.take(200.0) == {
        "dev": metrics(
            sent={"t": 1}, received={"a/1": 1}, sizes={"t": 2}, auth={"a/#": 1}, attempts=1
        )
    }


@pytest.mark.parametrize(
    ("ending", "disconnects"),
    [
        ("client-disconnect", 1),
        ("broker-disconnect", 1),
        ("fin-from-client", 1),
        ("fin-from-broker", 1),
        ("rst", 1),
        ("rst-from-broker", 1),
    ],
)
def test_each_end_of_a_session_is_one_disconnect(ending: str, disconnects: int) -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev", level=5))
    c.down(connack(0, v5=True))
    if ending == "client-disconnect":
        c.up(disconnect())
        c.close()
    elif ending == "broker-disconnect":
        c.down(disconnect(0x8E))  # session taken over
        c.close()
    elif ending == "fin-from-client":
        c.close()
    elif ending == "fin-from-broker":
        c.fin(False)
        c.fin(True)
    else:
        c.rst(ending == "rst")
    assert watch.take(200.0) == {"dev": metrics(attempts=1, disconnects=disconnects)}
    assert watch.stats()["flows"] == 0


def test_an_open_session_is_reported_with_zeros_until_it_ends() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev", keepalive=60) + publish("t", b"abc"))
    c.down(connack(0))
    assert watch.take(110.0) == {"dev": metrics(sent={"t": 1}, sizes={"t": 3}, attempts=1)}
    assert watch.take(120.0) == {"dev": metrics()}
    assert watch.stats()["sessions"] == 1
    c.up(PINGREQ)
    c.close()
    assert watch.take(130.0) == {"dev": metrics(disconnects=1)}
    assert watch.take(140.0) == {}
    assert watch.stats()["clients"] == 0


def test_a_session_silent_past_its_keepalive_has_been_dropped_by_the_broker() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev", keepalive=10))
    c.down(connack(0))
    assert watch.take(c.ts + 40) == {"dev": metrics(attempts=1)}  # 15 s + grace not yet over
    assert watch.take(c.ts + 46) == {"dev": metrics(disconnects=1)}
    assert watch.stats()["expired_flows"] == 1
    assert watch.take(c.ts + 50) == {}


def test_one_client_id_from_two_addresses() -> None:
    watch = BrokerWatch([PORT])
    a = Conn(watch, sport=40000).open()
    b = Conn(watch, sport=40001, src=bytes([198, 51, 100, 7])).open()
    a.up(connect("dev"))
    b.up(connect("dev"))
    a.close()  # taken over by b
    assert watch.take(200.0) == {
        "dev": metrics(attempts=2, disconnects=1, ips=("192.0.2.10", "198.51.100.7"))
    }
    assert watch.take(210.0) == {"dev": metrics(ips=("198.51.100.7",))}


def test_sessions_older_than_the_capture_are_not_guessed() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch)  # no SYN seen
    c.up(publish("t", b"1"), [1])
    c.down(publish("t", b"2"))
    c.close()
    assert watch.take(200.0) == {}
    assert watch.stats()["unattributed_packets"] == 3
    assert watch.stats()["flows"] == 0


def test_missing_syn_ack_leaves_the_broker_side_undecoded() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch)
    watch.feed(c.frame(True, SYN, c.up_isn, b""))
    c.up(connect("dev", username="u"))
    c.down(connack(5))
    assert watch.take(200.0) == {"dev": metrics(attempts=1)}
    assert watch.stats()["gaps"] == 1


def test_empty_client_ids() -> None:
    watch = BrokerWatch([PORT])
    v3 = Conn(watch, sport=1).open()
    v3.up(connect("") + publish("t", b""))
    v3.down(connack(0))
    v5 = Conn(watch, sport=2).open()
    v5.up(connect("", level=5) + publish("t", b"", v5=True))
    v5.down(connack(0, v5=True, assigned="auto-7"))
    v5.up(publish("u", b"1", v5=True))
    assert watch.take(200.0) == {"auto-7": metrics(sent={"u": 1}, sizes={"u": 1}, attempts=1)}
    assert watch.stats()["unattributed_sessions"] == 1


def test_port_reuse_ends_the_old_session() -> None:
    watch = BrokerWatch([PORT])
    old = Conn(watch).open()
    old.up(connect("dev"))
    new = Conn(watch, up_isn=77_000, down_isn=88_000).open()  # its FIN was lost
    new.up(connect("dev"))
    assert watch.take(200.0) == {"dev": metrics(attempts=2, disconnects=1)}
    assert watch.stats()["flows"] == 1


def test_duplicate_syn_and_frames_seen_twice_count_once() -> None:
    """As on lo when both copies of each packet reach the watch."""
    watch = BrokerWatch([PORT])
    c = Conn(watch)
    frames = [c.frame(True, SYN, c.up_isn, b""), c.frame(False, SYN | ACK, c.down_isn, b"")]
    frames += c.segments(True, connect("dev") + publish("t", b"1"))
    frames += c.segments(False, connack(0))
    frames += [c.frame(True, FIN | ACK, c.up_seq, b""), c.frame(False, FIN | ACK, c.down_seq, b"")]
    for f in frames:
        watch.feed(f)
        watch.feed(f._replace(outgoing=not f.outgoing))
    assert watch.take(200.0) == {
        "dev": metrics(sent={"t": 1}, sizes={"t": 1}, attempts=1, disconnects=1)
    }


def test_malformed_stream_is_counted_and_ends_decoding_of_that_direction() -> None:
    watch = BrokerWatch([PORT])
    c = Conn(watch).open()
    c.up(connect("dev") + bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
    c.up(publish("t", b""))
    c.down(connack(0) + publish("in", b""))
    assert watch.take(200.0) == {"dev": metrics(received={"in": 1}, attempts=1)}
    assert watch.stats()["decode_errors"] == 1


# -- bounds ---------------------------------------------------------------------------


def test_flows_are_bounded_least_recent_first() -> None:
    watch = BrokerWatch([PORT], max_flows=2)
    conns = [Conn(watch, sport=p).open() for p in (1, 2)]
    conns[0].up(connect("one"))
    conns[1].up(connect("two"))
    conns[0].up(PINGREQ)  # "two" is now the least recently active
    third = Conn(watch, sport=3).open()
    third.up(connect("three"))
    stats = watch.stats()
    assert (stats["flows"], stats["evicted_flows"], stats["sessions"]) == (2, 1, 2)
    conns[1].up(publish("t", b""))  # its flow is gone
    taken = watch.take(200.0)
    assert taken["two"] == metrics(attempts=1)
    assert watch.take(210.0).keys() == {"one", "three"}


def test_clients_and_topics_are_bounded() -> None:
    watch = BrokerWatch([PORT], max_clients=1, max_topics=2)
    a = Conn(watch, sport=1).open()
    a.up(connect("a") + b"".join(publish(f"t/{i}", b"") for i in range(5)))
    b = Conn(watch, sport=2).open()
    b.up(connect("b") + publish("x", b""))
    assert watch.take(200.0) == {
        "a": metrics(sent={"t/0": 1, "t/1": 1}, sizes={"t/0": 0, "t/1": 0}, attempts=1)
    }
    stats = watch.stats()
    assert stats["clients_over_limit"] == 1
    assert stats["topics_over_limit"] == 6
    assert stats["unattributed_packets"] == 1


def test_other_traffic_is_ignored() -> None:
    watch = BrokerWatch([PORT])
    watch.feed(Frame(1.0, False, CLIENT, BROKER, UDP, 5000, PORT, 0, 0, b"\x10\x00", 2))
    watch.feed(Frame(1.0, False, CLIENT, BROKER, TCP, 5000, 8883, SYN, 0, b"", 0))
    assert watch.stats()["flows"] == 0


def test_matches_and_bad_arguments() -> None:
    assert matches([1883, 1884]) == [Match("tcp", ports=frozenset({1883, 1884}), snaplen=0xFFFF)]
    with pytest.raises(ValueError, match="broker ports must be 1-65535"):
        BrokerWatch([0])
    with pytest.raises(ValueError, match="at least one"):
        matches([])
    with pytest.raises(ValueError, match="max_flows must be positive"):
        BrokerWatch([PORT], max_flows=0)

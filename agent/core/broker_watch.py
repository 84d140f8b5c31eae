"""Gateway broker watch: AWS IoT's cloud-side metrics per client id, measured passively
on the plaintext traffic of the gateway's own MQTT broker.

`BrokerWatch(ports)` is fed the TCP frames to and from the broker's plaintext listeners
(a frame belongs to the broker when its sport or dport is a broker port; the end with the
broker port is the broker, the other the client) and `take(now)` returns, per client id,
the metrics of the interval (see `take`). Pure: time comes from `Frame.ts` and `now`.

What it sees and what it does not:
- TLS listeners (8883) cannot be decoded passively: only plaintext ports are watched.
  A connection from this host to someone else's broker on a watched port would be taken
  for a client of ours (the filter is by port; gateways bridge upstream over TLS).
- Each flow (client address and port, broker address and port) is reassembled per
  direction by sequence number: bytes in order go to that direction's decoder
  (agent.core.mqtt_wire); segments ahead of a hole wait in a small buffer (`MAX_HELD`
  segments, `MAX_HELD_BYTES`); retransmitted bytes are dropped. A hole that does not fill
  before the buffer is full (a packet the capture lost) is a gap: MQTT has no sync marker,
  so that direction is not decoded again until the flow closes (counted in `gaps`; its
  later segments in `unsynced_packets`). The session keeps its client id, and FIN/RST
  still close it. A frame seen twice (both copies of a packet on lo) is a retransmission
  by this rule and counts once; so does a repeated SYN.
- A frame cut by the snap length (`length > len(payload)`) is a hole the decoder may
  skip when it falls inside a PUBLISH payload, which is counted, never needed: with a
  256-byte snap length (~190 bytes of TCP payload after the headers) topics and payload
  sizes are still measured, as long as each segment that starts an MQTT packet holds
  that packet's header and topic (true for one packet per segment, the usual case for
  device traffic). A hole anywhere else is a gap.
- Only flows whose SYN was seen are decoded: the stream must be read from its first byte
  to find packet boundaries. A session older than the capture, a 3.1.1 client with an
  empty client id (the broker names it, off the wire), or a client beyond `max_clients`
  is not guessed: its data segments are counted in `unattributed_packets`. An MQTT 5
  client with an empty id gets the id the broker assigns in CONNACK.
- A session is open from its CONNECT until a refusing CONNACK, a DISCONNECT (either way),
  a FIN or RST, or silence past 1.5 x its keep-alive (the broker has dropped it then).
  The last three count a disconnect unless a DISCONNECT already did. Flows are bounded by
  `max_flows` (least recently active dropped, counted in `evicted_flows`); flows idle
  for `idle_s` are dropped at `take`.
- Authorization failures: a CONNACK refusing with 3.1.1 code 4/5 or MQTT 5 0x86/0x87 (under
  topic ""), a SUBACK code 0x80 (3.1.1) / 0x87 (MQTT 5) under its filter, an MQTT 5
  PUBACK/PUBREC 0x87 under the PUBLISH's topic. A 3.1.1 broker refuses a publish silently
  (it acks as usual), and so does an MQTT 5 broker at QoS 0: those are not seen.
  A refused PUBLISH still counts in aws:num-messages-sent: the client sent it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from typing import TypeVar

from agent.core.mqtt_wire import (
    MAX_HEAD,
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
)
from agent.core.packet import ACK, FIN, RST, SYN, TCP, Frame, Match, ip_text

SEQ_MASK = 0xFFFFFFFF
SEQ_HALF = 1 << 31
MAX_HELD = 8  # out-of-order segments held per direction
MAX_HELD_BYTES = 64 * 1024
MAX_PENDING = 1024  # packet ids awaiting PUBACK/SUBACK per flow
KEEPALIVE_GRACE_S = 30.0
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code
SUBACK_FAILURE_V3 = 0x80
CONNACK_REFUSED_V3 = frozenset({4, 5})  # bad user name or password, not authorized
CONNACK_REFUSED_V5 = frozenset({0x86, 0x87})

SENT = "aws:num-messages-sent"
RECEIVED = "aws:num-messages-received"
BYTE_SIZE = "aws:message-byte-size"
AUTH_FAILURES = "aws:num-authorization-failures"
ATTEMPTS = "aws:num-connection-attempts"
DISCONNECTS = "aws:num-disconnects"
SOURCE_IPS = "aws:source-ip-address"

_K = TypeVar("_K")
_V = TypeVar("_V")
_FlowKey = tuple[bytes, int, bytes, int]  # client address, port, broker address, port


WHOLE_SEGMENT = 0xFFFF  # the largest snap length: a GRO-merged segment is at most 64 KiB


def matches(ports: Collection[int]) -> list[Match]:
    """The kernel filter clauses: TCP to or from a broker port, every flag (SYN, FIN and
    RST frame the sessions). Both ends, not only the local one: a client on the gateway
    itself talks to the broker over lo. Whole segments: a client that batches many
    PUBLISHes into one segment would otherwise leave a gap at every cut one."""
    return [Match("tcp", ports=frozenset(_check_ports(ports)), snaplen=WHOLE_SEGMENT)]


def _check_ports(ports: Collection[int]) -> frozenset[int]:
    bad = [p for p in ports if not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536]
    if bad or not ports:
        raise ValueError(f"broker ports must be 1-65535, at least one; got {sorted(ports)!r}")
    return frozenset(ports)


class _Client:
    __slots__ = (
        "attempts",
        "auth_failures",
        "disconnects",
        "ips",
        "received",
        "sent",
        "sessions",
        "sizes",
    )

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.auth_failures: dict[str, int] = {}
        self.attempts = 0
        self.disconnects = 0
        self.ips: set[str] = set()
        self.sessions = 0  # open sessions: the client is reported while any is


class _Stream:
    """One direction of a flow: reassembly state and its decoder (None once desynced)."""

    __slots__ = ("decoder", "fin", "held", "held_bytes", "next_seq")

    def __init__(self, from_client: bool, max_head: int) -> None:
        self.decoder: StreamDecoder | None = StreamDecoder(from_client, max_head=max_head)
        self.next_seq: int | None = None  # known from the SYN / SYN-ACK
        self.held: dict[int, tuple[bytes, int, bool]] = {}  # seq -> payload, length, fin
        self.held_bytes = 0
        self.fin = False


class _Flow:
    __slots__ = (
        "client",
        "client_ip",
        "down",
        "isn",
        "keepalive_s",
        "last_ts",
        "open",
        "pubs",
        "subs",
        "up",
    )

    def __init__(self, client_ip: str, isn: int, ts: float, max_head: int) -> None:
        self.client_ip = client_ip
        self.isn = isn
        self.last_ts = ts
        self.up = _Stream(True, max_head)  # client -> broker
        self.down = _Stream(False, max_head)  # broker -> client
        self.client: _Client | None = None
        self.open = False  # an MQTT session: CONNECT seen, not yet ended
        self.keepalive_s = 0
        self.pubs: dict[int, str] = {}  # packet id -> topic of the client's QoS>0 PUBLISH
        self.subs: dict[int, tuple[str, ...]] = {}  # packet id -> filters of a SUBSCRIBE


class BrokerWatch:
    def __init__(
        self,
        ports: Collection[int],
        *,
        max_clients: int = 1000,
        max_flows: int = 4096,
        max_topics: int = 1000,
        idle_s: float = 3600.0,
        max_head: int = MAX_HEAD,
    ) -> None:
        """`max_topics`: distinct topics kept per client and metric in an interval;
        `idle_s`: a flow with no frame for this long is forgotten (its FIN was lost);
        `max_head`: bytes kept to decode one MQTT packet (agent.core.mqtt_wire)."""
        self.ports = _check_ports(ports)
        for name, value in (
            ("max_clients", max_clients),
            ("max_flows", max_flows),
            ("max_topics", max_topics),
            ("idle_s", idle_s),
            ("max_head", max_head),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.max_clients = max_clients
        self.max_flows = max_flows
        self.max_topics = max_topics
        self.idle_s = idle_s
        self.max_head = max_head
        self._flows: OrderedDict[_FlowKey, _Flow] = OrderedDict()  # least recent first
        self._clients: dict[str, _Client] = {}
        self._stats = dict.fromkeys(
            (
                "unattributed_packets",
                "unattributed_sessions",
                "unsynced_packets",
                "decode_errors",
                "gaps",
                "problems",
                "evicted_flows",
                "expired_flows",
                "clients_over_limit",
                "topics_over_limit",
            ),
            0,
        )

    # -- frames ---------------------------------------------------------------------

    def feed(self, f: Frame) -> None:
        if f.proto != TCP:
            return
        if f.dport in self.ports:
            up, key = True, (f.src, f.sport, f.dst, f.dport)
        elif f.sport in self.ports:
            up, key = False, (f.dst, f.dport, f.src, f.sport)
        else:
            return
        flow = self._flows.get(key)
        seq = f.seq
        if f.flags & SYN:
            seq = (seq + 1) & SEQ_MASK  # the SYN takes one sequence number
            if up and not f.flags & ACK:
                if flow is None or flow.isn != f.seq:
                    if flow is not None:  # the port pair reused: the old flow is over
                        self._drop(key, flow, disconnect=True)
                    flow = self._open(key, f)
                    flow.up.next_seq = seq
            elif not up and flow is not None and flow.down.next_seq is None:
                flow.down.next_seq = seq
        if flow is None:
            if f.length:
                self._stats["unattributed_packets"] += 1
            return
        self._flows.move_to_end(key)
        flow.last_ts = f.ts
        if f.flags & RST:
            self._drop(key, flow, disconnect=True)
            return
        fin = bool(f.flags & FIN)
        if f.length or fin:
            self._segment(flow, flow.up if up else flow.down, seq, f.payload, f.length, fin)
            if f.length and flow.client is None:
                self._stats["unattributed_packets"] += 1
        if flow.up.fin and flow.down.fin:
            self._flows.pop(key)

    def _open(self, key: _FlowKey, f: Frame) -> _Flow:
        if len(self._flows) >= self.max_flows:
            old_key, old = next(iter(self._flows.items()))
            self._drop(old_key, old, disconnect=False)
            self._stats["evicted_flows"] += 1
        flow = _Flow(ip_text(key[0]), f.seq, f.ts, self.max_head)
        self._flows[key] = flow
        return flow

    def _drop(self, key: _FlowKey, flow: _Flow, *, disconnect: bool) -> None:
        self._end_session(flow, disconnect=disconnect)
        self._flows.pop(key, None)

    def _segment(
        self, flow: _Flow, stream: _Stream, seq: int, payload: bytes, length: int, fin: bool
    ) -> None:
        """Reassembly: deliver what is next in sequence, hold what is ahead of a hole,
        drop what was already delivered."""
        if stream.decoder is None or stream.next_seq is None:
            if stream.decoder is not None:  # data, but its SYN / SYN-ACK was not seen
                self._desync(stream)
            if length:
                self._stats["unsynced_packets"] += 1
            if fin:  # out of order perhaps, but the flow is ending either way
                self._finish(flow, stream)
            return
        offset = (seq - stream.next_seq) & SEQ_MASK
        if offset >= SEQ_HALF:  # starts before what is next: a retransmission
            back = SEQ_MASK + 1 - offset
            if back > length or (back == length and not fin):
                return
            payload, length, offset = payload[back:], length - back, 0
        if offset:
            if seq in stream.held and len(stream.held[seq][0]) >= len(payload):
                return
            if len(stream.held) >= MAX_HELD or stream.held_bytes + len(payload) > MAX_HELD_BYTES:
                self._desync(stream)
                if length:
                    self._stats["unsynced_packets"] += 1
                return
            stream.held[seq] = (payload, length, fin)
            stream.held_bytes += len(payload)
            return
        self._deliver(flow, stream, payload, length, fin)
        while stream.held and stream.decoder is not None and stream.next_seq is not None:
            # the next in sequence, or one that overlaps what was delivered
            ready = next((s for s in stream.held if _due(s, stream.next_seq)), None)
            if ready is None:
                break
            held = stream.held.pop(ready)
            stream.held_bytes -= len(held[0])
            self._segment(flow, stream, ready, *held)

    def _deliver(
        self, flow: _Flow, stream: _Stream, payload: bytes, length: int, fin: bool
    ) -> None:
        decoder = stream.decoder
        assert decoder is not None and stream.next_seq is not None
        stream.next_seq = (stream.next_seq + length + fin) & SEQ_MASK
        events = decoder.feed(payload) if payload else []
        lost = length - len(payload)
        absorbed = decoder.skip(lost) if lost > 0 else True
        self._apply(flow, decoder.from_client, events)
        if not absorbed:
            self._desync(stream)
        elif decoder.error is not None:
            self._stats["decode_errors"] += 1
            stream.decoder = None
            stream.held.clear()
            stream.held_bytes = 0
        if fin:
            self._finish(flow, stream)

    def _desync(self, stream: _Stream) -> None:
        self._stats["gaps"] += 1
        stream.decoder = None
        stream.held.clear()
        stream.held_bytes = 0

    def _finish(self, flow: _Flow, stream: _Stream) -> None:
        stream.fin = True
        self._end_session(flow, disconnect=True)

    # -- MQTT -----------------------------------------------------------------------

    def _apply(self, flow: _Flow, up: bool, events: list[Event]) -> None:
        for ev in events:
            client = flow.client
            if isinstance(ev, Publish):
                if client is None:
                    continue
                if up:
                    self._add(client.sent, ev.topic, 1)
                    if ev.topic in client.sizes or self._room(client.sizes):
                        client.sizes[ev.topic] = max(client.sizes.get(ev.topic, 0), ev.payload_len)
                    if ev.packet_id is not None:
                        _bounded_put(flow.pubs, ev.packet_id, ev.topic)
                else:
                    self._add(client.received, ev.topic, 1)
            elif isinstance(ev, PubAck):
                if not up:
                    topic = flow.pubs.pop(ev.packet_id, None)
                    if client is not None and topic is not None and ev.code == NOT_AUTHORIZED:
                        self._add(client.auth_failures, topic, 1)
            elif isinstance(ev, Subscribe):
                _bounded_put(flow.subs, ev.packet_id, ev.filters)
            elif isinstance(ev, SubAck):
                filters = flow.subs.pop(ev.packet_id, ())
                failure = NOT_AUTHORIZED if self._level(flow) == 5 else SUBACK_FAILURE_V3
                for topic_filter, code in zip(filters, ev.codes, strict=False):
                    if client is not None and code == failure:
                        self._add(client.auth_failures, topic_filter, 1)
            elif isinstance(ev, Connect):
                self._connect(flow, ev)
            elif isinstance(ev, ConnAck):
                self._connack(flow, ev)
            elif isinstance(ev, Disconnect):
                self._end_session(flow, disconnect=True)
            elif isinstance(ev, Problem):
                self._stats["problems"] += 1

    @staticmethod
    def _level(flow: _Flow) -> int | None:
        return flow.up.decoder.level if flow.up.decoder is not None else None

    def _connect(self, flow: _Flow, ev: Connect) -> None:
        flow.keepalive_s = ev.keepalive_s
        flow.open = True
        if flow.down.decoder is not None:
            flow.down.decoder.level = ev.level
        if ev.client_id:
            self._attach(flow, ev.client_id)
        elif ev.level < 5:
            self._stats["unattributed_sessions"] += 1
        # MQTT 5 with an empty id: the CONNACK carries the id the broker assigned.

    def _connack(self, flow: _Flow, ev: ConnAck) -> None:
        if flow.client is None and flow.open:
            if ev.assigned_client_id:
                self._attach(flow, ev.assigned_client_id)
            elif self._level(flow) == 5:
                self._stats["unattributed_sessions"] += 1
        if ev.code:
            refused = CONNACK_REFUSED_V5 if self._level(flow) == 5 else CONNACK_REFUSED_V3
            if flow.client is not None and ev.code in refused:
                self._add(flow.client.auth_failures, "", 1)
            self._end_session(flow, disconnect=False)

    def _attach(self, flow: _Flow, client_id: str) -> None:
        client = self._clients.get(client_id)
        if client is None:
            if len(self._clients) >= self.max_clients:
                self._stats["clients_over_limit"] += 1
                self._stats["unattributed_sessions"] += 1
                return
            client = self._clients[client_id] = _Client()
        flow.client = client
        client.attempts += 1
        client.ips.add(flow.client_ip)
        if flow.open:
            client.sessions += 1

    def _end_session(self, flow: _Flow, *, disconnect: bool) -> None:
        if not flow.open:
            return
        flow.open = False
        if flow.client is not None:
            flow.client.sessions -= 1
            if disconnect:
                flow.client.disconnects += 1

    def _room(self, counts: dict[str, int]) -> bool:
        if len(counts) < self.max_topics:
            return True
        self._stats["topics_over_limit"] += 1
        return False

    def _add(self, counts: dict[str, int], topic: str, n: int) -> None:
        if topic in counts or self._room(counts):
            counts[topic] = counts.get(topic, 0) + n

    # -- results --------------------------------------------------------------------

    def take(self, now: float) -> dict[str, dict[str, object]]:
        """Per client id seen since the last take or with an open session, its metrics
        since the last take (zeros and empty maps for a quiet open session, so alarms can
        clear): aws:num-messages-sent / -received ({topic: count}), aws:message-byte-size
        ({topic: largest payload sent}, left out when nothing was sent),
        aws:num-authorization-failures ({topic or filter: count}, "" for a refused
        CONNECT), aws:num-connection-attempts, aws:num-disconnects (ints) and
        aws:source-ip-address (sorted text addresses of its sessions in the interval).
        Flows silent past their keep-alive or `idle_s` are dropped first."""
        self._expire(now)
        out: dict[str, dict[str, object]] = {}
        for client_id, c in self._clients.items():
            metrics: dict[str, object] = {
                SENT: c.sent,
                RECEIVED: c.received,
                AUTH_FAILURES: c.auth_failures,
                ATTEMPTS: c.attempts,
                DISCONNECTS: c.disconnects,
                SOURCE_IPS: sorted(c.ips),
            }
            if c.sizes:
                metrics[BYTE_SIZE] = c.sizes
            out[client_id] = metrics
        self._clients = {cid: c for cid, c in self._clients.items() if c.sessions > 0}
        for c in self._clients.values():
            c.sent, c.received, c.sizes, c.auth_failures = {}, {}, {}, {}
            c.attempts = c.disconnects = 0
            c.ips = set()
        for flow in self._flows.values():
            if flow.open and flow.client is not None:
                flow.client.ips.add(flow.client_ip)
        return out

    def _expire(self, now: float) -> None:
        for key, flow in list(self._flows.items()):
            if flow.open and flow.keepalive_s:
                if now - flow.last_ts > 1.5 * flow.keepalive_s + KEEPALIVE_GRACE_S:
                    self._drop(key, flow, disconnect=True)
                    self._stats["expired_flows"] += 1
            elif now - flow.last_ts > self.idle_s:
                self._drop(key, flow, disconnect=True)
                self._stats["expired_flows"] += 1

    def stats(self) -> dict[str, int]:
        """Now: `flows`, `clients` (reported at the next take), open `sessions`. Since
        the start: `unattributed_packets` (data segments on flows with no client id: no SYN
        seen, empty 3.1.1 id, client limit), `unattributed_sessions` (CONNECTs of those
        last two kinds), `unsynced_packets` (data segments of a direction after its gap or
        decode error), `decode_errors` (malformed MQTT), `gaps` (holes not filled, snap
        length cuts outside a payload, a SYN-ACK not seen), `problems` (packets framed but
        not decoded: over the size bounds, unknown topic alias), `evicted_flows`,
        `expired_flows`, `clients_over_limit`, `topics_over_limit` (a topic not counted
        because the client's map for the interval was full)."""
        return {
            "flows": len(self._flows),
            "clients": len(self._clients),
            "sessions": sum(c.sessions for c in self._clients.values()),
            **self._stats,
        }


def _due(seq: int, next_seq: int) -> bool:
    offset = (seq - next_seq) & SEQ_MASK
    return offset == 0 or offset >= SEQ_HALF


def _bounded_put(pending: dict[_K, _V], key: _K, value: _V) -> None:
    """Remember an id awaiting its ack; past MAX_PENDING the oldest is forgotten (its
    ack, if it ever comes, is then not matched)."""
    pending.pop(key, None)
    if len(pending) >= MAX_PENDING:
        del pending[next(iter(pending))]
    pending[key] = value

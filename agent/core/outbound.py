"""The TCP connections this device opens: its outbound SYNs without ACK, counted between
takes. A beacon that connects for a second every few minutes is below the noise of every
volume metric and rarely caught by a sampled gauge of established connections; an exact
count of the connections opened is the metric it moves (docs/ml-model.md).

A connection attempt counts once whatever its fate (answered SYN-ACK, refused with RST,
never answered), as the client's connect() does: a SYN retransmitted is the same attempt.
A retransmit carries the first SYN's 4-tuple and sequence number (the ISN), so an attempt
is keyed by (source, source port, destination, destination port, ISN) and remembered for
`dedup_s` after its first SYN (with the default net.ipv4.tcp_syn_retries = 6, Linux sends
its last retransmit 63 s after the first SYN, or 10 s since 6.5's linear timeouts); a new
connection that reuses the 4-tuple has a new ISN and
counts. At most `max_entries` attempts are remembered: past that, SYNs are counted
without deduplication (`overflow` in stats) rather than dropped, so a flood shows.

Every SYN the host sends out is counted, so a router counts the connections it forwards
too (on its outgoing interface), and a connection over lo counts once (its outgoing copy).

Each attempt is also a contact of its (source, destination, destination port) for
agent.core.periodic: the destinations contacted at a regular interval, a beacon's mark.
Pure: time comes from `Frame.ts` and the `now` of `periodic`."""

from __future__ import annotations

from collections import OrderedDict

from agent.core.packet import ACK, SYN, TCP, Frame, Match, ip_text
from agent.core.periodic import Periodicity

MATCHES: tuple[Match, ...] = (Match("tcp", direction="out", tcp_flags=(SYN | ACK, SYN)),)

DEDUP_S = 75.0  # longer than the last default SYN retransmit (63 s after the first)
MAX_ENTRIES = 65_536

_Key = tuple[bytes, int, bytes, int, int]


class OutboundWatch:
    """Connection attempts this host starts, counted between takes."""

    def __init__(self, *, dedup_s: float = DEDUP_S, max_entries: int = MAX_ENTRIES) -> None:
        if not dedup_s > 0 or max_entries < 1:
            raise ValueError(
                f"dedup_s must be > 0 and max_entries >= 1, got {dedup_s} and {max_entries}"
            )
        self.dedup_s = dedup_s
        self.max_entries = max_entries
        self._seen: OrderedDict[_Key, float] = OrderedDict()  # attempt -> its first SYN's ts
        self._count = 0
        self._periodicity: Periodicity[tuple[bytes, bytes, int]] = Periodicity()
        self._stats = dict.fromkeys(("syns", "opened", "retransmits", "overflow"), 0)

    def feed(self, f: Frame) -> None:
        if not f.outgoing or f.proto != TCP or f.flags & (SYN | ACK) != SYN:
            return
        self._stats["syns"] += 1
        seen = self._seen
        # Forget attempts older than dedup_s (frames come in time order, near enough).
        while seen:
            key, first = next(iter(seen.items()))
            if f.ts - first < self.dedup_s:
                break
            del seen[key]
        key = (f.src, f.sport, f.dst, f.dport, f.seq)
        if key in seen:
            self._stats["retransmits"] += 1
            return
        if len(seen) >= self.max_entries:
            self._stats["overflow"] += 1  # counted, not remembered: a retransmit counts again
        else:
            seen[key] = f.ts
        self._stats["opened"] += 1
        self._count += 1
        self._periodicity.add(f.ts, (f.src, f.dst, f.dport))

    def take(self) -> int:
        """The connection attempts since the last take."""
        count, self._count = self._count, 0
        return count

    def periodic(self, now: float) -> tuple[int, list[str]]:
        """How many (source, destination, port) this host contacts at a regular interval
        at `now`, and their destination addresses (each once, sorted)."""
        keys = self._periodicity.periodic(now)
        addresses = sorted({dst for _, dst, _ in keys}, key=lambda ip: (len(ip), ip))
        return len(keys), [ip_text(ip) for ip in addresses]

    def stats(self) -> dict[str, int]:
        """Cumulative counts: SYNs taken in, attempts counted, retransmits not counted,
        attempts counted without deduplication because max_entries were remembered; and
        the periodicity's destinations remembered, periodic, forgotten."""
        periodicity = {f"destinations_{k}": v for k, v in self._periodicity.stats().items()}
        return {**self._stats, **periodicity}

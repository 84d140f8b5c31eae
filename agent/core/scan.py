"""Port scans against this device: Threshold Random Walk (Jung, Paxson, Berger and
Balakrishnan, "Fast Portscan Detection Using Sequential Hypothesis Testing", 2004).

Per remote source, every first contact to a local service (an inbound TCP SYN without ACK
to a local address and port that source has not tried before) is a trial. The trial
succeeds when the device answers SYN-ACK and fails when it answers RST or not at all
within `probe_timeout_s` (judged lazily: when the source's next frame or `scanners(now)`
brings a later time). A benign host succeeds with probability theta0 = 0.8, a scanner
with theta1 = 0.2; each outcome multiplies the source's likelihood ratio by
theta1/theta0 = 1/4 (success) or (1-theta1)/(1-theta0) = 4 (failure). The source is
flagged when the ratio reaches eta1 = PD/PF = 99 and declared benign at
eta0 = (1-PD)/(1-PF) ~ 0.0101, where the walk starts again at 1, so a host that scans after
a run of good connections is caught as quickly as a fresh one. With these defaults 4
failed probes flag a fresh source (4**3 = 64 < 99 <= 4**4 = 256) and 4 successes declare
it benign; at most 3 successes stand in the walk, so at most 3 + 4 = 7 failures flag any.

TRW needs no time window: the walk moves on outcomes, not on rates, so a scan of one probe
a second and one of one probe a minute are flagged after the same 4 probes. State per
source is kept until it has been idle for `idle_s` (1 h); at most `max_sources` sources are
tracked (the least recently seen is dropped for a new one), each remembering at most
`max_ports` services (the oldest is forgotten, its trial unjudged, for a new one), so memory
is bounded whatever the traffic. A flagged source keeps no services: any SYN from it
extends its hold, and when the hold has run out it starts afresh, so the same ports
scanned again count again.

TRW alone clears a connect scan that mostly finds OPEN ports (successes walk it down), so
a second rule flags a source that opens `open_ports` (12) distinct services within
`open_window_s` (600 s): a client of an IoT device or gateway uses a handful of services
(ssh, http, mqtt), not 12 in ten minutes; a scan of a device with that many listeners
does. It only matters when the device has at least `open_ports` listeners.

Connections of the device to itself (loopback sources, source = destination) are left
out. A trial is keyed by local address and port, so on a device with one address it is "a
distinct local port"; with several addresses (or forwarded traffic on a router) each
address is a separate service, as TRW's distinct hosts. Repeated SYNs to one service
(retransmissions, reconnects) are one trial. Pure: time comes from `Frame.ts` and `now`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from agent.core.packet import ACK, RST, SYN, TCP, Frame, Match, ip_text

MATCHES: tuple[Match, ...] = (
    Match("tcp", direction="in", tcp_flags=(SYN | ACK, SYN)),  # probes
    Match("tcp", direction="out", tcp_flags=(SYN | ACK, SYN | ACK)),  # success
    Match("tcp", direction="out", tcp_flags=(RST, RST)),  # failure
)


_LOOPBACK6 = bytes(15) + b"\x01"


def _local(f: Frame) -> bool:
    """The device talking to itself (over lo): no remote scanner, and which of lo's two
    copies of a packet the reader keeps would decide whether it looked like one."""
    return f.src == f.dst or f.src[0] == 127 or f.src == _LOOPBACK6


def _service(address: bytes, port: int) -> int:
    # One int: smaller than an (address, port) tuple, and there are many of them.
    return int.from_bytes(address, "big") << 16 | port


class _Source:
    __slots__ = ("due", "flagged", "last_probe", "last_seen", "opened", "services", "walk")

    def __init__(self, ts: float) -> None:
        self.walk = 0.0  # log of the likelihood ratio
        self.flagged = False
        self.last_probe = ts
        self.last_seen = ts
        # Services tried, oldest first -> the deadline of a trial awaiting its answer, or
        # None once judged.
        self.services: dict[int, float | None] = {}
        self.due = math.inf  # the earliest deadline among them
        self.opened: list[float] = []  # times of the last open_ports successes


class ScanDetector:
    """Feed it the frames of MATCHES; `scanners(now)` says who is scanning the device."""

    def __init__(
        self,
        *,
        hold_s: float = 300.0,
        max_sources: int = 10000,
        probe_timeout_s: float = 3.0,
        idle_s: float = 3600.0,
        max_ports: int = 16,
        open_ports: int = 12,
        open_window_s: float = 600.0,
        theta0: float = 0.8,
        theta1: float = 0.2,
        pd: float = 0.99,
        pf: float = 0.01,
    ) -> None:
        if not 0.0 < theta1 < theta0 < 1.0:
            raise ValueError(f"need 0 < theta1 < theta0 < 1, got theta0={theta0} theta1={theta1}")
        if not 0.0 < pf < pd < 1.0:
            raise ValueError(f"need 0 < pf < pd < 1, got pd={pd} pf={pf}")
        for name, value in (
            ("hold_s", hold_s),
            ("probe_timeout_s", probe_timeout_s),
            ("open_window_s", open_window_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not idle_s >= hold_s:
            raise ValueError(f"idle_s must be >= hold_s ({hold_s}), got {idle_s}")
        if max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {max_sources}")
        if not 1 <= open_ports <= max_ports:
            raise ValueError(
                f"need 1 <= open_ports <= max_ports, got open_ports={open_ports} "
                f"max_ports={max_ports}"
            )
        self.hold_s = hold_s
        self.max_sources = max_sources
        self.probe_timeout_s = probe_timeout_s
        self.idle_s = idle_s
        self.max_ports = max_ports
        self.open_ports = open_ports
        self.open_window_s = open_window_s
        self._success = math.log(theta1 / theta0)
        self._failure = math.log((1.0 - theta1) / (1.0 - theta0))
        self._upper = math.log(pd / pf)
        self._lower = math.log((1.0 - pd) / (1.0 - pf))
        self._sources: OrderedDict[bytes, _Source] = OrderedDict()  # least recently seen first
        self._probes = 0
        self._evicted = 0

    def failures_to_flag(self) -> int:
        """Failed first contacts in a row that flag a fresh source (4 with the defaults)."""
        return math.ceil(self._upper / self._failure)

    def feed(self, f: Frame) -> None:
        if f.proto != TCP or _local(f):
            return
        self._forget_idle(f.ts)
        syn_ack = f.flags & (SYN | ACK)
        if not f.outgoing:
            if syn_ack == SYN:
                self._probe(f)
        elif syn_ack == SYN | ACK:
            self._answer(f, ok=True)
        elif f.flags & RST:
            self._answer(f, ok=False)

    def scanners(self, now: float) -> list[str]:
        """Sources flagged whose last probe is at most hold_s before `now`, sorted by address."""
        self._forget_idle(now)
        found = []
        for ip, src in self._sources.items():
            self._settle(src, now)
            if src.flagged and now - src.last_probe <= self.hold_s:
                found.append(ip)
        return [ip_text(ip) for ip in sorted(found, key=lambda ip: (len(ip), ip))]

    def stats(self) -> dict[str, int]:
        """Sources tracked, trials awaiting an answer, sources flagged (held or not),
        trials so far, sources dropped for max_sources."""
        sources = self._sources.values()
        return {
            "sources": len(sources),
            "pending": sum(d is not None for src in sources for d in src.services.values()),
            "flagged": sum(src.flagged for src in sources),
            "probes": self._probes,
            "evicted": self._evicted,
        }

    def _probe(self, f: Frame) -> None:
        src = self._sources.get(f.src)
        if src is None:
            if len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
                self._evicted += 1
            src = self._sources[f.src] = _Source(f.ts)
        else:
            self._sources.move_to_end(f.src)
            if src.flagged and f.ts - src.last_probe > self.hold_s:
                src = self._sources[f.src] = _Source(f.ts)  # the hold ran out: start afresh
            else:
                self._settle(src, f.ts)
        src.last_seen = f.ts
        if src.flagged:
            src.last_probe = f.ts
            return
        service = _service(f.dst, f.dport)
        if service in src.services:
            return  # a retransmission or a reconnect: the same trial
        if len(src.services) >= self.max_ports:
            del src.services[next(iter(src.services))]
        deadline = f.ts + self.probe_timeout_s
        src.services[service] = deadline
        src.due = min(src.due, deadline)
        src.last_probe = f.ts
        self._probes += 1

    def _answer(self, f: Frame, *, ok: bool) -> None:
        src = self._sources.get(f.dst)
        if src is None:
            return
        service = _service(f.src, f.sport)
        if src.services.get(service) is None:
            return  # no trial awaits it: an established connection, an answer already judged
        self._settle(src, f.ts)
        if src.services.get(service) is None:
            return  # it came after the deadline: the trial has failed
        src.services[service] = None
        self._outcome(src, ok=ok, ts=f.ts)

    def _settle(self, src: _Source, now: float) -> None:
        """Fail the source's trials whose deadline is before `now`, oldest first."""
        if now <= src.due:
            return
        expired: list[float] = []
        due = math.inf
        for service, deadline in src.services.items():
            if deadline is None:
                continue
            if deadline < now:
                expired.append(deadline)
                src.services[service] = None
            else:
                due = min(due, deadline)
        src.due = due
        for deadline in expired:
            self._outcome(src, ok=False, ts=deadline)

    def _outcome(self, src: _Source, *, ok: bool, ts: float) -> None:
        if src.flagged:
            return
        if ok:
            src.walk += self._success
            opened = src.opened
            opened.append(ts)
            if len(opened) > self.open_ports:
                del opened[0]
            if len(opened) == self.open_ports and ts - opened[0] <= self.open_window_s:
                self._flag(src)
                return
        else:
            src.walk += self._failure
        if src.walk >= self._upper:
            self._flag(src)
        elif src.walk <= self._lower:
            src.walk = 0.0  # benign for now; walk again so a later scan is still caught

    def _flag(self, src: _Source) -> None:
        src.flagged = True
        src.services = {}
        src.opened = []
        src.due = math.inf

    def _forget_idle(self, now: float) -> None:
        sources = self._sources
        while sources:
            ip, src = next(iter(sources.items()))
            if now - src.last_seen <= self.idle_s:
                break
            del sources[ip]

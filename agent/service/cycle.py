"""The daemon's logic between its parts, as a step with no I/O (aioquic's shape, one
layer up): a sample and the wall time go in; what to store, what to send and the
status come out. The daemon (agent.service.daemon) is the thin loop around it that
samples, reads clocks, writes the store and drives the outbox.

The rule core judges the whole sample; only the wire report is cut to `max_list`.
The metrics history gets the uncut report, so that replaying it reproduces the
daemon's events exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.core.events import ViolationEvent
from agent.core.judge import Judge
from agent.core.metrics import metrics_from_sample
from agent.core.profile import Dimension, SecurityProfile
from agent.core.report import ReportIdClock, WireReport, build_report, report_document
from agent.core.sample import NetworkStats, Sample

_ZERO_STATS = NetworkStats(0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Step:
    """What the edges do after a step: record `events` durably at once (with the
    detector's state), then publish them; append `metrics` to the metrics history."""

    events: tuple[ViolationEvent, ...] = ()
    # (timestamp, uncut report, per-client broker metrics)
    metrics: tuple[float, dict[str, Any], Mapping[str, Mapping[str, object]] | None] | None = None


def _add(a: NetworkStats, b: NetworkStats) -> NetworkStats:
    return NetworkStats(
        a.bytes_in + b.bytes_in,
        a.bytes_out + b.bytes_out,
        a.packets_in + b.packets_in,
        a.packets_out + b.packets_out,
    )


class Cycle:
    """Sample in, events and reports out. `counters` is what `counters()` returned
    before a restart (report ids, network deltas not yet reported, the clock)."""

    def __init__(
        self,
        detector: Judge,
        *,
        max_list: int,
        short_names: bool,
        counters: Mapping[str, Any] | None = None,
    ) -> None:
        saved = counters or {}
        self.detector = detector
        self.max_list = max_list
        self.short_names = short_names
        self.report_ids = ReportIdClock(int(saved.get("last_report_id", 0)))
        pending = saved.get("pending_network_stats")
        self.pending_stats = NetworkStats(**pending) if pending else _ZERO_STATS
        self.now = float(saved.get("last_now", 0.0))
        self.last_sample = Sample()
        self.last_sample_time: float | None = None
        self.samples = 0

    def clock(self, wall: float) -> float:
        """The rule core's clock: wall time that never goes back. After the wall clock
        is stepped back it stands still until the wall clock catches up."""
        self.now = max(wall, self.now)
        return self.now

    def observe(self, wall: float, sample: Sample) -> Step:
        """A new sample: judge it whole and keep it for the history and the report."""
        now = self.clock(wall)
        record = report_document(sample, self.report_ids.next(now))
        events = self.detector.observe(now, metrics_from_sample(sample), sample.clients)
        if sample.network_stats is not None:
            self.pending_stats = _add(self.pending_stats, sample.network_stats)
        self.last_sample = sample
        self.last_sample_time = now
        self.samples += 1
        return Step(tuple(events), (now, record, sample.clients))

    def tick(self, wall: float) -> Step:
        """Between samples: close the windows the clock has passed, end stale alarms."""
        deadline = self.detector.next_deadline()
        if deadline is None or wall < deadline:
            return Step()
        return Step(tuple(self.detector.tick(self.clock(wall))))

    def next_deadline(self) -> float | None:
        return self.detector.next_deadline()

    def report(self, wall: float) -> WireReport:
        """The metrics report to publish: the last sample, with the network deltas
        summed over every sample since the previous report."""
        now = self.clock(wall)
        sample = dataclasses.replace(self.last_sample, network_stats=self.pending_stats)
        self.pending_stats = _ZERO_STATS
        return build_report(
            sample, self.report_ids.next(now), max_list=self.max_list, short_names=self.short_names
        )

    def update_profiles(
        self,
        wall: float,
        profiles: Sequence[SecurityProfile],
        dimensions: Sequence[Dimension],
        thing_name: str,
        *,
        unsourced: Mapping[str, str] | None = None,
        clients: bool | None = None,
    ) -> Step:
        """A reload: new profiles in force; alarms of changed or removed behaviors end."""
        self.detector.thing_name = thing_name
        events = self.detector.update_profiles(
            profiles, self.clock(wall), dimensions, unsourced=unsourced, clients=clients
        )
        return Step(tuple(events))

    def counters(self) -> dict[str, Any]:
        """What a restart needs to go on: report ids, unreported deltas, the clock."""
        return {
            "last_report_id": self.report_ids.last,
            "pending_network_stats": dataclasses.asdict(self.pending_stats),
            "last_now": self.now,
        }

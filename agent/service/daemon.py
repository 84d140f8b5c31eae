"""`edge-defender run`: the agent. Collectors -> rule core -> store -> publisher.

One thread owns everything (the store, the spool, the rule core); awscrt's threads
only wake it. Cadence is monotonic (agent.service.cadence); the rule core gets wall
time, never going back, because its windows and events are in epoch seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agent.collect.sampler import Sampler
from agent.config import Config, ConfigError, load_config
from agent.core.evaluator import Detector
from agent.core.events import ViolationEvent
from agent.core.metrics import metrics_from_report
from agent.core.profile import ProfileError
from agent.core.report import NetworkStats, ReportIdClock, Sample, build_report, to_short_names
from agent.logs import kv
from agent.publish.mqtt import AWS_DOMAINS, Publisher
from agent.service.cadence import MonotonicScheduler
from agent.service.checks import check_tls_files
from agent.service.notify import Notifier
from agent.service.profiles import DetectFiles, load_detect_files
from agent.service.status import AgentStatus, write_status
from agent.store.history import History, history_path, open_history
from agent.store.spool import Spool

log = logging.getLogger(__name__)

AWS_MIN_REPORT_INTERVAL_S = 300.0  # AWS IoT throttles Device Defender reports
FLUSH_ON_STOP_S = 3.0
PRUNE_INTERVAL_S = 3600.0
# The alarm state is saved with every event, at every report and otherwise this
# often, to spare the SD card a synced write every cycle (what a crash loses is a few
# datapoints of consecutive counts and baseline, never an alarm).
STATE_SAVE_INTERVAL_S = 300.0
_ZERO_STATS = NetworkStats(0, 0, 0, 0)


class StartError(Exception):
    """The agent cannot start; the message says why in one line."""


def report_interval_s(cfg: Config) -> float:
    """The configured report interval, raised to AWS's throttle toward AWS endpoints."""
    wanted = cfg.sampling.report_interval_s
    endpoint = cfg.mqtt.endpoint or ""
    if endpoint.endswith(AWS_DOMAINS) and wanted < AWS_MIN_REPORT_INTERVAL_S:
        log.warning(
            kv(
                "report_interval_raised",
                configured_s=wanted,
                used_s=AWS_MIN_REPORT_INTERVAL_S,
                reason="AWS IoT accepts one metrics report per 5 minutes",
            )
        )
        return AWS_MIN_REPORT_INTERVAL_S
    return wanted


def _add(a: NetworkStats, b: NetworkStats) -> NetworkStats:
    return NetworkStats(
        a.bytes_in + b.bytes_in,
        a.bytes_out + b.bytes_out,
        a.packets_in + b.packets_in,
        a.packets_out + b.packets_out,
    )


def _load_detect(cfg: Config) -> DetectFiles:
    files = load_detect_files(cfg.detect.profiles)
    if not files.profiles:
        log.warning(kv("no_profiles", patterns=",".join(cfg.detect.profiles)))
    return files


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None, notifier: Notifier) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = notifier
        self.state_dir = Path(cfg.state_dir)
        self.wake = threading.Event()
        self.stop_requested = False
        self.reload_requested = False
        self.started_at = time.time()
        self.samples = 0
        self.last_sample_time: float | None = None
        self.last_sample = Sample()
        self.last_now = 0.0  # the rule core's clock: wall time that never goes back
        self.history: History | None = None
        self.publisher: Publisher | None = None
        self.spool: Spool | None = None

    # --- start and stop ---------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        if cfg.mqtt.endpoint:
            problems = check_tls_files(cfg.mqtt)
            if problems:
                raise StartError(problems[0])
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StartError(f"{self.state_dir}: cannot create the state directory: {e}") from e
        try:
            detect = _load_detect(cfg)
        except ProfileError as e:
            raise StartError(f"invalid security profile: {e}") from e
        self.history = open_history(history_path(self.state_dir))
        self.detector = Detector(
            detect.profiles,
            cfg.thing_name,
            stale_after_s=cfg.detect.stale_after_s,
            baseline_s=cfg.detect.baseline_s,
            min_baseline_datapoints=cfg.detect.min_baseline_datapoints,
            dimensions=detect.dimensions,
        )
        saved = self.history.load_alarm_state()
        if saved is not None:
            try:
                self.detector.restore_state(saved)
            except ValueError as e:
                # Refusing to start would loop forever under systemd; judging afresh
                # keeps the device watched. The stored events and history stay.
                log.error(kv("alarm_state_discarded", error=e))
        self.profile_names = [p.name for p in detect.profiles]
        self._say_inactive()
        counters = self.history.load_counters() or {}
        self.report_ids = ReportIdClock(int(counters.get("last_report_id", 0)))
        pending = counters.get("pending_network_stats")
        self.pending_stats = NetworkStats(**pending) if pending else _ZERO_STATS
        self.last_now = float(counters.get("last_now", 0.0))
        self.sampler = self._sampler(cfg)
        try:
            self._start_publisher()
        except ConfigError as e:
            raise StartError(str(e)) from e
        self._spool_recorded(time.time())
        log.info(
            kv(
                "started",
                thing=cfg.thing_name,
                config=cfg.config_file,
                state_dir=self.state_dir,
                profiles=len(detect.profiles),
                broker=cfg.mqtt.endpoint or "none",
            )
        )

    def _sampler(self, cfg: Config) -> Sampler:
        # The counters are only valid within one boot: under systemd they live on the
        # RuntimeDirectory's tmpfs, sparing the SD card a synced write every cycle.
        counters_dir = Path(os.environ.get("RUNTIME_DIRECTORY") or self.state_dir)
        return Sampler(cfg, counters_path=counters_dir / "netcounters.json")

    def _start_publisher(self) -> None:
        if not self.cfg.mqtt.endpoint:
            return
        self.spool = Spool(self.state_dir / "spool.db", self.cfg.mqtt.spool_max_bytes)
        self.publisher = Publisher(self.cfg, self.spool, self.wake)
        self.publisher.start()

    def _stop_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.stop(FLUSH_ON_STOP_S)
            self.publisher = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def _schedule(self) -> MonotonicScheduler:
        sched = MonotonicScheduler()
        sched.every_s(self.cfg.sampling.interval_s, self.cycle)
        sched.every_s(report_interval_s(self.cfg), self.report)
        sched.every_s(PRUNE_INTERVAL_S, self.prune)
        sched.every_s(STATE_SAVE_INTERVAL_S, self.save_state)
        watchdog_s = self.notifier.watchdog_interval_s()
        if watchdog_s is not None and watchdog_s / 2 < self.cfg.sampling.interval_s:
            # Cycles are too far apart to feed the watchdog alone.
            sched.every_s(watchdog_s / 2, self.notifier.watchdog)
        return sched

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; exit status 0 after a clean stop."""
        self.start()
        self.prune()
        self.cycle()
        self.notifier.ready()
        sched = self._schedule()
        while not self.stop_requested:
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
                sched = self._schedule()
            sched.run_pending()
            self.wake.wait(self._idle_s(sched))
            self.wake.clear()
            self.tick()
            if self.publisher is not None:
                self.publisher.pump()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info(kv("stopping"))
        self._stop_publisher()
        if self.history is not None:
            self.save_state()
            self.history.close()
            self.history = None
        log.info(kv("stopped", samples=self.samples))

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.wake.set()

    def request_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake.set()

    # --- the jobs ---------------------------------------------------------------------

    def cycle(self) -> None:
        """Sample, judge, store: every sampling interval."""
        began = time.monotonic()
        sample = self.sampler.sample()
        now = self._now()
        report = build_report(
            sample, self.report_ids.next(now), max_list=self.cfg.sampling.max_list
        )
        assert self.history is not None
        self.history.add_metrics(now, report)
        self._emit(self.detector.observe(now, metrics_from_report(report)), now)
        if sample.network_stats is not None:
            self.pending_stats = _add(self.pending_stats, sample.network_stats)
        self.last_sample = sample
        self.last_sample_time = now
        self.samples += 1
        self._write_status()
        self.notifier.watchdog()
        took = time.monotonic() - began
        if took > self.cfg.sampling.interval_s:
            log.warning(
                kv("cycle_overrun", took_s=round(took, 3), interval_s=self.cfg.sampling.interval_s)
            )

    def report(self) -> None:
        """Publish a metrics report: the last sample, with the network deltas summed over
        every sample since the previous report."""
        if self.publisher is None:
            return  # local only: the metrics history already holds every sample
        now = self._now()
        sample = dataclasses.replace(self.last_sample, network_stats=self.pending_stats)
        report = build_report(
            sample, self.report_ids.next(now), max_list=self.cfg.sampling.max_list
        )
        if self.cfg.mqtt.short_names:
            report = to_short_names(report)
        self.publisher.submit_report(report, now)
        self.pending_stats = _ZERO_STATS
        self.save_state()

    def prune(self) -> None:
        assert self.history is not None
        store = self.cfg.store
        self.history.prune(
            time.time(),
            events_max_age_s=store.retention_days * 86400,
            metrics_max_age_s=store.metrics_retention_days * 86400,
        )

    def reload(self) -> None:
        """SIGHUP: re-read the config and the profiles. Anything invalid is refused with
        its errors and what is in force stays."""
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path)
            detect = _load_detect(cfg)
            if cfg.mqtt.endpoint and (problems := check_tls_files(cfg.mqtt)):
                raise ConfigError("\n".join(problems))
        except (ConfigError, ProfileError) as e:
            for line in str(e).splitlines():
                log.error(kv("reload_refused", error=line))
            self.notifier.ready()
            return
        now = self._now()
        self.detector.thing_name = cfg.thing_name
        self._emit(self.detector.update_profiles(detect.profiles, now, detect.dimensions), now)
        self.save_state()
        if cfg.mqtt != self.cfg.mqtt or cfg.thing_name != self.cfg.thing_name:
            self._stop_publisher()
            old, self.cfg = self.cfg, cfg
            try:
                self._start_publisher()
            except ConfigError as e:
                log.error(kv("reload_mqtt_refused", error=e))
                self.cfg = cfg = dataclasses.replace(cfg, mqtt=old.mqtt, thing_name=old.thing_name)
                self._start_publisher()
        if cfg.sampling != self.cfg.sampling or cfg.custom_metrics != self.cfg.custom_metrics:
            self.sampler = self._sampler(cfg)
        self.cfg = cfg
        self.profile_names = [p.name for p in detect.profiles]
        self._say_inactive()
        log.info(kv("reloaded", profiles=len(detect.profiles), config=cfg.config_file))
        self.notifier.ready()

    def tick(self) -> None:
        """Between samples: close windows the clock has passed, end stale alarms."""
        deadline = self.detector.next_deadline()
        if deadline is not None and time.time() >= deadline:
            now = self._now()
            self._emit(self.detector.tick(now), now)

    # --- helpers ----------------------------------------------------------------------

    def _now(self) -> float:
        """The rule core's clock: wall time that never goes back. After the wall clock is
        stepped back it stands still until the wall clock catches up."""
        self.last_now = max(time.time(), self.last_now)
        return self.last_now

    def _idle_s(self, sched: MonotonicScheduler) -> float | None:
        idle = sched.idle_seconds
        deadline = self.detector.next_deadline()
        if deadline is None:
            return idle
        until = max(0.0, deadline - time.time())
        return until if idle is None else min(idle, until)

    def _emit(self, events: list[ViolationEvent], now: float) -> None:
        """Store, log and publish events; stored first, with the state that made them."""
        if not events:
            return
        docs = [e.to_json() for e in events]
        self.save_state(docs)
        for doc in docs:
            log.warning(
                kv(
                    "violation",
                    type=doc["violationEventType"],
                    profile=doc["securityProfileName"],
                    behavior=doc["behavior"]["name"],
                    value=doc["metricValue"],
                    violation_id=doc["violationId"],
                )
            )
        self._spool_recorded(now)

    def _spool_recorded(self, now: float) -> None:
        """Hand recorded events to the spool. The store lists them until then, so a crash
        in between spools them at the next start (at least once, never lost)."""
        if self.publisher is None:
            return
        assert self.history is not None
        pending = self.history.unpublished_events()
        for _, doc in pending:
            self.publisher.submit_event(doc, now)
        if pending:
            self.history.mark_published([event_id for event_id, _ in pending])

    def save_state(self, events: Sequence[dict[str, Any]] = ()) -> None:
        """Events with the active set and the alarm state that made them (one
        transaction: a crash leaves all of it or none), then the report counters."""
        assert self.history is not None
        self.history.record(
            events,
            [a.to_json() for a in self.detector.active_violations()],
            self.detector.export_state(),
            publish=bool(self.cfg.mqtt.endpoint),
        )
        self.history.save_counters(
            {
                "last_report_id": self.report_ids.last,
                "pending_network_stats": dataclasses.asdict(self.pending_stats),
                "last_now": self.last_now,
            }
        )

    def _say_inactive(self) -> None:
        for item in self.detector.inactive_behaviors():
            log.warning(
                kv(
                    "behavior_not_judged",
                    profile=item.profile,
                    behavior=item.behavior,
                    reason=item.reason,
                )
            )

    def _write_status(self) -> None:
        pub = self.publisher.status() if self.publisher is not None else None
        drops = pub["drops"] if pub else {}
        status: AgentStatus = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "interval_s": self.cfg.sampling.interval_s,
            "last_sample_time": self.last_sample_time,
            "samples": self.samples,
            "reports": {
                "sent": int(pub["sent"]) if pub else 0,
                "accepted": int(pub["accepted"]) if pub else 0,
                "rejected": int(pub["rejected"]) if pub else 0,
            },
            "broker": {
                "endpoint": self.cfg.mqtt.endpoint,
                "connected": bool(pub and pub["connected"]),
            },
            "spool": {
                "depth": int(pub["spool_messages"]) if pub else 0,
                "bytes": int(pub["spool_bytes"]) if pub else 0,
                "dropped": {
                    "metrics": int(drops.get("metrics", 0)),
                    "violation": int(drops.get("violation", 0)),
                },
            },
            "active_violations": len(self.detector.active_violations()),
            "profiles": self.profile_names,
            "inactive_behaviors": [
                f"{i.profile}/{i.behavior}: {i.reason}" for i in self.detector.inactive_behaviors()
            ],
        }
        try:
            write_status(self.state_dir, status)
        except OSError as e:
            log.warning(kv("status_unwritable", error=e))


def run(config_path: str | None) -> int:
    cfg = load_config(config_path)
    daemon = Daemon(cfg, config_path, Notifier())
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)
    try:
        return daemon.serve()
    except StartError as e:
        log.error(kv("start_failed", error=e))
        return 1

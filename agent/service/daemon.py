"""`edge-defender run`: the agent. The thin loop around agent.service.cycle: it samples,
reads the clocks, writes the store, drives the outbox and the status file.

One thread owns everything (the store, the spool, the rule core); awscrt's threads
only wake it. Cadence is monotonic (agent.service.cadence); the rule core gets wall
time that never goes back, because its windows and events are in epoch seconds.

Nothing stops the agent but a signal: every job runs inside an error boundary (one
log line, counted in `status`), and a store that cannot be written leaves the agent
degraded, judging in memory, keeping unrecorded events (bounded) and retrying.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.collect.sampler import Sampler
from agent.config import Config, ConfigError, load_config, remote_settings
from agent.core.evaluator import StateChanges
from agent.core.judge import Judge
from agent.core.profile import ProfileError
from agent.logs import kv
from agent.publish.delivery import is_aws_endpoint
from agent.service.auditor import FIRST_CHECK_S as FIRST_AUDIT_CHECK_S
from agent.service.auditor import Auditor
from agent.service.cadence import MonotonicScheduler
from agent.service.checks import check_tls_files
from agent.service.cycle import Cycle, Step
from agent.service.detect import detector_from_config, unsourced_metrics
from agent.service.notify import Notifier
from agent.service.profiles import DetectFiles, load_detect_files
from agent.service.status import AgentStatus, Reload, link_status, ml_line, write_status
from agent.store.history import (
    History,
    StoreError,
    StoreUnavailable,
    history_path,
    open_history,
)
from agent.store.spool import Spool, spool_path

if TYPE_CHECKING:
    from agent.service.control import Controller
    from agent.service.mitigator import Mitigator
    from agent.service.outbox import Outbox
    from agent.service.trainer import ModelTrainer

log = logging.getLogger(__name__)

AWS_MIN_REPORT_INTERVAL_S = 300.0  # AWS IoT throttles Device Defender reports
FLUSH_ON_STOP_S = 3.0
PRUNE_INTERVAL_S = 3600.0
AUDIT_PUBLISH_S = 5.0  # how soon a finished scheduled audit's findings go out
STORE_RETRY_S = 30.0
# Events the store could not take yet, kept in memory until it can (oldest dropped).
MAX_UNRECORDED_EVENTS = 10_000


class StartError(Exception):
    """The agent cannot start; the message says why in one line."""


def report_interval_s(cfg: Config) -> float:
    """The configured report interval, raised to AWS's throttle toward AWS endpoints."""
    wanted = cfg.sampling.report_interval_s
    if is_aws_endpoint(cfg.mqtt.endpoint or "") and wanted < AWS_MIN_REPORT_INTERVAL_S:
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


def _load_detect(cfg: Config) -> DetectFiles:
    files = load_detect_files(cfg.profile_patterns, builtin_default=cfg.detect.builtin_profile)
    if not files.profiles:
        log.warning(kv("no_profiles", patterns=",".join(cfg.detect.profiles)))
    for profile in files.profiles:
        log.info(kv("profile", name=profile.name, source=profile.source))
    return files


def _where(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1:]
    return f"{Path(frame[0].filename).name}:{frame[0].lineno}" if frame else "?"


class Daemon:
    def __init__(
        self,
        cfg: Config,
        config_path: str | None,
        notifier: Notifier,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = notifier
        self.wall = wall
        self.state_dir = Path(cfg.state_dir)
        # Files rewritten every cycle (status, network counters) are only valid within
        # one boot: under systemd they live on the RuntimeDirectory's tmpfs, sparing the
        # SD card ~20 KB of device writes a cycle each.
        self.runtime_dir = Path(os.environ.get("RUNTIME_DIRECTORY") or cfg.state_dir)
        self.wake = threading.Event()
        self.stop_requested = False
        self.reload_requested = False
        self.started_at = wall()
        self.store: History | None = None  # the store, once opened
        self.store_ok = False  # False after a fault until `retry_store` reopens it
        # Alarm state changes not yet written (a failed save offers them again).
        self.unsaved = StateChanges({}, {})
        self.save_everything = False  # a new store after a fault gets the whole state
        self.outbox: Outbox | None = None
        self.mitigator: Mitigator | None = None  # with [mitigation] on
        self.trainer: ModelTrainer | None = None  # while a profile has an ML behavior
        self.controller: Controller | None = None  # with [control] on
        self.broker_connected = False  # as last seen: remote control resyncs on a new one
        self.unrecorded: deque[dict[str, Any]] = deque(maxlen=MAX_UNRECORDED_EVENTS)
        self.degraded: dict[str, str] = {}  # part -> what is wrong with it now
        self.errors: Counter[str] = Counter()  # failures per job
        self.reload_verdict: Reload | None = None
        self.live = sys.stdout.isatty()

    # --- start and stop ---------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        if cfg.mqtt.endpoint and (problems := check_tls_files(cfg.mqtt)):
            raise StartError(problems[0])
        try:
            detect = _load_detect(cfg)
        except ProfileError as e:
            raise StartError(f"invalid security profile: {e}") from e
        self.profile_names = [p.name for p in detect.profiles]
        self._open_store()
        if self.runtime_dir != self.state_dir:
            try:
                link_status(self.state_dir, self.runtime_dir)
            except OSError as e:
                log.warning(kv("status_unlinkable", error=e))
        detector = detector_from_config(cfg, detect.profiles, detect.dimensions)
        counters: dict[str, Any] | None = None
        if (store := self._healthy_store()) is not None:
            self._restore(store, detector)
            counters = self._store_call("load counters", store.load_counters)
        self.cycle = Cycle(
            detector,
            max_list=cfg.sampling.max_list,
            short_names=cfg.mqtt.short_names,
            counters=counters,
        )
        self.update_trainer()
        self._say_inactive()
        self.sampler = self._sampler(cfg)
        # The first look for due audits after the first few samples.
        first_check_s = min(FIRST_AUDIT_CHECK_S, 3 * cfg.sampling.interval_s)
        self.auditor = Auditor(lambda: self.cfg, first_check_s=first_check_s)
        self.mitigator = self._mitigator(cfg)
        self.controller = self._controller(cfg)
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

    def connect(self) -> None:
        """Open the spool, connect to the broker and hand it the recorded events not yet
        sent. serve() does it after the first sample: the awscrt import and TLS set-up
        (~0.1 s) need not delay it, and its events wait in the store meanwhile."""
        self._start_outbox()
        self._spool_recorded()

    def _restore(self, store: History, detector: Judge) -> None:
        """The alarm state as the store holds it: rows, or the single document an older
        version saved (its baselines are converted)."""
        rules, buckets = self._store_call("load alarm state", store.load_state) or ({}, {})
        try:
            if rules or buckets:
                detector.restore(rules, buckets)
            else:
                saved = self._store_call("load alarm state", store.load_alarm_state)
                if saved is not None:
                    detector.restore_state(saved)
        except ValueError as e:
            # Refusing to start would loop forever under systemd; judging afresh keeps
            # the device watched. The stored events and history stay.
            log.error(kv("alarm_state_discarded", error=e))

    def _mitigator(self, cfg: Config) -> Mitigator | None:
        """The mitigation thread, when [mitigation] is on (its code only then)."""
        if not cfg.mitigation.enabled:
            return None
        from agent.service.mitigator import Mitigator

        return Mitigator(lambda: self.cfg)

    def _controller(self, cfg: Config) -> Controller | None:
        """The remote control thread, when [control] is on (its code only then)."""
        if not cfg.control.enabled:
            return None
        from agent.service.control import Controller

        controller = Controller(self.config_path, cfg, self.wake, self.ask_reload)
        controller.start()
        return controller

    def control(self) -> None:
        """Hand control requests to the control thread, and its answers to the broker."""
        if self.controller is None or self.outbox is None:
            return
        for request in self.outbox.take_requests():
            self.controller.submit(request)
        for answer in self.controller.take_answers():
            self.outbox.respond(answer.topic, answer.payload, answer.correlation)
        if self.outbox.connected and not self.broker_connected:
            self.controller.resync()
        self.broker_connected = self.outbox.connected

    def update_trainer(self) -> None:
        """The ML training thread runs while a loaded profile has an ML behavior (its
        code only then); the models models.db holds are in force at once."""
        metrics = self.cycle.detector.ml_metrics()
        if metrics and self.trainer is None:
            from agent.service.trainer import ModelTrainer

            self.trainer = ModelTrainer(lambda: self.cfg, metrics)
        elif metrics and self.trainer is not None:
            self.trainer.want(metrics)
        elif self.trainer is not None:
            self.trainer.close()
            self.trainer = None
        self.take_models()

    def take_models(self) -> None:
        """The models the training thread handed over, into the rule core."""
        if self.trainer is not None and (models := self.trainer.take()) is not None:
            self.cycle.detector.set_models(*models)

    def _sampler(self, cfg: Config) -> Sampler:
        return Sampler(cfg, counters_path=self.runtime_dir / "netcounters.json")

    def _start_outbox(self) -> None:
        """Open the spool and connect. A spool or TLS set-up that fails leaves the agent
        judging locally, degraded; `retry_store` tries again."""
        if not self.cfg.mqtt.endpoint:
            return
        from agent.service.outbox import Outbox  # awscrt only when a broker is set

        try:
            spool = Spool(spool_path(self.state_dir), self.cfg.mqtt.spool_max_bytes)
        except StoreError as e:
            self._degrade("spool", str(e))
            return
        try:
            self.outbox = Outbox(self.cfg, spool, self.wake)
        except ConfigError as e:
            spool.close()
            self._degrade("mqtt", str(e))
            return
        self.degraded.pop("spool", None)
        self.degraded.pop("mqtt", None)
        self.outbox.start()
        if self.controller is not None:
            self.controller.attach(self.outbox.mqtt_client)

    def _stop_outbox(self) -> None:
        if self.outbox is not None:
            self.outbox.stop(FLUSH_ON_STOP_S)
            self.outbox.close()
            self.outbox = None

    def _schedule(self) -> MonotonicScheduler:
        sched = MonotonicScheduler()
        jobs: list[tuple[str, float, Callable[[], None]]] = [
            ("cycle", self.cfg.sampling.interval_s, self.sample),
            ("report", report_interval_s(self.cfg), self.report),
            ("prune", PRUNE_INTERVAL_S, self.prune),
            ("audit", AUDIT_PUBLISH_S, self.publish_findings),
            ("mitigation", AUDIT_PUBLISH_S, self.publish_mitigation),
            ("models", AUDIT_PUBLISH_S, self.take_models),
            ("save_state", self.cfg.store.metrics_flush_s, self.save_state),
            # A store fault is retried soon on a fast cadence, at most 30 s apart.
            ("store_retry", min(STORE_RETRY_S, 3 * self.cfg.sampling.interval_s), self.retry_store),
        ]
        watchdog_s = self.notifier.watchdog_interval_s()
        if watchdog_s is not None:
            # Fed apart from the cycle: a failing cycle is not a hung agent.
            jobs.append(("watchdog", watchdog_s / 2, self.notifier.watchdog))
        for name, interval_s, func in jobs:
            sched.every_s(interval_s, self.guarded(name, func))
        return sched

    def guarded(self, job: str, func: Callable[[], None]) -> Callable[[], None]:
        """`func` inside an error boundary: a failure is one log line and a count."""

        def run() -> None:
            try:
                func()
            except Exception as e:
                self.errors[job] += 1
                log.error(kv("job_failed", job=job, error=f"{type(e).__name__}: {e}", at=_where(e)))

        return run

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; exit status 0 after a clean stop."""
        self.start()
        self.guarded("cycle", self.sample)()
        self.notifier.ready()
        # After READY: the first sample waits for nothing it does not need.
        self.guarded("connect", self.connect)()
        self.guarded("prune", self.prune)()
        sched = self._schedule()
        while not self.stop_requested:
            # Cleared before the work, not after the wait: a wake-up set while the work
            # runs (a signal, an answer, news from the broker) makes the wait return.
            self.wake.clear()
            if self.reload_requested:
                self.reload_requested = False
                self.guarded("reload", self.reload)()
                sched = self._schedule()
            sched.run_pending()
            self.guarded("tick", self.tick)()
            if self.outbox is not None:
                self.guarded("publish", self.outbox.pump)()
                self.guarded("control", self.control)()
            self.wake.wait(self._idle_s(sched))
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        if self.live:
            print(flush=True)
        log.info(kv("stopping"))
        self.guarded("publish", self._stop_outbox)()
        self.guarded("save_state", self.save_state)()  # with the buffered metrics history
        self.sampler.close()
        self.auditor.close()
        if self.mitigator is not None:
            self.mitigator.close()
        if self.trainer is not None:
            self.trainer.close()
        if self.controller is not None:
            self.controller.close()
        if self.store is not None:
            self.store.close()
            self.store = None
        log.info(kv("stopped", samples=self.cycle.samples))

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.wake.set()

    def request_reload(self, signum: int, frame: FrameType | None) -> None:
        self.ask_reload()

    def ask_reload(self) -> None:
        """Reload at the loop's next turn: SIGHUP, or remote control's changes (from its
        thread, without a signal, which may wait for the main thread's next wake-up)."""
        self.reload_requested = True
        self.wake.set()

    # --- the jobs ---------------------------------------------------------------------

    def sample(self) -> None:
        """Sample, judge, store: every sampling interval."""
        began = time.monotonic()
        step = self.cycle.observe(self.wall(), self.sampler.sample())
        self._check_store_path()
        store, metrics = self.store, step.metrics
        if metrics is not None and store is not None:
            # Buffered in memory even while the store is down; written with the state.
            self._store_call("add metrics", lambda: store.add_metrics(*metrics))
        self._apply(step)
        self._write_status()
        self.notifier.watchdog()
        took = time.monotonic() - began
        if took > self.cfg.sampling.interval_s:
            log.warning(
                kv("cycle_overrun", took_s=round(took, 3), interval_s=self.cfg.sampling.interval_s)
            )

    def report(self) -> None:
        """Publish a metrics report."""
        if self.outbox is None:
            return  # local only: the metrics history already holds every sample
        now = self.wall()
        wire = self.cycle.report(now)
        for name in wire.omitted:
            log.warning(kv("custom_metric_not_reported", metric=name, reason="too large"))
        self.outbox.submit_report(wire.doc, now)

    def publish_findings(self) -> None:
        """Hand the findings of the scheduled audits that finished to the outbox; they
        stay in the audit store (list-audit-findings) with or without a broker."""
        for task_id, findings in self.auditor.take():
            log.info(kv("audit_task_findings", task_id=task_id, findings=len(findings)))
            if self.outbox is not None:
                now = self.wall()
                for finding in findings:
                    self.outbox.submit_finding(finding, now)

    def publish_mitigation(self) -> None:
        """Spool the messages of PUBLISH_TO_TOPIC executions; without a broker they wait
        in the mitigation store."""
        if self.outbox is None or self.mitigator is None:
            return
        sent = []
        for p in self.mitigator.take_publications():
            if self.outbox.submit_message(p.topic, p.payload, self.wall()):
                sent.append(p.id)
        self.mitigator.mark_published(sent)

    def prune(self) -> None:
        store, keep = self._healthy_store(), self.cfg.store
        if store is None:
            return
        self._store_call(
            "prune",
            lambda: store.prune(
                self.wall(),
                events_max_age_s=keep.retention_days * 86400,
                metrics_max_age_s=keep.metrics_retention_days * 86400,
                metrics_max_bytes=keep.metrics_max_bytes,
            ),
        )

    def tick(self) -> None:
        """Between samples: close windows the clock has passed, end stale alarms."""
        self._apply(self.cycle.tick(self.wall()))

    def reload(self) -> None:
        """SIGHUP: re-read the config and the profiles. Anything invalid is refused with
        its errors and what is in force stays. The verdict goes to the status file,
        where `edge-defender reload` (the unit's ExecReload) waits for it."""
        self.notifier.reloading()
        try:
            self._reload()
        except Exception as e:
            self._reload_verdict(str(e) or type(e).__name__)
            raise
        finally:
            self.notifier.ready()

    def _reload(self) -> None:
        try:
            cfg = load_with_settings(self.config_path)
            detect = _load_detect(cfg)
            if cfg.mqtt.endpoint and (problems := check_tls_files(cfg.mqtt)):
                raise ConfigError("\n".join(problems))
        except (ConfigError, ProfileError) as e:
            for line in str(e).splitlines():
                log.error(kv("reload_refused", error=line))
            self._reload_verdict(str(e))
            return
        self._apply(
            self.cycle.update_profiles(
                self.wall(),
                detect.profiles,
                detect.dimensions,
                cfg.thing_name,
                unsourced=unsourced_metrics(cfg, detect.profiles),
                clients=cfg.capture.enabled and cfg.capture.broker.enabled,
            )
        )
        self.update_trainer()
        old = self.cfg
        self.cfg = cfg
        self.cycle.max_list = cfg.sampling.max_list
        self.cycle.short_names = cfg.mqtt.short_names
        if self.controller is not None:
            self.controller.cfg = cfg
        if cfg.control.enabled != old.control.enabled:
            if self.controller is not None:
                self.controller.close()
            self.controller = self._controller(cfg)
        if cfg.mqtt != old.mqtt or cfg.thing_name != old.thing_name or cfg.control != old.control:
            self._stop_outbox()
            self._start_outbox()
        if cfg.mitigation.enabled != old.mitigation.enabled:
            if self.mitigator is not None:
                self.mitigator.close()
            self.mitigator = self._mitigator(cfg)
        if (
            cfg.sampling != old.sampling
            or cfg.custom_metrics != old.custom_metrics
            or cfg.capture != old.capture
        ):
            self.sampler.close()
            self.sampler = self._sampler(cfg)
        self.profile_names = [p.name for p in detect.profiles]
        self._say_inactive()
        log.info(kv("reloaded", profiles=len(detect.profiles), config=cfg.config_file))
        self._reload_verdict(None)

    def _reload_verdict(self, error: str | None) -> None:
        self.reload_verdict = {"at": self.wall(), "ok": error is None, "error": error}
        self._write_status()

    # --- the store --------------------------------------------------------------------

    def _open_store(self) -> None:
        try:
            self.store = open_history(history_path(self.state_dir))
        except StoreError as e:
            self._degrade("store", str(e))
            return
        self._store_opened()

    def _store_opened(self) -> None:
        assert self.store is not None
        self.store_ok = True
        if (moved := self.store.moved_aside) is not None:
            self.save_everything = True  # a new, empty store
            log.error(kv("store_replaced", moved_to=moved.to, reason=moved.reason))
        if self.degraded.pop("store", None) is not None:
            log.warning(kv("store_recovered", path=history_path(self.state_dir)))

    def _healthy_store(self) -> History | None:
        return self.store if self.store_ok else None

    def _degrade(self, part: str, problem: str) -> None:
        if self.degraded.get(part) != problem:
            log.error(kv("degraded", part=part, problem=problem))
        self.degraded[part] = problem

    def _store_call(self, what: str, call: Callable[[], Any]) -> Any:
        """Run a store call; a store fault degrades the agent (`retry_store` reopens the
        store) instead of stopping it. A refusal of the input itself (another
        StoreError) is the caller's to handle."""
        try:
            return call()
        except StoreUnavailable as e:
            self._degrade("store", f"{what}: {e}")
            self.store_ok = False
            return None

    def _check_store_path(self) -> None:
        """The state dir deleted or replaced under a running agent: write to a new store
        at once rather than into an unlinked file."""
        if self.store is None or not self.store_ok:
            return
        problem = self.store.check_path()
        if problem is not None:
            self._degrade("store", problem)
            self.store_ok = False
            self.save_everything = True
            self.retry_store()

    def retry_store(self) -> None:
        """Open the store (and the spool) again after a fault, and record what waited.
        The same History object is reopened: its buffered metrics history survives.
        Does nothing while all is well."""
        retry_spool = "spool" in self.degraded
        if not self.store_ok:
            if self.store is None:
                self._open_store()
            else:
                try:
                    self.store.reopen()
                except StoreError as e:
                    self._degrade("store", str(e))
                else:
                    self._store_opened()
            if not self.store_ok:
                return
            self.save_state()
            retry_spool = True
        if self.cfg.mqtt.endpoint and self.outbox is None:
            self._start_outbox()
            retry_spool = True
        if retry_spool:
            self._spool_recorded()

    def _apply(self, step: Step) -> None:
        """Record the step's events (durable first, with the state that made them), log
        them, then hand them to the outbox and to the automatic response."""
        if not step.events:
            return
        docs = [e.to_json() for e in step.events]
        overflow = len(self.unrecorded) + len(docs) - MAX_UNRECORDED_EVENTS
        if overflow > 0:  # the store has been down for a long time: say what goes
            self.errors["events_dropped"] += overflow
            log.error(kv("events_dropped", count=overflow, reason="store unavailable"))
        self.unrecorded.extend(docs)
        self.save_state()
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
        self._spool_recorded()
        if self.mitigator is not None:  # automatic response, after the events are recorded
            self.mitigator.respond(docs)

    def save_state(self) -> None:
        """Unrecorded events, the active set, what changed in the alarm state, the
        buffered metrics history and the report counters: one transaction, durable when
        it returns (a crash leaves all of it or none). Runs with every event and every
        `store.metrics_flush_s`, so a power cut loses at most that much metrics history
        and never an acknowledged event or alarm."""
        detector = self.cycle.detector
        if self.save_everything:  # a new store: the whole state
            changes = detector.export_state_changes()
        else:
            changes = detector.export_changes()
        self.unsaved.rules.update(changes.rules)
        self.unsaved.buckets.update(changes.buckets)
        store = self._healthy_store()
        if store is None:
            if self.unrecorded:
                log.warning(kv("events_unrecorded", held_in_memory=len(self.unrecorded)))
            return

        def record(events: list[dict[str, Any]]) -> bool:
            store.record_changes(
                events,
                [a.to_json() for a in detector.active_violations()],
                self.unsaved,
                publish=bool(self.cfg.mqtt.endpoint),
                metrics=True,
                counters=self.cycle.counters(),
            )
            return True

        events = list(self.unrecorded)
        try:
            recorded = self._store_call("record events", lambda: record(events))
        except StoreError as e:
            # The store refuses these events themselves: they must not hold back every
            # later one. Each goes to the log whole, so none is lost silently.
            for doc in events:
                log.error(kv("event_unstorable", error=e, doc=json.dumps(doc, default=repr)))
            self.errors["events_unstorable"] += len(events)
            self.unrecorded.clear()
            recorded = self._store_call("record state", lambda: record([]))
        if recorded:
            self.unrecorded.clear()
            self.unsaved = StateChanges({}, {})
            self.save_everything = False

    def _spool_recorded(self) -> None:
        """Hand recorded events to the outbox. The store lists them until then, so a crash
        in between spools them at the next start (at least once, never lost). An event
        that cannot be encoded is quarantined in the store, never retried forever."""
        store, outbox = self._healthy_store(), self.outbox
        if outbox is None or store is None:
            return
        pending = self._store_call("read unpublished", store.unpublished_events) or []
        now = self.wall()
        sent: list[int] = []
        for event_id, doc in pending:
            try:
                handed = outbox.submit_event(doc, now)
            except StoreError as e:  # the spool: they stay unpublished in the store
                self._degrade("spool", str(e))
                break
            if handed:
                sent.append(event_id)
            else:
                self._store_call(
                    "quarantine",
                    lambda i=event_id: store.quarantine_event(i, "cannot be encoded"),  # type: ignore[misc]
                )
        else:
            self.degraded.pop("spool", None)
        if sent:
            self._store_call("mark published", lambda: store.mark_published(sent))

    # --- status -----------------------------------------------------------------------

    def _say_inactive(self) -> None:
        for item in self.cycle.detector.inactive_behaviors():
            log.warning(
                kv(
                    "behavior_not_judged",
                    profile=item.profile,
                    behavior=item.behavior,
                    reason=item.reason,
                )
            )

    def _idle_s(self, sched: MonotonicScheduler) -> float | None:
        waits = [sched.idle_seconds]
        deadline = self.cycle.next_deadline()
        if deadline is not None:
            waits.append(max(0.0, deadline - self.wall()))
        if self.outbox is not None and (wake := self.outbox.next_wake()) is not None:
            waits.append(max(0.0, wake - time.monotonic()))
        return min((w for w in waits if w is not None), default=None)

    def _write_status(self) -> None:
        pub = self.outbox.status() if self.outbox is not None else {}
        drops = pub.get("drops", {})
        detector = self.cycle.detector
        active = detector.active_violations()
        now = self.wall()
        status: AgentStatus = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": now,
            "interval_s": self.cfg.sampling.interval_s,
            "last_sample_time": self.cycle.last_sample_time,
            "samples": self.cycle.samples,
            "reports": {
                "sent": int(pub.get("sent", 0)),
                "accepted": int(pub.get("accepted", 0)),
                "rejected": int(pub.get("rejected", 0)),
            },
            "broker": {
                "endpoint": self.cfg.mqtt.endpoint,
                "connected": bool(pub.get("connected", False)),
            },
            "spool": {
                "depth": int(pub.get("spool_messages", 0)),
                "bytes": int(pub.get("spool_bytes", 0)),
                "dropped": {
                    "metrics": int(drops.get("metrics", 0)),
                    "violation": int(drops.get("violation", 0)),
                },
            },
            "active_violations": len(active),
            "profiles": self.profile_names,
            "inactive_behaviors": [
                f"{i.profile}/{i.behavior}: {i.reason}" for i in detector.inactive_behaviors()
            ],
            "ml": [ml_line(j, now) for j in detector.device.ml_judgements()],
            "degraded": [f"{part}: {problem}" for part, problem in self.degraded.items()],
            "errors": dict(self.errors),
            "quarantined": int(pub.get("quarantined", 0)),
        }
        if self.controller is not None:
            status["control"] = self.controller.status()
        if (sniffer := self.sampler.sniffer) is not None:
            packets, drops, counts = sniffer.status()
            status["capture"] = {
                "features": sniffer.features,
                "packets": packets,
                "drops": drops,
                "problem": sniffer.problem,
                "clients": len(detector.clients),
                "unjudged_clients": detector.unjudged_clients,
                "counts": counts,
            }
        if self.mitigator is not None:
            status["mitigation"] = {
                "auto_rules": len(self.cfg.mitigation.auto),
                "dry_run": self.cfg.mitigation.dry_run,
                "rate_limited": self.mitigator.rate_limited,
            }
        if self.reload_verdict is not None:
            status["reload"] = self.reload_verdict
        try:
            write_status(self.runtime_dir, status)
        except OSError as e:
            log.warning(kv("status_unwritable", error=e))
        if self.live:
            self._live_line(status)

    def _live_line(self, status: AgentStatus) -> None:
        """One line, redrawn every cycle, while stdout is a terminal."""
        last = self.cycle.last_sample
        parts = [
            f"samples {status['samples']}",
            f"tcp ports {len(last.tcp_ports or ())}",
            f"udp ports {len(last.udp_ports or ())}",
            f"connections {len(last.connections or ())}",
            f"alarms {status['active_violations']}",
        ]
        if self.degraded:
            parts.append("DEGRADED: " + "; ".join(status["degraded"]))
        print("\r\033[K" + " | ".join(parts), end="", flush=True)


def load_with_settings(config_path: str | None) -> Config:
    """The config file with the settings remote control stored; settings that cannot be
    used are left out with a log line (the file's own config still runs the agent)."""
    cfg, problem = remote_settings(load_config(config_path))
    if problem is not None:
        log.error(kv("remote_settings_ignored", file=cfg.remote_settings_path, error=problem))
    return cfg


def run(config_path: str | None) -> int:
    try:
        cfg = load_with_settings(config_path)
    except ConfigError as e:
        log.error(kv("start_failed", error=e))
        return 1
    daemon = Daemon(cfg, config_path, Notifier())
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)
    try:
        return daemon.serve()
    except StartError as e:
        log.error(kv("start_failed", error=e))
        return 1

"""ML Detect training: the metrics history streamed, in time order, through one rolling
window (agent.core.ml_window.Window, as the rule core judges) into one
agent.core.ml.Trainer per metric, the models kept in models.db, and the daemon's
training thread.

The thread runs only while a loaded profile has an ML behavior on a device metric. A
metric is trained a minute after the start when it never was, then every RETRAIN_S
(daily). A training is `edge-defender train` in a child process at low priority: it
streams up to TRAINING_WINDOW_S of history (a bounded state of ~150 KiB a metric,
however long) and takes a few seconds of CPU on a Pi, off the sampling path, and the
memory that decoding took goes back with the child. The daemon takes the models in
force with `take()` between samples (Detector.set_models); at its start and at each
reload `want()` reads models.db at once, so a restart judges with the models it had and
the `train` verb's models are in
force when the reload it asks for is answered.

Training on the history leaves out what the device's own violations on the metric were
in alarm (rule or ML behaviors; alarm_periods), so that a model retrained daily does not
learn an attack it alarmed on as normal; violations an operator verified as
FALSE_POSITIVE or BENIGN_POSITIVE stay in: what they saw is normal."""

from __future__ import annotations

import json
import logging
import math
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.core.metrics import CLOUD_METRICS, is_finite_number, metrics_from_report
from agent.core.ml import MIN_DATAPOINTS, MIN_TRAINING_DAYS, RETRAIN_S, Model, Trainer
from agent.core.ml_window import WINDOW_S, Window, metric_kind
from agent.core.profile import SecurityProfile
from agent.core.report import ReportError, parse_envelope
from agent.logs import kv
from agent.store.db import StoreError, StoreNotFound
from agent.store.history import History, history_path, open_history
from agent.store.models import ModelRecord, models_path, open_models

log = logging.getLogger(__name__)

DAY_S = 86400.0
# A day more than a model needs: the history is pruned by the hour, so exactly 14 days
# of it would fall just short of the 14 days a model needs.
TRAINING_WINDOW_S = (MIN_TRAINING_DAYS + 1) * DAY_S
# A model not refreshed for this long (no training could build one: the device was off,
# the history too short) is EXPIRED and judges no more, as AWS's models expire.
EXPIRES_S = (MIN_TRAINING_DAYS + 2) * DAY_S
FIRST_CHECK_S = 60.0  # after the start: a restart's first samples come first
CHECK_EVERY_S = 600.0
STATUSES = ("PENDING_BUILD", "ACTIVE", "EXPIRED")  # AWS's ModelStatus
# (models by metric, why a metric has none): Detector.set_models's arguments
InForce = tuple[dict[str, Model | None], dict[str, str]]
# Verification states that say a violation saw normal behavior: it is trained on.
NORMAL_STATES = frozenset({"FALSE_POSITIVE", "BENIGN_POSITIVE"})
Periods = Mapping[str, Sequence[tuple[float, float]]]  # metric -> (start, end), in order


class Stopped(Exception):
    """A training given up because the thread is stopping."""


@dataclass(frozen=True, slots=True)
class Training:
    """What one training of one metric gave."""

    metric: str
    model: Model | None
    datapoints: int
    first_t: float | None
    unusable: int  # values no model takes: negative ones
    left_out: int = 0  # datapoints in an alarm period (alarm_periods)


def ml_metrics(profiles: Iterable[SecurityProfile]) -> list[str]:
    """The device metrics the ML behaviors of `profiles` need a model of (a cloud-side
    metric's ML behaviors are judged per MQTT client, which gets no model)."""
    return sorted(
        {
            b.metric
            for p in profiles
            for b in p.behaviors
            if b.criteria is not None
            and b.criteria.ml_confidence is not None
            and b.metric not in CLOUD_METRICS
        }
    )


def utc_offset_s(now: float) -> int:
    """The device's local UTC offset at `now`: the models' hours are local hours."""
    return time.localtime(now).tm_gmtoff


def train(
    envelopes: Iterable[Mapping[str, Any]],
    metrics: Sequence[str],
    start: float,
    now: float,
    offset_s: int,
    windows: Mapping[str, float] | None = None,
    counters: frozenset[str] = frozenset(),
    left_out: Periods | None = None,
) -> list[Training]:
    """Stream metrics-history envelopes (`export-metrics` lines, in time order) through a
    rolling window per metric (its length from `windows`, else WINDOW_S; the custom
    metrics in `counters` summed, as the rule core sums them) into a Trainer, from `start`
    on, and build each model as of `now`. A datapoint within its window of one of the
    metric's `left_out` periods is not trained on. A malformed envelope, or one
    earlier than the one before, is ReportError naming it. A metric that is not a number
    metric is ValueError."""
    lengths = windows or {}
    rolling = {m: Window(metric_kind(m, counters), lengths.get(m, WINDOW_S)) for m in metrics}
    trainers = {m: Trainer(start, offset_s, rolling[m].window_s) for m in metrics}
    unusable = dict.fromkeys(metrics, 0)
    skip = {m: _LeftOut((left_out or {}).get(m, ()), rolling[m].window_s) for m in metrics}
    for i, envelope in enumerate(envelopes):
        try:
            t, report = parse_envelope(envelope)
            if t < start:
                continue
            values = metrics_from_report(_numbers_only(report))
        except ReportError as e:
            raise ReportError(f"record {i + 1}: {e}") from None
        for metric, trainer in trainers.items():
            v = values.get(metric)
            if v is None:
                continue
            if not is_finite_number(v) or v < 0:  # type: ignore[operator]
                unusable[metric] += 1
                continue
            try:
                aggregate = rolling[metric].add(t, v)  # type: ignore[arg-type]
            except ValueError as e:
                raise ReportError(f"record {i + 1}: {e}") from None
            if aggregate is not None and not skip[metric].holds(t):
                trainer.add(t, aggregate)
    return [
        Training(m, tr.build(now), tr.datapoints, tr.first_t, unusable[m], skip[m].skipped)
        for m, tr in trainers.items()
    ]


class _LeftOut:
    """Whether times, asked in increasing order, are within window_s of one of the
    periods: a datapoint aggregates the window_s before it, so those after a period
    still hold it, and those before it held how it began."""

    def __init__(self, periods: Sequence[tuple[float, float]], window_s: float) -> None:
        merged: list[list[float]] = []
        for start, end in sorted(periods):
            if merged and start - window_s < merged[-1][1] + window_s:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._spans = [(start - window_s, end + window_s) for start, end in merged]
        self._i = 0
        self.skipped = 0

    def holds(self, t: float) -> bool:
        spans = self._spans
        while self._i < len(spans) and spans[self._i][1] <= t:
            self._i += 1
        inside = self._i < len(spans) and spans[self._i][0] < t
        self.skipped += inside
        return inside


def alarm_periods(history: History, thing: str, metrics: Sequence[str], now: float) -> Periods:
    """Per metric of `metrics`, when the device's own violations of behaviors on it were
    in alarm, from their in-alarm event to the event that ended them (`now` for one
    still in alarm), oldest first, those verified as NORMAL_STATES left out. The broker
    watch's clients (other thingNames) are not the device's metrics."""
    began: dict[str, tuple[str, float]] = {}  # violationId -> (metric, in-alarm time)
    periods: dict[str, list[tuple[float, float]]] = {m: [] for m in metrics}
    token: str | None = None
    while True:
        page = history.list_violation_events(
            -math.inf, math.inf, thing_name=thing, next_token=token
        )
        for event in page["violationEvents"]:
            metric = event["behavior"].get("metric")
            if metric not in periods or event.get("verificationState") in NORMAL_STATES:
                continue
            vid, t = event["violationId"], event["violationEventTime"]
            if event["violationEventType"] == "in-alarm":
                began[vid] = (metric, t)
            elif vid in began:
                metric, start = began.pop(vid)
                periods[metric].append((start, t))
        token = page.get("nextToken")
        if token is None:
            break
    for metric, start in began.values():
        periods[metric].append((start, now))
    return {m: sorted(p) for m, p in periods.items()}


def _numbers_only(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the lists no number metric is read from (listening ports,
    connections): metrics_from_report takes the counts from the totals, and checking
    ~20 connections a report was two thirds of a training's CPU."""
    metrics = report.get("metrics")
    if not isinstance(metrics, dict):
        return report
    slim = dict(metrics)
    for key in ("listening_tcp_ports", "listening_udp_ports"):
        block = slim.get(key)
        if isinstance(block, dict) and "ports" in block:
            slim[key] = {**block, "ports": []}
    tcp = slim.get("tcp_connections")
    established = tcp.get("established_connections") if isinstance(tcp, dict) else None
    if isinstance(tcp, dict) and isinstance(established, dict):
        slim["tcp_connections"] = {
            **tcp,
            "established_connections": {**established, "connections": []},
        }
    return {**report, "metrics": slim}


def train_from_history(
    state_dir: str | Path,
    thing: str,
    metrics: Sequence[str],
    now: float,
    windows: Mapping[str, float] | None = None,
    counters: frozenset[str] = frozenset(),
) -> list[Training]:
    """Train on the last TRAINING_WINDOW_S of the metrics history the daemon wrote, less
    the alarm periods of `thing` (the device) on each metric."""
    start = now - TRAINING_WINDOW_S
    offset = utc_offset_s(now)
    try:
        history = open_history(history_path(state_dir), create=False)
    except StoreNotFound:
        return train((), metrics, start, now, offset, windows=windows, counters=counters)
    with history:
        left_out = alarm_periods(history, thing, metrics, now)
        envelopes = history.export_metrics(start, now)
        return train(envelopes, metrics, start, now, offset, windows, counters, left_out=left_out)


def usable_model(record: ModelRecord | None) -> Model | None:
    """The record's model if this version can judge with it (an older format cannot)."""
    if record is None or record.model is None:
        return None
    try:
        return Model.from_json(record.model)
    except ValueError:
        return None


def windows_in_force(records: Mapping[str, ModelRecord]) -> dict[str, float]:
    """Per metric, the window of its usable model: a retraining keeps it (`train
    --window-s` may have set another than WINDOW_S)."""
    return {m: model.window_s for m, r in records.items() if (model := usable_model(r))}


def record_of(old: ModelRecord | None, training: Training, now: float, source: str) -> ModelRecord:
    """The row after a training: its model when it built one, else the model in force
    (dropped when this version cannot use it: the metric is then PENDING_BUILD)."""
    if training.model is not None:
        model: Mapping[str, Any] | None = training.model.to_json()
        refreshed_at: float | None = now
    elif old is not None and usable_model(old) is not None:
        model, refreshed_at = old.model, old.refreshed_at
    else:
        model = refreshed_at = None
    return ModelRecord(
        training.metric,
        model,
        refreshed_at,
        training.datapoints,
        training.first_t,
        now,
        source,
    )


def model_status(record: ModelRecord | None, now: float) -> str:
    if record is None or record.model is None or record.refreshed_at is None:
        return "PENDING_BUILD"
    return "EXPIRED" if now - record.refreshed_at > EXPIRES_S else "ACTIVE"


def collected_percent(record: ModelRecord | None) -> float:
    """How much of what a model needs the latest training had: the lesser of the share
    of MIN_DATAPOINTS and the share of MIN_TRAINING_DAYS, 0-100."""
    if record is None or record.first_t is None:
        return 0.0
    days = max(0.0, record.trained_at - record.first_t) / DAY_S
    share = min(record.datapoints / MIN_DATAPOINTS, days / MIN_TRAINING_DAYS)
    return round(min(100.0, 100.0 * share), 1)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def progress_text(record: ModelRecord | None) -> str:
    if record is None:
        return "not trained yet"
    days = 0.0 if record.first_t is None else (record.trained_at - record.first_t) / DAY_S
    return (
        f"{collected_percent(record):g}% of the training data ({record.datapoints} of"
        f" {MIN_DATAPOINTS} datapoints over {days:.1f} of {MIN_TRAINING_DAYS} days)"
        f" at the training of {iso(record.trained_at)}"
    )


def in_force(records: Mapping[str, ModelRecord], metrics: Sequence[str], now: float) -> InForce:
    """The ACTIVE model of each metric, and why the others have none."""
    models: dict[str, Model | None] = {}
    reasons: dict[str, str] = {}
    for metric in metrics:
        record = records.get(metric)
        status = model_status(record, now)
        models[metric] = None
        if status == "ACTIVE":
            assert record is not None and record.model is not None
            try:
                models[metric] = Model.from_json(record.model)
            except ValueError as e:
                reasons[metric] = f"the stored model is unusable ({e}); train it again"
        elif status == "EXPIRED":
            assert record is not None and record.refreshed_at is not None
            reasons[metric] = (
                f"EXPIRED: not refreshed since {iso(record.refreshed_at)}; {progress_text(record)}"
            )
        else:
            reasons[metric] = f"PENDING_BUILD: {progress_text(record)}"
    return models, reasons


def stored_records(state_dir: str | Path) -> dict[str, ModelRecord]:
    """What models.db holds; nothing when it does not exist yet."""
    if not models_path(state_dir).exists():
        return {}
    with open_models(state_dir, create=False) as store:
        return store.records()


class ModelTrainer:
    """The daemon's training thread (see the module's doc)."""

    def __init__(
        self,
        config: Callable[[], Config],
        metrics: Sequence[str],
        *,
        first_check_s: float = FIRST_CHECK_S,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self._config = config  # read at each round: a reload takes effect at the next
        self._first_check_s, self._check_every_s = first_check_s, check_every_s
        self._lock = threading.Lock()
        self._metrics = list(metrics)
        self._stop = threading.Event()
        self._handed: queue.SimpleQueue[InForce] = queue.SimpleQueue()
        self._warned_retention = False
        self.want(metrics)
        self._thread = threading.Thread(target=self._run, name="ml-training", daemon=True)
        self._thread.start()

    def want(self, metrics: Sequence[str]) -> None:
        """The metrics to model now (at a reload), and the models models.db holds for
        them, read at once in the caller's thread for the next `take`."""
        with self._lock:
            self._metrics = list(metrics)
        try:
            self._hand(stored_records(self._config().state_dir))
        except StoreError as e:
            log.error(kv("ml_models_unreadable", error=e))

    def take(self) -> InForce | None:
        """The models in force handed over since the last call (the latest), or None."""
        latest = None
        while True:
            try:
                latest = self._handed.get_nowait()
            except queue.Empty:
                return latest

    def _hand(self, records: Mapping[str, ModelRecord]) -> None:
        with self._lock:
            metrics = list(self._metrics)
        self._handed.put(in_force(records, metrics, time.time()))

    def _run(self) -> None:
        wait = self._first_check_s
        while not self._stop.wait(wait):
            wait = self._check_every_s
            try:
                self._train_due(self._config())
            except Stopped:
                return
            except StoreError as e:
                log.error(kv("ml_training_unavailable", error=e))
            except Exception:  # a bug here must not end training for good
                log.exception(kv("ml_training_failed"))

    def _train_due(self, cfg: Config) -> None:
        if (
            cfg.store.metrics_retention_days * DAY_S < TRAINING_WINDOW_S
            and not self._warned_retention
        ):
            self._warned_retention = True
            log.warning(
                kv(
                    "ml_history_short",
                    metrics_retention_days=cfg.store.metrics_retention_days,
                    needed_days=TRAINING_WINDOW_S / DAY_S,
                    reason="models are built from the history only once it holds 14 days",
                )
            )
        now = time.time()
        with self._lock:
            metrics = list(self._metrics)
        records = stored_records(cfg.state_dir)
        # A model this version cannot use (an older format) is retrained at once.
        due = [
            m
            for m in metrics
            if m not in records
            or records[m].trained_at + RETRAIN_S <= now
            or (records[m].model is not None and usable_model(records[m]) is None)
        ]
        if not due:
            return
        self._train_in_child(cfg, due)
        self._hand(stored_records(cfg.state_dir))

    def _train_in_child(self, cfg: Config, metrics: list[str]) -> None:
        """`edge-defender train` on the history for `metrics`, in a child process at low
        priority: decoding two weeks of reports leaves ~6 MiB the daemon's allocator
        would keep for good (bench/ml_history.py); a child gives it back when it exits."""
        argv = [sys.executable, "-m", "agent", "train", "--no-reload"]
        if Path(cfg.config_file).is_file():
            argv += ["--config", cfg.config_file]
        for metric in metrics:
            argv += ["--metric", metric]
        if nice := shutil.which("nice"):
            argv = [nice, "-n", "10", *argv]
        began = time.monotonic()
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
            while True:
                try:
                    out, err = child.communicate(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if self._stop.is_set():
                        child.kill()
                        raise Stopped() from None
        # Exit status 1 also says that a metric has too little history yet.
        try:
            answer = json.loads(out)["models"] if child.returncode in (0, 1) else None
        except (ValueError, KeyError, TypeError):
            answer = None
        if answer is None:
            log.error(kv("ml_training_failed", status=child.returncode,
                         error=err.decode(errors="replace").strip()[-500:]))  # fmt: skip
            return
        for model in answer:
            log.info(
                kv(
                    "ml_trained",
                    metric=model.get("metric"),
                    built=model.get("built"),
                    datapoints=model.get("datapoints"),
                    unusable=model.get("unusableValues", 0),
                    left_out=model.get("datapointsInAlarmLeftOut", 0),
                    wall_s=round(time.monotonic() - began, 2),
                )
            )

    def close(self) -> None:
        """Stop; a training under way is given up (the models in force stay)."""
        self._stop.set()
        self._thread.join(timeout=10.0)

"""The ML Detect verbs: `get-behavior-model-training-summaries`, named and shaped as the
AWS CLI's, and the `train` extension, which trains the models now, from the recorded
metrics history or from an `export-metrics` file (so a device need not wait 14 days),
writes them to models.db and has a running agent take them (a reload, as the
management verbs ask for one)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from agent.config import Config
from agent.core.audit_model import InvalidRequest
from agent.core.ml_window import WINDOW_S, check_window_s, metric_kind
from agent.core.profile import SecurityProfile
from agent.core.report import ReportError
from agent.service.detect import count_metrics, ml_windows
from agent.service.profiles import load_detect_files
from agent.service.reload import ReloadError, reload, running_pid
from agent.service.status import StatusError
from agent.service.text import iso_time, table
from agent.service.trainer import (
    TRAINING_WINDOW_S,
    collected_percent,
    ml_metrics,
    model_status,
    record_of,
    stored_records,
    train,
    train_from_history,
    utc_offset_s,
    windows_in_force,
)
from agent.service.verbs import add_output, add_paging, exit_status, print_answer, verb_adder
from agent.store.db import StoreError, decode_token, encode_token
from agent.store.models import ModelRecord, open_models

MAX_RESULTS = 10  # GetBehaviorModelTrainingSummaries: TinyMaxResults
RELOAD_TIMEOUT_S = 30.0
_TOKEN_KIND = "model-summaries"


class ResourceNotFound(StoreError):
    """AWS's ResourceNotFoundException (exit 1)."""


def _profiles(cfg: Config) -> list[SecurityProfile]:
    """The profiles the daemon loads."""
    return load_detect_files(
        cfg.profile_patterns, builtin_default=cfg.detect.builtin_profile
    ).profiles


def summaries(
    profiles: list[SecurityProfile],
    records: Mapping[str, ModelRecord],
    now: float,
    profile_name: str | None = None,
) -> list[dict[str, Any]]:
    """A BehaviorModelTrainingSummary per ML behavior, in profile then behavior order.
    A behavior shares its metric's model; a cloud-side metric's (judged per MQTT
    client, which gets no model) stays PENDING_BUILD with nothing collected."""
    if profile_name is not None and profile_name not in {p.name for p in profiles}:
        raise ResourceNotFound(f"ResourceNotFoundException: no security profile {profile_name!r}")
    device = set(ml_metrics(profiles))
    out = []
    for p in sorted(profiles, key=lambda p: p.name):
        if profile_name is not None and p.name != profile_name:
            continue
        for b in p.behaviors:
            if b.criteria is None or b.criteria.ml_confidence is None:
                continue
            record = records.get(b.metric) if b.metric in device else None
            summary: dict[str, Any] = {"securityProfileName": p.name, "behaviorName": b.name}
            if record is not None and record.first_t is not None:
                summary["trainingDataCollectionStartDate"] = record.first_t
            summary["modelStatus"] = model_status(record, now)
            summary["datapointsCollectionPercentage"] = collected_percent(record)
            if record is not None and record.refreshed_at is not None:
                summary["lastModelRefreshDate"] = record.refreshed_at
            out.append(summary)
    return out


def _get_summaries(cfg: Config, args: argparse.Namespace) -> None:
    if not 1 <= args.max_results <= MAX_RESULTS:
        raise InvalidRequest("maxResults", f"{args.max_results} is not 1-{MAX_RESULTS}")
    items = summaries(
        _profiles(cfg), stored_records(cfg.state_dir), time.time(), args.security_profile_name
    )
    start = 0
    if args.next_token is not None:
        after = decode_token(_TOKEN_KIND, args.next_token, (str, str))
        keys = [[s["securityProfileName"], s["behaviorName"]] for s in items]
        start = keys.index(after) + 1 if after in keys else len(keys)
    page = items[start : start + args.max_results]
    answer: dict[str, Any] = {"summaries": page}
    if start + args.max_results < len(items):
        last = page[-1]
        answer["nextToken"] = encode_token(
            _TOKEN_KIND, [last["securityProfileName"], last["behaviorName"]]
        )
    if args.output == "json":
        print_answer(answer)
        return
    rows = [
        [
            s["securityProfileName"],
            s["behaviorName"],
            s["modelStatus"],
            f"{s['datapointsCollectionPercentage']:g}%",
            iso_time(s.get("trainingDataCollectionStartDate")),
            iso_time(s.get("lastModelRefreshDate")),
        ]
        for s in page
    ]
    print(table(("PROFILE", "BEHAVIOR", "STATUS", "COLLECTED", "SINCE", "REFRESHED"), rows))
    if "nextToken" in answer:
        print(f"nextToken: {answer['nextToken']}")


def _lines(source: str) -> Iterator[Mapping[str, Any]]:
    """The envelopes of an export-metrics file (- for stdin), one JSON object a line;
    InvalidRequest naming the line that is not one."""
    if source == "-":
        yield from _envelopes(sys.stdin, "stdin")
        return
    try:
        with Path(source).open(encoding="utf-8") as stream:
            yield from _envelopes(stream, source)
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequest("from", f"cannot read {source}: {e}") from None


def _envelopes(stream: IO[str], name: str) -> Iterator[Mapping[str, Any]]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise InvalidRequest("from", f"{name} line {number}: not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidRequest("from", f"{name} line {number}: not an export-metrics line")
        yield doc


def _train(cfg: Config, args: argparse.Namespace) -> None:
    metrics = sorted(set(args.metric or ml_metrics(_profiles(cfg))))
    if not metrics:
        raise InvalidRequest(
            "metric",
            "no loaded security profile has an ML behavior on a device metric;"
            " name the metrics to train",
        )
    for metric in metrics:
        try:
            metric_kind(metric)
        except ValueError as e:
            raise InvalidRequest("metric", str(e)) from None
    if args.window_s is not None:
        try:
            check_window_s(args.window_s)
        except ValueError as e:
            raise InvalidRequest("window-s", str(e)) from None
    counters = count_metrics(cfg)  # summed over the window, as the daemon judges them
    now = time.time()
    old = stored_records(cfg.state_dir)
    # The window of the model in force unless --window-s says otherwise; for a new model
    # of a count metric, the config's (ml_windows), else WINDOW_S.
    windows = {**ml_windows(cfg), **windows_in_force(old)}
    if args.window_s is not None:
        windows = dict.fromkeys(metrics, args.window_s)
    try:
        if args.source is None:
            trainings = train_from_history(
                cfg.state_dir, cfg.thing_name, metrics, now, windows=windows, counters=counters
            )
            source = "history"
        else:
            # A file is taken whole: it may be older than the training window.
            lines = _lines(args.source)
            trainings = train(
                lines, metrics, 0.0, now, utc_offset_s(now), windows=windows, counters=counters
            )
            source = "stdin" if args.source == "-" else str(Path(args.source).resolve())
    except ReportError as e:
        raise InvalidRequest("from", f"bad metrics report: {e}") from None
    with open_models(cfg.state_dir) as store:
        records = [record_of(old.get(t.metric), t, now, source) for t in trainings]
        store.put(records)
    answer: dict[str, Any] = {"models": []}
    for t, r in zip(trainings, records, strict=True):
        item: dict[str, Any] = {
            "metric": t.metric,
            "built": t.model is not None,
            "modelStatus": model_status(r, now),
            "datapoints": t.datapoints,
            "datapointsCollectionPercentage": collected_percent(r),
            "windowSeconds": windows.get(t.metric, WINDOW_S),
        }
        if t.first_t is not None:
            item["trainingDataCollectionStartDate"] = t.first_t
        if t.unusable:
            item["unusableValues"] = t.unusable
        if t.left_out:
            item["datapointsInAlarmLeftOut"] = t.left_out
        answer["models"].append(item)
    pid = None if args.no_reload else running_pid(cfg)
    if pid is not None:
        try:
            reload(Path(cfg.state_dir), pid, RELOAD_TIMEOUT_S)
        except (ReloadError, StatusError) as e:
            raise StoreError(
                f"models written; the running agent (pid {pid}) did not reload: {e}"
            ) from None
        answer["reloadedAgent"] = pid
    print_answer(answer)
    unbuilt = [t.metric for t in trainings if t.model is None]
    if unbuilt:
        raise StoreError(
            f"no model built for {', '.join(unbuilt)}: a model needs 14 days and 25000"
            " datapoints of the metric (see datapointsCollectionPercentage)"
        )


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Exit status: 0 done, 1 a store or agent failure, an unknown profile or a model
    not built, 2 a bad parameter."""
    return exit_status(args.command, lambda: args.verb(cfg, args))


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_arg: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """Register the ML verbs; `handler` loads the config and calls run()."""
    verb = verb_adder(sub, add_config_arg, handler)
    p = verb(
        "get-behavior-model-training-summaries",
        "ML behaviors: each model's status, data collected and last refresh",
        _get_summaries,
    )
    p.add_argument("--security-profile-name", metavar="NAME")
    add_paging(p, MAX_RESULTS, MAX_RESULTS)
    add_output(p)
    p = verb(
        "train",
        "an extension: train the ML models now, from the metrics history or an"
        " export-metrics file, and have a running agent take them",
        _train,
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="FILE",
        help="export-metrics output (- for stdin), taken whole; default: the last"
        f" {TRAINING_WINDOW_S / 86400:g} days of this device's metrics history",
    )
    p.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="a metric to train (repeatable); default: those of the loaded ML behaviors",
    )
    p.add_argument(
        "--window-s",
        type=float,
        metavar="SECONDS",
        help="the rolling window the models are trained on and judge (sums of counters,"
        " largest values of gauges); default: the model in force's, else for the"
        " connections opened [capture.connections] ml_window_s (3600),"
        f" else {WINDOW_S:g}",
    )
    p.add_argument(
        "--no-reload",
        action="store_true",
        help="only write models.db; a running agent takes it at its next reload or start",
    )

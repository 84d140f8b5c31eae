"""`edge-defender collect`: sample the device and print metrics reports."""

from __future__ import annotations

import json
import sys
import time
from typing import BinaryIO

from agent.collect.sampler import Sampler
from agent.config import Config
from agent.core.report import ReportIdClock, build_report, make_envelope, report_document
from agent.core.sample import Sample
from agent.publish.codec import encode


def _report(cfg: Config, sample: Sample, ids: ReportIdClock, short_names: bool) -> dict:
    """The report as it would go on the wire (lists cut, too-large custom metrics left
    out: printed on stderr)."""
    wire = build_report(
        sample, ids.next(time.time()), max_list=cfg.sampling.max_list, short_names=short_names
    )
    for name in wire.omitted:
        print(f"custom metric {name} left out: too large for a report", file=sys.stderr)
    return wire.doc


def collect(
    cfg: Config,
    *,
    count: int,
    interval_s: float,
    fmt: str,
    short_names: bool,
    jsonl: bool,
    out: BinaryIO | None = None,
) -> int:
    """Print `count` reports (0: until interrupted), one per `interval_s`.

    The first sample only primes the counters, so every printed report carries real
    deltas over a full interval. With `jsonl`, each line is a metrics-history envelope
    holding the whole sample (lists uncut), as the daemon's metrics history does.
    """
    out = out or sys.stdout.buffer
    sampler = Sampler(cfg, counters_path=None)
    try:
        _print_samples(sampler, cfg, count, interval_s, fmt, short_names, jsonl, out)
    finally:
        sampler.close()
    return 0


def _print_samples(
    sampler: Sampler,
    cfg: Config,
    count: int,
    interval_s: float,
    fmt: str,
    short_names: bool,
    jsonl: bool,
    out: BinaryIO,
) -> None:
    ids = ReportIdClock()
    sampler.sample()
    printed = 0
    deadline = time.monotonic()
    while count == 0 or printed < count:
        deadline += interval_s
        time.sleep(max(0.0, deadline - time.monotonic()))
        sample = sampler.sample()
        if jsonl:
            now = time.time()
            envelope = make_envelope(now, report_document(sample, ids.next(now)), sample.clients)
            line = json.dumps(envelope, separators=(",", ":"))
            out.write(line.encode() + b"\n")
        elif fmt == "cbor":
            out.write(encode(_report(cfg, sample, ids, short_names), "cbor"))
        else:
            out.write(json.dumps(_report(cfg, sample, ids, short_names), indent=2).encode() + b"\n")
        out.flush()
        printed += 1

"""`edge-defender collect`: sample the device and print metrics reports."""

from __future__ import annotations

import json
import sys
import time
from typing import BinaryIO

from agent.collect.sampler import Sampler
from agent.config import Config
from agent.core.report import ReportIdClock, Sample, build_report, make_envelope
from agent.publish.codec import encode


def _report(cfg: Config, sample: Sample, ids: ReportIdClock, short_names: bool) -> dict:
    return build_report(
        sample, ids.next(time.time()), max_list=cfg.sampling.max_list, short_names=short_names
    )


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
    deltas over a full interval. With `jsonl`, each line is a metrics-history envelope.
    """
    out = out or sys.stdout.buffer
    sampler = Sampler(cfg, counters_path=None)
    ids = ReportIdClock()
    sampler.sample()
    printed = 0
    deadline = time.monotonic()
    while count == 0 or printed < count:
        deadline += interval_s
        time.sleep(max(0.0, deadline - time.monotonic()))
        sample = sampler.sample()
        if jsonl:
            report = _report(cfg, sample, ids, short_names=False)
            line = json.dumps(make_envelope(time.time(), report), separators=(",", ":"))
            out.write(line.encode() + b"\n")
        elif fmt == "cbor":
            out.write(encode(_report(cfg, sample, ids, short_names), "cbor"))
        else:
            out.write(json.dumps(_report(cfg, sample, ids, short_names), indent=2).encode() + b"\n")
        out.flush()
        printed += 1
    return 0

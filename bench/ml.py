"""The ML Detect model (agent/core/ml.py): `.venv/bin/python bench/ml.py [--days 14]`.

For one behavior's model on 14 days of 10 s datapoints (120,960), per kind of metric:
CPU to train (every datapoint added, then build), the training state's peak traced
memory (tracemalloc; the datapoints themselves are made before tracing starts), the
saved model's size (compact JSON), and the CPU of `score` and `anomalous` a datapoint.

Goals (issue 16): <= 256 KiB and <= 2 s of CPU to train; <= 50 us to score."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.ml import Model, Trainer

T0 = 1_767_571_200.0  # a Monday, 00:00 UTC
STEP = 10.0
DAY = 86_400.0
Source = Callable[[random.Random, float], float]


def _daily(r: random.Random, t: float) -> float:
    d = abs((t % DAY) / 3600 - 20)
    return (2000 + 40_000 * math.exp(-0.5 * (min(d, 24 - d) / 3) ** 2)) * r.lognormvariate(0, 0.3)


SOURCES: dict[str, Source] = {
    "bytes out, daily cycle": _daily,
    "connections (small counts)": lambda r, t: float(2 + int(r.expovariate(0.5))),
    "auth failures (mostly 0)": lambda r, t: float(r.random() < 0.01),
    "listening ports (constant)": lambda r, t: 4.0,
    "heavy-tailed (pareto)": lambda r, t: 100 * r.paretovariate(1.2),
}


def _train(data: list[tuple[float, float]], now: float) -> Model:
    trainer = Trainer(T0)
    for t, v in data:
        trainer.add(t, v)
    model = trainer.build(now)
    assert model is not None
    return model


def measure(source: Source, days: int) -> dict[str, float]:
    r = random.Random(1)
    data = [(T0 + i * STEP, source(r, T0 + i * STEP)) for i in range(round(days * DAY / STEP))]
    now = T0 + days * DAY
    cpu = time.process_time()
    model = _train(data, now)
    train_s = time.process_time() - cpu

    tracemalloc.start()
    _train(data, now)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    probe = [(now + i * 7.0, v * 1.5) for i, (_, v) in enumerate(data[:50_000])]
    cpu = time.process_time()
    for t, v in probe:
        model.score(t, v)
    score_us = (time.process_time() - cpu) / len(probe) * 1e6
    cpu = time.process_time()
    for t, v in probe:
        model.anomalous(t, v, "MEDIUM")
    anomalous_us = (time.process_time() - cpu) / len(probe) * 1e6
    size = len(json.dumps(model.to_json(), separators=(",", ":")))
    return {
        "datapoints": len(data),
        "train_s": train_s,
        "peak_kib": peak / 1024,
        "json_kib": size / 1024,
        "score_us": score_us,
        "anomalous_us": anomalous_us,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args()
    print(
        "| metric | datapoints | train CPU s | peak KiB | model JSON KiB | score µs"
        " | anomalous µs |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, source in SOURCES.items():
        m = measure(source, args.days)
        print(
            f"| {name} | {m['datapoints']:,.0f} | {m['train_s']:.2f} | {m['peak_kib']:.0f} | "
            f"{m['json_kib']:.1f} | {m['score_us']:.2f} | {m['anomalous_us']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

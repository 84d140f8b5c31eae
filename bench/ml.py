"""The ML Detect model (agent/core/ml.py): `.venv/bin/python bench/ml.py [--days 14]`.

For one behavior's model on 14 days of 10 s samples (120,960), per kind of metric: CPU to
train (every sample through the rolling 5-minute window, agent/core/ml_window.py, and
its aggregate added, then build), the training state's peak traced memory (tracemalloc;
the samples themselves are made before tracing starts), the saved model's size (compact
JSON), the CPU of `score` and `anomalous` a datapoint, of a sample through the window
and `anomalous` (what judging costs now), and of `Detector.observe` of a sample with one
ML behavior on the metric (the rule core's whole path).

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

from agent.core.evaluator import Detector
from agent.core.ml import Model, Trainer
from agent.core.ml_window import Window, metric_kind
from agent.core.profile import parse_profile

T0 = 1_767_571_200.0  # a Monday, 00:00 UTC
STEP = 10.0
DAY = 86_400.0
Source = Callable[[random.Random, float], float]


def _daily(r: random.Random, t: float) -> float:
    d = abs((t % DAY) / 3600 - 20)
    return (2000 + 40_000 * math.exp(-0.5 * (min(d, 24 - d) / 3) ** 2)) * r.lognormvariate(0, 0.3)


# (metric: its kind decides the window's aggregate, the values of a 10 s sample)
SOURCES: dict[str, tuple[str, Source]] = {
    "bytes out, daily cycle": ("aws:all-bytes-out", _daily),
    "connections (small counts)": (
        "aws:num-established-tcp-connections",
        lambda r, t: float(2 + int(r.expovariate(0.5))),
    ),
    "auth failures (mostly 0)": ("auth-failures", lambda r, t: float(r.random() < 0.01)),
    "listening ports (constant)": ("aws:num-listening-tcp-ports", lambda r, t: 4.0),
    "heavy-tailed (pareto)": ("aws:all-packets-in", lambda r, t: 100 * r.paretovariate(1.2)),
}


def _train(metric: str, data: list[tuple[float, float]], now: float) -> Model:
    trainer = Trainer(T0)
    window = Window(metric_kind(metric))
    for t, v in data:
        aggregate = window.add(t, v)
        if aggregate is not None:
            trainer.add(t, aggregate)
    model = trainer.build(now)
    assert model is not None
    return model


def _per_sample_us(run: Callable[[], None], n: int) -> float:
    cpu = time.process_time()
    run()
    return (time.process_time() - cpu) / n * 1e6


def measure(metric: str, source: Source, days: int) -> dict[str, float]:
    r = random.Random(1)
    n = round(days * DAY / STEP) + 30  # 14 days of 5-minute aggregates after the first
    data = [(T0 + i * STEP, source(r, T0 + i * STEP)) for i in range(n)]
    now = data[-1][0] + STEP
    cpu = time.process_time()
    model = _train(metric, data, now)
    train_s = time.process_time() - cpu

    tracemalloc.start()
    _train(metric, data, now)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    # Later samples at 1.5 times the training's values.
    probe = [(now + i * STEP, v * 1.5) for i, (_, v) in enumerate(data[:50_000])]

    def score() -> None:
        for t, v in probe:
            model.score(t, v)

    def anomalous() -> None:
        for t, v in probe:
            model.anomalous(t, v, "MEDIUM")

    def windowed() -> None:
        window = Window(metric_kind(metric))
        for t, v in probe:
            aggregate = window.add(t, v)
            if aggregate is not None:
                model.anomalous(t, aggregate, "MEDIUM")

    behavior = {"mlDetectionConfig": {"confidenceLevel": "MEDIUM"}}
    profile = parse_profile(
        {
            "securityProfileName": "p",
            "behaviors": [{"name": "b", "metric": metric, "criteria": behavior}],
        }
    )
    detector = Detector([profile], "bench")
    detector.set_models({metric: model})

    def observe() -> None:
        for t, v in probe:
            detector.observe(t, {metric: v})

    size = len(json.dumps(model.to_json(), separators=(",", ":")))
    return {
        "datapoints": model.datapoints,
        "train_s": train_s,
        "peak_kib": peak / 1024,
        "json_kib": size / 1024,
        "score_us": _per_sample_us(score, len(probe)),
        "anomalous_us": _per_sample_us(anomalous, len(probe)),
        "windowed_us": _per_sample_us(windowed, len(probe)),
        "observe_us": _per_sample_us(observe, len(probe)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args()
    print(
        "| metric | datapoints | train CPU s | peak KiB | model JSON KiB | score µs"
        " | anomalous µs | window + anomalous µs | Detector.observe µs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (metric, source) in SOURCES.items():
        m = measure(metric, source, args.days)
        print(
            f"| {name} | {m['datapoints']:,.0f} | {m['train_s']:.2f} | {m['peak_kib']:.0f} | "
            f"{m['json_kib']:.1f} | {m['score_us']:.2f} | {m['anomalous_us']:.2f} | "
            f"{m['windowed_us']:.2f} | {m['observe_us']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training data for the rig's ML scenarios (a scenario's `[ml_training]` table): a
synthetic `export-metrics` file of 14.5 days shaped like the scenario's own traffic, which
the DUT trains on with `edge-defender train --from` before the agent starts, so that its
ML behaviors are judged from the first full window instead of after 14 days.

Two shapes, by the table's keys:

- a network counter (`per_s`): one report every `window_s` seconds (the model's rolling
  window: one sample a window is the coarsest that the window still takes, and keeps the
  file small), the metric's count of that report `per_s * window_s` times a daily cycle
  times lognormal noise (sigma NOISE). The cycle puts the device's quiet hours around the
  time of the training (the scenario runs in its "night", whatever the rig's clock says)
  and its busy hours, BUSY_FACTOR times as much, twelve hours away: a doubled night
  upload is then still far below an ordinary evening, as in hw/ml_eval.py. The metric's
  companion counter follows it (a packet per PACKET_BYTES); the other direction's are 0.
- a custom number metric that is a level (`value`: capture's count of periodic
  destinations), one report every `window_s` seconds holding `value` in its
  `custom_metrics`, at every hour and without noise: a device's pollers do not change
  with the time of day, and one more of them is what the model must call anomalous."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from typing import Any

DAYS = 14.5  # a model needs 14 days; the margin covers the first window
NOISE = 0.05  # lognormal sigma of one report's count: a steady upload varies little
BUSY_FACTOR = 4.0  # the busiest hour's rate over the quiet hours'
BUSY_WIDTH_H = 3.0  # the busy hours' spread (a gaussian bump over the day)
PACKET_BYTES = 1000
DAY_S = 86_400.0
# The metrics a synthetic export can shape, and their key in a report's network_stats.
NETWORK_METRICS = {
    "aws:all-bytes-in": "bytes_in",
    "aws:all-bytes-out": "bytes_out",
    "aws:all-packets-in": "packets_in",
    "aws:all-packets-out": "packets_out",
}


def rate_factor(t: float, now: float) -> float:
    """How busy the device is at `t` against its quiet hours, which are around `now`."""
    hours = ((t - now) % DAY_S) / 3600.0
    d = abs(hours - 12.0)  # 0 at the busiest hour, 12 h from now
    return 1.0 + (BUSY_FACTOR - 1.0) * math.exp(-0.5 * (d / BUSY_WIDTH_H) ** 2)


def synthetic_export(training: Mapping[str, Any], now: float, seed: int = 1) -> bytes:
    """`export-metrics` lines (JSON, one envelope a line) ending just before `now` (the
    device's clock) for a scenario's [ml_training] table: `metric`, `window_s`, and
    `per_s` (a network counter) or `value` (a custom number metric)."""
    step = float(training["window_s"])
    n = math.ceil(DAYS * DAY_S / step)
    if "value" in training:
        bodies = _level_bodies(training, n)
    else:
        bodies = _network_bodies(training, now, n, random.Random(seed))
    lines = [
        json.dumps(
            {
                "timestamp": now - (n - i) * step,
                "report": {"header": {"report_id": i + 1, "version": "1.0"}, **body},
            },
            separators=(",", ":"),
        )
        for i, body in enumerate(bodies)
    ]
    return ("\n".join(lines) + "\n").encode()


def _network_bodies(
    training: Mapping[str, Any], now: float, n: int, rng: random.Random
) -> list[dict[str, Any]]:
    """The reports' metrics, without their headers."""
    key = NETWORK_METRICS[training["metric"]]
    direction = key.rpartition("_")[2]  # "in" or "out"
    per_s, step = float(training["per_s"]), float(training["window_s"])
    bodies = []
    for i in range(n):
        t = now - (n - i) * step
        count = per_s * step * rate_factor(t, now) * rng.lognormvariate(0.0, NOISE)
        size = count if key.startswith("bytes") else count * PACKET_BYTES
        stats = dict.fromkeys(NETWORK_METRICS.values(), 0)  # the other direction: none
        stats[f"bytes_{direction}"] = round(size)
        stats[f"packets_{direction}"] = round(size / PACKET_BYTES)
        bodies.append({"metrics": {"network_stats": stats}})
    return bodies


def _level_bodies(training: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """The reports' metrics, without their headers: the level at every one."""
    return [
        {"metrics": {}, "custom_metrics": {training["metric"]: [{"number": training["value"]}]}}
    ] * n

"""The custom metrics that are counts (the capture's connections opened): named by the
config, summed over the ML window by the training as by the rule core."""

from __future__ import annotations

from typing import Any

from agent.config import parse_config
from agent.core.ml import MIN_TRAINING_DAYS
from agent.service.detect import count_metrics
from agent.service.trainer import train

DAY = 86400.0
STEP_S = 30.0


def test_the_connections_count_is_a_counter_while_capture_counts_it() -> None:
    assert count_metrics(parse_config("", "f")) == frozenset()  # capture off
    on = "[capture]\nenabled = true\n"
    assert count_metrics(parse_config(on, "f")) == frozenset({"num_connections_opened"})
    renamed = on + "[capture.connections]\ncount_metric = 'opened'\n"
    assert count_metrics(parse_config(renamed, "f")) == frozenset({"opened"})
    off = on + "[capture.connections]\nenabled = false\n"
    assert count_metrics(parse_config(off, "f")) == frozenset()


def envelopes(days: float) -> list[dict[str, Any]]:
    """One connection opened every 30 s sample: 10 in every 300 s window."""
    out = []
    for i in range(int(days * DAY / STEP_S)):
        report = {
            "header": {"report_id": i + 1, "version": "1.0"},
            "metrics": {},
            "custom_metrics": {"opened": [{"number": 1}]},
        }
        out.append({"timestamp": i * STEP_S, "report": report})
    return out


def test_training_sums_a_counter_over_the_window() -> None:
    docs = envelopes(MIN_TRAINING_DAYS + 0.5)
    now = docs[-1]["timestamp"] + STEP_S
    (summed,) = train(docs, ["opened"], 0.0, now, 0, counters=frozenset({"opened"}))
    (largest,) = train(docs, ["opened"], 0.0, now, 0)
    assert summed.model is not None and largest.model is not None
    t = now + 0.5 * DAY
    # The model has seen 10 a window: 10 is usual, 15 is not. As a plain number it saw 1.
    assert not summed.model.anomalous(t, 10, "LOW")
    assert summed.model.anomalous(t, 15, "LOW")
    assert largest.model.anomalous(t, 10, "LOW")

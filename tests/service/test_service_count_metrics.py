"""The custom metrics that are counts (the capture's connections opened): named by the
config, summed over the ML window by the training as by the rule core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import parse_config
from agent.core.ml import MIN_TRAINING_DAYS
from agent.service.detect import count_metrics, ml_windows
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
    # A new model of it starts with an hour's window (a beacon shows over an hour).
    assert ml_windows(parse_config(on, "f")) == {"num_connections_opened": 3600.0}
    shorter = on + "[capture.connections]\nml_window_s = 600.0\n"
    assert ml_windows(parse_config(shorter, "f")) == {"num_connections_opened": 600.0}


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


def test_train_starts_a_count_metrics_model_with_the_configs_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[detect]\nprofiles = []\n'
        "[capture]\nenabled = true\n[capture.connections]\ncount_metric = 'opened'\n"
    )
    export = tmp_path / "export.jsonl"
    export.write_text("".join(json.dumps(d) + "\n" for d in envelopes(MIN_TRAINING_DAYS + 0.5)))
    argv = ["train", "--config", str(config), "--from", str(export), "--metric", "opened"]
    assert main(argv) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert model["built"] is True and model["windowSeconds"] == 3600.0
    # --window-s still says otherwise, and later trainings keep the model's window.
    assert main([*argv, "--window-s", "600"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["windowSeconds"] == 600.0
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["windowSeconds"] == 600.0

"""The rig's ML scenarios: the synthetic export (hw/ml_rig.py) trains, through the
agent's own training code, an ACTIVE model whose quiet hours are now and whose busy hours
are twelve hours away; the DUT trains the agent with its own `train --from` before it
starts; a scenario's [ml_training] table is checked by name; ml-night-upload holds
together; the report describes an ML behavior (no threshold to draw)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.service.trainer import stored_records, train
from hw.dut import AgentSetup, prepare_ml
from hw.lab import Node
from hw.machine import REPO
from hw.ml_rig import BUSY_FACTOR, synthetic_export
from hw.report import _describe
from hw.scenario import EXAMPLE_ADDRESSES, ScenarioError, load_scenario, load_scenarios
from hw.scoring import behaviors

SHIPPED = Path(__file__).resolve().parents[2] / "hw" / "scenarios"
TRAINING = {"metric": "aws:all-bytes-out", "per_s": 52000.0, "window_s": 30.0}
HOUR = 3600.0


def test_the_export_trains_a_model_quiet_now_and_busy_twelve_hours_away() -> None:
    now = time.time()
    lines = synthetic_export(TRAINING, now).splitlines()
    assert len(lines) == 41760  # 14.5 days at 30 s
    envelopes = [json.loads(line) for line in lines]
    assert envelopes[-1]["timestamp"] < now
    (done,) = train(envelopes, ["aws:all-bytes-out"], 0.0, now, 0, windows={TRAINING["metric"]: 30})
    assert done.model is not None and done.model.window_s == 30.0
    assert done.datapoints == len(lines) - 1  # the first sample only starts the window
    quiet = 52000 * 30
    here = done.model.explain(now + 60, quiet)
    assert here["expected"] == pytest.approx(quiet, rel=0.03)
    # a doubling alarms at HIGH before the window is full of it; the quiet level at none
    assert 1.1 * quiet < here["limit_LOW"] < here["limit_HIGH"] < 1.6 * quiet
    busy = done.model.explain(now + 12 * HOUR, quiet)
    assert busy["expected"] == pytest.approx(BUSY_FACTOR * quiet, rel=0.05)
    assert not done.model.anomalous(now + 12 * HOUR, 2 * quiet, "LOW")  # a busy hour's norm


def test_the_dut_trains_the_agent_with_its_own_verb(tmp_path: Path) -> None:
    """prepare_ml on a node that runs commands here: the export written, `train --from`
    run, models.db holding an ACTIVE model of the window asked for."""
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(f'thing_name = "rig-dut"\nstate_dir = "{state}"\n')
    config.chmod(0o600)
    node = Node("host", "127.0.0.1", ())
    program = ("env", f"PYTHONPATH={REPO}", sys.executable, "-m", "agent")
    written: list[str] = []

    def put(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        written.append(name)
        return str(tmp_path / name)

    setup = AgentSetup(profiles=[], interval_s=1.0, ml_training=[TRAINING])
    prepare_ml(node, program, str(config), setup, put, time.time())
    assert written == ["ml-aws-all-bytes-out.jsonl"]
    record = stored_records(state)["aws:all-bytes-out"]
    assert record.model is not None and record.model["windowS"] == 30.0
    assert record.source == str(tmp_path / written[0])

    refused = tmp_path / "refused.toml"  # a config the agent refuses: train fails
    refused.write_text(config.read_text() + "no_such_key = 1\n")
    refused.chmod(0o600)
    with pytest.raises(RuntimeError, match="did not train a model of aws:all-bytes-out"):
        prepare_ml(node, program, str(refused), setup, put, time.time())


SCENARIO = """\
description = "An upload doubled."
interval_s = 1
warmup_s = 40
deadline_s = 60

[[profiles]]
securityProfileName = "p"

[[profiles.behaviors]]
name = "ml"
metric = "aws:all-bytes-out"
criteria = {{ mlDetectionConfig = {{ confidenceLevel = "HIGH" }} }}

[[attack]]
node = "dut"
kind = "exfil"
host = "{{attacker}}"
port = 8445
size = 1000

[[expected]]
profile = "p"
behavior = "ml"

{table}
"""


def scenario(tmp_path: Path, table: str) -> Any:
    path = tmp_path / "ml.toml"
    path.write_text(SCENARIO.format(table=table))
    return load_scenario(path, EXAMPLE_ADDRESSES, quick=False)


def test_an_ml_training_table_is_loaded(tmp_path: Path) -> None:
    s = scenario(
        tmp_path, '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1000\nwindow_s = 60'
    )
    assert s.ml_training == {"metric": "aws:all-bytes-out", "per_s": 1000.0, "window_s": 60.0}
    assert scenario(tmp_path, "").ml_training is None


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1', "ml_training: must be a table"),
        (
            '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1\nwindow_s = 30\nseed = 2',
            "with exactly metric, per_s, window_s",
        ),
        (
            '[ml_training]\nmetric = "level"\nper_s = 1\nwindow_s = 30',
            "ml_training.metric: must be one of aws:all-bytes-in",
        ),
        (
            '[ml_training]\nmetric = "aws:all-bytes-in"\nper_s = 1\nwindow_s = 30',
            "ml_training.metric: no ML behavior of the profiles judges aws:all-bytes-in",
        ),
        (
            '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 0\nwindow_s = 30',
            "ml_training.per_s: must be a number > 0",
        ),
        (
            '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1\nwindow_s = 0',
            "ml_training.window_s: ML window 0 is not a number of seconds",
        ),
    ],
)
def test_a_bad_ml_training_table_is_named(tmp_path: Path, table: str, said: str) -> None:
    with pytest.raises(ScenarioError, match=said):
        scenario(tmp_path, table)


def test_ml_night_upload_holds_together() -> None:
    (s,) = load_scenarios(SHIPPED, ["ml-night-upload"], EXAMPLE_ADDRESSES, quick=True)
    assert s.ml_training is not None
    window = s.ml_training["window_s"]
    # the model's window is full, and judged quiet for a while, before the attack
    assert s.warmup_s >= window + 5
    # the doubled upload fills the window in window_s: the latency goal counts from then
    assert s.lead_s == window
    assert [e.behavior for e in s.expected] == [
        "bytes-out-ml-low",
        "bytes-out-ml-medium",
        "bytes-out-ml-high",
    ]
    (steady,) = [a for a in s.setup if a.kind == "exfil"]
    (doubled,) = [a for a in s.attack if a.kind == "exfil"]
    assert steady.params["rate_bps"] == doubled.params["rate_bps"]  # the upload doubled
    # the quiet hours' rate the model learns: the steady upload and its headers
    assert 1.0 < s.ml_training["per_s"] / steady.params["rate_bps"] < 1.1


def test_the_report_describes_an_ml_behavior_without_a_threshold() -> None:
    profile = {
        "securityProfileName": "rig-ml",
        "behaviors": [
            {
                "name": "ml",
                "metric": "aws:all-bytes-out",
                "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
            }
        ],
    }
    (behavior,) = behaviors([profile]).values()
    assert _describe(behavior) == (
        "ML detection at HIGH (over its model's window)",
        "aws:all-bytes-out",
        None,
    )

"""The daemon's training thread in-process: there only while a loaded profile has an ML
behavior, and the models of models.db in force at each reload."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from agent.service.daemon import Daemon
from agent.service.notify import Notifier
from tests.service.test_service_ml import envelopes, write_export

ML = {
    "securityProfileName": "ml",
    "behaviors": [
        {
            "name": "level-ml",
            "metric": "level",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "MEDIUM"}},
        }
    ],
}
STATIC = {
    "securityProfileName": "static",
    "behaviors": [
        {
            "name": "level-high",
            "metric": "level",
            "criteria": {"comparisonOperator": "less-than", "value": {"number": 1000}},
        }
    ],
}


def test_the_trainer_follows_the_profiles_and_reloads_take_the_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "static.json").write_text(json.dumps(STATIC))
    (tmp_path / "level").write_text("10\n")
    config = tmp_path / "config.toml"
    config.write_text(
        f"""\
thing_name = "pi"
state_dir = "{tmp_path / "state"}"
[sampling]
socket_source = "proc"
[detect]
profiles = ["{profiles}/*.json"]
[[custom_metrics]]
name = "level"
type = "number"
source = "file"
path = "{tmp_path / "level"}"
"""
    )
    daemon = Daemon(load_config(str(config)), str(config), Notifier())
    daemon.start()
    try:
        assert daemon.trainer is None  # no ML behavior: no thread, no training code run
        (profiles / "ml.json").write_text(json.dumps(ML))
        daemon.reload()
        assert daemon.trainer is not None
        (waiting,) = daemon.cycle.detector.inactive_behaviors()
        assert waiting.reason == (
            "mlDetectionConfig: no active model of level: PENDING_BUILD: not trained yet"
        )

        export = write_export(tmp_path / "export.jsonl", envelopes(time.time(), 14.5))
        argv = ["train", "--config", str(config), "--from", str(export), "--no-reload"]
        assert main(argv) == 0, capsys.readouterr().err
        assert len(daemon.cycle.detector.inactive_behaviors()) == 1  # until a reload
        daemon.reload()
        assert daemon.cycle.detector.inactive_behaviors() == []

        (profiles / "ml.json").unlink()
        trainer = daemon.trainer
        daemon.reload()
        assert daemon.trainer is None
        assert not trainer._thread.is_alive()
    finally:
        daemon.shutdown()

"""ML Detect end to end with a real agent: an ML behavior waits for its model (status
says why), `train --from` an export of 14.5 synthetic days gives it one that the running
agent takes at once, an anomalous value of the custom metric raises an ML violation
with its confidence level in list-violation-events and list-active-violations
(MACHINE_LEARNING), a mitigation task runs a hook on it, and a restart keeps the
model and the alarm. The model is trained with `--window-s 10` (its largest value over
the last 10 s rather than 5 minutes, the default) so that the test need not wait 5
minutes for a full window, nor 5 more for the anomaly to leave it."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.system.conftest import TIMEOUT_S
from tests.system.test_system_daemon import Agent, wait_until

pytestmark = pytest.mark.system

DAY = 86400.0
WINDOW_S = 10.0
PROFILE = {
    "securityProfileName": "ml-profile",
    "behaviors": [
        {
            "name": "level-ml",
            "metric": "level",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}},
        }
    ],
}


def normal(t: float) -> float:
    """The synthetic metric's daily cycle: around 10, 8 to 12 over the day."""
    return 10 + 2 * math.sin(2 * math.pi * (t % DAY) / DAY)


def synthetic_export(path: Path, end: float, days: float = 14.5, step_s: float = WINDOW_S) -> int:
    """export-metrics lines of a custom metric `level` with a daily cycle around 10."""
    rng = random.Random(7)
    n = int(days * DAY / step_s)
    with path.open("w") as out:
        for i in range(n):
            t = end - (n - i) * step_s
            value = normal(t) + rng.uniform(-1, 1)
            report = {
                "header": {"report_id": i + 1, "version": "1.0"},
                "metrics": {},
                "custom_metrics": {"level": [{"number": round(value, 3)}]},
            }
            out.write(json.dumps({"timestamp": t, "report": report}) + "\n")
    return n


def ml_agent(tmp: Path, extra: str) -> Agent:
    """The daemon tests' agent, judging PROFILE, its level file at an ordinary value."""
    agent = Agent(tmp, extra=extra)
    agent.set_profile(PROFILE)
    agent.set_level(round(normal(time.time()), 2))
    return agent


def start(agent: Agent) -> None:
    agent.start()
    wait_until(lambda: agent.status().get("samples", 0) >= 2, "the agent's samples")


def test_train_from_an_export_then_an_anomaly_raises_an_ml_violation(tmp_path: Path) -> None:
    agent = ml_agent(tmp_path, "[mitigation]\nenabled = true\n")
    export = tmp_path / "export.jsonl"
    points = synthetic_export(export, time.time())
    out = tmp_path / "hook.json"
    hook = {
        "runHookParams": {
            "argv": [
                sys.executable,
                "-c",
                f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())",
            ],
            "timeoutSeconds": 30,
        }
    }
    agent.cli(
        "create-mitigation-action",
        "--action-name",
        "note",
        "--role-arn",
        "arn:aws:iam::123456789012:role/device",
        "--action-params",
        json.dumps(hook),
    )
    try:
        start(agent)
        inactive = agent.status()["inactive_behaviors"]
        assert inactive == [
            "ml-profile/level-ml: mlDetectionConfig: no active model of level:"
            " PENDING_BUILD: not trained yet"
        ]
        (pending,) = agent.cli("get-behavior-model-training-summaries")["summaries"]
        assert pending == {
            "securityProfileName": "ml-profile",
            "behaviorName": "level-ml",
            "modelStatus": "PENDING_BUILD",
            "datapointsCollectionPercentage": 0.0,
        }

        trained = agent.cli("train", "--from", str(export), "--window-s", str(WINDOW_S))
        (model,) = trained["models"]
        assert model["built"] is True and model["modelStatus"] == "ACTIVE"
        assert model["datapoints"] == points - 1  # the first sample only starts the window
        assert model["windowSeconds"] == WINDOW_S
        assert trained["reloadedAgent"] == agent.process.pid  # type: ignore[union-attr]
        assert agent.status()["inactive_behaviors"] == []  # in force when reload answered
        (line,) = agent.status()["ml"]  # with the hourly drift: 14.5 days of hours trained
        assert line.startswith("ml-profile/level-ml: ") and "; drift 0.0 of " in line
        (active,) = agent.cli("get-behavior-model-training-summaries")["summaries"]
        assert active["modelStatus"] == "ACTIVE"
        assert active["datapointsCollectionPercentage"] == 100.0

        time.sleep(1.0)  # normal values meanwhile: no violation
        assert agent.cli("list-active-violations")["activeViolations"] == []
        agent.set_level(1_000_000)

        def ml_events() -> list[dict[str, Any]]:
            span = ["--start-time", "0", "--end-time", str(time.time() + 60)]
            listed = agent.cli(
                "list-violation-events", *span, "--behavior-criteria-type", "MACHINE_LEARNING"
            )
            return list(listed["violationEvents"])

        (event,) = wait_until(ml_events, "the ML violation")
        assert event["violationEventType"] == "in-alarm"
        assert event["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}
        assert event["metricValue"] == {"number": 1_000_000}
        (violation,) = agent.cli(
            "list-active-violations", "--behavior-criteria-type", "MACHINE_LEARNING"
        )["activeViolations"]
        assert violation["violationId"] == event["violationId"]
        assert violation["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}
        static = agent.cli("list-active-violations", "--behavior-criteria-type", "STATIC")
        assert static["activeViolations"] == []

        agent.cli(
            "start-detect-mitigation-actions-task",
            "--task-id",
            "ml-task",
            "--target",
            json.dumps({"violationIds": [event["violationId"]]}),
            "--actions",
            "note",
        )
        wait_until(lambda: out.exists() and out.read_text(), "the hook's run")
        handed = json.loads(out.read_text())
        assert handed["violationId"] == event["violationId"]
        assert handed["violationEventAdditionalInfo"] == {"confidenceLevel": "LOW"}

        assert agent.stop() == 0
        start(agent)  # the model and the alarm come back
        assert agent.status()["inactive_behaviors"] == []
        assert agent.status()["active_violations"] == 1
        agent.set_level(round(normal(time.time()), 2))

        def cleared() -> list[dict[str, Any]]:
            return [e for e in ml_events() if e["violationEventType"] == "alarm-cleared"]

        # once the anomaly has left the 10 s window
        (end,) = wait_until(cleared, "the ML alarm's clear", TIMEOUT_S + WINDOW_S)
        assert end["violationId"] == event["violationId"]
        assert agent.stop() == 0
    finally:
        agent.kill()

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
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.system

TIMEOUT_S = 20.0
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


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


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


class Agent:
    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.state = tmp / "state"
        self.level = tmp / "level"
        self.profiles = tmp / "profiles"
        self.profiles.mkdir()
        (self.profiles / "ml-profile.json").write_text(json.dumps(PROFILE))
        self.config = tmp / "config.toml"
        self.log = tmp / "agent.log"
        self.set_level(round(normal(time.time()), 2))
        self.config.write_text(
            f"""\
thing_name = "ml-test"
state_dir = "{self.state}"
[sampling]
interval_s = 0.2
socket_source = "proc"
[detect]
profiles = ["{self.profiles}/*.json"]
[[custom_metrics]]
name = "level"
type = "number"
source = "file"
path = "{self.level}"
{extra}"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def set_level(self, value: float) -> None:
        tmp = self.level.with_suffix(".tmp")
        tmp.write_text(f"{value}\n")
        tmp.replace(self.level)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
            )
        wait_until(lambda: self.status().get("samples", 0) >= 2, "the agent's samples")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(TIMEOUT_S)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(TIMEOUT_S)
            self.process = None

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TZ": "UTC"},
        )

    def cli(self, *args: str) -> Any:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def test_train_from_an_export_then_an_anomaly_raises_an_ml_violation(tmp_path: Path) -> None:
    agent = Agent(
        tmp_path,
        extra="""
[mitigation]
enabled = true
""",
    )
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
        agent.start()
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
        agent.start()  # the model and the alarm come back
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

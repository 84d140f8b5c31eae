"""The ML verbs and the training thread: get-behavior-model-training-summaries in
AWS's shape, `train` from an export file or the metrics history on rolling 5-minute
aggregates (or the window --window-s gives, kept by later trainings) and its refusals,
the daemon's ModelTrainer training from the history (at once for a model of an older
format), ML events listed by their criteria type and targeted by a mitigation task."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import load_config
from agent.core.evaluator import Detector
from agent.core.mitigation_model import check_task_request
from agent.core.ml import Model
from agent.core.profile import parse_profile
from agent.service.mitigation import select_violations
from agent.service.trainer import ModelTrainer, in_force, stored_records
from agent.store.history import history_path, open_history
from agent.store.models import ModelRecord, open_models
from tests.shapes import shape_problems

DAY = 86400.0
STEP_S = 30.0
WARM = 10  # samples at STEP_S before a 300 s window gives its first datapoint
PROFILE = {
    "securityProfileName": "ml-profile",
    "behaviors": [
        {
            "name": "level-low",
            "metric": "level",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}},
        },
        {
            "name": "level-high",
            "metric": "level",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
        },
        {
            "name": "bytes-ml",
            "metric": "aws:all-bytes-out",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "MEDIUM"}},
        },
        {
            "name": "level-static",
            "metric": "level",
            "criteria": {"comparisonOperator": "less-than", "value": {"number": 100}},
        },
    ],
}
OTHER = {
    "securityProfileName": "another",
    "behaviors": [
        {
            "name": "msgs-ml",
            "metric": "aws:num-messages-sent",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}},
        }
    ],
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "ml-profile.json").write_text(json.dumps(PROFILE))
    (profiles / "another.json").write_text(json.dumps(OTHER))
    path = tmp_path / "config.toml"
    path.write_text(
        f"""\
thing_name = "ml-dev"
state_dir = "{tmp_path / "state"}"
[detect]
profiles = ["{profiles}/*.json"]
[[custom_metrics]]
name = "level"
type = "number"
source = "file"
path = "{tmp_path / "level"}"
"""
    )
    return path


def envelopes(end: float, days: float, step_s: float = STEP_S) -> list[dict[str, Any]]:
    """A custom metric `level` with a daily cycle, as export-metrics prints it."""
    rng = random.Random(3)
    n = int(days * DAY / step_s)
    out = []
    for i in range(n):
        t = end - (n - i) * step_s
        value = 10 + 2 * math.sin(2 * math.pi * (t % DAY) / DAY) + rng.uniform(-1, 1)
        report = {
            "header": {"report_id": i + 1, "version": "1.0"},
            "metrics": {},
            "custom_metrics": {"level": [{"number": round(value, 3)}]},
        }
        out.append({"timestamp": t, "report": report})
    return out


def write_export(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def run(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main([argv[0], "--config", str(config), *argv[1:]])
    out, err = capsys.readouterr()
    try:
        answer = json.loads(out) if out.strip() else None
    except ValueError:
        answer = out
    return code, answer, err


def summaries(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, answer, err = run(config, capsys, "get-behavior-model-training-summaries", *argv)
    assert code == 0, err
    problems = shape_problems(answer, "GetBehaviorModelTrainingSummariesResponse")
    assert problems == []
    return answer


def test_summaries_before_any_training_are_pending(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = summaries(config, capsys)
    assert [
        (s["securityProfileName"], s["behaviorName"], s["modelStatus"]) for s in answer["summaries"]
    ] == [
        ("another", "msgs-ml", "PENDING_BUILD"),
        ("ml-profile", "level-low", "PENDING_BUILD"),
        ("ml-profile", "level-high", "PENDING_BUILD"),
        ("ml-profile", "bytes-ml", "PENDING_BUILD"),
    ]
    assert all(s["datapointsCollectionPercentage"] == 0.0 for s in answer["summaries"])
    assert "nextToken" not in answer
    one = summaries(config, capsys, "--security-profile-name", "ml-profile", "--max-results", "2")
    assert [s["behaviorName"] for s in one["summaries"]] == ["level-low", "level-high"]
    rest = summaries(
        config, capsys, "--security-profile-name", "ml-profile", "--next-token", one["nextToken"]
    )
    assert [s["behaviorName"] for s in rest["summaries"]] == ["bytes-ml"]


@pytest.mark.parametrize(
    ("argv", "status", "said"),
    [
        (("--security-profile-name", "nope"), 1, "ResourceNotFoundException: no security profile"),
        (("--max-results", "11"), 2, "--max-results: 11 is not 1-10"),
        (("--next-token", "bogus"), 2, "--next-token"),
    ],
)
def test_summaries_refusals(
    config: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], status: int, said: str
) -> None:
    code, _, err = run(config, capsys, "get-behavior-model-training-summaries", *argv)
    assert code == status and said in err


def test_train_from_an_export_makes_the_model_active(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    docs = envelopes(time.time(), 14.5)
    export = write_export(tmp_path / "export.jsonl", docs)
    code, answer, err = run(config, capsys, "train", "--from", str(export), "--metric", "level")
    assert code == 0, err
    (model,) = answer["models"]
    assert model["metric"] == "level" and model["built"] is True
    assert model["datapoints"] == len(docs) - WARM  # one a sample once 300 s are covered
    assert model["trainingDataCollectionStartDate"] == docs[WARM]["timestamp"]
    assert model["windowSeconds"] == 300.0
    assert "reloadedAgent" not in answer  # no agent runs
    listed = summaries(config, capsys, "--security-profile-name", "ml-profile")["summaries"]
    by_name = {s["behaviorName"]: s for s in listed}
    assert by_name["level-low"]["modelStatus"] == "ACTIVE"
    assert by_name["level-high"]["datapointsCollectionPercentage"] == 100.0
    assert by_name["level-low"]["trainingDataCollectionStartDate"] == docs[WARM]["timestamp"]
    assert by_name["bytes-ml"]["modelStatus"] == "PENDING_BUILD"
    record = stored_records(load_config(str(config)).state_dir)["level"]
    assert record.source == str(export.resolve())
    assert record.model is not None
    assert Model.from_json(record.model).datapoints == len(docs) - WARM
    assert Model.from_json(record.model).window_s == 300.0


def test_train_with_another_window_and_later_trainings_keep_it(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    docs = envelopes(time.time(), 14.5)
    export = write_export(tmp_path / "export.jsonl", docs)
    argv = ("train", "--from", str(export), "--metric", "level")
    code, answer, err = run(config, capsys, *argv, "--window-s", "60")
    assert code == 0, err
    assert answer["models"][0]["datapoints"] == len(docs) - 2  # 60 s: from the third sample
    assert answer["models"][0]["windowSeconds"] == 60.0
    state_dir = load_config(str(config)).state_dir
    assert Model.from_json(stored_records(state_dir)["level"].model or {}).window_s == 60.0
    code, answer, err = run(config, capsys, *argv)  # no flag: the model in force's window
    assert code == 0, err
    assert answer["models"][0]["windowSeconds"] == 60.0
    assert Model.from_json(stored_records(state_dir)["level"].model or {}).window_s == 60.0


def test_train_without_enough_data_keeps_the_progress_and_fails(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    export = write_export(tmp_path / "short.jsonl", envelopes(time.time(), 3.5))
    code, answer, err = run(config, capsys, "train", "--from", str(export))
    assert code == 1
    assert "no model built for aws:all-bytes-out, level" in err
    assert [(m["metric"], m["built"]) for m in answer["models"]] == [
        ("aws:all-bytes-out", False),
        ("level", False),
    ]
    listed = summaries(config, capsys, "--security-profile-name", "ml-profile")["summaries"]
    level = next(s for s in listed if s["behaviorName"] == "level-low")
    assert level["modelStatus"] == "PENDING_BUILD"
    assert level["datapointsCollectionPercentage"] == 25.0  # 3.5 of 14 days
    assert "lastModelRefreshDate" not in level


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        (['{"timestamp": 1, "report": {"header": {}}}', "not json"], "line 2: not JSON"),
        (["[1, 2]"], "line 1: not an export-metrics line"),
        (['{"timestamp": 1, "report": {}}'], "record 1: report has no 'header' object"),
        (['{"timestamp": "x", "report": {"header": {}}}'], "'timestamp' must be epoch seconds"),
        (
            [
                '{"timestamp": 9, "report": {"header": {}, "custom_metrics":'
                ' {"level": [{"number": 1}]}}}',
                '{"timestamp": 8, "report": {"header": {}, "custom_metrics":'
                ' {"level": [{"number": 1}]}}}',
            ],
            "record 2: ML window: sample time 8.0 is before the previous 9.0",
        ),
    ],
)
def test_train_names_the_bad_line(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, lines: list[str], said: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = run(config, capsys, "train", "--from", str(bad))
    assert code == 2 and err.startswith("edge-defender: train: --from: ") and said in err
    assert not (tmp_path / "state" / "models.db").exists()


def test_train_refusals(config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(config, capsys, "train", "--from", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "--from: cannot read" in err
    (tmp_path / "profiles" / "ml-profile.json").unlink()
    (tmp_path / "profiles" / "another.json").unlink()
    code, _, err = run(config, capsys, "train")
    assert code == 2 and "--metric: no loaded security profile has an ML behavior" in err
    code, _, err = run(config, capsys, "train", "--metric", "aws:listening-tcp-ports")
    assert code == 2 and "--metric: ML detection takes number metrics only" in err
    code, _, err = run(config, capsys, "train", "--metric", "level", "--window-s", "0")
    assert code == 2 and "--window-s: ML window 0.0 is not a number of seconds" in err


def fill_history(state_dir: str, docs: list[dict[str, Any]]) -> None:
    with open_history(history_path(state_dir)) as history:
        for doc in docs:
            history.add_metrics(doc["timestamp"], doc["report"])
        history.flush_metrics()


def test_train_from_the_history_and_the_thread_does_the_same(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(str(config))
    docs = envelopes(time.time(), 14.5)
    fill_history(cfg.state_dir, docs)
    code, answer, err = run(config, capsys, "train", "--metric", "level")
    assert code == 0, err
    assert answer["models"][0]["datapoints"] == len(docs) - WARM
    assert stored_records(cfg.state_dir)["level"].source == "history"

    # The thread: what models.db holds is in force at once; then it trains what is due.
    trainer = ModelTrainer(lambda: cfg, ["level", "aws:all-bytes-out"], first_check_s=0.01)
    try:
        models, reasons = trainer.take() or ({}, {})
        assert isinstance(models["level"], Model)
        assert reasons == {"aws:all-bytes-out": "PENDING_BUILD: not trained yet"}
        deadline = time.monotonic() + 30
        while "aws:all-bytes-out" not in stored_records(cfg.state_dir):
            assert time.monotonic() < deadline, "the thread did not train"
            time.sleep(0.05)
        handed = None
        while handed is None and time.monotonic() < deadline:
            handed = trainer.take()
            time.sleep(0.05)
        assert handed is not None
        models, reasons = handed
        assert isinstance(models["level"], Model)  # not due again: kept
        assert models["aws:all-bytes-out"] is None
        assert reasons["aws:all-bytes-out"].startswith(
            "PENDING_BUILD: 0% of the training data (0 of 25000 datapoints over 0.0 of 14 days)"
        )
    finally:
        trainer.close()


def test_ml_violations_are_listed_by_criteria_type_and_targeted_by_mitigation(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(str(config))
    docs = envelopes(time.time(), 14.5)
    trained = write_export(Path(cfg.state_dir).parent / "e.jsonl", docs)
    assert run(config, capsys, "train", "--from", str(trained), "--metric", "level")[0] == 0
    model = Model.from_json(stored_records(cfg.state_dir)["level"].model or {})
    ids = itertools.count(1)
    detector = Detector([parse_profile(PROFILE)], "ml-dev", id_factory=lambda: f"v-{next(ids)}")
    detector.set_models({"level": model})
    now = time.time()
    for i in range(WARM, 0, -1):  # ordinary values fill the 5-minute window first
        assert detector.observe(now - i * STEP_S, {"level": 10}) == []
    events = detector.observe(now, {"level": 10**6})
    assert [e.behavior["name"] for e in events] == ["level-low", "level-high", "level-static"]
    low, high = events[0].violation_id, events[1].violation_id
    with open_history(history_path(cfg.state_dir)) as history:
        history.record(
            [e.to_json() for e in events],
            [a.to_json() for a in detector.active_violations()],
            {},
        )
    span = ("--start-time", "0", "--end-time", str(now + 1))
    code, answer, err = run(
        config,
        capsys,
        "list-violation-events",
        *span,
        "--behavior-criteria-type",
        "MACHINE_LEARNING",
    )
    assert code == 0, err
    assert shape_problems(answer, "ListViolationEventsResponse") == []
    assert [
        (e["behavior"]["name"], e["violationEventAdditionalInfo"])
        for e in answer["violationEvents"]
    ] == [("level-low", {"confidenceLevel": "LOW"}), ("level-high", {"confidenceLevel": "HIGH"})]
    code, answer, err = run(
        config, capsys, "list-active-violations", "--behavior-criteria-type", "MACHINE_LEARNING"
    )
    assert code == 0, err
    assert shape_problems(answer, "ListActiveViolationsResponse") == []
    assert sorted(a["violationId"] for a in answer["activeViolations"]) == sorted([low, high])

    request = check_task_request(
        task_id="t1",
        target={"securityProfileName": "ml-profile", "behaviorName": "level-high"},
        actions=["note"],
        client_request_token="tok",
        include_only_active_violations=True,
    )
    with open_history(history_path(cfg.state_dir), create=False) as history:
        (chosen,) = select_violations(history, request)
    assert chosen["violationId"] == high
    assert chosen["violationEventAdditionalInfo"] == {"confidenceLevel": "HIGH"}


def test_a_model_of_an_older_format_is_not_used_and_is_retrained_at_once(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A format 3 model has no hourly drift judgement (format 2 ones judged single
    samples). It is not in force, and the thread retrains it without waiting a day."""
    cfg = load_config(str(config))
    now = time.time()
    docs = envelopes(now, 14.5)
    fill_history(cfg.state_dir, docs)
    assert run(config, capsys, "train", "--metric", "level")[0] == 0
    current = stored_records(cfg.state_dir)["level"]
    old = {**(current.model or {}), "format": 3}
    old.pop("drift")
    with open_models(cfg.state_dir) as store:
        store.put([ModelRecord("level", old, now, current.datapoints, current.first_t, now, "x")])
    models, reasons = in_force(stored_records(cfg.state_dir), ["level"], now)
    assert models == {"level": None}
    assert reasons["level"].startswith(
        "the stored model is unusable (ML model format: 3 is not 4 (format 3 models had no"
        " hourly drift, format 2 ones judged single samples)); train it again"
    )
    trainer = ModelTrainer(lambda: cfg, ["level"], first_check_s=0.01)
    try:
        deadline = time.monotonic() + 30
        while (stored_records(cfg.state_dir)["level"].model or {}).get("format") != 4:
            assert time.monotonic() < deadline, "the thread did not retrain the old model"
            time.sleep(0.05)
    finally:
        trainer.close()
    assert stored_records(cfg.state_dir)["level"].source == "history"


def test_replay_judges_ml_behaviors_with_the_devices_models(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    now = time.time()
    trained = write_export(tmp_path / "train.jsonl", envelopes(now - 3600, 14.5))
    assert run(config, capsys, "train", "--from", str(trained), "--metric", "level")[0] == 0
    recording = envelopes(now, 1 / 24)  # the last hour, a spike at its end
    recording[-1]["report"]["custom_metrics"]["level"] = [{"number": 10**6}]
    played = write_export(tmp_path / "played.jsonl", recording)
    code = main(["replay", "--config", str(config), "--metrics", str(played)])
    out, err = capsys.readouterr()
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    ml = [e for e in events if "violationEventAdditionalInfo" in e]
    assert {e["behavior"]["name"] for e in ml} == {"level-low", "level-high"}
    assert all(e["violationEventType"] == "in-alarm" for e in ml)
    # Without models (another state_dir), the ML behaviors are named as not judged.
    bare = config.read_text().replace(str(tmp_path / "state"), str(tmp_path / "fresh"))
    config.write_text(bare)
    code = main(["replay", "--config", str(config), "--metrics", str(played)])
    out, err = capsys.readouterr()
    assert code == 0 and "level-high not judged: mlDetectionConfig" in err, err


def violation(vid: str, kind: str, t: float, thing: str = "ml-dev") -> dict[str, Any]:
    return {
        "violationId": vid,
        "thingName": thing,
        "securityProfileName": "ml-profile",
        "behavior": PROFILE["behaviors"][0],
        "metricValue": {"number": 1000},
        "violationEventType": kind,
        "violationEventTime": t,
    }


def test_training_leaves_out_the_devices_alarms_unless_verified_normal(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two days of an attack at 1000 in the history, alarmed on: a model that learned it
    would no longer call 1000 anomalous at HIGH (the training's largest value)."""
    cfg = load_config(str(config))
    now = time.time()
    docs = envelopes(now, 14.5)
    attack = (now - 3 * DAY, now - DAY)
    for doc in docs:
        if attack[0] <= doc["timestamp"] < attack[1]:
            doc["report"]["custom_metrics"]["level"] = [{"number": 1000}]
    fill_history(cfg.state_dir, docs)
    active = now - 3600  # in alarm since, still: left out until now
    with open_history(history_path(cfg.state_dir)) as history:
        events = [
            violation("attack", "in-alarm", attack[0] + 60),
            violation("attack", "alarm-cleared", attack[1] + 60),
            violation("client", "in-alarm", now - 10 * DAY, thing="a-broker-client"),
            violation("now", "in-alarm", active),
        ]
        history.record(events, [], {})

    def trained() -> tuple[dict[str, Any], Model]:
        code, answer, err = run(config, capsys, "train", "--metric", "level")
        assert code == 0, err
        return answer["models"][0], Model.from_json(
            stored_records(cfg.state_dir)["level"].model or {}
        )

    def near(start: float, end: float) -> int:  # datapoints within the 300 s window
        return sum(start - 300 < d["timestamp"] < end + 300 for d in docs[WARM:])

    summary, model = trained()
    left_out = near(attack[0] + 60, attack[1] + 60) + near(active, now)
    assert summary["datapointsInAlarmLeftOut"] == left_out
    assert summary["datapoints"] == len(docs) - WARM - left_out
    during = attack[0] + DAY / 2
    assert model.anomalous(during, 1000, "HIGH")

    code, _, err = run(
        config,
        capsys,
        "put-verification-state-on-violation",
        "--violation-id",
        "attack",
        "--verification-state",
        "BENIGN_POSITIVE",
    )
    assert code == 0, err
    summary, model = trained()
    assert summary["datapointsInAlarmLeftOut"] == near(active, now)
    assert not model.anomalous(during, 1000, "HIGH")  # an operator said it was normal

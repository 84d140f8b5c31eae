"""The control thread's work without a broker: requests run by the CLI's own verbs on real
files, the shadow's desired state applied, the journal, and 10,000 fuzzed messages."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, load_config, remote_settings
from agent.service.control import Controller
from agent.service.profiles import load_detect_files

BEHAVIOR = {
    "name": "ports",
    "metric": "aws:num-listening-tcp-ports",
    "criteria": {"comparisonOperator": "greater-than", "value": {"count": 5}},
}


@pytest.fixture
def made(tmp_path: Path) -> Iterator[tuple[Controller, Config]]:
    (tmp_path / "profiles").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        f"""\
thing_name = "t1"
state_dir = "{tmp_path / "state"}"
[detect]
profiles = ["{tmp_path / "profiles"}/*.json"]
[control]
enabled = true
max_requests_per_minute = 6000
"""
    )
    cfg = load_config(config)
    controller = Controller(str(config), cfg, threading.Event())
    controller.open()
    yield controller, cfg
    controller.close()


def ask(controller: Controller, verb: str, **given: Any) -> dict[str, Any]:
    return controller.handle(json.dumps({"verb": verb, "input": given}).encode())


def test_requests_create_describe_and_list_in_the_remote_directory(
    made: tuple[Controller, Config],
) -> None:
    controller, cfg = made
    answer = ask(
        controller, "create-security-profile", securityProfileName="p", behaviors=[BEHAVIOR]
    )
    assert answer["status"] == 0, answer
    assert (cfg.remote_dir / "p.json").is_file()
    described = ask(controller, "describe-security-profile", securityProfileName="p")
    assert described["output"]["behaviors"] == [BEHAVIOR] and described["output"]["version"] == 1
    answer = ask(controller, "update-security-profile", securityProfileName="p", expectedVersion=7)
    assert answer["status"] == 1 and "VersionConflictException" in answer["error"]
    listed = ask(controller, "list-security-profiles")
    assert [p["name"] for p in listed["output"]["securityProfileIdentifiers"]] == ["p"]
    journal = controller._store.entries()
    assert [e["verb"] for e in journal] == [
        "list-security-profiles",
        "update-security-profile",
        "describe-security-profile",
        "create-security-profile",
    ]
    assert journal[1]["status"] == 1 and "VersionConflict" in journal[1]["error"]


def test_the_rate_limit_refuses_without_running(made: tuple[Controller, Config]) -> None:
    controller, cfg = made
    controller.cfg = load_config_with(cfg, max_requests_per_minute=2)
    controller._tokens = 2
    statuses = [ask(controller, "list-dimensions")["status"] for _ in range(3)]
    assert statuses == [0, 0, 1]
    assert "rate" in controller._store.entries(1)[0]["error"]


def load_config_with(cfg: Config, **control: Any) -> Config:
    from dataclasses import replace

    return replace(cfg, control=replace(cfg.control, **control))


def test_the_desired_state_is_applied_and_a_bad_document_reported(
    made: tuple[Controller, Config],
) -> None:
    controller, cfg = made
    dim = {"type": "TOPIC_FILTER", "stringValues": ["tele/#"]}
    state = controller.apply_desired(
        {
            "dimensions": {"tele": dim},
            "profiles": {"good": {"behaviors": [BEHAVIOR]}, "bad": {"behaviors": [{"x": 1}]}},
            "settings": {"sampling.interval_s": 30.0, "mqtt.endpoint": "evil.example"},
        }
    )
    assert set(state["profiles"]) == {"good"} and state["profiles"]["good"]["version"] == 1
    assert set(state["dimensions"]) == {"tele"}
    assert set(state["errors"]) == {"profiles.bad", "settings"}
    assert "mqtt.endpoint" in state["errors"]["settings"]
    assert not cfg.remote_settings_path.exists()  # refused settings change nothing
    # Good settings are written and used by the agent's next load.
    state = controller.apply_desired(
        {
            "dimensions": {"tele": dim},
            "profiles": {"good": {"behaviors": [BEHAVIOR]}},
            "settings": {"sampling.interval_s": 30.0},
        }
    )
    assert state["errors"] == {} and state["settings"] == {"sampling.interval_s": 30.0}
    assert remote_settings(cfg)[0].sampling.interval_s == 30.0
    # Leaving desired removes what remote control made, and only that.
    (Path(cfg.detect.profiles[0]).parent / "local.json").write_text(
        json.dumps({"securityProfileName": "local", "behaviors": [BEHAVIOR]})
    )
    state = controller.apply_desired({})
    assert state["profiles"] == {} and state["dimensions"] == {} and state["settings"] == {}
    names = [p.name for p in load_detect_files(cfg.profile_patterns).profiles]
    assert names == ["local"]
    assert [e["channel"] for e in controller._store.entries()][:1] == ["shadow"]


# -- fuzzing ----------------------------------------------------------------------------------

VALID = [
    {
        "verb": "create-security-profile",
        "input": {"securityProfileName": "p1", "behaviors": [BEHAVIOR]},
    },
    {
        "verb": "update-security-profile",
        "input": {"securityProfileName": "p1", "behaviors": [BEHAVIOR], "expectedVersion": 1},
    },
    {"verb": "delete-security-profile", "input": {"securityProfileName": "p1"}},
    {
        "verb": "create-dimension",
        "input": {"name": "d1", "type": "TOPIC_FILTER", "stringValues": ["a/+/b"]},
    },
    {"verb": "update-dimension", "input": {"name": "d1", "stringValues": ["x/#"]}},
    {"verb": "delete-dimension", "input": {"name": "d1"}},
    {"verb": "list-security-profiles", "input": {"maxResults": 2}},
    {"verb": "list-dimensions"},
    {"verb": "describe-dimension", "input": {"name": "d1"}},
    {"verb": "list-violation-events", "input": {"startTime": 0, "endTime": 2000000000}},
    {"verb": "list-active-violations", "input": {"behaviorCriteriaType": "STATIC"}},
    {"verb": "describe-agent-status"},
    {"verb": "get-behavior-model-training-summaries", "input": {"maxResults": 5}},
]
ODD = [
    None,
    True,
    -1,
    0,
    1e300,
    "",
    "p1",
    "d1",
    "\x00",
    "\ud800",
    "é" * 300,
    [],
    {},
    [None],
    {"a": [1, {"b": None}]},
    "x" * 5000,
    "--config=/etc/shadow",
    "-1",
    "[",
    "../../etc/x",
    ["a/#", "+"],
    [{"name": "b", "metric": "aws:all-packets-out"}],
]


def _mutate(rng: random.Random, doc: Any, depth: int = 0) -> Any:
    """`doc` with one random change somewhere: a value replaced, a key added or removed."""
    if isinstance(doc, dict) and doc and depth < 6 and rng.random() < 0.7:
        key = rng.choice(list(doc))
        out = dict(doc)
        match rng.randrange(4):
            case 0:
                out[key] = _mutate(rng, doc[key], depth + 1)
            case 1:
                out[key] = rng.choice(ODD)
            case 2:
                del out[key]
            case _:
                out[rng.choice(["x", "config", "output", "noReload", key + "s"])] = rng.choice(ODD)
        return out
    if isinstance(doc, list) and doc and rng.random() < 0.7:
        out_list = list(doc)
        i = rng.randrange(len(doc))
        out_list[i] = _mutate(rng, doc[i], depth + 1)
        return out_list
    return rng.choice(ODD)


def _fuzzed(rng: random.Random) -> bytes:
    base: Any = rng.choice(VALID)
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randrange(0, 200))
    if roll < 0.3:  # as sent: the verbs change the files the fuzzing works on
        return json.dumps(base).encode()
    if roll < 0.35:
        raw = json.dumps(base).encode()
        cut = rng.randrange(len(raw))
        return raw[:cut] + rng.randbytes(3) + raw[cut:]
    for _ in range(rng.randrange(1, 4)):
        base = _mutate(rng, base)
    if roll < 0.6:  # mostly well-formed: the verbs' own checks get their share
        base = dict(rng.choice(VALID), input=base.get("input") if isinstance(base, dict) else base)
    return json.dumps(base, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def test_ten_thousand_fuzzed_messages_crash_nothing_and_leave_only_valid_documents(
    made: tuple[Controller, Config],
) -> None:
    controller, cfg = made
    rng = random.Random(20261201)
    statuses: dict[int, int] = {}
    began = time.monotonic()
    for _ in range(10_000):
        answer = controller.handle(_fuzzed(rng))
        assert isinstance(answer.get("status"), int), answer
        # 3: describe-agent-status of an agent not running, as `status` exits
        assert answer["status"] in (0, 3) or answer.get("error"), answer
        json.dumps(answer)  # every answer can be sent
        statuses[answer["status"]] = statuses.get(answer["status"], 0) + 1
    # Refused and done both happened: the fuzzing reached the verbs.
    assert statuses.get(0, 0) > 1000 and statuses.get(2, 0) > 3000, statuses
    # Whatever got through is a document the agent loads.
    load_detect_files(cfg.profile_patterns)
    assert len(controller._store.entries(20_000)) == 10_000
    print(f"10,000 fuzzed messages in {time.monotonic() - began:.1f} s: {statuses}")

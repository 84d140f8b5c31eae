"""Fuzzed parameters of the mitigation verbs against a real mitigation.db and history:
whatever JSON, name, token or time comes in, the answer is JSON (exit 0), a missing or
existing resource (exit 1), or one line naming the flag (exit 2) with nothing stored
changed; never a traceback. What was accepted is in AWS's shapes."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.core.mitigation_model import PARAMS_TYPES
from agent.store.history import history_path, open_history
from tests.core.test_core_mitigation_model import shape_problems
from tests.service.test_service_mitigation import (
    CERT,
    EGRESS,
    LISTEN,
    ROLE,
    Device,
    Done,
    _active,
    _dump,
    call,
    create,
)

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4)
    ),
    max_leaves=12,
)
MEMBER_KEYS = st.sampled_from(
    [
        "timeoutSeconds", "cidrs", "ports", "keepCidrs", "keepResolvers", "argv", "topic",
        "action", "thingGroupNames", "templateName", "logLevel", "topicArn", "protocol", "port",
    ]
)  # fmt: skip
MEMBERS = st.dictionaries(MEMBER_KEYS, JSON | st.lists(JSON, max_size=3), max_size=3)
PARAMS = st.dictionaries(st.sampled_from([*PARAMS_TYPES, "nope"]), MEMBERS | JSON, max_size=2)
TARGETS = st.dictionaries(
    st.sampled_from(["violationIds", "securityProfileName", "behaviorName", "other"]),
    JSON | st.lists(st.sampled_from(["v-egress", "v-ports", "v-nope", "a_b", ""]), max_size=3),
    max_size=3,
)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Device:
    root = tmp_path_factory.mktemp("mitigation-fuzz")
    config = root / "config.toml"
    config.write_text(f'thing_name = "dev"\nstate_dir = "{root / "state"}"\n')
    with open_history(history_path(load_config(str(config)).state_dir)) as history:
        history.record([EGRESS, LISTEN], [_active(EGRESS), _active(LISTEN)], {})
    dev = Device(root, config)
    create(dev, "cert", CERT)
    return dev


def judged(device: Device, flag: str, *argv: str) -> Done:
    """Run a verb; a refusal must name `flag` and leave the store as it was."""
    before = _dump(device.db)
    done = call(device, *argv)
    assert "Traceback" not in done.err
    if done.status == 0:
        json.loads(done.out)
    elif done.status == 2:
        last = done.err.strip().splitlines()[-1]
        assert flag in last, (argv, done.err)
        assert _dump(device.db) == before
    else:
        assert done.status == 1 and done.err.startswith(f"edge-defender: {argv[0]}: "), done.err
        assert _dump(device.db) == before
    return done


def _text(value: str) -> str:
    # Not the stdin (-) or file:// forms, nor something argparse takes for a flag.
    return " " + value if value.startswith(("-", "file://")) else value


@FUZZ
@given(params=PARAMS, name=st.text(string.ascii_letters + "_- ", min_size=1, max_size=12))
def test_action_params(device: Device, params: dict[str, Any], name: str) -> None:
    name = "x" + name.lstrip("-")
    done = judged(device, "--action", "create-mitigation-action", "--action-name", name,
                  "--role-arn", ROLE, "--action-params", json.dumps(params))  # fmt: skip
    if done.status == 0:
        described = call(device, "describe-mitigation-action", "--action-name", name).json()
        shape = "DescribeMitigationActionResponse"
        assert shape_problems(described, shape) == []
        assert call(device, "delete-mitigation-action", "--action-name", name).status == 0


@FUZZ
@given(
    target=TARGETS | JSON,
    window=st.none() | st.dictionaries(st.sampled_from(["startTime", "endTime", "x"]), JSON),
    flags=st.lists(
        st.sampled_from(["--include-only-active-violations", "--no-include-suppressed-alerts",
                         "--include-suppressed-alerts", "--dry-run"]),
        max_size=2, unique=True,
    ),
    task=st.text(string.ascii_letters + string.digits + "_-/ ", min_size=1, max_size=10),
)  # fmt: skip
def test_start_task(
    device: Device, target: Any, window: dict[str, Any] | None, flags: list[str], task: str
) -> None:
    argv = ["start-detect-mitigation-actions-task", "--task-id", _text(task),
            "--target", _text(json.dumps(target)), "--actions", "cert", *flags]  # fmt: skip
    if window is not None:
        argv += ["--violation-event-occurrence-range", json.dumps(window)]
    done = judged(device, "--", *argv)
    if done.status == 0:
        described = call(
            device, "describe-detect-mitigation-actions-task", "--task-id", done.json()["taskId"]
        ).json()
        assert shape_problems(described, "DescribeDetectMitigationActionsTaskResponse") == []


@FUZZ
@given(
    verb=st.sampled_from(
        [
            ["list-mitigation-actions"],
            ["list-detect-mitigation-actions-tasks", "--start-time", "0", "--end-time", "9e9"],
            ["list-detect-mitigation-actions-executions", "--task-id", "t"],
        ]
    ),
    token=st.text(string.ascii_letters + string.digits + "-_=", max_size=80) | st.text(max_size=40),
    page=st.integers(-5, 300),
)
def test_tokens_and_pages(device: Device, verb: list[str], token: str, page: int) -> None:
    done = judged(device, "--", *verb, "--next-token", "x" + token, "--max-results", str(page))
    if done.status == 2:
        assert ("--next-token" in done.err) or ("--max-results" in done.err)


@FUZZ
@given(start=st.floats(allow_nan=True) | st.integers(-(2**70), 2**70), span=st.floats(-1e6, 1e12))
def test_times(device: Device, start: float, span: float) -> None:
    judged(device, "-time", "list-detect-mitigation-actions-tasks", "--start-time", repr(start),
           "--end-time", repr(start + span))  # fmt: skip
    judged(device, "-time", "list-detect-mitigation-actions-executions", "--thing-name", "dev",
           "--start-time", repr(start), "--end-time", repr(start + span))  # fmt: skip


def test_a_refusal_must_name_the_flag(device: Device, tmp_path: Path) -> None:
    # The judge itself fails when a refusal does not name the flag.
    with pytest.raises(AssertionError):
        judged(device, "--action-params", "describe-mitigation-action", "--action-name", "a b")

"""The profile and dimension verbs as a user runs them, on real files in a tmp profiles
directory: every answer checked against botocore's `iot` output shapes, every bad
input a clear error naming its flag with nothing written, and a real running agent
that takes a change at once or, when it refuses, gets the files back as they were."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.service.status import read_status
from tests.shapes import MODEL, shape_problems

THING = "manage-test"
TIMEOUT_S = 15.0
BEHAVIORS = [
    {
        "name": "many-listeners",
        "metric": "aws:num-listening-tcp-ports",
        "criteria": {"comparisonOperator": "greater-than", "value": {"count": 50}},
    }
]
ALERT_TARGETS = {"SNS": {"alertTargetArn": "arn:aws:sns:x:1:t", "roleArn": "arn:aws:iam::1:role/r"}}
TOPIC_BEHAVIOR = {
    "name": "messages",
    "metric": "aws:num-messages-sent",
    "metricDimension": {"dimensionName": "telemetry", "operator": "IN"},
    "criteria": {"comparisonOperator": "greater-than", "value": {"count": 100}},
}


class Cli:
    """The verbs of one tmp config, run in-process."""

    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp / "profiles"
        self.dir.mkdir(mode=0o755)
        self.config = tmp / "config.toml"
        self.config.write_text(
            f'thing_name = "{THING}"\nstate_dir = "{tmp / "state"}"\n'
            f'[detect]\nprofiles = ["{self.dir}/*.json"]\n'
        )
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, Any, str]:
        """Exit status, the JSON answer (None when none), stderr."""
        self.capsys.readouterr()
        code = main([*argv, "--config", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, json.loads(out) if out else None, err

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.dir.iterdir())}


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


def out_problems(operation: str, answer: Any) -> list[str]:
    return shape_problems(answer, MODEL.operation_model(operation).output_shape)


def test_a_profile_created_described_updated_listed_and_deleted(cli: Cli) -> None:
    code, answer, err = cli(
        "create-security-profile",
        "--security-profile-name", "p1",
        "--security-profile-description", "listeners",
        "--behaviors", json.dumps(BEHAVIORS),
        "--alert-targets", json.dumps(ALERT_TARGETS),
    )  # fmt: skip
    assert code == 0, err
    assert answer == {
        "securityProfileName": "p1",
        "securityProfileArn": f"arn:edge-defender:iot::{THING}:securityprofile/p1",
    }
    assert out_problems("CreateSecurityProfile", answer) == []
    path = cli.dir / "p1.json"
    assert path.stat().st_mode & 0o777 == 0o644
    assert json.loads(path.read_bytes())["behaviors"] == BEHAVIORS

    code, described, _ = cli("describe-security-profile", "--security-profile-name", "p1")
    assert code == 0
    assert out_problems("DescribeSecurityProfile", described) == []
    assert described["version"] == 1 and described["behaviors"] == BEHAVIORS
    assert described["securityProfileDescription"] == "listeners"

    code, updated, err = cli(
        "update-security-profile", "--security-profile-name", "p1",
        "--expected-version", "1", "--delete-alert-targets",
        "--security-profile-description", "changed",
    )  # fmt: skip
    assert code == 0, err
    assert out_problems("UpdateSecurityProfile", updated) == []
    assert updated["version"] == 2 and "alertTargets" not in updated
    assert updated["securityProfileDescription"] == "changed"
    assert updated["behaviors"] == BEHAVIORS  # what was not given is kept
    assert updated["creationDate"] == described["creationDate"]
    assert updated["lastModifiedDate"] >= described["lastModifiedDate"]

    code, listed, _ = cli("list-security-profiles")
    assert out_problems("ListSecurityProfiles", listed) == []
    assert listed == {
        "securityProfileIdentifiers": [{"name": "p1", "arn": answer["securityProfileArn"]}]
    }

    code, answer, err = cli(
        "delete-security-profile", "--security-profile-name", "p1", "--expected-version", "2"
    )
    assert (code, answer) == (0, None), err
    assert cli.files() == {}
    code, _, err = cli("describe-security-profile", "--security-profile-name", "p1")
    assert code == 1 and "ResourceNotFoundException" in err


def test_expected_version_mismatch_is_a_version_conflict_and_changes_nothing(cli: Cli) -> None:
    cli(
        "create-security-profile",
        "--security-profile-name",
        "p1",
        "--behaviors",
        json.dumps(BEHAVIORS),
    )
    before = cli.files()
    for verb in ("update-security-profile", "delete-security-profile"):
        code, answer, err = cli(verb, "--security-profile-name", "p1", "--expected-version", "7")
        assert (code, answer) == (1, None)
        assert "VersionConflictException" in err and "version 1" in err
        assert cli.files() == before


def test_delete_behaviors_and_behaviors_together_are_refused(cli: Cli) -> None:
    cli(
        "create-security-profile",
        "--security-profile-name",
        "p1",
        "--behaviors",
        json.dumps(BEHAVIORS),
    )
    before = cli.files()
    code, _, err = cli(
        "update-security-profile", "--security-profile-name", "p1",
        "--delete-behaviors", "--behaviors", "[]",
    )  # fmt: skip
    assert code == 2 and "--delete-behaviors: cannot be given with --behaviors" in err
    assert cli.files() == before
    code, updated, _ = cli(
        "update-security-profile", "--security-profile-name", "p1", "--delete-behaviors"
    )
    assert code == 0 and "behaviors" not in updated and updated["version"] == 2


@pytest.mark.parametrize(
    ("args", "flag", "words"),
    [
        (["--behaviors", "[{"], "--behaviors", "not JSON"),
        (["--behaviors", '{"name": "x"}'], "--behaviors", "must be a JSON list"),
        (
            ["--behaviors", '[{"name": "b", "metric": "aws:bogus"}]'],
            "--behaviors",
            "unknown AWS metric",
        ),
        (["--behaviors", "file:///nonexistent/b.json"], "--behaviors", "cannot read"),
        (["--alert-targets", "[]"], "--alert-targets", "must be a JSON object"),
        (["--security-profile-description", "x" * 1001], "--security-profile-description", "1000"),
    ],
)
def test_bad_input_names_its_flag_and_writes_nothing(
    cli: Cli, args: list[str], flag: str, words: str
) -> None:
    code, answer, err = cli("create-security-profile", "--security-profile-name", "p1", *args)
    assert (code, answer) == (2, None)
    assert f"create-security-profile: {flag}: " in err and words in err
    assert cli.files() == {}


def test_a_bad_name_is_refused_before_any_file_is_named_after_it(cli: Cli) -> None:
    code, _, err = cli("create-security-profile", "--security-profile-name", "../evil")
    assert code == 2 and "--security-profile-name: " in err
    assert cli.files() == {} and not (cli.dir.parent / "evil.json").exists()


def test_behaviors_from_a_file_and_from_stdin(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "behaviors.json"
    source.write_text(json.dumps(BEHAVIORS))
    assert (
        cli(
            "create-security-profile",
            "--security-profile-name",
            "a",
            "--behaviors",
            f"file://{source}",
        )[0]
        == 0
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(BEHAVIORS)))
    assert (
        cli("create-security-profile", "--security-profile-name", "b", "--behaviors", "-")[0] == 0
    )
    for name in ("a", "b"):
        assert (
            cli("describe-security-profile", "--security-profile-name", name)[1]["behaviors"]
            == BEHAVIORS
        )


def test_an_existing_profile_is_not_created_again(cli: Cli) -> None:
    cli("create-security-profile", "--security-profile-name", "p1")
    before = cli.files()
    code, _, err = cli(
        "create-security-profile",
        "--security-profile-name",
        "p1",
        "--behaviors",
        json.dumps(BEHAVIORS),
    )
    assert code == 1 and "ResourceAlreadyExistsException" in err
    assert cli.files() == before


def test_dimensions_and_the_profiles_that_use_them(cli: Cli) -> None:
    code, _, err = cli(
        "create-security-profile",
        "--security-profile-name",
        "p1",
        "--behaviors",
        json.dumps([TOPIC_BEHAVIOR]),
    )
    assert code == 1 and "ResourceNotFoundException" in err and "telemetry" in err
    assert cli.files() == {}

    code, answer, err = cli(
        "create-dimension", "--name", "telemetry", "--type", "TOPIC_FILTER",
        "--string-values", "sensors/+/data", "sensors/#",
    )  # fmt: skip
    assert code == 0, err
    assert out_problems("CreateDimension", answer) == []
    assert answer["arn"] == f"arn:edge-defender:iot::{THING}:dimension/telemetry"
    assert (cli.dir / "telemetry.dimension.json").stat().st_mode & 0o777 == 0o644
    code, described, _ = cli("describe-dimension", "--name", "telemetry")
    assert out_problems("DescribeDimension", described) == []
    assert described["stringValues"] == ["sensors/+/data", "sensors/#"]

    both = [TOPIC_BEHAVIOR, *BEHAVIORS]
    assert (
        cli(
            "create-security-profile",
            "--security-profile-name",
            "p1",
            "--behaviors",
            json.dumps(both),
        )[0]
        == 0
    )
    assert (
        cli(
            "create-security-profile",
            "--security-profile-name",
            "p2",
            "--behaviors",
            json.dumps(BEHAVIORS),
        )[0]
        == 0
    )
    code, listed, _ = cli("list-security-profiles", "--dimension-name", "telemetry")
    assert [i["name"] for i in listed["securityProfileIdentifiers"]] == ["p1"]
    code, listed, _ = cli("list-security-profiles", "--metric-name", "aws:num-listening-tcp-ports")
    assert [i["name"] for i in listed["securityProfileIdentifiers"]] == ["p1", "p2"]
    code, _, err = cli(
        "list-security-profiles", "--metric-name", "x", "--dimension-name", "telemetry"
    )
    assert code == 2 and "--metric-name" in err

    before = cli.files()
    code, _, err = cli("delete-dimension", "--name", "telemetry")
    assert code == 1 and "ResourceInUseException" in err and "p1" in err
    assert cli.files() == before

    code, updated, err = cli(
        "update-dimension", "--name", "telemetry", "--string-values", '["a/#"]'
    )
    assert code == 0, err
    assert out_problems("UpdateDimension", updated) == []
    assert updated["stringValues"] == ["a/#"]
    code, _, err = cli("update-dimension", "--name", "telemetry", "--string-values", "a/#/b")
    assert code == 2 and "--string-values: " in err
    assert cli("describe-dimension", "--name", "telemetry")[1]["stringValues"] == ["a/#"]

    assert cli("delete-security-profile", "--security-profile-name", "p1")[0] == 0
    assert cli("delete-dimension", "--name", "telemetry")[0] == 0
    code, listed, _ = cli("list-dimensions")
    assert listed == {"dimensionNames": []} and out_problems("ListDimensions", listed) == []


def test_a_dimension_and_a_profile_may_share_a_name(cli: Cli) -> None:
    assert (
        cli("create-dimension", "--name", "x", "--type", "TOPIC_FILTER", "--string-values", "a")[0]
        == 0
    )
    assert cli("create-security-profile", "--security-profile-name", "x")[0] == 0
    assert sorted(cli.files()) == ["x.dimension.json", "x.json"]


def test_paging_goes_through_every_name_once(cli: Cli) -> None:
    names = [f"p{i:02}" for i in range(7)]
    for name in names:
        assert (
            cli("create-security-profile", "--security-profile-name", name, "--no-reload")[0] == 0
        )
    seen: list[str] = []
    token: list[str] = []
    while True:
        code, page, _ = cli("list-security-profiles", "--max-results", "3", *token)
        assert code == 0 and out_problems("ListSecurityProfiles", page) == []
        seen += [i["name"] for i in page["securityProfileIdentifiers"]]
        if "nextToken" not in page:
            break
        token = ["--next-token", page["nextToken"]]
    assert seen == names
    assert cli("list-security-profiles", "--max-results", "0")[0] == 2


def test_a_hand_written_profile_is_managed_in_its_own_file(cli: Cli) -> None:
    hand = cli.dir / "mine.json"
    hand.write_text(json.dumps({"securityProfileName": "by-hand", "behaviors": BEHAVIORS}))
    hand.chmod(0o644)
    code, described, _ = cli("describe-security-profile", "--security-profile-name", "by-hand")
    assert code == 0 and described["version"] == 1
    assert out_problems("DescribeSecurityProfile", described) == []
    code, updated, err = cli(
        "update-security-profile", "--security-profile-name", "by-hand", "--delete-behaviors"
    )
    assert code == 0, err
    assert updated["version"] == 2
    assert sorted(cli.files()) == ["mine.json"]
    assert "behaviors" not in json.loads(hand.read_bytes())

    several = cli.dir / "several.json"
    several.write_text(json.dumps([{"securityProfileName": "s1"}, {"securityProfileName": "s2"}]))
    several.chmod(0o644)
    before = cli.files()
    code, _, err = cli("delete-security-profile", "--security-profile-name", "s1")
    assert code == 1 and "with other documents" in err and str(several) in err
    assert cli.files() == before


def test_broken_files_or_an_unusable_pattern_are_refused(cli: Cli) -> None:
    broken = cli.dir / "broken.json"
    broken.write_text("{")
    code, _, err = cli("list-security-profiles")
    assert code == 1 and "broken.json" in err and "not JSON" in err
    broken.unlink()
    cli.config.write_text(f'thing_name = "{THING}"\n[detect]\nprofiles = ["{cli.dir}/p.json"]\n')
    code, _, err = cli("create-security-profile", "--security-profile-name", "p1")
    assert code == 1 and "<directory>/*.json" in err


# -- a real running agent --------------------------------------------------------------------


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def agent(cli: Cli, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A running agent with its own config (same state_dir and profiles) that a test
    may break to make it refuse a reload."""
    config = tmp_path / "agent.toml"
    config.write_text(
        cli.config.read_text() + '[sampling]\ninterval_s = 0.2\nsocket_source = "proc"\n'
    )
    log = (tmp_path / "agent.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)], stdout=log, stderr=log
    )
    state = tmp_path / "state"
    try:
        _wait(lambda: (s := read_status(state)) is not None and s["pid"] == process.pid, "status")
        yield process, config
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT_S)
        log.close()


def test_a_running_agent_takes_a_change_at_once_and_a_refusal_is_rolled_back(
    cli: Cli, agent: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    process, config = agent
    state = tmp_path / "state"
    code, _, err = cli(
        "create-security-profile",
        "--security-profile-name",
        "live",
        "--behaviors",
        json.dumps(BEHAVIORS),
    )
    assert code == 0, err
    status = read_status(state)
    assert status is not None and status["pid"] == process.pid
    assert status["profiles"] == ["live"]  # already when the verb returns: it waited
    assert status["reload"]["ok"] is True

    config.write_text(config.read_text() + "[detect.bogus]\n")  # the agent now refuses reloads
    before = cli.files()
    code, _, err = cli("create-security-profile", "--security-profile-name", "refused")
    assert code == 1 and f"pid {process.pid}" in err and "refused" in err
    assert cli.files() == before
    status = read_status(state)
    assert status is not None and status["profiles"] == ["live"] and status["reload"]["ok"] is False

    code, _, err = cli("create-security-profile", "--security-profile-name", "later", "--no-reload")
    assert code == 0, err
    assert (cli.dir / "later.json").exists()
    assert read_status(state)["profiles"] == ["live"]  # type: ignore[index]
    assert process.poll() is None
    assert os.stat(cli.dir / "later.json").st_mode & 0o022 == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_files_are_owned_like_their_directory(cli: Cli) -> None:
    os.chown(cli.dir, 65534, 65534)
    assert (
        cli("create-dimension", "--name", "d", "--type", "TOPIC_FILTER", "--string-values", "a")[0]
        == 0
    )
    assert cli("create-security-profile", "--security-profile-name", "p")[0] == 0
    for name in ("d.dimension.json", "p.json"):
        st = (cli.dir / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o644)
    assert sorted(cli.files()) == ["d.dimension.json", "p.json"]  # no temporary file left

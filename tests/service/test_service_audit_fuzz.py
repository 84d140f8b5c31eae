"""Fuzzed parameters of the Audit verbs against a real audit.db: whatever JSON, text, token
or time comes in, the answer is JSON (exit 0), a missing resource (exit 1), or one line
naming the flag (exit 2) with nothing stored changed; never a traceback."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.test_service_audit import (
    CERTS,
    DAYS,
    KEYS,
    Device,
    Done,
    _dump,
    call,
    ok,
)

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=30), inner, max_size=4)
    ),
    max_leaves=12,
)
KEY_NAMES = st.sampled_from(
    ["deviceCertificateId", "caCertificateId", "clientId", "account", "policyVersionIdentifier",
     "issuerCertificateIdentifier", "path", "setting", "filePath", "DeviceCertificateId", ""]
)  # fmt: skip
IDENTIFIERS = st.one_of(
    st.dictionaries(KEY_NAMES, JSON, max_size=3).map(json.dumps),
    JSON.map(json.dumps),
    st.text(max_size=60),
)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Device:
    root = tmp_path_factory.mktemp("audit-fuzz")
    key, cert = root / "device.key", root / "device.crt"
    key.write_text("key")
    key.chmod(0o644)
    cert.write_text("10")
    config = root / "config.toml"
    config.write_text(
        f'state_dir = "{root / "state"}"\n[mqtt]\nkey_file = "{key}"\ncert_file = "{cert}"\n'
    )
    config.chmod(0o600)
    dev = Device(root, config, key, cert)
    ok(dev, "start-on-demand-audit-task", "--target-check-names", KEYS, CERTS)
    ok(dev, "create-scheduled-audit", "--scheduled-audit-name", "kept", "--frequency", "DAILY",
       "--target-check-names", KEYS)  # fmt: skip
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
    return done


@FUZZ
@given(identifier=IDENTIFIERS)
def test_resource_identifiers(device: Device, identifier: str) -> None:
    if identifier.startswith(("-", "file://")):
        identifier = " " + identifier  # not the stdin or file forms
    judged(device, "--resource-identifier", "list-audit-findings", "--task-id", "t",
           "--resource-identifier", identifier)  # fmt: skip
    judged(device, "--resource-identifier", "list-audit-suppressions",
           "--resource-identifier", identifier)  # fmt: skip
    judged(device, "--resource-identifier", "describe-audit-suppression", "--check-name", KEYS,
           "--resource-identifier", identifier)  # fmt: skip


@FUZZ
@given(configurations=st.dictionaries(st.sampled_from([KEYS, CERTS, "NOPE", ""]), JSON, max_size=2))
def test_check_configurations(device: Device, configurations: dict[str, Any]) -> None:
    judged(device, "--audit-check-configurations", "update-account-audit-configuration",
           "--audit-check-configurations", json.dumps(configurations))  # fmt: skip
    described = ok(device, "describe-account-audit-configuration")
    days = described["auditCheckConfigurations"][CERTS]["configuration"][DAYS]
    assert 30 <= int(days) <= 3652
    # A scheduled audit runs KEYS: it stays enabled whatever came in.
    assert described["auditCheckConfigurations"][KEYS]["enabled"] is True


@FUZZ
@given(
    verb=st.sampled_from(
        [
            ["list-audit-findings", "--task-id", "t"],
            ["list-audit-findings", "--start-time", "0", "--end-time", "9e9"],
            ["list-audit-suppressions"],
            ["list-scheduled-audits"],
        ]
    ),
    token=st.text(string.ascii_letters + string.digits + "-_=", max_size=80) | st.text(max_size=40),
    page=st.integers(-5, 300),
)
def test_tokens_and_pages(device: Device, verb: list[str], token: str, page: int) -> None:
    if token.startswith("-"):
        token = "x" + token
    done = judged(device, "--", *verb, "--next-token", token, "--max-results", str(page))
    if done.status == 2:
        assert ("--next-token" in done.err) or ("--max-results" in done.err)


@FUZZ
@given(
    frequency=st.sampled_from(["DAILY", "WEEKLY", "BIWEEKLY", "MONTHLY"]),
    week=st.none() | st.sampled_from(["MON", "SUN"]),
    month=st.none() | st.text(string.digits + "LAST", max_size=3),
    name=st.text(string.ascii_letters + "_- /", min_size=1, max_size=20),
)
def test_schedules(
    device: Device, frequency: str, week: str | None, month: str | None, name: str
) -> None:
    argv = ["create-scheduled-audit", "--scheduled-audit-name", name.lstrip("-") or "n",
            "--frequency", frequency, "--target-check-names", CERTS]  # fmt: skip
    argv += [] if week is None else ["--day-of-week", week]
    argv += [] if month is None else ["--day-of-month", month]
    judged(device, "--", *argv)


@FUZZ
@given(start=st.floats(allow_nan=True) | st.integers(-(2**70), 2**70), span=st.floats(-1e6, 1e12))
def test_times(device: Device, start: float, span: float) -> None:
    judged(device, "-time", "list-audit-tasks", "--start-time", repr(start),
           "--end-time", repr(start + span))  # fmt: skip


def test_a_refusal_names_the_flag(device: Device, tmp_path: Path) -> None:
    # The judge itself fails when a refusal does not name the flag.
    with pytest.raises(AssertionError):
        judged(device, "--check-name", "list-audit-findings", "--task-id", "a b")

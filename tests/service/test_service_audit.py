"""The Audit verbs as a user runs them, against a real audit.db, with a small table of
real checks defined here (they read the files the config names) injected through
run()'s `checks` parameter; every answer checked against botocore's `iot` shapes, and
every bad input a clear error naming its flag, exit 2, with nothing stored changed."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from agent.config import load_config
from agent.core.audit import AuditContext, Noncompliance
from agent.service.audit import (
    Checks,
    add_parsers,
    due_scheduled_audits,
    run,
    run_audit_task,
    task_findings,
)
from agent.store.audit import audit_path, open_audit
from tests.shapes import shape_problems

REPO = Path(__file__).resolve().parents[2]
MODEL = botocore.session.get_session().get_service_model("iot")
KEYS = "KEY_FILE_PERMISSIONS_CHECK"
CERTS = "DEVICE_CERTIFICATE_EXPIRING_CHECK"
BROKEN = "BROKEN_READ_CHECK"
CRASH = "CRASHING_CHECK"
DAYS = "CERT_EXPIRATION_THRESHOLD_IN_DAYS"


@dataclass(frozen=True)
class Check:
    name: str
    severity: str
    description: str
    run: Callable[[AuditContext], list[Noncompliance]]
    default_settings: Mapping[str, Any] = field(default_factory=dict)


def _keys(ctx: AuditContext) -> list[Noncompliance]:
    return [
        Noncompliance(
            "DEVICE_FILE",
            {"filePath": path},
            "KEY_FILE_READABLE_BY_OTHERS",
            f"{path} is mode {os.stat(path).st_mode & 0o777:04o}",
        )
        for path in ctx.key_files
        if os.stat(path).st_mode & 0o077
    ]


def _certs(ctx: AuditContext) -> list[Noncompliance]:
    """A certificate here is a file holding the days it has left."""
    threshold = ctx.settings[CERTS][DAYS]
    found = []
    for path in ctx.cert_files:
        data = Path(path).read_bytes()
        if int(data) < threshold:
            found.append(
                Noncompliance(
                    "DEVICE_CERTIFICATE",
                    {"deviceCertificateId": hashlib.sha256(data).hexdigest()},
                    "CERTIFICATE_APPROACHING_EXPIRATION",
                    f"expires in {int(data)} days",
                    {"daysLeft": str(int(data))},
                )
            )
    return found


def _broken(ctx: AuditContext) -> list[Noncompliance]:
    Path(ctx.key_files[0] + ".missing").read_bytes()
    return []


def _crash(ctx: AuditContext) -> list[Noncompliance]:
    raise ZeroDivisionError("a bug")


TABLE = {
    c.name: c
    for c in (
        Check(KEYS, "HIGH", "key files others can read", _keys),
        Check(CERTS, "MEDIUM", "certificate expiring", _certs, {DAYS: 30}),
        Check(BROKEN, "LOW", "reads a file that is not there", _broken),
        Check(CRASH, "LOW", "has a bug", _crash),
    )
}


def run_checks(names: Sequence[str], ctx: AuditContext) -> dict[str, list[Noncompliance] | str]:
    """As agent.collect.audit_checks.run_checks: a check that cannot read says why."""
    out: dict[str, list[Noncompliance] | str] = {}
    for name in names:
        try:
            out[name] = TABLE[name].run(ctx)
        except OSError as e:
            out[name] = f"cannot read {e.filename}: {e.strerror}"
    return out


CHECKS = Checks(TABLE, run_checks)


@dataclass
class Device:
    root: Path
    config: Path
    key: Path
    cert: Path

    @property
    def db(self) -> Path:
        return audit_path(self.root / "state")


@pytest.fixture
def device(tmp_path: Path) -> Device:
    key, cert = tmp_path / "device.key", tmp_path / "device.crt"
    key.write_text("key")
    key.chmod(0o644)  # the flaw KEYS finds
    cert.write_text("40")
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nthing_name = "pi-1"\n'
        f'[mqtt]\nkey_file = "{key}"\ncert_file = "{cert}"\n'
        f'[detect]\nprofiles = ["{tmp_path / "profiles" / "*.json"}"]\n'
    )
    config.chmod(0o600)
    return Device(tmp_path, config, key, cert)


def _parser(checks: Checks) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-defender")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(
        sub,
        lambda p: p.add_argument("--config"),
        lambda args: run(args, load_config(args.config), checks=checks),
    )
    return parser


@dataclass
class Done:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.status == 0, self.err
        return json.loads(self.out)


def call(device: Device, *argv: str, stdin: str = "", checks: Checks = CHECKS) -> Done:
    """One verb in this process, as `edge-defender VERB ... --config`."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr, sys.stdin
    sys.stdout, sys.stderr, sys.stdin = out, err, io.StringIO(stdin)
    try:
        try:
            args = _parser(checks).parse_args([*argv, "--config", str(device.config)])
            status = args.handler(args)
        except SystemExit as e:  # argparse's own errors
            status = int(e.code or 0)
    finally:
        sys.stdout, sys.stderr, sys.stdin = saved
    return Done(status, out.getvalue(), err.getvalue())


def ok(device: Device, *argv: str, stdin: str = "") -> Any:
    return call(device, *argv, stdin=stdin).json()


def response(operation: str) -> Any:
    return MODEL.operation_model(operation).output_shape


def valid(answer: Any, operation: str) -> Any:
    assert shape_problems(answer, response(operation), open_identifiers=True) == []
    return answer


def start(device: Device, *names: str) -> str:
    answer = valid(
        ok(device, "start-on-demand-audit-task", "--target-check-names", *names),
        "StartOnDemandAuditTask",
    )
    return str(answer["taskId"])


def findings(device: Device, *argv: str) -> list[dict[str, Any]]:
    answer = valid(ok(device, "list-audit-findings", *argv), "ListAuditFindings")
    return list(answer["findings"])


def test_on_demand_task(device: Device) -> None:
    before = time.time()
    task = start(device, KEYS, CERTS)
    described = valid(ok(device, "describe-audit-task", "--task-id", task), "DescribeAuditTask")
    assert described["taskStatus"] == "COMPLETED"
    assert described["taskType"] == "ON_DEMAND_AUDIT_TASK"
    assert before <= described["taskStartTime"] <= time.time()
    assert described["taskStatistics"]["nonCompliantChecks"] == 1
    assert described["taskStatistics"]["compliantChecks"] == 1
    assert described["auditDetails"][CERTS]["checkRunStatus"] == "COMPLETED_COMPLIANT"
    assert described["auditDetails"][KEYS] == {
        "checkRunStatus": "COMPLETED_NON_COMPLIANT",
        "checkCompliant": False,
        "nonCompliantResourcesCount": 1,
        "suppressedNonCompliantResourcesCount": 0,
    }
    (finding,) = findings(device, "--task-id", task)
    assert finding["taskId"] == task and finding["checkName"] == KEYS
    assert finding["severity"] == "HIGH" and finding["isSuppressed"] is False
    assert finding["nonCompliantResource"] == {
        "resourceType": "DEVICE_FILE",
        "resourceIdentifier": {"filePath": str(device.key)},
    }
    assert finding["reasonForNonComplianceCode"] == "KEY_FILE_READABLE_BY_OTHERS"
    assert finding["reasonForNonCompliance"] == f"{device.key} is mode 0644"
    assert finding["findingTime"] >= finding["taskStartTime"]
    # The same findings by time, and for the daemon to publish.
    assert findings(device, "--start-time", "0", "--end-time", "9e9") == [finding]
    with open_audit(device.root / "state") as store:
        assert task_findings(store, task) == [finding]
    # A hardened device: no findings.
    device.key.chmod(0o600)
    clean = start(device, KEYS, CERTS)
    assert findings(device, "--task-id", clean) == []
    stats = ok(device, "describe-audit-task", "--task-id", clean)["taskStatistics"]
    assert stats["compliantChecks"] == 2


def test_settings_reach_the_checks(device: Device) -> None:
    assert findings(device, "--task-id", start(device, CERTS)) == []
    described = valid(
        ok(device, "describe-account-audit-configuration"), "DescribeAccountAuditConfiguration"
    )
    assert described["auditCheckConfigurations"][CERTS] == {
        "enabled": True,
        "configuration": {DAYS: "30"},
    }
    update = {CERTS: {"configuration": {DAYS: "60"}}}
    assert (
        ok(
            device,
            "update-account-audit-configuration",
            "--audit-check-configurations",
            json.dumps(update),
        )
        == {}
    )
    (finding,) = findings(device, "--task-id", start(device, CERTS))
    assert finding["nonCompliantResource"]["additionalInfo"] == {"daysLeft": "40"}
    assert finding["reasonForNonComplianceCode"] == "CERTIFICATE_APPROACHING_EXPIRATION"
    assert shape_problems(finding, "AuditFinding") == []  # an AWS resource: strictly AWS


def test_a_check_that_cannot_run_or_crashes_fails_alone(device: Device) -> None:
    task = start(device, BROKEN, CRASH, KEYS)
    described = valid(ok(device, "describe-audit-task", "--task-id", task), "DescribeAuditTask")
    assert described["taskStatus"] == "COMPLETED"
    assert described["taskStatistics"]["failedChecks"] == 2
    broken = described["auditDetails"][BROKEN]
    assert broken == {
        "checkRunStatus": "FAILED",
        "message": f"cannot read {device.key}.missing: No such file or directory",
    }
    assert described["auditDetails"][CRASH] == {
        "checkRunStatus": "FAILED",
        "message": "the check failed: ZeroDivisionError: a bug",
    }
    assert len(findings(device, "--task-id", task)) == 1
    only_failures = start(device, BROKEN)
    assert ok(device, "describe-audit-task", "--task-id", only_failures)["taskStatus"] == "FAILED"


def _cancel_and_check(
    device: Device, ran: list[str]
) -> Callable[[AuditContext], list[Noncompliance]]:
    def check(ctx: AuditContext) -> list[Noncompliance]:
        with open_audit(device.root / "state") as store:
            ((task_id, _),) = store.in_progress_tasks()
        # Another process cancels it, as a person would from a second shell.
        done = cli(device, "cancel-audit-task", "--task-id", task_id)
        assert done.returncode == 0, done.stderr
        ran.append("canceler")
        return []

    return check


def test_cancel_stops_a_running_task(device: Device) -> None:
    ran: list[str] = []
    table = {
        KEYS: TABLE[KEYS],
        "CANCELER_CHECK": Check("CANCELER_CHECK", "LOW", "cancels", _cancel_and_check(device, ran)),
        "LAST_CHECK": Check(
            "LAST_CHECK", "LOW", "never runs", lambda ctx: ran.append("last") or []
        ),
    }

    def runner(names: Sequence[str], ctx: AuditContext) -> dict[str, list[Noncompliance] | str]:
        return {n: table[n].run(ctx) for n in names}

    checks = Checks(table, runner)
    argv = (
        "start-on-demand-audit-task",
        "--target-check-names",
        KEYS,
        "CANCELER_CHECK",
        "LAST_CHECK",
    )
    task = call(device, *argv, checks=checks).json()["taskId"]
    assert ran == ["canceler"]
    described = valid(ok(device, "describe-audit-task", "--task-id", task), "DescribeAuditTask")
    assert described["taskStatus"] == "CANCELED"
    assert [d["checkRunStatus"] for d in described["auditDetails"].values()] == [
        "COMPLETED_NON_COMPLIANT",
        "CANCELED",
        "CANCELED",
    ]
    assert described["taskStatistics"]["canceledChecks"] == 2
    assert len(findings(device, "--task-id", task)) == 1  # the first check's, kept
    again = call(device, "cancel-audit-task", "--task-id", task)
    assert again.status == 2
    assert "--task-id: audit task" in again.err and "is CANCELED" in again.err


def test_a_task_left_by_a_dead_process_is_failed(device: Device) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open_audit(device.root / "state") as store:
        store.begin_task(
            "abandoned", time.time(), "ON_DEMAND_AUDIT_TASK", [KEYS], runner_pid=dead.pid
        )
    described = ok(device, "describe-audit-task", "--task-id", "abandoned")
    assert described["taskStatus"] == "FAILED"
    assert f"pid {dead.pid}" in described["auditDetails"][KEYS]["message"]


def test_suppressions_mark_and_filter_findings(device: Device) -> None:
    key = json.dumps({"filePath": str(device.key)})
    assert (
        ok(
            device,
            "create-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            key,
            "--suppress-indefinitely",
            "--description",
            "lab unit",
        )
        == {}
    )
    described = valid(
        ok(
            device, "describe-audit-suppression", "--check-name", KEYS, "--resource-identifier", key
        ),
        "DescribeAuditSuppression",
    )
    assert described == {
        "checkName": KEYS,
        "resourceIdentifier": {"filePath": str(device.key)},
        "suppressIndefinitely": True,
        "description": "lab unit",
    }
    device.cert.write_text("3")  # a second, unsuppressed finding
    task = start(device, KEYS, CERTS)
    both = findings(device, "--task-id", task)
    assert [f["isSuppressed"] for f in both] == [True, False]
    assert findings(device, "--task-id", task, "--list-suppressed-findings") == both[:1]
    assert findings(device, "--task-id", task, "--no-list-suppressed-findings") == both[1:]
    details = ok(device, "describe-audit-task", "--task-id", task)["auditDetails"]
    assert details[KEYS]["suppressedNonCompliantResourcesCount"] == 1
    assert details[KEYS]["checkRunStatus"] == "COMPLETED_NON_COMPLIANT"
    by_resource = findings(
        device, "--start-time", "0", "--end-time", "9e9", "--resource-identifier", key
    )
    assert by_resource == both[:1]
    assert findings(device, "--task-id", task, "--check-name", CERTS) == both[1:]
    listed = valid(ok(device, "list-audit-suppressions"), "ListAuditSuppressions")
    assert listed == {"suppressions": [described]}
    # Deleted: the next audit's finding is not suppressed; the recorded one stays as it was.
    assert (
        ok(device, "delete-audit-suppression", "--check-name", KEYS, "--resource-identifier", key)
        == {}
    )
    later = start(device, KEYS)
    assert [f["isSuppressed"] for f in findings(device, "--task-id", later)] == [False]
    assert findings(device, "--task-id", task, "--list-suppressed-findings") == both[:1]
    gone = call(
        device, "describe-audit-suppression", "--check-name", KEYS, "--resource-identifier", key
    )
    assert gone.status == 1 and "no suppression of" in gone.err


def test_suppression_expiry_and_update(device: Device) -> None:
    cert = {"deviceCertificateId": "ab" * 32}
    ident = json.dumps(cert)
    soon = str(time.time() + 3600)
    base = ("--check-name", CERTS, "--resource-identifier", ident)
    ok(
        device,
        "create-audit-suppression",
        *base,
        "--expiration-date",
        soon,
        "--client-request-token",
        "t-1",
    )
    # Idempotent with its token; another create of the same resource is refused (exit 1).
    ok(
        device,
        "create-audit-suppression",
        *base,
        "--expiration-date",
        soon,
        "--client-request-token",
        "t-1",
    )
    twice = call(device, "create-audit-suppression", *base, "--suppress-indefinitely")
    assert twice.status == 1 and "already suppressed" in twice.err
    assert ok(device, "describe-audit-suppression", *base)["expirationDate"] == float(soon)
    ok(device, "update-audit-suppression", *base, "--suppress-indefinitely")
    forever = ok(device, "describe-audit-suppression", *base)
    assert forever["suppressIndefinitely"] is True and "expirationDate" not in forever
    ok(device, "update-audit-suppression", *base, "--expiration-date", "2099-01-01T00:00:00Z")
    ok(device, "update-audit-suppression", *base, "--description", "new cert ordered")
    updated = ok(device, "describe-audit-suppression", *base)
    assert updated["expirationDate"] == 4070908800.0
    assert updated["suppressIndefinitely"] is False and updated["description"] == "new cert ordered"
    request = MODEL.operation_model("CreateAuditSuppression").input_shape
    sent = {
        "checkName": CERTS,
        "resourceIdentifier": cert,
        "suppressIndefinitely": True,
        "clientRequestToken": "t-1",
    }
    assert not ParamValidator().validate(sent, request).has_errors()


def test_json_parameters_inline_file_and_stdin(device: Device) -> None:
    ident = {"filePath": str(device.key)}
    path = device.root / "ident.json"
    path.write_text(json.dumps(ident))
    base = ("create-audit-suppression", "--check-name", KEYS, "--suppress-indefinitely")
    ok(device, *base, "--resource-identifier", f"file://{path}")
    shown = ok(
        device,
        "describe-audit-suppression",
        "--check-name",
        KEYS,
        "--resource-identifier",
        "-",
        stdin=json.dumps(ident),
    )
    assert shown["resourceIdentifier"] == ident
    configs = device.root / "configs.json"
    configs.write_text(json.dumps({CERTS: {"configuration": {DAYS: "90"}}}))
    ok(
        device,
        "update-account-audit-configuration",
        "--audit-check-configurations",
        f"file://{configs}",
    )
    described = ok(device, "describe-account-audit-configuration")
    assert described["auditCheckConfigurations"][CERTS]["configuration"] == {DAYS: "90"}
    task = ok(device, "start-on-demand-audit-task", "--target-check-names", json.dumps([KEYS]))
    assert len(findings(device, "--task-id", task["taskId"])) == 1


def test_account_configuration_stores_aws_fields(device: Device) -> None:
    targets = {
        "SNS": {
            "targetArn": "arn:aws:sns:eu-west-1:123456789012:audit",
            "roleArn": "arn:aws:iam::123456789012:role/sns",
            "enabled": True,
        }
    }
    ok(
        device,
        "update-account-audit-configuration",
        "--role-arn",
        "arn:aws:iam::123456789012:role/audit",
        "--audit-notification-target-configurations",
        json.dumps(targets),
        "--audit-check-configurations",
        json.dumps({BROKEN: {"enabled": False}}),
    )
    described = valid(
        ok(device, "describe-account-audit-configuration"), "DescribeAccountAuditConfiguration"
    )
    assert described["roleArn"] == "arn:aws:iam::123456789012:role/audit"
    assert described["auditNotificationTargetConfigurations"] == targets
    assert described["auditCheckConfigurations"][BROKEN] == {"enabled": False}
    refused = call(device, "start-on-demand-audit-task", "--target-check-names", BROKEN)
    assert refused.status == 2
    assert "--target-check-names: BROKEN_READ_CHECK is disabled" in refused.err


def test_scheduled_audits(device: Device) -> None:
    created = valid(
        ok(
            device,
            "create-scheduled-audit",
            "--scheduled-audit-name",
            "nightly",
            "--frequency",
            "DAILY",
            "--target-check-names",
            KEYS,
            CERTS,
        ),
        "CreateScheduledAudit",
    )
    arn = "arn:edge-defender:iot::pi-1:scheduledaudit/nightly"
    assert created == {"scheduledAuditArn": arn}
    described = valid(
        ok(device, "describe-scheduled-audit", "--scheduled-audit-name", "nightly"),
        "DescribeScheduledAudit",
    )
    assert described == {
        "frequency": "DAILY",
        "targetCheckNames": [KEYS, CERTS],
        "scheduledAuditName": "nightly",
        "scheduledAuditArn": arn,
    }
    no_day = call(
        device,
        "update-scheduled-audit",
        "--scheduled-audit-name",
        "nightly",
        "--frequency",
        "WEEKLY",
    )
    assert no_day.status == 2 and "--day-of-week: is required for WEEKLY" in no_day.err
    ok(
        device,
        "update-scheduled-audit",
        "--scheduled-audit-name",
        "nightly",
        "--frequency",
        "MONTHLY",
        "--day-of-month",
        "LAST",
    )
    ok(
        device,
        "update-scheduled-audit",
        "--scheduled-audit-name",
        "nightly",
        "--target-check-names",
        KEYS,
    )
    assert ok(device, "describe-scheduled-audit", "--scheduled-audit-name", "nightly") == {
        **described,
        "frequency": "MONTHLY",
        "dayOfMonth": "LAST",
        "targetCheckNames": [KEYS],
    }
    # MONTHLY to DAILY drops the day of the month; WEEKLY to BIWEEKLY keeps the weekday.
    nightly = ("--scheduled-audit-name", "nightly")
    ok(device, "update-scheduled-audit", *nightly, "--frequency", "DAILY")
    assert "dayOfMonth" not in ok(device, "describe-scheduled-audit", *nightly)
    ok(
        device,
        "create-scheduled-audit",
        "--scheduled-audit-name",
        "weekly",
        "--frequency",
        "WEEKLY",
        "--day-of-week",
        "MON",
        "--target-check-names",
        CERTS,
    )
    ok(
        device,
        "update-scheduled-audit",
        "--scheduled-audit-name",
        "weekly",
        "--frequency",
        "BIWEEKLY",
    )
    listed = valid(ok(device, "list-scheduled-audits"), "ListScheduledAudits")
    assert [s["scheduledAuditName"] for s in listed["scheduledAudits"]] == ["nightly", "weekly"]
    assert listed["scheduledAudits"][1]["dayOfWeek"] == "MON"
    assert listed["scheduledAudits"][1]["frequency"] == "BIWEEKLY"
    in_use = call(
        device,
        "update-account-audit-configuration",
        "--audit-check-configurations",
        json.dumps({CERTS: {"enabled": False}}),
    )
    assert in_use.status == 2 and "scheduled audit(s) weekly run it" in in_use.err
    exists = call(
        device,
        "create-scheduled-audit",
        "--scheduled-audit-name",
        "weekly",
        "--frequency",
        "DAILY",
        "--target-check-names",
        CERTS,
    )
    assert exists.status == 1 and "already exists" in exists.err
    ok(device, "delete-scheduled-audit", "--scheduled-audit-name", "weekly")
    missing = call(device, "describe-scheduled-audit", "--scheduled-audit-name", "weekly")
    assert missing.status == 1 and "no scheduled audit 'weekly'" in missing.err


def test_the_daemon_runs_due_scheduled_audits(device: Device) -> None:
    ok(
        device,
        "create-scheduled-audit",
        "--scheduled-audit-name",
        "nightly",
        "--frequency",
        "DAILY",
        "--target-check-names",
        KEYS,
    )
    cfg = load_config(str(device.config))
    now = time.time()
    with open_audit(device.root / "state") as store:
        (due,) = due_scheduled_audits(store, now)
        assert (due.name, due.target_check_names) == ("nightly", (KEYS,))
        task = run_audit_task(
            store, cfg, due.target_check_names, "SCHEDULED_AUDIT_TASK", due.name, now, checks=CHECKS
        )
        assert due_scheduled_audits(store, now + 60) == []  # ran today
        assert [d.name for d in due_scheduled_audits(store, now + 86400)] == ["nightly"]
        published = task_findings(store, task)
    described = ok(device, "describe-audit-task", "--task-id", task)
    assert described["taskType"] == "SCHEDULED_AUDIT_TASK"
    assert described["scheduledAuditName"] == "nightly"
    assert published == findings(device, "--task-id", task)
    tasks = valid(
        ok(
            device,
            "list-audit-tasks",
            "--start-time",
            str(now - 5),
            "--end-time",
            str(now + 5),
            "--task-type",
            "SCHEDULED_AUDIT_TASK",
        ),
        "ListAuditTasks",
    )
    assert tasks == {
        "tasks": [{"taskId": task, "taskStatus": "COMPLETED", "taskType": "SCHEDULED_AUDIT_TASK"}]
    }


def test_findings_kept_90_days(device: Device) -> None:
    cfg = load_config(str(device.config))
    now = time.time()
    with open_audit(device.root / "state") as store:
        old = run_audit_task(
            store, cfg, [KEYS], "ON_DEMAND_AUDIT_TASK", None, now - 91 * 86400, checks=CHECKS
        )
        assert len(task_findings(store, old)) == 1
    start(device, KEYS)  # a new task prunes what is older than 90 days
    assert findings(device, "--task-id", old) == []
    gone = call(device, "describe-audit-task", "--task-id", old)
    assert gone.status == 1 and "kept 90 days" in gone.err
    too_early = call(
        device, "list-audit-tasks", "--start-time", str(now - 91 * 86400), "--end-time", str(now)
    )
    assert too_early.status == 2 and "--start-time: is before" in too_early.err


def test_table_output(device: Device) -> None:
    task = start(device, KEYS)
    done = call(device, "list-audit-findings", "--task-id", task, "--output", "table")
    header, row = done.out.splitlines()
    assert header.split() == ["FOUND", "CHECK", "SEVERITY", "TYPE", "RESOURCE", "REASON"]
    assert KEYS in row and "KEY_FILE_READABLE_BY_OTHERS" in row and str(device.key) in row


def _dump(db: Path) -> list[Any]:
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, sorted(map(repr, conn.execute(f"SELECT * FROM {t}")))) for t in sorted(tables)]


IDENT = '{"filePath": "/k"}'
BAD_INPUT = [
    (
        ["start-on-demand-audit-task", "--target-check-names", "NOPE_CHECK"],
        "--target-check-names: 'NOPE_CHECK' is not an audit check",
    ),
    (
        ["start-on-demand-audit-task", "--target-check-names", KEYS, KEYS],
        "--target-check-names: names a check twice",
    ),
    (
        ["start-on-demand-audit-task", "--target-check-names", "[1]"],
        "--target-check-names: must be a string",
    ),
    (["start-on-demand-audit-task"], "--target-check-names"),
    (["describe-audit-task", "--task-id", "a b"], "--task-id: 'a b' does not match"),
    (["describe-audit-task", "--task-id", "x" * 41], "--task-id: must be 1-40 characters"),
    (["cancel-audit-task", "--task-id", "ünïcode"], "--task-id"),
    (["list-audit-tasks", "--start-time", "yesterday", "--end-time", "0"], "--start-time"),
    (
        ["list-audit-tasks", "--start-time", "2099-01-02", "--end-time", "2099-01-01"],
        "--end-time: is before startTime",
    ),
    (
        [
            "list-audit-tasks",
            "--start-time",
            "2099-01-01",
            "--end-time",
            "2099-01-02",
            "--task-type",
            "NIGHTLY",
        ],
        "--task-type",
    ),
    (
        [
            "list-audit-tasks",
            "--start-time",
            "2099-01-01",
            "--end-time",
            "2099-01-02",
            "--max-results",
            "0",
        ],
        "--max-results: must be 1-250",
    ),
    (
        [
            "list-audit-tasks",
            "--start-time",
            "2099-01-01",
            "--end-time",
            "2099-01-02",
            "--next-token",
            "Zm9v",
        ],
        "--next-token",
    ),
    (
        ["list-audit-findings"],
        "--start-time: is required: give --task-id, or --start-time with --end-time",
    ),
    (["list-audit-findings", "--start-time", "0"], "--end-time: is required"),
    (
        ["list-audit-findings", "--task-id", "t", "--end-time", "0"],
        "--task-id: give --task-id or --start-time with --end-time, not both",
    ),
    (
        ["list-audit-findings", "--task-id", "t", "--check-name", "lower"],
        "--check-name: 'lower' does not match",
    ),
    (
        ["list-audit-findings", "--task-id", "t", "--resource-identifier", "{"],
        "--resource-identifier: not JSON",
    ),
    (
        ["list-audit-findings", "--task-id", "t", "--resource-identifier", "file:///nonexistent"],
        "--resource-identifier: cannot read /nonexistent: No such file or directory",
    ),
    (
        [
            "list-audit-findings",
            "--task-id",
            "t",
            "--resource-identifier",
            '{"deviceCertificateId": "1"}',
        ],
        "--resource-identifier: deviceCertificateId: must be 64-64 characters",
    ),
    (
        ["list-audit-findings", "--task-id", "t", "--max-results", "251"],
        "--max-results: must be 1-250",
    ),
    (
        ["list-audit-findings", "--task-id", "t", "--next-token", "WyJ0YXNrcyIsMC4wLCJ4Il0"],
        "--next-token",
    ),
    (["update-account-audit-configuration"], "--audit-check-configurations: nothing to update"),
    (
        [
            "update-account-audit-configuration",
            "--audit-check-configurations",
            '{"NOPE_CHECK": {}}',
        ],
        "--audit-check-configurations: 'NOPE_CHECK' is not an audit check",
    ),
    (
        [
            "update-account-audit-configuration",
            "--audit-check-configurations",
            json.dumps({CERTS: {"configuration": {DAYS: "5"}}}),
        ],
        f"--audit-check-configurations: {CERTS}.configuration.{DAYS}: must be 30-3652",
    ),
    (
        [
            "update-account-audit-configuration",
            "--role-arn",
            "arn",
            "--audit-check-configurations",
            "{}",
        ],
        "--role-arn: must be 20-2048 characters",
    ),
    (
        [
            "update-account-audit-configuration",
            "--audit-notification-target-configurations",
            '{"SQS": {}}',
        ],
        "--audit-notification-target-configurations: SQS: unknown notification type",
    ),
    (
        [
            "create-audit-suppression",
            "--check-name",
            "NOPE_CHECK",
            "--resource-identifier",
            IDENT,
            "--suppress-indefinitely",
        ],
        "--check-name: 'NOPE_CHECK' is not an audit check",
    ),
    (
        ["create-audit-suppression", "--check-name", KEYS, "--resource-identifier", IDENT],
        "--expiration-date: give an expiration date, or suppressIndefinitely true",
    ),
    (
        [
            "create-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            IDENT,
            "--no-suppress-indefinitely",
        ],
        "--expiration-date",
    ),
    (
        [
            "create-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            IDENT,
            "--expiration-date",
            "2001-01-01",
        ],
        "--expiration-date: must be in the future",
    ),
    (
        [
            "create-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            IDENT,
            "--expiration-date",
            "2099-01-01",
            "--suppress-indefinitely",
        ],
        "--suppress-indefinitely: true and an expirationDate contradict",
    ),
    (
        [
            "create-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            IDENT,
            "--suppress-indefinitely",
            "--description",
            "a\nb",
        ],
        "--description: must hold no control characters",
    ),
    (
        [
            "create-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            IDENT,
            "--suppress-indefinitely",
            "--client-request-token",
            "a b",
        ],
        "--client-request-token",
    ),
    (
        [
            "create-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            "{}",
            "--suppress-indefinitely",
        ],
        "--resource-identifier: must be a non-empty JSON object",
    ),
    (
        [
            "create-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            '{"FilePath": "/k"}',
            "--suppress-indefinitely",
        ],
        "--resource-identifier: FilePath: unknown key",
    ),
    (
        ["update-audit-suppression", "--check-name", KEYS, "--resource-identifier", IDENT],
        "--expiration-date: nothing to update",
    ),
    (
        [
            "update-audit-suppression",
            "--check-name",
            KEYS,
            "--resource-identifier",
            IDENT,
            "--no-suppress-indefinitely",
        ],
        "--expiration-date: give an expiration date",
    ),
    (["describe-audit-suppression", "--check-name", KEYS], "--resource-identifier"),
    (
        ["delete-audit-suppression", "--check-name", "x", "--resource-identifier", IDENT],
        "--check-name: 'x' does not match",
    ),
    (
        ["list-audit-suppressions", "--resource-identifier", "[1]"],
        "--resource-identifier: must be a non-empty JSON object",
    ),
    (["list-audit-suppressions", "--next-token", "Zm9v"], "--next-token"),
    (
        [
            "create-scheduled-audit",
            "--scheduled-audit-name",
            "a b",
            "--frequency",
            "DAILY",
            "--target-check-names",
            KEYS,
        ],
        "--scheduled-audit-name: 'a b' does not match",
    ),
    (
        [
            "create-scheduled-audit",
            "--scheduled-audit-name",
            "s",
            "--frequency",
            "HOURLY",
            "--target-check-names",
            KEYS,
        ],
        "--frequency",
    ),
    (
        [
            "create-scheduled-audit",
            "--scheduled-audit-name",
            "s",
            "--frequency",
            "WEEKLY",
            "--target-check-names",
            KEYS,
        ],
        "--day-of-week: is required for WEEKLY",
    ),
    (
        [
            "create-scheduled-audit",
            "--scheduled-audit-name",
            "s",
            "--frequency",
            "MONTHLY",
            "--day-of-month",
            "32",
            "--target-check-names",
            KEYS,
        ],
        "--day-of-month: must be 1-31 or LAST",
    ),
    (
        [
            "create-scheduled-audit",
            "--scheduled-audit-name",
            "s",
            "--frequency",
            "DAILY",
            "--day-of-month",
            "3",
            "--target-check-names",
            KEYS,
        ],
        "--day-of-month: applies to MONTHLY, not DAILY",
    ),
    (
        [
            "create-scheduled-audit",
            "--scheduled-audit-name",
            "s",
            "--frequency",
            "DAILY",
            "--target-check-names",
            "NOPE_CHECK",
        ],
        "--target-check-names: 'NOPE_CHECK' is not an audit check",
    ),
    (
        ["update-scheduled-audit", "--scheduled-audit-name", "kept"],
        "--frequency: nothing to update",
    ),
    (
        ["update-scheduled-audit", "--scheduled-audit-name", "kept", "--day-of-week", "MON"],
        "--day-of-week: applies to WEEKLY and BIWEEKLY, not DAILY",
    ),
    (
        ["describe-scheduled-audit", "--scheduled-audit-name", "a/b"],
        "--scheduled-audit-name: 'a/b' does not match",
    ),
    (
        ["delete-scheduled-audit", "--scheduled-audit-name", "x" * 129],
        "--scheduled-audit-name: must be 1-128 characters",
    ),
    (["list-scheduled-audits", "--max-results", "many"], "--max-results"),
]


@pytest.fixture
def filled(device: Device) -> Iterator[Device]:
    """A device with a task, a suppression, a scheduled audit and a configuration."""
    start(device, KEYS)
    ok(
        device,
        "create-audit-suppression",
        "--check-name",
        KEYS,
        "--resource-identifier",
        IDENT,
        "--suppress-indefinitely",
    )
    ok(
        device,
        "create-scheduled-audit",
        "--scheduled-audit-name",
        "kept",
        "--frequency",
        "DAILY",
        "--target-check-names",
        KEYS,
    )
    ok(
        device,
        "update-account-audit-configuration",
        "--audit-check-configurations",
        json.dumps({CERTS: {"configuration": {DAYS: "45"}}}),
    )
    yield device


@pytest.mark.parametrize(("argv", "named"), BAD_INPUT)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    filled: Device, argv: list[str], named: str
) -> None:
    before = _dump(filled.db)
    done = call(filled, *argv)
    assert done.status == 2, done.err
    # One line says what is wrong (argparse's own errors come after its usage lines).
    assert named in done.err.strip().splitlines()[-1]
    assert "Traceback" not in done.err and done.out == ""
    assert _dump(filled.db) == before


def test_every_verb_has_a_bad_input_case() -> None:
    verbs = {argv[0] for argv, _ in BAD_INPUT} | {"describe-account-audit-configuration"}
    sub = next(a for a in _parser(CHECKS)._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == verbs


def cli(device: Device, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *argv, "--config", str(device.config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )


def test_the_verbs_are_edge_defender_commands(device: Device) -> None:
    listed = cli(device, "list-audit-findings", "--task-id", "abc")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"findings": []}
    assert device.db.exists()
    missing = cli(device, "describe-audit-task", "--task-id", "abc")
    assert missing.returncode == 1
    assert (
        missing.stderr
        == "edge-defender: describe-audit-task: no audit task 'abc' (tasks are kept 90 days)\n"
    )
    both = cli(
        device, "list-audit-findings", "--task-id", "abc", "--start-time", "0", "--end-time", "1"
    )
    assert both.returncode == 2 and "--task-id: give --task-id or --start-time" in both.stderr


def test_with_the_device_checks(device: Device) -> None:
    """`edge-defender` itself, with agent.collect.audit_checks: its checks are the
    account's, and a key others can read is found, then no more once fixed."""
    from agent.collect.audit_checks import CHECKS as DEVICE_CHECKS

    described = json.loads(cli(device, "describe-account-audit-configuration").stdout)
    assert list(described["auditCheckConfigurations"]) == list(DEVICE_CHECKS)
    assert shape_problems(described, response("DescribeAccountAuditConfiguration")) == []
    check = "DEVICE_KEY_FILE_PERMISSIONS_CHECK"
    started = cli(device, "start-on-demand-audit-task", "--target-check-names", check)
    assert started.returncode == 0, started.stderr
    task = json.loads(started.stdout)["taskId"]
    (finding,) = json.loads(cli(device, "list-audit-findings", "--task-id", task).stdout)[
        "findings"
    ]
    assert shape_problems(finding, "AuditFinding", open_identifiers=True) == []
    assert finding["nonCompliantResource"]["resourceIdentifier"] == {"path": str(device.key)}
    assert (finding["checkName"], finding["severity"]) == (check, "HIGH")
    device.key.chmod(0o600)
    again = json.loads(
        cli(device, "start-on-demand-audit-task", "--target-check-names", check).stdout
    )
    listed = cli(device, "list-audit-findings", "--task-id", again["taskId"])
    assert json.loads(listed.stdout) == {"findings": []}

"""The Audit rules without I/O: shapes checked against botocore's `iot` model, every
input rule with the parameter its error names, suppression terms, settings and the
calendar of scheduled audits."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import pytest
from botocore.validate import ParamValidator

from agent.core.audit import Noncompliance
from agent.core.audit_model import (
    InvalidRequest,
    canceled_details,
    check_resource_identifier,
    check_schedule,
    check_settings,
    check_suppression_terms,
    check_target_check_names,
    completed_details,
    describe_configuration,
    enabled_checks,
    failed_details,
    final_status,
    finding_id,
    identifier_key,
    is_due,
    latest_run_day,
    make_finding,
    suppression_shape,
    task_statistics,
    update_configuration,
)
from tests.shapes import MODEL, shape_problems

CERT_ID = "ab" * 32
T0 = datetime(2026, 3, 4, 12, tzinfo=UTC).timestamp()  # a Wednesday


def output_member(operation: str, member: str) -> Any:
    return MODEL.operation_model(operation).output_shape.members[member]


def test_walker_catches_what_aws_would_refuse() -> None:
    assert shape_problems({"findingId": "a b"}, "AuditFinding")
    assert shape_problems({"severity": "SEVERE"}, "AuditFinding")
    assert shape_problems({"taskStartTime": "yesterday"}, "AuditFinding")
    assert shape_problems({"nope": 1}, "AuditFinding")


def _finding(found: Noncompliance, suppressed: bool = False, index: int = 0) -> dict[str, Any]:
    return make_finding(
        task_id="0f" * 16,
        task_start=T0,
        finding_time=T0 + 0.5,
        check_name="DEVICE_CERTIFICATE_EXPIRING_CHECK",
        severity="MEDIUM",
        found=found,
        index=index,
        suppressed=suppressed,
    )


CERT = Noncompliance(
    "DEVICE_CERTIFICATE",
    {"deviceCertificateId": CERT_ID},
    "CERTIFICATE_APPROACHING_EXPIRATION",
    "The certificate expires in 12 days",
    {"notAfter": "2026-03-16T00:00:00Z"},
)
FILE = Noncompliance("DEVICE_FILE", {"filePath": "/etc/shadow"}, "FILE_READABLE_BY_OTHERS", "0644")


def test_a_finding_is_aws_audit_finding() -> None:
    finding = _finding(CERT)
    assert shape_problems(finding, "AuditFinding") == []
    assert finding["nonCompliantResource"] == {
        "resourceType": "DEVICE_CERTIFICATE",
        "resourceIdentifier": {"deviceCertificateId": CERT_ID},
        "additionalInfo": {"notAfter": "2026-03-16T00:00:00Z"},
    }
    assert finding["isSuppressed"] is False and finding["taskStartTime"] == T0
    page = {"findings": [finding]}
    assert shape_problems(page, MODEL.operation_model("ListAuditFindings").output_shape) == []


def test_a_device_finding_is_aws_shaped_but_for_its_resource() -> None:
    finding = _finding(FILE, suppressed=True)
    assert "additionalInfo" not in finding["nonCompliantResource"]
    assert shape_problems(finding, "AuditFinding", open_identifiers=True) == []
    problems = shape_problems(finding, "AuditFinding")
    assert len(problems) == 2  # the resource type and the identifier key, nothing else
    assert all("nonCompliantResource" in p for p in problems)


def test_finding_ids_are_stable_unique_and_aws_shaped() -> None:
    ids = {finding_id("t1", c, i) for c in ("A_CHECK", "B_CHECK") for i in range(50)}
    assert len(ids) == 100
    assert finding_id("t1", "A_CHECK", 3) == finding_id("t1", "A_CHECK", 3)
    assert finding_id("t2", "A_CHECK", 3) != finding_id("t1", "A_CHECK", 3)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,128}", i) for i in ids)


def test_check_details_count_resources_once() -> None:
    twice = [_finding(CERT, index=0), _finding(CERT, index=1), _finding(FILE, True, index=2)]
    details = completed_details(twice)
    assert details == {
        "checkRunStatus": "COMPLETED_NON_COMPLIANT",
        "checkCompliant": False,
        "nonCompliantResourcesCount": 2,
        "suppressedNonCompliantResourcesCount": 1,
    }
    clean = completed_details([])
    assert clean["checkRunStatus"] == "COMPLETED_COMPLIANT" and clean["checkCompliant"]
    failed = failed_details("x" * 5000)
    assert failed["checkRunStatus"] == "FAILED" and len(failed["message"]) == 2048
    all_details = {
        "A": details,
        "B": clean,
        "C": failed,
        "D": {"checkRunStatus": "IN_PROGRESS"},
    }
    assert shape_problems(all_details, output_member("DescribeAuditTask", "auditDetails")) == []
    stats = task_statistics(all_details)
    assert stats == {
        "totalChecks": 4,
        "inProgressChecks": 1,
        "waitingForDataCollectionChecks": 0,
        "compliantChecks": 1,
        "nonCompliantChecks": 1,
        "failedChecks": 1,
        "canceledChecks": 0,
    }
    assert shape_problems(stats, "TaskStatistics") == []


def test_task_status_rules() -> None:
    failed = {"checkRunStatus": "FAILED", "message": "no"}
    done = {"checkRunStatus": "COMPLETED_COMPLIANT", "checkCompliant": True}
    assert final_status({"A": failed, "B": done}) == "COMPLETED"
    assert final_status({"A": failed, "B": failed}) == "FAILED"
    canceled = canceled_details({"A": done, "B": {"checkRunStatus": "IN_PROGRESS"}})
    assert canceled == {"A": done, "B": {"checkRunStatus": "CANCELED"}}


GOOD_IDENTIFIERS = [
    {"deviceCertificateId": CERT_ID},
    {"caCertificateId": "0x" + "A" * 62},
    {"clientId": "pi-1"},
    {"account": "123456789012"},
    {"policyVersionIdentifier": {"policyName": "p.1", "policyVersionId": "3"}},
    {"issuerCertificateIdentifier": {"issuerId": "ab", "issuerCertificateSerialNumber": "0a:1b"}},
    {"filePath": "/etc/ssh/sshd_config"},
    {"userName": "pi", "filePath": "/etc/shadow"},
]


@pytest.mark.parametrize("identifier", GOOD_IDENTIFIERS)
def test_resource_identifiers_accepted(identifier: dict[str, Any]) -> None:
    assert check_resource_identifier(identifier) == identifier
    assert shape_problems(identifier, "ResourceIdentifier", open_identifiers=True) == []


def test_identifier_key_ignores_key_order() -> None:
    a = identifier_key({"userName": "pi", "filePath": "/x"})
    assert a == identifier_key({"filePath": "/x", "userName": "pi"})
    assert a != identifier_key({"filePath": "/x"})


POLICY = "policyVersionIdentifier"


@pytest.mark.parametrize(
    ("identifier", "param", "words"),
    [
        ({}, "resourceIdentifier", "non-empty"),
        ([], "resourceIdentifier", "JSON object"),
        ({"deviceCertificateId": "ab"}, "resourceIdentifier.deviceCertificateId", "64-64"),
        ({"deviceCertificateId": "zz" * 32}, "resourceIdentifier.deviceCertificateId", "match"),
        ({"deviceCertificateID": CERT_ID}, "resourceIdentifier.deviceCertificateID", "mean"),
        ({"account": "12"}, "resourceIdentifier.account", "12-12"),
        ({"clientId": 7}, "resourceIdentifier.clientId", "string"),
        ({POLICY: {"policyName": "p", "extra": "1"}}, f"resourceIdentifier.{POLICY}.extra", "key"),
        ({POLICY: "p"}, f"resourceIdentifier.{POLICY}", "JSON object"),
        ({"File_Path": "/x"}, "resourceIdentifier.File_Path", "lowerCamelCase"),
        ({"filePath": ""}, "resourceIdentifier.filePath", "1-2048"),
        ({"a.b\r": "x"}, "resourceIdentifier['a.b\\r']", "lowerCamelCase"),
        ({"filePath": "\ud800"}, "resourceIdentifier.filePath", "UTF-8"),
    ],
)  # fmt: skip
def test_resource_identifiers_refused(identifier: Any, param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        check_resource_identifier(identifier)
    assert e.value.param == param
    assert words in e.value.message


def test_suppression_terms() -> None:
    assert check_suppression_terms(None, True, T0) == (None, True)
    assert check_suppression_terms(T0 + 60, None, T0) == (T0 + 60, False)
    assert check_suppression_terms(T0 + 60, False, T0) == (T0 + 60, False)
    for expiry, forever, param, words in [
        (None, None, "expirationDate", "give an expiration date"),
        (None, False, "expirationDate", "give an expiration date"),
        (T0 + 60, True, "suppressIndefinitely", "contradict"),
        (T0, None, "expirationDate", "future"),
        (float("nan"), None, "expirationDate", "finite"),
        (T0 + 60, "yes", "suppressIndefinitely", "true or false"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            check_suppression_terms(expiry, forever, T0)
        assert (e.value.param, words in e.value.message) == (param, True), (expiry, forever)


def test_suppression_shape_is_aws() -> None:
    row = {
        "checkName": "DEVICE_CERTIFICATE_EXPIRING_CHECK",
        "resourceIdentifier": {"deviceCertificateId": CERT_ID},
        "expirationDate": T0,
        "suppressIndefinitely": False,
        "description": "rotating next week",
    }
    shaped = suppression_shape(row)
    assert shaped == row
    assert shape_problems(shaped, "AuditSuppression") == []
    forever = suppression_shape(
        {**row, "expirationDate": None, "suppressIndefinitely": True, "description": None}
    )
    assert "expirationDate" not in forever and "description" not in forever


CHECKS = ("DEVICE_CERTIFICATE_EXPIRING_CHECK", "SSHD_ROOT_LOGIN_CHECK")


def test_target_check_names() -> None:
    assert check_target_check_names(list(CHECKS), CHECKS, CHECKS) == list(CHECKS)
    for names, words in [
        ([], "non-empty"),
        ("SSHD_ROOT_LOGIN_CHECK", "non-empty list"),
        (["NO_SUCH_CHECK"], "not an audit check"),
        (["bad name"], "does not match"),
        ([CHECKS[0], CHECKS[0]], "twice"),
        ([CHECKS[1]], "disabled"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            check_target_check_names(names, CHECKS, CHECKS[:1])
        assert e.value.param == "targetCheckNames" and words in e.value.message, names


DEFAULTS = {
    "DEVICE_CERTIFICATE_EXPIRING_CHECK": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": 30},
    "SSHD_ROOT_LOGIN_CHECK": {},
}


def test_configuration_defaults_and_updates() -> None:
    described = describe_configuration(DEFAULTS, {})
    assert described == {
        "auditCheckConfigurations": {
            "DEVICE_CERTIFICATE_EXPIRING_CHECK": {
                "enabled": True,
                "configuration": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "30"},
            },
            "SSHD_ROOT_LOGIN_CHECK": {"enabled": True},
        }
    }
    update = {
        "roleArn": "arn:aws:iam::123456789012:role/audit",
        "auditNotificationTargetConfigurations": {
            "SNS": {
                "targetArn": "arn:aws:sns:eu-west-1:123456789012:t",
                "roleArn": "arn:aws:iam::123456789012:role/sns",
                "enabled": True,
            }
        },
        "auditCheckConfigurations": {
            "DEVICE_CERTIFICATE_EXPIRING_CHECK": {
                "configuration": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "60"}
            },
            "SSHD_ROOT_LOGIN_CHECK": {"enabled": False},
        },
    }
    request = MODEL.operation_model("UpdateAccountAuditConfiguration").input_shape
    assert not ParamValidator().validate(update, request).has_errors()
    stored = update_configuration(
        DEFAULTS,
        {},
        role_arn=update["roleArn"],
        notification_targets=update["auditNotificationTargetConfigurations"],
        check_configurations=update["auditCheckConfigurations"],
    )
    described = describe_configuration(DEFAULTS, stored)
    response = MODEL.operation_model("DescribeAccountAuditConfiguration").output_shape
    assert shape_problems(described, response) == []
    assert described["roleArn"] == update["roleArn"]
    checks = described["auditCheckConfigurations"]
    assert checks["DEVICE_CERTIFICATE_EXPIRING_CHECK"] == {
        "enabled": True,
        "configuration": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "60"},
    }
    assert enabled_checks(described) == ["DEVICE_CERTIFICATE_EXPIRING_CHECK"]
    # The checks get the setting as the type of its default.
    assert check_settings(DEFAULTS, described) == {
        "DEVICE_CERTIFICATE_EXPIRING_CHECK": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": 60},
        "SSHD_ROOT_LOGIN_CHECK": {},
    }
    # Enabling again keeps the setting: an update changes only what it names.
    again = update_configuration(
        DEFAULTS, stored, check_configurations={"SSHD_ROOT_LOGIN_CHECK": {"enabled": True}}
    )
    assert enabled_checks(describe_configuration(DEFAULTS, again)) == list(DEFAULTS)
    assert again["auditCheckConfigurations"]["DEVICE_CERTIFICATE_EXPIRING_CHECK"] == {
        "configuration": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "60"}
    }


ACC = "auditCheckConfigurations"
EXP = "DEVICE_CERTIFICATE_EXPIRING_CHECK"
SSH = "SSHD_ROOT_LOGIN_CHECK"
DAYS = "CERT_EXPIRATION_THRESHOLD_IN_DAYS"
SNS = "auditNotificationTargetConfigurations.SNS"


def _days(value: object) -> dict[str, Any]:
    return {"check_configurations": {EXP: {"configuration": {DAYS: value}}}}


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"check_configurations": {"NO_SUCH_CHECK": {"enabled": True}}}, ACC, "not an audit check"),
        ({"check_configurations": []}, ACC, "JSON object"),
        ({"check_configurations": {SSH: True}}, f"{ACC}.{SSH}", "JSON object"),
        ({"check_configurations": {SSH: {"enabled": "no"}}}, f"{ACC}.{SSH}.enabled", "true or"),
        ({"check_configurations": {SSH: {"on": True}}}, f"{ACC}.{SSH}.on", "unknown key"),
        (
            {"check_configurations": {SSH: {"configuration": {"X": "1"}}}},
            f"{ACC}.{SSH}.configuration.X",
            "unknown setting",
        ),
        (_days(60), f"{ACC}.{EXP}.configuration.{DAYS}", "string"),
        (_days("7"), f"{ACC}.{EXP}.configuration.{DAYS}", "30-3652"),
        (_days("ten"), f"{ACC}.{EXP}.configuration.{DAYS}", "whole number"),
        ({"role_arn": "short"}, "roleArn", "20-2048"),
        (
            {"notification_targets": {"EMAIL": {}}},
            "auditNotificationTargetConfigurations.EMAIL",
            "SNS",
        ),
        ({"notification_targets": {"SNS": {"enabled": 1}}}, f"{SNS}.enabled", "true or false"),
        ({"notification_targets": {"SNS": {"topic": "x"}}}, f"{SNS}.topic", "unknown key"),
    ],
)
def test_configuration_refused(kwargs: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        update_configuration(DEFAULTS, {}, **kwargs)
    assert e.value.param == param
    assert words in e.value.message


def test_a_check_a_scheduled_audit_runs_cannot_be_disabled() -> None:
    with pytest.raises(InvalidRequest) as e:
        update_configuration(
            DEFAULTS,
            {},
            check_configurations={"SSHD_ROOT_LOGIN_CHECK": {"enabled": False}},
            scheduled={"nightly": ["SSHD_ROOT_LOGIN_CHECK"], "other": []},
        )
    assert "nightly" in e.value.message and "other" not in e.value.message


def test_schedules_need_their_day() -> None:
    assert check_schedule("DAILY", None, None) == {"frequency": "DAILY"}
    assert check_schedule("BIWEEKLY", "MON", None) == {"frequency": "BIWEEKLY", "dayOfWeek": "MON"}
    assert check_schedule("MONTHLY", None, "LAST") == {"frequency": "MONTHLY", "dayOfMonth": "LAST"}
    for args, param in [
        (("HOURLY", None, None), "frequency"),
        (("WEEKLY", None, None), "dayOfWeek"),
        (("WEEKLY", "MONDAY", None), "dayOfWeek"),
        (("DAILY", "MON", None), "dayOfWeek"),
        (("WEEKLY", "MON", "1"), "dayOfMonth"),
        (("MONTHLY", None, None), "dayOfMonth"),
        (("MONTHLY", None, "32"), "dayOfMonth"),
        (("MONTHLY", None, "0"), "dayOfMonth"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            check_schedule(*args)
        assert e.value.param == param, args


def _at(day: str, hour: int = 12) -> float:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("schedule", "created", "now", "expected"),
    [
        ({"frequency": "DAILY"}, "2026-03-04", "2026-03-04", "2026-03-04"),
        ({"frequency": "WEEKLY", "dayOfWeek": "MON"}, "2026-03-04", "2026-03-08", None),
        ({"frequency": "WEEKLY", "dayOfWeek": "MON"}, "2026-03-04", "2026-03-11", "2026-03-09"),
        ({"frequency": "WEEKLY", "dayOfWeek": "WED"}, "2026-03-04", "2026-03-04", "2026-03-04"),
        # BIWEEKLY counts from the first Monday on or after creation: 9th, 23rd, ...
        ({"frequency": "BIWEEKLY", "dayOfWeek": "MON"}, "2026-03-04", "2026-03-08", None),
        ({"frequency": "BIWEEKLY", "dayOfWeek": "MON"}, "2026-03-04", "2026-03-20", "2026-03-09"),
        ({"frequency": "BIWEEKLY", "dayOfWeek": "MON"}, "2026-03-04", "2026-03-23", "2026-03-23"),
        # Day 31 in a 30-day month is its last day; LAST in February is the 28th.
        ({"frequency": "MONTHLY", "dayOfMonth": "31"}, "2026-03-04", "2026-04-30", "2026-04-30"),
        ({"frequency": "MONTHLY", "dayOfMonth": "31"}, "2026-03-04", "2026-04-29", "2026-03-31"),
        ({"frequency": "MONTHLY", "dayOfMonth": "LAST"}, "2026-01-04", "2026-02-28", "2026-02-28"),
        ({"frequency": "MONTHLY", "dayOfMonth": "1"}, "2025-12-04", "2026-01-01", "2026-01-01"),
        ({"frequency": "MONTHLY", "dayOfMonth": "15"}, "2025-12-20", "2026-01-10", None),
    ],
)  # fmt: skip
def test_latest_run_day(
    schedule: dict[str, str], created: str, now: str, expected: str | None
) -> None:
    day = latest_run_day(schedule, _at(created, 9), _at(now))
    assert day == (None if expected is None else date.fromisoformat(expected))


def test_due_once_per_run_day_and_a_missed_day_once() -> None:
    weekly = {"frequency": "WEEKLY", "dayOfWeek": "MON"}
    created = _at("2026-03-04")
    assert not is_due(weekly, created, None, _at("2026-03-08"))
    assert is_due(weekly, created, None, _at("2026-03-09", 0))
    assert not is_due(weekly, created, _at("2026-03-09", 0), _at("2026-03-09", 23))
    # Off from Sunday to Thursday: Monday's run is made up once on Thursday.
    assert is_due(weekly, created, _at("2026-03-09"), _at("2026-03-19"))
    assert not is_due(weekly, created, _at("2026-03-19"), _at("2026-03-20"))


def test_a_setting_with_a_string_default_stays_a_string() -> None:
    defaults = {"DEVICE_CERTIFICATE_AGE_CHECK": {"CERT_AGE_THRESHOLD_IN_DAYS": "365"}}
    configs = {
        "DEVICE_CERTIFICATE_AGE_CHECK": {"configuration": {"CERT_AGE_THRESHOLD_IN_DAYS": "20"}}
    }
    with pytest.raises(InvalidRequest) as e:
        update_configuration(defaults, {}, check_configurations=configs)
    assert "30-3652" in e.value.message  # AWS's range holds whatever the default's type
    configs["DEVICE_CERTIFICATE_AGE_CHECK"]["configuration"]["CERT_AGE_THRESHOLD_IN_DAYS"] = "400"
    stored = update_configuration(defaults, {}, check_configurations=configs)
    settings = check_settings(defaults, describe_configuration(defaults, stored))
    assert settings == {"DEVICE_CERTIFICATE_AGE_CHECK": {"CERT_AGE_THRESHOLD_IN_DAYS": "400"}}

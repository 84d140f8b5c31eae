"""Device-side Audit, the rules without I/O: the verbs' inputs checked one parameter at a
time (an error names the parameter by its AWS name), the AWS JSON shapes of findings,
check details, task statistics and suppressions (botocore's `iot` model), suppression
matching, settings and schedules. Pure: time comes in as `now` (epoch seconds)."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from agent.core.audit import Noncompliance
from agent.core.hashing import sha256

RETENTION_S = 90 * 86400.0  # findings and tasks, as AWS keeps them
DEFAULT_MAX_RESULTS = 25  # AWS's default page for the audit listings
MAX_RESULTS = 250
TASK_TYPES = ("ON_DEMAND_AUDIT_TASK", "SCHEDULED_AUDIT_TASK")
TASK_STATUSES = ("IN_PROGRESS", "COMPLETED", "FAILED", "CANCELED")
CHECK_RUN_STATUSES = (
    "IN_PROGRESS",
    "WAITING_FOR_DATA_COLLECTION",
    "CANCELED",
    "COMPLETED_COMPLIANT",
    "COMPLETED_NON_COMPLIANT",
    "FAILED",
)
FREQUENCIES = ("DAILY", "WEEKLY", "BIWEEKLY", "MONTHLY")
DAYS_OF_WEEK = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")  # date.weekday() order
MAX_MESSAGE = 2048  # AuditCheckDetails.message
MAX_DESCRIPTION = 1000
# AWS's configuration keys for its certificate checks, with the range AWS allows.
THRESHOLD_DAYS = {
    "CERT_EXPIRATION_THRESHOLD_IN_DAYS": (30, 3652),
    "CERT_AGE_THRESHOLD_IN_DAYS": (30, 3652),
}

_TASK_ID = re.compile(r"[a-zA-Z0-9-]{1,40}")
_SCHEDULED_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_TOKEN = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_DAY_OF_MONTH = re.compile(r"[1-9]|[12][0-9]|3[01]|LAST")
_CHECK_NAME = re.compile(r"[A-Z0-9_]{1,128}")
_EXTENSION_KEY = re.compile(r"[a-z][a-zA-Z0-9]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # AWS's [\p{Graph}\x20]* allows none


class InvalidRequest(ValueError):
    """A bad parameter (AWS: InvalidRequestException); `param` is its AWS name."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def shown(value: object) -> str:
    """repr for a message, cut short."""
    try:
        text = repr(value)
    except ValueError:
        return "an integer too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _at(param: str, key: object) -> str:
    """The path of a member the input named: `param.key`, or `param[repr]` for a key
    that would not read as one (control characters, dots, spaces...)."""
    if isinstance(key, str) and re.fullmatch(r"[\w-]{1,128}", key, re.ASCII):
        return f"{param}.{key}"
    return f"{param}[{shown(key)}]"


def check_string(
    param: str,
    value: object,
    *,
    pattern: re.Pattern[str] | None = None,
    low: int = 1,
    high: int = 2048,
) -> str:
    """A string parameter as AWS checks one: type, length, UTF-8, an optional pattern."""
    if not isinstance(value, str):
        raise InvalidRequest(param, f"must be a string, got {shown(value)}")
    if not low <= len(value) <= high:
        raise InvalidRequest(param, f"must be {low}-{high} characters, got {len(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidRequest(param, "must be UTF-8 (it holds a lone surrogate)") from None
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidRequest(param, f"{shown(value)} does not match {pattern.pattern}")
    return value


def check_task_id(value: object) -> str:
    return check_string("taskId", value, pattern=_TASK_ID, high=40)


def check_scheduled_audit_name(value: object) -> str:
    return check_string("scheduledAuditName", value, pattern=_SCHEDULED_NAME, high=128)


def check_client_request_token(value: object) -> str:
    return check_string("clientRequestToken", value, pattern=_TOKEN, high=64)


def check_description(value: object) -> str:
    text = check_string("description", value, low=0, high=MAX_DESCRIPTION)
    if _CONTROL.search(text):
        raise InvalidRequest("description", "must hold no control characters")
    return text


def check_time(param: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(param, f"must be epoch seconds (a finite number), got {shown(value)}")
    return float(value)


def check_max_results(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("maxResults", f"must be an integer, got {shown(value)}")
    if not 1 <= value <= MAX_RESULTS:
        raise InvalidRequest("maxResults", f"must be 1-{MAX_RESULTS}, got {value}")
    return value


def check_enum(param: str, value: object, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InvalidRequest(param, f"must be one of {', '.join(allowed)}, got {shown(value)}")
    assert isinstance(value, str)
    return value


def check_bool(param: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(param, f"must be true or false, got {shown(value)}")
    return value


def check_check_name(param: str, value: object, known: Iterable[str] | None = None) -> str:
    """A check name in AWS's form; one of `known` when given (a filter or a delete may
    name a check this version no longer has)."""
    name = check_string(param, value, pattern=_CHECK_NAME, high=128)
    if known is not None:
        names = list(known)
        if name not in names:
            raise InvalidRequest(
                param, f"{name!r} is not an audit check; the checks: {', '.join(names)}"
            )
    return name


def check_target_check_names(
    value: object, known: Iterable[str], enabled: Iterable[str]
) -> list[str]:
    """targetCheckNames: known checks, each enabled (as AWS asks), each once."""
    param = "targetCheckNames"
    if not isinstance(value, list | tuple) or not value:
        raise InvalidRequest(param, f"must be a non-empty list of check names, got {shown(value)}")
    names = [check_check_name(param, name, known) for name in value]
    if len(set(names)) != len(names):
        raise InvalidRequest(param, "names a check twice")
    on = set(enabled)
    off = [name for name in names if name not in on]
    if off:
        raise InvalidRequest(
            param,
            f"{', '.join(off)} {'is' if len(off) == 1 else 'are'} disabled;"
            " enable with update-account-audit-configuration",
        )
    return names


# -- resource identifiers ------------------------------------------------------------------

_HEX64 = re.compile(r"(0x)?[a-fA-F0-9]+")
_AWS_IDENTIFIER: dict[str, tuple[int, int, re.Pattern[str] | None]] = {
    "deviceCertificateId": (64, 64, _HEX64),
    "caCertificateId": (64, 64, _HEX64),
    "cognitoIdentityPoolId": (1, 2048, None),
    "clientId": (1, 2048, None),
    "account": (12, 12, re.compile(r"[0-9]+")),
    "iamRoleArn": (20, 2048, None),
    "roleAliasArn": (1, 2048, None),
    "deviceCertificateArn": (1, 2048, None),
}
_AWS_NESTED: dict[str, dict[str, tuple[int, int, re.Pattern[str] | None]]] = {
    "policyVersionIdentifier": {
        "policyName": (1, 128, re.compile(r"[\w+=,.@-]+")),
        "policyVersionId": (1, 2048, re.compile(r"[0-9]+")),
    },
    "issuerCertificateIdentifier": {
        "issuerCertificateSubject": (1, 1000, None),
        "issuerId": (1, 64, re.compile(r"(0x)?[a-fA-F0-9]+")),
        "issuerCertificateSerialNumber": (1, 20, re.compile(r"[a-fA-F0-9:]+")),
    },
}
AWS_IDENTIFIER_KEYS = (*_AWS_IDENTIFIER, *_AWS_NESTED)


def _fields(
    param: str,
    value: Mapping[str, Any],
    rules: Mapping[str, tuple[int, int, re.Pattern[str] | None]],
) -> dict[str, str]:
    out = {}
    for key, item in value.items():
        if key not in rules:
            raise InvalidRequest(_at(param, key), f"unknown key; the keys: {', '.join(rules)}")
        low, high, pattern = rules[key]
        out[key] = check_string(_at(param, key), item, pattern=pattern, low=low, high=high)
    return out


def check_resource_identifier(value: object, param: str = "resourceIdentifier") -> dict[str, Any]:
    """A ResourceIdentifier: AWS's keys by AWS's rules; a device check's own keys
    (lowerCamelCase, string values, e.g. {"filePath": "/etc/shadow"}) as extensions. A
    key that differs from an AWS key only in case is a typo, not an extension."""
    if not isinstance(value, Mapping) or not value:
        raise InvalidRequest(param, f"must be a non-empty JSON object, got {shown(value)}")
    lowered = {key.lower(): key for key in AWS_IDENTIFIER_KEYS}
    out: dict[str, Any] = {}
    for key, item in value.items():
        where = _at(param, key)
        if key in _AWS_IDENTIFIER:
            out.update(_fields(param, {key: item}, _AWS_IDENTIFIER))
        elif key in _AWS_NESTED:
            if not isinstance(item, Mapping) or not item:
                raise InvalidRequest(where, f"must be a non-empty JSON object, got {shown(item)}")
            out[key] = _fields(where, item, _AWS_NESTED[key])
        elif (
            not isinstance(key, str) or key.lower() in lowered or not _EXTENSION_KEY.fullmatch(key)
        ):
            hint = lowered.get(key.lower()) if isinstance(key, str) else None
            raise InvalidRequest(
                where,
                f"unknown key (did you mean {hint}?)"
                if hint
                else "unknown key; AWS's keys or a device check's lowerCamelCase key",
            )
        else:
            out[key] = check_string(where, item)
    return out


def identifier_key(identifier: Mapping[str, Any]) -> str:
    """The canonical text of an identifier: equal resources, equal keys."""
    return json.dumps(identifier, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- findings, check details, task statistics ------------------------------------------------


def finding_id(task_id: str, check_name: str, index: int) -> str:
    """A UUID-shaped id, unique per task, check and position, and the same each time."""
    digest = sha256(f"{task_id}\0{check_name}\0{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16]))


def make_finding(
    *,
    task_id: str,
    task_start: float,
    finding_time: float,
    check_name: str,
    severity: str,
    found: Noncompliance,
    index: int,
    suppressed: bool,
) -> dict[str, Any]:
    """An AuditFinding as ListAuditFindings gives it."""
    resource: dict[str, Any] = {
        "resourceType": found.resource_type,
        "resourceIdentifier": dict(found.resource_identifier),
    }
    if found.additional_info:
        resource["additionalInfo"] = dict(found.additional_info)
    return {
        "findingId": finding_id(task_id, check_name, index),
        "taskId": task_id,
        "checkName": check_name,
        "taskStartTime": task_start,
        "findingTime": finding_time,
        "severity": severity,
        "nonCompliantResource": resource,
        "reasonForNonCompliance": found.reason,
        "reasonForNonComplianceCode": found.reason_code,
        "isSuppressed": suppressed,
    }


def _resource(finding: Mapping[str, Any]) -> str:
    resource = finding["nonCompliantResource"]
    return identifier_key({"t": resource["resourceType"], "i": resource["resourceIdentifier"]})


def completed_details(findings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """AuditCheckDetails of a check that ran: resources counted once however many
    findings each has. totalResourcesCount is absent: a check does not say how many
    resources it looked at, only which failed."""
    resources = {_resource(f) for f in findings}
    suppressed = {_resource(f) for f in findings if f["isSuppressed"]}
    return {
        "checkRunStatus": "COMPLETED_NON_COMPLIANT" if resources else "COMPLETED_COMPLIANT",
        "checkCompliant": not resources,
        "nonCompliantResourcesCount": len(resources),
        "suppressedNonCompliantResourcesCount": len(suppressed),
    }


def failed_details(message: str) -> dict[str, Any]:
    return {"checkRunStatus": "FAILED", "message": message[:MAX_MESSAGE]}


def task_statistics(details: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    statuses = [d["checkRunStatus"] for d in details.values()]
    return {
        "totalChecks": len(statuses),
        "inProgressChecks": statuses.count("IN_PROGRESS"),
        "waitingForDataCollectionChecks": statuses.count("WAITING_FOR_DATA_COLLECTION"),
        "compliantChecks": statuses.count("COMPLETED_COMPLIANT"),
        "nonCompliantChecks": statuses.count("COMPLETED_NON_COMPLIANT"),
        "failedChecks": statuses.count("FAILED"),
        "canceledChecks": statuses.count("CANCELED"),
    }


def final_status(details: Mapping[str, Mapping[str, Any]]) -> str:
    """A task whose checks all ran: COMPLETED, or FAILED when not one check could run."""
    statuses = {d["checkRunStatus"] for d in details.values()}
    return "FAILED" if statuses == {"FAILED"} else "COMPLETED"


def canceled_details(details: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A canceled task's details: the checks that had not finished are CANCELED."""
    return {
        name: {"checkRunStatus": "CANCELED"} if d["checkRunStatus"] == "IN_PROGRESS" else dict(d)
        for name, d in details.items()
    }


# -- suppressions -----------------------------------------------------------------------


def check_suppression_terms(
    expiration_date: object, suppress_indefinitely: object, now: float
) -> tuple[float | None, bool]:
    """(expirationDate, suppressIndefinitely) of a new suppression: exactly one of an
    expiry in the future or suppressIndefinitely=true."""
    if suppress_indefinitely is not None:
        check_bool("suppressIndefinitely", suppress_indefinitely)
    if expiration_date is None:
        if suppress_indefinitely is not True:
            raise InvalidRequest(
                "expirationDate",
                "give an expiration date, or suppressIndefinitely true for no expiry",
            )
        return None, True
    if suppress_indefinitely is True:
        raise InvalidRequest(
            "suppressIndefinitely", "true and an expirationDate contradict; give one of them"
        )
    expires = check_time("expirationDate", expiration_date)
    if expires <= now:
        raise InvalidRequest("expirationDate", "must be in the future")
    return expires, False


def suppression_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    """An AuditSuppression (describe and list) from a stored row's values."""
    out: dict[str, Any] = {
        "checkName": row["checkName"],
        "resourceIdentifier": row["resourceIdentifier"],
    }
    if row["expirationDate"] is not None:
        out["expirationDate"] = row["expirationDate"]
    out["suppressIndefinitely"] = row["suppressIndefinitely"]
    if row.get("description") is not None:
        out["description"] = row["description"]
    return out


# -- account audit configuration ---------------------------------------------------------


def _config_text(value: object) -> str:
    """A setting as AWS's ConfigValue: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _config_value(param: str, key: str, text: object, default: object) -> object:
    """A ConfigValue (a string, as AWS takes it) as the type of the check's default."""
    if not isinstance(text, str):
        raise InvalidRequest(
            param, f'must be a string as AWS takes it (e.g. "30"), got {shown(text)}'
        )
    whole = re.fullmatch(r"[0-9]{1,9}", text) is not None
    if key in THRESHOLD_DAYS or (isinstance(default, int) and not isinstance(default, bool)):
        if not whole:
            raise InvalidRequest(param, f"must be a whole number, got {shown(text)}")
        low, high = THRESHOLD_DAYS.get(key, (0, 10**9))
        if not low <= int(text) <= high:
            raise InvalidRequest(param, f"must be {low}-{high}, got {text}")
        return text if isinstance(default, str) else int(text)
    if isinstance(default, bool):
        if text not in ("true", "false"):
            raise InvalidRequest(param, f'must be "true" or "false", got {shown(text)}')
        return text == "true"
    if isinstance(default, float):
        try:
            number = float(text)
        except ValueError:
            raise InvalidRequest(param, f"must be a number, got {shown(text)}") from None
        if not math.isfinite(number):
            raise InvalidRequest(param, f"must be a finite number, got {shown(text)}")
        return number
    return check_string(param, text, low=0)


def describe_configuration(
    defaults: Mapping[str, Mapping[str, Any]], stored: Mapping[str, Any]
) -> dict[str, Any]:
    """DescribeAccountAuditConfiguration: every check of `defaults` (name -> its default
    settings), enabled unless the stored configuration turned it off, with its settings
    as strings; roleArn and notification targets as stored."""
    overrides = stored.get("auditCheckConfigurations", {})
    checks = {}
    for name, settings in defaults.items():
        own = overrides.get(name, {})
        configuration = {k: _config_text(v) for k, v in settings.items()}
        configuration.update(own.get("configuration", {}))
        entry: dict[str, Any] = {"enabled": own.get("enabled", True)}
        if configuration:
            entry["configuration"] = configuration
        checks[name] = entry
    out: dict[str, Any] = {}
    if "roleArn" in stored:
        out["roleArn"] = stored["roleArn"]
    if "auditNotificationTargetConfigurations" in stored:
        out["auditNotificationTargetConfigurations"] = stored[
            "auditNotificationTargetConfigurations"
        ]
    out["auditCheckConfigurations"] = checks
    return out


def enabled_checks(described: Mapping[str, Any]) -> list[str]:
    return [n for n, c in described["auditCheckConfigurations"].items() if c["enabled"]]


def check_settings(
    defaults: Mapping[str, Mapping[str, Any]], described: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The settings a check runs with (AuditContext.settings): the described
    configuration with each value as the type of the check's default."""
    out = {}
    for name, settings in defaults.items():
        configuration = described["auditCheckConfigurations"][name].get("configuration", {})
        out[name] = {
            key: _config_value(f"{name}.{key}", key, configuration[key], default)
            if key in configuration
            else default
            for key, default in settings.items()
        }
    return out


def _notification_targets(value: object) -> dict[str, Any]:
    param = "auditNotificationTargetConfigurations"
    if not isinstance(value, Mapping):
        raise InvalidRequest(param, f"must be a JSON object, got {shown(value)}")
    out = {}
    for kind, target in value.items():
        where = _at(param, kind)
        if kind != "SNS":
            raise InvalidRequest(where, "unknown notification type; the one type is SNS")
        if not isinstance(target, Mapping):
            raise InvalidRequest(where, f"must be a JSON object, got {shown(target)}")
        entry: dict[str, Any] = {}
        for key, item in target.items():
            if key == "targetArn":
                entry[key] = check_string(f"{where}.targetArn", item, low=0)
            elif key == "roleArn":
                entry[key] = check_string(f"{where}.roleArn", item, low=20)
            elif key == "enabled":
                entry[key] = check_bool(f"{where}.enabled", item)
            else:
                raise InvalidRequest(_at(where, key), "unknown key; targetArn, roleArn, enabled")
        out[kind] = entry
    return out


def update_configuration(
    defaults: Mapping[str, Mapping[str, Any]],
    stored: Mapping[str, Any],
    *,
    role_arn: object = None,
    notification_targets: object = None,
    check_configurations: object = None,
    scheduled: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """UpdateAccountAuditConfiguration: the new stored configuration (overrides of the
    defaults). Unknown checks and settings are refused; a check some scheduled audit
    (name -> its checks) runs cannot be disabled, as AWS says."""
    new: dict[str, Any] = json.loads(json.dumps(stored))
    if role_arn is not None:
        new["roleArn"] = check_string("roleArn", role_arn, low=20)
    if notification_targets is not None:
        new["auditNotificationTargetConfigurations"] = _notification_targets(notification_targets)
    if check_configurations is not None:
        param = "auditCheckConfigurations"
        if not isinstance(check_configurations, Mapping):
            raise InvalidRequest(param, f"must be a JSON object, got {shown(check_configurations)}")
        overrides = new.setdefault(param, {})
        for name, entry in check_configurations.items():
            check_check_name(param, name, defaults)
            where = f"{param}.{name}"
            if not isinstance(entry, Mapping):
                raise InvalidRequest(where, f"must be a JSON object, got {shown(entry)}")
            own = overrides.setdefault(name, {})
            for key, item in entry.items():
                if key == "enabled":
                    own["enabled"] = check_bool(f"{where}.enabled", item)
                elif key == "configuration":
                    own["configuration"] = _configuration(where, item, defaults[name])
                else:
                    raise InvalidRequest(_at(where, key), "unknown key; enabled, configuration")
            if own.get("enabled", True) is False:
                users = sorted(s for s, names in (scheduled or {}).items() if name in names)
                if users:
                    raise InvalidRequest(
                        f"{where}.enabled",
                        f"cannot disable {name}: scheduled audit(s) {', '.join(users)} run it;"
                        " take it out of them first",
                    )
    return new


def _configuration(where: str, value: object, defaults: Mapping[str, Any]) -> dict[str, str]:
    param = f"{where}.configuration"
    if not isinstance(value, Mapping):
        raise InvalidRequest(param, f"must be a JSON object, got {shown(value)}")
    out = {}
    for key, text in value.items():
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise InvalidRequest(_at(param, key), f"unknown setting; this check's: {known}")
        _config_value(_at(param, key), key, text, defaults[key])
        out[key] = text
    return out


# -- scheduled audits ---------------------------------------------------------------------


def check_schedule(frequency: object, day_of_week: object, day_of_month: object) -> dict[str, str]:
    """frequency with the day it needs: dayOfWeek for WEEKLY and BIWEEKLY, dayOfMonth
    (1-31 or LAST) for MONTHLY, neither for DAILY."""
    freq = check_enum("frequency", frequency, FREQUENCIES)
    out = {"frequency": freq}
    weekly = freq in ("WEEKLY", "BIWEEKLY")
    if day_of_week is not None:
        if not weekly:
            raise InvalidRequest("dayOfWeek", f"applies to WEEKLY and BIWEEKLY, not {freq}")
        out["dayOfWeek"] = check_enum("dayOfWeek", day_of_week, DAYS_OF_WEEK)
    elif weekly:
        raise InvalidRequest("dayOfWeek", f"is required for {freq}")
    if day_of_month is not None:
        if freq != "MONTHLY":
            raise InvalidRequest("dayOfMonth", f"applies to MONTHLY, not {freq}")
        if not isinstance(day_of_month, str) or not _DAY_OF_MONTH.fullmatch(day_of_month):
            raise InvalidRequest("dayOfMonth", f"must be 1-31 or LAST, got {shown(day_of_month)}")
        out["dayOfMonth"] = day_of_month
    elif freq == "MONTHLY":
        raise InvalidRequest("dayOfMonth", "is required for MONTHLY")
    return out


def _day(seconds: float) -> date:
    return datetime.fromtimestamp(seconds, UTC).date()


def _month_day(year: int, month: int, day_of_month: str) -> date:
    following = date(year + month // 12, month % 12 + 1, 1)
    last = (following - timedelta(days=1)).day
    # Days 29-31 in a shorter month fall on its last day, as AWS does.
    day = last if day_of_month == "LAST" else min(int(day_of_month), last)
    return date(year, month, day)


def latest_run_day(schedule: Mapping[str, str], created: float, now: float) -> date | None:
    """The latest day (UTC) on or before `now`'s on which `schedule` runs, counted from
    the day it was created (BIWEEKLY: every other week from its first day); None when
    it has not run yet."""
    today, first = _day(now), _day(created)
    freq = schedule["frequency"]
    if freq == "DAILY":
        day = today
    elif freq == "MONTHLY":
        day = _month_day(today.year, today.month, schedule["dayOfMonth"])
        if day > today:
            year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
            day = _month_day(year, month, schedule["dayOfMonth"])
    else:
        weekday = DAYS_OF_WEEK.index(schedule["dayOfWeek"])
        if freq == "WEEKLY":
            day = today - timedelta(days=(today.weekday() - weekday) % 7)
        else:
            start = first + timedelta(days=(weekday - first.weekday()) % 7)
            if start > today:
                return None
            day = start + timedelta(days=(today - start).days // 14 * 14)
    return day if day >= first else None


def is_due(schedule: Mapping[str, str], created: float, last_run: float | None, now: float) -> bool:
    """Whether a scheduled audit should run now: its latest run day has come and it has
    not run since. A day missed (the device was off) is made up once, not per day."""
    day = latest_run_day(schedule, created, now)
    return day is not None and (last_run is None or _day(last_run) < day)

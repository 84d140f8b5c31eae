"""The Audit verbs, named and shaped as the AWS CLI's (`aws iot start-on-demand-audit-task`,
`list-audit-findings`, ...), on the device's own audit store (state_dir/audit.db), and
what the daemon calls to run scheduled audits (due_scheduled_audits, run_audit_task,
task_findings).

A task runs its checks one at a time, synchronously in the calling process (the CLI,
or the daemon's audit thread), recording each check's details and findings as it
finishes: describe-audit-task from another shell sees the progress, and
cancel-audit-task stops it before its next check. JSON parameters take inline JSON,
file://PATH or - (stdin), as the AWS CLI. A bad parameter is one line naming its flag,
exit 2, and nothing stored changes.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.config import Config
from agent.core.audit import AuditContext, Noncompliance
from agent.core.audit_model import (
    DAYS_OF_WEEK,
    DEFAULT_MAX_RESULTS,
    FREQUENCIES,
    MAX_RESULTS,
    RETENTION_S,
    TASK_STATUSES,
    TASK_TYPES,
    InvalidRequest,
    check_check_name,
    check_client_request_token,
    check_description,
    check_resource_identifier,
    check_schedule,
    check_scheduled_audit_name,
    check_settings,
    check_suppression_terms,
    check_target_check_names,
    check_task_id,
    completed_details,
    describe_configuration,
    enabled_checks,
    failed_details,
    identifier_key,
    is_due,
    make_finding,
    update_configuration,
)
from agent.core.profile import ProfileError
from agent.logs import kv
from agent.service.text import iso_time
from agent.service.verbs import (
    JSON_FORM,
    add_output,
    add_paging,
    add_times,
    check_task_or_times,
    check_times,
    exit_status,
    json_param,
    parse_time,
    print_answer,
    print_page,
    runner_gone,
    verb_adder,
    word_list,
)
from agent.store.audit import AuditStore, open_audit

log = logging.getLogger(__name__)

Outcome = list[Noncompliance] | str  # a check's findings, or why it could not run
Runner = Callable[[Sequence[str], AuditContext], Mapping[str, Outcome]]


class CheckInfo(Protocol):
    """What the verbs need of an audit check (agent.collect.audit_checks.AuditCheck)."""

    @property
    def name(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def default_settings(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Checks:
    """The audit checks and the function that runs them."""

    table: Mapping[str, CheckInfo]
    run: Runner

    @property
    def defaults(self) -> dict[str, Mapping[str, Any]]:
        return {name: check.default_settings for name, check in self.table.items()}


def device_checks() -> Checks:
    """The device's checks (agent.collect.audit_checks), imported when first needed."""
    from agent.collect.audit_checks import CHECKS, run_checks

    return Checks(CHECKS, run_checks)


@dataclass(frozen=True)
class DueAudit:
    """A scheduled audit whose day has come."""

    name: str
    target_check_names: tuple[str, ...]


# -- what the daemon calls ----------------------------------------------------------------


def due_scheduled_audits(store: AuditStore, now: float) -> list[DueAudit]:
    """The scheduled audits to run now (UTC days; a missed day is made up once). Running
    one with run_audit_task marks it run."""
    return [
        DueAudit(name, tuple(body["targetCheckNames"]))
        for name, body, created, last_run in store.scheduled_audits()
        if is_due(body, created, last_run, now)
    ]


def _allowed_ports(cfg: Config) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """The ports the loaded profiles allow to listen (in-port-set of
    aws:listening-tcp-ports / -udp-ports); None where no profile says."""
    from agent.service.profiles import load_profiles

    try:
        profiles = load_profiles(cfg.profile_patterns, builtin_default=cfg.detect.builtin_profile)
    except ProfileError as e:
        log.warning(kv("audit_profiles_unreadable", error=str(e).splitlines()[0]))
        return None, None
    found: dict[str, set[int]] = {}
    for profile in profiles:
        for behavior in profile.behaviors:
            criteria = behavior.criteria
            if criteria is None or criteria.operator != "in-port-set" or criteria.value is None:
                continue
            for proto in ("tcp", "udp"):
                if behavior.metric == f"aws:listening-{proto}-ports":
                    found.setdefault(proto, set()).update(criteria.value.get("ports", []))
    tcp, udp = found.get("tcp"), found.get("udp")
    return (
        None if tcp is None else frozenset(tcp),
        None if udp is None else frozenset(udp),
    )


def audit_context(
    cfg: Config, settings: Mapping[str, Mapping[str, Any]], now: float
) -> AuditContext:
    """What the checks look at, from the config: [mqtt] certificate, key and CA, the
    config and profile files, the ports the profiles allow, [audit] crl_file and
    gateway."""
    tcp, udp = _allowed_ports(cfg)
    config_files = [cfg.config_file] if Path(cfg.config_file).is_file() else []
    for pattern in cfg.profile_patterns:
        paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        config_files += [p for p in paths if Path(p).is_file() and p not in config_files]
    return AuditContext(
        settings=settings,
        cert_files=tuple(f for f in (cfg.mqtt.cert_file,) if f),
        key_files=tuple(f for f in (cfg.mqtt.key_file,) if f),
        ca_files=tuple(f for f in (cfg.mqtt.ca_file,) if f),
        config_files=tuple(config_files),
        allowed_tcp_ports=tcp,
        allowed_udp_ports=udp,
        crl_file=cfg.audit.crl_file,
        gateway=cfg.audit.gateway,
        now=now,
    )


def fail_abandoned_tasks(store: AuditStore) -> list[str]:
    """Mark FAILED the IN_PROGRESS tasks whose process is gone (killed, a power cut);
    their ids."""
    failed = []
    for task_id, pid in store.in_progress_tasks():
        if runner_gone(pid):
            store.fail_task(task_id, f"interrupted: the process running it (pid {pid}) ended")
            log.warning(kv("audit_task_abandoned", task_id=task_id, pid=pid))
            failed.append(task_id)
    return failed


def run_audit_task(
    store: AuditStore,
    cfg: Config,
    names: Sequence[str],
    task_type: str,
    scheduled_name: str | None,
    now: float,
    *,
    checks: Checks | None = None,
) -> str:
    """Run `names` as one audit task and record it; its task id. The checks run one at
    a time with the account configuration's settings; each check's findings are
    recorded as it ends, marked isSuppressed by the suppressions in force at `now`. A
    check that raises or cannot run is FAILED with the reason; a cancel between checks
    stops the task. Old tasks and findings (90 days) are pruned first."""
    checks = checks or device_checks()
    store.prune(now)
    fail_abandoned_tasks(store)
    described = describe_configuration(checks.defaults, store.account_configuration())
    settings = check_settings(checks.defaults, described)
    ctx = audit_context(cfg, settings, now)
    suppressed = store.suppressed_resources(now)
    task_id = uuid.uuid4().hex
    store.begin_task(
        task_id, now, task_type, names, scheduled_name=scheduled_name, runner_pid=os.getpid()
    )
    started = time.monotonic()
    log.info(kv("audit_task_started", task_id=task_id, type=task_type, checks=len(names)))
    for name in names:
        check = checks.table.get(name)
        outcome: Outcome
        if check is None:
            outcome = f"{name} is not an audit check of this agent version"
        else:
            try:
                outcome = checks.run([name], ctx)[name]
            except Exception as e:  # a check's bug fails that check, not the task
                log.exception(kv("audit_check_crashed", check=name))
                outcome = f"the check failed: {type(e).__name__}: {e}"
        findings: list[dict[str, Any]] = []
        if isinstance(outcome, str):
            details = failed_details(outcome)
        else:
            found_at = now + (time.monotonic() - started)
            findings = [
                make_finding(
                    task_id=task_id,
                    task_start=now,
                    finding_time=found_at,
                    check_name=name,
                    severity=check.severity if check else "LOW",
                    found=item,
                    index=index,
                    suppressed=(name, identifier_key(item.resource_identifier)) in suppressed,
                )
                for index, item in enumerate(outcome)
            ]
            details = completed_details(findings)
        if not store.record_check(task_id, name, details, findings):
            log.info(kv("audit_task_canceled", task_id=task_id, at_check=name))
            break
    status = store.end_task(task_id)
    log.info(kv("audit_task_ended", task_id=task_id, status=status))
    return task_id


def task_findings(store: AuditStore, task_id: str) -> list[dict[str, Any]]:
    """Every finding of a task as AWS's AuditFinding JSON (suppressed ones marked
    isSuppressed), in the order found: what the daemon publishes."""
    return store.task_findings(task_id)


# -- the verbs -----------------------------------------------------------------------------


@dataclass
class Env:
    """What a verb works with besides its arguments."""

    cfg: Config
    now: float
    _checks: Checks | None

    @property
    def checks(self) -> Checks:
        if self._checks is None:
            self._checks = device_checks()
        return self._checks


Verb = Callable[[AuditStore, argparse.Namespace, Env], None]


def _identifier(args: argparse.Namespace, required: bool = True) -> dict[str, Any] | None:
    if args.resource_identifier is None:
        if required:
            raise InvalidRequest("resourceIdentifier", "is required")
        return None
    return check_resource_identifier(json_param("resourceIdentifier", args.resource_identifier))


def _names(args: argparse.Namespace) -> list[Any]:
    return word_list("targetCheckNames", args.target_check_names)


def _enabled(store: AuditStore, env: Env) -> list[str]:
    return enabled_checks(
        describe_configuration(env.checks.defaults, store.account_configuration())
    )


def _start_on_demand_audit_task(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    names = check_target_check_names(_names(args), env.checks.table, _enabled(store, env))
    task_id = run_audit_task(
        store, env.cfg, names, "ON_DEMAND_AUDIT_TASK", None, env.now, checks=env.checks
    )
    print_answer({"taskId": task_id})


def _describe_audit_task(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    print_answer(store.describe_task(check_task_id(args.task_id)))


def _list_audit_tasks(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    start, end = check_times(args)
    if start < env.now - RETENTION_S:
        raise InvalidRequest(
            "startTime", f"is before {iso_time(env.now - RETENTION_S)}: tasks are kept 90 days"
        )
    answer = store.list_tasks(
        start,
        end,
        task_type=args.task_type,
        task_status=args.task_status,
        max_results=args.max_results,
        next_token=args.next_token,
    )
    print_page(
        args,
        answer,
        "tasks",
        ("TASK", "TYPE", "STATUS"),
        lambda t: [t["taskId"], t["taskType"], t["taskStatus"]],
    )


def _cancel_audit_task(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    store.cancel_task(check_task_id(args.task_id))
    print_answer({})


def _finding_row(f: Mapping[str, Any]) -> list[str]:
    resource = f["nonCompliantResource"]
    return [
        iso_time(f["findingTime"]),
        f["checkName"],
        f["severity"],
        resource["resourceType"],
        json.dumps(resource["resourceIdentifier"], ensure_ascii=False),
        f["reasonForNonComplianceCode"] + (" (suppressed)" if f["isSuppressed"] else ""),
    ]


def _list_audit_findings(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    check_task_or_times(args)
    answer = store.list_findings(
        task_id=None if args.task_id is None else check_task_id(args.task_id),
        start_time=args.start_time,
        end_time=args.end_time,
        check_name=None
        if args.check_name is None
        else check_check_name("checkName", args.check_name),
        resource_identifier=_identifier(args, required=False),
        list_suppressed_findings=args.list_suppressed_findings,
        max_results=args.max_results,
        next_token=args.next_token,
    )
    headers = ("FOUND", "CHECK", "SEVERITY", "TYPE", "RESOURCE", "REASON")
    print_page(args, answer, "findings", headers, _finding_row)


def _describe_account_audit_configuration(
    store: AuditStore, args: argparse.Namespace, env: Env
) -> None:
    print_answer(describe_configuration(env.checks.defaults, store.account_configuration()))


def _scheduled_checks(store: AuditStore) -> dict[str, list[str]]:
    return {name: body["targetCheckNames"] for name, body, _, _ in store.scheduled_audits()}


def _update_account_audit_configuration(
    store: AuditStore, args: argparse.Namespace, env: Env
) -> None:
    given = {
        "role_arn": args.role_arn,
        "notification_targets": None
        if args.audit_notification_target_configurations is None
        else json_param(
            "auditNotificationTargetConfigurations", args.audit_notification_target_configurations
        ),
        "check_configurations": None
        if args.audit_check_configurations is None
        else json_param("auditCheckConfigurations", args.audit_check_configurations),
    }
    if all(value is None for value in given.values()):
        raise InvalidRequest(
            "auditCheckConfigurations",
            "nothing to update: give --audit-check-configurations, --role-arn or"
            " --audit-notification-target-configurations",
        )
    new = update_configuration(
        env.checks.defaults,
        store.account_configuration(),
        scheduled=_scheduled_checks(store),
        **given,
    )
    store.put_account_configuration(new)
    print_answer({})


def _suppression_target(args: argparse.Namespace, env: Env | None) -> tuple[str, dict[str, Any]]:
    """checkName (a known check when `env` is given) and resourceIdentifier."""
    name = check_check_name("checkName", args.check_name, None if env is None else env.checks.table)
    identifier = _identifier(args)
    assert identifier is not None
    return name, identifier


def _create_audit_suppression(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    name, identifier = _suppression_target(args, env)
    expiration, _ = check_suppression_terms(
        args.expiration_date, args.suppress_indefinitely, env.now
    )
    description = None if args.description is None else check_description(args.description)
    token = check_client_request_token(args.client_request_token or uuid.uuid4().hex)
    store.create_suppression(name, identifier, expiration, description, token, env.now)
    print_answer({})


def _describe_audit_suppression(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    name, identifier = _suppression_target(args, None)
    print_answer(store.describe_suppression(name, identifier, env.now))


def _update_audit_suppression(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    name, identifier = _suppression_target(args, None)
    if (args.expiration_date, args.suppress_indefinitely, args.description) == (None,) * 3:
        raise InvalidRequest(
            "expirationDate",
            "nothing to update: give --expiration-date, --suppress-indefinitely or --description",
        )
    expiration, indefinitely = None, False
    if args.expiration_date is not None or args.suppress_indefinitely is not None:
        expiration, indefinitely = check_suppression_terms(
            args.expiration_date, args.suppress_indefinitely, env.now
        )
    description = None if args.description is None else check_description(args.description)
    store.update_suppression(
        name,
        identifier,
        env.now,
        expiration=expiration,
        indefinitely=indefinitely,
        description=description,
    )
    print_answer({})


def _delete_audit_suppression(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    name, identifier = _suppression_target(args, None)
    store.delete_suppression(name, identifier)
    print_answer({})


def _suppression_row(s: Mapping[str, Any]) -> list[str]:
    return [
        s["checkName"],
        json.dumps(s["resourceIdentifier"], ensure_ascii=False),
        "never" if s["suppressIndefinitely"] else iso_time(s["expirationDate"]),
        s.get("description", ""),
    ]


def _list_audit_suppressions(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    answer = store.list_suppressions(
        env.now,
        check_name=None
        if args.check_name is None
        else check_check_name("checkName", args.check_name),
        resource_identifier=_identifier(args, required=False),
        ascending_order=args.ascending_order,
        max_results=args.max_results,
        next_token=args.next_token,
    )
    headers = ("CHECK", "RESOURCE", "EXPIRES", "DESCRIPTION")
    print_page(args, answer, "suppressions", headers, _suppression_row)


def _arn(env: Env, name: str) -> str:
    # No region or account on a device: the thing name stands in the account's place.
    return f"arn:edge-defender:iot::{env.cfg.thing_name}:scheduledaudit/{name}"


def _schedule_body(store: AuditStore, env: Env, schedule: Mapping[str, Any]) -> dict[str, Any]:
    body = check_schedule(
        schedule.get("frequency"), schedule.get("dayOfWeek"), schedule.get("dayOfMonth")
    )
    names = schedule["targetCheckNames"]
    return {
        **body,
        "targetCheckNames": check_target_check_names(names, env.checks.table, _enabled(store, env)),
    }


def _create_scheduled_audit(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    name = check_scheduled_audit_name(args.scheduled_audit_name)
    schedule = {
        "frequency": args.frequency,
        "dayOfWeek": args.day_of_week,
        "dayOfMonth": args.day_of_month,
        "targetCheckNames": _names(args),
    }
    store.create_scheduled_audit(name, _schedule_body(store, env, schedule), env.now)
    print_answer({"scheduledAuditArn": _arn(env, name)})


_DAY_OF = {"WEEKLY": "dayOfWeek", "BIWEEKLY": "dayOfWeek", "MONTHLY": "dayOfMonth"}


def _update_scheduled_audit(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    name = check_scheduled_audit_name(args.scheduled_audit_name)
    given = {
        "frequency": args.frequency,
        "dayOfWeek": args.day_of_week,
        "dayOfMonth": args.day_of_month,
        "targetCheckNames": None if args.target_check_names is None else _names(args),
    }
    if all(value is None for value in given.values()):
        raise InvalidRequest(
            "frequency",
            "nothing to update: give --frequency, --day-of-week, --day-of-month"
            " or --target-check-names",
        )
    current, _, _ = store.scheduled_audit(name)
    schedule = {**current, **{k: v for k, v in given.items() if v is not None}}
    if given["frequency"] is not None:
        # A stored day the new frequency does not take goes (a day given is checked).
        wanted = _DAY_OF.get(given["frequency"])
        for day in ("dayOfWeek", "dayOfMonth"):
            if day != wanted and given[day] is None:
                schedule.pop(day, None)
    store.update_scheduled_audit(name, _schedule_body(store, env, schedule))
    print_answer({"scheduledAuditArn": _arn(env, name)})


def _describe_scheduled_audit(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    name = check_scheduled_audit_name(args.scheduled_audit_name)
    body, _, _ = store.scheduled_audit(name)
    print_answer({**body, "scheduledAuditName": name, "scheduledAuditArn": _arn(env, name)})


def _delete_scheduled_audit(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    store.delete_scheduled_audit(check_scheduled_audit_name(args.scheduled_audit_name))
    print_answer({})


def _list_scheduled_audits(store: AuditStore, args: argparse.Namespace, env: Env) -> None:
    page, token = store.list_scheduled_audits(
        max_results=args.max_results, next_token=args.next_token
    )
    answer: dict[str, Any] = {
        "scheduledAudits": [
            {
                "scheduledAuditName": name,
                "scheduledAuditArn": _arn(env, name),
                **{k: v for k, v in body.items() if k != "targetCheckNames"},
            }
            for name, body in page
        ]
    }
    if token is not None:
        answer["nextToken"] = token
    print_page(
        args,
        answer,
        "scheduledAudits",
        ("NAME", "FREQUENCY", "DAY"),
        lambda s: [
            s["scheduledAuditName"],
            s["frequency"],
            s.get("dayOfWeek", s.get("dayOfMonth", "")),
        ],
    )


def run(args: argparse.Namespace, cfg: Config, *, checks: Checks | None = None) -> int:
    """Run the verb the parser chose on the audit store of `cfg`. Exit status: 0 done,
    1 the store failed or the task, suppression or scheduled audit is unknown (or
    exists already), 2 a bad parameter."""

    def work() -> None:
        with open_audit(cfg.state_dir) as store:
            fail_abandoned_tasks(store)
            args.verb(store, args, Env(cfg, time.time(), checks))

    return exit_status(args.command, work)


# -- parsers -------------------------------------------------------------------------------


def _add_identifier(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--resource-identifier",
        required=required,
        metavar="JSON",
        help=f'AWS\'s ResourceIdentifier, e.g. \'{{"deviceCertificateId": "..."}}\'; {JSON_FORM}',
    )


def _add_target_checks(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--target-check-names",
        nargs="+",
        required=required,
        metavar="CHECK",
        help="check names (enabled ones), as words or one JSON list",
    )


def _add_schedule(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--scheduled-audit-name", required=True, metavar="NAME")
    p.add_argument("--frequency", required=required, choices=FREQUENCIES)
    p.add_argument("--day-of-week", choices=DAYS_OF_WEEK, help="for WEEKLY and BIWEEKLY")
    p.add_argument("--day-of-month", metavar="DAY", help="1-31 or LAST, for MONTHLY")
    _add_target_checks(p, required)


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_arg: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """Register the audit verbs; `handler` loads the config and calls run()."""
    verb: Callable[[str, str, Verb], argparse.ArgumentParser] = verb_adder(
        sub, add_config_arg, handler
    )
    p = verb(
        "start-on-demand-audit-task",
        "run audit checks now (in this process) and record the task and its findings",
        _start_on_demand_audit_task,
    )
    _add_target_checks(p, True)
    p = verb("describe-audit-task", "an audit task: status, statistics, details per check",
             _describe_audit_task)  # fmt: skip
    p.add_argument("--task-id", required=True, metavar="ID")
    p = verb("list-audit-tasks", "audit tasks started in a time range", _list_audit_tasks)
    add_times(p, True)
    p.add_argument("--task-type", choices=TASK_TYPES)
    p.add_argument("--task-status", choices=TASK_STATUSES)
    add_paging(p, DEFAULT_MAX_RESULTS, MAX_RESULTS, ", as AWS")
    add_output(p)
    p = verb("cancel-audit-task", "cancel an IN_PROGRESS audit task", _cancel_audit_task)
    p.add_argument("--task-id", required=True, metavar="ID")

    p = verb(
        "list-audit-findings",
        "findings of one task (--task-id) or found in a time range (--start-time and"
        " --end-time): one or the other, as AWS; kept 90 days",
        _list_audit_findings,
    )
    p.add_argument("--task-id", metavar="ID")
    add_times(p, False)
    p.add_argument("--check-name", metavar="CHECK")
    _add_identifier(p, False)
    p.add_argument(
        "--list-suppressed-findings",
        action=argparse.BooleanOptionalAction,
        help="only suppressed (--list-...) or only unsuppressed (--no-...); default both, as AWS",
    )
    add_paging(p, DEFAULT_MAX_RESULTS, MAX_RESULTS, ", as AWS")
    add_output(p)

    verb(
        "describe-account-audit-configuration",
        "which checks are enabled, with their settings",
        _describe_account_audit_configuration,
    )
    p = verb(
        "update-account-audit-configuration",
        "enable or disable checks and change their settings",
        _update_account_audit_configuration,
    )
    p.add_argument(
        "--audit-check-configurations",
        metavar="JSON",
        help='{"CHECK": {"enabled": true, "configuration": {"KEY": "VALUE"}}}; ' + JSON_FORM,
    )
    p.add_argument("--role-arn", metavar="ARN", help="stored as AWS does; not used on the device")
    p.add_argument(
        "--audit-notification-target-configurations",
        metavar="JSON",
        help=f'{{"SNS": {{"targetArn": ..., "roleArn": ..., "enabled": ...}}}}; stored, not used'
        f" on the device; {JSON_FORM}",
    )

    p = verb("create-audit-suppression", "suppress a check's findings for one resource",
             _create_audit_suppression)  # fmt: skip
    p.add_argument("--check-name", required=True, metavar="CHECK")
    _add_identifier(p, True)
    p.add_argument("--expiration-date", type=parse_time, metavar="T", help="in the future")
    p.add_argument(
        "--suppress-indefinitely",
        action=argparse.BooleanOptionalAction,
        help="no expiry (give this or --expiration-date)",
    )
    p.add_argument("--description", metavar="TEXT")
    p.add_argument(
        "--client-request-token", metavar="TOKEN", help="idempotency token (default: a new one)"
    )
    for name, help_text, fn in (
        ("describe-audit-suppression", "a suppression", _describe_audit_suppression),
        ("delete-audit-suppression", "delete a suppression", _delete_audit_suppression),
        ("update-audit-suppression", "change a suppression's expiry or description",
         _update_audit_suppression),
    ):  # fmt: skip
        p = verb(name, help_text, fn)
        p.add_argument("--check-name", required=True, metavar="CHECK")
        _add_identifier(p, True)
        if fn is _update_audit_suppression:
            p.add_argument("--expiration-date", type=parse_time, metavar="T")
            p.add_argument("--suppress-indefinitely", action=argparse.BooleanOptionalAction)
            p.add_argument("--description", metavar="TEXT")
    p = verb("list-audit-suppressions", "the suppressions in force, by expiry",
             _list_audit_suppressions)  # fmt: skip
    p.add_argument("--check-name", metavar="CHECK")
    _add_identifier(p, False)
    p.add_argument(
        "--ascending-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="by expiry, soonest first (default), or latest first",
    )
    add_paging(p, DEFAULT_MAX_RESULTS, MAX_RESULTS, ", as AWS")
    add_output(p)

    p = verb("create-scheduled-audit", "an audit the daemon runs daily, weekly, ...",
             _create_scheduled_audit)  # fmt: skip
    _add_schedule(p, True)
    p = verb("update-scheduled-audit", "change a scheduled audit", _update_scheduled_audit)
    _add_schedule(p, False)
    for name, help_text, fn in (
        ("describe-scheduled-audit", "a scheduled audit", _describe_scheduled_audit),
        ("delete-scheduled-audit", "delete a scheduled audit", _delete_scheduled_audit),
    ):
        p = verb(name, help_text, fn)
        p.add_argument("--scheduled-audit-name", required=True, metavar="NAME")
    p = verb("list-scheduled-audits", "the scheduled audits", _list_scheduled_audits)
    add_paging(p, DEFAULT_MAX_RESULTS, MAX_RESULTS, ", as AWS")
    add_output(p)

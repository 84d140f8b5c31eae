"""Detect mitigation: the verbs, named and shaped as the AWS CLI's
(`aws iot create-mitigation-action`, `start-detect-mitigation-actions-task`, ...), on the
device's own store (state_dir/mitigation.db), and what the daemon calls to run them.

start-detect-mitigation-actions-task only records: the task and one PENDING execution per
violation and action, each with the violation as it is now in the history (agent.db).
`run_pending` runs them, one at a time, in the daemon's mitigation thread: the firewall's
allowlist is rewritten into the kernel by every action, so one place, the daemon with
its config's allowlist, drives the firewall (a CLI with another view of the allowlist
would replace it). A cancel stops a task before its next execution.

Cloud actions are SKIPPED with the reason. On-device ones: BLOCK_REMOTE_ADDRESS and
BLOCK_LISTENING_PORT (the violation's offending addresses or ports, or fixed ones),
ISOLATE_DEVICE, RUN_HOOK (argv, no shell, the violation as JSON on stdin, killed at its
timeout) and PUBLISH_TO_TOPIC (a message left in the store's outbox for the daemon). A
dry-run task records what each would do, and does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import math
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.collect.firewall import Firewall, FirewallError, Plan, check_proto
from agent.config import Config
from agent.core.audit_model import InvalidRequest
from agent.core.mitigation_model import (
    ACTION_TYPES,
    CLOUD_ACTION_TYPES,
    CLOUD_SKIP_REASON,
    DEFAULT_MAX_RESULTS,
    MAX_RESULTS,
    check_action_name,
    check_action_params,
    check_role_arn,
    check_task_id,
    check_task_request,
    check_thing_name,
    check_violation_id,
    offending_addresses,
    offending_ports,
    same_request,
    violation_matches,
)
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
from agent.store.history import History, history_path, open_history
from agent.store.mitigation import (
    Claimed,
    MitigationStore,
    Publication,
    ResourceNotFound,
    open_mitigation,
)

log = logging.getLogger(__name__)

FirewallFactory = Callable[[bool], Firewall]  # dry_run -> a Firewall with the allowlist
RESOLV_CONF = Path("/etc/resolv.conf")
HOOK_OUTPUT = 1000  # characters of a hook's stderr kept in the message


def action_arn(thing_name: str, name: str) -> str:
    # No region or account on a device: the thing name stands in the account's place.
    return f"arn:edge-defender:iot::{thing_name}:mitigationaction/{name}"


# -- starting a task ---------------------------------------------------------------------


def _all(page: Callable[[str | None], Mapping[str, Any]], key: str) -> Iterator[dict[str, Any]]:
    token = None
    while True:
        answer = page(token)
        yield from answer[key]
        token = answer.get("nextToken")
        if token is None:
            return


def _events(
    history: History, profile: str | None, start: float, end: float
) -> Iterator[dict[str, Any]]:
    return _all(
        lambda token: history.list_violation_events(
            start, end, security_profile_name=profile, next_token=token
        ),
        "violationEvents",
    )


def select_violations(history: History, request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The violations a checked request acts on, each once, as the history holds them:
    with includeOnlyActiveViolations the ActiveViolation (its lastViolationValue), else
    the latest in-alarm ViolationEvent (in violationEventOccurrenceRange when given;
    endTime excluded, as list-violation-events). A violationId the history does not
    hold is ResourceNotFound."""
    target = request["target"]
    profile = target.get("securityProfileName")
    window = request.get("violationEventOccurrenceRange")
    start, end = (window["startTime"], window["endTime"]) if window else (-math.inf, math.inf)
    latest: dict[str, dict[str, Any]] = {}
    if window is not None or not request["includeOnlyActiveViolations"]:
        for event in _events(history, profile, start, end):
            if event["violationEventType"] == "in-alarm" and violation_matches(request, event):
                latest[event["violationId"]] = event  # oldest first: the last is the latest
    chosen: dict[str, dict[str, Any]] = latest
    if request["includeOnlyActiveViolations"]:
        active = _all(
            lambda token: history.list_active_violations(
                security_profile_name=profile, next_token=token
            ),
            "activeViolations",
        )
        chosen = {
            a["violationId"]: a
            for a in active
            if violation_matches(request, a) and (window is None or a["violationId"] in latest)
        }
    if "violationIds" in target:
        missing = [v for v in target["violationIds"] if v not in chosen]
        if missing:
            where = "active" if request["includeOnlyActiveViolations"] else "in the history"
            if window is not None:
                where += " with an in-alarm event in violationEventOccurrenceRange"
            raise ResourceNotFound(
                f"no violation {', '.join(missing)} {where}"
                + ("" if request["includeSuppressedAlerts"] else " (suppressed ones left out)")
            )
        return [chosen[v] for v in target["violationIds"]]
    return list(chosen.values())


def _definitions(store: MitigationStore, names: Sequence[str]) -> list[dict[str, Any]]:
    """Each named action as a MitigationAction {name, id, roleArn, actionParams}."""
    out = []
    for name in names:
        action = store.action(name)
        out.append(
            {
                "name": name,
                "id": action["actionId"],
                "roleArn": action["roleArn"],
                "actionParams": action["actionParams"],
            }
        )
    return out


def record_task(
    store: MitigationStore,
    request: Mapping[str, Any],
    violations: Sequence[Mapping[str, Any]],
    now: float,
) -> bool:
    """Record a checked request (check_task_request) on `violations` (ViolationEvent or
    ActiveViolation JSON, e.g. the in-alarm event the daemon just made): one PENDING
    execution per violation and action. False when this token already made this task.
    Tasks that ended 90 days ago go first."""
    store.prune(now)
    created = store.start_task(request, _definitions(store, request["actions"]), violations, now)
    if created:
        log.info(
            kv(
                "mitigation_task_started",
                task_id=request["taskId"],
                violations=len(violations),
                actions=len(request["actions"]),
                dry_run=request["dryRun"],
            )
        )
    return created


def start_task(
    store: MitigationStore, history: History, request: Mapping[str, Any], now: float
) -> bool:
    """StartDetectMitigationActionsTask: the violations chosen from the history, then
    record_task. The same token and parameters again is the same task (False)."""
    existing = store.task_for_token(request["clientRequestToken"])
    if existing is not None:
        if same_request(existing[1], request):
            return False
        raise InvalidRequest(
            "clientRequestToken",
            f"{request['clientRequestToken']!r} was used for task {existing[0]} with other"
            " parameters",
        )
    return record_task(store, request, select_violations(history, request), now)


# -- running executions -----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one execution ended (also what run_pending returns)."""

    task_id: str
    violation_id: str
    action_name: str
    status: str
    error_code: str | None = None
    message: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    publish: tuple[str, dict[str, Any]] | None = None


def read_resolvers(path: Path = RESOLV_CONF) -> list[str]:
    """The nameservers of resolv.conf as addresses (a zone id dropped: the firewall keeps
    an address on every link); none when it cannot be read."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                out.append(str(ipaddress.ip_address(words[1].partition("%")[0])))
    return out


def _firewall_results(
    claimed: Claimed,
    verb: str,
    items: Sequence[str],
    act: Callable[[str], Plan],
    dry_run: bool,
    undo: dict[str, Any],
) -> Outcome:
    """Apply `act` to each item; FAILED naming the refused ones (allowlist, nft,
    capability), the others still done. What was done is kept as the detail's "undo"
    (`undo` plus the items done: kind, until, ...), for undo_task and reapply."""
    plans, done, refused = [], [], []
    for item in items:
        try:
            plans.append(act(item).document())
            done.append(item)
        except (FirewallError, ValueError) as e:
            refused.append((item, str(e)))
    words = []
    if done:
        words.append(f"{'dry run: would ' if dry_run else ''}{verb} {', '.join(done)}")
    words += [f"refused {item}: {why}" for item, why in refused]
    detail: dict[str, Any] = {"plans": plans}
    if done and not dry_run:
        detail["undo"] = {**undo, "items": done}
    if not refused:
        return _outcome(claimed, "SUCCESSFUL", None, "; ".join(words), detail)
    allowlisted = all("is allowlisted" in why for _, why in refused)
    code = "ALLOWLISTED" if allowlisted else "FIREWALL_ERROR"
    return _outcome(claimed, "FAILED", code, "; ".join(words), detail)


def _outcome(
    claimed: Claimed,
    status: str,
    code: str | None,
    message: str,
    detail: dict[str, Any] | None = None,
    publish: tuple[str, dict[str, Any]] | None = None,
) -> Outcome:
    return Outcome(
        claimed.task_id,
        claimed.violation_id,
        claimed.action_name,
        status,
        code,
        message,
        detail or {},
        publish,
    )


def _run_hook(claimed: Claimed, params: Mapping[str, Any], dry_run: bool) -> Outcome:
    argv, timeout = list(params["argv"]), params["timeoutSeconds"]
    detail = {"argv": argv, "timeoutSeconds": timeout}
    if dry_run:
        return _outcome(claimed, "SUCCESSFUL", None, f"dry run: would run {argv[0]}", detail)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "EDGE_DEFENDER_TASK_ID": claimed.task_id,
        "EDGE_DEFENDER_ACTION_NAME": claimed.action_name,
        "EDGE_DEFENDER_VIOLATION_ID": claimed.violation_id,
        "EDGE_DEFENDER_THING_NAME": claimed.thing_name,
    }
    try:
        # Its own session, so a timeout ends what it started too; never a shell.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
            text=True,
        )
    except OSError as e:
        return _outcome(claimed, "FAILED", "HOOK_FAILED", f"{argv[0]}: {e.strerror}", detail)
    try:
        _, err = proc.communicate(json.dumps(claimed.violation), timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return _outcome(
            claimed, "FAILED", "HOOK_TIMEOUT", f"{argv[0]} killed after {timeout} s", detail
        )
    tail = " ".join(err.split())[-HOOK_OUTPUT:]
    if proc.returncode != 0:
        why = (
            f"exit status {proc.returncode}"
            if proc.returncode > 0
            else f"signal {-proc.returncode}"
        )
        return _outcome(
            claimed,
            "FAILED",
            "HOOK_FAILED",
            f"{argv[0]}: {why}" + (f": {tail}" if tail else ""),
            detail,
        )
    return _outcome(claimed, "SUCCESSFUL", None, f"{argv[0]}: exit status 0", detail)


def execute(
    claimed: Claimed,
    firewall: Callable[[], Firewall],
    thing_name: str,
    resolvers: Callable[[], list[str]],
    now: float,
) -> Outcome:
    """Carry out one claimed execution at `now`; its outcome (nothing stored here)."""
    params_key, params = next(iter(claimed.action["actionParams"].items()))
    dry = claimed.dry_run
    until = now + params.get("timeoutSeconds", 0)  # when the kernel drops a change
    if params_key in CLOUD_ACTION_TYPES:
        return _outcome(claimed, "SKIPPED", None, CLOUD_SKIP_REASON)
    if params_key == "blockRemoteAddressParams":
        cidrs = params.get("cidrs") or offending_addresses(claimed.violation)
        if not cidrs:
            return _outcome(
                claimed,
                "SKIPPED",
                None,
                "the violation lists no address outside its behavior's CIDRs",
            )
        fw = firewall()
        return _firewall_results(
            claimed,
            f"block for {params['timeoutSeconds']} s",
            cidrs,
            lambda c: fw.block_address(c, params["timeoutSeconds"]),
            dry,
            {"kind": "addresses", "until": until},
        )
    if params_key == "blockListeningPortParams":
        ports = [f"{p['protocol']}/{p['port']}" for p in params.get("ports", [])] or [
            f"{proto}/{port}" for proto, port in offending_ports(claimed.violation)
        ]
        if not ports:
            return _outcome(
                claimed,
                "SKIPPED",
                None,
                "the violation lists no listening port outside its behavior's ports",
            )
        fw = firewall()

        def block(item: str) -> Plan:
            proto, _, port = item.partition("/")
            return fw.block_port(check_proto(proto), int(port), params["timeoutSeconds"])

        return _firewall_results(
            claimed,
            f"block inbound for {params['timeoutSeconds']} s to",
            ports,
            block,
            dry,
            {"kind": "ports", "until": until},
        )
    if params_key == "isolateDeviceParams":
        keep = list(params.get("keepCidrs", []))
        if params["keepResolvers"]:
            keep += [r for r in resolvers() if r not in keep]
        fw = firewall()
        kept = ", ".join(keep) or "the allowlist only"
        return _firewall_results(
            claimed,
            "isolate",
            [f"the device for {params['timeoutSeconds']} s, keeping {kept}"],
            lambda _: fw.isolate(keep, params["timeoutSeconds"]),
            dry,
            {"kind": "isolation", "until": until, "keep": keep},
        )
    if params_key == "runHookParams":
        return _run_hook(claimed, params, dry)
    topic = params["topic"].replace("{thing_name}", thing_name)
    payload = {
        "taskId": claimed.task_id,
        "actionName": claimed.action_name,
        "thingName": claimed.thing_name,
        "violation": claimed.violation,
    }
    if dry:
        return _outcome(
            claimed, "SUCCESSFUL", None, f"dry run: would publish on {topic}", {"topic": topic}
        )
    return _outcome(
        claimed,
        "SUCCESSFUL",
        None,
        f"queued for the daemon to publish on {topic}",
        {"topic": topic},
        (topic, payload),
    )


def fail_abandoned(store: MitigationStore, now: float) -> int:
    """FAILED for executions left IN_PROGRESS by a runner that is gone; how many."""
    failed = 0
    for execution_id, pid in store.running():
        if runner_gone(pid):
            store.finish(
                execution_id,
                "FAILED",
                now,
                error_code="INTERRUPTED",
                message=f"interrupted: the process running it (pid {pid}) ended",
            )
            failed += 1
    return failed


def run_pending(
    store: MitigationStore,
    cfg: Config,
    firewall_factory: FirewallFactory,
    *,
    clock: Callable[[], float] = time.time,
    resolv_conf: Path = RESOLV_CONF,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Outcome]:
    """Run every PENDING execution of every IN_PROGRESS task, oldest first, one at a
    time, each recorded as it ends; their outcomes. A task canceled meanwhile runs no
    more executions; `should_stop` (the daemon stopping) is asked between executions.
    An action that raises fails its execution, not the run. Executions left
    IN_PROGRESS by a dead runner are FAILED first."""
    fail_abandoned(store, clock())
    firewalls: dict[bool, Firewall] = {}
    outcomes = []
    while not should_stop():
        claimed = store.claim(os.getpid(), clock())
        if claimed is None:
            break

        def firewall(dry: bool = claimed.dry_run) -> Firewall:
            if dry not in firewalls:
                firewalls[dry] = firewall_factory(dry)
            return firewalls[dry]

        try:
            outcome = execute(
                claimed, firewall, cfg.thing_name, lambda: read_resolvers(resolv_conf), clock()
            )
        except Exception as e:  # a bug fails this execution, not the daemon's thread
            log.exception(kv("mitigation_execution_crashed", task_id=claimed.task_id))
            outcome = _outcome(claimed, "FAILED", "INTERNAL_ERROR", f"{type(e).__name__}: {e}")
        ended = store.finish(
            claimed.execution_id,
            outcome.status,
            clock(),
            error_code=outcome.error_code,
            message=outcome.message,
            detail=outcome.detail,
            publish=outcome.publish,
        )
        log.info(
            kv(
                "mitigation_execution",
                task_id=outcome.task_id,
                violation_id=outcome.violation_id,
                action=outcome.action_name,
                status=outcome.status,
                code=outcome.error_code,
                dry_run=claimed.dry_run,
            )
        )
        if ended is not None:
            log.info(kv("mitigation_task_ended", task_id=outcome.task_id, status=ended))
        outcomes.append(outcome)
    return outcomes


def undo_task(store: MitigationStore, task_id: str, firewall: Firewall) -> list[str]:
    """Take back what a task's executions did in the firewall (unblock, release the
    isolation), as an alarm that ends undoes its automatic response; one line per
    item, saying what was undone or why it could not be. Hooks and messages stay done;
    a block that already expired in the kernel is gone either way."""
    lines = []
    for execution_id, detail in store.in_force(task_id):
        undo = detail["undo"]
        for item in undo.get("items", []):
            try:
                if undo["kind"] == "addresses":
                    firewall.unblock_address(item)
                elif undo["kind"] == "ports":
                    proto, _, port = item.partition("/")
                    firewall.unblock_port(check_proto(proto), int(port))
                else:
                    firewall.release_isolation()
                lines.append(f"undone: {undo['kind']} {item}")
            except (FirewallError, ValueError) as e:
                lines.append(f"not undone: {undo['kind']} {item}: {e}")
        store.mark_undone(execution_id)
    return lines


def reapply(store: MitigationStore, firewall: Firewall, now: float) -> list[str]:
    """Put back the firewall changes still due (not undone, not expired) with the time
    they have left: the kernel forgets its tables at a reboot, while the alarms and
    their automatic tasks come back from the store and would not be made again. One
    line per item. Adding an element that is there only sets its timeout again."""
    lines = []
    for _execution_id, detail in store.in_force():
        undo = detail["undo"]
        left = int(undo.get("until", 0) - now)
        if left < 1:
            continue
        for item in undo.get("items", []):
            try:
                if undo["kind"] == "addresses":
                    firewall.block_address(item, left)
                elif undo["kind"] == "ports":
                    proto, _, port = item.partition("/")
                    firewall.block_port(check_proto(proto), int(port), left)
                else:
                    firewall.isolate(undo.get("keep", []), left)
                lines.append(f"reapplied for {left} s: {undo['kind']} {item}")
            except (FirewallError, ValueError) as e:
                lines.append(f"not reapplied: {undo['kind']} {item}: {e}")
    return lines


def publications(store: MitigationStore, limit: int = 100) -> list[Publication]:
    """Messages PUBLISH_TO_TOPIC executions left for the daemon, oldest first: publish
    (spool) each, then `published(store, ids)`."""
    return store.publications(limit)


def published(store: MitigationStore, ids: Sequence[int]) -> None:
    store.published(ids)


# -- the verbs -----------------------------------------------------------------------------

Verb = Callable[[MitigationStore, argparse.Namespace, Config, float], None]


def _create_mitigation_action(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    name = check_action_name(args.action_name)
    role_arn = check_role_arn(args.role_arn)
    _, params = check_action_params(json_param("actionParams", args.action_params))
    action_id = str(uuid.uuid4())
    store.create_action(name, action_id, role_arn, params, now)
    print_answer({"actionArn": action_arn(cfg.thing_name, name), "actionId": action_id})


def _describe_mitigation_action(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    action = store.action(check_action_name(args.action_name))
    print_answer(
        {
            "actionName": action["actionName"],
            "actionType": action["actionType"],
            "actionArn": action_arn(cfg.thing_name, action["actionName"]),
            **{k: v for k, v in action.items() if k not in ("actionName", "actionType")},
        }
    )


def _update_mitigation_action(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    name = check_action_name(args.action_name)
    if args.role_arn is None and args.action_params is None:
        raise InvalidRequest("roleArn", "nothing to update: give --role-arn or --action-params")
    role_arn = None if args.role_arn is None else check_role_arn(args.role_arn)
    params = None
    if args.action_params is not None:
        _, params = check_action_params(json_param("actionParams", args.action_params))
    action_id = store.update_action(name, now, role_arn=role_arn, params=params)
    print_answer({"actionArn": action_arn(cfg.thing_name, name), "actionId": action_id})


def _delete_mitigation_action(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    store.delete_action(check_action_name(args.action_name))
    print_answer({})


def _list_mitigation_actions(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    page, token = store.list_actions(
        action_type=args.action_type, max_results=args.max_results, next_token=args.next_token
    )
    answer: dict[str, Any] = {
        "actionIdentifiers": [
            {"actionName": n, "actionArn": action_arn(cfg.thing_name, n), "creationDate": c}
            for n, c in page
        ]
    }
    if token is not None:
        answer["nextToken"] = token
    print_page(
        args,
        answer,
        "actionIdentifiers",
        ("NAME", "CREATED"),
        lambda a: [a["actionName"], iso_time(a["creationDate"])],
    )


def _time_value(param: str, value: object) -> object:
    """A time in a JSON parameter: epoch seconds, or ISO 8601 as the AWS CLI takes it."""
    if isinstance(value, str):
        try:
            return parse_time(value)
        except argparse.ArgumentTypeError as e:
            raise InvalidRequest(param, str(e)) from None
    return value


def _start_detect_mitigation_actions_task(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    window = None
    if args.violation_event_occurrence_range is not None:
        window = json_param("violationEventOccurrenceRange", args.violation_event_occurrence_range)
        if isinstance(window, dict):
            window = {
                k: _time_value(f"violationEventOccurrenceRange.{k}", v) for k, v in window.items()
            }
    request = check_task_request(
        task_id=args.task_id,
        target=json_param("target", args.target),
        actions=word_list("actions", args.actions),
        client_request_token=args.client_request_token or uuid.uuid4().hex,
        violation_event_occurrence_range=window,
        include_only_active_violations=args.include_only_active_violations,
        include_suppressed_alerts=args.include_suppressed_alerts,
        dry_run=args.dry_run,
    )
    with open_history(history_path(cfg.state_dir), create=False) as history:
        start_task(store, history, request, now)
    print_answer({"taskId": request["taskId"]})


def _describe_detect_mitigation_actions_task(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    print_answer(store.describe_task(check_task_id(args.task_id)))


def _list_detect_mitigation_actions_tasks(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    start, end = check_times(args)
    answer = store.list_tasks(start, end, max_results=args.max_results, next_token=args.next_token)
    print_page(
        args,
        answer,
        "tasks",
        ("TASK", "STATUS", "STARTED", "EXECUTED", "SKIPPED", "FAILED"),
        lambda t: [
            t["taskId"],
            t["taskStatus"],
            iso_time(t["taskStartTime"]),
            *(
                str(t["taskStatistics"][k])
                for k in ("actionsExecuted", "actionsSkipped", "actionsFailed")
            ),
        ],
    )


def _list_detect_mitigation_actions_executions(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    check_task_or_times(args)
    answer = store.list_executions(
        task_id=None if args.task_id is None else check_task_id(args.task_id),
        violation_id=None if args.violation_id is None else check_violation_id(args.violation_id),
        thing_name=None if args.thing_name is None else check_thing_name(args.thing_name),
        start_time=args.start_time,
        end_time=args.end_time,
        max_results=args.max_results,
        next_token=args.next_token,
    )
    print_page(
        args,
        answer,
        "actionsExecutions",
        ("TASK", "VIOLATION", "ACTION", "THING", "STATUS", "MESSAGE"),
        lambda e: [
            e["taskId"],
            e["violationId"],
            e["actionName"],
            e["thingName"],
            e["status"] + (f" ({e['errorCode']})" if "errorCode" in e else ""),
            e.get("message", ""),
        ],
    )


def _cancel_detect_mitigation_actions_task(
    store: MitigationStore, args: argparse.Namespace, cfg: Config, now: float
) -> None:
    store.cancel_task(check_task_id(args.task_id), now)
    print_answer({})


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Run the verb the parser chose on the mitigation store of `cfg`. Exit status: 0
    done, 1 the store failed or the action, task or violation is unknown (or exists
    already), 2 a bad parameter."""

    def work() -> None:
        with open_mitigation(cfg.state_dir) as store:
            args.verb(store, args, cfg, time.time())

    return exit_status(args.command, work)


# -- parsers -------------------------------------------------------------------------------


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_arg: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """Register the mitigation verbs; `handler` loads the config and calls run()."""
    verb: Callable[[str, str, Verb], argparse.ArgumentParser] = verb_adder(
        sub, add_config_arg, handler
    )
    params_help = (
        "one member: AWS's (updateDeviceCertificateParams, ...; SKIPPED on the device) or the"
        " device's (blockRemoteAddressParams, blockListeningPortParams, isolateDeviceParams,"
        f" runHookParams, publishToTopicParams; docs/mitigation.md); {JSON_FORM}"
    )
    p = verb("create-mitigation-action", "define a mitigation action", _create_mitigation_action)
    p.add_argument("--action-name", required=True, metavar="NAME")
    p.add_argument("--role-arn", required=True, metavar="ARN", help="stored as AWS does; unused")
    p.add_argument("--action-params", required=True, metavar="JSON", help=params_help)
    p = verb("update-mitigation-action", "change a mitigation action", _update_mitigation_action)
    p.add_argument("--action-name", required=True, metavar="NAME")
    p.add_argument("--role-arn", metavar="ARN")
    p.add_argument("--action-params", metavar="JSON", help=params_help)
    for name, help_text, fn in (
        ("describe-mitigation-action", "a mitigation action", _describe_mitigation_action),
        ("delete-mitigation-action", "delete a mitigation action", _delete_mitigation_action),
    ):
        p = verb(name, help_text, fn)
        p.add_argument("--action-name", required=True, metavar="NAME")
    p = verb("list-mitigation-actions", "the mitigation actions, by name", _list_mitigation_actions)
    p.add_argument("--action-type", choices=ACTION_TYPES)
    add_paging(p, DEFAULT_MAX_RESULTS, MAX_RESULTS)
    add_output(p)

    p = verb(
        "start-detect-mitigation-actions-task",
        "record a task: one execution per violation and action, run by the daemon",
        _start_detect_mitigation_actions_task,
    )
    p.add_argument("--task-id", required=True, metavar="ID")
    p.add_argument(
        "--target",
        required=True,
        metavar="JSON",
        help='{"violationIds": [...]} or {"securityProfileName": ..., "behaviorName": ...}; '
        + JSON_FORM,
    )
    p.add_argument(
        "--actions",
        required=True,
        nargs="+",
        metavar="NAME",
        help="1-5 action names, or one JSON list",
    )
    p.add_argument(
        "--violation-event-occurrence-range",
        metavar="JSON",
        help=f'{{"startTime": T, "endTime": T}} (epoch seconds or ISO 8601); {JSON_FORM}',
    )
    p.add_argument("--include-only-active-violations", action=argparse.BooleanOptionalAction)
    p.add_argument("--include-suppressed-alerts", action=argparse.BooleanOptionalAction)
    p.add_argument(
        "--client-request-token",
        metavar="TOKEN",
        help="idempotency token (default: a new one): the same token and parameters, the same task",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="an extension: record what each execution would do, and do nothing",
    )
    for name, help_text, fn in (
        (
            "describe-detect-mitigation-actions-task",
            "a task: status, target, actions, statistics",
            _describe_detect_mitigation_actions_task,
        ),
        (
            "cancel-detect-mitigation-actions-task",
            "cancel an IN_PROGRESS task: its pending executions are not run",
            _cancel_detect_mitigation_actions_task,
        ),
    ):
        p = verb(name, help_text, fn)
        p.add_argument("--task-id", required=True, metavar="ID")
    p = verb(
        "list-detect-mitigation-actions-tasks",
        "tasks started in a time range",
        _list_detect_mitigation_actions_tasks,
    )
    add_times(p, True)
    add_paging(p, DEFAULT_MAX_RESULTS, MAX_RESULTS)
    add_output(p)
    p = verb(
        "list-detect-mitigation-actions-executions",
        "executions of one task (--task-id) or started in a time range; by violation or thing",
        _list_detect_mitigation_actions_executions,
    )
    p.add_argument("--task-id", metavar="ID")
    p.add_argument("--violation-id", metavar="ID")
    p.add_argument("--thing-name", metavar="NAME")
    add_times(p, False)
    add_paging(p, DEFAULT_MAX_RESULTS, MAX_RESULTS)
    add_output(p)

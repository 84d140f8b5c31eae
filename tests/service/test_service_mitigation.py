"""The mitigation verbs as a user runs them, on a real mitigation.db and a real history
(agent.db) of violations, and run_pending as the daemon calls it: every answer checked
against botocore's `iot` shapes; executions per violation and action; cloud actions
SKIPPED; blocks planned through a real Firewall(dry_run=True) with its allowlist; hooks
run as real processes; cancel from another process between executions; bad input one
line naming the flag, exit 2, nothing stored changed."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.cli import build_parser
from agent.collect.firewall import Allowlist, Firewall
from agent.config import load_config
from agent.core.mitigation_model import CLOUD_SKIP_REASON, EXECUTION_STATUSES
from agent.service.mitigation import (
    Outcome,
    publications,
    published,
    read_resolvers,
    run_pending,
)
from agent.store.history import history_path, open_history
from agent.store.mitigation import mitigation_path, open_mitigation
from tests.core.test_core_mitigation_model import MODEL, shape_problems

ROLE = "arn:aws:iam::123456789012:role/mitigation"
T0 = 1_790_000_000.0
BROKER = "192.0.2.10"
ALLOW = Allowlist((BROKER, "10.9.0.0/16"))
EDGE = "edge"


def _egress(cidrs: list[str], suppressed: bool = False) -> dict[str, Any]:
    return {
        "name": "egress",
        "metric": "aws:destination-ip-addresses",
        "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}},
        **({"suppressAlerts": True} if suppressed else {}),
    }


PORTS = {
    "name": "ports",
    "metric": "aws:listening-tcp-ports",
    "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
}


def _event(
    vid: str, behavior: dict[str, Any], value: dict[str, Any], at: float, kind: str = "in-alarm"
) -> dict[str, Any]:
    return {
        "violationId": vid,
        "thingName": "dev",
        "securityProfileName": EDGE,
        "behavior": behavior,
        "metricValue": value,
        "violationEventType": kind,
        "violationEventTime": at,
        "verificationState": "UNKNOWN",
    }


def _active(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "violationId": event["violationId"],
        "thingName": event["thingName"],
        "securityProfileName": event["securityProfileName"],
        "behavior": event["behavior"],
        "lastViolationValue": event["metricValue"],
        "lastViolationTime": event["violationEventTime"],
        "violationStartTime": event["violationEventTime"],
        "verificationState": "UNKNOWN",
    }


EGRESS = _event("v-egress", _egress([]), {"cidrs": ["10.1.1.1", "203.0.113.9", "198.51.100.7"]}, T0)
LISTEN = _event("v-ports", PORTS, {"ports": [22, 2323]}, T0 + 1)
OLD = _event("v-old", _egress([]), {"cidrs": ["198.51.100.99"]}, T0 - 1000)
OLD_END = _event("v-old", _egress([]), {"cidrs": []}, T0 - 900, "alarm-cleared")
QUIET = _event("v-quiet", _egress([], suppressed=True), {"cidrs": ["198.51.100.50"]}, T0 + 2)
TO_BROKER = _event("v-broker", _egress([]), {"cidrs": [BROKER]}, T0 + 3)


@dataclass
class Device:
    root: Path
    config: Path

    @property
    def db(self) -> Path:
        return mitigation_path(self.root / "state")


@dataclass
class Done:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.status == 0, self.err
        return json.loads(self.out)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    config = tmp_path / "config.toml"
    config.write_text(f'thing_name = "dev"\nstate_dir = "{tmp_path / "state"}"\n')
    with open_history(history_path(tmp_path / "state")) as history:
        events = [OLD, OLD_END, EGRESS, LISTEN, QUIET, TO_BROKER]
        active = [_active(e) for e in (EGRESS, LISTEN, QUIET, TO_BROKER)]
        history.record(events, active, {})
    return Device(tmp_path, config)


def call(device: Device, *argv: str, stdin: str = "") -> Done:
    """One verb in this process, as `edge-defender VERB ... --config`."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr, sys.stdin
    sys.stdout, sys.stderr, sys.stdin = out, err, io.StringIO(stdin)
    try:
        try:
            args = build_parser().parse_args([*argv, "--config", str(device.config)])
            status = args.handler(args)
        except SystemExit as e:  # argparse's own errors
            status = int(e.code or 0)
    finally:
        sys.stdout, sys.stderr, sys.stdin = saved
    return Done(status, out.getvalue(), err.getvalue())


def valid(answer: Any, operation: str) -> Any:
    shape = MODEL.operation_model(operation).output_shape
    assert shape_problems(answer, shape) == []
    return answer


def ok(device: Device, operation: str, *argv: str) -> Any:
    verb = "".join("-" + c.lower() if c.isupper() else c for c in operation).lstrip("-")
    return valid(call(device, verb, *argv).json(), operation)


def create(device: Device, name: str, params: dict[str, Any]) -> Any:
    return ok(
        device,
        "CreateMitigationAction",
        "--action-name",
        name,
        "--role-arn",
        ROLE,
        "--action-params",
        json.dumps(params),
    )


def start(
    device: Device, task_id: str, target: dict[str, Any], *actions: str, extra: tuple[str, ...] = ()
) -> Any:
    return ok(
        device,
        "StartDetectMitigationActionsTask",
        "--task-id",
        task_id,
        "--target",
        json.dumps(target),
        "--actions",
        *actions,
        *extra,
    )


def executions(device: Device, task_id: str) -> list[dict[str, Any]]:
    answer = ok(device, "ListDetectMitigationActionsExecutions", "--task-id", task_id)
    for e in answer["actionsExecutions"]:
        assert e["status"] in EXECUTION_STATUSES
    return list(answer["actionsExecutions"])


def summary(device: Device, task_id: str) -> dict[str, Any]:
    return dict(
        ok(device, "DescribeDetectMitigationActionsTask", "--task-id", task_id)["taskSummary"]
    )


def dry_firewall(dry: bool) -> Firewall:
    # Whatever the task asks, the tests plan only: nothing reaches the kernel here.
    return Firewall(dry_run=True, allow=ALLOW)


def pending(
    device: Device, factory: Callable[[bool], Firewall] = dry_firewall, **given: Any
) -> list[Outcome]:
    cfg = load_config(str(device.config))
    with open_mitigation(cfg.state_dir) as store:
        return run_pending(store, cfg, factory, **given)


def _dump(db: Path) -> list[Any]:
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, sorted(map(repr, conn.execute(f"SELECT * FROM {t}")))) for t in sorted(tables)]


BLOCK = {"blockRemoteAddressParams": {"timeoutSeconds": 600}}
PORT = {"blockListeningPortParams": {"timeoutSeconds": 300}}
CERT = {"updateDeviceCertificateParams": {"action": "DEACTIVATE"}}


# -- actions -----------------------------------------------------------------------------


def test_actions_through_their_life(device: Device) -> None:
    made = create(device, "block", BLOCK)
    assert made["actionArn"] == "arn:edge-defender:iot::dev:mitigationaction/block"
    create(device, "cert", CERT)
    described = ok(device, "DescribeMitigationAction", "--action-name", "block")
    assert described["actionType"] == "BLOCK_REMOTE_ADDRESS"
    assert described["actionId"] == made["actionId"]
    assert described["actionParams"] == BLOCK and described["roleArn"] == ROLE
    updated = ok(
        device,
        "UpdateMitigationAction",
        "--action-name",
        "block",
        "--action-params",
        json.dumps(PORT),
    )
    assert updated["actionId"] == made["actionId"]
    changed = ok(device, "DescribeMitigationAction", "--action-name", "block")
    assert changed["actionType"] == "BLOCK_LISTENING_PORT"
    assert changed["lastModifiedDate"] >= changed["creationDate"]
    listed = ok(device, "ListMitigationActions")["actionIdentifiers"]
    assert [a["actionName"] for a in listed] == ["block", "cert"]
    typed = ok(device, "ListMitigationActions", "--action-type", "UPDATE_DEVICE_CERTIFICATE")
    assert [a["actionName"] for a in typed["actionIdentifiers"]] == ["cert"]
    page = ok(device, "ListMitigationActions", "--max-results", "1")
    rest = ok(device, "ListMitigationActions", "--next-token", page["nextToken"])
    assert [a["actionName"] for a in page["actionIdentifiers"] + rest["actionIdentifiers"]] == [
        "block",
        "cert",
    ]
    assert ok(device, "DeleteMitigationAction", "--action-name", "block") == {}
    assert ok(device, "DeleteMitigationAction", "--action-name", "block") == {}  # as AWS
    gone = call(device, "describe-mitigation-action", "--action-name", "block")
    assert gone.status == 1 and "no mitigation action 'block'" in gone.err
    assert (
        call(
            device,
            "create-mitigation-action",
            "--action-name",
            "cert",
            "--role-arn",
            ROLE,
            "--action-params",
            json.dumps(CERT),
        ).status
        == 1
    )


# -- tasks and executions -------------------------------------------------------------------


def test_one_execution_per_violation_and_action_and_how_each_ends(device: Device) -> None:
    for name, params in (("block", BLOCK), ("port", PORT), ("cert", CERT)):
        create(device, name, params)
    answer = start(device, "t1", {"violationIds": ["v-egress", "v-ports"]}, "block", "port", "cert")
    assert answer == {"taskId": "t1"}
    before = executions(device, "t1")
    assert [(e["violationId"], e["actionName"], e["status"]) for e in before] == [
        (v, a, "PENDING") for v in ("v-egress", "v-ports") for a in ("block", "port", "cert")
    ]
    assert summary(device, "t1")["taskStatus"] == "IN_PROGRESS"

    outcomes = pending(device)
    assert len(outcomes) == 6
    after = {(e["violationId"], e["actionName"]): e for e in executions(device, "t1")}
    blocked = after["v-egress", "block"]
    assert blocked["status"] == "SUCCESSFUL"
    assert blocked["message"] == "block for 600 s 198.51.100.7/32, 203.0.113.9/32"
    assert after["v-egress", "port"]["status"] == "SKIPPED"  # no listening port in it
    assert after["v-ports", "block"]["status"] == "SKIPPED"  # no address in it
    assert after["v-ports", "port"]["message"] == "block inbound for 300 s to tcp/2323"
    for violation in ("v-egress", "v-ports"):
        cloud = after[violation, "cert"]
        assert (cloud["status"], cloud["message"]) == ("SKIPPED", CLOUD_SKIP_REASON)
    for e in after.values():
        assert e["executionStartDate"] <= e["executionEndDate"]
    done = summary(device, "t1")
    assert done["taskStatus"] == "SUCCESSFUL" and done["taskEndTime"] >= done["taskStartTime"]
    assert done["taskStatistics"] == {"actionsExecuted": 2, "actionsSkipped": 4, "actionsFailed": 0}
    assert [a["name"] for a in done["actionsDefinition"]] == ["block", "port", "cert"]
    # The plan is nft's JSON: each offender with the action's timeout.
    with open_mitigation(device.root / "state") as store:
        detail = store.execution_detail("t1", "v-egress", "block")
    assert detail is not None
    elements = [
        c["add"]["element"]["elem"][0]["elem"]
        for plan in detail["plans"]
        for c in plan["nftables"]
        if "add" in c
        and "element" in c["add"]
        and c["add"]["element"]["name"] == "blocked_v4"
        and isinstance(c["add"]["element"]["elem"][0], dict)
        and "elem" in c["add"]["element"]["elem"][0]
    ]
    assert {(e["val"], e["timeout"]) for e in elements} == {
        ("198.51.100.7", 600),
        ("203.0.113.9", 600),
    }
    assert pending(device) == []  # nothing runs twice


def test_the_allowlist_is_never_blocked(device: Device) -> None:
    create(device, "block", BLOCK)
    create(
        device,
        "fixed",
        {
            "blockRemoteAddressParams": {
                "timeoutSeconds": 60,
                "cidrs": ["10.9.3.0/24", "198.51.100.1"],
            }
        },
    )
    start(device, "t1", {"violationIds": ["v-broker"]}, "block", "fixed")
    pending(device)
    by_action = {e["actionName"]: e for e in executions(device, "t1")}
    broker = by_action["block"]
    assert (broker["status"], broker["errorCode"]) == ("FAILED", "ALLOWLISTED")
    assert f"refused {BROKER}/32: {BROKER}/32 is allowlisted" in broker["message"]
    assert "never blocked" in broker["message"]
    # A fixed list: what may be blocked is, the allowlisted range is refused and named.
    fixed = by_action["fixed"]
    assert fixed["status"] == "FAILED"
    assert fixed["message"].startswith("block for 60 s 198.51.100.1/32; refused 10.9.3.0/24")
    assert summary(device, "t1")["taskStatus"] == "FAILED"


def test_a_firewall_that_cannot_run_fails_with_the_reason(device: Device) -> None:
    create(device, "block", BLOCK)
    start(device, "t1", {"violationIds": ["v-egress"]}, "block")
    (outcome,) = pending(device, lambda dry: Firewall(nft="/nonexistent/nft", allow=ALLOW))
    assert (outcome.status, outcome.error_code) == ("FAILED", "FIREWALL_ERROR")
    assert "nft not found (apt install nftables)" in (outcome.message or "")
    (execution,) = executions(device, "t1")
    assert execution["message"] == outcome.message


def test_a_dry_run_task_records_plans_and_does_nothing(device: Device, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    create(
        device,
        "hook",
        {"runHookParams": {"argv": ["/usr/bin/touch", str(mark)], "timeoutSeconds": 5}},
    )
    create(device, "tell", {"publishToTopicParams": {"topic": "things/{thing_name}/mitigation"}})
    create(device, "block", BLOCK)
    seen: list[bool] = []

    def factory(dry: bool) -> Firewall:
        seen.append(dry)
        return Firewall(nft="/nonexistent/nft", dry_run=dry, allow=ALLOW)

    start(
        device, "t1", {"violationIds": ["v-egress"]}, "hook", "tell", "block", extra=("--dry-run",)
    )
    pending(device, factory)
    messages = {e["actionName"]: (e["status"], e["message"]) for e in executions(device, "t1")}
    assert messages == {
        "hook": ("SUCCESSFUL", "dry run: would run /usr/bin/touch"),
        "tell": ("SUCCESSFUL", "dry run: would publish on things/dev/mitigation"),
        "block": ("SUCCESSFUL", "dry run: would block for 600 s 198.51.100.7/32, 203.0.113.9/32"),
    }
    assert seen == [True] and not mark.exists()
    with open_mitigation(device.root / "state") as store:
        assert publications(store) == []


def test_a_hook_gets_the_violation_on_stdin_without_a_shell(device: Device, tmp_path: Path) -> None:
    out = tmp_path / "hook.json"
    script = (
        "import json, os, sys; v = json.load(sys.stdin);"
        f" open({str(out)!r}, 'w').write("
        "json.dumps([v, os.environ['EDGE_DEFENDER_TASK_ID'], sys.argv[1]]))"
    )
    create(
        device,
        "hook",
        {
            "runHookParams": {
                "argv": [sys.executable, "-c", script, "$HOME;x"],
                "timeoutSeconds": 30,
            }
        },
    )
    start(device, "t1", {"violationIds": ["v-egress"]}, "hook")
    (outcome,) = pending(device)
    assert outcome.status == "SUCCESSFUL", outcome.message
    violation, task_id, arg = json.loads(out.read_text())
    assert violation == EGRESS | {"verificationState": "UNKNOWN"}
    assert (task_id, arg) == ("t1", "$HOME;x")  # passed as is: no shell expanded it


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody has reaped yet."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def test_a_failing_or_slow_hook_fails_with_the_reason(device: Device, tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('no route to pager\\n'); sys.exit(3)"
    create(
        device,
        "bad",
        {"runHookParams": {"argv": [sys.executable, "-c", code], "timeoutSeconds": 30}},
    )
    # It starts a child of its own: the timeout ends both (the hook's session).
    child = tmp_path / "child.pid"
    sleeper = (
        "import subprocess, sys, time;"
        " p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f" open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    create(
        device,
        "slow",
        {"runHookParams": {"argv": [sys.executable, "-c", sleeper], "timeoutSeconds": 1}},
    )
    create(device, "gone", {"runHookParams": {"argv": ["/nonexistent/hook"], "timeoutSeconds": 1}})
    start(device, "t1", {"violationIds": ["v-egress"]}, "bad", "slow", "gone")
    began = time.monotonic()
    outcomes = {o.action_name: o for o in pending(device)}
    assert time.monotonic() - began < 10
    assert (outcomes["bad"].error_code, outcomes["bad"].message) == (
        "HOOK_FAILED",
        f"{sys.executable}: exit status 3: no route to pager",
    )
    assert (outcomes["slow"].error_code, outcomes["slow"].message) == (
        "HOOK_TIMEOUT",
        f"{sys.executable} killed after 1 s",
    )
    assert outcomes["gone"].message == "/nonexistent/hook: No such file or directory"
    grandchild = int(child.read_text())
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)


def test_publish_leaves_a_message_for_the_daemon(device: Device) -> None:
    create(device, "tell", {"publishToTopicParams": {"topic": "things/{thing_name}/mitigation"}})
    start(device, "t1", {"violationIds": ["v-egress", "v-ports"]}, "tell")
    pending(device)
    with open_mitigation(device.root / "state") as store:
        messages = publications(store)
        assert [(m.topic, m.payload["violation"]["violationId"]) for m in messages] == [
            ("things/dev/mitigation", "v-egress"),
            ("things/dev/mitigation", "v-ports"),
        ]
        assert messages[0].payload["taskId"] == "t1"
        published(store, [m.id for m in messages])
        assert publications(store) == []


def test_isolation_keeps_the_resolvers_and_the_given_cidrs(device: Device, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# local\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver bogus\n")
    assert read_resolvers(resolv) == ["192.0.2.53", "fe80::1"]
    create(
        device,
        "cut",
        {"isolateDeviceParams": {"timeoutSeconds": 120, "keepCidrs": ["198.51.100.0/24"]}},
    )
    start(device, "t1", {"violationIds": ["v-egress"]}, "cut")
    (outcome,) = pending(device, resolv_conf=resolv)
    assert outcome.status == "SUCCESSFUL"
    assert outcome.message == (
        "isolate the device for 120 s, keeping 198.51.100.0/24, 192.0.2.53, fe80::1"
    )
    kept = [
        c["add"]["element"]
        for c in outcome.detail["plans"][0]["nftables"]
        if "add" in c and "element" in c["add"] and c["add"]["element"]["name"].startswith("keep_")
    ]
    assert {e["name"] for e in kept} == {"keep_v4", "keep_v6"}


def test_profile_targets_choose_by_range_activity_and_suppression(device: Device) -> None:
    create(device, "cert", CERT)

    def chosen(task_id: str, target: dict[str, Any], *extra: str) -> list[str]:
        start(device, task_id, target, "cert", extra=extra)
        return [e["violationId"] for e in executions(device, task_id)]

    window = json.dumps({"startTime": T0 - 2000, "endTime": T0 + 2.5})
    assert chosen(
        "r1", {"securityProfileName": EDGE}, "--violation-event-occurrence-range", window
    ) == [
        "v-old",
        "v-egress",
        "v-ports",
    ]
    assert chosen(
        "r2",
        {"securityProfileName": EDGE, "behaviorName": "egress"},
        "--violation-event-occurrence-range",
        window,
        "--include-suppressed-alerts",
    ) == ["v-old", "v-egress", "v-quiet"]
    assert chosen("r3", {"securityProfileName": EDGE}, "--include-only-active-violations") == [
        "v-egress",
        "v-ports",
        "v-broker",
    ]
    iso = json.dumps({"startTime": "2026-09-21T00:00:00", "endTime": T0 + 1.5})
    assert chosen(
        "r4",
        {"securityProfileName": EDGE},
        "--include-only-active-violations",
        "--violation-event-occurrence-range",
        iso,
    ) == ["v-egress", "v-ports"]
    described = summary(device, "r4")
    assert described["onlyActiveViolationsIncluded"] is True
    assert described["suppressedAlertsIncluded"] is False
    assert described["violationEventOccurrenceRange"]["endTime"] == T0 + 1.5
    assert chosen("r5", {"securityProfileName": "other"}, "--include-only-active-violations") == []
    assert summary(device, "r5")["taskStatus"] == "SUCCESSFUL"


def test_unknown_violations_and_actions_store_nothing(device: Device) -> None:
    create(device, "cert", CERT)
    before = _dump(device.db)
    done = call(
        device,
        "start-detect-mitigation-actions-task",
        "--task-id",
        "t1",
        "--target",
        '{"violationIds": ["v-nope"]}',
        "--actions",
        "cert",
    )
    assert done.status == 1 and "no violation v-nope in the history" in done.err
    done = call(
        device,
        "start-detect-mitigation-actions-task",
        "--task-id",
        "t1",
        "--target",
        '{"violationIds": ["v-old"]}',
        "--actions",
        "cert",
        "--include-only-active-violations",
    )
    assert done.status == 1 and "no violation v-old active" in done.err
    done = call(
        device,
        "start-detect-mitigation-actions-task",
        "--task-id",
        "t1",
        "--target",
        '{"violationIds": ["v-quiet"]}',
        "--actions",
        "cert",
    )
    assert done.status == 1 and "suppressed ones left out" in done.err
    done = call(
        device,
        "start-detect-mitigation-actions-task",
        "--task-id",
        "t1",
        "--target",
        '{"violationIds": ["v-egress"]}',
        "--actions",
        "cert",
        "nope",
    )
    assert done.status == 1 and "no mitigation action 'nope'" in done.err
    assert _dump(device.db) == before


def test_a_client_request_token_makes_one_task(device: Device) -> None:
    create(device, "cert", CERT)
    argv = ("--client-request-token", "tok-1")
    first = start(device, "t1", {"violationIds": ["v-egress"]}, "cert", extra=argv)
    before = _dump(device.db)
    again = start(device, "t1", {"violationIds": ["v-egress"]}, "cert", extra=argv)
    assert first == again == {"taskId": "t1"}
    assert _dump(device.db) == before
    other = call(
        device,
        "start-detect-mitigation-actions-task",
        "--task-id",
        "t1",
        "--target",
        '{"violationIds": ["v-ports"]}',
        "--actions",
        "cert",
        *argv,
    )
    assert other.status == 2
    assert "--client-request-token: 'tok-1' was used for task t1 with other parameters" in other.err
    taken = call(
        device,
        "start-detect-mitigation-actions-task",
        "--task-id",
        "t1",
        "--target",
        '{"violationIds": ["v-egress"]}',
        "--actions",
        "cert",
    )
    assert taken.status == 1 and "'t1' already exists" in taken.err
    assert _dump(device.db) == before


def test_a_cancel_from_another_process_stops_the_next_executions(device: Device) -> None:
    program = shutil.which("edge-defender", path=str(Path(sys.executable).parent))
    assert program is not None
    cancel = [
        program,
        "cancel-detect-mitigation-actions-task",
        "--task-id",
        "t1",
        "--config",
        str(device.config),
    ]
    create(device, "cancel", {"runHookParams": {"argv": cancel, "timeoutSeconds": 60}})
    create(device, "cert", CERT)
    start(device, "t1", {"violationIds": ["v-egress", "v-ports"]}, "cancel", "cert")
    outcomes = pending(device)
    assert [(o.violation_id, o.action_name, o.status) for o in outcomes] == [
        ("v-egress", "cancel", "SUCCESSFUL")
    ]
    statuses = [e["status"] for e in executions(device, "t1")]
    assert statuses == ["SUCCESSFUL", "CANCELED", "CANCELED", "CANCELED"]
    described = summary(device, "t1")
    assert described["taskStatus"] == "CANCELED"
    assert described["taskStatistics"] == {
        "actionsExecuted": 1,
        "actionsSkipped": 3,
        "actionsFailed": 0,
    }
    again = call(device, "cancel-detect-mitigation-actions-task", "--task-id", "t1")
    assert again.status == 2 and "only an IN_PROGRESS task can be canceled" in again.err


def test_should_stop_ends_the_run_between_executions(device: Device) -> None:
    create(device, "cert", CERT)
    start(device, "t1", {"violationIds": ["v-egress", "v-ports"]}, "cert")
    asked = iter([False, True])
    assert len(pending(device, should_stop=lambda: next(asked))) == 1
    assert [e["status"] for e in executions(device, "t1")] == ["SKIPPED", "PENDING"]
    assert len(pending(device)) == 1


def test_an_execution_left_by_a_dead_runner_fails(device: Device) -> None:
    create(device, "cert", CERT)
    start(device, "t1", {"violationIds": ["v-egress"]}, "cert")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open_mitigation(device.root / "state") as store:
        assert store.claim(dead.pid, T0) is not None
    assert pending(device) == []
    (execution,) = executions(device, "t1")
    assert (execution["status"], execution["errorCode"]) == ("FAILED", "INTERRUPTED")
    assert f"(pid {dead.pid}) ended" in execution["message"]
    assert summary(device, "t1")["taskStatus"] == "FAILED"


def test_tasks_and_executions_listed_by_time_and_thing(device: Device) -> None:
    create(device, "cert", CERT)
    for i in range(3):
        start(device, f"t{i}", {"violationIds": ["v-egress"]}, "cert")
    now = time.time()
    tasks = ok(
        device,
        "ListDetectMitigationActionsTasks",
        "--start-time",
        str(now - 60),
        "--end-time",
        str(now + 60),
        "--max-results",
        "2",
    )
    rest = ok(
        device,
        "ListDetectMitigationActionsTasks",
        "--start-time",
        str(now - 60),
        "--end-time",
        str(now + 60),
        "--next-token",
        tasks["nextToken"],
    )
    assert [t["taskId"] for t in tasks["tasks"] + rest["tasks"]] == ["t0", "t1", "t2"]
    by_thing = ok(
        device,
        "ListDetectMitigationActionsExecutions",
        "--thing-name",
        "dev",
        "--start-time",
        str(now - 60),
        "--end-time",
        str(now + 60),
    )
    assert len(by_thing["actionsExecutions"]) == 3
    none = ok(
        device,
        "ListDetectMitigationActionsExecutions",
        "--violation-id",
        "v-ports",
        "--start-time",
        str(now - 60),
        "--end-time",
        str(now + 60),
    )
    assert none == {"actionsExecutions": []}
    table = call(
        device, "list-detect-mitigation-actions-executions", "--task-id", "t0", "--output", "table"
    )
    assert table.status == 0 and "v-egress" in table.out and "PENDING" in table.out


GOOD_TARGET = '{"violationIds": ["v-egress"]}'
BAD_INPUT = [
    (
        [
            "create-mitigation-action",
            "--action-name",
            "a b",
            "--role-arn",
            ROLE,
            "--action-params",
            json.dumps(CERT),
        ],
        "--action-name: 'a b' does not match",
    ),
    (
        [
            "create-mitigation-action",
            "--action-name",
            "a",
            "--role-arn",
            "short",
            "--action-params",
            json.dumps(CERT),
        ],
        "--role-arn: must be 20-2048",
    ),
    (
        [
            "create-mitigation-action",
            "--action-name",
            "a",
            "--role-arn",
            ROLE,
            "--action-params",
            "{",
        ],
        "--action-params: not JSON",
    ),
    (
        [
            "create-mitigation-action",
            "--action-name",
            "a",
            "--role-arn",
            ROLE,
            "--action-params",
            "file:///nonexistent",
        ],
        "--action-params: cannot read /nonexistent",
    ),
    (
        [
            "create-mitigation-action",
            "--action-name",
            "a",
            "--role-arn",
            ROLE,
            "--action-params",
            '{"runHookParams": {"argv": ["sh"], "timeoutSeconds": 1}}',
        ],
        "--action-params: runHookParams.argv[0]",
    ),
    (["update-mitigation-action", "--action-name", "cert"], "--role-arn: nothing to update"),
    (
        ["update-mitigation-action", "--action-name", "cert", "--action-params", "{}"],
        "--action-params: must hold exactly one",
    ),
    (["describe-mitigation-action", "--action-name", "x" * 129], "--action-name: must be 1-128"),
    (["delete-mitigation-action", "--action-name", ""], "--action-name: must be 1-128"),
    (["list-mitigation-actions", "--action-type", "NOPE"], "--action-type"),
    (
        ["list-mitigation-actions", "--max-results", "251"],
        "--max-results: must be an integer from 1 to 250",
    ),
    (["list-mitigation-actions", "--next-token", "abc"], "--next-token"),
    (
        [
            "start-detect-mitigation-actions-task",
            "--task-id",
            "a b",
            "--target",
            GOOD_TARGET,
            "--actions",
            "cert",
        ],
        "--task-id: 'a b' does not match",
    ),
    (
        [
            "start-detect-mitigation-actions-task",
            "--task-id",
            "t",
            "--target",
            "[]",
            "--actions",
            "cert",
        ],
        "--target: must be a JSON object",
    ),
    (
        [
            "start-detect-mitigation-actions-task",
            "--task-id",
            "t",
            "--target",
            '{"securityProfileName": "edge"}',
            "--actions",
            "cert",
        ],
        "--violation-event-occurrence-range: is required",
    ),
    (
        [
            "start-detect-mitigation-actions-task",
            "--task-id",
            "t",
            "--target",
            GOOD_TARGET,
            "--actions",
            *"abcdef",
        ],
        "--actions: must hold 1-5",
    ),
    (
        [
            "start-detect-mitigation-actions-task",
            "--task-id",
            "t",
            "--target",
            GOOD_TARGET,
            "--actions",
            "cert",
            "--violation-event-occurrence-range",
            '{"startTime": "soon", "endTime": 1}',
        ],
        "--violation-event-occurrence-range: startTime",
    ),
    (
        [
            "start-detect-mitigation-actions-task",
            "--task-id",
            "t",
            "--target",
            GOOD_TARGET,
            "--actions",
            "cert",
            "--client-request-token",
            "a b",
        ],
        "--client-request-token",
    ),
    (["describe-detect-mitigation-actions-task", "--task-id", "a/b"], "--task-id"),
    (["cancel-detect-mitigation-actions-task", "--task-id", "ünï"], "--task-id"),
    (
        ["list-detect-mitigation-actions-tasks", "--start-time", "5", "--end-time", "4"],
        "--end-time: is before startTime",
    ),
    (["list-detect-mitigation-actions-tasks", "--end-time", "4"], "--start-time"),
    (["list-detect-mitigation-actions-executions"], "--start-time: is required"),
    (
        [
            "list-detect-mitigation-actions-executions",
            "--task-id",
            "t",
            "--start-time",
            "1",
            "--end-time",
            "2",
        ],
        "--task-id: give --task-id or",
    ),
    (
        ["list-detect-mitigation-actions-executions", "--task-id", "t", "--violation-id", "a_b"],
        "--violation-id: 'a_b' does not match",
    ),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT)
def test_bad_input_names_the_flag_and_changes_nothing(
    device: Device, argv: list[str], message: str
) -> None:
    create(device, "cert", CERT)
    before = _dump(device.db)
    done = call(device, *argv)
    assert done.status == 2, done.err
    assert message in done.err.strip().splitlines()[-1]
    assert _dump(device.db) == before


def test_no_history_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    bare = Device(tmp_path, config)
    create(bare, "cert", CERT)
    done = call(
        bare,
        "start-detect-mitigation-actions-task",
        "--task-id",
        "t",
        "--target",
        GOOD_TARGET,
        "--actions",
        "cert",
    )
    assert done.status == 1 and "no store at" in done.err


# -- one real block, in a network namespace of its own ----------------------------------------

NFT = shutil.which("nft") or shutil.which("nft", path="/usr/sbin")


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if os.geteuid() != 0 or NFT is None or shutil.which("ip") is None:
        pytest.skip("needs root, ip and nft")
    name = f"edmit{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    wrapper = tmp_path / "nft-in-ns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {name} {NFT} "$@"\n')
    wrapper.chmod(0o755)
    try:
        yield name, wrapper
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_a_real_block_reaches_the_kernel(device: Device, netns: tuple[str, Path]) -> None:
    _, wrapper = netns
    create(device, "block", {"blockRemoteAddressParams": {"timeoutSeconds": 30}})
    start(device, "t1", {"violationIds": ["v-egress"]}, "block")
    firewall = Firewall(nft=str(wrapper), allow=ALLOW)
    (outcome,) = pending(device, lambda dry: firewall)
    assert outcome.status == "SUCCESSFUL", outcome.message
    blocked = {e["cidr"]: e["timeout_s"] for e in firewall.state()["blocked"]}
    assert blocked == {"198.51.100.7/32": 30, "203.0.113.9/32": 30}

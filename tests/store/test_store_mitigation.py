"""mitigation.db on real files: actions, tasks recorded with one execution per violation
and action, AWS's idempotency of a client request token, claiming (never twice, even
across connections), cancel, task end and statistics, the outbox, pages and tokens."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.core.audit_model import InvalidRequest
from agent.core.mitigation_model import check_task_request
from agent.store.mitigation import (
    RETENTION_S,
    MitigationStore,
    ResourceAlreadyExists,
    ResourceNotFound,
    mitigation_path,
    open_mitigation,
)

ROLE = "arn:aws:iam::123456789012:role/mitigation"
BLOCK = {"blockRemoteAddressParams": {"timeoutSeconds": 600}}
CERT = {"updateDeviceCertificateParams": {"action": "DEACTIVATE"}}


@pytest.fixture
def store(tmp_path: Path) -> MitigationStore:
    with open_mitigation(tmp_path / "state") as s:
        yield s


def _dump(path: Path) -> list[Any]:
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, sorted(map(repr, conn.execute(f"SELECT * FROM {t}")))) for t in sorted(tables)]


def _violation(vid: str, thing: str = "dev") -> dict[str, Any]:
    return {
        "violationId": vid,
        "thingName": thing,
        "securityProfileName": "p",
        "behavior": {"name": "b"},
        "metricValue": {"count": 1},
        "violationEventType": "in-alarm",
        "violationEventTime": 10.0,
    }


def _definition(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "id": f"id-{name}", "roleArn": ROLE, "actionParams": params}


def _request(task_id: str = "t1", token: str = "tok1", **given: Any) -> dict[str, Any]:
    return check_task_request(
        task_id=task_id,
        target=given.pop("target", {"violationIds": ["v-1", "v-2"]}),
        actions=given.pop("actions", ["block", "cert"]),
        client_request_token=token,
        **given,
    )


def _start(
    store: MitigationStore, request: dict[str, Any] | None = None, now: float = 100.0
) -> bool:
    request = request or _request()
    defs = [_definition(n, BLOCK if n == "block" else CERT) for n in request["actions"]]
    return store.start_task(request, defs, [_violation("v-1"), _violation("v-2", "gw")], now)


def test_the_file_is_private(tmp_path: Path) -> None:
    with open_mitigation(tmp_path / "state"):
        pass
    path = mitigation_path(tmp_path / "state")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_actions_created_described_updated_deleted(store: MitigationStore) -> None:
    store.create_action("block", "id-1", ROLE, BLOCK, 5.0)
    with pytest.raises(ResourceAlreadyExists, match="'block' already exists"):
        store.create_action("block", "id-2", ROLE, CERT, 6.0)
    assert store.action("block") == {
        "actionName": "block",
        "actionType": "BLOCK_REMOTE_ADDRESS",
        "actionId": "id-1",
        "roleArn": ROLE,
        "actionParams": BLOCK,
        "creationDate": 5.0,
        "lastModifiedDate": 5.0,
    }
    assert store.update_action("block", 9.0, params=CERT) == "id-1"
    changed = store.action("block")
    assert (changed["actionType"], changed["roleArn"], changed["lastModifiedDate"]) == (
        "UPDATE_DEVICE_CERTIFICATE",
        ROLE,
        9.0,
    )
    with pytest.raises(ResourceNotFound):
        store.update_action("nope", 9.0, role_arn=ROLE)
    assert store.delete_action("block") is True
    assert store.delete_action("block") is False
    with pytest.raises(ResourceNotFound, match="no mitigation action 'block'"):
        store.action("block")


def test_actions_listed_by_name_in_pages_and_by_type(store: MitigationStore) -> None:
    for i in range(7):
        store.create_action(f"a{i}", f"id{i}", ROLE, BLOCK if i % 2 else CERT, float(i))
    seen, token = [], None
    while True:
        page, token = store.list_actions(max_results=3, next_token=token)
        seen += [name for name, _ in page]
        if token is None:
            break
    assert seen == [f"a{i}" for i in range(7)]
    page, token = store.list_actions(action_type="BLOCK_REMOTE_ADDRESS", max_results=2)
    assert [n for n, _ in page] == ["a1", "a3"] and token is not None
    page, token = store.list_actions(action_type="BLOCK_REMOTE_ADDRESS", next_token=token)
    assert [n for n, _ in page] == ["a5"] and token is None
    with pytest.raises(InvalidRequest, match="nextToken"):
        store.list_actions(next_token="forged")
    with pytest.raises(InvalidRequest, match="maxResults"):
        store.list_actions(max_results=0)


def test_a_task_has_one_pending_execution_per_violation_and_action(store: MitigationStore) -> None:
    assert _start(store) is True
    executions = store.list_executions(task_id="t1")["actionsExecutions"]
    assert [
        (e["violationId"], e["actionName"], e["thingName"], e["status"]) for e in executions
    ] == [
        ("v-1", "block", "dev", "PENDING"),
        ("v-1", "cert", "dev", "PENDING"),
        ("v-2", "block", "gw", "PENDING"),
        ("v-2", "cert", "gw", "PENDING"),
    ]
    summary = store.describe_task("t1")["taskSummary"]
    assert summary["taskStatus"] == "IN_PROGRESS" and "taskEndTime" not in summary
    assert summary["actionsDefinition"][0]["actionParams"] == BLOCK
    assert summary["taskStatistics"] == {
        "actionsExecuted": 0,
        "actionsSkipped": 0,
        "actionsFailed": 0,
    }


def test_a_token_again_is_the_same_task_and_other_parameters_are_refused(
    store: MitigationStore,
) -> None:
    _start(store)
    before = _dump(store.path)
    assert _start(store, now=200.0) is False
    assert _dump(store.path) == before
    with pytest.raises(InvalidRequest, match="'tok1' was used for task t1 with other parameters"):
        _start(store, _request(task_id="t2"))
    with pytest.raises(InvalidRequest, match="clientRequestToken"):
        _start(store, _request(actions=["block"]))
    with pytest.raises(ResourceAlreadyExists, match="'t1' already exists"):
        _start(store, _request(token="tok2"))
    assert _dump(store.path) == before


def test_a_task_without_violations_ends_at_once(store: MitigationStore) -> None:
    request = _request(target={"securityProfileName": "p"}, include_only_active_violations=True)
    assert store.start_task(request, [_definition("block", BLOCK)], [], 50.0)
    summary = store.describe_task("t1")["taskSummary"]
    assert (summary["taskStatus"], summary["taskEndTime"]) == ("SUCCESSFUL", 50.0)
    assert store.claim(1, 51.0) is None


def test_claims_run_in_order_and_the_task_ends_with_the_last(store: MitigationStore) -> None:
    _start(store)
    statuses = iter(["SUCCESSFUL", "SKIPPED", "FAILED", "SUCCESSFUL"])
    ends = []
    while (claimed := store.claim(4242, 101.0)) is not None:
        assert claimed.dry_run is False
        assert claimed.violation["violationId"] == claimed.violation_id
        assert claimed.action["name"] == claimed.action_name
        ends.append(store.finish(claimed.execution_id, next(statuses), 102.0, message="m"))
    assert ends == [None, None, None, "FAILED"]
    summary = store.describe_task("t1")["taskSummary"]
    assert (summary["taskStatus"], summary["taskEndTime"]) == ("FAILED", 102.0)
    assert summary["taskStatistics"] == {
        "actionsExecuted": 2,
        "actionsSkipped": 1,
        "actionsFailed": 1,
    }
    first = store.list_executions(task_id="t1")["actionsExecutions"][0]
    assert (first["executionStartDate"], first["executionEndDate"], first["message"]) == (
        101.0,
        102.0,
        "m",
    )


def test_two_connections_never_claim_the_same_execution(tmp_path: Path) -> None:
    with open_mitigation(tmp_path) as one, open_mitigation(tmp_path) as two:
        _start(one)
        taken = []
        for store in (one, two, one, two, one):
            claimed = store.claim(1, 101.0)
            if claimed is not None:
                taken.append(claimed.execution_id)
        assert len(taken) == 4 and len(set(taken)) == 4


def test_cancel_stops_pending_executions(store: MitigationStore) -> None:
    _start(store)
    running = store.claim(1, 101.0)
    assert running is not None
    store.cancel_task("t1", 103.0)
    assert store.claim(1, 104.0) is None
    # The one running when the cancel came still records how it ended.
    assert store.finish(running.execution_id, "SUCCESSFUL", 105.0) is None
    statuses = [e["status"] for e in store.list_executions(task_id="t1")["actionsExecutions"]]
    assert statuses == ["SUCCESSFUL", "CANCELED", "CANCELED", "CANCELED"]
    summary = store.describe_task("t1")["taskSummary"]
    assert (summary["taskStatus"], summary["taskEndTime"]) == ("CANCELED", 103.0)
    assert summary["taskStatistics"] == {
        "actionsExecuted": 1,
        "actionsSkipped": 3,
        "actionsFailed": 0,
    }
    with pytest.raises(InvalidRequest, match="task t1 is CANCELED: only an IN_PROGRESS"):
        store.cancel_task("t1", 106.0)
    with pytest.raises(ResourceNotFound):
        store.cancel_task("nope", 106.0)


def test_the_outbox_is_written_with_the_execution(store: MitigationStore) -> None:
    _start(store)
    claimed = store.claim(1, 101.0)
    assert claimed is not None
    store.finish(claimed.execution_id, "SUCCESSFUL", 102.0, publish=("a/b", {"x": 1}))
    (message,) = store.publications()
    assert (message.topic, message.payload) == ("a/b", {"x": 1})
    store.published([message.id])
    assert store.publications() == []


def test_tasks_and_executions_listed_in_pages(store: MitigationStore) -> None:
    for i in range(5):
        _start(store, _request(task_id=f"t{i}", token=f"k{i}"), now=100.0 + i)
    answer = store.list_tasks(101.0, 103.0, max_results=2)
    assert [t["taskId"] for t in answer["tasks"]] == ["t1", "t2"]
    answer = store.list_tasks(101.0, 103.0, max_results=2, next_token=answer["nextToken"])
    assert [t["taskId"] for t in answer["tasks"]] == ["t3"] and "nextToken" not in answer
    by_thing = store.list_executions(thing_name="gw", start_time=102.0, end_time=104.0)
    assert {(e["taskId"], e["thingName"]) for e in by_thing["actionsExecutions"]} == {
        (t, "gw") for t in ("t2", "t3", "t4")
    }
    by_violation = store.list_executions(violation_id="v-1", max_results=3)
    assert len(by_violation["actionsExecutions"]) == 3
    rest = store.list_executions(violation_id="v-1", next_token=by_violation["nextToken"])
    assert len(rest["actionsExecutions"]) == 7
    with pytest.raises(InvalidRequest, match="nextToken"):
        store.list_executions(next_token=by_violation["nextToken"] + "x")


def test_tasks_that_ended_long_ago_are_pruned_with_their_executions(
    store: MitigationStore,
) -> None:
    _start(store, now=100.0)
    store.cancel_task("t1", 200.0)
    _start(store, _request(task_id="t2", token="k2"), now=150.0)  # still IN_PROGRESS
    assert store.prune(200.0 + RETENTION_S) == 0
    assert store.prune(201.0 + RETENTION_S) == 1
    with pytest.raises(ResourceNotFound):
        store.describe_task("t1")
    assert store.list_executions(task_id="t1") == {"actionsExecutions": []}
    assert store.describe_task("t2")["taskSummary"]["taskStatus"] == "IN_PROGRESS"

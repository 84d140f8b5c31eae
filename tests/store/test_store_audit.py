"""The Audit store on real SQLite files: tasks and their checks, findings with every
filter and page, suppressions, configuration and scheduled audits, retention, tokens,
cancels from a second connection, file modes."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from agent.core.audit import Noncompliance
from agent.core.audit_model import InvalidRequest, completed_details, make_finding
from agent.store.audit import (
    AuditStore,
    ResourceAlreadyExists,
    ResourceNotFound,
    audit_path,
    open_audit,
)
from agent.store.db import StoreUnavailable

T0 = 1_772_625_600.0  # 2026-03-04T12:00:00Z
DAY = 86400.0
CERT_ID = "cd" * 32
EXPIRING = "DEVICE_CERTIFICATE_EXPIRING_CHECK"
PERMS = "KEY_FILE_PERMISSIONS_CHECK"


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with open_audit(tmp_path / "state") as s:
        yield s


def _findings(
    task_id: str, start: float, check: str, paths: list[str], suppressed: Collection[str]
) -> list[dict[str, Any]]:
    return [
        make_finding(
            task_id=task_id,
            task_start=start,
            finding_time=start + 1,
            check_name=check,
            severity="HIGH",
            found=Noncompliance("DEVICE_FILE", {"filePath": p}, "FILE_READABLE", "too open"),
            index=i,
            suppressed=p in suppressed,
        )
        for i, p in enumerate(paths)
    ]


def _task(
    store: AuditStore,
    task_id: str,
    start: float,
    paths: list[str],
    suppressed: Collection[str] = (),
    task_type: str = "ON_DEMAND_AUDIT_TASK",
) -> list[dict[str, Any]]:
    store.begin_task(task_id, start, task_type, [PERMS, EXPIRING])
    found = _findings(task_id, start, PERMS, paths, suppressed)
    assert store.record_check(task_id, PERMS, completed_details(found), found)
    assert store.record_check(task_id, EXPIRING, completed_details([]), [])
    assert store.end_task(task_id) == "COMPLETED"
    return found


def test_a_separate_private_file(tmp_path: Path, store: AuditStore) -> None:
    path = audit_path(tmp_path / "state")
    assert store.path == path and path.name == "audit.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_task_life_and_describe(store: AuditStore) -> None:
    store.begin_task("t1", T0, "SCHEDULED_AUDIT_TASK", [PERMS, EXPIRING], scheduled_name="nightly")
    running = store.describe_task("t1")
    assert running["taskStatus"] == "IN_PROGRESS"
    assert running["taskStatistics"]["inProgressChecks"] == 2
    found = _findings("t1", T0, PERMS, ["/a", "/b"], {"/b"})
    assert store.record_check("t1", PERMS, completed_details(found), found)
    halfway = store.describe_task("t1")
    assert halfway["taskStatistics"]["inProgressChecks"] == 1
    assert halfway["auditDetails"][PERMS]["nonCompliantResourcesCount"] == 2
    assert store.record_check("t1", EXPIRING, {"checkRunStatus": "FAILED", "message": "no"}, [])
    assert store.end_task("t1") == "COMPLETED"
    done = store.describe_task("t1")
    assert done == {
        "taskStatus": "COMPLETED",
        "taskType": "SCHEDULED_AUDIT_TASK",
        "taskStartTime": T0,
        "taskStatistics": {
            "totalChecks": 2,
            "inProgressChecks": 0,
            "waitingForDataCollectionChecks": 0,
            "compliantChecks": 0,
            "nonCompliantChecks": 1,
            "failedChecks": 1,
            "canceledChecks": 0,
        },
        "scheduledAuditName": "nightly",
        "auditDetails": {
            PERMS: {
                "checkRunStatus": "COMPLETED_NON_COMPLIANT",
                "checkCompliant": False,
                "nonCompliantResourcesCount": 2,
                "suppressedNonCompliantResourcesCount": 1,
            },
            EXPIRING: {"checkRunStatus": "FAILED", "message": "no"},
        },
    }
    with pytest.raises(ResourceNotFound, match="no audit task 'nope'"):
        store.describe_task("nope")


def test_cancel_from_another_connection(tmp_path: Path, store: AuditStore) -> None:
    store.begin_task("t1", T0, "ON_DEMAND_AUDIT_TASK", [PERMS, EXPIRING])
    with open_audit(tmp_path / "state") as other:
        other.cancel_task("t1")
    found = _findings("t1", T0, PERMS, ["/a"], set())
    assert not store.record_check("t1", PERMS, completed_details(found), found)
    assert store.end_task("t1") == "CANCELED"
    described = store.describe_task("t1")
    assert described["taskStatus"] == "CANCELED"
    assert described["taskStatistics"]["canceledChecks"] == 2
    assert store.list_findings(task_id="t1") == {"findings": []}
    with pytest.raises(InvalidRequest) as e:
        store.cancel_task("t1")
    assert e.value.param == "taskId" and "is CANCELED" in e.value.message
    with pytest.raises(ResourceNotFound):
        store.cancel_task("t2")


def test_fail_task(store: AuditStore) -> None:
    store.begin_task("t1", T0, "ON_DEMAND_AUDIT_TASK", [PERMS, EXPIRING], runner_pid=123)
    assert store.in_progress_tasks() == [("t1", 123)]
    store.record_check("t1", PERMS, completed_details([]), [])
    store.fail_task("t1", "interrupted")
    described = store.describe_task("t1")
    assert described["taskStatus"] == "FAILED"
    assert described["auditDetails"][PERMS]["checkRunStatus"] == "COMPLETED_COMPLIANT"
    assert described["auditDetails"][EXPIRING] == {
        "checkRunStatus": "FAILED",
        "message": "interrupted",
    }
    assert store.in_progress_tasks() == []


def test_list_tasks_filters_and_pages(store: AuditStore) -> None:
    for i in range(7):
        kind = "SCHEDULED_AUDIT_TASK" if i % 2 else "ON_DEMAND_AUDIT_TASK"
        _task(store, f"t{i}", T0 + i * 60, [], task_type=kind)
    store.begin_task("t7", T0 + 420, "ON_DEMAND_AUDIT_TASK", [PERMS])
    everything = store.list_tasks(T0, T0 + 1000)["tasks"]
    assert [t["taskId"] for t in everything] == [f"t{i}" for i in range(8)]
    assert everything[7] == {
        "taskId": "t7",
        "taskStatus": "IN_PROGRESS",
        "taskType": "ON_DEMAND_AUDIT_TASK",
    }
    assert len(store.list_tasks(T0 + 60, T0 + 120)["tasks"]) == 2  # both ends included
    scheduled = store.list_tasks(T0, T0 + 1000, task_type="SCHEDULED_AUDIT_TASK")["tasks"]
    assert [t["taskId"] for t in scheduled] == ["t1", "t3", "t5"]
    running = store.list_tasks(T0, T0 + 1000, task_status="IN_PROGRESS")["tasks"]
    assert [t["taskId"] for t in running] == ["t7"]
    listed, token = [], None
    while True:
        page = store.list_tasks(T0, T0 + 1000, max_results=3, next_token=token)
        listed += page["tasks"]
        token = page.get("nextToken")
        if token is None:
            break
    assert listed == everything


def test_list_findings_filters(store: AuditStore) -> None:
    first = _task(store, "t1", T0, ["/etc/a", "/etc/b"], {"/etc/b"})
    second = _task(store, "t2", T0 + DAY, ["/etc/a"])
    assert store.list_findings(task_id="t1")["findings"] == first
    assert store.list_findings(task_id="t2")["findings"] == second
    assert store.list_findings(start_time=T0, end_time=T0 + DAY + 1)["findings"] == first + second
    assert store.list_findings(start_time=T0 + 2, end_time=T0 + DAY + 1)["findings"] == second
    only = store.list_findings(task_id="t1", list_suppressed_findings=True)["findings"]
    assert only == [first[1]]
    others = store.list_findings(task_id="t1", list_suppressed_findings=False)["findings"]
    assert others == [first[0]]
    by_resource = store.list_findings(
        start_time=T0, end_time=T0 + 2 * DAY, resource_identifier={"filePath": "/etc/a"}
    )
    assert by_resource["findings"] == [first[0], second[0]]
    assert store.list_findings(task_id="t1", check_name=EXPIRING) == {"findings": []}
    assert store.list_findings(task_id="t1", check_name=PERMS)["findings"] == first


def test_findings_page_with_tokens_and_forged_tokens(store: AuditStore) -> None:
    found = _task(store, "t1", T0, [f"/f{i}" for i in range(9)])
    listed, token, pages = [], None, 0
    while True:
        page = store.list_findings(task_id="t1", max_results=4, next_token=token)
        pages += 1
        listed += page["findings"]
        token = page.get("nextToken")
        if token is None:
            break
    assert (pages, listed) == (3, found)
    tasks_token = store.list_tasks(0, T0 + 1, max_results=1)
    for forged in [
        "Zm9v",
        "not base64!",
        "x" * 5000,
        "WyJmaW5kaW5ncyIsTmFOXQ",
        "WyJmaW5kaW5ncyIsMS41XQ",
    ]:
        with pytest.raises(InvalidRequest) as e:
            store.list_findings(task_id="t1", next_token=forged)
        assert e.value.param == "nextToken", forged
    assert "nextToken" not in tasks_token  # one task: no second page
    for bad in (0, 251, True):
        with pytest.raises(InvalidRequest) as e:
            store.list_findings(task_id="t1", max_results=bad)
        assert e.value.param == "maxResults"


def test_retention_90_days(store: AuditStore) -> None:
    _task(store, "old", T0, ["/a"])
    _task(store, "new", T0 + 60 * DAY, ["/a"])
    store.begin_task("stuck", T0, "ON_DEMAND_AUDIT_TASK", [PERMS])
    store.prune(T0 + 90 * DAY + 1)
    with pytest.raises(ResourceNotFound):
        store.describe_task("old")
    assert store.list_findings(task_id="old") == {"findings": []}
    assert len(store.list_findings(task_id="new")["findings"]) == 1
    assert store.describe_task("stuck")["taskStatus"] == "IN_PROGRESS"  # its runner decides
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM findings").fetchone()[0] == 1


def test_suppressions(store: AuditStore) -> None:
    cert = {"deviceCertificateId": CERT_ID}
    store.create_suppression(EXPIRING, cert, T0 + DAY, "rotating", "tok-1", T0)
    # The same call again is a no-op; another suppression of it is refused.
    store.create_suppression(EXPIRING, cert, T0 + DAY, "rotating", "tok-1", T0)
    with pytest.raises(ResourceAlreadyExists):
        store.create_suppression(EXPIRING, cert, None, None, "tok-2", T0)
    with pytest.raises(InvalidRequest) as e:
        store.create_suppression(PERMS, {"filePath": "/k"}, None, None, "tok-1", T0)
    assert e.value.param == "clientRequestToken"
    store.create_suppression(PERMS, {"filePath": "/k"}, None, None, "tok-3", T0)
    assert store.describe_suppression(EXPIRING, cert, T0) == {
        "checkName": EXPIRING,
        "resourceIdentifier": cert,
        "expirationDate": T0 + DAY,
        "suppressIndefinitely": False,
        "description": "rotating",
    }
    assert store.suppressed_resources(T0) == {
        (EXPIRING, '{"deviceCertificateId":"' + CERT_ID + '"}'),
        (PERMS, '{"filePath":"/k"}'),
    }
    ascending = store.list_suppressions(T0)["suppressions"]
    assert [s["checkName"] for s in ascending] == [EXPIRING, PERMS]  # no expiry: last
    descending = store.list_suppressions(T0, ascending_order=False)["suppressions"]
    assert descending == ascending[::-1]
    assert store.list_suppressions(T0, check_name=PERMS)["suppressions"] == [ascending[1]]
    assert store.list_suppressions(T0, resource_identifier=cert)["suppressions"] == [ascending[0]]
    # Expired: no longer in force, described, listed; then pruned.
    later = T0 + DAY
    assert store.suppressed_resources(later) == {(PERMS, '{"filePath":"/k"}')}
    with pytest.raises(ResourceNotFound):
        store.describe_suppression(EXPIRING, cert, later)
    assert len(store.list_suppressions(later)["suppressions"]) == 1
    store.update_suppression(PERMS, {"filePath": "/k"}, later, expiration=later + 5)
    assert (
        store.describe_suppression(PERMS, {"filePath": "/k"}, later)["expirationDate"] == later + 5
    )
    store.update_suppression(PERMS, {"filePath": "/k"}, later, description="why")
    kept = store.describe_suppression(PERMS, {"filePath": "/k"}, later)
    assert (kept["expirationDate"], kept["description"]) == (later + 5, "why")
    store.update_suppression(PERMS, {"filePath": "/k"}, later, indefinitely=True)
    assert store.describe_suppression(PERMS, {"filePath": "/k"}, later)["suppressIndefinitely"]
    with pytest.raises(ResourceNotFound):
        store.update_suppression(EXPIRING, cert, later, description="x")
    assert store.delete_suppression(PERMS, {"filePath": "/k"})
    assert not store.delete_suppression(PERMS, {"filePath": "/k"})
    assert store.list_suppressions(later) == {"suppressions": []}


def test_suppressions_page(store: AuditStore) -> None:
    for i in range(7):
        expiry = None if i % 3 == 0 else T0 + i
        store.create_suppression(PERMS, {"filePath": f"/f{i}"}, expiry, None, f"t{i}", T0)
    for ascending in (True, False):
        whole = store.list_suppressions(T0, ascending_order=ascending)["suppressions"]
        listed, token = [], None
        while True:
            page = store.list_suppressions(
                T0, ascending_order=ascending, max_results=2, next_token=token
            )
            listed += page["suppressions"]
            token = page.get("nextToken")
            if token is None:
                break
        assert listed == whole and len(whole) == 7


def test_account_configuration_and_scheduled_audits(store: AuditStore) -> None:
    assert store.account_configuration() == {}
    store.put_account_configuration({"roleArn": "arn:aws:iam::123456789012:role/x"})
    assert store.account_configuration() == {"roleArn": "arn:aws:iam::123456789012:role/x"}
    body = {"frequency": "DAILY", "targetCheckNames": [PERMS]}
    store.create_scheduled_audit("nightly", body, T0)
    with pytest.raises(ResourceAlreadyExists):
        store.create_scheduled_audit("nightly", body, T0)
    assert store.scheduled_audit("nightly") == (body, T0, None)
    store.begin_task("t1", T0 + 5, "SCHEDULED_AUDIT_TASK", [PERMS], scheduled_name="nightly")
    assert store.scheduled_audit("nightly") == (body, T0, T0 + 5)
    weekly = {"frequency": "WEEKLY", "dayOfWeek": "MON", "targetCheckNames": [PERMS]}
    store.update_scheduled_audit("nightly", weekly)
    assert store.scheduled_audits() == [("nightly", weekly, T0, T0 + 5)]
    for i in range(5):
        store.create_scheduled_audit(f"s{i}", body, T0)
    page, token = store.list_scheduled_audits(max_results=4)
    assert [n for n, _ in page] == ["nightly", "s0", "s1", "s2"] and token is not None
    page, token = store.list_scheduled_audits(max_results=4, next_token=token)
    assert [n for n, _ in page] == ["s3", "s4"] and token is None
    store.delete_scheduled_audit("s0")
    for call in (store.delete_scheduled_audit, store.scheduled_audit):
        with pytest.raises(ResourceNotFound):
            call("s0")
    with pytest.raises(ResourceNotFound):
        store.update_scheduled_audit("s0", body)


def test_a_failed_write_changes_nothing(tmp_path: Path, store: AuditStore) -> None:
    store.begin_task("t1", T0, "ON_DEMAND_AUDIT_TASK", [PERMS])
    found = _findings("t1", T0, PERMS, ["/a"], set())
    # Another connection holds the write lock past the busy timeout.
    blocker = sqlite3.connect(store.path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        store._conn.execute("PRAGMA busy_timeout=50")
        with pytest.raises(StoreUnavailable, match="locked"):
            store.record_check("t1", PERMS, completed_details(found), found)
    finally:
        blocker.rollback()
        blocker.close()
    assert store.list_findings(task_id="t1") == {"findings": []}
    assert store.describe_task("t1")["auditDetails"][PERMS]["checkRunStatus"] == "IN_PROGRESS"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a file for another user")
def test_root_gives_a_new_file_to_the_state_dirs_owner(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 4242, 4242)
    with open_audit(state):
        pass
    assert (audit_path(state).stat().st_uid, audit_path(state).stat().st_gid) == (4242, 4242)

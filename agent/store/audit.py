"""The Audit store (state_dir/audit.db): audit tasks with their check details, findings
(kept 90 days, as AWS keeps them), suppressions, the account audit configuration and
scheduled audits.

A file of its own rather than tables in agent.db: the history is one connection owned
by the daemon's cycle thread and written every cycle, while audit rows are written by
the verbs (a person running start-on-demand-audit-task, create-audit-suppression...)
and by the daemon's audit thread, each on its own connection. Apart, an audit never
waits on the cycle's write lock nor the cycle on an audit's, the history's schema and
retention stay the lead's, and a damaged audit file is moved aside without touching
the violation history. Same patterns as agent.db (agent.store.db): WAL, synchronous=FULL,
versioned schema, private modes, faults as StoreUnavailable naming the file; each
change is one transaction, so a kill leaves all of it or none.

Findings and tasks are kept as AWS JSON next to indexed columns for the filters of
ListAuditFindings / ListAuditTasks. A task's auditDetails are one JSON map rewritten as
each check finishes, in the same transaction as that check's findings.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.core.audit_model import (
    DEFAULT_MAX_RESULTS,
    RETENTION_S,
    InvalidRequest,
    canceled_details,
    check_max_results,
    final_status,
    identifier_key,
    suppression_shape,
    task_statistics,
)
from agent.logs import kv
from agent.store.db import (
    Store,
    StoreError,
    counted,
    decode_token,
    encode_token,
    give_to_dir_owner,
)
from agent.store.paths import audit_path

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY,
        start_time REAL NOT NULL,
        task_type TEXT NOT NULL,
        status TEXT NOT NULL,
        scheduled_name TEXT,
        runner_pid INTEGER,  -- the process running it, to find a task left by a crash
        details TEXT NOT NULL  -- auditDetails, JSON
    );
    CREATE INDEX tasks_start ON tasks (start_time, task_id);
    CREATE TABLE findings (
        id INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
        check_name TEXT NOT NULL,
        finding_time REAL NOT NULL,
        resource TEXT NOT NULL,  -- identifier_key of its resourceIdentifier
        suppressed INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX findings_task ON findings (task_id, id);
    CREATE INDEX findings_time ON findings (finding_time, id);
    CREATE TABLE suppressions (
        check_name TEXT NOT NULL,
        resource TEXT NOT NULL,
        expiration REAL,  -- NULL: suppressed indefinitely
        description TEXT,
        token TEXT NOT NULL UNIQUE,
        PRIMARY KEY (check_name, resource)
    );
    CREATE TABLE account (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE scheduled_audits (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL,  -- frequency, dayOfWeek or dayOfMonth, targetCheckNames
        created REAL NOT NULL,
        last_run REAL
    );
    """,
)
_ACCOUNT = "configuration"
# Sorts after every expiry: suppressions without one come last in ascending order.
_NEVER = 1e300


class ResourceNotFound(StoreError):
    """AWS's ResourceNotFoundException: no task, suppression or scheduled audit so named."""


class ResourceAlreadyExists(StoreError):
    """AWS's ResourceAlreadyExistsException."""


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class AuditStore(Store):
    """audit.db on one connection (one thread; see agent.store.db.Store for faults)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        super().__init__(path, MIGRATIONS, create=create, incremental_vacuum=True)

    # -- tasks ----------------------------------------------------------------------

    def begin_task(
        self,
        task_id: str,
        start_time: float,
        task_type: str,
        check_names: Sequence[str],
        *,
        scheduled_name: str | None = None,
        runner_pid: int | None = None,
    ) -> None:
        """Record a task IN_PROGRESS with each check IN_PROGRESS; a scheduled one also
        marks its scheduled audit as run at `start_time`, in the same transaction."""
        details = {name: {"checkRunStatus": "IN_PROGRESS"} for name in check_names}
        with self._transaction(f"starting audit task {task_id}") as conn:
            conn.execute(
                "INSERT INTO tasks (task_id, start_time, task_type, status, scheduled_name,"
                " runner_pid, details) VALUES (?, ?, ?, 'IN_PROGRESS', ?, ?, ?)",
                (task_id, start_time, task_type, scheduled_name, runner_pid, _dumps(details)),
            )
            if scheduled_name is not None:
                conn.execute(
                    "UPDATE scheduled_audits SET last_run = ? WHERE name = ?",
                    (start_time, scheduled_name),
                )

    def _task_row(self, conn: sqlite3.Connection, task_id: str) -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT start_time, task_type, status, scheduled_name, details FROM tasks"
            " WHERE task_id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            raise ResourceNotFound(f"no audit task {task_id!r} (tasks are kept 90 days)")
        return tuple(row)

    def record_check(
        self,
        task_id: str,
        check_name: str,
        details: Mapping[str, Any],
        findings: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Store one check's details and findings. False, storing nothing, when the
        task is no longer IN_PROGRESS (it was canceled meanwhile)."""
        with self._transaction(f"recording {counted(len(findings), 'finding')}") as conn:
            _, _, status, _, body = self._task_row(conn, task_id)
            if status != "IN_PROGRESS":
                return False
            conn.executemany(
                "INSERT INTO findings (task_id, check_name, finding_time, resource,"
                " suppressed, body) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        task_id,
                        check_name,
                        f["findingTime"],
                        identifier_key(f["nonCompliantResource"]["resourceIdentifier"]),
                        int(f["isSuppressed"]),
                        _dumps(f),
                    )
                    for f in findings
                ],
            )
            all_details = json.loads(body)
            all_details[check_name] = dict(details)
            conn.execute(
                "UPDATE tasks SET details = ? WHERE task_id = ?", (_dumps(all_details), task_id)
            )
            return True

    def end_task(self, task_id: str) -> str:
        """Close an IN_PROGRESS task whose checks all finished; its final status (or the
        status it already had, e.g. CANCELED)."""
        with self._transaction(f"ending audit task {task_id}") as conn:
            _, _, status, _, body = self._task_row(conn, task_id)
            if status != "IN_PROGRESS":
                return str(status)
            final = final_status(json.loads(body))
            conn.execute("UPDATE tasks SET status = ? WHERE task_id = ?", (final, task_id))
            return final

    def cancel_task(self, task_id: str) -> None:
        """CancelAuditTask: only an IN_PROGRESS task; its unfinished checks are CANCELED
        and the checks still to run are not run."""
        with self._transaction(f"canceling audit task {task_id}") as conn:
            _, _, status, _, body = self._task_row(conn, task_id)
            if status != "IN_PROGRESS":
                raise InvalidRequest(
                    "taskId",
                    f"audit task {task_id} is {status}: only an IN_PROGRESS task can be canceled",
                )
            conn.execute(
                "UPDATE tasks SET status = 'CANCELED', details = ? WHERE task_id = ?",
                (_dumps(canceled_details(json.loads(body))), task_id),
            )

    def fail_task(self, task_id: str, message: str) -> None:
        """Mark an IN_PROGRESS task FAILED (its runner is gone); unfinished checks FAILED
        with `message`."""
        with self._transaction(f"failing audit task {task_id}") as conn:
            _, _, status, _, body = self._task_row(conn, task_id)
            if status != "IN_PROGRESS":
                return
            details = {
                name: {"checkRunStatus": "FAILED", "message": message}
                if d["checkRunStatus"] == "IN_PROGRESS"
                else d
                for name, d in json.loads(body).items()
            }
            conn.execute(
                "UPDATE tasks SET status = 'FAILED', details = ? WHERE task_id = ?",
                (_dumps(details), task_id),
            )

    def in_progress_tasks(self) -> list[tuple[str, int | None]]:
        """(taskId, runner pid) of every IN_PROGRESS task."""
        with self._guard("listing tasks in progress"):
            rows = self._conn.execute(
                "SELECT task_id, runner_pid FROM tasks WHERE status = 'IN_PROGRESS'"
            ).fetchall()
        return [(task_id, pid) for task_id, pid in rows]

    def describe_task(self, task_id: str) -> dict[str, Any]:
        """DescribeAuditTask."""
        with self._guard(f"reading audit task {task_id}"):
            start, task_type, status, scheduled, body = self._task_row(self._conn, task_id)
        details = json.loads(body)
        out: dict[str, Any] = {
            "taskStatus": status,
            "taskType": task_type,
            "taskStartTime": start,
            "taskStatistics": task_statistics(details),
        }
        if scheduled is not None:
            out["scheduledAuditName"] = scheduled
        out["auditDetails"] = details
        return out

    def list_tasks(
        self,
        start_time: float,
        end_time: float,
        *,
        task_type: str | None = None,
        task_status: str | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListAuditTasks: tasks started in [start_time, end_time], oldest first."""
        check_max_results(max_results)
        clauses = ["start_time >= ?", "start_time <= ?"]
        params: list[Any] = [start_time, end_time]
        for column, value in (("task_type", task_type), ("status", task_status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if next_token is not None:
            clauses.append("(start_time, task_id) > (?, ?)")
            params += decode_token("tasks", next_token, (float, str))
        with self._guard("listing audit tasks"):
            rows = self._conn.execute(
                "SELECT start_time, task_id, status, task_type FROM tasks"
                f" WHERE {' AND '.join(clauses)} ORDER BY start_time, task_id LIMIT ?",
                [*params, max_results + 1],
            ).fetchall()
        page = rows[:max_results]
        answer: dict[str, Any] = {
            "tasks": [{"taskId": t, "taskStatus": s, "taskType": k} for _, t, s, k in page]
        }
        if len(rows) > max_results:
            answer["nextToken"] = encode_token("tasks", page[-1][:2])
        return answer

    # -- findings ---------------------------------------------------------------------

    def list_findings(
        self,
        *,
        task_id: str | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        check_name: str | None = None,
        resource_identifier: Mapping[str, Any] | None = None,
        list_suppressed_findings: bool | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListAuditFindings: a task's findings, or those found in [start_time,
        end_time]; in the order found. list_suppressed_findings None lists both kinds,
        True only suppressed ones, False only the others (AWS's rule)."""
        check_max_results(max_results)
        clauses: list[str] = []
        params: list[Any] = []
        if task_id is not None:
            clauses.append("task_id = ?")
            params.append(task_id)
        if start_time is not None and end_time is not None:
            clauses += ["finding_time >= ?", "finding_time <= ?"]
            params += [start_time, end_time]
        resource = None if resource_identifier is None else identifier_key(resource_identifier)
        suppressed = None if list_suppressed_findings is None else int(list_suppressed_findings)
        for column, value in (
            ("check_name", check_name),
            ("resource", resource),
            ("suppressed", suppressed),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if next_token is not None:
            clauses.append("id > ?")
            params += decode_token("findings", next_token, (int,))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._guard("listing audit findings"):
            rows = self._conn.execute(
                f"SELECT id, body FROM findings {where} ORDER BY id LIMIT ?",
                [*params, max_results + 1],
            ).fetchall()
        page = rows[:max_results]
        answer: dict[str, Any] = {"findings": [json.loads(body) for _, body in page]}
        if len(rows) > max_results:
            answer["nextToken"] = encode_token("findings", [page[-1][0]])
        return answer

    def task_findings(self, task_id: str) -> list[dict[str, Any]]:
        """Every finding of a task, in the order found (for publishing)."""
        with self._guard(f"reading the findings of audit task {task_id}"):
            self._task_row(self._conn, task_id)
            rows = self._conn.execute(
                "SELECT body FROM findings WHERE task_id = ? ORDER BY id", (task_id,)
            ).fetchall()
        return [json.loads(body) for (body,) in rows]

    # -- suppressions -----------------------------------------------------------------

    def _suppression(
        self, conn: sqlite3.Connection, check_name: str, resource: str, now: float
    ) -> tuple[Any, ...] | None:
        row = conn.execute(
            "SELECT expiration, description, token FROM suppressions"
            " WHERE check_name = ? AND resource = ? AND (expiration IS NULL OR expiration > ?)",
            (check_name, resource, now),
        ).fetchone()
        return None if row is None else tuple(row)

    def create_suppression(
        self,
        check_name: str,
        resource_identifier: Mapping[str, Any],
        expiration: float | None,
        description: str | None,
        token: str,
        now: float,
    ) -> None:
        """CreateAuditSuppression. The same call again (same token, same terms) is a
        no-op, as an idempotent AWS call; another suppression of the resource, or the
        token of another suppression, is refused."""
        resource = identifier_key(resource_identifier)
        with self._transaction(f"creating a suppression of {check_name}") as conn:
            conn.execute("DELETE FROM suppressions WHERE expiration <= ?", (now,))
            existing = self._suppression(conn, check_name, resource, now)
            if existing is not None:
                if existing == (expiration, description, token):
                    return
                raise ResourceAlreadyExists(
                    f"{check_name} is already suppressed for {resource};"
                    " use update-audit-suppression to change it"
                )
            taken = conn.execute(
                "SELECT check_name, resource FROM suppressions WHERE token = ?", (token,)
            ).fetchone()
            if taken is not None:
                raise InvalidRequest(
                    "clientRequestToken",
                    f"{token!r} was used for another suppression ({taken[0]} {taken[1]})",
                )
            conn.execute(
                "INSERT INTO suppressions (check_name, resource, expiration, description, token)"
                " VALUES (?, ?, ?, ?, ?)",
                (check_name, resource, expiration, description, token),
            )

    def describe_suppression(
        self, check_name: str, resource_identifier: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        resource = identifier_key(resource_identifier)
        with self._guard("reading a suppression"):
            row = self._suppression(self._conn, check_name, resource, now)
        if row is None:
            raise ResourceNotFound(f"no suppression of {check_name} for {resource}")
        return _suppression_answer(check_name, resource, row[0], row[1])

    def update_suppression(
        self,
        check_name: str,
        resource_identifier: Mapping[str, Any],
        now: float,
        *,
        expiration: float | None = None,
        indefinitely: bool = False,
        description: str | None = None,
    ) -> None:
        """UpdateAuditSuppression: a new expiry, or no expiry (indefinitely), and/or a
        new description; what is not given stays."""
        resource = identifier_key(resource_identifier)
        with self._transaction(f"updating a suppression of {check_name}") as conn:
            row = self._suppression(conn, check_name, resource, now)
            if row is None:
                raise ResourceNotFound(f"no suppression of {check_name} for {resource}")
            new_expiration = (
                None if indefinitely else (row[0] if expiration is None else expiration)
            )
            conn.execute(
                "UPDATE suppressions SET expiration = ?, description = ?"
                " WHERE check_name = ? AND resource = ?",
                (
                    new_expiration,
                    row[1] if description is None else description,
                    check_name,
                    resource,
                ),
            )

    def delete_suppression(self, check_name: str, resource_identifier: Mapping[str, Any]) -> bool:
        """DeleteAuditSuppression; whether there was one (AWS answers the same either way)."""
        resource = identifier_key(resource_identifier)
        with self._transaction(f"deleting a suppression of {check_name}") as conn:
            return (
                conn.execute(
                    "DELETE FROM suppressions WHERE check_name = ? AND resource = ?",
                    (check_name, resource),
                ).rowcount
                > 0
            )

    def list_suppressions(
        self,
        now: float,
        *,
        check_name: str | None = None,
        resource_identifier: Mapping[str, Any] | None = None,
        ascending_order: bool = True,
        max_results: int = DEFAULT_MAX_RESULTS,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListAuditSuppressions, the ones in force, by expiry (none: last ascending)."""
        check_max_results(max_results)
        clauses = ["(expiration IS NULL OR expiration > ?)"]
        params: list[Any] = [now]
        if check_name is not None:
            clauses.append("check_name = ?")
            params.append(check_name)
        if resource_identifier is not None:
            clauses.append("resource = ?")
            params.append(identifier_key(resource_identifier))
        order = "" if ascending_order else " DESC"
        key = f"COALESCE(expiration, {_NEVER})"
        if next_token is not None:
            clauses.append(
                f"({key}, check_name, resource) {'>' if ascending_order else '<'} (?, ?, ?)"
            )
            params += decode_token("suppressions", next_token, (float, str, str))
        with self._guard("listing suppressions"):
            rows = self._conn.execute(
                f"SELECT {key}, check_name, resource, expiration, description FROM suppressions"
                f" WHERE {' AND '.join(clauses)}"
                f" ORDER BY 1{order}, check_name{order}, resource{order} LIMIT ?",
                [*params, max_results + 1],
            ).fetchall()
        page = rows[:max_results]
        answer: dict[str, Any] = {
            "suppressions": [_suppression_answer(c, r, e, d) for _, c, r, e, d in page]
        }
        if len(rows) > max_results:
            answer["nextToken"] = encode_token("suppressions", [float(page[-1][0]), *page[-1][1:3]])
        return answer

    def suppressed_resources(self, now: float) -> set[tuple[str, str]]:
        """(checkName, identifier_key) of every suppression in force at `now`."""
        with self._guard("reading suppressions"):
            rows = self._conn.execute(
                "SELECT check_name, resource FROM suppressions"
                " WHERE expiration IS NULL OR expiration > ?",
                (now,),
            ).fetchall()
        return {(c, r) for c, r in rows}

    # -- account configuration ----------------------------------------------------------

    def account_configuration(self) -> dict[str, Any]:
        """What update-account-audit-configuration stored (overrides of the defaults)."""
        with self._guard("reading the account audit configuration"):
            row = self._conn.execute(
                "SELECT body FROM account WHERE name = ?", (_ACCOUNT,)
            ).fetchone()
        return {} if row is None else dict(json.loads(row[0]))

    def put_account_configuration(self, body: Mapping[str, Any]) -> None:
        with self._transaction("saving the account audit configuration") as conn:
            conn.execute(
                "INSERT INTO account (name, body) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                (_ACCOUNT, _dumps(body)),
            )

    # -- scheduled audits --------------------------------------------------------------

    def create_scheduled_audit(self, name: str, body: Mapping[str, Any], now: float) -> None:
        with self._transaction(f"creating scheduled audit {name}") as conn:
            try:
                conn.execute(
                    "INSERT INTO scheduled_audits (name, body, created) VALUES (?, ?, ?)",
                    (name, _dumps(body), now),
                )
            except sqlite3.IntegrityError:
                raise ResourceAlreadyExists(f"scheduled audit {name!r} already exists") from None

    def scheduled_audit(self, name: str) -> tuple[dict[str, Any], float, float | None]:
        """(body, created, last run) of a scheduled audit."""
        with self._guard(f"reading scheduled audit {name}"):
            row = self._conn.execute(
                "SELECT body, created, last_run FROM scheduled_audits WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise ResourceNotFound(f"no scheduled audit {name!r}")
        return json.loads(row[0]), row[1], row[2]

    def update_scheduled_audit(self, name: str, body: Mapping[str, Any]) -> None:
        with self._transaction(f"updating scheduled audit {name}") as conn:
            if not conn.execute(
                "UPDATE scheduled_audits SET body = ? WHERE name = ?", (_dumps(body), name)
            ).rowcount:
                raise ResourceNotFound(f"no scheduled audit {name!r}")

    def delete_scheduled_audit(self, name: str) -> None:
        with self._transaction(f"deleting scheduled audit {name}") as conn:
            if not conn.execute("DELETE FROM scheduled_audits WHERE name = ?", (name,)).rowcount:
                raise ResourceNotFound(f"no scheduled audit {name!r}")

    def scheduled_audits(self) -> list[tuple[str, dict[str, Any], float, float | None]]:
        """(name, body, created, last run) of every scheduled audit, by name."""
        with self._guard("reading scheduled audits"):
            rows = self._conn.execute(
                "SELECT name, body, created, last_run FROM scheduled_audits ORDER BY name"
            ).fetchall()
        return [(n, json.loads(b), c, r) for n, b, c, r in rows]

    def list_scheduled_audits(
        self, *, max_results: int = DEFAULT_MAX_RESULTS, next_token: str | None = None
    ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        """One page of (name, body) by name, and the token of the next page or None."""
        check_max_results(max_results)
        clauses, params = "", []
        if next_token is not None:
            clauses = "WHERE name > ?"
            params = decode_token("scheduled", next_token, (str,))
        with self._guard("listing scheduled audits"):
            rows = self._conn.execute(
                f"SELECT name, body FROM scheduled_audits {clauses} ORDER BY name LIMIT ?",
                [*params, max_results + 1],
            ).fetchall()
        page = [(n, json.loads(b)) for n, b in rows[:max_results]]
        token = encode_token("scheduled", [page[-1][0]]) if len(rows) > max_results else None
        return page, token

    # -- retention ----------------------------------------------------------------------

    def prune(self, now: float) -> None:
        """Drop tasks started more than 90 days ago with their findings, and expired
        suppressions; free pages go back to the file system."""
        with self._transaction("pruning old audit tasks") as conn:
            tasks = conn.execute(
                "DELETE FROM tasks WHERE start_time < ? AND status != 'IN_PROGRESS'",
                (now - RETENTION_S,),
            ).rowcount
            expired = conn.execute(
                "DELETE FROM suppressions WHERE expiration <= ?", (now,)
            ).rowcount
        reclaimed = self.reclaim_space()
        if tasks or expired or reclaimed:
            log.info(
                kv("audit_pruned", tasks=tasks, suppressions=expired, reclaimed_bytes=reclaimed)
            )


def _suppression_answer(
    check_name: str, resource: str, expiration: float | None, description: str | None
) -> dict[str, Any]:
    return suppression_shape(
        {
            "checkName": check_name,
            "resourceIdentifier": json.loads(resource),
            "expirationDate": expiration,
            "suppressIndefinitely": expiration is None,
            "description": description,
        }
    )


def open_audit(state_dir: str | Path) -> AuditStore:
    """audit.db in `state_dir`, created (0600, in a 0700 directory) when missing: the
    verbs store configuration and suppressions before the daemon ever audits. Root
    creating it for a state dir owned by the service user gives the file to that user,
    or the daemon could not write it."""
    path = audit_path(state_dir)
    store = AuditStore(path)
    give_to_dir_owner(path)
    return store

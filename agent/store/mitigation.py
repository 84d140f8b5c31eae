"""The mitigation store (state_dir/mitigation.db): mitigation actions, detect mitigation
tasks with one execution per violation and action, and the outbox of messages that
PUBLISH_TO_TOPIC executions leave for the daemon to publish.

A file of its own, as audit.db and for the same reasons: its rows are written by the
verbs and by whichever thread runs executions, each on its own connection, never
waiting on the cycle thread's agent.db. Same patterns (agent.store.db): WAL,
synchronous=FULL, private modes, faults as StoreUnavailable naming the file; each change
is one transaction, so a kill leaves all of it or none.

An execution carries the violation it acts on as it was when the task started (the
ViolationEvent or ActiveViolation JSON), so running it needs no other store. Executions
are claimed one at a time (PENDING -> IN_PROGRESS with the runner's pid), so two runners
never run the same one, and one left IN_PROGRESS by a dead runner can be told apart.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.audit_model import InvalidRequest
from agent.core.mitigation_model import (
    DEFAULT_MAX_RESULTS,
    action_type_of,
    check_max_results,
    clip,
    final_status,
    same_request,
    task_statistics,
)
from agent.store.db import Store, StoreError, decode_token, encode_token, give_to_dir_owner
from agent.store.paths import mitigation_path

RETENTION_S = 90 * 86400.0  # ended tasks and their executions, as audit tasks are kept

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE actions (
        name TEXT PRIMARY KEY,
        action_id TEXT NOT NULL,
        role_arn TEXT NOT NULL,
        params TEXT NOT NULL,  -- actionParams, JSON, one member
        created REAL NOT NULL,
        modified REAL NOT NULL
    );
    CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY,
        token TEXT NOT NULL UNIQUE,
        request TEXT NOT NULL,  -- the checked request, JSON (compared for a repeated token)
        start_time REAL NOT NULL,
        end_time REAL,
        status TEXT NOT NULL,
        actions TEXT NOT NULL  -- actionsDefinition as the task started, JSON
    );
    CREATE INDEX tasks_start ON tasks (start_time, task_id);
    CREATE TABLE executions (
        id INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
        violation_id TEXT NOT NULL,
        action_name TEXT NOT NULL,
        thing_name TEXT NOT NULL,
        violation TEXT NOT NULL,  -- the violation as the task started, JSON
        created REAL NOT NULL,
        started REAL,
        ended REAL,
        status TEXT NOT NULL,
        error_code TEXT,
        message TEXT,
        detail TEXT,  -- what was done or planned (nft JSON, argv, message), JSON
        runner_pid INTEGER,
        UNIQUE (task_id, violation_id, action_name)
    );
    CREATE INDEX executions_status ON executions (status, id);
    CREATE INDEX executions_violation ON executions (violation_id, id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        payload TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
)


class ResourceNotFound(StoreError):
    """AWS's ResourceNotFoundException: no action or task so named."""


class ResourceAlreadyExists(StoreError):
    """AWS's ResourceAlreadyExistsException (an action) / TaskAlreadyExistsException."""


@dataclass(frozen=True)
class Claimed:
    """An execution taken to run: what it needs, from the store."""

    execution_id: int
    task_id: str
    violation_id: str
    action_name: str
    thing_name: str
    violation: dict[str, Any]
    action: dict[str, Any]  # its MitigationAction as the task started
    dry_run: bool


@dataclass(frozen=True)
class Publication:
    """A message a PUBLISH_TO_TOPIC execution left for the daemon."""

    id: int
    topic: str
    payload: dict[str, Any]


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _execution(row: Sequence[Any]) -> dict[str, Any]:
    """A DetectMitigationActionExecution from (task, violation, action, thing, started,
    ended, status, code, message)."""
    task_id, violation_id, action, thing, started, ended, status, code, message = row
    out: dict[str, Any] = {
        "taskId": task_id,
        "violationId": violation_id,
        "actionName": action,
        "thingName": thing,
    }
    if started is not None:
        out["executionStartDate"] = started
    if ended is not None:
        out["executionEndDate"] = ended
    out["status"] = status
    if code is not None:
        out["errorCode"] = code
    if message is not None:
        out["message"] = message
    return out


class MitigationStore(Store):
    """mitigation.db on one connection (one thread; see agent.store.db.Store for faults)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        super().__init__(path, MIGRATIONS, create=create, incremental_vacuum=True)

    # -- actions ----------------------------------------------------------------------

    def create_action(
        self, name: str, action_id: str, role_arn: str, params: Mapping[str, Any], now: float
    ) -> None:
        with self._transaction(f"creating mitigation action {name}") as conn:
            try:
                conn.execute(
                    "INSERT INTO actions (name, action_id, role_arn, params, created, modified)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, action_id, role_arn, _dumps(params), now, now),
                )
            except sqlite3.IntegrityError:
                raise ResourceAlreadyExists(f"mitigation action {name!r} already exists") from None

    def action(self, name: str) -> dict[str, Any]:
        """{actionName, actionType, actionId, roleArn, actionParams, creationDate,
        lastModifiedDate} of one action."""
        with self._guard(f"reading mitigation action {name}"):
            row = self._conn.execute(
                "SELECT action_id, role_arn, params, created, modified FROM actions WHERE name = ?",
                (name,),
            ).fetchone()
        if row is None:
            raise ResourceNotFound(f"no mitigation action {name!r}")
        action_id, role_arn, params, created, modified = row
        decoded = json.loads(params)
        return {
            "actionName": name,
            "actionType": action_type_of(decoded),
            "actionId": action_id,
            "roleArn": role_arn,
            "actionParams": decoded,
            "creationDate": created,
            "lastModifiedDate": modified,
        }

    def update_action(
        self,
        name: str,
        now: float,
        *,
        role_arn: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """Change what is given; the action's id."""
        with self._transaction(f"updating mitigation action {name}") as conn:
            row = conn.execute(
                "SELECT action_id, role_arn, params FROM actions WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise ResourceNotFound(f"no mitigation action {name!r}")
            conn.execute(
                "UPDATE actions SET role_arn = ?, params = ?, modified = ? WHERE name = ?",
                (
                    row[1] if role_arn is None else role_arn,
                    row[2] if params is None else _dumps(params),
                    now,
                    name,
                ),
            )
            return str(row[0])

    def delete_action(self, name: str) -> bool:
        """Whether there was one (AWS answers the same either way). Tasks keep the
        definition they started with."""
        with self._transaction(f"deleting mitigation action {name}") as conn:
            return conn.execute("DELETE FROM actions WHERE name = ?", (name,)).rowcount > 0

    def list_actions(
        self,
        *,
        action_type: str | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
        next_token: str | None = None,
    ) -> tuple[list[tuple[str, float]], str | None]:
        """One page of (name, creationDate) by name, and the next page's token or None."""
        check_max_results(max_results)
        clauses, params = [], []
        if next_token is not None:
            clauses.append("name > ?")
            params += decode_token("mitigation-actions", next_token, (str,))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        page: list[tuple[str, float]] = []
        last = None
        more = False
        with self._guard("listing mitigation actions"):
            # The type is the params' one member, not a column: filter while reading.
            for name, body, created in self._conn.execute(
                f"SELECT name, params, created FROM actions {where} ORDER BY name", params
            ):
                if action_type is not None and action_type_of(json.loads(body)) != action_type:
                    continue
                if len(page) == max_results:
                    more = True
                    break
                page.append((name, created))
                last = name
        return page, encode_token("mitigation-actions", [last]) if more else None

    # -- tasks --------------------------------------------------------------------------

    def start_task(
        self,
        request: Mapping[str, Any],
        actions: Sequence[Mapping[str, Any]],
        violations: Sequence[Mapping[str, Any]],
        now: float,
    ) -> bool:
        """Record a task (its request checked, its actions' MitigationAction definitions,
        the violations it acts on) with one PENDING execution per violation and action.
        False when the same request with the same token is already recorded (AWS's
        idempotency). The token of another request, or a taskId taken, is refused."""
        task_id, token = request["taskId"], request["clientRequestToken"]
        with self._transaction(f"starting mitigation task {task_id}") as conn:
            row = conn.execute(
                "SELECT task_id, request FROM tasks WHERE token = ?", (token,)
            ).fetchone()
            if row is not None:
                if same_request(json.loads(row[1]), request):
                    return False
                raise InvalidRequest(
                    "clientRequestToken",
                    f"{token!r} was used for task {row[0]} with other parameters",
                )
            if conn.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone():
                raise ResourceAlreadyExists(
                    f"mitigation task {task_id!r} already exists (TaskAlreadyExistsException)"
                )
            ended = None if violations else now
            conn.execute(
                "INSERT INTO tasks (task_id, token, request, start_time, end_time, status,"
                " actions) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    token,
                    _dumps(request),
                    now,
                    ended,
                    "IN_PROGRESS" if violations else "SUCCESSFUL",
                    _dumps(list(actions)),
                ),
            )
            conn.executemany(
                "INSERT INTO executions (task_id, violation_id, action_name, thing_name,"
                " violation, created, status) VALUES (?, ?, ?, ?, ?, ?, 'PENDING')",
                [
                    (task_id, v["violationId"], a["name"], v["thingName"], _dumps(v), now)
                    for v in violations
                    for a in actions
                ],
            )
            return True

    def task_for_token(self, token: str) -> tuple[str, dict[str, Any]] | None:
        """(taskId, request) of the task this clientRequestToken made, if any."""
        with self._guard("reading mitigation tasks"):
            row = self._conn.execute(
                "SELECT task_id, request FROM tasks WHERE token = ?", (token,)
            ).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def _task(self, conn: sqlite3.Connection, task_id: str) -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT request, start_time, end_time, status, actions FROM tasks WHERE task_id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            raise ResourceNotFound(f"no mitigation task {task_id!r}")
        return tuple(row)

    def _summary(self, conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
        request, start, end, status, actions = self._task(conn, task_id)
        req = json.loads(request)
        statuses = [
            s
            for (s,) in conn.execute("SELECT status FROM executions WHERE task_id = ?", (task_id,))
        ]
        out: dict[str, Any] = {"taskId": task_id, "taskStatus": status, "taskStartTime": start}
        if end is not None:
            out["taskEndTime"] = end
        out["target"] = req["target"]
        if "violationEventOccurrenceRange" in req:
            out["violationEventOccurrenceRange"] = req["violationEventOccurrenceRange"]
        out["onlyActiveViolationsIncluded"] = req["includeOnlyActiveViolations"]
        out["suppressedAlertsIncluded"] = req["includeSuppressedAlerts"]
        out["actionsDefinition"] = json.loads(actions)
        out["taskStatistics"] = task_statistics(statuses)
        return out

    def describe_task(self, task_id: str) -> dict[str, Any]:
        """DescribeDetectMitigationActionsTask."""
        with self._guard(f"reading mitigation task {task_id}"):
            return {"taskSummary": self._summary(self._conn, task_id)}

    def list_tasks(
        self,
        start_time: float,
        end_time: float,
        *,
        max_results: int = DEFAULT_MAX_RESULTS,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListDetectMitigationActionsTasks: tasks started in [start_time, end_time],
        oldest first."""
        check_max_results(max_results)
        clauses = ["start_time >= ?", "start_time <= ?"]
        params: list[Any] = [start_time, end_time]
        if next_token is not None:
            clauses.append("(start_time, task_id) > (?, ?)")
            params += decode_token("mitigation-tasks", next_token, (float, str))
        with self._guard("listing mitigation tasks"):
            rows = self._conn.execute(
                f"SELECT start_time, task_id FROM tasks WHERE {' AND '.join(clauses)}"
                " ORDER BY start_time, task_id LIMIT ?",
                [*params, max_results + 1],
            ).fetchall()
            page = rows[:max_results]
            answer: dict[str, Any] = {"tasks": [self._summary(self._conn, t) for _, t in page]}
        if len(rows) > max_results:
            answer["nextToken"] = encode_token("mitigation-tasks", list(page[-1]))
        return answer

    def cancel_task(self, task_id: str, now: float) -> None:
        """CancelDetectMitigationActionsTask: only an IN_PROGRESS task; its PENDING
        executions become CANCELED (one running finishes)."""
        with self._transaction(f"canceling mitigation task {task_id}") as conn:
            status = self._task(conn, task_id)[3]
            if status != "IN_PROGRESS":
                raise InvalidRequest(
                    "taskId",
                    f"task {task_id} is {status}: only an IN_PROGRESS task can be canceled",
                )
            conn.execute(
                "UPDATE executions SET status = 'CANCELED', message = ?"
                " WHERE task_id = ? AND status = 'PENDING'",
                ("canceled before it ran", task_id),
            )
            conn.execute(
                "UPDATE tasks SET status = 'CANCELED', end_time = ? WHERE task_id = ?",
                (now, task_id),
            )

    # -- executions ---------------------------------------------------------------------

    def list_executions(
        self,
        *,
        task_id: str | None = None,
        violation_id: str | None = None,
        thing_name: str | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListDetectMitigationActionsExecutions in the order recorded; the time range
        applies to executionStartDate (the task's start for one not started)."""
        check_max_results(max_results)
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("task_id", task_id),
            ("violation_id", violation_id),
            ("thing_name", thing_name),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if start_time is not None and end_time is not None:
            clauses.append("COALESCE(started, created) BETWEEN ? AND ?")
            params += [start_time, end_time]
        if next_token is not None:
            clauses.append("id > ?")
            params += decode_token("mitigation-executions", next_token, (int,))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._guard("listing mitigation executions"):
            rows = self._conn.execute(
                "SELECT id, task_id, violation_id, action_name, thing_name, started, ended,"
                f" status, error_code, message FROM executions {where} ORDER BY id LIMIT ?",
                [*params, max_results + 1],
            ).fetchall()
        page = rows[:max_results]
        answer: dict[str, Any] = {"actionsExecutions": [_execution(r[1:]) for r in page]}
        if len(rows) > max_results:
            answer["nextToken"] = encode_token("mitigation-executions", [page[-1][0]])
        return answer

    def execution_detail(
        self, task_id: str, violation_id: str, action_name: str
    ) -> dict[str, Any] | None:
        """What an execution did or, in a dry run, planned: nft commands, argv, message."""
        with self._guard("reading an execution"):
            row = self._conn.execute(
                "SELECT detail FROM executions"
                " WHERE task_id = ? AND violation_id = ? AND action_name = ?",
                (task_id, violation_id, action_name),
            ).fetchone()
        if row is None:
            raise ResourceNotFound(f"no execution of {action_name} on {violation_id} in {task_id}")
        return None if row[0] is None else dict(json.loads(row[0]))

    def claim(self, pid: int, now: float) -> Claimed | None:
        """Take the oldest PENDING execution of an IN_PROGRESS task: IN_PROGRESS, started
        now by `pid`. None when there is none."""
        with self._transaction("claiming a mitigation execution") as conn:
            row = conn.execute(
                "SELECT e.id, e.task_id, e.violation_id, e.action_name, e.thing_name,"
                " e.violation, t.actions, t.request FROM executions e"
                " JOIN tasks t ON t.task_id = e.task_id"
                " WHERE e.status = 'PENDING' AND t.status = 'IN_PROGRESS' ORDER BY e.id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            exec_id, task_id, violation_id, action_name, thing, violation, actions, request = row
            conn.execute(
                "UPDATE executions SET status = 'IN_PROGRESS', started = ?, runner_pid = ?"
                " WHERE id = ?",
                (now, pid, exec_id),
            )
        definition = next(a for a in json.loads(actions) if a["name"] == action_name)
        return Claimed(
            exec_id,
            task_id,
            violation_id,
            action_name,
            thing,
            json.loads(violation),
            definition,
            bool(json.loads(request).get("dryRun", False)),
        )

    def finish(
        self,
        execution_id: int,
        status: str,
        now: float,
        *,
        error_code: str | None = None,
        message: str | None = None,
        detail: Mapping[str, Any] | None = None,
        publish: tuple[str, Mapping[str, Any]] | None = None,
    ) -> str | None:
        """End an IN_PROGRESS execution (with a message for the outbox, in the same
        transaction) and, when it was its task's last, the task; the task's status when
        it ended now, else None."""
        with self._transaction("recording a mitigation execution") as conn:
            row = conn.execute(
                "SELECT task_id FROM executions WHERE id = ? AND status = 'IN_PROGRESS'",
                (execution_id,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE executions SET status = ?, ended = ?, error_code = ?, message = ?,"
                " detail = ? WHERE id = ?",
                (
                    status,
                    now,
                    error_code,
                    None if message is None else clip(message),
                    None if detail is None else _dumps(detail),
                    execution_id,
                ),
            )
            if publish is not None:
                conn.execute(
                    "INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                    (publish[0], _dumps(publish[1]), now),
                )
            return self._maybe_end(conn, row[0], now)

    def in_force(self, task_id: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        """(execution id, detail) of the executions (of one task, or all) whose firewall
        changes may still be in force: done (not a dry run), not undone; the detail's
        "undo" says what and until when."""
        task = "" if task_id is None else " AND task_id = ?"
        with self._guard("reading the firewall changes in force"):
            rows = self._conn.execute(
                "SELECT id, detail FROM executions WHERE status IN ('SUCCESSFUL', 'FAILED')"
                f" AND detail LIKE '%\"undo\"%'{task} ORDER BY id",
                () if task_id is None else (task_id,),
            ).fetchall()
        out = []
        for execution_id, text in rows:
            detail = json.loads(text)
            undo = detail.get("undo")
            if isinstance(undo, dict) and not undo.get("undone"):
                out.append((execution_id, detail))
        return out

    def mark_undone(self, execution_id: int) -> None:
        """The firewall changes of an execution were taken back: not to be re-applied."""
        with self._transaction("marking a mitigation execution undone") as conn:
            row = conn.execute(
                "SELECT detail FROM executions WHERE id = ?", (execution_id,)
            ).fetchone()
            if row is None or row[0] is None:
                return
            detail = json.loads(row[0])
            detail.setdefault("undo", {})["undone"] = True
            conn.execute(
                "UPDATE executions SET detail = ? WHERE id = ?", (_dumps(detail), execution_id)
            )

    def _maybe_end(self, conn: sqlite3.Connection, task_id: str, now: float) -> str | None:
        if self._task(conn, task_id)[3] != "IN_PROGRESS":
            return None
        statuses = [
            s
            for (s,) in conn.execute("SELECT status FROM executions WHERE task_id = ?", (task_id,))
        ]
        final = final_status(statuses)
        if final is not None:
            conn.execute(
                "UPDATE tasks SET status = ?, end_time = ? WHERE task_id = ?",
                (final, now, task_id),
            )
        return final

    def running(self) -> list[tuple[int, int | None]]:
        """(execution id, runner pid) of every IN_PROGRESS execution."""
        with self._guard("listing running mitigation executions"):
            rows = self._conn.execute(
                "SELECT id, runner_pid FROM executions WHERE status = 'IN_PROGRESS'"
            ).fetchall()
        return [(i, pid) for i, pid in rows]

    # -- retention ----------------------------------------------------------------------

    def prune(self, now: float) -> int:
        """Drop tasks that ended more than RETENTION_S ago, with their executions; how
        many went. Free pages go back to the file system."""
        with self._transaction("pruning old mitigation tasks") as conn:
            gone = conn.execute(
                "DELETE FROM tasks WHERE status != 'IN_PROGRESS' AND end_time < ?",
                (now - RETENTION_S,),
            ).rowcount
        self.reclaim_space()
        return gone

    # -- outbox -------------------------------------------------------------------------

    def publications(self, limit: int = 100) -> list[Publication]:
        """The oldest messages waiting to be published."""
        with self._guard("reading the mitigation outbox"):
            rows = self._conn.execute(
                "SELECT id, topic, payload FROM outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [Publication(i, t, json.loads(p)) for i, t, p in rows]

    def published(self, ids: Sequence[int]) -> None:
        """Drop messages the daemon has handed to its spool."""
        with self._transaction("clearing the mitigation outbox") as conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])


def open_mitigation(state_dir: str | Path) -> MitigationStore:
    """mitigation.db in `state_dir`, created (0600, in a 0700 directory) when missing.
    Root creating it for a state dir owned by the service user gives the file to that
    user, or the daemon could not write it."""
    path = mitigation_path(state_dir)
    store = MitigationStore(path)
    give_to_dir_owner(path)
    return store

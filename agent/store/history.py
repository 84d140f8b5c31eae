"""The agent's local store (state_dir/agent.db): violation events, the active violations,
the rule core's alarm state, metrics history and the report counters.

Each logical change is one transaction, so a kill or power cut at any instant leaves
either all of it or none: recording events, replacing the active set and saving the
alarm state they came from commit together (record_changes: the state as rows, only
those that changed, and the active set as a difference).

What a power cut (or kill -9) can lose, exactly:
- events, the active set, the alarm state rows and the counters: nothing that a
  record/record_changes call returned from. Each commits in one transaction synced
  before it returns (WAL, synchronous=FULL): a cut during it leaves the state of the
  call before, whole (a torn WAL tail fails its frame checksums and is ignored).
  What changed since the last save (consecutive counts, baseline datapoints) is the
  caller's memory, not the store's.
- metrics history: the reports buffered since the last write, i.e. added after the
  last flush_metrics / record_changes(metrics=True) returned, at most the daemon's
  store.metrics_flush_s of samples (or METRICS_FLUSH_BYTES of JSON, whichever first).
  A written batch is whole or absent.
A file damaged anyway (a disk that lies about syncs) fails quick_check at the next
open and is moved aside with a timestamp (agent.store.db), never wiped.

Writes are kept small for SD cards: metrics history as zlib batches (~230 bytes a
sample for a 150-connection report, against ~13 KB of JSON), 1 KiB pages (every
synced commit writes each page it touches whole), one sync per periodic save when
metrics and counters go in it; incremental auto-vacuum gives back the space retention
frees. Measured with tests/store/test_store_metrics.py (a day of a busy device:
~8 MB written, ~1.6 MB of history kept). Events and active violations are kept as
their AWS JSON shapes (ViolationEvent, ActiveViolation) next to indexed columns for the
filters of ListViolationEvents / ListActiveViolations. A verification state is a
property of the violation, not of one copy of it, so it lives in its own table and is
merged in on read: it survives the rule core replacing the active set and applies to
events recorded later for the same violation.

Faults (disk full, read-only, I/O error, locked, the file deleted) are StoreUnavailable
with one line naming the file; the write that met one rolled back, so the daemon keeps
what it meant to write and calls again later (agent.store.db.Store). An event recorded
for publishing that can never be sent is quarantined: kept, counted, never retried.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import logging
import math
import re
import sqlite3
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.core.events import UNKNOWN, EventType
from agent.core.report import make_envelope, parse_envelope
from agent.logs import kv

# The store's errors are importable from here by the callers of History.
from agent.store.db import MovedAside as MovedAside
from agent.store.db import Store, StoreError, counted
from agent.store.db import StoreCorrupt as StoreCorrupt
from agent.store.db import StoreNotFound as StoreNotFound
from agent.store.db import StoreUnavailable as StoreUnavailable

log = logging.getLogger(__name__)

STORE_FILE = "agent.db"

CriteriaType = Literal["STATIC", "STATISTICAL", "MACHINE_LEARNING"]
CRITERIA_TYPES: tuple[CriteriaType, ...] = ("STATIC", "STATISTICAL", "MACHINE_LEARNING")
VERIFICATION_STATES = ("FALSE_POSITIVE", "BENIGN_POSITIVE", "TRUE_POSITIVE", "UNKNOWN")
EVENT_TYPES = tuple(t.value for t in EventType)
MAX_RESULTS = 250  # AWS's maximum and, for these verbs, the default
MAX_DESCRIPTION = 1000
MAX_VIOLATION_ID = 128  # AWS's bound; it also bounds the tokens of list_active_violations
MAX_TOKEN = 4096  # characters; a token of ours is at most ~2,200

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE violation_events (
        id INTEGER PRIMARY KEY,  -- insertion order, the tie-break within one instant
        time REAL NOT NULL,
        violation_id TEXT NOT NULL,
        thing_name TEXT NOT NULL,
        profile TEXT NOT NULL,
        criteria_type TEXT,
        suppressed INTEGER NOT NULL,
        verification_state TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX violation_events_time ON violation_events (time, id);
    CREATE INDEX violation_events_violation ON violation_events (violation_id);
    CREATE TABLE active_violations (
        violation_id TEXT PRIMARY KEY,
        start_time REAL NOT NULL,
        thing_name TEXT NOT NULL,
        profile TEXT NOT NULL,
        criteria_type TEXT,
        suppressed INTEGER NOT NULL,
        verification_state TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX active_violations_start ON active_violations (start_time, violation_id);
    CREATE TABLE verifications (
        violation_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        description TEXT
    );
    CREATE TABLE blobs (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE metrics_history (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX metrics_history_time ON metrics_history (time, id);
    """,
    # Events recorded but not yet handed to the outbound spool (another file): a crash
    # between the two leaves them here, and the next start spools them.
    """
    CREATE TABLE unpublished (
        event_id INTEGER PRIMARY KEY REFERENCES violation_events (id) ON DELETE CASCADE
    );
    """,
    # Events recorded for publishing that can never be sent (they could not be encoded):
    # kept with the reason, never retried; they go with their event at retention.
    """
    CREATE TABLE quarantined_events (
        event_id INTEGER PRIMARY KEY REFERENCES violation_events (id) ON DELETE CASCADE,
        reason TEXT NOT NULL,
        time REAL NOT NULL
    );
    """,
    # The alarm state as rows, each rewritten only when it changed: per rule, and per
    # baseline time bucket. A body is compact JSON text, or zlib of it (a BLOB) when
    # that is smaller for a long one. The metrics history in batches: zlib of the
    # envelopes as JSON lines in recording order, with the bounds of their timestamps.
    # The rows of metrics_history (one per record, before batches) stay readable.
    """
    CREATE TABLE rule_state (key TEXT PRIMARY KEY, body NOT NULL);
    CREATE TABLE baseline_buckets (key TEXT PRIMARY KEY, body NOT NULL);
    CREATE TABLE metrics_batches (
        id INTEGER PRIMARY KEY,
        time_min REAL NOT NULL,
        time_max REAL NOT NULL,
        count INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX metrics_batches_time ON metrics_batches (time_min, id);
    """,
)

_ALARM_STATE = "alarm_state"
_COUNTERS = "network_counters"
# A state body longer than this is stored as zlib when that is smaller.
COMPRESS_OVER = 1024
# A batch of metrics history: zlib at level 9 takes a 150-connection report (~13 KB of
# JSON) to ~230 bytes in a batch of 30, ~30% less than level 6 for ~1 ms more a batch.
METRICS_LEVEL = 9
# add_metrics writes the buffer by itself once it holds this much JSON; while the store
# cannot take it, the oldest records beyond METRICS_BUFFER_MAX_BYTES are dropped (logged).
METRICS_FLUSH_BYTES = 1024 * 1024
METRICS_BUFFER_MAX_BYTES = 16 * 1024 * 1024
# Every synced commit writes each page it touches whole to the WAL (and the kernel
# writes 4 KiB at least): 1 KiB pages write ~40% fewer bytes a day than 4 KiB ones for
# the daemon's traffic (a few small rows changed a commit). Stores made before keep theirs.
PAGE_SIZE = 1024
# Legacy metrics_history rows deleted at a time when the history is over its bytes.
_LEGACY_CHUNK = 256
# VerificationStateDescription's pattern is [^\p{Cntrl}]*.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidRequest(StoreError):
    """A bad query parameter; `param` is its AWS name (nextToken, maxResults, ...)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class ViolationNotFound(StoreError):
    """No event or active violation has this id (AWS: ResourceNotFoundException)."""


class StateChanges(Protocol):
    """What the rule core's state changed since the last save (agent.core.evaluator's
    StateChanges): key -> JSON-able body, None to delete the key."""

    @property
    def rules(self) -> Mapping[str, Mapping[str, Any] | None]: ...

    @property
    def buckets(self) -> Mapping[str, Mapping[str, Any] | None]: ...


def _encode_state(body: Mapping[str, Any], what: str) -> str | bytes:
    text = _dumps(body, what)
    if len(text) > COMPRESS_OVER:
        packed = zlib.compress(text.encode())
        if len(packed) < len(text):
            return packed
    return text


def _state_rows(
    changes: Mapping[str, Mapping[str, Any] | None], what: str
) -> tuple[list[tuple[str, str | bytes]], list[tuple[str]]]:
    """(rows to upsert, keys to delete), every key and body checked."""
    upserts: list[tuple[str, str | bytes]] = []
    deletes: list[tuple[str]] = []
    for key, body in changes.items():
        if not _text(key):
            raise StoreError(f"{what}: key {_shown(key)} is not a UTF-8 string")
        if body is None:
            deletes.append((key,))
        else:
            upserts.append((key, _encode_state(body, f"{what} {key!r}")))
    return upserts, deletes


def history_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / STORE_FILE


def _criteria_type(behavior: Mapping[str, Any]) -> CriteriaType | None:
    """The ListViolationEvents behaviorCriteriaType a behavior falls under, if any."""
    criteria = behavior.get("criteria")
    if not isinstance(criteria, Mapping):
        return None
    if "mlDetectionConfig" in criteria:
        return "MACHINE_LEARNING"
    if "statisticalThreshold" in criteria:
        return "STATISTICAL"
    if "value" in criteria:
        return "STATIC"
    return None


def _dumps(value: object, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what}: not storable as JSON: {e}") from None


def _shown(value: object) -> str:
    """repr for a message, cut short (a huge int has no repr at all)."""
    try:
        text = repr(value)
    except ValueError:
        return "an integer too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: object) -> bool:
    """A str SQLite can store: one with a lone surrogate cannot be encoded as UTF-8."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _seconds(value: object) -> float | None:
    """`value` as float epoch seconds, or None if it is not a number (or NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return None if math.isnan(seconds) else seconds


def _time(record: Mapping[str, Any], key: str, what: str) -> float:
    value = _seconds(record.get(key))
    if value is None or math.isinf(value):
        raise StoreError(
            f"{what}: {key} must be epoch seconds (a finite number), got {_shown(record.get(key))}"
        )
    return value


def _columns(record: object, what: str) -> tuple[Mapping[str, Any], tuple[Any, ...]]:
    """The record checked as an object, and its shared columns: (violationId, thingName,
    securityProfileName, criteria type, suppressed, verificationState)."""
    if not isinstance(record, Mapping):
        raise StoreError(f"{what}: must be a JSON object")
    for key in ("violationId", "thingName", "securityProfileName"):
        if not _text(record.get(key)) or not record[key]:
            raise StoreError(f"{what}: {key} must be a non-empty UTF-8 string")
    if len(record["violationId"]) > MAX_VIOLATION_ID:
        raise StoreError(f"{what}: violationId is longer than {MAX_VIOLATION_ID} characters")
    behavior = record.get("behavior")
    if not isinstance(behavior, Mapping) or not isinstance(behavior.get("name"), str):
        raise StoreError(f"{what}: behavior must be an object with a name")
    state = record.get("verificationState", UNKNOWN)
    if state not in VERIFICATION_STATES:
        raise StoreError(
            f"{what}: verificationState must be one of {', '.join(VERIFICATION_STATES)},"
            f" got {state!r}"
        )
    return record, (
        record["violationId"],
        record["thingName"],
        record["securityProfileName"],
        _criteria_type(behavior),
        int(bool(behavior.get("suppressAlerts", False))),
        state,
    )


def _body(record: Mapping[str, Any], state: str, what: str) -> str:
    # verificationState is always in the answer, as AWS gives it.
    return _dumps({**record, "verificationState": state}, what)


def _event_row(event: object, index: int) -> tuple[Any, ...]:
    what = f"event {index}"
    checked, columns = _columns(event, what)
    if checked.get("violationEventType") not in EVENT_TYPES:
        raise StoreError(
            f"{what}: violationEventType must be one of {', '.join(EVENT_TYPES)},"
            f" got {checked.get('violationEventType')!r}"
        )
    at = _time(checked, "violationEventTime", what)
    return (at, *columns, _body(checked, columns[-1], what))


def _active_row(active: object, index: int) -> tuple[Any, ...]:
    what = f"active violation {index}"
    checked, columns = _columns(active, what)
    start = _time(checked, "violationStartTime", what)
    return (start, *columns, _body(checked, columns[-1], what))


def _encode_token(kind: str, key: Sequence[object]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(kind: str, token: object, key_types: tuple[type, ...]) -> list[Any]:
    """The keyset a token of this listing kind carries. Only a token this listing could
    have returned is accepted (it must encode back to itself); anything else, however
    forged, is InvalidRequest."""
    if not isinstance(token, str):
        raise InvalidRequest("nextToken", f"must be a string, got {_shown(token)}")

    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(
            "nextToken", f"{_shown(token)} is not a token returned by this listing: {why}"
        )

    if len(token) > MAX_TOKEN:
        raise bad(f"longer than {MAX_TOKEN} characters")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise bad("not base64url of JSON") from None
    if not isinstance(decoded, list) or len(decoded) != len(key_types) + 1:
        raise bad(f"not a list of {len(key_types) + 1} items")
    if decoded[0] != kind:
        raise bad("made by another listing")
    key = decoded[1:]
    for value, tp in zip(key, key_types, strict=True):
        if isinstance(value, bool) or not isinstance(value, tp):
            raise bad(f"{_shown(value)} is not a {tp.__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f"{_shown(value)} is not a finite number")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise bad("an integer out of the 64-bit range")
        if isinstance(value, str) and not _text(value):
            raise bad("a string that is not UTF-8")
    if _encode_token(kind, key) != token:
        raise bad("not in the form this listing writes")
    return key


def _check_max_results(max_results: object) -> None:
    if isinstance(max_results, bool) or not isinstance(max_results, int):
        raise InvalidRequest("maxResults", f"must be an integer, got {_shown(max_results)}")
    if not 1 <= max_results <= MAX_RESULTS:
        raise InvalidRequest("maxResults", f"must be 1-{MAX_RESULTS}, got {_shown(max_results)}")


def _check_times(start_time: object, end_time: object) -> tuple[float, float]:
    """startTime and endTime as epoch seconds; an infinite one is an open bound."""
    times = []
    for param, value in (("startTime", start_time), ("endTime", end_time)):
        seconds = _seconds(value)
        if seconds is None:
            raise InvalidRequest(param, f"must be epoch seconds (a number), got {_shown(value)}")
        times.append(seconds)
    if times[1] < times[0]:
        raise InvalidRequest("endTime", "is before startTime")
    return times[0], times[1]


def _check_text(param: str, value: object) -> None:
    if value is not None and not _text(value):
        raise InvalidRequest(param, f"must be a UTF-8 string, got {_shown(value)}")


def _check_enum(param: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise InvalidRequest(param, f"must be one of {', '.join(allowed)}, got {_shown(value)}")


def _filters(
    *,
    thing_name: str | None,
    security_profile_name: str | None,
    behavior_criteria_type: str | None,
    list_suppressed_alerts: bool | None,
    verification_state: str | None,
) -> tuple[list[str], list[object]]:
    """WHERE clauses shared by both listings (table alias `t`, verifications `v`)."""
    _check_text("thingName", thing_name)
    _check_text("securityProfileName", security_profile_name)
    _check_enum("behaviorCriteriaType", behavior_criteria_type, CRITERIA_TYPES)
    _check_enum("verificationState", verification_state, VERIFICATION_STATES)
    if list_suppressed_alerts is not None and not isinstance(list_suppressed_alerts, bool):
        raise InvalidRequest(
            "listSuppressedAlerts", f"must be true or false, got {_shown(list_suppressed_alerts)}"
        )
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (
        ("t.thing_name", thing_name),
        ("t.profile", security_profile_name),
        ("t.criteria_type", behavior_criteria_type),
        ("COALESCE(v.state, t.verification_state)", verification_state),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    # None lists both kinds (as AWS does); True only suppressed, False only unsuppressed.
    if list_suppressed_alerts is not None:
        clauses.append("t.suppressed = ?")
        params.append(int(list_suppressed_alerts))
    return clauses, params


def _with_verification(body: str, state: str | None, description: str | None) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(body)
    if state is not None:
        record["verificationState"] = state
        if description is None:
            record.pop("verificationStateDescription", None)
        else:
            record["verificationStateDescription"] = description
    return record


@dataclass(frozen=True, slots=True)
class _Buffered:
    ts: float
    line: str  # the envelope as JSON


@dataclass(frozen=True, slots=True)
class _Batch:
    time_min: float
    time_max: float
    count: int
    body: bytes


def _checked(
    events: Sequence[Mapping[str, Any]], active: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    event_rows = [_event_row(e, i) for i, e in enumerate(events)]
    active_rows = [_active_row(a, i) for i, a in enumerate(active)]
    ids = [row[1] for row in active_rows]
    if len(set(ids)) != len(ids):
        raise StoreError("active violations: a violationId appears twice")
    return event_rows, active_rows


def _recording(events: Sequence[object], active: Sequence[object]) -> str:
    return (
        f"recording {counted(len(events), 'event')} and {counted(len(active), 'active violation')}"
    )


def _put_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], publish: bool) -> None:
    for row in rows:
        cursor = conn.execute(
            "INSERT INTO violation_events (time, violation_id, thing_name, profile,"
            " criteria_type, suppressed, verification_state, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        if publish:
            conn.execute("INSERT INTO unpublished (event_id) VALUES (?)", (cursor.lastrowid,))


_ACTIVE_COLUMNS = (
    "start_time, violation_id, thing_name, profile, criteria_type, suppressed,"
    " verification_state, body"
)


def _put_active(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Make the active set `rows`, writing only the rows that differ from the stored."""
    stored = {
        row[1]: row for row in conn.execute(f"SELECT {_ACTIVE_COLUMNS} FROM active_violations")
    }
    wanted = {row[1] for row in rows}
    conn.executemany(
        "DELETE FROM active_violations WHERE violation_id = ?",
        [(violation_id,) for violation_id in stored if violation_id not in wanted],
    )
    conn.executemany(
        f"INSERT INTO active_violations ({_ACTIVE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (violation_id) DO UPDATE SET start_time = excluded.start_time,"
        " thing_name = excluded.thing_name, profile = excluded.profile,"
        " criteria_type = excluded.criteria_type, suppressed = excluded.suppressed,"
        " verification_state = excluded.verification_state, body = excluded.body",
        [row for row in rows if stored.get(row[1]) != row],
    )


def _compressed(records: Sequence[_Buffered]) -> bytes:
    """A batch body: the envelopes as JSON lines, compressed."""
    return zlib.compress("\n".join(record.line for record in records).encode(), METRICS_LEVEL)


def _put_batch(conn: sqlite3.Connection, batch: _Batch) -> None:
    conn.execute(
        "INSERT INTO metrics_batches (time_min, time_max, count, body) VALUES (?, ?, ?, ?)",
        (batch.time_min, batch.time_max, batch.count, batch.body),
    )


class History(Store):
    """The store on one open connection (see Store: one thread; faults are
    StoreUnavailable and a failed write rolled back, so the caller keeps its data in
    memory and retries; check_path() and reopen() for a state dir deleted while open)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        super().__init__(
            path, MIGRATIONS, create=create, page_size=PAGE_SIZE, incremental_vacuum=True
        )
        self._metrics: list[_Buffered] = []  # added, not yet written
        self._metrics_bytes = 0  # of their JSON
        self.metrics_dropped = 0  # reports dropped because the store could not take them

    # -- writes -------------------------------------------------------------------------

    def record(
        self,
        events: Sequence[Mapping[str, Any]],
        active: Sequence[Mapping[str, Any]],
        alarm_state: Mapping[str, Any],
        *,
        publish: bool = False,
    ) -> None:
        """Append `events`, replace the active set with `active` and save the rule core's
        `alarm_state`, all in one transaction. Everything is checked before writing.
        With `publish`, the events are also listed by `unpublished_events` until
        `mark_published` or `quarantine_event`. On StoreUnavailable nothing of it is
        stored: call again with the same arguments (or newer state) later."""
        event_rows, active_rows = _checked(events, active)
        state = _dumps(alarm_state, "alarm state")
        with self._transaction(_recording(events, active)) as conn:
            _put_events(conn, event_rows, publish)
            _put_active(conn, active_rows)
            self._put_blob(conn, _ALARM_STATE, state)
            # The blob is the state now: rows of an earlier record_changes would mix in.
            conn.execute("DELETE FROM rule_state")
            conn.execute("DELETE FROM baseline_buckets")

    def record_changes(
        self,
        events: Sequence[Mapping[str, Any]],
        active: Sequence[Mapping[str, Any]],
        changes: StateChanges,
        *,
        publish: bool = False,
        metrics: bool = False,
        counters: Mapping[str, Any] | None = None,
    ) -> None:
        """As `record`, with the alarm state as what changed since the last save: rows
        of `changes.rules` and `changes.buckets` upserted, those given None deleted. The
        active set is written as a difference too (new and changed violations upserted,
        ended ones deleted). One transaction, durable when this returns; the old alarm
        state blob goes with it (load_state holds the state from now on). With
        `metrics`, the buffered metrics history is written in the same transaction (one
        sync instead of two), and `counters` saved as save_counters does. On
        StoreUnavailable nothing of it is stored, the metrics stay buffered and the
        changes must be offered again (merged with newer ones)."""
        event_rows, active_rows = _checked(events, active)
        rules = _state_rows(changes.rules, "rule state")
        buckets = _state_rows(changes.buckets, "baseline bucket")
        batch = self._batch() if metrics else None
        counters_body = None if counters is None else _dumps(counters, "network counters")
        with self._transaction(_recording(events, active)) as conn:
            _put_events(conn, event_rows, publish)
            _put_active(conn, active_rows)
            for table, (upserts, deletes) in (("rule_state", rules), ("baseline_buckets", buckets)):
                conn.executemany(
                    f"INSERT INTO {table} (key, body) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET body = excluded.body",
                    upserts,
                )
                conn.executemany(f"DELETE FROM {table} WHERE key = ?", deletes)
            conn.execute("DELETE FROM blobs WHERE name = ?", (_ALARM_STATE,))
            if counters_body is not None:
                self._put_blob(conn, _COUNTERS, counters_body)
            if batch is not None:
                _put_batch(conn, batch)
        if batch is not None:
            self._flushed(batch)

    def put_verification_state(
        self, violation_id: str, state: str, description: str | None = None
    ) -> None:
        """Set the verification state of a violation: its events and its active entry."""
        _check_text("violationId", violation_id)
        _check_enum("verificationState", state, VERIFICATION_STATES)
        if description is not None:
            _check_text("verificationStateDescription", description)
            if len(description) > MAX_DESCRIPTION:
                raise InvalidRequest(
                    "verificationStateDescription", f"longer than {MAX_DESCRIPTION} characters"
                )
            if _CONTROL.search(description):
                raise InvalidRequest(
                    "verificationStateDescription", "must not contain control characters"
                )
        with self._transaction("setting a verification state") as conn:
            known = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM violation_events WHERE violation_id = ?)"
                " OR EXISTS (SELECT 1 FROM active_violations WHERE violation_id = ?)",
                (violation_id, violation_id),
            ).fetchone()[0]
            if not known:
                raise ViolationNotFound(
                    f"no violation with id {violation_id!r} (ResourceNotFoundException)"
                )
            conn.execute(
                "INSERT INTO verifications (violation_id, state, description) VALUES (?, ?, ?)"
                " ON CONFLICT (violation_id)"
                " DO UPDATE SET state = excluded.state, description = excluded.description",
                (violation_id, state, description),
            )

    def unpublished_events(self) -> list[tuple[int, dict[str, Any]]]:
        """(id, event) recorded with `publish` and neither marked published nor
        quarantined, oldest first."""
        with self._guard("reading the events to publish"):
            rows = self._conn.execute(
                "SELECT e.id, e.body FROM unpublished u"
                " JOIN violation_events e ON e.id = u.event_id ORDER BY e.id"
            ).fetchall()
        return [(row[0], json.loads(row[1])) for row in rows]

    def mark_published(self, event_ids: Sequence[int]) -> None:
        with self._transaction(f"marking {counted(len(event_ids), 'event')} published") as conn:
            conn.executemany(
                "DELETE FROM unpublished WHERE event_id = ?", [(i,) for i in event_ids]
            )

    def quarantine_event(self, event_id: int, reason: str, now: float | None = None) -> bool:
        """Take an unpublished event that can never be sent (it could not be encoded) off
        the list to publish, for good: it stays stored and listed with its reason, and
        counted by `quarantined`; `now` is the time of it (the wall clock if None).
        False if it was not waiting to be published."""
        with self._transaction("quarantining an event") as conn:
            waiting = conn.execute(
                "DELETE FROM unpublished WHERE event_id = ?", (event_id,)
            ).rowcount
            if waiting:
                conn.execute(
                    "INSERT INTO quarantined_events (event_id, reason, time) VALUES (?, ?, ?)",
                    (event_id, reason, time.time() if now is None else now),
                )
        if waiting:
            log.error(kv("event_quarantined", id=event_id, reason=reason))
        return bool(waiting)

    def quarantined(self) -> int:
        """Events quarantined and still stored (they go with their event at retention)."""
        with self._guard("counting quarantined events"):
            count: int = self._conn.execute("SELECT COUNT(*) FROM quarantined_events").fetchone()[0]
        return count

    def quarantined_events(self) -> list[tuple[int, str, dict[str, Any]]]:
        """(id, reason, event) of the quarantined events, oldest first."""
        with self._guard("reading quarantined events"):
            rows = self._conn.execute(
                "SELECT e.id, q.reason, e.body FROM quarantined_events q"
                " JOIN violation_events e ON e.id = q.event_id ORDER BY e.id"
            ).fetchall()
        return [(row[0], row[1], json.loads(row[2])) for row in rows]

    def add_metrics(
        self,
        timestamp: float,
        report: Mapping[str, Any],
        clients: Mapping[str, Mapping[str, object]] | None = None,
    ) -> None:
        """Append one report to the metrics history, as a replay envelope, in memory:
        flush_metrics writes it. Once METRICS_FLUSH_BYTES of JSON are buffered this
        flushes by itself (a StoreUnavailable from that leaves the report buffered)."""
        envelope = make_envelope(timestamp, dict(report), clients)
        ts, _ = parse_envelope(envelope)  # refuses what replay would refuse
        line = _dumps(envelope, "metrics report")
        self._metrics.append(_Buffered(ts, line))
        self._metrics_bytes += len(line)
        dropped = 0
        while self._metrics_bytes > METRICS_BUFFER_MAX_BYTES:
            self._metrics_bytes -= len(self._metrics.pop(0).line)
            dropped += 1
        if dropped:
            self.metrics_dropped += dropped
            log.warning(
                kv(
                    "metrics_history_dropped",
                    reports=dropped,
                    reason=f"store not written for {METRICS_BUFFER_MAX_BYTES} bytes of reports",
                )
            )
        if self._metrics_bytes >= METRICS_FLUSH_BYTES:
            self.flush_metrics()

    def close(self) -> None:
        """Write the buffered metrics history (as flush_metrics), then close. If that
        fails the reports stay buffered in this object (reopen() keeps them) and a
        line says how many."""
        if self._metrics:
            try:
                self.flush_metrics()
            except StoreError as e:
                log.warning(kv("metrics_history_unwritten", reports=len(self._metrics), error=e))
        super().close()

    @property
    def buffered_metrics(self) -> int:
        """Reports added and not yet written: what a power cut now would lose."""
        return len(self._metrics)

    def flush_metrics(self) -> None:
        """Write the buffered reports as one compressed batch, in one transaction. On
        StoreUnavailable they stay buffered for the next flush."""
        batch = self._batch()
        if batch is None:
            return
        with self._transaction(f"writing {counted(batch.count, 'metrics report')}") as conn:
            _put_batch(conn, batch)
        self._flushed(batch)

    def _batch(self) -> _Batch | None:
        if not self._metrics:
            return None
        times = [record.ts for record in self._metrics]
        return _Batch(min(times), max(times), len(times), _compressed(self._metrics))

    def _flushed(self, batch: _Batch) -> None:
        # Only this thread adds reports, so the first batch.count are the batch's.
        written, self._metrics = self._metrics[: batch.count], self._metrics[batch.count :]
        self._metrics_bytes -= sum(len(record.line) for record in written)

    def save_counters(self, counters: Mapping[str, Any]) -> None:
        body = _dumps(counters, "network counters")
        with self._transaction("saving the network counters") as conn:
            self._put_blob(conn, _COUNTERS, body)

    def prune(
        self,
        now: float,
        *,
        events_max_age_s: float,
        metrics_max_age_s: float,
        metrics_max_bytes: int | None = None,
    ) -> None:
        """Drop events and metrics history older than their retention, then the oldest
        metrics history until it holds at most `metrics_max_bytes` (the compressed
        bodies of its batches; while rows from before batches remain, the file's used
        bytes, which counts them with everything else). Active violations stay however
        old they are: they are the rule core's current state. Free pages then go back
        to the file system (Store.reclaim_space)."""
        cutoff = now - metrics_max_age_s
        with self._transaction("pruning old events and metrics") as conn:
            events = conn.execute(
                "DELETE FROM violation_events WHERE time < ?", (now - events_max_age_s,)
            ).rowcount
            metrics = conn.execute("DELETE FROM metrics_history WHERE time < ?", (cutoff,)).rowcount
            metrics += sum(
                count
                for (count,) in conn.execute(
                    "DELETE FROM metrics_batches WHERE time_max < ? RETURNING count", (cutoff,)
                ).fetchall()
            )
            metrics += self._cut_batches(conn, cutoff)
            if metrics_max_bytes is not None:
                metrics += self._fit_metrics(conn, metrics_max_bytes)
            conn.execute(
                "DELETE FROM verifications WHERE violation_id NOT IN"
                " (SELECT violation_id FROM violation_events"
                " UNION SELECT violation_id FROM active_violations)"
            )
        reclaimed = self.reclaim_space()
        if events or metrics or reclaimed:
            log.info(kv("store_pruned", events=events, metrics=metrics, reclaimed_bytes=reclaimed))

    def _cut_batches(self, conn: sqlite3.Connection, cutoff: float) -> int:
        """Rewrite the batches holding reports on both sides of `cutoff` without the
        older ones (retention by age is exact, not one batch coarse); how many went."""
        straddling = conn.execute(
            "SELECT id, count, body FROM metrics_batches WHERE time_min < ?", (cutoff,)
        ).fetchall()
        dropped = 0
        for batch_id, count, body in straddling:
            kept = [
                _Buffered(ts, line)
                for ts, line, _ in self._batch_records(batch_id, body)
                if ts >= cutoff
            ]
            times = [record.ts for record in kept]
            packed = _compressed(kept)
            conn.execute(
                "UPDATE metrics_batches SET time_min = ?, time_max = ?, count = ?, body = ?"
                " WHERE id = ?",
                (min(times), max(times), len(kept), packed, batch_id),
            )
            dropped += count - len(kept)
        return dropped

    def _fit_metrics(self, conn: sqlite3.Connection, max_bytes: int) -> int:
        """Delete the oldest metrics history until it fits `max_bytes`; how many went."""
        dropped = 0
        # Rows from before batches are older than any batch. Their size is not cheap to
        # read (a TEXT length() reads the whole row), so they go oldest first while the
        # whole file's used bytes are over the bound.
        while (
            self.used_bytes() > max_bytes
            and conn.execute("SELECT EXISTS (SELECT 1 FROM metrics_history)").fetchone()[0]
        ):
            dropped += conn.execute(
                "DELETE FROM metrics_history WHERE id IN"
                " (SELECT id FROM metrics_history ORDER BY time, id LIMIT ?)",
                (_LEGACY_CHUNK,),
            ).rowcount
        # length() of a BLOB reads only the row's header, not its overflow pages.
        batches = conn.execute(
            "SELECT id, count, length(body) FROM metrics_batches ORDER BY time_max, id"
        ).fetchall()
        stored = sum(size for _, _, size in batches)
        doomed: list[tuple[int]] = []
        for batch_id, count, size in batches:
            if stored <= max_bytes:
                break
            doomed.append((batch_id,))
            stored -= size
            dropped += count
        conn.executemany("DELETE FROM metrics_batches WHERE id = ?", doomed)
        return dropped

    @staticmethod
    def _put_blob(conn: sqlite3.Connection, name: str, body: str) -> None:
        conn.execute(
            "INSERT INTO blobs (name, body) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            (name, body),
        )

    # -- reads --------------------------------------------------------------------------

    def _get_blob(self, name: str) -> dict[str, Any] | None:
        with self._guard(f"reading the {name.replace('_', ' ')}"):
            row = self._conn.execute("SELECT body FROM blobs WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def load_alarm_state(self) -> dict[str, Any] | None:
        """The alarm state saved whole by the last record(), or None: on a fresh store,
        and once record_changes has saved it as rows (see load_state)."""
        return self._get_blob(_ALARM_STATE)

    def load_state(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(rules, buckets): the alarm state rows saved by record_changes, by key; both
        empty on a fresh store or one whose state is still the record() blob."""
        loaded = []
        for table, what in (("rule_state", "rule state"), ("baseline_buckets", "baseline bucket")):
            with self._guard(f"reading the {what}"):
                rows = self._conn.execute(f"SELECT key, body FROM {table}").fetchall()
            loaded.append({key: self._decode_state(body, f"{what} {key!r}") for key, body in rows})
        return loaded[0], loaded[1]

    def _decode_state(self, body: str | bytes, what: str) -> dict[str, Any]:
        try:
            text = zlib.decompress(body).decode() if isinstance(body, bytes) else body
            decoded = json.loads(text)
        except (zlib.error, UnicodeDecodeError, ValueError) as e:
            raise StoreCorrupt(self.path, f"{what} is damaged: {e}") from None
        if not isinstance(decoded, dict):
            raise StoreCorrupt(self.path, f"{what} is damaged: not a JSON object")
        return decoded

    def load_counters(self) -> dict[str, Any] | None:
        return self._get_blob(_COUNTERS)

    def list_violation_events(
        self,
        start_time: float,
        end_time: float,
        *,
        thing_name: str | None = None,
        security_profile_name: str | None = None,
        behavior_criteria_type: str | None = None,
        list_suppressed_alerts: bool | None = None,
        verification_state: str | None = None,
        max_results: int = MAX_RESULTS,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListViolationEvents: events with start_time <= time < end_time, oldest first
        (ties in recording order); an infinite time is an open bound. nextToken is
        present only when more events follow."""
        _check_max_results(max_results)
        start, end = _check_times(start_time, end_time)
        clauses, params = _filters(
            thing_name=thing_name,
            security_profile_name=security_profile_name,
            behavior_criteria_type=behavior_criteria_type,
            list_suppressed_alerts=list_suppressed_alerts,
            verification_state=verification_state,
        )
        clauses[:0] = ["t.time >= ?", "t.time < ?"]
        params[:0] = [start, end]
        return self._page(
            "violationEvents", "violation_events", ("time", "id"), (float, int),
            clauses, params, max_results, next_token,
        )  # fmt: skip

    def list_active_violations(
        self,
        *,
        thing_name: str | None = None,
        security_profile_name: str | None = None,
        behavior_criteria_type: str | None = None,
        list_suppressed_alerts: bool | None = None,
        verification_state: str | None = None,
        max_results: int = MAX_RESULTS,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListActiveViolations, ordered by violationStartTime then violationId."""
        _check_max_results(max_results)
        clauses, params = _filters(
            thing_name=thing_name,
            security_profile_name=security_profile_name,
            behavior_criteria_type=behavior_criteria_type,
            list_suppressed_alerts=list_suppressed_alerts,
            verification_state=verification_state,
        )
        return self._page(
            "activeViolations", "active_violations", ("start_time", "violation_id"),
            (float, str), clauses, params, max_results, next_token,
        )  # fmt: skip

    def _page(
        self,
        answer_key: str,
        table: str,
        order: tuple[str, str],
        order_types: tuple[type, type],
        clauses: list[str],
        params: list[Any],
        max_results: int,
        next_token: str | None,
    ) -> dict[str, Any]:
        """One page of `table` in `order`, with the verification state merged in. The
        token is the keyset of the page's last row, tagged with the table."""
        first, second = order
        if next_token is not None:
            clauses = [*clauses, f"(t.{first}, t.{second}) > (?, ?)"]
            params = [*params, *_decode_token(table, next_token, order_types)]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._guard(f"listing {answer_key}"):
            rows = self._conn.execute(
                f"SELECT t.{first}, t.{second}, t.body, v.state, v.description FROM {table} t"
                " LEFT JOIN verifications v ON v.violation_id = t.violation_id"
                f" {where} ORDER BY t.{first}, t.{second} LIMIT ?",
                [*params, max_results + 1],
            ).fetchall()
        page = rows[:max_results]
        answer: dict[str, Any] = {answer_key: [_with_verification(*r[2:5]) for r in page]}
        if len(rows) > max_results:
            answer["nextToken"] = _encode_token(table, page[-1][:2])
        return answer

    def export_metrics(self, start_time: float, end_time: float) -> Iterator[dict[str, Any]]:
        """Metrics-history envelopes written (not those still buffered) with
        start_time <= timestamp < end_time, oldest first and equal times in recording
        order (an infinite time is an open bound). Batches are read in the order of
        their earliest timestamp and merged, so a clock set back still gives one
        ordered stream, holding one batch at a time when it was not."""
        start, end = _check_times(start_time, end_time)
        # (timestamp, kind, row id, line in batch, envelope): kind 0 rows from before
        # batches were recorded before any batch.
        pending: list[tuple[float, int, int, int, dict[str, Any]]] = []
        with self._guard("exporting metrics history"):
            cursor = self._conn.execute(
                "SELECT time, 0, id, body FROM metrics_history WHERE time >= ? AND time < ?"
                " UNION ALL SELECT time_min, 1, id, body FROM metrics_batches"
                " WHERE time_max >= ? AND time_min < ? ORDER BY 1, 2, 3",
                (start, end, start, end),
            )
            for earliest, kind, row_id, body in cursor:
                while pending and pending[0][0] < earliest:
                    yield heapq.heappop(pending)[4]
                records = (
                    self._batch_records(row_id, body)
                    if kind
                    else [(earliest, body, self._decoded(body, row_id))]
                )
                for index, (ts, _, envelope) in enumerate(records):
                    if start <= ts < end:
                        heapq.heappush(pending, (ts, kind, row_id, index, envelope))
        while pending:
            yield heapq.heappop(pending)[4]

    def _batch_records(
        self, batch_id: int, body: bytes
    ) -> Iterator[tuple[float, str, dict[str, Any]]]:
        """(timestamp, JSON line, envelope) of each report of a batch, in recording order,
        parsed one at a time: a batch of 150-connection reports is ~6 MiB as objects, and
        the daemon's RSS would keep that high-water mark after every daily prune."""
        try:
            lines = zlib.decompress(body).decode().split("\n")
        except (zlib.error, UnicodeDecodeError) as e:
            raise StoreCorrupt(self.path, f"metrics batch {batch_id} is damaged: {e}") from None
        for line in lines:
            envelope = self._decoded(line, batch_id)
            try:
                ts = float(envelope["timestamp"])
            except (KeyError, TypeError, ValueError) as e:
                raise StoreCorrupt(
                    self.path, f"metrics batch {batch_id} is damaged: {e!r}"
                ) from None
            yield ts, line, envelope

    def _decoded(self, line: str, row_id: int) -> dict[str, Any]:
        try:
            envelope: dict[str, Any] = json.loads(line)
        except ValueError as e:
            raise StoreCorrupt(self.path, f"metrics history row {row_id} is damaged: {e}") from None
        return envelope


def open_history(path: str | Path, *, create: bool = True) -> History:
    """The store at `path`, migrated to the current schema. With create=False a missing
    file is StoreNotFound instead of a new empty store, and a damaged one StoreCorrupt
    instead of being moved aside (for the query verbs, which only read beside the
    daemon). With create=True a damaged file is moved aside: see History.moved_aside."""
    return History(path, create=create)

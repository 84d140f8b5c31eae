"""The outbound spool: every message is written here before it is sent and deleted
only when its PUBACK arrives, so a crash, a power cut or a broker outage loses nothing.

The spool is bounded by payload bytes. When a new message does not fit, the oldest
metrics reports go first, then the new message itself if it is a metrics report;
violation events go only when nothing else is left, oldest first. Every drop is
counted in the file (the counters survive a restart) and logged.

A message that can never be sent (the broker or the client refused it) is quarantined:
moved out of the send queue, so it never blocks it, and kept with its topic, payload,
reason and time. The quarantine has its own bound, the newest QUARANTINE_MAX messages
within max_bytes of payload; an older one dropped to keep it is counted as a drop.

A message put with `durable=False` (a metrics report while the broker is connected:
it is usually acknowledged within a second) is held in memory instead, in the same
id order, and written only by `persist_held` (the outbox calls it on a disconnect, at
stop, and for what waits too long). That spares the SD card a synced write and a
synced delete per report; a power cut can lose those held reports, never an event.

A Spool wraps one SQLite connection and must be used from the thread that opened it.
Faults are StoreUnavailable, after which nothing of the call was written (see Store).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from agent.logs import kv
from agent.store.db import Store, counted

log = logging.getLogger(__name__)

Kind = Literal["metrics", "violation"]
KINDS: tuple[Kind, ...] = get_args(Kind)
SPOOL_FILE = "spool.db"  # the outbound spool, beside the store
QUARANTINE_MAX = 1000

# AUTOINCREMENT: ids are never reused, so a late PUBACK for an evicted message can
# never delete a newer one that took over its id.
_MIGRATIONS = (
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('metrics', 'violation')),
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX outbox_kind ON outbox (kind, id);
    CREATE TABLE drops (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
    """,
    # Messages that can never be sent, under the id they had in the outbox.
    """
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        quarantined REAL NOT NULL,
        reason TEXT NOT NULL
    );
    """,
)


def spool_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / SPOOL_FILE


@dataclass(frozen=True, slots=True)
class SpoolItem:
    id: int
    kind: Kind
    topic: str
    payload: bytes
    created: float  # epoch seconds when it was spooled


@dataclass(frozen=True, slots=True)
class QuarantinedItem:
    item: SpoolItem
    quarantined: float  # epoch seconds when it was quarantined
    reason: str


class Spool(Store):
    def __init__(self, path: str | Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("spool max_bytes must be positive")
        self.max_bytes = max_bytes
        super().__init__(path, _MIGRATIONS, create=True)
        self._held: dict[int, SpoolItem] = {}  # id -> message not written yet
        with self._guard("reading the last message id"):
            # Ids come from here, held or written, so that they keep one order; the
            # table's AUTOINCREMENT counter covers every id ever written.
            row = self._conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
            ).fetchone()
        self._last_id: int = row[0] if row else 0

    def put(
        self, kind: Kind, topic: str, payload: bytes, now: float, *, durable: bool = True
    ) -> int | None:
        """Spool one message and return its id, or None when the message itself had
        to be dropped to keep the bound (it is then counted and logged). Without
        `durable` it is only held in memory until `persist_held`."""
        if kind not in KINDS:
            raise ValueError(f"unknown spool kind {kind!r}")
        self._last_id += 1
        item = SpoolItem(self._last_id, kind, topic, payload, now)
        if not durable:
            self._held[item.id] = item
            return item.id
        with self._transaction(f"spooling a {kind} message of {len(payload)} bytes"):
            return self._insert(item)

    def persist_held(self, older_than: float | None = None) -> None:
        """Write the held messages (only those created before `older_than`, when given),
        in one transaction, under the ids they were given."""
        items = [i for i in self._held.values() if older_than is None or i.created < older_than]
        if not items:
            return
        with self._transaction(f"spooling {counted(len(items), 'held message')}"):
            for item in items:
                self._insert(item)
        for item in items:
            del self._held[item.id]

    def _insert(self, item: SpoolItem) -> int | None:
        """Write `item` inside the caller's transaction, evicting what the bound needs;
        None when it is itself the one to drop (counted and logged)."""
        kind, topic, size = item.kind, item.topic, len(item.payload)
        victims = self._victims(kind, size)
        if victims is None:
            self._count_drop(kind)
            too_large = size > self.max_bytes
            log.log(
                logging.ERROR if too_large else logging.WARNING,
                kv(
                    "spool_drop",
                    kind=kind,
                    topic=topic,
                    bytes=size,
                    max_bytes=self.max_bytes,
                    reason="larger than the whole spool" if too_large else "spool full",
                ),
            )
            return None
        for victim_id, victim_kind, victim_size in victims:
            self._drop("outbox", victim_id, victim_kind, victim_size, "spool full")
        self._conn.execute(
            "INSERT INTO outbox (id, kind, topic, payload, size, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (item.id, kind, topic, item.payload, size, item.created),
        )
        return item.id

    def _victims(self, kind: Kind, size: int) -> list[tuple[int, Kind, int]] | None:
        """(id, kind, size) of the messages to evict so that `size` more bytes fit, or
        None when the new message itself is the one to drop. Changes nothing."""
        if size > self.max_bytes:
            return None
        query = "SELECT COALESCE(SUM(size), 0) FROM outbox"
        free: int = self.max_bytes - self._conn.execute(query).fetchone()[0]
        victims: list[tuple[int, Kind, int]] = []
        # Metrics go before violations. The new message is the newest of its kind, so it
        # is dropped once every stored message of its kind and the kinds before it is.
        for candidate_kind in KINDS[: KINDS.index(kind) + 1]:
            query = "SELECT id, kind, size FROM outbox WHERE kind = ? ORDER BY id"
            for row in self._conn.execute(query, (candidate_kind,)):
                if free >= size:
                    return victims
                victims.append(row)
                free += row[2]
        return victims if free >= size else None

    def _drop(self, table: str, item_id: int, kind: Kind, size: int, reason: str) -> None:
        self._conn.execute(f"DELETE FROM {table} WHERE id = ?", (item_id,))
        self._count_drop(kind)
        log.warning(kv("spool_drop", id=item_id, kind=kind, bytes=size, reason=reason))

    def _count_drop(self, kind: Kind) -> None:
        self._conn.execute(
            "INSERT INTO drops (kind, count) VALUES (?, 1)"
            " ON CONFLICT (kind) DO UPDATE SET count = count + 1",
            (kind,),
        )

    def pending(self, limit: int) -> list[SpoolItem]:
        """Up to `limit` messages, written or held, oldest first."""
        with self._guard("reading the messages to send"):
            rows = self._conn.execute(
                "SELECT id, kind, topic, payload, created FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        items = [SpoolItem(*row) for row in rows] + list(self._held.values())
        return sorted(items, key=lambda item: item.id)[:limit]

    def ack(self, *item_ids: int) -> None:
        """The broker has these messages: forget them, the written ones in one
        transaction (one fsync), the held ones without writing. Unknown ids (evicted
        meanwhile) are ignored."""
        written = [i for i in item_ids if self._held.pop(i, None) is None]
        if not written:
            return
        with self._transaction(f"forgetting {counted(len(written), 'delivered message')}") as conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in written])

    def quarantine(self, item_id: int, reason: str, now: float | None = None) -> bool:
        """Move a message that can never be sent (the broker or the client refused it)
        out of the send queue into the quarantine, with `reason` and the time `now`
        (the wall clock if None). False if it is no longer in the queue (acked or
        evicted meanwhile). The oldest quarantined go, counted as drops, to keep the
        quarantine within QUARANTINE_MAX messages and max_bytes."""
        held = self._held.pop(item_id, None)
        with self._transaction("quarantining a message") as conn:
            if held is not None:
                self._insert(held)
            moved = conn.execute(
                "INSERT INTO quarantine (id, kind, topic, payload, size, created, quarantined,"
                " reason) SELECT id, kind, topic, payload, size, created, ?, ?"
                " FROM outbox WHERE id = ?",
                (time.time() if now is None else now, reason, item_id),
            ).rowcount
            if not moved:
                return False
            conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            log.error(kv("spool_quarantined", id=item_id, reason=reason))
            count, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM quarantine"
            ).fetchone()
            oldest = conn.execute("SELECT id, kind, size FROM quarantine ORDER BY id")
            for victim_id, victim_kind, victim_size in oldest.fetchall():
                if count <= QUARANTINE_MAX and size <= self.max_bytes:
                    break
                self._drop("quarantine", victim_id, victim_kind, victim_size, "quarantine full")
                count, size = count - 1, size - victim_size
        return True

    def quarantined(self) -> int:
        """Messages held in the quarantine."""
        with self._guard("counting quarantined messages"):
            count: int = self._conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        return count

    def quarantined_items(self) -> list[QuarantinedItem]:
        """The quarantined messages, oldest first."""
        with self._guard("reading quarantined messages"):
            rows = self._conn.execute(
                "SELECT id, kind, topic, payload, created, quarantined, reason"
                " FROM quarantine ORDER BY id"
            ).fetchall()
        return [QuarantinedItem(SpoolItem(*row[:5]), row[5], row[6]) for row in rows]

    def depth(self) -> tuple[int, int]:
        """(messages, payload bytes) waiting to be sent, written or held."""
        with self._guard("counting the messages to send"):
            query = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            count, size = self._conn.execute(query).fetchone()
        held = self._held.values()
        return count + len(held), size + sum(len(i.payload) for i in held)

    def drops(self) -> dict[Kind, int]:
        counts = dict.fromkeys(KINDS, 0)
        with self._guard("reading the drop counts"):
            counts.update(self._conn.execute("SELECT kind, count FROM drops"))
        return counts

"""The outbound spool: every message is written here before it is sent and deleted
only when its PUBACK arrives, so a crash, a power cut or a broker outage loses nothing.

The spool is bounded by payload bytes. When a new message does not fit, the oldest
metrics reports go first, then the new message itself if it is a metrics report;
violation events go only when nothing else is left, oldest first. Every drop is
counted in the file (the counters survive a restart) and logged.

A Spool wraps one SQLite connection and must be used from the thread that opened it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from agent.logs import kv
from agent.store.db import open_db

log = logging.getLogger(__name__)

Kind = Literal["metrics", "violation"]
KINDS: tuple[Kind, ...] = get_args(Kind)

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
)


@dataclass(frozen=True, slots=True)
class SpoolItem:
    id: int
    kind: Kind
    topic: str
    payload: bytes
    created: float  # epoch seconds when it was spooled


class Spool:
    def __init__(self, path: str | Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("spool max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._db = open_db(self.path, _MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def put(self, kind: Kind, topic: str, payload: bytes, now: float) -> int | None:
        """Spool one message and return its id, or None when the message itself had
        to be dropped to keep the bound (it is then counted and logged)."""
        if kind not in KINDS:
            raise ValueError(f"unknown spool kind {kind!r}")
        size = len(payload)
        with self._transaction():
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
                self._drop(victim_id, victim_kind, victim_size, "spool full")
            return self._db.execute(
                "INSERT INTO outbox (kind, topic, payload, size, created) VALUES (?, ?, ?, ?, ?)",
                (kind, topic, payload, size, now),
            ).lastrowid

    def _victims(self, kind: Kind, size: int) -> list[tuple[int, Kind, int]] | None:
        """(id, kind, size) of the messages to evict so that `size` more bytes fit, or
        None when the new message itself is the one to drop. Changes nothing."""
        if size > self.max_bytes:
            return None
        free = self.max_bytes - self.depth()[1]
        victims: list[tuple[int, Kind, int]] = []
        # Metrics go before violations. The new message is the newest of its kind, so it
        # is dropped once every stored message of its kind and the kinds before it is.
        for candidate_kind in KINDS[: KINDS.index(kind) + 1]:
            query = "SELECT id, kind, size FROM outbox WHERE kind = ? ORDER BY id"
            for row in self._db.execute(query, (candidate_kind,)):
                if free >= size:
                    return victims
                victims.append(row)
                free += row[2]
        return victims if free >= size else None

    def _drop(self, item_id: int, kind: Kind, size: int, reason: str) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        self._count_drop(kind)
        log.warning(kv("spool_drop", id=item_id, kind=kind, bytes=size, reason=reason))

    def _count_drop(self, kind: Kind) -> None:
        self._db.execute(
            "INSERT INTO drops (kind, count) VALUES (?, 1)"
            " ON CONFLICT (kind) DO UPDATE SET count = count + 1",
            (kind,),
        )

    def pending(self, limit: int) -> list[SpoolItem]:
        """Up to `limit` messages, oldest first."""
        rows = self._db.execute(
            "SELECT id, kind, topic, payload, created FROM outbox ORDER BY id LIMIT ?", (limit,)
        )
        return [SpoolItem(*row) for row in rows]

    def ack(self, *item_ids: int) -> None:
        """The broker has these messages: forget them, in one transaction (one fsync).
        Unknown ids (evicted meanwhile) are ignored."""
        with self._transaction():
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in item_ids])

    def discard(self, item_id: int, reason: str) -> None:
        """Drop a message that can never be delivered (the broker refused it)."""
        with self._transaction():
            query = "SELECT kind, size FROM outbox WHERE id = ?"
            row = self._db.execute(query, (item_id,)).fetchone()
            if row is not None:
                self._drop(item_id, row[0], row[1], reason)

    def depth(self) -> tuple[int, int]:
        """(messages, payload bytes) waiting to be sent."""
        query = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
        count, size = self._db.execute(query).fetchone()
        return count, size

    def drops(self) -> dict[Kind, int]:
        counts = dict.fromkeys(KINDS, 0)
        counts.update(self._db.execute("SELECT kind, count FROM drops"))
        return counts

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

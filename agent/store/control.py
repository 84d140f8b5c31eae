"""The remote control store (state_dir/control.db): the journal of every control
message, done or refused, and what the named shadow last had applied and reported.

A file of its own, written only by the control thread (agent.store.db patterns: WAL,
synchronous=FULL, private modes, faults as StoreUnavailable naming the file). The journal
keeps what was asked, by whom and with what outcome, not the documents themselves: the
profiles directory holds those."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.store.db import Store

MAX_JOURNAL_ROWS = 10_000  # beside the age limit: a flood of refusals cannot fill the card
MAX_INPUT_CHARS = 1000  # of a request's input kept in the journal

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        channel TEXT NOT NULL,  -- request (MQTT 5) or shadow
        verb TEXT,
        client_token TEXT,
        input TEXT,  -- the request's input, JSON, cut at 1000 characters
        status INTEGER NOT NULL,  -- the verb's exit status; 2 for a refused message
        error TEXT
    );
    CREATE INDEX journal_at ON journal (at);
    CREATE TABLE shadow (
        kind TEXT NOT NULL,  -- profiles, dimensions or settings
        name TEXT NOT NULL,
        digest TEXT NOT NULL,  -- of the desired document applied
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE reported (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        doc TEXT NOT NULL  -- the reported state last accepted by the shadow, JSON
    );
    """,
)


class ControlStore(Store):
    """control.db on one connection (the control thread's)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        super().__init__(path, MIGRATIONS, create=create, incremental_vacuum=True)

    def journal(
        self,
        at: float,
        channel: str,
        verb: str | None,
        client_token: str | None,
        given: object,
        status: int,
        error: str | None,
    ) -> None:
        text = None if given is None else json.dumps(given, ensure_ascii=False)
        with self._transaction("journaling a control message") as conn:
            conn.execute(
                "INSERT INTO journal (at, channel, verb, client_token, input, status, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (at, channel, verb, client_token, text and text[:MAX_INPUT_CHARS], status, error),
            )

    def entries(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest journal entries, newest first."""
        with self._guard("reading the control journal"):
            rows = self._conn.execute(
                "SELECT at, channel, verb, client_token, input, status, error FROM journal"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        keys = ("at", "channel", "verb", "clientToken", "input", "status", "error")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def prune(self, before: float) -> int:
        """Drop entries older than `before` and all but the latest MAX_JOURNAL_ROWS."""
        with self._transaction("pruning the control journal") as conn:
            cur = conn.execute(
                "DELETE FROM journal WHERE at < ? OR id <= (SELECT MAX(id) FROM journal) - ?",
                (before, MAX_JOURNAL_ROWS),
            )
            return cur.rowcount

    def applied(self) -> dict[str, dict[str, str]]:
        """{kind: {name: digest}} of what the shadow had applied."""
        with self._guard("reading the shadow's applied documents"):
            rows = self._conn.execute("SELECT kind, name, digest FROM shadow").fetchall()
        out: dict[str, dict[str, str]] = {}
        for kind, name, digest in rows:
            out.setdefault(kind, {})[name] = digest
        return out

    def set_applied(self, kind: str, name: str, digest: str | None) -> None:
        with self._transaction(f"recording shadow {kind} {name}") as conn:
            if digest is None:
                conn.execute("DELETE FROM shadow WHERE kind = ? AND name = ?", (kind, name))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO shadow (kind, name, digest) VALUES (?, ?, ?)",
                    (kind, name, digest),
                )

    def last_reported(self) -> dict[str, Any] | None:
        with self._guard("reading the reported shadow state"):
            row = self._conn.execute("SELECT doc FROM reported").fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def set_reported(self, doc: Mapping[str, Any]) -> None:
        with self._transaction("recording the reported shadow state") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO reported (id, doc) VALUES (1, ?)", (json.dumps(doc),)
            )

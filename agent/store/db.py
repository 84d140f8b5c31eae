"""Opening the agent's SQLite files: WAL, full sync, versioned schema."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path


def open_db(path: str | Path, migrations: Sequence[str]) -> sqlite3.Connection:
    """A connection to `path` with every migration applied once, in order.

    migrations[i] is the SQL script that takes the schema from version i to i+1
    (tracked in PRAGMA user_version). WAL lets the query verbs read while the daemon
    writes; synchronous=FULL makes a committed transaction survive a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(migrations[version:], start=version + 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    _match_owner(path)
    return conn


def _match_owner(path: Path) -> None:
    """Root running a query verb must not leave -wal/-shm files the service user
    cannot open: give them the database file's owner."""
    if os.geteuid() != 0:
        return
    st = path.stat()
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if side.stat().st_uid != st.st_uid:
                os.chown(side, st.st_uid, st.st_gid)

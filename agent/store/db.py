"""Opening the agent's SQLite files: WAL, full sync, versioned schema."""

from __future__ import annotations

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
    return conn

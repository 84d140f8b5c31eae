import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.store.db import StoreUnavailable, open_db

MIGRATIONS = ["CREATE TABLE a (x);", "CREATE TABLE b (y);"]


def test_migrations_run_once_each_in_order(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.db"
    conn = open_db(path, MIGRATIONS[:1])
    conn.execute("INSERT INTO a VALUES (1)")
    conn.close()
    conn = open_db(path, MIGRATIONS)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT x FROM a").fetchall() == [(1,)]
    assert conn.execute("SELECT count(*) FROM b").fetchone()[0] == 0


def test_a_failed_migration_leaves_the_old_schema(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_db(path, MIGRATIONS[:1]).close()
    with pytest.raises(StoreUnavailable, match=r"table a already exists .* version 2"):
        open_db(path, [*MIGRATIONS[:1], "CREATE TABLE c (z); CREATE TABLE a (x);"])
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'c'").fetchall() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")
def test_root_leaves_side_files_to_the_database_owner(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_db(path, MIGRATIONS).close()
    os.chown(path, 4242, 4242)
    for side in tmp_path.glob("x.db-*"):
        side.unlink()
    conn = open_db(path, MIGRATIONS)  # root opens it, as a query verb would
    sides = list(tmp_path.glob("x.db-*"))
    assert sides
    assert {(s.stat().st_uid, s.stat().st_gid) for s in sides} == {(4242, 4242)}
    conn.close()


def _count_in_another_process(path: Path) -> int:
    script = (
        "import sqlite3, sys; (n,), = sqlite3.connect(sys.argv[1]).execute(sys.argv[2]); print(n)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), "SELECT count(*) FROM a"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


@pytest.mark.parametrize("create", [True, False])
def test_opening_again_in_the_process_keeps_the_locks_of_the_first_connection(
    tmp_path: Path, create: bool
) -> None:
    """A second open in the same process (a reopen, a check) must not drop the locks of
    the first connection: another process closing its own connection would then take
    itself for the last one and delete the WAL the first is writing to."""
    path = tmp_path / "x.db"
    writer = open_db(path, MIGRATIONS)
    writer.execute("INSERT INTO a VALUES (1)")
    open_db(path, MIGRATIONS, create=create).close()
    assert _count_in_another_process(path) == 1
    writer.execute("INSERT INTO a VALUES (2)")
    assert _count_in_another_process(path) == 2
    writer.close()

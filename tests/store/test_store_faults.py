"""The stores under real faults: a tmpfs that fills up, a read-only mount, the state dir
deleted or replaced while open, a lock held beyond the timeout, damaged files, and the
modes of what the stores create whatever the umask. Each fault is one StoreError line
naming the file, and a failed write leaves the store as it was."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agent.store.db as db
from agent.store.db import StoreCorrupt, StoreUnavailable, move_aside
from agent.store.history import History, StoreNotFound, history_path, open_history
from agent.store.spool import Spool

BEHAVIOR = {"name": "ports", "metric": "aws:num-listening-tcp-ports"}


def event(n: int, pad: int = 0) -> dict[str, Any]:
    return {
        "violationId": f"v-{n}",
        "thingName": "pi",
        "securityProfileName": "p",
        "behavior": BEHAVIOR,
        "metricValue": {"count": n},
        "violationEventType": "in-alarm",
        "violationEventTime": float(n),
        "verificationState": "UNKNOWN",
        **({"pad": "x" * pad} if pad else {}),
    }


def active(n: int) -> dict[str, Any]:
    return {**event(n), "violationStartTime": float(n)}


def events_of(store: History) -> list[str]:
    return [e["violationId"] for e in store.list_violation_events(0, math.inf)["violationEvents"]]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _mount(args: list[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not allowed here: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, unmounted after the test."""
    root = tmp_path / "fs"
    root.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(root)])
    yield root
    subprocess.run(["umount", "-l", str(root)], check=True)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(rw, ro): a directory and a read-only bind mount of it."""
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    _mount(["--bind", "-o", "ro", str(rw), str(ro)])
    yield rw, ro
    subprocess.run(["umount", "-l", str(ro)], check=True)


def fill(root: Path, leave_bytes: int) -> Path:
    """A file taking all of `root`'s file system but about `leave_bytes`."""
    filler = root / "filler"
    free = shutil.disk_usage(root).free - leave_bytes
    with filler.open("wb") as f:
        f.write(b"\0" * max(free, 0))
    return filler


def until_full(write: Callable[[int], object]) -> tuple[int, StoreUnavailable]:
    """Call write(0), write(1), ... until the disk is full: (calls that returned, error)."""
    for n in range(10_000):
        try:
            write(n)
        except StoreUnavailable as e:
            return n, e
    raise AssertionError("the file system never filled up")


# -- disk full -----------------------------------------------------------------------------


def test_disk_full_is_one_line_and_the_failed_record_rolls_back(small_fs: Path) -> None:
    path = small_fs / "state" / "agent.db"
    store = open_history(path)
    filler = fill(small_fs, 96 * 1024)

    def write(n: int) -> None:
        store.record([event(2 * n, 3000), event(2 * n + 1, 3000)], [active(2 * n)], {"n": n})

    done, error = until_full(write)
    assert done > 0
    assert re.fullmatch(
        rf"{path}: disk full \(SQLITE_FULL\) while recording 2 events and 1 active violation",
        str(error),
    )
    # Nothing of the failed step, everything of the ones before.
    assert events_of(store) == [f"v-{i}" for i in range(2 * done)]
    assert store.load_alarm_state() == {"n": done - 1}
    assert [a["violationId"] for a in store.list_active_violations()["activeViolations"]] == [
        f"v-{2 * (done - 1)}"
    ]
    # Space comes back: the same step, retried, is stored whole.
    filler.unlink()
    write(done)
    assert events_of(store)[-2:] == [f"v-{2 * done}", f"v-{2 * done + 1}"]
    assert store.load_alarm_state() == {"n": done}
    store.close()
    with open_history(path) as again:
        assert len(events_of(again)) == 2 * done + 2


def test_disk_full_in_the_spool_keeps_the_queue_as_it_was(small_fs: Path) -> None:
    spool = Spool(small_fs / "state" / "spool.db", 1 << 20)
    filler = fill(small_fs, 96 * 1024)
    done, error = until_full(lambda n: spool.put("violation", "t", bytes([n % 256]) * 4000, n))
    assert str(error).startswith(
        f"{spool.path}: disk full (SQLITE_FULL) while spooling a violation"
    )
    assert [item.created for item in spool.pending(10_000)] == [float(n) for n in range(done)]
    filler.unlink()
    assert spool.put("violation", "t", b"retried", float(done)) is not None
    assert spool.depth()[0] == done + 1


def test_a_new_store_on_a_full_disk_leaves_no_file_behind(small_fs: Path) -> None:
    filler = fill(small_fs, 0)
    state = small_fs / "state"
    with pytest.raises(StoreUnavailable, match=rf"^{state / 'agent.db'}: disk full"):
        open_history(state / "agent.db")
    assert list(state.iterdir()) == []  # no half-made store, nothing of its temporary
    filler.unlink()
    with open_history(state / "agent.db") as store:
        assert store.moved_aside is None
        assert store.load_alarm_state() is None


# -- read-only -----------------------------------------------------------------------------


def test_read_only_state_dir_is_one_line(read_only: tuple[Path, Path]) -> None:
    rw, ro = read_only
    with open_history(rw / "state" / "agent.db") as store:
        store.record([event(1)], [], {"n": 1})
    for create in (True, False):  # the daemon, a query verb
        with pytest.raises(StoreUnavailable) as caught:
            open_history(ro / "state" / "agent.db", create=create)
        assert str(caught.value).startswith(f"{ro / 'state' / 'agent.db'}: ")
        assert str(caught.value).endswith(f"{ro / 'state'} is on a read-only file system (EROFS)")
    with pytest.raises(StoreUnavailable, match=r"^.*/ro/new/agent\.db: Read-only file system"):
        open_history(ro / "new" / "agent.db")
    with pytest.raises(StoreUnavailable, match="read-only file system"):
        Spool(ro / "state" / "spool.db", 100)
    assert sorted(p.name for p in (rw / "state").iterdir()) == ["agent.db"]


# -- the state dir deleted or replaced -----------------------------------------------------


def test_state_dir_deleted_while_open_is_noticed_and_reopened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_history(history_path(state))
    store.record([event(1)], [active(1)], {"n": 1})
    assert store.check_path() is None
    shutil.rmtree(state)
    problem = f"{store.path}: deleted while open (was the state directory removed?)"
    assert store.check_path() == problem
    # SQLite itself would go on writing to the deleted file: the write refuses instead.
    with pytest.raises(StoreUnavailable) as caught:
        store.record([event(2)], [active(1), active(2)], {"n": 2})
    assert str(caught.value) == f"{problem}, found while recording 1 event and 2 active violations"

    assert store.reopen() is None
    assert mode(state) == 0o700
    assert store.check_path() is None
    assert store.load_alarm_state() is None  # a new store: the caller writes it again
    store.record([event(2)], [active(1), active(2)], {"n": 2})
    assert events_of(store) == ["v-2"]
    store.close()


def test_store_replaced_while_open_is_noticed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spool = Spool(state / "spool.db", 100)
    store = open_history(history_path(state))
    state.rename(tmp_path / "old-state")
    with open_history(history_path(state)) as other:
        other.record([event(7)], [], {"by": "other"})
    assert store.check_path() == f"{store.path}: replaced by another file while open"
    assert (
        spool.check_path() == f"{spool.path}: deleted while open (was the state directory removed?)"
    )
    with pytest.raises(StoreUnavailable, match="replaced by another file while open"):
        store.save_counters({})
    with pytest.raises(StoreUnavailable, match="deleted while open"):
        spool.put("metrics", "t", b"m", 0.0)
    store.reopen()
    assert store.load_alarm_state() == {"by": "other"}
    spool.reopen()
    assert spool.put("metrics", "t", b"m", 0.0) is not None
    store.close()
    spool.close()


# -- locked ---------------------------------------------------------------------------------


def test_a_lock_held_beyond_the_timeout_is_one_line_and_retry_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.2)
    store = open_history(history_path(tmp_path))
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable) as caught:
        store.record([event(1)], [], {"n": 1})
    assert str(caught.value) == (
        f"{store.path}: locked by another connection beyond the busy timeout (SQLITE_BUSY)"
        " while recording 1 event and 0 active violations"
    )
    other.execute("ROLLBACK")
    other.close()
    store.record([event(1)], [], {"n": 1})
    assert events_of(store) == ["v-1"]
    store.close()


# -- damaged files --------------------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, it only sits where one should be\n" * 100)
    path.with_name(path.name + "-wal").write_bytes(b"an old WAL that must not touch the new store")


def _zero_bytes(path: Path) -> None:
    path.touch()


def _damaged_page(path: Path) -> None:
    """A real store whose index of events by time has a broken root page: it opens and
    its blobs read fine; quick_check finds it, and so does listing the events."""
    with open_history(path) as store:
        store.record([event(n, 200) for n in range(300)], [], {"n": 1})
    conn = sqlite3.connect(path)
    query = "SELECT rootpage FROM sqlite_master WHERE name = 'violation_events_time'"
    (root,) = conn.execute(query).fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 16)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_garbage, "not a SQLite database (SQLITE_NOTADB) while checking the file"),
        (_zero_bytes, "empty file (0 bytes): it was truncated"),
        # Page 4: page 2 is the pointer map of incremental auto-vacuum.
        (_damaged_page, "fails quick_check: Page 4: btreeInitPage() returns error code 11"),
    ],
    ids=["garbage", "zero-bytes", "damaged-page"],
)
def test_a_damaged_store_is_moved_aside_never_wiped(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
    reason: str,
) -> None:
    path = history_path(tmp_path)
    damage(path)
    evidence = {p.name: p.read_bytes() for p in tmp_path.glob("agent.db*")}

    # A query verb only reads: it says what is wrong (at the open, or at the damaged
    # page) and touches nothing.
    with (
        pytest.raises(StoreCorrupt, match=rf"^{re.escape(str(path))}: "),
        open_history(path, create=False) as reader,
    ):
        events_of(reader)
    after = {p.name: p.read_bytes() for p in tmp_path.glob("agent.db*")}
    assert {name: after[name] for name in evidence} == evidence
    assert set(after) - set(evidence) <= {"agent.db-shm"}  # SQLite's index of the WAL

    with caplog.at_level(logging.ERROR):
        store = open_history(path)
    moved = store.moved_aside
    assert moved is not None and moved.path == path and moved.reason.startswith(reason)
    assert re.fullmatch(r"agent\.db\.corrupt-\d{8}T\d{6}Z", moved.to.name)
    assert f"store_moved_aside path={path} to={moved.to} reason=" in caplog.text
    # Every byte kept under the new name, side files with it (the checks may have added
    # an -shm and an empty -wal).
    kept = {p.name.replace(moved.to.name, "agent.db"): p.read_bytes() for p in
            tmp_path.glob(f"{moved.to.name}*")}  # fmt: skip
    assert {name: kept[name] for name in evidence} == evidence
    assert kept.get("agent.db-wal", b"") == evidence.get("agent.db-wal", b"")
    # A new store in its place, and no old WAL applied to it.
    assert store.load_alarm_state() is None
    store.record([event(1)], [], {"n": 1})
    assert events_of(store) == ["v-1"]
    store.close()
    with open_history(path) as again:
        assert again.moved_aside is None


def test_spool_moves_a_damaged_file_aside_too(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.touch()
    spool = Spool(path, 100)
    assert spool.moved_aside is not None
    assert spool.moved_aside.to.stat().st_size == 0
    assert spool.put("metrics", "t", b"m", 0.0) is not None


def test_moved_aside_names_never_collide(tmp_path: Path) -> None:
    names = []
    for n in range(3):
        path = tmp_path / "agent.db"
        path.write_bytes(bytes([n]))
        names.append(move_aside(path, "test").to.name)
    assert len(set(names)) == 3
    assert sorted((tmp_path / name).read_bytes() for name in names) == [b"\0", b"\1", b"\2"]


def test_query_verbs_never_create_a_store(tmp_path: Path) -> None:
    path = history_path(tmp_path / "state")
    with pytest.raises(StoreNotFound):
        open_history(path, create=False)
    assert not (tmp_path / "state").exists()


# -- modes ----------------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_state_dir_is_0700_and_store_files_0600_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    state = tmp_path / "var" / "lib" / "state"
    with open_history(history_path(state)) as store, Spool(state / "spool.db", 100) as spool:
        store.record([event(1)], [], {})
        spool.put("metrics", "t", b"m", 0.0)
        files = sorted(p.name for p in state.iterdir())
        assert files == [
            "agent.db", "agent.db-shm", "agent.db-wal", "spool.db", "spool.db-shm", "spool.db-wal"
        ]  # fmt: skip
        assert {name: mode(state / name) for name in files} == dict.fromkeys(files, 0o600)
    for directory in (tmp_path / "var", tmp_path / "var" / "lib", state):
        assert mode(directory) == 0o700
    # After a reopen of a deleted state dir as well.
    with open_history(history_path(state)) as store:
        shutil.rmtree(state)
        store.reopen()
        store.record([event(1)], [], {})
        assert mode(state) == 0o700
        assert {mode(p) for p in state.iterdir()} == {0o600}


def test_store_files_made_before_modes_were_set_are_made_private(
    tmp_path: Path, umask: int
) -> None:
    path = history_path(tmp_path)
    with open_history(path) as store:
        store.record([event(1)], [], {})
        for file in tmp_path.glob("agent.db*"):
            file.chmod(0o644)  # as an older agent left them under umask 022
    with open_history(path) as store:
        store.record([event(2)], [], {})
        assert {mode(p) for p in tmp_path.glob("agent.db*")} == {0o600}

"""Opening the agent's SQLite files: private modes, WAL, full sync, versioned schema;
faults turned into one clear line, a damaged file moved aside.

Every sqlite3.Error or OSError a store meets is raised as StoreUnavailable (StoreCorrupt
for a damaged file) naming the file, what is wrong and what was being done, e.g.
"/var/lib/edge-defender/agent.db: disk full (SQLITE_FULL) while recording 2 events".
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from agent.logs import kv

log = logging.getLogger(__name__)

DIR_MODE = 0o700  # the state dir and any directory the stores create
FILE_MODE = 0o600  # a store file; SQLite gives its -wal, -shm and -journal the same mode
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
MAX_TOKEN = 4096  # characters of a nextToken the audit and mitigation listings read
BUSY_TIMEOUT_S = 10.0
# SQLite's page cache per connection, in KiB when negative. The default (2 MB) fills as
# the open-time quick_check reads the file: ~2 MiB of the daemon's RSS on a 14-day store,
# for a workload of a few small writes every 5 minutes and short reads.
CACHE_SIZE = -256
# reclaim_space: free pages are given back to the file system once they are this share
# of the file (fewer are reused by the next writes, which is cheaper than moving pages),
# and a store made before incremental auto-vacuum is VACUUMed into it once it holds at
# most this much (a VACUUM rewrites the whole file: cheap only for a small one).
RECLAIM_FREE_SHARE = 0.25
VACUUM_MAX_BYTES = 64 * 1024 * 1024  # the default store.metrics_max_bytes
PAGE_SIZE = 4096  # SQLite's default

# Words for SQLite's result codes, by extended name first, then by primary name.
_PROBLEMS = {
    "SQLITE_READONLY_DBMOVED": "deleted or moved while open",
    "SQLITE_FULL": "disk full",
    "SQLITE_READONLY": "read-only",
    "SQLITE_IOERR": "I/O error",
    "SQLITE_BUSY": "locked by another connection beyond the busy timeout",
    "SQLITE_LOCKED": "locked by another connection",
    "SQLITE_CORRUPT": "damaged (the database image is malformed)",
    "SQLITE_NOTADB": "not a SQLite database",
    "SQLITE_CANTOPEN": "cannot be opened",
    "SQLITE_PERM": "permission denied",
}
_DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class StoreError(ValueError):
    """A store operation refused; nothing was written."""


class StoreNotFound(StoreError):
    """The store file does not exist (the daemon has not run with this state_dir)."""


class StoreUnavailable(StoreError):
    """The file cannot be opened, read or written now: disk full, read-only, I/O error,
    locked beyond the busy timeout, deleted. The operation that raised it changed nothing
    (its transaction rolled back), so the caller may keep its data in memory and retry."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class StoreCorrupt(StoreUnavailable):
    """The file is not a usable SQLite database. A writer's open moves it aside."""


@dataclass(frozen=True, slots=True)
class MovedAside:
    """A damaged store file renamed out of the way (with its side files)."""

    path: Path
    to: Path
    reason: str


def describe(error: sqlite3.Error | OSError) -> str:
    """What went wrong in words, with the code: "disk full (SQLITE_FULL)"."""
    if isinstance(error, OSError):
        code = errno.errorcode.get(error.errno or 0, "")
        words = "disk full" if error.errno == errno.ENOSPC else error.strerror or str(error)
        return f"{words} ({code})" if code else words
    name = _sqlite_name(error)
    if not name:
        return str(error)
    primary = "_".join(name.split("_")[:2])
    return f"{_PROBLEMS.get(name) or _PROBLEMS.get(primary) or error} ({name})"


def _sqlite_name(error: sqlite3.Error) -> str:
    """SQLITE_FULL, SQLITE_IOERR_WRITE...; empty for errors of the Python module alone."""
    return getattr(error, "sqlite_errorname", None) or ""


def counted(count: int, noun: str) -> str:
    """For the `doing` of a fault: "1 event", "2 events"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def fault(path: Path, error: sqlite3.Error | OSError, doing: str) -> StoreUnavailable:
    damaged = isinstance(error, sqlite3.Error) and _sqlite_name(error).startswith(_DAMAGE)
    kind = StoreCorrupt if damaged else StoreUnavailable
    return kind(path, f"{describe(error)} while {doing}")


@contextmanager
def guard(path: Path, doing: str) -> Iterator[None]:
    """Turn the faults raised inside into StoreUnavailable naming `path` and `doing`."""
    try:
        yield
    except (sqlite3.Error, OSError) as e:
        raise fault(path, e, doing) from e


def make_private_dir(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700 whatever the umask. An
    existing directory keeps its mode: it may be one the agent does not own alone."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs
        os.chmod(directory, DIR_MODE)


def side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in SIDE_SUFFIXES]


def give_to_dir_owner(path: Path) -> None:
    """Root creating a store in a state dir owned by the service user gives the file
    (and its side files) to that user, or the daemon could not write it."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        owner = path.parent.stat()
        if path.stat().st_uid != owner.st_uid:
            for file in (path, *side_files(path)):
                with contextlib.suppress(FileNotFoundError):
                    os.chown(file, owner.st_uid, owner.st_gid)


def encode_token(kind: str, key: Sequence[object]) -> str:
    """The nextToken of listing `kind` resuming after `key`: JSON in unpadded base64url."""
    raw = json.dumps([kind, *key], separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(kind: str, token: object, types: tuple[type, ...]) -> list[Any]:
    """The keyset a token of this listing carries; anything it could not have returned
    is InvalidRequest naming nextToken."""
    # Imported here: the daemon's history opens through this module and need not load
    # the audit model (~280 KiB); only the audit and mitigation listings take tokens here.
    from agent.core.audit_model import InvalidRequest, shown

    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise InvalidRequest("nextToken", f"{shown(token)} is not a token of this listing")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        decoded = None
    ok = (
        isinstance(decoded, list)
        and len(decoded) == len(types) + 1
        and decoded[0] == kind
        and all(
            isinstance(v, tp) and not isinstance(v, bool)
            for v, tp in zip(decoded[1:], types, strict=True)
        )
    )
    try:
        same = ok and encode_token(kind, decoded[1:]) == token
    except ValueError:  # NaN or an infinity smuggled in
        same = False
    if not same:
        raise InvalidRequest("nextToken", f"{shown(token)} is not a token returned by this listing")
    return decoded[1:]


def open_db(
    path: str | Path,
    migrations: Sequence[str],
    *,
    create: bool = True,
    timeout_s: float = BUSY_TIMEOUT_S,
    page_size: int = PAGE_SIZE,
    incremental_vacuum: bool = False,
) -> sqlite3.Connection:
    """A connection to `path` with every migration applied once, in order.

    migrations[i] is the SQL script that takes the schema from version i to i+1
    (tracked in PRAGMA user_version). WAL lets the query verbs read while the daemon
    writes; synchronous=FULL makes a committed transaction survive a power cut.

    create=True is the writer's open: a missing store is created (its directory 0700, its
    files 0600), the file passes PRAGMA quick_check and gets mode 0600. create=False (the
    query verbs) raises StoreNotFound for a missing file. Either way an empty or damaged
    file is StoreCorrupt, and any other fault StoreUnavailable. A new file gets
    `page_size` and, with `incremental_vacuum`, PRAGMA auto_vacuum=INCREMENTAL (see
    Store.reclaim_space); an existing file keeps what it was made with.
    """
    path = Path(path)
    try:
        return _connect(path, migrations, create, timeout_s, page_size, incremental_vacuum)
    except StoreCorrupt:
        raise
    except StoreUnavailable as e:
        cause = dir_problem(path.parent)
        if cause is None:
            raise
        raise StoreUnavailable(path, f"{e.problem}: {cause}") from e


def dir_problem(directory: Path, *, min_free_bytes: int = 0) -> str | None:
    """Why a store could not be written in `directory` (or where it would be created):
    a read-only file system, no write permission, less than `min_free_bytes` free; or
    None. It names the cause when an open fails, and serves a start check."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        fs = os.statvfs(existing)
    except OSError as e:
        return f"{existing}: {describe(e)}"
    if fs.f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system (EROFS)"
    if not existing.is_dir():
        return f"{existing} is not a directory (ENOTDIR)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by uid {os.geteuid()} (EACCES)"
    free = fs.f_bavail * fs.f_frsize
    if free < min_free_bytes:
        return f"{existing}: disk full (ENOSPC): {free} bytes free, want {min_free_bytes}"
    return None


def _connect(
    path: Path,
    migrations: Sequence[str],
    create: bool,
    timeout_s: float,
    page_size: int,
    incremental_vacuum: bool,
) -> sqlite3.Connection:
    # Never open the file other than through SQLite: closing any descriptor of it drops
    # every POSIX lock this process holds on it, and another process would then take
    # this one's connections for gone and delete the WAL under them.
    with guard(path, "opening"):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if not create:
                raise StoreNotFound(
                    f"no store at {path} (has the agent run with this state_dir?)"
                ) from None
            make_private_dir(path.parent)
            _create(path, migrations, page_size, incremental_vacuum)
        else:
            if size == 0:
                # _create never leaves an empty file at the path, even when killed.
                raise StoreCorrupt(path, "empty file (0 bytes): it was truncated")
            _check(path, timeout_s, "quick_check" if create else "user_version")
        conn = sqlite3.connect(_uri(path, "rw"), uri=True, timeout=timeout_s, isolation_level=None)
    try:
        with guard(path, "opening"):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA cache_size={CACHE_SIZE}")
        _migrate(path, conn, migrations)
        with guard(path, "opening"):
            if create:
                _make_private(path)
            _match_owner(path)
    except BaseException:
        conn.close()
        raise
    return conn


def _uri(path: Path, mode: str) -> str:
    # mode=rw or ro: SQLite never creates a file that vanished since we looked.
    return f"file:{quote(str(path))}?mode={mode}"


def _check(path: Path, timeout_s: float, pragma: str) -> None:
    """StoreCorrupt if the file is not a SQLite database or `pragma` (quick_check, or a
    cheap read of the header) finds damage. On a read-only connection: unlike a
    read-write one, closing it leaves a -wal beside a damaged file as it was (evidence)."""
    conn = sqlite3.connect(_uri(path, "ro"), uri=True, timeout=timeout_s)
    try:
        with guard(path, "checking the file"):
            conn.execute(f"PRAGMA cache_size={CACHE_SIZE}")
            rows = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}")]
    finally:
        conn.close()
    if pragma == "quick_check" and rows != ["ok"]:
        lines = [line for row in rows for line in row.splitlines() if not line.startswith("***")]
        raise StoreCorrupt(path, f"fails quick_check: {'; '.join(lines[:3])}")


def _migrate(path: Path, conn: sqlite3.Connection, migrations: Sequence[str]) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(migrations[version:], start=version + 1):
        with guard(path, f"migrating to schema version {number}"):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")


def _create(
    path: Path, migrations: Sequence[str], page_size: int, incremental_vacuum: bool
) -> None:
    """Build a new store under a temporary name and rename it into place, so a crash
    never leaves an empty or half-made file where a store should be."""
    building = path.with_name(path.name + ".new")
    for leftover in (building, *side_files(building)):
        leftover.unlink(missing_ok=True)
    fd = os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever bits the umask took away
    finally:
        os.close(fd)
    try:
        conn = sqlite3.connect(building, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            # Both only take before the first table, and the page size only before
            # the auto-vacuum mode.
            conn.execute(f"PRAGMA page_size={int(page_size)}")
            if incremental_vacuum:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            _migrate(path, conn, migrations)
            # Switched last: the schema is in the main file, not in a WAL left behind.
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        _fsync(building)
        os.replace(building, path)
    except BaseException:
        for leftover in (building, *side_files(building)):
            leftover.unlink(missing_ok=True)  # a full disk gets its space back
        raise
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private(path: Path) -> None:
    """Mode 0600 for a store and its side files made before the agent set modes."""
    for file in (path, *side_files(path)):
        with contextlib.suppress(FileNotFoundError):
            st = file.stat()
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(file, FILE_MODE)


def _match_owner(path: Path) -> None:
    """Root running a query verb must not leave -wal/-shm files the service user
    cannot open: give them the database file's owner."""
    if os.geteuid() != 0:
        return
    st = path.stat()
    for side in side_files(path):
        with contextlib.suppress(FileNotFoundError):
            if side.stat().st_uid != st.st_uid:
                os.chown(side, st.st_uid, st.st_gid)


def move_aside(path: Path, reason: str) -> MovedAside:
    """Rename a damaged store and its side files to <name>.corrupt-<UTC time>[-n]: kept as
    evidence, and out of the way of the new store (an old WAL or journal beside a new
    file would be applied to it)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    to = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(p.exists() for p in (to, *side_files(to))):
        n += 1
        to = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    with guard(path, "moving the damaged file aside"):
        for source, target in zip((path, *side_files(path)), (to, *side_files(to)), strict=True):
            with contextlib.suppress(FileNotFoundError):
                os.rename(source, target)
        _fsync(path.parent)
    log.error(kv("store_moved_aside", path=path, to=to, reason=reason))
    return MovedAside(path, to, reason)


class Store:
    """One agent SQLite file on one connection. Not thread-safe: use it from the thread
    that opened it.

    Faults: every method raises StoreUnavailable (StoreCorrupt for a damaged file) with
    one line naming the file and the problem; a write that raises it rolled back, so
    nothing of it is stored and the caller can keep the data and retry. The writer's
    open (create=True) moves a damaged file aside and starts a new one: `moved_aside`
    says so. A file deleted or replaced under the open connection is found by every
    write (StoreUnavailable) and by `check_path()`; `reopen()` opens what is at the path
    now.
    """

    def __init__(
        self,
        path: str | Path,
        migrations: Sequence[str],
        *,
        create: bool,
        page_size: int = PAGE_SIZE,
        incremental_vacuum: bool = False,
    ) -> None:
        self.path = Path(path)
        self.moved_aside: MovedAside | None = None  # by the latest open
        self._migrations = migrations
        self._create = create
        self._page_size = page_size
        self._incremental_vacuum = incremental_vacuum
        self._conn, self._identity = self._open()

    def _open(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        def connect(create: bool) -> sqlite3.Connection:
            return open_db(
                self.path,
                self._migrations,
                create=create,
                timeout_s=BUSY_TIMEOUT_S,
                page_size=self._page_size,
                incremental_vacuum=self._incremental_vacuum,
            )

        try:
            conn = connect(self._create)
        except StoreCorrupt as e:
            if not self._create:
                raise
            self.moved_aside = move_aside(self.path, e.problem)
            conn = connect(True)
        try:
            with guard(self.path, "opening"):
                st = self.path.stat()
        except StoreUnavailable:
            conn.close()
            raise
        return conn, (st.st_dev, st.st_ino)

    def check_path(self) -> str | None:
        """None while the open file is still the one at the path; otherwise what
        happened to it, as one line. Cheap (one stat): call it periodically. Every write
        checks it too, as SQLite would go on writing to a deleted file."""
        problem = self._path_problem()
        return None if problem is None else f"{self.path}: {problem}"

    def _path_problem(self) -> str | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return "deleted while open (was the state directory removed?)"
        except OSError as e:
            return describe(e)
        if (st.st_dev, st.st_ino) != self._identity:
            return "replaced by another file while open"
        return None

    def reopen(self) -> MovedAside | None:
        """Close and open the path again: after check_path() found the file gone, this
        creates the directory (0700) and a new store; a damaged file now at the path is
        moved aside. What the store must hold (the active set) is the caller's to write
        again. On StoreUnavailable the store stays closed: call reopen() again later."""
        self.close()
        self.moved_aside = None
        self._conn, self._identity = self._open()
        return self.moved_aside

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _guard(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return guard(self.path, doing)

    def _pragma(self, name: str) -> int:
        value: int = self._conn.execute(f"PRAGMA {name}").fetchone()[0]
        return value

    def used_bytes(self) -> int:
        """Bytes of the file in use: its pages less the free ones (cheap: two pragmas).
        Inside a transaction it counts that transaction's changes."""
        with self._guard("measuring the file"):
            used = self._pragma("page_count") - self._pragma("freelist_count")
            return used * self._pragma("page_size")

    def reclaim_space(self) -> int:
        """Give free pages back to the file system when they are at least
        RECLAIM_FREE_SHARE of the file: PRAGMA incremental_vacuum, then a checkpoint that
        truncates the WAL so the file shrinks now. A store opened with
        incremental_vacuum but made without it is VACUUMed into that mode once it holds
        at most VACUUM_MAX_BYTES. Returns how many bytes the file shrank by."""
        problem = self._path_problem()
        if problem is not None:
            raise StoreUnavailable(self.path, f"{problem}, found while reclaiming free space")
        with self._guard("reclaiming free space"):
            pages, free = self._pragma("page_count"), self._pragma("freelist_count")
            if free < pages * RECLAIM_FREE_SHARE:
                return 0
            if self._pragma("auto_vacuum") == 2:  # INCREMENTAL
                # executescript steps it to the end: it frees one page a step.
                self._conn.executescript("PRAGMA incremental_vacuum")
            elif (
                self._incremental_vacuum
                and (pages - free) * self._pragma("page_size") <= VACUUM_MAX_BYTES
            ):
                self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._conn.execute("VACUUM")
            else:
                return 0
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return (pages - self._pragma("page_count")) * self._pragma("page_size")

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; on any error it rolls back and the error is raised
        (a fault as StoreUnavailable naming `doing`)."""
        problem = self._path_problem()
        if problem is not None:
            raise StoreUnavailable(self.path, f"{problem}, found while {doing}")
        with self._guard(doing):
            # IMMEDIATE takes the write lock up front (waiting out a busy writer): a
            # deferred one that read first would fail midway with SQLITE_BUSY_SNAPSHOT.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    # A rollback that fails too leaves the connection unusable: the
                    # next call raises StoreUnavailable and reopen() mends it.
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

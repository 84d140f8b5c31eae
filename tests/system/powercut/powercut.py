"""Power cuts at random points of a real run of the stores, rebuilt from a write log.

Device-mapper (dm-log-writes, dm-flakey) is not in every kernel, nor in this machine's.
Its idea, one level up: writelog.c, preloaded into a process that drives the stores,
logs every write-type call on the files of the state dir (open, write at an offset,
truncate, fsync/fdatasync of a file or of the directory, rename, unlink) with its data,
and marks, in the same log, the moments the process got an acknowledgement from the
store. `Disk` replays that log and builds, for any cut point, what a disk with a
volatile write cache may hold after the power went:

- a file's writes before its last completed fsync (or fdatasync) are all there;
- of its later writes, any subset, applied in any order, each possibly torn at 512-byte
  sectors (some of its sectors new, the others old);
- the directory's entries (create, rename, unlink) as of its last fsync, then any prefix
  of the later ones: a journaling file system commits metadata in order;
- the -shm files are dropped: SQLite maps them and rebuilds them from the WAL.

`check` then opens such an image with the agent's own store code and lists what it
finds wrong against the acknowledgements made before the cut.

Run as a script (under the shim), this file is the workload: powercut.py STATE_DIR
MARKS STEPS.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.store.history import History, history_path, open_history
from agent.store.spool import Spool, spool_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

# -- the workload -------------------------------------------------------------------
# Step n raises violation v-n and clears v-(n-SPAN) (as tests/store/test_store_crash.py),
# saves the alarm state as rows (the step, and a rolling window of BUCKETS baseline
# buckets), spools the in-alarm event, delivers the message of step n-2 and adds metrics
# sample n, flushed every FLUSH_EVERY samples (store.metrics_flush_s at SAMPLE_S
# sampling). Pruning keeps PRUNE_KEEP_S of metrics history; events are kept.

SPAN = 3
BUCKETS = 5
T0 = 1_700_000_000.0
SAMPLE_S = 10.0
FLUSH_EVERY = round(Config().store.metrics_flush_s / SAMPLE_S)
PRUNE_EVERY = 40
PRUNE_KEEP_S = 600.0
REOPEN_EVERY = 70  # closing checkpoints and deletes the WAL; opening makes a new one
SPOOL_MAX_BYTES = 10_000_000  # nothing is evicted: every loss is a power cut's
TOPIC = "$aws/things/powercut/defender/violations"
STEP_KEY = "powercut/step"
BEHAVIOR = {
    "name": "dest-ips",
    "metric": "aws:destination-ip-addresses",
    "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}},
}
# A few KB per record, so that one transaction spans several pages.
VALUE = {"cidrs": [f"203.0.113.{i}" for i in range(120)]}


def sample_time(n: int) -> float:
    return T0 + n * SAMPLE_S


def _violation(n: int) -> dict[str, Any]:
    return {
        "violationId": f"v-{n}",
        "thingName": "powercut",
        "securityProfileName": "powercut",
        "behavior": BEHAVIOR,
    }


def _event(n: int, kind: str, step: int) -> dict[str, Any]:
    return {
        **_violation(n),
        "metricValue": VALUE,
        "violationEventType": kind,
        "verificationState": "UNKNOWN",
        "violationEventTime": sample_time(step),
    }


def payload(n: int) -> bytes:
    """The spooled message of step n."""
    return json.dumps(_event(n, "in-alarm", n), sort_keys=True).encode()


def _report(n: int) -> dict[str, Any]:
    ports = [{"port": 1000 + i, "interface": "eth0"} for i in range(n % 60)]
    return {
        "header": {"report_id": n, "version": "1.0"},
        "metrics": {"listening_tcp_ports": {"ports": ports, "total": len(ports)}},
    }


def _bucket(k: int) -> str:
    return f"{STEP_KEY}@{k}"


@dataclass(frozen=True)
class StepChanges:
    """agent.store.history.StateChanges of one step."""

    rules: dict[str, dict[str, Any] | None]
    buckets: dict[str, dict[str, Any] | None]


# The store's API is called in these three functions and in `run_workload` only.


def record_step(history: History, n: int) -> None:
    """Step n's events, active set and alarm state, durable when this returns."""
    events = [_event(n, "in-alarm", n)]
    if n >= SPAN:
        events.append(_event(n - SPAN, "alarm-cleared", n))
    active = [
        {
            **_violation(k),
            "lastViolationValue": VALUE,
            "lastViolationTime": sample_time(n),
            "violationStartTime": sample_time(k),
            "verificationState": "UNKNOWN",
        }
        for k in range(max(0, n - SPAN + 1), n + 1)
    ]
    buckets: dict[str, dict[str, Any] | None] = {_bucket(n): {"step": n, "value": VALUE}}
    if n >= BUCKETS:
        buckets[_bucket(n - BUCKETS)] = None
    history.record_changes(events, active, StepChanges({STEP_KEY: {"step": n}}, buckets))


def add_sample(history: History, n: int) -> int | None:
    """Add metrics sample n; return the newest sample durable now (every one up to it
    is), or None if this call made none durable: a batch is written every FLUSH_EVERY
    samples."""
    history.add_metrics(sample_time(n), _report(n))
    if n % FLUSH_EVERY != FLUSH_EVERY - 1:
        return None
    history.flush_metrics()
    return n


def stored_step(history: History) -> int:
    """The step of the alarm state in the store (-1: none), after checking that the
    state is that step's whole: its step row and its window of buckets."""
    rules, buckets = history.load_state()
    step: int = rules[STEP_KEY]["step"] if rules else -1
    expected = {_bucket(k): k for k in range(max(0, step - BUCKETS + 1), step + 1)}
    if set(rules) - {STEP_KEY} or {key: b["step"] for key, b in buckets.items()} != expected:
        raise AssertionError(f"the alarm state rows are not those of step {step}")
    return step


def run_workload(state_dir: Path, marks_path: Path, steps: int) -> None:
    """Drive the stores, writing a mark after each acknowledgement (and before each call
    whose effect may survive even if it never returns)."""
    marks = os.open(marks_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def mark(*words: object) -> None:
        os.write(marks, (" ".join(map(str, words)) + "\n").encode())

    history = open_history(history_path(state_dir))
    spool = Spool(spool_path(state_dir), SPOOL_MAX_BYTES)
    spooled: dict[int, int] = {}
    for n in range(steps):
        if n and n % REOPEN_EVERY == 0:
            history.flush_metrics()  # as the daemon does before it stops
            mark("metrics", n - 1)
            history.close()
            spool.close()
            history = open_history(history_path(state_dir))
            spool = Spool(spool_path(state_dir), SPOOL_MAX_BYTES)
        record_step(history, n)
        mark("event", n)
        item = spool.put("violation", TOPIC, payload(n), sample_time(n))
        assert item is not None, "the spool is large enough for every message"
        spooled[n] = item
        mark("spooled", n, item)
        if n >= 2:
            mark("delivering", spooled[n - 2])
            spool.ack(spooled[n - 2])
            mark("delivered", spooled[n - 2])
        durable = add_sample(history, n)
        mark("sample", n)
        if durable is not None:
            mark("metrics", durable)
        if n % PRUNE_EVERY == PRUNE_EVERY - 1:
            mark("pruning", sample_time(n) - PRUNE_KEEP_S)
            history.prune(sample_time(n), events_max_age_s=math.inf, metrics_max_age_s=PRUNE_KEEP_S)
    history.flush_metrics()
    mark("metrics", steps - 1)
    history.close()
    spool.close()


# -- the write log ------------------------------------------------------------------

OPEN, CLOSE, WRITE, TRUNC, SYNC, RENAME, UNLINK, MARK = range(1, 9)
_HEADER = struct.Struct("<IiiqQ")  # writelog.c's struct header


@dataclass(frozen=True, slots=True)
class Op:
    kind: int
    fd: int
    flags: int
    offset: int  # where a write went; a truncate's length
    data: bytes  # a write's data, a mark's text, a path, or b"old\0new"


def read_log(path: Path) -> list[Op]:
    raw = path.read_bytes()
    ops: list[Op] = []
    at = 0
    while at < len(raw):
        kind, fd, flags, offset, size = _HEADER.unpack_from(raw, at)
        at += _HEADER.size
        ops.append(Op(kind, fd, flags, offset, raw[at : at + size]))
        at += size
    return ops


def build_shim(out_dir: Path) -> Path:
    shim = out_dir / "writelog.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(shim),
         str(HERE / "writelog.c"), "-ldl"],
        check=True,
    )  # fmt: skip
    return shim


def run_logged(shim: Path, work: Path, steps: int, *, nosync: bool = False) -> list[Op]:
    """Run the workload on a new state dir work/state under the shim; the write log."""
    state = work / "state"
    state.mkdir(mode=0o700)
    state = state.resolve()  # as SQLite names its files: the shim compares paths
    log = work / "writes.log"
    env = {
        **os.environ,
        "LD_PRELOAD": str(shim),
        "WRITELOG_DIR": str(state),
        "WRITELOG_LOG": str(log),
        "WRITELOG_MARKS": str(work / "marks"),
        "PYTHONPATH": str(REPO),
    }
    if nosync:
        env["WRITELOG_NOSYNC"] = "1"
    subprocess.run(
        [sys.executable, __file__, str(state), str(work / "marks"), str(steps)],
        env=env,
        check=True,
        timeout=60,
    )
    return read_log(log)


# -- what the disk may hold ---------------------------------------------------------

SECTOR = 512


class Inode:
    __slots__ = ("pending", "synced")

    def __init__(self) -> None:
        self.synced = bytearray()
        # (offset, data) writes and (length, None) truncates since the last sync
        self.pending: list[tuple[int, bytes | None]] = []


def _change(content: bytearray, offset: int, data: bytes | None) -> None:
    if data is None:
        del content[offset:]
        content.extend(bytes(offset - len(content)))
        return
    if len(content) < offset:
        content.extend(bytes(offset - len(content)))
    content[offset : offset + len(data)] = data


def _torn(offset: int, data: bytes, rng: random.Random) -> list[tuple[int, bytes]]:
    """Some of the sectors a write spans (it may be cut at any sector boundary)."""
    cuts = [0, *range(SECTOR - offset % SECTOR, len(data), SECTOR), len(data)]
    pieces = [(offset + a, data[a:b]) for a, b in itertools.pairwise(cuts)]
    return [piece for piece in pieces if rng.random() < 0.5]


# A directory change: ("link", name, inode), ("rename", old, new), ("unlink", name).
NameChange = tuple[str, str, str | Inode | None]


class Disk:
    """The watched directory (which starts empty) as the log's operations leave it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()  # as run_logged gave it to the shim
        self.names: dict[str, Inode] = {}  # as the process sees them
        self.synced_names: dict[str, Inode] = {}
        self.pending_names: list[NameChange] = []
        self.fds: dict[int, Inode | None] = {}  # None: the directory itself
        self.marks: list[str] = []

    def _name(self, path: bytes) -> str:
        name = Path(os.fsdecode(path)).relative_to(self.root)
        if len(name.parts) != 1:
            raise ValueError(f"{path!r}: the replayer handles files directly in {self.root}")
        return str(name)

    def apply(self, op: Op) -> None:
        if op.kind == OPEN:
            self._open(op)
        elif op.kind == CLOSE:
            del self.fds[op.fd]
        elif op.kind in (WRITE, TRUNC):
            inode = self.fds[op.fd]
            assert inode is not None, "a write to the directory"
            inode.pending.append((op.offset, op.data if op.kind == WRITE else None))
        elif op.kind == SYNC:
            self._sync(self.fds[op.fd])
        elif op.kind == RENAME:
            old, new = (self._name(p) for p in op.data.split(b"\0"))
            self.names[new] = self.names.pop(old)
            self.pending_names.append(("rename", old, new))
        elif op.kind == UNLINK:
            name = self._name(op.data)
            del self.names[name]
            self.pending_names.append(("unlink", name, None))
        elif op.kind == MARK:
            self.marks += op.data.decode().splitlines()
        else:
            raise ValueError(f"unknown operation {op.kind} in the write log")

    def _open(self, op: Op) -> None:
        if Path(os.fsdecode(op.data)) == self.root:
            self.fds[op.fd] = None
            return
        name = self._name(op.data)
        inode = self.names.get(name)
        if inode is None:
            if not op.flags & os.O_CREAT:
                raise ValueError(f"{name}: opened but never created in the log")
            inode = self.names[name] = Inode()
            self.pending_names.append(("link", name, inode))
        elif op.flags & os.O_TRUNC:
            inode.pending.append((0, None))
        self.fds[op.fd] = inode

    def _sync(self, inode: Inode | None) -> None:
        if inode is None:
            self.synced_names = _renamed(self.synced_names, self.pending_names)
            self.pending_names = []
            return
        for offset, data in inode.pending:
            _change(inode.synced, offset, data)
        inode.pending = []

    def image(self, out: Path, rng: random.Random | None) -> None:
        """Write into `out` what the disk may hold if the power went now (one draw of
        `rng`); with no rng, what it holds once everything is written."""
        pending = self.pending_names
        if rng is not None:
            pending = pending[: rng.randint(0, len(pending))]
        out.mkdir(mode=0o700)
        for name, inode in _renamed(self.synced_names, pending).items():
            if name.endswith("-shm"):
                continue
            content = bytearray(inode.synced)
            changes = list(inode.pending)
            if rng is not None:
                changes = [c for c in changes if rng.random() < 0.5]
                rng.shuffle(changes)
            for offset, data in changes:
                if data is not None and rng is not None and rng.random() < 0.25:
                    for piece_offset, piece in _torn(offset, data, rng):
                        _change(content, piece_offset, piece)
                else:
                    _change(content, offset, data)
            (out / name).write_bytes(content)


def _renamed(names: dict[str, Inode], changes: list[NameChange]) -> dict[str, Inode]:
    names = dict(names)
    for kind, name, other in changes:
        if kind == "link":
            assert isinstance(other, Inode)
            names[name] = other
        elif kind == "rename":
            assert isinstance(other, str)
            names[other] = names.pop(name)
        else:
            del names[name]
    return names


# -- what must survive --------------------------------------------------------------


@dataclass
class Acks:
    """What the workload had been told before the cut (its marks)."""

    event: int = -1  # the newest step whose record returned
    sample: int = -1  # the newest metrics sample whose add returned
    metrics: int = -1  # every sample up to this one was durable
    prune_cutoff: float = -math.inf  # of the latest prune begun: it may have committed
    spooled: dict[int, int] = field(default_factory=dict)  # step -> spool id, put returned
    delivering: set[int] = field(default_factory=set)  # ids whose ack began
    delivered: set[int] = field(default_factory=set)  # ids whose ack returned

    @classmethod
    def parse(cls, marks: list[str]) -> Acks:
        acks = cls()
        for line in marks:
            word, *args = line.split()
            if word == "event":
                acks.event = int(args[0])
            elif word == "sample":
                acks.sample = int(args[0])
            elif word == "metrics":
                acks.metrics = int(args[0])
            elif word == "pruning":
                acks.prune_cutoff = float(args[0])
            elif word == "spooled":
                acks.spooled[int(args[0])] = int(args[1])
            elif word == "delivering":
                acks.delivering.add(int(args[0]))
            elif word == "delivered":
                acks.delivered.add(int(args[0]))
            else:
                raise ValueError(f"unknown mark {line!r}")
        return acks


@dataclass
class Verdict:
    problems: list[str]
    moved_aside: bool
    lost_acknowledged_events: bool
    samples_lost: int  # samples whose add had returned (durable or not), not there


def _integrity(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        rows = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    return [] if rows == ["ok"] else [f"{path.name}: integrity_check: {'; '.join(rows[:3])}"]


def _all_events(history: History) -> list[dict[str, Any]]:
    page = history.list_violation_events(-math.inf, math.inf)
    events: list[dict[str, Any]] = page["violationEvents"]
    while "nextToken" in page:
        page = history.list_violation_events(-math.inf, math.inf, next_token=page["nextToken"])
        events += page["violationEvents"]
    return events


def _ids(first: int, last: int) -> list[str]:
    return [f"v-{k}" for k in range(max(0, first), last + 1)]


def check(state_dir: Path, acks: Acks) -> Verdict:
    """Open the stores in `state_dir` as the agent does and compare with `acks`."""
    problems: list[str] = []
    with open_history(history_path(state_dir)) as history:
        moved = history.moved_aside
        if moved is not None:
            problems.append(f"agent.db moved aside: {moved.reason}")
        problems += _integrity(history.path)
        try:
            last = stored_step(history)
        except AssertionError as e:
            problems.append(str(e))
            last = -1
        events = _all_events(history)
        times = [e["timestamp"] for e in history.export_metrics(-math.inf, math.inf)]
        active = [a["violationId"] for a in history.list_active_violations()["activeViolations"]]
    lost_events = last < acks.event
    if lost_events:
        problems.append(f"lost acknowledged events: step {acks.event} returned, store at {last}")
    raised = [e["violationId"] for e in events if e["violationEventType"] == "in-alarm"]
    cleared = [e["violationId"] for e in events if e["violationEventType"] == "alarm-cleared"]
    if len(set(raised)) != len(raised):
        problems.append("an in-alarm event is repeated")
    if raised != _ids(0, last) or cleared != _ids(0, last - SPAN):
        problems.append(f"the events are not those of steps 0-{last} (alarm state's step)")
    if active != _ids(last - SPAN + 1, last):
        problems.append(f"the active set is not that of step {last}")

    steps = [round((t - T0) / SAMPLE_S) for t in times]
    if len(set(steps)) != len(steps):
        problems.append("a metrics sample is repeated")
    kept = {n for n in range(acks.sample + 1) if sample_time(n) >= acks.prune_cutoff}
    missing = kept - set(steps)
    durable_missing = sorted(n for n in missing if n <= acks.metrics)
    if durable_missing:
        problems.append(f"lost durable metrics samples {durable_missing[:5]}")

    spool = Spool(spool_path(state_dir), SPOOL_MAX_BYTES)
    try:
        if spool.moved_aside is not None:
            problems.append(f"spool.db moved aside: {spool.moved_aside.reason}")
        problems += _integrity(spool.path)
        held = {item.id: item.payload for item in spool.pending(1_000_000)}
    finally:
        spool.close()
    for n, item in acks.spooled.items():
        if item not in acks.delivering and held.get(item) != payload(n):
            problems.append(f"lost spooled message {item} of step {n}")
    if acks.delivered & held.keys():
        problems.append(
            f"delivered messages back in the spool: {sorted(acks.delivered & held.keys())}"
        )
    return Verdict(problems, moved is not None, lost_events, len(missing))


# -- the experiment -----------------------------------------------------------------


@dataclass
class Tally:
    cuts: int = 0
    opened: int = 0  # images whose stores opened without being moved aside
    failed: int = 0  # images with any problem
    lost_acknowledged_events: int = 0
    max_samples_lost: int = 0
    examples: list[str] = field(default_factory=list)  # (cut, problems) of the first few

    def add(self, cut: int, verdict: Verdict) -> None:
        self.cuts += 1
        self.opened += not verdict.moved_aside
        self.failed += bool(verdict.problems)
        self.lost_acknowledged_events += verdict.lost_acknowledged_events
        self.max_samples_lost = max(self.max_samples_lost, verdict.samples_lost)
        if verdict.problems and len(self.examples) < 5:
            self.examples.append(f"cut at op {cut}: {'; '.join(verdict.problems)}")


def power_cuts(
    ops: list[Op], root: Path, work: Path, count: int, rng: random.Random
) -> Iterator[tuple[int, Verdict]]:
    """Cut the power before `count` random operations of the log (and after the last),
    build one image each and check it."""
    points = sorted([*rng.sample(range(len(ops)), min(count - 1, len(ops))), len(ops)])
    disk = Disk(root)
    done = 0
    for point in points:
        for op in ops[done:point]:
            disk.apply(op)
        done = point
        image = work / f"cut-{point}"
        disk.image(image, rng)
        try:
            yield point, check(image, Acks.parse(disk.marks))
        finally:
            shutil.rmtree(image)


def replayed_whole(ops: list[Op], root: Path, out: Path) -> Disk:
    """The log replayed to its end with nothing lost, written to `out`."""
    disk = Disk(root)
    for op in ops:
        disk.apply(op)
    disk.image(out, None)
    return disk


if __name__ == "__main__":
    run_workload(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))

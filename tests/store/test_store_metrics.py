"""The metrics history in compressed batches, on real SQLite files: exported exactly as
record by record (order, ties, a clock set back, rows from before batches), written by
itself past a size, kept while the store fails, retention by age and by bytes with the
file following, and the bytes a day of the daemon's traffic writes."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import agent.store.history as history
from agent.store.db import open_db
from agent.store.history import (
    MIGRATIONS,
    History,
    StoreCorrupt,
    StoreUnavailable,
    history_path,
    open_history,
)

T0 = 1_730_000_000.0
DAY_S = 86400
SAMPLE_S = 10


def report(n: int, connections: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"network_stats": {"bytes_in": n, "bytes_out": 2 * n}}
    if connections is not None:
        metrics["tcp_connections"] = {
            "established_connections": {"connections": connections, "total": len(connections)}
        }
    return {"header": {"report_id": n, "version": "1.0"}, "metrics": metrics}


def busy_reports(count: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """A busy device's uncut reports: 150 established connections, a few replaced
    between samples."""
    rng = random.Random(seed)

    def connection() -> dict[str, Any]:
        return {
            "local_interface": rng.choice(("eth0", "wlan0")),
            "local_port": rng.randrange(32768, 61000),
            "remote_addr": f"198.51.{rng.randrange(256)}.{rng.randrange(256)}:"
            f"{rng.choice((443, 8883, rng.randrange(1024, 65536)))}",
        }

    connections = [connection() for _ in range(150)]
    for n in range(count):
        for _ in range(rng.randrange(4)):
            connections[rng.randrange(150)] = connection()
        yield report(n, list(connections))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[History]:
    with open_history(history_path(tmp_path)) as h:
        yield h


def exported(store: History, start: float = 0, end: float = math.inf) -> list[dict[str, Any]]:
    return list(store.export_metrics(start, end))


def envelope(ts: float, n: int) -> dict[str, Any]:
    return {"timestamp": ts, "report": report(n)}


def test_export_is_record_by_record_order_across_batches_and_old_rows(tmp_path: Path) -> None:
    """Rows of the version before (one a record), then batches of random sizes; times
    with ties and a clock set back an hour. Every window exports what the old store
    would: by timestamp, ties in recording order."""
    path = history_path(tmp_path)
    rng = random.Random(3)
    recorded: list[dict[str, Any]] = []  # in recording order
    conn = open_db(path, MIGRATIONS[:3])
    for n in range(20):
        env = envelope(T0 + 10 * (n // 2), n)  # pairs share a timestamp
        conn.execute(
            "INSERT INTO metrics_history (time, body) VALUES (?, ?)",
            (env["timestamp"], json.dumps(env, separators=(",", ":"))),
        )
        recorded.append(env)
    conn.close()
    with open_history(path) as store:
        ts = T0 + 50
        for n in range(20, 400):
            ts += rng.choice((0, 10, 10, 10, 10.5))
            if n == 200:
                ts -= 3600  # the clock set back
            store.add_metrics(ts, report(n))
            recorded.append(envelope(ts, n))
            if rng.random() < 0.08:
                store.flush_metrics()
        store.flush_metrics()
        by_time = sorted(recorded, key=lambda e: e["timestamp"])  # stable: ties as recorded
        assert exported(store) == by_time
        for _ in range(30):
            start = rng.uniform(T0 - 4000, T0 + 4000)
            end = start + rng.choice((0, 5, 300, 3000, math.inf))
            want = [e for e in by_time if start <= e["timestamp"] < end]
            assert exported(store, start, end) == want


def test_reports_are_buffered_until_flushed_or_the_buffer_is_full(
    store: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_metrics(T0, report(1))
    assert store.buffered_metrics == 1 and exported(store) == []  # not written yet
    store.flush_metrics()
    store.flush_metrics()  # nothing buffered: no empty batch
    assert store.buffered_metrics == 0 and len(exported(store)) == 1
    monkeypatch.setattr(history, "METRICS_FLUSH_BYTES", 30_000)
    reports = busy_reports(10)
    store.add_metrics(T0 + 10, next(reports))  # ~13 KB of JSON
    store.add_metrics(T0 + 20, next(reports))
    assert store.buffered_metrics == 2
    store.add_metrics(T0 + 30, next(reports))  # past 30,000 bytes: written at once
    assert store.buffered_metrics == 0 and len(exported(store)) == 4
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count FROM metrics_batches").fetchall() == [(1,), (3,)]
    conn.close()


def test_closing_writes_what_is_buffered(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    with open_history(path) as store:
        store.add_metrics(T0, report(1))
    with open_history(path) as store:
        assert [e["timestamp"] for e in exported(store)] == [T0]


def test_reports_stay_buffered_while_the_store_fails_and_the_oldest_go_past_the_bound(
    store: History, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(history, "METRICS_FLUSH_BYTES", 1)  # every add tries to write
    monkeypatch.setattr(history, "METRICS_BUFFER_MAX_BYTES", 1000)
    store.path.unlink()  # the state dir emptied under the daemon
    for n in range(20):
        with pytest.raises(StoreUnavailable):
            store.add_metrics(T0 + n, report(n))  # kept, and the write it tried failed
    kept = store.buffered_metrics
    assert 0 < kept < 20 and store.metrics_dropped == 20 - kept
    assert "metrics_history_dropped" in caplog.text
    store.reopen()
    store.flush_metrics()
    envelopes = exported(store)
    assert [e["report"]["header"]["report_id"] for e in envelopes] == list(range(20 - kept, 20))
    size = sum(len(json.dumps(e, separators=(",", ":"))) for e in envelopes)
    assert size <= 1000 < size + len(json.dumps(envelope(T0, 20 - kept - 1)))


def test_a_damaged_batch_is_one_clear_error(store: History) -> None:
    store.add_metrics(T0, report(1))
    store.flush_metrics()
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE metrics_batches SET body = x'00ff00ff'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match=r"metrics batch 1 is damaged"):
        exported(store)


def files_size(store: History) -> int:
    return sum(p.stat().st_size for p in store.path.parent.glob(f"{store.path.name}*"))


def stored_bytes(store: History) -> int:
    conn = sqlite3.connect(store.path)
    (total,) = conn.execute("SELECT COALESCE(SUM(length(body)), 0) FROM metrics_batches").fetchone()
    conn.close()
    return int(total)


def test_prune_by_bytes_keeps_the_newest_and_the_file_shrinks(store: History) -> None:
    for n, doc in enumerate(busy_reports(3000)):
        store.add_metrics(T0 + SAMPLE_S * n, doc)
        if n % 30 == 29:
            store.flush_metrics()
    total = stored_bytes(store)
    size_before = files_size(store)
    bound = total // 4
    store.prune(T0 + 1e5, events_max_age_s=DAY_S, metrics_max_age_s=DAY_S, metrics_max_bytes=bound)
    kept = exported(store)
    assert bound - total / 100 < stored_bytes(store) <= bound  # one batch is 1% of it
    # The newest, without a gap.
    ids = [e["report"]["header"]["report_id"] for e in kept]
    assert ids == list(range(3000 - len(ids), 3000))
    assert files_size(store) < size_before / 2  # the freed pages went back


def test_prune_by_bytes_takes_rows_of_the_version_before_first(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    conn = open_db(path, MIGRATIONS[:3])
    docs = busy_reports(400)
    for n in range(200):
        env = {"timestamp": T0 + SAMPLE_S * n, "report": next(docs)}
        conn.execute(
            "INSERT INTO metrics_history (time, body) VALUES (?, ?)",
            (env["timestamp"], json.dumps(env, separators=(",", ":"))),
        )
    conn.close()
    with open_history(path) as store:
        for n in range(200, 400):
            store.add_metrics(T0 + SAMPLE_S * n, next(docs))
            if n % 30 == 29:
                store.flush_metrics()
        store.flush_metrics()
        bound = store.used_bytes() // 2
        store.prune(T0, events_max_age_s=DAY_S, metrics_max_age_s=DAY_S, metrics_max_bytes=bound)
        assert store.used_bytes() <= bound
        times = [e["timestamp"] for e in exported(store)]
        assert times[0] > T0 and times[-1] == T0 + SAMPLE_S * 399  # the oldest went
        assert times == sorted(times) and len(times) == (times[-1] - times[0]) / SAMPLE_S + 1


def test_a_store_made_before_incremental_vacuum_is_converted_once_small(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    conn = open_db(path, MIGRATIONS[:3])
    pad = "x" * 20_000
    for n in range(300):
        conn.execute(
            "INSERT INTO metrics_history (time, body) VALUES (?, ?)",
            (T0 + n, json.dumps({"timestamp": T0 + n, "report": report(n), "pad": pad})),
        )
    conn.close()
    big = sum(p.stat().st_size for p in tmp_path.glob("agent.db*"))
    with open_history(path) as store:
        assert store._pragma("auto_vacuum") == 0
        store.prune(T0 + 290 + DAY_S, events_max_age_s=DAY_S, metrics_max_age_s=DAY_S)
        assert store._pragma("auto_vacuum") == 2  # INCREMENTAL from now on
        assert len(exported(store)) == 10
    assert sum(p.stat().st_size for p in tmp_path.glob("agent.db*")) < big / 10


@dataclass
class Changes:
    rules: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    buckets: dict[str, dict[str, Any] | None] = field(default_factory=dict)


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/self/io")


def test_a_day_of_the_daemons_store_traffic_writes_little(tmp_path: Path) -> None:
    """A busy device's day replayed fast: a 150-connection report every 10 s, every
    300 s one save of 5 rule and 5 baseline bucket rows with the metrics batch and the
    report counters, an event every 4 hours; then 13 more days of batches and a prune.
    Bytes written (/proc/self/io, what the kernel sends to the disk) are a benchmark
    figure, printed; the bounds are the issue's goals with room."""
    rng = random.Random(8)
    before = write_bytes()
    with open_history(history_path(tmp_path)) as store:
        for n, doc in enumerate(busy_reports(DAY_S // SAMPLE_S)):
            now = T0 + SAMPLE_S * n
            store.add_metrics(now, doc)
            if n % 30 == 29:
                save = n // 30
                events = []
                if save % 48 == 0:
                    events = [
                        {
                            "violationId": f"v-{save}",
                            "thingName": "pi",
                            "securityProfileName": "p",
                            "behavior": {"name": "b", "metric": "aws:all-bytes-out"},
                            "metricValue": {"count": save},
                            "violationEventType": "in-alarm",
                            "violationEventTime": now,
                        }
                    ]
                changes = Changes(
                    {
                        f"rule-{i}": {"consecutive": save % 4, "last": rng.random()}
                        for i in range(5)
                    },
                    {
                        f"b{i}:{save // 12}": {
                            "bins": {str(k): rng.randrange(999) for k in range(120)}
                        }
                        for i in range(5)
                    },
                )
                store.record_changes(
                    events, [], changes, publish=True, metrics=True, counters={"report_id": n}
                )
        written = write_bytes() - before
        history_per_day = stored_bytes(store)
    if written == 0:
        pytest.skip(f"{tmp_path} is on a file system that counts no write_bytes (tmpfs)")
    print(f"\nstore bytes written a day: {written}; metrics history a day: {history_per_day}")
    assert written <= 20 * 1024 * 1024
    assert 14 * history_per_day <= 100 * 1024 * 1024


def test_the_file_sizes_follow_retention(tmp_path: Path) -> None:
    """Retention by age over a long run: the file stays at what 2 days need."""
    rng = random.Random(2)
    with open_history(history_path(tmp_path)) as store:
        sizes = []
        for day in range(6):
            for k in range(DAY_S // 300):  # one batch of 30 small reports every 300 s
                now = T0 + day * DAY_S + k * 300
                for j in range(30):
                    store.add_metrics(now + j * SAMPLE_S, report(rng.randrange(10**9)))
                store.flush_metrics()
            store.prune(now, events_max_age_s=DAY_S, metrics_max_age_s=2 * DAY_S)
            sizes.append(files_size(store))
    assert max(sizes[2:]) < 1.3 * sizes[1]

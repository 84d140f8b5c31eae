"""The alarm state as rows and the active set as a difference (record_changes), on real
SQLite files: what is saved comes back, only what changed is written, a store from
before the rows restores from its blob once, and a WAL cut anywhere by a power cut
opens to one committed save."""

from __future__ import annotations

import math
import random
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.store.db import open_db
from agent.store.history import (
    COMPRESS_OVER,
    MIGRATIONS,
    History,
    StoreError,
    StoreUnavailable,
    history_path,
    open_history,
)

T0 = 1_730_000_000.0
BEHAVIOR = {"name": "ports", "metric": "aws:num-listening-tcp-ports"}


@dataclass
class Changes:
    """The shape of agent.core.evaluator.StateChanges."""

    rules: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    buckets: dict[str, dict[str, Any] | None] = field(default_factory=dict)


def violation(n: int, value: int = 1) -> dict[str, Any]:
    return {
        "violationId": f"v-{n}",
        "thingName": "pi",
        "securityProfileName": "p",
        "behavior": BEHAVIOR,
        "lastViolationValue": {"count": value},
        "lastViolationTime": T0 + n,
        "violationStartTime": T0 + n,
        "verificationState": "UNKNOWN",
    }


def event(n: int, kind: str = "in-alarm") -> dict[str, Any]:
    return {
        "violationId": f"v-{n}",
        "thingName": "pi",
        "securityProfileName": "p",
        "behavior": BEHAVIOR,
        "metricValue": {"count": n},
        "violationEventType": kind,
        "violationEventTime": T0 + n,
    }


def bucket(n: int, bins: int) -> dict[str, Any]:
    """A sketch-like baseline bucket: `bins` counters."""
    rng = random.Random(n)
    return {
        "start": T0 + 3600 * n,
        "bins": {str(300 + b): rng.randrange(1, 999) for b in range(bins)},
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[History]:
    with open_history(history_path(tmp_path)) as h:
        yield h


def wal_size(store: History) -> int:
    wal = store.path.with_name(store.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_rows_are_upserted_and_deleted_by_key_and_survive_reopen(store: History) -> None:
    store.record_changes([], [], Changes({"r1": {"n": 1}, "r2": {"n": 2}}, {"b1": bucket(1, 5)}))
    store.record_changes([], [], Changes({"r1": {"n": 10}, "r2": None}, {"b2": bucket(2, 5)}))
    store.record_changes([], [], Changes({"gone": None}, {}))  # deleting a missing key is fine
    expected = ({"r1": {"n": 10}}, {"b1": bucket(1, 5), "b2": bucket(2, 5)})
    assert store.load_state() == expected
    with open_history(store.path) as again:
        assert again.load_state() == expected


def test_a_long_body_is_stored_compressed_and_comes_back(store: History) -> None:
    small, large = bucket(1, 3), bucket(2, 200)
    assert len(str(small)) < COMPRESS_OVER < len(str(large))
    store.record_changes([], [], Changes({}, {"small": small, "large": large}))
    conn = sqlite3.connect(store.path)
    stored = dict(
        conn.execute("SELECT key, typeof(body) || ':' || length(body) FROM baseline_buckets")
    )
    conn.close()
    assert stored["small"].startswith("text:")
    kind, size = stored["large"].split(":")
    assert kind == "blob" and int(size) < len(str(large)) / 2
    assert store.load_state()[1] == {"small": small, "large": large}


def test_a_store_from_before_the_rows_restores_from_its_blob_once(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    conn = open_db(path, MIGRATIONS[:3])  # the schema of the version before
    conn.execute("INSERT INTO blobs (name, body) VALUES ('alarm_state', '{\"step\":7}')")
    conn.close()
    with open_history(path) as store:
        assert store.load_state() == ({}, {})
        assert store.load_alarm_state() == {"step": 7}
        store.record_changes([], [], Changes({"r": {"step": 8}}))
        assert store.load_alarm_state() is None  # dropped with the first rows
        assert store.load_state() == ({"r": {"step": 8}}, {})
        # The whole-state record() writes the blob again and the rows go: one state.
        store.record([], [], {"step": 9})
        assert store.load_state() == ({}, {})
        assert store.load_alarm_state() == {"step": 9}


def test_bad_changes_are_refused_and_nothing_is_written(store: History) -> None:
    store.record_changes([event(1)], [violation(1)], Changes({"r": {"n": 1}}))
    for bad in (
        Changes({"r": {"n": math.nan}}),
        Changes({}, {"b": {"x": object()}}),
        Changes({"\ud800": {"n": 2}}),
    ):
        with pytest.raises(StoreError):
            store.record_changes([event(2)], [violation(1), violation(2)], bad)
    assert store.load_state() == ({"r": {"n": 1}}, {})
    assert [
        e["violationId"] for e in store.list_violation_events(0, math.inf)["violationEvents"]
    ] == ["v-1"]
    assert len(store.list_active_violations()["activeViolations"]) == 1


def test_the_active_set_as_a_difference_lists_as_the_whole_set_did(tmp_path: Path) -> None:
    """Two stores driven with the same random active sets, one by record() (delete all
    and insert) and one by record_changes(): every listing is the same at every step."""
    rng = random.Random(9)
    with open_history(tmp_path / "whole.db") as whole, open_history(tmp_path / "diff.db") as diff:
        active: dict[str, dict[str, Any]] = {}
        for step in range(80):
            for _ in range(rng.randrange(3)):
                n = rng.randrange(30)
                if f"v-{n}" in active and rng.random() < 0.5:
                    del active[f"v-{n}"]
                else:
                    active[f"v-{n}"] = violation(n, rng.randrange(100))
            whole.record([], list(active.values()), {"step": step})
            diff.record_changes([], list(active.values()), Changes({"step": {"n": step}}))
            if step == 40:  # a verification state set on an active violation
                active["v-3"] = violation(3)
                for store in (whole, diff):
                    store.record([], list(active.values()), {"step": step})
                    store.put_verification_state("v-3", "BENIGN_POSITIVE", "lab")
            for kw in ({}, {"max_results": 7}, {"verification_state": "BENIGN_POSITIVE"}):
                assert whole.list_active_violations(**kw) == diff.list_active_violations(**kw)


def test_a_save_writes_only_what_changed(store: History) -> None:
    store._conn.execute("PRAGMA wal_autocheckpoint=0")  # the WAL grows by what is written
    active = [violation(n) for n in range(40)]
    changes = Changes({f"r{n}": {"n": n} for n in range(20)}, {"b": bucket(1, 50)})
    store.record_changes([], active, changes)
    before = wal_size(store)
    store.record_changes([], active, Changes())
    assert wal_size(store) == before  # nothing changed: not one page written
    active[17] = violation(17, value=99)
    store.record_changes([], active, Changes({"r3": {"n": -3}}))
    frames = (wal_size(store) - before) // (1024 + 24)
    assert 1 <= frames <= 4  # the leaf of v-17 and of r3, not all 40 + 20 rows


def test_metrics_go_in_the_same_transaction_and_stay_buffered_when_it_fails(
    store: History,
) -> None:
    store.add_metrics(T0, {"header": {"report_id": 1, "version": "1.0"}})
    store.path.unlink()  # the state dir emptied under the daemon
    with pytest.raises(StoreUnavailable):
        store.record_changes([event(1)], [], Changes({"r": {"n": 1}}), metrics=True)
    assert store.buffered_metrics == 1
    store.reopen()
    store.record_changes(
        [event(1)], [], Changes({"r": {"n": 1}}), metrics=True, counters={"report_id": 1}
    )
    assert store.buffered_metrics == 0
    assert [env["timestamp"] for env in store.export_metrics(0, math.inf)] == [T0]
    assert store.load_counters() == {"report_id": 1}


def test_a_wal_cut_anywhere_opens_to_one_committed_save(tmp_path: Path) -> None:
    """What a power cut leaves of a WAL: its first bytes, then nothing or garbage. Each
    save n holds event n, the active set {n-1, n} and rule step n; the copy opened
    must hold one whole save (frames after the cut fail their checksums) or be moved
    aside as damaged, never a mix."""
    path = tmp_path / "live" / "agent.db"
    saves = 12
    with open_history(path) as store:
        store._conn.execute("PRAGMA wal_autocheckpoint=0")  # keep every save in the WAL
        for n in range(saves):
            store.record_changes(
                [event(n)],
                [violation(m) for m in (n - 1, n) if m >= 0],
                Changes({"step": {"n": n}}, {f"b{n}": bucket(n, 100)}),
                publish=True,
            )
        wal = path.with_name("agent.db-wal").read_bytes()
        main = path.read_bytes()
    rng = random.Random(5)
    outcomes: set[int | str] = set()
    for trial in range(40):
        # The whole WAL, none of it, then cuts anywhere with or without garbage after.
        cut = (len(wal), 0)[trial] if trial < 2 else rng.randrange(len(wal) + 1)
        tail = bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 100, 5000)) * (trial > 1)))
        copy = tmp_path / f"cut-{trial}" / "agent.db"
        copy.parent.mkdir()
        copy.write_bytes(main)
        copy.with_name("agent.db-wal").write_bytes(wal[:cut] + tail)
        with open_history(copy) as opened:
            if opened.moved_aside is not None:
                outcomes.add("moved aside")
                continue
            rules, buckets = opened.load_state()
            outcomes.add(rules["step"]["n"] if rules else -1)
            if not rules:
                assert buckets == {} and opened.list_violation_events(0, math.inf) == {
                    "violationEvents": []
                }
                continue
            n = rules["step"]["n"]
            events = opened.list_violation_events(0, math.inf)["violationEvents"]
            assert [e["violationId"] for e in events] == [f"v-{m}" for m in range(n + 1)]
            active = opened.list_active_violations()["activeViolations"]
            assert [a["violationId"] for a in active] == [f"v-{m}" for m in (n - 1, n) if m >= 0]
            assert buckets == {f"b{m}": bucket(m, 100) for m in range(n + 1)}
            assert len(opened.unpublished_events()) == n + 1
        shutil.rmtree(copy.parent)
    assert {-1, saves - 1} <= outcomes and len(outcomes) > saves // 2  # cuts all along

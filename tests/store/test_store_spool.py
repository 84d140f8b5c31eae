from __future__ import annotations

import logging
from pathlib import Path

import pytest

import agent.store.spool as spool_module
from agent.store.spool import Kind, QuarantinedItem, Spool, SpoolItem


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool.db"


def ids(spool: Spool) -> list[int]:
    return [item.id for item in spool.pending(1000)]


def test_put_pending_ack_in_id_order(path: Path) -> None:
    spool = Spool(path, 1000)
    a = spool.put("metrics", "t/m", b"one", now=10.0)
    b = spool.put("violation", "t/v", b"two!", now=11.0)
    c = spool.put("metrics", "t/m", b"three", now=12.0)
    assert a is not None and b is not None and c is not None
    assert a < b < c
    items = spool.pending(2)
    assert [(i.id, i.kind, i.topic, i.payload, i.created) for i in items] == [
        (a, "metrics", "t/m", b"one", 10.0),
        (b, "violation", "t/v", b"two!", 11.0),
    ]
    assert spool.depth() == (3, 12)
    spool.ack(a, c)
    assert ids(spool) == [b]
    assert spool.depth() == (1, 4)
    spool.ack(a)  # again, or after an eviction: nothing happens
    assert ids(spool) == [b]


def test_messages_survive_reopen(path: Path) -> None:
    spool = Spool(path, 1000)
    first = spool.put("violation", "t/v", b"\x00\xffcbor", now=1.0)
    spool.close()
    reopened = Spool(path, 1000)
    assert [(i.id, i.payload) for i in reopened.pending(10)] == [(first, b"\x00\xffcbor")]


def test_ids_are_never_reused(path: Path) -> None:
    """A late PUBACK for an evicted or acked message must not hit a newer one."""
    spool = Spool(path, 1000)
    old = spool.put("metrics", "t", b"x", now=0.0)
    assert old is not None
    spool.ack(old)
    spool.close()
    spool = Spool(path, 1000)
    new = spool.put("metrics", "t", b"y", now=0.0)
    assert new is not None and new > old


def test_full_spool_drops_oldest_metrics_first(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(path, 30)
    m1 = spool.put("metrics", "t", b"m" * 10, now=0.0)
    v1 = spool.put("violation", "t", b"v" * 10, now=1.0)
    m2 = spool.put("metrics", "t", b"m" * 10, now=2.0)
    with caplog.at_level(logging.WARNING):
        m3 = spool.put("metrics", "t", b"m" * 10, now=3.0)
    assert ids(spool) == [v1, m2, m3]
    assert spool.drops() == {"metrics": 1, "violation": 0}
    assert f'spool_drop id={m1} kind=metrics bytes=10 reason="spool full"' in caplog.text
    # A violation needs room too: the metrics go, oldest first, before any violation.
    v2 = spool.put("violation", "t", b"v" * 20, now=4.0)
    assert ids(spool) == [v1, v2]
    assert spool.drops() == {"metrics": 3, "violation": 0}
    assert spool.depth() == (2, 30)


def test_new_metrics_report_is_dropped_before_any_violation(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(path, 30)
    v1 = spool.put("violation", "t", b"v" * 15, now=0.0)
    m1 = spool.put("metrics", "t", b"m" * 5, now=1.0)
    with caplog.at_level(logging.WARNING):
        refused = spool.put("metrics", "t/m", b"m" * 20, now=2.0)
    # Evicting m1 is not enough and violations go last: the new report is dropped and
    # m1, which could not have made room, is kept.
    assert refused is None
    assert ids(spool) == [v1, m1]
    assert spool.drops() == {"metrics": 1, "violation": 0}
    assert "spool_drop kind=metrics topic=t/m bytes=20 max_bytes=30" in caplog.text


def test_violations_go_only_when_nothing_else_is_left_oldest_first(path: Path) -> None:
    spool = Spool(path, 30)
    spool.put("violation", "t", b"a" * 10, now=0.0)
    v2 = spool.put("violation", "t", b"b" * 10, now=1.0)
    spool.put("metrics", "t", b"m" * 10, now=2.0)
    v3 = spool.put("violation", "t", b"c" * 20, now=3.0)
    # The metrics report goes first, then the oldest violation.
    assert ids(spool) == [v2, v3]
    assert spool.drops() == {"metrics": 1, "violation": 1}


def test_message_larger_than_the_spool_is_refused(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(path, 30)
    kept = spool.put("metrics", "t", b"m" * 10, now=0.0)
    with caplog.at_level(logging.ERROR):
        assert spool.put("violation", "things/x/v", b"v" * 31, now=1.0) is None
    assert ids(spool) == [kept]
    assert spool.drops() == {"metrics": 0, "violation": 1}
    assert (
        'spool_drop kind=violation topic=things/x/v bytes=31 max_bytes=30 reason="larger than'
        ' the whole spool"' in caplog.text
    )


def test_drop_counts_persist_across_reopen(path: Path) -> None:
    spool = Spool(path, 10)
    spool.put("metrics", "t", b"m" * 10, now=0.0)
    spool.put("metrics", "t", b"m" * 10, now=1.0)
    spool.put("violation", "t", b"v" * 11, now=2.0)
    spool.close()
    assert Spool(path, 10).drops() == {"metrics": 1, "violation": 1}


def test_quarantine_takes_a_message_out_of_the_queue_and_keeps_it(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(path, 100)
    first = spool.put("violation", "t/v", b"\xffbad", now=1.0)
    second = spool.put("metrics", "t/m", b"ok", now=2.0)
    assert first is not None and second is not None
    with caplog.at_level(logging.WARNING):
        assert spool.quarantine(first, "broker refused it: NOT_AUTHORIZED", now=5.0)
        assert not spool.quarantine(first, "again")  # no longer queued: nothing happens
    assert ids(spool) == [second]  # the queue goes on without it
    assert spool.depth() == (1, 2)
    assert spool.quarantined() == 1
    (kept,) = spool.quarantined_items()
    assert kept == QuarantinedItem(
        SpoolItem(first, "violation", "t/v", b"\xffbad", 1.0),
        5.0,
        "broker refused it: NOT_AUTHORIZED",
    )
    assert spool.drops() == {"metrics": 0, "violation": 0}  # kept, so not a drop
    assert caplog.text.count("spool_quarantined") == 1
    assert 'reason="broker refused it: NOT_AUTHORIZED"' in caplog.text
    spool.close()
    assert Spool(path, 100).quarantined_items() == [kept]


def test_quarantine_keeps_the_newest_within_its_bounds_and_counts_the_rest(
    path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "QUARANTINE_MAX", 3)
    spool = Spool(path, 30)

    def refused(kind: Kind, size: int) -> int:
        item = spool.put(kind, "t", b"x" * size, now=0.0)
        assert item is not None and spool.quarantine(item, "refused")
        return item

    with caplog.at_level(logging.WARNING):
        bulky = [refused("violation", 8) for _ in range(4)]
    # 4 x 8 bytes is more than max_bytes=30: the oldest went, counted and logged.
    assert [q.item.id for q in spool.quarantined_items()] == bulky[1:]
    assert spool.drops() == {"metrics": 0, "violation": 1}
    assert f'spool_drop id={bulky[0]} kind=violation bytes=8 reason="quarantine full"' in (
        caplog.text
    )
    small = refused("metrics", 1)
    # A fourth message is one more than QUARANTINE_MAX: the oldest goes.
    assert [q.item.id for q in spool.quarantined_items()] == [*bulky[2:], small]
    assert spool.quarantined() == 3
    assert spool.drops() == {"metrics": 0, "violation": 2}
    assert spool.depth() == (0, 0)


def test_unknown_kind_is_an_error(path: Path) -> None:
    with pytest.raises(ValueError, match="unknown spool kind"):
        Spool(path, 100).put("audit", "t", b"x", now=0.0)  # type: ignore[arg-type]


def _written_ids(path: Path) -> list[int]:
    """What a restart would find: the messages in the file."""
    with Spool(path, 1000) as other:
        return ids(other)


def test_held_messages_keep_the_order_and_are_written_only_when_persisted(path: Path) -> None:
    spool = Spool(path, 1000)
    a = spool.put("violation", "t/v", b"event", now=1.0)
    b = spool.put("metrics", "t/m", b"report", now=2.0, durable=False)
    c = spool.put("violation", "t/v", b"event2", now=3.0)
    assert a is not None and b is not None and c is not None
    assert ids(spool) == [a, b, c]  # one order, held or written
    assert spool.depth() == (3, len(b"event") + len(b"report") + len(b"event2"))
    assert _written_ids(path) == [a, c]  # nothing of the held report on disk
    spool.persist_held()
    assert _written_ids(path) == [a, b, c]
    assert spool.pending(3)[1] == SpoolItem(b, "metrics", "t/m", b"report", 2.0)


def test_a_held_message_acked_never_touches_the_file(path: Path) -> None:
    spool = Spool(path, 1000)
    held = spool.put("metrics", "t/m", b"report", now=1.0, durable=False)
    assert held is not None
    size = path.stat().st_size, (path.parent / "spool.db-wal").stat().st_size
    spool.ack(held)
    assert spool.pending(10) == []
    assert (path.stat().st_size, (path.parent / "spool.db-wal").stat().st_size) == size


def test_persist_held_takes_only_the_old_ones_and_written_ids_go_on(path: Path) -> None:
    spool = Spool(path, 1000)
    old = spool.put("metrics", "t/m", b"old", now=10.0, durable=False)
    spool.put("metrics", "t/m", b"new", now=100.0, durable=False)
    spool.persist_held(older_than=50.0)
    assert _written_ids(path) == [old]
    spool.close()  # `new` was held only: lost with the process, as a power cut would
    again = Spool(path, 1000)
    later = again.put("violation", "t/v", b"event", now=200.0)
    assert ids(again) == [old, later]
    assert later is not None and old is not None and later > old  # written ids never reused


def test_a_held_message_can_be_quarantined(path: Path) -> None:
    spool = Spool(path, 1000)
    held = spool.put("metrics", "t/m", b"report", now=1.0, durable=False)
    assert held is not None and spool.quarantine(held, "broker refused it", now=2.0)
    assert spool.pending(10) == [] and spool.quarantined() == 1
    assert spool.quarantined_items()[0].item.id == held

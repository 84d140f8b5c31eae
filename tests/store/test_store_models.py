"""models.db: rows written in one transaction, read back by a new connection (a
restart), refused with the field named, private like the other stores."""

import sqlite3
import stat
from pathlib import Path

import pytest

from agent.store.db import StoreError, StoreNotFound
from agent.store.models import ModelRecord, models_path, open_models

MODEL = {"format": 1, "trainedAt": 2000.0, "expected": [1.0, 2.5]}


def record(metric: str = "aws:all-bytes-out", **changes: object) -> ModelRecord:
    fields: dict[str, object] = {
        "metric": metric,
        "model": MODEL,
        "refreshed_at": 2000.0,
        "datapoints": 30_000,
        "first_t": 100.0,
        "trained_at": 2000.0,
        "source": "history",
    }
    fields.update(changes)
    return ModelRecord(**fields)  # type: ignore[arg-type]


def test_records_survive_a_new_connection_and_replace_by_metric(tmp_path: Path) -> None:
    with open_models(tmp_path) as store:
        store.put([record(), record("level", model=None, refreshed_at=None, datapoints=12)])
        store.put([record(datapoints=40_000, trained_at=3000.0)])
    with open_models(tmp_path, create=False) as again:
        records = again.records()
    assert records == {
        "aws:all-bytes-out": record(datapoints=40_000, trained_at=3000.0),
        "level": record("level", model=None, refreshed_at=None, datapoints=12),
    }
    mode = stat.S_IMODE(models_path(tmp_path).stat().st_mode)
    assert mode == 0o600


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"metric": ""}, "metric must be a non-empty string"),
        ({"refreshed_at": None}, "a model and its refresh time go together"),
        ({"datapoints": -1}, "datapoints must be a count"),
        ({"first_t": float("nan")}, "first_t must be finite"),
        ({"trained_at": "today"}, "trained_at must be epoch seconds"),
        ({"model": {"x": float("inf")}}, "not storable as JSON"),
    ],
)
def test_a_bad_record_is_refused_and_nothing_is_written(
    tmp_path: Path, changes: dict[str, object], named: str
) -> None:
    with open_models(tmp_path) as store:
        with pytest.raises(StoreError, match=named):
            store.put([record("level"), record(**changes)])
        assert store.records() == {}


def test_a_damaged_model_is_named_when_read(tmp_path: Path) -> None:
    with open_models(tmp_path) as store:
        store.put([record()])
    with sqlite3.connect(models_path(tmp_path)) as conn:
        conn.execute("UPDATE models SET model = '{broken'")
    with (
        open_models(tmp_path) as store,
        pytest.raises(StoreError, match="the model of 'aws:all-bytes-out' is damaged"),
    ):
        store.records()


def test_readers_do_not_create_the_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound):
        open_models(tmp_path, create=False)
    assert not models_path(tmp_path).exists()

"""The ML models and their training progress (state_dir/models.db): one row per metric,
written by the daemon's training thread after each daily training and by the `train`
verb, read back at every start and reload. A few KiB a day: one small transaction per
training, synced like the other stores.

A row holds the model in force as its JSON (agent.core.ml.Model.to_json), absent until
one is built, and what the latest training saw: its datapoints, the time of the first
one, when it ran and where its data came from. A training that cannot build a model
(too little data) updates the progress and keeps the model in force."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.store.db import Store, StoreError, counted, give_to_dir_owner

MODELS_FILE = "models.db"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE models (
        metric TEXT PRIMARY KEY,
        model TEXT,  -- the model in force, JSON; NULL until one is built
        refreshed_at REAL,  -- when the model in force was built
        datapoints INTEGER NOT NULL,  -- seen by the latest training
        first_t REAL,  -- the first of them (training data collection start)
        trained_at REAL NOT NULL,  -- when the latest training ran
        source TEXT NOT NULL  -- "history", or the file the `train` verb read
    );
    """,
)


@dataclass(frozen=True, slots=True)
class ModelRecord:
    metric: str
    model: Mapping[str, Any] | None
    refreshed_at: float | None
    datapoints: int
    first_t: float | None
    trained_at: float
    source: str


def models_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / MODELS_FILE


def _check(record: ModelRecord) -> tuple[Any, ...]:
    """The row of a record; StoreError naming the field that cannot be stored."""
    what = f"model of {record.metric!r}"
    if not isinstance(record.metric, str) or not record.metric:
        raise StoreError(f"model: metric must be a non-empty string, got {record.metric!r}")
    if (record.model is None) != (record.refreshed_at is None):
        raise StoreError(f"{what}: a model and its refresh time go together")
    if type(record.datapoints) is not int or record.datapoints < 0:
        raise StoreError(f"{what}: datapoints must be a count, got {record.datapoints!r}")
    for name in ("refreshed_at", "first_t", "trained_at"):
        value = getattr(record, name)
        if value is None and name != "trained_at":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StoreError(f"{what}: {name} must be epoch seconds, got {value!r}")
        if not math.isfinite(value):
            raise StoreError(f"{what}: {name} must be finite, got {value!r}")
    try:
        body = None if record.model is None else json.dumps(record.model, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what}: not storable as JSON: {e}") from None
    return (
        record.metric,
        body,
        record.refreshed_at,
        record.datapoints,
        record.first_t,
        record.trained_at,
        record.source,
    )


class ModelStore(Store):
    """models.db on one connection (one thread; see agent.store.db.Store for faults)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        super().__init__(path, MIGRATIONS, create=create)

    def put(self, records: Iterable[ModelRecord]) -> None:
        """Write the records (replacing the rows of their metrics) in one transaction."""
        rows = [_check(r) for r in records]
        with self._transaction(f"writing {counted(len(rows), 'model')}") as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO models (metric, model, refreshed_at, datapoints,"
                " first_t, trained_at, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def records(self) -> dict[str, ModelRecord]:
        """Every row, by metric. A model that is not JSON is StoreError naming it."""
        with self._guard("reading the models"):
            rows = self._conn.execute(
                "SELECT metric, model, refreshed_at, datapoints, first_t, trained_at, source"
                " FROM models ORDER BY metric"
            ).fetchall()
        out = {}
        for metric, body, refreshed_at, datapoints, first_t, trained_at, source in rows:
            try:
                model = None if body is None else json.loads(body)
            except ValueError as e:
                raise StoreError(f"{self.path}: the model of {metric!r} is damaged: {e}") from None
            out[metric] = ModelRecord(
                metric, model, refreshed_at, datapoints, first_t, trained_at, source
            )
        return out


def open_models(state_dir: str | Path, *, create: bool = True) -> ModelStore:
    """models.db in `state_dir`; created (0600, in a 0700 directory) when missing unless
    `create` is False (StoreNotFound then). Root creating it for a state dir owned by the
    service user gives the file to that user, or the daemon could not write it."""
    path = models_path(state_dir)
    store = ModelStore(path, create=create)
    if create:
        give_to_dir_owner(path)
    return store

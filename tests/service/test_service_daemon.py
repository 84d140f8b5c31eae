"""The daemon's wiring in-process, where a real input cannot reach: an event the store
refuses must not hold back the ones after it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import Config
from agent.core.events import EventType, ViolationEvent
from agent.service.cycle import Step
from agent.service.daemon import Daemon
from agent.service.notify import Notifier
from agent.store.history import history_path, open_history


def event(violation_id: str, value: float) -> ViolationEvent:
    return ViolationEvent(
        violation_id=violation_id,
        thing_name="pi",
        security_profile_name="p",
        behavior={"name": "b", "metric": "level"},
        metric_value={"number": value},
        violation_event_type=EventType.IN_ALARM,
        violation_event_time=1000.0,
    )


def test_an_event_the_store_refuses_is_logged_whole_and_does_not_block_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = Daemon(Config(thing_name="pi", state_dir=str(tmp_path)), None, Notifier())
    daemon.start()
    with caplog.at_level(logging.ERROR):
        daemon._apply(Step(events=(event("bad", float("nan")),)))  # JSON has no NaN
    daemon._apply(Step(events=(event("good", 5.0),)))
    daemon.shutdown()
    assert 'event_unstorable error="event 0: not storable as JSON' in caplog.text
    assert '\\"violationId\\": \\"bad\\"' in caplog.text
    assert daemon.errors["events_unstorable"] == 1
    with open_history(history_path(tmp_path), create=False) as store:
        stored = store.list_violation_events(0, 4e9)["violationEvents"]
    assert [e["violationId"] for e in stored] == ["good"]

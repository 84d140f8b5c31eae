"""The local store through its API: a realistic run of the rule core recorded step by step,
then every filter, pagination, verification state, retention, metrics history, blobs and
migrations checked against what was recorded."""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.core.report import ReportError, parse_envelope, to_long_names
from agent.store.db import open_db
from agent.store.history import (
    MIGRATIONS,
    History,
    InvalidRequest,
    StoreError,
    StoreNotFound,
    ViolationNotFound,
    history_path,
    open_history,
)

T0 = 1_730_000_000.0
STEP_S = 60.0
THINGS = ("pi-kitchen", "gw-garage")
PROFILES = ("edge-baseline", "edge-strict")
# Each behavior with the behaviorCriteriaType AWS files it under.
BEHAVIORS: list[tuple[dict[str, Any], str | None]] = [
    (
        {
            "name": "tcp-ports",
            "metric": "aws:num-listening-tcp-ports",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}},
        },
        "STATIC",
    ),
    (
        {
            "name": "dest-ips",
            "metric": "aws:destination-ip-addresses",
            "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}},
            "suppressAlerts": True,
        },
        "STATIC",
    ),
    (
        {
            "name": "bytes-out-p90",
            "metric": "aws:all-bytes-out",
            "criteria": {
                "comparisonOperator": "less-than",
                "statisticalThreshold": {"statistic": "p90"},
                "durationSeconds": 300,
            },
            "suppressAlerts": True,
        },
        "STATISTICAL",
    ),
    (
        {
            "name": "packets-in-ml",
            "metric": "aws:all-packets-in",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
            "suppressAlerts": False,
        },
        "MACHINE_LEARNING",
    ),
    ({"name": "cpu-kept", "metric": "cpu_usage"}, None),  # no criteria: no criteria type
]
CRITERIA = {b["name"]: ctype for b, ctype in BEHAVIORS}


@dataclass
class Run:
    """What was recorded, in recording order: the oracle for every query."""

    events: list[dict[str, Any]] = field(default_factory=list)
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: int = 0


def _value(rng: random.Random, behavior: dict[str, Any]) -> dict[str, Any]:
    if behavior["metric"] == "aws:destination-ip-addresses":
        return {"cidrs": [f"203.0.113.{rng.randrange(256)}" for _ in range(rng.randrange(1, 4))]}
    if behavior["metric"] == "cpu_usage":
        return {"number": round(rng.uniform(80, 100), 2)}
    return {"count": rng.randrange(5, 10_000)}


def _event(
    violation: dict[str, Any], kind: str, value: dict[str, Any], time: float
) -> dict[str, Any]:
    return {
        "violationId": violation["violationId"],
        "thingName": violation["thingName"],
        "securityProfileName": violation["securityProfileName"],
        "behavior": violation["behavior"],
        "metricValue": value,
        "violationEventType": kind,
        "verificationState": "UNKNOWN",
        "violationEventTime": time,
    }


def simulate(store: History, steps: int = 60, seed: int = 4) -> Run:
    """Drive the store as the daemon does: one record() per evaluation step."""
    rng = random.Random(seed)
    run = Run()
    for step in range(steps):
        now = T0 + step * STEP_S
        step_events: list[dict[str, Any]] = []
        for _ in range(rng.randrange(0, 4)):  # several events may share one instant
            ended = sorted(v for v, a in run.active.items() if a["violationStartTime"] < now)
            if ended and rng.random() < 0.45:
                vid = rng.choice(ended)
                violation = run.active.pop(vid)
                if rng.random() < 0.3:
                    # Invalidation is timed at last datapoint + staleness: earlier than now.
                    kind, at, value = (
                        "alarm-invalidated",
                        now - 30.0,
                        violation["lastViolationValue"],
                    )
                else:
                    kind, at = "alarm-cleared", now
                    value = {"count": 1} if "count" in violation["lastViolationValue"] else {}
                step_events.append(_event(violation, kind, value, at))
            else:
                behavior, _ = rng.choice(BEHAVIORS)
                value = _value(rng, behavior)
                violation = {
                    "violationId": str(uuid.UUID(int=rng.getrandbits(128))),
                    "thingName": rng.choice(THINGS),
                    "securityProfileName": rng.choice(PROFILES),
                    "behavior": behavior,
                    "lastViolationValue": value,
                    "lastViolationTime": now,
                    "violationStartTime": now,
                    "verificationState": "UNKNOWN",
                }
                run.active[violation["violationId"]] = violation
                step_events.append(_event(violation, "in-alarm", value, now))
        for violation in run.active.values():
            if violation["violationStartTime"] < now and rng.random() < 0.3:
                violation["lastViolationValue"] = _value(rng, violation["behavior"])
                violation["lastViolationTime"] = now
        store.record(step_events, list(run.active.values()), {"step": step})
        run.events.extend(copy.deepcopy(step_events))
        run.steps = step + 1
    return run


@pytest.fixture
def store(tmp_path: Path) -> Iterator[History]:
    with open_history(history_path(tmp_path)) as h:
        yield h


@pytest.fixture
def run(store: History) -> Run:
    return simulate(store)


def _in_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first; events of one instant in recording order (sorted() is stable)."""
    return sorted(events, key=lambda e: e["violationEventTime"])


def _matches(record: dict[str, Any], **filters: Any) -> bool:
    behavior = record["behavior"]
    checks = {
        "thing_name": record["thingName"],
        "security_profile_name": record["securityProfileName"],
        "behavior_criteria_type": CRITERIA[behavior["name"]],
        "list_suppressed_alerts": behavior.get("suppressAlerts", False),
        "verification_state": record["verificationState"],
    }
    return all(checks[key] == want for key, want in filters.items())


def _all_events(store: History, **kw: Any) -> list[dict[str, Any]]:
    return store.list_violation_events(0, math.inf, **kw)["violationEvents"]


def test_events_come_back_oldest_first_with_ties_in_recording_order(
    store: History, run: Run
) -> None:
    listed = _all_events(store)
    assert listed == _in_order(run.events)
    kinds = {e["violationEventType"] for e in listed}
    assert kinds == {"in-alarm", "alarm-cleared", "alarm-invalidated"}
    times = [e["violationEventTime"] for e in listed]
    assert len(set(times)) < len(times), "the series must hold ties to test their order"
    assert listed != run.events, "invalidations must be recorded out of time order"


def test_time_range_includes_start_and_excludes_end(store: History, run: Run) -> None:
    times = sorted({e["violationEventTime"] for e in run.events})
    start, end = times[3], times[-4]
    listed = store.list_violation_events(start, end)["violationEvents"]
    expected = [e for e in _in_order(run.events) if start <= e["violationEventTime"] < end]
    assert listed == expected
    assert listed[0]["violationEventTime"] == start
    assert all(e["violationEventTime"] != end for e in listed)


FILTERS: list[dict[str, Any]] = [
    *({"thing_name": t} for t in THINGS),
    *({"security_profile_name": p} for p in PROFILES),
    *({"behavior_criteria_type": c} for c in ("STATIC", "STATISTICAL", "MACHINE_LEARNING")),
    {"list_suppressed_alerts": True},
    {"list_suppressed_alerts": False},
    {
        "thing_name": "gw-garage",
        "behavior_criteria_type": "STATIC",
        "list_suppressed_alerts": False,
    },
    {"security_profile_name": "edge-strict", "list_suppressed_alerts": True},
]


@pytest.mark.parametrize(
    "filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items())
)
def test_event_filters(store: History, run: Run, filters: dict[str, Any]) -> None:
    expected = [e for e in _in_order(run.events) if _matches(e, **filters)]
    assert 0 < len(expected) < len(run.events)
    assert _all_events(store, **filters) == expected


@pytest.mark.parametrize(
    "filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items())
)
def test_active_violation_filters(store: History, run: Run, filters: dict[str, Any]) -> None:
    everything = sorted(
        run.active.values(), key=lambda a: (a["violationStartTime"], a["violationId"])
    )
    expected = [a for a in everything if _matches(a, **filters)]
    assert 0 < len(expected) < len(everything)
    assert store.list_active_violations(**filters)["activeViolations"] == expected
    assert store.list_active_violations()["activeViolations"] == everything


def _pages(list_page: Any, key: str, size: int) -> list[list[dict[str, Any]]]:
    pages = []
    token = None
    while True:
        answer = list_page(max_results=size, next_token=token)
        pages.append(answer[key])
        token = answer.get("nextToken")
        if token is None:
            return pages
        assert isinstance(token, str)


@pytest.mark.parametrize("size", [1, 3, 7, 250])
def test_event_pages_hold_every_event_once_in_order(store: History, run: Run, size: int) -> None:
    pages = _pages(
        lambda **kw: store.list_violation_events(0, math.inf, **kw), "violationEvents", size
    )
    assert [e for page in pages for e in page] == _in_order(run.events)
    assert all(len(page) == size for page in pages[:-1])
    assert 0 < len(pages[-1]) <= size


def test_exact_multiple_of_page_size_ends_without_token(store: History, run: Run) -> None:
    total = len(run.events)
    answer = store.list_violation_events(0, math.inf, max_results=min(total, 250))
    assert total <= 250
    assert "nextToken" not in answer
    assert len(answer["violationEvents"]) == total


def test_filtered_pages_of_events_and_active(store: History, run: Run) -> None:
    events = _pages(
        lambda **kw: store.list_violation_events(
            0, math.inf, list_suppressed_alerts=False, thing_name="pi-kitchen", **kw
        ),
        "violationEvents",
        2,
    )
    expected = [
        e
        for e in _in_order(run.events)
        if _matches(e, list_suppressed_alerts=False, thing_name="pi-kitchen")
    ]
    assert [e for page in events for e in page] == expected
    active = _pages(store.list_active_violations, "activeViolations", 2)
    assert len(active) > 1
    assert [a for page in active for a in page] == sorted(
        run.active.values(), key=lambda a: (a["violationStartTime"], a["violationId"])
    )


def test_events_recorded_between_pages_are_listed_once(store: History, run: Run) -> None:
    answer = store.list_violation_events(0, math.inf, max_results=5)
    listed = answer["violationEvents"]
    violation = next(iter(run.active.values()))
    extra = _event(violation, "alarm-cleared", {"count": 0}, T0 + run.steps * STEP_S)
    store.record([extra], [a for a in run.active.values() if a is not violation], {"step": -1})
    while "nextToken" in answer:
        answer = store.list_violation_events(
            0, math.inf, max_results=5, next_token=answer["nextToken"]
        )
        listed += answer["violationEvents"]
    assert listed == [*_in_order(run.events), extra]


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda s: s.list_violation_events(0, 1, max_results=0), "maxResults"),
        (lambda s: s.list_violation_events(0, 1, max_results=251), "maxResults"),
        (lambda s: s.list_active_violations(max_results=True), "maxResults"),
        (lambda s: s.list_violation_events(5, 1), "endTime"),
        (lambda s: s.list_violation_events(0, 1, next_token="not-a-token"), "nextToken"),
        (lambda s: s.list_violation_events(0, 1, next_token="W10"), "nextToken"),  # "[]"
        (lambda s: s.list_active_violations(next_token="!!!"), "nextToken"),
        (
            lambda s: s.list_violation_events(0, 1, behavior_criteria_type="FUZZY"),
            "behaviorCriteriaType",
        ),
        (lambda s: s.list_active_violations(verification_state="MAYBE"), "verificationState"),
    ],
)
def test_bad_query_parameters_are_named(store: History, run: Run, call: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        call(store)
    assert caught.value.param == param
    assert str(caught.value).startswith(f"{param}: ")


def test_a_token_only_works_for_its_own_listing(store: History, run: Run) -> None:
    active_token = store.list_active_violations(max_results=1)["nextToken"]
    events_token = store.list_violation_events(0, math.inf, max_results=1)["nextToken"]
    with pytest.raises(InvalidRequest, match="nextToken"):
        store.list_violation_events(0, math.inf, next_token=active_token)
    with pytest.raises(InvalidRequest, match="nextToken"):
        store.list_active_violations(next_token=events_token)


def test_verification_state_applies_to_events_and_active_and_survives_new_records(
    store: History, run: Run
) -> None:
    target = next(iter(run.active.values()))
    vid = target["violationId"]
    store.put_verification_state(vid, "FALSE_POSITIVE", "lab traffic")

    def marked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r["violationId"] == vid]

    for record in marked(_all_events(store)) + marked(
        store.list_active_violations()["activeViolations"]
    ):
        assert record["verificationState"] == "FALSE_POSITIVE"
        assert record["verificationStateDescription"] == "lab traffic"
    others = [e for e in _all_events(store) if e["violationId"] != vid]
    assert all(e["verificationState"] == "UNKNOWN" for e in others)
    assert all("verificationStateDescription" not in e for e in others)

    # The rule core replaces the active set and ends the alarm, knowing nothing of the mark.
    store.record([_event(target, "alarm-cleared", {"count": 0}, T0 + 1e6)], [], {"step": -1})
    ended = marked(store.list_violation_events(T0 + 1e6, math.inf)["violationEvents"])
    assert [e["verificationState"] for e in ended] == ["FALSE_POSITIVE"]

    selected = _all_events(store, verification_state="FALSE_POSITIVE")
    assert selected == marked(_all_events(store))
    assert len(selected) == 2
    assert _all_events(store, verification_state="UNKNOWN") == others

    store.put_verification_state(vid, "TRUE_POSITIVE")
    again = marked(_all_events(store))
    assert {e["verificationState"] for e in again} == {"TRUE_POSITIVE"}
    assert all("verificationStateDescription" not in e for e in again)


def test_a_record_without_verification_state_is_listed_as_unknown(store: History) -> None:
    event = _good_event()
    del event["verificationState"]
    store.record([event], [], {})
    assert _all_events(store, verification_state="UNKNOWN") == [
        {**event, "verificationState": "UNKNOWN"}
    ]


def test_put_verification_state_replaces_a_recorded_description(store: History) -> None:
    event = {**_good_event(), "verificationStateDescription": "imported with the event"}
    store.record([event], [], {})
    assert _all_events(store)[0]["verificationStateDescription"] == "imported with the event"
    store.put_verification_state("v-1", "TRUE_POSITIVE")
    (listed,) = _all_events(store)
    assert listed["verificationState"] == "TRUE_POSITIVE"
    assert "verificationStateDescription" not in listed


def test_verification_state_of_unknown_violation_or_bad_input_changes_nothing(
    store: History, run: Run
) -> None:
    before = (_all_events(store), store.list_active_violations())
    vid = run.events[0]["violationId"]
    with pytest.raises(ViolationNotFound, match="no-such-violation"):
        store.put_verification_state("no-such-violation", "BENIGN_POSITIVE")
    with pytest.raises(InvalidRequest, match="verificationState"):
        store.put_verification_state(vid, "MAYBE")
    with pytest.raises(InvalidRequest, match="verificationStateDescription"):
        store.put_verification_state(vid, "BENIGN_POSITIVE", "x" * 1001)
    with pytest.raises(InvalidRequest, match="verificationStateDescription"):
        store.put_verification_state(vid, "BENIGN_POSITIVE", "two\nlines")
    assert (_all_events(store), store.list_active_violations()) == before


def _good_event() -> dict[str, Any]:
    violation = {
        "violationId": "v-1",
        "thingName": "pi-kitchen",
        "securityProfileName": "edge-baseline",
        "behavior": BEHAVIORS[0][0],
    }
    return _event(violation, "in-alarm", {"count": 9}, T0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("violationId"), "violationId"),
        (lambda e: e.update(thingName=""), "thingName"),
        (lambda e: e.update(behavior={"metric": "x"}), "behavior"),
        (lambda e: e.update(violationEventType="in-alarmed"), "violationEventType"),
        (lambda e: e.update(violationEventTime="2024-01-01"), "violationEventTime"),
        (lambda e: e.update(violationEventTime=math.nan), "violationEventTime"),
        (lambda e: e.update(verificationState="SURE"), "verificationState"),
        (lambda e: e.update(metricValue={"number": math.inf}), "JSON"),
        (lambda e: e.update(metricValue={"ports": {22, 80}}), "JSON"),
    ],
)
def test_bad_records_are_refused_and_nothing_stored_is_lost(
    store: History, run: Run, change: Any, message: str
) -> None:
    before = (_all_events(store), store.list_active_violations(), store.load_alarm_state())
    bad = _good_event()
    change(bad)
    with pytest.raises(StoreError, match=message):
        store.record([_good_event(), bad], [], {"step": "bad"})
    assert (_all_events(store), store.list_active_violations(), store.load_alarm_state()) == before


def test_bad_active_set_is_refused(store: History, run: Run) -> None:
    active = list(run.active.values())
    without_start = {k: v for k, v in active[0].items() if k != "violationStartTime"}
    with pytest.raises(StoreError, match="violationStartTime"):
        store.record([], [without_start], {"step": "bad"})
    with pytest.raises(StoreError, match="twice"):
        store.record([], [active[0], active[0]], {"step": "bad"})
    with pytest.raises(StoreError, match="alarm state"):
        store.record([], [], {"when": T0, "bad": object()})
    assert store.load_alarm_state() == {"step": run.steps - 1}
    assert len(store.list_active_violations()["activeViolations"]) == len(active)


def test_prune_drops_old_events_and_metrics_but_keeps_active(store: History, run: Run) -> None:
    for i in range(10):
        report = {"header": {"report_id": i + 1, "version": "1.0"}, "metrics": {}}
        store.add_metrics(T0 + i * 600, report)
        if i in (2, 9):  # batches 0-2 and 3-9: the second is cut at 5
            store.flush_metrics()
    cut = sorted(e["violationEventTime"] for e in run.events)[len(run.events) // 2]
    now = cut + 30 * 86400
    # A violation that ended before the cut, with a verification state on it.
    ended_before = next(
        e["violationId"]
        for e in run.events
        if e["violationEventType"] != "in-alarm" and e["violationEventTime"] < cut
    )
    store.put_verification_state(ended_before, "BENIGN_POSITIVE")

    store.prune(now, events_max_age_s=30 * 86400, metrics_max_age_s=now - (T0 + 5 * 600))

    kept = [e for e in _in_order(run.events) if e["violationEventTime"] >= cut]
    assert 0 < len(kept) < len(run.events)
    assert _all_events(store) == kept
    assert len(store.list_active_violations()["activeViolations"]) == len(run.active)
    exported = [parse_envelope(env)[0] for env in store.export_metrics(0, math.inf)]
    assert exported == [T0 + i * 600 for i in range(5, 10)]
    # The mark went with the violation's events: the id is unknown now.
    with pytest.raises(ViolationNotFound):
        store.put_verification_state(ended_before, "TRUE_POSITIVE")


def test_export_metrics_round_trips_through_parse_envelope(store: History) -> None:
    reports = [
        (
            T0 + 0.25,
            {"hed": {"rid": 1, "v": "1.0"}, "met": {"ns": {"bi": 1, "bo": 2, "pi": 3, "po": 4}}},
        ),
        (
            T0 + 300,
            {
                "header": {"report_id": 2, "version": "1.0"},
                "metrics": {
                    "listening_tcp_ports": {
                        "ports": [{"interface": "eth0", "port": 22}],
                        "total": 1,
                    }
                },
                "custom_metrics": {
                    "cpu_usage": [{"number": 26}],
                    "ssids": [{"string_list": ["home"]}],
                },
            },
        ),
        (
            T0 + 600,
            {
                "header": {"report_id": 3, "version": "1.0"},
                "custom_metrics": {"t": [{"number": 1.5}]},
            },
        ),
    ]
    for ts, report in reports:
        store.add_metrics(ts, report)
    store.flush_metrics()
    exported = [
        parse_envelope(json.loads(json.dumps(env))) for env in store.export_metrics(0, math.inf)
    ]
    assert exported == [(ts, to_long_names(r)) for ts, r in reports]
    window = [parse_envelope(env)[0] for env in store.export_metrics(T0 + 0.25, T0 + 600)]
    assert window == [T0 + 0.25, T0 + 300]


@pytest.mark.parametrize(
    ("timestamp", "report", "message"),
    [
        (T0, {"metrics": {}}, "header"),
        ("yesterday", {"header": {"report_id": 1}}, "timestamp"),
        (T0, {"hed": {"rid": 1}, "header": {"report_id": 1}}, "mixes"),
    ],
)
def test_bad_metrics_report_is_refused(
    store: History, timestamp: Any, report: Any, message: str
) -> None:
    store.add_metrics(T0, {"header": {"report_id": 1, "version": "1.0"}})
    with pytest.raises(ReportError, match=message):
        store.add_metrics(timestamp, report)
    store.flush_metrics()
    assert len(list(store.export_metrics(0, math.inf))) == 1


def test_counters_and_alarm_state_persist_across_reopen(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    with open_history(path) as h:
        assert h.load_counters() is None
        assert h.load_alarm_state() is None
        h.save_counters({"eth0": {"bytes_in": 2**40, "wraps": 3}})
        h.save_counters({"eth0": {"bytes_in": 2**40 + 5, "wraps": 3}})
        h.record([], [], {"profiles": {"edge-baseline": {"tcp-ports": [1, 0]}}})
    with open_history(path) as h:
        assert h.load_counters() == {"eth0": {"bytes_in": 2**40 + 5, "wraps": 3}}
        assert h.load_alarm_state() == {"profiles": {"edge-baseline": {"tcp-ports": [1, 0]}}}
    with open_history(path) as h, pytest.raises(StoreError, match="network counters"):
        h.save_counters({"eth0": math.nan})


def test_migrations_apply_once_and_reopen_keeps_data(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    with open_history(path) as h:
        first = simulate(h, steps=10)
    for _ in range(2):
        with open_history(path) as h:
            assert _all_events(h) == _in_order(first.events)
            assert h.load_alarm_state() == {"step": 9}
    conn = open_db(path, MIGRATIONS)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_missing_store_is_reported_and_not_created(tmp_path: Path) -> None:
    path = history_path(tmp_path / "state")
    with pytest.raises(StoreNotFound, match=str(path)):
        open_history(path, create=False)
    assert not path.exists()


def test_events_recorded_for_publishing_wait_until_marked(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    with open_history(path) as store:
        behavior = {"name": "b", "metric": "aws:num-listening-tcp-ports"}
        violation = {
            "violationId": str(uuid.uuid4()),
            "thingName": "t",
            "securityProfileName": "p",
            "behavior": behavior,
        }
        first = _event(violation, "in-alarm", {"count": 9}, T0)
        second = _event(violation, "alarm-cleared", {"count": 1}, T0 + 10)
        store.record([first], [], {"v": 1}, publish=True)
        store.record([second], [], {"v": 2})  # local only: never listed
    # A crash here: the next start finds what was not handed to the spool.
    with open_history(path) as store:
        pending = store.unpublished_events()
        assert [doc["violationEventType"] for _, doc in pending] == ["in-alarm"]
        assert pending[0][1]["metricValue"] == {"count": 9}
        store.mark_published([event_id for event_id, _ in pending])
        assert store.unpublished_events() == []
        store.record([first], [], {"v": 3}, publish=True)
        store.prune(T0 + 10 * 86400, events_max_age_s=86400, metrics_max_age_s=86400)
        assert store.unpublished_events() == []  # pruned events go with their mark


def test_an_unsendable_event_is_quarantined_kept_and_never_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent.db"
    good, bad = _good_event(), {**_good_event(), "violationId": "v-2"}
    with open_history(path) as store:
        store.record([bad, good], [], {}, publish=True)
        (bad_id, _), (good_id, _) = store.unpublished_events()
        with caplog.at_level(logging.ERROR):
            assert store.quarantine_event(bad_id, "cannot encode: surrogates not allowed", T0)
        assert not store.quarantine_event(bad_id, "again")  # no longer waiting
        assert not store.quarantine_event(good_id + 100, "unknown")
        assert 'event_quarantined id=1 reason="cannot encode: surrogates not allowed"' in (
            caplog.text
        )
    # A restart does not offer it again; it is still stored, listed and counted.
    with open_history(path) as store:
        assert [event_id for event_id, _ in store.unpublished_events()] == [good_id]
        assert store.quarantined() == 1
        assert store.quarantined_events() == [
            (
                bad_id,
                "cannot encode: surrogates not allowed",
                {**bad, "verificationState": "UNKNOWN"},
            )
        ]
        assert [e["violationId"] for e in _all_events(store)] == ["v-2", "v-1"]
        # Retention takes it with its event.
        store.prune(T0 + 10 * 86400, events_max_age_s=86400, metrics_max_age_s=86400)
        assert store.quarantined() == 0


def test_a_store_from_before_the_quarantine_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    open_db(path, MIGRATIONS[:2]).close()
    with open_history(path) as store:
        store.record([_good_event()], [], {}, publish=True)
        assert store.quarantined() == 0
        assert len(store.unpublished_events()) == 1

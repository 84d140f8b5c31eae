"""The rig's ML scenarios: the synthetic export (hw/ml_rig.py) trains, through the
agent's own training code, an ACTIVE model whose quiet hours are now and whose busy hours
are twelve hours away, or one of a custom metric's constant level that one more alarms
at; the DUT trains the agent with its own `train --from` before it starts; a scenario's
[ml_training] table is checked by name; ml-night-upload, ml-slow-ramp (its lead from the
model's limits) and ml-beacon hold together; the exfil actor's ramp and the beacon
actor's jittered check-ins, measured at a socket; the report describes an ML behavior
(no threshold to draw)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.core.periodic import INTERVALS
from agent.service.trainer import stored_records, train
from hw.dut import AgentSetup, prepare_ml
from hw.lab import Node
from hw.machine import REPO
from hw.ml_rig import BUSY_FACTOR, synthetic_export
from hw.report import _describe
from hw.scenario import EXAMPLE_ADDRESSES, Action, ScenarioError, load_scenario, load_scenarios
from hw.scoring import behaviors
from hw.traffic import start_actions, stop_actions

SHIPPED = Path(__file__).resolve().parents[2] / "hw" / "scenarios"
TRAINING = {"metric": "aws:all-bytes-out", "per_s": 52000.0, "window_s": 30.0}
LEVEL = {"metric": "num_scan_sources", "value": 1.0, "window_s": 30.0}
HOUR = 3600.0


def test_the_export_trains_a_model_quiet_now_and_busy_twelve_hours_away() -> None:
    now = time.time()
    lines = synthetic_export(TRAINING, now).splitlines()
    assert len(lines) == 41760  # 14.5 days at 30 s
    envelopes = [json.loads(line) for line in lines]
    assert envelopes[-1]["timestamp"] < now
    (done,) = train(envelopes, ["aws:all-bytes-out"], 0.0, now, 0, windows={TRAINING["metric"]: 30})
    assert done.model is not None and done.model.window_s == 30.0
    assert done.datapoints == len(lines) - 1  # the first sample only starts the window
    quiet = 52000 * 30
    here = done.model.explain(now + 60, quiet)
    assert here["expected"] == pytest.approx(quiet, rel=0.03)
    # a doubling alarms at HIGH before the window is full of it; the quiet level at none
    assert 1.1 * quiet < here["limit_LOW"] < here["limit_HIGH"] < 1.6 * quiet
    busy = done.model.explain(now + 12 * HOUR, quiet)
    assert busy["expected"] == pytest.approx(BUSY_FACTOR * quiet, rel=0.05)
    assert not done.model.anomalous(now + 12 * HOUR, 2 * quiet, "LOW")  # a busy hour's norm


@pytest.mark.parametrize("level", [0, 1, 3])
def test_a_level_export_trains_a_model_that_one_more_alarms(level: int) -> None:
    now = time.time()
    training = {**LEVEL, "value": float(level)}
    envelopes = [json.loads(line) for line in synthetic_export(training, now).splitlines()]
    assert len(envelopes) == 41760
    assert {json.dumps(e["report"]["custom_metrics"]) for e in envelopes} == {
        json.dumps({"num_scan_sources": [{"number": float(level)}]})
    }
    (done,) = train(envelopes, ["num_scan_sources"], 0.0, now, 0, windows={"num_scan_sources": 30})
    assert done.model is not None and done.model.window_s == 30.0
    for hours in (0, 6, 12, 18):  # the same at every hour
        t = now + hours * HOUR
        assert done.model.explain(t, level)["expected"] == pytest.approx(level)
        assert not done.model.anomalous(t, level, "LOW")
        assert done.model.anomalous(t, level + 1, "HIGH")


@pytest.mark.parametrize(
    ("training", "file"),
    [(TRAINING, "ml-aws-all-bytes-out.jsonl"), (LEVEL, "ml-num_scan_sources.jsonl")],
)
def test_the_dut_trains_the_agent_with_its_own_verb(
    tmp_path: Path, training: dict[str, Any], file: str
) -> None:
    """prepare_ml on a node that runs commands here: the export written, `train --from`
    run, models.db holding an ACTIVE model of the window asked for."""
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(f'thing_name = "rig-dut"\nstate_dir = "{state}"\n')
    config.chmod(0o600)
    node = Node("host", "127.0.0.1", ())
    program = ("env", f"PYTHONPATH={REPO}", sys.executable, "-m", "agent")
    written: list[str] = []

    def put(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        written.append(name)
        return str(tmp_path / name)

    setup = AgentSetup(profiles=[], interval_s=1.0, ml_training=[training])
    prepare_ml(node, program, str(config), setup, put, time.time())
    assert written == [file]
    record = stored_records(state)[training["metric"]]
    assert record.model is not None and record.model["windowS"] == 30.0
    assert record.source == str(tmp_path / written[0])

    refused = tmp_path / "refused.toml"  # a config the agent refuses: train fails
    refused.write_text(config.read_text() + "no_such_key = 1\n")
    refused.chmod(0o600)
    with pytest.raises(RuntimeError, match=f"did not train a model of {training['metric']}"):
        prepare_ml(node, program, str(refused), setup, put, time.time())


SCENARIO = """\
description = "An upload doubled."
interval_s = 1
warmup_s = 40
deadline_s = 60

[[profiles]]
securityProfileName = "p"

[[profiles.behaviors]]
name = "ml"
metric = "aws:all-bytes-out"
criteria = {{ mlDetectionConfig = {{ confidenceLevel = "HIGH" }} }}

[[attack]]
node = "dut"
kind = "exfil"
host = "{{attacker}}"
port = 8445
size = 1000

[[expected]]
profile = "p"
behavior = "ml"

{table}
"""


def scenario(tmp_path: Path, table: str) -> Any:
    path = tmp_path / "ml.toml"
    path.write_text(SCENARIO.format(table=table))
    return load_scenario(path, EXAMPLE_ADDRESSES, quick=False)


def test_an_ml_training_table_is_loaded(tmp_path: Path) -> None:
    s = scenario(
        tmp_path, '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1000\nwindow_s = 60'
    )
    assert s.ml_training == {"metric": "aws:all-bytes-out", "per_s": 1000.0, "window_s": 60.0}
    assert scenario(tmp_path, "").ml_training is None


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1', "ml_training: must be a table"),
        (
            '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1\nwindow_s = 30\nseed = 2',
            "with exactly metric, per_s, window_s",
        ),
        (
            '[ml_training]\nmetric = "level"\nper_s = 1\nwindow_s = 30',
            "ml_training.metric: with per_s, must be one of aws:all-bytes-in",
        ),
        (
            '[ml_training]\nmetric = "aws:all-bytes-out"\nvalue = 1\nwindow_s = 30',
            "ml_training.metric: with value, must be a custom number metric this scenario"
            " makes .*: none; got 'aws:all-bytes-out'",
        ),
        (
            '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1\nvalue = 1\nwindow_s = 30',
            "or metric, value, window_s",
        ),
        (
            '[ml_training]\nmetric = "aws:all-bytes-in"\nper_s = 1\nwindow_s = 30',
            "ml_training.metric: no ML behavior of the profiles judges aws:all-bytes-in",
        ),
        (
            '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 0\nwindow_s = 30',
            "ml_training.per_s: must be a number > 0",
        ),
        (
            '[ml_training]\nmetric = "aws:all-bytes-out"\nper_s = 1\nwindow_s = 0',
            "ml_training.window_s: ML window 0 is not a number of seconds",
        ),
    ],
)
def test_a_bad_ml_training_table_is_named(tmp_path: Path, table: str, said: str) -> None:
    with pytest.raises(ScenarioError, match=said):
        scenario(tmp_path, table)


LEVEL_SCENARIO = """\
description = "One more periodic destination."
interval_s = 1
warmup_s = 20
deadline_s = 30
{capture}
[[custom_metrics]]
name = "workers"
type = "number"
source = "command"
command = ["echo", "1"]

[[profiles]]
securityProfileName = "p"

[[profiles.behaviors]]
name = "ml"
metric = "{metric}"
criteria = {{ mlDetectionConfig = {{ confidenceLevel = "HIGH" }} }}

[[attack]]
node = "dut"
kind = "beacon"
host = "{{c2}}"
port = 443

[[expected]]
profile = "p"
behavior = "ml"

[ml_training]
metric = "{metric}"
value = {value}
window_s = 10
"""
CAPTURE = "\n[capture]\nenabled = true\n"


def level_scenario(tmp_path: Path, metric: str, value: str, capture: str = CAPTURE) -> Any:
    path = tmp_path / "level.toml"
    path.write_text(LEVEL_SCENARIO.format(metric=metric, value=value, capture=capture))
    return load_scenario(path, EXAMPLE_ADDRESSES, quick=False)


@pytest.mark.parametrize(("metric", "value"), [("num_scan_sources", 0), ("workers", 3)])
def test_a_level_training_of_a_custom_number_metric_is_loaded(
    tmp_path: Path, metric: str, value: int
) -> None:
    """A capture feature's number or a [[custom_metrics]] number, at its level."""
    s = level_scenario(tmp_path, metric, str(value))
    assert s.ml_training == {"metric": metric, "value": float(value), "window_s": 10.0}


METRIC_REFUSED = (
    "ml_training.metric: with value, must be a custom number metric this scenario makes"
)


@pytest.mark.parametrize(
    ("metric", "value", "capture", "said"),
    [
        # a count of connections opened is summed over the window: not a level
        (
            "num_connections_opened",
            "1",
            CAPTURE,
            f"{METRIC_REFUSED} .*got 'num_connections_opened'",
        ),
        ("dns_names", "1", CAPTURE, f"{METRIC_REFUSED} .*got 'dns_names'"),  # a string list
        ("num_scan_sources", "1", "", f"{METRIC_REFUSED} .*: workers; got 'num_scan_sources'"),
        ("num_scan_sources", "-1", CAPTURE, "ml_training.value: must be a number >= 0, got -1"),
        ("num_scan_sources", "true", CAPTURE, "ml_training.value: must be a number >= 0, got True"),
        ("num_scan_sources", "nan", CAPTURE, "ml_training.value: must be a number >= 0, got nan"),
    ],
)
def test_a_bad_level_training_is_named(
    tmp_path: Path, metric: str, value: str, capture: str, said: str
) -> None:
    with pytest.raises(ScenarioError, match=f"level.toml: {said}"):
        level_scenario(tmp_path, metric, value, capture)


def test_ml_night_upload_holds_together() -> None:
    (s,) = load_scenarios(SHIPPED, ["ml-night-upload"], EXAMPLE_ADDRESSES, quick=True)
    assert s.ml_training is not None
    window = s.ml_training["window_s"]
    # the model's window is full, and judged quiet for a while, before the attack
    assert s.warmup_s >= window + 5
    # the doubled upload fills the window in window_s: the latency goal counts from then
    assert s.lead_s == window
    assert [e.behavior for e in s.expected] == [
        "bytes-out-ml-low",
        "bytes-out-ml-medium",
        "bytes-out-ml-high",
    ]
    (steady,) = [a for a in s.setup if a.kind == "exfil"]
    (doubled,) = [a for a in s.attack if a.kind == "exfil"]
    assert steady.params["rate_bps"] == doubled.params["rate_bps"]  # the upload doubled
    # the quiet hours' rate the model learns: the steady upload and its headers
    assert 1.0 < s.ml_training["per_s"] / steady.params["rate_bps"] < 1.1


def test_the_report_describes_an_ml_behavior_without_a_threshold() -> None:
    profile = {
        "securityProfileName": "rig-ml",
        "behaviors": [
            {
                "name": "ml",
                "metric": "aws:all-bytes-out",
                "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
            }
        ],
    }
    (behavior,) = behaviors([profile]).values()
    assert _describe(behavior) == (
        "ML detection at HIGH (over its model's window)",
        "aws:all-bytes-out",
        None,
    )


def ramp_crossings_s(scenario: Any, now: float) -> dict[str, float]:
    """Per level, when the ramp's bytes in the model's window (on the wire: the steady
    upload's headers ratio) first pass what the model trained on the scenario's table
    calls anomalous at that level, over the quiet hours' sum."""
    training = scenario.ml_training
    window = training["window_s"]
    (steady,) = [a for a in scenario.setup if a.kind == "exfil"]
    (creep,) = [a for a in scenario.attack if a.kind == "exfil"]
    wire = training["per_s"] / steady.params["rate_bps"]
    rate, ramp = creep.params["rate_bps"] * wire, creep.params["ramp_s"]
    envelopes = [json.loads(line) for line in synthetic_export(training, now).splitlines()]
    (done,) = train(
        envelopes, [training["metric"]], 0.0, now, 0, windows={training["metric"]: window}
    )
    assert done.model is not None
    quiet = training["per_s"] * window
    limits = done.model.explain(now + scenario.warmup_s, quiet)

    def sent(t: float) -> float:  # by t after the start, t within the ramp
        return rate * max(0.0, t) ** 2 / (2 * ramp)

    crossings = {}
    for level in ("LOW", "MEDIUM", "HIGH"):
        t = 0.0
        while t < ramp and quiet + sent(t) - sent(t - window) <= limits[f"limit_{level}"]:
            t += 0.01
        assert t < ramp  # crossed on the ramp, where sent() holds
        crossings[level] = t
    return crossings


def test_ml_slow_ramp_holds_together_and_its_lead_is_the_models() -> None:
    ramp, night = load_scenarios(
        SHIPPED, ["ml-slow-ramp", "ml-night-upload"], EXAMPLE_ADDRESSES, quick=True
    )
    # the benign load trains one table per metric: the same device, the same model
    assert ramp.ml_training == night.ml_training
    assert [a for a in ramp.setup if a.kind == "exfil"] == [
        a for a in night.setup if a.kind == "exfil"
    ]
    assert [e.behavior for e in ramp.expected] == [e.behavior for e in night.expected]
    (creep,) = [a for a in ramp.attack if a.kind == "exfil"]
    assert creep.params["ramp_s"] >= 60  # a creep, not a step: from 0 to its rate
    crossings = ramp_crossings_s(ramp, time.time())
    assert crossings["LOW"] < crossings["MEDIUM"] < crossings["HIGH"]
    # the model's window is full (with a margin) before its lowest level can alarm
    assert ramp.ml_training is not None
    assert ramp.warmup_s + crossings["LOW"] >= ramp.ml_training["window_s"] + 5
    # the scenario's latency is its last level's: the lead is when HIGH can first alarm
    assert crossings["HIGH"] <= ramp.lead_s <= crossings["HIGH"] + 1.5
    assert ramp.deadline_s >= ramp.lead_s + ramp.interval_s + 1 + 10


class Listener:
    """A TCP server on loopback that records each connection's accept time, and each
    received chunk's time and size, until its peer closes."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[float] = []
        self.received: list[list[tuple[float, int]]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            self.accepted.append(time.monotonic())
            chunks: list[tuple[float, int]] = []
            self.received.append(chunks)
            threading.Thread(target=self._read, args=(conn, chunks), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, chunks: list[tuple[float, int]]) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                chunks.append((time.monotonic(), len(data)))

    def close(self) -> None:
        self.server.close()


def run_actor(kind: str, params: dict[str, Any], seconds: float) -> None:
    node = Node("host", "127.0.0.1", ())
    running = start_actions([Action("host", kind, params)], {"host": node}, tls=None, broker="")
    try:
        time.sleep(seconds)
    finally:
        stop_actions(running)
    assert running.errors() == []


def test_the_exfil_ramp_grows_its_rate_linearly() -> None:
    """From 0 to 100 kB/s over 2 s: a quarter of the ramp's bytes in its first second
    (a steady sender would send half), all 150 kB by 2 s + 50 kB / 100 kB/s."""
    listener = Listener()
    try:
        params = {"host": "127.0.0.1", "port": listener.port, "size": 150_000}
        run_actor("exfil", {**params, "rate_bps": 100_000, "ramp_s": 2.0, "chunk": 1000}, 3.5)
    finally:
        listener.close()
    (t0,) = listener.accepted
    (chunks,) = listener.received

    def by(t: float) -> int:
        return sum(n for at, n in chunks if at - t0 <= t)

    assert 15_000 <= by(1.0) <= 35_000  # 100 kB/s * 1 s^2 / (2 * 2 s) = 25 kB
    assert 85_000 <= by(2.0) <= 115_000  # the ramp's 100 kB
    assert by(1.0) / by(2.0) < 0.35
    assert sum(n for _, n in chunks) == 150_000
    assert 2.3 <= chunks[-1][0] - t0 <= 3.0


def test_the_beacon_checks_in_with_a_jittered_interval() -> None:
    listener = Listener()
    try:
        params = {"host": "127.0.0.1", "port": listener.port, "size": 50}
        run_actor("beacon", {**params, "every_s": 0.3, "jitter": 0.2}, 4.0)
    finally:
        listener.close()
    gaps = [b - a for a, b in zip(listener.accepted, listener.accepted[1:], strict=False)]
    assert len(gaps) >= 9
    assert all(0.3 * 0.8 - 0.05 <= g <= 0.3 * 1.2 + 0.05 for g in gaps)
    assert max(gaps) - min(gaps) > 0.03  # jittered, not on a grid
    # a new connection each time, a small payload, closed by the beacon (the last one may
    # have been cut by the stop)
    assert all(sum(n for _, n in chunks) == 50 for chunks in listener.received[:-1])


def test_ml_beacon_holds_together() -> None:
    beacon, benign = load_scenarios(SHIPPED, ["ml-beacon", "benign"], EXAMPLE_ADDRESSES, quick=True)
    assert beacon.capture is not None and beacon.capture["connections"]["enabled"]
    training = beacon.ml_training
    assert training is not None and training["metric"] == "num_periodic_destinations"
    # The trained level is what the benign load's device makes (the benign load judges
    # this model too): of its own clients, only the HTTP poll opens a new TCP connection
    # each round (MQTT telemetry holds one; DNS and NTP are UDP). The scenario runs the
    # same poll, so its level before the attack is the same.
    pollers = [a for a in benign.setup if a.node == "dut" and a.kind == "http"]
    assert training["value"] == len(pollers) == 1
    assert pollers[0] in beacon.setup
    (check_in,) = beacon.attack
    assert check_in.kind == "beacon" and check_in.params["host"] == EXAMPLE_ADDRESSES["c2"]
    jitter = check_in.params["jitter"]
    assert 0 < jitter <= 0.2  # periodic.py: ±20% passes every time
    # the window is full at the attack, and the poller periodic (INTERVALS + 1 contacts)
    # well before the beacon can be
    assert beacon.warmup_s >= training["window_s"]
    soonest = beacon.warmup_s + INTERVALS * check_in.params["every_s"] * (1 - jitter)
    assert INTERVALS * pollers[0].params["every_s"] + 5 <= soonest
    # the lead: its 9th contact, after INTERVALS of the longest jittered interval
    assert beacon.lead_s == pytest.approx(INTERVALS * check_in.params["every_s"] * (1 + jitter))
    assert beacon.deadline_s >= beacon.lead_s + beacon.interval_s + 1 + 5
    assert [e.behavior for e in beacon.expected] == [
        "periodic-ml-low",
        "periodic-ml-medium",
        "periodic-ml-high",
    ]

"""hw/report.py: report.json against its documented schema, report.html with a plot per
scenario and the summary table, and the panels the plots are drawn from. The events
come from the agent's own evaluator fed the metrics history the report plots."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.core.evaluator import Detector
from agent.core.metrics import metrics_from_report
from agent.core.profile import parse_profile
from agent.core.report import make_envelope, parse_envelope
from hw.report import panels, report_document, write_report
from hw.scoring import ScenarioResult, score

BASE = 1_800_000_000.0  # a multiple of 30: windows of 30 s start here
ATTACK = BASE + 12.3
EXFIL = {
    "securityProfileName": "exfil",
    "behaviors": [
        {
            "name": "bytes-out",
            "metric": "aws:all-bytes-out",
            "criteria": {
                "comparisonOperator": "less-than",
                "value": {"count": 100_000},
                "durationSeconds": 30,
            },
        },
        {
            "name": "packets-out",
            "metric": "aws:all-packets-out",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 50}},
        },
    ],
}
LISTENER = {
    "securityProfileName": "listener",
    "behaviors": [
        {
            "name": "tcp-ports",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
        }
    ],
}


def envelope(t: float, *, bytes_out: int, packets_out: int, ports: list[int]) -> dict[str, Any]:
    report = {
        "header": {"report_id": int(t * 1000), "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"port": p} for p in ports], "total": len(ports)},
            "network_stats": {
                "bytes_in": 100,
                "bytes_out": bytes_out,
                "packets_in": 1,
                "packets_out": packets_out,
            },
        },
    }
    return make_envelope(t, report)


def agent_run(
    profiles: list[dict[str, Any]], attack: bool, seconds: int = 61
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(events, metrics history) of the agent's evaluator over 1 s samples; from ATTACK
    on (when `attack`) a burst goes out and a backdoor listens on 4444."""
    detector = Detector([parse_profile(p) for p in profiles], "rig-dut")
    events: list[dict[str, Any]] = []
    history = []
    for i in range(seconds):
        t = BASE + i
        on = attack and ATTACK < t < ATTACK + 20
        env = envelope(
            t,
            bytes_out=1000 + (60_000 if on else 0),
            packets_out=60 if on and i == 14 else 10,
            ports=[22, 4444] if on else [22],
        )
        history.append(env)
        metrics = metrics_from_report(parse_envelope(env)[1])
        events += [e.to_json() for e in detector.observe(t, metrics)]
    return events, history


def results() -> list[ScenarioResult]:
    exfil_events, exfil_history = agent_run([EXFIL], attack=True)
    listen_events, _ = agent_run([LISTENER], attack=True)
    benign_events, benign_history = agent_run([EXFIL, LISTENER], attack=False)
    benign_events.append(  # one false alarm, cleared
        {
            "violationId": "fa",
            "thingName": "rig-dut",
            "securityProfileName": "listener",
            "behavior": {"name": "tcp-ports"},
            "metricValue": {"ports": [22, 8080]},
            "violationEventType": "in-alarm",
            "verificationState": "UNKNOWN",
            "violationEventTime": BASE + 20,
        }
    )
    benign_events.append(dict(benign_events[-1], violationEventType="alarm-cleared"))
    benign_events[-1]["violationEventTime"] = BASE + 23
    common = {"interval_s": 1.0, "deadline_s": 30.0, "end": BASE + 60}
    return [
        score(
            name="exfil",
            expected=[("exfil", "bytes-out")],
            profiles=[EXFIL],
            benign=False,
            attack_start=ATTACK,
            events=exfil_events,
            metrics=exfil_history,
            **common,  # type: ignore[arg-type]
        ),
        score(  # no metrics history: the plot is still drawn
            name="listen",
            expected=[("listener", "tcp-ports")],
            profiles=[LISTENER],
            benign=False,
            attack_start=ATTACK,
            events=listen_events,
            metrics=[],
            **common,  # type: ignore[arg-type]
        ),
        score(
            name="benign",
            expected=[],
            profiles=[EXFIL, LISTENER],
            benign=True,
            attack_start=None,
            events=benign_events,
            metrics=benign_history,
            **common,  # type: ignore[arg-type]
        ),
    ]


# report.json as hw/README.md documents it: key -> type (a tuple: one of), [type]: a
# list of it, a dict: an object with exactly those keys (meta keys are open; keys
# marked Optional may be left out).
NUMBER = (int, float)


@dataclass(frozen=True)
class Optional:
    schema: Any


SCENARIO = {
    "name": str,
    "expected": [{"profile": str, "behavior": str, "thing": Optional(str)}],
    "detected": bool,
    "latency_s": (float, type(None)),
    "events": [dict],
    "latencies_s": [(float, type(None))],
    "goal_s": (float, type(None)),
    "lead_s": float,
    "met": bool,
    "false_alarms": int,
    "benign": bool,
    "attack_start": (float, type(None)),
    "end": NUMBER,
    "clock_offset_s": NUMBER,
    "samples": int,
    "block": Optional(
        {
            "block_s": (float, type(None)),
            "goal_s": float,
            "blocked_at": (float, type(None)),
            "attempts": [{"t": float, "connected": bool}],
        }
    ),
}
EVENT_KEYS = {
    "violationId",
    "thingName",
    "securityProfileName",
    "behavior",
    "metricValue",
    "violationEventType",
    "verificationState",
    "violationEventTime",
}


def check(value: Any, schema: Any, where: str) -> None:
    if isinstance(schema, dict):
        assert isinstance(value, dict), where
        required = {k for k, sub in schema.items() if not isinstance(sub, Optional)}
        assert required <= set(value) <= set(schema), f"{where}: keys {sorted(value)}"
        for key in value:
            sub = schema[key]
            check(value[key], sub.schema if isinstance(sub, Optional) else sub, f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        assert type(value) in types, f"{where}: {value!r} is not {types}"


def test_report_json_follows_the_schema(tmp_path: Path) -> None:
    meta = {"dut": "netns", "quick": True, "started": BASE, "took_s": 75.0}
    write_report(tmp_path / "out", results(), benign_s=60.0, meta=meta)
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    check(doc["scenarios"], [SCENARIO], "scenarios")
    assert type(doc["false_alarms"]) is int and type(doc["benign_s"]) is float
    for s in doc["scenarios"]:
        for e in s["events"]:
            assert set(e) == EVENT_KEYS and type(e["violationEventTime"]) is float
    assert {k: doc[k] for k in meta} == meta
    by_name = {s["name"]: s for s in doc["scenarios"]}
    exfil = by_name["exfil"]
    assert exfil["detected"] and exfil["met"]
    assert exfil["latency_s"] == pytest.approx(BASE + 30 - ATTACK)  # the window's end
    assert exfil["false_alarms"] == 1  # the burst's packets-out
    assert by_name["listen"]["detected"] and by_name["listen"]["samples"] == 0
    assert by_name["benign"]["latency_s"] is None and not by_name["benign"]["met"]
    assert doc["false_alarms"] == 1  # the benign scenario's


AUTH = {
    "securityProfileName": "auth",
    "behaviors": [
        {
            "name": "few-failures",
            "metric": "aws:num-authorization-failures",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}},
        }
    ],
}


def alarm(thing: str, t: float) -> dict[str, Any]:
    return {
        "violationId": f"a-{thing}",
        "thingName": thing,
        "securityProfileName": "auth",
        "behavior": {"name": "few-failures"},
        "metricValue": {"count": 10},
        "violationEventType": "in-alarm",
        "verificationState": "UNKNOWN",
        "violationEventTime": t,
    }


BOTH_AND_ANOTHER = [
    alarm("sensor2", ATTACK + 1.0),
    alarm("intruder", ATTACK + 2.0),
    alarm("sensor1", ATTACK + 1.5),
]


def per_client(events: list[dict[str, Any]]) -> ScenarioResult:
    """Two clients expected to alarm; a lead of 0.2 s."""
    return score(
        name="storm",
        expected=[("auth", "few-failures", "sensor2"), ("auth", "few-failures", "intruder")],
        profiles=[AUTH],
        interval_s=1.0,
        deadline_s=2.2,
        benign=False,
        attack_start=ATTACK,
        end=ATTACK + 5,
        events=events,
        metrics=[],
        lead_s=0.2,
    )


def test_the_report_shows_the_things_and_the_lead(tmp_path: Path) -> None:
    r = per_client(BOTH_AND_ANOTHER)
    write_report(tmp_path, [r], benign_s=0.0, meta={})
    (doc,) = json.loads((tmp_path / "report.json").read_text())["scenarios"]
    check(doc, SCENARIO, "storm")
    assert [e["thing"] for e in doc["expected"]] == ["sensor2", "intruder"]
    assert doc["lead_s"] == 0.2 and doc["goal_s"] == pytest.approx(2.2)
    assert doc["met"] and doc["false_alarms"] == 1  # sensor1's
    page = (tmp_path / "report.html").read_text()
    row = "auth/few-failures for sensor2, auth/few-failures for intruder"
    assert f"<td>{row}</td>" in page and "<td>2.2 (lead 0.2)</td>" in page
    assert "<td>sensor1</td>" in page  # the events table names each event's thing
    (panel,), _, _ = panels(r)
    assert panel.title.startswith("auth/few-failures for sensor2, intruder:")
    assert panel.expected and panel.detection == pytest.approx(2.0)  # the later client
    assert panel.false_alarms == [pytest.approx(1.5)]  # sensor1's alarm only
    missed = per_client(BOTH_AND_ANOTHER[:1])
    assert panels(missed)[0][0].detection is None  # one client missed: not detected


def test_meta_cannot_replace_the_reports_keys() -> None:
    with pytest.raises(ValueError, match="false_alarms"):
        report_document(results(), benign_s=1.0, meta={"false_alarms": 0})


def test_report_html_has_the_table_and_one_plot_per_scenario(tmp_path: Path) -> None:
    rs = results()
    write_report(tmp_path, rs, benign_s=60.0, meta={"dut": "netns"})
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(rs) == page.count("<img ")
    for png in images:
        assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<th>scenario</th>" in page and "<th>false alarms</th>" in page
    for r in rs:
        assert f"<td>{r.name}</td>" in page
    assert "False alarms over 60 s of benign load: 1" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained


def test_panels_show_what_the_agent_judged() -> None:
    exfil, listen, benign = results()
    found, origin, bad = panels(exfil)
    assert origin == ATTACK and bad == 0
    by_title = {p.title.split(":")[0]: p for p in found}
    window = by_title["exfil/bytes-out"]
    assert window.expected and window.window_s == 30 and window.threshold == 100_000
    # 30 s windows, each datapoint at its end; the open last window is left out
    assert [round(t + ATTACK - BASE) for t, _ in window.points] == [30, 60]
    assert window.points[0][1] == 30 * 1000 + 17 * 60_000  # samples 13..29 carry the burst
    assert window.detection == pytest.approx(BASE + 30 - ATTACK)
    assert window.spans and window.spans[0][0] == pytest.approx(BASE + 30 - ATTACK)
    packets = by_title["exfil/packets-out"]  # alarmed though not expected: a false alarm
    assert not packets.expected and packets.false_alarms
    ports, _, _ = panels(listen)
    assert ports[0].points == [] and ports[0].detection is not None
    found, origin, _ = panels(benign)
    assert origin == BASE  # the first sample
    assert len(found) == 3  # every judged behavior
    tcp = next(p for p in found if p.title.startswith("listener/tcp-ports"))
    assert tcp.spans == [(20.0, 23.0)] and tcp.false_alarms == [20.0]
    assert {v for _, v in tcp.points} == {0.0}  # only port 22: nothing breaks in-port-set


def test_an_alarm_of_a_behavior_missing_from_the_profiles_is_drawn_from_its_event() -> None:
    behavior = LISTENER["behaviors"][0]  # type: ignore[index]
    alarm = {
        "violationId": "x",
        "thingName": "rig-dut",
        "securityProfileName": "listener",
        "behavior": behavior,
        "metricValue": {"ports": [22, 4444]},
        "violationEventType": "in-alarm",
        "verificationState": "UNKNOWN",
        "violationEventTime": BASE + 5,
    }
    r = score(
        name="benign",
        expected=[],
        profiles=[],
        interval_s=1.0,
        deadline_s=30.0,
        benign=True,
        attack_start=None,
        end=BASE + 30,
        events=[alarm],
        metrics=[],
    )
    (panel,), origin, _ = panels(r)
    assert panel.title.startswith("listener/tcp-ports") and panel.false_alarms == [0.0]
    assert origin == BASE + 5 and panel.spans == [(0.0, 25.0)]  # open until the end

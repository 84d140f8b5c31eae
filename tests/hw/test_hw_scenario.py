"""The scenario files: the shipped ones load and hold together; a bad field fails at
load time, naming the file and the key; placeholders resolve; quick shortens only the
benign load."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from hw.actors import KINDS
from hw.scenario import (
    EXAMPLE_ADDRESSES,
    NODES,
    ScenarioError,
    load_scenario,
    load_scenarios,
    union_capture,
)

SHIPPED = Path(__file__).resolve().parents[2] / "hw" / "scenarios"
OTHER_ADDRESSES = {
    "dut": "192.168.1.20",
    "broker": "192.168.1.5",
    "peer1": "192.168.1.30",
    "peer2": "192.168.1.31",
    "attacker": "192.168.1.66",
    "c2": "203.0.113.7",
    "lan": "192.168.1.0/24",
}
REQUIRED = {
    "backdoor-listener-tcp",
    "backdoor-listener-udp",
    "c2-connection",
    "c2-connection-150th",
    "c2-auto-block",
    "exfiltration-burst",
    "established-flood",
    "custom-metric-spike",
    "syn-scan",
    "connect-scan",
    "slow-scan",
    "dns-forbidden-domain",
    "mqtt-auth-failure-storm",
    "mqtt-flood",
    "mqtt-message-size-spike",
    "ml-night-upload",
    "ml-slow-ramp",
    "ml-beacon",
    "benign",
}

VALID = """\
description = "A listener on 4444."
interval_s = 1
warmup_s = 2
deadline_s = 8

[[profiles]]
securityProfileName = "p"

[[profiles.behaviors]]
name = "no-backdoor"
metric = "aws:listening-tcp-ports"
criteria = { comparisonOperator = "not-in-port-set", value = { ports = [4444] } }

[[profiles.behaviors]]
name = "no-c2"
metric = "aws:destination-ip-addresses"
criteria = { comparisonOperator = "not-in-cidr-set", value = { cidrs = ["{c2}/32"] } }

[[profiles.behaviors]]
name = "out-10s"
metric = "aws:all-bytes-out"
criteria = { comparisonOperator = "less-than", value = { count = 1000 }, durationSeconds = 10 }

[[custom_metrics]]
name = "workers"
type = "number"
source = "command"
command = ["echo", "{dut}"]

[[setup]]
node = "attacker"
kind = "sink"
port = 443

[[attack]]
node = "dut"
kind = "connect"
host = "{c2}"
port = 443

[[expected]]
profile = "p"
behavior = "no-c2"
"""

CAPTURE = "\n[capture]\nenabled = true\n"
DIMENSION = """
[[dimensions]]
name = "sensor-topics"
type = "TOPIC_FILTER"
stringValues = ["sensors/#"]
"""
# The last behavior of VALID, after which another goes.
FLOOD_BEHAVIOR = (
    'criteria = { comparisonOperator = "less-than", value = { count = 1000 },'
    " durationSeconds = 10 }\n"
)
DIMENSIONED = """
[[profiles.behaviors]]
name = "sensor-messages"
metric = "aws:num-messages-sent"
metricDimension = { dimensionName = "sensor-topics" }
criteria = { comparisonOperator = "less-than", value = { count = 50 } }
"""

BENIGN = """\
description = "Normal load."
benign = true
interval_s = 1
warmup_s = 2
benign_s = 1800
quick_benign_s = 40

[[profiles]]
securityProfileName = "b"
behaviors = []

[[setup]]
node = "peer1"
kind = "http-server"
"""


def write(tmp_path: Path, text: str, name: str = "case") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_every_shipped_scenario_loads_under_any_lab_addresses() -> None:
    for addresses in (EXAMPLE_ADDRESSES, OTHER_ADDRESSES):
        scenarios = load_scenarios(SHIPPED, None, addresses, quick=False)
        assert {s.name for s in scenarios} >= REQUIRED
        assert [s.name for s in scenarios if s.benign] == ["benign"]
        assert scenarios[-1].benign  # benign last: it runs under every profile
        for s in scenarios:
            # an ML scenario first fills its model's rolling window (hw/ml_rig.py)
            ml_window = s.ml_training["window_s"] if s.ml_training else 0.0
            assert s.profiles and s.interval_s <= 2 and s.warmup_s <= 5 + ml_window + 5
            assert all(a.node in NODES and a.kind in KINDS for a in s.setup + s.attack)
            assert not re.search(
                r"\{\w+\}", repr([s.profiles, s.custom_metrics, s.setup, s.attack])
            )
            if not s.benign:
                assert s.attack and s.expected
                # A quick run has about 3 minutes for all of them.
                assert s.deadline_s <= max(s.window_s or 0, ml_window) * 2 + 8


def test_shipped_scenarios_aim_at_what_the_issue_names() -> None:
    by_name = {s.name: s for s in load_scenarios(SHIPPED, None, EXAMPLE_ADDRESSES, quick=False)}

    def criteria(name: str) -> dict[str, object]:
        s = by_name[name]
        e = s.expected[0]
        profile = next(p for p in s.profiles if p["securityProfileName"] == e.profile)
        behavior = next(b for b in profile["behaviors"] if b["name"] == e.behavior)
        return {"metric": behavior["metric"], **behavior["criteria"]}

    assert criteria("backdoor-listener-tcp")["metric"] == "aws:listening-tcp-ports"
    assert criteria("backdoor-listener-udp")["metric"] == "aws:listening-udp-ports"
    c2 = criteria("c2-connection")
    assert c2["comparisonOperator"] == "not-in-cidr-set"
    assert c2["value"] == {"cidrs": [EXAMPLE_ADDRESSES["c2"] + "/32"]}
    assert criteria("c2-connection-150th") == c2
    blind_spot = by_name["c2-connection-150th"]
    assert sum(a.params.get("n", 1) for a in blind_spot.setup if a.kind == "connect") == 149
    assert criteria("exfiltration-burst")["durationSeconds"] == 10
    assert by_name["exfiltration-burst"].window_s == 10
    spike = by_name["custom-metric-spike"]
    assert criteria("custom-metric-spike")["metric"] == spike.custom_metrics[0]["name"]
    benign_kinds = {a.kind for a in by_name["benign"].setup}
    assert {"mqtt", "dns", "http", "ssh", "ntp", "mqtt-client"} <= benign_kinds
    for scan in ("syn-scan", "connect-scan", "slow-scan"):
        assert criteria(scan) == {
            "metric": "num_scan_sources",
            "comparisonOperator": "less-than",
            "value": {"number": 1},
        }
        assert by_name[scan].capture is not None
    # the goal and the deadline: one interval + 1 s after the 5th probe
    assert by_name["syn-scan"].lead_s == by_name["connect-scan"].lead_s == 4 / 20
    assert by_name["slow-scan"].lead_s == 4 and by_name["slow-scan"].deadline_s == 6
    assert criteria("dns-forbidden-domain")["value"] == {"strings": ["*.evil.example"]}
    assert criteria("mqtt-auth-failure-storm")["metric"] == "aws:num-authorization-failures"
    assert criteria("mqtt-flood")["metric"] == "aws:num-messages-sent"
    assert criteria("mqtt-message-size-spike")["metric"] == "aws:message-byte-size"
    for name in ("syn-scan", "connect-scan", "slow-scan", "dns-forbidden-domain"):
        s = by_name[name]
        assert s.deadline_s == pytest.approx(s.lead_s + s.interval_s + 1)
    for name in ("mqtt-auth-failure-storm", "mqtt-flood", "mqtt-message-size-spike"):
        s = by_name[name]
        assert s.capture is not None and s.capture["broker"]["enabled"]
        assert s.deadline_s == pytest.approx(s.lead_s + s.interval_s + 1)
        assert {a.params["host"] for a in s.setup + s.attack} == {EXAMPLE_ADDRESSES["dut"]}


def test_quick_shortens_the_benign_load_only() -> None:
    full = load_scenarios(SHIPPED, None, EXAMPLE_ADDRESSES, quick=False)
    quick = load_scenarios(SHIPPED, None, EXAMPLE_ADDRESSES, quick=True)
    for f, q in zip(full, quick, strict=True):
        if f.benign:
            assert (f.deadline_s, q.deadline_s) == (1800, 40)
            assert dataclasses.replace(q, deadline_s=f.deadline_s) == f
        else:
            assert q == f


def test_placeholders_resolve_everywhere(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, VALID), OTHER_ADDRESSES, quick=False)
    assert s.profiles[0]["behaviors"][1]["criteria"]["value"] == {"cidrs": ["203.0.113.7/32"]}
    assert s.custom_metrics[0]["command"] == ["echo", "192.168.1.20"]
    assert s.attack[0].params == {"host": "203.0.113.7", "port": 443}
    assert s.window_s is None  # the windowed behavior is not an expected one


def test_names_select_in_order_and_an_unknown_name_is_refused(tmp_path: Path) -> None:
    write(tmp_path, VALID, "a")
    write(tmp_path, BENIGN, "b")
    picked = load_scenarios(tmp_path, ["b", "a"], EXAMPLE_ADDRESSES, quick=True)
    assert [s.name for s in picked] == ["b", "a"]
    with pytest.raises(ScenarioError, match=r"no scenario 'c'; there are a, b"):
        load_scenarios(tmp_path, ["c"], EXAMPLE_ADDRESSES, quick=True)


def test_two_scenarios_may_not_give_one_profile_name_two_meanings(tmp_path: Path) -> None:
    write(tmp_path, VALID, "a")
    write(tmp_path, VALID.replace("ports = [4444]", "ports = [4445]"), "z")
    with pytest.raises(ScenarioError, match=r"z.toml: profile 'p' differs from .* scenario a"):
        load_scenarios(tmp_path, None, EXAMPLE_ADDRESSES, quick=False)


def test_a_profile_file_beside_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(
        '{"securityProfileName": "p", "behaviors": [{"name": "no-c2",'
        ' "metric": "aws:destination-ip-addresses", "criteria": {"comparisonOperator":'
        ' "not-in-cidr-set", "value": {"cidrs": ["{c2}/32"]}}}]}'
    )
    text = VALID[: VALID.index("[[profiles]]")] + 'profile_file = "p.json"\n'
    text += VALID[VALID.index("[[custom_metrics]]") :]
    s = load_scenario(write(tmp_path, text), OTHER_ADDRESSES, quick=False)
    assert s.profiles[0]["behaviors"][0]["criteria"]["value"]["cidrs"] == ["203.0.113.7/32"]


def _without(text: str, line: str) -> str:
    assert line in text
    return text.replace(line, "")


BAD = [
    ("description", lambda t: _without(t, 'description = "A listener on 4444."\n')),
    ("interval_s", lambda t: t.replace("interval_s = 1", "interval_s = 0")),
    ("interval_s", lambda t: t.replace("interval_s = 1", 'interval_s = "1"')),
    ("deadline_s", lambda t: _without(t, "deadline_s = 8\n")),
    ("deadline", lambda t: t.replace("deadline_s = 8", "deadline_s = 8\ndeadline = 8")),
    ("benign_s", lambda t: t.replace("deadline_s = 8", "deadline_s = 8\nbenign_s = 9")),
    ("attack[0].node", lambda t: t.replace('node = "dut"', 'node = "router"')),
    ("attack[0].kind", lambda t: t.replace('kind = "connect"', 'kind = "portscan"')),
    ("attack[0].hots", lambda t: t.replace('host = "{c2}"', 'hots = "{c2}"')),
    ("attack[0].host", lambda t: t.replace('host = "{c2}"', "")),
    (
        "attack[0].port",
        lambda t: t.replace("port = 443\n\n[[expected", 'port = "443"\n\n[[expected'),
    ),
    ("attack[0].host", lambda t: t.replace('host = "{c2}"', 'host = "{router}"')),
    ("attack", lambda t: t[: t.index("[[attack]]")] + t[t.index("[[expected]]") :]),
    ("expected", lambda t: t[: t.index("[[expected]]")]),
    ("expected[0].profile", lambda t: t.replace('profile = "p"', 'profile = "q"')),
    ("expected[0].behavior", lambda t: t.replace('behavior = "no-c2"', 'behavior = "no-c3"')),
    (
        "expected[0].thing",
        lambda t: t.replace('behavior = "no-c2"', 'behavior = "no-c2"\nthing = 2'),
    ),
    (
        "expected[0].thing",
        lambda t: t.replace('behavior = "no-c2"', 'behavior = "no-c2"\nthing = ""'),
    ),
    ("expected[0]", lambda t: t.replace('behavior = "no-c2"', 'behavior = "no-c2"\nthings = "a"')),
    ("expected[1]", lambda t: t + '\n[[expected]]\nprofile = "p"\nbehavior = "no-c2"\n'),
    ("profiles[0]", lambda t: t.replace('"not-in-port-set"', '"not-in-cidr-set"')),
    ("profiles[0]", lambda t: t.replace('"{c2}/32"', '"{c2}/33"')),
    ("profiles[0]", lambda t: t.replace('name = "out-10s"', 'name = "no-c2"')),
    ("profiles", lambda t: t[: t.index("[[profiles]]")] + t[t.index("[[custom_metrics]]") :]),
    (
        "profile_file",
        lambda t: t.replace("deadline_s = 8", 'deadline_s = 8\nprofile_file = "x.json"'),
    ),
    ("custom_metrics[0].command", lambda t: _without(t, 'command = ["echo", "{dut}"]\n')),
    ("custom_metrics[0].source", lambda t: t.replace('source = "command"', 'source = "shell"')),
    ("capture", lambda t: t + "capture = true\n"),
    ("capture", lambda t: t.replace("deadline_s = 8", 'deadline_s = 8\ncapture = "on"')),
    ("capture.enabled", lambda t: t + "\n[capture]\ninterfaces = []\n"),
    ("capture.enabled", lambda t: t + '\n[capture]\nenabled = "yes"\n'),
    ("capture.scan.hold_s", lambda t: t + CAPTURE + "scan = { hold_s = -1 }\n"),
    ("capture.broker.ports[0]", lambda t: t + CAPTURE + "broker = { ports = [70000] }\n"),
    ("capture.dns.names_metric", lambda t: t + CAPTURE + 'dns = { names_metric = "aws:x" }\n'),
    ("capture.dns", lambda t: t + CAPTURE + "dns = { enable = true }\n"),
    (
        "capture.scan.sources_metric",
        lambda t: t + CAPTURE + 'scan = { sources_metric = "workers" }\n',
    ),
    ("lead_s", lambda t: t.replace("deadline_s = 8", "deadline_s = 8\nlead_s = 9")),
    ("lead_s", lambda t: t.replace("deadline_s = 8", 'deadline_s = 8\nlead_s = "1"')),
    ("dimensions", lambda t: t.replace("deadline_s = 8", "deadline_s = 8\ndimensions = 3")),
    ("dimensions[0]", lambda t: t + DIMENSION.replace('"TOPIC_FILTER"', '"STRING"')),
    ("dimensions[0]", lambda t: t + DIMENSION.replace('"sensors/#"', '"sensors/#/x"')),
    ("dimensions", lambda t: t.replace(FLOOD_BEHAVIOR, FLOOD_BEHAVIOR + DIMENSIONED)),
    ("cannot be read as TOML", lambda t: t.replace("interval_s = 1", "interval_s = ")),
]


@pytest.mark.parametrize(("key", "spoil"), BAD, ids=[f"{i}-{k}" for i, (k, _) in enumerate(BAD)])
def test_a_bad_field_names_the_file_and_the_key(
    tmp_path: Path, key: str, spoil: Callable[[str], str]
) -> None:
    path = write(tmp_path, spoil(VALID))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, EXAMPLE_ADDRESSES, quick=False)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and key in message, message


BAD_BENIGN = [
    ("attack", lambda t: t + '\n[[attack]]\nnode = "dut"\nkind = "spawn"\nn = 3\n'),
    ("deadline_s", lambda t: t.replace("benign_s = 1800", "benign_s = 1800\ndeadline_s = 3")),
    ("quick_benign_s", lambda t: t.replace("quick_benign_s = 40", "quick_benign_s = 4000")),
    ("benign_s", lambda t: _without(t, "benign_s = 1800\n")),
    ("benign", lambda t: t.replace("benign = true", 'benign = "yes"')),
    ("lead_s", lambda t: t.replace("benign_s = 1800", "benign_s = 1800\nlead_s = 1")),
]


@pytest.mark.parametrize(("key", "spoil"), BAD_BENIGN, ids=[k for k, _ in BAD_BENIGN])
def test_a_bad_benign_field_names_the_file_and_the_key(
    tmp_path: Path, key: str, spoil: Callable[[str], str]
) -> None:
    path = write(tmp_path, spoil(BENIGN))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, EXAMPLE_ADDRESSES, quick=False)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and key in message, message


def test_an_expected_entry_may_name_the_thing_that_must_alarm(tmp_path: Path) -> None:
    text = VALID.replace('behavior = "no-c2"', 'behavior = "no-c2"\nthing = "sensor2"')
    text += '\n[[expected]]\nprofile = "p"\nbehavior = "no-c2"\nthing = "intruder"\n'
    s = load_scenario(write(tmp_path, text), EXAMPLE_ADDRESSES, quick=False)
    assert [(e.profile, e.behavior, e.thing) for e in s.expected] == [
        ("p", "no-c2", "sensor2"),
        ("p", "no-c2", "intruder"),
    ]
    plain = load_scenario(write(tmp_path, VALID, "plain"), EXAMPLE_ADDRESSES, quick=False)
    assert [e.thing for e in plain.expected] == [None]  # any thing


def test_the_mqtt_scenarios_expect_their_attacking_clients() -> None:
    by_name = {s.name: s for s in load_scenarios(SHIPPED, None, EXAMPLE_ADDRESSES, quick=False)}
    for name in ("mqtt-auth-failure-storm", "mqtt-flood", "mqtt-message-size-spike"):
        s = by_name[name]
        # the client ids the attack's clients connect with (client_id, else the user name)
        attackers = [a.params.get("client_id") or a.params["username"] for a in s.attack]
        assert sorted(e.thing for e in s.expected) == sorted(attackers), name  # type: ignore[type-var]
        bystanders = {a.params["username"] for a in s.setup if a.kind == "mqtt-client"}
        assert bystanders == {"sensor1"} and not bystanders & set(attackers)
    storm = by_name["mqtt-auth-failure-storm"]
    assert [e.thing for e in storm.expected] == ["sensor2", "intruder"]
    assert {
        e.thing for s in by_name.values() if not s.name.startswith("mqtt-") for e in s.expected
    } == {None}


def test_the_valid_cases_are_valid(tmp_path: Path) -> None:
    """The base of the bad cases loads: each failure above is the spoiled field's."""
    assert load_scenario(write(tmp_path, VALID, "v"), EXAMPLE_ADDRESSES, quick=False).expected
    assert load_scenario(write(tmp_path, BENIGN, "b"), EXAMPLE_ADDRESSES, quick=True).benign


def test_a_capture_table_is_the_agents_whole_and_a_dimension_goes_with_its_profile(
    tmp_path: Path,
) -> None:
    text = VALID.replace(FLOOD_BEHAVIOR, FLOOD_BEHAVIOR + DIMENSIONED) + DIMENSION
    text += CAPTURE + 'interfaces = ["eth0"]\nbroker = { enabled = true }\n'
    s = load_scenario(write(tmp_path, text), EXAMPLE_ADDRESSES, quick=False)
    assert [d["name"] for d in s.dimensions] == ["sensor-topics"]
    assert s.capture is not None
    assert s.capture["interfaces"] == ["eth0"]
    # the agent's defaults filled in: a feature left out is what the agent would run
    assert s.capture["scan"]["enabled"] and s.capture["dns"]["enabled"]
    assert s.capture["broker"] == {"enabled": True, "ports": [1883]}
    assert s.lead_s == 0.0
    assert (
        load_scenario(write(tmp_path, VALID, "plain"), EXAMPLE_ADDRESSES, quick=False).capture
        is None
    )


def _with_capture(text: str, capture: str) -> str:
    return text + CAPTURE + capture


def test_the_capture_tables_of_several_scenarios_join(tmp_path: Path) -> None:
    write(
        tmp_path, _with_capture(VALID, 'interfaces = ["eth0"]\nscan = { enabled = false }\n'), "a"
    )
    write(
        tmp_path,
        _with_capture(
            VALID.replace('"p"', '"q"'),
            'interfaces = ["eth1"]\ndns = { enabled = false }\n'
            "broker = { enabled = true, ports = [1884] }\n",
        ),
        "b",
    )
    write(tmp_path, BENIGN, "c")
    loaded = load_scenarios(tmp_path, None, EXAMPLE_ADDRESSES, quick=True)
    joined = union_capture(loaded)
    assert joined is not None
    assert joined["interfaces"] == ["eth0", "eth1"]
    assert joined["scan"]["enabled"] and joined["dns"]["enabled"]  # on in one of them
    assert joined["broker"] == {"enabled": True, "ports": [1883, 1884]}
    assert union_capture([s for s in loaded if s.benign]) is None
    # an empty interface list is every interface: it covers the others
    write(tmp_path, _with_capture(VALID.replace('"p"', '"r"'), ""), "d")
    loaded = load_scenarios(tmp_path, None, EXAMPLE_ADDRESSES, quick=True)
    assert union_capture(loaded)["interfaces"] == []  # type: ignore[index]


def test_two_scenarios_may_not_name_one_capture_metric_two_ways(tmp_path: Path) -> None:
    write(tmp_path, _with_capture(VALID, 'scan = { count_metric = "scanners" }\n'), "a")
    write(tmp_path, _with_capture(VALID.replace('"p"', '"q"'), ""), "b")
    with pytest.raises(
        ScenarioError,
        match=r"b.toml: capture.scan.count_metric = 'num_scan_sources' differs from"
        r" 'scanners' of scenario a",
    ):
        load_scenarios(tmp_path, None, EXAMPLE_ADDRESSES, quick=False)


ML = """
[[profiles.behaviors]]
name = "workers-ml"
metric = "workers"
criteria = { mlDetectionConfig = { confidenceLevel = "HIGH" } }
"""


def test_two_scenarios_may_not_train_one_metric_two_ways(tmp_path: Path) -> None:
    """The benign load trains one [ml_training] table per metric: two scenarios that
    train one metric must agree on it, whatever its shape."""
    with_ml = VALID.replace(FLOOD_BEHAVIOR, FLOOD_BEHAVIOR + ML)
    training = '\n[ml_training]\nmetric = "workers"\nvalue = {}\nwindow_s = 10\n'
    write(tmp_path, with_ml + training.format(1), "a")
    write(tmp_path, with_ml.replace('"p"', '"q"') + training.format(1), "b")
    loaded = load_scenarios(tmp_path, None, EXAMPLE_ADDRESSES, quick=False)
    assert [s.ml_training for s in loaded] == [
        {"metric": "workers", "value": 1.0, "window_s": 10.0}
    ] * 2
    write(tmp_path, with_ml.replace('"p"', '"q"') + training.format(2), "b")
    with pytest.raises(
        ScenarioError, match=r"b.toml: ML training of 'workers' differs from the one of scenario a"
    ):
        load_scenarios(tmp_path, None, EXAMPLE_ADDRESSES, quick=False)

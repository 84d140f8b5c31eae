"""The agent's files as every DUT kind writes them (hw/dut.py): the config with the
scenario's [capture] table, and the profiles with their dimensions, read back by the
agent's own parsers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.service.profiles import load_detect_files
from hw.dut import AgentSetup, config_text, toml_table, write_detect_files
from hw.run import SCENARIOS, _own, _union
from hw.scenario import EXAMPLE_ADDRESSES, load_scenarios

FLOOD_PROFILE = {
    "securityProfileName": "flood",
    "behaviors": [
        {
            "name": "sensor-messages",
            "metric": "aws:num-messages-sent",
            "metricDimension": {"dimensionName": "sensor-topics", "operator": "IN"},
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 50}},
        }
    ],
}
DIMENSION = {"name": "sensor-topics", "type": "TOPIC_FILTER", "stringValues": ["sensors/#"]}


def text(setup: AgentSetup) -> str:
    return config_text(
        setup,
        state_dir="/var/lib/x",
        profiles_dir="/etc/x/profiles",
        broker=("10.77.0.5", 8883),
        tls_files=("/ca.pem", "/c.pem", "/c.key"),
    )


def test_no_capture_table_leaves_the_agents_default_off() -> None:
    cfg = parse_config(text(AgentSetup(profiles=[], interval_s=1)), "rig")
    assert not cfg.capture.enabled
    assert "[capture]" not in text(AgentSetup(profiles=[], interval_s=1))


@pytest.mark.parametrize("name", ["syn-scan", "mqtt-flood", "dns-forbidden-domain"])
def test_each_scenarios_capture_reaches_the_agent_as_written(name: str) -> None:
    (scenario,) = load_scenarios(SCENARIOS, [name], EXAMPLE_ADDRESSES, quick=True)
    own = _own(scenario)
    setup = AgentSetup(profiles=own.profiles, interval_s=1, capture=own.capture)
    cfg = parse_config(text(setup), "rig")
    assert cfg.capture.enabled
    assert dataclasses.asdict(cfg.capture) == own.capture


def test_the_benign_loads_joined_capture_reaches_the_agent() -> None:
    joined = _union(load_scenarios(SCENARIOS, None, EXAMPLE_ADDRESSES, quick=True)).capture
    assert joined is not None
    setup = AgentSetup(profiles=[], interval_s=1, capture=joined)
    capture = parse_config(text(setup), "rig").capture
    assert capture.scan.enabled and capture.dns.enabled and capture.broker.enabled
    assert capture.broker.ports == [1883]


def test_a_table_of_tables_is_written_as_toml() -> None:
    lines = toml_table("capture", {"enabled": True, "scan": {"hold_s": 5.0}, "interfaces": []})
    assert lines == [
        "[capture]",
        "enabled = true",
        "interfaces = []",
        "[capture.scan]",
        "hold_s = 5.0",
    ]
    with pytest.raises(ValueError, match=r"has no TOML form"):
        toml_table("capture", {"when": None})


def test_dimensions_are_written_where_the_agent_loads_them(tmp_path: Path) -> None:
    setup = AgentSetup(profiles=[FLOOD_PROFILE], interval_s=1, dimensions=[DIMENSION])
    write_detect_files(setup, lambda name, data: (tmp_path / name).write_bytes(data))
    loaded = load_detect_files([str(tmp_path / "*.json")])
    assert [p.name for p in loaded.profiles] == ["flood"]
    assert [(d.name, d.filters) for d in loaded.dimensions] == [("sensor-topics", ("sensors/#",))]

"""The rig's orchestration around the parts: which profiles the benign load runs under,
what a real device is spared, and the command line refusing what it cannot run (the
whole run itself is CI's `python -m hw run --quick`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hw.run import (
    SCENARIOS,
    TARGET_SKIPS,
    _for_target,
    _own,
    _union,
    needs_gateway,
)
from hw.scenario import EXAMPLE_ADDRESSES, load_scenarios

REPO = Path(__file__).resolve().parents[2]


def scenarios():
    return load_scenarios(SCENARIOS, None, EXAMPLE_ADDRESSES, quick=True)


def test_the_benign_load_runs_under_every_profile_and_custom_metric_once():
    loaded = scenarios()
    union = _union(loaded)
    names = [p["securityProfileName"] for p in union.profiles]
    assert len(names) == len(set(names))
    assert set(names) == {p["securityProfileName"] for s in loaded for p in s.profiles}
    # c2-connection and c2-connection-150th share one profile file; the scans one profile
    assert sum(name == "rig-no-c2" for name in names) == 1
    assert sum(name == "rig-no-scan" for name in names) == 1
    assert {m["name"] for m in union.custom_metrics} == {
        m["name"] for s in loaded for m in s.custom_metrics
    }
    assert {d["name"] for d in union.dimensions} == {"rig-sensor-topics"}
    # every capture feature some scenario turns on runs under the benign load
    capture = union.capture
    assert capture is not None and capture["enabled"]
    assert capture["scan"]["enabled"] and capture["dns"]["enabled"]
    assert capture["broker"]["enabled"] and capture["broker"]["ports"] == [1883]
    (benign,) = [s for s in loaded if s.benign]
    assert benign.capture is None  # its capture is the union's


def test_the_benign_load_runs_with_mitigation_off_and_a_blocking_scenario_with_its_own():
    by_name = {s.name: s for s in scenarios()}
    union = _union(list(by_name.values()))
    assert union.mitigation is None and union.mitigation_actions == []
    assert "rig-lan-only" in [p["securityProfileName"] for p in union.profiles]
    block = _own(by_name["c2-auto-block"])
    assert block.mitigation is not None and block.mitigation["enabled"]
    assert [a["name"] for a in block.mitigation_actions] == ["block-c2"]
    assert _own(by_name["c2-connection"]).mitigation is None


def test_a_scenario_runs_under_its_own_capture_only():
    by_name = {s.name: s for s in scenarios()}
    assert _own(by_name["c2-connection"]).capture is None
    flood = _own(by_name["mqtt-flood"])
    assert flood.capture is not None and flood.capture["broker"]["enabled"]
    assert [d["name"] for d in flood.dimensions] == ["rig-sensor-topics"]
    syn = _own(by_name["syn-scan"])
    assert syn.capture is not None and not syn.capture["broker"]["enabled"]


def test_the_gateway_broker_runs_for_the_scenarios_that_use_it():
    by_name = {s.name: s for s in scenarios()}
    assert needs_gateway([by_name["mqtt-flood"]]) and needs_gateway([by_name["benign"]])
    assert not needs_gateway([by_name["syn-scan"], by_name["c2-connection"]])


def test_a_real_device_is_spared_the_actions_it_cannot_take():
    (benign,) = [s for s in scenarios() if s.benign]
    kept = _for_target(benign)
    assert [a for a in kept.setup if a.node in TARGET_SKIPS or a.kind in TARGET_SKIPS] == []
    dropped = [a for a in benign.setup if a not in kept.setup]
    assert {(a.node, a.kind) for a in dropped} == {
        ("dut-netns", "sshd"),
        ("dut-netns", "http-server"),
        ("dut", "mqtt"),
        ("peer1", "mqtt-client"),
        ("peer2", "mqtt-client"),
    }
    assert kept.profiles == benign.profiles and kept.expected == benign.expected


def hw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hw", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the rig runs as root")
def test_the_command_line_refuses_what_it_cannot_run(tmp_path):
    unknown = hw("run", "--scenarios", "no-such-scenario", "--out", str(tmp_path))
    assert unknown.returncode == 2
    assert "no scenario 'no-such-scenario'" in unknown.stderr
    no_c2 = hw("run", "--target", "ssh://root@192.0.2.1", "--out", str(tmp_path))
    assert no_c2.returncode == 2 and "--c2" in no_c2.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written
    listed = hw("list")
    assert listed.returncode == 0
    assert {line.split(":")[0] for line in listed.stdout.splitlines()} == {
        s.name for s in scenarios()
    }

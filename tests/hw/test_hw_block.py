"""The rig's mitigation: the [mitigation] and [[mitigation_actions]] keys of a scenario
(checked at load time, a bad value naming the file and the key), the agent config the
DUT writes from them, the connect-probe actor against real sockets and a real nftables
drop in a namespace, and the scoring and report of the block time."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from hw.dut import AgentSetup, config_text, prepare_mitigation, read_blocked
from hw.lab import Node
from hw.machine import REPO
from hw.report import panels, report_document, write_report
from hw.run import _device_network, blocks, with_probe_files
from hw.scenario import EXAMPLE_ADDRESSES, Action, ScenarioError, load_scenario, load_scenarios
from hw.scoring import (
    TOLERANCE_S,
    ScenarioResult,
    parse_attempts,
    score,
    score_scenario,
    summary,
)
from hw.traffic import start_actions, stop_actions

SHIPPED = Path(__file__).resolve().parents[2] / "hw" / "scenarios"

VALID = """\
description = "The device keeps connecting to the C2; the agent blocks it."
interval_s = 1
warmup_s = 2
deadline_s = 8

[[profiles]]
securityProfileName = "lan-only"

[[profiles.behaviors]]
name = "lan-destinations"
metric = "aws:destination-ip-addresses"
criteria = { comparisonOperator = "in-cidr-set", value = { cidrs = ["{lan}"] } }

[mitigation]
enabled = true
allow_cidrs = ["{lan}"]

[[mitigation.auto]]
profile = "lan-only"
behavior = "lan-destinations"
actions = ["block-c2"]

[[mitigation_actions]]
name = "block-c2"
actionParams = { blockRemoteAddressParams = { timeoutSeconds = 600 } }

[[attack]]
node = "dut"
kind = "connect-probe"
host = "{c2}"
port = 443

[[expected]]
profile = "lan-only"
behavior = "lan-destinations"
"""
BENIGN = """\
description = "Normal load."
benign = true
interval_s = 1
warmup_s = 2
benign_s = 60
quick_benign_s = 10

[[profiles]]
securityProfileName = "b"
behaviors = []
"""
ACTION = """
[[mitigation_actions]]
name = "block-c2"
actionParams = { blockRemoteAddressParams = { timeoutSeconds = 600 } }
"""


def write(tmp_path: Path, text: str, name: str = "case") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _sub(old: str, new: str) -> Callable[[str], str]:
    def spoil(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)

    return spoil


BAD = [
    ("mitigation", _sub("[mitigation]\nenabled = true", 'mitigation = "on"\n[x]\nenabled = true')),
    ("mitigation.enabled", _sub("enabled = true", "enabled = false")),
    ("mitigation.enabled", _sub("enabled = true", 'enabled = "yes"')),
    ("mitigation.allow_cidrs", _sub('allow_cidrs = ["{lan}"]', 'allow_cidrs = ["10.1.0.0/16"]')),
    ("mitigation.allow_cidrs", _sub('allow_cidrs = ["{lan}"]', "allow_cidrs = []")),
    ("mitigation.allow_cidrs[0]", _sub('allow_cidrs = ["{lan}"]', 'allow_cidrs = ["10.77.0.1/8"]')),
    ("mitigation.allow_cidrs[0]", _sub('allow_cidrs = ["{lan}"]', 'allow_cidrs = ["{c3}"]')),
    ("mitigation.dryrun", _sub("enabled = true", "enabled = true\ndryrun = true")),
    (
        "mitigation.auto[0]",
        _sub('behavior = "lan-destinations"\nactions', 'behavior = "x"\nactions'),
    ),
    ("mitigation.auto[0].actions[0]", _sub('actions = ["block-c2"]', 'actions = ["block-c3"]')),
    ("mitigation.auto[0].actions", _sub('actions = ["block-c2"]', "actions = []")),
    ("mitigation_actions[0]", _sub('name = "block-c2"\n', "")),
    ("mitigation_actions[0]", _sub('name = "block-c2"', 'name = "block-c2"\nrole = "x"')),
    ("mitigation_actions[0]", _sub('name = "block-c2"', 'name = "block c2"')),
    ("mitigation_actions[0]", _sub("timeoutSeconds = 600", "timeoutSeconds = 0")),
    ("mitigation_actions[0]", _sub("timeoutSeconds = 600", 'timeoutSeconds = 600, cidrs = ["x"]')),
    ("mitigation_actions[0]", _sub("blockRemoteAddressParams", "blockEverythingParams")),
    ("mitigation_actions[1].name", lambda t: t + ACTION),
    ("mitigation_actions", _sub("[[mitigation_actions]]", "mitigation_actions = 3\n[[x]]")),
    ("attack", _sub('kind = "connect-probe"', 'kind = "connect"')),
    ("attack[0].every_s", _sub("port = 443", 'port = 443\nevery_s = "fast"')),
    ("attack[0].hold", _sub("port = 443", 'port = 443\nhold = "no"')),
    ("attack[0].hold", _sub("port = 443", "port = 443\nhold = 0")),
    ("attack[0].port", _sub("port = 443", "port = true")),
]


@pytest.mark.parametrize(("key", "spoil"), BAD, ids=[f"{i}-{k}" for i, (k, _) in enumerate(BAD)])
def test_a_bad_mitigation_key_names_the_file_and_the_key(
    tmp_path: Path, key: str, spoil: Callable[[str], str]
) -> None:
    path = write(tmp_path, spoil(VALID))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, EXAMPLE_ADDRESSES, quick=False)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and key in message, message


def test_actions_without_mitigation_and_mitigation_in_the_benign_load_are_refused(
    tmp_path: Path,
) -> None:
    start = VALID.index("[mitigation]")
    without = VALID[:start] + VALID[VALID.index("[[mitigation_actions]]") :]
    path = write(tmp_path, without)
    with pytest.raises(ScenarioError, match=r"mitigation_actions: needs a \[mitigation\]"):
        load_scenario(path, EXAMPLE_ADDRESSES, quick=False)
    path = write(tmp_path, BENIGN + "[mitigation]\nenabled = true\n", "benign")
    with pytest.raises(
        ScenarioError, match=rf"{path}: mitigation: the benign load runs with mitigation off"
    ):
        load_scenario(path, EXAMPLE_ADDRESSES, quick=False)


def test_a_probe_may_let_go_of_its_connection(tmp_path: Path) -> None:
    text = VALID.replace("port = 443", "port = 443\nhold = false")
    s = load_scenario(write(tmp_path, text), EXAMPLE_ADDRESSES, quick=False)
    assert s.attack[0].params["hold"] is False


def test_the_tables_reach_the_agents_config_whole(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, VALID), EXAMPLE_ADDRESSES, quick=False)
    assert s.mitigation is not None and s.mitigation["allow_cidrs"] == ["10.77.0.0/24"]
    assert s.mitigation_actions == [
        {"name": "block-c2", "actionParams": {"blockRemoteAddressParams": {"timeoutSeconds": 600}}}
    ]
    assert blocks(s)
    setup = AgentSetup(
        profiles=s.profiles,
        interval_s=1,
        mitigation=s.mitigation,
        mitigation_actions=s.mitigation_actions,
    )
    text = config_text(
        setup, state_dir="/s", profiles_dir="/p", broker=None, tls_files=("", "", "")
    )
    assert tomllib.loads(text)["mitigation"] == s.mitigation
    parsed = parse_config(text, "config.toml").mitigation
    assert parsed.enabled and [(r.profile, r.behavior, r.actions) for r in parsed.auto] == [
        ("lan-only", "lan-destinations", ["block-c2"])
    ]
    plain = AgentSetup(profiles=s.profiles, interval_s=1)
    text = config_text(
        plain, state_dir="/s", profiles_dir="/p", broker=None, tls_files=("", "", "")
    )
    assert "mitigation" not in text


def test_the_shipped_scenario_blocks_the_c2_and_the_benign_load_does_not() -> None:
    scenarios = {s.name: s for s in load_scenarios(SHIPPED, None, EXAMPLE_ADDRESSES, quick=True)}
    s = scenarios["c2-auto-block"]
    assert blocks(s) and s.mitigation is not None
    assert [(a.kind, a.params["host"]) for a in s.attack] == [("connect-probe", "198.51.100.66")]
    assert "10.77.0.0/24" in s.mitigation["allow_cidrs"]
    assert scenarios["benign"].mitigation is None
    blocking = {name for name, x in scenarios.items() if blocks(x)}
    assert blocking == {"c2-auto-block", "c2-auto-block-beacon"}
    beacon = scenarios["c2-auto-block-beacon"]
    assert [a.params.get("hold") for a in beacon.attack] == [False]  # it reconnects


def test_each_probe_gets_a_result_file_of_its_own() -> None:
    probe = Action("dut", "connect-probe", {"host": "198.51.100.66", "port": 443})
    other = Action("attacker", "sink", {"port": 443})
    given = Action("dut", "connect-probe", {"host": "x", "port": 1, "result_file": "/tmp/mine"})
    actions, probes = with_probe_files([other, probe, probe, given], "t1")
    assert actions[0] == other and probes == actions[1:]
    files = [a.params["result_file"] for a in probes]
    assert files == ["/tmp/edrig-probe-t1-1.txt", "/tmp/edrig-probe-t1-2.txt", "/tmp/mine"]


# -- scoring -----------------------------------------------------------------------------

T0 = 1_800_000_005.0  # the attack start
LAN_ONLY = {
    "securityProfileName": "lan-only",
    "behaviors": [
        {
            "name": "lan-destinations",
            "metric": "aws:destination-ip-addresses",
            "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.77.0.0/24"]}},
        }
    ],
}
KEY = ("lan-only", "lan-destinations")


def event(t: float, kind: str = "in-alarm", vid: str = "v1") -> dict[str, Any]:
    return {
        "violationId": vid,
        "thingName": "rig-dut",
        "securityProfileName": KEY[0],
        "behavior": {"name": KEY[1]},
        "metricValue": {"cidrs": ["198.51.100.66"]},
        "violationEventType": kind,
        "verificationState": "UNKNOWN",
        "violationEventTime": t,
    }


def probe(
    start: float, stop: float, connected: Callable[[float], bool]
) -> list[tuple[float, bool]]:
    """Attempts every 0.1 s from `start` to `stop`."""
    n = round((stop - start) / 0.1)
    return [(start + k * 0.1, connected(start + k * 0.1)) for k in range(n)]


def judged(
    events: list[dict[str, Any]],
    attempts: list[tuple[float, bool]],
    *,
    auto: tuple[tuple[str, str], ...] = (KEY,),
    offset: float = 0.0,
) -> ScenarioResult:
    return score(
        name="block",
        expected=[KEY],
        profiles=[LAN_ONLY],
        interval_s=1.0,
        deadline_s=8.0,
        benign=False,
        attack_start=T0,
        end=T0 + 12,
        events=events,
        metrics=[],
        clock_offset_s=offset,
        auto=auto,
        attempts=attempts,
    )


ALARM = T0 + 1.2


def test_a_block_within_one_interval_and_a_second_meets_the_goal() -> None:
    r = judged([event(ALARM)], probe(T0, T0 + 6, lambda t: t < ALARM + 0.6))
    assert r.detected and r.blocking and r.met
    assert r.block_goal_s == pytest.approx(2.0)
    assert r.block_s == pytest.approx(0.6, abs=0.05)
    assert r.blocked_at == pytest.approx(ALARM + 0.6, abs=0.05)


def test_connects_that_still_succeed_past_the_goal_are_a_miss() -> None:
    r = judged([event(ALARM)], probe(T0, T0 + 6, lambda t: t < ALARM + 2.5))
    assert r.detected and r.latency_s is not None and r.latency_s <= (r.goal_s or 0)
    assert r.block_s == pytest.approx(2.5, abs=0.05) and not r.met


def test_no_block_at_all_is_a_miss() -> None:
    r = judged([event(ALARM)], probe(T0, T0 + 6, lambda t: True))
    assert r.detected and r.block_s is None and r.blocked_at is None and not r.met
    assert judged([event(ALARM)], []).block_s is None


def test_the_block_starts_after_the_last_success_during_the_alarm() -> None:
    # Failures before the alarm (the server not up yet) and one lost connect after it
    # are not the block; the block is the failures that last.
    def connected(t: float) -> bool:
        return not (t < T0 + 0.3 or abs(t - (ALARM + 0.2)) < 0.05 or t >= ALARM + 0.8)

    r = judged([event(ALARM)], probe(T0, T0 + 6, connected))
    assert r.block_s == pytest.approx(0.8, abs=0.05) and r.met


def test_connects_that_succeed_again_while_the_attack_runs_are_a_miss() -> None:
    # The block hid the connection, the alarm cleared, the response was undone: the C2
    # is reachable again while the attack goes on. The block did not hold.
    cleared = ALARM + 1.0
    events = [event(ALARM), event(cleared, "alarm-cleared"), event(ALARM + 2.0, vid="v2")]
    flapping = judged(events, probe(T0, T0 + 6, lambda t: not ALARM + 0.1 <= t < cleared + 0.1))
    assert flapping.detected and flapping.block_s is None and not flapping.met
    blocked_again = judged(
        events, probe(T0, T0 + 6, lambda t: t < ALARM + 0.1 or cleared + 0.1 <= t < ALARM + 2.1)
    )
    assert blocked_again.block_s == pytest.approx(2.1, abs=0.05) and not blocked_again.met


def test_a_block_just_before_the_alarm_counts_within_the_tolerance() -> None:
    # The device's clock, 0.3 s behind: its alarm looks later than the block.
    r = judged([event(ALARM - 0.3)], probe(T0, T0 + 6, lambda t: t < ALARM - 0.4), offset=-0.3)
    assert r.block_s == pytest.approx(-0.4, abs=0.05) and r.met
    assert TOLERANCE_S >= 0.4
    early = judged([event(ALARM)], probe(T0, T0 + 6, lambda t: t < ALARM - 1.0))
    assert early.block_s is None and not early.met  # failing long before: not this alarm's


def test_a_late_detection_misses_however_fast_the_block() -> None:
    late = T0 + 5.0
    r = judged([event(late)], probe(T0, T0 + 8, lambda t: t < late + 0.2))
    assert r.detected and r.block_s == pytest.approx(0.2, abs=0.05) and not r.met


def test_without_an_automatic_response_nothing_is_blocked_or_judged() -> None:
    r = judged([event(ALARM)], [], auto=())
    assert r.met and not r.blocking and r.block_s is None and r.block_goal_s is None
    assert summary([r])[2].endswith("| yes | 0 | - |")


def test_the_table_shows_the_block_against_its_goal() -> None:
    fast = judged([event(ALARM)], probe(T0, T0 + 6, lambda t: t < ALARM + 0.6))
    never = judged([event(ALARM)], probe(T0, T0 + 6, lambda t: True))
    lines = summary([fast, never])
    assert lines[0].endswith("| false alarms | blocked (s) |")
    assert (
        lines[2]
        == "| block | lan-only/lan-destinations | yes | 1.2 | 2.0 | yes | 0 | 0.6 (goal 2.0) |"
    )
    assert lines[3].endswith("| NO | 0 | not blocked (goal 2.0) |")


def test_probe_lines_are_read_on_the_rigs_clock_and_a_bad_one_is_named() -> None:
    text = "1800000006.100000 ok\n1800000006.200000 fail PermissionError: [Errno 1] x\n"
    assert parse_attempts(text, clock_offset_s=0.5) == [
        (pytest.approx(1800000005.6), True),
        (pytest.approx(1800000005.7), False),
    ]
    with pytest.raises(ValueError, match=r"line 2: '1800000006.3 maybe'"):
        parse_attempts("1800000006.2 ok\n1800000006.3 maybe\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_attempts("soon ok\n")


def test_score_scenario_reads_the_rules_of_the_shipped_scenario() -> None:
    s = next(x for x in load_scenarios(SHIPPED, ["c2-auto-block"], EXAMPLE_ADDRESSES, quick=True))
    (want,) = s.expected
    alarm = dict(event(ALARM), securityProfileName=want.profile, behavior={"name": want.behavior})
    r = score_scenario(
        s, T0, T0 + 12, [alarm], [], attempts=probe(T0, T0 + 6, lambda t: t < ALARM + 0.3)
    )
    assert r.blocking and r.met and r.block_s == pytest.approx(0.3, abs=0.05)


def test_the_report_holds_the_block_and_plots_the_probe(tmp_path: Path) -> None:
    r = judged([event(ALARM)], probe(T0, T0 + 6, lambda t: t < ALARM + 0.6))
    doc = report_document([r], benign_s=0.0, meta={})
    block = doc["scenarios"][0]["block"]
    assert block["block_s"] == r.block_s and block["goal_s"] == 2.0
    assert len(block["attempts"]) == 60 and block["attempts"][0] == {"t": T0, "connected": True}
    plain = judged([event(ALARM)], [], auto=())
    assert "block" not in report_document([plain], benign_s=0.0, meta={})["scenarios"][0]
    found, origin, _ = panels(r)
    assert origin == T0 and found[-1].probe
    assert found[-1].points[0] == (0.0, 1.0) and found[-1].points[-1][1] == 0.0
    write_report(tmp_path, [r], benign_s=0.0, meta={})
    assert "0.6 (goal 2.0)" in (tmp_path / "report.html").read_text()


# -- the probe against real sockets ------------------------------------------------------

DUT = "10.89.0.2"
PEER = "10.89.0.11"
NFT = shutil.which("nft") or "/usr/sbin/nft"
real = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or not Path(NFT).exists(),
    reason="needs root, iproute2 and nft (network namespaces, a drop rule)",
)


@pytest.fixture
def pair() -> Iterator[dict[str, Node]]:
    """Two namespaces on a veth pair: dut and peer1."""
    prefix = "edb" + secrets.token_hex(2)
    netns = {"dut": f"{prefix}-dut", "peer1": f"{prefix}-peer"}
    made = []
    try:
        for ns in netns.values():
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        a, b = netns["dut"], netns["peer1"]
        subprocess.run(
            [
                "ip",
                "-n",
                a,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                b,
            ],
            check=True,
        )
        for ns, address in ((a, DUT), (b, PEER)):
            subprocess.run(
                ["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"], check=True
            )
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        yield {
            name: Node(name, address, ("ip", "netns", "exec", netns[name]))
            for name, address in (("dut", DUT), ("peer1", PEER))
        }
    finally:
        for ns in made:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-9", pid], check=False)
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def attempts_in(path: Path) -> list[tuple[float, bool]]:
    return parse_attempts(path.read_text()) if path.exists() else []


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)


DROP = f"""table inet edb_probe {{
    chain output {{
        type filter hook output priority 0; policy accept;
        ip daddr {PEER} tcp dport 443 drop
    }}
}}
"""


@real
def test_the_probe_notes_when_a_kernel_drop_cuts_its_connects(
    pair: dict[str, Node], tmp_path: Path
) -> None:
    result = tmp_path / "probe.txt"
    sink = Action("peer1", "sink", {"port": 443})
    probe_action = Action(
        "dut", "connect-probe", {"host": PEER, "port": 443, "result_file": str(result)}
    )
    running = start_actions([sink, probe_action], pair, tls=None, broker=PEER)
    dut = pair["dut"]
    try:
        wait_for(lambda: sum(ok for _, ok in attempts_in(result)) >= 10, "10 connects")
        # It holds the latest connection open, as a beacon: one, not one per attempt.
        held = dut.exec(["ss", "-Htn", "state", "established", f"dst {PEER}:443"]).stdout
        assert len(held.splitlines()) == 1, held
        before = time.time()
        dut.exec([NFT, "-f", "-"], stdin=DROP.encode())
        after = time.time()
        wait_for(lambda: attempts_in(result)[-1][0] > after + 1.0, "a second of attempts")
        done = attempts_in(result)
        late = [ok for t, ok in done if t >= after]
        # A dropped SYN fails at the probe's timeout (0.2 s): 5 attempts a second.
        assert len(late) >= 4 and not any(late), done[-12:]
        first_fail = next(t for t, ok in done if not ok and t >= before - 0.2)
        assert before - 0.2 <= first_fail <= after + 0.15
        up = next(t for t, ok in done if ok)  # before it, the sink was not listening yet
        assert all(ok for t, ok in done if up <= t < before - 0.3)
        reasons = [line.split(maxsplit=2)[2] for line in result.read_text().splitlines()[-3:]]
        assert all("TimeoutError" in r for r in reasons), reasons  # the SYN dropped
        # The held connection stays established: the sampler still sees the C2.
        held = dut.exec(["ss", "-Htn", "state", "established", f"dst {PEER}:443"]).stdout
        assert len(held.splitlines()) == 1, held
        dut.exec([NFT, "delete", "table", "inet", "edb_probe"])
        lifted = time.time()
        wait_for(lambda: any(ok for t, ok in attempts_in(result) if t > lifted), "connects again")
    finally:
        stop_actions(running)
    assert dut.exec(["ss", "-Htn", "state", "established"]).stdout == b""


@real
def test_the_probe_without_a_server_notes_each_refusal(
    pair: dict[str, Node], tmp_path: Path
) -> None:
    result = tmp_path / "probe.txt"
    action = Action("dut", "connect-probe", {"host": PEER, "port": 9, "result_file": str(result)})
    running = start_actions([action], pair, tls=None, broker=PEER)
    try:
        wait_for(lambda: len(attempts_in(result)) >= 5, "5 attempts")
    finally:
        stop_actions(running)
    lines = result.read_text().splitlines()
    assert all(" fail ConnectionRefusedError" in line for line in lines), lines
    times = [t for t, _ in attempts_in(result)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.05 < g < 0.2 for g in gaps), gaps  # every 0.1 s


# -- the DUT's side: the agent's firewall table and its actions ---------------------------

AGENT_SETS = """table inet edge_defender {
    set blocked_v4 {
        type ipv4_addr
        flags interval,timeout
        elements = { 198.51.100.66 timeout 600s, 203.0.113.0/24 timeout 60s }
    }
    set blocked_v6 {
        type ipv6_addr
        flags interval,timeout
    }
}
"""


@real
def test_each_start_deletes_the_agents_table_and_creates_the_actions(
    pair: dict[str, Node], tmp_path: Path
) -> None:
    dut = pair["dut"]
    dut.exec([NFT, "-f", "-"], stdin=AGENT_SETS.encode())
    assert sorted(read_blocked(dut)) == ["198.51.100.66", "203.0.113.0/24"]
    s = load_scenario(write(tmp_path, VALID), EXAMPLE_ADDRESSES, quick=False)
    setup = AgentSetup(
        profiles=s.profiles,
        interval_s=1,
        mitigation=s.mitigation,
        mitigation_actions=s.mitigation_actions,
    )
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(
            setup,
            state_dir=str(tmp_path / "state"),
            profiles_dir=str(tmp_path),
            broker=None,
            tls_files=("", "", ""),
        )
    )
    config.chmod(0o600)
    program = ("env", f"PYTHONPATH={REPO}", sys.executable, "-m", "agent")
    prepare_mitigation(dut, program, str(config), setup, "netns")
    assert read_blocked(dut) == []  # an earlier scenario's blocks are gone
    described = dut.exec(
        [
            *program,
            "describe-mitigation-action",
            "--config",
            str(config),
            "--action-name",
            "block-c2",
        ]
    )
    doc = json.loads(described.stdout)
    assert doc["actionType"] == "BLOCK_REMOTE_ADDRESS"
    assert doc["actionParams"] == {"blockRemoteAddressParams": {"timeoutSeconds": 600}}
    # Created twice (a DUT whose store was not cleared): the agent's refusal is named.
    with pytest.raises(RuntimeError, match="refused mitigation action 'block-c2'"):
        prepare_mitigation(dut, program, str(config), setup, "netns")
    # Without mitigation only the table goes; no action is made.
    plain = AgentSetup(profiles=s.profiles, interval_s=1)
    prepare_mitigation(dut, ("false",), str(config), plain, "netns")


@real
def test_a_device_without_nft_is_refused_with_the_package_to_install(
    pair: dict[str, Node], tmp_path: Path
) -> None:
    no_nft = Node("dut", DUT, ("env", "PATH=/bin"))
    assert no_nft.exec(["sh", "-c", "command -v nft"], check=False).returncode != 0
    s = load_scenario(write(tmp_path, VALID), EXAMPLE_ADDRESSES, quick=False)
    setup = AgentSetup(
        profiles=s.profiles, interval_s=1, mitigation=s.mitigation, mitigation_actions=[]
    )
    with pytest.raises(RuntimeError, match=r"scripts/rootfs\.sh"):
        prepare_mitigation(no_nft, ("true",), "/x", setup, "nspawn")
    with pytest.raises(RuntimeError, match="apt install nftables"):
        prepare_mitigation(no_nft, ("true",), "/x", setup, "ssh")
    assert read_blocked(no_nft) == []


@real
def test_lan_on_a_real_device_is_its_network_that_holds_the_rigs_address(
    pair: dict[str, Node],
) -> None:
    assert _device_network(pair["dut"], DUT) == "10.89.0.0/24"
    assert _device_network(pair["dut"], "192.0.2.9") == "192.0.2.9/32"  # none of its own


@real
def test_a_probe_that_does_not_hold_leaves_no_connection_once_blocked(
    pair: dict[str, Node], tmp_path: Path
) -> None:
    result = tmp_path / "probe.txt"
    sink = Action("peer1", "sink", {"port": 443})
    params = {"host": PEER, "port": 443, "result_file": str(result), "hold": False}
    running = start_actions(
        [sink, Action("dut", "connect-probe", params)], pair, tls=None, broker=PEER
    )
    dut = pair["dut"]
    established = ["ss", "-Htn", "state", "established", f"dst {PEER}:443"]
    try:
        wait_for(lambda: sum(ok for _, ok in attempts_in(result)) >= 5, "5 connects")
        assert len(dut.exec(established).stdout.splitlines()) == 1
        dut.exec([NFT, "-f", "-"], stdin=DROP.encode())
        after = time.time()
        wait_for(lambda: attempts_in(result)[-1][0] > after + 0.5, "attempts while blocked")
        assert dut.exec(established).stdout == b""  # nothing left for a sampler to see
    finally:
        stop_actions(running)

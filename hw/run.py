"""One run of the rig: the lab, the device under test, each scenario in turn, the report.

A scenario gets a fresh agent (a fresh store) under its own profiles: its setup traffic
starts, the agent samples through the warm-up, the attack starts (attack_start, the
rig's clock), and the run waits until every expected violation is in the agent's store
or the scenario's deadline passes; the attack stops, the agent samples a few intervals
more (so the plot shows the alarm clearing), stops, and its events and metrics history
are scored. The benign scenario runs under every selected scenario's profiles at once:
any alarm there is a false alarm. It runs with mitigation off: its automatic responses
would only hide traffic.

A scenario that blocks (an automatic response to an expected behavior) keeps its attack
running one sampling interval + 1 s + BLOCK_WATCH_S after the alarm is seen, so that
its connect-probe shows whether connects still succeed after the block's goal; the
probe's attempts are read back from the device and scored with the rest."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hw.dut import AgentSetup, Dut, SshDut, make_dut, read_blocked
from hw.lab import Lab, Node
from hw.lab import missing as lab_missing
from hw.report import write_report
from hw.scenario import (
    EXAMPLE_ADDRESSES,
    Action,
    Scenario,
    ScenarioError,
    load_scenarios,
    union_capture,
)
from hw.scoring import (
    IN_ALARM,
    SLACK_S,
    TOLERANCE_S,
    ScenarioResult,
    matches,
    parse_attempts,
    score_scenario,
    summary,
)
from hw.traffic import start_actions, stop_actions

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
POLL_S = 0.25  # how often the store is read while waiting for a detection
TAIL_INTERVALS = 3  # samples after the attack stops: the alarm clears in the plot
BLOCK_WATCH_S = 1.0  # connects watched past the block's goal: do any still succeed?
PROBE = "connect-probe"


@dataclass(frozen=True)
class RunOptions:
    scenarios: list[str] | None  # None: all
    quick: bool
    dut: str  # "nspawn" or "netns"
    target: str | None  # ssh://user@host[:port]
    out: Path
    c2: str | None = None  # with target: the C2 address (one of the rig host's)


def log(message: str) -> None:
    print(f"hw: {message}", file=sys.stderr, flush=True)


def _expected_seen(scenario: Scenario, dut: Dut, since: float) -> bool:
    offset = dut.clock_offset_s()
    alarms = [
        e
        for e in dut.events()
        if e.get("violationEventType") == IN_ALARM
        and float(e["violationEventTime"]) - offset >= since - TOLERANCE_S
    ]
    return all(
        any(matches((w.profile, w.behavior, w.thing), e) for e in alarms) for w in scenario.expected
    )


def _wait(until: float, done: Callable[[], bool]) -> None:
    while time.time() < until and not done():
        time.sleep(POLL_S)


def blocks(scenario: Scenario) -> bool:
    """Whether an automatic response answers one of the scenario's expected behaviors."""
    rules = {(r["profile"], r["behavior"]) for r in (scenario.mitigation or {}).get("auto", [])}
    return any((e.profile, e.behavior) in rules for e in scenario.expected)


def with_probe_files(actions: Sequence[Action], tag: str) -> tuple[list[Action], list[Action]]:
    """`actions` with a result file (in /tmp on their node, named with `tag`) for each
    connect-probe that has none, and those probes."""
    out = []
    for i, a in enumerate(actions):
        if a.kind == PROBE and "result_file" not in a.params:
            path = f"/tmp/edrig-probe-{tag}-{i}.txt"
            a = dataclasses.replace(a, params={**a.params, "result_file": path})
        out.append(a)
    return out, [a for a in out if a.kind == PROBE]


def read_probes(probes: Sequence[Action], nodes: dict[str, Node]) -> list[tuple[str, bytes]]:
    """Each probe's result file (removed from its node once read), as (node, text)."""
    found = []
    for a in probes:
        path = a.params["result_file"]
        node = nodes[a.node]
        done = node.exec(["cat", path], check=False)
        node.exec(["rm", "-f", path], check=False)
        if done.returncode != 0:
            log(f"{a.node} {a.kind}: no result file {path}")
        found.append((a.node, done.stdout))
    return found


def run_scenario(scenario: Scenario, site: Site, detect: Detect) -> ScenarioResult:
    dut = site.dut
    log(f"{scenario.name}: starting the agent ({dut.kind})")
    dut.start(
        AgentSetup(
            profiles=detect.profiles,
            interval_s=scenario.interval_s,
            custom_metrics=detect.custom_metrics,
            capture=detect.capture,
            dimensions=detect.dimensions,
            mitigation=detect.mitigation,
            mitigation_actions=detect.mitigation_actions,
            ml_training=detect.ml_training,
        )
    )
    attack_actions, probes = with_probe_files(scenario.attack, secrets.token_hex(4))
    setup = start_actions(scenario.setup, site.nodes, tls=dut.tls_files, broker=site.broker or "")
    attack_start: float | None = None
    try:
        time.sleep(scenario.warmup_s)
        if scenario.benign:
            log(f"{scenario.name}: benign load for {scenario.deadline_s:g} s")
            time.sleep(scenario.deadline_s)
        else:
            attack_start = time.time()
            log(f"{scenario.name}: attack")
            attack = start_actions(
                attack_actions, site.nodes, tls=dut.tls_files, broker=site.broker or ""
            )
            try:
                start = attack_start
                _wait(start + scenario.deadline_s, lambda: _expected_seen(scenario, dut, start))
                if blocks(scenario):  # the alarm is in: watch the block past its goal
                    time.sleep(scenario.interval_s + SLACK_S + BLOCK_WATCH_S)
            finally:
                stop_actions(attack)
            time.sleep(TAIL_INTERVALS * scenario.interval_s)
    finally:
        stop_actions(setup)
    end = time.time()
    # The alarm has cleared by now: its automatic response should be undone.
    left = read_blocked(dut.node) if blocks(scenario) else []
    dut.stop()
    offset = dut.clock_offset_s()
    attempts = []
    for node, text in read_probes(probes, site.nodes):
        try:
            attempts += parse_attempts(text.decode(errors="replace"), offset)
        except ValueError as e:
            log(f"{scenario.name}: {node}: {e}")
    result = score_scenario(
        scenario,
        attack_start,
        end,
        dut.events(),
        dut.metrics(),
        clock_offset_s=offset,
        profiles=detect.profiles,
        attempts=sorted(attempts),
        executions=dut.executions() if detect.mitigation is not None else [],
        blocked_left=left,
    )
    log(f"{scenario.name}: " + ("goal met" if result.met else "goal NOT met"))
    return result


@dataclass(frozen=True)
class Detect:
    """What the agent runs under in one scenario."""

    profiles: list[dict[str, Any]]
    custom_metrics: list[dict[str, Any]]
    dimensions: list[dict[str, Any]]
    capture: dict[str, Any] | None  # the [capture] table; None: off
    mitigation: dict[str, Any] | None = None  # the [mitigation] table; None: off
    mitigation_actions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ml_training: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _own(s: Scenario) -> Detect:
    return Detect(
        list(s.profiles),
        list(s.custom_metrics),
        list(s.dimensions),
        s.capture,
        s.mitigation,
        list(s.mitigation_actions),
        [s.ml_training] if s.ml_training is not None else [],
    )


def _union(scenarios: Sequence[Scenario]) -> Detect:
    """Every scenario's profiles, custom metrics, dimensions and ML trainings, each once
    (by name or metric), and every capture feature any of them turns on; mitigation off
    (the benign load's alarms are false alarms: a block would only hide the traffic that
    follows). The ML behaviors are judged there too: their models are trained."""
    profiles: dict[str, dict[str, Any]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    dimensions: dict[str, dict[str, Any]] = {}
    trainings: dict[str, dict[str, Any]] = {}
    for s in scenarios:
        profiles.update((p["securityProfileName"], p) for p in s.profiles)
        metrics.update((m["name"], m) for m in s.custom_metrics)
        dimensions.update((d["name"], d) for d in s.dimensions)
        if s.ml_training is not None:
            trainings[s.ml_training["metric"]] = s.ml_training
    return Detect(
        list(profiles.values()),
        list(metrics.values()),
        list(dimensions.values()),
        union_capture(scenarios),
        ml_training=list(trainings.values()),
    )


@dataclass(frozen=True)
class Site:
    """Where a run happens: the device, the nodes its scenarios name, the addresses their
    placeholders take, and the broker (None: the device reports nowhere)."""

    dut: Dut
    nodes: dict[str, Node]
    addresses: dict[str, str]
    broker: str | None


# Actions a real device cannot take from the rig: servers started in the device's
# network namespace from the host (a real device has its own), MQTT telemetry to the
# lab's broker, which it cannot reach, and clients of the lab's gateway broker, which
# runs in the lab's device namespace only.
TARGET_SKIPS = ("dut-netns", "mqtt", "mqtt-client")


def _lab_site(lab: Lab, kind: str, work: Path, *, net_admin: bool) -> Site:
    dut = make_dut(kind, lab, work, net_admin=net_admin)
    # "dut" runs on the device itself (inside its container under nspawn: its process
    # table, its files); "dut-netns" is its network namespace seen from the host.
    nodes = {**lab.nodes, "dut": dut.node, "dut-netns": lab.nodes["dut"]}
    return Site(dut, nodes, lab.addresses(), lab.broker.host)


def _target_site(target: str, c2: str, work: Path) -> Site:
    """A real device over SSH: the rig's host plays attacker and peers with its own
    network stack, at the address the device sees the SSH session come from."""
    dut = SshDut(target, work)
    client, _, server, _ = dut.node.exec(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()
    host = client.decode()
    nodes = {role: Node(role, host, ()) for role in ("attacker", "peer1", "peer2")}
    nodes["dut"] = dut.node
    addresses = {**{r: host for r in nodes}, "dut": server.decode(), "c2": c2, "broker": host}
    addresses["lan"] = _device_network(dut.node, server.decode())
    return Site(dut, nodes, addresses, None)


def _device_network(node: Node, address: str) -> str:
    """The CIDR of the device's network that holds `address` (`ip -o addr`), else the
    address alone: the network the rig reaches it through, never to be blocked."""
    for line in node.exec(["ip", "-o", "addr", "show"]).stdout.decode().splitlines():
        words = line.split()
        for i, word in enumerate(words[:-1]):
            if word in ("inet", "inet6") and words[i + 1].split("/")[0] == address:
                return str(ipaddress.ip_interface(words[i + 1]).network)
    return str(ipaddress.ip_network(address))


def needs_gateway(scenarios: Sequence[Scenario]) -> bool:
    """Whether the lab's gateway broker must run: a scenario has clients of it or
    watches it."""
    return any(
        any(a.kind == "mqtt-client" for a in s.setup + s.attack)
        or (s.capture is not None and s.capture["broker"]["enabled"])
        for s in scenarios
    )


def _for_target(scenario: Scenario) -> Scenario:
    def kept(actions: Sequence[Action]) -> list[Action]:
        dropped = [a for a in actions if a.node in TARGET_SKIPS or a.kind in TARGET_SKIPS]
        for a in dropped:
            log(f"{scenario.name}: left out on a real device: {a.kind} on {a.node}")
        return [a for a in actions if a not in dropped]

    return dataclasses.replace(scenario, setup=kept(scenario.setup), attack=kept(scenario.attack))


def run(options: RunOptions) -> int:
    problem = "needs root (ip netns)" if os.geteuid() != 0 else None
    if not options.target:
        problem = lab_missing()
    if problem:
        log(f"the lab cannot be made here: {problem}")
        return 2
    if options.target and not options.c2:
        log("--target needs --c2 ADDRESS: an address of this host the device can reach")
        return 2
    try:  # every file checked before a namespace is made (the lab's addresses load again)
        checked = load_scenarios(
            SCENARIOS, options.scenarios, EXAMPLE_ADDRESSES, quick=options.quick
        )
    except ScenarioError as e:
        log(str(e))
        return 2
    options.out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    results: list[ScenarioResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="hw-", dir="/var/tmp") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        if options.target:
            site = _target_site(options.target, options.c2 or "", work)
        else:
            lab = stack.enter_context(Lab(work))
            if needs_gateway(checked):
                lab.start_gateway()
            net_admin = any(s.mitigation is not None for s in checked)
            site = _lab_site(lab, options.dut, work, net_admin=net_admin)
        stack.callback(site.dut.close)  # before the lab goes: its container is in the lab
        scenarios = load_scenarios(
            SCENARIOS, options.scenarios, site.addresses, quick=options.quick
        )
        if options.target:
            scenarios = [_for_target(s) for s in scenarios]
        everything = _union(scenarios)
        for s in scenarios:
            results.append(run_scenario(s, site, everything if s.benign else _own(s)))
    benign_s = sum(s.deadline_s for s in scenarios if s.benign)
    meta = {
        "dut": "ssh" if options.target else options.dut,
        "quick": options.quick,
        "started": began,
        "took_s": round(time.time() - began, 1),
    }
    write_report(options.out, results, benign_s=benign_s, meta=meta)
    for line in summary(results):
        print(line)
    # Unexpected alarms during an attack are in the report (an exfiltration also moves
    # packets); the goals are every attack detected in time and a quiet benign load.
    ok = all(r.met for r in results)
    print(f"report: {options.out / 'report.json'}, {options.out / 'report.html'}")
    return 0 if ok else 1


def list_scenarios() -> int:
    # Profiles are checked with real addresses: "<c2>/32" would not be a CIDR.
    for s in load_scenarios(SCENARIOS, None, EXAMPLE_ADDRESSES, quick=False):
        expected = (
            ", ".join(
                f"{e.profile}/{e.behavior}" + (f" for {e.thing}" if e.thing else "")
                for e in s.expected
            )
            or "no violation"
        )
        print(f"{s.name}: {s.description} (expects {expected})")
    return 0

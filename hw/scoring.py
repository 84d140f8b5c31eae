"""How a scenario's run is judged: detected or not, the detection latency against its
goal, the false alarms. Pure: times, events and metrics come in as arguments.

Times are the rig's clock (epoch seconds). The agent's events carry the device's clock:
an event's time on the rig's clock is `violationEventTime - clock_offset_s`.

Which events count:
- An alarm is an event whose violationEventType is "in-alarm" (suppressed or not);
  "alarm-cleared" and "alarm-invalidated" end an alarm and never count as one.
- An expected entry is (profile, behavior, thing): an alarm matches it when the alarm's
  (profile, behavior) is the entry's and, when the entry names a thing, the alarm's
  thingName is that thing (a gateway's broker watch judges each MQTT client on its own
  and its events carry the client id as thingName); without a thing any thingName
  matches.
- An expected entry is detected when an alarm matching it is timed in
  [attack_start - TOLERANCE_S, attack_start + deadline_s]. Its latency is the first
  such alarm's time minus attack_start (slightly negative only within the tolerance).
- The goal (latency_goal_s, the largest among the expected entries) plus the
  scenario's lead_s: how long after attack_start the attack needs before it can be
  detected at all (a slow scan's 5th probe). Latencies still count from attack_start.
- A false alarm is an alarm timed in [span start, end] that matches no expected entry:
  another behavior's, or the expected behavior's for another thing than the one(s)
  the entries name. The span starts at attack_start (so the warm-up is not judged), or
  for the benign scenario at `start` (None: every alarm up to end counts: each scenario
  has a fresh store). In the benign scenario every alarm is a false alarm.

Blocking (a scenario whose [[mitigation.auto]] rules answer expected behaviors): the
device's connect-probe (hw/actors.py) tries the forbidden address every 0.1 s while the
attack runs and notes each attempt. The alarm is the earliest first alarm among the
expected entries with an automatic response. The block starts at the first of the
failed attempts that run without a success to the probe's last attempt, when that is
after the alarm less TOLERANCE_S (failures from earlier on are no block of this alarm:
the address was out of reach); block_s is its start minus the alarm's time. The
block's goal is one sampling interval + 1 s after the alarm. The scenario meets its goal
only when it also blocks within that: a connect that still succeeds after the goal, for
as long as the attack runs (also after an unblock, when the alarm cleared because the
block hid the connection), or no block at all, is a miss. Attempts before the alarm are
not judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.core.profile import Behavior, parse_profile

# How much earlier than attack_start an alarm may be timed and still be the attack's:
# the rig notes attack_start before it starts the attack, so only an error in the
# measured clock offset (half an SSH round trip) can put the attack's alarm earlier.
TOLERANCE_S = 0.5
SLACK_S = 1.0  # the goal: one sampling interval (or the window's end) + 1 s
IN_ALARM = "in-alarm"


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    expected: list[dict[str, str]]  # [{"profile", "behavior"[, "thing"]}]
    detected: bool  # every expected entry went in-alarm in time; benign: False
    latency_s: float | None  # max over expected of the first alarm's latency; None unless detected
    latencies_s: list[float | None]  # per expected, its first alarm's latency (None: missed)
    events: list[dict[str, Any]]  # the agent's events of this scenario (AWS shape)
    goal_s: float | None  # the latency goal (see latency_goal_s) + lead_s; None for benign
    met: bool  # detected and latency_s <= goal_s; benign: no false alarm
    false_alarms: int  # alarms no expected entry matches (benign: every alarm)
    attack_start: float | None  # the rig's clock; None for benign
    end: float  # the rig's clock
    metrics: list[dict[str, Any]]  # the metrics history envelopes (for the plots)
    profiles: list[dict[str, Any]]  # the profiles the agent ran under
    benign: bool
    clock_offset_s: float  # device clock minus the rig's
    lead_s: float = 0.0  # counted into goal_s: after attack_start, before it can be seen
    blocking: bool = False  # an automatic response answers an expected behavior
    block_s: float | None = None  # after the alarm, when connects started failing for good
    block_goal_s: float | None = None  # one interval + 1 s; None unless blocking
    blocked_at: float | None = None  # the rig's clock: the block's start (None: no block)
    attempts: list[tuple[float, bool]] = field(default_factory=list)  # (rig time, connected)
    # The agent's mitigation action executions (AWS's shape), what the block did or why not
    executions: list[dict[str, Any]] = field(default_factory=list)
    blocked_left: list[str] = field(default_factory=list)  # still blocked at the end


class _Expected(Protocol):
    @property
    def profile(self) -> str: ...
    @property
    def behavior(self) -> str: ...
    @property
    def thing(self) -> str | None: ...


class ScenarioLike(Protocol):
    """What scoring reads of hw.scenario.Scenario."""

    @property
    def name(self) -> str: ...
    @property
    def expected(self) -> Sequence[_Expected]: ...
    @property
    def profiles(self) -> Sequence[dict[str, Any]]: ...
    @property
    def deadline_s(self) -> float: ...
    @property
    def interval_s(self) -> float: ...
    @property
    def benign(self) -> bool: ...
    @property
    def lead_s(self) -> float: ...
    @property
    def mitigation(self) -> Mapping[str, Any] | None: ...


def parse_attempts(text: str, clock_offset_s: float = 0.0) -> list[tuple[float, bool]]:
    """A connect-probe's result file (lines "<epoch start> ok" or "<epoch start> fail
    <why>", on the device's clock) as (rig time, connected), in order. ValueError naming
    the line for anything else."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split(maxsplit=2)
        try:
            if len(words) < 2 or words[1] not in ("ok", "fail"):
                raise ValueError
            out.append((float(words[0]) - clock_offset_s, words[1] == "ok"))
        except ValueError:
            raise ValueError(f"connect-probe result line {n}: {line!r}") from None
    return out


def block_start(attempts: Sequence[tuple[float, bool]], alarm: float) -> float | None:
    """When the block started (module docstring: Blocking): the first of the failed
    attempts that run without a success to the last one; None when the last attempt
    succeeded, or there was none, or the failures began before alarm - TOLERANCE_S
    (the connects failed already: not this alarm's block)."""
    start = None
    for t, connected in sorted(attempts):
        if connected:
            start = None
        elif start is None:
            start = t
    return start if start is not None and start >= alarm - TOLERANCE_S else None


def window_end(t: float, duration_s: float) -> float:
    """The end of the window holding `t`, aligned as the agent aligns them: windows are
    [kD, (k+1)D) in epoch seconds of the device's clock (agent/core/evaluator.py)."""
    return (t // duration_s + 1) * duration_s


def behaviors(profiles: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Behavior]:
    """(profile name, behavior name) -> the parsed behavior, for every profile."""
    out: dict[tuple[str, str], Behavior] = {}
    for doc in profiles:
        profile = parse_profile(doc)
        for b in profile.behaviors:
            out[(profile.name, b.name)] = b
    return out


def latency_goal_s(
    behavior: Behavior, attack_start: float, interval_s: float, clock_offset_s: float = 0.0
) -> float:
    """The latest latency that meets the issue's goal for one behavior.

    Without durationSeconds: one sampling interval + 1 s (the first sample after the
    attack starts sees it, and its datapoint is timed at the sample).

    With durationSeconds D: the window's end + 1 s, counted from attack_start. The
    window is the one holding the first sample that sees the attack, at the latest
    attack_start + interval_s, aligned on the device's clock; the datapoint is timed at
    that window's end. So the goal is window_end(attack_start + interval_s) -
    attack_start + 1 s: the end of the first window that ends after the attack start,
    or of the next one when the attack starts within one interval of a window's end
    (its first sample may fall in the next window). The threshold must be crossed by
    the traffic inside that window: a burst too small to cross it in what remains of
    the window crosses it only in the next one and misses the goal; a scenario's burst
    should cross its threshold within one sampling interval.

    consecutiveDatapointsToAlarm N > 1 adds N - 1 datapoints (intervals, or windows)."""
    criteria = behavior.criteria
    more = (criteria.to_alarm - 1) if criteria is not None else 0
    duration = criteria.duration_s if criteria is not None else None
    if duration is None:
        return interval_s * (1 + more) + SLACK_S
    device_start = attack_start + clock_offset_s
    first_end = window_end(device_start + interval_s, duration)
    return first_end - device_start + more * duration + SLACK_S


def event_key(event: Mapping[str, Any]) -> tuple[str, str]:
    return (event["securityProfileName"], event["behavior"]["name"])


# An expected entry: (profile, behavior, thing), thing None for any thingName; a
# (profile, behavior) pair is the same with no thing.
Want = tuple[str, str, str | None]


def want(entry: tuple[str, str] | Want) -> Want:
    """`entry` as (profile, behavior, thing)."""
    return (entry[0], entry[1], entry[2] if len(entry) == 3 else None)


def matches(entry: Want, event: Mapping[str, Any]) -> bool:
    """Whether `event` is of `entry`'s behavior and, when it names one, its thing."""
    profile, behavior, thing = entry
    return event_key(event) == (profile, behavior) and (
        thing is None or event.get("thingName") == thing
    )


def score(
    *,
    name: str,
    expected: Sequence[tuple[str, str] | Want],
    profiles: Sequence[dict[str, Any]],
    interval_s: float,
    deadline_s: float,
    benign: bool,
    attack_start: float | None,
    end: float,
    events: Sequence[dict[str, Any]],
    metrics: Sequence[dict[str, Any]],
    clock_offset_s: float = 0.0,
    start: float | None = None,
    lead_s: float = 0.0,
    auto: Sequence[tuple[str, str]] = (),
    attempts: Sequence[tuple[float, bool]] = (),
    executions: Sequence[dict[str, Any]] = (),
    blocked_left: Sequence[str] = (),
) -> ScenarioResult:
    """Judge one scenario's run (module docstring: which events count). `expected` are
    (profile, behavior) pairs or (profile, behavior, thing) triples (thing None: any
    thingName), each behavior in `profiles`; a benign scenario has none, no
    attack_start and no lead_s. `auto`: the (profile, behavior) pairs with an automatic
    response; when one is expected, the block is judged from the connect-probe's
    `attempts` (rig time, connected); `executions` (the agent's) and `blocked_left` (what
    its firewall still blocked at the end) are kept for the report."""
    if benign != (attack_start is None) or benign == bool(expected):
        raise ValueError(
            f"scenario {name}: a benign scenario has no expected violation and no"
            " attack_start; any other has both"
        )
    if not 0 <= lead_s <= deadline_s or (benign and lead_s):
        raise ValueError(
            f"scenario {name}: lead_s must be from 0 to deadline_s ({deadline_s:g}), and 0"
            f" for a benign scenario; got {lead_s!r}"
        )
    wanted = [want(e) for e in expected]
    alarms = sorted(
        (
            (float(e["violationEventTime"]) - clock_offset_s, e)
            for e in events
            if e.get("violationEventType") == IN_ALARM
        ),
        key=lambda a: a[0],
    )
    span_start = attack_start if attack_start is not None else start
    lo = -math.inf if span_start is None else span_start
    false_alarms = sum(
        1 for t, e in alarms if lo <= t <= end and not any(matches(w, e) for w in wanted)
    )
    latency: float | None = None
    latencies: list[float | None] = []
    answered: list[float] = []  # the first alarms of entries with an automatic response
    goal: float | None = None
    detected = False
    if attack_start is not None:
        known = behaviors(profiles)
        goals: list[float] = []
        for w in wanted:
            key = w[:2]
            if key not in known:
                raise ValueError(
                    f"scenario {name}: expected behavior {key[1]!r} is not in profile"
                    f" {key[0]!r} (profiles: {sorted({p for p, _ in known})})"
                )
            goals.append(latency_goal_s(known[key], attack_start, interval_s, clock_offset_s))
            first = next(
                (
                    (t, e)
                    for t, e in alarms
                    if matches(w, e)
                    and attack_start - TOLERANCE_S <= t <= attack_start + deadline_s
                ),
                None,
            )
            latencies.append(None if first is None else first[0] - attack_start)
            if first is not None and w[:2] in auto:
                answered.append(first[0])
        goal = max(goals) + lead_s
        found = [x for x in latencies if x is not None]
        detected = len(found) == len(expected)
        latency = max(found) if detected else None
    met = (
        (false_alarms == 0)
        if benign
        else (latency is not None and goal is not None and latency <= goal)
    )
    blocking = any(w[:2] in auto for w in wanted)
    block_s: float | None = None
    blocked_at: float | None = None
    block_goal_s = interval_s + SLACK_S if blocking else None
    if blocking:
        if answered:
            alarm = min(answered)
            blocked_at = block_start(attempts, alarm)
            block_s = None if blocked_at is None else blocked_at - alarm
        met = met and block_s is not None and block_goal_s is not None and block_s <= block_goal_s
    return ScenarioResult(
        name=name,
        expected=[
            {"profile": p, "behavior": b, **({} if t is None else {"thing": t})}
            for p, b, t in wanted
        ],
        detected=detected,
        latency_s=latency,
        latencies_s=latencies,
        events=list(events),
        goal_s=goal,
        met=met,
        false_alarms=false_alarms,
        attack_start=attack_start,
        end=end,
        metrics=list(metrics),
        profiles=list(profiles),
        benign=benign,
        clock_offset_s=clock_offset_s,
        lead_s=lead_s,
        blocking=blocking,
        block_s=block_s,
        block_goal_s=block_goal_s,
        blocked_at=blocked_at,
        attempts=list(attempts),
        executions=list(executions),
        blocked_left=list(blocked_left),
    )


def score_scenario(
    scenario: ScenarioLike,
    attack_start: float | None,
    end: float,
    events: Sequence[dict[str, Any]],
    metrics: Sequence[dict[str, Any]],
    *,
    clock_offset_s: float = 0.0,
    profiles: Sequence[dict[str, Any]] | None = None,
    start: float | None = None,
    attempts: Sequence[tuple[float, bool]] = (),
    executions: Sequence[dict[str, Any]] = (),
    blocked_left: Sequence[str] = (),
) -> ScenarioResult:
    """`score` with the values read from a hw.scenario.Scenario. `profiles`: those the
    agent ran under when not the scenario's own (the benign scenario runs under every
    scenario's; the report plots their metrics); `attempts`: its connect-probe's, on the
    rig's clock (parse_attempts)."""
    mitigation = scenario.mitigation or {}
    return score(
        name=scenario.name,
        expected=[(e.profile, e.behavior, e.thing) for e in scenario.expected],
        profiles=list(scenario.profiles if profiles is None else profiles),
        interval_s=scenario.interval_s,
        deadline_s=scenario.deadline_s,
        benign=scenario.benign,
        attack_start=attack_start,
        end=end,
        events=events,
        metrics=metrics,
        clock_offset_s=clock_offset_s,
        start=start,
        lead_s=scenario.lead_s,
        auto=[(r["profile"], r["behavior"]) for r in mitigation.get("auto", [])],
        attempts=attempts,
        executions=executions,
        blocked_left=blocked_left,
    )


def expected_text(entry: Mapping[str, str]) -> str:
    """An expected entry of a ScenarioResult in words: profile/behavior[ for thing]."""
    thing = f" for {entry['thing']}" if "thing" in entry else ""
    return f"{entry['profile']}/{entry['behavior']}{thing}"


TABLE_HEADER = (
    "scenario",
    "expected",
    "detected",
    "latency (s)",
    "goal (s)",
    "met",
    "false alarms",
    "blocked (s)",
)


def table_rows(results: Sequence[ScenarioResult]) -> list[tuple[str, ...]]:
    """One row of cells per scenario, under TABLE_HEADER (for the note and the page)."""
    rows: list[tuple[str, ...]] = []
    for r in results:
        expected = ", ".join(expected_text(e) for e in r.expected)
        goal = "no alarm" if r.goal_s is None else f"{r.goal_s:.1f}"
        if r.lead_s:
            goal += f" (lead {r.lead_s:g})"
        rows.append(
            (
                r.name,
                expected or "none (benign)",
                "-" if r.benign else ("yes" if r.detected else "no"),
                "-" if r.latency_s is None else f"{r.latency_s:.1f}",
                goal,
                "yes" if r.met else "NO",
                str(r.false_alarms),
                _block_cell(r),
            )
        )
    return rows


def _block_cell(r: ScenarioResult) -> str:
    """How soon after the alarm the connects failed, against the block's goal."""
    if not r.blocking or r.block_goal_s is None:
        return "-"
    block = "not blocked" if r.block_s is None else f"{r.block_s:.1f}"
    return f"{block} (goal {r.block_goal_s:.1f})"


def summary(results: Sequence[ScenarioResult]) -> list[str]:
    """The results as the lines of a Markdown table."""
    lines = [TABLE_HEADER, tuple("---" for _ in TABLE_HEADER), *table_rows(results)]
    return ["| " + " | ".join(cells) + " |" for cells in lines]

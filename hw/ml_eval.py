"""python -m hw.ml_eval [--seed N] [--out DIR] [--quick]

How well the ML Detect model (agent/core/ml.py) finds anomalies in realistic device
traffic, against the best static threshold chosen with hindsight. A simulation, no
network: traffic with a daily cycle (a home hub: a morning and an evening peak on
weekdays, a broad afternoon on weekends), noise, benign bursts (uploads at random
waking hours), a check-in every 15 minutes and a nightly job, for six device-side
metrics (the last two from the packet capture: the TCP connections the device opened,
agent/core/outbound.py, summed over a window as the agent sums it; and how many
destinations it connects to at a regular interval, agent/core/periodic.py, fed each
connection's time and destination). Each metric's model
trains on 14 days; then a test week holds injected anomalies (a doubled upload at
night, a new beacon, a slow ramp of exfiltration) and untouched benign days. Every test
datapoint is scored at each confidence level, and the static rule `value >= c` is given,
per metric, the c with the best F1 on the very test data it is judged on.

Two ways of judging, each trained and tested on its own datapoints: each datapoint alone
(how the agent judged before), and what the agent does now, the rolling 5-minute
aggregate at every datapoint (agent.core.ml_window.Window, the rule core's own code:
counters summed, gauges at their largest). The beacon is also shown on the connections
opened and on the periodic destinations alone, by night (00:00-06:00 local) and by day.

Prints a markdown report and writes it to DIR/ml-eval.md (with --out). --quick: 30 s
datapoints and a 4-day test (benign, night doubling, benign, beacon), as the test runs
it."""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.core.ml import CONFIDENCE_LEVELS, Drift, Model, Trainer
from agent.core.ml_window import WINDOW_S, Window, metric_kind
from agent.core.periodic import LIVE_PERIODS, Periodicity

DAY = 86_400.0
HOUR = 3_600.0
# Monday 2026-01-05 00:00 local time at UTC+1 (CET): the training's first instant.
LOCAL_START = 1_767_571_200.0
UTC_OFFSET_S = 3_600
BYTES_OUT = "aws:all-bytes-out"
PACKETS_OUT = "aws:all-packets-out"
CONNECTIONS = "aws:num-established-tcp-connections"
LISTENING = "aws:num-listening-tcp-ports"
OPENED = "num_connections_opened"  # [capture.connections]: a custom metric, a count
PERIODIC = "num_periodic_destinations"  # [capture.connections]: a custom metric, a gauge
COUNTS = frozenset({OPENED})  # custom metrics that are counts (service.detect.count_metrics)
METRICS = (BYTES_OUT, PACKETS_OUT, CONNECTIONS, LISTENING, OPENED, PERIODIC)
COUNTERS = (BYTES_OUT, PACKETS_OUT, OPENED)
GAUGES = (CONNECTIONS, LISTENING, PERIODIC)
BEACON_METRICS = (OPENED, PERIODIC)  # the beacon's recall on each is shown by night and day
STATIC_F1 = "static, best F1"
STATIC_QUIET = "static, quiet benign days"
DETECTORS = (*CONFIDENCE_LEVELS, STATIC_F1, STATIC_QUIET)
TICK_S = 10.0  # the traffic's own step; datapoints sum (counters) or sample (gauges) it
NIGHT_H = 6.0  # the beacon on BEACON_METRICS is shown apart before this local hour
# Flags on a metric this long after an anomaly of it ended are its alarm's tail (an hourly
# drift takes hours to end), counted apart from the benign days' false alarms.
TAIL_S = 12 * 3600.0
# Connections the device opens, besides its bursts and nightly job: per 10 s at full
# activity (apps, updates, cloud calls while people are about), and a background of a
# few an hour at any time (a cloud check-in, an OCSP or time-server query over TCP).
OPENED_PER_TICK = 0.4
BACKGROUND_PER_HOUR = 2.0
# Where they go: people's to a pool of CDN and cloud addresses, the background to a few
# services; a cloud check-in every CHECKIN_S (±2%) and the nightly sync each to their own.
USER_DESTINATIONS = 40
BACKGROUND_DESTINATIONS = 3
CHECKIN_S = 900.0
BEACON_JITTER = 0.2  # the beacon sleeps its period times uniform(1 - this, 1 + this)


@dataclass(frozen=True)
class Anomaly:
    name: str
    what: str
    metrics: tuple[str, ...]
    day: int  # of the test period
    start_h: float  # local hours from that day's midnight
    hours: float


@dataclass(frozen=True)
class Setting:
    interval_s: float
    train_days: int
    test_days: int
    anomalies: tuple[Anomaly, ...]
    beacon_every_s: float = 300.0
    ramp_bytes: float = 6_000.0  # added per 10 s at the ramp's end
    window_s: float = 0.0  # judge the rolling aggregate over this long, not each datapoint
    # (metric, window_s): a metric whose model has another window (`train --window-s`)
    windows: tuple[tuple[str, float], ...] = ()

    def window_of(self, metric: str) -> float:
        return dict(self.windows).get(metric, self.window_s) if self.window_s else 0.0

    @property
    def benign_days(self) -> list[int]:
        busy: set[int] = set()
        for a in self.anomalies:
            first = a.day + math.floor(a.start_h / 24)
            last = a.day + math.ceil((a.start_h + a.hours) / 24) - 1
            busy.update(range(first, last + 1))
        return [d for d in range(self.test_days) if d not in busy]


NIGHT_DOUBLING = Anomaly(
    "night doubling", "bytes and packets out x2, 01:00-04:00", (BYTES_OUT, PACKETS_OUT), 1, 1, 3
)
BEACON = "beacon"
BEACON_24H = Anomaly(
    BEACON,
    "a new connection and 800 B out every 5 min ±20%, 24 h",
    (BYTES_OUT, PACKETS_OUT, CONNECTIONS, OPENED),  # PERIODIC: its whole time, see _ticks
    3,
    0,
    24,
)
FULL = Setting(
    interval_s=10.0,
    train_days=14,
    test_days=7,
    anomalies=(
        NIGHT_DOUBLING,
        BEACON_24H,
        Anomaly(
            "slow ramp",
            "bytes out + 0 -> 6 kB per 10 s over 48 h (packets alike)",
            (BYTES_OUT, PACKETS_OUT),
            4,
            0,
            48,
        ),
    ),
)
QUICK = Setting(interval_s=30.0, train_days=14, test_days=4, anomalies=(NIGHT_DOUBLING, BEACON_24H))


def _bump(h: float, centre: float, width: float) -> float:
    d = abs(h - centre) % 24
    d = min(d, 24 - d)
    return math.exp(-0.5 * (d / width) ** 2)


def activity(h: float, weekend: bool) -> float:
    """How busy the household is at local hour h (0..1)."""
    if weekend:
        return 0.03 + 0.7 * _bump(h, 14.5, 4.0) + 0.5 * _bump(h, 21.0, 1.5)
    return 0.03 + 0.45 * _bump(h, 7.5, 0.8) + 0.15 * _bump(h, 13.0, 3.0) + 0.9 * _bump(h, 20.5, 1.8)


def _poisson(rng: random.Random, lam: float) -> int:
    n, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return n
        n += 1


@dataclass
class _Day:
    """A day's benign events: bursts (start, end, bytes per 10 s, extra connections)."""

    bursts: list[tuple[float, float, float, int]] = field(default_factory=list)


def _plan_day(rng: random.Random, midnight: float, weekend: bool) -> _Day:
    day = _Day()
    first = 9.0 if weekend else 7.0
    for _ in range(_poisson(rng, 4.0)):  # uploads while people are awake
        start = midnight + rng.uniform(first, 23.5) * HOUR
        day.bursts.append(
            (start, start + rng.uniform(60, 600), rng.uniform(2e4, 2e5), rng.randint(1, 4))
        )
    start = midnight + 5 * HOUR + rng.uniform(0, 120)  # the nightly job (a sync)
    day.bursts.append((start, start + rng.uniform(300, 600), 3e4, 1))
    return day


@dataclass(frozen=True)
class Point:
    t: float  # UTC
    values: dict[str, float]
    labels: dict[str, str]  # metric -> the anomaly that changed its value


def _beacon_times(setting: Setting, rng: random.Random) -> list[float]:
    """The beacon's connections (local time): every beacon_every_s, jittered."""
    test_start = LOCAL_START + setting.train_days * DAY
    times: list[float] = []
    for a in setting.anomalies:
        if a.name == BEACON:
            t = test_start + a.day * DAY + a.start_h * HOUR
            while t < test_start + a.day * DAY + (a.start_h + a.hours) * HOUR:
                times.append(t)
                t += setting.beacon_every_s * rng.uniform(1 - BEACON_JITTER, 1 + BEACON_JITTER)
    return times


def _ticks(setting: Setting, rng: random.Random, opened_rng: random.Random) -> Iterator[Point]:
    """The traffic every TICK_S from the training start to the end of the test period.
    The connections opened draw on their own generator, so the other metrics' traffic is
    the same as without them; each connection is a contact of its destination for the
    periodic destinations, which the device had run long enough to know its check-in
    and its nightly sync by."""
    days = setting.train_days + setting.test_days
    test_start = LOCAL_START + setting.train_days * DAY
    periodicity: Periodicity[str] = Periodicity()
    for d in range(-10, 0):
        periodicity.add(LOCAL_START + d * DAY + 5 * HOUR, "sync")
    checkin = LOCAL_START - 10 * CHECKIN_S
    beacons = deque(_beacon_times(setting, opened_rng))
    beacon_tail = LIVE_PERIODS * setting.beacon_every_s * (1 + BEACON_JITTER)
    plan: _Day | None = None
    for i in range(round(days * DAY / TICK_S)):
        local = LOCAL_START + i * TICK_S
        day_index, into = divmod(i * TICK_S, DAY)
        weekend = (int(day_index) % 7) >= 5  # the training starts on a Monday
        if into < TICK_S:
            plan = _plan_day(rng, local - into, weekend)
        assert plan is not None
        act = activity(into / HOUR, weekend)
        tele = 1500.0 * rng.uniform(0.9, 1.1)  # telemetry
        user = act * 4e4 * rng.lognormvariate(0, 0.5)  # what people do
        conns = 2 + _poisson(rng, (0.1 + 5 * act))
        # (time, destination) of each connection opened in the tick
        contacts: list[tuple[float, str]] = []
        for _ in range(_poisson(opened_rng, BACKGROUND_PER_HOUR * TICK_S / HOUR)):
            where = f"service-{opened_rng.randrange(BACKGROUND_DESTINATIONS)}"
            contacts.append((local + opened_rng.uniform(0, TICK_S), where))
        # activity above its night floor (0.03): near nothing at night
        for _ in range(_poisson(opened_rng, OPENED_PER_TICK * max(act - 0.03, 0))):
            where = f"cdn-{opened_rng.randrange(USER_DESTINATIONS)}"
            contacts.append((local + opened_rng.uniform(0, TICK_S), where))
        while checkin < local + TICK_S:
            contacts.append((checkin, "checkin"))
            checkin += CHECKIN_S * opened_rng.uniform(0.98, 1.02)
        for n, (start, end, rate, extra) in enumerate(plan.bursts):
            if start < local + TICK_S and local < end:
                user += rate * rng.uniform(0.8, 1.2)
                conns += extra
            if local <= start < local + TICK_S:  # a burst's connections open as it starts
                last = n == len(plan.bursts) - 1
                where = "sync" if last else f"cdn-{opened_rng.randrange(USER_DESTINATIONS)}"
                contacts += [(start, where)] * extra
        labels: dict[str, str] = {}
        for a in setting.anomalies if local >= test_start else ():
            a_start = test_start + a.day * DAY + a.start_h * HOUR
            a_end = a_start + a.hours * HOUR
            if a.name == BEACON and a_start <= local < a_end + beacon_tail:
                labels[PERIODIC] = BEACON  # from its start until it has missed its beats
            if not a_start <= local < a_end:
                continue
            if a.name == "night doubling":
                tele, user = 2 * tele, 2 * user
            elif a.name == BEACON:
                if not (beacons and beacons[0] < local + TICK_S):
                    continue  # it connects for one tick every beacon_every_s or so
                contacts.append((beacons.popleft(), BEACON))
                conns += 1
                user += 800
            elif a.name == "slow ramp":
                user += setting.ramp_bytes * (local - a_start) / (a_end - a_start)
            labels.update(dict.fromkeys(a.metrics, a.name))
        for t, where in sorted(contacts):
            periodicity.add(t, where)
        packets = tele / 300 + user / 1100 * rng.uniform(0.8, 1.2)
        yield Point(
            local - UTC_OFFSET_S,
            {
                BYTES_OUT: tele + user,
                PACKETS_OUT: packets,
                CONNECTIONS: conns,
                LISTENING: 3,
                OPENED: len(contacts),
                PERIODIC: len(periodicity.periodic(local + TICK_S)),
            },
            labels,
        )


def traffic(setting: Setting, rng: random.Random, opened_rng: random.Random) -> Iterator[Point]:
    """Datapoints every interval_s: the counters summed over it, the gauges as sampled at
    its end (a gauge misses a beacon's connection that came and went in between)."""
    per = round(setting.interval_s / TICK_S)
    ticks = _ticks(setting, rng, opened_rng)
    while chunk := list(itertools.islice(ticks, per)):
        last = chunk[-1]
        labels = {m: a for p in chunk for m, a in p.labels.items() if m not in GAUGES}
        labels.update({m: a for m, a in last.labels.items() if m in GAUGES})
        values: dict[str, float] = {m: round(sum(p.values[m] for p in chunk)) for m in COUNTERS}
        values.update({m: last.values[m] for m in GAUGES})
        yield Point(chunk[0].t, values, labels)


def windowed(setting: Setting, points: Iterator[Point]) -> Iterator[Point]:
    """With window_s: at each datapoint, each metric's aggregate over its window (window_s
    unless `windows` says otherwise) as the agent makes it (agent.core.ml_window.Window),
    anomalous on a metric if any datapoint in its window was; none until every window is
    full."""
    if not setting.window_s:
        yield from points
        return
    lengths = {m: setting.window_of(m) for m in METRICS}
    windows = {m: Window(metric_kind(m, COUNTS), lengths[m]) for m in METRICS}
    longest = max(lengths.values())
    recent: deque[Point] = deque()
    for p in points:
        values = {m: windows[m].add(p.t, v) for m, v in p.values.items()}
        recent.append(p)
        while recent[0].t <= p.t - longest:
            recent.popleft()
        full = {m: v for m, v in values.items() if v is not None}
        if len(full) == len(values):  # the metrics are sampled together
            labels = {m: a for q in recent for m, a in q.labels.items() if q.t > p.t - lengths[m]}
            yield Point(p.t, full, labels)


def _part(t: float) -> str:
    """ "night" before NIGHT_H local time, else "day"."""
    return "night" if (t + UTC_OFFSET_S) % DAY < NIGHT_H * HOUR else "day"


@dataclass
class Tally:
    """Flags of one detector (a confidence level or the static rule) over the test."""

    tp: int = 0
    fp: int = 0
    benign_fp: int = 0  # false flags on the benign days, but in a tail
    benign_alarms: int = 0  # runs of false flags there (a metric's consecutive flags)
    tail_fp: int = 0  # flags within TAIL_S after an anomaly of their metric ended
    hit: dict[str, int] = field(default_factory=dict)  # anomaly -> flagged datapoints
    first: dict[str, float] = field(default_factory=dict)  # anomaly -> first flag's time
    # (anomaly, metric, night or day) -> flagged datapoints; (anomaly, metric) -> first flag
    hit_on: dict[tuple[str, str, str], int] = field(default_factory=dict)
    first_on: dict[tuple[str, str], float] = field(default_factory=dict)
    _last: dict[str, bool] = field(default_factory=dict)

    def add(
        self, metric: str, t: float, flagged: bool, label: str | None, benign: bool, tail: bool
    ) -> None:
        if flagged and label is not None:
            self.tp += 1
            self.hit[label] = self.hit.get(label, 0) + 1
            self.first.setdefault(label, t)
            key = (label, metric, _part(t))
            self.hit_on[key] = self.hit_on.get(key, 0) + 1
            self.first_on.setdefault((label, metric), t)
        elif flagged:
            self.fp += 1
            if tail:
                self.tail_fp += 1
            elif benign:
                self.benign_fp += 1
                self.benign_alarms += not self._last.get(metric, False)
        self._last[metric] = flagged and label is None and benign and not tail

    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0


def best_static(values: Sequence[tuple[float, bool]]) -> float:
    """The c for which `value >= c` has the best F1 on these (value, anomalous) pairs
    (inf: no anomalies, never flag)."""
    positives = sum(1 for _, a in values if a)
    if positives == 0:
        return math.inf
    ordered = sorted(values, key=lambda va: -va[0])
    best, best_c = -1.0, math.inf
    tp = fp = 0
    for i, (v, a) in enumerate(ordered):
        tp += a
        fp += not a
        if i + 1 < len(ordered) and ordered[i + 1][0] == v:
            continue  # one c takes every equal value
        f1 = 2 * tp / (2 * tp + fp + (positives - tp))
        if f1 > best:
            best, best_c = f1, v
    return best_c


@dataclass
class Result:
    title: str
    short: str  # its name in the comparison table
    setting: Setting
    seed: int
    models: dict[str, Model]
    tallies: dict[str, Tally]  # level or "static" -> its flags
    labelled: dict[str, int]  # anomaly -> labelled datapoints
    labelled_on: dict[tuple[str, str, str], int]  # (anomaly, metric, night or day) -> them
    anomaly_start: dict[str, float]
    statics: dict[str, dict[str, float]]  # static detector -> metric -> c
    train_s: float
    score_s: float
    test_points: int


def evaluate(title: str, setting: Setting, seed: int, short: str = "") -> Result:
    rng = random.Random(seed)
    test_start_utc = LOCAL_START + setting.train_days * DAY - UTC_OFFSET_S
    # a model's window (the per-datapoint one unused)
    window_s = {m: setting.window_of(m) or WINDOW_S for m in METRICS}
    trainers = {m: Trainer(LOCAL_START - UTC_OFFSET_S, UTC_OFFSET_S, window_s[m]) for m in METRICS}
    points = windowed(setting, traffic(setting, rng, random.Random(f"opened-{seed}")))
    cpu = time.process_time()
    test: list[Point] = []
    for p in points:
        if p.t >= test_start_utc:
            test.append(p)
            continue
        for m in METRICS:
            trainers[m].add(p.t, p.values[m])
    models: dict[str, Model] = {}
    for m, tr in trainers.items():
        # the first datapoint comes when every window is full: its 14 days end so late
        model = tr.build(test_start_utc + max(map(setting.window_of, METRICS)))
        if model is None:
            raise SystemExit(f"ml_eval: no model for {m} after {tr.datapoints} datapoints")
        models[m] = model
    train_s = time.process_time() - cpu

    benign = {test_start_utc + d * DAY for d in setting.benign_days}

    def on_benign_day(t: float) -> bool:
        return t - (t - test_start_utc) % DAY in benign

    labelled: dict[str, int] = {}
    labelled_on: dict[tuple[str, str, str], int] = {}
    for p in test:
        for m, name in p.labels.items():
            labelled[name] = labelled.get(name, 0) + 1
            key = (name, m, _part(p.t))
            labelled_on[key] = labelled_on.get(key, 0) + 1
    statics = {
        STATIC_F1: {m: best_static([(p.values[m], m in p.labels) for p in test]) for m in METRICS},
        # flags above the largest value of the benign days: no false alarm there
        STATIC_QUIET: {
            m: math.nextafter(max(p.values[m] for p in test if on_benign_day(p.t)), math.inf)
            for m in METRICS
        },
    }
    ends = [
        (test_start_utc + a.day * DAY + (a.start_h + a.hours) * HOUR, a) for a in setting.anomalies
    ]

    def in_tail(t: float, m: str) -> bool:
        return any(
            end <= t < end + TAIL_S and (m in a.metrics or (a.name == BEACON and m == PERIODIC))
            for end, a in ends
        )

    tallies = {name: Tally() for name in DETECTORS}
    drifts = {m: Drift() for m in METRICS}  # the hourly drift, from the test's start
    cpu = time.process_time()
    for p in test:
        is_benign = on_benign_day(p.t)
        for m in METRICS:
            v, label, model = p.values[m], p.labels.get(m), models[m]
            tail = label is None and in_tail(p.t, m)
            drifts[m].add(model, p.t, v)
            for level in CONFIDENCE_LEVELS:
                flagged = model.anomalous(p.t, v, level) or model.drifting(drifts[m].cusum, level)
                tallies[level].add(m, p.t, flagged, label, is_benign, tail)
            for name, cs in statics.items():
                tallies[name].add(m, p.t, v >= cs[m], label, is_benign, tail)
    score_s = time.process_time() - cpu
    starts = {a.name: test_start_utc + a.day * DAY + a.start_h * HOUR for a in setting.anomalies}
    return Result(
        title,
        short or title,
        setting,
        seed,
        models,
        tallies,
        labelled,
        labelled_on,
        starts,
        statics,
        train_s,
        score_s,
        len(test),
    )


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * HOUR:
        return f"{s / 60:.0f} min"
    return f"{s / HOUR:.1f} h"


def _found(r: Result, detector: str, anomaly: str) -> str:
    """Recall of one anomaly and the time to its first flag, or "missed"."""
    t = r.tallies[detector]
    hit = t.hit.get(anomaly, 0)
    if hit == 0:
        return "missed"
    return (
        f"{hit / r.labelled[anomaly]:.1%}, {_duration(t.first[anomaly] - r.anomaly_start[anomaly])}"
    )


def _found_on(r: Result, detector: str, anomaly: str, metric: str, part: str) -> str:
    """Recall of one anomaly on one metric by night or by day ("missed" when none), and
    by night the time from its start to its first flag on that metric."""
    t = r.tallies[detector]
    hit = t.hit_on.get((anomaly, metric, part), 0)
    if hit == 0:
        return "missed"
    share = f"{hit / r.labelled_on[(anomaly, metric, part)]:.1%}"
    if part == "day":
        return share
    return f"{share}, {_duration(t.first_on[(anomaly, metric)] - r.anomaly_start[anomaly])}"


PARTS = (("night", f"00-{NIGHT_H:02.0f} h"), ("day", f"{NIGHT_H:02.0f}-24 h"))


def compare(results: Sequence[Result]) -> str:
    """One table over runs: per detector of each run, each anomaly's recall and time to
    the first flag, the beacon's on BEACON_METRICS by night and by day, and the false
    alarms on the benign days."""
    anomalies = [a.name for a in results[0].setting.anomalies]
    beacon = [(m, part, hours) for m in BEACON_METRICS for part, hours in PARTS]
    if BEACON not in anomalies:
        beacon = []
    heads = [*anomalies, *(f"beacon on {m}, {hours}" for m, _, hours in beacon)]
    lines = [
        "| judged | detector | "
        + " | ".join(heads)
        + " | false alarms (flags) on benign days | flags in the 12 h after an anomaly |",
        "|---|---|" + "---|" * (len(heads) + 2),
    ]
    for r in results:
        for name in DETECTORS:
            t = r.tallies[name]
            found = [_found(r, name, a) for a in anomalies]
            found += [_found_on(r, name, BEACON, m, part) for m, part, _ in beacon]
            cells = " | ".join(found)
            lines.append(
                f"| {r.short} | {name} | {cells} | {t.benign_alarms} ({t.benign_fp}) |"
                f" {t.tail_fp} |"
            )
    return "\n".join(lines) + "\n"


def report(r: Result) -> str:
    """A section of markdown: the run's setting and its tables."""
    st = r.setting
    total = sum(r.labelled.values())
    judged = (
        f"the sum (counters) or largest value (gauges) over the last {st.window_s:.0f} s,"
        f" at every datapoint of {st.interval_s:.0f} s"
        if st.window_s
        else f"each datapoint of {st.interval_s:.0f} s"
    )
    for m, w in st.windows:
        judged += f" ({m}: over the last {w:.0f} s)"
    lines = [
        f"## {r.title}",
        "",
        f"Seed {r.seed}; judged: {judged}; trained on {st.train_days} days, tested on "
        f"{st.test_days} days ({r.test_points} datapoints a metric); benign test days: "
        f"{', '.join(str(d) for d in st.benign_days)} (day 0 is a Monday).",
        "",
        "| detector | precision | recall | false flags on benign days | false alarms "
        "(runs of flags) on benign days | flags in the 12 h after an anomaly |",
        "|---|---|---|---|---|---|",
    ]
    for name in DETECTORS:
        t = r.tallies[name]
        lines.append(
            f"| {name} | {t.precision():.1%} | {t.tp / total:.1%} | {t.benign_fp} | "
            f"{t.benign_alarms} | {t.tail_fp} |"
        )
    lines += [
        "",
        "Per anomaly: recall (the share of its datapoints flagged), then the time from its "
        "start to the first flag.",
        "",
        "| anomaly | datapoints | " + " | ".join(DETECTORS) + " |",
        "|---|---|" + "---|" * len(DETECTORS),
    ]
    for a in st.anomalies:
        cells = " | ".join(_found(r, name, a.name) for name in DETECTORS)
        lines.append(f"| {a.name} | {r.labelled[a.name]} | {cells} |")
    if BEACON in r.labelled:
        for m in BEACON_METRICS:
            for part, hours in PARTS:
                n = r.labelled_on.get((BEACON, m, part), 0)
                cells = " | ".join(_found_on(r, name, BEACON, m, part) for name in DETECTORS)
                lines.append(f"| beacon on {m}, {hours} | {n} | {cells} |")
    lines += [
        "",
        "Thresholds: the model's per level, in spreads (lowest-highest of its 48 hour "
        "buckets); the static rules' c.",
        "",
        "| metric | LOW | MEDIUM | HIGH | " + " | ".join(r.statics) + " |",
        "|---|---|---|---|" + "---|" * len(r.statics),
    ]
    for m in METRICS:
        th = " | ".join(f"{min(x):.1f}-{max(x):.1f}" for x in r.models[m].thresholds)
        cs = " | ".join(f"{r.statics[name][m]:.4g}" for name in r.statics)
        lines.append(f"| {m} | {th} | {cs} |")
    per_point = r.score_s / (r.test_points * len(METRICS) * len(DETECTORS)) * 1e6
    lines += [
        "",
        f"CPU: {r.train_s:.2f} s to make the traffic and train {len(METRICS)} models; "
        f"{per_point:.1f} µs a datapoint and detector, tallies included.",
    ]
    return "\n".join(lines) + "\n"


HEADER = """# ML Detect evaluation (hw/ml_eval.py)

Simulated traffic of a home hub (metrics: {metrics}): a daily cycle with a morning and an
evening peak on weekdays and a broad afternoon on weekends, lognormal noise, about 4
benign uploads a day at random waking hours (20-200 kB per 10 s for 1-10 min) and a
nightly sync at 05:00. The connections the device opens ({opened}, a count summed over
the window): Poisson, {per_tick} per 10 s at full activity and nearly none at night, a
background of {background:g} an hour, those of each upload as it starts and one for the
sync. Models train on 14 days; the test follows. Anomalies:

{anomalies}

A datapoint is anomalous on a metric when an anomaly changed that metric's value in it;
precision and recall count (metric, datapoint) pairs over all metrics. The static rules
are `value >= c` per metric, c chosen with hindsight on the test data itself: the best
F1, or just above the largest value of the benign days (no false alarm there).
"""


def runs(base: Setting) -> list[tuple[str, str, Setting]]:
    """(title, short name, setting) of each way of judging: each datapoint alone, the
    rolling 5-minute window, and with a beacon the connections opened over an hour."""
    step = f"{base.interval_s:.0f} s"
    out = [
        (f"Each {step} datapoint alone (before)", f"each {step}", base),
        (
            f"Rolling 5-minute aggregates at every {step} datapoint (what the agent does)",
            "rolling 5 min",
            replace(base, window_s=WINDOW_S),
        ),
    ]
    if any(a.name == BEACON for a in base.anomalies):
        out.append(
            (
                f"Rolling 5-minute aggregates, {OPENED} over 1 hour (`train --window-s 3600`)",
                f"rolling 5 min, {OPENED} 1 h",
                replace(base, window_s=WINDOW_S, windows=((OPENED, 3600.0),)),
            )
        )
    return out


def document(base: Setting, seed: int, results: Sequence[Result]) -> str:
    """The markdown report of the runs of `base`."""
    text = HEADER.format(
        metrics=", ".join(METRICS),
        opened=OPENED,
        per_tick=OPENED_PER_TICK,
        background=BACKGROUND_PER_HOUR,
        anomalies="\n".join(f"- {a.name} (test day {a.day}): {a.what}" for a in base.anomalies),
    )
    text += (
        f"\n## Compared (seed {seed})\n\nPer anomaly: recall, time from its start to the"
        " first flag. The static rules' c is chosen with hindsight on each run's own test"
        " datapoints.\n\n" + compare(results)
    )
    return text + "".join("\n" + report(r) for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hw.ml_eval", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write DIR/ml-eval.md")
    parser.add_argument("--quick", action="store_true", help="30 s datapoints, a 4-day test")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    results = [evaluate(title, setting, args.seed, short) for title, short, setting in runs(base)]
    text = document(base, args.seed, results)
    sys.stdout.write(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ml-eval.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

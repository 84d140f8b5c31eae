"""The alarm state machine of on-device Detect (spec/detect.md). Pure: time is an
argument, `next_deadline()` says when to call `tick()` next, and nothing is read or
logged here. Replay and the daemon drive the same code."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from agent.core.baseline import Baseline, raw_entries
from agent.core.criteria import (
    COMPARE,
    PREPARE,
    Check,
    Compare,
    static_check,
    statistic_percent,
)
from agent.core.events import ActiveViolation, EventType, ViolationEvent
from agent.core.hashing import sha256
from agent.core.metrics import (
    DIMENSION_METRICS,
    KIND_EVENT_KEY,
    NUMERIC_KINDS,
    Kind,
    is_finite_number,
)
from agent.core.ml import Drift, Hourly
from agent.core.ml_window import Window, metric_kind
from agent.core.profile import (
    Behavior,
    Dimension,
    MetricDimension,
    SecurityProfile,
    for_thing,
)
from agent.core.topics import matches_any

STATE_FORMAT = 2
OLD_STATE_FORMAT = 1  # raw baselines in one document; still taken back
DEFAULT_STALE_AFTER_S = 172800.0
DEFAULT_BASELINE_S = 14 * 86400.0
DEFAULT_MIN_BASELINE_DATAPOINTS = 30
DEFAULT_EXACT_BASELINE_DATAPOINTS = 360  # an hour at 10 s: early judgements are exact
DETECTOR_KEY = "detector"  # the state of the detector itself, beside the rule keys
_LISTS = (list, tuple)


@dataclasses.dataclass(frozen=True, slots=True)
class StateChanges:
    """What changed in the alarm state since the previous `export_changes`, for a store
    that keeps one row per key; None means: delete the key.

    rules: rule key (`profile/behavior#hash`, or DETECTOR_KEY) -> its small state;
    buckets: f"{rule key}@{bucket number}" -> one time bucket of its baseline."""

    rules: dict[str, dict[str, Any] | None]
    buckets: dict[str, dict[str, Any] | None]


class InactiveBehavior(NamedTuple):
    """A loaded behavior the detector does not judge, and why."""

    profile: str
    behavior: str
    reason: str


class MlJudgement(NamedTuple):
    """An ML behavior with a model: when its window covers its length (None: no sample
    yet; until then it judges nothing), its drift sum and its level's drift threshold
    (None: the model has no drift judgement)."""

    profile: str
    behavior: str
    judged_from: float | None
    cusum: float
    drift_threshold: float | None


class Scorer(Hourly, Protocol):
    """What the rule core needs of an ML model (agent.core.ml.Model): the rolling window
    its datapoints aggregate, its verdict on one, and its hourly drift (agent.core.ml.Drift
    keeps the cusum)."""

    @property
    def window_s(self) -> float: ...

    def anomalous(self, t: float, value: float, confidence: str) -> bool: ...

    def drift_threshold(self, confidence: str) -> float | None: ...

    def drifting(self, cusum: float, confidence: str) -> bool: ...


NO_MODEL = "no model trained yet (PENDING_BUILD)"


class _Mismatch(Exception):
    """A sample value whose shape does not fit the behaviors on its metric."""


_Extract = Callable[[object], object]


def _topic_extractor(kind: Kind, dimension: Dimension | None, operator: str) -> _Extract:
    """Reads a message metric given per topic ({topic: number}): the sum over the topics
    the dimension selects for counters, the largest for aws:message-byte-size (None when
    no topic is selected). Without a dimension a plain number is taken as is."""
    keep = operator == "IN"

    def extract(value: object) -> object:
        if not isinstance(value, Mapping):
            if dimension is None:
                return value
            raise _Mismatch("a dimension needs the metric per topic ({topic: number})")
        if not all(is_finite_number(n) for n in value.values()):
            raise _Mismatch("per-topic values must be finite numbers")
        picked = [
            n
            for topic, n in value.items()
            if dimension is None or matches_any(dimension.filters, topic) == keep
        ]
        if kind is Kind.COUNTER:
            return sum(picked)
        return max(picked, default=None)

    return extract


class _Rule:
    """One judged behavior of one profile: compiled criteria and its alarm state."""

    __slots__ = (
        "acc",
        "baseline",
        "behavior",
        "check",
        "compare",
        "duration",
        "event_key",
        "fleet",
        "is_list",
        "is_sum",
        "key",
        "last_dp",
        "last_time",
        "last_value",
        "ml",
        "ml_drift",
        "ml_kind",
        "ml_window",
        "model",
        "order",
        "percent",
        "profile",
        "run",
        "saved_violation",
        "signature",
        "start_time",
        "to_alarm",
        "to_clear",
        "violation_id",
        "win_end",
    )

    def __init__(
        self,
        profile: str,
        order: tuple[int, int],
        behavior: Behavior,
        signature: str,
        baseline: Baseline | None,
        counters: frozenset[str] = frozenset(),
    ) -> None:
        criteria = behavior.criteria
        kind = behavior.kind
        assert criteria is not None and kind is not None
        self.profile = profile
        self.order = order  # (profile index, behavior index): event order of one instant
        self.behavior = behavior
        self.signature = signature
        self.key = rule_key(profile, behavior.name, signature)
        self.event_key = KIND_EVENT_KEY[kind]
        self.is_list = kind not in NUMERIC_KINDS
        self.is_sum = kind is Kind.COUNTER
        self.duration = criteria.duration_s
        self.to_alarm = criteria.to_alarm
        self.to_clear = criteria.to_clear
        self.baseline = baseline
        self.check: Check | None = None
        self.compare: Compare | None = None
        self.percent: float | None = None
        self.ml = criteria.ml_confidence  # an ML behavior's confidence level
        self.model: Scorer | None = None  # judged only while it holds an active model
        # An ML behavior judges its metric's aggregate over a rolling window, fed with or
        # without a model so that a model arriving finds it full (agent.core.ml_window);
        # a custom metric named in `counters` is summed there, as its training sums it.
        self.ml_kind = metric_kind(behavior.metric, counters) if self.ml is not None else kind
        self.ml_window = None if self.ml is None else Window(self.ml_kind)
        self.ml_drift = None if self.ml is None else Drift()  # kept across models
        if criteria.statistic is not None and criteria.operator is not None:
            self.compare = COMPARE[criteria.operator]
            self.percent = statistic_percent(criteria.statistic)
        elif self.ml is None:
            self.check = static_check(criteria, kind)
        self.fleet: float | None = None  # a fleet-published threshold overrides the local one
        # Outside an alarm `run` counts consecutive violating datapoints, inside it
        # consecutive conforming ones; each kind resets the other.
        self.run = 0
        self.violation_id: str | None = None  # in alarm when set
        self.start_time = 0.0
        self.last_value: dict[str, Any] = {}
        self.last_time = 0.0
        self.last_dp = 0.0  # the latest judged datapoint while in alarm, for staleness
        self.win_end: float | None = None  # end of the open window
        self.acc: object = None  # the open window's value so far
        # (what it was made of, the violation's JSON): to_json copies the behavior
        self.saved_violation: tuple[tuple[object, ...], dict[str, Any]] | None = None

    @property
    def is_plain(self) -> bool:
        """Judged on every sample against a fixed value: the hot path."""
        return self.duration is None and self.check is not None

    def metric_value(self, value: Any) -> dict[str, Any]:
        return {self.event_key: list(value) if self.is_list else value}

    @property
    def additional_info(self) -> dict[str, Any] | None:
        return None if self.ml is None else {"confidenceLevel": self.ml}

    def set_model(self, model: Scorer | None) -> None:
        """An ML behavior's model; a model of another window length starts the window
        again (its aggregates are not what the model was trained on)."""
        assert self.ml_window is not None
        self.model = model
        if model is not None and model.window_s != self.ml_window.window_s:
            self.ml_window = Window(self.ml_kind, model.window_s)


def rule_key(profile: str, behavior: str, signature: str) -> str:
    """A stable key of a rule's saved state: names cannot hold '/', '#' or '@'."""
    digest = sha256(signature.encode()).hexdigest()[:16]
    return f"{profile}/{behavior}#{digest}"


def _signature(behavior: Behavior, dimension: Dimension | None) -> str:
    """What decides how a behavior is judged; when it changes, its alarm state goes."""
    return json.dumps(
        [
            behavior.metric,
            dataclasses.asdict(behavior.dimension) if behavior.dimension else None,
            list(dimension.filters) if dimension else None,
            dataclasses.asdict(behavior.criteria) if behavior.criteria else None,
        ],
        sort_keys=True,
    )


def _inactive_reason(
    behavior: Behavior, dimensions: Mapping[str, Dimension], unsourced: Mapping[str, str]
) -> str | None:
    if behavior.metric in unsourced:
        return f"{behavior.metric}: {unsourced[behavior.metric]}"
    if behavior.dimension is not None and behavior.dimension.name not in dimensions:
        return f"metricDimension: dimension {behavior.dimension.name!r} is not loaded"
    return None


class _Group:
    """The rules that read the same value (metric, dimension, kind): a sample's value is
    fetched, narrowed to the dimension, checked and prepared once for all of them."""

    __slots__ = ("extract", "metric", "numeric", "other", "plain", "prepare")

    def __init__(
        self,
        key: tuple[str, MetricDimension | None, Kind],
        rules: list[_Rule],
        dimensions: Mapping[str, Dimension],
    ) -> None:
        metric, dim, kind = key
        self.metric = metric
        self.numeric = kind in NUMERIC_KINDS
        self.extract: _Extract | None = None
        if metric in DIMENSION_METRICS:
            dimension = dimensions[dim.name] if dim else None
            self.extract = _topic_extractor(kind, dimension, dim.operator if dim else "IN")
        self.prepare = PREPARE.get(kind)
        self.plain = [r for r in rules if r.is_plain]  # judged on every sample
        self.other = [r for r in rules if not r.is_plain]  # windowed or statistical


def _by_name(dimensions: Iterable[Dimension], thing: str) -> dict[str, Dimension]:
    """The dimensions by name, their filters read for `thing` (profile.THING_VARIABLES)."""
    return {d.name: d for d in for_thing(dimensions, thing)}


def _group(rules: list[_Rule], dimensions: Mapping[str, Dimension]) -> list[_Group]:
    by_value: dict[tuple[str, MetricDimension | None, Kind], list[_Rule]] = {}
    for rule in rules:
        b = rule.behavior
        assert b.kind is not None
        by_value.setdefault((b.metric, b.dimension, b.kind), []).append(rule)
    return [_Group(key, members, dimensions) for key, members in by_value.items()]


class Detector:
    """Judges samples against security profiles and emits ViolationEvents.

    Call `observe(now, metrics)` per sample and `tick(now)` whenever the clock reaches
    `next_deadline()`. `now` never goes back: a call with an earlier time raises
    ValueError."""

    def __init__(
        self,
        profiles: Iterable[SecurityProfile],
        thing_name: str,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        baseline_s: float = DEFAULT_BASELINE_S,
        min_baseline_datapoints: int = DEFAULT_MIN_BASELINE_DATAPOINTS,
        exact_baseline_datapoints: int = DEFAULT_EXACT_BASELINE_DATAPOINTS,
        dimensions: Iterable[Dimension] = (),
        unsourced: Mapping[str, str] | None = None,
        counters: frozenset[str] = frozenset(),
        id_factory: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        if stale_after_s <= 0 or baseline_s <= 0:
            raise ValueError("stale_after_s and baseline_s must be positive")
        if min_baseline_datapoints < 1 or exact_baseline_datapoints < 0:
            raise ValueError("need min_baseline_datapoints >= 1, exact_baseline_datapoints >= 0")
        self.thing_name = thing_name
        self.stale_after_s = stale_after_s
        self.baseline_s = baseline_s
        self.min_baseline = min_baseline_datapoints
        self.exact_baseline = exact_baseline_datapoints
        self._new_id = id_factory
        # Metrics nothing on this device measures, and why: their behaviors are inactive.
        self.unsourced = dict(unsourced or {})
        # Custom metrics that are counts since the previous sample: ML sums them.
        self.counters = counters
        self.datapoints = 0  # behavior datapoints made so far
        self._now = -math.inf
        self._due = math.inf  # no deadline before this (a lower bound of next_deadline)
        self._rules: list[_Rule] = []
        self._groups: list[_Group] = []
        self._inactive: list[InactiveBehavior] = []
        self._mismatches: dict[tuple[str, str], str] = {}
        # Alarms whose behavior vanished or changed while the state was saved, by rule
        # key: they end at the next call, timed at its `now`.
        self._orphans: dict[str, ActiveViolation] = {}
        self._dimensions: dict[str, Dimension] = {}
        # What export_changes last returned per rule key, and what a store may still hold
        # that is no longer ours (keys given to restore, baselines of dropped rules).
        self._exported: dict[str, dict[str, Any]] = {}
        self._exported_all = False
        self._stale_rules: set[str] = set()
        self._stale_buckets: set[str] = set()
        # The ML models by metric, and why a metric has none (status and progress).
        self._models: dict[str, Scorer] = {}
        self._no_model: dict[str, str] = {}
        self._install(list(profiles), _by_name(dimensions, thing_name), {})

    # --- configuration -------------------------------------------------------------

    def _install(
        self,
        profiles: list[SecurityProfile],
        dimensions: dict[str, Dimension],
        keep: dict[tuple[str, str], _Rule],
    ) -> None:
        """Compile `profiles`, reusing the rules in `keep` whose signature is unchanged
        (they are removed from `keep`)."""
        names = [p.name for p in profiles]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"security profile {dup!r} is given twice")
        rules: list[_Rule] = []
        inactive: list[InactiveBehavior] = []
        for p_idx, profile in enumerate(profiles):
            for b_idx, behavior in enumerate(profile.behaviors):
                if behavior.criteria is None:
                    continue  # valid, never alarms
                reason = _inactive_reason(behavior, dimensions, self.unsourced)
                if reason is not None:
                    inactive.append(InactiveBehavior(profile.name, behavior.name, reason))
                    continue
                dimension = dimensions[behavior.dimension.name] if behavior.dimension else None
                signature = _signature(behavior, dimension)
                rule = keep.get((profile.name, behavior.name))
                if rule is not None and rule.signature == signature:
                    del keep[(profile.name, behavior.name)]
                    rule.behavior = behavior  # suppressAlerts may have changed
                    rule.order = (p_idx, b_idx)
                else:
                    baseline = None
                    if behavior.criteria.statistic is not None:
                        baseline = self._new_baseline()
                    rule = _Rule(
                        profile.name, (p_idx, b_idx), behavior, signature, baseline, self.counters
                    )
                    if rule.ml is not None:
                        rule.set_model(self._models.get(behavior.metric))
                rules.append(rule)
        for gone in keep.values():  # what a store holds of its baseline goes with it
            if gone.baseline is not None:
                numbers = {*gone.baseline.buckets(), *gone.baseline.gone}
                self._stale_buckets.update(f"{gone.key}@{k}" for k in numbers)
        self._groups = _group(rules, dimensions)
        self._dimensions = dimensions
        self._rules = rules
        self._inactive = inactive
        judged = {(r.profile, r.behavior.name) for r in rules}
        self._mismatches = {k: v for k, v in self._mismatches.items() if k in judged}
        self._due = -math.inf  # recomputed at the next call

    def update_profiles(
        self,
        profiles: Iterable[SecurityProfile],
        now: float,
        dimensions: Iterable[Dimension] | None = None,
    ) -> list[ViolationEvent]:
        """Switch to a new set of profiles (and dimensions, when given). Unchanged
        behaviors keep their state; alarms of changed or removed behaviors and profiles
        end with alarm-invalidated at `now`."""
        events = self._advance(now)
        keep = {(r.profile, r.behavior.name): r for r in self._rules}
        dims = self._dimensions if dimensions is None else _by_name(dimensions, self.thing_name)
        self._install(list(profiles), dims, keep)
        for rule in sorted(keep.values(), key=lambda r: r.order):
            if rule.violation_id is not None:
                events.append(self._end(rule, now, EventType.ALARM_INVALIDATED, rule.last_value))
        return _ordered(events)

    def set_fleet_threshold(self, profile: str, behavior: str, value: float | None) -> None:
        """Use `value` (a threshold published for the fleet) instead of the local
        percentile for a statistical behavior; None goes back to the local one."""
        for rule in self._rules:
            if rule.profile == profile and rule.behavior.name == behavior:
                if rule.percent is None:
                    raise ValueError(f"{profile}/{behavior} has no statisticalThreshold")
                rule.fleet = value
                return
        raise KeyError(f"no judged behavior {behavior!r} in profile {profile!r}")

    def set_models(
        self, models: Mapping[str, Scorer | None], reasons: Mapping[str, str] | None = None
    ) -> None:
        """The active ML models by metric name (None or absent: none); one model serves
        every ML behavior on its metric at each confidence level. `reasons` says why a
        metric has no active model (its status and training progress), for
        `inactive_behaviors`. Without a model an ML behavior makes no judgement: an
        alarm it is in goes on until its datapoints clear it or it goes stale."""
        self._models = {m: model for m, model in models.items() if model is not None}
        self._no_model = dict(reasons or {})
        for rule in self._rules:
            if rule.ml is not None:
                rule.set_model(self._models.get(rule.behavior.metric))

    def ml_metrics(self) -> list[str]:
        """The metrics the judged ML behaviors need a model of."""
        return sorted({r.behavior.metric for r in self._rules if r.ml is not None})

    # --- queries --------------------------------------------------------------------

    def inactive_behaviors(self) -> list[InactiveBehavior]:
        """Loaded behaviors that are not judged (ML detection without an active model,
        a missing dimension, a metric without a source)."""
        waiting = [
            InactiveBehavior(
                r.profile,
                r.behavior.name,
                f"mlDetectionConfig: no active model of {r.behavior.metric}: "
                + self._no_model.get(r.behavior.metric, NO_MODEL),
            )
            for r in self._rules
            if r.ml is not None and r.model is None
        ]
        return [*self._inactive, *waiting]

    def ml_judgements(self) -> list[MlJudgement]:
        """The ML behaviors judged with a model, in profile and behavior order."""
        out = []
        for r in self._rules:
            if r.ml is None or r.model is None:
                continue
            assert r.ml_window is not None and r.ml_drift is not None
            since = r.ml_window.since if len(r.ml_window) else None
            judged_from = None if since is None else since + r.ml_window.window_s
            threshold = r.model.drift_threshold(r.ml)
            out.append(
                MlJudgement(r.profile, r.behavior.name, judged_from, r.ml_drift.cusum, threshold)
            )
        return out

    def mismatches(self) -> list[InactiveBehavior]:
        """Behaviors that got a sample value of the wrong shape (a number for a list
        metric, or the reverse); such values make no datapoint."""
        return [InactiveBehavior(p, b, why) for (p, b), why in self._mismatches.items()]

    def active_violations(self) -> list[ActiveViolation]:
        active = [self._active(r) for r in self._rules if r.violation_id is not None]
        return [*self._orphans.values(), *active]

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (a window end or a staleness deadline),
        or None. A time not after the last call means: now."""
        if self._orphans:
            return self._now
        times = [r.win_end for r in self._rules if r.win_end is not None]
        times += [r.last_dp + self.stale_after_s for r in self._rules if r.violation_id]
        return min(times, default=None)

    # --- time -------------------------------------------------------------------------

    def tick(self, now: float) -> list[ViolationEvent]:
        """Close the windows the clock has passed and end stale alarms."""
        return _ordered(self._advance(now))

    def observe(self, now: float, metrics: Mapping[str, object]) -> list[ViolationEvent]:
        """Judge one sample taken at `now`: {metric name: value} as `metrics_from_report`
        gives it. Returns the events up to `now`, in time, then profile, then behavior
        order."""
        events = self._advance(now)
        datapoints = 0
        for group in self._groups:
            v = metrics.get(group.metric)
            if v is None:
                continue
            if group.extract is not None:
                try:
                    v = group.extract(v)
                except _Mismatch as e:
                    self._mismatch(group, str(e))
                    continue
                if v is None:
                    continue
            if group.numeric:
                if not is_finite_number(v):
                    self._mismatch(group, f"a finite number is expected, got {v!r}")
                    continue
            elif type(v) not in _LISTS:
                self._mismatch(group, f"a list is expected, got {v!r}")
                continue
            prepared = v if group.prepare is None else group.prepare(v)
            datapoints += len(group.plain)
            for rule in group.plain:
                ok = rule.check(prepared)  # type: ignore[misc]
                if ok and rule.violation_id is None:
                    rule.run = 0  # the common case: normal and nothing pending
                else:
                    self._judge(rule, now, v, ok, events)
            for rule in group.other:
                if rule.duration is None:
                    self._datapoint(rule, now, v, events)
                elif rule.win_end is None:
                    rule.win_end = (now // rule.duration + 1) * rule.duration
                    rule.acc = v
                    self._due = min(self._due, rule.win_end)
                elif rule.is_sum:
                    rule.acc += v  # type: ignore[operator]
                else:
                    rule.acc = v
        self.datapoints += datapoints
        return _ordered(events)

    # --- state ------------------------------------------------------------------------

    def export_changes(self) -> StateChanges:
        """The state changed since the previous call (everything at the first call after
        construction; after `restore`, what differs from what it was given): the rules
        whose state changed, the time buckets of baselines that changed or went, and None
        for what a store should delete."""
        everything = not self._exported_all
        current = self._rule_states()
        rules: dict[str, dict[str, Any] | None] = {
            k: v for k, v in current.items() if everything or self._exported.get(k) != v
        }
        for key in sorted((self._exported.keys() | self._stale_rules) - current.keys()):
            rules[key] = None
        buckets: dict[str, dict[str, Any] | None] = {}
        held: set[str] = set()
        for r in self._rules:
            if r.baseline is None:
                continue
            changed, gone = r.baseline.take_changes()
            for k in sorted(gone):
                buckets[f"{r.key}@{k}"] = None
            numbers = r.baseline.buckets() if everything else sorted(changed)
            for k in numbers:
                buckets[f"{r.key}@{k}"] = r.baseline.bucket_json(k)
            if everything:
                held.update(f"{r.key}@{k}" for k in numbers)
        for key in sorted(self._stale_buckets - held):
            buckets[key] = None
        self._exported, self._exported_all = current, True
        self._stale_rules, self._stale_buckets = set(), set()
        return StateChanges(rules, buckets)

    def export_state_changes(self) -> StateChanges:
        """The whole state as changes, as the first `export_changes` gives it: for a
        store that starts afresh. Later `export_changes` calls go on from here."""
        self._exported_all = False
        return self.export_changes()

    def export_state(self) -> dict[str, Any]:
        """The whole alarm state as one JSON-able dict, for `restore_state`: what a store
        holds after every `export_changes`, at once. It changes nothing."""
        buckets = {
            f"{r.key}@{k}": r.baseline.bucket_json(k)
            for r in self._rules
            if r.baseline is not None
            for k in r.baseline.buckets()
        }
        return {"format": STATE_FORMAT, "rules": self._rule_states(), "buckets": buckets}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Take back `export_state` output (or a format 1 state, whose raw baselines
        become time buckets), before the first observe. Raises ValueError for a
        malformed state and changes nothing then."""
        formats = (STATE_FORMAT, OLD_STATE_FORMAT)
        if not isinstance(state, Mapping) or state.get("format") not in formats:
            raise ValueError(f"alarm state: not a format {STATE_FORMAT} state")
        try:
            if state["format"] == STATE_FORMAT:
                rules, buckets = state["rules"], state["buckets"]
            else:
                rules, buckets = self._from_old_format(state)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"alarm state: malformed: {e!r}") from None
        self.restore(rules, buckets)

    def restore(
        self, rules: Mapping[str, Mapping[str, Any]], buckets: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Rebuild from what a store holds (every key `export_changes` gave, as last given),
        before the first observe. Rules whose behavior changed or vanished meanwhile are
        dropped; their alarms end with alarm-invalidated at the next call. The next
        `export_changes` gives only what differs from what was given here (a restart
        rewrites nothing it loaded unchanged), and None for the keys dropped. Raises
        ValueError for a malformed state and changes nothing then."""
        try:
            plan = self._plan_restore(rules, buckets)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"alarm state: malformed: {e!r}") from None
        restores, orphans, now = plan
        for rule, values in restores:
            for name, value in values.items():
                setattr(rule, name, value)
        self._orphans = orphans
        if now is not None:
            self._now = max(self._now, now)
        self._exported, self._exported_all = {k: dict(v) for k, v in rules.items()}, True
        held = {
            f"{r.key}@{k}"
            for r in self._rules
            if r.baseline is not None
            for k in r.baseline.buckets()
        }
        self._stale_rules, self._stale_buckets = set(), set(buckets) - held
        self._due = -math.inf

    def _rule_states(self) -> dict[str, dict[str, Any]]:
        states: dict[str, dict[str, Any]] = {
            DETECTOR_KEY: {"now": self._now if self._now > -math.inf else None}
        }
        for key, orphan in self._orphans.items():
            states[key] = {"violation": orphan.to_json()}
        for r in self._rules:
            states[r.key] = self._rule_state(r)
        return states

    def _rule_state(self, r: _Rule) -> dict[str, Any]:
        entry: dict[str, Any] = {"profile": r.profile, "behavior": r.behavior.name, "run": r.run}
        if r.violation_id is not None:
            made_of = (r.violation_id, r.last_time, r.behavior)
            if r.saved_violation is None or r.saved_violation[0] != made_of:
                r.saved_violation = (made_of, self._active(r).to_json())
            entry["violation"] = r.saved_violation[1]
            entry["lastDatapointTime"] = r.last_dp
        if r.win_end is not None:
            entry["window"] = {"end": r.win_end, "value": r.acc}
        if r.ml_window is not None and len(r.ml_window):
            entry["mlWindow"] = r.ml_window.to_json()
        if r.ml_drift is not None and r.ml_drift.hour is not None:
            entry["mlDrift"] = r.ml_drift.to_json()
        if r.baseline is not None and r.baseline.pending:
            entry["pending"] = [[t, v] for t, v in r.baseline.pending]
        if r.fleet is not None:
            entry["fleetThreshold"] = r.fleet
        return entry

    def _plan_restore(
        self, rules: Mapping[str, Mapping[str, Any]], buckets: Mapping[str, Mapping[str, Any]]
    ) -> tuple[list[tuple[_Rule, dict[str, Any]]], dict[str, ActiveViolation], float | None]:
        """Everything is read before anything changes, so a bad state changes nothing."""
        by_key = {r.key: r for r in self._rules}
        per_rule: dict[str, dict[int, Mapping[str, Any]]] = {}
        for key, doc in buckets.items():
            rule_key_, _, number = key.rpartition("@")
            rule = by_key.get(rule_key_)
            if rule is not None and rule.baseline is not None:
                per_rule.setdefault(rule_key_, {})[int(number)] = doc
        now = None
        orphans: dict[str, ActiveViolation] = {}
        restores = []
        for key, entry in rules.items():
            rule = by_key.get(key)
            violation = entry.get("violation")
            if key == DETECTOR_KEY:
                now = None if entry["now"] is None else _number(entry["now"])
            elif rule is None:
                if violation is not None:
                    orphans[key] = _violation_from_json(violation)
            else:
                restores.append((rule, self._rule_values(rule, entry, per_rule.pop(key, {}))))
        for key, numbered in per_rule.items():  # a baseline without its rule's state
            restores.append((by_key[key], self._rule_values(by_key[key], {"run": 0}, numbered)))
        # in key order: a store need not give its rows in the order they were saved
        return restores, dict(sorted(orphans.items())), now

    def _rule_values(
        self, rule: _Rule, entry: Mapping[str, Any], buckets: Mapping[int, Mapping[str, Any]]
    ) -> dict[str, Any]:
        window = entry.get("window") or {"end": None, "value": None}
        fleet = entry.get("fleetThreshold")
        values: dict[str, Any] = {
            "run": _count(entry["run"]),
            "fleet": None if fleet is None else _number(fleet),
            "win_end": None if window["end"] is None else _number(window["end"]),
            "acc": None if window["value"] is None else _number(window["value"]),
        }
        if rule.ml_window is not None:
            # The window as saved; a model of another length given later starts it again.
            saved = entry.get("mlWindow")
            kind = rule.ml_kind
            values["ml_window"] = Window(kind) if saved is None else Window.from_json(kind, saved)
            drift = entry.get("mlDrift")
            values["ml_drift"] = Drift() if drift is None else Drift.from_json(drift)
        if rule.baseline is not None:
            baseline = self._new_baseline()
            baseline.load(buckets)
            pending = raw_entries(entry.get("pending", []))
            if len({t for t, _ in pending}) > 1:
                raise ValueError(f"pending datapoints {pending!r} are not of one instant")
            baseline.pending = pending
            values["baseline"] = baseline
        violation = entry.get("violation")
        if violation is not None:
            active = _violation_from_json(violation)
            values |= {
                "violation_id": active.violation_id,
                "start_time": active.violation_start_time,
                "last_time": active.last_violation_time,
                "last_value": active.last_violation_value,
                "last_dp": _number(entry["lastDatapointTime"]),
            }
        return values

    def _from_old_format(
        self, state: Mapping[str, Any]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """A format 1 state as keys and time buckets; raw baselines are added anew."""
        rules: dict[str, dict[str, Any]] = {DETECTOR_KEY: {"now": state["now"]}}
        buckets: dict[str, dict[str, Any]] = {}
        for orphan in state["orphans"]:
            key = rule_key(orphan["securityProfileName"], orphan["behavior"]["name"], "")
            rules[f"{key}-{orphan['violationId']}"] = {"violation": orphan}
        for entry in state["rules"]:
            key = rule_key(entry["profile"], entry["behavior"], entry["signature"])
            rules[key] = {k: v for k, v in entry.items() if k not in ("signature", "baseline")}
            if "baseline" in entry:
                baseline = self._new_baseline()
                baseline.load_raw(entry["baseline"])
                rules[key]["pending"] = [[t, v] for t, v in baseline.pending]
                for k in baseline.buckets():
                    buckets[f"{key}@{k}"] = baseline.bucket_json(k)
        return rules, buckets

    def _new_baseline(self) -> Baseline:
        return Baseline(self.baseline_s, self.exact_baseline)

    # --- internals ----------------------------------------------------------------

    def _advance(self, now: float) -> list[_Keyed]:
        """Move the clock to `now`: end orphaned alarms, close passed windows, end stale
        alarms."""
        if now < self._now:
            raise ValueError(f"time went back: {now} after {self._now}")
        self._now = now
        events: list[_Keyed] = []
        for o in self._orphans.values():
            event = self._event(
                o.violation_id,
                o.security_profile_name,
                o.behavior,
                o.last_violation_value,
                EventType.ALARM_INVALIDATED,
                now,
                o.additional_info,
            )
            events.append(((now, (-1, -1)), event))  # before the profiles now loaded
        self._orphans = {}
        if now >= self._due:
            for rule in self._rules:
                self._run_deadlines(rule, now, events)
            deadline = self.next_deadline()
            self._due = math.inf if deadline is None else deadline
        return events

    def _run_deadlines(self, rule: _Rule, now: float, events: list[_Keyed]) -> None:
        # Window ends and the staleness deadline, in their time order.
        while True:
            w = rule.win_end if rule.win_end is not None and rule.win_end <= now else math.inf
            s = rule.last_dp + self.stale_after_s if rule.violation_id else math.inf
            if s <= now and s <= w:  # at the same instant, stale first
                events.append(self._end(rule, s, EventType.ALARM_INVALIDATED, rule.last_value))
            elif w <= now:
                value, rule.win_end, rule.acc = rule.acc, None, None
                self._datapoint(rule, w, value, events)
            else:
                return

    def _datapoint(self, rule: _Rule, t: float, v: Any, events: list[_Keyed]) -> None:
        """A datapoint of a windowed or statistical behavior."""
        self.datapoints += 1
        if rule.check is not None:
            ok = rule.check(v)
        elif rule.ml is not None:
            if v < 0:  # the models are of magnitudes (agent.core.ml)
                reason = f"ML detection needs values >= 0, got {v!r}"
                self._mismatches.setdefault((rule.profile, rule.behavior.name), reason)
                return
            assert rule.ml_window is not None
            v = rule.ml_window.add(t, v)  # the aggregate is the datapoint judged and shown
            if v is None or rule.model is None:
                return  # not judged: no event, counters untouched, staleness runs on
            assert rule.ml_drift is not None
            rule.ml_drift.add(rule.model, t, v)
            model, cusum = rule.model, rule.ml_drift.cusum
            ok = not (model.anomalous(t, v, rule.ml) or model.drifting(cusum, rule.ml))
        else:
            baseline = rule.baseline
            assert baseline is not None and rule.compare is not None and rule.percent is not None
            baseline.advance(t)
            earlier = len(baseline)
            baseline.add(t, v)  # pending: it joins once a later instant is asked for
            threshold = rule.fleet
            if threshold is None:
                if earlier < self.min_baseline or baseline.has_negative:
                    return  # not judged: no event, counters untouched, staleness runs on
                threshold = baseline.percentile(rule.percent)
            ok = rule.compare(v, threshold)
        if ok and rule.violation_id is None:
            rule.run = 0
        else:
            self._judge(rule, t, v, ok, events)

    def _judge(self, rule: _Rule, t: float, v: Any, ok: bool, events: list[_Keyed]) -> None:
        """A violating datapoint, or a conforming one while in alarm."""
        if rule.violation_id is None:
            rule.run += 1
            if rule.run >= rule.to_alarm:
                rule.run = 0
                rule.violation_id = self._new_id()
                rule.start_time = rule.last_time = rule.last_dp = t
                rule.last_value = rule.metric_value(v)
                self._due = min(self._due, t + self.stale_after_s)
                events.append(self._keyed(rule, t, EventType.IN_ALARM, rule.last_value))
            return
        rule.last_dp = t
        if not ok:
            rule.run = 0
            rule.last_time = t
            rule.last_value = rule.metric_value(v)
            return
        rule.run += 1
        if rule.run >= rule.to_clear:
            events.append(self._end(rule, t, EventType.ALARM_CLEARED, rule.metric_value(v)))

    def _end(self, rule: _Rule, t: float, kind: EventType, value: Mapping[str, Any]) -> _Keyed:
        keyed = self._keyed(rule, t, kind, value)
        rule.violation_id = None
        rule.run = 0
        return keyed

    def _keyed(self, rule: _Rule, t: float, kind: EventType, value: Mapping[str, Any]) -> _Keyed:
        assert rule.violation_id is not None
        event = self._event(
            rule.violation_id,
            rule.profile,
            rule.behavior.doc,
            value,
            kind,
            t,
            rule.additional_info,
        )
        return (t, rule.order), event

    def _event(
        self,
        violation_id: str,
        profile: str,
        behavior: Mapping[str, Any],
        value: Mapping[str, Any],
        kind: EventType,
        t: float,
        info: Mapping[str, Any] | None = None,
    ) -> ViolationEvent:
        return ViolationEvent(
            violation_id=violation_id,
            thing_name=self.thing_name,
            security_profile_name=profile,
            behavior=behavior,
            metric_value=value,
            violation_event_type=kind,
            violation_event_time=t,
            additional_info=info,
        )

    def _active(self, rule: _Rule) -> ActiveViolation:
        assert rule.violation_id is not None
        return ActiveViolation(
            violation_id=rule.violation_id,
            thing_name=self.thing_name,
            security_profile_name=rule.profile,
            behavior=rule.behavior.doc,
            last_violation_value=rule.last_value,
            last_violation_time=rule.last_time,
            violation_start_time=rule.start_time,
            additional_info=rule.additional_info,
        )

    def _mismatch(self, group: _Group, reason: str) -> None:
        for rule in group.plain + group.other:
            self._mismatches.setdefault((rule.profile, rule.behavior.name), reason)


_Keyed = tuple[tuple[float, tuple[int, int]], ViolationEvent]


def _ordered(events: list[_Keyed]) -> list[ViolationEvent]:
    """Events in time, then profile, then behavior order (stable for one behavior)."""
    if len(events) > 1:
        events.sort(key=lambda e: e[0])
    return [e for _, e in events]


def _number(x: object) -> float:
    if not is_finite_number(x):
        raise ValueError(f"{x!r} is not a finite number")
    return x  # type: ignore[return-value]


def _count(x: object) -> int:
    if type(x) is not int or x < 0:
        raise ValueError(f"{x!r} is not a count")
    return x


def _violation_from_json(doc: Mapping[str, Any]) -> ActiveViolation:
    if not isinstance(doc["lastViolationValue"], dict) or not doc["violationId"]:
        raise ValueError(f"violation {doc!r} lacks an id or a value")
    info = doc.get("violationEventAdditionalInfo")
    if info is not None and not isinstance(info, dict):
        raise ValueError(f"violation {doc!r}: violationEventAdditionalInfo is not an object")
    return ActiveViolation(
        violation_id=str(doc["violationId"]),
        thing_name=doc["thingName"],
        security_profile_name=doc["securityProfileName"],
        behavior=doc["behavior"],
        last_violation_value=doc["lastViolationValue"],
        last_violation_time=_number(doc["lastViolationTime"]),
        violation_start_time=_number(doc["violationStartTime"]),
        additional_info=info,
    )

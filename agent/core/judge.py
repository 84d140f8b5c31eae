"""The whole of on-device Detect: the device's own Detector and, on a gateway whose
broker the agent watches, one Detector per MQTT client of that broker. AWS computes
its cloud-side metrics (messages, authorization failures, connection attempts, ...)
per thing from the broker's view; a gateway's broker sees its clients the same way,
so behaviors on those metrics are judged per client id, and their events carry the
client id as `thingName`. Pure, like the Detector: time comes in as an argument.

ML behaviors are judged on the device's own metrics only. A client's ML behaviors stay
inactive (CLIENT_ML_REASON): a model per client and metric, trained on that client's
history, would cost up to max_clients times the memory and training time of the
device's models, and a client's history is too sparse and short-lived (clients come
and go, and are evicted) to reach the 14 days and 25,000 datapoints a model needs.

Saved state: the device's keys as the Detector gives them; a client's keys prefixed
with `~<16 hex digits of the client id's SHA-256>~` (profile and behavior names cannot
hold '~'), plus a `~<hex>~client` row holding the client id itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.core.evaluator import Detector, InactiveBehavior, Scorer, StateChanges
from agent.core.events import ActiveViolation, ViolationEvent
from agent.core.hashing import sha256
from agent.core.metrics import CLOUD_METRICS
from agent.core.profile import Behavior, Dimension, SecurityProfile

# (thing name, profiles, unsourced metrics) -> a Detector with the [detect] settings
MakeDetector = Callable[[str, list[SecurityProfile], Mapping[str, str]], Detector]
DEFAULT_MAX_CLIENTS = 1000
_CLIENT_ROW = "client"
CLIENT_ML_REASON = (
    "mlDetectionConfig: ML detection is not available per MQTT client of the watched"
    " broker (models are trained on the device's own metrics only)"
)


def _split(profiles: Iterable[SecurityProfile], cloud: bool) -> list[SecurityProfile]:
    """The profiles with only the behaviors on cloud-side metrics (cloud) or the rest;
    the cloud side without ML behaviors (CLIENT_ML_REASON)."""
    return [
        dataclasses.replace(
            p,
            behaviors=tuple(
                b
                for b in p.behaviors
                if (b.metric in CLOUD_METRICS) == cloud and not (cloud and _is_ml(b))
            ),
        )
        for p in profiles
    ]


def _is_ml(behavior: Behavior) -> bool:
    return behavior.criteria is not None and behavior.criteria.ml_confidence is not None


def client_prefix(client_id: str) -> str:
    return f"~{sha256(client_id.encode()).hexdigest()[:16]}~"


def _prefixed(prefix: str, changes: StateChanges) -> StateChanges:
    return StateChanges(
        {prefix + k: v for k, v in changes.rules.items()},
        {prefix + k: v for k, v in changes.buckets.items()},
    )


class Judge:
    """Judges a sample of the device and, with `clients`, the per-client metrics of the
    gateway's broker. At most `max_clients` clients are judged at once: a new client
    takes the place of the least recently seen one without an alarm, or, when every
    one has an alarm, is not judged (counted in `unjudged_clients`)."""

    def __init__(
        self,
        profiles: Iterable[SecurityProfile],
        thing_name: str,
        make: MakeDetector,
        unsourced: Mapping[str, str],
        *,
        clients: bool,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._make = make
        self._profiles = list(profiles)
        self._on = clients
        self.max_clients = max_clients
        self.device = make(thing_name, self._device_profiles(), unsourced)
        # The cloud behaviors compiled once with no client, to say which are inactive.
        self._template = make("", _split(self._profiles, cloud=True), {})
        self._clients: dict[str, Detector] = {}  # least recently seen first
        self._new: set[str] = set()  # clients whose row a store does not hold yet
        self._gone: dict[str, None] = {}  # store keys of dropped clients, to delete
        self.unjudged_clients = 0

    def _device_profiles(self) -> list[SecurityProfile]:
        return _split(self._profiles, cloud=False) if self._on else self._profiles

    def _client_profiles(self) -> list[SecurityProfile]:
        return _split(self._profiles, cloud=True) if self._on else []

    # --- what the daemon reads ---------------------------------------------------------

    @property
    def thing_name(self) -> str:
        return self.device.thing_name

    @thing_name.setter
    def thing_name(self, name: str) -> None:
        self.device.thing_name = name

    @property
    def datapoints(self) -> int:
        return self.device.datapoints + sum(d.datapoints for d in self._clients.values())

    @property
    def clients(self) -> list[str]:
        """The client ids judged now, least recently seen first."""
        return list(self._clients)

    def inactive_behaviors(self) -> list[InactiveBehavior]:
        extra = self._template.inactive_behaviors() if self._on else []
        if self._on:
            extra += [
                InactiveBehavior(p.name, b.name, CLIENT_ML_REASON)
                for p in self._profiles
                for b in p.behaviors
                if b.metric in CLOUD_METRICS and _is_ml(b)
            ]
        return [*self.device.inactive_behaviors(), *extra]

    def set_models(
        self, models: Mapping[str, Scorer | None], reasons: Mapping[str, str] | None = None
    ) -> None:
        """The device's ML models by metric (Detector.set_models); clients get none."""
        self.device.set_models(models, reasons)

    def ml_metrics(self) -> list[str]:
        """The metrics the device's judged ML behaviors need a model of."""
        return self.device.ml_metrics()

    def mismatches(self) -> list[InactiveBehavior]:
        seen = {(m.profile, m.behavior): m for m in self.device.mismatches()}
        for d in self._clients.values():
            for m in d.mismatches():
                seen.setdefault((m.profile, m.behavior), m)
        return list(seen.values())

    def active_violations(self) -> list[ActiveViolation]:
        out = self.device.active_violations()
        for d in self._clients.values():
            out += d.active_violations()
        return out

    def next_deadline(self) -> float | None:
        times = [t for d in self._detectors() if (t := d.next_deadline()) is not None]
        return min(times, default=None)

    def _detectors(self) -> list[Detector]:
        return [self.device, *self._clients.values()]

    # --- time ------------------------------------------------------------------------

    def observe(
        self,
        now: float,
        metrics: Mapping[str, object],
        clients: Mapping[str, Mapping[str, object]] | None = None,
    ) -> list[ViolationEvent]:
        """Judge the device's sample and each client's metrics, all taken at `now`."""
        events = self.device.observe(now, metrics)
        for client_id, values in (clients or {}).items() if self._on else ():
            detector = self._client(client_id)
            if detector is not None:
                events += detector.observe(now, values)
        events += self._tick_clients(now, skip=clients or {})
        return _in_time(events)

    def tick(self, now: float) -> list[ViolationEvent]:
        events = self.device.tick(now)
        events += self._tick_clients(now, skip={})
        return _in_time(events)

    def _tick_clients(self, now: float, skip: Mapping[str, object]) -> list[ViolationEvent]:
        events: list[ViolationEvent] = []
        for client_id, d in list(self._clients.items()):
            due = d.next_deadline()
            if client_id not in skip and due is not None and due <= now:
                events += d.tick(now)
            if not self._on and not d.active_violations():
                self._drop(client_id)  # the watch is off: its alarms have ended
        return events

    def _client(self, client_id: str) -> Detector | None:
        detector = self._clients.pop(client_id, None)
        if detector is None:
            if len(self._clients) >= self.max_clients and not self._evict():
                self.unjudged_clients += 1
                return None
            detector = self._make(client_id, self._client_profiles(), {})
            self._new.add(client_id)
        self._clients[client_id] = detector  # now the most recently seen
        return detector

    def _evict(self) -> bool:
        for client_id, d in self._clients.items():
            if not d.active_violations():
                self._drop(client_id)
                return True
        return False

    def _drop(self, client_id: str) -> None:
        detector = self._clients.pop(client_id)
        self._new.discard(client_id)
        prefix = client_prefix(client_id)
        unsaved = detector.export_changes()  # keys deleted since the last export too
        state = detector.export_state()
        for keys in (unsaved.rules, unsaved.buckets, state["rules"], state["buckets"]):
            self._gone.update(dict.fromkeys(prefix + k for k in keys))
        self._gone[prefix + _CLIENT_ROW] = None

    # --- configuration -----------------------------------------------------------------

    def update_profiles(
        self,
        profiles: Iterable[SecurityProfile],
        now: float,
        dimensions: Iterable[Dimension] | None = None,
        *,
        unsourced: Mapping[str, str] | None = None,
        clients: bool | None = None,
    ) -> list[ViolationEvent]:
        """New profiles (and dimensions, the metrics without a source and whether the
        broker is watched, when given); the Detector's rules for changed and removed
        behaviors hold for every client too."""
        self._profiles = list(profiles)
        dims = None if dimensions is None else list(dimensions)
        if clients is not None:
            self._on = clients
        if unsourced is not None:
            self.device.unsourced = dict(unsourced)
        events = self.device.update_profiles(self._device_profiles(), now, dims)
        self._template.update_profiles(_split(self._profiles, cloud=True), now, dims)
        for d in self._clients.values():
            events += d.update_profiles(self._client_profiles(), now, dims)
        events += self._tick_clients(now, skip={})
        return _in_time(events)

    # --- state -------------------------------------------------------------------------

    def export_changes(self) -> StateChanges:
        return self._export(Detector.export_changes)

    def export_state_changes(self) -> StateChanges:
        """The whole state as changes, for a store that starts afresh."""
        self._new = set(self._clients)
        return self._export(Detector.export_state_changes)

    def _export(self, take: Callable[[Detector], StateChanges]) -> StateChanges:
        device = take(self.device)
        rules, buckets = dict(device.rules), dict(device.buckets)
        for key in self._gone:
            (buckets if "@" in key else rules)[key] = None
        self._gone = {}
        for client_id, d in self._clients.items():
            prefix = client_prefix(client_id)
            changes = _prefixed(prefix, take(d))
            rules.update(changes.rules)
            buckets.update(changes.buckets)
            if client_id in self._new:
                rules[prefix + _CLIENT_ROW] = {"clientId": client_id}
        self._new = set()
        return StateChanges(rules, buckets)

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """An older version's single document: it held the device's state only."""
        self.device.restore_state(state)

    def restore(
        self, rules: Mapping[str, Mapping[str, Any]], buckets: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Rebuild from what a store holds, as `Detector.restore`. A client's alarms come
        back with it; with the watch now off they end at the next call. Keys of a client
        whose id row is missing are deleted at the next export. Raises ValueError for a
        malformed state and changes nothing then."""
        groups: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        device: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        for table, index in ((rules, 0), (buckets, 1)):
            for key, value in table.items():
                if key.startswith("~") and (end := key.find("~", 1)) > 0:
                    groups.setdefault(key[: end + 1], ({}, {}))[index][key[end + 1 :]] = value
                else:
                    device[index][key] = value
        made: dict[str, Detector] = {}
        gone: dict[str, None] = {}
        for prefix, (rows, bucket_rows) in groups.items():
            row = rows.pop(_CLIENT_ROW, None)
            client_id = row.get("clientId") if isinstance(row, Mapping) else None
            if not isinstance(client_id, str) or client_prefix(client_id) != prefix:
                gone.update(dict.fromkeys(prefix + k for k in [*rows, *bucket_rows]))
                if row is not None:
                    gone[prefix + _CLIENT_ROW] = None
                continue
            d = self._make(client_id, self._client_profiles(), {})
            d.restore(rows, bucket_rows)
            made[client_id] = d
        self.device.restore(*device)
        self._clients, self._gone, self._new = made, gone, set()


def _in_time(events: list[ViolationEvent]) -> list[ViolationEvent]:
    """One instant's events of several detectors: the device's first, then by client,
    each in the Detector's order; sorted stably by time."""
    if len(events) > 1:
        events.sort(key=lambda e: e.violation_event_time)
    return events

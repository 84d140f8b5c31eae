"""The rule core as the config sets it up: one place, so that `run` and `replay` judge
the same samples the same way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agent.config import Config
from agent.core.evaluator import Detector
from agent.core.judge import Judge
from agent.core.metrics import CLOUD_METRICS
from agent.core.profile import Dimension, SecurityProfile


def unsourced_metrics(cfg: Config, profiles: Iterable[SecurityProfile]) -> dict[str, str]:
    """{metric: why nothing on this device measures it} for the metrics of `profiles`
    that no part of `cfg` collects: their behaviors are inactive, and say why."""
    capture = cfg.capture
    if not capture.enabled:
        broker_off = "no source on this device: packet capture is off ([capture] enabled)"
    elif not capture.broker.enabled:
        broker_off = "no source on this device: the broker watch is off ([capture.broker] enabled)"
    else:
        broker_off = ""
    made = {m.name for m in cfg.custom_metrics}
    features: dict[str, str] = {}
    for path, (name, collected) in capture.metric_names().items():
        if collected:
            made.add(name)
        else:
            section = path.rpartition(".")[0]
            switch = "[capture] enabled" if not capture.enabled else f"[{section}] enabled"
            features.setdefault(name, f"no source on this device: its feature is off ({switch})")
    out: dict[str, str] = {}
    for profile in profiles:
        for b in profile.behaviors:
            if b.metric in CLOUD_METRICS:
                if broker_off:
                    out[b.metric] = broker_off
            elif not b.metric.startswith("aws:") and b.metric not in made:
                out[b.metric] = features.get(
                    b.metric,
                    "no source on this device: no [[custom_metrics]] entry or capture"
                    " feature makes it",
                )
    return out


def count_metrics(cfg: Config) -> frozenset[str]:
    """The custom metrics of `cfg` whose samples are counts since the previous sample
    (ML sums them over its window: agent.core.ml_window.metric_kind): the connections
    opened, when packet capture counts them."""
    return frozenset(ml_windows(cfg))


def ml_windows(cfg: Config) -> dict[str, float]:
    """The ML window a new model of each of those count metrics starts with."""
    capture = cfg.capture
    if capture.enabled and capture.connections.enabled:
        return {capture.connections.count_metric: capture.connections.ml_window_s}
    return {}


def detector_from_config(
    cfg: Config,
    profiles: Iterable[SecurityProfile],
    dimensions: Iterable[Dimension],
    *,
    recorded: bool = False,
) -> Judge:
    """The device's Detector for `profiles`, with the thing name and the `[detect]`
    settings of `cfg`, and with the broker watch on, a Detector per MQTT client of the
    gateway's broker. With `recorded` (replay), the metrics come from a recording, not
    from the config's sources: every behavior is judged on what it holds. ValueError
    when the profiles cannot run together (a name given twice)."""
    profiles = list(profiles)
    dimensions = list(dimensions)
    counters = count_metrics(cfg)

    def make(thing: str, judged: list[SecurityProfile], unsourced: Mapping[str, str]) -> Detector:
        return Detector(
            judged,
            thing,
            stale_after_s=cfg.detect.stale_after_s,
            baseline_s=cfg.detect.baseline_s,
            min_baseline_datapoints=cfg.detect.min_baseline_datapoints,
            dimensions=dimensions,
            unsourced=unsourced,
            counters=counters,
        )

    if recorded:
        return Judge(profiles, cfg.thing_name, make, {}, clients=True)
    clients = cfg.capture.enabled and cfg.capture.broker.enabled
    return Judge(profiles, cfg.thing_name, make, unsourced_metrics(cfg, profiles), clients=clients)

"""The rule core as the config sets it up: one place, so that `run` and `replay` judge
the same samples the same way."""

from __future__ import annotations

from collections.abc import Iterable

from agent.config import Config
from agent.core.evaluator import Detector
from agent.core.profile import Dimension, SecurityProfile


def detector_from_config(
    cfg: Config, profiles: Iterable[SecurityProfile], dimensions: Iterable[Dimension]
) -> Detector:
    """A Detector for `profiles` with the thing name and the `[detect]` settings of `cfg`.
    ValueError when the profiles cannot run together (a name given twice)."""
    return Detector(
        profiles,
        cfg.thing_name,
        stale_after_s=cfg.detect.stale_after_s,
        baseline_s=cfg.detect.baseline_s,
        min_baseline_datapoints=cfg.detect.min_baseline_datapoints,
        dimensions=dimensions,
    )

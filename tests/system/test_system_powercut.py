"""Power cuts, not only kill -9: the stores driven by a real process whose writes are
logged by an LD_PRELOAD shim, then rebuilt as a disk with a volatile write cache may
hold them after a power cut at random points, and opened with the agent's own code.

Why not device-mapper: dm-log-writes and dm-flakey need the kernel's device-mapper,
which this machine's kernel lacks (no device-mapper in /proc/misc, no /lib/modules,
`dmsetup version` cannot reach the driver), as do many containers and CI runners. The
shim logs the same information one level up, per file (see powercut/powercut.py for
the crash model). It needs neither root nor a loop device, so it runs as any user: it
skips only without gcc.

What it verifies (`powercut.check`), at every cut: both stores open without being moved
aside and pass integrity_check; every step whose record_changes returned is there, with
its events, active set and alarm state rows whole, and no in-alarm twice; every spooled
message whose put returned is there until its ack began, and none whose ack returned
comes back; every metrics sample whose flush returned is there. So the loss bound is:
nothing acknowledged, except the metrics history buffered since the last flush
(store.metrics_flush_s: at most FLUSH_EVERY - 1 samples at 10 s sampling here).

Figures: pytest -s prints one line per test. The seed is random; POWERCUT_SEED=N
repeats a run.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.logs import kv

pytestmark = pytest.mark.system

STEPS = 200  # about 1,000 store transactions and 13,000 logged operations
CUTS = 200


def _load_powercut() -> ModuleType:
    path = Path(__file__).parent / "powercut" / "powercut.py"
    spec = importlib.util.spec_from_file_location("powercut", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


powercut = _load_powercut()


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (apt-get install gcc): it builds the write-log shim")
    yield powercut.build_shim(tmp_path_factory.mktemp("shim"))


def _seed() -> int:
    return int(os.environ.get("POWERCUT_SEED", random.randrange(2**32)))


def _cut(ops: list[Any], work: Path, seed: int) -> Any:
    tally = powercut.Tally()
    for point, verdict in powercut.power_cuts(ops, work / "state", work, CUTS, random.Random(seed)):
        tally.add(point, verdict)
    return tally


def _report(tally: Any, **fields: object) -> None:
    figures = {k: v for k, v in vars(tally).items() if k != "examples"}
    print(kv("powercut", **fields, **figures))


def test_a_power_cut_loses_nothing_acknowledged(shim: Path, tmp_path: Path) -> None:
    ops = powercut.run_logged(shim, tmp_path, STEPS)
    # The run went through every kind of operation the model handles: files created by
    # rename, WALs deleted at close, files truncated, directory syncs, marks.
    assert {op.kind for op in ops} == set(range(powercut.OPEN, powercut.MARK + 1))
    # The log holds every write: replayed whole, it gives the files the run left.
    powercut.replayed_whole(ops, tmp_path / "state", tmp_path / "whole")
    for name in ("agent.db", "spool.db"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "state" / name).read_bytes()

    seed = _seed()
    tally = _cut(ops, tmp_path, seed)
    _report(tally, synced=True, seed=seed, operations=len(ops))
    assert tally.failed == 0, f"seed {seed}: {tally.examples}"
    assert tally.opened == tally.cuts == CUTS
    # The cuts fell inside flush windows, and lost no more than one window.
    assert 0 < tally.max_samples_lost < powercut.FLUSH_EVERY


def test_the_harness_finds_losses_when_writes_are_not_synced(shim: Path, tmp_path: Path) -> None:
    """The same run with the shim turning the files' fsync and fdatasync into no-ops (as
    PRAGMA synchronous=OFF would): the same checks must find acknowledged events lost."""
    ops = powercut.run_logged(shim, tmp_path, STEPS, nosync=True)
    seed = _seed()
    tally = _cut(ops, tmp_path, seed)
    _report(tally, synced=False, seed=seed, operations=len(ops))
    assert tally.lost_acknowledged_events > 0, f"seed {seed}: no loss found without fsync"
    assert tally.opened < tally.cuts  # and damaged files, moved aside

"""Days of agent state in minutes, written by a checkout's own daemon code.

    PYTHONPATH=<checkout> python bench/storage_fill.py fill|save CONFIG START SAMPLES CUSTOM_FILE

Run by bench/storage.py, once per checkout, with that checkout first on PYTHONPATH. It
builds the checkout's own `Daemon` from CONFIG (no broker: nothing to publish) with
`time.time` replaced by a clock this script steps by the sampling interval from START,
and calls the daemon's own per-sample job SAMPLES times. The samples are real (the
bench's network namespace: its connections and loopback traffic); the custom number
metric is read from CUSTOM_FILE, which gets a fresh random value before every sample.
So the store holds exactly what that version would after those days, saved through
its own store API, whatever the store looks like.

- fill: prunes once a fake day as the daemon does, and stops through the daemon's own
  shutdown (which saves the state).
- save: restores, then three times: 30 samples (one 300 s save period) and one timed
  `save_state()`: its seconds and the bytes it wrote (/proc/self/io write_bytes; run it
  on a block-device file system, tmpfs counts none).

Prints one JSON object. Only the daemon's constructor, start, per-sample job
(`sample`, or `cycle` on older trees), tick, prune, save_state and shutdown are used:
the seam both old and new trees share.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

clock = [float(sys.argv[3])]
_real_time = time.time
time.time = lambda: clock[0]  # before the agent is imported: defaults bind it

try:  # the config module moved from agent.service to agent
    from agent.config import load_config
except ImportError:
    from agent.service.config import load_config  # type: ignore[no-redef]
from agent.service.daemon import Daemon  # noqa: E402 (after the clock is replaced)
from agent.service.notify import Notifier  # noqa: E402

DAY_SAMPLES_S = 86400.0


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def main() -> None:
    mode, config, _, samples, custom_file = sys.argv[1:6]
    cfg = load_config(config)
    interval_s = cfg.sampling.interval_s
    daemon = Daemon(cfg, config, Notifier({}))
    daemon.start()
    per_sample = daemon.sample if callable(getattr(daemon, "sample", None)) else daemon.cycle
    rng = random.Random(int(clock[0]))
    custom = Path(custom_file)

    def step() -> None:
        clock[0] += interval_s
        custom.write_text(f"{rng.lognormvariate(3.0, 0.5):.3f}\n")
        per_sample()
        daemon.tick()

    began = _real_time()
    out: dict[str, object] = {}
    if mode == "fill":
        per_day = int(DAY_SAMPLES_S / interval_s)
        for i in range(int(samples)):
            step()
            if (i + 1) % per_day == 0:
                daemon.prune()
        daemon.prune()
    else:
        took, wrote = [], []
        for _ in range(3):
            for _ in range(int(300 / interval_s)):
                step()
            w0, t0 = write_bytes(), time.perf_counter()
            daemon.save_state()
            took.append(time.perf_counter() - t0)
            wrote.append(write_bytes() - w0)
        out |= {"save_s": statistics.median(took), "save_bytes": statistics.median(wrote)}
    daemon.shutdown()
    out |= {"samples": int(samples), "last_time": clock[0], "took_s": _real_time() - began}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

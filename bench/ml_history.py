"""What the daemon's daily ML training costs on this machine: CPU seconds and peak RSS
growth of streaming the metrics history (export-metrics) through a rolling window into one
Trainer per metric and building the models, as agent.service.trainer does.

    python bench/ml_history.py [--days 15] [--step 10] [--metrics 4] [--connections 20]

The history is written first into a temporary state dir (not timed): one report per
--step seconds with network counters, a listening port, --connections established
connections and a custom number metric. The model alone (training on datapoints given
by hand) is measured by the MODEL benchmark; this adds the reading and decoding of the
history, which dominates.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.service.trainer import TRAINING_WINDOW_S, train_from_history
from agent.store.history import history_path, open_history

METRICS = ["aws:all-bytes-out", "aws:all-bytes-in", "aws:num-established-tcp-connections", "level"]


def fill(state_dir: Path, end: float, days: float, step_s: float, connections: int) -> int:
    rng = random.Random(1)
    n = int(days * 86400 / step_s)
    with open_history(history_path(state_dir)) as history:
        for i in range(n):
            t = end - (n - i) * step_s
            conns = [
                {"remote_addr": f"203.0.113.{j % 250 + 1}:443", "local_port": 40000 + j}
                for j in range(connections)
            ]
            report = {
                "header": {"report_id": i + 1, "version": "1.0"},
                "metrics": {
                    "listening_tcp_ports": {"ports": [{"port": 22}], "total": 1},
                    "network_stats": {
                        "bytes_in": rng.randrange(10**3, 10**6),
                        "bytes_out": rng.randrange(10**3, 10**6),
                        "packets_in": rng.randrange(10, 1000),
                        "packets_out": rng.randrange(10, 1000),
                    },
                    "tcp_connections": {
                        "established_connections": {"connections": conns, "total": connections}
                    },
                },
                "custom_metrics": {"level": [{"number": rng.uniform(0, 100)}]},
            }
            history.add_metrics(t, report)
        history.flush_metrics()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=TRAINING_WINDOW_S / 86400)
    parser.add_argument("--step", type=float, default=10.0)
    parser.add_argument("--metrics", type=int, default=len(METRICS), choices=range(1, 5))
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        now = time.time()
        n = fill(Path(tmp), now, args.days, args.step, args.connections)
        size = history_path(tmp).stat().st_size
        gc.collect()
        rss_before, peak_before = vm_rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cpu = time.process_time()
        wall = time.monotonic()
        trainings = train_from_history(tmp, "bench", METRICS[: args.metrics], now)
        built = sum(t.model is not None for t in trainings)
        cpu = time.process_time() - cpu
        wall = time.monotonic() - wall
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del trainings[:]
        gc.collect()
        rss_after = vm_rss_kib()
    print(
        f"{n} reports ({args.days:g} days at {args.step:g} s, {size / 1e6:.1f} MB of history),"
        f" {args.metrics} metrics: {cpu:.2f} s CPU, {wall:.2f} s wall; RSS {rss_before / 1024:.1f}"
        f" MiB before, peak {max(peak, peak_before) / 1024:.1f} MiB (the fill's own peak"
        f" {peak_before / 1024:.1f}), {rss_after / 1024:.1f} MiB after; {built} models built"
    )


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


if __name__ == "__main__":
    main()

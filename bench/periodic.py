"""The connections feature's cost with its periodic destinations (agent/core/outbound.py,
agent/core/periodic.py): per SYN fed, and the memory of a full table.

    .venv/bin/python bench/periodic.py [--syns 200000]

Cases: every SYN a new destination (a scan or a flood: the 4,096-key table full and
forgetting one key a SYN, the worst case), SYNs to 50 destinations at random, and 20
beacons over the same time, each on its own period (each SYN rechecks a rhythm of 8 intervals). Then
`periodic(now)` over the table with 20 periodic keys, as the sniffer calls it once a
sample. Memory: tracemalloc's peak for a watch whose periodic table is full."""

from __future__ import annotations

import argparse
import ipaddress
import random
import time
import tracemalloc
from collections.abc import Callable

from agent.core.outbound import OutboundWatch
from agent.core.packet import SYN, TCP, Frame
from agent.core.periodic import MAX_KEYS

DEV = ipaddress.ip_address("192.0.2.1").packed


def frame(ts: float, dst: int, sport: int) -> Frame:
    return Frame(ts, True, DEV, dst.to_bytes(4, "big"), TCP, sport, 443, SYN, sport, b"", 0)


def frames(case: str, n: int) -> list[Frame]:
    rng = random.Random(1)
    if case == "new destination each":
        return [frame(i * 0.001, 0x0A000000 + i, 1024 + i % 60000) for i in range(n)]
    if case == "50 destinations":
        return [frame(i * 0.1, 0x0A000000 + rng.randrange(50), 1024 + i % 60000) for i in range(n)]
    # 20 beacons, periods 2..21 s, ±10% jitter, interleaved in time order
    span, events = n // 20 * 2.0, []
    for b in range(20):
        t = b * 0.01
        while t < span:
            events.append((t, b))
            t += (2 + b) * rng.uniform(0.9, 1.1)
    events.sort()
    return [frame(t, 0x0A000000 + b, 1024 + i % 60000) for i, (t, b) in enumerate(events)]


def per_call(fn: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--syns", type=int, default=200_000)
    args = parser.parse_args()
    for case in ("new destination each", "50 destinations", "20 beacons"):
        fs = frames(case, args.syns)
        w = OutboundWatch()
        us = per_call(lambda w=w, fs=fs: [w.feed(f) for f in fs] and None, len(fs))
        now = fs[-1].ts
        took = per_call(lambda w=w, now=now: w.periodic(now) and None, 1)
        count, _ = w.periodic(now)
        print(f"{case:22s} feed {us:5.2f} µs a SYN; periodic(now) {took:7.1f} µs; {count} periodic")
    tracemalloc.start()
    w = OutboundWatch(dedup_s=0.001)  # the dedup table apart: only the periodic keys stay
    for f in frames("new destination each", MAX_KEYS):
        w.feed(f)
    _, peak = tracemalloc.get_traced_memory()
    print(f"memory with {MAX_KEYS} keys: {peak / 1024:.0f} KiB ({peak / MAX_KEYS:.0f} B a key)")


if __name__ == "__main__":
    main()

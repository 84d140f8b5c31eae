"""Collector cost per cycle with 0, 1000 and 5000 established loopback TCP connections.

    python bench/collect.py [--cycles N]

Side by side, per cycle: our full cycle (Sampler.sample: sockets over netlink, interface
addresses, network stats; no custom metrics), the same with a fresh Sampler each time
(nothing remembered from the previous cycle), psutil.net_connections (what the old AWS
Python agent used), our /proc fallback path, and a bare netlink dump (the socket dump
with a minimal parse, the floor for any netlink collector). Each connection has two
ends on loopback, so N connections are 2N established sockets.
"""

from __future__ import annotations

import argparse
import gc
import resource
import socket
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from agent.collect.interfaces import AddressMap
from agent.collect.sampler import Sampler
from agent.collect.sockets import (
    NETLINK_SOCK_DIAG,
    NLMSG_DONE,
    TCP_CLOSE,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    SocketReader,
    diag_request,
)
from agent.config import Config

SIZES = (0, 1000, 5000)
# The old AWS IoT Device Defender Python agent, ms per cycle (from the project brief).
OLD_AGENT_MS = {1000: 890.0, 5000: 6100.0}
_HDR = struct.Struct("=IH")
_ID = struct.Struct("!HH16s16s")


def bare_netlink_dump() -> int:
    """The four sock_diag dumps, reading state, ports and addresses of each socket."""
    count = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        for family in (socket.AF_INET, socket.AF_INET6):
            for proto, states in (
                (socket.IPPROTO_TCP, 1 << TCP_LISTEN | 1 << TCP_ESTABLISHED),
                (socket.IPPROTO_UDP, 1 << TCP_CLOSE),
            ):
                nl.send(diag_request(family, proto, states))
                done = False
                while not done:
                    data = nl.recv(65536)
                    offset = 0
                    while offset < len(data):
                        length, kind = _HDR.unpack_from(data, offset)
                        if kind == NLMSG_DONE:
                            done = True
                            break
                        _state = data[offset + 17]
                        _ports_and_addresses = _ID.unpack_from(data, offset + 20)
                        count += 1
                        offset += (length + 3) & ~3
    return count


class Connections:
    """Established loopback TCP connections, both ends kept open."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.ends: list[socket.socket] = []

    def grow_to(self, n: int) -> None:
        while len(self.ends) < 2 * n:
            client = socket.create_connection(self.listener.getsockname())
            server, _ = self.listener.accept()
            self.ends += [client, server]

    def close(self) -> None:
        # Reset rather than close, so that no TIME_WAIT sockets are left behind.
        linger = struct.pack("ii", 1, 0)
        for end in self.ends:
            end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            end.close()
        self.listener.close()


Method = tuple[str, Callable[[], object], int]  # name, one cycle, run every n-th round


def measure(methods: list[Method], rounds: int) -> dict[str, tuple[float, float, float, float]]:
    """Per method: (median ms, p95 ms, mean CPU ms, peak Python allocation KiB) per cycle.
    The methods take turns, round by round, so that load from elsewhere on the machine
    falls on all of them alike."""
    walls: dict[str, list[float]] = {name: [] for name, _, _ in methods}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in methods}
    for _, fn, _ in methods:
        fn()  # warm: imports, first-cycle priming
    gc.collect()
    for i in range(rounds):
        for name, fn, every in methods:
            if i % every:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            cpus[name].append(time.process_time() - cpu)
            walls[name].append(time.perf_counter() - wall)
    results = {}
    for name, fn, _ in methods:
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        w = sorted(walls[name])
        p95 = w[round(0.95 * (len(w) - 1))]
        results[name] = (
            statistics.median(w) * 1e3,
            p95 * 1e3,
            statistics.mean(cpus[name]) * 1e3,
            peak / 1024,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cycles", type=int, default=50, help="timed cycles per method and size (psutil: 1/5)"
    )
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max(SIZES) + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))

    cfg = Config()
    sampler = Sampler(cfg, counters_path=None)
    proc_reader = SocketReader("proc")
    methods: list[Method] = [
        ("edge-defender cycle", sampler.sample, 1),
        ("  same, fresh Sampler", lambda: Sampler(cfg, counters_path=None).sample(), 1),
        ("  /proc fallback path", lambda: proc_reader.read(AddressMap.current()), 1),
        ("bare netlink dump", bare_netlink_dump, 1),
        ("psutil.net_connections", lambda: psutil.net_connections("inet"), 5),
    ]

    conns = Connections()
    rows = []
    try:
        for size in SIZES:
            conns.grow_to(size)
            results = measure(methods, args.cycles)
            rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append((size, results, rss_mib))
    finally:
        conns.close()

    print(
        f"{'conns':>6}  {'method':<24}{'median ms':>10}{'p95 ms':>9}{'CPU ms':>9}"
        f"{'alloc KiB':>11}{'x bare':>8}"
    )
    for size, results, rss_mib in rows:
        bare = results["bare netlink dump"][0]
        for name, (median, p95, cpu, alloc) in results.items():
            print(
                f"{size:>6}  {name:<24}{median:>10.2f}{p95:>9.2f}{cpu:>9.2f}"
                f"{alloc:>11.0f}{median / bare:>8.2f}"
            )
        print(f"{'':>6}  peak RSS of this process so far: {rss_mib:.1f} MiB")
    print()
    for size, results, _ in rows:
        ours = results["edge-defender cycle"][0]
        ratio = ours / results["bare netlink dump"][0]
        verdict = "meets" if ratio <= 1.5 else "misses"
        line = f"{size:>5} connections: full cycle {ours:.2f} ms, {ratio:.2f}x the bare dump"
        line += f" ({verdict} the 1.5x goal)"
        if size in OLD_AGENT_MS:
            old = OLD_AGENT_MS[size]
            line += f"; {old / ours:.0f}x faster than the old agent's {old:.0f} ms"
        print(line)


if __name__ == "__main__":
    main()

"""Rule core throughput: `python bench/detect.py [--samples N]`.

- core: Detector.observe over pre-built metrics, 50 mixed behaviors (several on the same
  metric, windows, statistical thresholds, port, CIDR and string sets);
- replay: the same through the replay path, JSON lines parsed included;
- cidr: CidrSet lookups at 10,000 CIDRs (IPv4 and IPv6, addresses never repeated);
- `--state`, instead: the statistical baseline after 14 days at 10 s for each test
  distribution (saved bytes, percentile error against the exact one and its bound,
  traced memory), and the alarm state of 5 statistical and 20 static behaviors after a
  week: export_changes per sample, the full state, and a restart from it.

Goals on a Raspberry Pi-class 2-core box: core >= 500k behavior evaluations/s, cidr >=
200k lookups/s."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import math
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.baseline import Baseline
from agent.core.cidr import CidrSet
from agent.core.evaluator import Detector
from agent.core.judge import Judge
from agent.core.profile import parse_profile
from agent.core.report import make_envelope
from agent.service.replay import read_samples, replay

T0 = 1_730_000_000.0
INTERVAL_S = 10.0
SAVE_EVERY = 30  # samples: the daemon saves the alarm state every 300 s


def _numeric(name: str, metric: str, op: str, count: int, **extra: Any) -> dict[str, Any]:
    criteria = {"comparisonOperator": op, "value": {"count": count}, **extra}
    return {"name": name, "metric": metric, "criteria": criteria}


def behaviors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    counters = ("aws:all-bytes-out", "aws:all-bytes-in", "aws:all-packets-out")
    for i in range(18):  # many behaviors on few metrics, as real profiles have
        op = ("less-than", "less-than-equals", "greater-than-equals")[i % 3]
        limit = 80_000 + 1_000 * i if op.startswith("less") else i
        out.append(
            _numeric(f"n{i}", counters[i % 3], op, limit, consecutiveDatapointsToAlarm=1 + i % 3)
        )
    for i in range(4):
        out.append(_numeric(f"conn{i}", "aws:num-established-tcp-connections", "less-than", 8 + i))
    for i in range(6):
        out.append(
            _numeric(f"w{i}", counters[i % 3], "less-than", 300_000 + i, durationSeconds=300)
        )
    for i in range(5):
        statistic = ("p99", "p99.9", "p100", "p99", "p99.9")[i]
        criteria = {
            "comparisonOperator": "less-than-equals",
            "statisticalThreshold": {"statistic": statistic},
            "consecutiveDatapointsToAlarm": 3,
        }
        out.append({"name": f"s{i}", "metric": counters[i % 3], "criteria": criteria})
    for i in range(7):
        criteria = {
            "comparisonOperator": "in-port-set",
            "value": {"ports": [22, 80, 443, 1883 + i]},
        }
        out.append({"name": f"p{i}", "metric": "aws:listening-tcp-ports", "criteria": criteria})
    for i in range(6):
        cidrs = [f"10.{i}.0.0/16", "10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]
        criteria = {"comparisonOperator": "in-cidr-set", "value": {"cidrs": cidrs}}
        out.append(
            {"name": f"c{i}", "metric": "aws:destination-ip-addresses", "criteria": criteria}
        )
    for i in range(2):
        criteria = {"comparisonOperator": "in-set", "value": {"strings": ["home-net", f"lab-{i}"]}}
        out.append({"name": f"ssid{i}", "metric": "wifi_ssids", "criteria": criteria})
    criteria = {"comparisonOperator": "less-than", "value": {"number": 90}}
    out.append({"name": "cpu", "metric": "cpu_usage", "criteria": criteria})
    criteria = {"comparisonOperator": "not-in-set", "value": {"numbers": [6, 9]}}
    out.append({"name": "fds", "metric": "open_fds", "criteria": criteria})
    assert len(out) == 50, len(out)
    return out


def reports(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    out = []
    for k in range(n):
        remotes = [
            f"10.{rng.randrange(8)}.{rng.randrange(256)}.{rng.randrange(1, 255)}:443"
            for _ in range(rng.randrange(1, 6))
        ]
        ports = [22, 443] + ([8080] if rng.random() < 0.001 else [])
        out.append(
            {
                "header": {"report_id": k + 1, "version": "1.0"},
                "metrics": {
                    "listening_tcp_ports": {
                        "ports": [{"port": p} for p in ports],
                        "total": len(ports),
                    },
                    "network_stats": {
                        "bytes_in": rng.randrange(20_000, 70_000),
                        "bytes_out": rng.randrange(20_000, 70_000),
                        "packets_in": rng.randrange(100, 900),
                        "packets_out": rng.randrange(100, 900),
                    },
                    "tcp_connections": {
                        "established_connections": {
                            "connections": [
                                {"remote_addr": r, "local_port": 50000} for r in remotes
                            ],
                            "total": len(remotes),
                        }
                    },
                },
                "custom_metrics": {
                    "cpu_usage": [{"number": rng.uniform(5, 80)}],
                    "wifi_ssids": [{"string_list": ["home-net"]}],
                    "open_fds": [{"number_list": [rng.randrange(10, 40)]}],
                },
            }
        )
    return out


def bench_core(
    profile: Any, samples: list[tuple[float, dict[str, object]]]
) -> tuple[float, int, int]:
    # The pre-built samples are millions of objects the detector never owns; keep the
    # collector from walking them over and over, which the streaming daemon never pays.
    gc.collect()
    gc.freeze()
    detector = Detector([profile], "bench")
    start = time.perf_counter()
    events = sum(len(detector.observe(t, m)) for t, m, _ in samples)
    return time.perf_counter() - start, detector.datapoints, events


def bench_replay(profile: Any, lines: list[str]) -> tuple[float, int]:
    detector = Judge([profile], "bench", lambda t, p, u: Detector(p, t), {}, clients=False)
    events: list[object] = []
    start = time.perf_counter()
    replay(detector, read_samples(lines, "bench"), events.append, set())
    return time.perf_counter() - start, detector.datapoints


def bench_cidr(n_cidrs: int, n_lookups: int) -> tuple[float, float]:
    rng = random.Random(11)
    cidrs = []
    for _ in range(n_cidrs):
        if rng.random() < 0.8:
            net = ipaddress.IPv4Network((rng.getrandbits(32), rng.randrange(8, 33)), strict=False)
        else:
            net = ipaddress.IPv6Network(
                (rng.getrandbits(128), rng.randrange(16, 129)), strict=False
            )
        cidrs.append(str(net))
    start = time.perf_counter()
    cidr_set = CidrSet(cidrs)
    build = time.perf_counter() - start
    addresses = [
        str(ipaddress.IPv4Address(rng.getrandbits(32)))
        if rng.random() < 0.9
        else str(ipaddress.IPv6Address(rng.getrandbits(128)))
        for _ in range(n_lookups)
    ]
    start = time.perf_counter()
    for a in addresses:
        a in cidr_set  # noqa: B015
    return build, time.perf_counter() - start


def bench_sketches() -> None:
    from tests.core.test_core_sketch_accuracy import DISTRIBUTIONS, STATISTICS, reference

    period = 14 * 86400.0
    n = int(period / INTERVAL_S)
    print(
        f"{'distribution':<16}{'saved bytes':>12}{'traced bytes':>14}{'max error':>11}{'bound':>8}"
    )
    for name, source in DISTRIBUTIONS.items():
        rng = random.Random(name)
        values = [source(rng, i) for i in range(n)]
        tracemalloc.start()
        b = Baseline(period, exact_max=360)
        for i, v in enumerate(values):
            t = T0 + i * INTERVAL_S
            b.advance(t)
            b.add(t, v)
        b.advance(T0 + n * INTERVAL_S)
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        saved = sum(len(json.dumps(b.bucket_json(k))) for k in b.buckets())
        ordered = sorted(values)
        errors = []
        for p in STATISTICS:
            exact = reference(ordered, p)
            errors.append(abs(b.percentile(p) - exact) / abs(exact) if exact else 0.0)
        print(f"{name:<16}{saved:>12,}{traced:>14,}{max(errors):>10.2%}{b.relative_accuracy:>8.0%}")


def bench_state() -> None:
    """5 statistical and 20 static behaviors, a week of 10 s samples, then a restart."""
    criteria: list[dict[str, Any]] = [
        {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": s}}
        for s in ("p99", "p99.9", "p100", "p90", "p50")
    ]
    criteria += [
        {"comparisonOperator": "less-than", "value": {"count": 10**6 + i}} for i in range(20)
    ]
    metrics = ("aws:all-bytes-out", "aws:all-bytes-in", "aws:all-packets-out")
    doc = {
        "securityProfileName": "bench",
        "behaviors": [
            {"name": f"b{i}", "metric": metrics[i % 3], "criteria": c}
            for i, c in enumerate(criteria)
        ],
    }
    profile = parse_profile(doc)
    rng = random.Random(3)
    week = 7 * 86400 // int(INTERVAL_S)
    detector = Detector([profile], "bench")
    spent: list[float] = []
    written = 0
    for k in range(week):
        sample = {m: math.floor(rng.lognormvariate(10, 1)) for m in metrics}
        detector.observe(T0 + k * INTERVAL_S, sample)
        if k % SAVE_EVERY == 0:
            start = time.perf_counter()
            changes = detector.export_changes()
            spent.append(time.perf_counter() - start)
            written += len(json.dumps([changes.rules, changes.buckets]))
    text = json.dumps(detector.export_state())
    start = time.perf_counter()
    again = Detector([parse_profile(doc)], "bench")
    again.restore_state(json.loads(text))
    again.observe(T0 + week * INTERVAL_S, {m: 1 for m in metrics})
    restart = time.perf_counter() - start
    steady = sorted(spent[1:])
    saves = len(spent)
    print(
        f"export_changes every {SAVE_EVERY * INTERVAL_S:.0f} s: median "
        f"{steady[len(steady) // 2] * 1e6:.0f} us, max {steady[-1] * 1e6:.0f} us, "
        f"{written / saves:,.0f} bytes of JSON a save ({written / 7e6:.2f} MB a day)"
    )
    print(
        f"whole state after a week: {len(text):,} bytes of JSON; parse + restore + first "
        f"observe: {restart * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--state", action="store_true", help="baseline and state figures")
    args = parser.parse_args()
    if args.state:
        bench_sketches()
        bench_state()
        return
    profile = parse_profile({"securityProfileName": "bench", "behaviors": behaviors()})
    raw = reports(args.samples)
    lines = [json.dumps(make_envelope(T0 + k * INTERVAL_S, r)) for k, r in enumerate(raw)]
    samples = list(read_samples(lines, "bench"))
    n_behaviors = len(profile.behaviors)
    evaluations = n_behaviors * args.samples

    core_s, datapoints, events = bench_core(profile, samples)
    replay_s, _ = bench_replay(profile, lines)
    build_s, lookup_s = bench_cidr(10_000, args.lookups)

    rows = [
        (
            "core observe",
            f"{n_behaviors} behaviors x {args.samples} samples",
            core_s,
            evaluations / core_s,
            "evaluations/s",
            500_000,
        ),
        (
            "replay (JSON lines)",
            f"{len(lines)} lines",
            replay_s,
            evaluations / replay_s,
            "evaluations/s",
            None,
        ),
        (
            "cidr lookup",
            f"10000 CIDRs, {args.lookups} addresses",
            lookup_s,
            args.lookups / lookup_s,
            "lookups/s",
            200_000,
        ),
    ]
    print(f"{'case':<22}{'work':<36}{'seconds':>9}{'rate':>12}  {'unit':<15}goal")
    for name, work, secs, rate, unit, goal in rows:
        verdict = "" if goal is None else ("ok" if rate >= goal else f"below {goal:,}")
        print(f"{name:<22}{work:<36}{secs:>9.2f}{rate:>12,.0f}  {unit:<15}{verdict}")
    print(
        f"\ncore: {datapoints:,} datapoints made, {events} events; CidrSet built in {build_s:.2f} s"
    )


if __name__ == "__main__":
    main()

"""The busy device of bench/storage.py: its network namespace, its connections and
traffic, its security profile and the agent's config."""

from __future__ import annotations

import ctypes
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import threading
from pathlib import Path

from daemon import mqtt_section  # bench/ is on sys.path (storage.py puts it there)

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def enter_new_netns() -> None:
    """Move this process (and every child it starts from now on) into a new network
    namespace with only loopback, up. The kernel removes it when the last process in it
    exits: no named namespace is left behind, even after kill -9."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        raise SystemExit(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())} (run as root)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def die_with_parent() -> None:
    """preexec_fn for children: SIGKILL when the bench dies, however it dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Traffic:
    """`sockets` established TCP sockets on loopback (pairs: both ends count, as the
    agent counts them), each pair between its own addresses 127.0.1.x -> 127.0.2.x, and
    random bursts over a few of them every second so that bytes and packets vary."""

    def __init__(self, sockets: int, seed: int = 9) -> None:
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()  # drop() closes sockets the threads use
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.sel = selectors.DefaultSelector()
        for i in range(sockets // 2):
            server = socket.create_server((f"127.0.2.{i % 250 + 1}", 0))
            client = socket.create_connection(
                server.getsockname(), source_address=(f"127.0.1.{i % 250 + 1}", 0)
            )
            peer, _ = server.accept()
            server.close()
            peer.setblocking(False)
            self.sel.register(peer, selectors.EVENT_READ)
            self.pairs.append((client, peer))
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._drain)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                for client, _ in self.rng.sample(self.pairs, k=min(5, len(self.pairs))):
                    client.sendall(os.urandom(self.rng.randint(100, 30_000)))

    def _drain(self) -> None:
        while not self.stop.is_set():
            ready = self.sel.select(0.5)
            with self.lock:
                for key, _ in ready:
                    if key.fileobj.fileno() != -1:  # type: ignore[union-attr]
                        key.fileobj.recv(65536)  # type: ignore[union-attr]

    def drop(self, pairs: int) -> None:
        """Close `pairs` of the connections (two established sockets each)."""
        with self.lock:
            for _ in range(pairs):
                client, peer = self.pairs.pop()
                self.sel.unregister(peer)
                client.close()
                peer.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        for pair in self.pairs:
            for s in pair:
                s.close()


def profile(custom: str) -> dict[str, object]:
    """5 statistical behaviors on numeric metrics and 20 static ones (numbers, counts over
    a duration, port and address lists). A statistical one alarms after 5 datapoints in a
    row above its percentile, so random values rarely alarm and the figures stay steady."""

    def stat(
        name: str, metric: str, statistic: str, duration: int | None, op: str = "less-than-equals"
    ) -> dict[str, object]:
        criteria: dict[str, object] = {
            "comparisonOperator": op,
            "statisticalThreshold": {"statistic": statistic},
            "consecutiveDatapointsToAlarm": 5,
            "consecutiveDatapointsToClear": 1,
        }
        if duration:
            criteria["durationSeconds"] = duration
        return {"name": name, "metric": metric, "criteria": criteria}

    def static(name: str, metric: str, op: str, value: dict[str, object], **extra: int) -> dict:
        criteria = {"comparisonOperator": op, "value": value, **extra}
        return {"name": name, "metric": metric, "criteria": criteria}

    behaviors = [
        stat("stat-established-p90", "aws:num-established-tcp-connections", "p90", None),
        # The fill takes a sample every few ms of real time, so its byte and packet counts
        # per sample are far below a live agent's: an upper bound learned there alarms at
        # every live start. A lower bound keeps their baselines busy just the same.
        stat("stat-bytes-out-p1", "aws:all-bytes-out", "p1", 60, "greater-than-equals"),
        stat("stat-packets-in-p1", "aws:all-packets-in", "p1", 60, "greater-than-equals"),
        stat("stat-custom-p90", custom, "p90", None),
        stat("stat-custom-p99", custom, "p99", None),
    ]
    for i in range(5):
        behaviors.append(
            static(
                f"established-{i}",
                "aws:num-established-tcp-connections",
                "less-than",
                {"count": 1000 + i},
                consecutiveDatapointsToAlarm=1 + i % 3,
            )
        )
    for i, metric in enumerate(
        ("all-bytes-out", "all-bytes-in", "all-packets-out", "all-packets-in")
    ):
        behaviors.append(
            static(
                f"{metric}-limit",
                f"aws:{metric}",
                "less-than-equals",
                {"count": 10**9},
                durationSeconds=60 * (i + 1),
            )
        )
    for i in range(4):
        behaviors.append(static(f"custom-{i}", custom, "less-than", {"number": 10_000.0 + i}))
    behaviors += [
        static("tcp-ports", "aws:listening-tcp-ports", "not-in-port-set", {"ports": [23, 2323]}),
        static("udp-ports", "aws:listening-udp-ports", "not-in-port-set", {"ports": [53, 161]}),
        static("num-tcp-ports", "aws:num-listening-tcp-ports", "less-than", {"count": 100}),
        static("num-udp-ports", "aws:num-listening-udp-ports", "less-than", {"count": 100}),
        static(
            "destinations",
            "aws:destination-ip-addresses",
            "not-in-cidr-set",
            {"cidrs": ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]},
        ),
        static(
            "destinations-loopback",
            "aws:destination-ip-addresses",
            "in-cidr-set",
            {"cidrs": ["127.0.0.0/8"]},
        ),
        static(
            "established-floor",
            "aws:num-established-tcp-connections",
            "greater-than-equals",
            {"count": 0},
        ),
    ]
    assert len(behaviors) == 25, len(behaviors)
    return {"securityProfileName": "bench-storage", "behaviors": behaviors, "version": 1}


def write_config(
    config: Path, *, state_dir: Path, custom_file: Path, pki: Path, port: int | None
) -> Path:
    """The agent's config, with its profile beside it and the broker at `port` if any."""
    d = config.parent
    (d / "profile.json").write_text(json.dumps(profile("bench_number"), indent=1))
    mqtt = mqtt_section(pki, port) if port else ""
    config.write_text(
        f"""thing_name = "bench-{d.name}"
state_dir = "{state_dir}"
[sampling]
interval_s = 10.0
interfaces_include = ["lo"]
{mqtt}[detect]
profiles = ["{d / "profile.json"}"]
[[custom_metrics]]
name = "bench_number"
type = "number"
source = "file"
path = "{custom_file}"
"""
    )
    config.chmod(0o600)
    return config

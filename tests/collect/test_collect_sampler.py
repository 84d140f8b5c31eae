"""The whole cycle: live sockets of this test over netlink, network counters from a
/proc tree written here, a custom metric; and a cycle that goes on when a part fails."""

from __future__ import annotations

import logging
import shutil
import socket
import sys
from pathlib import Path

import pytest

from agent.collect.sampler import Sampler
from agent.collect.sockets import SocketSource
from agent.config import Config, CustomMetricConfig, SamplingConfig
from agent.core.sample import CustomMetric, NetworkStats

NET_DEV = (
    Path(__file__).resolve().parents[1] / "fixtures" / "collect" / "netdev" / "proc" / "net" / "dev"
)


def proc_tree(root: Path) -> Path:
    """A /proc with net/dev (the captured one: lo, ifb0, ifb1, eth0) and a boot id."""
    (root / "net").mkdir(parents=True)
    shutil.copyfile(NET_DEV, root / "net" / "dev")
    (root / "sys" / "kernel" / "random").mkdir(parents=True)
    (root / "sys" / "kernel" / "random" / "boot_id").write_text("boot-1\n")
    return root


def grow_eth0(proc: Path, by_bytes: int) -> None:
    dev = proc / "net" / "dev"
    lines = dev.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip().startswith("eth0:"):
            name, rest = line.split(":", 1)
            fields = rest.split()
            fields[0] = str(int(fields[0]) + by_bytes)
            lines[i] = f"{name}: {' '.join(fields)}\n"
    dev.write_text("".join(lines))


def config(source: SocketSource = "netlink") -> Config:
    custom = CustomMetricConfig(
        name="answer", type="number", source="command", command=[sys.executable, "-c", "print(42)"]
    )
    return Config(sampling=SamplingConfig(socket_source=source), custom_metrics=[custom])


def test_a_cycle_has_sockets_stats_and_custom_metrics_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    proc = proc_tree(tmp_path / "proc")
    counters = tmp_path / "state" / "netcounters.json"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            first = Sampler(config(), counters_path=counters, proc_root=proc).sample()
            client_port = client.getsockname()[1]

    assert first.network_stats is None  # nothing to take a delta from yet
    assert first.tcp_ports is not None and first.connections is not None
    assert any(p.port == port and p.interface == "lo" for p in first.tcp_ports)
    assert any(
        c.remote_addr == f"127.0.0.1:{port}" and c.local_port == client_port
        for c in first.connections
    )
    assert list(first.custom) == [CustomMetric("answer", "number", 42)]

    grow_eth0(proc, 1500)
    restarted = Sampler(config(), counters_path=counters, proc_root=proc).sample()
    assert restarted.network_stats == NetworkStats(1500, 0, 0, 0)


def test_a_part_that_cannot_be_read_is_logged_and_the_cycle_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = proc_tree(tmp_path / "proc")  # has no net/tcp: the /proc socket source fails
    sampler = Sampler(config("proc"), counters_path=None, proc_root=proc)
    sampler.sample()
    (proc / "net" / "dev").unlink()
    with caplog.at_level(logging.WARNING):
        sample = sampler.sample()
    assert sample.tcp_ports is None
    assert sample.udp_ports is None
    assert sample.connections is None
    assert sample.network_stats is None
    assert list(sample.custom) == [CustomMetric("answer", "number", 42)]
    assert "sockets_unreadable source=proc" in caplog.text
    assert "netstats_unreadable" in caplog.text

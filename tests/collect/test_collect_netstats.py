"""Network stats against /proc and /sys trees written here: deltas, interface choice,
persistence across a restart and a reboot."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from agent.collect.netstats import NetStats, parse_net_dev
from agent.config import SamplingConfig
from agent.core.sample import NetworkStats

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "collect" / "netdev"

HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast"
    "|bytes    packets errs drop fifo colls carrier compressed\n"
)
Counters = tuple[int, int, int, int]  # bytes in, bytes out, packets in, packets out


class Host:
    """A fake /proc and /sys with interfaces lo (loopback), eth0 and wlan0."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.sys = root / "sys"
        (self.proc / "net").mkdir(parents=True)
        (self.proc / "sys" / "kernel" / "random").mkdir(parents=True)
        for name, flags in (("lo", "0x9"), ("eth0", "0x1003"), ("wlan0", "0x1003")):
            (self.sys / "class" / "net" / name).mkdir(parents=True)
            (self.sys / "class" / "net" / name / "flags").write_text(flags + "\n")
        self.boot("boot-1")

    def boot(self, boot_id: str) -> None:
        (self.proc / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")

    def counters(self, **interfaces: Counters) -> None:
        lines = [
            f"{name:>6}: {bi} {pi} 0 0 0 0 0 0 {bo} {po} 0 0 0 0 0 0\n"
            for name, (bi, bo, pi, po) in interfaces.items()
        ]
        (self.proc / "net" / "dev").write_text(HEADER + "".join(lines))

    def netstats(self, state: Path | None = None, **sampling: list[str]) -> NetStats:
        return NetStats(
            SamplingConfig(**sampling), state_path=state, proc_root=self.proc, sys_root=self.sys
        )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_parses_proc_net_dev_like_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    path = FIXTURE / "proc" / "net" / "dev"
    ours = parse_net_dev(path.read_text(), str(path))
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(FIXTURE / "proc"))
    theirs = psutil.net_io_counters(pernic=True, nowrap=False)
    assert ours.keys() == theirs.keys()
    for name, c in ours.items():
        t = theirs[name]
        assert (c.bytes_in, c.bytes_out, c.packets_in, c.packets_out) == (
            t.bytes_recv,
            t.bytes_sent,
            t.packets_recv,
            t.packets_sent,
        )


def test_old_kernels_without_a_space_after_the_colon() -> None:
    text = HEADER + "  eth0:123 4 0 0 0 0 0 0 567 8 0 0 0 0 0 0\n"
    assert parse_net_dev(text, "dev")["eth0"] == (123, 567, 4, 8)


def test_a_bad_line_is_named() -> None:
    with pytest.raises(ValueError, match=r"/p/net/dev: line 3 is not an interface entry"):
        parse_net_dev(HEADER + "eth0 1 2 3\n", "/p/net/dev")
    with pytest.raises(ValueError, match="line 3 has a counter that is not a number"):
        parse_net_dev(HEADER + "eth0: " + "x " * 16 + "\n", "/p/net/dev")


def test_first_sample_has_no_delta_then_non_loopback_deltas_are_summed(host: Host) -> None:
    host.counters(lo=(10, 10, 1, 1), eth0=(100, 50, 10, 5), wlan0=(7, 7, 1, 1))
    stats = host.netstats()
    assert stats.sample() is None
    host.counters(lo=(9000, 9000, 90, 90), eth0=(180, 90, 18, 9), wlan0=(17, 27, 2, 3))
    assert stats.sample() == NetworkStats(bytes_in=90, bytes_out=60, packets_in=9, packets_out=6)


def test_include_and_exclude(host: Host) -> None:
    host.counters(lo=(0, 0, 0, 0), eth0=(0, 0, 0, 0), wlan0=(0, 0, 0, 0))
    only_wlan = host.netstats(interfaces_include=["wlan*"])
    not_wlan = host.netstats(interfaces_exclude=["wlan0"])
    only_wlan.sample()
    not_wlan.sample()
    host.counters(lo=(5, 5, 5, 5), eth0=(100, 100, 1, 1), wlan0=(20, 30, 2, 3))
    assert only_wlan.sample() == NetworkStats(20, 30, 2, 3)
    assert not_wlan.sample() == NetworkStats(100, 100, 1, 1)


def test_resets_and_interfaces_that_come_and_go_never_go_negative(host: Host) -> None:
    host.counters(eth0=(5000, 5000, 50, 50), wlan0=(100, 100, 1, 1))
    stats = host.netstats()
    stats.sample()
    # eth0 was re-created (counters restarted), wlan0 went away.
    host.counters(eth0=(300, 200, 3, 2))
    assert stats.sample() == NetworkStats(300, 200, 3, 2)
    # wlan0 is back: all it counted is new.
    host.counters(eth0=(400, 250, 4, 3), wlan0=(60, 40, 6, 4))
    assert stats.sample() == NetworkStats(160, 90, 7, 5)


def test_a_restart_continues_the_deltas(host: Host, tmp_path: Path) -> None:
    state = tmp_path / "state" / "netcounters.json"
    host.counters(eth0=(1000, 1000, 10, 10))
    host.netstats(state).sample()
    host.counters(eth0=(1500, 1100, 15, 11))
    # A new process, as after `systemctl restart`.
    assert host.netstats(state).sample() == NetworkStats(500, 100, 5, 1)
    assert [p.name for p in state.parent.iterdir()] == ["netcounters.json"]  # no temp left
    assert json.loads(state.read_text())["counters"]["eth0"] == [1500, 1100, 15, 11]


def test_after_a_reboot_the_first_sample_has_no_delta(host: Host, tmp_path: Path) -> None:
    state = tmp_path / "netcounters.json"
    host.counters(eth0=(10**9, 10**9, 10**6, 10**6))
    host.netstats(state).sample()
    host.boot("boot-2")
    host.counters(eth0=(4000, 3000, 40, 30))  # what the interface counted since boot
    after = host.netstats(state)
    assert after.sample() is None
    host.counters(eth0=(4100, 3050, 41, 31))
    assert after.sample() == NetworkStats(100, 50, 1, 1)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"boot_id": "boot-1", "counters": {"eth0": [1, 2]}}', "must be 4 non-negative integers"),
        ("", "Expecting value"),  # what a power cut can leave of an unsynced rename
    ],
    ids=["bad-counters", "empty"],
)
def test_an_unreadable_state_file_starts_afresh(
    host: Host, tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, error: str
) -> None:
    state = tmp_path / "netcounters.json"
    state.write_text(text)
    host.counters(eth0=(10, 10, 1, 1))
    with caplog.at_level(logging.WARNING):
        assert host.netstats(state).sample() is None
    assert "netcounters_unreadable" in caplog.text
    assert error in caplog.text


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_saving_the_counters_never_syncs(host: Host, tmp_path: Path) -> None:
    """Ten cycles in a real process, traced: not one fsync or fdatasync."""
    state = tmp_path / "netcounters.json"
    host.counters(eth0=(10, 10, 1, 1))
    script = (
        "from pathlib import Path\n"
        "from agent.collect.netstats import NetStats\n"
        "from agent.config import SamplingConfig\n"
        f"stats = NetStats(SamplingConfig(), state_path=Path({str(state)!r}),"
        f" proc_root=Path({str(host.proc)!r}), sys_root=Path({str(host.sys)!r}))\n"
        "for _ in range(10):\n"
        "    stats.sample()\n"
    )
    traced = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,sync_file_range,rename",
         sys.executable, "-c", script],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    calls = [line for line in traced.stderr.splitlines() if "(" in line]
    assert sum("rename" in call for call in calls) == 10  # one atomic replace a cycle
    assert not [call for call in calls if "sync" in call]
    assert json.loads(state.read_text())["counters"]["eth0"] == [10, 10, 1, 1]


def test_a_failing_save_is_logged_once_and_sampling_goes_on(
    host: Host, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    host.counters(eth0=(10, 10, 1, 1))
    stats = host.netstats(blocker / "netcounters.json")
    with caplog.at_level(logging.WARNING):
        stats.sample()
        host.counters(eth0=(20, 20, 2, 2))
        assert stats.sample() == NetworkStats(10, 10, 1, 1)
    assert caplog.text.count("netcounters_save_failed") == 1

"""Bytes and packets in and out since the previous sample, summed over the chosen
interfaces. The arithmetic (wraps, resets, interfaces that come and go, reboots) is
in agent.core.counters; this module reads the counters and keeps the last ones in a
file so that a restarted agent continues its deltas."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.config import SamplingConfig
from agent.core.counters import (
    CounterState,
    IfCounters,
    advance,
    select_interfaces,
    state_from_json,
    state_to_json,
    total,
)
from agent.core.sample import NetworkStats
from agent.files import replace_file
from agent.logs import kv

log = logging.getLogger(__name__)

IFF_LOOPBACK = 0x8


def parse_net_dev(text: str, source: str) -> dict[str, IfCounters]:
    """Raw counters per interface from /proc/net/dev; `source` names the file in errors."""
    counters = {}
    for number, line in enumerate(text.splitlines()[2:], start=3):
        name, sep, rest = line.partition(":")
        fields = rest.split()
        # 8 receive fields (bytes, packets first), then 8 transmit fields.
        if not sep or len(fields) < 16:
            raise ValueError(f"{source}: line {number} is not an interface entry: {line!r}")
        try:
            counters[name.strip()] = IfCounters(
                int(fields[0]), int(fields[8]), int(fields[1]), int(fields[9])
            )
        except ValueError:
            raise ValueError(
                f"{source}: line {number} has a counter that is not a number"
            ) from None
    return counters


def read_boot_id(proc_root: Path) -> str:
    return (proc_root / "sys" / "kernel" / "random" / "boot_id").read_text().strip()


def load_counters(path: Path) -> CounterState | None:
    """The saved state, or None when there is none or it cannot be used (logged)."""
    try:
        return state_from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning(kv("netcounters_unreadable", path=path, error=e, action="starting afresh"))
        return None


def save_counters(path: Path, state: CounterState) -> None:
    """Write atomically (a temporary file renamed over the old one), never synced.

    A crash of the agent loses nothing: the kernel holds the new file. A power cut loses
    what the kernel had not written back yet (ext4: up to ~30 s of saves), or leaves an
    empty file on a file system that does not order the data before the rename; both
    are harmless, because a power cut is a reboot and the counters are valid within one
    boot only: the boot-id check drops the old file (an empty one is logged and
    dropped), and the first sample after it has no delta, as after any reboot. So a
    sync bought nothing; it cost ~35% more device writes. The replace itself still
    costs ~20 KB of device writes a cycle on ext4 (data and journal; ~180 MB a day at
    10 s), which is why the file belongs on a tmpfs (the daemon's RUNTIME_DIRECTORY
    under systemd). Saving less often would not do: a restart would count the deltas
    since the last save twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, json.dumps(state_to_json(state), separators=(",", ":")))


class NetStats:
    """One `sample()` per cycle. `state_path` None keeps the counters in memory only."""

    def __init__(
        self,
        sampling: SamplingConfig,
        *,
        state_path: Path | None,
        proc_root: Path = Path("/proc"),
        sys_root: Path = Path("/sys"),
    ) -> None:
        self._include = sampling.interfaces_include
        self._exclude = sampling.interfaces_exclude
        self._state_path = state_path
        self._net_dev = proc_root / "net" / "dev"
        self._sys_net = sys_root / "class" / "net"
        # Fixed for the life of the process; read once.
        self._boot_id = read_boot_id(proc_root)
        self._state = load_counters(state_path) if state_path else None
        self._loopback: dict[str, bool] = {}
        self._save_failed = False

    def sample(self) -> NetworkStats | None:
        """Deltas since the previous sample; None when there is none from this boot.
        OSError or ValueError when /proc/net/dev cannot be read."""
        current = parse_net_dev(self._net_dev.read_text(), str(self._net_dev))
        state, deltas = advance(self._state, self._boot_id, current)
        self._state = state
        if self._state_path:
            self._save(self._state_path, state)
        if deltas is None:
            return None
        loopback = [name for name in current if self._is_loopback(name)]
        return total(deltas, select_interfaces(current, loopback, self._include, self._exclude))

    def _is_loopback(self, name: str) -> bool:
        # The loopback interface is made with its namespace and never goes away, so one
        # look per name is enough; the bound only matters for churning veth names.
        if name not in self._loopback:
            if len(self._loopback) > 64:
                self._loopback.clear()
            try:
                flags = int((self._sys_net / name / "flags").read_text(), 16)
                self._loopback[name] = bool(flags & IFF_LOOPBACK)
            except (OSError, ValueError):
                return name == "lo"
        return self._loopback[name]

    def _save(self, path: Path, state: CounterState) -> None:
        try:
            save_counters(path, state)
        except OSError as e:
            if not self._save_failed:  # once per outage, not every cycle
                log.warning(kv("netcounters_save_failed", path=path, error=e))
            self._save_failed = True
        else:
            self._save_failed = False

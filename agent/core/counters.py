"""Network counter deltas that are never negative, per interface: the idea of psutil's
`_common.wrap_numbers`, kept pure (previous raw counters in, deltas out), plus the
boot-scoped state that lets a restarted agent continue its deltas. No I/O.

Choices, so that `aws:all-bytes-*` never alarms on a phantom spike:

- A counter that went down was reset (driver reload, interface re-created under the
  same name) or wrapped at 2**32 (32-bit driver counters). Either way it counted up
  from zero since, so the delta is the new value. That value is always plausible: it
  is below the previous one, so it can never be a larger spike than what the counter
  had shown before. On a true wrap it undercounts by 2**32 - previous, which is small
  exactly when a wrap is likely; guessing "wrap" instead would turn every reset into a
  phantom jump of up to 4 GiB.
- An interface that appeared since the previous sample counted all its traffic since
  then: its delta is its counters. One that went away drops out.
- Counters from another boot (boot id changed) are discarded: the first sample after a
  reboot, like the very first sample, yields no delta (None) rather than the traffic
  since boot, which would land in one datapoint as a spike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from agent.core.sample import NetworkStats


class IfCounters(NamedTuple):
    """Raw counters of one interface, or their deltas."""

    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int


@dataclass(frozen=True, slots=True)
class CounterState:
    """The last raw counters of every interface, and the boot they belong to."""

    boot_id: str
    counters: Mapping[str, IfCounters]


def counter_delta(previous: int, current: int) -> int:
    """The increase of one counter; a counter that went down restarted from zero."""
    return current - previous if current >= previous else current


def interface_deltas(
    previous: Mapping[str, IfCounters], current: Mapping[str, IfCounters]
) -> dict[str, IfCounters]:
    """Deltas of every interface in `current`; see the module notes for new interfaces."""
    deltas = {}
    for name, cur in current.items():
        prev = previous.get(name)
        if prev is None:
            deltas[name] = cur
        else:
            deltas[name] = IfCounters(
                *(counter_delta(p, c) for p, c in zip(prev, cur, strict=True))
            )
    return deltas


def advance(
    state: CounterState | None, boot_id: str, current: Mapping[str, IfCounters]
) -> tuple[CounterState, dict[str, IfCounters] | None]:
    """The next state and the per-interface deltas since `state`; None for the deltas
    when there is no earlier sample from this boot."""
    new_state = CounterState(boot_id, dict(current))
    if state is None or state.boot_id != boot_id:
        return new_state, None
    return new_state, interface_deltas(state.counters, current)


def select_interfaces(
    names: Iterable[str],
    loopback: Iterable[str],
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> list[str]:
    """The interfaces to sum. With no `include` patterns, every non-loopback interface;
    otherwise those matching one (shell-style patterns such as `wlan*`). `exclude`
    patterns always win."""
    include, exclude, loopback = list(include), list(exclude), set(loopback)
    chosen = []
    for name in names:
        wanted = any(fnmatchcase(name, p) for p in include) if include else name not in loopback
        if wanted and not any(fnmatchcase(name, p) for p in exclude):
            chosen.append(name)
    return chosen


def total(deltas: Mapping[str, IfCounters], names: Iterable[str]) -> NetworkStats:
    """The deltas of `names` summed into the report's network_stats."""
    sums = [0, 0, 0, 0]
    for name in names:
        for i, value in enumerate(deltas[name]):
            sums[i] += value
    return NetworkStats(*sums)


def state_to_json(state: CounterState) -> dict[str, Any]:
    return {"boot_id": state.boot_id, "counters": {k: list(v) for k, v in state.counters.items()}}


def state_from_json(obj: object) -> CounterState:
    """The state saved by `state_to_json`; ValueError naming what is wrong otherwise."""
    if not isinstance(obj, dict):
        raise ValueError("counter state must be a JSON object")
    boot_id = obj.get("boot_id")
    if not isinstance(boot_id, str):
        raise ValueError("counter state: 'boot_id' must be a string")
    raw = obj.get("counters")
    if not isinstance(raw, dict):
        raise ValueError("counter state: 'counters' must be an object")
    counters = {}
    for name, values in raw.items():
        if (
            not isinstance(values, list)
            or len(values) != len(IfCounters._fields)
            or not all(type(v) is int and v >= 0 for v in values)
        ):
            raise ValueError(f"counter state: counters[{name!r}] must be 4 non-negative integers")
        counters[name] = IfCounters(*values)
    return CounterState(boot_id, counters)

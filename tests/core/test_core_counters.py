from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.counters import (
    CounterState,
    IfCounters,
    advance,
    counter_delta,
    interface_deltas,
    select_interfaces,
    state_from_json,
    state_to_json,
    total,
)
from agent.core.sample import NetworkStats

U32 = 2**32


def c(*values: int) -> IfCounters:
    return IfCounters(*values)


def test_an_increase_is_the_difference() -> None:
    assert counter_delta(100, 250) == 150
    assert counter_delta(7, 7) == 0


def test_a_counter_that_went_down_counts_from_zero() -> None:
    assert counter_delta(5_000_000, 1_200) == 1_200  # reset: interface re-created
    # A 32-bit wrap just below the limit: undercounts by the 100 left before it.
    assert counter_delta(U32 - 100, 50) == 50


@given(st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=30))
def test_deltas_are_never_negative(readings: list[int]) -> None:
    assert all(counter_delta(a, b) >= 0 for a, b in pairwise(readings))


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=30))
def test_without_resets_deltas_add_up_to_the_rise(steps: list[int]) -> None:
    readings = [sum(steps[:i]) for i in range(len(steps) + 1)]
    deltas = [counter_delta(a, b) for a, b in pairwise(readings)]
    assert sum(deltas) == readings[-1] - readings[0]


def test_interfaces_reset_come_and_go_each_on_their_own() -> None:
    previous = {"eth0": c(1000, 500, 10, 5), "wlan0": c(9000, 9000, 90, 90), "ppp0": c(1, 1, 1, 1)}
    current = {
        "eth0": c(1500, 700, 14, 7),  # normal
        "wlan0": c(300, 9100, 3, 91),  # receive counters reset
        "usb0": c(40, 20, 2, 1),  # new since the previous sample
    }  # ppp0 went away
    assert interface_deltas(previous, current) == {
        "eth0": c(500, 200, 4, 2),
        "wlan0": c(300, 100, 3, 1),
        "usb0": c(40, 20, 2, 1),
    }


def test_no_delta_without_an_earlier_sample_of_this_boot() -> None:
    now = {"eth0": c(10, 20, 1, 2)}
    state, deltas = advance(None, "boot-a", now)
    assert deltas is None
    assert state == CounterState("boot-a", now)

    later = {"eth0": c(15, 28, 2, 3)}
    state, deltas = advance(state, "boot-a", later)
    assert deltas == {"eth0": c(5, 8, 1, 1)}

    after_reboot = {"eth0": c(999, 999, 9, 9)}
    state, deltas = advance(state, "boot-b", after_reboot)
    assert deltas is None
    assert state.boot_id == "boot-b"
    assert state.counters == after_reboot


def test_select_interfaces() -> None:
    names = ["lo", "eth0", "wlan0", "wlan1", "docker0"]
    assert select_interfaces(names, ["lo"]) == ["eth0", "wlan0", "wlan1", "docker0"]
    assert select_interfaces(names, ["lo"], exclude=["docker*"]) == ["eth0", "wlan0", "wlan1"]
    assert select_interfaces(names, ["lo"], include=["wlan*"], exclude=["wlan1"]) == ["wlan0"]
    # Listing loopback on purpose includes it.
    assert select_interfaces(names, ["lo"], include=["lo", "eth0"]) == ["lo", "eth0"]


def test_total_sums_only_the_chosen_interfaces() -> None:
    deltas = {"lo": c(1000, 1000, 10, 10), "eth0": c(5, 6, 1, 2), "wlan0": c(50, 60, 3, 4)}
    assert total(deltas, ["eth0", "wlan0"]) == NetworkStats(55, 66, 4, 6)
    assert total(deltas, []) == NetworkStats(0, 0, 0, 0)


def test_state_round_trips_through_json() -> None:
    state = CounterState("b1", {"eth0": c(1, 2, 3, 4), "wlan0": c(2**63, 0, 0, 7)})
    assert state_from_json(state_to_json(state)) == state


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "must be a JSON object"),
        ({"counters": {}}, "'boot_id' must be a string"),
        ({"boot_id": "b", "counters": []}, "'counters' must be an object"),
        ({"boot_id": "b", "counters": {"eth0": [1, 2, 3]}}, r"counters\['eth0'\] must be 4"),
        ({"boot_id": "b", "counters": {"eth0": [1, 2, 3, -4]}}, "non-negative"),
        ({"boot_id": "b", "counters": {"eth0": [1, 2, 3, 4.5]}}, "integers"),
        ({"boot_id": "b", "counters": {"eth0": [1, 2, 3, True]}}, "integers"),
    ],
)
def test_bad_state_is_named(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        state_from_json(obj)

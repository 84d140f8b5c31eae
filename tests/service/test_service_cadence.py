from agent.service.cadence import MonotonicScheduler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(times: list[float], interval_s: float = 10.0) -> list[float]:
    clock = Clock()
    sched = MonotonicScheduler(clock)
    runs: list[float] = []
    sched.every_s(interval_s, lambda: runs.append(clock.now))
    for t in times:
        clock.now = 1000.0 + t
        sched.run_pending()
    return [r - 1000.0 for r in runs]


def test_runs_once_per_interval_on_the_monotonic_clock() -> None:
    assert drive([1, 9.9, 10, 10.5, 19, 20, 30]) == [10, 20, 30]


def test_an_overrun_runs_once_late_and_keeps_the_phase() -> None:
    # Due at 30 and 40, but the loop only woke at 45: one late run, next at 50.
    assert drive([10, 20, 45, 46, 49, 50, 60]) == [10, 20, 45, 50, 60]


def test_wall_clock_plays_no_part() -> None:
    # The wall clock is whatever the machine says; only the injected monotonic clock
    # decides, so a stepped wall clock can neither stall nor burst the jobs.
    clock = Clock()
    sched = MonotonicScheduler(clock)
    runs: list[float] = []
    sched.every_s(5.0, lambda: runs.append(clock.now))
    assert sched.idle_seconds == 5.0
    clock.now += 5.0
    sched.run_pending()
    assert runs == [1005.0]
    assert sched.idle_seconds == 5.0


def test_idle_seconds_is_the_nearest_job() -> None:
    clock = Clock()
    sched = MonotonicScheduler(clock)
    sched.every_s(10.0, lambda: None)
    sched.every_s(3.0, lambda: None)
    assert sched.idle_seconds == 3.0
    clock.now += 4.0
    assert sched.idle_seconds == 0.0

"""`schedule` jobs timed on a monotonic clock.

`schedule` reads the wall clock; on a Pi without RTC, NTP may step it by hours
after boot, which would stall a job (clock stepped back) or fire it late. Here
every job's due time is monotonic: a wall-clock jump changes nothing, and a job
that overran runs once, late, and is then due one interval later: never doubled.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable

import schedule


class MonotonicJob(schedule.Job):
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, interval_s: float, scheduler: MonotonicScheduler) -> None:
        super().__init__(1, scheduler)
        self.interval_s = interval_s
        self.unit = "seconds"
        self.clock = scheduler.clock
        self.due = self.clock()

    @property
    def should_run(self) -> bool:
        return self.clock() >= self.due

    def run(self) -> object:
        result = self.job_func()
        self.last_run = datetime.datetime.now()
        self._schedule_next_run()
        return result

    def _schedule_next_run(self) -> None:
        now = self.clock()
        if self.last_run is None:
            self.due = now + self.interval_s
        else:
            # Keep the phase; slots an overrun missed are skipped, never run back to back.
            self.due += self.interval_s
            if self.due <= now:
                self.due += self.interval_s * (math.floor((now - self.due) / self.interval_s) + 1)
        # schedule's own repr and ordering read next_run; keep it informative.
        self.next_run = datetime.datetime.now() + datetime.timedelta(seconds=self.due - now)


class MonotonicScheduler(schedule.Scheduler):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock

    def every_s(self, interval_s: float, func: Callable[[], object]) -> MonotonicJob:
        """Run `func` every `interval_s` seconds, first one interval from now."""
        job = MonotonicJob(interval_s, self)
        job.do(func)
        return job

    @property
    def idle_seconds(self) -> float | None:  # type: ignore[override]
        if not self.jobs:
            return None
        return max(0.0, min(j.due for j in self.jobs if isinstance(j, MonotonicJob)) - self.clock())

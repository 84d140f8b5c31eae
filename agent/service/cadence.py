"""Jobs timed on a monotonic clock.

On a Pi without RTC, NTP may step the wall clock by hours after boot, which would
stall a wall-clock job (clock stepped back) or fire it late. Here every job's due time
is monotonic: a wall-clock jump changes nothing, and a job that overran runs once,
late, and is then due at its next slot: never doubled. (This replaced `schedule`,
whose jobs read the wall clock; bending it to a monotonic one meant overriding a
private method.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Job:
    interval_s: float
    func: Callable[[], object]
    due: float


class MonotonicScheduler:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.jobs: list[Job] = []

    def every_s(self, interval_s: float, func: Callable[[], object]) -> Job:
        """Run `func` every `interval_s` seconds, first one interval from now."""
        job = Job(interval_s, func, self.clock() + interval_s)
        self.jobs.append(job)
        return job

    def run_pending(self) -> None:
        """Run every due job once, in the order they were added."""
        for job in self.jobs:
            now = self.clock()
            if now < job.due:
                continue
            job.func()
            # Keep the phase; slots an overrun missed are skipped, never run back to back.
            job.due += job.interval_s
            now = self.clock()
            if job.due <= now:
                job.due += job.interval_s * (math.floor((now - job.due) / job.interval_s) + 1)

    @property
    def idle_seconds(self) -> float | None:
        """Seconds until the nearest job is due (0 when one is late), None without jobs."""
        if not self.jobs:
            return None
        return max(0.0, min(j.due for j in self.jobs) - self.clock())

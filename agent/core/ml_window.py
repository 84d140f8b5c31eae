"""The rolling window ML behaviors are judged and trained on: at every sample, the
metric's aggregate over the trailing WINDOW_S (5 minutes, the interval at which AWS's
device-side metrics reach its ML Detect). One datapoint a sample, as before, but each
one says what the last 5 minutes held: a 10 s sample is a noisy witness of a doubled
upload, 5 minutes of them are not (docs/ml-model.md has the figures). The rule core
(agent.core.evaluator) and the training (agent.service.trainer) both use this class,
so a model judges exactly the kind of value it was trained on.

How each kind of metric is aggregated (AGGREGATES, the one table):

- counters (bytes, packets, messages, connection attempts: a sample holds the count
  since the previous sample): the SUM over the window. A sample's count is spread
  evenly over the time since the previous sample, and only the part inside the window
  is counted, so the sum covers exactly WINDOW_S whatever the sampling interval
  (<= WINDOW_S) and its jitter: a model trained on a 10 s device judges a 30 s one.
  A custom metric is a counter when the device says so (`counters`: the capture's count
  of connections opened, agent.service.detect.count_metrics).
- gauges (listening ports, established connections, message size: read at sampling
  time) and other custom numbers (a level or a count, unknown): the MAX of the samples
  taken in the window. A beacon that holds a connection for a few seconds every 5
  minutes then shows as +1 all the time (when a sample sees it).

Gaps. The window holds only samples it saw. When two samples are more than WINDOW_S
apart (missed samples, the agent down, a reboot) it starts again at the later one,
whose value is not used (a counter's count then covers the gap, and traffic nobody
watched is not spread over time); a window gives no value until its samples cover
WINDOW_S since that start. So no aggregate ever sums a gap or stands for less than a
full window. With samples further apart than WINDOW_S (`sampling.interval_s` > 300)
every sample is a gap and nothing is judged.

Pure: sample times come in as arguments; they must not go back."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from itertools import islice
from typing import Any

from agent.core.metrics import AWS_METRICS, Kind

WINDOW_S = 300.0
MAX_WINDOW_S = 86_400.0
SUM, MAX = "sum", "max"
AGGREGATES: dict[Kind, str] = {Kind.COUNTER: SUM, Kind.GAUGE: MAX, Kind.NUMBER: MAX}


def metric_kind(metric: str, counters: frozenset[str] = frozenset()) -> Kind:
    """The kind of a metric ML can model: an aws: number metric's own, else a counter
    for a custom metric named in `counters` (its samples are counts since the previous
    one), else a custom number. ValueError for an aws: metric that is not a number."""
    if metric in counters and not metric.startswith("aws:"):
        return Kind.COUNTER
    kind = AWS_METRICS.get(metric, Kind.NUMBER)
    if kind not in AGGREGATES:
        raise ValueError(f"ML detection takes number metrics only, not {metric} ({kind})")
    return kind


def check_window_s(window_s: object) -> float:
    """A window length as a float; ValueError naming it unless 0 < window_s <= a day."""
    if (
        isinstance(window_s, bool)
        or not isinstance(window_s, int | float)
        or not 0 < window_s <= MAX_WINDOW_S
    ):
        raise ValueError(f"ML window {window_s!r} is not a number of seconds in (0, 86400]")
    return float(window_s)


class Window:
    """The trailing `window_s` of one metric's samples; `add` gives its aggregate."""

    __slots__ = ("_acc", "_at_max", "_sum", "_times", "_values", "since", "window_s")

    def __init__(self, kind: Kind, window_s: float = WINDOW_S) -> None:
        if kind not in AGGREGATES:
            raise ValueError(f"ML windows aggregate number metrics only, not {kind}")
        self._sum = AGGREGATES[kind] == SUM
        self.window_s = check_window_s(window_s)
        # Samples in time order. The first one only marks where the second one's count
        # began: once the window is full, it is the latest sample at or before its start.
        self._times: deque[float] = deque()
        self._values: deque[float] = deque()
        # The sum, or the largest, of the values after the first, kept as samples come and
        # go (exact for the integer counts of counters); how many of them are the largest.
        self._acc: float = 0
        self._at_max = 0
        self.since: float | None = None  # the start of the current run of samples

    @property
    def aggregate(self) -> str:
        return SUM if self._sum else MAX

    def __len__(self) -> int:
        return len(self._times)

    def add(self, t: float, value: float) -> float | None:
        """Take the sample (t, value) and return the aggregate over (t - window_s, t],
        or None while the samples since the last gap do not cover window_s yet.
        ValueError when t is before the previous sample's time."""
        times, values = self._times, self._values
        if times:
            last = times[-1]
            if t < last:
                raise ValueError(f"ML window: sample time {t!r} is before the previous {last!r}")
            if t - last > self.window_s:  # a gap: start again
                times.clear()
                values.clear()
        if not times:
            self.since, self._acc, self._at_max = t, 0, 0
        elif self._sum:
            self._acc += value
        elif len(times) == 1 or value > self._acc:
            self._acc, self._at_max = value, 1
        elif value == self._acc:
            self._at_max += 1
        times.append(t)
        values.append(value)
        assert self.since is not None
        start = t - self.window_s
        while len(times) > 1 and times[1] <= start:  # the second one becomes the marker
            times.popleft()
            values.popleft()
            if self._sum:
                self._acc -= values[0]
            elif values[0] == self._acc:
                self._at_max -= 1
                if not self._at_max:  # the largest left: find the next
                    self._max_of_counted()
        if self.since > start:
            return None
        if not self._sum:
            return self._acc
        # every count after the marker, the first one only for its part inside
        first_t, first = times[1], values[1]
        inside = (first_t - start) / (first_t - times[0])
        return round(self._acc - first + first * inside)

    def _max_of_counted(self) -> None:
        counted = list(islice(self._values, 1, None))
        self._acc = max(counted, default=0)
        self._at_max = counted.count(self._acc)

    def to_json(self) -> dict[str, Any]:
        return {
            "windowS": self.window_s,
            "since": self.since,
            "samples": [[t, v] for t, v in zip(self._times, self._values, strict=True)],
        }

    @classmethod
    def from_json(cls, kind: Kind, doc: Mapping[str, Any]) -> Window:
        """Raises ValueError naming what is wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"ML window {doc!r} is not an object")
        window = cls(kind, check_window_s(doc.get("windowS")))
        samples = doc.get("samples")
        since = doc.get("since")
        if not isinstance(samples, list) or not samples:
            raise ValueError(f"ML window samples: {samples!r} is not a list of [t, value]")
        previous = -math.inf
        for sample in samples:
            if not isinstance(sample, list) or len(sample) != 2:
                raise ValueError(f"ML window sample {sample!r} is not [t, value]")
            t, v = sample
            if not _finite(t) or not _finite(v) or v < 0 or t < previous:
                raise ValueError(f"ML window sample {sample!r}: not in time order, >= 0")
            window._times.append(float(t))
            window._values.append(v)
            previous = t
        if window._sum:
            window._acc = sum(v for _, v in samples[1:])
        else:
            window._max_of_counted()
        if not isinstance(since, int | float) or not _finite(since) or since > samples[0][0]:
            raise ValueError(f"ML window since: {since!r} is not a time up to the first sample")
        window.since = float(since)
        return window


def _finite(x: object) -> bool:
    return type(x) is int or (type(x) is float and math.isfinite(x))

"""Custom metrics declared in the config: built-in sources (psutil, thermal zones), a
command (an argv list, never a shell) or a file. A source that fails, or a value that
does not fit its type or breaks the AWS data rules, is logged and left out: it never
breaks the cycle."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

from agent.config import CustomMetricConfig
from agent.core.report import custom_metric_problem
from agent.core.sample import CustomMetric, CustomValue
from agent.logs import kv

log = logging.getLogger(__name__)

_SHOWN_CHARS = 60  # of bad output, in messages


class SourceError(Exception):
    """A custom metric source that gave no usable value; the message says why."""


def parse_value(text: str) -> CustomValue:
    """Command output or file contents: a number or a JSON list. Whether it fits the
    metric's type is `custom_metric_problem`'s to say."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        raise SourceError(f"output is not a number or a JSON list: {text[:_SHOWN_CHARS]!r}")
    return value


def run_command(argv: Sequence[str], timeout_s: float) -> str:
    """stdout of `argv`. On timeout the whole process group is killed, so a child that
    forked helpers cannot keep the pipe (and this cycle) open."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        raise SourceError(f"cannot run {argv[0]!r}: {e.strerror}") from None
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise SourceError(f"timed out after {timeout_s:g} s") from None
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip()[-200:]
        raise SourceError(f"exited with status {proc.returncode}: {detail!r}")
    return out.decode(errors="replace")


def soc_temperature(sys_root: Path) -> float:
    """°C of the hottest thermal zone (a Pi has one, cpu-thermal). Zones that refuse to
    be read (some do while disabled) are skipped."""
    readings = []
    for temp in sorted((sys_root / "class" / "thermal").glob("thermal_zone*/temp")):
        with contextlib.suppress(OSError, ValueError):
            readings.append(int(temp.read_text()) / 1000)
    if not readings:
        raise SourceError(f"no readable thermal zone under {sys_root / 'class' / 'thermal'}")
    return max(readings)


def read_source(metric: CustomMetricConfig, sys_root: Path) -> CustomValue:
    """The raw value of one custom metric; SourceError when its source fails. The config
    has checked that `command` and `path` are there when the source needs them."""
    try:
        match metric.source:
            case "cpu_percent":
                return psutil.cpu_percent(interval=None)
            case "memory_percent":
                return psutil.virtual_memory().percent
            case "disk_percent":
                return psutil.disk_usage(str(metric.path)).percent
            case "process_count":
                return len(psutil.pids())
            case "soc_temperature":
                return soc_temperature(sys_root)
            case "command":
                return parse_value(run_command(metric.command or [], metric.timeout_s))
            case "file":
                return parse_value(Path(str(metric.path)).read_text(errors="replace"))
    except OSError as e:
        raise SourceError(f"{e.strerror or e}: {e.filename or metric.path}") from None
    except psutil.Error as e:
        raise SourceError(str(e)) from None
    raise SourceError(f"unknown source {metric.source!r}")


class CustomMetrics:
    """Reads the configured custom metrics each cycle. A problem is logged when it
    appears or changes, not every cycle it persists, and its end is logged too."""

    def __init__(
        self, metrics: Sequence[CustomMetricConfig], sys_root: Path = Path("/sys")
    ) -> None:
        self._metrics = list(metrics)
        self._sys_root = sys_root
        self._problems: dict[str, str] = {}
        if any(m.source == "cpu_percent" for m in self._metrics):
            psutil.cpu_percent(interval=None)  # the first non-blocking call only primes

    def collect(self) -> list[CustomMetric]:
        collected = []
        for m in self._metrics:
            try:
                metric = CustomMetric(m.name, m.type, read_source(m, self._sys_root))
                problem = custom_metric_problem(metric)
            except SourceError as e:
                problem = f"source {m.source}: {e}"
            if problem is None:
                collected.append(metric)
                if self._problems.pop(m.name, None) is not None:
                    log.info(kv("custom_metric_recovered", metric=m.name))
            elif self._problems.get(m.name) != problem:
                self._problems[m.name] = problem
                log.warning(kv("custom_metric_skipped", metric=m.name, reason=problem))
        return collected

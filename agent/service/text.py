"""Text for people: the tables and times the commands print with `--output table`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

VALUE_CHARS = 48  # a metric value longer than this is cut in a table cell
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The times a command takes as input: from the epoch to the last second ISO 8601 can
# write with four year digits (what datetime can show).
EARLIEST_S = 0.0
LATEST_S = (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds()


TIME_RANGE = f"epoch seconds from 0 to {LATEST_S:.0f} (years 1970 to 9999)"


def time_problem(seconds: float) -> str | None:
    """Why `seconds` is no time a command takes, or None when it is one."""
    if not math.isfinite(seconds):
        return f"{seconds} is not a finite number; a time is {TIME_RANGE}"
    if seconds < EARLIEST_S:
        return f"{seconds!r} is before 1970; a time is {TIME_RANGE}"
    if seconds > LATEST_S:
        return f"{seconds!r} is after 9999; a time is {TIME_RANGE}"
    return None


def iso_time(seconds: object, timespec: str = "seconds") -> str:
    """Epoch seconds as ISO 8601 UTC with a Z; empty for what is not a number, and the
    number itself for a time no ISO 8601 date shows (NaN, before year 1, after 9999)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return ""
    try:
        # Added to the epoch rather than datetime.fromtimestamp: no platform time_t limit.
        moment = _EPOCH + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        return repr(seconds)
    text = moment.isoformat(timespec=timespec)
    return text.replace(".000+00:00", "Z").replace("+00:00", "Z")


def printable(text: str) -> str:
    """`text` with what a terminal would act on or cannot encode (control characters,
    lone surrogates) written as escapes: a cell shows data, never moves the cursor."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def metric_value_text(value: object) -> str:
    """A MetricValue on one line: `count=5`, `cidrs=192.0.2.1,192.0.2.7`, cut to fit."""
    if not isinstance(value, Mapping):
        return ""
    text = " ".join(
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in value.items()
    )
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def table_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One line of a table: each cell made printable and padded to its column's width
    (a longer cell pushes the rest of its line), two spaces apart."""
    return "  ".join(
        printable(cell).ljust(w) for cell, w in zip(cells, widths, strict=True)
    ).rstrip()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, a header line first."""
    widths = [
        max([len(h), *(len(printable(row[i])) for row in rows)]) for i, h in enumerate(headers)
    ]
    return "\n".join(table_row(row, widths) for row in [headers, *rows])

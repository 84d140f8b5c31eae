"""Text for people: the tables and times the commands print with `--output table`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

VALUE_CHARS = 48  # a metric value longer than this is cut in a table cell


def iso_time(seconds: object, timespec: str = "seconds") -> str:
    """Epoch seconds as ISO 8601 UTC with a Z; empty for what is not a number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return ""
    text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec=timespec)
    return text.replace(".000+00:00", "Z").replace("+00:00", "Z")


def metric_value_text(value: object) -> str:
    """A MetricValue on one line: `count=5`, `cidrs=192.0.2.1,192.0.2.7`, cut to fit."""
    if not isinstance(value, Mapping):
        return ""
    text = " ".join(
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in value.items()
    )
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, a header line first."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )

"""Logging, configured here and nowhere else: stderr, no timestamps (journald adds
them), one event per line as `event key=value ...`, with the `<N>` sd-daemon
priority prefix when stderr goes to the journal."""

from __future__ import annotations

import json
import logging
import os
import sys

# syslog priorities for the sd-daemon prefix.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def kv(event: str, **fields: object) -> str:
    """`event k=v ...`; values with spaces or quotes are quoted so a line stays parseable."""
    parts = [event]
    for key, value in fields.items():
        text = (
            json.dumps(value, separators=(",", ":"))
            if isinstance(value, dict | list)
            else str(value)
        )
        if not text or any(c in text for c in ' "=\n'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = record.getMessage()
        if record.levelno >= logging.WARNING and not self.journal:
            line = f"{record.levelname.lower()}: {line}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info).splitlines()[-1])
        if self.journal:
            prio = _PRIORITY.get(record.levelno, 6)
            line = f"<{prio}>{line}"
        return line


def journal_attached() -> bool:
    """True when stderr is the journal stream systemd set up ($JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(journal_attached()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

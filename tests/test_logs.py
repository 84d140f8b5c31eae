"""Under systemd, stderr is the journal stream named by $JOURNAL_STREAM (dev:ino), and
each line carries the sd-daemon `<N>` priority prefix; elsewhere it does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import agent

PROGRAM = """
import logging
from agent.logs import kv, setup_logging
setup_logging()
log = logging.getLogger("agent.test")
log.warning(kv("spool_full", dropped=3))
log.info(kv("sample_taken", ports=2))
log.error(kv("broker_refused", reason="not authorized"))
"""


def run_logging(stderr_file: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr_file.open("wb") as err:
        subprocess.run(
            [sys.executable, "-c", PROGRAM],
            stderr=err,
            env=env,
            cwd=Path(agent.__file__).parents[1],  # agent importable from a checkout too
            timeout=30,
            check=True,
        )
    return stderr_file.read_text()


def dev_ino(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_lines_carry_the_priority(tmp_path: Path) -> None:
    stderr_file = tmp_path / "stderr"
    stderr_file.touch()
    text = run_logging(stderr_file, dev_ino(stderr_file))
    assert text.splitlines() == [
        "<4>spool_full dropped=3",
        "<6>sample_taken ports=2",
        '<3>broker_refused reason="not authorized"',
    ]


def test_other_stderr_gets_level_words_instead(tmp_path: Path) -> None:
    stderr_file = tmp_path / "stderr"
    other = tmp_path / "other"
    other.touch()
    # JOURNAL_STREAM names another file: stderr is not the journal (e.g. redirected).
    text = run_logging(stderr_file, dev_ino(other))
    assert text.splitlines() == [
        "warning: spool_full dropped=3",
        "sample_taken ports=2",
        'error: broker_refused reason="not authorized"',
    ]

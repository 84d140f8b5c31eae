"""Fuzzed status files: whatever `status.json` holds, `edge-defender status` prints a
table or JSON and an exit status, never a traceback, and nothing a terminal acts on."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.service.status import STATUS_FILE

# A sound status of a running agent (this process), which the fuzzer then damages.
BASE = {
    "pid": os.getpid(),
    "started_at": 1.0,
    "updated_at": 2e9,
    "interval_s": 10.0,
    "last_sample_time": None,
    "samples": 1,
    "reports": {"sent": 1, "accepted": 1, "rejected": 0},
    "broker": {"endpoint": None, "connected": False},
    "spool": {"depth": 0, "bytes": 0, "dropped": {"metrics": 0, "violation": 0}},
    "active_violations": 0,
    "profiles": ["p"],
    "inactive_behaviors": [],
}

values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(st.characters(exclude_categories=()), max_size=6),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = [*BASE, "degraded", "errors", "quarantined", "reload"]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.dictionaries(st.sampled_from(KEYS), values, max_size=4),
    output=st.sampled_from(["table", "json"]),
)
def test_any_status_file(tmp_path: Path, changes: dict, output: str) -> None:
    doc = {**BASE, **changes}
    (tmp_path / STATUS_FILE).write_text(json.dumps(doc))
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")  # strict, as a real stdout
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["status", "--config", str(config), "--output", output])
    out.flush()
    assert code in (0, 1, 3)
    text = raw.getvalue().decode()
    assert all(c.isprintable() for c in text.replace("\n", ""))
    if output == "json":
        assert json.loads(text)["running"] is {0: True, 3: False, 1: None}[code]


@pytest.mark.parametrize("blob", [b"\xff\xfe{", b"{" * 10, b'{"pid": 1e999}', b"\x00" * 64])
def test_bytes_that_are_no_status(tmp_path: Path, blob: bytes) -> None:
    (tmp_path / STATUS_FILE).write_bytes(blob)
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["status", "--config", str(config)]) == 1
    assert "problem" in out.getvalue()

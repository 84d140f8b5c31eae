"""Fuzzed replay input: whatever a metrics line holds, replay either judges it or refuses
it naming the line (exit 2), and what it prints can always be written out."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.service.replay import replay_command

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detect"
# A string the profile judges, so that damaged strings reach the events and the table.
PROCS = {
    "securityProfileName": "procs",
    "behaviors": [
        {
            "name": "names",
            "metric": "procs",
            "criteria": {"comparisonOperator": "in-set", "value": {"strings": ["sshd"]}},
        }
    ],
}


def _recorded(line: str) -> dict[str, Any]:
    doc = json.loads(line)
    custom = doc["report"].get("cmet") or doc["report"]["custom_metrics"]
    custom["procs"] = [{"string_list": ["sshd"]}]
    return doc


GOOD = [_recorded(line) for line in (FIXTURES / "metrics-gateway.jsonl").read_text().splitlines()]
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
# Any code point, lone surrogates and control characters included.
texts = st.text(st.characters(exclude_categories=()), max_size=8) | st.sampled_from(
    ["\ud800", "\udfff", "\x1b[2J", "\u202e"]
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, child in items:
        found += _paths(child, (*prefix, key))
    return found


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def damaged_lines(draw: st.DrawFn, strings_only: bool) -> bytes:
    """A recorded line with one value (or one string) swapped for anything JSON holds."""
    doc = json.loads(json.dumps(draw(st.sampled_from(GOOD))))
    paths = [
        p for p in _paths(doc)[1:] if not strings_only or isinstance(_parent(doc, p)[p[-1]], str)
    ]
    path = draw(st.sampled_from(paths))
    _parent(doc, path)[path[-1]] = draw(texts if strings_only else values)
    # allow_nan writes NaN/Infinity as Python does; ensure_ascii writes lone surrogates
    # as the \ud800 escapes other writers produce.
    return json.dumps(doc).encode()


raw_lines = st.binary(max_size=80).filter(lambda b: b"\n" not in b and b"\r" not in b)
deep = st.integers(min_value=500, max_value=50_000).map(lambda n: b"[" * n + b"]" * n)
lines = st.one_of(damaged_lines(False), damaged_lines(True), raw_lines, deep)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    procs = tmp_path_factory.mktemp("profiles") / "procs.json"
    procs.write_text(json.dumps(PROCS))
    return [str(FIXTURES / "profile-baseline.json"), str(procs)]


def _run(profiles: list[str], path: Path, output: str) -> tuple[int, str]:
    # Strict UTF-8 as a real stdout: a lone surrogate in a table would raise here.
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")
    err = io.StringIO()
    code = replay_command(Config(thing_name="t"), profiles, str(path), output, out, err)
    out.flush()
    # Nothing in the output a terminal would act on: no control character but newlines.
    assert all(c.isprintable() for c in raw.getvalue().decode().replace("\n", ""))
    return code, err.getvalue()


@pytest.mark.parametrize("output", ["json", "table"])
@FUZZ
@given(line=lines, at=st.integers(min_value=0, max_value=len(GOOD)))
def test_any_line_is_judged_or_refused_by_number(tmp_path, profiles, output, line, at):
    records = [json.dumps(doc).encode() for doc in GOOD]
    records.insert(at, line)
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(records) + b"\n")
    code, err = _run(profiles, path, output)
    assert code in (0, 2), err
    if code == 2:
        # The damaged line or, when its time is off, the one after it that goes back.
        assert f"{path}:{at + 1}: " in err or f"{path}:{at + 2}: " in err, err
        assert len(err) < 600


@FUZZ
@given(
    timestamps=st.lists(
        st.one_of(numbers, st.floats(min_value=-1e12, max_value=1e12)), min_size=1, max_size=4
    )
)
def test_any_time_is_judged_or_refused_and_tables_print(tmp_path, profiles, timestamps):
    records = []
    for i, t in enumerate(timestamps):
        record = json.loads(json.dumps(GOOD[i]))
        record["timestamp"] = t
        records.append(json.dumps(record))
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(records) + "\n")
    code, err = _run(profiles, path, "table")
    assert code in (0, 2), err
    # Accepted exactly when every time is a second of years 1970 to 9999, in order.
    valid = all(0 <= t <= 253402300799 for t in timestamps) and timestamps == sorted(timestamps)
    assert code == (0 if valid else 2), err

"""Fuzzed flags of the query verbs, end to end through `agent.cli.main` against a real
store: a forged token, an out-of-range page size or a time that is none is a clear
error naming the flag with exit status 2, never a traceback; what is accepted answers."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.store.history import MAX_RESULTS, history_path, open_history

T0 = 1_730_000_000.0
LATEST = 253402300799  # 9999-12-31T23:59:59Z
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding three events and their three active violations."""
    root = tmp_path_factory.mktemp("query")
    actives = []  # each record() holds the whole active set
    with open_history(history_path(root / "state")) as store:
        for i in range(3):
            doc = {
                "violationId": f"v{i}",
                "thingName": "pi-1",
                "securityProfileName": "base",
                "behavior": {"name": "ports", "metric": "aws:num-listening-tcp-ports"},
                "metricValue": {"count": 7},
                "violationEventType": "in-alarm",
                "verificationState": "UNKNOWN",
                "violationEventTime": T0 + i,
            }
            active = {
                key: doc[key]
                for key in ("violationId", "thingName", "securityProfileName", "behavior")
            }
            active.update(
                lastViolationValue={"count": 7},
                lastViolationTime=T0 + i,
                violationStartTime=T0 + i,
                verificationState="UNKNOWN",
            )
            actives.append(active)
            store.record([doc], actives, {})
            store.add_metrics(T0 + i, {"header": {"report_id": i + 1, "version": "1.0"}})
    path = root / "config.toml"
    path.write_text(f'state_dir = "{root / "state"}"\n')
    return path


def run(config: Path, *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `edge-defender ARGV --config CONFIG`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*argv, "--config", str(config)])
        except SystemExit as e:  # argparse refusing a flag
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
tokens = st.one_of(
    st.text(max_size=40),
    # Tokens shaped as the real ones: base64url of a JSON list led by the listing kind.
    st.tuples(st.sampled_from(["events", "active", "x"]), st.lists(json_values, max_size=3)).map(
        lambda kv: _b64(json.dumps([kv[0], *kv[1]]).encode())
    ),
    st.sampled_from(["WyJldmVudHMiLCBOYU4sIDFd", _b64(b"[" * 5000), _b64(b"9" * 5000)]),
)
page_sizes = st.one_of(
    st.integers(min_value=-5, max_value=300).map(str),
    st.integers(min_value=2**62, max_value=10**30).map(str),
    st.sampled_from(["nan", "1e3", "", "lots", "9" * 5000]),
)


def _iso(seconds: float) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)).isoformat()


times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1e12, max_value=1e12).map(repr),
    st.floats(min_value=-62135596800, max_value=LATEST).map(_iso),
    st.sampled_from(["0", "1969-12-31T23:59:59Z", "10000-01-01", "9" * 5000, "garbage", ""]),
)


def _seconds(text: str) -> float | None:
    """What the flag means when it is a time (1970-9999), else None."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
        value = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return value if math.isfinite(value) and 0 <= value <= LATEST else None


@FUZZ
@given(
    verb=st.sampled_from(["list-violation-events", "list-active-violations"]),
    token=tokens,
    page=page_sizes,
    output=st.sampled_from(["json", "table"]),
)
def test_forged_tokens_and_page_sizes(config, verb, token, page, output):
    span = ["--start-time", "0", "--end-time", str(T0 + 10)] if verb.endswith("events") else []
    argv = [verb, *span, "--next-token", token, "--max-results", page, "--output", output]
    code, out, err = run(config, *argv)
    assert code in (0, 2), err
    if code == 2:
        assert "--next-token" in err or "--max-results" in err, err
        assert out == "" and len(err.splitlines()) <= 12  # argparse adds its usage lines
    else:  # only a page size the API takes and a token the listing made
        assert page.isdigit() and 1 <= int(page) <= MAX_RESULTS


@FUZZ
@given(
    verb=st.sampled_from(["list-violation-events", "export-metrics"]),
    start=times,
    end=times,
)
def test_any_time_range(config, verb, start, end):
    code, out, err = run(config, verb, "--start-time", start, "--end-time", end)
    s, e = _seconds(start), _seconds(end)
    if s is None or e is None or e < s:
        assert code == 2 and out == "", err
        flag = "--start-time" if s is None else "--end-time"
        assert flag in err, err
    else:
        assert code == 0, err
        if verb == "export-metrics":
            got = [json.loads(line)["timestamp"] for line in out.splitlines()]
            assert got == [T0 + i for i in range(3) if s <= T0 + i < e]


def test_pages_chain_through_the_cli(config):
    seen, token = [], None
    while True:
        more = ["--next-token", token] if token else []
        code, out, err = run(config, "list-active-violations", "--max-results", "2", *more)
        assert code == 0, err
        page = json.loads(out)
        seen += [v["violationId"] for v in page["activeViolations"]]
        token = page.get("nextToken")
        if token is None:
            break
    assert sorted(seen) == ["v0", "v1", "v2"]

"""Forged query parameters: a nextToken, maxResults or a time that did not come from this
listing is refused as InvalidRequest naming the parameter, never a crash and never
taken. Known forgeries first, then hypothesis fuzzing (bounded)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.store.history import MAX_TOKEN, History, InvalidRequest, history_path, open_history

BEHAVIOR = {"name": "ports", "metric": "aws:num-listening-tcp-ports"}
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _record(n: int) -> dict[str, Any]:
    return {
        "violationId": f"v-{n}",
        "thingName": "pi",
        "securityProfileName": "p",
        "behavior": BEHAVIOR,
        "metricValue": {"count": n},
        "violationEventType": "in-alarm",
        "violationEventTime": float(n // 2),  # ties, so the id matters in the keyset
        "violationStartTime": float(n // 2),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    with open_history(history_path(tmp_path_factory.mktemp("tokens"))) as h:
        h.record([_record(n) for n in range(6)], [_record(n) for n in range(6)], {})
        yield h


def token_of(raw: bytes | str) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def events(store: History, **kw: Any) -> dict[str, Any]:
    return store.list_violation_events(0, math.inf, **kw)


def refused(call: Any, param: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        call()
    error = caught.value
    assert error.param == param
    text = str(error)
    assert text.startswith(f"{param}: ") and "\n" not in text and len(text) < 300
    return error


def test_tokens_of_this_listing_page_through_everything(store: History) -> None:
    seen = []
    answer = events(store, max_results=2)
    seen += answer["violationEvents"]
    while "nextToken" in answer:
        answer = events(store, max_results=2, next_token=answer["nextToken"])
        seen += answer["violationEvents"]
    assert [e["violationId"] for e in seen] == [f"v-{n}" for n in range(6)]


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (token_of('["violation_events",NaN,1]'), "not a finite number"),
        (token_of('["violation_events",Infinity,1]'), "not a finite number"),
        (token_of('["violation_events",-Infinity,1]'), "not a finite number"),
        (token_of('["violation_events",1e999,1]'), "not a finite number"),
        (token_of(f'["violation_events",1.0,{2**63}]'), "64-bit range"),
        (token_of(f'["violation_events",1.0,{-(2**63) - 1}]'), "64-bit range"),
        (token_of(f'["violation_events",1.0,{"9" * 3000}]'), "64-bit range"),
        (token_of(f'["violation_events",1.0,{"9" * 5000}]'), "longer than"),
        (token_of('["violation_events","1.0",1]'), "is not a float"),
        (token_of('["violation_events",1,1]'), "is not a float"),
        (token_of('["violation_events",1.0,1.5]'), "is not a int"),
        (token_of('["violation_events",true,1]'), "is not a float"),
        (token_of('["violation_events",1.0,null]'), "is not a int"),
        (token_of('["active_violations",1.0,"v-1"]'), "made by another listing"),
        (token_of('["violation_events",1.0]'), "not a list of 3 items"),
        (token_of('{"violation_events":1}'), "not a list of 3 items"),
        (token_of('["violation_events", 1.0, 1]'), "not in the form this listing writes"),
        (token_of('["violation_events",1.00,1]'), "not in the form this listing writes"),
        (token_of('["violation_events",1.0,1]') + "==", "not base64url of JSON"),
        (token_of('["violation_events",1.0,1]') + "=", "not in the form this listing writes"),
        (token_of('["violation_events",1.0,1]') + " ", "not base64url of JSON"),
        (token_of('["violation_events",1.0,1]').upper(), "not base64url of JSON"),
        (token_of('["violation_events",1.0,1]'.encode("utf-16")), "not in the form"),
        (token_of(b'["violation_events",1.0,1\xff]'), "not base64url of JSON"),
        (token_of("[" * 3000), "not base64url of JSON"),
        ("!!!", "not base64url of JSON"),
        ("a", "not base64url of JSON"),
        ("", "not base64url of JSON"),
        ("A" * (MAX_TOKEN + 1), f"longer than {MAX_TOKEN} characters"),
    ],
    ids=lambda v: v[:40],
)
def test_forged_event_tokens_are_refused(store: History, token: str, why: str) -> None:
    error = refused(lambda: events(store, next_token=token), "nextToken")
    assert "is not a token returned by this listing" in error.message
    assert why in error.message


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ('["active_violations",0.0,"\\ud800"]', "not UTF-8"),
        ('["active_violations",0.0,5]', "is not a str"),
        ('["violation_events",0.0,1]', "made by another listing"),
        ('["active_violations",NaN,"v-1"]', "not a finite number"),
    ],
)
def test_forged_active_tokens_are_refused(store: History, raw: str, why: str) -> None:
    error = refused(lambda: store.list_active_violations(next_token=token_of(raw)), "nextToken")
    assert why in error.message


@pytest.mark.parametrize("token", [b"abc", 5, ["x"]])
def test_a_token_must_be_a_string(store: History, token: Any) -> None:
    refused(lambda: events(store, next_token=token), "nextToken")


@pytest.mark.parametrize("key", [-(2**63), 2**63 - 1])
def test_the_64_bit_bounds_are_well_formed_tokens(store: History, key: int) -> None:
    token = token_of(f'["violation_events",0.0,{key}]')
    listed = events(store, next_token=token)["violationEvents"]
    # Events 0 and 1 are at time 0.0: the key's id falls before or after both.
    expected = range(6) if key < 0 else range(2, 6)
    assert [e["violationId"] for e in listed] == [f"v-{n}" for n in expected]


@pytest.mark.parametrize(
    "value",
    [0, 251, -1, 2**70, 10**5000, 1.5, math.nan, "5", True],
    ids=["0", "251", "-1", "2^70", "10^5000", "1.5", "nan", "str", "bool"],
)
def test_max_results_out_of_bounds_or_not_an_integer(store: History, value: Any) -> None:
    refused(lambda: events(store, max_results=value), "maxResults")
    refused(lambda: store.list_active_violations(max_results=value), "maxResults")


@pytest.mark.parametrize(
    ("start", "end", "param"),
    [
        (math.nan, 1.0, "startTime"),
        (0.0, math.nan, "endTime"),
        ("0", 1.0, "startTime"),
        (None, 1.0, "startTime"),
        (True, 1.0, "startTime"),
        (0.0, 10**400, "endTime"),  # too large for a float
        (5.0, 1.0, "endTime"),
        (math.inf, -math.inf, "endTime"),
    ],
)
def test_bad_times_are_refused(store: History, start: Any, end: Any, param: str) -> None:
    refused(lambda: store.list_violation_events(start, end), param)
    refused(lambda: list(store.export_metrics(start, end)), param)


def test_infinite_times_are_open_bounds(store: History) -> None:
    everything = store.list_violation_events(-math.inf, math.inf)["violationEvents"]
    assert len(everything) == 6
    assert store.list_violation_events(2**70, math.inf)["violationEvents"] == []


def test_strings_that_sqlite_cannot_take_are_refused(store: History) -> None:
    # Non-UTF-8 bytes in argv arrive as lone surrogates.
    refused(lambda: events(store, thing_name="pi\udcff"), "thingName")
    refused(lambda: store.list_active_violations(security_profile_name=7), "securityProfileName")
    refused(
        lambda: store.list_active_violations(list_suppressed_alerts="yes"), "listSuppressedAlerts"
    )
    refused(lambda: store.put_verification_state("v-\ud800", "TRUE_POSITIVE"), "violationId")
    refused(
        lambda: store.put_verification_state("v-1", "TRUE_POSITIVE", "ok\udcff"),
        "verificationStateDescription",
    )


# -- fuzzing ----------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["violation_events", "active_violations"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def _check_answer_or_refusal(store: History, token: Any) -> None:
    """Either a page whose rows are all after a well-formed key, or InvalidRequest."""
    for listing in (
        lambda: events(store, max_results=3, next_token=token),
        lambda: store.list_active_violations(max_results=3, next_token=token),
    ):
        try:
            answer = listing()
        except InvalidRequest as e:
            assert e.param == "nextToken" and "\n" not in str(e) and len(str(e)) < 300
            continue
        # Taken only if it is exactly what the listing would write.
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        assert token_of(json.dumps(decoded, separators=(",", ":"))) == token
        assert all(isinstance(v, float | int | str) for v in decoded[1:])
        assert isinstance(answer, dict)


@FUZZ
@given(
    st.lists(JSON, max_size=4).map(
        lambda items: json.dumps(items, separators=(",", ":"), allow_nan=True)
    )
)
def test_fuzzed_json_tokens(store: History, raw: str) -> None:
    _check_answer_or_refusal(store, token_of(raw))


@FUZZ
@given(
    st.sampled_from(["violation_events", "active_violations"]),
    st.floats() | st.integers() | st.text(max_size=8),
    st.floats() | st.integers() | st.text(max_size=8),
)
def test_fuzzed_keysets(store: History, kind: str, first: Any, second: Any) -> None:
    raw = json.dumps([kind, first, second], separators=(",", ":"), allow_nan=True)
    _check_answer_or_refusal(store, token_of(raw))


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(token_of))
def test_fuzzed_text_tokens(store: History, token: str) -> None:
    _check_answer_or_refusal(store, token)


@FUZZ
@given(
    st.integers() | st.floats() | st.none() | st.booleans(),
    st.integers() | st.floats() | st.none() | st.text(max_size=3),
    st.integers() | st.floats() | st.booleans(),
)
def test_fuzzed_times_and_sizes(store: History, start: Any, end: Any, size: Any) -> None:
    try:
        answer = store.list_violation_events(start, end, max_results=size)
    except InvalidRequest as e:
        assert e.param in {"startTime", "endTime", "maxResults"}
        assert "\n" not in str(e) and len(str(e)) < 300
        return
    assert isinstance(size, int) and 1 <= size <= 250
    assert len(answer["violationEvents"]) <= size

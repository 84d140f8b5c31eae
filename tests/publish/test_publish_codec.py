from __future__ import annotations

import json
import math

import cbor2
import pytest

from agent.publish.codec import (
    CodecError,
    decode,
    encode,
    metrics_accepted_topic,
    metrics_rejected_topic,
    metrics_topic,
    violations_topic,
)

REPORT = {
    "hed": {"rid": 1730000000000, "v": "1.0"},
    "met": {"tp": {"pts": [{"pt": 22, "if": "eth0"}], "t": 1}},
    "cmet": {"wifi_ssids": [{"string_list": ["café-net"]}], "cpu": [{"number": 26.5}]},
}


def test_json_is_compact_utf8() -> None:
    payload = encode(REPORT, "json")
    assert b" " not in payload
    assert "café-net".encode() in payload  # not \u escaped
    assert json.loads(payload) == REPORT


def test_cbor_round_trips() -> None:
    payload = encode(REPORT, "cbor")
    assert cbor2.loads(payload) == REPORT
    assert decode(payload, "cbor") == REPORT
    assert len(payload) < len(encode(REPORT, "json"))


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(fmt: str, bad: float) -> None:
    with pytest.raises(CodecError, match=r"not a finite number|not JSON compliant"):
        encode({"cmet": {"x": [{"number_list": [1, bad]}]}}, fmt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "fmt"), [(b"{not json", "json"), (b"\xff\xfe", "json"), (b"\xff", "cbor")]
)
def test_decode_errors_are_codec_errors(payload: bytes, fmt: str) -> None:
    with pytest.raises(CodecError, match=fmt.upper()):
        decode(payload, fmt)  # type: ignore[arg-type]


def test_topics() -> None:
    assert metrics_topic("pi-7", "json") == "$aws/things/pi-7/defender/metrics/json"
    assert metrics_topic("pi-7", "cbor") == "$aws/things/pi-7/defender/metrics/cbor"
    assert (
        metrics_accepted_topic("pi-7", "cbor") == "$aws/things/pi-7/defender/metrics/cbor/accepted"
    )
    assert (
        metrics_rejected_topic("pi-7", "json") == "$aws/things/pi-7/defender/metrics/json/rejected"
    )


def test_violations_topic_fills_in_only_the_thing_name() -> None:
    assert violations_topic("things/{thing_name}/defender/violations", "gw-1") == (
        "things/gw-1/defender/violations"
    )
    assert violations_topic("site/{region}/{thing_name}", "gw-1") == "site/{region}/gw-1"


def _nested(depth: int) -> dict:
    doc: dict = {}
    for _ in range(depth):
        doc = {"a": [doc]}
    return doc


def _cyclic() -> dict:
    doc: dict = {}
    doc["self"] = [doc]
    return doc


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"strings": ["ok", "\ud800"]}, "surrogates not allowed"),  # a lone surrogate
        ({"\udfff": 1}, "surrogates not allowed"),
        ({"x": object()}, "object"),
        (_nested(5000), "nested deeper than 64"),  # cbor2 itself dies with SIGSEGV
        (_cyclic(), "nested deeper than 64"),
    ],
)
def test_what_cannot_be_sent_raises_codec_error_only(fmt: str, bad: dict, why: str) -> None:
    with pytest.raises(CodecError, match=why) as info:
        encode(bad, fmt)  # type: ignore[arg-type]
    assert type(info.value) is CodecError


@pytest.mark.parametrize(
    "bad", [{(1, 2): "tuple key"}, {"n": 10**5000}, {"b": b"\x00"}, {"s": {1}}]
)
def test_json_refusals_are_codec_errors(bad: dict) -> None:
    with pytest.raises(CodecError, match="cannot encode as JSON"):
        encode(bad, "json")


def test_deep_json_input_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="not valid JSON"):
        decode(b"[" * 100_000 + b"]" * 100_000, "json")
    assert decode(encode(_nested(30), "json"), "json") == _nested(30)

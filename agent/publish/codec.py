"""Wire encodings and topic names for what the agent publishes (spec/metrics-report.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import cbor2

Format = Literal["json", "cbor"]


class CodecError(ValueError):
    """A payload that cannot be encoded or decoded in the chosen format."""


def encode(doc: Mapping[str, Any], fmt: Format) -> bytes:
    """Compact UTF-8 JSON or CBOR. NaN and infinities are refused: AWS rejects them."""
    if fmt == "json":
        try:
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError as e:
            raise CodecError(f"cannot encode as JSON: {e}") from None
        return text.encode("utf-8")
    return cbor2.dumps(_check_finite(doc))


def _check_finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        raise CodecError(f"cannot encode {obj!r}: not a finite number")
    if isinstance(obj, Mapping):
        for value in obj.values():
            _check_finite(value)
    elif isinstance(obj, list | tuple):
        for item in obj:
            _check_finite(item)
    return obj


def decode(payload: bytes, fmt: Format) -> Any:
    try:
        if fmt == "json":
            return json.loads(payload.decode("utf-8"))
        return cbor2.loads(payload)
    except (ValueError, cbor2.CBORDecodeError) as e:
        raise CodecError(f"not valid {fmt.upper()}: {e}") from None


def metrics_topic(thing_name: str, fmt: Format) -> str:
    return f"$aws/things/{thing_name}/defender/metrics/{fmt}"


def metrics_accepted_topic(thing_name: str, fmt: Format) -> str:
    return metrics_topic(thing_name, fmt) + "/accepted"


def metrics_rejected_topic(thing_name: str, fmt: Format) -> str:
    return metrics_topic(thing_name, fmt) + "/rejected"


def violations_topic(template: str, thing_name: str) -> str:
    """`detect.violations_topic` with `{thing_name}` filled in; other text is kept as is."""
    return template.replace("{thing_name}", thing_name)

"""Wire encodings and topic names for what the agent publishes (spec/metrics-report.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import cbor2

Format = Literal["json", "cbor"]
MAX_DEPTH = 64  # reports and events nest 5 levels


class CodecError(ValueError):
    """A payload that cannot be encoded or decoded in the chosen format."""


def encode(doc: Mapping[str, Any], fmt: Format) -> bytes:
    """Compact UTF-8 JSON or CBOR. Raises CodecError, and nothing else, for what cannot
    be sent, so that the caller can set it aside: NaN and infinities (AWS rejects them),
    strings that are not Unicode (lone surrogates), values neither format holds, and
    nesting deeper than MAX_DEPTH."""
    _check(doc)
    try:
        if fmt == "json":
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            return text.encode("utf-8")
        return cbor2.dumps(doc)
    except (ValueError, TypeError, OverflowError, RecursionError, cbor2.CBOREncodeError) as e:
        raise CodecError(f"cannot encode as {fmt.upper()}: {e}") from None


def _check(doc: object) -> None:
    """Refuse non-finite numbers (CBOR would carry them) and deep nesting (cbor2 takes
    the process down with SIGSEGV near 10,000 levels), without recursion."""
    stack = [(doc, 0)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, float) and not math.isfinite(obj):
            raise CodecError(f"cannot encode {obj!r}: not a finite number")
        if isinstance(obj, Mapping | list | tuple):
            if depth >= MAX_DEPTH:
                raise CodecError(f"cannot encode: nested deeper than {MAX_DEPTH} levels")
            values = obj.values() if isinstance(obj, Mapping) else obj
            stack.extend((value, depth + 1) for value in values)


def decode(payload: bytes, fmt: Format) -> Any:
    try:
        if fmt == "json":
            return json.loads(payload.decode("utf-8"))
        return cbor2.loads(payload)
    except (ValueError, RecursionError, cbor2.CBORDecodeError) as e:
        raise CodecError(f"not valid {fmt.upper()}: {e}") from None


def metrics_topic(thing_name: str, fmt: Format) -> str:
    return f"$aws/things/{thing_name}/defender/metrics/{fmt}"


def metrics_accepted_topic(thing_name: str, fmt: Format) -> str:
    return metrics_topic(thing_name, fmt) + "/accepted"


def metrics_rejected_topic(thing_name: str, fmt: Format) -> str:
    return metrics_topic(thing_name, fmt) + "/rejected"


def violations_topic(template: str, thing_name: str) -> str:
    """`detect.violations_topic` (or `audit.findings_topic`) with `{thing_name}` filled
    in; other text is kept as is."""
    return template.replace("{thing_name}", thing_name)

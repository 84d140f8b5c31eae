"""MQTT topic filters (MQTT 3.1.1 section 4.7) for TOPIC_FILTER dimensions."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable

MAX_FILTER_CHARS = 256  # AWS DimensionStringValue


def topic_filter_problem(text: object) -> str | None:
    """Why `text` is not a valid topic filter, or None."""
    if not isinstance(text, str):
        return f"{reprlib.repr(text)} is not a string"
    if not 1 <= len(text) <= MAX_FILTER_CHARS:
        return f"a topic filter has 1-{MAX_FILTER_CHARS} characters, got {len(text)}"
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return f"{text!r}: '#' must be a whole level and the last one, as in 'a/b/#'"
        if "+" in level and level != "+":
            return f"{text!r}: '+' must be a whole level, as in 'a/+/c'"
    return None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter`. '+' is one level, '#' this level and
    all below (so 'a/#' matches 'a'); a wildcard in the first level does not match
    topics that start with '$'."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want = topic_filter.split("/")
    have = topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


def matches_any(filters: Iterable[str], topic: str) -> bool:
    return any(topic_matches(f, topic) for f in filters)

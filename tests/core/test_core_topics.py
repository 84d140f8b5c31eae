"""MQTT topic filter matching and validation (MQTT 3.1.1, 4.7)."""

import pytest

from agent.core.topics import matches_any, topic_filter_problem, topic_matches


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a/b/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a", False),
        ("a/+", "a/b/c", False),
        ("a/+", "a/", True),  # an empty level is a level
        ("+/+", "/finance", True),
        ("+", "/finance", False),
        ("a/#", "a", True),  # '#' includes the parent level
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "anything/at/all", True),
        ("a/+/c/#", "a/x/c", True),
        ("a/+/c/#", "a/x/d/e", False),
        ("#", "$SYS/broker", False),  # wildcards in the first level skip $ topics
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
        ("A/b", "a/b", False),
    ],
)
def test_topic_matches(topic_filter, topic, expected):
    assert topic_filter_problem(topic_filter) is None
    assert topic_matches(topic_filter, topic) is expected


def test_matches_any():
    assert matches_any(["x", "a/+"], "a/b")
    assert not matches_any(["x", "y/#"], "a/b")
    assert not matches_any([], "a/b")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a/#/b", "'#' must be"),
        ("a#", "'#' must be"),
        ("a/b+", "'+' must be"),
        ("", "1-256"),
        ("x" * 257, "1-256"),
        (7, "not a string"),
    ],
)
def test_topic_filter_problem(text, problem):
    message = topic_filter_problem(text)
    assert message is not None and problem in message

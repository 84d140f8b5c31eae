"""Criteria compiled into plain callables for the hot path."""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import partial
from typing import Any

from agent.core.cidr import CidrSet, address_keys
from agent.core.metrics import KIND_VALUE_KEYS, NUMERIC_OPERATORS, Kind
from agent.core.profile import Criteria

Check = Callable[[Any], bool]  # prepared measured value -> conforms (is normal)
Compare = Callable[[Any, Any], bool]  # (measured value, threshold) -> conforms

# value <op> threshold, the behavior's notion of normal.
COMPARE: dict[str, Compare] = {
    "less-than": operator.lt,
    "less-than-equals": operator.le,
    "greater-than": operator.gt,
    "greater-than-equals": operator.ge,
}
# The same with the operands swapped, so partial(op, threshold)(value) is one C call.
_SWAPPED: dict[str, Compare] = {
    "less-than": operator.gt,
    "less-than-equals": operator.ge,
    "greater-than": operator.lt,
    "greater-than-equals": operator.le,
}


# What a kind's measured value is turned into, once per sample, before its checks run.
PREPARE: dict[Kind, Callable[[Any], Any]] = {Kind.IP_LIST: address_keys}


def static_check(criteria: Criteria, kind: Kind) -> Check:
    """The conformity test of criteria that carry a value (not a statistical
    threshold); it takes the measured value after PREPARE[kind], when there is one."""
    op = criteria.operator
    value = criteria.value
    if op is None or value is None:
        raise ValueError("static_check needs criteria with comparisonOperator and value")
    if op in NUMERIC_OPERATORS:
        threshold = value["count"] if "count" in value else value["number"]
        return partial(_SWAPPED[op], threshold)
    if op in ("in-cidr-set", "not-in-cidr-set"):
        cidrs = CidrSet(value["cidrs"])
        return cidrs.all_inside if op == "in-cidr-set" else cidrs.none_inside
    # Port and set operators: "every listed item is in the set" / "none is". An empty
    # list conforms to both, as the spec asks; 22 and 22.0 are the same set member.
    members = frozenset(value[KIND_VALUE_KEYS[kind][0]])
    if kind is Kind.STRING_LIST and any(m.startswith(WILDCARD) for m in members):
        return _domain_check(members, inside=op.startswith("in-"))
    return members.issuperset if op.startswith("in-") else members.isdisjoint


WILDCARD = "*."


def _domain_check(members: frozenset[str], *, inside: bool) -> Check:
    """An on-device extension for string lists (DNS names): a set entry "*.example.com"
    holds example.com and every name under it, in any letter case; other entries hold
    their exact string, as in AWS."""
    domains = frozenset(m[len(WILDCARD) :].lower() for m in members if m.startswith(WILDCARD))

    def held(value: str) -> bool:
        if value in members:
            return True
        name = value.lower()
        while name not in domains:
            dot = name.find(".")
            if dot < 0:
                return False
            name = name[dot + 1 :]
        return True

    if inside:
        return lambda values: all(held(v) for v in values)
    return lambda values: not any(held(v) for v in values)


def statistic_percent(statistic: str) -> float:
    """'p99.9' -> 99.9"""
    return float(statistic[1:])

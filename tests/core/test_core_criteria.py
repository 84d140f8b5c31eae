"""Every comparison operator over every value kind: True means normal (conforms)."""

from typing import Any

import pytest

from agent.core.criteria import PREPARE, static_check, statistic_percent
from agent.core.metrics import OPERATORS
from agent.core.profile import parse_profile


def conforms(metric: str, op: str, value: dict[str, Any], measured: object) -> bool:
    doc = {"name": "b", "metric": metric, "criteria": {"comparisonOperator": op, "value": value}}
    (b,) = parse_profile({"securityProfileName": "p", "behaviors": [doc]}).behaviors
    assert b.criteria is not None and b.kind is not None
    prepare = PREPARE.get(b.kind)
    return static_check(b.criteria, b.kind)(measured if prepare is None else prepare(measured))


BYTES = "aws:all-bytes-out"
TCP = "aws:listening-tcp-ports"
DEST = "aws:destination-ip-addresses"
CIDRS = {"cidrs": ["192.0.2.0/24", "10.1.2.3/8", "2001:db8::/32", "198.51.100.7"]}

CASES = [
    # numeric: normal when `value <op> threshold`
    (BYTES, "less-than", {"count": 5}, 4, True),
    (BYTES, "less-than", {"count": 5}, 5, False),
    (BYTES, "less-than-equals", {"count": 5}, 5, True),
    (BYTES, "less-than-equals", {"count": 5}, 6, False),
    (BYTES, "greater-than", {"count": 5}, 6, True),
    (BYTES, "greater-than", {"count": 5}, 5, False),
    (BYTES, "greater-than-equals", {"count": 5}, 5, True),
    (BYTES, "greater-than-equals", {"count": 5}, 4, False),
    (BYTES, "less-than", {"number": 5.5}, 5, True),
    ("cpu", "less-than-equals", {"number": 22}, 22.0, True),
    ("cpu", "greater-than", {"number": -1.5}, -1.25, True),
    (BYTES, "less-than", {"count": 2**60}, 2**60 - 1, True),  # big counts stay exact
    # port sets: in = every listed port in the set, not-in = none of them
    (TCP, "in-port-set", {"ports": [22, 443]}, [22], True),
    (TCP, "in-port-set", {"ports": [22, 443]}, [22, 80], False),
    (TCP, "in-port-set", {"ports": [22]}, [], True),
    (TCP, "in-port-set", {"ports": []}, [], True),
    (TCP, "in-port-set", {"ports": []}, [22], False),
    (TCP, "not-in-port-set", {"ports": [23]}, [22, 80], True),
    (TCP, "not-in-port-set", {"ports": [23]}, [22, 23], False),
    (TCP, "not-in-port-set", {"ports": [23]}, [], True),
    # CIDR sets, IPv4 and IPv6; host bits in a CIDR are ignored; a bare address is /32
    (DEST, "in-cidr-set", CIDRS, ["192.0.2.255", "10.200.0.1"], True),
    (DEST, "in-cidr-set", CIDRS, ["2001:db8:ffff::1", "198.51.100.7"], True),
    (DEST, "in-cidr-set", CIDRS, ["192.0.3.0"], False),
    (DEST, "in-cidr-set", CIDRS, ["198.51.100.8"], False),
    (DEST, "in-cidr-set", CIDRS, ["2001:db9::1"], False),
    (DEST, "in-cidr-set", CIDRS, ["::ffff:192.0.2.1"], True),  # v4-mapped is its v4 address
    (DEST, "in-cidr-set", CIDRS, ["not-an-ip"], False),  # outside every CIDR
    (DEST, "in-cidr-set", CIDRS, [], True),
    (DEST, "not-in-cidr-set", CIDRS, ["203.0.113.1", "2001:db9::"], True),
    (DEST, "not-in-cidr-set", CIDRS, ["203.0.113.1", "2001:db8::"], False),
    (DEST, "not-in-cidr-set", CIDRS, ["not-an-ip"], True),
    (DEST, "not-in-cidr-set", {"cidrs": []}, ["192.0.2.1"], True),
    ("peers", "in-cidr-set", {"cidrs": ["0.0.0.0/0"]}, ["8.8.8.8"], True),
    ("peers", "in-cidr-set", {"cidrs": ["0.0.0.0/0"]}, ["::1"], False),
    ("peers", "in-cidr-set", {"cidrs": ["::/0"]}, ["::1"], True),
    # string and number sets; numbers compare by value
    ("ssids", "in-set", {"strings": ["home", "lab"]}, ["home"], True),
    ("ssids", "in-set", {"strings": ["home", "lab"]}, ["home", "cafe"], False),
    ("ssids", "in-set", {"strings": ["home"]}, [], True),
    ("ssids", "not-in-set", {"strings": ["evil"]}, ["home"], True),
    ("ssids", "not-in-set", {"strings": ["evil"]}, ["home", "evil"], False),
    ("ssids", "in-set", {"strings": ["Home"]}, ["home"], False),  # case matters
    ("fds", "in-set", {"numbers": [22, 1.5]}, [22.0, 1.5], True),
    ("fds", "in-set", {"numbers": [22]}, [23], False),
    ("fds", "not-in-set", {"numbers": [22]}, [22.0], False),
    ("fds", "not-in-set", {"numbers": [22]}, [], True),
]


@pytest.mark.parametrize(("metric", "op", "value", "measured", "expected"), CASES)
def test_operator(metric, op, value, measured, expected):
    assert conforms(metric, op, value, measured) is expected


def test_every_operator_is_covered():
    assert {case[1] for case in CASES} == set(OPERATORS)


@pytest.mark.parametrize(
    ("statistic", "percent"),
    [
        ("p0", 0.0),
        ("p0.01", 0.01),
        ("p0.1", 0.1),
        ("p50", 50.0),
        ("p99.99", 99.99),
        ("p100", 100.0),
    ],
)
def test_statistic_percent(statistic, percent):
    assert statistic_percent(statistic) == percent


DOMAINS = {"strings": ["*.evil.example", "exact.test"]}


@pytest.mark.parametrize(
    ("names", "in_set", "not_in_set"),
    [
        (["evil.example"], True, False),  # the domain itself
        (["a.b.EVIL.example"], True, False),  # any name under it, any case
        (["notevil.example"], False, True),  # a suffix of labels, not of characters
        (["exact.test"], True, False),
        (["sub.exact.test"], False, True),  # exact entries stay exact
        (["evil.example", "other.org"], False, False),
        ([], True, True),
    ],
)
def test_wildcard_entries_of_a_string_set_match_a_domain_and_its_subdomains(
    names: list[str], in_set: bool, not_in_set: bool
) -> None:
    assert conforms("dns_names", "in-set", DOMAINS, names) is in_set
    assert conforms("dns_names", "not-in-set", DOMAINS, names) is not_in_set


def test_without_wildcards_string_sets_stay_exact_as_in_aws() -> None:
    assert conforms("s", "in-set", {"strings": ["A"]}, ["a"]) is False
    assert conforms("s", "not-in-set", {"strings": ["x.org"]}, ["a.x.org"]) is True

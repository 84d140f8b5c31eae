"""CIDR sets and the fast address parser, checked against the ipaddress module."""

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.cidr import NOT_AN_ADDRESS, CidrSet, address_key, cidr_problem


def reference(text: str) -> int:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return NOT_AN_ADDRESS
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return int(address.ipv4_mapped)
    return int(address) + (2**32 if address.version == 6 else 0)


def address_texts(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    if address.version == 4:
        return [str(address)]
    return [str(address), address.exploded, address.compressed.upper()]


@settings(max_examples=300)
@given(
    st.one_of(
        st.ip_addresses(),
        st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv6Address((0xFFFF << 32) | n)),
    )
)
def test_address_key_agrees_with_ipaddress_on_addresses(address):
    for text in address_texts(address):
        assert address_key(text) == reference(text)


@settings(max_examples=300)
@given(st.text(alphabet="0123456789abcdefABCDEF:.%x /-", max_size=45))
def test_address_key_agrees_with_ipaddress_on_junk(text):
    assert address_key(text) == reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "256.0.0.1",
        " 1.2.3.4",
        "1.2.3.4\n",
        "१.2.3.4",
        "1::2::3",
        "12345::",
        "",
    ],
)
def test_address_key_refuses(text):
    assert address_key(text) == NOT_AN_ADDRESS


def test_cidr_set_matches_a_linear_scan_with_overlaps_and_both_families():
    rng = random.Random(5)
    nets = [
        ipaddress.ip_network((rng.getrandbits(32) & 0xFF00FFFF, rng.randrange(8, 33)), strict=False)
        for _ in range(300)
    ]
    nets += [
        ipaddress.ip_network(
            (rng.getrandbits(128) & ~(2**100 - 1), rng.randrange(4, 129)), strict=False
        )
        for _ in range(100)
    ]
    nets += [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("11.0.0.0/8"),
    ]
    cidr_set = CidrSet(str(n) for n in nets)
    probes = [ipaddress.IPv4Address(rng.getrandbits(32) & 0xFF00FFFF) for _ in range(2000)]
    probes += [n.network_address for n in nets] + [n.broadcast_address for n in nets]
    probes += [
        n.broadcast_address + 1 for n in nets if int(n.broadcast_address) < (2**n.max_prefixlen - 1)
    ]
    probes += [ipaddress.IPv6Address(rng.getrandbits(128) & ~(2**100 - 1)) for _ in range(500)]
    for address in probes:
        expected = any(address in n for n in nets if n.version == address.version)
        assert (str(address) in cidr_set) is expected, address


def test_cidr_set_of_nothing_holds_nothing():
    assert "192.0.2.1" not in CidrSet([])
    assert "::" not in CidrSet([])
    assert 7 not in CidrSet(["0.0.0.0/0"])


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("192.0.2.0/24", True),
        ("192.0.2.7/24", True),
        ("2001:db8::/32", True),
        ("192.0.2.1", True),
        ("192.0.2.0/33", False),
        ("10.0.0.300/8", False),
        ("", False),
        (24, False),
        ("2001:db8::/129", False),
    ],
)
def test_cidr_problem(text, ok):
    assert (cidr_problem(text) is None) is ok
    if ok:
        CidrSet([text])
    elif isinstance(text, str):
        with pytest.raises(ValueError):
            CidrSet([text])

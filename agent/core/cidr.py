"""CIDR sets for in-cidr-set / not-in-cidr-set: IPv4 and IPv6 ranges merged into one
sorted interval list, so a lookup is one bisect whatever the number of CIDRs."""

from __future__ import annotations

import ipaddress
import re
import reprlib
from bisect import bisect_right
from collections.abc import Iterable

# ipaddress.ip_address costs 3-12 us per call; these strict parsers are several times
# faster and agree with it (tests/core/test_core_cidr.py checks that).
_OCTETS = {str(i): i for i in range(256)}  # no leading zeros, as ipaddress
_IPV6_FULL = re.compile(r"(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}").fullmatch
_V4_MAPPED = 0xFFFF


def _ipv4(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    octets = _OCTETS
    try:
        return (
            octets[parts[0]] << 24
            | octets[parts[1]] << 16
            | octets[parts[2]] << 8
            | octets[parts[3]]
        )
    except KeyError:
        return None


def _ipv6(text: str) -> int | None:
    if "." in text or "%" in text:  # embedded IPv4 or a scope: rare, leave them to ipaddress
        try:
            return int(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    head, double, tail = text.partition("::")
    if double:
        heads = head.split(":") if head else []
        tails = tail.split(":") if tail else []
        fill = 8 - len(heads) - len(tails)
        if fill < 1:
            return None
        text = ":".join([*heads, *["0"] * fill, *tails])
    if _IPV6_FULL(text) is None:
        return None
    return int("".join([group.rjust(4, "0") for group in text.split(":")]), 16)


# IPv6 addresses get keys above the whole IPv4 space, so that one sorted interval list
# serves both families; NOT_AN_ADDRESS sorts below every range.
_V6_BASE = 1 << 32
NOT_AN_ADDRESS = -1


def address_key(text: object) -> int:
    """An address as one integer: IPv4 as is, IPv6 offset by 2**32; NOT_AN_ADDRESS for
    anything else. An IPv4-mapped IPv6 address is its IPv4 address, so v4 CIDRs judge
    it."""
    if not isinstance(text, str):
        return NOT_AN_ADDRESS
    if ":" not in text:
        v4 = _ipv4(text)
        return NOT_AN_ADDRESS if v4 is None else v4
    v6 = _ipv6(text)
    if v6 is None:
        return NOT_AN_ADDRESS
    if v6 >> 32 == _V4_MAPPED:
        return v6 & 0xFFFFFFFF
    return v6 + _V6_BASE


def address_keys(addresses: Iterable[object]) -> list[int]:
    """Each address of a sample turned into its key once, for all the CIDR sets that
    judge it."""
    return [address_key(a) for a in addresses]


def cidr_problem(text: object) -> str | None:
    """Why `text` is not a CIDR (or plain address), or None."""
    if not isinstance(text, str):
        return f"{reprlib.repr(text)} is not a string"
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"{reprlib.repr(text)} is not a CIDR; write e.g. 192.0.2.0/24 or 2001:db8::/32"
    return None


class CidrSet:
    """Membership of addresses in a set of CIDRs. Host bits set in a CIDR are ignored
    (192.0.2.7/24 means 192.0.2.0/24), as AWS accepts them; a plain address is a /32
    or /128. Raises ValueError for an entry that is not a CIDR."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, cidrs: Iterable[str]) -> None:
        spans = []
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=False)
            base = 0 if net.version == 4 else _V6_BASE
            spans.append((int(net.network_address) + base, int(net.broadcast_address) + base))
        # Merged, disjoint, sorted ranges: a key is inside when the last range starting
        # at or below it has not ended before it.
        self._starts: list[int] = []
        self._ends: list[int] = []
        for lo, hi in sorted(spans):
            if self._ends and lo <= self._ends[-1] + 1:
                self._ends[-1] = max(self._ends[-1], hi)
            else:
                self._starts.append(lo)
                self._ends.append(hi)

    def contains_key(self, key: int) -> bool:
        i = bisect_right(self._starts, key) - 1
        return i >= 0 and key <= self._ends[i]

    def __contains__(self, address: object) -> bool:
        return self.contains_key(address_key(address))

    def all_inside(self, keys: Iterable[int]) -> bool:
        """Whether every address key is inside; an empty list conforms."""
        return all(map(self.contains_key, keys))

    def none_inside(self, keys: Iterable[int]) -> bool:
        return not any(map(self.contains_key, keys))

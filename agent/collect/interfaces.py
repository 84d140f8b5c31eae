"""Which interface a local socket address belongs to, from one psutil.net_if_addrs()
call per cycle."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psutil

# ::ffff:a.b.c.d, an IPv4 address on a dual-stack socket.
V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def unmap(packed: bytes) -> bytes:
    """The IPv4 address inside a v4-mapped IPv6 address; other addresses unchanged."""
    if len(packed) == 16 and packed[:12] == V4_MAPPED_PREFIX:
        return packed[12:]
    return packed


class AddressMap:
    """Packed local address -> interface name.

    `if_addrs` has the shape of psutil.net_if_addrs(): interface name -> entries whose
    first two items are (family, address); other families are ignored. An address held
    by two interfaces names the first. Addresses in 127.0.0.0/8 that no interface lists
    (systemd-resolved binds 127.0.0.53) belong to the loopback interface, as they do in
    Linux routing. Anything else unknown, wildcards included, has no interface (None).
    """

    __slots__ = ("_by_addr", "_loopback")

    def __init__(self, if_addrs: Mapping[str, Iterable[Sequence[Any]]]) -> None:
        by_addr: dict[bytes, str] = {}
        for name, entries in if_addrs.items():
            for family, address, *_ in entries:
                if family in (socket.AF_INET, socket.AF_INET6):
                    # psutil writes link-local IPv6 with its scope: fe80::1%eth0.
                    packed = socket.inet_pton(family, address.partition("%")[0])
                    by_addr.setdefault(packed, name)
        self._by_addr = by_addr
        self._loopback = by_addr.get(b"\x7f\x00\x00\x01", "lo")

    @classmethod
    def current(cls) -> AddressMap:
        return cls(psutil.net_if_addrs())

    def interface(self, packed: bytes) -> str | None:
        """The interface of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
        packed = unmap(packed)
        name = self._by_addr.get(packed)
        if name is None and len(packed) == 4 and packed[0] == 127:
            return self._loopback
        return name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AddressMap) and self._by_addr == other._by_addr

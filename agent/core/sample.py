"""What one collection cycle saw: the rule core judges it whole, and the report
(agent.core.report) is cut from it for the wire. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

CustomType = Literal["number", "number-list", "string-list", "ip-address-list"]
CUSTOM_TYPES: tuple[CustomType, ...] = ("number", "number-list", "string-list", "ip-address-list")


@dataclass(frozen=True, slots=True)
class ListeningPort:
    port: int
    interface: str | None = None  # None for a wildcard bind (0.0.0.0, ::)


@dataclass(frozen=True, slots=True)
class Connection:
    remote_ip: str  # plain address; v4-mapped v6 already shown as v4
    remote_port: int
    local_port: int
    local_interface: str | None = None

    @property
    def remote_addr(self) -> str:
        if ":" in self.remote_ip:
            return f"[{self.remote_ip}]:{self.remote_port}"
        return f"{self.remote_ip}:{self.remote_port}"


@dataclass(frozen=True, slots=True)
class NetworkStats:
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int


CustomValue = float | int | list[float] | list[int] | list[str]


@dataclass(frozen=True, slots=True)
class CustomMetric:
    name: str
    type: CustomType
    value: CustomValue


@dataclass(frozen=True, slots=True)
class Sample:
    """What one collection cycle saw; `None` or empty means not collected."""

    tcp_ports: Sequence[ListeningPort] | None = None
    udp_ports: Sequence[ListeningPort] | None = None
    connections: Sequence[Connection] | None = None
    network_stats: NetworkStats | None = None
    custom: Sequence[CustomMetric] = field(default_factory=tuple)
    # A gateway's broker watch: client id -> its cloud-side metrics (aws:num-messages-sent
    # ...); None when the broker is not watched. Judged per client, not reported.
    clients: Mapping[str, Mapping[str, object]] | None = None

"""Metric kinds (spec/detect.md "Metrics") and the metrics one report yields for the
rule core. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from agent.core.report import CUSTOM_VALUE_KEYS, ReportError
from agent.core.sample import Sample


class Kind(StrEnum):
    """How a metric's value looks and which operators judge it. The custom kinds carry
    the AWS custom metric type names."""

    COUNTER = "counter"  # aws: delta since the previous sample; a window sums them
    GAUGE = "gauge"  # aws: a count read at sampling time; a window keeps the last
    NUMBER = "number"
    PORT_LIST = "port-list"
    IP_LIST = "ip-address-list"
    NUMBER_LIST = "number-list"
    STRING_LIST = "string-list"


NUMERIC_OPERATORS = ("less-than", "less-than-equals", "greater-than", "greater-than-equals")
PORT_OPERATORS = ("in-port-set", "not-in-port-set")
CIDR_OPERATORS = ("in-cidr-set", "not-in-cidr-set")
SET_OPERATORS = ("in-set", "not-in-set")
OPERATORS = NUMERIC_OPERATORS + CIDR_OPERATORS + PORT_OPERATORS + SET_OPERATORS

NUMERIC_KINDS = frozenset({Kind.COUNTER, Kind.GAUGE, Kind.NUMBER})
LIST_KINDS = frozenset({Kind.PORT_LIST, Kind.IP_LIST, Kind.NUMBER_LIST, Kind.STRING_LIST})

# Per kind: the operators that fit it and the criteria value keys they take.
KIND_OPERATORS: dict[Kind, tuple[str, ...]] = {
    Kind.COUNTER: NUMERIC_OPERATORS,
    Kind.GAUGE: NUMERIC_OPERATORS,
    Kind.NUMBER: NUMERIC_OPERATORS,
    Kind.PORT_LIST: PORT_OPERATORS,
    Kind.IP_LIST: CIDR_OPERATORS,
    Kind.NUMBER_LIST: SET_OPERATORS,
    Kind.STRING_LIST: SET_OPERATORS,
}
KIND_VALUE_KEYS: dict[Kind, tuple[str, ...]] = {
    Kind.COUNTER: ("count", "number"),
    Kind.GAUGE: ("count", "number"),
    Kind.NUMBER: ("count", "number"),
    Kind.PORT_LIST: ("ports",),
    Kind.IP_LIST: ("cidrs",),
    Kind.NUMBER_LIST: ("numbers",),
    Kind.STRING_LIST: ("strings",),
}
# The key a measured value takes in an event's metricValue.
KIND_EVENT_KEY: dict[Kind, str] = {
    Kind.COUNTER: "count",
    Kind.GAUGE: "count",
    Kind.NUMBER: "number",
    Kind.PORT_LIST: "ports",
    Kind.IP_LIST: "cidrs",
    Kind.NUMBER_LIST: "numbers",
    Kind.STRING_LIST: "strings",
}

AWS_METRICS: dict[str, Kind] = {
    "aws:all-bytes-in": Kind.COUNTER,
    "aws:all-bytes-out": Kind.COUNTER,
    "aws:all-packets-in": Kind.COUNTER,
    "aws:all-packets-out": Kind.COUNTER,
    "aws:num-listening-tcp-ports": Kind.GAUGE,
    "aws:num-listening-udp-ports": Kind.GAUGE,
    "aws:num-established-tcp-connections": Kind.GAUGE,
    "aws:listening-tcp-ports": Kind.PORT_LIST,
    "aws:listening-udp-ports": Kind.PORT_LIST,
    "aws:destination-ip-addresses": Kind.IP_LIST,
    # Cloud-side metrics, collected on a gateway from its local broker.
    "aws:num-messages-sent": Kind.COUNTER,
    "aws:num-messages-received": Kind.COUNTER,
    "aws:message-byte-size": Kind.GAUGE,
    "aws:num-authorization-failures": Kind.COUNTER,
    "aws:num-connection-attempts": Kind.COUNTER,
    "aws:num-disconnects": Kind.COUNTER,
    "aws:source-ip-address": Kind.IP_LIST,
}
# Metrics AWS computes in the cloud from the broker's view of a device: on a gateway
# they come from its own broker, per MQTT client, and are judged per client.
CLOUD_METRICS = frozenset(
    {
        "aws:num-messages-sent",
        "aws:num-messages-received",
        "aws:message-byte-size",
        "aws:num-authorization-failures",
        "aws:num-connection-attempts",
        "aws:num-disconnects",
        "aws:source-ip-address",
    }
)
# Metrics a TOPIC_FILTER dimension may narrow; their sample value may be a
# topic -> number mapping.
DIMENSION_METRICS = frozenset(
    {
        "aws:num-messages-sent",
        "aws:num-messages-received",
        "aws:message-byte-size",
        "aws:num-authorization-failures",
    }
)

_CUSTOM_KEY_KINDS: dict[str, Kind] = {
    CUSTOM_VALUE_KEYS["number"]: Kind.NUMBER,
    CUSTOM_VALUE_KEYS["number-list"]: Kind.NUMBER_LIST,
    CUSTOM_VALUE_KEYS["string-list"]: Kind.STRING_LIST,
    CUSTOM_VALUE_KEYS["ip-address-list"]: Kind.IP_LIST,
}


def custom_kind(operator: str, value: object) -> Kind | None:
    """The kind of a custom metric, inferred from its behavior's operator and value
    (spec: "its type is inferred from the operator and value"); None when nothing fits."""
    if operator in NUMERIC_OPERATORS:
        return Kind.NUMBER
    if operator in CIDR_OPERATORS:
        return Kind.IP_LIST
    if operator in SET_OPERATORS:
        if isinstance(value, Mapping) and "numbers" in value:
            return Kind.NUMBER_LIST
        return Kind.STRING_LIST
    return None


def is_finite_number(x: object) -> bool:
    """An int or float that is not NaN or infinite (bool is not a number here)."""
    return type(x) is int or (type(x) is float and math.isfinite(x))


def _obj(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ReportError(f"{where}{key}: must be an object")
    return value


def _count(parent: Mapping[str, Any], key: str, where: str) -> int:
    value = parent.get(key)
    if type(value) is not int or value < 0:
        raise ReportError(f"{where}{key}: must be an integer >= 0, got {value!r}")
    return value


def _entries(parent: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = parent.get(key, [])
    if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
        raise ReportError(f"{where}{key}: must be a list of objects")
    return value


def _ports(block: Mapping[str, Any], where: str) -> list[int]:
    seen: dict[int, None] = {}  # a port bound on two interfaces is listed once
    for i, entry in enumerate(_entries(block, "ports", where)):
        port = entry.get("port")
        if type(port) is not int or not 0 <= port <= 65535:
            raise ReportError(f"{where}ports[{i}].port: must be a port 0-65535, got {port!r}")
        seen[port] = None
    return list(seen)


def remote_ip(remote_addr: str) -> str:
    """The IP part of "ip:port" or "[v6]:port"."""
    if remote_addr.startswith("["):
        end = remote_addr.find("]")
        if end < 0:
            raise ReportError(f"remote_addr {remote_addr!r}: '[' without ']'")
        return remote_addr[1:end]
    ip, sep, _port = remote_addr.rpartition(":")
    if not sep or not ip:
        raise ReportError(f"remote_addr {remote_addr!r}: expected ip:port or [v6]:port")
    return ip


def _custom(name: str, entry: object) -> object:
    where = f"custom_metrics.{name}"
    if not isinstance(entry, list) or len(entry) != 1 or not isinstance(entry[0], Mapping):
        raise ReportError(f"{where}: must be a one-element list holding one value object")
    (holder,) = entry
    if len(holder) != 1 or next(iter(holder)) not in _CUSTOM_KEY_KINDS:
        keys = ", ".join(_CUSTOM_KEY_KINDS)
        raise ReportError(f"{where}: the value object needs exactly one of {keys}")
    ((key, value),) = holder.items()
    kind = _CUSTOM_KEY_KINDS[key]
    if kind is Kind.NUMBER:
        if not is_finite_number(value):
            raise ReportError(f"{where}.{key}: must be a finite number, got {value!r}")
        return value
    if kind is Kind.NUMBER_LIST:
        item_ok, what = is_finite_number, "finite numbers"
    else:
        item_ok, what = (lambda x: isinstance(x, str)), "strings"
    if not isinstance(value, list) or not all(item_ok(x) for x in value):
        raise ReportError(f"{where}.{key}: must be a list of {what}")
    return value


def metrics_from_report(report_long: Mapping[str, Any]) -> dict[str, object]:
    """The aws: metrics and custom metrics (by bare name) of a long-named report. A block
    the report lacks yields no metric; a malformed one raises ReportError naming it."""
    out: dict[str, object] = {}
    metrics = _obj(report_long, "metrics", "") or {}
    for block_key, metric in (
        ("listening_tcp_ports", "tcp"),
        ("listening_udp_ports", "udp"),
    ):
        block = _obj(metrics, block_key, "metrics.")
        if block is not None:
            where = f"metrics.{block_key}."
            out[f"aws:num-listening-{metric}-ports"] = _count(block, "total", where)
            out[f"aws:listening-{metric}-ports"] = _ports(block, where)
    stats = _obj(metrics, "network_stats", "metrics.")
    if stats is not None:
        for key, metric in (
            ("bytes_in", "aws:all-bytes-in"),
            ("bytes_out", "aws:all-bytes-out"),
            ("packets_in", "aws:all-packets-in"),
            ("packets_out", "aws:all-packets-out"),
        ):
            if key in stats:
                out[metric] = _count(stats, key, "metrics.network_stats.")
    tcp = _obj(metrics, "tcp_connections", "metrics.")
    established = _obj(tcp, "established_connections", "metrics.tcp_connections.") if tcp else None
    if established is not None:
        where = "metrics.tcp_connections.established_connections."
        out["aws:num-established-tcp-connections"] = _count(established, "total", where)
        ips: dict[str, None] = {}
        for i, conn in enumerate(_entries(established, "connections", where)):
            addr = conn.get("remote_addr")
            if not isinstance(addr, str):
                raise ReportError(f"{where}connections[{i}].remote_addr: must be a string")
            try:
                ips[remote_ip(addr)] = None
            except ReportError as e:
                raise ReportError(f"{where}connections[{i}].{e}") from None
        out["aws:destination-ip-addresses"] = list(ips)
    custom = _obj(report_long, "custom_metrics", "") or {}
    for name, entry in custom.items():
        if name.startswith("aws:"):
            raise ReportError(f"custom_metrics.{name}: the aws: prefix is reserved")
        out[name] = _custom(name, entry)
    return out


def metrics_from_sample(sample: Sample) -> dict[str, object]:
    """The metrics of a whole sample, as `metrics_from_report` reads them from its uncut
    report: what the daemon judges, whatever the wire report leaves out."""
    out: dict[str, object] = {}
    for ports, proto in ((sample.tcp_ports, "tcp"), (sample.udp_ports, "udp")):
        if ports is not None:
            out[f"aws:num-listening-{proto}-ports"] = len(ports)
            # Sorted as the report lists them; a port on two interfaces counts once.
            ordered = sorted(ports, key=lambda p: (p.port, p.interface or ""))
            out[f"aws:listening-{proto}-ports"] = list(dict.fromkeys(p.port for p in ordered))
    ns = sample.network_stats
    if ns is not None:
        out["aws:all-bytes-in"] = ns.bytes_in
        out["aws:all-bytes-out"] = ns.bytes_out
        out["aws:all-packets-in"] = ns.packets_in
        out["aws:all-packets-out"] = ns.packets_out
    if sample.connections is not None:
        out["aws:num-established-tcp-connections"] = len(sample.connections)
        out["aws:destination-ip-addresses"] = list(
            dict.fromkeys(c.remote_ip for c in sample.connections)
        )
    for m in sample.custom:
        out[m.name] = m.value
    return out


MAX_CLIENT_ID_BYTES = 65535  # an MQTT string


def _client_value(value: object, where: str) -> object:
    """A cloud-side metric's value as the broker watch gives it: a count or size, a
    {topic: number} map, or a list of addresses."""
    if is_finite_number(value):
        return value
    if isinstance(value, Mapping):
        for topic, n in value.items():
            if not isinstance(topic, str) or not is_finite_number(n):
                raise ReportError(f"{where}: must map topics to finite numbers")
        return dict(value)
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    raise ReportError(f"{where}: must be a number, a {{topic: number}} object or a list of strings")


def clients_from_envelope(envelope: Mapping[str, Any]) -> dict[str, dict[str, object]] | None:
    """The per-client broker metrics of a metrics-history record (None: the record has
    none); a malformed entry raises ReportError naming it."""
    clients = envelope.get("clients")
    if clients is None:
        return None
    if not isinstance(clients, Mapping):
        raise ReportError("clients: must be an object of client id -> metrics")
    out: dict[str, dict[str, object]] = {}
    for client_id, metrics in clients.items():
        if not client_id or len(client_id.encode(errors="replace")) > MAX_CLIENT_ID_BYTES:
            raise ReportError(f"clients: a client id must be 1-{MAX_CLIENT_ID_BYTES} bytes")
        where = f"clients.{client_id[:60]}"
        if not isinstance(metrics, Mapping):
            raise ReportError(f"{where}: must be an object of metric -> value")
        for metric in metrics:
            if metric not in CLOUD_METRICS:
                raise ReportError(f"{where}.{metric}: not a cloud-side metric of the broker watch")
        out[client_id] = {m: _client_value(v, f"{where}.{m}") for m, v in metrics.items()}
    return out

"""The Device Defender metrics report (spec/metrics-report.md), the wire format only:
building it from a sample, key names, size caps, custom-metric rules and the
metrics-history envelope. The rule core judges the whole sample (agent.core.metrics),
never the report cut for the wire. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from agent.core.sample import (
    CUSTOM_TYPES,
    Connection,
    CustomMetric,
    CustomType,
    ListeningPort,
    Sample,
)

MAX_PAYLOAD_BYTES = 128 * 1024
REPORT_VERSION = "1.0"

# AWS custom metric type -> the key that wraps its value in the report.
CUSTOM_VALUE_KEYS: dict[CustomType, str] = {
    "number": "number",
    "number-list": "number_list",
    "string-list": "string_list",
    "ip-address-list": "ip_list",
}

LONG_TO_SHORT: dict[str, str] = {
    "header": "hed",
    "report_id": "rid",
    "version": "v",
    "metrics": "met",
    "custom_metrics": "cmet",
    "listening_tcp_ports": "tp",
    "listening_udp_ports": "up",
    "ports": "pts",
    "port": "pt",
    "interface": "if",
    "total": "t",
    "tcp_connections": "tc",
    "established_connections": "ec",
    "connections": "cs",
    "remote_addr": "rad",
    "local_port": "lp",
    "local_interface": "li",
    "network_stats": "ns",
    "bytes_in": "bi",
    "bytes_out": "bo",
    "packets_in": "pi",
    "packets_out": "po",
}
SHORT_TO_LONG: dict[str, str] = {v: k for k, v in LONG_TO_SHORT.items()}
# Keys below these hold user-chosen names (custom metrics) or custom values: never renamed.
_OPAQUE_PARENTS = frozenset({"custom_metrics"})


class ReportError(ValueError):
    """A report or envelope that does not follow the wire format."""


class ReportIdClock:
    """Report ids are epoch milliseconds, strictly increasing even when the clock steps back."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self, now_s: float) -> int:
        self.last = max(int(now_s * 1000), self.last + 1)
        return self.last


_STRING_OK = re.compile(r"^[A-Za-z0-9:_\-/.]*$")
MAX_SIGNIFICANT_DIGITS = 15


def _significant_digits(x: float | int) -> int:
    if isinstance(x, int):
        digits = str(abs(x)).rstrip("0") or "0"
        return len(digits)
    text = repr(abs(float(x)))
    mantissa = text.split("e")[0].replace(".", "").lstrip("0").rstrip("0")
    return max(len(mantissa), 1)


def _number_problem(x: object) -> str | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return f"{x!r} is not a number"
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return f"{x!r} is not a finite number"
    if _significant_digits(x) > MAX_SIGNIFICANT_DIGITS:
        return f"{x!r} has more than {MAX_SIGNIFICANT_DIGITS} significant digits"
    return None


def custom_metric_problem(metric: CustomMetric) -> str | None:
    """Why AWS would silently drop this custom metric, or None when it is fine."""
    if metric.type not in CUSTOM_TYPES:
        return f"unknown type {metric.type!r}"
    value = metric.value
    if metric.type == "number":
        return _number_problem(value)
    if not isinstance(value, list):
        return f"a {metric.type} needs a list, got {type(value).__name__}"
    for item in value:
        if metric.type == "number-list":
            problem = _number_problem(item)
        elif metric.type == "string-list":
            if not isinstance(item, str):
                problem = f"{item!r} is not a string"
            elif not _STRING_OK.match(item):
                problem = f"{item!r} uses characters outside A-Z a-z 0-9 : _ - / ."
            else:
                problem = None
        else:
            try:
                ipaddress.ip_address(item if isinstance(item, str) else "")
                problem = None
            except ValueError:
                problem = f"{item!r} is not an IPv4 or IPv6 address"
        if problem:
            return problem
    return None


def _port_list(ports: Sequence[ListeningPort], limit: int | None) -> dict[str, Any]:
    listed = []
    for p in sorted(ports, key=lambda p: (p.port, p.interface or ""))[:limit]:
        entry: dict[str, Any] = {"port": p.port}
        if p.interface:
            entry["interface"] = p.interface
        listed.append(entry)
    return {"ports": listed, "total": len(ports)}


def _connection_list(conns: Sequence[Connection], limit: int | None) -> dict[str, Any]:
    listed = []
    for c in conns[:limit]:
        entry: dict[str, Any] = {"remote_addr": c.remote_addr, "local_port": c.local_port}
        if c.local_interface:
            entry["local_interface"] = c.local_interface
        listed.append(entry)
    return {"established_connections": {"connections": listed, "total": len(conns)}}


def report_document(sample: Sample, report_id: int, limit: int | None = None) -> dict[str, Any]:
    """The long-named report of a sample, its lists cut to `limit` entries (None: whole,
    as the metrics history keeps it so that replay judges what the daemon judged)."""
    metrics: dict[str, Any] = {}
    if sample.tcp_ports is not None:
        metrics["listening_tcp_ports"] = _port_list(sample.tcp_ports, limit)
    if sample.udp_ports is not None:
        metrics["listening_udp_ports"] = _port_list(sample.udp_ports, limit)
    if sample.network_stats is not None:
        ns = sample.network_stats
        metrics["network_stats"] = {
            "bytes_in": ns.bytes_in,
            "bytes_out": ns.bytes_out,
            "packets_in": ns.packets_in,
            "packets_out": ns.packets_out,
        }
    if sample.connections is not None:
        metrics["tcp_connections"] = _connection_list(sample.connections, limit)
    report: dict[str, Any] = {"header": {"report_id": report_id, "version": REPORT_VERSION}}
    if metrics or not sample.custom:
        report["metrics"] = metrics
    if sample.custom:
        report["custom_metrics"] = {
            m.name: [{CUSTOM_VALUE_KEYS[m.type]: m.value}] for m in sample.custom
        }
    return report


def encoded_size(report: dict[str, Any]) -> int:
    """Bytes of the compact JSON encoding, the larger of our two encodings."""
    return len(json.dumps(report, separators=(",", ":")).encode())


class WireReport(NamedTuple):
    doc: dict[str, Any]
    # Custom metrics left out because even with every list emptied they do not fit.
    omitted: tuple[str, ...] = ()


def build_report(
    sample: Sample,
    report_id: int,
    *,
    max_list: int = 100,
    short_names: bool = False,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> WireReport:
    """The report for one sample on the wire. Lists are cut to `max_list` entries, and
    further (halving) until the JSON encoding fits `max_bytes`; totals stay exact. A
    custom metric cannot be cut without changing its value: when emptied lists are not
    enough the largest custom metric is left out whole (and named), never sent false.
    Custom metrics must already have passed `custom_metric_problem`."""
    custom = list(sample.custom)
    omitted: list[str] = []
    limit = max_list
    while True:
        kept = dataclasses.replace(sample, custom=tuple(custom))
        report = report_document(kept, report_id, limit)
        named = to_short_names(report) if short_names else report
        if encoded_size(named) <= max_bytes:
            return WireReport(named, tuple(omitted))
        if limit > 0:
            limit //= 2
            continue
        if not custom:  # only a header and empty blocks: max_bytes is absurdly small
            raise ReportError(f"report exceeds {max_bytes} bytes even with empty lists")
        largest = max(custom, key=lambda m: encoded_size({m.name: [{"v": m.value}]}))
        custom.remove(largest)
        omitted.append(largest.name)
        limit = max_list


def _rename(obj: Any, table: dict[str, str], parent: str | None) -> Any:
    if isinstance(obj, dict):
        if parent in _OPAQUE_PARENTS:
            return obj
        out = {}
        for key, value in obj.items():
            new: str = table.get(key) or key
            out[new] = _rename(value, table, SHORT_TO_LONG.get(new, new))
        return out
    if isinstance(obj, list):
        return [_rename(item, table, parent) for item in obj]
    return obj


def to_short_names(report: dict[str, Any]) -> dict[str, Any]:
    short: dict[str, Any] = _rename(report, LONG_TO_SHORT, None)
    return short


def to_long_names(report: dict[str, Any]) -> dict[str, Any]:
    """A report in long names, whichever set it used; a mix of both sets is an error."""
    if not isinstance(report, dict):
        raise ReportError("report must be a JSON object")
    if "hed" in report or "met" in report or "cmet" in report:
        if "header" in report or "metrics" in report or "custom_metrics" in report:
            raise ReportError("report mixes long and short key names")
        long: dict[str, Any] = _rename(report, SHORT_TO_LONG, None)
        return long
    return report


def make_envelope(
    timestamp: float,
    report: dict[str, Any],
    clients: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, Any]:
    """One metrics-history record: the input of `replay` and the daemon's history. A
    gateway's per-client broker metrics (Sample.clients) ride beside the report, which
    keeps the format of the wire."""
    envelope = {"timestamp": timestamp, "report": to_long_names(report)}
    if clients is not None:
        envelope["clients"] = {c: dict(m) for c, m in clients.items()}
    return envelope


def parse_envelope(obj: object) -> tuple[float, dict[str, Any]]:
    """(timestamp, long-named report) from a metrics-history record."""
    if not isinstance(obj, dict):
        raise ReportError("record must be a JSON object with 'timestamp' and 'report'")
    ts = obj.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise ReportError("'timestamp' must be epoch seconds (a number)")
    report = obj.get("report")
    if not isinstance(report, dict):
        raise ReportError("'report' must be a JSON object")
    long = to_long_names(report)
    if not isinstance(long.get("header"), dict):
        raise ReportError("report has no 'header' object")
    return float(ts), long

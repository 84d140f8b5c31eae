import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.report import (
    LONG_TO_SHORT,
    MAX_PAYLOAD_BYTES,
    ReportError,
    ReportIdClock,
    build_report,
    custom_metric_problem,
    encoded_size,
    make_envelope,
    parse_envelope,
    report_document,
    to_long_names,
    to_short_names,
)
from agent.core.sample import Connection, CustomMetric, ListeningPort, NetworkStats, Sample

SPEC_EXAMPLE = {
    "header": {"report_id": 1730000000000, "version": "1.0"},
    "metrics": {
        "listening_tcp_ports": {"ports": [{"interface": "eth0", "port": 22}], "total": 1},
        "listening_udp_ports": {"ports": [{"interface": "eth0", "port": 5353}], "total": 1},
        "network_stats": {
            "bytes_in": 29358693495,
            "bytes_out": 26485035,
            "packets_in": 10013573555,
            "packets_out": 11382615,
        },
        "tcp_connections": {
            "established_connections": {
                "connections": [
                    {"local_interface": "eth0", "local_port": 22, "remote_addr": "192.0.2.10:61204"}
                ],
                "total": 1,
            }
        },
    },
    "custom_metrics": {
        "cpu_usage": [{"number": 26}],
        "open_files": [{"number_list": [3, 7]}],
        "wifi_ssids": [{"string_list": ["home-net"]}],
        "peers": [{"ip_list": ["198.51.100.4"]}],
    },
}

SPEC_SAMPLE = Sample(
    tcp_ports=[ListeningPort(22, "eth0")],
    udp_ports=[ListeningPort(5353, "eth0")],
    connections=[Connection("192.0.2.10", 61204, 22, "eth0")],
    network_stats=NetworkStats(29358693495, 26485035, 10013573555, 11382615),
    custom=[
        CustomMetric("cpu_usage", "number", 26),
        CustomMetric("open_files", "number-list", [3, 7]),
        CustomMetric("wifi_ssids", "string-list", ["home-net"]),
        CustomMetric("peers", "ip-address-list", ["198.51.100.4"]),
    ],
)


def test_builds_the_spec_example() -> None:
    assert build_report(SPEC_SAMPLE, 1730000000000).doc == SPEC_EXAMPLE


def test_short_names_cover_every_key_and_leave_custom_names_alone() -> None:
    short = build_report(SPEC_SAMPLE, 1730000000000, short_names=True).doc
    assert short["hed"] == {"rid": 1730000000000, "v": "1.0"}
    assert short["met"]["tc"]["ec"]["cs"][0] == {"li": "eth0", "lp": 22, "rad": "192.0.2.10:61204"}
    assert short["met"]["ns"] == {
        "bi": 29358693495,
        "bo": 26485035,
        "pi": 10013573555,
        "po": 11382615,
    }
    # Custom metric names and their value keys are never renamed.
    assert short["cmet"] == SPEC_EXAMPLE["custom_metrics"]
    long_keys = set(LONG_TO_SHORT)

    def keys(obj: object) -> set[str]:
        if isinstance(obj, dict):
            return set(obj) | {k for v in obj.values() for k in keys(v)}
        if isinstance(obj, list):
            return {k for v in obj for k in keys(v)}
        return set()

    assert not (keys({k: v for k, v in short.items() if k != "cmet"}) & long_keys)
    assert to_long_names(short) == SPEC_EXAMPLE


def test_ipv6_remote_addr_is_bracketed() -> None:
    assert Connection("2001:db8::1", 443, 5000).remote_addr == "[2001:db8::1]:443"
    report = build_report(Sample(connections=[Connection("2001:db8::1", 443, 5000)]), 1).doc
    conn = report["metrics"]["tcp_connections"]["established_connections"]["connections"][0]
    assert conn == {"remote_addr": "[2001:db8::1]:443", "local_port": 5000}


def test_wildcard_port_has_no_interface_key() -> None:
    report = build_report(Sample(tcp_ports=[ListeningPort(22, None)]), 1).doc
    assert report["metrics"]["listening_tcp_ports"]["ports"] == [{"port": 22}]


def test_lists_are_cut_but_totals_stay_exact() -> None:
    conns = [Connection("192.0.2.1", 1000 + i, 22) for i in range(250)]
    ports = [ListeningPort(p, "eth0") for p in range(1, 301)]
    report = build_report(Sample(tcp_ports=ports, connections=conns), 1, max_list=100).doc
    tp = report["metrics"]["listening_tcp_ports"]
    ec = report["metrics"]["tcp_connections"]["established_connections"]
    assert (len(tp["ports"]), tp["total"]) == (100, 300)
    assert (len(ec["connections"]), ec["total"]) == (100, 250)


def test_report_never_exceeds_the_payload_limit() -> None:
    conns = [
        Connection(f"2001:db8::{i:x}", 40000 + i % 20000, 22, "a-very-long-interface-name")
        for i in range(20000)
    ]
    report = build_report(Sample(connections=conns, tcp_ports=[]), 1, max_list=20000).doc
    assert encoded_size(report) <= MAX_PAYLOAD_BYTES
    ec = report["metrics"]["tcp_connections"]["established_connections"]
    assert ec["total"] == 20000
    assert 0 < len(ec["connections"]) < 20000


def test_report_id_is_strictly_increasing_when_the_clock_steps_back() -> None:
    ids = ReportIdClock()
    first = ids.next(1_700_000_000.0)
    assert first == 1_700_000_000_000
    assert ids.next(1_600_000_000.0) == first + 1
    assert ids.next(1_700_000_000.0) == first + 2
    assert ids.next(1_700_000_001.0) == 1_700_000_001_000


@pytest.mark.parametrize(
    ("metric", "problem"),
    [
        (CustomMetric("m", "number", 1.5), None),
        (CustomMetric("m", "number", 123456789012345), None),
        (CustomMetric("m", "number", 1234567890123456), "significant digits"),
        (CustomMetric("m", "number", 0.1234567890123456), "significant digits"),
        (CustomMetric("m", "number", float("nan")), "finite"),
        (CustomMetric("m", "number", True), "not a number"),
        (CustomMetric("m", "number", "12"), "not a number"),
        (CustomMetric("m", "number-list", [1, 2.5]), None),
        (CustomMetric("m", "number-list", 3), "needs a list"),
        (CustomMetric("m", "string-list", ["a-b_c:d/e.f", "XYZ09"]), None),
        (CustomMetric("m", "string-list", ["has space"]), "characters outside"),
        (CustomMetric("m", "string-list", ["caf\u00e9"]), "characters outside"),
        (CustomMetric("m", "ip-address-list", ["192.0.2.1", "2001:db8::1"]), None),
        (CustomMetric("m", "ip-address-list", ["192.0.2.300"]), "not an IPv4 or IPv6"),
        (CustomMetric("m", "ip-address-list", ["192.0.2.0/24"]), "not an IPv4 or IPv6"),
    ],
)
def test_custom_metric_rules(metric: CustomMetric, problem: str | None) -> None:
    found = custom_metric_problem(metric)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_envelope_round_trip_normalises_short_names() -> None:
    short = build_report(SPEC_SAMPLE, 5, short_names=True).doc
    record = json.loads(json.dumps(make_envelope(1700000000.5, short)))
    ts, report = parse_envelope(record)
    assert ts == 1700000000.5
    assert report == build_report(SPEC_SAMPLE, 5).doc


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([], "JSON object"),
        ({"report": {"header": {}}}, "timestamp"),
        ({"timestamp": "yesterday", "report": {"header": {}}}, "timestamp"),
        ({"timestamp": 1}, "'report'"),
        ({"timestamp": 1, "report": {"metrics": {}}}, "header"),
        ({"timestamp": 1, "report": {"hed": {}, "metrics": {}}}, "mixes"),
    ],
)
def test_bad_envelopes_are_named(record: object, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        parse_envelope(record)


@given(
    st.lists(st.integers(min_value=1, max_value=65535), max_size=300),
    st.integers(min_value=0, max_value=400),
)
def test_port_totals_are_exact_for_any_cut(ports: list[int], max_list: int) -> None:
    sample = Sample(tcp_ports=[ListeningPort(p) for p in ports])
    tp = build_report(sample, 1, max_list=max_list).doc["metrics"]["listening_tcp_ports"]
    assert tp["total"] == len(ports)
    assert len(tp["ports"]) == min(len(ports), max_list)
    assert to_long_names(to_short_names({"metrics": {"listening_tcp_ports": tp}})) == {
        "metrics": {"listening_tcp_ports": tp}
    }


def test_a_custom_metric_too_large_for_any_report_is_left_out_by_name() -> None:
    huge = CustomMetric("ssids", "string-list", [f"net-{i:05d}" for i in range(20000)])
    small = CustomMetric("cpu", "number", 3)
    wire = build_report(Sample(tcp_ports=[ListeningPort(22)], custom=[huge, small]), 7)
    assert wire.omitted == ("ssids",)
    assert wire.doc["custom_metrics"] == {"cpu": [{"number": 3}]}
    assert wire.doc["metrics"]["listening_tcp_ports"]["ports"] == [{"port": 22}]
    assert encoded_size(wire.doc) <= MAX_PAYLOAD_BYTES


def test_the_history_document_keeps_every_entry() -> None:
    conns = [Connection(f"198.51.100.{i % 250}", 1000 + i, 22) for i in range(300)]
    doc = report_document(Sample(connections=conns), 1)
    listed = doc["metrics"]["tcp_connections"]["established_connections"]["connections"]
    assert len(listed) == 300

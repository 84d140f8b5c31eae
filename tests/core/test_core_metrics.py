"""The metrics a report yields for the rule core."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.metrics import metrics_from_report, metrics_from_sample, remote_ip
from agent.core.report import ReportError, parse_envelope, report_document, to_short_names
from agent.core.sample import Connection, CustomMetric, ListeningPort, NetworkStats, Sample

REPORT = {
    "header": {"report_id": 1730000000000, "version": "1.0"},
    "metrics": {
        # lists cut to fewer entries than the totals, as a size-capped report has them
        "listening_tcp_ports": {
            "ports": [{"interface": "eth0", "port": 22}, {"interface": "wlan0", "port": 22}],
            "total": 5,
        },
        "listening_udp_ports": {"ports": [], "total": 0},
        "network_stats": {"bytes_in": 100, "bytes_out": 200, "packets_in": 3, "packets_out": 4},
        "tcp_connections": {
            "established_connections": {
                "connections": [
                    {"remote_addr": "192.0.2.10:61204", "local_port": 22},
                    {"remote_addr": "[2001:db8::1]:443", "local_port": 5000},
                    {"remote_addr": "192.0.2.10:61205", "local_port": 22},
                ],
                "total": 40,
            }
        },
    },
    "custom_metrics": {
        "cpu_usage": [{"number": 26.5}],
        "open_files": [{"number_list": [3, 7]}],
        "wifi_ssids": [{"string_list": ["home-net"]}],
        "peers": [{"ip_list": ["198.51.100.4"]}],
    },
}

EXPECTED = {
    "aws:num-listening-tcp-ports": 5,
    "aws:listening-tcp-ports": [22],
    "aws:num-listening-udp-ports": 0,
    "aws:listening-udp-ports": [],
    "aws:all-bytes-in": 100,
    "aws:all-bytes-out": 200,
    "aws:all-packets-in": 3,
    "aws:all-packets-out": 4,
    "aws:num-established-tcp-connections": 40,
    "aws:destination-ip-addresses": ["192.0.2.10", "2001:db8::1"],
    "cpu_usage": 26.5,
    "open_files": [3, 7],
    "wifi_ssids": ["home-net"],
    "peers": ["198.51.100.4"],
}


def test_metrics_from_report_long_and_short_names():
    assert metrics_from_report(REPORT) == EXPECTED
    _, long = parse_envelope({"timestamp": 1, "report": to_short_names(REPORT)})
    assert metrics_from_report(long) == EXPECTED


def test_blocks_not_collected_yield_no_metric():
    assert metrics_from_report({"header": {"report_id": 1}, "metrics": {}}) == {}
    only = {"header": {}, "metrics": {"network_stats": {"bytes_out": 5}}}
    assert metrics_from_report(only) == {"aws:all-bytes-out": 5}


@pytest.mark.parametrize(
    ("text", "ip"),
    [
        ("192.0.2.1:80", "192.0.2.1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[::ffff:192.0.2.1]:1", "::ffff:192.0.2.1"),
    ],
)
def test_remote_ip(text, ip):
    assert remote_ip(text) == ip


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ({"metrics": {"listening_tcp_ports": {"ports": []}}}, "metrics.listening_tcp_ports.total"),
        (
            {"metrics": {"listening_tcp_ports": {"ports": [{"port": 70000}], "total": 1}}},
            "ports[0].port",
        ),
        ({"metrics": {"network_stats": {"bytes_out": -1}}}, "network_stats.bytes_out"),
        ({"metrics": {"network_stats": {"bytes_out": True}}}, "network_stats.bytes_out"),
        ({"metrics": {"tcp_connections": []}}, "metrics.tcp_connections"),
        (
            {
                "metrics": {
                    "tcp_connections": {
                        "established_connections": {
                            "connections": [{"remote_addr": "[::1:80"}],
                            "total": 1,
                        }
                    }
                }
            },
            "connections[0].remote_addr",
        ),
        (
            {
                "metrics": {
                    "tcp_connections": {
                        "established_connections": {
                            "connections": [{"remote_addr": "nocolon"}],
                            "total": 1,
                        }
                    }
                }
            },
            "connections[0].remote_addr",
        ),
        ({"custom_metrics": {"cpu": {"number": 1}}}, "custom_metrics.cpu"),
        ({"custom_metrics": {"cpu": [{"number": "1"}]}}, "custom_metrics.cpu.number"),
        ({"custom_metrics": {"cpu": [{"number": float("inf")}]}}, "custom_metrics.cpu.number"),
        ({"custom_metrics": {"cpu": [{"number": 1, "number_list": [1]}]}}, "exactly one"),
        ({"custom_metrics": {"ssids": [{"string_list": [1]}]}}, "list of strings"),
        ({"custom_metrics": {"aws:all-bytes-out": [{"number": 1}]}}, "reserved"),
    ],
)
def test_malformed_reports_name_the_field(report, message):
    with pytest.raises(ReportError, match=message.replace("[", r"\[").replace(".", r"\.")):
        metrics_from_report({"header": {"report_id": 1}, **report})


samples = st.builds(
    Sample,
    tcp_ports=st.none()
    | st.lists(
        st.builds(ListeningPort, st.integers(0, 65535), st.sampled_from([None, "eth0", "lo"]))
    ),
    udp_ports=st.none() | st.lists(st.builds(ListeningPort, st.integers(0, 65535))),
    connections=st.none()
    | st.lists(
        st.builds(
            Connection,
            st.ip_addresses().map(str),
            st.integers(0, 65535),
            st.integers(0, 65535),
        ),
        max_size=300,
    ),
    network_stats=st.none() | st.builds(NetworkStats, *[st.integers(0, 2**63)] * 4),
    custom=st.just(()) | st.just((CustomMetric("cpu", "number", 7.5),)),
)


@settings(max_examples=200, deadline=None)
@given(samples)
def test_the_whole_sample_reads_as_its_uncut_report(sample: Sample) -> None:
    # The daemon judges metrics_from_sample; replay judges the history's uncut report.
    assert metrics_from_sample(sample) == metrics_from_report(report_document(sample, 1))


def test_the_151st_connection_and_the_102nd_port_are_judged() -> None:
    conns = [Connection("192.0.2.1", 1000 + i, 22) for i in range(150)]
    conns.append(Connection("203.0.113.66", 4444, 40000))
    ports = [ListeningPort(p) for p in range(1000, 1101)] + [ListeningPort(31337)]
    metrics = metrics_from_sample(Sample(tcp_ports=ports, connections=conns))
    assert "203.0.113.66" in metrics["aws:destination-ip-addresses"]
    assert 31337 in metrics["aws:listening-tcp-ports"]
    assert metrics["aws:num-established-tcp-connections"] == 151

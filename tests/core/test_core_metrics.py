"""The metrics a report yields for the rule core."""

import pytest

from agent.core.metrics import metrics_from_report, remote_ip
from agent.core.report import ReportError, parse_envelope, to_short_names

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

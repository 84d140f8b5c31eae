"""`edge-defender collect` and the report-interval rule, as an operator runs them."""

import json
import subprocess
import sys
from pathlib import Path

import cbor2

from agent.config import parse_config
from agent.core.report import parse_envelope
from agent.service.daemon import report_interval_s


def collect(tmp_path: Path, *args: str) -> bytes:
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[sampling]\nsocket_source = "proc"\n')
    return subprocess.run(
        [sys.executable, "-m", "agent", "collect", "--config", str(config), *args],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout


def test_once_prints_one_long_named_report_with_real_deltas(tmp_path: Path) -> None:
    report = json.loads(collect(tmp_path, "--once", "--interval", "0.2"))
    assert report["header"]["version"] == "1.0"
    metrics = report["metrics"]
    assert set(metrics) == {
        "listening_tcp_ports",
        "listening_udp_ports",
        "network_stats",
        "tcp_connections",
    }
    # The first sample only primes the counters: the printed one has deltas.
    assert all(v >= 0 for v in metrics["network_stats"].values())
    assert metrics["tcp_connections"]["established_connections"]["total"] >= 0


def test_cbor_with_short_names(tmp_path: Path) -> None:
    report = cbor2.loads(
        collect(tmp_path, "--once", "--interval", "0.1", "--format", "cbor", "--short-names")
    )
    assert set(report) == {"hed", "met"}
    assert {"tp", "up", "ns", "tc"} <= set(report["met"])


def test_jsonl_envelopes_are_replay_input(tmp_path: Path) -> None:
    lines = collect(tmp_path, "--count", "3", "--interval", "0.1", "--jsonl").splitlines()
    records = [parse_envelope(json.loads(line)) for line in lines]
    assert len(records) == 3
    times = [ts for ts, _ in records]
    ids = [r["header"]["report_id"] for _, r in records]
    assert times == sorted(times) and ids == sorted(set(ids))


def test_report_interval_is_held_at_five_minutes_toward_aws_only() -> None:
    def config(endpoint: str) -> str:
        return f'[sampling]\nreport_interval_s = 10\n[mqtt]\nendpoint = "{endpoint}"'

    aws = parse_config(config("abc-ats.iot.eu-west-1.amazonaws.com"), "c.toml")
    other = parse_config(config("broker.local"), "c.toml")
    assert report_interval_s(aws) == 300.0
    assert report_interval_s(other) == 10.0

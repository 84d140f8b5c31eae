"""Custom metric sources: built-ins, real commands and files, and the values that must
be left out with a log line."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.collect.custom import CustomMetrics, SourceError, read_source, soc_temperature
from agent.config import CustomMetricConfig
from agent.core.sample import CustomMetric

SYS_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "collect" / "sys"


def metric(name: str = "m", type: Any = "number", **kw: Any) -> CustomMetricConfig:
    return CustomMetricConfig(name=name, type=type, **kw)


def python(code: str, timeout_s: float = 10.0, type: Any = "number") -> CustomMetricConfig:
    return metric(
        type=type, source="command", command=[sys.executable, "-c", code], timeout_s=timeout_s
    )


def collect_one(cfg: CustomMetricConfig) -> list[CustomMetric]:
    return CustomMetrics([cfg], SYS_FIXTURE).collect()


def skipped_reason(caplog: pytest.LogCaptureFixture, name: str = "m") -> str:
    lines = [r.getMessage() for r in caplog.records if "custom_metric_skipped" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"metric={name} " in lines[0]
    assert caplog.records[0].levelno == logging.WARNING
    return lines[0]


# -- built-in sources -------------------------------------------------------------------


def test_soc_temperature_is_the_hottest_zone_in_celsius() -> None:
    assert soc_temperature(SYS_FIXTURE) == 51.25


def test_soc_temperature_skips_zones_that_cannot_be_read(tmp_path: Path) -> None:
    zones = tmp_path / "class" / "thermal"
    (zones / "thermal_zone0" / "temp").mkdir(parents=True)  # reading it fails
    (zones / "thermal_zone1").mkdir()
    (zones / "thermal_zone1" / "temp").write_text("42000\n")
    assert soc_temperature(tmp_path) == 42.0
    (zones / "thermal_zone1" / "temp").unlink()
    with pytest.raises(SourceError, match="no readable thermal zone"):
        soc_temperature(tmp_path)


def test_percentages_and_process_count(tmp_path: Path) -> None:
    for source in ("cpu_percent", "memory_percent"):
        value = read_source(metric(source=source), SYS_FIXTURE)
        assert isinstance(value, float)
        assert 0.0 <= value <= 100.0
    disk = read_source(metric(source="disk_percent", path=str(tmp_path)), SYS_FIXTURE)
    assert disk == pytest.approx(psutil.disk_usage(str(tmp_path)).percent, abs=1.0)
    count = read_source(metric(source="process_count"), SYS_FIXTURE)
    assert isinstance(count, int)
    assert abs(count - len(psutil.pids())) < 50


def test_disk_percent_of_a_missing_path_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    assert collect_one(metric(source="disk_percent", path="/no/such/dir")) == []
    assert "/no/such/dir" in skipped_reason(caplog)


# -- commands ----------------------------------------------------------------------------


def test_a_command_prints_a_number() -> None:
    assert collect_one(python("print(42)")) == [CustomMetric("m", "number", 42)]
    assert collect_one(python("print(' 2.5 ')")) == [CustomMetric("m", "number", 2.5)]


def test_a_command_prints_a_json_list() -> None:
    cfg = python('print(\'["home-net", "guest"]\')', type="string-list")
    assert collect_one(cfg) == [CustomMetric("m", "string-list", ["home-net", "guest"])]


def test_a_command_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cfg = metric(source="command", command=[sys.executable, "-c", "print(1)", f"; touch {marker}"])
    assert collect_one(cfg) == [CustomMetric("m", "number", 1)]
    assert not marker.exists()


def test_a_command_that_times_out_is_killed_with_its_children(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The child forks a helper that would keep stdout open after the child is killed.
    code = "import subprocess, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"
    start = time.monotonic()
    assert collect_one(python(code, timeout_s=0.5)) == []
    assert time.monotonic() - start < 5
    assert "timed out after 0.5 s" in skipped_reason(caplog)


def test_a_failing_command_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    assert collect_one(python("import sys; sys.exit('sensor offline')")) == []
    reason = skipped_reason(caplog)
    assert "exited with status 1" in reason
    assert "sensor offline" in reason


def test_a_missing_program_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    assert collect_one(metric(source="command", command=["/no/such/program"])) == []
    assert "cannot run '/no/such/program'" in skipped_reason(caplog)


@pytest.mark.parametrize("output", ["hello", "", '{"a": 1}', "true"])
def test_output_that_is_not_a_number_or_list_is_left_out(
    output: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert collect_one(python(f"print({output!r})")) == []
    assert "not a number or a JSON list" in skipped_reason(caplog)


# -- files --------------------------------------------------------------------------------


def test_a_file_holds_the_value(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    path.write_text('["198.51.100.4", "2001:db8::9"]\n')
    cfg = metric(type="ip-address-list", source="file", path=str(path))
    assert collect_one(cfg) == [
        CustomMetric("m", "ip-address-list", ["198.51.100.4", "2001:db8::9"])
    ]


def test_a_missing_file_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nope"
    assert collect_one(metric(source="file", path=str(missing))) == []
    reason = skipped_reason(caplog)
    assert "No such file or directory" in reason
    assert str(missing) in reason


# -- values that break the type or the AWS rules ----------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "why"),
    [
        (python("print('[\"has space\"]')", type="string-list"), "uses characters outside"),
        (python("print(1234567890123456)"), "more than 15 significant digits"),
        (python("print('[\"10.0.0.300\"]')", type="ip-address-list"), "not an IPv4 or IPv6"),
        (python("print('[1, 2]')"), "is not a number"),  # a list for a number
        (python("print(7)", type="number-list"), "needs a list"),
        (python("print('[1, \"two\"]')", type="number-list"), "'two' is not a number"),
        (python("print('NaN')"), "not a finite number"),
    ],
)
def test_values_breaking_the_rules_are_left_out_with_the_reason(
    cfg: CustomMetricConfig, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert collect_one(cfg) == []
    assert why in skipped_reason(caplog)


def test_one_bad_metric_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    metrics = CustomMetrics(
        [
            metric("bad", source="file", path="/no/such/file"),
            metric("good", source="command", command=[sys.executable, "-c", "print(3)"]),
        ],
        SYS_FIXTURE,
    )
    assert metrics.collect() == [CustomMetric("good", "number", 3)]
    skipped_reason(caplog, "bad")


def test_a_lasting_problem_is_logged_once_and_its_end_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "value"
    metrics = CustomMetrics([metric(source="file", path=str(path))], SYS_FIXTURE)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert metrics.collect() == []
        path.write_text("5")
        assert metrics.collect() == [CustomMetric("m", "number", 5)]
    messages = [r.getMessage().split()[0] for r in caplog.records]
    assert messages == ["custom_metric_skipped", "custom_metric_recovered"]

"""`edge-defender replay` and `validate-security-profile-behaviors`, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import botocore.session
import pytest

from agent.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detect"
PROFILE = str(FIXTURES / "profile-baseline.json")
METRICS = str(FIXTURES / "metrics-gateway.jsonl")
T0 = 1730000100

# What the gateway recording does against the baseline profile (see the fixture).
EXPECTED = [
    (T0 + 180, "tcp-ports", "in-alarm", {"ports": [22, 8080]}),
    (T0 + 240, "tcp-ports", "alarm-cleared", {"ports": [22, 443]}),
    (T0 + 300, "destinations", "in-alarm", {"cidrs": ["198.51.100.7"]}),
    (T0 + 420, "destinations", "alarm-cleared", {"cidrs": ["192.0.2.10", "2001:db8::5"]}),
    (T0 + 420, "cpu", "in-alarm", {"number": 95}),
    (T0 + 480, "cpu", "alarm-cleared", {"number": 20}),
    (T0 + 600, "bytes-out", "in-alarm", {"count": 300000}),
]


def replay(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["replay", "--profile", PROFILE, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lines_in_time_order(capsys):
    code, out, err = replay(capsys, "--metrics", METRICS, "--thing", "pi-7")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    got = [
        (e["violationEventTime"], e["behavior"]["name"], e["violationEventType"], e["metricValue"])
        for e in events
    ]
    assert got == EXPECTED
    assert {e["thingName"] for e in events} == {"pi-7"}
    assert {e["securityProfileName"] for e in events} == {"pi-baseline"}
    by_behavior = {}
    for e in events:
        by_behavior.setdefault(e["behavior"]["name"], set()).add(e["violationId"])
    assert all(len(ids) == 1 for ids in by_behavior.values())  # in-alarm and end share an id
    assert "12 samples" in err and "7 events" in err
    assert "pi-baseline/bytes-in-ml not judged: mlDetectionConfig" in err


def test_table_for_people(capsys):
    code, out, _ = replay(capsys, "--metrics", METRICS, "--thing", "pi-7", "--output", "table")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["TIME", "PROFILE", "BEHAVIOR", "TYPE", "VALUE", "VIOLATION"]
    assert len(rows) == len(EXPECTED)
    columns = [header.index(name) for name in ("PROFILE", "BEHAVIOR", "TYPE", "VALUE", "VIOLATION")]
    for row in rows:
        for start in columns:  # every column starts where its heading does
            assert row[start - 2 : start] == "  " and row[start] != " "
    first = rows[0].split()
    assert first[:4] == ["2024-10-27T03:38:00Z", "pi-baseline", "tcp-ports", "in-alarm"]
    assert "(suppressed)" in rows[0] and "ports=22,8080" in rows[0]
    assert len(first[-1]) == 8


def test_stdin_and_thing_name_from_config(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('thing_name = "from-config"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "replay",
            "--profile",
            PROFILE,
            "--metrics",
            "-",
            "--config",
            str(config),
        ],
        input=Path(METRICS).read_bytes(),
        capture_output=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == len(EXPECTED) and {e["thingName"] for e in events} == {"from-config"}


def _line(timestamp: str = "1730000700", custom: str = '{"cpu_usage": [{"number": 20}]}') -> str:
    return f'{{"timestamp": {timestamp}, "report": {{"header": {{}}, "custom_metrics": {custom}}}}}'


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "not JSON"),
        (
            '{"timestamp": "yesterday", "report": {"header": {}}}',
            "'timestamp' must be epoch seconds",
        ),
        (
            '{"timestamp": 1, "report": {"header": {}, "metrics": '
            '{"network_stats": {"bytes_out": -5}}}}',
            "bytes_out",
        ),
        ('{"timestamp": NaN, "report": {"header": {}}}', "not a finite number"),
        (_line("Infinity"), "not JSON: Infinity is not a finite number"),
        (_line("1e400"), "timestamp inf is not a finite number"),
        (_line("-1"), "timestamp -1.0 is before 1970; a time is epoch seconds from 0 to"),
        (_line("253402300800"), "timestamp 253402300800.0 is after 9999"),
        (_line("9" * 400), "timestamp: an integer too large for a time"),
        (_line("9" * 5000), "not JSON: an integer has more than 4300 digits"),
        (
            _line(custom='{"cpu_usage": [{"number": 9223372036854775808}]}'),
            "cpu_usage: an integer beyond 64 bits",
        ),
        (_line(custom='{"cpu_usage": [{"number": -Infinity}]}'), "-Infinity is not a finite"),
        (_line(custom='{"procs": [{"string_list": ["ok", "\\udc00"]}]}'), "lone surrogate \\udc00"),
        (_line(custom="[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (
            _line(custom='{"cpu_usage": [{"number": "' + "x" * 100_000 + '"}]}'),
            "cpu_usage.number: must be",
        ),
        ("[1, 2]", "record must be a JSON object"),
    ],
)
def test_a_malformed_line_is_an_error_naming_its_number(tmp_path, capsys, bad_line, message):
    lines = Path(METRICS).read_text().splitlines()
    lines.insert(2, "")  # a blank line holds nothing and is passed over
    lines.insert(4, bad_line)
    metrics = tmp_path / "m.jsonl"
    metrics.write_text("\n".join(lines) + "\n")
    code, _, err = replay(capsys, "--metrics", str(metrics))
    assert code == 2
    assert f"{metrics}:5: " in err and message in err
    assert "samples" not in err  # no summary after an error
    assert len(err) < 500  # a huge value is quoted in part


def test_time_going_back_is_refused_naming_the_line(tmp_path, capsys):
    lines = Path(METRICS).read_text().splitlines()
    lines[6], lines[7] = lines[7], lines[6]
    metrics = tmp_path / "m.jsonl"
    metrics.write_text("\n".join(lines) + "\n")
    code, _, err = replay(capsys, "--metrics", str(metrics))
    assert code == 2
    assert f"{metrics}:8: timestamp {float(T0 + 360)} goes back in time" in err and "line 7" in err


def test_not_utf8_is_named_too(tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    metrics.write_bytes(Path(METRICS).read_bytes() + b'{"timestamp": 1\xff}\n')
    code, _, err = replay(capsys, "--metrics", str(metrics))
    assert code == 2 and f"{metrics}:13: not UTF-8" in err


def test_bad_or_missing_inputs_exit_2(tmp_path, capsys):
    code, _, err = replay(capsys, "--metrics", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "cannot read" in err
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"securityProfileName": "x", "behaviors": [{"name": "b", "metric": "aws:nope"}]})
    )
    assert main(["replay", "--profile", str(bad), "--metrics", METRICS]) == 2
    assert f"{bad}: behaviors[0] 'b': metric: unknown AWS metric" in capsys.readouterr().err
    assert main(["replay", "--profile", str(tmp_path / "*.json.none"), "--metrics", METRICS]) == 2
    assert "no security profile" in capsys.readouterr().err


def validate(capsys, path: Path | str) -> tuple[int, dict]:
    code = main(["validate-security-profile-behaviors", "--behaviors", str(path)])
    out = capsys.readouterr().out
    return code, json.loads(out) if out else {}


def test_validate_valid_and_invalid(capsys):
    response_shape = (
        botocore.session.get_session()
        .get_service_model("iot")
        .shape_for("ValidateSecurityProfileBehaviorsResponse")
    )
    code, response = validate(capsys, PROFILE)
    assert (code, response) == (0, {"valid": True, "validationErrors": []})
    code, response = validate(capsys, FIXTURES / "behaviors-invalid.json")
    assert code == 1 and response["valid"] is False
    assert set(response) == set(response_shape.members)
    messages = [e["errorMessage"] for e in response["validationErrors"]]
    assert len(messages) == 4
    assert messages[0].startswith("behaviors[0]: name: missing")
    assert any("ports[1]: 70000 is not a port" in m for m in messages)
    assert any("duplicate of behaviors[1]" in m for m in messages)
    assert any("'in-cidr-set' does not fit aws:all-bytes-in" in m for m in messages)


def test_validate_gives_aws_verdict_on_device_extensions(tmp_path, capsys):
    short = {
        "name": "burst",
        "metric": "aws:all-bytes-out",
        "criteria": {
            "comparisonOperator": "less-than",
            "value": {"count": 10**6},
            "durationSeconds": 10,
        },
    }
    path = tmp_path / "short.json"
    path.write_text(json.dumps({"securityProfileName": "fast", "behaviors": [short]}))
    code = main(["validate-security-profile-behaviors", "--behaviors", str(path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert json.loads(out) == {
        "valid": False,
        "validationErrors": [
            {
                "errorMessage": "behaviors[0] 'burst': criteria.durationSeconds: 10 is not valid "
                "for aws:all-bytes-out; valid values are 300, 600, 900, 1800, 3600"
            }
        ],
    }
    assert "not valid in AWS IoT, but the device loads it" in err
    assert "1 on-device extension" in err
    # with a problem the device refuses too, no word of loading
    path.write_text(json.dumps([short, {**short, "name": "bad name"}]))
    code, response = validate(capsys, path)
    assert code == 1 and len(response["validationErrors"]) == 3
    path.write_text(json.dumps([short, {**short, "name": "bad name"}]))
    main(["validate-security-profile-behaviors", "--behaviors", str(path)])
    assert "device loads it" not in capsys.readouterr().err


def test_validate_unreadable_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{")
    assert main(["validate-security-profile-behaviors", "--behaviors", str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["validate-security-profile-behaviors", "--behaviors", str(tmp_path / "none")]) == 2


def _shifted(tmp_path: Path, seconds: float) -> Path:
    """The gateway recording moved in time."""
    lines = []
    for line in Path(METRICS).read_text().splitlines():
        record = json.loads(line)
        record["timestamp"] += seconds
        lines.append(json.dumps(record))
    path = tmp_path / "shifted.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_table_at_the_edges_of_time(tmp_path, capsys):
    # The recording moved to start at the epoch, and to end on the last second of 9999.
    last = json.loads(Path(METRICS).read_text().splitlines()[-1])["timestamp"]
    latest = 253402300799
    for shift, first in ((-T0, "1970-01-01T00:03:00Z"), (latest - last, "9999-12-31T23:51:59Z")):
        code, out, _ = replay(
            capsys, "--metrics", str(_shifted(tmp_path, shift)), "--output", "table"
        )
        assert code == 0
        rows = out.splitlines()[1:]
        assert len(rows) == len(EXPECTED) and rows[0].startswith(first + "  ")


def test_table_cells_cannot_drive_the_terminal(tmp_path, capsys):
    # A recorded string the profile flags: control characters are shown escaped.
    profile = tmp_path / "p.json"
    profile.write_text(
        json.dumps(
            {
                "securityProfileName": "procs",
                "behaviors": [
                    {
                        "name": "names",
                        "metric": "procs",
                        "criteria": {
                            "comparisonOperator": "in-set",
                            "value": {"strings": ["sshd"]},
                        },
                    }
                ],
            }
        )
    )
    metrics = tmp_path / "m.jsonl"
    metrics.write_text(
        _line(custom='{"procs": [{"string_list": ["\\u001b[2Jx", "caf\\u00e9"]}]}') + "\n"
    )
    assert (
        main(["replay", "--profile", str(profile), "--metrics", str(metrics), "--output", "table"])
        == 0
    )
    out = capsys.readouterr().out
    assert "strings=\\x1b[2Jx,café" in out and "\x1b" not in out


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "agent", *args],
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


@pytest.mark.parametrize("output", ["json", "table"])
def test_events_are_written_as_they_come(output):
    # The first event is out while the input is still open: nothing waits for the end.
    lines = Path(METRICS).read_bytes().splitlines(keepends=True)
    proc = _cli(
        "replay", "--profile", PROFILE, "--metrics", "-", "--thing", "t", "--output", output
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"".join(lines[:4]))  # the first in-alarm is at the 4th sample
        proc.stdin.flush()
        first = (
            proc.stdout.readline()
            if output == "json"
            else proc.stdout.readline() + proc.stdout.readline()
        )
        assert b"in-alarm" in first and proc.poll() is None
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]


STAT_PROFILE = {
    "securityProfileName": "levels",
    "behaviors": [
        {
            "name": "high",
            "metric": "level",
            "criteria": {"comparisonOperator": "less-than", "value": {"number": 50}},
        },
        {
            "name": "usual",  # at most the 90th percentile of its own past
            "metric": "level",
            "criteria": {
                "comparisonOperator": "less-than-equals",
                "statisticalThreshold": {"statistic": "p90"},
            },
        },
    ],
}


def _levels(tmp_path: Path, levels: list[float | None], start: float = T0) -> Path:
    """A recording of the custom metric `level`, one sample a second (None: not read)."""
    path = tmp_path / "levels.jsonl"
    with path.open("w") as f:
        for i, level in enumerate(levels):
            custom = {} if level is None else {"level": [{"number": level}]}
            report = {"header": {"report_id": i + 1, "version": "1.0"}, "custom_metrics": custom}
            f.write(json.dumps({"timestamp": start + i, "report": report}) + "\n")
    return path


def test_detect_settings_of_the_config_are_used(tmp_path, capsys):
    profile = tmp_path / "levels.json"
    profile.write_text(json.dumps(STAT_PROFILE))
    # high for 2 samples (the statistics have 3 earlier datapoints), then no reading
    metrics = _levels(tmp_path, [10, 10, 10, 90, 90, None, None, None, None, 10])
    config = tmp_path / "config.toml"
    config.write_text(
        f'thing_name = "cfg-thing"\n[detect]\nprofiles = ["{profile}"]\n'
        "stale_after_s = 2.0\nbaseline_s = 60.0\nmin_baseline_datapoints = 3\n"
    )
    # --profile defaults to the config's [detect] profiles
    assert main(["replay", "--metrics", str(metrics), "--config", str(config)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = [
        (e["violationEventTime"] - T0, e["behavior"]["name"], e["violationEventType"])
        for e in events
    ]
    assert got == [
        (3, "high", "in-alarm"),
        (3, "usual", "in-alarm"),
        (6, "high", "alarm-invalidated"),  # stale: no datapoint for 2 s
        (6, "usual", "alarm-invalidated"),
    ]
    assert {e["thingName"] for e in events} == {"cfg-thing"}
    # The defaults judge the same recording differently: 30 baseline datapoints, 2 days.
    default_config = tmp_path / "default.toml"
    default_config.write_text("")
    assert (
        main(
            [
                "replay",
                "--profile",
                str(profile),
                "--metrics",
                str(metrics),
                "--config",
                str(default_config),
            ]
        )
        == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["behavior"]["name"], e["violationEventType"]) for e in events] == [
        ("high", "in-alarm"),
        ("high", "alarm-cleared"),
    ]


def test_detect_settings_the_rule_core_refuses_are_an_error(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text("[detect]\nmin_baseline_datapoints = 0\n")
    assert (
        main(["replay", "--profile", PROFILE, "--metrics", METRICS, "--config", str(config)]) == 2
    )
    assert "min_baseline_datapoints" in capsys.readouterr().err

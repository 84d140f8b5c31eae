"""Loading profile and dimension files, and the built-in default profile."""

import io
import json
import os
import shutil
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import ParamValidator

from agent.core.evaluator import Detector
from agent.core.events import EventType
from agent.core.profile import ProfileError
from agent.files import data
from agent.service.checks import check_config
from agent.service.profiles import (
    DEFAULT_PROFILE_SOURCE,
    builtin_default_profile,
    load_detect_files,
    load_profiles,
)
from agent.service.replay import validate_command

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detect"


def profile_doc(name: str, metric: str = "aws:all-bytes-out") -> dict:
    criteria = {"comparisonOperator": "less-than", "value": {"count": 1}}
    return {
        "securityProfileName": name,
        "behaviors": [{"name": "b", "metric": metric, "criteria": criteria}],
    }


def test_glob_in_sorted_order_with_lists_and_dimensions(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(profile_doc("second")))
    (tmp_path / "a.json").write_text(json.dumps([profile_doc("first-a"), profile_doc("first-b")]))
    shutil.copy(FIXTURES / "dimension-sensors.json", tmp_path / "c.json")
    (tmp_path / "notes.txt").write_text("not a profile")
    files = load_detect_files([str(tmp_path / "*.json")])
    assert [p.name for p in files.profiles] == ["first-a", "first-b", "second"]
    assert [p.source for p in files.profiles] == [
        f"{tmp_path}/a.json[0]",
        f"{tmp_path}/a.json[1]",
        f"{tmp_path}/b.json",
    ]
    assert [d.name for d in files.dimensions] == ["sensor-topics"]
    assert [
        p.name for p in load_profiles([str(tmp_path / "b.json"), str(tmp_path / "*.json")])
    ] == [
        "second",
        "first-a",
        "first-b",
    ]


def test_a_glob_may_match_nothing_but_a_named_file_must_exist(tmp_path):
    assert load_profiles([str(tmp_path / "*.json")]) == []
    with pytest.raises(ProfileError, match=f"{tmp_path}/missing.json: cannot read"):
        load_profiles([str(tmp_path / "missing.json")])


def test_every_bad_file_is_named(tmp_path):
    (tmp_path / "1.json").write_text("{")
    (tmp_path / "2.json").write_text(json.dumps(profile_doc("p", "aws:nope")))
    (tmp_path / "3.json").write_text(json.dumps(profile_doc("ok")))
    (tmp_path / "4.json").write_text(json.dumps(profile_doc("ok")))
    (tmp_path / "5.json").write_bytes(b"\xff")
    with pytest.raises(ProfileError) as info:
        load_profiles([str(tmp_path / "*.json")])
    errors = info.value.errors
    assert len(errors) == 4
    assert errors[0].startswith(f"{tmp_path}/1.json: not JSON")
    assert errors[1].startswith(f"{tmp_path}/2.json: behaviors[0] 'b': metric: unknown AWS metric")
    assert errors[2] == f"{tmp_path}/4.json: profile 'ok' also in {tmp_path}/3.json"
    assert errors[3] == f"{tmp_path}/5.json: not UTF-8 text (byte 0, line 1); save it as UTF-8"
    assert str(info.value) == "\n".join(errors)


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_profile_others_may_write_is_refused(tmp_path, mode):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile_doc("p")))
    path.chmod(mode)
    with pytest.raises(ProfileError) as info:
        load_profiles([str(path)])
    assert str(info.value) == (
        f"{path}: refused: mode {mode:04o} lets group or others write it (chmod go-w {path})"
    )
    path.chmod(0o644)
    assert [p.name for p in load_profiles([str(path)])] == ["p"]


def test_the_builtin_default_profile_only_when_no_profile_is_found(tmp_path):
    (default,) = load_profiles([str(tmp_path / "*.json")], builtin_default=True)
    assert default.name == "edge-defender-default" and default.source == DEFAULT_PROFILE_SOURCE
    assert load_profiles([str(tmp_path / "*.json")]) == []  # only when asked for
    shutil.copy(FIXTURES / "dimension-sensors.json", tmp_path / "d.json")
    files = load_detect_files([str(tmp_path / "*.json")], builtin_default=True)
    assert [p.name for p in files.profiles] == ["edge-defender-default"]
    assert [d.name for d in files.dimensions] == ["sensor-topics"]
    (tmp_path / "p.json").write_text(json.dumps(profile_doc("mine")))
    assert [p.name for p in load_profiles([str(tmp_path / "*.json")], builtin_default=True)] == [
        "mine"
    ]
    # a broken profile is an error, never a silent fallback
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(ProfileError, match=r"p\.json: not JSON"):
        load_profiles([str(tmp_path / "*.json")], builtin_default=True)


def test_the_default_profile_is_describe_security_profile_output():
    iot = botocore.session.get_session().get_service_model("iot")
    doc = json.loads(data("default-profile.json"))
    assert set(doc) <= set(iot.shape_for("DescribeSecurityProfileResponse").members)
    create = iot.shape_for("CreateSecurityProfileRequest")
    body = {k: v for k, v in doc.items() if k in create.members}
    report = ParamValidator().validate(body, create)
    assert not report.has_errors(), report.generate_report()


def judge(samples: list[dict[str, object]], interval_s: float = 10.0) -> set[str]:
    """The behaviors of the default profile that alarm on `samples`, one per interval."""
    detector = Detector([builtin_default_profile()], "host")
    alarmed = set()
    for i, metrics in enumerate(samples):
        for event in detector.observe(i * interval_s, metrics):
            if event.violation_event_type is EventType.IN_ALARM:
                alarmed.add(event.behavior["name"])
    return alarmed


def host(tcp: list[int], udp: int, established: int, bytes_out: int, packets_out: int) -> dict:
    """One 10-second sample of a host."""
    return {
        "aws:listening-tcp-ports": tcp,
        "aws:num-listening-tcp-ports": len(tcp),
        "aws:num-listening-udp-ports": udp,
        "aws:num-established-tcp-connections": established,
        "aws:all-bytes-out": bytes_out,
        "aws:all-packets-out": packets_out,
    }


DEV_PORTS = [22, 53, 631, 3000, 5432, 6379, 8000, 8080, 8443, 9090, *range(32768, 32798)]


def test_the_default_profile_is_quiet_on_ordinary_hosts_and_alarms_on_abuse():
    half_hour = 180
    idle_pi = host([22], udp=3, established=2, bytes_out=20_000, packets_out=60)
    assert judge([idle_pi] * half_hour) == set()
    # a busy developer desktop: 40 ports, a browser's connections, a video call, a push
    desktop = host(DEV_PORTS, udp=40, established=400, bytes_out=3_000_000, packets_out=3_000)
    push = host(DEV_PORTS, udp=40, established=400, bytes_out=25_000_000, packets_out=20_000)
    assert judge([desktop] * 60 + [push] * 12 + [desktop] * 60) == set()

    abuse = {
        "too-many-listening-tcp-ports": host(list(range(2000, 2100)), 3, 2, 0, 0),
        "too-many-listening-udp-ports": host([22], 500, 2, 0, 0),
        "telnet-or-backdoor-tcp-port-listening": host([22, 31337], 3, 2, 0, 0),
        "established-tcp-connection-flood": host([22], 3, 5000, 0, 0),
        # 40 Mbit/s for 5 minutes, and a small-packet flood at 40,000 packets/s
        "outbound-bytes-burst-5-minutes": host([22], 3, 2, 50_000_000, 35_000),
        "outbound-packets-burst-5-minutes": host([22], 3, 2, 25_600_000, 400_000),
    }
    for behavior, sample in abuse.items():
        assert judge([idle_pi, *[sample] * 31, idle_pi]) == {behavior}, behavior


NASTY_PROFILES = {
    "valid": json.dumps(profile_doc("p")).encode(),
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "5000-digit integer": json.dumps(profile_doc("p")).replace("1}", "1" * 5000 + "}").encode(),
    "not UTF-8": b"\xff\xfe{}",
    "NaN": json.dumps(profile_doc("p")).replace('"count": 1', '"number": NaN').encode(),
    "1e400": json.dumps(profile_doc("p")).replace('"count": 1', '"number": 1e400').encode(),
    "lone surrogate": json.dumps(
        {
            "securityProfileName": "p",
            "behaviors": [
                {
                    "name": "s",
                    "metric": "ssids",
                    "criteria": {
                        "comparisonOperator": "in-set",
                        "value": {"strings": ["ok", "\ud800"]},
                    },
                }
            ],
        }
    ).encode(),
    "wrong type": json.dumps({"securityProfileName": "p", "behaviors": [[]]}).encode(),
    "huge list": json.dumps(profile_doc("p")).replace("[{", "[" + "1," * 200_000 + "{").encode(),
    "default": data("default-profile.json"),
}


@pytest.mark.parametrize("case", NASTY_PROFILES)
def test_validate_check_config_and_the_loader_agree(tmp_path, case):
    path = tmp_path / "profile.json"
    path.write_bytes(NASTY_PROFILES[case])
    out, err = io.StringIO(), io.StringIO()
    validated = validate_command(str(path), out, err)
    try:
        load_profiles([str(path)])
        loaded = True
    except ProfileError as e:
        loaded = False
        assert all(line.startswith(f"{path}: ") for line in e.located())
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n[detect]\nprofiles = ["{path}"]\n')
    findings = [f for f in check_config(str(config)) if f.path == str(path)]
    assert (validated == 0) == loaded == (not findings), (validated, err.getvalue(), findings)
    assert loaded == (case in ("valid", "default"))


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "p.json"
    os.mkfifo(fifo)
    with pytest.raises(ProfileError, match=r"p\.json: not a regular file"):
        load_profiles([str(tmp_path / "*.json")])

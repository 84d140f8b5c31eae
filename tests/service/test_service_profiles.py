"""Loading profile and dimension files."""

import json
import shutil
from pathlib import Path

import pytest

from agent.core.profile import ProfileError
from agent.service.profiles import load_detect_files, load_profiles

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

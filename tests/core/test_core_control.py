"""Control messages: checking, argv, answers' topics, the shadow's plan and patches."""

from __future__ import annotations

import json

import pytest

from agent.core.control import (
    Arg,
    ControlError,
    digest,
    member_name,
    parse_request,
    plan,
    response_topic,
    shadow_patch,
    to_argv,
)

VERBS = {
    "update-security-profile": {
        "securityProfileName": Arg.VALUE,
        "behaviors": Arg.VALUE,
        "deleteBehaviors": Arg.FLAG,
        "expectedVersion": Arg.VALUE,
    },
    "update-dimension": {"name": Arg.VALUE, "stringValues": Arg.VALUES},
}


def _request(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_member_names_are_botocores() -> None:
    assert member_name("--security-profile-name") == "securityProfileName"
    assert member_name("--additional-metrics-to-retain-v2") == "additionalMetricsToRetainV2"


def test_a_request_becomes_the_clis_argv() -> None:
    request = parse_request(
        _request(
            {
                "verb": "update-security-profile",
                "input": {
                    "securityProfileName": "p",
                    "behaviors": [{"name": "b"}],
                    "deleteBehaviors": False,
                    "expectedVersion": -1,
                },
                "clientToken": "t-1",
            }
        ),
        4096,
        VERBS,
    )
    assert request.client_token == "t-1"
    assert to_argv(request, VERBS[request.verb]) == [
        "update-security-profile",
        "--security-profile-name=p",
        "--behaviors",
        '[{"name": "b"}]',
        "--expected-version=-1",  # a negative number is not taken for an option
    ]
    flag = parse_request(
        _request({"verb": "update-security-profile", "input": {"deleteBehaviors": True}}),
        4096,
        VERBS,
    )
    assert to_argv(flag, VERBS[flag.verb]) == ["update-security-profile", "--delete-behaviors"]


@pytest.mark.parametrize(
    ("payload", "param", "words"),
    [
        (b"\xc3\x28", "request", "not UTF-8"),
        (b"{", "request", "not JSON"),
        (b'{"verb": NaN}', "request", "NaN is not JSON"),
        (b"[]", "request", "JSON object"),
        (b"[" * 40 + b"]" * 40, "request", "nested deeper"),
        (b"x" * 5000, "request", "5000 bytes; at most 4096"),
        (_request({"verb": "run"}), "verb", "must be one of"),
        (_request({"verb": 3}), "verb", "must be one of"),
        (_request({"verb": "update-dimension", "x": 1}), "x", "unknown key"),
        (_request({"verb": "update-dimension", "input": []}), "input", "object"),
        (
            _request({"verb": "update-dimension", "input": {"config": "/x"}}),
            "input.config",
            "not a",
        ),
        (_request({"verb": "update-dimension", "input": {"name": None}}), "input.name", "string"),
        (_request({"verb": "update-dimension", "input": {"name": True}}), "input.name", "string"),
        (
            _request({"verb": "update-security-profile", "input": {"deleteBehaviors": "yes"}}),
            "input.deleteBehaviors",
            "true or false",
        ),
        (_request({"verb": "update-dimension", "clientToken": ""}), "clientToken", "printable"),
        (_request({"verb": "update-dimension", "clientToken": "a b"}), "clientToken", "printable"),
        (_request({"verb": "update-dimension", "input": {"name": 1e400}}), "request", "Infinity"),
        (b'{"verb": "update-dimension", "input": {"name": "\\ud800"}}', "request", "surrogate"),
    ],
)
def test_bad_requests_name_what_was_wrong(payload: bytes, param: str, words: str) -> None:
    with pytest.raises(ControlError) as e:
        parse_request(payload, 4096, VERBS)
    assert e.value.param == param and words in e.value.message


def test_answers_stay_under_the_things_prefix() -> None:
    prefix = "things/t/defender/control"
    assert response_topic(prefix, None) == (f"{prefix}/response", None)
    assert response_topic(prefix, f"{prefix}/response/op-7") == (f"{prefix}/response/op-7", None)
    for wanted in ("things/other/defender/control/x", f"{prefix}x/y", f"{prefix}/+", prefix):
        topic, why = response_topic(prefix, wanted)
        assert topic == f"{prefix}/response" and why is not None


DIM = {"type": "TOPIC_FILTER", "stringValues": ["a/#"]}
PROFILE = {"behaviors": [{"name": "b"}]}


def test_the_plan_creates_then_updates_then_deletes_only_what_it_made() -> None:
    desired = {"dimensions": {"d": DIM}, "profiles": {"p": PROFILE}}
    first = plan(desired, {})
    assert [(c.verb, c.name) for c in first] == [
        ("create-dimension", "d"),
        ("create-security-profile", "p"),
    ]
    assert first[0].input == {"name": "d", "stringValues": ["a/#"], "type": "TOPIC_FILTER"}
    applied = {"dimensions": {"d": digest(DIM)}, "profiles": {"p": digest(PROFILE)}}
    assert plan(desired, applied) == []
    changed = {"dimensions": {"d": DIM}, "profiles": {"p": {"behaviors": []}}}
    (update,) = plan(changed, applied)
    # The desired document is the whole profile: what it lacks is deleted.
    assert update.verb == "update-security-profile"
    assert update.input == {
        "securityProfileName": "p",
        "behaviors": [],
        "deleteAlertTargets": True,
        "deleteAdditionalMetricsToRetain": True,
    }
    gone = plan({}, applied)
    assert [(c.verb, c.name) for c in gone] == [
        ("delete-security-profile", "p"),
        ("delete-dimension", "d"),  # after the profile that may use it
    ]


def test_settings_are_planned_when_they_change() -> None:
    (change,) = plan({"settings": {"sampling.interval_s": 30}}, {})
    assert change.verb == "settings" and change.input == {"sampling.interval_s": 30}
    applied = {"settings": {"": digest({"sampling.interval_s": 30})}}
    assert plan({"settings": {"sampling.interval_s": 30}}, applied) == []
    (back,) = plan({}, applied)
    assert back.input == {}


@pytest.mark.parametrize(
    ("desired", "param"),
    [
        ([], "desired"),
        ({"config": {}}, "desired.config"),
        ({"profiles": []}, "desired.profiles"),
        ({"profiles": {"p": 3}}, "desired.profiles"),
    ],
)
def test_a_desired_state_of_the_wrong_shape_is_refused(desired: object, param: str) -> None:
    with pytest.raises(ControlError) as e:
        plan(desired, {})
    assert e.value.param == param


def test_a_shadow_patch_clears_what_went() -> None:
    before = {"profiles": {"a": {"version": 1}, "b": {"version": 2}}, "errors": {"x": "y"}}
    after = {"profiles": {"a": {"version": 2}}, "errors": {}}
    assert shadow_patch(before, after) == {
        "profiles": {"b": None, "a": {"version": 2}},
        "errors": {"x": None},
    }
    assert shadow_patch(None, after) == after

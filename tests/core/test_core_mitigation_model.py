"""The mitigation rules without I/O: action parameters checked as AWS checks them (and
what we accept, botocore's validator accepts too), the device's extension members, task
targets and requests, the offenders a violation names, statistics and final status."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.validate import ParamValidator

from agent.core.audit_model import InvalidRequest
from agent.core.mitigation_model import (
    ACTION_TYPES,
    CLOUD_ACTION_TYPES,
    DEVICE_ACTION_TYPES,
    EXECUTION_STATUSES,
    check_action_params,
    check_task_request,
    final_status,
    offending_addresses,
    offending_ports,
    task_statistics,
    violation_matches,
)
from tests import shapes
from tests.shapes import MODEL

ROLE = "arn:aws:iam::123456789012:role/mitigation"
# The device's extensions of AWS's shapes, nothing else: actionParams members, action
# types and execution statuses outside AWS's enums.
EXTRA_MEMBERS = {"MitigationActionParams": set(DEVICE_ACTION_TYPES)}
EXTRA_ENUM = {
    "MitigationActionType": set(DEVICE_ACTION_TYPES.values()),
    "DetectMitigationActionExecutionStatus": {"PENDING", "CANCELED"},
}


def shape_problems(value: Any, shape: Any, path: str = "$") -> list[str]:
    """botocore's verdict with the mitigation extensions above allowed."""
    return shapes.shape_problems(
        value, shape, path, extra_members=EXTRA_MEMBERS, extra_enum=EXTRA_ENUM
    )


def test_the_shape_judge_catches_what_it_should() -> None:
    # A judge that accepts anything would make every shape test pass.
    assert shape_problems({"taskId": "a b"}, "StartDetectMitigationActionsTaskResponse")
    assert shape_problems({"actionType": "NOPE"}, "DescribeMitigationActionResponse")
    assert shape_problems({"bogus": 1}, "MitigationActionParams")
    assert shape_problems({"status": "PENDING"}, "DetectMitigationActionExecution") == []


CLOUD_GOOD = [
    {"updateDeviceCertificateParams": {"action": "DEACTIVATE"}},
    {"updateCACertificateParams": {"action": "DEACTIVATE"}},
    {
        "addThingsToThingGroupParams": {
            "thingGroupNames": ["quarantine"],
            "overrideDynamicGroups": True,
        }
    },
    {"replaceDefaultPolicyVersionParams": {"templateName": "BLANK_POLICY"}},
    {"enableIoTLoggingParams": {"roleArnForLogging": ROLE, "logLevel": "DEBUG"}},
    {"publishFindingToSnsParams": {"topicArn": "arn:aws:sns:eu-west-1:123456789012:t"}},
]
DEVICE_GOOD = [
    {"blockRemoteAddressParams": {"timeoutSeconds": 600}},
    {"blockRemoteAddressParams": {"timeoutSeconds": 1, "cidrs": ["203.0.113.0/24", "2001:db8::1"]}},
    {"blockListeningPortParams": {"timeoutSeconds": 60}},
    {
        "blockListeningPortParams": {
            "timeoutSeconds": 60,
            "ports": [{"protocol": "tcp", "port": 23}],
        }
    },
    {"isolateDeviceParams": {"timeoutSeconds": 300, "keepCidrs": ["192.0.2.0/24"]}},
    {"runHookParams": {"argv": ["/usr/local/bin/notify", "--now"], "timeoutSeconds": 10}},
    {"publishToTopicParams": {"topic": "things/{thing_name}/defender/mitigation"}},
]


@pytest.mark.parametrize("params", CLOUD_GOOD + DEVICE_GOOD)
def test_good_params_are_kept_with_their_type(params: dict[str, Any]) -> None:
    action_type, checked = check_action_params(params)
    (key,) = params
    assert action_type == {**CLOUD_ACTION_TYPES, **DEVICE_ACTION_TYPES}[key]
    assert action_type in ACTION_TYPES
    assert set(checked) == {key}
    assert shape_problems(checked, "MitigationActionParams") == []


@pytest.mark.parametrize("params", CLOUD_GOOD)
def test_what_we_accept_of_aws_botocore_accepts(params: dict[str, Any]) -> None:
    _, checked = check_action_params(params)
    request = {"actionName": "a", "roleArn": ROLE, "actionParams": checked}
    report = ParamValidator().validate(request, MODEL.shape_for("CreateMitigationActionRequest"))
    assert not report.has_errors(), report.generate_report()


BAD_PARAMS = [
    ({}, "actionParams: must hold exactly one of"),
    (
        {
            "updateDeviceCertificateParams": {"action": "DEACTIVATE"},
            "updateCACertificateParams": {"action": "DEACTIVATE"},
        },
        "actionParams: must hold exactly one",
    ),
    ({"deleteEverythingParams": {}}, "actionParams['deleteEverythingParams']: unknown member"),
    ([], "actionParams: must be a JSON object"),
    (
        {"updateDeviceCertificateParams": {"action": "REVOKE"}},
        "updateDeviceCertificateParams.action: must be one of DEACTIVATE",
    ),
    ({"updateDeviceCertificateParams": {}}, "updateDeviceCertificateParams.action: is required"),
    (
        {"addThingsToThingGroupParams": {"thingGroupNames": []}},
        "thingGroupNames: must hold 1-10 items",
    ),
    (
        {"addThingsToThingGroupParams": {"thingGroupNames": ["a b"]}},
        "thingGroupNames[0]: 'a b' does not match",
    ),
    (
        {"addThingsToThingGroupParams": {"thingGroupNames": ["g"] * 11}},
        "thingGroupNames: must hold 1-10",
    ),
    (
        {"addThingsToThingGroupParams": {"thingGroupNames": ["g"], "overrideDynamicGroups": "yes"}},
        "overrideDynamicGroups: must be true or false",
    ),
    (
        {"replaceDefaultPolicyVersionParams": {"templateName": "FULL"}},
        "templateName: must be one of BLANK_POLICY",
    ),
    (
        {"enableIoTLoggingParams": {"roleArnForLogging": "short", "logLevel": "INFO"}},
        "roleArnForLogging: must be 20-2048",
    ),
    (
        {"enableIoTLoggingParams": {"roleArnForLogging": ROLE, "logLevel": "LOUD"}},
        "logLevel: must be one of",
    ),
    ({"publishFindingToSnsParams": {"topicArn": "x" * 351}}, "topicArn: must be 0-350"),
    ({"blockRemoteAddressParams": {}}, "blockRemoteAddressParams.timeoutSeconds: is required"),
    (
        {"blockRemoteAddressParams": {"timeoutSeconds": 0}},
        "timeoutSeconds: must be an integer from 1 to 2592000",
    ),
    ({"blockRemoteAddressParams": {"timeoutSeconds": True}}, "timeoutSeconds: must be an integer"),
    (
        {"blockRemoteAddressParams": {"timeoutSeconds": 9, "cidrs": ["10.0.0.1/8"]}},
        "cidrs[0]: '10.0.0.1/8' is not an address or CIDR; did you mean 10.0.0.0/8?",
    ),
    (
        {"blockRemoteAddressParams": {"timeoutSeconds": 9, "cidrs": ["fe80::1%eth0"]}},
        "cidrs[0]: 'fe80::1%eth0': zone ids",
    ),
    (
        {"blockRemoteAddressParams": {"timeoutSeconds": 9, "cidrs": ["1.2.3.4", "1.2.3.4/32"]}},
        "cidrs: names a CIDR twice",
    ),
    (
        {"blockRemoteAddressParams": {"timeoutSeconds": 9, "cidr": ["1.2.3.4"]}},
        "blockRemoteAddressParams['cidr']: unknown member",
    ),
    (
        {
            "blockListeningPortParams": {
                "timeoutSeconds": 9,
                "ports": [{"protocol": "sctp", "port": 1}],
            }
        },
        "ports[0].protocol: must be one of tcp, udp",
    ),
    (
        {
            "blockListeningPortParams": {
                "timeoutSeconds": 9,
                "ports": [{"protocol": "tcp", "port": 70000}],
            }
        },
        "ports[0].port: must be an integer from 1 to 65535",
    ),
    (
        {"isolateDeviceParams": {"timeoutSeconds": 9, "keepResolvers": "no"}},
        "keepResolvers: must be true or false",
    ),
    (
        {"runHookParams": {"argv": ["notify"], "timeoutSeconds": 5}},
        "argv[0]: 'notify': must be an absolute path",
    ),
    ({"runHookParams": {"argv": "/bin/true", "timeoutSeconds": 5}}, "argv: must be a list"),
    (
        {"runHookParams": {"argv": ["/bin/true"], "timeoutSeconds": 3601}},
        "timeoutSeconds: must be an integer from 1 to 3600",
    ),
    (
        {"runHookParams": {"argv": ["/bin/true", "a\0b"], "timeoutSeconds": 5}},
        "argv: must hold no NUL",
    ),
    ({"publishToTopicParams": {"topic": "a/+/b"}}, "topic: must hold no wildcard"),
    ({"publishToTopicParams": {"topic": "$aws/things"}}, "topic: must not start with $"),
    (
        {"publishToTopicParams": {"topic": "a" * 200 + "{thing_name}"}},
        "topic: must be at most 256 bytes",
    ),
]


@pytest.mark.parametrize(("params", "message"), BAD_PARAMS)
def test_bad_params_name_the_parameter(params: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_action_params(params)
    assert message in str(caught.value)
    assert str(caught.value).startswith("actionParams")


def _request(**given: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task_id": "t1",
        "target": {"violationIds": ["v-1"]},
        "actions": ["block"],
        "client_request_token": "tok",
    }
    return check_task_request(**{**base, **given})


def test_a_request_is_canonical() -> None:
    request = _request()
    assert request == {
        "taskId": "t1",
        "target": {"violationIds": ["v-1"]},
        "actions": ["block"],
        "clientRequestToken": "tok",
        "includeOnlyActiveViolations": False,
        "includeSuppressedAlerts": False,
        "dryRun": False,
    }
    # Leaving a flag out and giving its default are the same request.
    assert _request(include_suppressed_alerts=False) == request
    ranged = _request(
        target={"securityProfileName": "p", "behaviorName": "b"},
        violation_event_occurrence_range={"startTime": 1, "endTime": 2},
    )
    assert ranged["violationEventOccurrenceRange"] == {"startTime": 1.0, "endTime": 2.0}


BAD_REQUESTS = [
    ({"task_id": "a b"}, "taskId: 'a b' does not match"),
    ({"task_id": "x" * 129}, "taskId: must be 1-128"),
    ({"target": {}}, "target: give violationIds"),
    ({"target": {"violationIds": []}}, "target.violationIds: must hold 1-25"),
    ({"target": {"violationIds": ["v"] * 26}}, "target.violationIds: must hold 1-25"),
    ({"target": {"violationIds": ["a_b"]}}, "target.violationIds[0]: 'a_b' does not match"),
    ({"target": {"violationIds": ["v", "v"]}}, "names a violation twice"),
    (
        {"target": {"violationIds": ["v"], "securityProfileName": "p"}},
        "target: give violationIds, or",
    ),
    (
        {"target": {"behaviorName": "b"}},
        "target.securityProfileName: is required with behaviorName",
    ),
    ({"target": {"securityProfileName": "p"}}, "violationEventOccurrenceRange: is required"),
    ({"target": {"profile": "p"}}, "target['profile']: unknown member"),
    ({"actions": []}, "actions: must hold 1-5"),
    ({"actions": list("abcdef")}, "actions: must hold 1-5"),
    ({"actions": ["a", "a"]}, "actions: names an action twice"),
    ({"actions": ["a b"]}, "actions[0]: 'a b' does not match"),
    ({"client_request_token": "a b"}, "clientRequestToken"),
    ({"client_request_token": "x" * 65}, "clientRequestToken: must be 1-64"),
    (
        {"violation_event_occurrence_range": {"startTime": 5}},
        "violationEventOccurrenceRange.endTime: is required",
    ),
    (
        {"violation_event_occurrence_range": {"startTime": 5, "endTime": 4}},
        "endTime: is before startTime",
    ),
    (
        {"violation_event_occurrence_range": {"startTime": "x", "endTime": 4}},
        "startTime: must be epoch seconds",
    ),
    (
        {"include_only_active_violations": "yes"},
        "includeOnlyActiveViolations: must be true or false",
    ),
    ({"include_suppressed_alerts": 1}, "includeSuppressedAlerts: must be true or false"),
]


@pytest.mark.parametrize(("given", "message"), BAD_REQUESTS)
def test_bad_requests_name_the_parameter(given: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _request(**given)
    assert message in str(caught.value)


def test_a_profile_target_with_only_active_needs_no_range() -> None:
    request = _request(target={"securityProfileName": "p"}, include_only_active_violations=True)
    assert request["includeOnlyActiveViolations"] is True


def _violation(**over: Any) -> dict[str, Any]:
    base = {
        "violationId": "v-1",
        "thingName": "dev",
        "securityProfileName": "p",
        "behavior": {
            "name": "egress",
            "metric": "aws:destination-ip-addresses",
            "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}},
        },
        "metricValue": {"cidrs": ["10.1.2.3", "203.0.113.9", "2001:db8::5", "garbage"]},
        "violationEventType": "in-alarm",
        "violationEventTime": 100.0,
    }
    return {**base, **over}


def test_offending_addresses_are_those_the_behavior_forbids() -> None:
    assert offending_addresses(_violation()) == ["2001:db8::5/128", "203.0.113.9/32"]
    denied = _violation(
        behavior={
            "name": "b",
            "metric": "aws:destination-ip-addresses",
            "criteria": {
                "comparisonOperator": "not-in-cidr-set",
                "value": {"cidrs": ["203.0.113.0/24"]},
            },
        }
    )
    assert offending_addresses(denied) == ["203.0.113.9/32"]
    # A scan-sources metric judged by a number: every listed address.
    scan = _violation(
        behavior={
            "name": "scan",
            "metric": "scan_sources",
            "criteria": {"comparisonOperator": "greater-than", "value": {"count": 0}},
        },
        metricValue={"cidrs": ["198.51.100.7"]},
    )
    assert offending_addresses(scan) == ["198.51.100.7/32"]
    active = _violation(lastViolationValue={"cidrs": ["198.51.100.8"]})
    del active["metricValue"]
    assert offending_addresses(active) == ["198.51.100.8/32"]


def test_offending_ports_are_those_outside_the_set() -> None:
    tcp = _violation(
        behavior={
            "name": "ports",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443]}},
        },
        metricValue={"ports": [22, 23, 8080, "x"]},
    )
    assert offending_ports(tcp) == [("tcp", 23), ("tcp", 8080)]
    assert offending_ports(_violation()) == []


def test_matching_by_profile_behavior_and_suppression() -> None:
    request = _request(
        target={"securityProfileName": "p", "behaviorName": "egress"},
        include_only_active_violations=True,
    )
    assert violation_matches(request, _violation())
    assert not violation_matches(request, _violation(securityProfileName="q"))
    quiet = _violation(behavior={"name": "egress", "suppressAlerts": True})
    assert not violation_matches(request, quiet)
    assert violation_matches({**request, "includeSuppressedAlerts": True}, quiet)


def test_statistics_and_final_status() -> None:
    statuses = ["SUCCESSFUL", "SKIPPED", "FAILED", "CANCELED", "SUCCESSFUL"]
    assert set(statuses) <= set(EXECUTION_STATUSES)
    stats = task_statistics(statuses)
    assert stats == {"actionsExecuted": 2, "actionsSkipped": 2, "actionsFailed": 1}
    assert shape_problems(stats, "DetectMitigationActionsTaskStatistics") == []
    assert final_status(statuses) == "FAILED"
    assert final_status(["SUCCESSFUL", "SKIPPED"]) == "SUCCESSFUL"
    assert final_status(["SUCCESSFUL", "PENDING"]) is None
    assert final_status(["IN_PROGRESS"]) is None

"""Detect mitigation, the rules without I/O: mitigation actions and their parameters
checked one at a time (an error names the parameter by its AWS name), the target of a
StartDetectMitigationActionsTask, what an on-device action acts on for one violation
(the offending addresses or ports), and the AWS JSON shapes of tasks and executions
(botocore's `iot` model). Pure: time comes in as `now` (epoch seconds).

AWS's six action types are cloud actions: accepted and checked as AWS checks them, and
SKIPPED when a task runs them. The device's own types are extensions: a member of
actionParams named like AWS's (`blockRemoteAddressParams` for BLOCK_REMOTE_ADDRESS),
which AWS would refuse as an unknown member.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent.core.audit_model import (
    InvalidRequest,
    check_bool,
    check_client_request_token,
    check_string,
    check_time,
    shown,
)

DEFAULT_MAX_RESULTS = 25
MAX_RESULTS = 250
MAX_ACTIONS = 5  # per task, AWS's bound
MAX_VIOLATION_IDS = 25
MAX_MESSAGE = 2048  # DetectMitigationActionExecution.message
MAX_TIMEOUT_S = 30 * 24 * 3600  # the firewall's bound: blocks always expire in the kernel
MAX_HOOK_TIMEOUT_S = 3600
MAX_LIST = 100  # fixed CIDRs, ports, kept CIDRs, argv items
CLOUD_SKIP_REASON = "a cloud action: not possible on the device"

# AWS's action types, keyed by their actionParams member.
CLOUD_ACTION_TYPES = {
    "updateDeviceCertificateParams": "UPDATE_DEVICE_CERTIFICATE",
    "updateCACertificateParams": "UPDATE_CA_CERTIFICATE",
    "addThingsToThingGroupParams": "ADD_THINGS_TO_THING_GROUP",
    "replaceDefaultPolicyVersionParams": "REPLACE_DEFAULT_POLICY_VERSION",
    "enableIoTLoggingParams": "ENABLE_IOT_LOGGING",
    "publishFindingToSnsParams": "PUBLISH_FINDING_TO_SNS",
}
DEVICE_ACTION_TYPES = {
    "blockRemoteAddressParams": "BLOCK_REMOTE_ADDRESS",
    "blockListeningPortParams": "BLOCK_LISTENING_PORT",
    "isolateDeviceParams": "ISOLATE_DEVICE",
    "runHookParams": "RUN_HOOK",
    "publishToTopicParams": "PUBLISH_TO_TOPIC",
}
PARAMS_TYPES = {**CLOUD_ACTION_TYPES, **DEVICE_ACTION_TYPES}
ACTION_TYPES = tuple(PARAMS_TYPES.values())
TASK_STATUSES = ("IN_PROGRESS", "SUCCESSFUL", "FAILED", "CANCELED")
# AWS's four, and PENDING (not run yet) and CANCELED (its task was canceled first) as
# AWS's audit mitigation executions have them.
EXECUTION_STATUSES = ("IN_PROGRESS", "SUCCESSFUL", "FAILED", "SKIPPED", "PENDING", "CANCELED")

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_PROFILE_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_VIOLATION_ID = re.compile(r"[a-zA-Z0-9-]{1,128}")
_THING_GROUP = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _object(param: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(param, f"must be a JSON object, got {shown(value)}")
    return value


def _members(param: str, value: Mapping[str, Any], known: Sequence[str],
             required: Sequence[str] = ()) -> None:  # fmt: skip
    for key in value:
        if key not in known:
            raise InvalidRequest(
                f"{param}[{shown(key)}]", f"unknown member; the members: {', '.join(known)}"
            )
    for key in required:
        if key not in value:
            raise InvalidRequest(f"{param}.{key}", "is required")


def _list(param: str, value: object, low: int, high: int) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(param, f"must be a list, got {shown(value)}")
    if not low <= len(value) <= high:
        raise InvalidRequest(param, f"must hold {low}-{high} items, got {len(value)}")
    return value


def _integer(param: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(param, f"must be an integer from {low} to {high}, got {shown(value)}")
    return value


def _enum(param: str, value: object, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InvalidRequest(param, f"must be one of {', '.join(allowed)}, got {shown(value)}")
    assert isinstance(value, str)
    return value


# -- names -----------------------------------------------------------------------------------


def check_action_name(value: object, param: str = "actionName") -> str:
    return check_string(param, value, pattern=_NAME, high=128)


def check_task_id(value: object) -> str:
    return check_string("taskId", value, pattern=_NAME, high=128)


def check_role_arn(value: object, param: str = "roleArn") -> str:
    return check_string(param, value, low=20, high=2048)


def check_violation_id(value: object, param: str = "violationId") -> str:
    return check_string(param, value, pattern=_VIOLATION_ID, high=128)


def check_thing_name(value: object) -> str:
    return check_string("thingName", value, high=128)


def check_action_type(value: object) -> str:
    return _enum("actionType", value, ACTION_TYPES)


def check_max_results(value: object) -> int:
    return _integer("maxResults", value, 1, MAX_RESULTS)


# -- action parameters -----------------------------------------------------------------------


def check_cidr(param: str, value: object) -> str:
    """An IPv4/IPv6 address or CIDR as the firewall takes it (no host bits, no zone id);
    its canonical text (an IPv4-mapped address as IPv4)."""
    text = check_string(param, value, high=64)
    if "%" in text:
        raise InvalidRequest(param, f"{text!r}: zone ids are not accepted")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        hint = ""
        if "host bits set" in str(e):
            hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        raise InvalidRequest(param, f"{text!r} is not an address or CIDR{hint}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return str(ipaddress.IPv4Network((mapped, net.prefixlen - 96)))
    return str(net)


def _timeout(param: str, value: object, high: int = MAX_TIMEOUT_S) -> int:
    return _integer(f"{param}.timeoutSeconds", value, 1, high)


def _cidr_list(param: str, value: object) -> list[str]:
    cidrs = [check_cidr(f"{param}[{i}]", c) for i, c in enumerate(_list(param, value, 1, MAX_LIST))]
    if len(set(cidrs)) != len(cidrs):
        raise InvalidRequest(param, "names a CIDR twice")
    return cidrs


def check_topic(param: str, value: object) -> str:
    """An MQTT topic to publish on ({thing_name} is filled in): no wildcards, not $...,
    at most 256 bytes, printable."""
    topic = check_string(param, value, high=256)
    if _CONTROL.search(topic) or len(topic.replace("{thing_name}", "x" * 128).encode()) > 256:
        raise InvalidRequest(
            param, "must be at most 256 bytes of printable characters once {thing_name} is in"
        )
    if "+" in topic or "#" in topic:
        raise InvalidRequest(param, "must hold no wildcard (+ or #): it is a topic to publish on")
    if topic.startswith("$"):
        raise InvalidRequest(param, "must not start with $ (topics reserved for the broker)")
    return topic


def _cloud_params(param: str, key: str, value: Mapping[str, Any]) -> dict[str, Any]:
    if key in ("updateDeviceCertificateParams", "updateCACertificateParams"):
        _members(param, value, ("action",), ("action",))
        return {"action": _enum(f"{param}.action", value["action"], ("DEACTIVATE",))}
    if key == "addThingsToThingGroupParams":
        _members(param, value, ("thingGroupNames", "overrideDynamicGroups"), ("thingGroupNames",))
        names = _list(f"{param}.thingGroupNames", value["thingGroupNames"], 1, 10)
        out: dict[str, Any] = {
            "thingGroupNames": [
                check_string(f"{param}.thingGroupNames[{i}]", n, pattern=_THING_GROUP, high=128)
                for i, n in enumerate(names)
            ]
        }
        if value.get("overrideDynamicGroups") is not None:
            out["overrideDynamicGroups"] = check_bool(
                f"{param}.overrideDynamicGroups", value["overrideDynamicGroups"]
            )
        return out
    if key == "replaceDefaultPolicyVersionParams":
        _members(param, value, ("templateName",), ("templateName",))
        return {"templateName": _enum(f"{param}.templateName", value["templateName"],
                                      ("BLANK_POLICY",))}  # fmt: skip
    if key == "enableIoTLoggingParams":
        _members(param, value, ("roleArnForLogging", "logLevel"), ("roleArnForLogging", "logLevel"))
        return {
            "roleArnForLogging": check_role_arn(
                value["roleArnForLogging"], f"{param}.roleArnForLogging"
            ),
            "logLevel": _enum(f"{param}.logLevel", value["logLevel"],
                              ("DEBUG", "INFO", "ERROR", "WARN", "DISABLED")),
        }  # fmt: skip
    _members(param, value, ("topicArn",), ("topicArn",))
    return {"topicArn": check_string(f"{param}.topicArn", value["topicArn"], low=0, high=350)}


def _device_params(param: str, key: str, value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if key == "blockRemoteAddressParams":
        _members(param, value, ("timeoutSeconds", "cidrs"), ("timeoutSeconds",))
        out["timeoutSeconds"] = _timeout(param, value["timeoutSeconds"])
        if "cidrs" in value:
            out["cidrs"] = _cidr_list(f"{param}.cidrs", value["cidrs"])
    elif key == "blockListeningPortParams":
        _members(param, value, ("timeoutSeconds", "ports"), ("timeoutSeconds",))
        out["timeoutSeconds"] = _timeout(param, value["timeoutSeconds"])
        if "ports" in value:
            ports = []
            for i, item in enumerate(_list(f"{param}.ports", value["ports"], 1, MAX_LIST)):
                where = f"{param}.ports[{i}]"
                _members(where, _object(where, item), ("protocol", "port"), ("protocol", "port"))
                ports.append(
                    {
                        "protocol": _enum(f"{where}.protocol", item["protocol"], ("tcp", "udp")),
                        "port": _integer(f"{where}.port", item["port"], 1, 65535),
                    }
                )
            if len({(p["protocol"], p["port"]) for p in ports}) != len(ports):
                raise InvalidRequest(f"{param}.ports", "names a port twice")
            out["ports"] = ports
    elif key == "isolateDeviceParams":
        _members(param, value, ("timeoutSeconds", "keepCidrs", "keepResolvers"),
                 ("timeoutSeconds",))  # fmt: skip
        out["timeoutSeconds"] = _timeout(param, value["timeoutSeconds"])
        if "keepCidrs" in value:
            out["keepCidrs"] = _cidr_list(f"{param}.keepCidrs", value["keepCidrs"])
        out["keepResolvers"] = check_bool(
            f"{param}.keepResolvers", value.get("keepResolvers", True)
        )
    elif key == "runHookParams":
        _members(param, value, ("argv", "timeoutSeconds"), ("argv", "timeoutSeconds"))
        argv = _list(f"{param}.argv", value["argv"], 1, MAX_LIST)
        out["argv"] = [check_string(f"{param}.argv[{i}]", a, high=4096) for i, a in enumerate(argv)]
        if any("\0" in a for a in out["argv"]):
            raise InvalidRequest(f"{param}.argv", "must hold no NUL character")
        if not out["argv"][0].startswith("/"):
            raise InvalidRequest(
                f"{param}.argv[0]", f"{out['argv'][0]!r}: must be an absolute path (no PATH search)"
            )
        out["timeoutSeconds"] = _timeout(param, value["timeoutSeconds"], MAX_HOOK_TIMEOUT_S)
    else:
        _members(param, value, ("topic",), ("topic",))
        out["topic"] = check_topic(f"{param}.topic", value["topic"])
    return out


def check_action_params(value: object) -> tuple[str, dict[str, Any]]:
    """actionParams with exactly one member, checked as AWS checks its own (the device's
    members by the same rules): (actionType, the params as stored)."""
    params = _object("actionParams", value)
    given = [key for key, item in params.items() if item is not None]
    if len(given) != 1:
        raise InvalidRequest(
            "actionParams",
            f"must hold exactly one of {', '.join(PARAMS_TYPES)}; got {len(given)}",
        )
    key = given[0]
    if key not in PARAMS_TYPES:
        raise InvalidRequest(
            f"actionParams[{shown(key)}]", f"unknown member; the members: {', '.join(PARAMS_TYPES)}"
        )
    param = f"actionParams.{key}"
    item = _object(param, params[key])
    checked = (
        _cloud_params(param, key, item)
        if key in CLOUD_ACTION_TYPES
        else _device_params(param, key, item)
    )
    return PARAMS_TYPES[key], {key: checked}


def action_type_of(params: Mapping[str, Any]) -> str:
    """The actionType of stored actionParams (one member)."""
    (key,) = params
    return PARAMS_TYPES[key]


# -- tasks -------------------------------------------------------------------------------


def check_target(value: object) -> dict[str, Any]:
    """violationIds (1-25), or securityProfileName with an optional behaviorName; not both."""
    target = _object("target", value)
    _members("target", target, ("violationIds", "securityProfileName", "behaviorName"))
    out: dict[str, Any] = {}
    if target.get("violationIds") is not None:
        ids = _list("target.violationIds", target["violationIds"], 1, MAX_VIOLATION_IDS)
        out["violationIds"] = [
            check_violation_id(v, f"target.violationIds[{i}]") for i, v in enumerate(ids)
        ]
        if len(set(out["violationIds"])) != len(ids):
            raise InvalidRequest("target.violationIds", "names a violation twice")
    for key in ("securityProfileName", "behaviorName"):
        if target.get(key) is not None:
            out[key] = check_string(f"target.{key}", target[key], pattern=_PROFILE_NAME, high=128)
    if "violationIds" in out and len(out) > 1:
        raise InvalidRequest(
            "target", "give violationIds, or securityProfileName (and behaviorName), not both"
        )
    if "behaviorName" in out and "securityProfileName" not in out:
        raise InvalidRequest("target.securityProfileName", "is required with behaviorName")
    if not out:
        raise InvalidRequest(
            "target", "give violationIds, or securityProfileName (and behaviorName)"
        )
    return out


def check_actions(value: object) -> list[str]:
    names = _list("actions", value, 1, MAX_ACTIONS)
    checked = [check_action_name(n, f"actions[{i}]") for i, n in enumerate(names)]
    if len(set(checked)) != len(checked):
        raise InvalidRequest("actions", "names an action twice")
    return checked


def check_occurrence_range(value: object) -> dict[str, float]:
    param = "violationEventOccurrenceRange"
    given = _object(param, value)
    _members(param, given, ("startTime", "endTime"), ("startTime", "endTime"))
    start = check_time(f"{param}.startTime", given["startTime"])
    end = check_time(f"{param}.endTime", given["endTime"])
    if end < start:
        raise InvalidRequest(f"{param}.endTime", "is before startTime")
    return {"startTime": start, "endTime": end}


def check_task_request(
    *,
    task_id: object,
    target: object,
    actions: object,
    client_request_token: object,
    violation_event_occurrence_range: object = None,
    include_only_active_violations: object = None,
    include_suppressed_alerts: object = None,
    dry_run: object = False,
) -> dict[str, Any]:
    """StartDetectMitigationActionsTask's parameters checked, as one canonical request
    (the same parameters give an equal request: what a repeated token is compared by).
    A violationIds target names its violations; a profile target needs a range or
    includeOnlyActiveViolations to say which of its violations."""
    request: dict[str, Any] = {
        "taskId": check_task_id(task_id),
        "target": check_target(target),
        "actions": check_actions(actions),
        "clientRequestToken": check_client_request_token(client_request_token),
        "includeOnlyActiveViolations": False,
        "includeSuppressedAlerts": False,
        "dryRun": check_bool("dryRun", dry_run),
    }
    if violation_event_occurrence_range is not None:
        request["violationEventOccurrenceRange"] = check_occurrence_range(
            violation_event_occurrence_range
        )
    for key, given in (
        ("includeOnlyActiveViolations", include_only_active_violations),
        ("includeSuppressedAlerts", include_suppressed_alerts),
    ):
        if given is not None:
            request[key] = check_bool(key, given)
    if (
        "violationIds" not in request["target"]
        and "violationEventOccurrenceRange" not in request
        and not request["includeOnlyActiveViolations"]
    ):
        raise InvalidRequest(
            "violationEventOccurrenceRange",
            "is required for a securityProfileName target unless includeOnlyActiveViolations"
            " is true: which of the profile's violations",
        )
    return request


def same_request(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def violation_matches(request: Mapping[str, Any], violation: Mapping[str, Any]) -> bool:
    """Whether a violation (a ViolationEvent or ActiveViolation) falls under the task's
    target and suppression filter."""
    target = request["target"]
    if "violationIds" in target and violation["violationId"] not in target["violationIds"]:
        return False
    if "securityProfileName" in target:
        if violation["securityProfileName"] != target["securityProfileName"]:
            return False
        name = violation.get("behavior", {}).get("name")
        if "behaviorName" in target and name != target["behaviorName"]:
            return False
    suppressed = bool(violation.get("behavior", {}).get("suppressAlerts", False))
    return request["includeSuppressedAlerts"] or not suppressed


# -- what an on-device action acts on --------------------------------------------------------


def _criteria(violation: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    criteria = violation.get("behavior", {}).get("criteria", {})
    if not isinstance(criteria, Mapping):
        return None, {}
    value = criteria.get("value", {})
    return criteria.get("comparisonOperator"), value if isinstance(value, Mapping) else {}


def metric_value(violation: Mapping[str, Any]) -> Mapping[str, Any]:
    """The value that violated: an event's metricValue, an active violation's
    lastViolationValue."""
    value = violation.get("metricValue", violation.get("lastViolationValue", {}))
    return value if isinstance(value, Mapping) else {}


def _networks(texts: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for text in texts if isinstance(texts, list) else []:
        try:
            out.append(ipaddress.ip_network(check_cidr("cidr", text), strict=True))
        except InvalidRequest:
            continue  # a value the firewall could not block is not an offender to act on
    return out


def offending_addresses(violation: Mapping[str, Any]) -> list[str]:
    """The addresses of an ip-address-list violation that broke its behavior: those
    outside the cidrs of in-cidr-set, inside those of not-in-cidr-set; every listed one
    when the behavior has no CIDR criteria (e.g. a scan-sources metric)."""
    listed = _networks(metric_value(violation).get("cidrs"))
    operator, value = _criteria(violation)
    allowed = _networks(value.get("cidrs"))

    def inside(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        return any(
            net.version == a.version
            and int(a.network_address) <= int(net.network_address)
            and int(net.broadcast_address) <= int(a.broadcast_address)
            for a in allowed
        )

    if operator == "in-cidr-set":
        listed = [n for n in listed if not inside(n)]
    elif operator == "not-in-cidr-set":
        listed = [n for n in listed if inside(n)]
    return sorted({str(n) for n in listed})


def offending_ports(violation: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(protocol, port) of an aws:listening-tcp/udp-ports violation that broke its
    behavior: outside in-port-set's ports, inside not-in-port-set's."""
    metric = violation.get("behavior", {}).get("metric")
    proto = {"aws:listening-tcp-ports": "tcp", "aws:listening-udp-ports": "udp"}.get(metric or "")
    if proto is None:
        return []
    raw = metric_value(violation).get("ports")
    listed = (
        {p for p in raw if isinstance(p, int) and 1 <= p <= 65535}
        if isinstance(raw, list)
        else set()
    )
    operator, value = _criteria(violation)
    ports = value.get("ports")
    rule = {p for p in ports if isinstance(p, int)} if isinstance(ports, list) else set()
    if operator == "in-port-set":
        listed -= rule
    elif operator == "not-in-port-set":
        listed &= rule
    return [(proto, port) for port in sorted(listed)]


# -- answers ------------------------------------------------------------------------------


def task_statistics(statuses: Sequence[str]) -> dict[str, int]:
    """DetectMitigationActionsTaskStatistics: executions done, skipped (a cloud action,
    nothing to act on, or canceled before it ran) and failed."""
    return {
        "actionsExecuted": statuses.count("SUCCESSFUL"),
        "actionsSkipped": statuses.count("SKIPPED") + statuses.count("CANCELED"),
        "actionsFailed": statuses.count("FAILED"),
    }


def final_status(statuses: Sequence[str]) -> str | None:
    """The status of a task whose executions have all ended: FAILED when one failed,
    else SUCCESSFUL; None while one is PENDING or IN_PROGRESS."""
    if any(s in ("PENDING", "IN_PROGRESS") for s in statuses):
        return None
    return "FAILED" if "FAILED" in statuses else "SUCCESSFUL"


def clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."

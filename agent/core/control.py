"""Remote control messages (docs/control.md), pure: a request checked against the verbs'
parameters and turned into the argv the CLI takes, the reply, and the named shadow's
desired state turned into the management verbs that make it so.

A request names a verb of the CLI and gives its parameters by AWS's member names, as
botocore's `iot` model spells them (`securityProfileName` for `--security-profile-name`):

    {"verb": "describe-security-profile", "input": {"securityProfileName": "p"},
     "clientToken": "42"}

Running the same parsers as the CLI means a remote request is refused or done exactly
as that command line would be."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from agent.core.hashing import sha256

MAX_TOKEN_CHARS = 64  # clientToken
MAX_DEPTH = 32  # nesting of a request's JSON: behaviors need 5
REQUEST_KEYS = ("verb", "input", "clientToken")
_TOKEN = re.compile(r"[\x21-\x7e]{1,64}")
_MEMBER = re.compile(r"[a-z][a-zA-Z0-9]{0,63}")


class ControlError(ValueError):
    """A refused request; `param` is the request's key that was wrong."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class Arg(Enum):
    """How a CLI option takes its value."""

    FLAG = "flag"  # --delete-behaviors: true or false
    VALUE = "value"  # --security-profile-name NAME; JSON given inline for lists/objects
    VALUES = "values"  # --string-values A B ...: a list of words, or one JSON list


@dataclass(frozen=True)
class Request:
    verb: str
    input: dict[str, Any]
    client_token: str | None


def member_name(flag: str) -> str:
    """`--security-profile-name` -> `securityProfileName` (botocore's member names)."""
    head, *rest = flag.lstrip("-").split("-")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _refuse_constant(name: str) -> float:
    raise ControlError("request", f"{name} is not JSON")


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def parse_json(payload: bytes, max_bytes: int, what: str) -> Any:
    """A JSON document of at most `max_bytes` and MAX_DEPTH levels; NaN and Infinity,
    which JSON does not have, are refused."""
    if len(payload) > max_bytes:
        raise ControlError(what, f"{len(payload)} bytes; at most {max_bytes}")
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise ControlError(what, f"not UTF-8 (byte {e.start})") from None
    except RecursionError:
        raise ControlError(what, f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise ControlError(what, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if _depth(doc) > MAX_DEPTH:
        raise ControlError(what, f"nested deeper than {MAX_DEPTH} levels")
    try:  # JSON's \ud800 escapes make lone surrogates, which no file or topic can hold
        json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ControlError(what, "holds a lone surrogate escape (\\ud800-\\udfff)") from None
    return doc


def parse_request(
    payload: bytes, max_bytes: int, verbs: Mapping[str, Mapping[str, Arg]]
) -> Request:
    """The request in `payload`, checked: the verb is one of `verbs` (name -> its options,
    by member name) and every input member is one of that verb's options, with a value
    of the right kind. Raises ControlError naming what was wrong."""
    doc = parse_json(payload, max_bytes, "request")
    if not isinstance(doc, dict):
        raise ControlError("request", "must be a JSON object with verb and input")
    unknown = sorted(set(doc) - set(REQUEST_KEYS))
    if unknown:
        raise ControlError(unknown[0], "unknown key; a request has " + ", ".join(REQUEST_KEYS))
    token = doc.get("clientToken")
    if token is not None and not (isinstance(token, str) and _TOKEN.fullmatch(token)):
        raise ControlError("clientToken", f"must be 1-{MAX_TOKEN_CHARS} printable ASCII characters")
    verb = doc.get("verb")
    if not isinstance(verb, str) or verb not in verbs:
        raise ControlError("verb", "must be one of " + ", ".join(sorted(verbs)))
    given = doc.get("input", {})
    if not isinstance(given, dict):
        raise ControlError("input", "must be an object of the verb's parameters")
    options = verbs[verb]
    for name, value in given.items():
        if name not in options:
            known = ", ".join(sorted(options)) or "none"
            raise ControlError(f"input.{name}", f"not a parameter of {verb}; it takes {known}")
        _check_value(f"input.{name}", options[name], value)
    return Request(verb, given, token)


def _check_value(param: str, arg: Arg, value: object) -> None:
    if arg is Arg.FLAG:
        if not isinstance(value, bool):
            raise ControlError(param, "must be true or false")
    elif isinstance(value, bool) or value is None:
        raise ControlError(param, "must be a string, a number, a list or an object")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ControlError(param, "must be a finite number")


def to_argv(request: Request, options: Mapping[str, Arg]) -> list[str]:
    """The CLI's argv for a checked request: strings and numbers as they are, lists and
    objects as inline JSON (the verbs take JSON where the AWS CLI does)."""
    argv = [request.verb]
    for name, value in request.input.items():
        flag = "--" + re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name)
        arg = options[name]
        if arg is Arg.FLAG:
            if value:
                argv.append(flag)
        elif isinstance(value, (list, dict)):
            argv += [flag, json.dumps(value, ensure_ascii=False)]
        else:
            # `--x=-1`, not `--x -1`: argparse takes a word starting with - for an option.
            argv.append(f"{flag}={value}")
    return argv


def option_members(flags: Mapping[str, Arg]) -> dict[str, Arg]:
    """{--flag: kind} -> {memberName: kind}, for the flags whose member name is regular."""
    out = {}
    for flag, arg in flags.items():
        member = member_name(flag)
        if _MEMBER.fullmatch(member):
            out[member] = arg
    return out


def reply(request: Request | None, status: int, output: Any, error: str | None) -> dict[str, Any]:
    """The answer to a request: `status` is the CLI's exit status (0 done, 1 refused, 2 a
    bad parameter), `output` what the verb printed (JSON when it printed JSON)."""
    doc: dict[str, Any] = {"status": status}
    if request is not None:
        doc["verb"] = request.verb
        if request.client_token is not None:
            doc["clientToken"] = request.client_token
    if output is not None:
        doc["output"] = output
    if error:
        doc["error"] = error
    return doc


def response_topic(prefix: str, wanted: str | None) -> tuple[str, str | None]:
    """Where to answer: the request's MQTT 5 response topic when it lies under the
    thing's control prefix, else <prefix>/response with the reason it was not used. An
    answer elsewhere would let anyone who may send requests publish as the device."""
    default = f"{prefix}/response"
    if wanted is None:
        return default, None
    if not wanted.startswith(prefix + "/") or any(c in wanted for c in "+#\0"):
        return default, f"response topic {wanted!r} is not under {prefix}/; answered here"
    return wanted, None


# -- the named shadow -------------------------------------------------------------------------

SHADOW_KEYS = ("profiles", "dimensions", "settings")
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class Change:
    """One management verb that brings the device to the desired state."""

    kind: str  # "profiles", "dimensions" or "settings"
    name: str  # the document's name ("" for settings)
    verb: str
    input: dict[str, Any]
    digest: str | None  # of the desired document; None for a deletion


def digest(doc: object) -> str:
    """A short digest of a JSON value, independent of key order."""
    text = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    hexdigest: str = sha256(text.encode()).hexdigest()
    return hexdigest[:16]


def _profile_input(name: str, doc: Mapping[str, Any], update: bool) -> dict[str, Any]:
    fields = {
        "securityProfileDescription": doc.get("securityProfileDescription"),
        "behaviors": doc.get("behaviors"),
        "alertTargets": doc.get("alertTargets"),
        "additionalMetricsToRetainV2": doc.get("additionalMetricsToRetainV2"),
    }
    given = {k: v for k, v in fields.items() if v is not None}
    if update:  # the desired document is the whole profile: what it lacks goes
        for member, flag in (
            ("behaviors", "deleteBehaviors"),
            ("alertTargets", "deleteAlertTargets"),
            ("additionalMetricsToRetainV2", "deleteAdditionalMetricsToRetain"),
        ):
            if member not in given:
                given[flag] = True
    return {"securityProfileName": name, **given}


def plan(desired: object, applied: Mapping[str, Mapping[str, str]]) -> list[Change]:
    """The changes from what remote control applied (`applied[kind][name]` = digest of
    the desired document it came from) to `desired`, the shadow's desired state: new and
    changed dimensions, new and changed profiles, then profiles and dimensions that left
    the desired state (in that order, so that no profile ever names a missing dimension).
    Only documents remote control put there are ever deleted. Raises ControlError for a
    desired state of the wrong shape; the documents themselves are checked by the verbs."""
    if desired is None:
        desired = {}
    if not isinstance(desired, dict):
        raise ControlError("desired", "must be an object")
    unknown = sorted(set(desired) - set(SHADOW_KEYS))
    if unknown:
        raise ControlError(f"desired.{unknown[0]}", "unknown key; " + ", ".join(SHADOW_KEYS))
    for kind in ("profiles", "dimensions"):
        docs = desired.get(kind, {})
        if not isinstance(docs, dict) or not all(isinstance(v, dict) for v in docs.values()):
            raise ControlError(f"desired.{kind}", "must be an object of name: document")
    dims: dict[str, Any] = desired.get("dimensions", {})
    profiles: dict[str, Any] = desired.get("profiles", {})
    done_dims = applied.get("dimensions", {})
    done_profiles = applied.get("profiles", {})
    changes: list[Change] = []
    for name, doc in dims.items():
        d = digest(doc)
        if done_dims.get(name) == d:
            continue
        verb = "update-dimension" if name in done_dims else "create-dimension"
        given: dict[str, Any] = {"name": name}
        if "stringValues" in doc:
            given["stringValues"] = doc["stringValues"]
        if verb == "create-dimension":
            given["type"] = doc.get("type", "TOPIC_FILTER")
        changes.append(Change("dimensions", name, verb, given, d))
    for name, doc in profiles.items():
        d = digest(doc)
        if done_profiles.get(name) == d:
            continue
        update = name in done_profiles
        verb = "update-security-profile" if update else "create-security-profile"
        changes.append(Change("profiles", name, verb, _profile_input(name, doc, update), d))
    for name in sorted(set(done_profiles) - set(profiles)):
        changes.append(
            Change("profiles", name, "delete-security-profile", {"securityProfileName": name}, None)
        )
    for name in sorted(set(done_dims) - set(dims)):
        changes.append(Change("dimensions", name, "delete-dimension", {"name": name}, None))
    settings = desired.get("settings", {})
    if digest(settings) != applied.get("settings", {}).get("", digest({})):
        changes.append(Change("settings", "", "settings", settings, digest(settings)))
    return changes


def reported(
    applied: Mapping[str, Mapping[str, str]],
    versions: Mapping[str, int],
    settings: Mapping[str, Any],
    errors: Mapping[str, str],
    agent_version: str,
) -> dict[str, Any]:
    """The reported state: each applied document with its version and the digest of the
    desired document it came from, the settings in force, and why anything desired is
    not applied (by `kind.name`)."""
    return {
        "profiles": {
            n: {"version": versions.get(n, 1), "digest": d}
            for n, d in sorted(applied.get("profiles", {}).items())
        },
        "dimensions": {n: {"digest": d} for n, d in sorted(applied.get("dimensions", {}).items())},
        "settings": dict(settings),
        "errors": {k: v[:MAX_ERROR_CHARS] for k, v in sorted(errors.items())},
        "agent": {"version": agent_version},
    }


def shadow_patch(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, Any]:
    """The update that turns reported state `before` into `after`: a shadow merges what
    it is sent into what it holds, so a key that went must be sent as null."""
    patch: dict[str, Any] = {}
    before = before or {}
    for key in before.keys() - after.keys():
        patch[key] = None
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            patch[key] = shadow_patch(old, value)
        else:
            patch[key] = value
    return patch

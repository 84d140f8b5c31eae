"""The management verbs for security profiles and dimensions, named and shaped as the
AWS CLI's (`aws iot create-security-profile`, `update-dimension`, ...), on the files the
daemon loads: one file per document in the directory of the config's first `[detect]
profiles` pattern (`<name>.json` for a profile, `<name>.dimension.json` for a dimension;
names hold no dot, so the two never collide), each as describe-security-profile or
describe-dimension prints it. Files written by hand are read, described, updated and
deleted alike, unless they hold several documents.

Every document is validated as the daemon loads it before anything is written. After
a change, a running agent (its status file names a live pid) is asked to reload and
its verdict awaited; when it refuses, the change is rolled back and the verb fails
with its reason. `--no-reload` only writes the file."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.core.audit_model import InvalidRequest
from agent.core.profile import (
    Dimension,
    ProfileError,
    SecurityProfile,
    parse_dimension,
    parse_profile,
)
from agent.service.profiles import load_detect_files
from agent.service.reload import ReloadError, reload, running_pid
from agent.service.status import StatusError
from agent.service.verbs import JSON_FORM, flag, json_param, print_answer, verb_adder, word_list

MAX_RESULTS = 250  # ListSecurityProfiles and ListDimensions, as AWS
RELOAD_TIMEOUT_S = 30.0
MAX_DESCRIPTION = 1000  # SecurityProfileDescription
PROFILE_SUFFIX = ".json"
DIMENSION_SUFFIX = ".dimension.json"


class ManageError(Exception):
    """A refusal as AWS words it: `code` is AWS's exception name (exit 1)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class Env:
    cfg: Config
    now: float
    # Where new documents go; None: the [detect] profiles directory. Remote control
    # gives its own (Config.remote_dir).
    directory: Path | None = None
    # Remote control runs the verbs inside the agent: its reload request (else the
    # agent the status file names gets a SIGHUP).
    ask_reload: Callable[[], None] | None = None

    def new_documents_dir(self) -> Path:
        return self.directory or profiles_dir(self.cfg)


# -- the files ------------------------------------------------------------------------------


def profiles_dir(cfg: Config) -> Path:
    """The directory of the first `[detect] profiles` pattern, which must be `<dir>/*.json`:
    the verbs write there, and the daemon reads what they write."""
    first = cfg.detect.profiles[0] if cfg.detect.profiles else ""
    head, tail = os.path.split(first)
    if tail != "*.json" or not head or glob.has_magic(head):
        raise ManageError(
            "InvalidRequestException",
            f"[detect] profiles[0] is {first!r}: the management verbs need it to be"
            " <directory>/*.json, where they write one file per profile and dimension",
        )
    return Path(head)


def _file_name(name: str, dimension: bool) -> str:
    return name + (DIMENSION_SUFFIX if dimension else PROFILE_SUFFIX)


def _load(cfg: Config) -> tuple[dict[str, SecurityProfile], dict[str, Dimension]]:
    """Every profile and dimension the daemon would load, by name."""
    try:
        files = load_detect_files(cfg.profile_patterns)
    except ProfileError as e:
        raise ManageError(
            "InvalidRequestException",
            f"the profile files do not load; fix or remove them first:\n{e}",
        ) from None
    return {p.name: p for p in files.profiles}, {d.name: d for d in files.dimensions}


def _own_file(item: SecurityProfile | Dimension) -> Path:
    """The file holding `item` alone; refused for a file of several documents."""
    if item.source.endswith("]"):
        raise ManageError(
            "InvalidRequestException",
            f"{item.name!r} is in {item.source.rpartition('[')[0]} with other documents:"
            " edit that file by hand, or split it into one file per document",
        )
    return Path(item.source)


def write_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`: mode 0644, owned like its directory (so that
    an agent running as the directory's owner reads it), never writable by others."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    owner = os.stat(path.parent)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o644)
            if (owner.st_uid, owner.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, owner.st_uid, owner.st_gid)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _commit(env: Env, args: argparse.Namespace, path: Path, doc: Mapping[str, Any] | None) -> None:
    """Write `doc` to `path` (None: remove it), then have a running agent reload; when it
    refuses, put the file back as it was and fail with its reason."""
    try:
        before: bytes | None = path.read_bytes()
    except FileNotFoundError:
        before = None
    if doc is None:
        path.unlink()
    else:
        write_file(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())
    pid = os.getpid() if env.ask_reload is not None else running_pid(env.cfg)
    if args.no_reload or pid is None:
        return
    try:
        reload(Path(env.cfg.state_dir), pid, RELOAD_TIMEOUT_S, env.ask_reload)
    except (ReloadError, StatusError) as e:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            write_file(path, before)
        raise ManageError(
            "InvalidRequestException", f"the running agent (pid {pid}) did not take it: {e}"
        ) from None


# -- documents ------------------------------------------------------------------------------


def _arn(env: Env, kind: str, name: str) -> str:
    return f"arn:edge-defender:iot::{env.cfg.thing_name}:{kind}/{name}"


def _invalid(errors: list[str], params: tuple[str, ...], default: str) -> InvalidRequest:
    """ProfileError lines as one InvalidRequest naming the parameter the first is about."""
    first = errors[0] if errors else ""
    param = next((p for p in params if first.startswith(p)), default)
    return InvalidRequest(param, "; ".join(errors))


def _checked_profile(doc: dict[str, Any]) -> dict[str, Any]:
    try:
        parse_profile(doc)
    except ProfileError as e:
        params = ("securityProfileName", "behaviors", "additionalMetricsToRetainV2")
        raise _invalid(e.errors, params, "behaviors") from None
    return doc


def _mtime(source: str) -> float:
    try:
        return os.stat(source).st_mtime
    except OSError:
        return time.time()


def describe_profile(env: Env, p: SecurityProfile) -> dict[str, Any]:
    """The profile as describe-security-profile prints it; a hand-written file without
    version or dates is version 1, created and modified when the file was."""
    doc = dict(p.doc)
    out: dict[str, Any] = {
        "securityProfileName": p.name,
        "securityProfileArn": _arn(env, "securityprofile", p.name),
    }
    for key in (
        "securityProfileDescription",
        "behaviors",
        "alertTargets",
        "additionalMetricsToRetain",
        "additionalMetricsToRetainV2",
    ):
        if key in doc:
            out[key] = doc[key]
    out["version"] = doc.get("version", 1)
    out["creationDate"] = doc.get("creationDate", _mtime(p.source))
    out["lastModifiedDate"] = doc.get("lastModifiedDate", out["creationDate"])
    return out


def describe_dimension(env: Env, d: Dimension) -> dict[str, Any]:
    created = d.doc.get("creationDate", _mtime(d.source))
    return {
        "name": d.name,
        "arn": _arn(env, "dimension", d.name),
        "type": "TOPIC_FILTER",
        "stringValues": list(d.filters),
        "creationDate": created,
        "lastModifiedDate": d.doc.get("lastModifiedDate", created),
    }


def _profile_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The profile fields given on the command line, type-checked as AWS's shapes."""
    fields: dict[str, Any] = {}
    if args.security_profile_description is not None:
        if len(args.security_profile_description) > MAX_DESCRIPTION:
            raise InvalidRequest("securityProfileDescription", "longer than 1000 characters")
        fields["securityProfileDescription"] = args.security_profile_description
    for param, arg, tp in (
        ("behaviors", args.behaviors, list),
        ("alertTargets", args.alert_targets, dict),
        ("additionalMetricsToRetainV2", args.additional_metrics_to_retain_v2, list),
    ):
        if arg is None:
            continue
        value = json_param(param, arg)
        if not isinstance(value, tp):
            raise InvalidRequest(param, f"must be a JSON {'list' if tp is list else 'object'}")
        fields[param] = value
    return fields


def _dimensions_used(doc: Mapping[str, Any]) -> set[str]:
    used = set()
    for b in doc.get("behaviors", []):
        d = b.get("metricDimension") if isinstance(b, Mapping) else None
        if isinstance(d, Mapping) and isinstance(d.get("dimensionName"), str):
            used.add(d["dimensionName"])
    return used


def _check_dimensions(doc: Mapping[str, Any], dimensions: Mapping[str, Dimension]) -> None:
    missing = sorted(_dimensions_used(doc) - set(dimensions))
    if missing:
        raise ManageError(
            "ResourceNotFoundException", f"behaviors use unknown dimensions: {', '.join(missing)}"
        )


def _check_version(args: argparse.Namespace, version: int) -> None:
    if args.expected_version is not None and args.expected_version != version:
        raise ManageError(
            "VersionConflictException",
            f"expected version {args.expected_version}, the profile is at version {version}",
        )


def _profile(name: str, profiles: Mapping[str, SecurityProfile]) -> SecurityProfile:
    if name not in profiles:
        raise ManageError("ResourceNotFoundException", f"no security profile named {name!r}")
    return profiles[name]


def _dimension(name: str, dimensions: Mapping[str, Dimension]) -> Dimension:
    if name not in dimensions:
        raise ManageError("ResourceNotFoundException", f"no dimension named {name!r}")
    return dimensions[name]


def _new_path(directory: Path, name: str, dimension: bool) -> Path:
    """Where a new document goes; refused when that file exists (holding something else)."""
    path = directory / _file_name(name, dimension)
    if path.exists():
        raise ManageError(
            "ResourceAlreadyExistsException", f"{path} exists; move it away or give another name"
        )
    return path


# -- the verbs ------------------------------------------------------------------------------


def _create_security_profile(env: Env, args: argparse.Namespace) -> None:
    name = args.security_profile_name
    directory = env.new_documents_dir()
    profiles, dimensions = _load(env.cfg)
    if name in profiles:
        raise ManageError("ResourceAlreadyExistsException", f"security profile {name!r} exists")
    doc = _checked_profile(
        {
            "securityProfileName": name,
            **_profile_fields(args),
            "version": 1,
            "creationDate": env.now,
            "lastModifiedDate": env.now,
        }
    )
    _check_dimensions(doc, dimensions)
    _commit(env, args, _new_path(directory, name, False), doc)
    print_answer(
        {"securityProfileName": name, "securityProfileArn": _arn(env, "securityprofile", name)}
    )


def _describe_security_profile(env: Env, args: argparse.Namespace) -> None:
    profiles, _ = _load(env.cfg)
    print_answer(describe_profile(env, _profile(args.security_profile_name, profiles)))


def _update_security_profile(env: Env, args: argparse.Namespace) -> None:
    profiles, dimensions = _load(env.cfg)
    old = _profile(args.security_profile_name, profiles)
    described = describe_profile(env, old)
    _check_version(args, described["version"])
    fields = _profile_fields(args)
    doc = {k: v for k, v in described.items() if k != "securityProfileArn"}
    for param, keys in (
        ("deleteBehaviors", ("behaviors",)),
        ("deleteAlertTargets", ("alertTargets",)),
        (
            "deleteAdditionalMetricsToRetain",
            ("additionalMetricsToRetainV2", "additionalMetricsToRetain"),
        ),
    ):
        if getattr(args, flag(param).removeprefix("--").replace("-", "_")):
            if keys[0] in fields:
                raise InvalidRequest(param, f"cannot be given with {flag(keys[0])}")
            for key in keys:
                doc.pop(key, None)
    doc.update(fields, version=described["version"] + 1, lastModifiedDate=env.now)
    _checked_profile(doc)
    _check_dimensions(doc, dimensions)
    _commit(env, args, _own_file(old), doc)
    print_answer(describe_profile(env, parse_profile(doc, old.source)))


def _delete_security_profile(env: Env, args: argparse.Namespace) -> None:
    profiles, _ = _load(env.cfg)
    old = _profile(args.security_profile_name, profiles)
    _check_version(args, describe_profile(env, old)["version"])
    _commit(env, args, _own_file(old), None)


def _list_security_profiles(env: Env, args: argparse.Namespace) -> None:
    if args.dimension_name is not None and args.metric_name is not None:
        raise InvalidRequest("metricName", "cannot be given with --dimension-name (as AWS)")
    profiles, _ = _load(env.cfg)
    names = sorted(
        p.name
        for p in profiles.values()
        if (args.dimension_name is None or args.dimension_name in _dimensions_used(p.doc))
        and (args.metric_name is None or any(b.metric == args.metric_name for b in p.behaviors))
    )
    page, token = _page(args, names)
    answer: dict[str, Any] = {
        "securityProfileIdentifiers": [
            {"name": n, "arn": _arn(env, "securityprofile", n)} for n in page
        ]
    }
    if token is not None:
        answer["nextToken"] = token
    print_answer(answer)


def _page(args: argparse.Namespace, names: list[str]) -> tuple[list[str], str | None]:
    """One page of sorted `names`; the token is the last name given."""
    if not 1 <= args.max_results <= MAX_RESULTS:
        raise InvalidRequest("maxResults", f"{args.max_results} is not 1-{MAX_RESULTS}")
    if args.next_token is not None:
        names = [n for n in names if n > args.next_token]
    page = names[: args.max_results]
    return page, page[-1] if len(names) > len(page) else None


def _string_values(args: argparse.Namespace) -> list[Any]:
    return word_list("stringValues", args.string_values)


def _checked_dimension(doc: dict[str, Any]) -> dict[str, Any]:
    try:
        parse_dimension(doc)
    except ProfileError as e:
        # parse_dimension names the field after the dimension's label
        param = "name" if e.errors and e.errors[0].startswith("dimension name") else "stringValues"
        raise InvalidRequest(param, "; ".join(e.errors)) from None
    return doc


def _create_dimension(env: Env, args: argparse.Namespace) -> None:
    directory = env.new_documents_dir()
    _, dimensions = _load(env.cfg)
    if args.name in dimensions:
        raise ManageError("ResourceAlreadyExistsException", f"dimension {args.name!r} exists")
    doc = _checked_dimension(
        {
            "name": args.name,
            "type": args.type,
            "stringValues": _string_values(args),
            "creationDate": env.now,
            "lastModifiedDate": env.now,
        }
    )
    _commit(env, args, _new_path(directory, args.name, True), doc)
    print_answer({"name": args.name, "arn": _arn(env, "dimension", args.name)})


def _describe_dimension(env: Env, args: argparse.Namespace) -> None:
    _, dimensions = _load(env.cfg)
    print_answer(describe_dimension(env, _dimension(args.name, dimensions)))


def _update_dimension(env: Env, args: argparse.Namespace) -> None:
    _, dimensions = _load(env.cfg)
    old = _dimension(args.name, dimensions)
    doc = describe_dimension(env, old)
    del doc["arn"]
    doc.update(stringValues=_string_values(args), lastModifiedDate=env.now)
    _checked_dimension(doc)
    _commit(env, args, _own_file(old), doc)
    print_answer(describe_dimension(env, parse_dimension(doc, old.source)))


def _delete_dimension(env: Env, args: argparse.Namespace) -> None:
    profiles, dimensions = _load(env.cfg)
    old = _dimension(args.name, dimensions)
    users = sorted(p.name for p in profiles.values() if args.name in _dimensions_used(p.doc))
    if users:
        raise ManageError(
            "ResourceInUseException",
            f"dimension {args.name!r} is used by security profiles: {', '.join(users)}",
        )
    _commit(env, args, _own_file(old), None)


def _list_dimensions(env: Env, args: argparse.Namespace) -> None:
    _, dimensions = _load(env.cfg)
    page, token = _page(args, sorted(dimensions))
    answer: dict[str, Any] = {"dimensionNames": page}
    if token is not None:
        answer["nextToken"] = token
    print_answer(answer)


Verb = Callable[[Env, argparse.Namespace], None]


def run(
    args: argparse.Namespace,
    cfg: Config,
    directory: Path | None = None,
    ask_reload: Callable[[], None] | None = None,
) -> int:
    """Run the verb the parser chose. Exit status: 0 done, 1 refused (unknown or existing
    resource, version conflict, dimension in use, the running agent refused the change,
    a file that cannot be written), 2 a bad parameter."""
    command = args.command
    try:
        args.verb(Env(cfg, time.time(), directory, ask_reload), args)
    except InvalidRequest as e:
        print(f"edge-defender: {command}: {flag(e.param)}: {e.message}", file=sys.stderr)
        return 2
    except ManageError as e:
        print(f"edge-defender: {command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"edge-defender: {command}: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


# -- parsers --------------------------------------------------------------------------------


def _add_profile_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--security-profile-description", metavar="TEXT")
    p.add_argument("--behaviors", metavar="JSON", help=f"a list of behaviors; {JSON_FORM}")
    p.add_argument(
        "--alert-targets",
        metavar="JSON",
        help=f"kept as given, not used on the device; {JSON_FORM}",
    )
    p.add_argument(
        "--additional-metrics-to-retain-v2",
        metavar="JSON",
        help=f'[{{"metric": ..., "metricDimension": ...}}]; {JSON_FORM}',
    )


def _add_no_reload(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-reload",
        action="store_true",
        help="only write the file; a running agent takes it at its next reload (extension)",
    )


def _add_paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-results", type=int, default=MAX_RESULTS, metavar="N",
                   help=f"results per page, 1-{MAX_RESULTS} (default {MAX_RESULTS})")  # fmt: skip
    p.add_argument("--next-token", metavar="TOKEN", help="the nextToken of the previous page")


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_arg: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """Register the profile and dimension verbs; `handler` loads the config and calls run()."""
    verb = verb_adder(sub, add_config_arg, handler)
    name_flag = ("--security-profile-name",)
    p = verb(
        "create-security-profile", "write a new security profile file", _create_security_profile
    )
    p.add_argument(*name_flag, required=True, metavar="NAME")
    _add_profile_fields(p)
    _add_no_reload(p)
    p = verb("describe-security-profile", "a security profile", _describe_security_profile)
    p.add_argument(*name_flag, required=True, metavar="NAME")
    p = verb("update-security-profile", "change a security profile; its version goes up by one",
             _update_security_profile)  # fmt: skip
    p.add_argument(*name_flag, required=True, metavar="NAME")
    _add_profile_fields(p)
    for what in ("behaviors", "alert-targets", "additional-metrics-to-retain"):
        p.add_argument(f"--delete-{what}", action="store_true", help=f"remove the {what}")
    p.add_argument("--expected-version", type=int, metavar="N", help="refuse unless at version N")
    _add_no_reload(p)
    p = verb("delete-security-profile", "remove a security profile's file",
             _delete_security_profile)  # fmt: skip
    p.add_argument(*name_flag, required=True, metavar="NAME")
    p.add_argument("--expected-version", type=int, metavar="N", help="refuse unless at version N")
    _add_no_reload(p)
    p = verb("list-security-profiles", "security profile names and ARNs, by name",
             _list_security_profiles)  # fmt: skip
    p.add_argument("--dimension-name", metavar="NAME", help="only profiles using this dimension")
    p.add_argument("--metric-name", metavar="METRIC", help="only profiles with this metric")
    _add_paging(p)

    p = verb("create-dimension", "write a new TOPIC_FILTER dimension file", _create_dimension)
    p.add_argument("--name", required=True, metavar="NAME")
    p.add_argument("--type", required=True, choices=("TOPIC_FILTER",))
    p.add_argument("--string-values", nargs="+", required=True, metavar="FILTER",
                   help="MQTT topic filters, as words or one JSON list")  # fmt: skip
    p.add_argument("--client-request-token", metavar="TOKEN", help="accepted, as AWS; unused")
    _add_no_reload(p)
    p = verb("describe-dimension", "a dimension", _describe_dimension)
    p.add_argument("--name", required=True, metavar="NAME")
    p = verb("update-dimension", "replace a dimension's topic filters", _update_dimension)
    p.add_argument("--name", required=True, metavar="NAME")
    p.add_argument("--string-values", nargs="+", required=True, metavar="FILTER",
                   help="MQTT topic filters, as words or one JSON list")  # fmt: skip
    _add_no_reload(p)
    p = verb("delete-dimension", "remove a dimension no profile uses", _delete_dimension)
    p.add_argument("--name", required=True, metavar="NAME")
    _add_no_reload(p)
    p = verb("list-dimensions", "dimension names, sorted", _list_dimensions)
    _add_paging(p)

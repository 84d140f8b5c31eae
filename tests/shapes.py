"""botocore's `iot` model as the tests' oracle for AWS's JSON shapes: one checker for
every verb group (Detect, Audit, mitigation, management), with the device's documented
extensions allowed only where a caller names them."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import botocore.session

MODEL = botocore.session.get_session().get_service_model("iot")
_NAME_KEY = re.compile(r"[a-z][a-zA-Z0-9]*")


def shape_problems(
    value: Any,
    shape: Any,
    path: str = "$",
    *,
    extra_members: Mapping[str, Collection[str]] | None = None,
    extra_enum: Mapping[str, Collection[str]] | None = None,
    open_identifiers: bool = False,
) -> list[str]:
    """What in `value` breaks botocore's `shape` (a name or a Shape): members, required,
    types, enums, lengths, counts, ranges, patterns. The device's extensions pass only
    as given: `extra_members` and `extra_enum` by shape name, and with
    `open_identifiers` a device check's resource type (outside AWS's enum) and its
    identifier keys (lowerCamelCase, string values)."""
    if isinstance(shape, str):
        shape = MODEL.shape_for(shape)
    members = extra_members or {}
    enums = dict(extra_enum or {})
    kind, meta = shape.type_name, shape.metadata

    def sub(v: Any, s: Any, p: str) -> list[str]:
        return shape_problems(
            v,
            s,
            p,
            extra_members=members,
            extra_enum=enums,
            open_identifiers=open_identifiers,
        )

    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        extra = [
            k for k in value if k not in shape.members and k not in members.get(shape.name, ())
        ]
        if open_identifiers and shape.name == "ResourceIdentifier":
            extra = [k for k in extra if not (_NAME_KEY.fullmatch(k) and isinstance(value[k], str))]
        out = [f"{path}.{k}: not a member of {shape.name}" for k in extra]
        out += [f"{path}.{k}: required" for k in shape.required_members if k not in value]
        for k, v in value.items():
            if k in shape.members:
                out += sub(v, shape.members[k], f"{path}.{k}")
        return out
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        out = [f"{path}: fewer than {meta['min']}" for _ in [0] if len(value) < meta.get("min", 0)]
        out += [
            f"{path}: more than {meta['max']}" for _ in [0] if len(value) > meta.get("max", 1e9)
        ]
        return out + [p for i, v in enumerate(value) for p in sub(v, shape.member, f"{path}[{i}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: not a map"]
        out = [p for k in value for p in sub(k, shape.key, f"{path} key {k!r}")]
        return out + [p for k, v in value.items() for p in sub(v, shape.value, f"{path}.{k}")]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: not a string"]
        allowed = set(enums.get(shape.name, ()))
        open_type = open_identifiers and shape.name == "ResourceType"
        if shape.enum and value not in shape.enum and value not in allowed and not open_type:
            return [f"{path}: {value!r} not in {shape.name} {shape.enum}"]
        if not meta.get("min", 0) <= len(value) <= meta.get("max", 10**9):
            return [f"{path}: length {len(value)} out of range"]
        pattern = meta.get("pattern")
        # Python's re has no \p{...} classes: those patterns are not checked.
        if pattern and "\\p" not in pattern and not re.fullmatch(pattern.strip("^$"), value):
            return [f"{path}: {value!r} does not match {pattern}"]
        return []
    if kind in ("integer", "long"):
        if type(value) is not int:
            return [f"{path}: not an integer"]
        if not meta.get("min", -(2**63)) <= value <= meta.get("max", 2**63):
            return [f"{path}: out of range"]
        return []
    if kind in ("double", "float"):
        return [] if type(value) in (int, float) else [f"{path}: not a number"]
    if kind == "timestamp":
        return [] if type(value) in (int, float) else [f"{path}: not epoch seconds"]
    if kind == "boolean":
        return [] if type(value) is bool else [f"{path}: not a boolean"]
    return [f"{path}: unchecked shape type {kind}"]

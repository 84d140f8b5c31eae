"""Security profile and dimension files: what `aws iot describe-security-profile` and
`aws iot describe-dimension` print, dropped in unchanged. A file holds one document or a
JSON list of them; dimensions and profiles may share a directory and a glob. Every
command and the daemon load them here, so what one accepts the others run."""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass

from agent.config import writable_by_others
from agent.core.profile import (
    MAX_DOCUMENT_BYTES,
    Dimension,
    ProfileError,
    SecurityProfile,
    parse_detect_document,
)
from agent.files import data

DEFAULT_PROFILE = "default-profile.json"
DEFAULT_PROFILE_SOURCE = "<built-in default profile>"


@dataclass(frozen=True)
class DetectFiles:
    profiles: list[SecurityProfile]
    dimensions: list[Dimension]


def _paths(patterns: list[str]) -> list[str]:
    """Files per pattern in sorted order, each once. A pattern without wildcards must
    name an existing file; a glob may match nothing (an empty profile directory)."""
    paths: dict[str, None] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths.update(dict.fromkeys(sorted(glob.glob(pattern))))
        else:
            paths[pattern] = None
    return list(paths)


def _read(path: str) -> bytes:
    """The file's bytes, up to one more than a profile file may hold. Refused like a
    readable key when others may write it: whoever can write a profile can blind the
    agent."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the agent
            raise ProfileError(["not a regular file"], path)
        if unsafe := writable_by_others(path):
            raise ProfileError([f"refused: {unsafe}"], path)
        with open(path, "rb") as f:
            return f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as e:
        raise ProfileError([f"cannot read: {e.strerror}"], path) from None


def builtin_default_profile() -> SecurityProfile:
    """The profile shipped in agent/data for hosts that have none of their own."""
    (profile,) = parse_detect_document(data(DEFAULT_PROFILE), DEFAULT_PROFILE_SOURCE)
    assert isinstance(profile, SecurityProfile)
    return profile


def load_detect_files(patterns: list[str], *, builtin_default: bool = False) -> DetectFiles:
    """Every profile and dimension in the files `patterns` match, in file order; with
    `builtin_default`, the built-in default profile when they hold no profile at all.
    Raises ProfileError listing the problems of all files, each prefixed with its file."""
    profiles: dict[str, SecurityProfile] = {}
    dimensions: dict[str, Dimension] = {}
    errors: list[str] = []
    for path in _paths(patterns):
        try:
            items = parse_detect_document(_read(path), path)
        except ProfileError as e:
            errors.extend(e.located())
            continue
        for item in items:
            if isinstance(item, Dimension):
                first: SecurityProfile | Dimension = dimensions.setdefault(item.name, item)
            else:
                first = profiles.setdefault(item.name, item)
            if first is not item:
                kind = "dimension" if isinstance(item, Dimension) else "profile"
                errors.append(f"{item.source}: {kind} {item.name!r} also in {first.source}")
    if errors:
        raise ProfileError(errors)
    if builtin_default and not profiles:
        return DetectFiles([builtin_default_profile()], list(dimensions.values()))
    return DetectFiles(list(profiles.values()), list(dimensions.values()))


def load_profiles(patterns: list[str], *, builtin_default: bool = False) -> list[SecurityProfile]:
    """The security profiles of `load_detect_files`."""
    return load_detect_files(patterns, builtin_default=builtin_default).profiles

"""Security profile and dimension files: what `aws iot describe-security-profile` and
`aws iot describe-dimension` print, dropped in unchanged. A file holds one document or a
JSON list of them; dimensions and profiles may share a directory and a glob."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

from agent.core.profile import (
    Dimension,
    ProfileError,
    SecurityProfile,
    is_dimension_doc,
    parse_dimension,
    parse_profile,
)


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


def _read(path: str) -> object:
    try:
        return json.loads(Path(path).read_bytes())
    except OSError as e:
        raise ProfileError([f"cannot read: {e.strerror}"], path) from None
    except UnicodeDecodeError:
        raise ProfileError(["not UTF-8 text"], path) from None
    except json.JSONDecodeError as e:
        raise ProfileError(
            [f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"], path
        ) from None


def load_detect_files(patterns: list[str]) -> DetectFiles:
    """Every profile and dimension in the files `patterns` match, in file order. Raises
    ProfileError listing the problems of all files, each prefixed with its file."""
    profiles: dict[str, SecurityProfile] = {}
    dimensions: dict[str, Dimension] = {}
    errors: list[str] = []
    for path in _paths(patterns):
        try:
            doc = _read(path)
        except ProfileError as e:
            errors.extend(e.located())
            continue
        docs = doc if isinstance(doc, list) else [doc]
        for i, item in enumerate(docs):
            source = f"{path}[{i}]" if isinstance(doc, list) else path
            try:
                if is_dimension_doc(item):
                    dimension = parse_dimension(item, source)
                    if dimension.name in dimensions:
                        first = dimensions[dimension.name].source
                        raise ProfileError(
                            [f"dimension {dimension.name!r} also in {first}"], source
                        )
                    dimensions[dimension.name] = dimension
                else:
                    profile = parse_profile(item, source)
                    if profile.name in profiles:
                        first = profiles[profile.name].source
                        raise ProfileError([f"profile {profile.name!r} also in {first}"], source)
                    profiles[profile.name] = profile
            except ProfileError as e:
                errors.extend(e.located())
    if errors:
        raise ProfileError(errors)
    return DetectFiles(list(profiles.values()), list(dimensions.values()))


def load_profiles(patterns: list[str]) -> list[SecurityProfile]:
    """The security profiles of `load_detect_files`."""
    return load_detect_files(patterns).profiles

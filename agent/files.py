"""Files the daemon rewrites often (status, network counters): replaced atomically,
private, never synced. A leaf every layer but the pure core may import."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file renamed over it: readers see the
    old or the new file, never half of one. Mode 0600 whatever the umask. One writer
    per file (the daemon), so the temporary name is fixed per process."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def data(name: str) -> bytes:
    """A file shipped in agent/data: package data beside this module, in a wheel or a
    checkout alike (the agent is never run from a zip, so no importlib.resources, which
    costs the daemon ~2 MiB)."""
    return (Path(__file__).parent / "data" / name).read_bytes()

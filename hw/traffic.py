"""Starting and stopping a scenario's actions: each one is hw/actors.py run on its node
as `python3 - KIND JSON_PARAMS`, the source on stdin (the node needs only a python3).
The rig fills in what an actor needs from the lab: the broker and the device's TLS
files for `mqtt`, a scratch directory shared by the actions of one start for `sshd` and
`ssh` (the keys they trade)."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.logs import kv
from hw import actors
from hw.lab import Node
from hw.scenario import Action

log = logging.getLogger(__name__)

ACTORS_SOURCE = Path(actors.__file__).read_bytes()
STOP_S = 3.0  # from SIGTERM to SIGKILL
STDERR_CHARS = 2000  # of an actor's errors, in the log


@dataclass(frozen=True)
class Started:
    action: Action
    process: subprocess.Popen[bytes]
    stderr: Path  # what the actor said


@dataclass(frozen=True)
class Running:
    """The actions of one start_actions call, running."""

    started: list[Started]
    scratch: Path  # removed by stop_actions

    def errors(self) -> list[str]:
        """What each actor that said something wrote on stderr (it says only errors)."""
        said = []
        for s in self.started:
            text = s.stderr.read_text(errors="replace").strip() if s.stderr.exists() else ""
            if text:
                said.append(f"{s.action.node} {s.action.kind}: {text[-STDERR_CHARS:]}")
        return said


def rig_params(
    kind: str, scratch: Path, tls: tuple[str, str, str] | None, broker: str
) -> dict[str, Any]:
    """The parameters of `kind` that come from the lab, not from the scenario."""
    known: dict[str, Any] = {"key_dir": str(scratch), "broker": broker}
    if tls is not None:
        known.update(zip(("ca", "cert", "key"), tls, strict=True))
    accepted = inspect.signature(actors.KINDS[kind]).parameters
    return {k: v for k, v in known.items() if k in accepted}


def start_actions(
    actions: Sequence[Action],
    nodes: Mapping[str, Node],
    *,
    tls: tuple[str, str, str] | None,
    broker: str,
) -> Running:
    """Start every action on its node, in order, without waiting for any (clients retry
    until their servers are up). Raises ValueError for a node the lab does not have."""
    missing = sorted({a.node for a in actions} - nodes.keys())
    if missing:
        raise ValueError(f"no node {', '.join(missing)} here; there are {', '.join(nodes)}")
    scratch = Path(tempfile.mkdtemp(prefix="hw-traffic-"))
    running = Running([], scratch)
    try:
        for i, action in enumerate(actions):
            params = {**rig_params(action.kind, scratch, tls, broker), **action.params}
            argv = ["python3", "-", action.kind, json.dumps(params)]
            stderr = scratch / f"{i}-{action.node}-{action.kind}.stderr"
            with stderr.open("wb") as f:
                process = nodes[action.node].spawn(argv, stdin=ACTORS_SOURCE, stderr=f)
            running.started.append(Started(action, process, stderr))
    except BaseException:
        stop_actions(running)
        raise
    return running


def stop_actions(running: Running) -> None:
    """SIGTERM to each action's process group (the actor and what it started), SIGKILL
    after STOP_S to what stays; what the actors said on stderr is logged. Never raises
    for an action that already ended."""
    for s in running.started:
        _signal_group(s.process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    for s in running.started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            s.process.wait(max(0.0, deadline - time.monotonic()))
        # Also when the actor is gone: children it left keep its group alive.
        _signal_group(s.process, signal.SIGKILL)
        s.process.wait()
    for line in running.errors():
        log.warning(kv("actor_said", text=line))
    shutil.rmtree(running.scratch, ignore_errors=True)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Node.spawn starts each process in a session of its own: its group id is its pid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)

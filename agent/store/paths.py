"""Where the stores beside the violation history live in the state dir: a leaf, so that
the daemon can see whether one exists without loading its code."""

from __future__ import annotations

from pathlib import Path

AUDIT_FILE = "audit.db"
MITIGATION_FILE = "mitigation.db"


def audit_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / AUDIT_FILE


def mitigation_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / MITIGATION_FILE


CONTROL_FILE = "control.db"


def control_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / CONTROL_FILE

"""The daemon's scheduled audits: the Auditor thread runs a due scheduled audit with the
device's own checks and hands over its findings; with [audit] scheduled = false it
runs none."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from agent.service.auditor import Auditor

CHECK = "DEVICE_KEY_FILE_PERMISSIONS_CHECK"


def device(tmp_path: Path, scheduled: bool) -> Path:
    key = tmp_path / "device.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)  # readable by others: the finding
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[mqtt]\nkey_file = "{key}"\n'
        f"[audit]\nscheduled = {str(scheduled).lower()}\n"
    )
    config.chmod(0o600)
    argv = ["create-scheduled-audit", "--config", str(config), "--scheduled-audit-name"]
    assert main([*argv, "nightly", "--frequency", "DAILY", "--target-check-names", CHECK]) == 0
    return config


def test_a_due_scheduled_audit_runs_in_the_background_and_hands_over_its_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(device(tmp_path, scheduled=True))
    auditor = Auditor(lambda: cfg, first_check_s=0.05, check_every_s=0.05)
    try:
        deadline = time.monotonic() + 20
        finished = []
        while not finished and time.monotonic() < deadline:
            time.sleep(0.05)
            finished = auditor.take()
        time.sleep(0.3)  # a second round: the audit ran today, it is not due again
        assert auditor.take() == []
    finally:
        auditor.close()
    ((task_id, findings),) = finished
    (finding,) = findings
    assert finding["taskId"] == task_id
    assert finding["checkName"] == CHECK
    assert finding["nonCompliantResource"]["resourceIdentifier"] == {
        "path": str(tmp_path / "device.key")
    }
    assert finding["reasonForNonComplianceCode"] == "KEY_FILE_ACCESSIBLE_BY_OTHERS"


def test_scheduled_audits_can_be_switched_off(tmp_path: Path) -> None:
    cfg = load_config(device(tmp_path, scheduled=False))
    auditor = Auditor(lambda: cfg, first_check_s=0.05, check_every_s=0.05)
    try:
        time.sleep(0.5)
        assert auditor.take() == []
    finally:
        auditor.close()

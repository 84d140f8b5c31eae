"""The daemon's mitigation thread with a real nftables firewall, in a network namespace
of the test's own: the automatic response blocks a violation's offending address when
its alarm begins and unblocks it when the alarm ends; a task recorded by the verb is
carried out; an allowlisted address is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and nftables need root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (apt install nftables)"),
]

# Runs inside the namespace: the Mitigator, driven by hand-made violation events.
SCRIPT = r"""
import json, sys, time
from pathlib import Path
from agent.cli import main
from agent.collect.firewall import Allowlist, Firewall
from agent.config import load_config
from agent.service.mitigation import reapply
from agent.service.mitigator import Mitigator
from agent.store.mitigation import open_mitigation

config = sys.argv[1]
params = {"blockRemoteAddressParams": {"timeoutSeconds": 600}}
assert main(["create-mitigation-action", "--config", config, "--action-name", "block",
             "--role-arn", "arn:aws:iam::123456789012:role/device", "--action-params",
             json.dumps(params)]) == 0
cfg = load_config(config)
firewall = Firewall(allow=Allowlist())

def event(kind, vid, cidrs, behavior="no-c2"):
    return {
        "violationId": vid, "thingName": "pi-1", "securityProfileName": "p",
        "behavior": {"name": behavior, "metric": "aws:destination-ip-addresses",
                     "criteria": {"comparisonOperator": "in-cidr-set",
                                  "value": {"cidrs": ["10.0.0.0/8"]}}},
        "metricValue": {"cidrs": cidrs}, "violationEventType": kind,
        "violationEventTime": time.time(),
    }

def blocked():
    return sorted(e["cidr"] for e in firewall.state()["blocked"])

def until(check, what):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}: {blocked()}")

out = {}
mitigator = Mitigator(lambda: cfg, poll_s=0.05)
try:
    start = time.monotonic()
    # 10.1.2.3 is inside the behavior's CIDRs: only the C2 address offends.
    mitigator.respond([event("in-alarm", "v1", ["10.1.2.3", "198.51.100.66"])])
    until(lambda: blocked() == ["198.51.100.66/32"], "the block")
    out["block_s"] = time.monotonic() - start
    mitigator.respond([event("alarm-cleared", "v1", ["10.1.2.3"])])
    until(lambda: blocked() == [], "the unblock")
    # The management network is never blocked.
    mitigator.respond([event("in-alarm", "v2", ["192.0.2.7"])])
    time.sleep(1.0)
    out["allowlisted"] = blocked()
    # Without undo_on_clear a block outlives its alarm (until its own timeout).
    mitigator.respond([event("in-alarm", "v3", ["203.0.113.5"], "keep")])
    until(lambda: blocked() == ["203.0.113.5/32"], "the kept block")
    mitigator.respond([event("alarm-cleared", "v3", [], "keep")])
    time.sleep(1.0)
    out["kept"] = blocked()
    # A reboot: the kernel forgets the table. A new mitigation thread puts back what is
    # still due (the kept block, with the time it has left), not what was undone.
    mitigator.close()
    firewall.remove()
    assert blocked() == []
    store = open_mitigation(cfg.state_dir)
    reapply(store, firewall, time.time() + 300)  # as if the reboot took 300 s
    store.close()
    out["left_later_s"] = [e["expires_s"] for e in firewall.state()["blocked"]]
    firewall.remove()
    mitigator = Mitigator(lambda: cfg, poll_s=0.05)
    until(lambda: blocked() == ["203.0.113.5/32"], "the block put back")
    out["left_s"] = [e["expires_s"] for e in firewall.state()["blocked"]]
finally:
    mitigator.close()
print(json.dumps(out))
"""


def test_automatic_response_blocks_and_unblocks_and_keeps_the_allowlist(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nthing_name = "pi-1"\n'
        "[mitigation]\nenabled = true\nallow_cidrs = ['192.0.2.0/24']\n"
        "[[mitigation.auto]]\nprofile = 'p'\nbehavior = 'no-c2'\nactions = ['block']\n"
        "undo_on_clear = true\n"
        "[[mitigation.auto]]\nprofile = 'p'\nbehavior = 'keep'\nactions = ['block']\n"
    )
    config.chmod(0o600)
    ns = f"mitig-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        result = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, str(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        out = json.loads(result.stdout.splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert out["block_s"] < 2.0  # the thread's poll is 0.05 s here; nft takes ~20 ms
    assert out["allowlisted"] == []
    assert out["kept"] == ["203.0.113.5/32"]
    (left,) = out["left_s"]
    assert 590 <= left <= 600
    (later,) = out["left_later_s"]
    assert 290 <= later <= 300  # the time it has left, not a fresh 600 s
    verb = ["list-detect-mitigation-actions-executions", "--config", str(config)]
    executions = subprocess.run(
        [sys.executable, "-m", "agent", *verb, "--task-id", "auto-v2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    (execution,) = json.loads(executions.stdout)["actionsExecutions"]
    assert (execution["status"], execution["errorCode"]) == ("FAILED", "ALLOWLISTED")


def test_uninstall_removes_the_firewall_table(tmp_path: Path) -> None:
    script = (
        "from agent.collect.firewall import Allowlist, Firewall\n"
        "from agent.service.install import _remove_firewall\n"
        "print(_remove_firewall())\n"  # no table yet: nothing to say
        "Firewall(allow=Allowlist()).block_address('198.51.100.9', 600)\n"
        "print(_remove_firewall())\n"
        "print(Firewall(allow=Allowlist()).state()['present'])\n"
    )
    ns = f"uninst-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=True,
        ).stdout.splitlines()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert out == ["[]", "['removed nftables table inet edge_defender']", "False"]

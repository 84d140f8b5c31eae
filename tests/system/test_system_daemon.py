"""`edge-defender run` as a real process: store, broker, signals, crashes, clocks.

The device's own sockets differ from machine to machine, so the behavior here
judges a custom metric read from a file that each test sets: the profile says the
level is normally below 10, so 50 violates and 5 conforms.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.cli import main
from agent.publish.codec import decode

if TYPE_CHECKING:
    from tests.system.conftest import Broker, MqttTestClient, Pki

pytestmark = pytest.mark.system

THING = "daemon-test"
TIMEOUT_S = 15.0
FAKETIME_LIBS = [
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
]


def profile(threshold: float = 10, name: str = "level-high") -> dict[str, Any]:
    return {
        "securityProfileName": "test-profile",
        "behaviors": [
            {
                "name": name,
                "metric": "level",
                "criteria": {"comparisonOperator": "less-than", "value": {"number": threshold}},
            }
        ],
    }


def mqtt_block(broker: Broker) -> str:
    """The [mqtt] table of an agent reporting to the test broker, in JSON."""
    pki = broker.pki
    return f"""
[mqtt]
endpoint = "{broker.host}"
port = {broker.port}
ca_file = "{pki.ca_cert}"
cert_file = "{pki.client_cert}"
key_file = "{pki.client_key}"
format = "json"
"""


class Agent:
    """One test's agent: its config, state, level file and process."""

    def __init__(self, tmp: Path, interval_s: float = 0.2, extra: str = "") -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.level = tmp / "level"
        self.profile = tmp / "profile.json"
        self.config = tmp / "config.toml"
        self.log = tmp / "agent.log"
        self.set_level(5)
        self.set_profile(profile())
        self.config.write_text(
            f"""\
thing_name = "{THING}"
state_dir = "{self.state}"
[sampling]
interval_s = {interval_s}
socket_source = "proc"
[detect]
profiles = ["{self.profile}"]
[[custom_metrics]]
name = "level"
type = "number"
source = "file"
path = "{self.level}"
{extra}"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def set_level(self, value: float) -> None:
        tmp = self.level.with_suffix(".tmp")
        tmp.write_text(f"{value}\n")
        tmp.replace(self.level)

    def set_profile(self, doc: object) -> None:
        self.profile.write_text(json.dumps(doc))

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        return self.process

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(TIMEOUT_S)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(TIMEOUT_S)
            self.process = None

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def _run(self, *args: str) -> bytes:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, "--config", str(self.config)],
            capture_output=True,
            check=True,
            timeout=TIMEOUT_S,
        ).stdout

    def cli(self, *args: str) -> Any:
        return json.loads(self._run(*args))

    def events(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token: list[str] = []
        while True:
            page = self.cli(
                "list-violation-events", "--start-time", "0", "--end-time", "4000000000", *token
            )
            found += page["violationEvents"]
            if "nextToken" not in page:
                return found
            token = ["--next-token", page["nextToken"]]

    def history(self) -> list[dict[str, Any]]:
        out = self._run("export-metrics", "--start-time", "0", "--end-time", "4000000000")
        return [json.loads(line) for line in out.splitlines()]

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    yield a
    a.kill()


def test_local_run_records_alarm_and_clear_and_stops_cleanly(agent: Agent) -> None:
    agent.start()
    wait_until(lambda: agent.status().get("samples", 0) >= 2, "the first samples")
    agent.set_level(50)
    wait_until(lambda: agent.events(), "an in-alarm event")
    active = agent.cli("list-active-violations")["activeViolations"]
    assert [a["behavior"]["name"] for a in active] == ["level-high"]
    assert active[0]["lastViolationValue"] == {"number": 50}
    agent.set_level(5)
    events = wait_until(lambda: len(agent.events()) >= 2 and agent.events(), "alarm-cleared")
    assert [e["violationEventType"] for e in events] == ["in-alarm", "alarm-cleared"]
    assert events[0]["violationId"] == events[1]["violationId"]
    assert events[1]["metricValue"] == {"number": 5}
    assert agent.cli("list-active-violations")["activeViolations"] == []
    assert agent.stop() == 0
    assert "stopped" in agent.log_text()
    # The metrics history holds every sample as replay input.
    records = agent.history()
    assert len(records) >= 4
    levels = [r["report"]["custom_metrics"]["level"][0]["number"] for r in records]
    assert 50 in levels and levels[-1] == 5
    times = [r["timestamp"] for r in records]
    assert times == sorted(times)


def test_kill_9_at_random_moments_never_repeats_an_alarm(agent: Agent) -> None:
    rng = random.Random(7)
    agent.set_level(50)
    for round_ in range(12):
        if round_ == 8:
            agent.set_level(5)  # clears once, in some round
        agent.start()
        time.sleep(rng.uniform(0.3, 1.2))
        agent.kill()
    pid = agent.start().pid
    # The status file of a killed run is still there: wait for this run's own.
    wait_until(
        lambda: agent.status().get("pid") == pid and agent.status()["samples"] >= 2,
        "a healthy restart",
    )
    assert agent.stop() == 0
    db = sqlite3.connect(agent.state / "agent.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    kinds = [e["violationEventType"] for e in agent.events()]
    # One alarm for the whole stretch at 50 and one clear, however often it was killed.
    assert kinds == ["in-alarm", "alarm-cleared"]


def test_sighup_refuses_a_bad_profile_and_invalidates_a_changed_one(agent: Agent) -> None:
    agent.set_level(50)
    agent.start()
    wait_until(lambda: agent.status().get("samples", 0) >= 1, "the first sample")
    first = wait_until(lambda: agent.events(), "an in-alarm event")[0]
    agent.set_profile({"securityProfileName": "test-profile", "behaviors": [{"metric": "x"}]})
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "reload_refused" in agent.log_text(), "the refusal")
    time.sleep(0.5)
    assert [e["violationEventType"] for e in agent.events()] == ["in-alarm"]
    agent.set_profile(profile(threshold=100))
    agent.signal(signal.SIGHUP)
    events = wait_until(lambda: len(agent.events()) >= 2 and agent.events(), "invalidation")
    assert [e["violationEventType"] for e in events] == ["in-alarm", "alarm-invalidated"]
    assert events[1]["violationId"] == first["violationId"]
    time.sleep(0.6)  # 50 is normal under the new criteria: no new alarm
    assert len(agent.events()) == 2
    assert agent.cli("list-active-violations")["activeViolations"] == []
    assert agent.stop() == 0


def test_notify_protocol_ready_watchdog_stopping(agent: Agent, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    agent.config.write_text(agent.config.read_text().replace("interval_s = 0.2", "interval_s = 5"))
    started = time.monotonic()
    agent.start({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    messages: list[tuple[float, str]] = []

    def read_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic() - started, sock.recv(4096).decode()))

    read_for(4.0)
    agent.signal(signal.SIGTERM)
    read_for(1.5)
    assert agent.process is not None and agent.process.wait(TIMEOUT_S) == 0
    sock.close()
    texts = [m for _, m in messages]
    assert "READY=1" in texts
    ready_at = texts.index("READY=1")
    pings = [t for t, m in messages[ready_at:] if m == "WATCHDOG=1"]
    # WATCHDOG_USEC=1 s: pinged at least every half second although cycles are 5 s apart.
    assert len(pings) >= 5
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0
    assert texts[-1] == "STOPPING=1"


def test_wall_clock_jumps_neither_stall_nor_burst(agent: Agent, tmp_path: Path) -> None:
    lib = next((p for p in FAKETIME_LIBS if p.exists()), None)
    if lib is None:
        pytest.skip("libfaketime is not installed (apt-get install libfaketime)")
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    agent.start(
        {
            "LD_PRELOAD": str(lib),
            "FAKETIME_TIMESTAMP_FILE": str(clock),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    )
    wait_until(lambda: agent.status().get("samples", 0) >= 1, "the first sample")

    def samples_during(seconds: float) -> int:
        before = agent.status()["samples"]
        time.sleep(seconds)
        return agent.status()["samples"] - before

    steady = samples_during(2.0)
    clock.write_text("-1h\n")  # NTP steps the clock back an hour
    after_back = samples_during(2.0)
    clock.write_text("+1d\n")  # and then forward a day
    after_forward = samples_during(2.0)
    # 0.2 s interval: about 10 samples per 2 s whatever the wall clock does.
    for count in (steady, after_back, after_forward):
        assert 6 <= count <= 13, (steady, after_back, after_forward)
    assert agent.stop() == 0
    times = [r["timestamp"] for r in agent.history()]
    assert times == sorted(times), "the rule core's time went back"


def test_reports_and_violations_reach_a_mutual_tls_broker(
    tmp_path: Path, broker: Broker, mqtt_client: Callable[..., MqttTestClient]
) -> None:
    agent = Agent(tmp_path, extra=mqtt_block(broker) + "short_names = true\n")
    agent.config.write_text(
        agent.config.read_text().replace(
            "interval_s = 0.2", "interval_s = 0.2\nreport_interval_s = 1"
        )
    )
    watcher = mqtt_client("watcher")
    metrics_topic = f"$aws/things/{THING}/defender/metrics/json"
    violations_topic = f"things/{THING}/defender/violations"
    watcher.subscribe(metrics_topic, violations_topic)
    try:
        agent.start()
        wait_until(lambda: agent.status().get("broker", {}).get("connected"), "a connection")
        agent.set_level(50)
        wait_until(
            lambda: any(t == violations_topic for t, _ in watcher.messages), "a violation event"
        )
        agent.set_level(5)
        wait_until(
            lambda: sum(t == violations_topic for t, _ in watcher.messages) >= 2, "the clear"
        )
        wait_until(lambda: sum(t == metrics_topic for t, _ in watcher.messages) >= 2, "reports")
        assert agent.stop() == 0
    finally:
        agent.kill()
    reports = [decode(p, "json") for t, p in watcher.messages if t == metrics_topic]
    ids = [r["hed"]["rid"] for r in reports]
    assert ids == sorted(set(ids))
    assert all(r["hed"]["v"] == "1.0" and "met" in r for r in reports)
    assert all("level" in r["cmet"] for r in reports)
    events = [decode(p, "json") for t, p in watcher.messages if t == violations_topic]
    assert [e["violationEventType"] for e in events[:2]] == ["in-alarm", "alarm-cleared"]
    assert events[0]["violationId"] == events[1]["violationId"]
    assert events[0]["thingName"] == THING
    assert events[0]["metricValue"] == {"number": 50}


def test_a_window_closes_when_the_clock_passes_its_end_not_at_the_next_sample(
    agent: Agent,
) -> None:
    doc = profile()
    doc["behaviors"][0]["criteria"]["durationSeconds"] = 1
    agent.set_profile(doc)
    agent.set_level(50)
    agent.config.write_text(agent.config.read_text().replace("interval_s = 0.2", "interval_s = 4"))
    agent.start()
    wait_until(lambda: agent.status().get("samples"), "the first sample")
    event = wait_until(lambda: agent.events(), "the window's datapoint", timeout_s=3.0)[0]
    # Judged by the clock within the 4 s between the first two samples.
    assert agent.status()["samples"] == 1
    assert event["violationEventType"] == "in-alarm"
    assert event["violationEventTime"] == int(event["violationEventTime"])  # a window end
    assert agent.stop() == 0


def test_a_key_others_can_read_stops_the_start_with_one_line(tmp_path: Path, pki: Pki) -> None:
    key = tmp_path / "device.key"
    key.write_bytes(pki.client_key.read_bytes())
    key.chmod(0o644)
    agent = Agent(
        tmp_path,
        extra=f"""
[mqtt]
endpoint = "127.0.0.1"
ca_file = "{pki.ca_cert}"
cert_file = "{pki.client_cert}"
key_file = "{key}"
""",
    )
    agent.start()
    assert agent.process is not None
    assert agent.process.wait(TIMEOUT_S) == 1
    errors = [line for line in agent.log_text().splitlines() if "start_failed" in line]
    assert len(errors) == 1
    assert f"{key}: mode 0644 lets group or others in" in errors[0]
    assert not (agent.state / "agent.db").exists()  # refused before touching the store


def test_replaying_the_exported_history_gives_the_daemons_events(agent: Agent) -> None:
    """Same config, same events: replay reads [detect] from --config and the history
    holds the whole sample. The window behavior closes on the clock in the daemon and
    on the next sample in replay; both time it at the window's end."""
    doc = profile()
    doc["behaviors"].append(
        {
            "name": "level-sum",
            "metric": "level",
            "criteria": {
                "comparisonOperator": "less-than",
                "value": {"number": 1},
                "durationSeconds": 1,
                "consecutiveDatapointsToAlarm": 2,
            },
        }
    )
    agent.set_profile(doc)
    agent.start()
    wait_until(lambda: agent.status().get("samples", 0) >= 3, "samples")
    agent.set_level(50)
    wait_until(lambda: len(agent.events()) >= 2, "both alarms")
    agent.set_level(0)
    wait_until(lambda: len(agent.events()) >= 4, "both clears")
    # A few samples more, so that replay too sees the clock pass the last window.
    seen = agent.status()["samples"]
    wait_until(lambda: agent.status()["samples"] >= seen + 3, "three more samples")
    assert agent.stop() == 0
    live = agent.events()
    history = agent.tmp / "history.jsonl"
    history.write_bytes(
        agent._run("export-metrics", "--start-time", "0", "--end-time", "4000000000")
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "replay",
            "--profile",
            str(agent.profile),
            "--metrics",
            str(history),
            "--config",
            str(agent.config),
        ],
        capture_output=True,
        check=True,
        timeout=TIMEOUT_S,
    ).stdout
    replayed = [json.loads(line) for line in out.splitlines() if line.strip()]

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return (
            e["violationEventTime"],
            e["behavior"]["name"],
            e["violationEventType"],
            json.dumps(e["metricValue"]),
            e["thingName"],
        )

    # Events of the run's last windows, still open at the end of the export, are the
    # daemon's alone when the clock closed them after the last sample.
    assert [key(e) for e in replayed] == [key(e) for e in live][: len(replayed)]
    assert len(replayed) >= 4


def test_the_connection_past_the_reports_cut_is_judged(tmp_path: Path) -> None:
    """max_list = 1 cuts the wire report to one connection; the rule core still sees
    the one to 127.0.0.2 among 40 to 127.0.0.1."""
    forbidden = {
        "securityProfileName": "c2",
        "behaviors": [
            {
                "name": "no-c2",
                "metric": "aws:destination-ip-addresses",
                "criteria": {
                    "comparisonOperator": "not-in-cidr-set",
                    "value": {"cidrs": ["127.0.0.2/32"]},
                },
            }
        ],
    }
    agent = Agent(tmp_path, extra="")
    agent.set_profile(forbidden)
    text = agent.config.read_text().replace("[sampling]\n", "[sampling]\nmax_list = 1\n")
    agent.config.write_text(text)
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    server2 = socket.create_server(("127.0.0.2", 0))
    clients: list[socket.socket] = []
    try:
        for _ in range(40):
            clients.append(socket.create_connection(server.getsockname()))
        clients.append(socket.create_connection(server2.getsockname()))
        agent.start()
        wait_until(lambda: agent.status().get("samples", 0) >= 1, "the first sample")
        events = wait_until(lambda: agent.events(), "the C2 alarm")
        assert events[0]["behavior"]["name"] == "no-c2"
        assert "127.0.0.2" in events[0]["metricValue"]["cidrs"]
        assert agent.stop() == 0
    finally:
        agent.kill()
        for c in clients:
            c.close()
        server.close()
        server2.close()


def test_the_state_dir_deleted_while_running_loses_no_later_event(agent: Agent) -> None:
    agent.start()
    wait_until(lambda: agent.status().get("samples", 0) >= 2, "the first samples")
    import shutil

    shutil.rmtree(agent.state)
    agent.set_level(50)
    events = wait_until(
        lambda: (agent.state / "agent.db").exists() and agent.events(), "the alarm, stored anew"
    )
    assert [e["violationEventType"] for e in events] == ["in-alarm"]
    assert agent.process is not None and agent.process.poll() is None
    assert "degraded part=store" in agent.log_text()
    assert agent.stop() == 0


def test_a_refused_reload_is_in_the_status_verdict(agent: Agent) -> None:
    agent.start()
    wait_until(lambda: agent.status().get("samples", 0) >= 1, "the first sample")
    agent.set_profile({"securityProfileName": "test-profile", "behaviors": [{"metric": "x"}]})
    agent.signal(signal.SIGHUP)
    verdict = wait_until(lambda: agent.status().get("reload"), "a reload verdict")
    assert verdict["ok"] is False and "name" in verdict["error"]
    agent.set_profile(profile())
    agent.signal(signal.SIGHUP)
    wait_until(lambda: agent.status()["reload"]["at"] > verdict["at"], "a second verdict")
    assert agent.status()["reload"] == {**agent.status()["reload"], "ok": True, "error": None}
    assert agent.stop() == 0


def test_a_terminal_gets_a_live_status_line(agent: Agent) -> None:
    """Run from a terminal, the agent redraws one line per cycle on stdout."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(agent.config)],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
    )
    os.close(terminal)
    try:
        seen = b""
        deadline = time.monotonic() + TIMEOUT_S
        while seen.count(b"\r\x1b[K") < 3 and time.monotonic() < deadline:
            seen += os.read(controller, 4096)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT_S)
        os.close(controller)
    line = seen.split(b"\r\x1b[K")[-1].decode()
    assert line.startswith("samples ") and "connections " in line and "alarms 0" in line


def test_a_full_disk_degrades_the_agent_and_loses_no_event(tmp_path: Path) -> None:
    """The state dir on a 4 MiB tmpfs filled to the last byte: the alarm waits in memory,
    the agent says why and goes on, and once there is room the event is stored."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    agent = Agent(tmp_path)
    agent.state = mnt / "state"
    agent.config.write_text(
        agent.config.read_text().replace(str(tmp_path / "state"), str(agent.state))
    )
    filler = mnt / "filler"
    try:
        agent.start()
        wait_until(lambda: agent.status().get("samples", 0) >= 2, "the first samples")
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # until the file system is full to the last block
                f.write(b"\0" * 4096)
        agent.set_level(50)
        wait_until(lambda: "disk full" in agent.log_text(), "the store's complaint")
        time.sleep(1.0)
        assert agent.process is not None and agent.process.poll() is None
        assert "Traceback" not in agent.log_text()
        filler.unlink()
        events = wait_until(lambda: agent.events(), "the alarm, stored once there is room")
        assert [e["violationEventType"] for e in events] == ["in-alarm"]
        assert "store_recovered" in agent.log_text()
        assert agent.stop() == 0
    finally:
        agent.kill()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_under_systemd_the_per_cycle_files_live_in_the_runtime_directory(
    agent: Agent, tmp_path: Path
) -> None:
    """status.json and the network counters are rewritten every cycle: on the
    RuntimeDirectory's tmpfs, not the SD card. `status` finds them through a link."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    agent.start(env={"RUNTIME_DIRECTORY": str(runtime)})
    wait_until(lambda: agent.status().get("samples", 0) >= 2, "samples")
    assert (runtime / "status.json").is_file()
    assert (runtime / "netcounters.json").is_file()
    assert (agent.state / "status.json").is_symlink()
    assert not (agent.state / "netcounters.json").exists()
    shown = agent.cli("status", "--output", "json")
    assert shown["running"] is True and shown["status"]["samples"] >= 2
    assert agent.stop() == 0


def test_a_scheduled_audits_findings_reach_the_broker(
    tmp_path: Path, broker: Broker, mqtt_client: Callable[..., MqttTestClient]
) -> None:
    agent = Agent(tmp_path, extra=mqtt_block(broker))
    check = "DEVICE_CERTIFICATE_EXPIRING_CHECK"  # the test certificates last two days
    create = ["create-scheduled-audit", "--config", str(agent.config)]
    create += ["--scheduled-audit-name", "daily", "--frequency", "DAILY"]
    assert main([*create, "--target-check-names", check]) == 0
    watcher = mqtt_client("watcher")
    topic = f"things/{THING}/defender/audit/findings"
    watcher.subscribe(topic)
    try:
        agent.start()
        wait_until(lambda: any(t == topic for t, _ in watcher.messages), "an audit finding")
        assert agent.stop() == 0
    finally:
        agent.kill()
    findings = [decode(p, "json") for t, p in watcher.messages if t == topic]
    assert {f["checkName"] for f in findings} == {check}
    assert {f["reasonForNonComplianceCode"] for f in findings} == {
        "CERTIFICATE_APPROACHING_EXPIRATION"
    }
    assert all(f["taskId"] == findings[0]["taskId"] for f in findings)


def test_with_mitigation_on_an_alarm_gets_its_automatic_response(tmp_path: Path) -> None:
    agent = Agent(
        tmp_path,
        extra="""
[mitigation]
enabled = true
dry_run = true
[[mitigation.auto]]
profile = "test-profile"
behavior = "level-high"
actions = ["run-hook"]
""",
    )
    hook = {"runHookParams": {"argv": ["/bin/true"], "timeoutSeconds": 5}}
    config = ["--config", str(agent.config)]
    create = ["create-mitigation-action", *config, "--action-name", "run-hook"]
    role = ["--role-arn", "arn:aws:iam::123456789012:role/device"]
    assert main([*create, *role, "--action-params", json.dumps(hook)]) == 0
    try:
        agent.start()
        status = wait_until(lambda: agent.status().get("mitigation"), "the mitigation status")
        assert status == {"auto_rules": 1, "dry_run": True, "rate_limited": 0}
        agent.set_level(50)

        def executions() -> list[dict[str, Any]]:
            span = ["--start-time", "0", "--end-time", str(time.time() + 60)]
            verb = ["list-detect-mitigation-actions-executions", *config, *span]
            out = subprocess.run(
                [sys.executable, "-m", "agent", *verb],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            done = json.loads(out)["actionsExecutions"]
            return [e for e in done if e["status"] != "PENDING"]

        (execution,) = wait_until(executions, "the automatic response")
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert execution["taskId"] == f"auto-{execution['violationId']}"
    assert (execution["status"], execution["message"]) == (
        "SUCCESSFUL",
        "dry run: would run /bin/true",
    )

"""The device under test: the real agent, driven the same way wherever it runs.

- NetnsDut: `python -m agent run` from this checkout's venv in the lab's dut namespace;
  its config, state and log in work/dut.
- NspawnDut: the agent installed as a user would (wheels, a venv in /opt/edge-defender,
  `edge-defender install-service`) in a Debian rootfs booted with systemd in the dut
  namespace (hw/machine.py); the hardened unit as installed.
- SshDut: a device that already runs the agent as its service, over SSH.

Each scenario calls start() with its profiles: the config is rewritten, the agent's
state cleared (a fresh store) and its firewall table deleted (no block of an earlier
scenario stays), the scenario's mitigation actions created with the agent's own
create-mitigation-action, its ML models trained with the agent's own `train --from` on
synthetic history (hw/ml_rig.py), and the agent restarted; events() and metrics() read its store
with its own CLI (list-violation-events, export-metrics), on the device.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from hw.lab import BrokerInfo, Lab, Node, NodeCommandError, stop_processes
from hw.machine import CONFIG, PROGRAM, REPO, Machine, build_rootfs, build_wheels
from hw.ml_rig import synthetic_export

# The agent's nftables table (agent/collect/firewall.py): deleted before each start.
FIREWALL_TABLE = ("inet", "edge_defender")
# Stored by create-mitigation-action and never used on the device (docs/mitigation.md).
ROLE_ARN = "arn:aws:iam::123456789012:role/device"
READY_TIMEOUT_S = 30.0  # plus one sampling interval: the first sample and the connection
METRICS_FLUSH_S = 5.0  # [store] metrics_flush_s: the history is readable soon
REPORT_INTERVAL_S = 10.0  # [sampling] report_interval_s: reports flow during a short run
FAR_FUTURE = "4102444800"  # 2100-01-01, the end of every query's time range
LOG_LINES = 40


@dataclass(frozen=True)
class AgentSetup:
    profiles: list[dict[str, Any]]  # security profiles, describe-security-profile JSON
    interval_s: float  # [sampling] interval_s
    custom_metrics: list[dict[str, Any]] = field(default_factory=list)  # [[custom_metrics]]
    thing_name: str = "rig-dut"
    capture: dict[str, Any] | None = None  # the [capture] table (None: the agent's default, off)
    # TOPIC_FILTER dimensions the profiles name, describe-dimension JSON: written beside
    # the profiles, where the agent's [detect] profiles glob loads them too.
    dimensions: list[dict[str, Any]] = field(default_factory=list)
    mitigation: dict[str, Any] | None = None  # the [mitigation] table (None: the default, off)
    # [{"name", "actionParams"}]: created with create-mitigation-action before the start
    mitigation_actions: list[dict[str, Any]] = field(default_factory=list)
    # [{"metric", "per_s" or "value", "window_s"}]: models trained with `train --from`
    # before the start
    ml_training: list[dict[str, Any]] = field(default_factory=list)


class Dut(Protocol):
    kind: str  # "netns", "nspawn", "ssh"
    node: Node  # commands run on the device
    tls_files: tuple[str, str, str]  # (ca, cert, key) paths as seen on the device

    def start(self, setup: AgentSetup) -> None:
        """Write the config (broker = lab broker, mutual TLS; metrics_flush_s small) and the
        profiles, clear the agent's state, (re)start the agent and return once its status
        file shows the first sample and the broker connected. Raises RuntimeError with the
        agent's log tail if it does not."""
        ...

    def stop(self) -> None:
        """Stop the agent; its store stays readable."""
        ...

    def events(self) -> list[dict[str, Any]]:
        """All violation events in the store, every page, in AWS's shape."""
        ...

    def metrics(self) -> list[dict[str, Any]]:
        """The metrics history: `edge-defender export-metrics` lines, parsed."""
        ...

    def executions(self) -> list[dict[str, Any]]:
        """Every mitigation action execution in the store, every page, in AWS's shape."""
        ...

    def clock_offset_s(self) -> float:
        """The device clock minus the rig's; 0.0 when they share one."""
        ...

    def close(self) -> None:
        """Everything the DUT made goes."""
        ...


# -- what every kind shares: the config, the store queries, the wait for readiness ------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise ValueError(f"{value!r} has no TOML form here (bool, string, number, list)")


def _tables(value: Any) -> bool:
    """Whether `value` is a non-empty list of tables (TOML's [[array of tables]])."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def toml_table(name: str, table: Mapping[str, Any], *, header: str | None = None) -> list[str]:
    """The lines of `[name]` holding `table`: its values, then its sub-tables as
    `[name.key]` (nested tables that hold only tables are written the same way), then its
    lists of tables as `[[name.key]]` entries. `header` replaces the `[name]` line."""
    lines = [header or f"[{name}]"]
    lines += [
        f"{k} = {_toml(v)}"
        for k, v in table.items()
        if not isinstance(v, Mapping) and not _tables(v)
    ]
    for k, v in table.items():
        if isinstance(v, Mapping):
            lines += toml_table(f"{name}.{k}", v)
    for k, v in table.items():
        if _tables(v):
            for entry in v:
                lines += toml_table(f"{name}.{k}", entry, header=f"[[{name}.{k}]]")
    return lines


def write_detect_files(setup: AgentSetup, put: Callable[[str, bytes], object]) -> None:
    """The profiles and dimensions as the files the agent's profiles glob loads."""
    for i, profile in enumerate(setup.profiles):
        put(f"profile-{i}.json", json.dumps(profile).encode())
    for i, dimension in enumerate(setup.dimensions):
        put(f"dimension-{i}.json", json.dumps(dimension).encode())


def config_text(
    setup: AgentSetup,
    *,
    state_dir: str,
    profiles_dir: str,
    broker: tuple[str, int] | None,
    tls_files: tuple[str, str, str],
) -> str:
    """The agent's config.toml for one scenario; `broker` (host, port) None: no MQTT."""
    lines = [
        f"thing_name = {_toml(setup.thing_name)}",
        f"state_dir = {_toml(state_dir)}",
        "[sampling]",
        f"interval_s = {_toml(float(setup.interval_s))}",
        f"report_interval_s = {_toml(REPORT_INTERVAL_S)}",
        "[detect]",
        f"profiles = {_toml([f'{profiles_dir}/*.json'])}",
        "builtin_profile = false  # only the scenario's profiles judge",
        "[store]",
        f"metrics_flush_s = {_toml(METRICS_FLUSH_S)}",
    ]
    if broker is not None:
        ca, cert, key = tls_files
        lines += [
            "[mqtt]",
            f"endpoint = {_toml(broker[0])}",
            f"port = {broker[1]}",
            f"ca_file = {_toml(ca)}",
            f"cert_file = {_toml(cert)}",
            f"key_file = {_toml(key)}",
            'format = "json"',
        ]
    for metric in setup.custom_metrics:
        lines.append("[[custom_metrics]]")
        lines += [f"{k} = {_toml(v)}" for k, v in metric.items()]
    if setup.capture is not None:
        lines += toml_table("capture", setup.capture)
    if setup.mitigation is not None:
        lines += toml_table("mitigation", setup.mitigation)
    return "\n".join(lines) + "\n"


def prepare_mitigation(
    node: Node, program: Sequence[str], config: str, setup: AgentSetup, kind: str
) -> None:
    """Before the agent starts: delete its firewall table (an earlier scenario's blocks
    must not outlive it; no error when there is none, or no nft) and, for a scenario
    with mitigation, check that the device has nft and create its actions with the
    agent's own verb. RuntimeError naming what is missing or which action was refused."""
    family, table = FIREWALL_TABLE
    script = 'command -v nft >/dev/null || exit 0; nft delete table "$1" "$2" 2>/dev/null; exit 0'
    node.exec(["sh", "-c", script, "sh", family, table])
    if setup.mitigation is None:
        return
    if node.exec(["sh", "-c", "command -v nft"], check=False).returncode != 0:
        hint = (
            "add nftables to the rootfs packages (scripts/rootfs.sh)"
            if kind == "nspawn"
            else "apt install nftables"
        )
        raise RuntimeError(f"the device ({kind}) has no nft, which mitigation needs: {hint}")
    for action in setup.mitigation_actions:
        argv = [*program, "create-mitigation-action", "--config", config]
        argv += ["--action-name", action["name"], "--role-arn", ROLE_ARN]
        argv += ["--action-params", json.dumps(action["actionParams"])]
        try:
            node.exec(argv)
        except NodeCommandError as e:
            raise RuntimeError(
                f"the device ({kind}) refused mitigation action {action['name']!r}: {e}"
            ) from None


def prepare_ml(
    node: Node,
    program: Sequence[str],
    config: str,
    setup: AgentSetup,
    put: Callable[[str, bytes], str],
    now: float,
) -> None:
    """Before the agent starts (its store cleared): each [ml_training] table's synthetic
    export written with `put` (a file name -> its path on the device) and trained on
    with the agent's own `train --from`, as of `now` on the device's clock. RuntimeError
    naming the metric when the device refuses."""
    for training in setup.ml_training:
        metric = training["metric"]
        path = put(f"ml-{metric.replace(':', '-')}.jsonl", synthetic_export(training, now))
        argv = [*program, "train", "--config", config, "--from", path, "--metric", metric]
        argv += ["--window-s", str(training["window_s"]), "--no-reload"]
        try:
            node.exec(argv)
        except NodeCommandError as e:
            raise RuntimeError(f"the device did not train a model of {metric}: {e}") from None


def read_events(node: Node, program: Sequence[str], config: str) -> list[dict[str, Any]]:
    """Every violation event of the agent's store, following the nextTokens."""
    found: list[dict[str, Any]] = []
    token: list[str] = []
    while True:
        argv = [*program, "list-violation-events", "--config", config, "--output", "json"]
        argv += ["--start-time", "0", "--end-time", FAR_FUTURE, *token]
        page = json.loads(node.exec(argv).stdout)
        found += page["violationEvents"]
        if "nextToken" not in page:
            return found
        token = ["--next-token", page["nextToken"]]


def read_executions(node: Node, program: Sequence[str], config: str) -> list[dict[str, Any]]:
    """Every mitigation action execution of the agent's store, following the nextTokens."""
    found: list[dict[str, Any]] = []
    token: list[str] = []
    while True:
        argv = [*program, "list-detect-mitigation-actions-executions", "--config", config]
        argv += ["--start-time", "0", "--end-time", FAR_FUTURE, "--max-results", "250", *token]
        page = json.loads(node.exec(argv).stdout)
        found += page["actionsExecutions"]
        if "nextToken" not in page:
            return found
        token = ["--next-token", page["nextToken"]]


def read_blocked(node: Node) -> list[str]:
    """The addresses and CIDRs in the agent's blocked sets in the device's kernel now
    (`nft -j`); none when there is no table (or no nft)."""
    family, table = FIREWALL_TABLE
    found: list[str] = []
    for name in ("blocked_v4", "blocked_v6"):
        done = node.exec(["nft", "-j", "list", "set", family, table, name], check=False)
        if done.returncode != 0:
            continue
        for item in json.loads(done.stdout)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                value = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
                if isinstance(value, dict) and "prefix" in value:
                    value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
                found.append(str(value))
    return found


def read_metrics(node: Node, program: Sequence[str], config: str) -> list[dict[str, Any]]:
    argv = [*program, "export-metrics", "--config", config]
    out = node.exec([*argv, "--start-time", "0", "--end-time", FAR_FUTURE]).stdout
    return [json.loads(line) for line in out.splitlines()]


def read_status(node: Node, state_dir: str) -> dict[str, Any] | None:
    """The agent's status file, or None while there is none (or it is being replaced)."""
    done = node.exec(["cat", f"{state_dir}/status.json"], check=False)
    try:
        status = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


def _connected(status: dict[str, Any]) -> bool:
    return bool(status.get("broker", {}).get("connected"))


def wait_ready(
    kind: str,
    status: Callable[[], dict[str, Any] | None],
    *,
    interval_s: float,
    broker: bool,
    alive: Callable[[], bool],
    log_tail: Callable[[], str],
) -> None:
    """Until the status shows a sample (and the broker connected, when there is one);
    RuntimeError with the log tail when the agent stops or the time is up."""
    deadline = time.monotonic() + READY_TIMEOUT_S + interval_s
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline and alive():
        last = status()
        if last and last.get("samples", 0) >= 1 and (not broker or _connected(last)):
            return
        time.sleep(0.1)
    want = "a sample and the broker connected" if broker else "a sample"
    raise RuntimeError(
        f"the agent ({kind}) did not start: wanted {want}, status {json.dumps(last)}\n{log_tail()}"
    )


def _put(node: Node, path: str, data: bytes, *, mode: str, owner: str | None) -> None:
    """Write a file on the node atomically (its directory made when missing)."""
    script = (
        'set -e; mkdir -p "$(dirname "$1")"; cat > "$1.tmp"; chmod "$2" "$1.tmp"; '
        '[ -z "$3" ] || chown "$3" "$1.tmp"; mv "$1.tmp" "$1"'
    )
    node.exec(["sh", "-c", script, "sh", path, mode, owner or ""], stdin=data)


def _clear(node: Node, *dirs: str) -> None:
    """Empty the directories that exist (the agent's store and runtime files)."""
    script = 'for d; do if [ -d "$d" ]; then find "$d" -mindepth 1 -delete; fi; done'
    node.exec(["sh", "-c", script, "sh", *dirs])


# -- the agent in a namespace ------------------------------------------------------------


class NetnsDut:
    """`python -m agent run` (this checkout, the rig's Python) in the lab's dut namespace,
    as root, with RUNTIME_DIRECTORY on a private directory as under the unit. Its config,
    profiles, state and log are in work/dut."""

    kind = "netns"

    def __init__(self, lab: Lab, work: Path) -> None:
        self.node = lab.nodes["dut"]
        self.dir = work / "dut"
        self.config = self.dir / "config.toml"
        self.state = self.dir / "state"
        self.runtime = self.dir / "runtime"
        self.profiles = self.dir / "profiles"
        self.log = self.dir / "agent.log"
        self.program = ("env", f"PYTHONPATH={REPO}", sys.executable, "-m", "agent")
        b = lab.broker
        self.broker = b
        self.tls_files = (str(b.ca_file), str(b.device_cert), str(b.device_key))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, setup: AgentSetup) -> None:
        self.stop()
        for d in (self.state, self.runtime, self.profiles):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        write_detect_files(setup, lambda name, data: (self.profiles / name).write_bytes(data))
        self.config.write_text(
            config_text(
                setup,
                state_dir=str(self.state),
                profiles_dir=str(self.profiles),
                broker=(self.broker.host, self.broker.port),
                tls_files=self.tls_files,
            )
        )
        self.config.chmod(0o600)  # the agent refuses a config others may write
        prepare_mitigation(self.node, self.program, str(self.config), setup, self.kind)

        def put(name: str, data: bytes) -> str:
            (self.dir / name).write_bytes(data)
            return str(self.dir / name)

        prepare_ml(self.node, self.program, str(self.config), setup, put, time.time())
        with self.log.open("ab") as log:
            self._process = self.node.spawn(
                [
                    *("env", f"RUNTIME_DIRECTORY={self.runtime}"),
                    *(*self.program, "run", "--config", str(self.config)),
                ],
                stdout=log,
                stderr=log,
            )
        process = self._process
        wait_ready(
            self.kind,
            lambda: read_status(self.node, str(self.state)),
            interval_s=setup.interval_s,
            broker=True,
            alive=lambda: process.poll() is None,
            log_tail=self._log_tail,
        )

    def _log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-LOG_LINES:])

    def stop(self) -> None:
        """SIGTERM (the agent flushes its history), SIGKILL if it hangs."""
        if self._process is not None:
            stop_processes([self._process])
            self._process = None

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.node, self.program, str(self.config))

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.node, self.program, str(self.config))

    def executions(self) -> list[dict[str, Any]]:
        return read_executions(self.node, self.program, str(self.config))

    def clock_offset_s(self) -> float:
        return 0.0

    def close(self) -> None:
        self.stop()


# -- an installed agent, run by its service manager --------------------------------------


@dataclass(frozen=True)
class Service:
    """How an installed agent is driven on its device. The defaults are what
    `edge-defender install-service` sets up; a device that runs the agent otherwise (a
    test's agent under a plain sshd) says so here. Every command runs as the node's
    user, who must be root (or carry sudo in these commands)."""

    program: tuple[str, ...] = ("edge-defender",)  # the CLI, for the store queries
    config: str = CONFIG  # overwritten by start(); the rig's files go beside it in rig/
    state_dir: str = "/var/lib/edge-defender"
    runtime_dir: str = "/run/edge-defender"
    user: str | None = "edge-defender"  # the agent's user, who must own its key
    stop: tuple[str, ...] = ("systemctl", "stop", "edge-defender")
    restart: tuple[str, ...] = ("systemctl", "restart", "edge-defender")
    log: tuple[str, ...] = ("journalctl", "-u", "edge-defender", "-n", str(LOG_LINES), "-o", "cat")

    @property
    def rig_dir(self) -> str:
        return str(PurePosixPath(self.config).parent / "rig")

    @property
    def tls_files(self) -> tuple[str, str, str]:
        return (
            f"{self.rig_dir}/ca.pem",
            f"{self.rig_dir}/device.pem",
            f"{self.rig_dir}/device.key",
        )


class ServiceDut:
    """start/stop/events/metrics of an agent run as a service on `node`. With a broker,
    start() also copies the broker's CA and the device's certificate and key to the
    device (Service.tls_files) and points [mqtt] at it."""

    kind = "service"

    def __init__(self, node: Node, service: Service, broker: BrokerInfo | None) -> None:
        self.node = node
        self.service = service
        self.broker = broker
        self.tls_files = service.tls_files

    def start(self, setup: AgentSetup) -> None:
        s, node = self.service, self.node
        node.exec(s.stop)
        _clear(node, s.state_dir, s.runtime_dir, f"{s.rig_dir}/profiles")
        readable = f"root:{s.user}" if s.user else None
        if self.broker is not None:
            b = self.broker
            ca, cert, key = s.tls_files
            _put(node, ca, b.ca_file.read_bytes(), mode="0640", owner=readable)
            _put(node, cert, b.device_cert.read_bytes(), mode="0640", owner=readable)
            owner = f"{s.user}:{s.user}" if s.user else None  # the agent refuses others' keys
            _put(node, key, b.device_key.read_bytes(), mode="0600", owner=owner)
        write_detect_files(
            setup,
            lambda name, data: _put(
                node, f"{s.rig_dir}/profiles/{name}", data, mode="0640", owner=readable
            ),
        )
        text = config_text(
            setup,
            state_dir=s.state_dir,
            profiles_dir=f"{s.rig_dir}/profiles",
            broker=None if self.broker is None else (self.broker.host, self.broker.port),
            tls_files=s.tls_files,
        )
        _put(node, s.config, text.encode(), mode="0640", owner=readable)
        prepare_mitigation(node, s.program, s.config, setup, self.kind)

        def put(name: str, data: bytes) -> str:
            _put(node, f"{s.rig_dir}/{name}", data, mode="0640", owner=readable)
            return f"{s.rig_dir}/{name}"

        now = time.time() + self.clock_offset_s()
        prepare_ml(node, s.program, s.config, setup, put, now)
        try:
            node.exec(s.restart)  # systemctl waits for READY (the first sample) or failure
        except NodeCommandError as e:
            raise RuntimeError(
                f"the agent ({self.kind}) did not start: {e}\n{self._log_tail()}"
            ) from None
        wait_ready(
            self.kind,
            lambda: read_status(node, s.state_dir),
            interval_s=setup.interval_s,
            broker=self.broker is not None,
            alive=lambda: True,
            log_tail=self._log_tail,
        )

    def _log_tail(self) -> str:
        return self.node.exec(self.service.log, check=False).stdout.decode(errors="replace")

    def stop(self) -> None:
        self.node.exec(self.service.stop)

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.node, self.service.program, self.service.config)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.node, self.service.program, self.service.config)

    def executions(self) -> list[dict[str, Any]]:
        return read_executions(self.node, self.service.program, self.service.config)

    def clock_offset_s(self) -> float:
        return 0.0

    def close(self) -> None:
        self.stop()


class NspawnDut(ServiceDut):
    """The agent installed as a user would in an overlay of the cached Debian rootfs
    (hw/machine.py), booted with systemd in the lab's dut namespace; its node enters the
    container (nsenter -a). The hardened unit runs as installed, started by start();
    `net_admin` installs it with `install-service --net-admin` (for mitigation)."""

    kind = "nspawn"

    def __init__(self, lab: Lab, work: Path, *, net_admin: bool = False) -> None:
        root = work / "nspawn"
        root.mkdir(parents=True)
        rootfs = build_rootfs()
        wheels = build_wheels(rootfs, root)
        (root / "machine").mkdir()
        self.machine = Machine(root / "machine", rootfs)
        try:
            self.machine.mount()
            self.machine.install(wheels)
            if net_admin:  # the CAP_NET_ADMIN drop-in, for the firewall's actions
                self.machine.chroot(PROGRAM, "install-service", "--net-admin")
            self.machine.boot(
                netns=lab.netns["dut"], capabilities=["CAP_NET_ADMIN"] if net_admin else []
            )
        except BaseException:
            self.machine.stop()
            raise
        node = Node("dut", lab.nodes["dut"].address, self.machine.enter, spawned=lab.spawned)
        super().__init__(node, Service(program=(PROGRAM,)), lab.broker)

    def close(self) -> None:
        """Power the container off and remove its overlay."""
        self.machine.stop()


def _ssh_prefix(target: str, work: Path, key: Path | None) -> tuple[str, tuple[str, ...]]:
    """The host of ssh://user@host[:port] (or user@host), and the ssh argv to reach it."""
    url = urllib.parse.urlsplit(target if "://" in target else f"ssh://{target}")
    if url.scheme != "ssh" or not url.hostname or not url.username:
        raise ValueError(f"--target: {target!r}: want ssh://user@host[:port]")
    return url.hostname, (
        *("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"),
        *("-o", f"UserKnownHostsFile={work / 'known_hosts'}"),
        *(("-i", str(key)) if key else ()),
        *("-p", str(url.port or 22), f"{url.username}@{url.hostname}"),
    )


class SshDut(ServiceDut):
    """A device that already runs the agent as its service, driven over SSH:
    `ssh -o BatchMode=yes ... user@host COMMAND` (the command joined with shlex.join).
    The user must be root. `via` runs the ssh client from a lab node; `broker` (None: the
    agent reports nowhere) has its files copied to the device; `service` says how the
    agent is run there (default: as install-service set it up). start() overwrites the
    device's config.toml; close() stops the agent."""

    kind = "ssh"

    def __init__(
        self,
        target: str,
        work: Path,
        *,
        via: Node | None = None,
        key: Path | None = None,
        broker: BrokerInfo | None = None,
        service: Service = Service(),  # frozen: one shared default is safe
    ) -> None:
        host, ssh = _ssh_prefix(target, work, key)
        prefix = (*(via.prefix if via else ()), *ssh)
        node = Node("dut", host, prefix, remote=True, spawned=via.spawned if via else None)
        super().__init__(node, service, broker)

    def clock_offset_s(self) -> float:
        """The device's clock minus the rig's, against the middle of one round trip."""
        before = time.time()
        device = float(self.node.exec(["date", "+%s.%N"]).stdout)
        return device - (before + time.time()) / 2


def make_dut(kind: str, lab: Lab, work: Path, *, net_admin: bool = False) -> Dut:
    """The DUT of `--dut KIND` in the lab; `net_admin`: a scenario blocks traffic (the
    netns agent runs as root and has it anyway)."""
    if kind == "netns":
        return NetnsDut(lab, work)
    if kind == "nspawn":
        return NspawnDut(lab, work, net_admin=net_admin)
    raise ValueError(f"--dut: {kind!r}: want netns or nspawn")

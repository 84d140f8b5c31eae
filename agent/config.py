"""The TOML configuration: one dataclass per block, checked key by key (type, range,
AWS's rules for names and topics) so that an error names the file, the key path and
what would be right. Whatever the file holds, loading it returns a Config `run` can
use or raises ConfigError, nothing else."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import reprlib
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

DEFAULT_CONFIG_PATH = Path("/etc/edge-defender/config.toml")
_N = TypeVar("_N", int, float)


def writable_by_others(path: str | Path) -> str | None:
    """Why a file the agent takes orders from (config, profiles) is unsafe: anyone who
    can write it can blind the agent. None when only its owner may write it."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o022:
        return f"mode {mode:04o} lets group or others write it (chmod go-w {path})"
    return None


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and key path."""


SERVICE_STATE_DIR = Path("/var/lib/edge-defender")
SERVICE_USER = "edge-defender"  # the unit's User=, made by sysusers.d
MAX_CONFIG_BYTES = 1024 * 1024
MAX_STRING_CHARS = 4096  # PATH_MAX: no key needs more
MAX_LIST_ITEMS = 1000
DAY_S = 86400.0
# The cycle waits for each custom metric command in turn: together, commands that hang
# must not starve the unit's 60 s watchdog (the cycle feeds it).
COMMANDS_BUDGET_S = 30.0
MAX_DURATION_S = 10 * 365 * DAY_S
# AWS IoT thing names and custom metric names (CreateThing, CreateCustomMetric).
_AWS_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_ENDPOINT = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = _shown.maxlong = 60
_shown.maxlevel = 2


def _default_state_dir() -> str:
    """Where the agent keeps its state when the config does not say:

    1. `$STATE_DIRECTORY` when set (systemd sets it for the unit's StateDirectory=);
    2. the service's /var/lib/edge-defender for root, or for a user who can read that
       directory (the service user running `status`, `list-*`);
    3. otherwise `$XDG_STATE_HOME/edge-defender` (~/.local/state/edge-defender): a
       user's own agent, run outside the service.
    """
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"]
    if os.geteuid() == 0 or os.access(SERVICE_STATE_DIR, os.R_OK | os.X_OK, effective_ids=True):
        return str(SERVICE_STATE_DIR)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "edge-defender")


def _short_host_name() -> str:
    # A thing name holds no dots: the host name up to the first one, as `hostname -s`.
    return socket.gethostname().partition(".")[0]


@dataclass(frozen=True)
class Range:
    """The values a number key may take; NaN and infinities are in no range."""

    low: float
    high: float
    low_open: bool = False  # `low` itself is outside

    def problem(self, value: float) -> str | None:
        finite = not isinstance(value, float) or math.isfinite(value)
        above = value > self.low if self.low_open else value >= self.low
        if finite and above and value <= self.high:
            return None
        return f"must be {self}, got {_shown.repr(value)}"

    def __str__(self) -> str:
        if isinstance(self.low, int) and isinstance(self.high, int) and not self.low_open:
            return f"{self.low}-{self.high}"
        if self.low_open:
            low = "positive" if self.low == 0 else f"more than {self.low:.15g}"
        else:
            low = f"at least {self.low:.15g}"
        return f"{low} and at most {self.high:.15g}"


def _ranged(default: _N, low: float, high: float, *, low_open: bool = False) -> _N:
    """A number field whose configured value must lie in the range."""
    return field(default=default, metadata={"range": Range(low, high, low_open)})


@dataclass(frozen=True)
class CustomMetricConfig:
    name: str
    type: Literal["number", "number-list", "string-list", "ip-address-list"]
    # Built-in sources, or "command" (argv, no shell) / "file" (read `path`).
    source: Literal[
        "cpu_percent",
        "memory_percent",
        "disk_percent",
        "process_count",
        "soc_temperature",
        "command",
        "file",
    ]
    path: str | None = None
    command: list[str] | None = None
    timeout_s: float = _ranged(5.0, 0, COMMANDS_BUDGET_S, low_open=True)


@dataclass(frozen=True)
class SamplingConfig:
    interval_s: float = _ranged(10.0, 0.1, DAY_S)
    report_interval_s: float = _ranged(300.0, 1, DAY_S)
    # Ports and connections listed per report; totals stay exact.
    max_list: int = _ranged(100, 0, 10000)
    interfaces_include: list[str] = field(default_factory=list)  # empty: all but loopback
    interfaces_exclude: list[str] = field(default_factory=list)
    socket_source: Literal["auto", "netlink", "proc"] = "auto"


@dataclass(frozen=True)
class MqttConfig:
    endpoint: str | None = None
    port: int = _ranged(8883, 1, 65535)
    client_id: str | None = None
    tls: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    format: Literal["json", "cbor"] = "cbor"
    short_names: bool = True
    # At least one report of the largest size (128 KiB).
    spool_max_bytes: int = _ranged(16 * 1024 * 1024, 128 * 1024, 4 * 1024**3)
    keep_alive_s: int = _ranged(60, 0, 65535)


@dataclass(frozen=True)
class DetectConfig:
    profiles: list[str] = field(default_factory=lambda: ["/etc/edge-defender/profiles/*.json"])
    # Judge with the built-in default profile when no file matches `profiles`.
    builtin_profile: bool = True
    violations_topic: str = "things/{thing_name}/defender/violations"
    stale_after_s: float = _ranged(172800.0, 1, MAX_DURATION_S)
    baseline_s: float = _ranged(14 * DAY_S, 1, MAX_DURATION_S)
    min_baseline_datapoints: int = _ranged(30, 1, 1_000_000)


@dataclass(frozen=True)
class StoreConfig:
    # 0 keeps none.
    retention_days: float = _ranged(30.0, 0, 36500)
    metrics_retention_days: float = _ranged(15.0, 0, 36500)  # ML Detect trains on 14 whole days
    # The metrics history is also kept under this many bytes, oldest dropped first.
    metrics_max_bytes: int = _ranged(64 * 1024 * 1024, 1024 * 1024, 1 << 40)
    # Metrics history is written in batches this far apart (a power cut loses at most
    # one batch); events and alarms are written at once regardless.
    metrics_flush_s: float = _ranged(300.0, 1, 3600)


@dataclass(frozen=True)
class ScanCaptureConfig:
    enabled: bool = True
    sources_metric: str = "scan_sources"  # ip-address-list: sources flagged as scanning
    count_metric: str = "num_scan_sources"  # number: how many
    # A flagged source stays listed this long after its last probe.
    hold_s: float = _ranged(300.0, 1, DAY_S)


@dataclass(frozen=True)
class DnsCaptureConfig:
    enabled: bool = True
    names_metric: str = "dns_names"  # string-list: names queried since the last sample
    resolvers_metric: str = "dns_resolvers"  # ip-address-list: servers they went to


@dataclass(frozen=True)
class ConnectionsCaptureConfig:
    enabled: bool = True
    count_metric: str = "num_connections_opened"  # number: TCP connections this host opened
    # Destinations it connects to at a regular interval (agent.core.periodic): a beacon's mark.
    periodic_metric: str = "periodic_destinations"  # ip-address-list: their addresses
    periodic_count_metric: str = "num_periodic_destinations"  # number: how many
    # The window its ML models start with: a beacon's connection every few minutes shows
    # over an hour of a quiet night, not over 5 minutes (docs/ml-model.md).
    ml_window_s: float = _ranged(3600.0, 1, DAY_S)


@dataclass(frozen=True)
class BrokerCaptureConfig:
    enabled: bool = False
    ports: list[int] = field(default_factory=lambda: [1883])  # plaintext MQTT listeners


@dataclass(frozen=True)
class CaptureConfig:
    """Packet capture (AF_PACKET, needs CAP_NET_RAW): off by default."""

    enabled: bool = False
    interfaces: list[str] = field(default_factory=list)  # empty: every interface
    scan: ScanCaptureConfig = field(default_factory=ScanCaptureConfig)
    dns: DnsCaptureConfig = field(default_factory=DnsCaptureConfig)
    connections: ConnectionsCaptureConfig = field(default_factory=ConnectionsCaptureConfig)
    broker: BrokerCaptureConfig = field(default_factory=BrokerCaptureConfig)

    def metric_names(self) -> dict[str, tuple[str, bool]]:
        """{config key path: (custom metric name, whether it is collected)} of the
        features that make custom metrics."""
        scan = self.enabled and self.scan.enabled
        dns = self.enabled and self.dns.enabled
        connections = self.enabled and self.connections.enabled
        return {
            "capture.scan.sources_metric": (self.scan.sources_metric, scan),
            "capture.scan.count_metric": (self.scan.count_metric, scan),
            "capture.dns.names_metric": (self.dns.names_metric, dns),
            "capture.dns.resolvers_metric": (self.dns.resolvers_metric, dns),
            "capture.connections.count_metric": (self.connections.count_metric, connections),
            "capture.connections.periodic_metric": (self.connections.periodic_metric, connections),
            "capture.connections.periodic_count_metric": (
                self.connections.periodic_count_metric,
                connections,
            ),
        }


@dataclass(frozen=True)
class AuditConfig:
    """Device-side Audit (docs/audit.md): the daemon runs the scheduled audits."""

    scheduled: bool = True  # run what create-scheduled-audit set up
    findings_topic: str = "things/{thing_name}/defender/audit/findings"
    crl_file: str | None = None  # for REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK
    gateway: bool = False  # the device forwards packets: ip_forward is expected


@dataclass(frozen=True)
class AutoResponseConfig:
    """Mitigation actions run when a behavior goes in alarm, undone when it ends."""

    profile: str  # security profile name
    behavior: str  # behavior name in it
    actions: list[str]  # 1-5 mitigation action names (create-mitigation-action)
    # Undo when the alarm ends, not only at the action's own timeout. Off by default: a
    # block that works ends its own alarm (the blocked connection goes), and undoing it
    # then lets a beacon that reconnects through again, once a cycle.
    undo_on_clear: bool = False


@dataclass(frozen=True)
class MitigationConfig:
    """Mitigation (docs/mitigation.md): only the daemon drives the firewall."""

    enabled: bool = False  # the daemon runs the tasks' executions
    # Never blocked, beside loopback and the broker's addresses: the management network.
    allow_cidrs: list[str] = field(default_factory=list)
    dry_run: bool = False  # automatic response records what it would do, does nothing
    max_auto_tasks_per_minute: int = _ranged(10, 1, 1000)
    auto: list[AutoResponseConfig] = field(default_factory=list)


@dataclass(frozen=True)
class ControlConfig:
    """Remote control (docs/control.md): requests over MQTT 5 and a named shadow."""

    enabled: bool = False
    # Requests come in on <prefix>/request; answers go to the request's response topic,
    # which must be under the prefix too (default <prefix>/response).
    topic_prefix: str = "things/{thing_name}/defender/control"
    # Follow the named shadow below: "auto" with AWS IoT Core only; "on" with a broker
    # that has a shadow service of its own.
    shadow: Literal["auto", "on", "off"] = "auto"
    shadow_name: str = "edge-defender"
    max_request_bytes: int = _ranged(65536, 256, 131072)  # AWS IoT's limit is 128 KiB
    max_requests_per_minute: int = _ranged(60, 1, 6000)
    journal_days: float = _ranged(90.0, 1, 3650)


@dataclass(frozen=True)
class Config:
    thing_name: str = field(default_factory=_short_host_name)
    state_dir: str = field(default_factory=_default_state_dir)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    custom_metrics: list[CustomMetricConfig] = field(default_factory=list)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    mitigation: MitigationConfig = field(default_factory=MitigationConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    config_file: str = "<built-in defaults>"  # where it was read from, for messages

    @property
    def remote_dir(self) -> Path:
        """Where remote control keeps the profiles, dimensions and settings it was sent:
        the service may write only its state directory."""
        return Path(self.state_dir) / "remote"

    @property
    def remote_settings_path(self) -> Path:
        """The settings remote control changed (REMOTE_SETTINGS), as JSON; beside
        remote_dir, whose *.json files are all profiles."""
        return Path(self.state_dir) / "remote-settings.json"

    @property
    def control_prefix(self) -> str:
        """`control.topic_prefix` with the thing name filled in."""
        return self.control.topic_prefix.replace("{thing_name}", self.thing_name)

    @property
    def profile_patterns(self) -> list[str]:
        """The profile files to load: `[detect] profiles`, then those sent by remote
        control (kept while control is off: they were installed on purpose)."""
        return [*self.detect.profiles, str(self.remote_dir / "*.json")]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list, each {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, str(tp)
    )


def _key_path(prefix: str, key: str) -> str:
    # Only unknown keys can be odd (quoted, control characters): keep messages one line.
    shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    if len(shown) > 64:  # a key of 5000 digits is bare TOML too
        shown = shown[:60] + "..."
    return f"{prefix}.{shown}" if prefix else shown


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, options[0], path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {_shown.repr(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {_shown.repr(value)}")
        if len(value) > MAX_LIST_ITEMS:
            raise ConfigError(f"{path}: must have at most {MAX_LIST_ITEMS} items, got {len(value)}")
        inner = typing.get_args(tp)[0]
        return [_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a table")
        return _build(tp, value, path)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path}: must be a number, got an integer too large") from None
    if (isinstance(value, bool) and tp is not bool) or not isinstance(value, tp):
        raise ConfigError(f"{path}: must be {_type_name(tp)}, got {_shown.repr(value)}")
    if tp is str:
        _check_string(value, path)
    return value


def _check_string(value: str, path: str) -> None:
    """What every string must be: no key needs a NUL (it ends a C string: a path, an
    argv, an MQTT string) or a lone surrogate (it cannot be encoded), or 4096 characters."""
    if len(value) > MAX_STRING_CHARS:
        raise ConfigError(
            f"{path}: must be at most {MAX_STRING_CHARS} characters, got {len(value)}"
        )
    bad = next((c for c in value if c == "\0" or "\ud800" <= c <= "\udfff"), None)
    if bad is not None:
        raise ConfigError(f"{path}: must not hold the character {bad!r}")


def _build(cls: Any, table: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "config_file"}
    kwargs = {}
    for key, value in table.items():
        path = _key_path(prefix, key)
        if key not in fields:
            raise ConfigError(f"{path}: unknown key")
        kwargs[key] = _convert(value, hints[key], path)
        allowed = fields[key].metadata.get("range")
        if allowed is not None and (problem := allowed.problem(kwargs[key])):
            raise ConfigError(f"{path}: {problem}")
    missing = [
        f.name
        for f in fields.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{missing[0]}: required key is missing")
    return cls(**kwargs)


def _check(cfg: Config) -> None:
    """The rules that span keys or need more than a type and a range."""
    if not _AWS_NAME.fullmatch(cfg.control.shadow_name) or len(cfg.control.shadow_name) > 64:
        raise ConfigError(
            "control.shadow_name: must be 1-64 of a-z A-Z 0-9 : _ - (an AWS IoT shadow"
            f" name), got {_shown.repr(cfg.control.shadow_name)}"
        )
    if not _AWS_NAME.fullmatch(cfg.thing_name):
        raise ConfigError(
            f"thing_name: must be 1-128 of a-z A-Z 0-9 : _ - (an AWS IoT thing name; it goes"
            f" in MQTT topics), got {_shown.repr(cfg.thing_name)}"
        )
    if not cfg.state_dir:
        raise ConfigError("state_dir: must not be empty")
    m = cfg.mqtt
    if m.endpoint and not _ENDPOINT.fullmatch(m.endpoint):
        raise ConfigError(
            "mqtt.endpoint: must be a host name or IP address alone (no scheme, port or"
            f" path), such as xxxx-ats.iot.eu-west-1.amazonaws.com, got {_shown.repr(m.endpoint)}"
        )
    if m.client_id and (len(m.client_id.encode()) > 128 or not m.client_id.isprintable()):
        raise ConfigError(
            "mqtt.client_id: must be at most 128 bytes of printable characters,"
            f" got {_shown.repr(m.client_id)}"
        )
    for path, topic in (
        ("detect.violations_topic", cfg.detect.violations_topic),
        ("audit.findings_topic", cfg.audit.findings_topic),
        ("control.topic_prefix", cfg.control.topic_prefix + "/request"),
    ):
        problem = _topic_problem(topic.replace("{thing_name}", cfg.thing_name))
        if problem:
            raise ConfigError(f"{path}: {problem}, got {_shown.repr(topic)}")
    seen: set[str] = set()
    for i, metric in enumerate(cfg.custom_metrics):
        path = f"custom_metrics[{i}]"
        if not _AWS_NAME.fullmatch(metric.name) or metric.name.lower().startswith("aws:"):
            raise ConfigError(
                f"{path}.name: must be 1-128 of a-z A-Z 0-9 : _ - and not start with aws:"
                f" (an AWS custom metric name), got {_shown.repr(metric.name)}"
            )
        if metric.name in seen:
            raise ConfigError(f"{path}.name: duplicate custom metric {metric.name!r}")
        seen.add(metric.name)
        if metric.source == "command" and not (metric.command and metric.command[0]):
            raise ConfigError(f"{path}.command: source 'command' needs an argv list")
        if metric.source in ("file", "disk_percent") and not metric.path:
            raise ConfigError(f"{path}.path: source {metric.source!r} needs a path")
    _check_capture(cfg, seen)
    _check_mitigation(cfg.mitigation)
    waits = sum(m.timeout_s for m in cfg.custom_metrics if m.source == "command")
    if waits > COMMANDS_BUDGET_S:
        raise ConfigError(
            f"custom_metrics: the commands' timeout_s add up to {waits:g} s; at most"
            f" {COMMANDS_BUDGET_S:g} (a cycle waits for each in turn)"
        )


def _check_capture(cfg: Config, custom_names: set[str]) -> None:
    """Capture's metric names follow the custom metric rules and clash with nothing."""
    taken = {n: "custom_metrics" for n in custom_names}
    for path, (name, collected) in cfg.capture.metric_names().items():
        if not _AWS_NAME.fullmatch(name) or name.lower().startswith("aws:"):
            raise ConfigError(
                f"{path}: must be 1-128 of a-z A-Z 0-9 : _ - and not start with aws:"
                f" (an AWS custom metric name), got {_shown.repr(name)}"
            )
        if collected and name in taken:
            raise ConfigError(f"{path}: {name!r} is already the name in {taken[name]}")
        taken[name] = path
    broker = cfg.capture.broker
    for i, port in enumerate(broker.ports):
        if not 1 <= port <= 65535:
            raise ConfigError(f"capture.broker.ports[{i}]: must be a port 1-65535, got {port}")
    if broker.enabled and not broker.ports:
        raise ConfigError("capture.broker.ports: the broker watch needs at least one port")
    for i, name in enumerate(cfg.capture.interfaces):
        if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
            raise ConfigError(
                f"capture.interfaces[{i}]: must be an interface name (1-15 characters, no /"
                f" or spaces), got {_shown.repr(name)}"
            )


_ACTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")  # AWS's mitigation action names


def _check_mitigation(m: MitigationConfig) -> None:
    for i, cidr in enumerate(m.allow_cidrs):
        try:
            if len(cidr) > 64:  # longer than any network: ipaddress would quote it whole
                raise ValueError(f"{_shown.repr(cidr)} is too long for an IPv4 or IPv6 network")
            ipaddress.ip_network(cidr)
        except ValueError as e:
            raise ConfigError(f"mitigation.allow_cidrs[{i}]: {e}") from None
    seen: set[tuple[str, str]] = set()
    for i, rule in enumerate(m.auto):
        path = f"mitigation.auto[{i}]"
        for key in ("profile", "behavior"):
            if not _AWS_NAME.fullmatch(getattr(rule, key)):
                raise ConfigError(
                    f"{path}.{key}: must be 1-128 of a-z A-Z 0-9 : _ -, got"
                    f" {_shown.repr(getattr(rule, key))}"
                )
        if (rule.profile, rule.behavior) in seen:
            raise ConfigError(f"{path}: {rule.profile}/{rule.behavior} is given twice")
        seen.add((rule.profile, rule.behavior))
        if not 1 <= len(rule.actions) <= 5:
            raise ConfigError(f"{path}.actions: must name 1-5 mitigation actions")
        for j, name in enumerate(rule.actions):
            if not _ACTION_NAME.fullmatch(name):
                raise ConfigError(
                    f"{path}.actions[{j}]: must be 1-128 of a-z A-Z 0-9 _ - (a mitigation"
                    f" action name), got {_shown.repr(name)}"
                )


def _topic_problem(topic: str) -> str | None:
    """Why the broker would refuse to take `topic` for a PUBLISH (MQTT 3.1.1 4.7, AWS
    IoT's 256-byte limit), or None."""
    if not topic.isprintable() or len(topic.encode()) > 256:
        return "must be at most 256 bytes of printable characters once {thing_name} is filled in"
    if "+" in topic or "#" in topic:
        return "must not hold the wildcards + or # (it is a topic to publish to)"
    if topic.startswith("$"):
        return "must not start with $ (topics reserved for the broker)"
    if "" in topic.split("/"):
        return "must not have empty levels (a leading, trailing or double /)"
    return None


# What remote control may change (docs/control.md): no setting that could cut the agent
# off its broker, run a command, read another file or touch the firewall.
REMOTE_SETTINGS = (
    "sampling.interval_s",
    "sampling.report_interval_s",
    "sampling.max_list",
    "capture.enabled",
    "capture.scan.enabled",
    "capture.dns.enabled",
    "capture.broker.enabled",
    "capture.connections.enabled",
    "audit.scheduled",
    "store.retention_days",
    "store.metrics_retention_days",
)


def with_settings(cfg: Config, settings: Any) -> Config:
    """`cfg` with remote `settings` ({"sampling.interval_s": 30.0, ...}) applied and checked
    as the file's own keys are; ConfigError names the setting."""
    if not isinstance(settings, dict):
        raise ConfigError("settings: must be an object of setting names and values")
    for name, value in settings.items():
        if name not in REMOTE_SETTINGS:
            raise ConfigError(
                f"{_shown.repr(name)}: not a setting remote control may change; those are "
                + ", ".join(REMOTE_SETTINGS)
            )
        *blocks, key = name.split(".")
        chain = [cfg]
        for block in blocks:
            chain.append(getattr(chain[-1], block))
        checked = getattr(_build(type(chain[-1]), {key: value}, ".".join(blocks)), key)
        new: Any = dataclasses.replace(chain[-1], **{key: checked})
        for parent, block in zip(reversed(chain[:-1]), reversed(blocks), strict=True):
            new = dataclasses.replace(parent, **{block: new})
        cfg = new
    _check(cfg)
    return cfg


def remote_settings(cfg: Config) -> tuple[Config, str | None]:
    """`cfg` with the settings remote control stored (none: `cfg` itself), and the
    problem with Config.remote_settings_path if it cannot be used (`cfg` unchanged)."""
    path = cfg.remote_settings_path
    try:
        with path.open("rb") as f:
            settings = json.loads(f.read(MAX_CONFIG_BYTES))
        return with_settings(cfg, settings), None
    except FileNotFoundError:
        return cfg, None
    except (OSError, ValueError) as e:  # ConfigError and JSON errors are ValueErrors
        return cfg, str(e)


def parse_config(text: str, source: str) -> Config:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except ValueError:  # Python's limit on the digits of an integer
        raise ConfigError(f"{source}: not valid TOML: an integer of over 4300 digits") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML: arrays or tables nested too deep") from None
    try:
        cfg = _build(Config, table, "")
        _check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return dataclasses.replace(cfg, config_file=source)


def load_config(path: str | Path | None = None) -> Config:
    """The config at `path`; without a path, the default file when present, else defaults.
    A file that group or others may write is refused: whoever can write it can blind
    the agent."""
    if path is None:
        try:
            DEFAULT_CONFIG_PATH.stat()
        except FileNotFoundError:
            return parse_config("", Config.config_file)
        except OSError:
            pass  # outside the service group (0750 directory): reading it says so below
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        unsafe = writable_by_others(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if unsafe:
        raise ConfigError(f"{path}: {unsafe}")
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; a config takes a few KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} (TOML is UTF-8)"
        ) from None
    return parse_config(text, str(path))

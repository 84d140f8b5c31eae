"""The TOML configuration: one dataclass per block, checked key by key so that an
error names the key path and the file."""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_CONFIG_PATH = Path("/etc/edge-defender/config.toml")


def writable_by_others(path: str | Path) -> str | None:
    """Why a file the agent takes orders from (config, profiles) is unsafe: anyone who
    can write it can blind the agent. None when only its owner may write it."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o022:
        return f"mode {mode:04o} lets group or others write it (chmod go-w {path})"
    return None


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and key path."""


def _default_state_dir() -> str:
    # Set by systemd for the unit's StateDirectory= (the service runs as its own user).
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"]
    if os.geteuid() == 0:
        return "/var/lib/edge-defender"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "edge-defender")


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
    timeout_s: float = 5.0


@dataclass(frozen=True)
class SamplingConfig:
    interval_s: float = 10.0
    report_interval_s: float = 300.0
    max_list: int = 100  # ports and connections listed per report; totals stay exact
    interfaces_include: list[str] = field(default_factory=list)  # empty: all but loopback
    interfaces_exclude: list[str] = field(default_factory=list)
    socket_source: Literal["auto", "netlink", "proc"] = "auto"


@dataclass(frozen=True)
class MqttConfig:
    endpoint: str | None = None
    port: int = 8883
    client_id: str | None = None
    tls: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    format: Literal["json", "cbor"] = "cbor"
    short_names: bool = True
    spool_max_bytes: int = 16 * 1024 * 1024
    keep_alive_s: int = 60


@dataclass(frozen=True)
class DetectConfig:
    profiles: list[str] = field(default_factory=lambda: ["/etc/edge-defender/profiles/*.json"])
    violations_topic: str = "things/{thing_name}/defender/violations"
    stale_after_s: float = 172800.0
    baseline_s: float = 14 * 86400.0
    min_baseline_datapoints: int = 30


@dataclass(frozen=True)
class StoreConfig:
    retention_days: float = 30.0
    metrics_retention_days: float = 14.0


@dataclass(frozen=True)
class Config:
    thing_name: str = field(default_factory=socket.gethostname)
    state_dir: str = field(default_factory=_default_state_dir)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    custom_metrics: list[CustomMetricConfig] = field(default_factory=list)
    config_file: str = "<built-in defaults>"  # where it was read from, for messages


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


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, options[0], path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {value!r}")
        inner = typing.get_args(tp)[0]
        return [_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a table")
        return _build(tp, value, path)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{path}: must be {_type_name(tp)}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{path}: must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: Any, table: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "config_file"}
    kwargs = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"{path}: unknown key")
        kwargs[key] = _convert(value, hints[key], path)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{missing[0]}: required key is missing")
    return cls(**kwargs)


def _check(cfg: Config) -> None:
    s = cfg.sampling
    if s.interval_s <= 0:
        raise ConfigError("sampling.interval_s: must be positive")
    if s.report_interval_s < 1:
        raise ConfigError("sampling.report_interval_s: must be at least 1")
    if s.max_list < 0:
        raise ConfigError("sampling.max_list: must not be negative")
    if not 1 <= cfg.mqtt.port <= 65535:
        raise ConfigError("mqtt.port: must be 1-65535")
    seen: set[str] = set()
    for i, m in enumerate(cfg.custom_metrics):
        path = f"custom_metrics[{i}]"
        if m.name in seen:
            raise ConfigError(f"{path}.name: duplicate custom metric {m.name!r}")
        seen.add(m.name)
        if m.source == "command" and not m.command:
            raise ConfigError(f"{path}.command: source 'command' needs an argv list")
        if m.source in ("file", "disk_percent") and not m.path:
            raise ConfigError(f"{path}.path: source {m.source!r} needs a path")
        if m.timeout_s <= 0:
            raise ConfigError(f"{path}.timeout_s: must be positive")


def parse_config(text: str, source: str) -> Config:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        cfg = _build(Config, table, "")
        _check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return dataclasses.replace(cfg, config_file=source)


def load_config(path: str | Path | None = None) -> Config:
    """The config at `path`; without a path, the default file when present, else defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config(text, str(path))

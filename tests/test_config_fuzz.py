"""Fuzzed config texts: the loader returns a Config or refuses with one ConfigError line
naming the file, and `check-config` exits 0 or 1 with plain lines, never a traceback.
The texts: random values of every TOML type at every known key, mutations of the
example config, deep nesting, huge numbers and random bytes."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
import typing
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent
from agent.cli import main
from agent.config import Config, ConfigError, CustomMetricConfig, load_config, parse_config

EXAMPLE = (Path(agent.__file__).parent / "data" / "config.toml").read_bytes()
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def toml_value(value: Any) -> str:
    """`value` written as TOML (tomllib reads; the standard library writes none)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # inf and -inf as TOML has them
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # dates and times


def toml_text(table: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items() if k != "sections"]
    for name, section in table.get("sections", {}).items():
        if name == "custom_metrics":
            for metric in section:
                lines.append("[[custom_metrics]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in metric.items()]
        else:
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in section.items()]
    return "\n".join(lines) + "\n"


numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 65535, 65536, 2**63, 10**400, -(10**400)]),
    st.floats(),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324, 0.1]),
)
texts = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.sampled_from(["", "+", "#", "a/+/b", "a//b", "/", "aws:x", "\0", "$aws/x", "{thing_name}"]),
    st.integers(4000, 5000).map(lambda n: "x" * n),
)
scalars = st.one_of(
    numbers,
    texts,
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.datetimes(timezones=st.just(datetime.UTC)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _tables(cls: Any, prefix: str = "") -> dict[str, Any]:
    """Every table of `cls` by its dotted TOML name, nested ones ([capture.scan]) too."""
    out: dict[str, Any] = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out[prefix + name] = tp
            out.update(_tables(tp, f"{prefix}{name}."))
    return out


SECTIONS = _tables(Config)


def plausible(tp: Any) -> st.SearchStrategy[Any]:
    """Values of roughly the right type for a field typed `tp`, often out of range."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is list:
        return st.lists(plausible(typing.get_args(tp)[0]), max_size=4)
    if dataclasses.is_dataclass(tp):  # an array of tables, as inline tables
        return some_of(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return plausible(args[0])
    return {int: numbers, float: numbers, bool: st.booleans(), str: texts}[tp]


def fields_of(cls: Any) -> dict[str, st.SearchStrategy[Any]]:
    """Each key of `cls` that holds values (not tables) and what to fuzz it with."""
    hints = typing.get_type_hints(cls)
    return {
        name: st.one_of(plausible(tp), values)
        for name, tp in hints.items()
        if name not in ("config_file", "custom_metrics") and not dataclasses.is_dataclass(tp)
    }


@st.composite
def some_of(draw: st.DrawFn, cls: Any) -> dict[str, Any]:
    """A table of some of `cls`'s keys, with random or plausible values."""
    chosen = draw(st.sets(st.sampled_from(sorted(fields_of(cls))), max_size=4))
    return {k: draw(fields_of(cls)[k]) for k in sorted(chosen)}


@st.composite
def config_tables(draw: st.DrawFn) -> dict[str, Any]:
    table = draw(some_of(Config))
    sections: dict[str, Any] = {}
    for name in draw(st.sets(st.sampled_from(sorted(SECTIONS)))):
        sections[name] = draw(some_of(SECTIONS[name]))
    metric = st.fixed_dictionaries(
        {
            "name": st.one_of(st.just("cpu_usage"), texts),
            "type": st.sampled_from(["number", "number-list"]),
            "source": st.sampled_from(["cpu_percent", "command", "file", "disk_percent"]),
        }
    )
    metrics = draw(st.lists(st.tuples(metric, some_of(CustomMetricConfig)), max_size=2))
    if metrics:
        sections["custom_metrics"] = [{**extra, **base} for base, extra in metrics]
    table["sections"] = sections
    return table


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(out)))
        match draw(st.sampled_from(["set", "cut", "insert"])):
            case "set" if at < len(out):
                out[at] = draw(st.integers(0, 255))
            case "cut":
                del out[at : at + draw(st.integers(1, 30))]
            case _:
                out[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(SNIPPETS))
    return bytes(out)


SNIPPETS = [b"[", b"]", b"=", b'"', b"\n", b"nan", b"-", b"inf", b"9" * 5000, b"\xff", b"\0"]
deep = st.integers(1, 3000).map(lambda n: b"a = " + b"[" * n + b"]" * n)
config_bytes = st.one_of(
    config_tables().map(lambda t: toml_text(t).encode("utf-8", "surrogatepass")),
    mutated(EXAMPLE),
    # The example with its commented defaults in force, then mutated.
    mutated(EXAMPLE.replace(b"\n# ", b"\n")),
    deep,
    st.binary(max_size=300),
)


def assert_refusal(error: ConfigError, source: str) -> None:
    text = str(error)
    assert text.startswith(f"{source}: ")
    assert "\n" not in text and len(text) < 1000


@FUZZ
@given(config_tables())
def test_parse_config_returns_a_config_or_refuses(table: dict[str, Any]) -> None:
    try:
        cfg = parse_config(toml_text(table), "f.toml")
    except ConfigError as e:
        assert_refusal(e, "f.toml")
    else:
        assert isinstance(cfg, Config)


@FUZZ
@given(st.text(max_size=300) | config_bytes.map(lambda b: b.decode("utf-8", "replace")))
def test_parse_config_takes_any_text(text: str) -> None:
    try:
        parse_config(text, "f.toml")
    except ConfigError as e:
        assert_refusal(e, "f.toml")


@pytest.fixture
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(config_bytes)
def test_load_config_reads_any_file(folder: Path, data: bytes) -> None:
    path = folder / "config.toml"
    path.write_bytes(data)
    path.chmod(0o600)
    try:
        load_config(path)
    except ConfigError as e:
        assert_refusal(e, str(path))


def kept_here(table: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The state and the profiles in `folder`: check-config probes the state dir and
    reads the profiles, and the fuzzer must not send it around the file system (their
    values are fuzzed through the loader above)."""
    table["state_dir"] = str(folder / "state")
    detect = table["sections"].setdefault("detect", {})
    detect["profiles"] = [str(folder / "profiles" / "*.json")]
    return table


@settings(FUZZ, max_examples=200)
@given(config_tables() | mutated(EXAMPLE) | deep | st.binary(max_size=300))
def test_check_config_exits_0_or_1_with_lines(folder: Path, config: dict[str, Any] | bytes) -> None:
    path = folder / "config.toml"
    if isinstance(config, dict):
        config = toml_text(kept_here(config, folder)).encode("utf-8", "surrogatepass")
    path.write_bytes(config)
    path.chmod(0o600)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["check-config", "--config", str(path)])
    lines = out.getvalue().splitlines()
    assert code in (0, 1), err.getvalue()
    assert lines
    assert lines[-1] == "configuration ok" if code == 0 else ": " in lines[-1]
    assert "Traceback" not in err.getvalue()

"""The rig's scenarios: one TOML file each in hw/scenarios/, loaded and checked whole
before anything starts. A scenario names the security profiles it runs under (AWS
describe-security-profile JSON written as TOML tables, or a `profile_file` of that JSON
beside it), the agent's custom metrics, the traffic of its setup and of its attack (the
actors of hw/actors.py, each on a node of the lab), the violations it must cause and
the time it has to cause them. Profiles and custom metrics are checked by the agent's
own parsers, so what the rig loads the agent takes.

An `[[expected]]` entry names a profile and one of its behaviors, and may name a
`thing`: the event's thingName must then be that (the gateway's broker watch judges
each MQTT client on its own, its events carry the client id as thingName); without it
any thingName matches.

A scenario may also give `[[dimensions]]` (TOPIC_FILTER dimensions as describe-dimension
prints them, for the behaviors' metricDimension), a `[capture]` table (the agent's
[capture] config, checked by the agent's own parser), `lead_s` (how long after the
attack start the attack needs before it can be detected at all: a slow scan's 5th probe;
the latency goal counts from then), and mitigation: a `[mitigation]` table (the agent's
[mitigation] config, checked by its parser: enabled, its allow_cidrs holding the lab's
network, each [[mitigation.auto]] rule naming a behavior of the scenario's profiles and
actions of its own) and `[[mitigation_actions]]` (`name` and `actionParams`, checked as
create-mitigation-action checks them), which the DUT creates before the agent starts,
and `[ml_training]` (`metric`, `window_s`, and `per_s` for a network counter or `value`
for a custom number metric): synthetic training data for the scenario's ML behaviors
(hw/ml_rig.py), which the DUT trains the agent on with `train --from` before it starts.

Strings may hold placeholders, "{dut}", "{attacker}", "{peer1}", "{peer2}", "{broker}",
"{c2}", "{lan}", filled in from the lab's addresses. Every problem raises ScenarioError
naming the file and the key."""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import ConfigError, parse_config
from agent.core.audit_model import InvalidRequest
from agent.core.mitigation_model import check_action_name, check_action_params
from agent.core.ml_window import check_window_s
from agent.core.profile import (
    MAX_DOCUMENT_BYTES,
    ProfileError,
    SecurityProfile,
    parse_detect_document,
    parse_dimension,
    parse_json_document,
)
from agent.service.detect import count_metrics
from hw import actors
from hw.dut import toml_table
from hw.ml_rig import NETWORK_METRICS

# "dut" runs on the device (inside its container under --dut nspawn); "dut-netns" is the
# device's network namespace entered from the rig's host, for servers the device image
# lacks (sshd): to the agent their sockets are the device's all the same.
NODES = ("dut", "dut-netns", "attacker", "peer1", "peer2", "broker")
# Actor parameters the rig fills in itself (hw/traffic.py): a scenario need not give them.
RIG_PARAMS = frozenset({"key_dir", "broker", "ca", "cert", "key"})
# The lab's addresses (hw/lab.py), for checking and listing scenarios without a lab.
EXAMPLE_ADDRESSES = {
    "dut": "10.77.0.2",
    "broker": "10.77.0.5",
    "peer1": "10.77.0.11",
    "peer2": "10.77.0.12",
    "attacker": "10.77.0.66",
    "c2": "198.51.100.66",
    "lan": "10.77.0.0/24",
}
MAX_INTERVAL_S = 60.0
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")
# The annotations of the actors' parameters (strings, from `from __future__ import
# annotations`) and the TOML values that fit them.
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "str | None": (str,),
    "list[str] | None": (list,),
}
_KEYS = {
    "description",
    "benign",
    "interval_s",
    "warmup_s",
    "deadline_s",
    "benign_s",
    "quick_benign_s",
    "profiles",
    "profile_file",
    "custom_metrics",
    "setup",
    "attack",
    "expected",
    "dimensions",
    "capture",
    "lead_s",
    "mitigation",
    "mitigation_actions",
    "ml_training",
}
# The [ml_training] shapes (hw/ml_rig.py): a network counter's rate a second in the quiet
# hours, or a custom number metric's level (the same at every hour).
ML_TRAINING_RATE = ("metric", "per_s", "window_s")
ML_TRAINING_LEVEL = ("metric", "value", "window_s")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class Expected:
    profile: str
    behavior: str
    thing: str | None = None  # the event's thingName must be this (None: any)


@dataclass(frozen=True)
class Action:
    node: str  # "dut", "attacker", "peer1", "peer2", "broker"
    kind: str  # an actor of hw/actors.py
    params: dict[str, Any]  # after placeholder resolution


@dataclass(frozen=True)
class Scenario:
    name: str  # the file's stem
    description: str
    profiles: list[dict[str, Any]]  # placeholders resolved
    custom_metrics: list[dict[str, Any]]
    setup: list[Action]  # started before the warm-up, run through the attack
    attack: list[Action]  # started at attack_start
    expected: list[Expected]  # empty for benign
    deadline_s: float  # after attack_start (benign: how long its load runs)
    warmup_s: float
    interval_s: float  # the agent's sampling interval in this scenario
    window_s: float | None  # the largest durationSeconds among expected behaviors
    benign: bool
    dimensions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    capture: dict[str, Any] | None = None  # the agent's whole [capture] table, defaults filled in
    lead_s: float = 0.0  # after attack_start, before the attack can be detected at all
    mitigation: dict[str, Any] | None = None  # the agent's whole [mitigation] table (None: off)
    # [{"name", "actionParams"}]: created with create-mitigation-action before the start
    mitigation_actions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # {"metric", "per_s" or "value", "window_s"}: the DUT trains the agent's model on it
    # (hw/ml_rig.py)
    ml_training: dict[str, Any] | None = None


def load_scenarios(
    folder: Path, names: Sequence[str] | None, addresses: Mapping[str, str], *, quick: bool
) -> list[Scenario]:
    """Every scenario of `folder` (names None: all, benign last; else those named, in
    that order), checked whole. quick shortens the benign duration (quick_benign_s)
    without changing attack timing. Raises ScenarioError naming the file and key."""
    files = {p.stem: p for p in sorted(folder.glob("*.toml"), key=lambda p: p.stem)}
    if names is not None:
        unknown = [n for n in names if n not in files]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            raise ScenarioError(f"{folder}: no scenario {listed}; there are {', '.join(files)}")
        files = {n: files[n] for n in names}
    scenarios = [load_scenario(p, addresses, quick=quick) for p in files.values()]
    _check_shared_names(scenarios)
    if names is None:
        scenarios.sort(key=lambda s: s.benign)  # stable: by name, benign last
    return scenarios


def load_scenario(path: Path, addresses: Mapping[str, str], *, quick: bool) -> Scenario:
    """One scenario file; see load_scenarios."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: cannot be read as TOML: {e}") from None
    return _Loader(path, addresses).scenario(table, quick=quick)


class _Loader:
    def __init__(self, path: Path, addresses: Mapping[str, str]) -> None:
        self.path = path
        self.addresses = addresses

    def error(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.path}: {key}: {problem}")

    def scenario(self, t: dict[str, Any], *, quick: bool) -> Scenario:
        unknown = sorted(set(t) - _KEYS)
        if unknown:
            raise self.error(unknown[0], f"unknown key; a scenario has {', '.join(sorted(_KEYS))}")
        description = t.get("description")
        if not isinstance(description, str) or not description.strip():
            raise self.error("description", "must be a non-empty string saying what it shows")
        benign = t.get("benign", False)
        if not isinstance(benign, bool):
            raise self.error("benign", f"must be true or false, got {benign!r}")
        interval_s = self.seconds(t, "interval_s", low=0.1, high=MAX_INTERVAL_S)
        warmup_s = self.seconds(t, "warmup_s", low=0.0)
        profiles = self.profiles(t)
        dimensions = self.dimensions(t.get("dimensions", []), profiles)
        custom_metrics = self.custom_metrics(t.get("custom_metrics", []))
        capture = self.capture(t["capture"], custom_metrics) if "capture" in t else None
        setup = self.actions(t.get("setup", []), "setup")
        attack = self.actions(t.get("attack", []), "attack")
        expected = self.expected(t.get("expected", []), profiles)
        actions = self.mitigation_actions(t.get("mitigation_actions", []))
        mitigation = None
        if benign and "mitigation" in t:
            # The benign load judges every scenario's profiles: its alarms are false
            # alarms, and a block would only hide the traffic after them.
            raise self.error("mitigation", "the benign load runs with mitigation off: remove it")
        if "mitigation" in t:
            mitigation = self.mitigation(t["mitigation"], custom_metrics, profiles, actions)
        elif actions:
            raise self.error(
                "mitigation_actions", "needs a [mitigation] table that turns mitigation on"
            )
        rules = {(r["profile"], r["behavior"]) for r in (mitigation or {}).get("auto", [])}
        answered = any((e.profile, e.behavior) in rules for e in expected)
        if answered and not any(a.kind == "connect-probe" for a in attack):
            raise self.error(
                "attack",
                "an automatic response answers an expected behavior: the attack needs a"
                " connect-probe to the address it blocks, to time the block",
            )
        if benign:
            for key in ("deadline_s", "attack", "expected", "lead_s"):
                if key in t:
                    raise self.error(key, "a benign scenario has no attack: remove it")
            full_s = self.seconds(t, "benign_s", low=1.0)
            quick_s = self.seconds(t, "quick_benign_s", low=1.0, high=full_s)
            deadline_s = quick_s if quick else full_s
        else:
            for key in ("benign_s", "quick_benign_s"):
                if key in t:
                    raise self.error(key, "only a benign scenario (benign = true) has it")
            if not attack:
                raise self.error("attack", "must list at least one action (the attack)")
            if not expected:
                raise self.error("expected", "must list the violations the attack causes")
            deadline_s = self.seconds(t, "deadline_s", low=interval_s)
        lead_s = self.seconds(t, "lead_s", low=0.0, high=deadline_s) if "lead_s" in t else 0.0
        ml_training = None
        if "ml_training" in t:
            ml_training = self.ml_training(t["ml_training"], profiles, custom_metrics, capture)
        if benign and ml_training is not None:
            raise self.error(
                "ml_training", "the benign load trains what the other scenarios' tables say"
            )
        windows = [self.window(profiles, e) for e in expected]
        window_s = max((w for w in windows if w is not None), default=None)
        return Scenario(
            name=self.path.stem,
            description=description.strip(),
            profiles=profiles,
            custom_metrics=custom_metrics,
            setup=setup,
            attack=attack,
            expected=expected,
            deadline_s=deadline_s,
            warmup_s=warmup_s,
            interval_s=interval_s,
            window_s=window_s,
            benign=benign,
            dimensions=dimensions,
            capture=capture,
            lead_s=lead_s,
            mitigation=mitigation,
            mitigation_actions=actions,
            ml_training=ml_training,
        )

    def ml_training(
        self,
        table: Any,
        profiles: list[dict[str, Any]],
        custom_metrics: list[dict[str, Any]],
        capture: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """{"metric", "per_s", "window_s"}: a network counter, its quiet hours' rate a
        second; or {"metric", "value", "window_s"}: a custom number metric the scenario
        makes (not a count summed over the window), its level. An ML behavior of the
        scenario must judge the metric; window_s is the model's window."""
        shapes = (ML_TRAINING_RATE, ML_TRAINING_LEVEL)
        if not isinstance(table, dict) or not any(set(table) == set(k) for k in shapes):
            raise self.error(
                "ml_training",
                f"must be a table with exactly {', '.join(ML_TRAINING_RATE)} (a network"
                f" counter) or {', '.join(ML_TRAINING_LEVEL)} (a custom number metric)",
            )
        metric = table["metric"]
        if "per_s" in table and metric not in NETWORK_METRICS:
            raise self.error(
                "ml_training.metric",
                f"with per_s, must be one of {', '.join(NETWORK_METRICS)}, got {metric!r}",
            )
        if "value" in table:
            levels = _level_metrics(custom_metrics, capture)
            if metric not in levels:
                raise self.error(
                    "ml_training.metric",
                    "with value, must be a custom number metric this scenario makes (a"
                    " [[custom_metrics]] entry of type number, or a number of its [capture]"
                    " features; not a count, which is summed):"
                    f" {', '.join(levels) or 'none'}; got {metric!r}",
                )
        judged = any(
            b.get("metric") == metric and "mlDetectionConfig" in b.get("criteria", {})
            for p in profiles
            for b in p["behaviors"]
        )
        if not judged:
            raise self.error(
                "ml_training.metric", f"no ML behavior of the profiles judges {metric}"
            )
        key, low = ("per_s", "> 0") if "per_s" in table else ("value", ">= 0")
        x = table[key]
        number = not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)
        if not number or not (x > 0 if key == "per_s" else x >= 0):
            raise self.error(f"ml_training.{key}", f"must be a number {low}, got {x!r}")
        try:
            window_s = check_window_s(table["window_s"])
        except ValueError as e:
            raise self.error("ml_training.window_s", str(e)) from None
        return {"metric": metric, key: float(x), "window_s": window_s}

    def seconds(
        self, t: Mapping[str, Any], key: str, *, low: float, high: float = math.inf
    ) -> float:
        x = t.get(key)
        if x is None:
            raise self.error(key, "required key is missing (seconds)")
        if isinstance(x, bool) or not isinstance(x, int | float) or not low <= x <= high:
            bound = f" and at most {high:g}" if high < math.inf else ""
            raise self.error(key, f"must be a number of seconds at least {low:g}{bound}, got {x!r}")
        return float(x)

    def resolve(self, x: Any, key: str) -> Any:
        """`x` with the placeholders in its strings filled in."""
        if isinstance(x, str):

            def fill(m: re.Match[str]) -> str:
                if m.group(1) not in self.addresses:
                    raise self.error(
                        key,
                        f"unknown placeholder {m.group(0)}; known: "
                        + ", ".join(f"{{{k}}}" for k in self.addresses),
                    )
                return self.addresses[m.group(1)]

            return _PLACEHOLDER.sub(fill, x)
        if isinstance(x, list):
            return [self.resolve(v, f"{key}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            return {k: self.resolve(v, f"{key}.{k}") for k, v in x.items()}
        return x

    def profiles(self, t: Mapping[str, Any]) -> list[dict[str, Any]]:
        docs: list[Any] = []
        tables = t.get("profiles", [])
        if not isinstance(tables, list) or not all(isinstance(p, dict) for p in tables):
            raise self.error("profiles", "must be an array of tables ([[profiles]])")
        docs += [(f"profiles[{i}]", p) for i, p in enumerate(tables)]
        if "profile_file" in t:
            name = t["profile_file"]
            if not isinstance(name, str):
                raise self.error("profile_file", f"must be a file name, got {name!r}")
            file = self.path.parent / name
            try:
                doc = parse_json_document(file.read_bytes()[: MAX_DOCUMENT_BYTES + 1], str(file))
            except (OSError, ProfileError) as e:
                raise self.error("profile_file", str(e)) from None
            items = doc if isinstance(doc, list) else [doc]
            docs += [(f"profile_file {name}[{i}]", p) for i, p in enumerate(items)]
        if not docs:
            raise self.error("profiles", "a scenario runs under at least one security profile")
        resolved = []
        for key, doc in docs:
            # The file as written must be right whatever the lab, and so must what runs.
            for addresses in (EXAMPLE_ADDRESSES, self.addresses):
                filled = _Loader(self.path, addresses).resolve(doc, key)
                try:
                    parsed = parse_detect_document(
                        json.dumps(filled).encode(), f"{self.path}: {key}"
                    )
                except ProfileError as e:
                    raise ScenarioError(str(e)) from None
                if not all(isinstance(p, SecurityProfile) for p in parsed):
                    raise self.error(key, "must be a security profile, not a dimension")
            resolved.append(filled)
        names = [p["securityProfileName"] for p in resolved]
        if len(set(names)) < len(names):
            raise self.error("profiles", f"a profile name appears twice: {names}")
        return resolved

    def dimensions(self, tables: Any, profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not isinstance(tables, list) or not all(isinstance(d, dict) for d in tables):
            raise self.error("dimensions", "must be an array of tables ([[dimensions]])")
        resolved = [self.resolve(d, f"dimensions[{i}]") for i, d in enumerate(tables)]
        for i, doc in enumerate(resolved):
            try:
                parse_dimension(doc, f"{self.path}: dimensions[{i}]")
            except ProfileError as e:
                raise ScenarioError(str(e)) from None
        names = [d["name"] for d in resolved]
        if len(set(names)) < len(names):
            raise self.error("dimensions", f"a dimension name appears twice: {names}")
        for p in profiles:
            for b in p.get("behaviors", []):
                wanted = b.get("metricDimension", {}).get("dimensionName")
                if wanted is not None and wanted not in names:
                    raise self.error(
                        "dimensions",
                        f"profile {p['securityProfileName']!r} behavior {b.get('name')!r}"
                        f" names dimension {wanted!r}; this scenario's [[dimensions]] have"
                        f" {names or 'none'}",
                    )
        return resolved

    def capture(self, table: Any, custom_metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """The agent's [capture] table: checked by the agent's config parser beside the
        scenario's custom metrics (their names must not clash), returned whole with its
        defaults, so that tables of several scenarios can be joined."""
        if not isinstance(table, dict):
            raise self.error(
                "capture",
                f"must be a table ([capture]) as the agent's config has it, got {table!r}",
            )
        resolved = self.resolve(table, "capture")
        try:
            text = _custom_metrics_text(custom_metrics)
            text += "\n".join(toml_table("capture", resolved)) + "\n"
        except ValueError as e:
            raise self.error("capture", str(e)) from None
        try:
            parsed = parse_config(text, str(self.path)).capture
        except ConfigError as e:
            raise ScenarioError(str(e)) from None
        if not parsed.enabled:
            raise self.error(
                "capture.enabled", "must be true: the agent's capture is off by default"
            )
        return dataclasses.asdict(parsed)

    def mitigation(
        self,
        table: Any,
        custom_metrics: list[dict[str, Any]],
        profiles: list[dict[str, Any]],
        actions: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """The agent's [mitigation] table, checked by the agent's config parser, returned
        whole with its defaults. It must be on, never block the lab's network (the rig
        and its peers; the agent adds the broker itself), and its automatic responses
        must name this scenario's behaviors and [[mitigation_actions]]."""
        if not isinstance(table, dict):
            raise self.error(
                "mitigation",
                f"must be a table ([mitigation]) as the agent's config has it, got {table!r}",
            )
        resolved = self.resolve(table, "mitigation")
        try:
            text = _custom_metrics_text(custom_metrics)
            text += "\n".join(toml_table("mitigation", resolved)) + "\n"
        except ValueError as e:
            raise self.error("mitigation", str(e)) from None
        try:
            parsed = parse_config(text, str(self.path)).mitigation
        except ConfigError as e:
            raise ScenarioError(str(e)) from None
        if not parsed.enabled:
            raise self.error(
                "mitigation.enabled", "must be true: the agent's mitigation is off by default"
            )
        lan = ipaddress.ip_network(self.addresses["lan"], strict=False)
        if not any(_covers(ipaddress.ip_network(c), lan) for c in parsed.allow_cidrs):
            raise self.error(
                "mitigation.allow_cidrs",
                f'must hold the lab\'s network {lan} ("{{lan}}"): the rig and its peers reach'
                f" the device through it; got {parsed.allow_cidrs}",
            )
        behaviors = {
            (p["securityProfileName"], b.get("name")) for p in profiles for b in p["behaviors"]
        }
        names = {a["name"] for a in actions}
        for i, rule in enumerate(parsed.auto):
            if (rule.profile, rule.behavior) not in behaviors:
                raise self.error(
                    f"mitigation.auto[{i}]",
                    f"{rule.profile}/{rule.behavior} is no behavior of this scenario's profiles",
                )
            for j, name in enumerate(rule.actions):
                if name not in names:
                    raise self.error(
                        f"mitigation.auto[{i}].actions[{j}]",
                        f"{name!r} is none of this scenario's [[mitigation_actions]]"
                        f" ({', '.join(sorted(names)) or 'none'})",
                    )
        return dataclasses.asdict(parsed)

    def mitigation_actions(self, tables: Any) -> list[dict[str, Any]]:
        """[[mitigation_actions]]: each a `name` and its `actionParams`, checked as
        create-mitigation-action checks them."""
        if not isinstance(tables, list) or not all(isinstance(a, dict) for a in tables):
            raise self.error(
                "mitigation_actions", "must be an array of tables ([[mitigation_actions]])"
            )
        found: list[dict[str, Any]] = []
        for i, a in enumerate(tables):
            key = f"mitigation_actions[{i}]"
            if set(a) != {"name", "actionParams"}:
                raise self.error(key, f"must have exactly name and actionParams; got {sorted(a)}")
            resolved = self.resolve(a, key)
            try:
                name = check_action_name(resolved["name"], "name")
                check_action_params(resolved["actionParams"])
            except InvalidRequest as e:
                raise self.error(key, str(e)) from None
            if any(f["name"] == name for f in found):
                raise self.error(f"{key}.name", f"{name!r} is given twice")
            found.append({"name": name, "actionParams": resolved["actionParams"]})
        return found

    def custom_metrics(self, tables: Any) -> list[dict[str, Any]]:
        if not isinstance(tables, list) or not all(isinstance(m, dict) for m in tables):
            raise self.error("custom_metrics", "must be an array of tables ([[custom_metrics]])")
        resolved = [self.resolve(m, f"custom_metrics[{i}]") for i, m in enumerate(tables)]
        try:
            parse_config(_custom_metrics_text(resolved), str(self.path))
        except ConfigError as e:
            raise ScenarioError(str(e)) from None
        return resolved

    def actions(self, tables: Any, section: str) -> list[Action]:
        if not isinstance(tables, list) or not all(isinstance(a, dict) for a in tables):
            raise self.error(section, f"must be an array of tables ([[{section}]])")
        return [self.action(a, f"{section}[{i}]") for i, a in enumerate(tables)]

    def action(self, a: dict[str, Any], key: str) -> Action:
        node = a.get("node")
        if node not in NODES:
            raise self.error(f"{key}.node", f"must be one of {', '.join(NODES)}, got {node!r}")
        kind = a.get("kind")
        if kind not in actors.KINDS:
            raise self.error(
                f"{key}.kind", f"must be an actor, one of {', '.join(actors.KINDS)}, got {kind!r}"
            )
        params = {k: v for k, v in a.items() if k not in ("node", "kind")}
        accepted = inspect.signature(actors.KINDS[kind]).parameters
        for name, value in params.items():
            if name not in accepted:
                raise self.error(
                    f"{key}.{name}", f"not a parameter of {kind}; it takes {', '.join(accepted)}"
                )
            annotation = str(accepted[name].annotation)
            wrong_bool = isinstance(value, bool) != (annotation == "bool")  # bool is an int
            if wrong_bool or not isinstance(value, _PARAM_TYPES[annotation]):
                raise self.error(f"{key}.{name}", f"must be {annotation}, got {value!r}")
        for name, p in accepted.items():
            if p.default is inspect.Parameter.empty and name not in params.keys() | RIG_PARAMS:
                raise self.error(f"{key}.{name}", f"required by {kind}")
        return Action(node=node, kind=kind, params=self.resolve(params, key))

    def expected(self, tables: Any, profiles: list[dict[str, Any]]) -> list[Expected]:
        if not isinstance(tables, list) or not all(isinstance(e, dict) for e in tables):
            raise self.error("expected", "must be an array of tables ([[expected]])")
        behaviors = {
            p["securityProfileName"]: {b.get("name") for b in p.get("behaviors", [])}
            for p in profiles
        }
        found = []
        for i, e in enumerate(tables):
            key = f"expected[{i}]"
            if not {"profile", "behavior"} <= set(e) <= {"profile", "behavior", "thing"}:
                raise self.error(
                    key, f"must have profile and behavior, and may have thing; got {sorted(e)}"
                )
            thing = e.get("thing")
            if thing is not None and (not isinstance(thing, str) or not thing):
                raise self.error(
                    f"{key}.thing", f"must be a thingName (an MQTT client id), got {thing!r}"
                )
            if e["profile"] not in behaviors:
                raise self.error(
                    f"{key}.profile", f"{e['profile']!r} is none of this scenario's profiles"
                )
            if e["behavior"] not in behaviors[e["profile"]]:
                raise self.error(
                    f"{key}.behavior",
                    f"{e['behavior']!r} is not a behavior of profile {e['profile']!r}",
                )
            entry = Expected(profile=e["profile"], behavior=e["behavior"], thing=thing)
            if entry in found:
                raise self.error(key, f"the same as an earlier entry: {e}")
            found.append(entry)
        return found

    @staticmethod
    def window(profiles: list[dict[str, Any]], e: Expected) -> float | None:
        for p in profiles:
            for b in p.get("behaviors", []) if p["securityProfileName"] == e.profile else []:
                if b.get("name") == e.behavior:
                    duration = b.get("criteria", {}).get("durationSeconds")
                    return None if duration is None else float(duration)
        return None


def _covers(
    outer: ipaddress.IPv4Network | ipaddress.IPv6Network,
    inner: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    """Whether `inner` lies within `outer` (False across IPv4 and IPv6)."""
    return (
        outer.version == inner.version
        and int(outer.network_address) <= int(inner.network_address)
        and int(inner.broadcast_address) <= int(outer.broadcast_address)
    )


def _level_metrics(
    custom_metrics: list[dict[str, Any]], capture: dict[str, Any] | None
) -> list[str]:
    """The custom number metrics that are levels, which [ml_training] `value` can train:
    [[custom_metrics]] of type number, and the numbers of the capture features on (their
    `*count_metric` keys) but for the counts the agent sums over the window."""
    names = [m["name"] for m in custom_metrics if m.get("type") == "number"]
    if capture is None:
        return names
    cfg = parse_config("\n".join(toml_table("capture", capture)) + "\n", "[capture]")
    summed = count_metrics(cfg)
    names += [
        name
        for path, (name, collected) in cfg.capture.metric_names().items()
        if collected and path.endswith("count_metric") and name not in summed
    ]
    return names


def _custom_metrics_text(metrics: list[dict[str, Any]]) -> str:
    """Custom metrics as the agent's config would hold them (JSON values are TOML
    values), for the agent's own config parser to read back."""
    return "".join(
        "[[custom_metrics]]\n"
        + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in m.items())
        for m in metrics
    )


def _check_shared_names(scenarios: Sequence[Scenario]) -> None:
    """The benign scenario runs every profile, custom metric, dimension and capture
    feature at once, keyed by name: two scenarios may share one only if they agree on it."""
    seen: dict[tuple[str, str], tuple[str, Any]] = {}
    for s in scenarios:
        items = [("profile", p["securityProfileName"], p) for p in s.profiles]
        items += [("custom metric", m["name"], m) for m in s.custom_metrics]
        items += [("dimension", d["name"], d) for d in s.dimensions]
        if s.ml_training is not None:
            items.append(("ML training of", s.ml_training["metric"], s.ml_training))
        for what, name, doc in items:
            first = seen.setdefault((what, name), (s.name, doc))
            if first[1] != doc:
                raise ScenarioError(
                    f"{s.name}.toml: {what} {name!r} differs from the one of scenario {first[0]};"
                    " give one of them another name"
                )
    union_capture(scenarios)


def union_capture(scenarios: Sequence[Scenario]) -> dict[str, Any] | None:
    """One [capture] table for the scenarios' tables together (None: none has one): a
    feature is on when any scenario turns it on, lists are joined (an empty interface
    list, every interface, wins), and any other value must be the same in all.
    Raises ScenarioError naming the two scenarios that disagree."""
    tables = [(s.name, s.capture) for s in scenarios if s.capture is not None]
    if not tables:
        return None

    def join(key: str, a: Any, b: Any, first: str, name: str) -> Any:
        if isinstance(a, dict):
            return {k: join(f"{key}.{k}", a[k], b[k], first, name) for k in a}
        if isinstance(a, bool):
            return a or b
        if key == "capture.interfaces":
            return [] if not a or not b else list(dict.fromkeys(a + b))
        if isinstance(a, list):
            return list(dict.fromkeys(a + b))
        if a != b:
            raise ScenarioError(
                f"{name}.toml: {key} = {b!r} differs from {a!r} of scenario {first};"
                " the benign load runs them together"
            )
        return a

    first, joined = tables[0]
    for name, table in tables[1:]:
        joined = join("capture", joined, table, first, name)
    return joined

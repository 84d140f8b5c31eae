"""Security profiles and dimensions as AWS IoT prints them (describe-security-profile,
create-security-profile, create-dimension): parsing and validation. Every problem is
reported, each naming the behavior and the field and saying what would be right."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.core.cidr import cidr_problem
from agent.core.metrics import (
    AWS_METRICS,
    DIMENSION_METRICS,
    KIND_OPERATORS,
    KIND_VALUE_KEYS,
    LIST_KINDS,
    NUMERIC_KINDS,
    OPERATORS,
    PORT_OPERATORS,
    Kind,
    custom_kind,
    is_finite_number,
)
from agent.core.topics import topic_filter_problem

MAX_BEHAVIORS = 100
MAX_DIMENSION_FILTERS = 100
STATISTICS = ("p0", "p0.1", "p0.01", "p1", "p10", "p50", "p90", "p99", "p99.9", "p99.99", "p100")
CONFIDENCE_LEVELS = ("LOW", "MEDIUM", "HIGH")
DIMENSION_OPERATORS = ("IN", "NOT_IN")
# The members of the AWS shapes; anything else in a behavior is most likely a typo that
# would silently disable it, so it is refused.
BEHAVIOR_KEYS = ("name", "metric", "metricDimension", "criteria", "suppressAlerts", "exportMetric")
CRITERIA_KEYS = (
    "comparisonOperator",
    "value",
    "durationSeconds",
    "consecutiveDatapointsToAlarm",
    "consecutiveDatapointsToClear",
    "statisticalThreshold",
    "mlDetectionConfig",
)
VALUE_KEYS = ("count", "cidrs", "ports", "number", "numbers", "strings")
_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_NAME_RULE = "1-128 letters, digits, ':', '_' or '-'"


class ProfileError(ValueError):
    """A profile or dimension that cannot be used; `.errors` lists every problem."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__("\n".join(self.located()))

    def located(self) -> list[str]:
        """The errors, each prefixed with the source when there is one."""
        return [f"{self.source}: {e}" if self.source else e for e in self.errors]


@dataclass(frozen=True)
class MetricDimension:
    name: str
    operator: str = "IN"


@dataclass(frozen=True)
class Criteria:
    operator: str | None = None
    value: Mapping[str, Any] | None = None  # the MetricValue as given
    duration_s: int | None = None
    to_alarm: int = 1
    to_clear: int = 1
    statistic: str | None = None
    ml_confidence: str | None = None


@dataclass(frozen=True)
class Behavior:
    name: str
    metric: str
    kind: Kind | None  # None: a custom metric whose behavior has no criteria
    dimension: MetricDimension | None = None
    criteria: Criteria | None = None
    suppress_alerts: bool = False
    doc: Mapping[str, Any] = field(default_factory=dict, compare=False)  # as given


@dataclass(frozen=True)
class SecurityProfile:
    name: str
    behaviors: tuple[Behavior, ...]
    doc: Mapping[str, Any] = field(default_factory=dict, compare=False)  # with all AWS fields
    source: str = ""


@dataclass(frozen=True)
class Dimension:
    name: str
    filters: tuple[str, ...]
    doc: Mapping[str, Any] = field(default_factory=dict, compare=False)
    source: str = ""


ErrorSink = Callable[[str, str], None]  # (field, message)


def _int_in(x: object, lo: int, hi: int | None = None) -> bool:
    return type(x) is int and x >= lo and (hi is None or x <= hi)


def _unknown_keys(
    doc: Mapping[str, Any], allowed: tuple[str, ...], path: str, err: ErrorSink
) -> None:
    for key in doc:
        if key not in allowed:
            err(f"{path}{key}", f"unknown field; expected {', '.join(allowed)}")


def _check_value(value: object, kind: Kind, op: str, metric: str, err: ErrorSink) -> None:
    allowed = KIND_VALUE_KEYS[kind]
    example = " or ".join(f'{{"{k}": ...}}' for k in allowed)
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in allowed:
        got = list(value) if isinstance(value, Mapping) else value
        err("criteria.value", f"{op} on {metric} takes {example}, got {got!r}")
        return
    ((key, v),) = value.items()
    path = f"criteria.value.{key}"
    if key == "count":
        if not _int_in(v, 0):
            err(path, f"{v!r} must be an integer >= 0")
        return
    if key == "number":
        if not is_finite_number(v):
            err(path, f"{v!r} must be a finite number")
        return
    if not isinstance(v, list):
        err(path, f"must be a list, got {v!r}")
        return
    for j, item in enumerate(v):
        if key == "ports" and not _int_in(item, 0, 65535):
            err(f"{path}[{j}]", f"{item!r} is not a port; ports are integers 0-65535")
        elif key == "cidrs" and (problem := cidr_problem(item)):
            err(f"{path}[{j}]", problem)
        elif key == "numbers" and not is_finite_number(item):
            err(f"{path}[{j}]", f"{item!r} must be a finite number")
        elif key == "strings" and not isinstance(item, str):
            err(f"{path}[{j}]", f"{item!r} must be a string")


def _check_criteria(
    c: Mapping[str, Any], metric: str, kind: Kind | None, err: ErrorSink
) -> tuple[Criteria, Kind | None]:
    _unknown_keys(c, CRITERIA_KEYS, "criteria.", err)
    op = c.get("comparisonOperator")
    value = c.get("value")
    stat = c.get("statisticalThreshold")
    ml = c.get("mlDetectionConfig")
    statistic = confidence = None
    if ml is not None:
        confidence = ml.get("confidenceLevel") if isinstance(ml, Mapping) else None
        if not isinstance(ml, Mapping) or confidence not in CONFIDENCE_LEVELS:
            err(
                "criteria.mlDetectionConfig",
                'needs {"confidenceLevel": "LOW", "MEDIUM" or "HIGH"}',
            )
        else:
            _unknown_keys(ml, ("confidenceLevel",), "criteria.mlDetectionConfig.", err)
        for key in ("comparisonOperator", "value", "statisticalThreshold", "durationSeconds"):
            if key in c:
                err(f"criteria.{key}", "not used with mlDetectionConfig; remove it")
        kind = kind or Kind.NUMBER
        if kind not in NUMERIC_KINDS:
            err("criteria.mlDetectionConfig", f"ML detection needs a numeric metric, not {metric}")
    elif op is None:
        err(
            "criteria.comparisonOperator",
            "missing; criteria need comparisonOperator with value or statisticalThreshold, "
            "or mlDetectionConfig (an empty criteria object means none)",
        )
    else:
        kind = _check_operator(op, metric, kind, value, err)
        if value is not None and stat is not None:
            err("criteria", "has both value and statisticalThreshold; keep one")
        elif value is None and stat is None:
            err("criteria", f"comparisonOperator {op!r} needs a value or a statisticalThreshold")
        elif value is not None and kind is not None:
            _check_value(value, kind, op, metric, err)
        elif stat is not None:
            statistic = stat.get("statistic") if isinstance(stat, Mapping) else None
            if statistic not in STATISTICS:
                err(
                    "criteria.statisticalThreshold.statistic",
                    f"{statistic!r} is unknown; use one of {', '.join(STATISTICS)}",
                )
            else:
                _unknown_keys(stat, ("statistic",), "criteria.statisticalThreshold.", err)
            if kind is not None and kind not in NUMERIC_KINDS:
                err("criteria.statisticalThreshold", f"needs a numeric metric, not {metric}")
    duration = c.get("durationSeconds")
    if duration is not None:
        if not _int_in(duration, 1):
            err("criteria.durationSeconds", f"{duration!r} must be a positive integer (seconds)")
        elif kind in LIST_KINDS:
            err("criteria.durationSeconds", f"not allowed on {metric}, a list metric; remove it")
    counts = {}
    for key in ("consecutiveDatapointsToAlarm", "consecutiveDatapointsToClear"):
        n = c.get(key, 1)
        if not _int_in(n, 1, 10):
            err(f"criteria.{key}", f"{n!r} must be an integer 1-10")
        counts[key] = n
    criteria = Criteria(
        operator=op,
        value=value,
        duration_s=duration,
        to_alarm=counts["consecutiveDatapointsToAlarm"],
        to_clear=counts["consecutiveDatapointsToClear"],
        statistic=statistic,
        ml_confidence=confidence,
    )
    return criteria, kind


def _check_operator(
    op: object, metric: str, kind: Kind | None, value: object, err: ErrorSink
) -> Kind | None:
    """The metric's kind once the operator is known to fit it, else None."""
    path = "criteria.comparisonOperator"
    if not isinstance(op, str) or op not in OPERATORS:
        err(path, f"{op!r} is unknown; use one of {', '.join(OPERATORS)}")
        return None
    if kind is None:
        if op in PORT_OPERATORS:
            ports = " and ".join(m for m, k in AWS_METRICS.items() if k is Kind.PORT_LIST)
            err(path, f"{op!r} is for {ports}; custom metric {metric!r} cannot use it")
            return None
        return custom_kind(op, value)
    if op not in KIND_OPERATORS[kind]:
        fits = ", ".join(KIND_OPERATORS[kind])
        err(path, f"{op!r} does not fit {metric}, a {kind.value} metric; use one of {fits}")
        return None
    return kind


def _check_dimension(d: object, metric: str, err: ErrorSink) -> MetricDimension | None:
    if not isinstance(d, Mapping) or not isinstance(d.get("dimensionName"), str):
        err("metricDimension", 'must be {"dimensionName": ..., "operator": "IN" or "NOT_IN"}')
        return None
    _unknown_keys(d, ("dimensionName", "operator"), "metricDimension.", err)
    name = d["dimensionName"]
    operator = d.get("operator", "IN")
    if not _NAME.fullmatch(name):
        err("metricDimension.dimensionName", f"{name!r} must be {_NAME_RULE}")
    if operator not in DIMENSION_OPERATORS:
        err("metricDimension.operator", f"{operator!r} must be IN or NOT_IN")
    if metric not in DIMENSION_METRICS:
        takes = ", ".join(sorted(DIMENSION_METRICS))
        err("metricDimension", f"only {takes} take a dimension; remove it from {metric}")
    return MetricDimension(name, operator)


def _check_behavior(
    doc: object, i: int, seen: dict[str, int], errors: list[str]
) -> Behavior | None:
    if not isinstance(doc, Mapping):
        errors.append(f"behaviors[{i}]: must be an object with a name and a metric")
        return None
    name = doc.get("name")
    label = f"behaviors[{i}] {name!r}" if isinstance(name, str) else f"behaviors[{i}]"
    before = len(errors)

    def err(path: str, message: str) -> None:
        errors.append(f"{label}: {path}: {message}")

    _unknown_keys(doc, BEHAVIOR_KEYS, "", err)
    if name is None:
        err("name", f"missing; every behavior needs a name of {_NAME_RULE}")
    elif not isinstance(name, str) or not _NAME.fullmatch(name):
        err("name", f"{name!r} must be {_NAME_RULE}")
    elif name in seen:
        err("name", f"duplicate of behaviors[{seen[name]}]; names must be unique in a profile")
    else:
        seen[name] = i
    metric = doc.get("metric")
    kind: Kind | None = None
    if not isinstance(metric, str):
        err("metric", "missing; name an aws: metric or a custom metric (without prefix)")
        metric = "?"
    elif metric.startswith("aws:"):
        if metric not in AWS_METRICS:
            err("metric", f"unknown AWS metric {metric!r}; known: {', '.join(AWS_METRICS)}")
        kind = AWS_METRICS.get(metric)
    elif not _NAME.fullmatch(metric):
        err("metric", f"custom metric name {metric!r} must be {_NAME_RULE}")
    dimension = None
    if "metricDimension" in doc:
        dimension = _check_dimension(doc["metricDimension"], metric, err)
    criteria = None
    raw = doc.get("criteria")
    if raw is not None and not isinstance(raw, Mapping):
        err("criteria", "must be an object")
    elif raw:  # an empty criteria object is no criteria
        criteria, kind = _check_criteria(raw, metric, kind, err)
    for key in ("suppressAlerts", "exportMetric"):
        if key in doc and not isinstance(doc[key], bool):
            err(key, f"{doc[key]!r} must be true or false")
    if len(errors) > before:
        return None
    return Behavior(
        name=name,
        metric=metric,
        kind=kind,
        dimension=dimension,
        criteria=criteria,
        suppress_alerts=doc.get("suppressAlerts", False),
        doc=doc,
    )


def _check_behaviors(behaviors: object, errors: list[str]) -> list[Behavior]:
    if not isinstance(behaviors, list):
        errors.append("behaviors: must be a list of behavior objects")
        return []
    if len(behaviors) > MAX_BEHAVIORS:
        errors.append(f"behaviors: {len(behaviors)} behaviors; a profile holds at most 100")
    seen: dict[str, int] = {}
    built = [_check_behavior(doc, i, seen, errors) for i, doc in enumerate(behaviors)]
    return [b for b in built if b is not None]


def validate_behaviors(doc: object) -> list[str]:
    """Every problem with the behaviors of `doc` (a whole profile or a bare list of
    behaviors); [] when they are valid."""
    errors: list[str] = []
    if isinstance(doc, list):
        _check_behaviors(doc, errors)
    elif isinstance(doc, Mapping) and ("behaviors" in doc or "securityProfileName" in doc):
        _check_behaviors(doc.get("behaviors", []), errors)
    else:
        errors.append("expected a security profile (with 'behaviors') or a list of behaviors")
    return errors


def parse_profile(doc: object, source: str = "") -> SecurityProfile:
    """A security profile from describe-security-profile output or a create-security-
    profile body; other AWS fields are kept in `.doc`. Raises ProfileError listing every
    problem."""
    if not isinstance(doc, Mapping):
        raise ProfileError(["a security profile must be a JSON object"], source)
    errors: list[str] = []
    name = doc.get("securityProfileName")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        errors.append(f"securityProfileName: {name!r} must be {_NAME_RULE}")
    behaviors = _check_behaviors(doc.get("behaviors", []), errors)
    if errors:
        raise ProfileError(errors, source)
    return SecurityProfile(name=name, behaviors=tuple(behaviors), doc=doc, source=source)


def parse_dimension(doc: object, source: str = "") -> Dimension:
    """A TOPIC_FILTER dimension as create-dimension takes it or describe-dimension
    prints it. Raises ProfileError listing every problem."""
    if not isinstance(doc, Mapping):
        raise ProfileError(["a dimension must be a JSON object"], source)
    errors: list[str] = []
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        errors.append(f"dimension name: {name!r} must be {_NAME_RULE}")
    label = f"dimension {name!r}" if isinstance(name, str) else "dimension"
    if doc.get("type") != "TOPIC_FILTER":
        errors.append(f"{label}: type: {doc.get('type')!r} must be TOPIC_FILTER")
    filters = doc.get("stringValues")
    if not isinstance(filters, list) or not 1 <= len(filters) <= MAX_DIMENSION_FILTERS:
        errors.append(f"{label}: stringValues: must be a list of 1-100 MQTT topic filters")
        filters = []
    for j, f in enumerate(filters):
        if problem := topic_filter_problem(f):
            errors.append(f"{label}: stringValues[{j}]: {problem}")
    if errors:
        raise ProfileError(errors, source)
    return Dimension(name=name, filters=tuple(filters), doc=doc, source=source)


def is_dimension_doc(doc: object) -> bool:
    """Whether a JSON document is a dimension rather than a security profile."""
    return isinstance(doc, Mapping) and "stringValues" in doc and "securityProfileName" not in doc

"""Security profiles and dimensions as AWS IoT prints them (describe-security-profile,
create-security-profile, create-dimension): parsing and validation. Every problem is
reported, each naming the behavior and the field and saying what would be right.

One path from a file's bytes to what runs: `parse_detect_document` (bytes to JSON with
`parse_json_document`, then `parse_profile` or `parse_dimension`). A profile it accepts
can be judged and every event it causes can be encoded as JSON and CBOR: what JSON or
CBOR could not carry (lone surrogates, NaN, overlong integers, deep nesting) is refused
here, not at the first alarm."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import reprlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
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
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024  # a profile file; 100 behaviors fit many times over
MAX_DOCUMENTS = 1000  # profiles and dimensions in one file
MAX_DEPTH = 32  # nesting; the AWS shapes need 7 levels
# A behavior travels in each of its violation events; AWS IoT takes MQTT messages up to
# 128 KiB, and the measured value needs room too.
MAX_BEHAVIOR_BYTES = 64 * 1024
MAX_COUNT = 2**63 - 1  # value.count is a Long in the AWS API
MAX_DURATION_S = 2**31 - 1  # durationSeconds is an Integer
MAX_ERRORS = 100  # listed per refusal; a huge bad list is summed up, not printed whole
MAX_DIMENSION_FILTERS = 100
STATISTICS = ("p0", "p0.1", "p0.01", "p1", "p10", "p50", "p90", "p99", "p99.9", "p99.99", "p100")
CONFIDENCE_LEVELS = ("LOW", "MEDIUM", "HIGH")
DIMENSION_OPERATORS = ("IN", "NOT_IN")
# AWS IoT documents "Duration: ... Valid values are 300, 600, 900, 1800, or 3600 seconds"
# for the metrics counted over a period: bytes and packets in and out
# (https://docs.aws.amazon.com/iot-device-defender/latest/devguide/detect-device-side-metrics.html)
# and messages sent and received, authorization failures, connection attempts and
# disconnects (https://docs.aws.amazon.com/iot-device-defender/latest/devguide/detect-cloud-side-metrics.html),
# i.e. the counters. Other windows on them load on the device as an on-device extension
# (`aws_differences`); for the other metrics AWS documents no durations.
AWS_DURATIONS = (300, 600, 900, 1800, 3600)
AWS_DURATION_METRICS = frozenset(m for m, k in AWS_METRICS.items() if k is Kind.COUNTER)
# AWS allows a TOPIC_FILTER dimension on aws:source-ip-address too; on the device it narrows
# nothing (a client's source address belongs to its connection, not to a topic).
BEHAVIOR_DIMENSION_METRICS = DIMENSION_METRICS | {"aws:source-ip-address"}
# The Cidr shape of the AWS API: 2-43 characters of hex digits, ':', '.' and '/' (no zone
# ids such as %eth0, no padded prefixes).
_AWS_CIDR = re.compile(r"[a-fA-F0-9:./]{2,43}")
METRIC_TO_RETAIN_KEYS = ("metric", "metricDimension", "exportMetric")
COUNT_KINDS = frozenset({Kind.COUNTER, Kind.GAUGE})  # the aws: numeric metrics count
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
_KEY = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # a key shown as .key in a path, else as ['key']
_SHORT = reprlib.Repr()  # values quoted in messages, cut short
_SHORT.maxstring = 130  # a valid name is shown whole
_SHORT.maxother = 60
_SHORT.maxlevel = 2


def _show(x: object) -> str:
    """`x` as Python writes it, cut to a readable length (non-printables escaped)."""
    return _SHORT.repr(x)


class ProfileError(ValueError):
    """A profile or dimension that cannot be used; `.errors` lists every problem."""

    def __init__(self, errors: list[str], source: str = "", more: int = 0) -> None:
        self.errors = list(errors)
        self.source = source
        self.more = more  # problems found but not worded
        super().__init__("\n".join(self.located()))

    def located(self) -> list[str]:
        """The errors, each prefixed with the source when there is one; those of one
        source cut to MAX_ERRORS. (Without a source they are other errors' lines.)"""
        if not self.source:
            return self.errors
        return [f"{self.source}: {e}" for e in _capped(self.errors, self.more)]


def _capped(errors: list[str], more: int = 0) -> list[str]:
    """At most MAX_ERRORS, then how many more."""
    more += max(0, len(errors) - MAX_ERRORS)
    return [*errors[:MAX_ERRORS], f"... and {more} more problems"] if more else list(errors)


class _LongInteger:
    """An integer literal longer than Python converts (sys.get_int_max_str_digits),
    kept in the document so that validation names where it is."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _integer(text: str) -> int | _LongInteger:
    try:
        return int(text)
    except ValueError:  # longer than the int-string conversion limit
        return _LongInteger(len(text.lstrip("-")))


def parse_json_document(data: bytes, source: str) -> object:
    """The JSON document in a file's bytes. Raises ProfileError naming `source` when the
    bytes are not UTF-8 JSON a profile file can be. Values JSON parses but cannot carry
    onwards (NaN, Infinity, 1e400, lone surrogates, overlong integers) are left for
    validation, which names the behavior and field they are in."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ProfileError(
            [f"more than {MAX_DOCUMENT_BYTES} bytes; a profile file holds at most that"], source
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ProfileError(
            [f"not UTF-8 text (byte {e.start}, line {line}); save it as UTF-8"],
            source,
        ) from None
    try:
        return json.loads(text, parse_int=_integer)
    except json.JSONDecodeError as e:
        raise ProfileError(
            [f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"], source
        ) from None
    except RecursionError:
        raise ProfileError(
            [f"nested too deeply; a profile nests at most {MAX_DEPTH} levels"], source
        ) from None


Path = tuple[str | int, ...]  # keys and list indices from a document's root


def _text_problem(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"{_show(text)} holds the lone surrogate {_show(text[e.start])} (a \\ud800-"
            "\\udfff escape without its pair); strings must be valid Unicode"
        )
    return None


def _carried(x: object) -> bool:
    """Whether JSON and CBOR carry `x`, a value that is no list or object, as it is."""
    if isinstance(x, str):
        return x.isascii() or _text_problem(x) is None
    if isinstance(x, float):
        return math.isfinite(x)
    return x is None or isinstance(x, int)  # bool is an int


def _leaf_problem(x: object) -> str:
    """Why `x`, not `_carried`, cannot be."""
    if isinstance(x, str):
        return _text_problem(x) or ""
    if isinstance(x, float):
        return f"{x!r} is not a finite number; write a number within +-1.8e308"
    if isinstance(x, _LongInteger):
        return f"an integer of {x.digits} digits; a count is at most {MAX_COUNT}"
    return f"{_show(x)} is not a JSON value"


def _key_problem(key: object) -> str:
    return (
        f"key {_leaf_problem(key)}" if isinstance(key, str) else f"key {_show(key)} is not a string"
    )


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels; profiles nest at most 7"


def _value_problems(doc: object) -> Iterator[tuple[Path, Callable[[], str]]]:
    """Where `doc` holds what JSON or CBOR cannot carry (strings that are not Unicode,
    non-finite numbers, overlong integers, non-JSON values, deep nesting), each with
    what words it. Only lists and objects are stacked and only problems are worded, so
    that long lists cost little."""
    if not isinstance(doc, list | Mapping):
        if not _carried(doc):
            yield (), partial(_leaf_problem, doc)
        return
    stack: list[tuple[Path, list[Any] | Mapping[Any, Any]]] = [((), doc)]
    while stack:
        path, node = stack.pop()
        if len(path) >= MAX_DEPTH:
            yield path, _too_deep
            continue
        if isinstance(node, list):
            items: Iterable[tuple[Any, object]] = enumerate(node)
        else:
            items = node.items()
            for key in node:
                if not isinstance(key, str) or not _carried(key):
                    yield path, partial(_key_problem, key)
        inner = []
        for key, value in items:
            if type(value) in (int, bool) or (type(value) is str and value.isascii()):
                continue  # most values, at little cost
            if isinstance(value, list | Mapping):
                if value:
                    inner.append(((*path, key), value))
            elif not _carried(value):
                yield (*path, key), partial(_leaf_problem, value)
        stack.extend(reversed(inner))


def _path_text(path: Path) -> str:
    """('criteria', 'value', 'strings', 2) -> 'criteria.value.strings[2]'"""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{_show(part)}]"
    return out


def _behavior_label(i: int, doc: object) -> str:
    name = doc.get("name") if isinstance(doc, Mapping) else None
    return f"behaviors[{i}] {_show(name)}" if isinstance(name, str) else f"behaviors[{i}]"


def _literal_errors(doc: object) -> tuple[list[str], int]:
    """The first MAX_ERRORS problems of `_value_problems`, each at its place, and how
    many more there are. A place inside a behavior (of a profile, or of a bare list of
    behaviors) names it as the other checks do."""
    behaviors = doc.get("behaviors") if isinstance(doc, Mapping) else doc
    head: Path = ("behaviors",) if isinstance(doc, Mapping) else ()
    errors = []
    problems = _value_problems(doc)
    for path, problem in itertools.islice(problems, MAX_ERRORS):
        message = problem()
        where = _path_text(path)
        at = path[len(head) :]
        if isinstance(behaviors, list) and path[: len(head)] == head and at:
            i, rest = at[0], at[1:]
            if isinstance(i, int):
                label = _behavior_label(i, behaviors[i])
                where = f"{label}: {_path_text(rest)}" if rest else label
        errors.append(f"{where}: {message}" if where else message)
    return errors, sum(1 for _ in problems)


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


# An on-device extension (AWS IoT documents no variables in dimensions and takes these
# literally): in a TOPIC_FILTER they stand for the thing whose metrics are judged, the
# MQTT client of a gateway's broker (docs/capture.md), so one dimension scopes each
# client to its own topics.
THING_VARIABLES = ("${iot:ClientId}", "${iot:Connection.Thing.ThingName}")


def for_thing(dimensions: Iterable[Dimension], thing: str) -> list[Dimension]:
    """`dimensions` with THING_VARIABLES in their filters replaced by `thing`. A name that
    is empty or holds / + or # would widen the filter: its filters keep the variables,
    which then match only themselves."""
    if not thing or any(c in thing for c in "/+#"):
        return list(dimensions)
    out = []
    for d in dimensions:
        filters = d.filters
        for variable in THING_VARIABLES:
            filters = tuple(f.replace(variable, thing) for f in filters)
        out.append(d if filters == d.filters else dataclasses.replace(d, filters=filters))
    return out


def uses_thing_variables(dimension: Dimension) -> bool:
    return any(v in f for f in dimension.filters for v in THING_VARIABLES)


ErrorSink = Callable[[str, str], None]  # (field, message)


def _int_in(x: object, lo: int, hi: int | None = None) -> bool:
    return type(x) is int and x >= lo and (hi is None or x <= hi)


def _is_double(x: object) -> bool:
    """A finite number a Double holds (number and numbers are Doubles in the AWS API)."""
    return is_finite_number(x) and abs(x) <= sys.float_info.max  # type: ignore[arg-type]


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
        err("criteria.value", f"{op} on {metric} takes {example}, got {_show(got)}")
        return
    ((key, v),) = value.items()
    path = f"criteria.value.{key}"
    if key == "count":
        if not _int_in(v, 0, MAX_COUNT):
            err(path, f"{_show(v)} must be an integer >= 0 (at most {MAX_COUNT})")
        return
    if key == "number":
        if not _is_double(v):
            err(path, f"{_show(v)} must be a finite number")
        elif kind in COUNT_KINDS and v < 0:
            err(path, f"{_show(v)} is negative; {metric} counts, its threshold must be >= 0")
        return
    if not isinstance(v, list):
        err(path, f"must be a list, got {_show(v)}")
        return
    for j, item in enumerate(v):
        if key == "ports" and not _int_in(item, 0, 65535):
            err(f"{path}[{j}]", f"{_show(item)} is not a port; ports are integers 0-65535")
        elif key == "cidrs" and (problem := _cidr_problem(item)):
            err(f"{path}[{j}]", problem)
        elif key == "numbers" and not _is_double(item):
            err(f"{path}[{j}]", f"{_show(item)} must be a finite number")
        elif key == "strings" and not isinstance(item, str):
            err(f"{path}[{j}]", f"{_show(item)} must be a string")


def _cidr_problem(item: object) -> str | None:
    if isinstance(item, str) and not _AWS_CIDR.fullmatch(item):
        return (
            f"{_show(item)} is not a CIDR AWS IoT takes: 2-43 characters of hex digits, "
            "':', '.' and '/' (no zone id); write e.g. 192.0.2.0/24 or 2001:db8::/32"
        )
    return cidr_problem(item)


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
            err(
                "criteria",
                f"comparisonOperator {_show(op)} needs a value or a statisticalThreshold",
            )
        elif value is not None and kind is not None:
            _check_value(value, kind, op, metric, err)
        elif stat is not None:
            statistic = stat.get("statistic") if isinstance(stat, Mapping) else None
            if statistic not in STATISTICS:
                err(
                    "criteria.statisticalThreshold.statistic",
                    f"{_show(statistic)} is unknown; use one of {', '.join(STATISTICS)}",
                )
            else:
                _unknown_keys(stat, ("statistic",), "criteria.statisticalThreshold.", err)
            if kind is not None and kind not in NUMERIC_KINDS:
                err("criteria.statisticalThreshold", f"needs a numeric metric, not {metric}")
    duration = c.get("durationSeconds")
    if duration is not None:
        if not _int_in(duration, 1, MAX_DURATION_S):
            err(
                "criteria.durationSeconds",
                f"{_show(duration)} must be a positive integer (seconds, at most {MAX_DURATION_S})",
            )
        elif kind in LIST_KINDS:
            err("criteria.durationSeconds", f"not allowed on {metric}, a list metric; remove it")
    counts = {}
    for key in ("consecutiveDatapointsToAlarm", "consecutiveDatapointsToClear"):
        n = c.get(key, 1)
        if not _int_in(n, 1, 10):
            err(f"criteria.{key}", f"{_show(n)} must be an integer 1-10")
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
        err(path, f"{_show(op)} is unknown; use one of {', '.join(OPERATORS)}")
        return None
    if kind is None:
        if op in PORT_OPERATORS:
            ports = " and ".join(m for m, k in AWS_METRICS.items() if k is Kind.PORT_LIST)
            err(path, f"{_show(op)} is for {ports}; custom metric {_show(metric)} cannot use it")
            return None
        return custom_kind(op, value)
    if op not in KIND_OPERATORS[kind]:
        fits = ", ".join(KIND_OPERATORS[kind])
        err(path, f"{_show(op)} does not fit {metric}, a {kind.value} metric; use one of {fits}")
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
        err("metricDimension.dimensionName", f"{_show(name)} must be {_NAME_RULE}")
    if operator not in DIMENSION_OPERATORS:
        err("metricDimension.operator", f"{_show(operator)} must be IN or NOT_IN")
    if metric not in BEHAVIOR_DIMENSION_METRICS:
        takes = ", ".join(sorted(BEHAVIOR_DIMENSION_METRICS))
        err("metricDimension", f"only {takes} take a dimension; remove it from {metric}")
    return MetricDimension(name, operator)


def _check_metric(metric: object, err: ErrorSink) -> str:
    """The metric named, or '?' when there is none."""
    if not isinstance(metric, str):
        err("metric", "missing; name an aws: metric or a custom metric (without prefix)")
        return "?"
    if metric.startswith("aws:"):
        if metric not in AWS_METRICS:
            err("metric", f"unknown AWS metric {_show(metric)}; known: {', '.join(AWS_METRICS)}")
    elif not _NAME.fullmatch(metric):
        err("metric", f"custom metric name {_show(metric)} must be {_NAME_RULE}")
    return metric


def _check_metrics_to_retain(doc: Mapping[str, Any], errors: list[str]) -> None:
    """additionalMetricsToRetainV2: MetricToRetain objects, as the AWS API takes them."""
    retained = doc.get("additionalMetricsToRetainV2", [])
    if not isinstance(retained, list):
        errors.append('additionalMetricsToRetainV2: must be a list of {"metric": ...} objects')
        return
    for i, item in enumerate(retained):
        label = f"additionalMetricsToRetainV2[{i}]"
        if not isinstance(item, Mapping):
            errors.append(f"{label}: must be an object with a metric")
            continue

        def err(path: str, message: str, label: str = label) -> None:
            errors.append(f"{label}: {path}: {message}")

        _unknown_keys(item, METRIC_TO_RETAIN_KEYS, "", err)
        metric = _check_metric(item.get("metric"), err)
        if "metricDimension" in item:
            _check_dimension(item["metricDimension"], metric, err)
        if "exportMetric" in item and not isinstance(item["exportMetric"], bool):
            err("exportMetric", f"{_show(item['exportMetric'])} must be true or false")


def _check_behavior(
    doc: object, i: int, seen: dict[str, int], errors: list[str]
) -> Behavior | None:
    if not isinstance(doc, Mapping):
        errors.append(f"behaviors[{i}]: must be an object with a name and a metric")
        return None
    label = _behavior_label(i, doc)
    size = len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_BEHAVIOR_BYTES:
        errors.append(
            f"{label}: {size} bytes as JSON; a behavior holds at most {MAX_BEHAVIOR_BYTES} "
            "so that its violation events fit in an MQTT message"
        )
        return None
    name = doc.get("name")
    before = len(errors)

    def err(path: str, message: str) -> None:
        errors.append(f"{label}: {path}: {message}")

    _unknown_keys(doc, BEHAVIOR_KEYS, "", err)
    if name is None:
        err("name", f"missing; every behavior needs a name of {_NAME_RULE}")
    elif not isinstance(name, str) or not _NAME.fullmatch(name):
        err("name", f"{_show(name)} must be {_NAME_RULE}")
    elif name in seen:
        err("name", f"duplicate of behaviors[{seen[name]}]; names must be unique in a profile")
    else:
        seen[name] = i
    metric = _check_metric(doc.get("metric"), err)
    kind = AWS_METRICS.get(metric)
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
            err(key, f"{_show(doc[key])} must be true or false")
    if len(errors) > before or not isinstance(name, str):
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
    if len(behaviors) > MAX_BEHAVIORS:  # the behaviors themselves are not worth checking
        errors.append(f"behaviors: {len(behaviors)} behaviors; a profile holds at most 100")
        return []
    seen: dict[str, int] = {}
    built = [_check_behavior(doc, i, seen, errors) for i, doc in enumerate(behaviors)]
    return [b for b in built if b is not None]


def _extensions(i: int, doc: Mapping[str, Any]) -> list[str]:
    """What AWS IoT refuses in behavior `i` but the device judges: windows other than
    AWS_DURATIONS on the metrics AWS fixes them for."""
    criteria = doc.get("criteria")
    duration = criteria.get("durationSeconds") if isinstance(criteria, Mapping) else None
    metric = doc.get("metric")
    if not isinstance(metric, str) or metric not in AWS_DURATION_METRICS:
        return []
    if not _int_in(duration, 1, MAX_DURATION_S) or duration in AWS_DURATIONS:
        return []
    allowed = ", ".join(map(str, AWS_DURATIONS))
    return [
        f"{_behavior_label(i, doc)}: criteria.durationSeconds: {duration} is not valid for "
        f"{metric}; valid values are {allowed}"
    ]


def aws_differences(profile: SecurityProfile) -> list[str]:
    """What AWS IoT would refuse in a profile the device loads (on-device extensions such
    as windows shorter than 300 s), each naming the behavior and the field; [] when AWS
    would take the profile as it is."""
    return [m for i, b in enumerate(profile.behaviors) for m in _extensions(i, b.doc)]


def check_behaviors(doc: object) -> tuple[list[str], list[str]]:
    """The problems with the behaviors of `doc` the device refuses too, and the on-device
    extensions in them that AWS IoT refuses. `doc` is a bare list of behaviors, its
    request body {"behaviors": [...]}, or a whole profile, checked as `parse_profile`
    checks it so that what the device accepts here loads."""
    behaviors = doc.get("behaviors", []) if isinstance(doc, Mapping) else doc
    errors: list[str] = []
    more = 0
    if isinstance(doc, Mapping) and "securityProfileName" in doc:
        try:
            parse_profile(doc)
        except ProfileError as e:
            errors, more = e.errors, e.more
    elif isinstance(doc, list) or (isinstance(doc, Mapping) and "behaviors" in doc):
        errors, more = _literal_errors(doc)
        if not errors:
            _check_behaviors(behaviors, errors)
    else:
        return ["expected a security profile (with 'behaviors') or a list of behaviors"], []
    extensions = []
    if isinstance(behaviors, list) and len(behaviors) <= MAX_BEHAVIORS:
        for i, item in enumerate(behaviors):
            if isinstance(item, Mapping):
                extensions.extend(_extensions(i, item))
    return _capped(errors, more), extensions


def validate_behaviors(doc: object) -> list[str]:
    """Every problem with the behaviors of `doc` as ValidateSecurityProfileBehaviors of AWS
    IoT lists them, on-device extensions included; [] when they are valid in AWS."""
    errors, extensions = check_behaviors(doc)
    return [*errors, *extensions]


def parse_profile(doc: object, source: str = "") -> SecurityProfile:
    """A security profile from describe-security-profile output or a create-security-
    profile body; other AWS fields are kept in `.doc`. Raises ProfileError listing every
    problem."""
    if not isinstance(doc, Mapping):
        raise ProfileError(["a security profile must be a JSON object"], source)
    errors, more = _literal_errors(doc)
    if errors:
        raise ProfileError(errors, source, more)
    name = doc.get("securityProfileName")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        errors.append(f"securityProfileName: {_show(name)} must be {_NAME_RULE}")
    behaviors = _check_behaviors(doc.get("behaviors", []), errors)
    _check_metrics_to_retain(doc, errors)
    if errors or not isinstance(name, str):
        raise ProfileError(errors, source)
    return SecurityProfile(name=name, behaviors=tuple(behaviors), doc=doc, source=source)


def parse_dimension(doc: object, source: str = "") -> Dimension:
    """A TOPIC_FILTER dimension as create-dimension takes it or describe-dimension
    prints it. Raises ProfileError listing every problem."""
    if not isinstance(doc, Mapping):
        raise ProfileError(["a dimension must be a JSON object"], source)
    errors, more = _literal_errors(doc)
    if errors:
        raise ProfileError(errors, source, more)
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        errors.append(f"dimension name: {_show(name)} must be {_NAME_RULE}")
    label = f"dimension {_show(name)}" if isinstance(name, str) else "dimension"
    if doc.get("type") != "TOPIC_FILTER":
        errors.append(f"{label}: type: {_show(doc.get('type'))} must be TOPIC_FILTER")
    filters = doc.get("stringValues")
    if not isinstance(filters, list) or not 1 <= len(filters) <= MAX_DIMENSION_FILTERS:
        errors.append(f"{label}: stringValues: must be a list of 1-100 MQTT topic filters")
        filters = []
    for j, f in enumerate(filters):
        if problem := topic_filter_problem(f):
            errors.append(f"{label}: stringValues[{j}]: {problem}")
    if errors or not isinstance(name, str):
        raise ProfileError(errors, source)
    return Dimension(name=name, filters=tuple(filters), doc=doc, source=source)


def is_dimension_doc(doc: object) -> bool:
    """Whether a JSON document is a dimension rather than a security profile."""
    return isinstance(doc, Mapping) and "stringValues" in doc and "securityProfileName" not in doc


def parse_detect_document(data: bytes, source: str) -> list[SecurityProfile | Dimension]:
    """The security profiles and dimensions in a file's bytes: one document or a JSON
    list of them (named `source[i]`). Raises ProfileError listing every problem, each
    prefixed with where it is."""
    doc = parse_json_document(data, source)
    docs = doc if isinstance(doc, list) else [doc]
    if len(docs) > MAX_DOCUMENTS:
        raise ProfileError([f"{len(docs)} documents; a file holds at most {MAX_DOCUMENTS}"], source)
    parsed: list[SecurityProfile | Dimension] = []
    errors: list[str] = []
    for i, item in enumerate(docs):
        where = f"{source}[{i}]" if isinstance(doc, list) else source
        try:
            parse = parse_dimension if is_dimension_doc(item) else parse_profile
            parsed.append(parse(item, where))
        except ProfileError as e:
            errors.extend(e.located())
    if errors:
        raise ProfileError(errors)
    return parsed

"""Parsing and validating security profiles, behaviors and dimensions."""

import json
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.metrics import Kind
from agent.core.profile import (
    AWS_DURATION_METRICS,
    AWS_DURATIONS,
    DIMENSION_OPERATORS,
    METRIC_TO_RETAIN_KEYS,
    ProfileError,
    aws_differences,
    check_behaviors,
    is_dimension_doc,
    parse_detect_document,
    parse_dimension,
    parse_json_document,
    parse_profile,
    validate_behaviors,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detect"


def b(name: Any = "b", metric: Any = "aws:all-bytes-out", **criteria: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"metric": metric}
    if name is not None:
        doc["name"] = name
    if criteria:
        doc["criteria"] = criteria
    return doc


LT = {"comparisonOperator": "less-than", "value": {"count": 5}}
IN_PORTS = {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}

# (behaviors, the one error expected: substrings it must hold)
INVALID = [
    ([b(None, **LT)], ["behaviors[0]", "name: missing"]),
    ([b("has space", **LT)], ["name:", "letters, digits"]),
    ([b("x", **LT), b("x", **LT)], ["behaviors[1] 'x'", "duplicate of behaviors[0]"]),
    (
        [b(metric="aws:all-bytes-sideways", **LT)],
        ["metric:", "unknown AWS metric", "aws:all-bytes-out"],
    ),
    ([b(metric=None, **LT)], ["metric: missing"]),
    ([b(metric="cpu usage", **LT)], ["metric:", "custom metric name"]),
    (
        [b(comparisonOperator="in-cidr-set", value={"cidrs": ["10.0.0.0/8"]})],
        ["'b'", "criteria.comparisonOperator", "does not fit aws:all-bytes-out", "less-than"],
    ),
    (
        [b(metric="aws:listening-tcp-ports", **LT)],
        ["criteria.comparisonOperator", "in-port-set, not-in-port-set"],
    ),
    (
        [b(comparisonOperator="bigger", value={"count": 1})],
        ["criteria.comparisonOperator", "unknown"],
    ),
    (
        [b(**LT, statisticalThreshold={"statistic": "p90"})],
        ["criteria:", "both value and statisticalThreshold"],
    ),
    ([b(comparisonOperator="less-than")], ["criteria:", "needs a value or a statisticalThreshold"]),
    ([b(value={"count": 1})], ["criteria.comparisonOperator: missing"]),
    ([b(comparisonOperator="less-than", value={"count": -1})], ["criteria.value.count", ">= 0"]),
    (
        [b(comparisonOperator="less-than", value={"ports": [1]})],
        ["criteria.value", '{"count": ...}'],
    ),
    (
        [b(comparisonOperator="less-than", value={"count": 1, "number": 2})],
        ["criteria.value", "takes"],
    ),
    (
        [b(comparisonOperator="less-than", value={"number": "5"})],
        ["criteria.value.number", "finite"],
    ),
    (
        [
            b(
                metric="aws:destination-ip-addresses",
                comparisonOperator="in-cidr-set",
                value={"cidrs": ["10.0.0.0/8", "10.0.0.300/8"]},
            )
        ],
        ["criteria.value.cidrs[1]", "not a CIDR", "192.0.2.0/24"],
    ),
    (
        [
            b(
                metric="aws:listening-udp-ports",
                comparisonOperator="not-in-port-set",
                value={"ports": [22, 65536]},
            )
        ],
        ["criteria.value.ports[1]", "0-65535"],
    ),
    (
        [
            b(
                metric="aws:listening-udp-ports",
                comparisonOperator="in-port-set",
                value={"ports": [-1]},
            )
        ],
        ["ports[0]", "0-65535"],
    ),
    ([b(**LT, consecutiveDatapointsToAlarm=0)], ["criteria.consecutiveDatapointsToAlarm", "1-10"]),
    ([b(**LT, consecutiveDatapointsToClear=11)], ["criteria.consecutiveDatapointsToClear", "1-10"]),
    (
        [b(**LT, consecutiveDatapointsToClear=2.5)],
        ["criteria.consecutiveDatapointsToClear", "1-10"],
    ),
    (
        [b(metric="aws:listening-tcp-ports", **IN_PORTS, durationSeconds=300)],
        ["criteria.durationSeconds", "list metric", "remove it"],
    ),
    (
        [
            b(
                metric="ssids",
                comparisonOperator="in-set",
                value={"strings": ["a"]},
                durationSeconds=300,
            )
        ],
        ["criteria.durationSeconds", "list metric"],
    ),
    ([b(**LT, durationSeconds=0)], ["criteria.durationSeconds", "positive integer"]),
    ([b(**LT, durationSeconds=-300)], ["criteria.durationSeconds", "positive integer"]),
    ([b(**LT, durationSeconds=True)], ["criteria.durationSeconds", "positive integer"]),
    (
        [b(comparisonOperator="less-than", statisticalThreshold={"statistic": "p95"})],
        ["criteria.statisticalThreshold.statistic", "'p95' is unknown", "p99.9"],
    ),
    (
        [
            b(
                metric="aws:destination-ip-addresses",
                comparisonOperator="in-cidr-set",
                statisticalThreshold={"statistic": "p90"},
            )
        ],
        ["criteria.statisticalThreshold", "numeric metric"],
    ),
    (
        [b(metric="my_ports", **IN_PORTS)],
        ["criteria.comparisonOperator", "custom metric 'my_ports' cannot use it"],
    ),
    (
        [{**b(**LT), "metricDimension": {"dimensionName": "topics"}}],
        ["metricDimension:", "aws:num-messages-sent", "remove it from aws:all-bytes-out"],
    ),
    (
        [
            {
                **b(metric="aws:num-messages-sent", **LT),
                "metricDimension": {"dimensionName": "t", "operator": "OUT"},
            }
        ],
        ["metricDimension.operator", "IN or NOT_IN"],
    ),
    (
        [{**b(metric="aws:num-messages-sent", **LT), "metricDimension": "topics"}],
        ["metricDimension:", "dimensionName"],
    ),
    ([{**b(**LT), "critera": {}}], ["'b'", "critera: unknown field", "criteria"]),
    ([b(**LT, durationSecond=300)], ["criteria.durationSecond: unknown field"]),
    ([{**b(**LT), "suppressAlerts": "yes"}], ["suppressAlerts", "true or false"]),
    ([b(mlDetectionConfig={"confidenceLevel": "VERY"})], ["criteria.mlDetectionConfig", "LOW"]),
    (
        [b(comparisonOperator="less-than", mlDetectionConfig={"confidenceLevel": "LOW"})],
        ["criteria.comparisonOperator", "not used with mlDetectionConfig"],
    ),
    (
        [b(metric="aws:listening-tcp-ports", mlDetectionConfig={"confidenceLevel": "LOW"})],
        ["ML detection needs a numeric metric"],
    ),
    ([{**b(), "criteria": []}], ["criteria: must be an object"]),
    # What AWS IoT refuses and the device refuses too.
    (
        [b(comparisonOperator="less-than", value={"number": -1})],
        ["criteria.value.number", "-1 is negative", "aws:all-bytes-out counts", ">= 0"],
    ),
    (
        [
            b(
                metric="aws:num-listening-tcp-ports",
                comparisonOperator="less-than",
                value={"number": -0.5},
            )
        ],
        ["criteria.value.number", "negative"],
    ),
    (
        [
            b(
                metric="aws:destination-ip-addresses",
                comparisonOperator="in-cidr-set",
                value={"cidrs": ["192.0.2.0/24", "fe80::1%eth0/64"]},
            )
        ],
        ["criteria.value.cidrs[1]", "'fe80::1%eth0/64'", "no zone id"],
    ),
    (
        [
            b(
                metric="aws:source-ip-address",
                comparisonOperator="not-in-cidr-set",
                value={"cidrs": ["0000:0000:0000:0000:0000:0000:0000:0000/000128"]},
            )
        ],
        ["criteria.value.cidrs[0]", "2-43 characters"],
    ),
    (
        [{**b(metric="cpu", **LT), "metricDimension": {"dimensionName": "t"}}],
        ["metricDimension:", "remove it from cpu"],
    ),
    (["not an object"], ["behaviors[0]: must be an object"]),
    ([b(f"b{i}", **LT) for i in range(101)], ["behaviors: 101 behaviors", "at most 100"]),
]


@pytest.mark.parametrize(("behaviors", "expected"), INVALID)
def test_validation_rejects_and_says_where_and_what(behaviors, expected):
    errors = validate_behaviors(behaviors)
    assert len(errors) == 1, errors
    for part in expected:
        assert part in errors[0]
    # the same through a whole profile, and parse_profile lists the same error
    assert validate_behaviors({"securityProfileName": "p", "behaviors": behaviors}) == errors
    with pytest.raises(ProfileError) as info:
        parse_profile({"securityProfileName": "p", "behaviors": behaviors}, "p.json")
    assert info.value.errors == errors
    assert str(info.value) == f"p.json: {errors[0]}"


VALID = [
    b(**LT),
    b("n", comparisonOperator="greater-than-equals", value={"number": 2.5}, durationSeconds=300),
    b("p", "aws:listening-tcp-ports", **IN_PORTS, consecutiveDatapointsToAlarm=10),
    b(
        "c",
        "aws:destination-ip-addresses",
        comparisonOperator="not-in-cidr-set",
        value={"cidrs": []},
    ),
    b("s", comparisonOperator="less-than", statisticalThreshold={"statistic": "p99.99"}),
    b("cs", "cpu", comparisonOperator="less-than", value={"count": 90}),
    b("ss", "ssids", comparisonOperator="not-in-set", value={"strings": ["x"]}),
    b("ns", "fds", comparisonOperator="in-set", value={"numbers": [1, 2.5]}),
    b("ip", "peers", comparisonOperator="in-cidr-set", value={"cidrs": ["192.0.2.9/24"]}),
    b("ml", mlDetectionConfig={"confidenceLevel": "HIGH"}, consecutiveDatapointsToClear=3),
    b("none"),
    {**b("empty"), "criteria": {}},
    {
        **b("dim", "aws:message-byte-size", **LT),
        "metricDimension": {"dimensionName": "t", "operator": "NOT_IN"},
    },
    {
        **b(
            "src",
            "aws:source-ip-address",
            comparisonOperator="in-cidr-set",
            value={"cidrs": ["::/0"]},
        ),
        "exportMetric": True,
    },
    # AWS allows a dimension on the source address too.
    {
        **b(
            "srcdim", "aws:source-ip-address", comparisonOperator="in-cidr-set", value={"cidrs": []}
        ),
        "metricDimension": {"dimensionName": "t", "operator": "NOT_IN"},
    },
    b("neg", "temperature", comparisonOperator="greater-than", value={"number": -40}),
    b("zero", "aws:all-packets-in", comparisonOperator="greater-than", value={"number": 0}),
    b(
        "longest",
        "peers",
        comparisonOperator="in-cidr-set",
        value={"cidrs": ["ffff:" * 7 + "ffff/128"]},
    ),
    *[b(f"d{d}", "aws:num-messages-sent", **LT, durationSeconds=d) for d in (300, 3600)],
    b("gauge", "aws:num-established-tcp-connections", **LT, durationSeconds=10),
    b("custom", "cpu", **LT, durationSeconds=10),
]


def test_valid_behaviors_parse_to_what_they_say():
    assert validate_behaviors(VALID) == []
    p = parse_profile({"securityProfileName": "p", "behaviors": VALID})
    by_name = {x.name: x for x in p.behaviors}
    assert by_name["b"].kind is Kind.COUNTER and by_name["b"].criteria.to_alarm == 1
    assert by_name["n"].criteria.duration_s == 300
    assert by_name["p"].kind is Kind.PORT_LIST and by_name["p"].criteria.to_alarm == 10
    assert by_name["s"].criteria.statistic == "p99.99"
    assert by_name["cs"].kind is Kind.NUMBER
    assert by_name["ss"].kind is Kind.STRING_LIST
    assert by_name["ns"].kind is Kind.NUMBER_LIST
    assert by_name["ip"].kind is Kind.IP_LIST
    assert by_name["ml"].criteria.ml_confidence == "HIGH" and by_name["ml"].criteria.to_clear == 3
    assert by_name["none"].criteria is None and by_name["empty"].criteria is None
    assert by_name["dim"].dimension.operator == "NOT_IN"
    assert by_name["src"].doc["exportMetric"] is True


def test_describe_security_profile_output_parses_with_its_extra_fields_kept():
    doc = json.loads((FIXTURES / "profile-baseline.json").read_text())
    p = parse_profile(doc, "profile-baseline.json")
    assert p.name == "pi-baseline" and p.source == "profile-baseline.json"
    assert [x.name for x in p.behaviors] == [x["name"] for x in doc["behaviors"]]
    for key in (
        "securityProfileArn",
        "alertTargets",
        "additionalMetricsToRetainV2",
        "version",
        "creationDate",
    ):
        assert p.doc[key] == doc[key]
    assert p.behaviors[1].doc == doc["behaviors"][1]  # events carry the behavior as given


def test_profile_errors_are_all_listed():
    with pytest.raises(ProfileError) as info:
        parse_profile(
            {"securityProfileName": "bad name", "behaviors": [b(None), b("x", metric="aws:nope")]}
        )
    assert len(info.value.errors) == 3
    assert info.value.errors[0].startswith("securityProfileName:")
    with pytest.raises(ProfileError, match="must be a JSON object"):
        parse_profile([])
    with pytest.raises(ProfileError, match="behaviors: must be a list"):
        parse_profile({"securityProfileName": "p", "behaviors": {}})
    assert parse_profile({"securityProfileName": "p"}).behaviors == ()


@pytest.mark.parametrize("doc", [{"name": "b", "metric": "aws:all-bytes-out"}, "text", 5, None])
def test_validate_needs_a_profile_or_a_list(doc):
    (error,) = validate_behaviors(doc)
    assert "list of behaviors" in error


def test_dimensions():
    doc = json.loads((FIXTURES / "dimension-sensors.json").read_text())
    assert is_dimension_doc(doc) and not is_dimension_doc({"securityProfileName": "p"})
    d = parse_dimension(doc, "dim.json")
    assert (d.name, d.filters, d.doc["arn"]) == (
        "sensor-topics",
        ("sensors/+/temperature", "sensors/alerts/#"),
        doc["arn"],
    )
    with pytest.raises(ProfileError) as info:
        parse_dimension({"name": "x y", "type": "TOPIC", "stringValues": ["a/#/b", 3]}, "dim.json")
    assert [e.split(":")[0] for e in info.value.errors] == [
        "dimension name",
        "dimension 'x y'",
        "dimension 'x y'",
        "dimension 'x y'",
    ]
    assert "stringValues[0]" in info.value.errors[2] and "stringValues[1]" in info.value.errors[3]
    with pytest.raises(ProfileError, match="1-100 MQTT topic filters"):
        parse_dimension({"name": "x", "type": "TOPIC_FILTER", "stringValues": []})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Documents built from the real vocabulary reach the deeper checks.
vocabulary = st.sampled_from(
    [
        "securityProfileName",
        "behaviors",
        "name",
        "metric",
        "criteria",
        "comparisonOperator",
        "value",
        "count",
        "number",
        "numbers",
        "strings",
        "ports",
        "cidrs",
        "durationSeconds",
        "consecutiveDatapointsToAlarm",
        "consecutiveDatapointsToClear",
        "statisticalThreshold",
        "statistic",
        "mlDetectionConfig",
        "confidenceLevel",
        "metricDimension",
        "dimensionName",
        "operator",
        "suppressAlerts",
        "less-than",
        "in-cidr-set",
        "in-port-set",
        "in-set",
        "aws:all-bytes-out",
        "aws:listening-tcp-ports",
        "aws:destination-ip-addresses",
        "cpu",
        "p90",
        "10.0.0.0/8",
        "::/0",
        "stringValues",
        "type",
        "TOPIC_FILTER",
        "a/#",
    ]
)
vocab_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | st.floats() | vocabulary,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(vocabulary, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, vocab_values))
def test_parsers_raise_nothing_but_profile_error(doc):
    for parse in (parse_profile, parse_dimension):
        try:
            parse(doc)
        except ProfileError as e:
            assert e.errors and all(isinstance(m, str) and m for m in e.errors)
    errors = validate_behaviors(doc)
    assert isinstance(errors, list) and all(isinstance(m, str) for m in errors)


def profile_bytes(*behaviors: Any, **extra: Any) -> bytes:
    return json.dumps({"securityProfileName": "p", "behaviors": list(behaviors), **extra}).encode()


def refusal(data: bytes) -> list[str]:
    with pytest.raises(ProfileError) as info:
        parse_detect_document(data, "p.json")
    return info.value.located()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff{}", ["p.json: not UTF-8 text (byte 0, line 1); save it as UTF-8"]),
        (b"{\n\n", ["p.json: not JSON: Expecting property name enclosed in double quotes"]),
        (b"[" * 5000 + b"]" * 5000, ["p.json: nested too deeply; a profile nests at most 32"]),
        (
            b" " * (8 * 1024 * 1024 + 1),
            ["p.json: more than 8388608 bytes; a profile file holds at most that"],
        ),
    ],
)
def test_bytes_that_are_no_profile_file_are_refused_by_name(data, expected):
    (error,) = refusal(data)
    assert error.startswith(expected[0])


def test_a_byte_order_mark_is_allowed():
    (p,) = parse_detect_document(b"\xef\xbb\xbf" + profile_bytes(), "p.json")
    assert p.name == "p"


STRINGS = {"comparisonOperator": "not-in-set", "value": {"strings": ["evil", "\ud800"]}}


# What JSON parses but JSON and CBOR cannot carry on: refused where it stands.
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            profile_bytes(b("s", "ssids", **STRINGS)),
            "behaviors[0] 's': criteria.value.strings[1]: '\\ud800' holds the lone surrogate",
        ),
        (
            profile_bytes(b("s\udc00", **LT)),
            "behaviors[0] 's\\udc00': name: 's\\udc00' holds the lone surrogate '\\udc00'",
        ),
        (
            profile_bytes(b(**LT), securityProfileDescription="\udfff"),
            "securityProfileDescription: '\\udfff' holds the lone surrogate",
        ),
        (
            profile_bytes(b(**LT), alertTargets={"\ud800": {}}),
            "alertTargets: key '\\ud800' holds the lone surrogate",
        ),
        (
            profile_bytes(b(comparisonOperator="less-than", value={"number": 1})).replace(
                b'"number": 1', b'"number": NaN'
            ),
            "behaviors[0] 'b': criteria.value.number: nan is not a finite number",
        ),
        (
            profile_bytes(b(comparisonOperator="less-than", value={"number": 1})).replace(
                b'"number": 1', b'"number": -1e400'
            ),
            "behaviors[0] 'b': criteria.value.number: -inf is not a finite number",
        ),
        (
            profile_bytes(b(**LT), version=1).replace(b'"version": 1', b'"version": Infinity'),
            "version: inf is not a finite number",
        ),
        (
            profile_bytes(b(**LT)).replace(b'"count": 5', b'"count": ' + b"7" * 5000),
            "behaviors[0] 'b': criteria.value.count: an integer of 5000 digits; a count is at most",
        ),
        (
            profile_bytes(b(**LT), tags=json.loads("[" * 40 + "]" * 40)),
            "tags" + "[0]" * 31 + ": nested deeper than 32 levels",
        ),
    ],
)
def test_what_cannot_be_encoded_is_refused_at_its_field(data, expected):
    errors = refusal(data)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"p.json: {expected}"), errors[0]
    errors[0].encode("utf-8")  # printable anywhere: the surrogate itself is escaped
    # validate-security-profile-behaviors says the same
    said = validate_behaviors(parse_json_document(data, "p.json"))
    assert [f"p.json: {e}" for e in said] == errors


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({**LT, "value": {"count": 2**63}}, "criteria.value.count: 9223372036854775808 must be"),
        ({**LT, "durationSeconds": 2**31}, "criteria.durationSeconds: 2147483648 must be"),
        (
            {"comparisonOperator": "less-than", "value": {"number": 10**309}},
            "criteria.value.number: 1000000",
        ),
        (
            {"comparisonOperator": "in-set", "value": {"numbers": [1, -(10**309)]}},
            "criteria.value.numbers[1]: -1000000",
        ),
    ],
)
def test_numbers_beyond_the_aws_types_are_refused(criteria, expected):
    (error,) = validate_behaviors([b("b", "cpu", **criteria)])
    assert expected in error
    assert len(error) < 300


def test_huge_values_are_refused_in_short_messages():
    huge = b("ss", "ssids", comparisonOperator="in-set", value={"strings": ["x"] * 20_000})
    (error,) = validate_behaviors([huge])
    assert error.startswith("behaviors[0] 'ss': 80095 bytes as JSON; a behavior holds at most")
    bad_ports = b("p", "aws:listening-tcp-ports", comparisonOperator="in-port-set")
    bad_ports["criteria"]["value"] = {"ports": [[0] * 100] * 3 + [-1] * 500}
    errors = validate_behaviors([bad_ports])
    assert len(errors) == 101 and errors[-1] == "... and 403 more problems"
    assert all(len(e) < 200 for e in errors)
    long_name = validate_behaviors([b("n" * 10_000, **LT)])[0]
    assert len(long_name) < 400


def test_validating_a_whole_profile_checks_what_the_loader_checks():
    doc = {"securityProfileName": "bad name", "behaviors": [b(**LT)]}
    (error,) = validate_behaviors(doc)
    assert error.startswith("securityProfileName: 'bad name' must be")
    # the request body of ValidateSecurityProfileBehaviors has no name to check
    assert validate_behaviors({"behaviors": [b(**LT)]}) == []


def test_a_file_holds_a_profile_or_a_list_of_profiles_and_dimensions():
    dimension = json.loads((FIXTURES / "dimension-sensors.json").read_text())
    data = json.dumps([json.loads(profile_bytes(b(**LT))), dimension]).encode()
    profile, dim = parse_detect_document(data, "all.json")
    assert (profile.source, dim.source) == ("all.json[0]", "all.json[1]")
    errors = refusal(json.dumps([{"securityProfileName": "p"}, {"x": 1}]).encode())
    assert errors == [
        "p.json[1]: securityProfileName: None must be 1-128 letters, digits, ':', '_' or '-'"
    ]


def test_a_flood_of_problems_is_listed_up_to_100_with_the_true_count():
    many = b'{"securityProfileName": "p", "tags": [' + b"NaN," * 5000 + b"1]}"
    errors = refusal(many)
    assert len(errors) == 101
    assert (
        errors[0] == "p.json: tags[0]: nan is not a finite number; write a number within +-1.8e308"
    )
    assert errors[-1] == "p.json: ... and 4900 more problems"
    (error,) = refusal(b"[" + b"{}," * 1000 + b"{}]")
    assert error == "p.json: 1001 documents; a file holds at most 1000"


MODEL = botocore.session.get_session().get_service_model("iot")


@pytest.mark.parametrize(
    "cidr",
    [
        "192.0.2.0/24",
        "2001:db8::/32",
        "ffff:" * 7 + "ffff/128",
        "fe80::1%eth0",
        "fe80::1%eth0/64",
        "0000:0000:0000:0000:0000:0000:0000:0000/000128",
        "::ffff:192.0.2.1/128",
        "1",
    ],
)
def test_cidrs_are_valid_exactly_when_the_aws_shape_takes_them(cidr):
    shape = MODEL.shape_for("Cidr").metadata
    aws_takes = shape["min"] <= len(cidr) <= shape["max"] and re.fullmatch(shape["pattern"], cidr)
    behavior = b(metric="peers", comparisonOperator="in-cidr-set", value={"cidrs": [cidr]})
    errors = validate_behaviors([behavior])
    # "1" fits the shape but is no address: AWS's shape is a floor, not all it checks
    assert (errors == []) == bool(aws_takes and cidr != "1"), errors


def test_metric_to_retain_fields_are_the_aws_shapes():
    assert set(METRIC_TO_RETAIN_KEYS) == set(MODEL.shape_for("MetricToRetain").members)
    assert set(DIMENSION_OPERATORS) == set(MODEL.shape_for("DimensionValueOperator").enum)


def retained(*items: Any) -> dict[str, Any]:
    return {"securityProfileName": "p", "behaviors": [], "additionalMetricsToRetainV2": list(items)}


def test_metrics_to_retain_are_checked():
    doc = retained(
        {"metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "t"}},
        {
            "metric": "aws:source-ip-address",
            "metricDimension": {"dimensionName": "t", "operator": "NOT_IN"},
        },
        {"metric": "cpu", "exportMetric": True},
    )
    assert (
        parse_profile(doc).doc["additionalMetricsToRetainV2"] == doc["additionalMetricsToRetainV2"]
    )
    assert validate_behaviors(doc) == []


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([{"metric": "aws:all-bytes-sideways"}], ["[0]: metric:", "unknown AWS metric"]),
        (
            [
                {
                    "metric": "aws:num-messages-sent",
                    "metricDimension": {"dimensionName": "t", "operator": "OVER"},
                }
            ],
            ["[0]: metricDimension.operator", "'OVER' must be IN or NOT_IN"],
        ),
        (
            [
                {"metric": "aws:all-bytes-out"},
                {"metric": "cpu", "metricDimension": {"dimensionName": "t"}},
            ],
            ["[1]: metricDimension:", "remove it from cpu"],
        ),
        ([{"metric": "cpu", "exportMetric": "yes"}], ["[0]: exportMetric", "true or false"]),
        ([{"metric": "cpu", "metricDimensions": {}}], ["[0]: metricDimensions: unknown field"]),
        ([{}], ["[0]: metric: missing"]),
        (["aws:all-bytes-out"], ["[0]: must be an object"]),
    ],
)
def test_bogus_metrics_to_retain_are_refused_by_both_verdicts(items, expected):
    doc = retained(*items)
    with pytest.raises(ProfileError) as info:
        parse_profile(doc)
    (error,) = info.value.errors
    assert error.startswith("additionalMetricsToRetainV2[")
    for part in expected:
        assert part in error
    assert validate_behaviors(doc) == [error]


def test_metrics_to_retain_must_be_a_list():
    (error,) = validate_behaviors({**retained(), "additionalMetricsToRetainV2": {"metric": "x"}})
    assert error.startswith("additionalMetricsToRetainV2: must be a list")


@pytest.mark.parametrize("metric", sorted(AWS_DURATION_METRICS))
def test_aws_durations_on_counted_metrics(metric):
    for d in AWS_DURATIONS:
        assert validate_behaviors([b(metric=metric, **LT, durationSeconds=d)]) == []
    # the device's own windows: AWS says no, the device loads them
    behaviors = [
        b("ok", metric, **LT, durationSeconds=600),
        b("short", metric, **LT, durationSeconds=10),
    ]
    doc = {"securityProfileName": "p", "behaviors": behaviors}
    profile = parse_profile(doc)
    (difference,) = aws_differences(profile)
    assert difference == (
        f"behaviors[1] 'short': criteria.durationSeconds: 10 is not valid for {metric}; "
        "valid values are 300, 600, 900, 1800, 3600"
    )
    assert check_behaviors(doc) == ([], [difference])
    assert check_behaviors(behaviors) == ([], [difference])
    assert validate_behaviors(doc) == [difference] == validate_behaviors(behaviors)


def test_the_counted_metrics_are_those_aws_documents_durations_for():
    assert {
        "aws:all-bytes-in",
        "aws:all-bytes-out",
        "aws:all-packets-in",
        "aws:all-packets-out",
        "aws:num-messages-sent",
        "aws:num-messages-received",
        "aws:num-authorization-failures",
        "aws:num-connection-attempts",
        "aws:num-disconnects",
    } == AWS_DURATION_METRICS


def test_extensions_are_listed_beside_what_the_device_refuses_too():
    behaviors = [b("w", **LT, durationSeconds=1799), b("bad", metric="aws:nope", **LT)]
    errors, extensions = check_behaviors(behaviors)
    assert len(errors) == 1 and "unknown AWS metric" in errors[0]
    assert extensions == [
        "behaviors[0] 'w': criteria.durationSeconds: 1799 is not valid for aws:all-bytes-out; "
        "valid values are 300, 600, 900, 1800, 3600"
    ]
    assert validate_behaviors(behaviors) == errors + extensions
    # a window that is no window at all is the device's error, not an extension
    assert check_behaviors([b(**LT, durationSeconds=0)])[1] == []
    assert aws_differences(parse_profile({"securityProfileName": "p", "behaviors": VALID})) == []

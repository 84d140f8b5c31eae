from pathlib import Path

import pytest

from agent.config import Config, ConfigError, load_config, parse_config

FULL = """
thing_name = "dut-1"
state_dir = "/var/lib/edge-defender"
[sampling]
interval_s = 10
report_interval_s = 300
[mqtt]
endpoint = "xxxx-ats.iot.eu-west-1.amazonaws.com"
port = 8883
ca_file = "/etc/edge-defender/certs/AmazonRootCA1.pem"
cert_file = "/etc/edge-defender/certs/device.pem.crt"
key_file = "/etc/edge-defender/certs/private.pem.key"
format = "cbor"
short_names = true
[detect]
profiles = ["/etc/edge-defender/profiles/*.json"]
violations_topic = "things/{thing_name}/defender/violations"
[[custom_metrics]]
name = "cpu_usage"
type = "number"
source = "cpu_percent"
[[custom_metrics]]
name = "temp"
type = "number"
source = "command"
command = ["/usr/bin/vcgencmd", "measure_temp"]
timeout_s = 2
"""


def test_the_issue_contract_parses() -> None:
    cfg = parse_config(FULL, "c.toml")
    assert cfg.thing_name == "dut-1"
    assert cfg.sampling.interval_s == 10.0 and isinstance(cfg.sampling.interval_s, float)
    assert cfg.mqtt.endpoint == "xxxx-ats.iot.eu-west-1.amazonaws.com"
    assert cfg.mqtt.format == "cbor"
    assert cfg.detect.violations_topic == "things/{thing_name}/defender/violations"
    assert [m.name for m in cfg.custom_metrics] == ["cpu_usage", "temp"]
    assert cfg.custom_metrics[1].command == ["/usr/bin/vcgencmd", "measure_temp"]
    assert cfg.config_file == "c.toml"


def test_empty_file_gives_the_defaults() -> None:
    cfg = parse_config("", "c.toml")
    assert cfg.sampling == Config().sampling
    assert cfg.mqtt.endpoint is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("thing = 1", "c.toml: thing: unknown key"),
        ("[sampling]\ninterval = 5", "c.toml: sampling.interval: unknown key"),
        ('[sampling]\ninterval_s = "10"', "c.toml: sampling.interval_s: must be a number"),
        ("[sampling]\ninterval_s = true", "sampling.interval_s: must be a number"),
        ("[sampling]\ninterval_s = 0", "sampling.interval_s: must be at least 0.1 and at most 86400"),
        ("[sampling]\nreport_interval_s = 0.5", "sampling.report_interval_s: must be at least 1"),
        ("[mqtt]\nport = 70000", "mqtt.port: must be 1-65535"),
        ('[mqtt]\nformat = "xml"', "mqtt.format: must be one of 'json', 'cbor'"),
        ("[mqtt]\nshort_names = 1", "mqtt.short_names: must be true or false"),
        ('[detect]\nprofiles = "a.json"', "detect.profiles: must be a list, each a string"),
        ("[detect]\nprofiles = [1]", "detect.profiles[0]: must be a string"),
        ("mqtt = 3", "mqtt: must be a table"),
        ('[[custom_metrics]]\nname = "a"\ntype = "number"', "custom_metrics[0].source: required"),
        (
            '[[custom_metrics]]\nname = "a"\ntype = "float"\nsource = "cpu_percent"',
            "custom_metrics[0].type: must be one of",
        ),
        (
            '[[custom_metrics]]\nname = "a"\ntype = "number"\nsource = "command"',
            "custom_metrics[0].command: source 'command' needs an argv list",
        ),
        (
            '[[custom_metrics]]\nname = "a"\ntype = "number"\nsource = "disk_percent"',
            "custom_metrics[0].path: source 'disk_percent' needs a path",
        ),
        (
            '[[custom_metrics]]\nname = "a"\ntype = "number"\nsource = "cpu_percent"\n'
            '[[custom_metrics]]\nname = "a"\ntype = "number"\nsource = "process_count"',
            "custom_metrics[1].name: duplicate custom metric 'a'",
        ),
        ("thing_name = ", "c.toml: not valid TOML"),
    ],
)
def test_errors_name_the_file_and_key_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("c.toml: ")


def test_load_config_reads_the_file_and_names_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('thing_name = "pi-7"\n')
    assert load_config(path).thing_name == "pi-7"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(tmp_path / "nope.toml")

"""Transport set-up without a broker; tests/system/test_system_mqtt.py runs it against one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from awscrt.mqtt5 import ExtendedValidationAndFlowControlOptions as FlowControl

from agent.config import Config, ConfigError, MqttConfig
from agent.publish.mqtt import Transport, flow_control_for


def transport(cfg: Config) -> Transport:
    return Transport(cfg, [], threading.Event())


def config(**mqtt: object) -> Config:
    return Config(thing_name="pi-7", mqtt=MqttConfig(**mqtt), config_file="/etc/ed.toml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("a1b2c3-ats.iot.eu-west-1.amazonaws.com", FlowControl.AWS_IOT_CORE_DEFAULTS),
        ("A1B2C3-ATS.IOT.US-EAST-1.AMAZONAWS.COM.", FlowControl.AWS_IOT_CORE_DEFAULTS),
        ("a1b2c3.ats.iot.cn-north-1.amazonaws.com.cn", FlowControl.AWS_IOT_CORE_DEFAULTS),
        ("broker.local", FlowControl.NONE),
        ("127.0.0.1", FlowControl.NONE),
        ("amazonaws.com.attacker.example", FlowControl.NONE),
        ("notamazonaws.com", FlowControl.NONE),
    ],
)
def test_aws_limits_apply_only_to_aws_endpoints(endpoint: str, expected: FlowControl) -> None:
    assert flow_control_for(endpoint) is expected


def test_endpoint_is_required() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/ed.toml: mqtt.endpoint: required"):
        transport(config())


def test_tls_needs_a_client_certificate_and_key() -> None:
    with pytest.raises(ConfigError, match=r"mqtt.cert_file and mqtt.key_file: required"):
        transport(config(endpoint="broker.local", cert_file="/x/cert.pem"))


def test_plain_connection_needs_no_certificate() -> None:
    assert not transport(config(endpoint="broker.local", tls=False)).running


def test_missing_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = config(
        endpoint="broker.local",
        cert_file=str(tmp_path / "missing.pem"),
        key_file=str(tmp_path / "missing.key"),
    )
    with pytest.raises(ConfigError, match=r"cannot use them: .*missing\.pem"):
        transport(cfg)


def test_unusable_pem_is_a_config_error(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"^/etc/ed.toml: mqtt.cert_file, mqtt.key_file"):
        transport(config(endpoint="broker.local", cert_file=str(cert), key_file=str(key)))

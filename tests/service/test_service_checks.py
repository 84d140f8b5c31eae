"""`edge-defender check-config` and check_tls_files against real files: configs,
certificates and keys made here with `cryptography`, profiles on disk."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.cli import main
from agent.config import MqttConfig
from agent.files import data
from agent.service.checks import check_tls_files, tls_findings
from agent.store.history import history_path, open_history

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)
    return path


def certificate(
    subject_key: ec.EllipticCurvePrivateKey,
    name: str,
    not_before: datetime,
    not_after: datetime,
    issuer: tuple[ec.EllipticCurvePrivateKey, str] | None = None,
) -> x509.Certificate:
    signer, issuer_name = issuer or (subject_key, name)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(signer, hashes.SHA256())
    )


def write_certs(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


class Device:
    """A CA, a device certificate it signed and the device key, in `folder`."""

    def __init__(self, folder: Path, *, not_before: datetime, not_after: datetime) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ca = write_certs(
            folder / "ca.pem", certificate(ca_key, "test CA", NOW - DAY, NOW + 3650 * DAY)
        )
        device = certificate(self.key, "pi-1", not_before, not_after, issuer=(ca_key, "test CA"))
        self.cert = write_certs(folder / "device.pem.crt", device)
        self.key_file = write_key(folder / "private.pem.key", self.key)

    def mqtt(self) -> MqttConfig:
        return MqttConfig(
            endpoint="broker.example",
            ca_file=str(self.ca),
            cert_file=str(self.cert),
            key_file=str(self.key_file),
        )


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path, not_before=NOW - DAY, not_after=NOW + 365 * DAY)


def write_config(tmp_path: Path, device: Device, profiles: str | None = None) -> Path:
    if profiles is None:
        folder = tmp_path / "profiles"
        folder.mkdir(exist_ok=True)
        (folder / "example.json").write_bytes(data("example-profile.json"))
        profiles = str(folder / "*.json")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[mqtt]\nendpoint = "broker.example"\nca_file = "{device.ca}"\n'
        f'cert_file = "{device.cert}"\nkey_file = "{device.key_file}"\n'
        f'[detect]\nprofiles = ["{profiles}"]\n'
        '[[custom_metrics]]\nname = "cpu_usage"\ntype = "number"\nsource = "cpu_percent"\n'
    )
    return config


def check_config(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check-config", "--config", str(config)])
    return code, capsys.readouterr().out.splitlines()


def test_a_valid_setup_passes(
    tmp_path: Path, device: Device, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_config(write_config(tmp_path, device), capsys) == (0, ["configuration ok"])
    assert check_tls_files(device.mqtt()) == []


def test_the_example_config_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(data("config.toml"))
    code, lines = check_config(config, capsys)
    assert code == 0
    assert lines[-1] == "configuration ok"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[mqtt]\nprot = 1\n", "mqtt.prot: unknown key"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: must be 1-65535"),
        ("[mqtt\n", "not valid TOML"),
    ],
)
def test_a_broken_config_is_one_line_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(content)
    code, lines = check_config(config, capsys)
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"{config}: {problem}")


def test_a_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "absent.toml"
    assert check_config(config, capsys) == (
        1,
        [f"{config}: cannot read: No such file or directory"],
    )


def test_a_missing_key(device: Device) -> None:
    device.key_file.unlink()
    assert check_tls_files(device.mqtt()) == [
        f"{device.key_file}: cannot read: No such file or directory"
    ]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_key_open_to_group_or_others(device: Device, mode: int) -> None:
    device.key_file.chmod(mode)
    assert check_tls_files(device.mqtt()) == [
        f"{device.key_file}: mode {mode:04o} lets group or others in;"
        f" want 0600 (chmod 600 {device.key_file})"
    ]


def test_a_read_only_key_for_the_owner_is_fine(device: Device) -> None:
    device.key_file.chmod(0o400)
    assert check_tls_files(device.mqtt()) == []


def deep_problems(device: Device) -> list[str]:
    return [str(f) for f in tls_findings(device.mqtt(), time.time()) if not f.warning]


def test_a_key_that_does_not_match_the_certificate(device: Device) -> None:
    write_key(device.key_file, ec.generate_private_key(ec.SECP256R1()))
    # OpenSSL's key match is check-config's (the daemon leaves it to awscrt).
    assert check_tls_files(device.mqtt()) == []
    assert deep_problems(device) == [
        f"{device.key_file}: does not match the certificate {device.cert}"
    ]


def test_an_encrypted_key(device: Device) -> None:
    write_key(device.key_file, device.key, password=b"secret")
    assert check_tls_files(device.mqtt()) == [
        f"{device.key_file}: encrypted with a passphrase; the agent needs it without"
    ]


def test_a_key_that_is_not_a_key(device: Device) -> None:
    device.key_file.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert deep_problems(device) == [f"{device.key_file}: not a PEM private key OpenSSL can read"]


def test_an_expired_certificate(tmp_path: Path) -> None:
    device = Device(tmp_path, not_before=NOW - 400 * DAY, not_after=NOW - 35 * DAY)
    expired = (NOW - 35 * DAY).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert check_tls_files(device.mqtt()) == [f"{device.cert}: expired on {expired}"]


def test_a_certificate_not_valid_yet(tmp_path: Path) -> None:
    device = Device(tmp_path, not_before=NOW + 2 * DAY, not_after=NOW + 400 * DAY)
    start = (NOW + 2 * DAY).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert check_tls_files(device.mqtt()) == [f"{device.cert}: not valid before {start}"]


def test_a_certificate_expiring_within_30_days_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(tmp_path, not_before=NOW - DAY, not_after=NOW + 12 * DAY + HOUR)
    end = (NOW + 12 * DAY + HOUR).strftime("%Y-%m-%d %H:%M:%S UTC")
    with caplog.at_level(logging.WARNING):
        assert check_tls_files(device.mqtt()) == []
    assert [r.getMessage() for r in caplog.records] == [
        f'tls_file_warning file={device.cert} warning="expires on {end}, in 12 days"'
    ]
    code, lines = check_config(write_config(tmp_path, device), capsys)
    assert (code, lines) == (
        0,
        [f"{device.cert}: warning: expires on {end}, in 12 days", "configuration ok"],
    )


def test_utc_and_generalized_times_are_both_read(tmp_path: Path) -> None:
    # RFC 5280: UTCTime up to 2049, GeneralizedTime from 2050 on.
    begin, end = datetime(1999, 6, 1, tzinfo=UTC), datetime(2051, 6, 1, tzinfo=UTC)
    device = Device(tmp_path, not_before=begin, not_after=end)
    mqtt = MqttConfig(cert_file=str(device.cert), key_file=str(device.key_file))
    assert tls_findings(mqtt, (begin + DAY).timestamp()) == []
    [before] = tls_findings(mqtt, (begin - DAY).timestamp())
    assert str(before) == f"{device.cert}: not valid before 1999-06-01 00:00:00 UTC"
    [after] = tls_findings(mqtt, (end + DAY).timestamp())
    assert str(after) == f"{device.cert}: expired on 2051-06-01 00:00:00 UTC"


def test_an_expired_ca_in_a_bundle_is_named_by_position(device: Device) -> None:
    old_key = ec.generate_private_key(ec.SECP256R1())
    good = x509.load_pem_x509_certificate(device.ca.read_bytes())
    expired = certificate(old_key, "old CA", NOW - 900 * DAY, NOW - 30 * DAY)
    write_certs(device.ca, good, expired)
    [problem] = check_tls_files(device.mqtt())
    assert problem.startswith(f"{device.ca}: certificate 2 of 2: expired on ")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"hello\n", "no PEM certificate in it (-----BEGIN CERTIFICATE-----)"),
        (
            b"-----BEGIN CERTIFICATE-----\nMIIBkTCB+w==\n-----END CERTIFICATE-----\n",
            "not a valid X.509 certificate",
        ),
    ],
)
def test_a_certificate_file_that_is_not_one(device: Device, content: bytes, problem: str) -> None:
    device.ca.write_bytes(content)
    [line] = check_tls_files(device.mqtt())
    assert line.startswith(f"{device.ca}: {problem}")


def test_a_certificate_without_a_key_is_named_by_key_path(device: Device) -> None:
    mqtt = MqttConfig(cert_file=str(device.cert))
    assert check_tls_files(mqtt) == ["mqtt.key_file: required when mqtt.cert_file is set"]


def test_a_broker_with_tls_needs_the_client_certificate() -> None:
    assert check_tls_files(MqttConfig(endpoint="broker.example")) == [
        "mqtt.cert_file: required with mqtt.key_file when mqtt.tls is true"
        " (false only for a local broker)"
    ]
    assert check_tls_files(MqttConfig()) == []  # no broker: nothing to connect to


def test_without_tls_the_files_are_not_read(tmp_path: Path) -> None:
    absent = str(tmp_path / "absent")
    mqtt = MqttConfig(tls=False, ca_file=absent, cert_file=absent, key_file=absent)
    assert check_tls_files(mqtt) == []


def test_every_problem_is_listed_one_per_line(
    tmp_path: Path, device: Device, capsys: pytest.CaptureFixture[str]
) -> None:
    device.key_file.chmod(0o644)
    device.ca.unlink()
    folder = tmp_path / "profiles"
    folder.mkdir()
    profile = json.loads(data("example-profile.json"))
    profile["behaviors"][0]["criteria"]["value"] = {"ports": [70000]}
    (folder / "bad.json").write_text(json.dumps(profile))
    code, lines = check_config(write_config(tmp_path, device, str(folder / "*.json")), capsys)
    assert code == 1
    assert lines[0].startswith(f"{device.key_file}: mode 0644")
    assert lines[1] == f"{device.ca}: cannot read: No such file or directory"
    assert len(lines) == 3
    assert lines[2].startswith(f"{folder / 'bad.json'}: ")
    assert "70000" in lines[2]


def test_no_profile_at_all_is_a_warning(
    tmp_path: Path, device: Device, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, device, str(tmp_path / "none" / "*.json"))
    code, lines = check_config(config, capsys)
    assert code == 0
    warning = (
        f"{config}: warning: detect.profiles: no security profile in"
        f" {tmp_path / 'none' / '*.json'};"
    )
    assert lines[0] == f"{warning} the built-in default profile judges"
    config.write_text(config.read_text().replace("[detect]", "[detect]\nbuiltin_profile = false"))
    code, lines = check_config(config, capsys)
    assert code == 0
    assert lines[0] == f"{warning} nothing is judged (detect.builtin_profile is false)"


def local_config(tmp_path: Path, state: Path, extra: str = "") -> Path:
    """A config with no broker and no profile (a warning), keeping state in `state`."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{state}"\n{extra}\n[detect]\nprofiles = []\nbuiltin_profile = true\n'
    )
    return config


def problems_of(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code, lines = check_config(config, capsys)
    return code, [line for line in lines if ": warning: " not in line]


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real file system of its own at `where` (root only): full or read-only on demand."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


MOVED = "the agent will move it aside and start a new one"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")


def test_a_state_dir_that_will_be_created_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "new" / "state"
    assert problems_of(local_config(tmp_path, state), capsys) == (0, ["configuration ok"])
    assert not state.exists(), "check-config creates nothing"


def test_a_used_state_dir_with_its_store_passes_and_is_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with open_history(history_path(state)) as store:
        store.save_counters({"last_report_id": 7})
    before = sorted(p.name for p in state.iterdir())
    assert problems_of(local_config(tmp_path, state), capsys) == (0, ["configuration ok"])
    assert sorted(p.name for p in state.iterdir()) == before


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", f"corrupt: empty (0 bytes); {MOVED}"),
        (b"not a database\n" * 100, f"corrupt: file is not a database; {MOVED}"),
    ],
)
def test_a_corrupt_store_is_reported_not_moved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = history_path(state)
    store.write_bytes(content)
    assert problems_of(local_config(tmp_path, state), capsys) == (1, [f"{store}: {problem}"])
    assert store.read_bytes() == content
    assert sorted(p.name for p in state.iterdir()) == [store.name]


def test_a_store_with_a_damaged_page_is_corrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with open_history(history_path(state)):
        pass
    store = history_path(state)
    data = bytearray(store.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema's page, past the header
    store.write_bytes(bytes(data))
    code, lines = problems_of(local_config(tmp_path, state), capsys)
    assert code == 1
    assert lines == [f"{store}: corrupt: database disk image is malformed; {MOVED}"]


def test_the_spool_is_checked_only_with_a_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "spool.db").write_bytes(b"")
    assert problems_of(local_config(tmp_path, state), capsys) == (0, ["configuration ok"])
    broker = '[mqtt]\nendpoint = "localhost"\ntls = false'
    config = local_config(tmp_path, state, broker)
    assert problems_of(config, capsys) == (
        1,
        [f"{state / 'spool.db'}: corrupt: empty (0 bytes); {MOVED}"],
    )


def test_a_state_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.write_text("")
    assert problems_of(local_config(tmp_path, state), capsys) == (
        1,
        [f"{state}: not a directory (state_dir must be one)"],
    )


@needs_root
def test_a_read_only_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64m") as state:
        assert problems_of(local_config(tmp_path, state), capsys) == (
            1,
            [f"{state}: not writable: Read-only file system; the agent keeps its state here"],
        )
    with tmpfs(tmp_path / "ro2", "ro,size=64m") as ro:
        assert problems_of(local_config(tmp_path, ro / "state"), capsys) == (
            1,
            [f"{ro / 'state'}: cannot be created: {ro} is not writable"],
        )


@needs_root
def test_a_full_disk_says_how_much_is_free(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "small", "size=4m") as state:
        config = local_config(tmp_path, state)
        code, lines = problems_of(config, capsys)
        assert code == 1
        assert lines == [
            f"{state}: its file system is full (4.0 MiB free); the agent needs 8 MiB for its store"
        ]
        with open(state / "filler", "wb") as f, contextlib.suppress(OSError):  # ENOSPC
            f.write(bytes(5 * 1024 * 1024))
        code, lines = problems_of(config, capsys)
        assert lines == [
            f"{state}: its file system is full (0.0 MiB free); the agent needs 8 MiB for its store"
        ]
    with tmpfs(tmp_path / "tight", "size=32m") as state:
        code, lines = check_config(local_config(tmp_path, state), capsys)
        assert code == 0
        assert f"{state}: warning: its file system is nearly full (32.0 MiB free)" in lines


def test_a_config_others_may_write_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = local_config(tmp_path, tmp_path / "state")
    config.chmod(0o666)
    assert check_config(config, capsys) == (
        1,
        [f"{config}: mode 0666 lets group or others write it (chmod go-w {config})"],
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"a = " + b"[" * 3000 + b"]" * 3000, "not valid TOML: arrays or tables nested too deep"),
        (b"[mqtt]\nport = " + b"7" * 5000, "not valid TOML: an integer of over 4300 digits"),
        (b'thing_name = "pi\xff"\n', "not UTF-8 text: byte 0xff on line 1 (TOML is UTF-8)"),
        (b"[sampling]\ninterval_s = nan\n", "sampling.interval_s: must be at least 0.1"),
        (b'thing_name = "a/+"\n', "thing_name: must be 1-128 of a-z A-Z 0-9 : _ -"),
    ],
)
def test_configs_that_crashed_it_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(content)
    code, [line] = check_config(config, capsys)
    assert code == 1
    assert line.startswith(f"{config}: {problem}")


def test_behaviors_without_a_source_are_warned_of_with_the_reason(
    tmp_path: Path, device: Device, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    behaviors = [
        {
            "name": "auth",
            "metric": "aws:num-authorization-failures",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}},
        },
        {
            "name": "scan",
            "metric": "num_scan_sources",
            "criteria": {"comparisonOperator": "less-than", "value": {"number": 1}},
        },
        {
            "name": "temp",
            "metric": "board_temp",
            "criteria": {"comparisonOperator": "less-than", "value": {"number": 80}},
        },
    ]
    (folder / "gw.json").write_text(
        json.dumps({"securityProfileName": "gw", "behaviors": behaviors})
    )
    config = write_config(tmp_path, device, str(folder / "*.json"))
    code, lines = check_config(config, capsys)
    assert code == 0  # warnings: the agent runs and judges the rest
    where = f"{folder / 'gw.json'}: warning: gw/"
    assert lines[:3] == [
        f"{where}auth: not judged: aws:num-authorization-failures: no source on this device:"
        " packet capture is off ([capture] enabled)",
        f"{where}scan: not judged: num_scan_sources: no source on this device: its feature is"
        " off ([capture] enabled)",
        f"{where}temp: not judged: board_temp: no source on this device: no [[custom_metrics]]"
        " entry or capture feature makes it",
    ]
    # With capture and the broker watch on, only the custom metric lacks a source.
    text = config.read_text() + "[capture]\nenabled = true\n[capture.broker]\nenabled = true\n"
    config.write_text(text)
    code, lines = check_config(config, capsys)
    assert [line for line in lines if "not judged" in line] == [lines[0]]
    assert "gw/temp" in lines[0]


def test_on_device_extensions_are_flagged_as_not_valid_in_aws(
    tmp_path: Path, device: Device, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "short"
    folder.mkdir()
    burst = {
        "name": "burst",
        "metric": "aws:all-bytes-out",
        "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}},
    }
    burst["criteria"]["durationSeconds"] = 10  # type: ignore[index]
    (folder / "p.json").write_text(json.dumps({"securityProfileName": "p", "behaviors": [burst]}))
    code, lines = check_config(write_config(tmp_path, device, str(folder / "*.json")), capsys)
    assert code == 0  # the device loads it: a warning
    (line,) = [line for line in lines if "not valid in AWS IoT" in line]
    assert line.startswith(f"{folder / 'p.json'}: warning: p: behaviors[0] 'burst':")
    assert "durationSeconds: 10" in line
    # A thing variable in a dimension's filter is one too.
    (folder / "own.json").write_text(
        json.dumps({"name": "own", "type": "TOPIC_FILTER", "stringValues": ["d/${iot:ClientId}/#"]})
    )
    code, lines = check_config(write_config(tmp_path, device, str(folder / "*.json")), capsys)
    assert code == 0
    assert any(
        line.startswith(f"{folder / 'own.json'}: warning: dimension own: a thing variable")
        for line in lines
    ), lines


def test_ml_behaviors_with_samples_further_apart_than_their_window_are_flagged(
    tmp_path: Path, device: Device, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    behavior = {
        "name": "upload",
        "metric": "aws:all-bytes-out",
        "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
    }
    doc = {"securityProfileName": "p", "behaviors": [behavior]}
    (folder / "p.json").write_text(json.dumps(doc))
    config = write_config(tmp_path, device, str(folder / "*.json"))
    slow = "[sampling]\ninterval_s = 600.0\n[detect]"
    config.write_text(config.read_text().replace("[detect]", slow))
    code, lines = check_config(config, capsys)
    assert code == 0
    assert any("ML behaviors judge a rolling 300 s window" in line for line in lines), lines

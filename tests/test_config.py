import dataclasses
import os
import pwd
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent
import agent.config
from agent.config import (
    AuditConfig,
    AutoResponseConfig,
    BrokerCaptureConfig,
    CaptureConfig,
    Config,
    ConfigError,
    ConnectionsCaptureConfig,
    ControlConfig,
    CustomMetricConfig,
    DetectConfig,
    DnsCaptureConfig,
    MitigationConfig,
    MqttConfig,
    SamplingConfig,
    ScanCaptureConfig,
    StoreConfig,
    load_config,
    parse_config,
)

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
        (
            "[sampling]\ninterval_s = 0",
            "sampling.interval_s: must be at least 0.1 and at most 86400",
        ),
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sampling]\ninterval_s = nan", "sampling.interval_s: must be at least 0.1 and at most"),
        ("[sampling]\ninterval_s = inf", "sampling.interval_s: must be at least 0.1"),
        ("[sampling]\nreport_interval_s = -inf", "sampling.report_interval_s: must be at least 1"),
        ("[sampling]\nmax_list = -1", "sampling.max_list: must be 0-10000, got -1"),
        ("[mqtt]\nport = 0", "mqtt.port: must be 1-65535, got 0"),
        ("[mqtt]\nspool_max_bytes = 0", "mqtt.spool_max_bytes: must be 131072-4294967296, got 0"),
        ("[mqtt]\nkeep_alive_s = 65536", "mqtt.keep_alive_s: must be 0-65535, got 65536"),
        ("[mqtt]\nkeep_alive_s = -1", "mqtt.keep_alive_s: must be 0-65535, got -1"),
        ("[detect]\nstale_after_s = 0", "detect.stale_after_s: must be at least 1 and at most"),
        (
            "[detect]\nbaseline_s = nan",
            "detect.baseline_s: must be at least 1 and at most 315360000",
        ),
        ("[detect]\nmin_baseline_datapoints = 0", "detect.min_baseline_datapoints: must be 1-"),
        ("[store]\nretention_days = -1", "store.retention_days: must be 0-36500, got -1.0"),
        ("[store]\nmetrics_retention_days = -0.5", "store.metrics_retention_days: must be 0-36500"),
        ("[detect]\nbuiltin_profile = 1", "detect.builtin_profile: must be true or false, got 1"),
        ('thing_name = ""', "thing_name: must be 1-128 of a-z A-Z 0-9 : _ - (an AWS IoT thing"),
        ('thing_name = "pi+1"', "thing_name: must be 1-128 of a-z A-Z 0-9 : _ -"),
        ('thing_name = "pi/#"', "got 'pi/#'"),
        ('thing_name = "pi\\u0001"', "thing_name: must be 1-128"),
        (f'thing_name = "{"x" * 129}"', "thing_name: must be 1-128"),
        ('thing_name = "pi\\u0000"', "thing_name: must not hold the character '\\x00'"),
        ('state_dir = "/var/lib/a\\u0000b"', "state_dir: must not hold the character '\\x00'"),
        ('state_dir = ""', "state_dir: must not be empty"),
        ('[detect]\nprofiles = ["/a\\u0000"]', "detect.profiles[0]: must not hold the character"),
        ('[mqtt]\nkey_file = "k\\u0000"', "mqtt.key_file: must not hold the character"),
        (f'state_dir = "/{"a" * 4096}"', "state_dir: must be at most 4096 characters, got 4097"),
        ("[detect]\nprofiles = [" + '"a",' * 1001 + "]", "detect.profiles: must have at most 1000"),
        ('[mqtt]\nendpoint = "mqtts://broker:8883"', "mqtt.endpoint: must be a host name or IP"),
        ('[mqtt]\nclient_id = "a\\nb"', "mqtt.client_id: must be at most 128 bytes of printable"),
        (
            '[detect]\nviolations_topic = "a/+/b"',
            "detect.violations_topic: must not hold the wildcards",
        ),
        (
            '[detect]\nviolations_topic = "a/#"',
            "detect.violations_topic: must not hold the wildcards",
        ),
        (
            '[detect]\nviolations_topic = "a//b"',
            "detect.violations_topic: must not have empty levels",
        ),
        (
            '[detect]\nviolations_topic = "/a"',
            "detect.violations_topic: must not have empty levels",
        ),
        ('[detect]\nviolations_topic = ""', "detect.violations_topic: must not have empty levels"),
        ('[detect]\nviolations_topic = "$aws/x"', "detect.violations_topic: must not start with $"),
        (
            f'thing_name = "{"t" * 128}"\n'
            f'[detect]\nviolations_topic = "{"v" * 128}/{{thing_name}}"',
            "detect.violations_topic: must be at most 256 bytes",
        ),
        (
            '[[custom_metrics]]\nname = "aws:cpu"\ntype = "number"\nsource = "cpu_percent"',
            "custom_metrics[0].name: must be 1-128 of a-z A-Z 0-9 : _ - and not start with aws:",
        ),
        (
            '[[custom_metrics]]\nname = "AWS:cpu"\ntype = "number"\nsource = "cpu_percent"',
            "custom_metrics[0].name: must be 1-128",
        ),
        (
            '[[custom_metrics]]\nname = "cpu usage"\ntype = "number"\nsource = "cpu_percent"',
            "custom_metrics[0].name: must be 1-128",
        ),
        (
            '[[custom_metrics]]\nname = "t"\ntype = "number"\nsource = "command"\ncommand = [""]',
            "custom_metrics[0].command: source 'command' needs an argv list",
        ),
        (
            '[[custom_metrics]]\nname = "t"\ntype = "number"\nsource = "command"\n'
            'command = ["/bin/echo"]\ntimeout_s = nan',
            "custom_metrics[0].timeout_s: must be positive and at most 30, got nan",
        ),
        (
            '[[custom_metrics]]\nname = "t"\ntype = "number"\nsource = "command"\n'
            'command = ["/bin/echo"]\ntimeout_s = 0',
            "custom_metrics[0].timeout_s: must be positive",
        ),
        (
            '[[custom_metrics]]\nname = "a"\ntype = "number"\nsource = "command"\n'
            'command = ["/bin/a"]\ntimeout_s = 20\n'
            '[[custom_metrics]]\nname = "b"\ntype = "number"\nsource = "command"\n'
            'command = ["/bin/b"]\ntimeout_s = 10.5',
            "custom_metrics: the commands' timeout_s add up to 30.5 s; at most 30 (a cycle",
        ),
        ("a = " + "[" * 5000 + "]" * 5000, "not valid TOML: arrays or tables nested too deep"),
        ("[mqtt]\nport = " + "9" * 5000, "not valid TOML: an integer of over 4300 digits"),
        ("[sampling]\ninterval_s = " + "9" * 400, "sampling.interval_s: must be a number, got an"),
        ("[mqtt]\nport = " + "9" * 400, "mqtt.port: must be 1-65535, got 99999"),
        ('"a\\nb" = 1', 'c.toml: "a\\nb": unknown key'),
    ],
)
def test_values_that_would_crash_or_mislead_the_agent_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("c.toml: ")
    assert "\n" not in str(err.value)
    assert len(str(err.value)) < 400


@pytest.mark.parametrize(
    "text",
    [
        "[sampling]\ninterval_s = 0.1\nreport_interval_s = 86400\nmax_list = 0",
        "[mqtt]\nport = 1\nkeep_alive_s = 0\nspool_max_bytes = 131072",
        "[mqtt]\nport = 65535\nkeep_alive_s = 65535",
        "[store]\nretention_days = 0\nmetrics_retention_days = 36500",
        "[detect]\nstale_after_s = 1\nbaseline_s = 1\nmin_baseline_datapoints = 1",
        f'thing_name = "{("Az09:_-" * 19)[:128]}"',
        '[mqtt]\nendpoint = "::1"\nclient_id = "é-client"',
        '[detect]\nviolations_topic = "site/{thing_name}/alerts"\nbuiltin_profile = false',
        '[[custom_metrics]]\nname = "a:b_c-1"\ntype = "number"\nsource = "command"\n'
        'command = ["sh", "-c", "echo 1\\n"]\ntimeout_s = 30',
    ],
)
def test_values_at_the_edges_of_their_ranges_are_taken(text: str) -> None:
    parse_config(text, "c.toml")


def test_builtin_profile_is_on_by_default() -> None:
    assert parse_config("", "c.toml").detect.builtin_profile is True
    assert parse_config("[detect]\nbuiltin_profile = false", "c").detect.builtin_profile is False


def test_the_example_config_names_every_key_and_its_values_load() -> None:
    example = (Path(agent.__file__).parent / "data" / "config.toml").read_text()
    # Uncomment every `# key = value` line: the defaults written there must load.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", example, flags=re.MULTILINE)
    parse_config(uncommented, "example")
    written = set(re.findall(r"^(\w+) = ", uncommented, flags=re.MULTILINE))
    keys = {f.name for f in dataclasses.fields(Config)} - {"config_file", "custom_metrics"}
    blocks = (SamplingConfig, MqttConfig, DetectConfig, StoreConfig, CustomMetricConfig)
    capture = (CaptureConfig, ScanCaptureConfig, DnsCaptureConfig, BrokerCaptureConfig, AuditConfig)
    capture += (ConnectionsCaptureConfig, MitigationConfig, AutoResponseConfig, ControlConfig)
    for block in blocks + capture:
        keys |= {f.name for f in dataclasses.fields(block)}
    sections = ("sampling", "mqtt", "detect", "store", "capture", "scan", "dns", "broker", "audit")
    sections += ("connections", "mitigation", "auto", "control")
    for section in sections:
        keys.discard(section)
    # Documented in comments: a custom metric's source keys, an automatic response rule.
    auto_rule = {"profile", "behavior", "actions", "undo_on_clear"}
    assert keys - written == {"path", "command", "timeout_s", *auto_rule}


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o620])
def test_a_config_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    config = write(tmp_path / "config.toml", b'thing_name = "pi-7"\n', mode)
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value) == (
        f"{config}: mode {mode:04o} lets group or others write it (chmod go-w {config})"
    )
    config.chmod(0o644)
    assert load_config(config).thing_name == "pi-7"


def test_a_config_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml", b'# ok\nthing_name = "pi\xe9"\n')
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value) == f"{config}: not UTF-8 text: byte 0xe9 on line 2 (TOML is UTF-8)"


def test_a_config_of_absurd_size_is_not_read_whole(tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml", b"# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"config\.toml: larger than 1048576 bytes"):
        load_config(config)


def test_the_default_thing_name_is_the_short_host_name() -> None:
    assert Config().thing_name == socket.gethostname().partition(".")[0]


def state_dir_as(uid: int, env: dict[str, str], service_dir: Path) -> str:
    """`_default_state_dir()` in a child process that really is `uid` (a forked child:
    the interpreter needs no exec, which /root's 0700 would forbid another user)."""
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        try:
            os.environ.clear()
            os.environ.update(env)
            agent.config.SERVICE_STATE_DIR = service_dir
            os.setgroups([])
            os.setgid(pwd.getpwuid(uid).pw_gid)
            os.setuid(uid)
            os.write(write_end, agent.config._default_state_dir().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder other users can reach (pytest's tmp_path is under a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="edge-defender-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to be another user")
def test_the_default_state_dir_rule(shared_tmp: Path) -> None:
    service = shared_tmp / "service-state"
    service.mkdir(mode=0o700)
    home = {"HOME": str(shared_tmp / "home")}
    xdg = {**home, "XDG_STATE_HOME": str(shared_tmp / "xdg")}
    nobody = pwd.getpwnam("nobody")
    # systemd's StateDirectory= wins for anyone.
    assert state_dir_as(nobody.pw_uid, {**xdg, "STATE_DIRECTORY": "/run/sd"}, service) == "/run/sd"
    # Root works on the service's state.
    assert state_dir_as(0, xdg, service) == str(service)
    # Another user who cannot read the service's state: their own.
    assert state_dir_as(nobody.pw_uid, xdg, service) == str(shared_tmp / "xdg" / "edge-defender")
    assert (
        state_dir_as(nobody.pw_uid, home, service) == f"{home['HOME']}/.local/state/edge-defender"
    )
    # The service user (here: the directory's owner) reads the service's state.
    os.chown(service, nobody.pw_uid, -1)
    assert state_dir_as(nobody.pw_uid, xdg, service) == str(service)
    # So does a member of a group the directory opens to.
    os.chown(service, 0, nobody.pw_gid)
    service.chmod(0o750)
    assert state_dir_as(nobody.pw_uid, xdg, service) == str(service)


def test_capture_is_off_by_default_and_its_blocks_parse() -> None:
    assert parse_config("", "f").capture.enabled is False
    cfg = parse_config(
        "[capture]\nenabled = true\ninterfaces = ['eth0']\n"
        "[capture.scan]\nhold_s = 60\n[capture.broker]\nenabled = true\nports = [1883, 1884]\n",
        "f",
    )
    assert cfg.capture.interfaces == ["eth0"]
    assert cfg.capture.scan.hold_s == 60.0
    assert cfg.capture.broker.ports == [1883, 1884]
    assert cfg.capture.metric_names()["capture.dns.names_metric"] == ("dns_names", True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[capture.broker]\nports = [0]", "capture.broker.ports[0]: must be a port 1-65535"),
        ("[capture.broker]\nenabled = true\nports = []", "capture.broker.ports: the broker"),
        ("[capture]\ninterfaces = ['a b']", "capture.interfaces[0]: must be an interface name"),
        ("[capture.dns]\nnames_metric = 'aws:x'", "capture.dns.names_metric: must be 1-128"),
        ("[capture.scan]\nhold_s = 0", "capture.scan.hold_s: must be"),
        ("[capture.scan]\nsources_metric = 'x'\ncount_metric = 'x'", "capture.scan.count_metric"),
        ("[capture.scan]\nbogus = 1", "capture.scan.bogus: unknown key"),
        ("[capture.connections]\ncount_metric = 'num_scan_sources'", "capture.connections.count"),
    ],
)
def test_bad_capture_settings_name_their_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config("[capture]\nenabled = true\n" + text.replace("[capture]\n", ""), "f")


def test_a_capture_metric_may_not_take_a_custom_metric_name_while_collected() -> None:
    custom = "[[custom_metrics]]\nname = 'dns_names'\ntype = 'number'\nsource = 'cpu_percent'\n"
    parse_config(custom, "f")  # capture off: no clash
    with pytest.raises(ConfigError, match=r"capture\.dns\.names_metric: 'dns_names' is already"):
        parse_config("[capture]\nenabled = true\n" + custom, "f")


def test_mitigation_settings_and_their_errors() -> None:
    cfg = parse_config(
        "[mitigation]\nenabled = true\nallow_cidrs = ['10.0.0.0/8', '2001:db8::/32']\n"
        "[[mitigation.auto]]\nprofile = 'p'\nbehavior = 'b'\nactions = ['block']\n",
        "f",
    )
    assert cfg.mitigation.auto == [AutoResponseConfig("p", "b", ["block"])]
    rule = "[[mitigation.auto]]\nprofile = 'p'\nbehavior = 'b'\n"
    for text, message in [
        ("[mitigation]\nallow_cidrs = ['10.0.0.1/8']", "mitigation.allow_cidrs[0]: 10.0.0.1/8"),
        (f"[mitigation]\nallow_cidrs = ['{'x' * 2000}']", "mitigation.allow_cidrs[0]: 'xxx"),
        (rule + "actions = []", "mitigation.auto[0].actions: must name 1-5"),
        (rule + "actions = ['a b']", "mitigation.auto[0].actions[0]: must be 1-128"),
        (rule + "actions = ['a']\n" + rule + "actions = ['c']", "mitigation.auto[1]: p/b is"),
        ("[[mitigation.auto]]\nprofile = 'p'\nactions = ['a']", "mitigation.auto[0].behavior"),
        ("[mitigation]\nmax_auto_tasks_per_minute = 0", "max_auto_tasks_per_minute: must be"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)) as refused:
            parse_config(text, "f")
        assert len(str(refused.value)) < 200  # a bad value is shown cut short


def test_remote_settings_change_only_the_safe_subset_and_are_checked_as_the_file(
    tmp_path: Path,
) -> None:
    from agent.config import REMOTE_SETTINGS, remote_settings, with_settings

    cfg = parse_config(f'state_dir = "{tmp_path}"\n', "c.toml")
    changed = with_settings(cfg, {"sampling.interval_s": 30, "capture.dns.enabled": False})
    assert changed.sampling.interval_s == 30.0 and changed.capture.dns.enabled is False
    assert changed.capture.scan == cfg.capture.scan and changed.mqtt == cfg.mqtt
    for settings, words in [
        ({"mqtt.endpoint": "evil.example"}, "not a setting remote control may change"),
        ({"custom_metrics": []}, "not a setting"),
        ({"sampling.interval_s": 0}, "sampling.interval_s: must be at least 0.1"),
        ({"capture.enabled": "yes"}, "capture.enabled: must be true or false"),
        ([], "must be an object"),
    ]:
        with pytest.raises(ConfigError, match=words):
            with_settings(cfg, settings)
    assert all(name.count(".") >= 1 for name in REMOTE_SETTINGS)
    assert remote_settings(cfg) == (cfg, None)  # no file: the config as it is
    cfg.remote_settings_path.write_text('{"store.retention_days": 7}')
    assert remote_settings(cfg)[0].store.retention_days == 7.0
    cfg.remote_settings_path.write_text('{"store.retention_days": -7}')
    same, problem = remote_settings(cfg)
    assert same is cfg and problem is not None and "retention_days" in problem

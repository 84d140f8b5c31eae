"""install-service / uninstall-service into a temporary --root: every file, owner and
mode; a second run changes nothing; the operator's config and state survive."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import ParamValidator

import agent
from agent.cli import main
from agent.config import Config, parse_config
from agent.service.install import (
    InstallError,
    check_command,
    data,
    default_command,
    install_files,
    remove_files,
    render_unit,
)

PROGRAM = "/opt/edge-defender/bin/edge-defender"
UID, GID = 990, 991
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="setting owners needs root")


def make_root(tmp_path: Path, *, with_user: bool) -> Path:
    root = tmp_path / "root"
    program = root / PROGRAM.lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    if with_user:
        (root / "etc").mkdir()
        (root / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\n"
            f"edge-defender:x:{UID}:{GID}:edge-defender:/:/usr/sbin/nologin\n"
        )
        (root / "etc/group").write_text(f"root:x:0:\nedge-defender:x:{GID}:\n")
    return root


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root with its mode, owner, mtime and content hash."""
    listing: dict[str, tuple[object, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        listing[str(path.relative_to(root))] = (
            stat.filemode(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            digest,
        )
    return listing


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def expected_owners_and_modes(uid: int, gid: int) -> dict[str, tuple[int, int, int]]:
    return {
        "etc/systemd/system/edge-defender.service": (0, 0, 0o644),
        "etc/sysusers.d/edge-defender.conf": (0, 0, 0o644),
        "etc/tmpfiles.d/edge-defender.conf": (0, 0, 0o644),
        "etc/edge-defender": (0, gid, 0o750),
        "etc/edge-defender/config.toml": (0, gid, 0o640),
        "etc/edge-defender/certs": (uid, gid, 0o700),
        "etc/edge-defender/profiles": (0, gid, 0o750),
        "etc/edge-defender/profiles/example-profile.json": (0, 0, 0o644),
    }


@as_root
def test_layout_with_the_service_user_in_the_root(tmp_path: Path) -> None:
    root = make_root(tmp_path, with_user=True)
    install_files(root, [PROGRAM], net_admin=False)
    for path, want in expected_owners_and_modes(UID, GID).items():
        assert owner_mode(root / path) == want, path
    unit = (root / "etc/systemd/system/edge-defender.service").read_text()
    assert unit == render_unit([PROGRAM])
    for name, path in (
        ("edge-defender.sysusers", "etc/sysusers.d/edge-defender.conf"),
        ("edge-defender.tmpfiles", "etc/tmpfiles.d/edge-defender.conf"),
        ("config.toml", "etc/edge-defender/config.toml"),
        ("example-profile.json", "etc/edge-defender/profiles/example-profile.json"),
    ):
        assert (root / path).read_bytes() == data(name), path
    assert not (root / "etc/systemd/system/edge-defender.service.d").exists()
    assert not (root / "var").exists()  # the state directory is the unit's to create


@as_root
def test_without_the_user_files_stay_root_owned_and_it_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path, with_user=False)
    assert main(["install-service", "--root", str(root), "--exec", PROGRAM]) == 0
    assert f"note: user edge-defender is not in {root}/etc/passwd yet" in capsys.readouterr().out
    assert owner_mode(root / "etc/edge-defender/certs") == (0, 0, 0o700)
    assert owner_mode(root / "etc/edge-defender/config.toml") == (0, 0, 0o640)


@as_root
@pytest.mark.skipif(
    not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")),
    reason="systemd-sysusers or systemd-tmpfiles is not installed (Debian: apt install systemd)",
)
def test_at_first_boot_sysusers_and_tmpfiles_finish_an_image_tree(tmp_path: Path) -> None:
    # What systemd-sysusers.service and systemd-tmpfiles-setup.service do at boot.
    root = make_root(tmp_path, with_user=False)
    install_files(root, [PROGRAM], net_admin=False)
    for argv in (
        ["systemd-sysusers", f"--root={root}", f"{root}/etc/sysusers.d/edge-defender.conf"],
        [
            "systemd-tmpfiles",
            "--create",
            f"--root={root}",
            f"{root}/etc/tmpfiles.d/edge-defender.conf",
        ],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    user = (root / "etc/passwd").read_text().split(":")
    assert user[0] == "edge-defender"
    for path, want in expected_owners_and_modes(int(user[2]), int(user[3])).items():
        assert owner_mode(root / path) == want, path
    assert install_files(root, [PROGRAM], net_admin=False) == []


@pytest.mark.parametrize("with_user", [True, False])
def test_second_run_changes_nothing(tmp_path: Path, with_user: bool) -> None:
    root = make_root(tmp_path, with_user=with_user)
    install_files(root, [PROGRAM], net_admin=True)
    before = tree(root)
    assert install_files(root, [PROGRAM], net_admin=True) == []
    assert tree(root) == before


def test_existing_config_is_kept_and_its_mode_fixed(tmp_path: Path) -> None:
    root = make_root(tmp_path, with_user=True)
    config = root / "etc/edge-defender/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('thing_name = "mine"\n')
    config.chmod(0o666)
    changes = install_files(root, [PROGRAM], net_admin=False)
    assert config.read_text() == 'thing_name = "mine"\n'
    assert f"kept {config} (exists; not overwritten)" in changes
    assert stat.S_IMODE(config.stat().st_mode) == 0o640


def test_example_profile_only_goes_into_an_empty_profiles_dir(tmp_path: Path) -> None:
    root = make_root(tmp_path, with_user=True)
    profiles = root / "etc/edge-defender/profiles"
    profiles.mkdir(parents=True)
    (profiles / "mine.json").write_text("{}")
    install_files(root, [PROGRAM], net_admin=False)
    assert sorted(p.name for p in profiles.iterdir()) == ["mine.json"]


def test_a_changed_unit_is_updated(tmp_path: Path) -> None:
    root = make_root(tmp_path, with_user=True)
    install_files(root, [PROGRAM], net_admin=False)
    unit = root / "etc/systemd/system/edge-defender.service"
    unit.write_text("old\n")
    changes = install_files(root, [PROGRAM], net_admin=False)
    assert changes == [f"updated {unit}"]
    assert unit.read_text() == render_unit([PROGRAM])


def test_uninstall_keeps_config_keys_and_state(tmp_path: Path) -> None:
    root = make_root(tmp_path, with_user=True)
    install_files(root, [PROGRAM], net_admin=True)
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-defender.service"
    wants.parent.mkdir()
    wants.symlink_to("/etc/systemd/system/edge-defender.service")
    override = root / "etc/systemd/system/edge-defender.service.d/override.conf"
    override.write_text("[Service]\nMemoryMax=256M\n")
    key = root / "etc/edge-defender/certs/private.pem.key"
    key.write_text("key")
    state = root / "var/lib/edge-defender/agent.db"
    state.parent.mkdir(parents=True)
    state.write_text("db")
    remove_files(root, purge=False)
    for gone in (
        "etc/systemd/system/edge-defender.service",
        "etc/systemd/system/edge-defender.service.d/net-admin.conf",
        "etc/sysusers.d/edge-defender.conf",
        "etc/tmpfiles.d/edge-defender.conf",
    ):
        assert not (root / gone).exists(), gone
    assert not wants.is_symlink()
    assert override.exists() and key.exists() and state.exists()
    assert (root / "etc/edge-defender/config.toml").exists()


def test_purge_removes_config_keys_state_and_drop_ins(tmp_path: Path) -> None:
    root = make_root(tmp_path, with_user=True)
    install_files(root, [PROGRAM], net_admin=True)
    (root / "var/lib/edge-defender").mkdir(parents=True)
    remove_files(root, purge=True)
    for gone in (
        "etc/edge-defender",
        "var/lib/edge-defender",
        "etc/systemd/system/edge-defender.service.d",
        "etc/systemd/system/edge-defender.service",
    ):
        assert not (root / gone).exists(), gone
    assert (root / "etc/passwd").exists()  # the user stays


def test_uninstall_removes_an_emptied_drop_in_dir(tmp_path: Path) -> None:
    root = make_root(tmp_path, with_user=True)
    install_files(root, [PROGRAM], net_admin=True)
    remove_files(root, purge=False)
    assert not (root / "etc/systemd/system/edge-defender.service.d").exists()
    assert remove_files(root, purge=False) == []


@pytest.mark.parametrize(
    ("command", "complaint"),
    [
        (["bin/edge-defender"], "needs an absolute path"),
        (["/home/pi/.local/bin/edge-defender"], "/home is hidden from the service"),
        (["/tmp/venv/bin/edge-defender"], "/tmp is hidden from the service"),
        (["/opt/my venv/bin/python3", "-m", "agent"], "path without spaces"),
        (["/opt/edge-defender/bin/missing"], "not an executable file"),
        (["/opt/edge-defender/bin/edge-defender", "100%"], "may only hold"),
    ],
)
def test_commands_the_unit_could_not_run_are_refused(
    tmp_path: Path, command: list[str], complaint: str
) -> None:
    root = make_root(tmp_path, with_user=False)
    with pytest.raises(InstallError, match=complaint):
        check_command(root, command)
    with pytest.raises(InstallError):
        install_files(root, command, net_admin=False)
    assert not (root / "etc").exists()


def test_default_command_runs_this_installation() -> None:
    checkout = Path(agent.__file__).parents[1]
    done = subprocess.run(
        [*default_command(), "--version"],
        cwd=checkout,  # for `python -m agent` from a checkout that is not installed
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == f"edge-defender {agent.__version__}"
    assert default_command()[0].startswith(str(Path(sys.executable).parent))


def test_cli_install_then_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, with_user=True)
    assert main(["install-service", "--root", str(root), "--exec", PROGRAM, "--net-admin"]) == 0
    out = capsys.readouterr().out
    assert f"created {root}/etc/systemd/system/edge-defender.service.d/net-admin.conf" in out
    assert f"systemctl --root={root} enable edge-defender.service" in out
    assert main(["uninstall-service", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"removed {root}/etc/systemd/system/edge-defender.service\n" in out
    assert f"kept {root}/etc/edge-defender" in out


def test_cli_install_error_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path, with_user=True)
    assert main(["install-service", "--root", str(root), "--exec", "/usr/bin/nothing"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"edge-defender: install-service: {root}/usr/bin/nothing: not an executable file;"
        " pass --exec with the program's path on the device\n"
    )


def test_example_profile_has_the_describe_security_profile_shape() -> None:
    iot = botocore.session.get_session().get_service_model("iot")
    shape = iot.operation_model("DescribeSecurityProfile").output_shape
    profile = json.loads(data("example-profile.json"))
    assert ParamValidator().validate(profile, shape).generate_report() == ""
    metrics = {b["metric"] for b in profile["behaviors"]}
    assert {"aws:listening-tcp-ports", "aws:all-bytes-out", "cpu_usage"} <= metrics


def test_example_config_defines_the_custom_metric_the_example_profile_judges() -> None:
    config = parse_config(data("config.toml").decode(), "config.toml")
    profile = json.loads(data("example-profile.json"))
    custom = {b["metric"] for b in profile["behaviors"] if not b["metric"].startswith("aws:")}
    assert custom == {m.name for m in config.custom_metrics}


def test_under_the_unit_the_default_state_dir_is_its_state_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The service user is not root: without this the default would be under its $HOME.
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-defender")
    assert Config().state_dir == "/var/lib/edge-defender"
    assert "StateDirectory=edge-defender\n" in data("edge-defender.service").decode()


def test_a_purged_tree_uninstalls_to_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path, with_user=True)
    assert main(["install-service", "--root", str(root), "--exec", PROGRAM]) == 0
    assert main(["uninstall-service", "--root", str(root), "--purge"]) == 0
    capsys.readouterr()
    assert main(["uninstall-service", "--root", str(root)]) == 0
    assert capsys.readouterr().out == "nothing to remove\n"


def test_what_it_says_comes_before_what_a_tool_it_runs_says(tmp_path: Path) -> None:
    # Into a pipe, as under a provisioning script: Python buffers its own output there.
    script = (
        "import sys; from agent.service.install import _run; print('edge-defender says');"
        " _run([sys.executable, '-c', 'print(\"the tool says\")'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(agent.__file__).parents[1],
    )
    assert done.stdout.splitlines() == [
        "edge-defender says",
        f'running {sys.executable} -c print("the tool says")',
        "the tool says",
    ]

"""The audit checks against device trees built here: a deliberately weak device
(known flaws, each planted once) gives exactly the expected findings, a hardened one
none. Certificates and keys are made with `cryptography`, password hashes with the
system's libcrypt; the listening check also runs against real sockets in /proc."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent.collect.audit_checks import (
    CHECKS,
    CheckUnavailable,
    _nft_rules,
    _saved_rules,
    apt_config,
    check_firewall,
    run_checks,
    sshd_settings,
)
from agent.core.audit import AuditContext, Noncompliance
from agent.core.x509 import debian_blacklist_line
from tests.core.test_core_x509 import (
    PrivateKey,
    make_certificate,
    make_crl,
    pem,
    roca_private_key,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = (CA_KEY, "Edge CA")
ETC = "etc/edge-defender"
YESCRYPT_SALT = "$y$j9T$Ab3dEfGh1jKlMnOp$"
TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
    " inode\n"
)
SOCKET_TAIL = (
    " 00000000:00000000 00:00000000 00000000     0        0 1000 1 0000000000000000 100 0 0 10 0\n"
)
ANY4, ANY6 = "00000000", "0" * 32

Key = tuple[str, str, frozenset[tuple[str, str]], str]


def write(root: Path, path: str, content: str | bytes = "", mode: int = 0o644) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    target.write_bytes(content)
    target.chmod(mode)
    return target


def socket_line(local: str, port: int, state: str, remote: str = ANY4) -> str:
    return f"   0: {local}:{port:04X} {remote}:0000 {state}{SOCKET_TAIL}"


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def device_certificate(
    root: Path, name: str, key: PrivateKey, key_mode: int, **dates: Any
) -> tuple[str, str, int]:
    """Writes <name>.pem (leaf then CA) and <name>.key; (cert path, certificate id, serial)."""
    cert = make_certificate(key, name, issuer=CA, **dates)
    chain = pem(cert) + pem(make_certificate(CA_KEY, "Edge CA"))
    write(root, f"{ETC}/{name}.pem", chain)
    write(root, f"{ETC}/{name}.key", key_pem(key), key_mode)
    return f"/{ETC}/{name}.pem", cert.fingerprint(hashes.SHA256()).hex(), cert.serial_number


def sysctls(proc: Path, values: Mapping[str, int]) -> None:
    for name, value in values.items():
        write(proc, "sys/" + name.replace(".", "/"), f"{value}\n")


def dpkg_lists(root: Path, lists: Mapping[str, list[str]]) -> None:
    for package, paths in lists.items():
        write(root, f"var/lib/dpkg/info/{package}.list", "".join(p + "\n" for p in paths))


def system_dirs(root: Path) -> None:
    for folder in ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "usr/lib"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder).chmod(0o755)
    for link in ("bin", "sbin"):  # merged /usr
        (root / link).symlink_to(f"usr/{link}")
    write(root, "etc/debian_version", "12.8\n")
    write(root, "usr/bin/unattended-upgrade", "#!/usr/bin/python3\n", 0o755)
    write(root, "usr/bin/passwd", b"\x7fELF", 0o4755)
    write(root, "usr/bin/su", b"\x7fELF", 0o4755)


def weak_device(tmp_path: Path) -> tuple[AuditContext, set[Key]]:
    """A device with every flaw the checks know, once; and the findings it must give."""
    root, proc = tmp_path / "weak", tmp_path / "weak-proc"
    system_dirs(root)
    weak_key = rsa.generate_private_key(65537, 1024)
    weak, weak_id, _ = device_certificate(
        root, "weak", weak_key, 0o644, not_before=NOW - 400 * DAY, not_after=NOW + 10 * DAY
    )
    roca, roca_id, roca_serial = device_certificate(
        root, "roca", roca_private_key(), 0o600, not_after=NOW + 1000 * DAY
    )
    expired, expired_id, _ = device_certificate(
        root,
        "expired",
        ec.generate_private_key(ec.SECP256K1()),
        0o600,
        not_before=NOW - 100 * DAY,
        not_after=NOW - DAY,
    )
    crl = make_crl(CA_KEY, "Edge CA", [roca_serial, 99])
    write(root, f"{ETC}/ca.crl", crl.public_bytes(serialization.Encoding.DER))
    # The openssl-blacklist format with the weak key's line: how a Debian-weak key is found.
    weak_line = debian_blacklist_line(weak_key.public_key().public_numbers().n).decode()
    write(root, "usr/share/openssl-blacklist/blacklist.RSA-1024", f"# comment\n00a1\n{weak_line}\n")
    write(root, f"{ETC}/agent.toml", "[mqtt]\n", 0o666)
    write(root, f"{ETC}/profiles/device.json", "{}", 0o644)
    write(
        root,
        "etc/ssh/sshd_config",
        "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin no\nMatch User admin\n  PasswordAuthentication no\n",
    )
    write(
        root,
        "etc/ssh/sshd_config.d/10-vendor.conf",
        "PasswordAuthentication yes\npermitrootlogin=yes\n",
    )
    shadow = [
        "root:" + crypt.crypt("root", YESCRYPT_SALT),
        "daemon:*",
        "pi:" + crypt.crypt("raspberry", crypt.mksalt(crypt.METHOD_SHA512)),
        "ubuntu:" + crypt.crypt("ubuntu", crypt.mksalt(crypt.METHOD_MD5)),
        "admin:" + crypt.crypt("correct horse battery", YESCRYPT_SALT),
        "guest:",
    ]
    write(root, "etc/shadow", "".join(f"{line}:19700:0:99999:7:::\n" for line in shadow), 0o640)
    write(root, "etc/apt/apt.conf.d/20auto-upgrades", 'APT::Periodic::Unattended-Upgrade "0";\n')
    write(root, "etc/apt/apt.conf.d/99enable.disabled", 'APT::Periodic::Unattended-Upgrade "1";\n')
    write(root, "etc/login.defs", "ENV_SUPATH\tPATH=/usr/local/sbin:/usr/bin:/opt/tools\n")
    (root / "opt/tools").mkdir(parents=True)
    (root / "opt/tools").chmod(0o777)
    write(root, "usr/local/bin/backdoor", b"\x7fELF", 0o4755)
    write(root, "usr/lib/helper/grab", b"\x7fELF", 0o2755)
    dpkg_lists(root, {"passwd": ["/usr/bin/passwd"], "util-linux": ["/bin/su"]})

    write(
        proc,
        "net/tcp",
        TCP_HEADER
        + socket_line(ANY4, 8080, "0A")
        + socket_line(ANY4, 22, "0A")
        + socket_line("0100007F", 9000, "0A")
        + socket_line("0F02000A", 8080, "01", remote="0A02000A"),
    )
    write(
        proc, "net/tcp6", TCP_HEADER + socket_line(ANY6, 8080, "0A") + socket_line(ANY6, 1883, "0A")
    )
    write(proc, "net/udp", TCP_HEADER + socket_line(ANY4, 5353, "07"))
    write(proc, "net/udp6", TCP_HEADER)
    write(proc, "net/ip_tables_names", "")
    sysctls(
        proc,
        {
            "net.ipv4.ip_forward": 1,
            "net.ipv6.conf.all.forwarding": 0,
            "kernel.kptr_restrict": 0,
            "kernel.dmesg_restrict": 1,
            "fs.protected_symlinks": 1,
            "fs.protected_hardlinks": 1,
            "kernel.randomize_va_space": 2,
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv4.conf.lo.rp_filter": 0,
            "net.ipv4.conf.eth0.rp_filter": 0,
        },
    )
    ctx = AuditContext(
        root=root,
        proc_root=proc,
        cert_files=(weak, roca, expired),
        key_files=(f"/{ETC}/weak.key", f"/{ETC}/roca.key"),
        crl_file=f"/{ETC}/ca.crl",
        config_files=(f"/{ETC}/agent.toml", f"/{ETC}/profiles/device.json"),
        allowed_tcp_ports=frozenset({22, 1883}),
        allowed_udp_ports=frozenset(),
        now=NOW.timestamp(),
    )

    def cert(check: str, cert_id: str, code: str) -> Key:
        return (check, "DEVICE_CERTIFICATE", frozenset({("deviceCertificateId", cert_id)}), code)

    def other(check: str, kind: str, identifier: dict[str, str], code: str) -> Key:
        return (f"DEVICE_{check}_CHECK", kind, frozenset(identifier.items()), code)

    expiring, quality = "DEVICE_CERTIFICATE_EXPIRING_CHECK", "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"
    setting, file = "DEVICE_SETTING", "DEVICE_FILE"
    expected = {
        cert(expiring, weak_id, "CERTIFICATE_APPROACHING_EXPIRATION"),
        cert(expiring, expired_id, "CERTIFICATE_PAST_EXPIRATION"),
        cert(quality, weak_id, "CERTIFICATE_KEY_TOO_SMALL"),
        cert(quality, weak_id, "CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166"),
        cert(quality, roca_id, "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"),
        cert(quality, expired_id, "CERTIFICATE_KEY_CURVE_NOT_ALLOWED"),
        cert("DEVICE_CERTIFICATE_AGE_CHECK", weak_id, "CERTIFICATE_PAST_AGE_THRESHOLD"),
        cert(
            "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK",
            roca_id,
            "CERTIFICATE_REVOKED_BY_ISSUER",
        ),
        other(
            "KEY_FILE_PERMISSIONS",
            file,
            {"path": f"/{ETC}/weak.key"},
            "KEY_FILE_ACCESSIBLE_BY_OTHERS",
        ),
        other(
            "CONFIG_FILE_PERMISSIONS",
            file,
            {"path": f"/{ETC}/agent.toml"},
            "CONFIG_FILE_WRITABLE_BY_OTHERS",
        ),
        other(
            "SSHD_PASSWORD_LOGIN",
            setting,
            {"setting": "sshd:PasswordAuthentication"},
            "SSHD_PASSWORD_AUTHENTICATION_ENABLED",
        ),
        other(
            "SSHD_ROOT_LOGIN",
            setting,
            {"setting": "sshd:PermitRootLogin"},
            "SSHD_ROOT_LOGIN_PERMITTED",
        ),
        other(
            "DEFAULT_CREDENTIALS", "DEVICE_USER", {"user": "root"}, "ACCOUNT_USES_DEFAULT_PASSWORD"
        ),
        other(
            "DEFAULT_CREDENTIALS", "DEVICE_USER", {"user": "pi"}, "ACCOUNT_USES_DEFAULT_PASSWORD"
        ),
        other(
            "DEFAULT_CREDENTIALS",
            "DEVICE_USER",
            {"user": "ubuntu"},
            "ACCOUNT_USES_DEFAULT_PASSWORD",
        ),
        other(
            "DEFAULT_CREDENTIALS", "DEVICE_USER", {"user": "guest"}, "ACCOUNT_HAS_EMPTY_PASSWORD"
        ),
        other(
            "LISTENING_SERVICES",
            "DEVICE_LISTENING_PORT",
            {"protocol": "tcp", "port": "8080"},
            "SERVICE_LISTENING_ON_ALL_INTERFACES",
        ),
        other(
            "LISTENING_SERVICES",
            "DEVICE_LISTENING_PORT",
            {"protocol": "udp", "port": "5353"},
            "SERVICE_LISTENING_ON_ALL_INTERFACES",
        ),
        other(
            "UNATTENDED_UPGRADES",
            setting,
            {"setting": "APT::Periodic::Unattended-Upgrade"},
            "UNATTENDED_UPGRADES_DISABLED",
        ),
        other(
            "KERNEL_SETTINGS",
            setting,
            {"setting": "net.ipv4.ip_forward"},
            "KERNEL_SETTING_INSECURE",
        ),
        other(
            "KERNEL_SETTINGS",
            setting,
            {"setting": "kernel.kptr_restrict"},
            "KERNEL_SETTING_INSECURE",
        ),
        other(
            "KERNEL_SETTINGS",
            setting,
            {"setting": "net.ipv4.conf.eth0.rp_filter"},
            "KERNEL_SETTING_INSECURE",
        ),
        other("FIREWALL", setting, {"setting": "firewall"}, "NO_FIREWALL_RULES"),
        other(
            "PATH_WRITABLE_DIRECTORIES",
            file,
            {"path": "/opt/tools"},
            "PATH_DIRECTORY_WRITABLE_BY_NON_ROOT",
        ),
        other(
            "SETUID_FILES",
            file,
            {"path": "/usr/local/bin/backdoor"},
            "SETUID_FILE_NOT_FROM_PACKAGE",
        ),
        other(
            "SETUID_FILES", file, {"path": "/usr/lib/helper/grab"}, "SETGID_FILE_NOT_FROM_PACKAGE"
        ),
    }
    return ctx, expected


def hardened_device(tmp_path: Path) -> AuditContext:
    root, proc = tmp_path / "hardened", tmp_path / "hardened-proc"
    system_dirs(root)
    rsa_cert, _, _ = device_certificate(
        root, "rsa", rsa.generate_private_key(65537, 2048), 0o600, not_before=NOW - 10 * DAY
    )
    ec_cert, _, _ = device_certificate(root, "ec", ec.generate_private_key(ec.SECP384R1()), 0o400)
    write(
        root,
        f"{ETC}/ca.crl",
        make_crl(CA_KEY, "Edge CA", [12345]).public_bytes(serialization.Encoding.PEM),
    )
    write(root, "usr/share/openssl-blacklist/blacklist.RSA-2048", "# nothing of ours\n00a1\n")
    write(root, f"{ETC}/agent.toml", "[mqtt]\n", 0o640)
    write(root, f"{ETC}/profiles/device.json", "{}", 0o644)
    write(
        root,
        "etc/ssh/sshd_config",
        "Include sshd_config.d/*.conf\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM yes\nMatch User legacy\n  PasswordAuthentication yes\n  PermitRootLogin yes\n",
    )
    write(root, "etc/ssh/sshd_config.d/50-site.conf", "# site\nPermitRootLogin prohibit-password\n")
    shadow = ["root:!", "pi:" + crypt.crypt("k7#Qp-unguessable", YESCRYPT_SALT), "daemon:*"]
    write(root, "etc/shadow", "".join(f"{line}:19700:0:99999:7:::\n" for line in shadow), 0o640)
    write(
        root,
        "etc/apt/apt.conf.d/20auto-upgrades",
        '// nested form\nAPT::Periodic {\n  Update-Package-Lists "1";\n'
        '  /* on */ Unattended-Upgrade "1";\n};\n',
    )
    dpkg_lists(root, {"passwd": ["/usr/bin/passwd"], "util-linux": ["/bin/su"]})

    write(
        proc,
        "net/tcp",
        TCP_HEADER + socket_line(ANY4, 22, "0A") + socket_line("0100007F", 9000, "0A"),
    )
    write(proc, "net/udp", TCP_HEADER + socket_line("0100007F", 53, "07"))
    write(proc, "net/ip_tables_names", "filter\n")
    sysctls(
        proc,
        {
            "net.ipv4.ip_forward": 1,  # a gateway: expected
            "kernel.kptr_restrict": 1,
            "kernel.dmesg_restrict": 1,
            "fs.protected_symlinks": 1,
            "fs.protected_hardlinks": 1,
            "kernel.randomize_va_space": 2,
            "net.ipv4.conf.all.rp_filter": 1,
            "net.ipv4.conf.eth0.rp_filter": 0,  # all=1 wins: the kernel uses the max
        },
    )
    return AuditContext(
        root=root,
        proc_root=proc,
        cert_files=(rsa_cert, ec_cert),
        key_files=(f"/{ETC}/rsa.key", f"/{ETC}/ec.key"),
        crl_file=f"/{ETC}/ca.crl",
        config_files=(f"/{ETC}/agent.toml", f"/{ETC}/profiles/device.json"),
        allowed_tcp_ports=frozenset({22}),
        allowed_udp_ports=frozenset({53}),
        gateway=True,
        now=NOW.timestamp(),
    )


def keys(check: str, findings: list[Noncompliance]) -> set[Key]:
    return {
        (check, f.resource_type, frozenset(f.resource_identifier.items()), f.reason_code)
        for f in findings
    }


def test_a_weak_device_gives_exactly_the_expected_findings(tmp_path: Path) -> None:
    ctx, expected = weak_device(tmp_path)
    results = run_checks(list(CHECKS), ctx)
    assert list(results) == list(CHECKS)
    failed = {name: r for name, r in results.items() if isinstance(r, str)}
    assert not failed
    found = set().union(*(keys(name, r) for name, r in results.items() if not isinstance(r, str)))
    assert found == expected
    for findings in results.values():
        for finding in findings:
            assert finding.reason and all(
                isinstance(v, str) for v in finding.additional_info.values()
            )


def test_a_hardened_device_gives_none(tmp_path: Path) -> None:
    results = run_checks(list(CHECKS), hardened_device(tmp_path))
    # The firewall's rules live in the kernel, which a tree on disk does not have: with a
    # table loaded and no live tool to list it, the check says so instead of guessing.
    assert results.pop("DEVICE_FIREWALL_CHECK") == (
        "cannot tell whether a firewall is set: legacy tables (filter) are loaded but "
        "iptables-legacy-save is not installed"
    )
    assert results == {name: [] for name in CHECKS if name != "DEVICE_FIREWALL_CHECK"}


def test_finding_details(tmp_path: Path) -> None:
    ctx, _ = weak_device(tmp_path)
    results = run_checks(
        [
            "DEVICE_KEY_FILE_PERMISSIONS_CHECK",
            "DEVICE_LISTENING_SERVICES_CHECK",
            "DEVICE_SSHD_ROOT_LOGIN_CHECK",
        ],
        ctx,
    )
    (key,) = results["DEVICE_KEY_FILE_PERMISSIONS_CHECK"]
    assert key.additional_info["mode"] == "0644"
    assert "0644" in key.reason
    tcp = next(
        f
        for f in results["DEVICE_LISTENING_SERVICES_CHECK"]
        if f.resource_identifier["port"] == "8080"
    )
    assert tcp.additional_info == {"addresses": "0.0.0.0, ::"}
    (root,) = results["DEVICE_SSHD_ROOT_LOGIN_CHECK"]
    # The first value wins, as in sshd: the Include comes before the main file's "no".
    assert root.additional_info == {
        "value": "yes",
        "source": "/etc/ssh/sshd_config.d/10-vendor.conf:2",
    }


@pytest.mark.parametrize(
    "settings, approaching, aged",
    [
        ({}, 1, 1),
        (
            {"DEVICE_CERTIFICATE_EXPIRING_CHECK": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "3652"}},
            2,
            1,
        ),
        ({"DEVICE_CERTIFICATE_EXPIRING_CHECK": {"certExpirationThresholdInDays": 3652}}, 2, 1),
        ({"DEVICE_CERTIFICATE_AGE_CHECK": {"CERT_AGE_THRESHOLD_IN_DAYS": "30"}}, 1, 2),
        ({"DEVICE_CERTIFICATE_AGE_CHECK": {"certAgeThresholdInDays": "401"}}, 1, 0),
    ],
)
def test_thresholds_come_from_the_audit_configuration(
    tmp_path: Path, settings: dict[str, dict[str, Any]], approaching: int, aged: int
) -> None:
    ctx, _ = weak_device(tmp_path)
    ctx = replace(ctx, settings=settings)
    results = run_checks(["DEVICE_CERTIFICATE_EXPIRING_CHECK", "DEVICE_CERTIFICATE_AGE_CHECK"], ctx)
    expiring, age = results.values()
    assert not isinstance(expiring, str) and not isinstance(age, str)
    codes = [f.reason_code for f in expiring]
    assert codes.count("CERTIFICATE_APPROACHING_EXPIRATION") == approaching
    assert codes.count("CERTIFICATE_PAST_EXPIRATION") == 1
    assert len(age) == aged


@pytest.mark.parametrize(
    "value, message",
    [
        ("29", "CERT_EXPIRATION_THRESHOLD_IN_DAYS is 29; AWS allows 30 to 3652 days"),
        ("3653", "CERT_EXPIRATION_THRESHOLD_IN_DAYS is 3653; AWS allows 30 to 3652 days"),
        ("soon", "CERT_EXPIRATION_THRESHOLD_IN_DAYS is 'soon', not a number of days"),
    ],
)
def test_a_bad_threshold_fails_the_check_with_the_reason(
    tmp_path: Path, value: str, message: str
) -> None:
    ctx, _ = weak_device(tmp_path)
    settings = {"DEVICE_CERTIFICATE_EXPIRING_CHECK": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": value}}
    results = run_checks(["DEVICE_CERTIFICATE_EXPIRING_CHECK"], replace(ctx, settings=settings))
    assert results == {"DEVICE_CERTIFICATE_EXPIRING_CHECK": message}


def test_checks_that_cannot_judge_say_why(tmp_path: Path) -> None:
    ctx, _ = weak_device(tmp_path)
    (ctx.root / ETC / "weak.key").unlink()
    write(
        ctx.root,
        f"{ETC}/garbage.pem",
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
    )
    other_ca = ec.generate_private_key(ec.SECP256R1())
    write(
        ctx.root,
        f"{ETC}/other.crl",
        make_crl(other_ca, "Other CA", []).public_bytes(serialization.Encoding.PEM),
    )
    missing = f"/{ETC}/weak.key: cannot read: No such file or directory"
    assert run_checks(["DEVICE_KEY_FILE_PERMISSIONS_CHECK"], ctx) == {
        "DEVICE_KEY_FILE_PERMISSIONS_CHECK": missing
    }
    garbage = replace(ctx, cert_files=(f"/{ETC}/garbage.pem",))
    reason = run_checks(["DEVICE_CERTIFICATE_AGE_CHECK"], garbage)["DEVICE_CERTIFICATE_AGE_CHECK"]
    assert isinstance(reason, str) and reason.startswith(
        f"/{ETC}/garbage.pem: not a valid X.509 certificate"
    )
    revoked = "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK"
    assert run_checks([revoked], replace(ctx, crl_file=None)) == {
        revoked: "no CRL is configured, so revocation cannot be checked"
    }
    reason = run_checks([revoked], replace(ctx, crl_file=f"/{ETC}/other.crl"))[revoked]
    assert isinstance(reason, str)
    assert "is issued by CN=Other CA, O=Edge Ltd, not by the issuer of" in reason
    listening = "DEVICE_LISTENING_SERVICES_CHECK"
    reason = run_checks([listening], replace(ctx, allowed_tcp_ports=None, allowed_udp_ports=None))[
        listening
    ]
    assert isinstance(reason, str) and reason.startswith(
        "no loaded security profile lists the ports"
    )
    (ctx.root / "etc/debian_version").unlink()
    reason = run_checks(["DEVICE_UNATTENDED_UPGRADES_CHECK"], ctx)[
        "DEVICE_UNATTENDED_UPGRADES_CHECK"
    ]
    assert isinstance(reason, str) and reason.startswith("not a Debian-based system")
    for folder in sorted((ctx.root / "var/lib/dpkg").rglob("*"), reverse=True):
        folder.unlink() if folder.is_file() else folder.rmdir()
    reason = run_checks(["DEVICE_SETUID_FILES_CHECK"], ctx)["DEVICE_SETUID_FILES_CHECK"]
    assert isinstance(reason, str) and reason.startswith("no dpkg database")
    os.rename(ctx.root / "etc/shadow", ctx.root / "etc/shadow-")
    reason = run_checks(["DEVICE_DEFAULT_CREDENTIALS_CHECK"], ctx)[
        "DEVICE_DEFAULT_CREDENTIALS_CHECK"
    ]
    assert reason == "/etc/shadow: cannot read: No such file or directory"


def test_a_corrupt_proc_file_is_named(tmp_path: Path) -> None:
    write(tmp_path, "net/tcp", TCP_HEADER + "   0: 00000000:ZZZZ 00000000:0000 0A 0\n")
    ctx = AuditContext(proc_root=tmp_path, allowed_tcp_ports=frozenset())
    assert run_checks(["DEVICE_LISTENING_SERVICES_CHECK"], ctx) == {
        "DEVICE_LISTENING_SERVICES_CHECK": f"{tmp_path}/net/tcp: line 2 is not a socket entry"
    }


def test_unknown_check_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown audit check\\(s\\): LOGGING_DISABLED_CHECK"):
        run_checks(["DEVICE_FIREWALL_CHECK", "LOGGING_DISABLED_CHECK"], AuditContext())


def test_the_check_table() -> None:
    model = botocore.session.get_session().get_service_model("iot")
    config_names = set(model.shape_for("CheckCustomConfiguration").key.enum)
    severities = set(model.shape_for("AuditFindingSeverity").enum)
    for name, check in CHECKS.items():
        assert name == check.name and name.endswith("_CHECK")
        assert check.severity in severities
        assert set(check.default_settings) <= config_names
        assert check.description.endswith(".")
    assert CHECKS["DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"].severity == "CRITICAL"
    assert CHECKS["DEVICE_CERTIFICATE_EXPIRING_CHECK"].default_settings == {
        "CERT_EXPIRATION_THRESHOLD_IN_DAYS": "30"
    }


def test_listening_services_on_real_sockets(tmp_path: Path) -> None:
    """The live /proc of this network namespace: a wildcard TCP listener and UDP socket
    are found unless a profile allows their ports; a loopback listener never is."""
    with (
        socket.create_server(("0.0.0.0", 0)) as tcp,
        socket.create_server(("127.0.0.1", 0)) as local,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        udp.bind(("0.0.0.0", 0))
        tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
        ctx = AuditContext(allowed_tcp_ports=frozenset(), allowed_udp_ports=frozenset())
        findings = run_checks(["DEVICE_LISTENING_SERVICES_CHECK"], ctx)[
            "DEVICE_LISTENING_SERVICES_CHECK"
        ]
        assert not isinstance(findings, str)
        found = {
            (f.resource_identifier["protocol"], int(f.resource_identifier["port"]))
            for f in findings
        }
        assert {("tcp", tcp_port), ("udp", udp_port)} <= found
        assert ("tcp", local.getsockname()[1]) not in found
        allowed = replace(ctx, allowed_tcp_ports=frozenset({tcp_port}), allowed_udp_ports=None)
        findings = run_checks(["DEVICE_LISTENING_SERVICES_CHECK"], allowed)[
            "DEVICE_LISTENING_SERVICES_CHECK"
        ]
        assert not isinstance(findings, str)
        assert all(
            f.resource_identifier != {"protocol": "tcp", "port": str(tcp_port)} for f in findings
        )
        assert all(f.resource_identifier["protocol"] == "tcp" for f in findings)


def test_firewall_on_a_tree_only_reads_files(tmp_path: Path) -> None:
    root, proc = tmp_path / "root", tmp_path / "proc"
    write(proc, "net/ip_tables_names", "")
    ctx = AuditContext(root=root, proc_root=proc)
    assert [f.reason_code for f in check_firewall(ctx)] == ["NO_FIREWALL_RULES"]
    # nft present in the tree is not run: it would list this machine's kernel, not the tree's.
    write(root, "usr/sbin/nft", '#!/bin/sh\necho \'{"nftables": [{"rule": {}}]}\'\n', 0o755)
    (root / "sys/module/nf_tables").mkdir(parents=True)
    with pytest.raises(CheckUnavailable, match="nf_tables is loaded but nft is not installed"):
        check_firewall(ctx)


def test_sshd_is_read_as_sshd_reads_it(tmp_path: Path) -> None:
    ctx = AuditContext(root=tmp_path)
    assert sshd_settings(ctx) is None
    write(
        tmp_path,
        "etc/ssh/sshd_config",
        "# comment\nInclude conf.d/*.conf /etc/ssh/extra.conf\n"
        "PASSWORDAUTHENTICATION no\nPort=2222\nMatch Address 10.0.0.0/8\nPermitRootLogin yes\n",
    )
    write(tmp_path, "etc/ssh/conf.d/b.conf", "PermitRootLogin without-password\n")
    write(tmp_path, "etc/ssh/conf.d/a.conf", "Match User x\n  PasswordAuthentication yes\n")
    write(tmp_path, "etc/ssh/extra.conf", 'Banner "/etc/issue net"\nPermitRootLogin yes\n')
    settings = sshd_settings(ctx)
    assert settings == {
        "permitrootlogin": ("without-password", "/etc/ssh/conf.d/b.conf:1"),
        "banner": ("/etc/issue", "/etc/ssh/extra.conf:1"),
        "passwordauthentication": ("no", "/etc/ssh/sshd_config:3"),
        "port": ("2222", "/etc/ssh/sshd_config:4"),
    }
    results = run_checks(["DEVICE_SSHD_PASSWORD_LOGIN_CHECK", "DEVICE_SSHD_ROOT_LOGIN_CHECK"], ctx)
    assert results == {"DEVICE_SSHD_PASSWORD_LOGIN_CHECK": [], "DEVICE_SSHD_ROOT_LOGIN_CHECK": []}


def test_firewall_rule_counts_from_tool_output() -> None:
    empty = '{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}'
    assert _nft_rules(empty) == 0
    tables = (
        '{"nftables": [{"metainfo": {}}, {"table": {"family": "inet", "name": "filter"}},'
        ' {"chain": {"family": "inet", "table": "filter", "name": "input", "type": "filter",'
        ' "hook": "input", "prio": 0, "policy": "drop"}}]}'
    )
    assert _nft_rules(tables) == 1  # a drop policy filters with no rule at all
    rule = '{"nftables": [{"rule": {"family": "inet", "table": "filter", "chain": "input"}}]}'
    assert _nft_rules(rule) == 1
    with pytest.raises(CheckUnavailable, match="did not print its JSON ruleset"):
        _nft_rules("Error: Operation not permitted")
    saved = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n"
    assert _saved_rules(saved) == 0
    assert _saved_rules(saved.replace(":FORWARD ACCEPT", ":FORWARD DROP")) == 1
    assert _saved_rules(saved + "-A INPUT -p tcp --dport 22 -j ACCEPT\n") == 1


def test_sshd_include_loops_stop(tmp_path: Path) -> None:
    write(tmp_path, "etc/ssh/sshd_config", "Include /etc/ssh/sshd_config\n")
    with pytest.raises(CheckUnavailable, match="Include nested more than 16 deep"):
        sshd_settings(AuditContext(root=tmp_path))


def test_sshd_defaults_and_keyboard_interactive(tmp_path: Path) -> None:
    write(tmp_path, "etc/ssh/sshd_config", "UsePAM yes\n")
    (finding, kbd) = run_checks(["DEVICE_SSHD_PASSWORD_LOGIN_CHECK"], AuditContext(root=tmp_path))[
        "DEVICE_SSHD_PASSWORD_LOGIN_CHECK"
    ]
    assert finding.additional_info == {"value": "yes", "source": "sshd default"}
    assert kbd.reason_code == "SSHD_KBD_INTERACTIVE_AUTHENTICATION_ENABLED"


def test_apt_config_order_and_names(tmp_path: Path) -> None:
    write(tmp_path, "etc/apt/apt.conf.d/10a", 'APT::Periodic::Unattended-Upgrade "1";\n')
    write(
        tmp_path, "etc/apt/apt.conf.d/20b.conf", 'apt::periodic::unattended-upgrade "0"; // off\n'
    )
    write(tmp_path, "etc/apt/apt.conf.d/30c.dpkg-old", 'APT::Periodic::Unattended-Upgrade "7";\n')
    write(tmp_path, "etc/apt/apt.conf.d/40 bad name", 'APT::Periodic::Unattended-Upgrade "7";\n')
    ctx = AuditContext(root=tmp_path)
    assert apt_config(ctx)["apt::periodic::unattended-upgrade"] == "0"
    write(
        tmp_path,
        "etc/apt/apt.conf",
        'Acquire::http::Proxy "http://proxy:3128";\nAPT::Periodic::Unattended-Upgrade "2";\n',
    )
    assert apt_config(ctx) == {
        "apt::periodic::unattended-upgrade": "2",
        "acquire::http::proxy": "http://proxy:3128",
    }


def test_unattended_upgrades_not_installed(tmp_path: Path) -> None:
    write(tmp_path, "etc/debian_version", "12\n")
    (finding,) = run_checks(["DEVICE_UNATTENDED_UPGRADES_CHECK"], AuditContext(root=tmp_path))[
        "DEVICE_UNATTENDED_UPGRADES_CHECK"
    ]
    assert finding.reason_code == "UNATTENDED_UPGRADES_NOT_INSTALLED"


def test_relative_and_foreign_owned_path_entries(tmp_path: Path) -> None:
    write(tmp_path, "etc/login.defs", "# su\nENV_SUPATH PATH=.:/usr/bin::/srv/bin\n")
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "srv/bin").mkdir(parents=True)
    os.chown(tmp_path / "srv/bin", 1000, 0)
    (tmp_path / "srv/bin").chmod(0o755)
    findings = run_checks(["DEVICE_PATH_WRITABLE_DIRECTORIES_CHECK"], AuditContext(root=tmp_path))[
        "DEVICE_PATH_WRITABLE_DIRECTORIES_CHECK"
    ]
    assert not isinstance(findings, str)
    assert [(f.resource_identifier["path"], f.reason_code) for f in findings] == [
        (".", "PATH_CONTAINS_RELATIVE_DIRECTORY"),
        ("(empty)", "PATH_CONTAINS_RELATIVE_DIRECTORY"),
        ("/srv/bin", "PATH_DIRECTORY_WRITABLE_BY_NON_ROOT"),
    ]

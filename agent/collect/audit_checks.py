"""The device-side Audit checks: each looks at the device's own files under
`AuditContext.root` (and the kernel under `proc_root`) and returns its non-compliant
resources, in the shape of AWS IoT Device Defender Audit findings.

AWS's own checks keep AWS's names, severities and reason codes (severity: codes):
- DEVICE_CERTIFICATE_EXPIRING_CHECK, MEDIUM: CERTIFICATE_APPROACHING_EXPIRATION,
  CERTIFICATE_PAST_EXPIRATION
- DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, CRITICAL: CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361,
  CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166, and ours for what AWS refuses at
  registration: CERTIFICATE_KEY_TOO_SMALL, CERTIFICATE_KEY_CURVE_NOT_ALLOWED,
  CERTIFICATE_KEY_ALGORITHM_NOT_ALLOWED
- DEVICE_CERTIFICATE_AGE_CHECK, LOW: CERTIFICATE_PAST_AGE_THRESHOLD
- REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK, MEDIUM: CERTIFICATE_REVOKED_BY_ISSUER

The device checks are ours, named and coded in AWS's style:
- DEVICE_KEY_FILE_PERMISSIONS_CHECK, HIGH: KEY_FILE_ACCESSIBLE_BY_OTHERS
- DEVICE_CONFIG_FILE_PERMISSIONS_CHECK, HIGH: CONFIG_FILE_WRITABLE_BY_OTHERS
- DEVICE_SSHD_PASSWORD_LOGIN_CHECK, MEDIUM: SSHD_PASSWORD_AUTHENTICATION_ENABLED,
  SSHD_KBD_INTERACTIVE_AUTHENTICATION_ENABLED
- DEVICE_SSHD_ROOT_LOGIN_CHECK, HIGH: SSHD_ROOT_LOGIN_PERMITTED
- DEVICE_DEFAULT_CREDENTIALS_CHECK, CRITICAL: ACCOUNT_USES_DEFAULT_PASSWORD,
  ACCOUNT_HAS_EMPTY_PASSWORD
- DEVICE_LISTENING_SERVICES_CHECK, MEDIUM: SERVICE_LISTENING_ON_ALL_INTERFACES
- DEVICE_UNATTENDED_UPGRADES_CHECK, MEDIUM: UNATTENDED_UPGRADES_NOT_INSTALLED,
  UNATTENDED_UPGRADES_DISABLED
- DEVICE_KERNEL_SETTINGS_CHECK, MEDIUM: KERNEL_SETTING_INSECURE
- DEVICE_FIREWALL_CHECK, MEDIUM: NO_FIREWALL_RULES
- DEVICE_PATH_WRITABLE_DIRECTORIES_CHECK, HIGH: PATH_DIRECTORY_WRITABLE_BY_NON_ROOT,
  PATH_CONTAINS_RELATIVE_DIRECTORY
- DEVICE_SETUID_FILES_CHECK, HIGH: SETUID_FILE_NOT_FROM_PACKAGE, SETGID_FILE_NOT_FROM_PACKAGE

Resource types: AWS's DEVICE_CERTIFICATE with {"deviceCertificateId": the SHA-256 of
the DER certificate, as AWS IoT computes it} (additionalInfo: its path), and these
extensions of AWS's ResourceType, each with the identifier keys shown:
- DEVICE_FILE {"path": absolute path on the device}: key, config, PATH, set-uid files;
- DEVICE_SETTING {"setting": name}: `sshd:PasswordAuthentication`, a sysctl name such
  as `net.ipv4.ip_forward`, `APT::Periodic::Unattended-Upgrade`, `firewall`;
- DEVICE_USER {"user": login name}: default credentials;
- DEVICE_LISTENING_PORT {"protocol": "tcp" | "udp", "port": "8080"}.
An identifier holds only what names the resource (so a suppression keeps matching);
values, modes and file locations go in additionalInfo.

A check that cannot judge raises `CheckUnavailable`; `run_checks` gives its message
back as a string (the task's check status FAILED), and never raises for a check.
Certificates are read with agent.core.x509 (no `cryptography` at run time); only the
first certificate of each cert file is the device certificate (the rest is its chain).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import subprocess
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.core.audit import AuditContext, Noncompliance, Severity
from agent.core.x509 import (
    Certificate,
    X509Error,
    debian_blacklist_line,
    load_certificates,
    load_crl,
    name_text,
    roca_fingerprint,
)
from agent.logs import kv

log = logging.getLogger(__name__)

DAY_S = 86400
THRESHOLD_DAYS = range(30, 3653)  # what AWS accepts for both certificate thresholds
ALLOWED_CURVES = frozenset({"P-256", "P-384", "P-521"})  # AWS IoT's ECDSA curves
STRONG_ALGORITHMS = frozenset({"Ed25519", "Ed448"})
MIN_RSA_BITS = 2048
DEFAULT_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETUID_WALK = ("usr", "bin", "sbin")
MAX_WALKED_ENTRIES = 1_000_000  # the set-uid walk's bound (a Pi image has ~100k under /usr)
TOOL_TIMEOUT_S = 10.0

# Well-known default passwords of device images, by user. Each try costs one hash
# (yescrypt ~25 ms), so the list stays short: the images a Pi-class fleet runs.
DEFAULT_PASSWORDS: Mapping[str, tuple[str, ...]] = {
    "pi": ("raspberry",),  # Raspberry Pi OS before April 2022
    "root": ("root", "toor", "1234", "dietpi", "password"),  # Armbian first boot, DietPi
    "admin": ("admin", "password"),
    "ubuntu": ("ubuntu",),  # Ubuntu Server images for the Pi
    "debian": ("temppwd", "debian"),  # BeagleBoard images
    "orangepi": ("orangepi",),
    "odroid": ("odroid",),
    "alarm": ("alarm",),  # Arch Linux ARM
    "linaro": ("linaro",),
}


@dataclass(frozen=True, slots=True)
class KernelSetting:
    name: str  # sysctl name; its file is proc_root/sys/<name with dots as slashes>
    insecure: Callable[[int], bool]
    expected: str
    why: str
    gateway_may: bool = False  # a gateway is expected to have it


# A small table: settings whose insecure value is a concrete risk on a device.
KERNEL_SETTINGS = (
    KernelSetting(
        "net.ipv4.ip_forward",
        lambda v: v != 0,
        "0",
        "the device routes packets between its networks, a bridge for an attacker",
        gateway_may=True,
    ),
    KernelSetting(
        "net.ipv6.conf.all.forwarding",
        lambda v: v != 0,
        "0",
        "the device routes IPv6 packets between its networks",
        gateway_may=True,
    ),
    KernelSetting(
        "kernel.kptr_restrict",
        lambda v: v == 0,
        "1 or 2",
        "kernel addresses are shown to unprivileged users, which defeats KASLR",
    ),
    KernelSetting(
        "kernel.dmesg_restrict",
        lambda v: v == 0,
        "1",
        "unprivileged users read the kernel log (addresses, devices, firewall drops)",
    ),
    KernelSetting(
        "fs.protected_symlinks",
        lambda v: v == 0,
        "1",
        "symlink races in world-writable sticky directories such as /tmp are not blocked",
    ),
    KernelSetting(
        "fs.protected_hardlinks",
        lambda v: v == 0,
        "1",
        "users may hard-link files they cannot write (set-uid programs) to keep old copies",
    ),
    KernelSetting(
        "kernel.randomize_va_space",
        lambda v: v < 2,
        "2",
        "address space layout randomisation is off or partial",
    ),
)


class CheckUnavailable(Exception):
    """A check cannot judge the device; the message says why (-> status FAILED)."""


@dataclass(frozen=True)
class AuditCheck:
    name: str
    severity: Severity
    description: str
    default_settings: Mapping[str, Any]  # as in describe-account-audit-configuration
    run: Callable[[AuditContext], list[Noncompliance]]  # raises CheckUnavailable


def run_checks(names: Sequence[str], ctx: AuditContext) -> dict[str, list[Noncompliance] | str]:
    """Per check (in the order given): its findings, or why it could not run.
    ValueError for a name that is not a check."""
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise ValueError(
            f"unknown audit check(s): {', '.join(unknown)}; known: {', '.join(CHECKS)}"
        )
    results: dict[str, list[Noncompliance] | str] = {}
    for name in names:
        try:
            results[name] = CHECKS[name].run(ctx)
        except CheckUnavailable as e:
            results[name] = str(e)
        except Exception as e:  # the error boundary: one broken check fails alone
            log.exception(kv("audit_check_error", check=name))
            results[name] = f"the check failed: {type(e).__name__}: {e}"
    return results


# --- paths and small readers ---------------------------------------------------------


def _under(ctx: AuditContext, path: str) -> Path:
    """A device path (absolute) under ctx.root; a relative one is taken as given."""
    p = Path(path)
    return ctx.root / p.relative_to("/") if p.is_absolute() else p


def _shown(ctx: AuditContext, path: Path) -> str:
    """The device path of a file under ctx.root."""
    with contextlib.suppress(ValueError):
        return "/" + str(path.relative_to(ctx.root)).removeprefix(".")
    return str(path)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _setting(ctx: AuditContext, check: str, key: str, default: str) -> int:
    """A threshold in days from the account audit configuration: AWS's key (as
    botocore's CheckCustomConfiguration) or its CloudFormation spelling."""
    settings = ctx.settings.get(check, {})
    camel = "".join(w.capitalize() for w in key.lower().split("_"))
    value = settings.get(key, settings.get(camel[0].lower() + camel[1:], default))
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise CheckUnavailable(f"{key} is {value!r}, not a number of days") from None
    if days not in THRESHOLD_DAYS:
        raise CheckUnavailable(f"{key} is {days}; AWS allows 30 to 3652 days")
    return days


# --- certificates --------------------------------------------------------------------


def _device_certificates(ctx: AuditContext) -> list[tuple[str, Certificate]]:
    certificates = []
    for name in ctx.cert_files:
        try:
            found = load_certificates(_under(ctx, name).read_bytes())
        except OSError as e:
            raise CheckUnavailable(f"{name}: cannot read: {e.strerror}") from None
        except X509Error as e:
            raise CheckUnavailable(f"{name}: not a valid X.509 certificate: {e}") from None
        if not found:
            raise CheckUnavailable(f"{name}: no certificate in it")
        certificates.append((name, found[0]))
    return certificates


def _certificate_finding(
    path: str, cert: Certificate, code: str, reason: str, **info: str
) -> Noncompliance:
    return Noncompliance(
        "DEVICE_CERTIFICATE",
        {"deviceCertificateId": cert.certificate_id},
        code,
        reason,
        {"path": path, **info},
    )


def check_certificate_expiring(ctx: AuditContext) -> list[Noncompliance]:
    check = "DEVICE_CERTIFICATE_EXPIRING_CHECK"
    days = _setting(ctx, check, "CERT_EXPIRATION_THRESHOLD_IN_DAYS", "30")
    findings = []
    for path, cert in _device_certificates(ctx):
        not_after = _iso(cert.not_after)
        if ctx.now >= cert.not_after:
            code, reason = "CERTIFICATE_PAST_EXPIRATION", f"Certificate expired on {not_after}."
        elif cert.not_after - ctx.now <= days * DAY_S:
            left = int((cert.not_after - ctx.now) // DAY_S)
            code = "CERTIFICATE_APPROACHING_EXPIRATION"
            reason = f"Certificate expires on {not_after}, in {left} days (threshold {days})."
        else:
            continue
        findings.append(_certificate_finding(path, cert, code, reason, notAfter=not_after))
    return findings


def check_certificate_age(ctx: AuditContext) -> list[Noncompliance]:
    check = "DEVICE_CERTIFICATE_AGE_CHECK"
    days = _setting(ctx, check, "CERT_AGE_THRESHOLD_IN_DAYS", "365")
    findings = []
    for path, cert in _device_certificates(ctx):
        age = int((ctx.now - cert.not_before) // DAY_S)
        if age >= days:
            not_before = _iso(cert.not_before)
            reason = (
                f"Certificate has been valid since {not_before}, {age} days (threshold {days})."
            )
            findings.append(
                _certificate_finding(
                    path, cert, "CERTIFICATE_PAST_AGE_THRESHOLD", reason, notBefore=not_before
                )
            )
    return findings


def check_certificate_key_quality(ctx: AuditContext) -> list[Noncompliance]:
    blacklists = ctx.root / "usr/share/openssl-blacklist"
    findings = []
    for path, cert in _device_certificates(ctx):
        key = cert.public_key
        problems = []
        if key.algorithm == "RSA":
            if key.bits < MIN_RSA_BITS:
                reason = f"The RSA key has {key.bits} bits; at least {MIN_RSA_BITS} are needed."
                problems.append(("CERTIFICATE_KEY_TOO_SMALL", reason))
            if roca_fingerprint(key.modulus):
                reason = (
                    "The RSA key has the ROCA fingerprint (Infineon library, "
                    "CVE-2017-15361): it can be factored."
                )
                problems.append(("CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361", reason))
            if _debian_weak(blacklists, key.bits, key.modulus):
                reason = "The RSA key is in the Debian OpenSSL weak-key blacklist (CVE-2008-0166)."
                problems.append(("CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166", reason))
        elif key.algorithm == "EC":
            if key.curve not in ALLOWED_CURVES:
                reason = f"The EC key is on curve {key.curve}; allowed: P-256, P-384, P-521."
                problems.append(("CERTIFICATE_KEY_CURVE_NOT_ALLOWED", reason))
        elif key.algorithm not in STRONG_ALGORITHMS:
            reason = f"The key algorithm {key.algorithm} is not RSA, ECDSA or EdDSA."
            problems.append(("CERTIFICATE_KEY_ALGORITHM_NOT_ALLOWED", reason))
        info = {"keyAlgorithm": key.algorithm, "keyBits": str(key.bits)}
        findings += [_certificate_finding(path, cert, c, r, **info) for c, r in problems]
    return findings


def _debian_weak(folder: Path, bits: int, modulus: int) -> bool:
    """Whether the openssl-blacklist list for this key size names the modulus; False
    (not checked) when the list is not installed."""
    try:
        data = (folder / f"blacklist.RSA-{bits}").read_bytes()
    except OSError:
        return False
    return b"\n" + debian_blacklist_line(modulus) + b"\n" in b"\n" + data + b"\n"


def check_revoked_certificate(ctx: AuditContext) -> list[Noncompliance]:
    if not ctx.crl_file:
        raise CheckUnavailable("no CRL is configured, so revocation cannot be checked")
    try:
        crl = load_crl(_under(ctx, ctx.crl_file).read_bytes())
    except OSError as e:
        raise CheckUnavailable(f"{ctx.crl_file}: cannot read: {e.strerror}") from None
    except X509Error as e:
        raise CheckUnavailable(f"{ctx.crl_file}: not a valid CRL: {e}") from None
    findings = []
    for path, cert in _device_certificates(ctx):
        if cert.issuer != crl.issuer:
            raise CheckUnavailable(
                f"{ctx.crl_file} is issued by {name_text(crl.issuer)}, not by the issuer of "
                f"{path} ({name_text(cert.issuer)}): it says nothing about that certificate"
            )
        if cert.serial in crl.revoked:
            reason = f"Certificate (serial {cert.serial:x}) is revoked by its issuer's CRL."
            info = {"serialNumber": f"{cert.serial:x}", "crl": ctx.crl_file}
            findings.append(
                _certificate_finding(path, cert, "CERTIFICATE_REVOKED_BY_ISSUER", reason, **info)
            )
    return findings


# --- file permissions ----------------------------------------------------------------


def _file_finding(path: str, code: str, reason: str, st: os.stat_result) -> Noncompliance:
    info = {"mode": f"{st.st_mode & 0o7777:04o}", "uid": str(st.st_uid), "gid": str(st.st_gid)}
    return Noncompliance("DEVICE_FILE", {"path": path}, code, reason, info)


def _stat(ctx: AuditContext, name: str) -> os.stat_result:
    try:
        return os.stat(_under(ctx, name))
    except OSError as e:
        raise CheckUnavailable(f"{name}: cannot read: {e.strerror}") from None


def check_key_files(ctx: AuditContext) -> list[Noncompliance]:
    findings = []
    for name in ctx.key_files:
        st = _stat(ctx, name)
        if st.st_mode & 0o077:
            mode = f"{st.st_mode & 0o777:04o}"
            reason = f"Private key has mode {mode}: group or others can use it; want 0600."
            findings.append(_file_finding(name, "KEY_FILE_ACCESSIBLE_BY_OTHERS", reason, st))
    return findings


def check_config_files(ctx: AuditContext) -> list[Noncompliance]:
    findings = []
    for name in ctx.config_files:
        st = _stat(ctx, name)
        if st.st_mode & 0o022:
            mode = f"{st.st_mode & 0o777:04o}"
            reason = (
                f"Config file has mode {mode}: group or others can change what the agent "
                "runs, judges and where it reports."
            )
            findings.append(_file_finding(name, "CONFIG_FILE_WRITABLE_BY_OTHERS", reason, st))
    return findings


# --- sshd ----------------------------------------------------------------------------

_SSHD_SPLIT = re.compile(r"\s*=\s*|\s+")
_SSHD_INCLUDE_DEPTH = 16


def sshd_settings(ctx: AuditContext) -> dict[str, tuple[str, str]] | None:
    """sshd's global settings as sshd reads them: keyword (lower case) -> (first
    value, `file:line`); the first value of a keyword wins, Include is followed in
    order (globs sorted), and Match blocks are skipped: they apply to some connections
    only. None when there is no /etc/ssh/sshd_config (sshd does not start without it)."""
    main = ctx.root / "etc/ssh/sshd_config"
    if not main.exists():
        return None
    values: dict[str, tuple[str, str]] = {}
    _read_sshd(ctx, main, values, 0)
    return values


def _read_sshd(
    ctx: AuditContext, path: Path, values: dict[str, tuple[str, str]], depth: int
) -> None:
    if depth > _SSHD_INCLUDE_DEPTH:
        raise CheckUnavailable(
            f"{_shown(ctx, path)}: Include nested more than {_SSHD_INCLUDE_DEPTH} deep"
        )
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise CheckUnavailable(f"{_shown(ctx, path)}: cannot read: {e.strerror}") from None
    in_match = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = _SSHD_SPLIT.split(line, maxsplit=1)
        keyword, value = parts[0].lower(), parts[1] if len(parts) > 1 else ""
        if keyword == "match":
            in_match = True
        elif in_match:
            continue
        elif keyword == "include":
            for pattern in value.split():
                # Relative patterns are relative to /etc/ssh; only the pattern is a glob.
                base = ctx.root if pattern.startswith("/") else ctx.root / "etc/ssh"
                for name in sorted(glob.glob(glob.escape(str(base)) + "/" + pattern.lstrip("/"))):
                    _read_sshd(ctx, Path(name), values, depth + 1)
        else:
            first = value.split()[0].strip('"') if value else ""
            values.setdefault(keyword, (first, f"{_shown(ctx, path)}:{number}"))


def _sshd_finding(setting: str, code: str, reason: str, value: tuple[str, str]) -> Noncompliance:
    info = {"value": value[0], "source": value[1]}
    return Noncompliance("DEVICE_SETTING", {"setting": f"sshd:{setting}"}, code, reason, info)


def check_sshd_password_login(ctx: AuditContext) -> list[Noncompliance]:
    settings = sshd_settings(ctx)
    if settings is None:
        return []
    findings = []
    password = settings.get("passwordauthentication", ("yes", "sshd default"))
    if password[0].lower() == "yes":
        reason = "sshd accepts password logins, which can be guessed; use keys only."
        findings.append(
            _sshd_finding(
                "PasswordAuthentication", "SSHD_PASSWORD_AUTHENTICATION_ENABLED", reason, password
            )
        )
    # Keyboard-interactive through PAM asks for the same Unix password.
    kbd = settings.get(
        "kbdinteractiveauthentication",
        settings.get("challengeresponseauthentication", ("yes", "sshd default")),
    )
    use_pam = settings.get("usepam", ("no", "sshd default"))
    if kbd[0].lower() == "yes" and use_pam[0].lower() == "yes":
        reason = "sshd accepts keyboard-interactive logins through PAM, which ask for the password."
        findings.append(
            _sshd_finding(
                "KbdInteractiveAuthentication",
                "SSHD_KBD_INTERACTIVE_AUTHENTICATION_ENABLED",
                reason,
                kbd,
            )
        )
    return findings


def check_sshd_root_login(ctx: AuditContext) -> list[Noncompliance]:
    settings = sshd_settings(ctx)
    if settings is None:
        return []
    # OpenSSH's default since 7.0 is prohibit-password (keys only).
    root = settings.get("permitrootlogin", ("prohibit-password", "sshd default"))
    if root[0].lower() != "yes":
        return []
    reason = "sshd lets root log in with a password; use prohibit-password or no."
    return [_sshd_finding("PermitRootLogin", "SSHD_ROOT_LOGIN_PERMITTED", reason, root)]


# --- accounts ------------------------------------------------------------------------


def _crypt() -> Callable[[str, str], str | None]:
    """The libcrypt behind Python's `crypt` (yescrypt, sha512crypt, sha256crypt,
    md5crypt, bcrypt: what the system's libcrypt knows), imported only here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:
        raise CheckUnavailable(
            "Python's crypt module is missing (it was removed in Python 3.13), so the "
            "shadow hashes cannot be computed and default passwords are not checked"
        ) from None
    return crypt.crypt


def _hash(crypt: Callable[[str, str], str | None], password: str, hashed: str) -> str | None:
    """The hash of `password` with the salt and parameters of `hashed`; None (or `*0`)
    when libcrypt does not know the method: that entry is not checked."""
    try:
        return crypt(password, hashed)
    except OSError:
        return None


def _user_finding(user: str, code: str, reason: str, hashed: str) -> Noncompliance:
    method = {"$y$": "yescrypt", "$6$": "sha512crypt", "$5$": "sha256crypt", "$1$": "md5crypt"}
    info = {"hashMethod": method.get(hashed[:3], hashed[:4] or "none")}
    return Noncompliance("DEVICE_USER", {"user": user}, code, reason, info)


def check_default_credentials(ctx: AuditContext) -> list[Noncompliance]:
    """Each well-known password is hashed with the salt and parameters of the user's
    own shadow entry and compared; nothing logs in. Locked accounts (`!`, `*`) are
    skipped; a hash method libcrypt does not know is not checked."""
    try:
        text = (ctx.root / "etc/shadow").read_text(errors="replace")
    except OSError as e:
        raise CheckUnavailable(f"/etc/shadow: cannot read: {e.strerror}") from None
    crypt = _crypt()
    findings = []
    for line in text.splitlines():
        user, _, rest = line.partition(":")
        hashed = rest.partition(":")[0]
        if not user or not rest:
            continue
        if not hashed:
            reason = f"User {user} has an empty password: anyone can log in as {user}."
            findings.append(_user_finding(user, "ACCOUNT_HAS_EMPTY_PASSWORD", reason, hashed))
            continue
        if not hashed.startswith("$"):
            continue  # locked or disabled
        for password in DEFAULT_PASSWORDS.get(user, ()):
            if _hash(crypt, password, hashed) == hashed:
                reason = f"User {user} has the well-known default password {password!r}."
                findings.append(
                    _user_finding(user, "ACCOUNT_USES_DEFAULT_PASSWORD", reason, hashed)
                )
                break
    return findings


# --- network -------------------------------------------------------------------------

_LISTEN_STATE = {"tcp": "0A", "udp": "07"}  # TCP LISTEN; an unconnected UDP socket is CLOSE


def check_listening_services(ctx: AuditContext) -> list[Noncompliance]:
    allowed = {"tcp": ctx.allowed_tcp_ports, "udp": ctx.allowed_udp_ports}
    if all(ports is None for ports in allowed.values()):
        raise CheckUnavailable(
            "no loaded security profile lists the ports allowed to listen (aws:listening-"
            "tcp-ports or aws:listening-udp-ports in-port-set), so listeners are not judged"
        )
    found: dict[tuple[str, int], list[str]] = {}
    for protocol, ports in allowed.items():
        if ports is None:
            continue  # no profile says which ports of this protocol may listen
        for suffix, wildcard in (("", "0.0.0.0"), ("6", "::")):
            path = ctx.proc_root / "net" / f"{protocol}{suffix}"
            try:
                lines = path.read_text().splitlines()[1:]
            except FileNotFoundError:
                if suffix:
                    continue  # IPv6 disabled
                raise CheckUnavailable(f"{path} is missing") from None
            except OSError as e:
                raise CheckUnavailable(f"{path}: cannot read: {e.strerror}") from None
            for number, line in enumerate(lines, start=2):
                fields = line.split()
                if len(fields) < 4 or fields[3] != _LISTEN_STATE[protocol]:
                    continue
                address, _, port_hex = fields[1].partition(":")
                try:
                    port = int(port_hex, 16)
                except ValueError:
                    raise CheckUnavailable(f"{path}: line {number} is not a socket entry") from None
                addresses = found.setdefault((protocol, port), [])
                if not address.strip("0") and port not in ports and wildcard not in addresses:
                    addresses.append(wildcard)
    return [
        Noncompliance(
            "DEVICE_LISTENING_PORT",
            {"protocol": protocol, "port": str(port)},
            "SERVICE_LISTENING_ON_ALL_INTERFACES",
            f"A service listens on {protocol.upper()} port {port} on all interfaces, "
            "and no security profile allows that port.",
            {"addresses": ", ".join(addresses)},
        )
        for (protocol, port), addresses in sorted(found.items())
        if addresses
    ]


def check_firewall(ctx: AuditContext) -> list[Noncompliance]:
    """Rules are listed with `nft -j list ruleset` (nftables, which iptables-nft also
    fills) and `iptables-legacy-save` for legacy tables named in /proc/net/
    ip_tables_names; the tools describe the running kernel, so they run only when
    root and proc_root are the live / and /proc. Any rule, or a chain whose policy is
    drop, counts as a firewall (a NAT-only ruleset passes). Without nft, nf_tables
    absent from /sys/module and no legacy table loaded: nothing can filter. Loaded
    but no tool to list them: cannot tell."""
    live = ctx.root.resolve() == Path("/") and ctx.proc_root.resolve() == Path("/proc")
    rules, evidence, unknown = 0, [], []
    nft = _tool(ctx, "nft") if live else None
    if nft:  # also right when nf_tables is built in and has no /sys/module entry
        rules += _nft_rules(_run([nft, "-j", "list", "ruleset"]))
        evidence.append("nft -j list ruleset")
    elif (ctx.root / "sys/module/nf_tables").exists():
        unknown.append("nf_tables is loaded but nft is not installed to list its rules")
    else:
        evidence.append("nf_tables not loaded")
    for names, save in (
        ("ip_tables_names", "iptables-legacy-save"),
        ("ip6_tables_names", "ip6tables-legacy-save"),
    ):
        try:
            tables = (ctx.proc_root / "net" / names).read_text().split()
        except OSError:
            tables = []
        if not tables:
            evidence.append(f"no {names}")
            continue
        tool = (_tool(ctx, save) or _tool(ctx, save.replace("-legacy", ""))) if live else None
        if tool:
            rules += _saved_rules(_run([tool]))
            evidence.append(Path(tool).name)
        else:
            listed = ", ".join(tables)
            unknown.append(f"legacy tables ({listed}) are loaded but {save} is not installed")
    if rules:
        return []
    if unknown:
        raise CheckUnavailable("cannot tell whether a firewall is set: " + "; ".join(unknown))
    reason = (
        "No nftables or iptables rule is loaded: every listening port is open to every network."
    )
    info = {"checked": "; ".join(evidence)}
    return [
        Noncompliance("DEVICE_SETTING", {"setting": "firewall"}, "NO_FIREWALL_RULES", reason, info)
    ]


def _tool(ctx: AuditContext, name: str) -> str | None:
    for folder in ("usr/sbin", "sbin", "usr/bin", "bin"):
        path = ctx.root / folder / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CheckUnavailable(f"{argv[0]} could not run: {e}") from None
    if done.returncode:
        raise CheckUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _nft_rules(text: str) -> int:
    try:
        items = json.loads(text)["nftables"]
        rules = sum(1 for item in items if "rule" in item)
        drops = sum(1 for item in items if item.get("chain", {}).get("policy") == "drop")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CheckUnavailable("nft -j list ruleset did not print its JSON ruleset") from None
    return rules + drops


def _saved_rules(text: str) -> int:
    """Rules (`-A`) and drop policies (`:INPUT DROP [0:0]`) in iptables-save output."""
    lines = text.splitlines()
    return sum(1 for line in lines if line.startswith("-A ") or line.split()[1:2] == ["DROP"])


# --- system settings -----------------------------------------------------------------

UNATTENDED_UPGRADE = "APT::Periodic::Unattended-Upgrade"
_APT_TOKEN = re.compile(r'"([^"]*)"|([{};])|([^\s{};"]+)')
_APT_COMMENT = re.compile(r"/\*.*?\*/|(?:^|(?<=\s))//[^\n]*|^[ \t]*#[^\n]*", re.DOTALL | re.M)
_APT_PART = re.compile(r"[A-Za-z0-9_.-]+")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # in /proc/self/mountinfo paths


def apt_config(ctx: AuditContext) -> dict[str, str]:
    """APT's configuration as APT reads it (apt.conf(5)): /etc/apt/apt.conf.d files in
    ascending order (names of letters, digits, `_-.`, no extension or `.conf`), then
    /etc/apt/apt.conf; a later value overrides. Keys are lower case (APT ignores case)."""
    etc = ctx.root / "etc/apt"
    parts = etc / "apt.conf.d"
    names = sorted(os.listdir(parts)) if parts.is_dir() else []
    files = [
        parts / name
        for name in names
        if _APT_PART.fullmatch(name) and Path(name).suffix in ("", ".conf")
    ]
    values: dict[str, str] = {}
    for path in [*files, etc / "apt.conf"]:
        with contextlib.suppress(OSError):
            _parse_apt(path.read_text(errors="replace"), values)
    return values


def _parse_apt(text: str, values: dict[str, str]) -> None:
    """`A::B "v";` and the nested `A { B "v"; };` forms."""
    scope: list[str] = []
    name = ""
    for string, punct, word in _APT_TOKEN.findall(_APT_COMMENT.sub(" ", text)):
        if punct == "{":
            scope.append(name)
            name = ""
        elif punct == "}":
            if scope:
                scope.pop()
            name = ""
        elif punct == ";":
            name = ""
        elif word and not name:
            name = word
        elif name:
            values["::".join([*scope, name]).lower()] = string or word


def check_unattended_upgrades(ctx: AuditContext) -> list[Noncompliance]:
    if not (ctx.root / "etc/debian_version").exists():
        raise CheckUnavailable(
            "not a Debian-based system (no /etc/debian_version): only APT's "
            "unattended-upgrades is understood"
        )
    resource = {"setting": UNATTENDED_UPGRADE}
    if not (ctx.root / "usr/bin/unattended-upgrade").exists():
        reason = (
            "The unattended-upgrades package is not installed: security updates wait for someone."
        )
        return [
            Noncompliance("DEVICE_SETTING", resource, "UNATTENDED_UPGRADES_NOT_INSTALLED", reason)
        ]
    value = apt_config(ctx).get(UNATTENDED_UPGRADE.lower(), "0")
    with contextlib.suppress(ValueError):
        if int(value) > 0:
            return []
    reason = f'{UNATTENDED_UPGRADE} is "{value}": APT does not install security updates by itself.'
    code = "UNATTENDED_UPGRADES_DISABLED"
    return [Noncompliance("DEVICE_SETTING", resource, code, reason, {"value": value})]


def _kernel_finding(name: str, value: int, expected: str, why: str) -> Noncompliance:
    reason = f"{name} is {value}: {why}."
    info = {"value": str(value), "expected": expected}
    return Noncompliance(
        "DEVICE_SETTING", {"setting": name}, "KERNEL_SETTING_INSECURE", reason, info
    )


def check_kernel_settings(ctx: AuditContext) -> list[Noncompliance]:
    sysctl = ctx.proc_root / "sys"
    if not sysctl.is_dir():
        raise CheckUnavailable(f"{sysctl} is missing: the kernel settings cannot be read")
    findings = []
    for setting in KERNEL_SETTINGS:
        if setting.gateway_may and ctx.gateway:
            continue
        value = _read_int(sysctl / setting.name.replace(".", "/"))
        if value is not None and setting.insecure(value):
            findings.append(_kernel_finding(setting.name, value, setting.expected, setting.why))
    # Reverse-path filtering applies max(conf.all, conf.<interface>) per interface.
    conf = sysctl / "net/ipv4/conf"
    if conf.is_dir() and not _read_int(conf / "all/rp_filter"):
        for interface in sorted(os.listdir(conf)):
            if (
                interface not in ("all", "default", "lo")
                and _read_int(conf / interface / "rp_filter") == 0
            ):
                findings.append(
                    _kernel_finding(
                        f"net.ipv4.conf.{interface}.rp_filter",
                        0,
                        "1 or 2",
                        "packets with spoofed source addresses are accepted on this interface",
                    )
                )
    return findings


# --- files that run as root ----------------------------------------------------------


def root_path(ctx: AuditContext) -> tuple[str, str]:
    """Root's PATH and where it comes from: ENV_SUPATH in /etc/login.defs (what su and
    login give root), else the usual default."""
    with contextlib.suppress(OSError):
        for line in (ctx.root / "etc/login.defs").read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "ENV_SUPATH":
                return parts[1].removeprefix("PATH="), "/etc/login.defs ENV_SUPATH"
    return DEFAULT_ROOT_PATH, "the default root PATH"


def check_path_directories(ctx: AuditContext) -> list[Noncompliance]:
    path, source = root_path(ctx)
    findings = []
    for entry in dict.fromkeys(path.split(":")):
        if not entry.startswith("/"):
            reason = (
                f"Root's PATH ({source}) holds the relative entry {entry!r}: root runs "
                "programs from whatever directory it is in."
            )
            code = "PATH_CONTAINS_RELATIVE_DIRECTORY"
            resource = {"path": entry or "(empty)"}
            findings.append(Noncompliance("DEVICE_FILE", resource, code, reason, {"PATH": path}))
            continue
        try:
            st = os.stat(_under(ctx, entry))
        except OSError:
            continue  # not there: nothing to plant a program in
        if st.st_uid != 0 or st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0):
            reason = (
                f"{entry} is on root's PATH ({source}) and users other than root can write "
                "to it: a program put there runs as root."
            )
            findings.append(_file_finding(entry, "PATH_DIRECTORY_WRITABLE_BY_NON_ROOT", reason, st))
    return findings


def check_setuid_files(ctx: AuditContext) -> list[Noncompliance]:
    info = ctx.root / "var/lib/dpkg/info"
    if not info.is_dir():
        raise CheckUnavailable(
            "no dpkg database (/var/lib/dpkg/info): which package installed a set-uid "
            "file cannot be told"
        )
    listed = b"\n".join(path.read_bytes() for path in info.glob("*.list"))
    packaged = set(listed.decode("utf-8", "surrogateescape").split("\n"))
    findings = []
    for path, st in _unpackaged_setuid_files(ctx, packaged):
        setuid = bool(st.st_mode & 0o4000)
        kind = "set-uid" if setuid else "set-gid"
        code = "SETUID_FILE_NOT_FROM_PACKAGE" if setuid else "SETGID_FILE_NOT_FROM_PACKAGE"
        reason = f"{path} is {kind} and no installed package owns it."
        findings.append(_file_finding(path, code, reason, st))
    return findings


def _unpackaged_setuid_files(
    ctx: AuditContext, packaged: set[str]
) -> list[tuple[str, os.stat_result]]:
    """Set-uid/set-gid regular files under /usr, /bin and /sbin that no package lists
    (a top that is a symlink, as with merged /usr, is walked through its target; other
    file systems mounted below are not entered). Only unlisted files are stat()ed:
    most of the walk's cost is that call, and a listed file is never a finding."""
    prefix = len(str(ctx.root).rstrip("/"))
    mounts = _mount_points(ctx)
    found = []
    walked = 0
    for top in SETUID_WALK:
        start = ctx.root / top
        if start.is_symlink() or not start.is_dir():
            continue
        stack = [str(start)]
        while stack:
            try:
                entries = os.scandir(stack.pop())
            except OSError:
                continue
            with entries:
                for entry in entries:
                    walked += 1
                    if entry.is_dir(follow_symlinks=False):
                        if entry.path not in mounts:
                            stack.append(entry.path)
                        continue
                    path = entry.path[prefix:]
                    # With merged /usr, dpkg may list /bin/su for the file at /usr/bin/su.
                    if path in packaged or path.removeprefix("/usr") in packaged:
                        continue
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if st.st_mode & 0o6000:
                            found.append((path, st))
            if walked > MAX_WALKED_ENTRIES:
                raise CheckUnavailable(
                    f"more than {MAX_WALKED_ENTRIES} entries under /{top}: the walk stopped"
                )
    return sorted(found, key=lambda item: item[0])


def _mount_points(ctx: AuditContext) -> set[str]:
    """Mount points of the audit's mount namespace (proc_root/self/mountinfo, field 5,
    octal escapes undone); empty when it cannot be read."""
    try:
        lines = (ctx.proc_root / "self/mountinfo").read_text().splitlines()
    except OSError:
        return set()
    return {
        _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), line.split()[4])
        for line in lines
        if len(line.split()) > 4
    }


# --- the table -----------------------------------------------------------------------

CHECKS: dict[str, AuditCheck] = {
    check.name: check
    for check in (
        AuditCheck(
            "DEVICE_CERTIFICATE_EXPIRING_CHECK",
            "MEDIUM",
            "A device certificate expires within CERT_EXPIRATION_THRESHOLD_IN_DAYS "
            "(default 30) or has expired.",
            {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "30"},
            check_certificate_expiring,
        ),
        AuditCheck(
            "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK",
            "CRITICAL",
            "The device certificate's key is weak: RSA under 2048 bits, an EC curve other "
            "than P-256/P-384/P-521, the ROCA fingerprint (CVE-2017-15361, the published "
            "test on the modulus), or a Debian OpenSSL key (CVE-2008-0166) when the "
            "openssl-blacklist lists are installed in /usr/share/openssl-blacklist; "
            "without the list for the key's size, CVE-2008-0166 is not checked.",
            {},
            check_certificate_key_quality,
        ),
        AuditCheck(
            "DEVICE_CERTIFICATE_AGE_CHECK",
            "LOW",
            "A device certificate has been valid (since its notBefore) for "
            "CERT_AGE_THRESHOLD_IN_DAYS (default 365) or more.",
            {"CERT_AGE_THRESHOLD_IN_DAYS": "365"},
            check_certificate_age,
        ),
        AuditCheck(
            "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK",
            "MEDIUM",
            "The device still uses a certificate that the configured CRL (PEM or DER, "
            "from the certificate's issuer) revokes. The CRL's signature is not verified; "
            "without a CRL the check cannot run.",
            {},
            check_revoked_certificate,
        ),
        AuditCheck(
            "DEVICE_KEY_FILE_PERMISSIONS_CHECK",
            "HIGH",
            "A device private key file has a mode that lets group or others read or "
            "write it (anything beyond 0600).",
            {},
            check_key_files,
        ),
        AuditCheck(
            "DEVICE_CONFIG_FILE_PERMISSIONS_CHECK",
            "HIGH",
            "The agent's config or a profile file is writable by group or others, who "
            "could then change the commands it runs, what it judges and where it reports.",
            {},
            check_config_files,
        ),
        AuditCheck(
            "DEVICE_SSHD_PASSWORD_LOGIN_CHECK",
            "MEDIUM",
            "sshd accepts passwords: PasswordAuthentication yes (the default), or "
            "keyboard-interactive with UsePAM yes. Read as sshd does (first value wins, "
            "Include followed); Match blocks and AuthenticationMethods are not judged.",
            {},
            check_sshd_password_login,
        ),
        AuditCheck(
            "DEVICE_SSHD_ROOT_LOGIN_CHECK",
            "HIGH",
            "sshd has PermitRootLogin yes (passwords for root). Read as sshd does; Match "
            "blocks are not judged.",
            {},
            check_sshd_root_login,
        ),
        AuditCheck(
            "DEVICE_DEFAULT_CREDENTIALS_CHECK",
            "CRITICAL",
            "An account in /etc/shadow has an empty password or a well-known default one "
            "(pi/raspberry, root/root, ...), found by hashing the default with the entry's "
            "own salt (never by logging in). Needs Python's crypt module.",
            {},
            check_default_credentials,
        ),
        AuditCheck(
            "DEVICE_LISTENING_SERVICES_CHECK",
            "MEDIUM",
            "A service listens on all interfaces (0.0.0.0 or ::) on a port that no loaded "
            "security profile allows; without such a profile the check cannot run.",
            {},
            check_listening_services,
        ),
        AuditCheck(
            "DEVICE_UNATTENDED_UPGRADES_CHECK",
            "MEDIUM",
            "Debian: unattended-upgrades is not installed, or APT::Periodic::"
            "Unattended-Upgrade is not on.",
            {},
            check_unattended_upgrades,
        ),
        AuditCheck(
            "DEVICE_KERNEL_SETTINGS_CHECK",
            "MEDIUM",
            "A kernel setting weakens the device: IP forwarding on a non-gateway, "
            "kptr_restrict, dmesg_restrict, protected symlinks/hardlinks, ASLR, or "
            "reverse-path filtering off on an interface.",
            {},
            check_kernel_settings,
        ),
        AuditCheck(
            "DEVICE_FIREWALL_CHECK",
            "MEDIUM",
            "No nftables or iptables rule is loaded. When the tables are loaded but no "
            "tool can list them, the check says it cannot tell.",
            {},
            check_firewall,
        ),
        AuditCheck(
            "DEVICE_PATH_WRITABLE_DIRECTORIES_CHECK",
            "HIGH",
            "A directory on root's PATH (/etc/login.defs ENV_SUPATH, or the default) is "
            "writable by someone other than root, or the PATH has a relative entry.",
            {},
            check_path_directories,
        ),
        AuditCheck(
            "DEVICE_SETUID_FILES_CHECK",
            "HIGH",
            "A set-uid or set-gid file under /usr, /bin or /sbin is not listed by any "
            "dpkg package (/var/lib/dpkg/info/*.list).",
            {},
            check_setuid_files,
        ),
    )
}

"""`edge-defender check-config`: is the config usable, are the TLS files right, do the
profiles load, can the agent keep its state (directory writable, disk not full, store
readable)? One plain line per problem, `<file>: <what is wrong>`, so an operator (or
the unit's ExecStartPre) sees at once what would stop `run`. It reads and changes
nothing of the agent's own: a corrupt store is reported, and left for `run` to move.

Only the standard library reads the certificates: OpenSSL (through `ssl`) parses them
and matches the key; the validity dates come from a few lines of DER walking, since
`ssl` has no public API for them and a Pi should not need `cryptography` for this.
The daemon's own start check skips OpenSSL: loading `ssl` costs it ~4 MiB of RSS for
good, and awscrt parses the files itself when it builds its TLS context."""

from __future__ import annotations

import base64
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.config import Config, ConfigError, MqttConfig, load_config, remote_settings
from agent.core.ml_window import WINDOW_S
from agent.core.profile import ProfileError, aws_differences, uses_thing_variables
from agent.core.x509 import validity
from agent.logs import kv
from agent.service.detect import detector_from_config
from agent.service.profiles import DetectFiles, load_detect_files
from agent.store.history import history_path
from agent.store.spool import spool_path

log = logging.getLogger(__name__)

EXPIRY_WARNING_S = 30 * 86400
# Free space on the state dir's file system: below the first the store's writes fail
# (SQLite grows its WAL before a checkpoint); below the second, a warning.
MIN_FREE_BYTES = 8 * 1024 * 1024
LOW_FREE_BYTES = 64 * 1024 * 1024
_MOVED_ASIDE = "the agent will move it aside and start a new one"
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True)
class Finding:
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {'warning: ' if self.warning else ''}{self.message}"


def check_tls_files(mqtt: MqttConfig) -> list[str]:
    """The problems with the configured certificate, key and CA file, one line each;
    empty when TLS can start (files there, key private, certificates well-formed and
    valid now). Certificates expiring soon are logged as warnings."""
    problems = []
    for finding in tls_findings(mqtt, time.time(), openssl=False):
        if finding.warning:
            log.warning(kv("tls_file_warning", file=finding.path, warning=finding.message))
        else:
            problems.append(str(finding))
    return problems


def tls_findings(mqtt: MqttConfig, now: float, *, openssl: bool = True) -> list[Finding]:
    """`openssl` adds OpenSSL's own parse of every certificate and the key match."""
    if not mqtt.tls:
        return []
    if mqtt.endpoint and not (mqtt.cert_file or mqtt.key_file):
        message = (
            "required with mqtt.key_file when mqtt.tls is true (false only for a local broker)"
        )
        return [Finding("mqtt.cert_file", message)]
    if bool(mqtt.cert_file) != bool(mqtt.key_file):
        have, lacking = ("cert_file", "key_file") if mqtt.cert_file else ("key_file", "cert_file")
        return [Finding(f"mqtt.{lacking}", f"required when mqtt.{have} is set")]
    findings = []
    if mqtt.cert_file and mqtt.key_file:
        cert = _check_certificates(mqtt.cert_file, now, openssl)
        findings += cert
        usable = openssl and not _problems(cert)
        findings += _check_key(mqtt.key_file, mqtt.cert_file, match_cert=usable)
    if mqtt.ca_file:
        findings += _check_certificates(mqtt.ca_file, now, openssl)
    return findings


def check_config(path: str | None) -> list[Finding]:
    """Everything wrong with the config at `path` (default: the usual one) and the files
    it names. A config that does not load stops the check there."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        return [_finding(str(e))]
    findings = tls_findings(cfg.mqtt, time.time())
    with_remote, problem = remote_settings(cfg)
    if problem is not None:
        findings.append(Finding(str(cfg.remote_settings_path), f"ignored: {problem}", True))
    elif with_remote is not cfg:
        changed = cfg.remote_settings_path.read_text().strip().replace("\n", " ")
        findings.append(
            Finding(
                str(cfg.remote_settings_path), f"remote control's settings apply: {changed}", True
            )
        )
        cfg = with_remote
    try:
        files = load_detect_files(cfg.profile_patterns)
        if not files.profiles:
            patterns = ", ".join(cfg.detect.profiles)
            judged = "the built-in default profile judges"
            if not cfg.detect.builtin_profile:
                judged = "nothing is judged (detect.builtin_profile is false)"
            message = f"detect.profiles: no security profile in {patterns}; {judged}"
            findings.append(Finding(cfg.config_file, message, warning=True))
        findings += _inactive_findings(cfg, files)
        if (
            any(
                b.criteria is not None and b.criteria.ml_confidence is not None
                for p in files.profiles
                for b in p.behaviors
            )
            and cfg.sampling.interval_s > WINDOW_S
        ):
            message = (
                f"sampling.interval_s: {cfg.sampling.interval_s:g} s: ML behaviors judge a"
                f" rolling {WINDOW_S:g} s window, and samples further apart are each a gap:"
                " nothing is judged"
            )
            findings.append(Finding(cfg.config_file, message, warning=True))
        variables = f"a thing variable (${{iot:ClientId}}) in a filter: {_EXTENSION} as the client"
        findings += [
            Finding(d.source, f"dimension {d.name}: {variables}", warning=True)
            for d in files.dimensions
            if uses_thing_variables(d)
        ]
    except ProfileError as e:
        findings += [_finding(line) for line in e.located()]
    return findings + state_findings(cfg)


_EXTENSION = "not valid in AWS IoT; the device loads it"


def _inactive_findings(cfg: Config, files: DetectFiles) -> list[Finding]:
    """A warning per behavior the agent would load and not judge, and why, and per
    on-device extension AWS IoT would refuse (a 10 s window, say)."""
    try:
        judge = detector_from_config(cfg, files.profiles, files.dimensions)
    except ValueError as e:  # a profile name given twice
        return [Finding(cfg.config_file, str(e))]
    sources = {p.name: p.source or cfg.config_file for p in files.profiles}
    findings = [
        Finding(sources[i.profile], f"{i.profile}/{i.behavior}: not judged: {i.reason}", True)
        for i in judge.inactive_behaviors()
    ]
    for p in files.profiles:
        findings += [
            Finding(
                sources[p.name], f"{p.name}: {d} (not valid in AWS IoT; the device loads it)", True
            )
            for d in aws_differences(p)
        ]
    return findings


def state_findings(cfg: Config) -> list[Finding]:
    """What in the state dir would stop `run`: a directory it cannot create or write,
    a full file system, a store (or, with a broker, a spool) it cannot open."""
    state_dir = cfg.state_dir
    path = Path(state_dir)
    stores = [history_path(path)] + ([spool_path(path)] if cfg.mqtt.endpoint else [])
    try:
        if path.is_dir():
            findings = _writable(path)
            for store in stores:
                findings += _store_findings(store)
            return findings + _free_space(path)
        if path.exists():
            return [Finding(state_dir, "not a directory (state_dir must be one)")]
        # `run` creates it (under systemd, StateDirectory= has made it already).
        parent = next(p for p in path.absolute().parents if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            return [Finding(state_dir, f"cannot be created: {parent} is not writable")]
        return _free_space(parent)
    except OSError as e:
        return [Finding(state_dir, f"cannot be used: {e.strerror}")]


def _writable(folder: Path) -> list[Finding]:
    import tempfile  # here: the daemon imports this module, and tempfile costs ~1.3 MiB

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".check-config-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return [Finding(str(folder), f"not writable: {e.strerror}; the agent keeps its state here")]
    return []


def _free_space(folder: Path) -> list[Finding]:
    fs = os.statvfs(folder)
    free = fs.f_bavail * fs.f_frsize
    shown = f"{free / 2**20:.1f} MiB free"
    if free < MIN_FREE_BYTES:
        need = MIN_FREE_BYTES // 2**20
        message = f"its file system is full ({shown}); the agent needs {need} MiB for its store"
        return [Finding(str(folder), message)]
    if fs.f_files and not fs.f_favail:
        return [Finding(str(folder), "its file system has no free inodes; the agent cannot write")]
    if free < LOW_FREE_BYTES:
        return [Finding(str(folder), f"its file system is nearly full ({shown})", warning=True)]
    return []


def _store_findings(path: Path) -> list[Finding]:
    """Whether the SQLite file at `path` opens, read without a trace: immutable=1 makes
    SQLite take no lock and create no -wal or -shm file (one made by root here would be
    out of the service user's reach)."""
    try:
        if path.stat().st_size == 0:
            return [Finding(str(path), f"corrupt: empty (0 bytes); {_MOVED_ASIDE}")]
    except FileNotFoundError:
        return []  # `run` makes a new one
    except OSError as e:
        return [Finding(str(path), f"cannot read: {e.strerror}")]
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return [Finding(str(path), f"corrupt: {e}; {_MOVED_ASIDE}")]
        return [Finding(str(path), f"cannot open: {e}")]
    return []


def _finding(line: str) -> Finding:
    """A finding from an error text that is already `<file>: <what is wrong>`."""
    path, _, message = line.partition(": ")
    return Finding(path, message)


def run_check_config(path: str | None) -> int:
    findings = check_config(path)
    for finding in findings:
        print(finding)
    if _problems(findings):
        return 1
    print("configuration ok")
    return 0


def _problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if not f.warning]


def _check_certificates(path: str, now: float, openssl: bool) -> list[Finding]:
    """Every PEM certificate in `path` must parse and be valid at `now`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return [Finding(path, f"cannot read: {e.strerror}")]
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        return [Finding(path, "no PEM certificate in it (-----BEGIN CERTIFICATE-----)")]
    if openssl:
        import ssl

        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cadata=data.decode("ascii", "replace")
            )
        except ssl.SSLError as e:
            return [Finding(path, f"not a valid X.509 certificate ({e.reason or e})")]
    findings = []
    for i, block in enumerate(blocks):
        which = f"certificate {i + 1} of {len(blocks)}: " if len(blocks) > 1 else ""
        try:
            not_before, not_after = validity(base64.b64decode(block))
        except (ValueError, IndexError, StopIteration):
            return [Finding(path, f"{which}not a valid X.509 certificate (bad DER)")]
        if now < not_before:
            findings.append(Finding(path, f"{which}not valid before {_iso(not_before)}"))
        elif now >= not_after:
            findings.append(Finding(path, f"{which}expired on {_iso(not_after)}"))
        elif not_after - now < EXPIRY_WARNING_S:
            days = int((not_after - now) // 86400)
            message = f"{which}expires on {_iso(not_after)}, in {days} days"
            findings.append(Finding(path, message, warning=True))
    return findings


def _check_key(path: str, cert_path: str, *, match_cert: bool) -> list[Finding]:
    try:
        mode = os.stat(path).st_mode & 0o777
        data = Path(path).read_bytes()
    except OSError as e:
        return [Finding(path, f"cannot read: {e.strerror}")]
    findings = []
    if mode & 0o077:
        message = f"mode {mode:04o} lets group or others in; want 0600 (chmod 600 {path})"
        findings.append(Finding(path, message))
    if b"ENCRYPTED" in data:
        findings.append(Finding(path, "encrypted with a passphrase; the agent needs it without"))
    elif match_cert:
        import ssl

        try:
            # An empty password: an encrypted key must fail, not prompt on a terminal.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_path, path, password=b"")
        except ssl.SSLError as e:
            if e.reason == "KEY_VALUES_MISMATCH":
                findings.append(Finding(path, f"does not match the certificate {cert_path}"))
            else:
                findings.append(Finding(path, "not a PEM private key OpenSSL can read"))
    return findings


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

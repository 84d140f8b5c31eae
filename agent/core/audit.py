"""Device-side Audit (AWS IoT Device Defender Audit, run on the device): the types the
checks, the store and the verbs share. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Severity = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW"]


@dataclass(frozen=True, slots=True)
class Noncompliance:
    """One non-compliant resource a check found: becomes an AuditFinding."""

    resource_type: str  # AWS ResourceType (DEVICE_CERTIFICATE...) or a device extension
    resource_identifier: Mapping[str, str]  # AWS ResourceIdentifier keys, or the extension's
    reason_code: str  # AWS's reasonForNonComplianceCode, or ours in the same style
    reason: str  # reasonForNonCompliance: one sentence for people
    additional_info: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditContext:
    """What a check may look at. Every path is under `root` (a test passes a rootfs it
    built; the device passes /)."""

    root: Path = Path("/")
    proc_root: Path = Path("/proc")
    # Per check name, its settings as in describe-account-audit-configuration
    # (e.g. {"DEVICE_CERTIFICATE_EXPIRING_CHECK": {"certExpirationThresholdInDays": 30}}).
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cert_files: tuple[str, ...] = ()  # the device certificate(s): [mqtt] cert_file
    key_files: tuple[str, ...] = ()  # their private keys: [mqtt] key_file
    ca_files: tuple[str, ...] = ()
    crl_file: str | None = None  # a CRL the operator configured, for the revoked check
    config_files: tuple[str, ...] = ()  # the agent's config and profile files
    # Ports some loaded profile allows to listen (its in-port-set values); None: no
    # profile says, so listening services are not judged against profiles.
    allowed_tcp_ports: frozenset[int] | None = None
    allowed_udp_ports: frozenset[int] | None = None
    gateway: bool = False  # ip_forward is expected on a gateway
    now: float = 0.0  # epoch seconds, for certificate dates

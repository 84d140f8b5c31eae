"""Certificates for mosquitto with mutual TLS: a CA made on the spot, and server and
client certificates it signs (EC P-256, valid two days). The rig and the system tests
both make theirs here."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Extensions = list[tuple[x509.ExtensionType, bool]]  # (extension, critical)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    extensions: Extensions,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for a new key; self-signed when `issuer` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = issuer or (_name(subject), key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> None:
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path.write_bytes(pem)
    key_path.chmod(0o600)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class Ca:
    """A certificate authority whose key only lives in memory."""

    def __init__(self, cn: str) -> None:
        self.cert, self._key = _issue(
            cn, None, [(x509.BasicConstraints(ca=True, path_length=None), True)]
        )

    def write(self, path: Path) -> Path:
        """The CA certificate, for the trust stores of the broker and its clients."""
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def server(self, cn: str, hosts: Sequence[str], cert_path: Path, key_path: Path) -> None:
        """A server certificate valid for `hosts` (names or IP addresses)."""
        cert, key = _issue(
            cn,
            (self.cert.subject, self._key),
            [
                (x509.SubjectAlternativeName([_san(h) for h in hosts]), False),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            ],
        )
        _write(cert, key, cert_path, key_path)

    def client(self, cn: str, cert_path: Path, key_path: Path) -> None:
        """A client certificate; mosquitto's use_identity_as_username takes `cn`."""
        cert, key = _issue(
            cn,
            (self.cert.subject, self._key),
            [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
        )
        _write(cert, key, cert_path, key_path)

"""agent.core.x509 against certificates and CRLs that `cryptography` makes (its parse
is the reference), the openssl command line for the Debian blacklist line, and an
RSA key made here the way the Infineon library of ROCA made them."""

from __future__ import annotations

import functools
import random
import subprocess
from datetime import UTC, datetime, timedelta
from math import lcm, prod
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from agent.core.x509 import (
    ROCA_PRIMES,
    X509Error,
    debian_blacklist_line,
    der_elements,
    load_certificates,
    load_crl,
    name_text,
    parse_certificate,
    roca_fingerprint,
    validity,
)

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Edge Ltd"),
        ]
    )


def make_certificate(
    key: PrivateKey,
    subject: str = "device",
    *,
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + 300 * DAY,
    serial: int | None = None,
    issuer: tuple[PrivateKey, str] | None = None,
) -> x509.Certificate:
    """A certificate for `key`, self-signed or signed by `issuer` (key, name)."""
    signer, issuer_name = issuer or (key, subject)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer_name))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(signer, algorithm)
    )


def make_crl(ca: PrivateKey, ca_name: str, serials: list[int]) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name(ca_name))
        .last_update(NOW - DAY)
        .next_update(NOW + 7 * DAY)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build()
        )
    return builder.sign(ca, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- a ROCA key, made as the Infineon library made them ---------------------------


def _is_probable_prime(n: int, rng: random.Random) -> bool:
    if n < 2 or any(n % p == 0 for p in (2, *ROCA_PRIMES) if n != p):
        return n in (2, *ROCA_PRIMES)
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(24):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _first_primes(count: int) -> list[int]:
    primes: list[int] = []
    candidate = 2
    while len(primes) < count:
        if all(candidate % p for p in primes):
            primes.append(candidate)
        candidate += 1
    return primes


def roca_prime(bits: int, rng: random.Random) -> int:
    """p = k*M + (65537^a mod M), M the primorial of the first 39 primes: the form of
    the primes of the Infineon library for 512-960-bit keys (Nemec et al., section 2);
    what the fingerprint sees (p mod the small primes) is the same for larger keys."""
    primorial = prod(_first_primes(39))
    while True:
        a = rng.randrange(1, primorial)
        k = rng.randrange(2 ** (bits - 1) // primorial + 1, 2**bits // primorial)
        p = k * primorial + pow(65537, a, primorial)
        if p.bit_length() == bits and (p - 1) % 65537 and _is_probable_prime(p, rng):
            return p


@functools.cache
def roca_private_key(bits: int = 2048, seed: int = 15361) -> rsa.RSAPrivateKey:
    rng = random.Random(seed)
    p = roca_prime(bits // 2, rng)
    q = roca_prime(bits // 2, rng)
    while (p * q).bit_length() != bits:
        q = roca_prime(bits // 2, rng)
    e = 65537
    d = pow(e, -1, lcm(p - 1, q - 1))
    public = rsa.RSAPublicNumbers(e, p * q)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public)
    return numbers.private_key()


# --- tests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, algorithm, bits, curve",
    [
        (rsa.generate_private_key(65537, 2048), "RSA", 2048, ""),
        (rsa.generate_private_key(3, 1024), "RSA", 1024, ""),
        (ec.generate_private_key(ec.SECP256R1()), "EC", 256, "P-256"),
        (ec.generate_private_key(ec.SECP384R1()), "EC", 384, "P-384"),
        (ec.generate_private_key(ec.SECP521R1()), "EC", 521, "P-521"),
        (ec.generate_private_key(ec.SECP256K1()), "EC", 256, "secp256k1"),
        (ed25519.Ed25519PrivateKey.generate(), "Ed25519", 256, ""),
    ],
)
def test_certificate_fields_match_cryptography(
    key: PrivateKey, algorithm: str, bits: int, curve: str
) -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    made = make_certificate(key, issuer=(ca, "Edge CA"))
    der = made.public_bytes(serialization.Encoding.DER)
    cert = parse_certificate(der)
    assert cert.serial == made.serial_number
    assert cert.not_before == made.not_valid_before_utc.timestamp()
    assert cert.not_after == made.not_valid_after_utc.timestamp()
    assert cert.issuer == made.issuer.public_bytes()
    assert cert.subject == made.subject.public_bytes()
    assert name_text(cert.issuer) == "CN=Edge CA, O=Edge Ltd"
    assert cert.certificate_id == made.fingerprint(hashes.SHA256()).hex()
    assert (cert.public_key.algorithm, cert.public_key.bits) == (algorithm, bits)
    assert cert.public_key.curve == curve
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        assert (cert.public_key.modulus, cert.public_key.exponent) == (numbers.n, numbers.e)


def test_dates_after_2049_are_generalized_time() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    late = datetime(2051, 3, 4, 5, 6, 7, tzinfo=UTC)
    made = make_certificate(key, not_before=datetime(1999, 1, 2, tzinfo=UTC), not_after=late)
    not_before, not_after = validity(made.public_bytes(serialization.Encoding.DER))
    assert not_before == datetime(1999, 1, 2, tzinfo=UTC).timestamp()
    assert not_after == late.timestamp()


def test_load_certificates_reads_pem_chains_and_der() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf, ca = make_certificate(key, "leaf"), make_certificate(key, "ca")
    chain = load_certificates(b"junk before\n" + pem(leaf) + pem(ca))
    assert [name_text(c.subject) for c in chain] == ["CN=leaf, O=Edge Ltd", "CN=ca, O=Edge Ltd"]
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert load_certificates(der)[0].der == der
    assert load_certificates(b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----") == []


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not a DER certificate"),
        (b"\x30\x05\x02\x01", "runs past"),
        (b"\x30\x85\x01\x01\x01\x01\x01", "not valid"),
        (b"\x30\x03\x02\x01\x01", "expected tbsCertificate"),
    ],
)
def test_bad_der_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(X509Error, match=message):
        parse_certificate(data)


def test_a_truncated_certificate_is_an_error_not_a_crash() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = make_certificate(key).public_bytes(serialization.Encoding.DER)
    for cut in range(0, len(der), 7):
        with pytest.raises(X509Error):
            parse_certificate(der[:cut])


def test_bad_pem_base64_is_named() -> None:
    with pytest.raises(X509Error, match="CERTIFICATE block is not valid base64"):
        load_certificates(b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----")


def test_der_elements_walks_one_level() -> None:
    data = bytes.fromhex("3006020101020102")
    assert list(der_elements(data, 0, len(data))) == [(0x30, 2, 8)]
    assert list(der_elements(data, 2, 8)) == [(0x02, 4, 5), (0x02, 7, 8)]


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_crl_revoked_serials_and_dates(encoding: serialization.Encoding) -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    made = make_crl(ca, "Edge CA", [7, 2**80 + 1])
    crl = load_crl(made.public_bytes(encoding))
    assert crl.revoked == {7, 2**80 + 1}
    assert crl.issuer == made.issuer.public_bytes()
    assert crl.this_update == made.last_update_utc.timestamp()
    assert made.next_update_utc is not None
    assert crl.next_update == made.next_update_utc.timestamp()


def test_crl_without_revoked_certificates() -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    crl = load_crl(make_crl(ca, "Edge CA", []).public_bytes(serialization.Encoding.DER))
    assert crl.revoked == frozenset()


def test_a_certificate_is_not_a_crl() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(X509Error, match="X509 CRL"):
        load_crl(pem(make_certificate(key)))
    with pytest.raises(X509Error, match="tbsCertList"):
        load_crl(make_certificate(key).public_bytes(serialization.Encoding.DER))


def test_roca_fingerprint_on_an_infineon_style_key() -> None:
    key = roca_private_key()
    modulus = key.public_key().public_numbers().n
    assert modulus.bit_length() == 2048
    assert roca_fingerprint(modulus)


def test_roca_fingerprint_not_on_ordinary_keys() -> None:
    for bits in (1024, 2048, 2048, 3072):
        modulus = rsa.generate_private_key(65537, bits).public_key().public_numbers().n
        assert not roca_fingerprint(modulus)
    # One residue outside the subgroup of 65537 is enough: 2 mod 3 is not a power of 65537 mod 3
    assert not roca_fingerprint(roca_private_key().public_key().public_numbers().n * 2)


def test_debian_blacklist_line_matches_openssl(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 1024)
    path = tmp_path / "cert.pem"
    path.write_bytes(pem(make_certificate(key)))
    modulus = subprocess.run(
        ["openssl", "x509", "-noout", "-modulus", "-in", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    digest = subprocess.run(["sha1sum"], input=modulus, check=True, capture_output=True).stdout
    expected = digest.split()[0][20:]
    assert debian_blacklist_line(key.public_key().public_numbers().n) == expected

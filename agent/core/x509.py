"""Reading X.509 certificates and CRLs from DER, with the standard library only: the
agent must not need `cryptography` on a Pi, and `ssl` has no public API for these
fields. Nothing here verifies a signature; it reads what the files say.

Also the two published weak-key tests a device can run on a public key alone:
ROCA (CVE-2017-15361) and the fingerprint line of the Debian OpenSSL blacklists
(CVE-2008-0166). Errors are `X509Error` (a ValueError) saying what is wrong."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.core.hashing import sha1, sha256

# DER tags (universal class, low tag numbers: all X.509 uses).
INTEGER, BIT_STRING, OID, SEQUENCE = 0x02, 0x03, 0x06, 0x30
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
_CONTEXT_0 = 0xA0

RSA = "1.2.840.113549.1.1.1"
RSA_PSS = "1.2.840.113549.1.1.10"
EC = "1.2.840.10045.2.1"
DSA = "1.2.840.10040.4.1"
KEY_ALGORITHMS = {RSA: "RSA", RSA_PSS: "RSA", EC: "EC", DSA: "DSA"}
KEY_ALGORITHMS |= {"1.3.101.112": "Ed25519", "1.3.101.113": "Ed448"}
CURVES = {
    "1.2.840.10045.3.1.7": "P-256",
    "1.3.132.0.34": "P-384",
    "1.3.132.0.35": "P-521",
    "1.3.132.0.33": "P-224",
    "1.2.840.10045.3.1.1": "P-192",
    "1.3.132.0.10": "secp256k1",
    "1.3.36.3.3.2.8.1.1.7": "brainpoolP256r1",
    "1.3.36.3.3.2.8.1.1.11": "brainpoolP384r1",
    "1.3.36.3.3.2.8.1.1.13": "brainpoolP512r1",
}
_CURVE_BITS = {"P-192": 192, "P-224": 224, "P-256": 256, "P-384": 384, "P-521": 521}
_CURVE_BITS |= {"secp256k1": 256, "brainpoolP256r1": 256, "brainpoolP384r1": 384}
_CURVE_BITS |= {"brainpoolP512r1": 512}
_NAME_KEYS = {"2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST"}
_NAME_KEYS |= {"2.5.4.10": "O", "2.5.4.11": "OU", "1.2.840.113549.1.9.1": "emailAddress"}
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.+?)-----END \1-----", re.DOTALL)


class X509Error(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PublicKey:
    algorithm: str  # RSA, EC, Ed25519, Ed448, DSA, or the OID when unknown
    bits: int  # RSA modulus or EC field size; 0 when not known
    modulus: int = 0  # RSA only
    exponent: int = 0  # RSA only
    curve: str = (
        ""  # EC only: the name (or OID) of the named curve; "explicit" for inline parameters
    )


@dataclass(frozen=True, slots=True)
class Certificate:
    der: bytes
    serial: int
    issuer: bytes  # the DER of the issuer Name (compare as bytes: RFC 5280 7.1 binary match)
    subject: bytes
    not_before: float  # epoch seconds
    not_after: float
    public_key: PublicKey

    @property
    def certificate_id(self) -> str:
        """AWS IoT's certificateId: the SHA-256 of the DER certificate, lower-case hex."""
        digest: str = sha256(self.der).hexdigest()
        return digest


@dataclass(frozen=True, slots=True)
class Crl:
    issuer: bytes
    this_update: float
    next_update: float | None
    revoked: frozenset[int]  # serial numbers


def der_elements(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(tag, content start, content end) of each DER element in data[start:end];
    X509Error when an element runs past `end`."""
    pos = start
    while pos < end:
        if pos + 2 > end:
            raise X509Error(f"DER element at byte {pos} is truncated")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            size = length & 0x7F
            if not 1 <= size <= 4 or pos + size > end:
                raise X509Error(f"DER length at byte {pos - 1} is not valid")
            length = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        if pos + length > end:
            raise X509Error(f"DER element at byte {pos} runs past its container")
        yield tag, pos, pos + length
        pos += length


def _children(
    data: bytes, element: tuple[int, int, int], tag: int, what: str
) -> list[tuple[int, int, int]]:
    if element[0] != tag:
        raise X509Error(f"{what}: expected DER tag 0x{tag:02x}, found 0x{element[0]:02x}")
    return list(der_elements(data, element[1], element[2]))


def _top(data: bytes, what: str) -> tuple[int, int, int]:
    elements = list(der_elements(data, 0, len(data)))
    if len(elements) != 1 or elements[0][0] != SEQUENCE:
        raise X509Error(f"not a DER {what} (one SEQUENCE expected)")
    return elements[0]


def der_time(tag: int, text: bytes) -> float:
    """Epoch seconds of a UTCTime or GeneralizedTime (RFC 5280: Z, no fractions)."""
    try:
        value = text.decode("ascii")
        if tag == UTC_TIME:  # YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280)
            value = ("19" if int(value[:2]) >= 50 else "20") + value
        elif tag != GENERALIZED_TIME:
            raise ValueError
        return datetime.strptime(value, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise X509Error(f"not an X.509 time: {text!r}") from None


def _integer(data: bytes, element: tuple[int, int, int], what: str) -> int:
    if element[0] != INTEGER:
        raise X509Error(f"{what}: not an INTEGER")
    return int.from_bytes(data[element[1] : element[2]], "big", signed=True)


def oid_text(raw: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content octets."""
    if not raw:
        raise X509Error("empty OBJECT IDENTIFIER")
    parts, value = [], 0
    for byte in raw:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            parts.append(value)
            value = 0
    first = min(parts[0] // 40, 2)
    return ".".join(map(str, [first, parts[0] - 40 * first, *parts[1:]]))


def validity(der: bytes) -> tuple[float, float]:
    """notBefore and notAfter (epoch seconds) of a DER certificate."""
    cert = parse_certificate(der)
    return cert.not_before, cert.not_after


def parse_certificate(der: bytes) -> Certificate:
    cert = _children(der, _top(der, "certificate"), SEQUENCE, "certificate")
    if len(cert) != 3:
        raise X509Error("certificate: expected tbsCertificate, signatureAlgorithm, signature")
    tbs = _children(der, cert[0], SEQUENCE, "tbsCertificate")
    # [0] version (optional), serialNumber, signature, issuer, validity, subject, spki, ...
    fields = [f for f in tbs if f[0] != _CONTEXT_0]
    if len(fields) < 6:
        raise X509Error("tbsCertificate: fields missing")
    serial, _, issuer, valid, subject, spki = fields[:6]
    times = _children(der, valid, SEQUENCE, "validity")
    if len(times) != 2:
        raise X509Error("validity: expected notBefore and notAfter")
    not_before, not_after = (der_time(tag, der[s:e]) for tag, s, e in times)
    return Certificate(
        der=der,
        serial=_integer(der, serial, "serialNumber"),
        issuer=der[issuer[1] - _header(der, issuer) : issuer[2]],
        subject=der[subject[1] - _header(der, subject) : subject[2]],
        not_before=not_before,
        not_after=not_after,
        public_key=parse_public_key(der, spki),
    )


def _header(data: bytes, element: tuple[int, int, int]) -> int:
    """Bytes of tag and length in front of `element`'s content."""
    length = element[2] - element[1]
    return 2 if length < 0x80 else 2 + (length.bit_length() + 7) // 8


def parse_public_key(data: bytes, spki: tuple[int, int, int]) -> PublicKey:
    """A SubjectPublicKeyInfo element of `data`."""
    algorithm_id, key = _children(data, spki, SEQUENCE, "subjectPublicKeyInfo")[:2]
    algorithm = _children(data, algorithm_id, SEQUENCE, "algorithm")
    if not algorithm or algorithm[0][0] != OID:
        raise X509Error("subjectPublicKeyInfo: no algorithm OID")
    oid = oid_text(data[algorithm[0][1] : algorithm[0][2]])
    name = KEY_ALGORITHMS.get(oid, oid)
    if key[0] != BIT_STRING or key[2] <= key[1]:
        raise X509Error("subjectPublicKeyInfo: the key is not a BIT STRING")
    bits_start = key[1] + 1  # skip the unused-bits octet
    if name == "RSA":
        rsa = list(der_elements(data, bits_start, key[2]))
        numbers = _children(data, rsa[0], SEQUENCE, "RSAPublicKey") if len(rsa) == 1 else []
        if len(numbers) != 2:
            raise X509Error("RSAPublicKey: expected modulus and publicExponent")
        modulus = _integer(data, numbers[0], "modulus")
        exponent = _integer(data, numbers[1], "publicExponent")
        return PublicKey("RSA", modulus.bit_length(), modulus=modulus, exponent=exponent)
    if name == "EC":
        if len(algorithm) < 2:
            raise X509Error("EC key without curve parameters")
        tag, start, end = algorithm[1]
        curve = CURVES.get(oid_text(data[start:end]), "") if tag == OID else "explicit"
        curve = curve or oid_text(data[start:end])
        return PublicKey("EC", _CURVE_BITS.get(curve, 0), curve=curve)
    key_bits = {"Ed25519": 256, "Ed448": 456}.get(name, 0)
    return PublicKey(name, key_bits)


def parse_crl(der: bytes) -> Crl:
    crl = _children(der, _top(der, "CRL"), SEQUENCE, "CRL")
    if len(crl) != 3:
        raise X509Error("CRL: expected tbsCertList, signatureAlgorithm, signature")
    fields = _children(der, crl[0], SEQUENCE, "tbsCertList")
    if fields and fields[0][0] == INTEGER:  # version (v2)
        fields = fields[1:]
    if len(fields) < 3 or fields[2][0] not in (UTC_TIME, GENERALIZED_TIME):
        raise X509Error("tbsCertList: expected signature, issuer, thisUpdate")
    issuer = fields[1]
    this_update = der_time(fields[2][0], der[fields[2][1] : fields[2][2]])
    rest = fields[3:]
    next_update = None
    if rest and rest[0][0] in (UTC_TIME, GENERALIZED_TIME):
        next_update = der_time(rest[0][0], der[rest[0][1] : rest[0][2]])
        rest = rest[1:]
    revoked: set[int] = set()
    if rest and rest[0][0] == SEQUENCE:
        for entry in _children(der, rest[0], SEQUENCE, "revokedCertificates"):
            serial = _children(der, entry, SEQUENCE, "revoked certificate")
            if not serial:
                raise X509Error("revoked certificate: no serial number")
            revoked.add(_integer(der, serial[0], "userCertificate"))
    return Crl(
        issuer=der[issuer[1] - _header(der, issuer) : issuer[2]],
        this_update=this_update,
        next_update=next_update,
        revoked=frozenset(revoked),
    )


def name_text(name: bytes) -> str:
    """A Name (DER) for people: `CN=..., O=...`, in the certificate's order."""
    parts = []
    for rdn in _children(name, _top(name, "Name"), SEQUENCE, "Name"):
        for attribute in der_elements(name, rdn[1], rdn[2]):
            pair = _children(name, attribute, SEQUENCE, "attribute")
            if len(pair) != 2 or pair[0][0] != OID:
                raise X509Error("Name: attribute without type and value")
            oid = oid_text(name[pair[0][1] : pair[0][2]])
            tag, start, end = pair[1]
            codec = {0x1E: "utf-16-be", 0x14: "latin-1"}.get(tag, "utf-8")
            value = name[start:end].decode(codec, "replace")
            parts.append(f"{_NAME_KEYS.get(oid, oid)}={value}")
    return ", ".join(parts)


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """(label, DER) of each PEM block in `data`, in order."""
    blocks = []
    for label, body in _PEM.findall(data):
        try:
            blocks.append((label.decode(), base64.b64decode(body)))
        except binascii.Error:
            raise X509Error(f"PEM {label.decode()} block is not valid base64") from None
    return blocks


def load_certificates(data: bytes) -> list[Certificate]:
    """Every certificate in a PEM file (in order), or the one DER certificate."""
    if b"-----BEGIN" in data:
        return [parse_certificate(der) for label, der in pem_blocks(data) if label == "CERTIFICATE"]
    return [parse_certificate(data)]


def load_crl(data: bytes) -> Crl:
    """A CRL file, PEM (X509 CRL) or DER."""
    if b"-----BEGIN" in data:
        ders = [der for label, der in pem_blocks(data) if label == "X509 CRL"]
        if len(ders) != 1:
            raise X509Error("expected one -----BEGIN X509 CRL----- block")
        return parse_crl(ders[0])
    return parse_crl(data)


# ROCA (Nemec et al., "The Return of Coppersmith's Attack", CCS 2017): the Infineon
# library makes primes p = k*M + (65537^a mod M), M a primorial, so N = p*q lies in the
# subgroup that 65537 generates modulo each small prime of M. The published test checks
# the primes 3..167; a random modulus passes them all with probability ~2^-154.
ROCA_PRIMES: tuple[int, ...] = (
    *(3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79),
    *(83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167),
)


def _powers(generator: int, prime: int) -> frozenset[int]:
    powers, value = {1}, generator % prime
    while value not in powers:
        powers.add(value)
        value = value * generator % prime
    return frozenset(powers)


_ROCA_SUBGROUPS = tuple((p, _powers(65537, p)) for p in ROCA_PRIMES)


def roca_fingerprint(modulus: int) -> bool:
    """True when the RSA modulus has the ROCA fingerprint (CVE-2017-15361)."""
    return all(modulus % p in subgroup for p, subgroup in _ROCA_SUBGROUPS)


def debian_blacklist_line(modulus: int) -> bytes:
    """The modulus's line in the openssl-blacklist files (CVE-2008-0166): the last 20
    hex digits of SHA-1 over `openssl x509 -noout -modulus` output (upper-case hex)."""
    digest: str = sha1(f"Modulus={modulus:X}\n".encode()).hexdigest()
    return digest[20:].encode()

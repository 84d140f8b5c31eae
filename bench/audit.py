"""CPU seconds of a full device audit (every check) on this machine's real / and /proc.

    python bench/audit.py [--runs N]

The device certificate, key and CRL are made here (RSA-2048, signed by a P-256 CA) in
a temporary directory, so the certificate checks have something to read; every other
check reads the machine itself. CPU is user + system time of this process and of the
tools it runs (nft, iptables-save), from getrusage. The first run pays for a cold
page cache under /usr (the set-uid walk); the goal (issue 12) is <= 2 s of CPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.collect.audit_checks import CHECKS, run_checks
from agent.core.audit import AuditContext

GOAL_S = 2.0


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def device_files(folder: Path) -> AuditContext:
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    key = rsa.generate_private_key(65537, 2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench device")]))
        .issuer_name(ca)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(ca_key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca)
        .last_update(now)
        .next_update(now + timedelta(days=7))
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "device.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "device.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "device.key").chmod(0o600)
    (folder / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    (folder / "agent.toml").write_text("[mqtt]\n")
    return AuditContext(
        cert_files=(str(folder / "device.pem"),),
        key_files=(str(folder / "device.key"),),
        crl_file=str(folder / "ca.crl"),
        config_files=(str(folder / "agent.toml"),),
        allowed_tcp_ports=frozenset({22, 8883}),
        allowed_udp_ports=frozenset(),
        now=time.time(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ctx = device_files(Path(folder))
        totals = []
        for run in range(1, args.runs + 1):
            per_check = {}
            for name in CHECKS:
                before = cpu_s()
                result = run_checks([name], ctx)[name]
                per_check[name] = (cpu_s() - before, result)
            total = sum(cpu for cpu, _ in per_check.values())
            totals.append(total)
            print(f"run {run}: {total:.3f} s CPU for {len(CHECKS)} checks")
            if run == 1:
                for name, (cpu, result) in per_check.items():
                    outcome = result if isinstance(result, str) else f"{len(result)} finding(s)"
                    print(f"  {name:48} {cpu * 1000:7.1f} ms  {outcome}")
    best = min(totals)
    verdict = "within" if max(totals) <= GOAL_S else "OVER"
    print(f"full audit: {best:.3f} s CPU (best of {len(totals)}), worst {max(totals):.3f} s")
    print(f"goal <= {GOAL_S} s: {verdict}")


if __name__ == "__main__":
    main()

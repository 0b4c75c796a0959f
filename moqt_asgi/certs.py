"""Self-signed certificates for development and WebTransport pinning.

Browsers accept ``serverCertificateHashes`` only for ECDSA certificates
valid for at most 14 days; :func:`generate_certificate` makes exactly that.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def generate_certificate(hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 10) -> tuple[bytes, bytes]:
    """An ECDSA P-256 certificate and key (PEM) for ``hosts``, valid ``days`` (≤ 14)."""
    if not 1 <= days <= 14:
        raise ValueError("browsers only pin certificates valid for at most 14 days")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days) - datetime.timedelta(minutes=10))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert_pem, key_pem


def certificate_fingerprint(cert_pem: bytes) -> str:
    """Lower-case hex SHA-256 of the certificate's DER encoding."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def write_certificate(directory: str | Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                      days: int = 10) -> tuple[Path, Path, str]:
    """Write ``cert.pem`` and ``key.pem`` into ``directory``; return their paths and the fingerprint."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = generate_certificate(hosts, days)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path, certificate_fingerprint(cert_pem)

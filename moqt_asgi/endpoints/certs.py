"""Self-signed certificates for development and WebTransport pinning.

Browsers accept ``serverCertificateHashes`` only for ECDSA certificates
valid for at most 14 days; :func:`generate_certificate` makes exactly that.

:func:`certificate_chain_size` measures what a server sends in its TLS
Certificate message; see :data:`CERT_CHAIN_WARN_BYTES` for why it matters.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ANTI_AMPLIFICATION_BUDGET = 3 * 1200
"""What a QUIC server may send before the client's address is validated (RFC 9000 section 8.1):
three times what it received, and a client's first Initial is usually 1200 bytes."""

CERT_CHAIN_WARN_BYTES = 3000
"""Largest certificate chain (sum of DER sizes) that fits the first flight with room to spare.

The rest of the server's first flight takes about 600 bytes of the 3600-byte budget: ServerHello
(~90), EncryptedExtensions with the QUIC transport parameters (~150), CertificateVerify (~80 with
ECDSA P-256, ~520 with RSA-4096), Finished (~36), TLS framing and the QUIC packet headers and AEAD
tags of two or three packets (~100). A larger chain makes the server stop and wait for the
client's next packet: one extra round trip on every full handshake."""


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


def certificate_chain_size(certfile: str | Path) -> int:
    """Total DER size in bytes of every certificate in the PEM file ``certfile`` (leaf and intermediates).

    This is, give or take 3 bytes per certificate of TLS framing, what the
    server's Certificate message carries in its first flight.
    """
    certificates = x509.load_pem_x509_certificates(Path(certfile).read_bytes())
    return sum(len(cert.public_bytes(serialization.Encoding.DER)) for cert in certificates)


def write_certificate(directory: str | Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                      days: int = 10) -> tuple[Path, Path, str]:
    """Write ``cert.pem`` and ``key.pem`` into ``directory``; return their paths and the fingerprint."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = generate_certificate(hosts, days)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    _write_new(cert_path, cert_pem, 0o644)
    _write_new(key_path, key_pem, 0o600)
    return cert_path, key_path, certificate_fingerprint(cert_pem)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` through a private temporary file renamed over it.

    The file is never readable by others while it is written (the key's mode
    is set before any byte goes in), and a symbolic link planted at ``path`` is
    refused rather than followed.
    """
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link; refusing to write through it")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise

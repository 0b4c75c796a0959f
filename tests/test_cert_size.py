"""A certificate chain too large for the server's first flight is reported when the server starts."""

from __future__ import annotations

import datetime
import ipaddress
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from moqt_asgi import MoQ
from moqt_asgi.endpoints.certs import (
    ANTI_AMPLIFICATION_BUDGET,
    CERT_CHAIN_WARN_BYTES,
    certificate_chain_size,
    write_certificate,
)
from moqt_asgi.endpoints.dial_quic import dial_quic
from moqt_asgi.endpoints.quic_server import QuicServer

from .conftest import Certs

pytestmark = pytest.mark.slow


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_rsa_chain(directory: Path) -> tuple[Path, Path]:
    """RSA-4096 leaf, intermediate and root (about 3700 bytes of DER), the kind of chain that does not fit."""
    now = datetime.datetime.now(datetime.UTC)
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=4096) for _ in range(3)]
    names = [_name("test root"), _name("test intermediate"), _name("localhost")]
    certs: list[x509.Certificate] = []
    for index, key in enumerate(keys):
        issuer = max(index - 1, 0)
        builder = (x509.CertificateBuilder().subject_name(names[index]).issuer_name(names[issuer])
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2)))
        if index < 2:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        certs.append(builder.sign(keys[issuer], hashes.SHA256()))
    cert_path, key_path = directory / "chain.pem", directory / "leaf-key.pem"
    cert_path.write_bytes(b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in reversed(certs)))
    key_path.write_bytes(keys[2].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def rsa_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_rsa_chain(tmp_path_factory.mktemp("rsa-chain"))


def test_chain_size_counts_every_certificate(rsa_chain: tuple[Path, Path], certs: Certs) -> None:
    chain = certificate_chain_size(rsa_chain[0])
    assert chain > ANTI_AMPLIFICATION_BUDGET > CERT_CHAIN_WARN_BYTES
    assert certificate_chain_size(certs.cert) < 600  # one ECDSA P-256 certificate


async def test_large_chain_warns_on_start(rsa_chain: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    cert, key = rsa_chain
    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(cert), keyfile=str(key))
    with caplog.at_level(logging.WARNING, logger="moqt_asgi.endpoints"):
        await server.start()
    try:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "moqt_asgi.endpoints"]
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert f"{certificate_chain_size(cert)} bytes" in message
        assert "extra round trip" in message and "ECDSA" in message and "shorter chain" in message
        host, port = server.address
        session = await dial_quic(f"moql://{host}:{port}/", insecure=True)  # still works, just slower
        await session.aclose()
    finally:
        await server.close()


async def test_default_certificate_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key, _ = write_certificate(tmp_path)  # what `python -m moqt_asgi cert` writes
    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(cert), keyfile=str(key))
    with caplog.at_level(logging.DEBUG, logger="moqt_asgi"):
        await server.start()
    await server.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

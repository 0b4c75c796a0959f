"""TLSConfig over real UDP on 127.0.0.1: certificates from files or objects, CA trust from files, data or an
SSLContext, server names, key logs, ticket labels, and clear errors raised before any handshake."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import io
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import moq
import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import CipherSuite
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from moqt_asgi import Client, ClientTicketStore, MoQError, Server, Session, TLSConfig, TLSConfigError, dial
from moqt_asgi.endpoints.certs import certificate_chain_size
from moqt_asgi.endpoints.settings import trust_label
from moqt_asgi.endpoints.tls import client_tls, server_tls
from moqt_asgi.transport.quic import QuicTransport

from .conftest import Certs
from .helpers import WAIT, read_tick, tick_app
from .test_cert_size import write_rsa_chain
from .test_lifecycle import no_leaks

pytestmark = pytest.mark.slow

PEM = serialization.Encoding.PEM


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(PEM) for cert in certificates)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, encryption)


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[x509.GeneralName],
              curve: ec.EllipticCurve | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``names`` signed by ``ca`` (what a real CA issues: not a CA, serverAuth)."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("moqt-asgi test server")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


@dataclasses.dataclass
class Pki:
    """A test CA and what it signed, as objects and as PEM files."""

    ca: x509.Certificate
    ca_file: Path
    leaf: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path
    named: x509.Certificate
    """For ``server.test`` only: no IP address in it."""
    named_key: ec.EllipticCurvePrivateKey
    other_ca_file: Path
    """A CA that signed none of these."""
    encrypted_key_file: Path
    password: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca("moqt-asgi test CA")
    other, _ = make_ca("another CA")
    leaf, key = make_leaf(ca, ca_key, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    named, named_key = make_leaf(ca, ca_key, [x509.DNSName("server.test")])
    files = {"ca.pem": _pem(ca), "other-ca.pem": _pem(other), "cert.pem": _pem(leaf), "key.pem": _key_pem(key),
             "key-encrypted.pem": _key_pem(key, b"s3cret")}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return Pki(ca, directory / "ca.pem", leaf, key, directory / "cert.pem", directory / "key.pem", named, named_key,
               directory / "other-ca.pem", directory / "key-encrypted.pem", "s3cret")



@contextlib.asynccontextmanager
async def serving(tls: TLSConfig | ssl.SSLContext | None, **options: object) -> AsyncIterator[Server]:
    """A :class:`Server` on a free port of 127.0.0.1 serving :func:`tick_app`."""
    async with Server(addr="127.0.0.1:0", handler=tick_app(), tls=tls, **options) as server:  # type: ignore[arg-type]
        yield server


def url_of(server: Server, scheme: str = "moql") -> str:
    return f"{scheme}://127.0.0.1:{server.address[1]}/"


async def read_clock(session: Session) -> bytes | None:
    """One frame of ``clock/seconds``, then close the session."""
    async with session:
        return await read_tick(session, WAIT)


def resumed(session: Session) -> bool:
    connection = session.connection
    if isinstance(connection, QuicTransport):
        return connection.resumed
    return bool(connection.host.resumed)  # type: ignore[attr-defined]


# -- a server's certificate and a client's trust, end to end
@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_certificate_files_verified_by_cafile(pki: Pki, scheme: str) -> None:
    async with no_leaks():
        async with serving(TLSConfig(certfile=pki.cert_file, keyfile=pki.key_file)) as server:
            async with Client(tls=TLSConfig(cafile=pki.ca_file)) as client:
                assert await read_clock(await client.dial(url_of(server, scheme))) == b"tick"


@pytest.mark.parametrize("form", ["pem-str", "pem-bytes", "der"])
async def test_certificate_objects_verified_by_cadata(pki: Pki, form: str) -> None:
    cadata: str | bytes = {"pem-str": _pem(pki.ca).decode(), "pem-bytes": _pem(pki.ca),
                           "der": pki.ca.public_bytes(serialization.Encoding.DER)}[form]
    async with no_leaks():
        async with serving(TLSConfig(certificate_chain=[pki.leaf], private_key=pki.key)) as server:
            session = await dial(url_of(server), tls=TLSConfig(cadata=cadata))
            assert await read_clock(session) == b"tick"


@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_ssl_contexts_on_both_sides(pki: Pki, scheme: str) -> None:
    """The client trusts our CA through an SSLContext; the server takes an SSLContext plus its files."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.cert_file, pki.key_file)
    client_context = ssl.create_default_context(cafile=str(pki.ca_file))
    async with no_leaks():
        async with serving(server_context, certfile=str(pki.cert_file), keyfile=str(pki.key_file)) as server:
            async with Client(tls=client_context) as client:
                assert await read_clock(await client.dial(url_of(server, scheme))) == b"tick"
            with pytest.raises(MoQError, match="could not connect"):  # the same kind of context without our CA
                await dial(url_of(server, scheme), tls=ssl.create_default_context(), setup_timeout=WAIT)


@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_wrong_ca_is_refused(pki: Pki, scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    store = ClientTicketStore()
    async with no_leaks():
        async with serving(TLSConfig(certfile=pki.cert_file, keyfile=pki.key_file)) as server:
            with caplog.at_level(logging.INFO), pytest.raises(MoQError, match="could not connect") as refused:
                await dial(url_of(server, scheme), tls=TLSConfig(cafile=pki.other_ca_file), tickets=store,
                           setup_timeout=WAIT)
            assert not server.sessions
            if scheme == "moql":  # the reason is in the error itself
                assert "unable to get local issuer certificate" in str(refused.value)
    assert len(store) == 0  # nothing kept from a server that failed the check
    assert "unable to get local issuer certificate" in caplog.text


@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_server_name(pki: Pki, scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    """The certificate names only ``server.test``: dialing 127.0.0.1 needs ``server_name``."""
    async with no_leaks():
        async with serving(TLSConfig(certificate_chain=[pki.named], private_key=pki.named_key)) as server:
            with caplog.at_level(logging.INFO), pytest.raises(MoQError, match="could not connect"):
                await dial(url_of(server, scheme), tls=TLSConfig(cafile=pki.ca_file), setup_timeout=WAIT)
            assert "doesn't match" in caplog.text
            tls = TLSConfig(cafile=pki.ca_file, server_name="server.test")
            assert await read_clock(await dial(url_of(server, scheme), tls=tls)) == b"tick"
            with pytest.raises(MoQError, match="could not connect"):  # the chain is still checked
                await dial(url_of(server, scheme), tls=TLSConfig(cafile=pki.other_ca_file, server_name="server.test"),
                           setup_timeout=WAIT)


async def test_keylog_files_hold_the_same_secrets(pki: Pki, tmp_path: Path) -> None:
    server_log, client_log = tmp_path / "server.keys", tmp_path / "client.keys"
    memory = io.StringIO()
    async with no_leaks():
        async with serving(TLSConfig(certfile=pki.cert_file, keyfile=pki.key_file, keylog_file=server_log)) as server:
            assert await read_clock(await dial(url_of(server), tls=TLSConfig(cafile=pki.ca_file,
                                                                              keylog_file=client_log))) == b"tick"
            assert await read_clock(await dial(url_of(server, "https"), tls=TLSConfig(cafile=pki.ca_file,
                                                                                       keylog_file=memory))) == b"tick"
    server_lines = server_log.read_text().splitlines()
    client_lines = client_log.read_text().splitlines() + memory.getvalue().splitlines()
    labels = {line.split()[0] for line in server_lines}
    assert labels == {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0",
                      "SERVER_TRAFFIC_SECRET_0"}
    assert len(server_lines) == 8 and sorted(server_lines) == sorted(client_lines)  # two connections, both sides
    assert all(len(line.split()) == 3 for line in server_lines)  # label, client random, secret


async def test_cipher_suites_are_applied(pki: Pki) -> None:
    chacha = [CipherSuite.CHACHA20_POLY1305_SHA256]
    async with no_leaks():
        async with serving(TLSConfig(certfile=pki.cert_file, keyfile=pki.key_file, cipher_suites=chacha)) as server:
            session = await dial(url_of(server), tls=TLSConfig(cafile=pki.ca_file, cipher_suites=chacha))
            assert isinstance(session.connection, QuicTransport)
            tls = session.connection.protocol._quic.tls  # type: ignore[attr-defined]
            assert tls.key_schedule.cipher_suite == CipherSuite.CHACHA20_POLY1305_SHA256
            assert await read_clock(session) == b"tick"
            with pytest.raises(MoQError, match="could not connect"):  # nothing in common with the server's
                await dial(url_of(server), setup_timeout=WAIT, tls=TLSConfig(
                    cafile=pki.ca_file, cipher_suites=[CipherSuite.AES_128_GCM_SHA256]))


async def test_ticket_offered_only_under_the_same_trust(pki: Pki, tmp_path: Path) -> None:
    store = ClientTicketStore()
    by_data = TLSConfig(cadata=_pem(pki.ca))
    by_more_data = TLSConfig(cadata=_pem(pki.ca) + pki.other_ca_file.read_bytes())  # trusts one more CA
    by_file = TLSConfig(cafile=pki.ca_file)
    async with no_leaks():
        async with serving(TLSConfig(certfile=pki.cert_file, keyfile=pki.key_file)) as server:
            history = []
            for tls in (by_data, by_data, by_more_data, by_more_data, by_file, by_file, by_data):
                session = await dial(url_of(server), tls=tls, tickets=store)
                history.append(resumed(session))
                await read_clock(session)  # the server's ticket arrives during the session
    # a ticket is only taken by a dial that trusts the same CAs the same way
    assert history == [False, True, False, True, False, True, False]


def test_trust_labels_tell_every_kind_of_check_apart(pki: Pki, tmp_path: Path) -> None:
    def label(tls: TLSConfig) -> str:
        return trust_label(*tls.apply_client(QuicConfiguration(is_client=True), "127.0.0.1"))

    other = _pem(x509.load_pem_x509_certificate(pki.other_ca_file.read_bytes()))
    configs = [TLSConfig(), TLSConfig(cafile=pki.ca_file), TLSConfig(cafile=pki.other_ca_file),
               TLSConfig(cadata=_pem(pki.ca)), TLSConfig(cadata=other), TLSConfig(capath=tmp_path),
               TLSConfig(cafile=pki.ca_file, capath=tmp_path), TLSConfig(cafile=pki.ca_file, server_name="server.test"),
               TLSConfig(server_name="server.test"),
               TLSConfig(insecure=True), TLSConfig(fingerprint="ab" * 32)]
    labels = [label(tls) for tls in configs]
    assert len(set(labels)) == len(labels), labels
    # the shortcuts keep the labels they always had
    assert labels[0] == "system" and labels[-2] == "insecure" and labels[-1] == "sha256:" + "ab" * 32
    assert labels[1] == trust_label(None, False, str(pki.ca_file)) == f"cafile:{pki.ca_file}"
    assert label(TLSConfig(verify=False)) == "insecure"
    assert label(TLSConfig(cadata=_pem(pki.ca))) == label(TLSConfig(cadata=pki.ca.public_bytes(serialization.Encoding.DER)))


# -- moq-rs checks our chain with its own TLS stack (rustls)
@pytest.mark.interop
@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_moqrs_verifies_a_server_configured_with_objects(pki: Pki, scheme: str) -> None:
    async with no_leaks(fds_too=False):
        async with serving(TLSConfig(certificate_chain=[pki.leaf, pki.ca], private_key=pki.key)) as server:
            async with moq.Client(url_of(server, scheme), tls_roots=[str(pki.ca_file)], reconnect=False,
                                  websocket_enabled=False) as peer:
                broadcast = await asyncio.wait_for(peer.announced_broadcast("clock"), WAIT)
                track = await broadcast.subscribe_track("seconds")
                group = await asyncio.wait_for(track.next_group(), WAIT)
                assert group is not None
                frame = await asyncio.wait_for(group.read_frame(), WAIT)
                assert frame is not None and bytes(frame.payload) == b"tick"
            with pytest.raises(moq.Error):  # and refuses it under a CA that did not sign it
                async with moq.Client(url_of(server, scheme), tls_roots=[str(pki.other_ca_file)], reconnect=False,
                                      websocket_enabled=False) as refused:
                    await asyncio.wait_for(refused.announced_broadcast("clock"), WAIT)


# -- errors, raised when the server starts or the client dials
async def test_server_without_certificate_fails_before_binding_or_startup(pki: Pki) -> None:
    app = tick_app()
    started: list[bool] = []

    async def startup() -> None:
        started.append(True)

    app.on_startup.append(startup)
    async with no_leaks():
        server = Server(addr="127.0.0.1:0", handler=app)
        with pytest.raises(TLSConfigError, match="a server needs a certificate"):
            await server.start()
        server = Server(addr="127.0.0.1:0", handler=app, tls=TLSConfig(certfile=pki.cert_file, keyfile=pki.ca_file))
        with pytest.raises(TLSConfigError, match="holds no private key"):
            await server.start()
        assert not started and not server.sessions and not server.closed
        with pytest.raises(MoQError, match="not started"):
            server.address  # noqa: B018


def test_server_credential_errors(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    p521, p521_key = make_leaf(pki.ca, pki.key, [x509.DNSName("localhost")], curve=ec.SECP521R1())
    cases: list[tuple[TLSConfig, str]] = [
        (TLSConfig(certfile=missing, keyfile=pki.key_file), "cannot read certfile"),
        (TLSConfig(certfile=pki.cert_file, keyfile=missing), "cannot read keyfile"),
        (TLSConfig(certfile=pki.key_file, keyfile=pki.key_file), "holds no PEM certificate"),
        (TLSConfig(certfile=pki.cert_file), "holds no private key: set keyfile"),
        (TLSConfig(certificate_chain=[pki.named], private_key=pki.key), "does not belong to the first certificate"),
        (TLSConfig(certfile=pki.cert_file, keyfile=pki.encrypted_key_file), "cannot load the private key"),
        (TLSConfig(certfile=pki.cert_file, keyfile=pki.encrypted_key_file, password="nope"), "wrong password"),
        (TLSConfig(certfile=pki.cert_file, keyfile=pki.key_file, certificate_chain=[pki.leaf]), "not both"),
        (TLSConfig(certificate_chain=[pki.leaf]), "needs its private_key"),
        (TLSConfig(keyfile=pki.key_file), "go with a certfile"),
        (TLSConfig(certificate_chain=[p521], private_key=p521_key), "P-256 or P-384"),
        (TLSConfig(certfile=pki.cert_file, keyfile=pki.key_file, cipher_suites=[]), "cipher_suites is empty"),
        (TLSConfig(certfile=pki.cert_file, keyfile=pki.key_file, keylog_file=tmp_path), "cannot write keylog_file"),
    ]
    for tls, message in cases:
        with pytest.raises(TLSConfigError, match=message):
            tls.load_server_credentials()
    good = TLSConfig(certfile=pki.cert_file, keyfile=pki.encrypted_key_file, password=pki.password)
    assert good.load_server_credentials().chain == [pki.leaf]
    combined = tmp_path / "combined.pem"  # certificate and key in one file, as aioquic also reads them
    combined.write_bytes(_pem(pki.leaf) + _key_pem(pki.key))
    assert TLSConfig(certfile=combined).load_server_credentials().chain == [pki.leaf]


def test_server_shortcuts_and_ssl_context(pki: Pki) -> None:
    same = server_tls(TLSConfig(certfile=str(pki.cert_file)), certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    assert same.keyfile == str(pki.key_file)
    assert server_tls(TLSConfig(certfile=pki.cert_file), certfile=str(pki.cert_file)).certfile == pki.cert_file
    with pytest.raises(TLSConfigError, match="certfile is given twice"):
        server_tls(TLSConfig(certfile=pki.cert_file), certfile=str(pki.ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    with pytest.raises(TLSConfigError, match=r"load_cert_chain.*certfile and keyfile"):
        server_tls(context)
    context.verify_mode = ssl.CERT_REQUIRED
    with pytest.raises(TLSConfigError, match="mutual TLS"):
        server_tls(context, certfile=pki.cert_file, keyfile=pki.key_file)


@pytest.mark.parametrize(("tls", "message"), [
    (TLSConfig(fingerprint="12:34"), "64 digits"),
    (TLSConfig(insecure=True, cadata="x"), "insecure=True accepts any certificate"),
    (TLSConfig(fingerprint="ab" * 32, cafile="ca.pem"), "cannot go with cafile"),
    (TLSConfig(verify=ssl.CERT_NONE, cafile="ca.pem"), "verify is off"),
    (TLSConfig(cafile="/nonexistent/ca.pem"), "cannot read cafile"),
    (TLSConfig(capath="/nonexistent"), "capath '/nonexistent' is not a directory"),
    (TLSConfig(cadata=b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), "cadata holds no"),
    (TLSConfig(cadata=b"\x30\x03\x02\x01\x00"), "cadata holds no"),
], ids=["fingerprint", "insecure+ca", "pin+ca", "verify-off+ca", "cafile", "capath",
        "cadata-pem", "cadata-der"])
@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_client_errors_come_before_connecting(tls: TLSConfig, message: str, scheme: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:  # nobody answers here: a dial would time out
        listener.bind(("127.0.0.1", 0))
        async with no_leaks():
            with pytest.raises(TLSConfigError, match=message):
                await asyncio.wait_for(dial(f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/", tls=tls), 2)


def test_client_shortcuts_keep_their_meaning(pki: Pki) -> None:
    pin = "AB:" * 31 + "AB"
    assert client_tls(None, fingerprint=pin, insecure=True, cafile="x").fingerprint == pin  # the pin wins, as before
    assert client_tls(None, insecure=True, cafile="x") == TLSConfig(insecure=True)
    assert client_tls(TLSConfig(keylog_file="k"), cafile="ca.pem") == TLSConfig(cafile="ca.pem", keylog_file="k")
    assert client_tls(TLSConfig(cafile="ca.pem"), cafile="ca.pem") == TLSConfig(cafile="ca.pem")
    with pytest.raises(TLSConfigError, match="cafile is given twice"):
        client_tls(TLSConfig(cafile="ca.pem"), cafile="other.pem")
    with pytest.raises(TLSConfigError, match="fingerprint is given twice"):
        client_tls(TLSConfig(fingerprint="ab" * 32), fingerprint="cd" * 32)


async def test_client_field_and_shortcut_disagree(pki: Pki) -> None:
    client = Client(fingerprint="ab" * 32, tls=TLSConfig(fingerprint="cd" * 32))
    with pytest.raises(TLSConfigError, match="fingerprint is given twice"):
        await client.dial("moql://127.0.0.1:1/")
    await client.close()


def test_from_ssl_context(pki: Pki, tmp_path: Path) -> None:
    default = ssl.create_default_context()
    config = TLSConfig.from_ssl_context(default)
    assert config.verify == ssl.CERT_REQUIRED and config.verifies
    assert isinstance(config.cadata, str)
    carried = {cert.public_bytes(serialization.Encoding.DER)
               for cert in x509.load_pem_x509_certificates(config.cadata.encode())}
    available = set(default.get_ca_certs(binary_form=True))
    assert carried and carried <= available  # less only the roots cryptography refuses or warns about

    ours = ssl.create_default_context(cafile=str(pki.ca_file))
    ours.keylog_filename = str(tmp_path / "keys")
    config = TLSConfig.from_ssl_context(ours)
    assert config.cadata == _pem(pki.ca).decode()
    assert config.keylog_file == str(tmp_path / "keys")
    ours.check_hostname = False  # the chain without the name: aioquic cannot
    with pytest.raises(TLSConfigError, match="server_name"):
        TLSConfig.from_ssl_context(ours)

    unchecked = ssl.create_default_context()
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    config = TLSConfig.from_ssl_context(unchecked)
    assert not config.verifies and config.cadata is None  # its CA certificates would check nothing

    old = ssl.create_default_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(TLSConfigError, match=r"QUIC needs TLS 1\.3"):
        TLSConfig.from_ssl_context(old)
    crl = ssl.create_default_context()
    crl.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    with pytest.raises(TLSConfigError, match="revocation"):
        TLSConfig.from_ssl_context(crl)


def test_apply_writes_aioquic_configuration(pki: Pki) -> None:
    client = QuicConfiguration(is_client=True)
    TLSConfig(cafile=pki.ca_file, server_name="server.test").apply(client, host="127.0.0.1")
    assert (client.verify_mode, client.server_name, client.cafile) == (ssl.CERT_REQUIRED, "server.test",
                                                                       str(pki.ca_file))
    pinned = QuicConfiguration(is_client=True)
    TLSConfig(fingerprint="ab" * 32).apply(pinned, host="localhost")
    assert (pinned.verify_mode, pinned.server_name) == (ssl.CERT_NONE, "localhost")
    with pytest.raises(TLSConfigError, match="needs the host"):
        TLSConfig().apply(QuicConfiguration(is_client=True))
    server = QuicConfiguration(is_client=False)
    TLSConfig(certificate_chain=[pki.leaf, pki.ca], private_key=pki.key).apply(server)
    assert server.certificate == pki.leaf and server.certificate_chain == [pki.ca] and server.private_key is pki.key


async def test_large_chain_from_objects_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert_file, key_file = write_rsa_chain(tmp_path)
    chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    with caplog.at_level(logging.WARNING, logger="moqt_asgi.endpoints"):
        async with serving(TLSConfig(certificate_chain=chain, private_key=key)):  # type: ignore[arg-type]
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"certificate_chain is {certificate_chain_size(cert_file)} bytes" in warnings[0]


def test_client_certificate_fields_are_left_to_servers(certs: Certs) -> None:
    """One TLSConfig may serve both sides: a client does not send (or load) the server's certificate."""
    shared = TLSConfig(certfile=certs.cert, keyfile=certs.key, fingerprint=certs.fingerprint)
    client = QuicConfiguration(is_client=True)
    verification = shared.apply_client(client, "127.0.0.1")
    assert client.certificate is None and verification.fingerprint == certs.fingerprint

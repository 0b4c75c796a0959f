"""TLS settings for servers and clients: :class:`TLSConfig`, Go's ``tls.Config`` in Python form.

aioquic runs its own TLS 1.3 and does not use Python's :mod:`ssl`. A
:class:`TLSConfig` says what a server presents (a certificate chain and its
key, from files or from ``cryptography`` objects) and how a client checks
the server (CA certificates, a pinned SHA-256 fingerprint, or not at all).
:meth:`TLSConfig.apply` writes it into aioquic's ``QuicConfiguration``.
:meth:`TLSConfig.from_ssl_context` carries over what an
:class:`ssl.SSLContext` lets us read back, and says so when something cannot
be carried.

Files are read and checked when a server starts or a client dials. A missing
file, a wrong password, a key that does not belong to the certificate or a
CA file without certificates fails there, with a message naming the
setting, not during the first handshake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO, cast

from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import CipherSuite
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, CertificatePublicKeyTypes

from ..protocol.errors import MoQError

PathLike = str | os.PathLike[str]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
"""The key types aioquic can sign a TLS 1.3 handshake with (EC keys on P-256 or P-384 only)."""

SIGNING_CURVES = (ec.SECP256R1, ec.SECP384R1)

_CRL_FLAGS = ssl.VerifyFlags.VERIFY_CRL_CHECK_LEAF | ssl.VerifyFlags.VERIFY_CRL_CHECK_CHAIN


class TLSConfigError(MoQError, ValueError):
    """A TLS setting that cannot work: a missing or unreadable file, a bad combination, a wrong key."""


class ServerCredentials(NamedTuple):
    """What a server presents: its certificate chain (leaf first) and the leaf's private key."""

    chain: list[x509.Certificate]
    private_key: PrivateKey
    source: str
    """Where the chain came from, for messages: the certfile, or ``"certificate_chain"``."""

    @property
    def size(self) -> int:
        """Total DER size of the chain: about what the server's Certificate message carries."""
        return sum(len(cert.public_bytes(serialization.Encoding.DER)) for cert in self.chain)


class ClientVerification(NamedTuple):
    """How a client checks the server once :meth:`TLSConfig.apply` has configured aioquic.

    ``fingerprint`` is the pin to compare once connected (aioquic checks
    nothing itself then); ``insecure`` and ``ca`` complete the label under
    which session tickets are filed (see :func:`moqt_asgi.endpoints.trust_label`).
    """

    fingerprint: str | None
    insecure: bool
    ca: str | None


class KeyLog:
    """aioquic's ``secrets_log_file`` that appends each line to ``path`` (NSS key log format).

    The file is opened only while a line is written, so nothing stays open
    between handshakes and several servers or dials may share one file.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def write(self, text: str) -> int:
        with self.path.open("a", encoding="ascii") as out:
            return out.write(text)

    def flush(self) -> None:
        """Nothing to do: every line is written and closed at once."""


@dataclass
class TLSConfig:
    """TLS for a :class:`~moqt_asgi.server.Server` or :class:`~moqt_asgi.client.Client` (and the dial functions).

    One object may serve both sides: a server uses the certificate fields,
    ``keylog_file`` and ``cipher_suites``; a client uses the verification
    fields, ``keylog_file`` and ``cipher_suites``. Client certificates are not
    sent and servers do not ask for them (aioquic has no mutual TLS).
    """

    # -- what a server presents
    certfile: PathLike | None = None
    """PEM file with the certificate chain, leaf first (it may also hold the key)."""
    keyfile: PathLike | None = None
    """PEM file with the private key (default: the key inside ``certfile``)."""
    password: str | bytes | None = None
    """Password of an encrypted private key."""
    certificate_chain: Sequence[x509.Certificate] = ()
    """The chain as ``cryptography`` objects, leaf first (instead of ``certfile``)."""
    private_key: CertificateIssuerPrivateKeyTypes | None = None
    """The leaf's key as a ``cryptography`` object (with ``certificate_chain``)."""

    # -- how a client checks the server
    cafile: PathLike | None = None
    """PEM file of CA certificates to trust instead of the default roots (certifi's)."""
    capath: PathLike | None = None
    """Directory of hashed CA certificates (``c_rehash`` layout)."""
    cadata: str | bytes | None = None
    """CA certificates in memory: PEM text or bytes, or one DER certificate."""
    verify: bool | ssl.VerifyMode = True
    """Check the server's certificate chain: ``True``/``CERT_REQUIRED``/``CERT_OPTIONAL`` (the same in
    QUIC: a server always sends a certificate) or ``False``/``CERT_NONE`` (like ``insecure``)."""
    server_name: str | None = None
    """The name to check the certificate against and send as SNI, instead of the URL's host. aioquic
    always checks the name when it checks the chain (there is no ``check_hostname=False``): for a
    certificate that names another host, give that name here."""
    fingerprint: str | None = None
    """Accept exactly the certificate with this SHA-256 fingerprint (hex, colons allowed), no CA check."""
    insecure: bool = False
    """Accept any certificate. For tests only."""

    # -- both sides
    keylog_file: PathLike | TextIO | None = None
    """Where to write the TLS secrets (NSS key log format, as ``SSLKEYLOGFILE``) so Wireshark can
    decrypt captures: a path (appended to) or an open text file."""
    cipher_suites: Sequence[CipherSuite] | None = None
    """TLS 1.3 cipher suites, in order of preference (default: aioquic's)."""

    # -- construction
    @classmethod
    def from_ssl_context(cls, context: ssl.SSLContext) -> TLSConfig:
        """What can be carried over from ``context``; :class:`TLSConfigError` for what must not be lost.

        Carried: ``verify_mode``, the CA certificates loaded into it
        (``cafile``, ``cadata`` and, where OpenSSL reads them at once, the
        default verify paths) and ``keylog_filename``. ``check_hostname=False``
        with verification on cannot be carried: aioquic checks the name
        whenever it checks the chain (use ``server_name``). A certificate and
        key loaded with ``load_cert_chain`` cannot be read back: a server needs
        them as ``certfile``/``keyfile`` besides. CA certificates in a
        ``capath`` are read lazily and cannot be read back either: a context
        that holds none verifies against the default roots, or pass ``capath``
        to a :class:`TLSConfig`. ALPN, cipher and SNI settings are not carried
        (QUIC fixes the version to TLS 1.3 and the ALPNs are the MoQ versions').
        """
        maximum = context.maximum_version
        if maximum != ssl.TLSVersion.MAXIMUM_SUPPORTED and maximum < ssl.TLSVersion.TLSv1_3:
            raise TLSConfigError(f"the SSLContext allows at most {maximum.name}: QUIC needs TLS 1.3")
        if context.protocol == ssl.PROTOCOL_TLS_SERVER and context.verify_mode != ssl.CERT_NONE:
            raise TLSConfigError("the SSLContext asks clients for certificates (mutual TLS), which the QUIC server "
                                 "cannot do: aioquic servers do not request client certificates")
        if context.verify_mode != ssl.CERT_NONE and not context.check_hostname:
            raise TLSConfigError("the SSLContext checks the certificate chain but not the host name, which aioquic "
                                 "cannot do: it checks the name whenever it checks the chain; keep check_hostname "
                                 "and use TLSConfig(server_name=...) for a certificate that names another host")
        if context.verify_flags & _CRL_FLAGS:
            raise TLSConfigError("the SSLContext checks certificate revocation lists, which aioquic cannot: "
                                 "drop VERIFY_CRL_CHECK_LEAF/VERIFY_CRL_CHECK_CHAIN")
        cadata = ""
        if context.verify_mode != ssl.CERT_NONE:  # else its CA certificates (if any) check nothing
            cadata = "".join(_pem_or_none(der) for der in context.get_ca_certs(binary_form=True))
        return cls(cadata=cadata or None, verify=context.verify_mode, keylog_file=context.keylog_filename)

    # -- client side
    @property
    def verifies(self) -> bool:
        """The certificate chain is checked against CAs (not pinned, not skipped)."""
        return not self.insecure and self.verify not in (False, ssl.CERT_NONE) and not self.fingerprint

    def _check_client(self) -> str | None:
        """Raise for a combination that cannot work; the normalised fingerprint."""
        pin = None
        if self.fingerprint:
            pin = self.fingerprint.lower().replace(":", "")
            if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
                raise TLSConfigError(f"fingerprint must be a SHA-256 digest in hex (64 digits), got {self.fingerprint!r}")
        authorities = [name for name in ("cafile", "capath", "cadata") if getattr(self, name)]
        if self.insecure and (pin or authorities):
            raise TLSConfigError(f"insecure=True accepts any certificate: it cannot go with "
                                 f"{', '.join(['fingerprint'] if pin else authorities)}")
        if pin and authorities:
            raise TLSConfigError(f"a fingerprint pins the certificate without a CA check: it cannot go with "
                                 f"{', '.join(authorities)}")
        if authorities and not self.verifies:
            raise TLSConfigError(f"verify is off, so {', '.join(authorities)} would not be used")
        if self.cafile is not None:
            _read_certificates(self.cafile, "cafile")
        if self.capath is not None and not Path(self.capath).is_dir():
            raise TLSConfigError(f"capath {os.fspath(self.capath)!r} is not a directory")
        self._check_common()
        return pin

    def _cadata_pem(self) -> bytes | None:
        if self.cadata is None:
            return None
        data = self.cadata.encode("ascii") if isinstance(self.cadata, str) else bytes(self.cadata)
        try:
            if b"-----BEGIN" not in data:
                return x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.PEM)
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise TLSConfigError(f"cadata holds no certificate that can be read: {exc}") from None
        return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)

    def ca_label(self) -> str | None:
        """How the chain is checked against CAs, for ticket labels; ``None`` for the default roots and name.

        A lone ``cafile`` gives its path, so labels stay those of the
        ``cafile=`` shortcut; anything else gives a ``ca:`` description.
        """
        return self._ca_label(self._cadata_pem())

    def _ca_label(self, cadata: bytes | None) -> str | None:
        parts = []
        if self.capath is not None:
            parts.append(f"capath={os.fspath(self.capath)}")
        if cadata is not None:
            parts.append(f"cadata=sha256:{hashlib.sha256(cadata).hexdigest()}")
        if self.server_name:
            parts.append(f"name={self.server_name}")
        if not parts:
            return os.fspath(self.cafile) if self.cafile is not None else None
        cafile = f"cafile={os.fspath(self.cafile)}" if self.cafile is not None else "default-roots"
        return "ca:" + ";".join([cafile, *parts])

    def apply_client(self, configuration: QuicConfiguration, host: str) -> ClientVerification:
        """Configure a client ``configuration`` to dial ``host``; what is left to check once connected."""
        pin = self._check_client()
        cadata = self._cadata_pem()
        configuration.server_name = self.server_name or host  # SNI, and the name checked when verifying
        configuration.verify_mode = ssl.CERT_REQUIRED if self.verifies else ssl.CERT_NONE
        if self.verifies and (self.cafile is not None or self.capath is not None or cadata is not None):
            configuration.load_verify_locations(os.fspath(self.cafile) if self.cafile is not None else None,
                                                os.fspath(self.capath) if self.capath is not None else None, cadata)
        self._apply_common(configuration)
        if pin:
            return ClientVerification(pin, False, None)
        if not self.verifies:
            return ClientVerification(None, True, None)
        return ClientVerification(None, False, self._ca_label(cadata))

    # -- server side
    def load_server_credentials(self) -> ServerCredentials:
        """Read and check what a server presents; :class:`TLSConfigError` if it cannot work."""
        if self.certfile is not None and self.certificate_chain:
            raise TLSConfigError("give the certificate once: certfile or certificate_chain, not both")
        if self.certfile is None and (self.keyfile is not None or self.password is not None):
            raise TLSConfigError("keyfile and password go with a certfile")
        if self.certfile is not None and self.private_key is not None:
            raise TLSConfigError("private_key goes with certificate_chain; with a certfile use keyfile")
        if self.certfile is not None:
            chain = _read_certificates(self.certfile, "certfile")
            key = self._read_key()
            source = os.fspath(self.certfile)
        elif self.certificate_chain:
            chain = list(self.certificate_chain)
            if any(not isinstance(cert, x509.Certificate) for cert in chain):
                raise TLSConfigError("certificate_chain must hold cryptography x509.Certificate objects, leaf first")
            if self.private_key is None:
                raise TLSConfigError("certificate_chain needs its private_key")
            key = self.private_key
            source = "certificate_chain"
        else:
            raise TLSConfigError("a server needs a certificate: set certfile and keyfile "
                                 "(or certificate_chain and private_key)")
        signing_key = _signing_key(key, source)
        if _public_der(chain[0].public_key()) != _public_der(signing_key.public_key()):
            raise TLSConfigError(f"the private key does not belong to the first certificate in {source}")
        self._check_common()
        return ServerCredentials(chain, signing_key, source)

    def _read_key(self) -> CertificateIssuerPrivateKeyTypes:
        assert self.certfile is not None
        name, path = ("keyfile", self.keyfile) if self.keyfile is not None else ("certfile", self.certfile)
        data = _read(path, name)
        if b"PRIVATE KEY-----" not in data:
            raise TLSConfigError(f"{name} {os.fspath(path)!r} holds no private key"
                                 + ("" if self.keyfile is not None else ": set keyfile"))
        password = self.password.encode() if isinstance(self.password, str) else self.password
        try:
            key = serialization.load_pem_private_key(data, password)
        except TypeError as exc:  # encrypted without a password, or a password for a plain key
            raise TLSConfigError(f"cannot load the private key in {name} {os.fspath(path)!r}: {exc}") from None
        except ValueError as exc:
            raise TLSConfigError(f"cannot load the private key in {name} {os.fspath(path)!r} "
                                 f"(wrong password?): {exc}") from None
        return cast(CertificateIssuerPrivateKeyTypes, key)

    def apply_server(self, configuration: QuicConfiguration) -> ServerCredentials:
        """Configure a server ``configuration``: its certificate chain and key, key log and cipher suites."""
        credentials = self.load_server_credentials()
        configuration.certificate = credentials.chain[0]
        configuration.certificate_chain = credentials.chain[1:]
        configuration.private_key = credentials.private_key
        self._apply_common(configuration)
        return credentials

    # -- both
    def apply(self, configuration: QuicConfiguration, *, host: str | None = None) -> None:
        """Apply this configuration to aioquic's ``configuration`` (a client's needs the ``host`` it dials).

        A client's ``fingerprint`` is not something aioquic checks: the dial
        functions compare it once connected (with ``apply`` alone, nothing does).
        """
        if configuration.is_client:
            if host is None:
                raise TLSConfigError("a client configuration needs the host it dials")
            self.apply_client(configuration, host)
        else:
            self.apply_server(configuration)

    def _check_common(self) -> None:
        if self.cipher_suites is not None:
            if not self.cipher_suites:
                raise TLSConfigError("cipher_suites is empty")
            unknown = [s for s in self.cipher_suites
                       if s not in CipherSuite or s == CipherSuite.EMPTY_RENEGOTIATION_INFO_SCSV]
            if unknown:
                raise TLSConfigError(f"not TLS 1.3 cipher suites: {unknown}")
        if isinstance(self.keylog_file, str | os.PathLike):
            try:
                Path(self.keylog_file).open("a").close()
            except OSError as exc:
                raise TLSConfigError(f"cannot write keylog_file {os.fspath(self.keylog_file)!r}: {exc}") from None

    def _apply_common(self, configuration: QuicConfiguration) -> None:
        if self.cipher_suites is not None:
            configuration.cipher_suites = [CipherSuite(suite) for suite in self.cipher_suites]
        if isinstance(self.keylog_file, str | os.PathLike):
            configuration.secrets_log_file = cast(TextIO, KeyLog(self.keylog_file))
        elif self.keylog_file is not None:
            configuration.secrets_log_file = self.keylog_file


def _pem_or_none(der: bytes) -> str:
    """``der`` as PEM, or nothing if ``cryptography`` (which aioquic verifies with) refuses it or warns.

    System stores hold a few old roots that break RFC 5280 (a negative serial number, say):
    ``cryptography`` warns about them today and will refuse them, so they are left out.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode("ascii")
        except (ValueError, Warning):
            return ""


def _read(path: PathLike, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {name} {os.fspath(path)!r}: {exc.strerror or exc}") from None


def _read_certificates(path: PathLike, name: str) -> list[x509.Certificate]:
    data = _read(path, name)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{name} {os.fspath(path)!r} holds no PEM certificate") from None


def _signing_key(key: object, source: str) -> PrivateKey:
    if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, SIGNING_CURVES):
        raise TLSConfigError(f"the key for {source} is on curve {key.curve.name}: aioquic signs with "
                             "P-256 or P-384 only")
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
                  | ed448.Ed448PrivateKey):
        return key
    raise TLSConfigError(f"the key for {source} is a {type(key).__name__}: aioquic signs with RSA, "
                         "ECDSA (P-256, P-384), Ed25519 or Ed448 keys")


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def server_tls(tls: TLSConfig | ssl.SSLContext | None, *, certfile: PathLike | None = None,
               keyfile: PathLike | None = None) -> TLSConfig:
    """One server :class:`TLSConfig` from ``tls`` and the ``certfile``/``keyfile`` shortcuts.

    A shortcut fills the field ``tls`` leaves unset; the same value twice is
    fine; two different values are a :class:`TLSConfigError`. An
    :class:`ssl.SSLContext` gives no certificate back, so it needs the shortcuts.
    """
    if isinstance(tls, ssl.SSLContext):
        if certfile is None:
            raise TLSConfigError("an ssl.SSLContext does not give back the certificate and key loaded into it "
                                 "(load_cert_chain): pass certfile and keyfile as well, or use a TLSConfig")
        tls = TLSConfig.from_ssl_context(tls)
    config = tls if tls is not None else TLSConfig()
    return _merged(config, certfile=certfile, keyfile=keyfile)


def client_tls(tls: TLSConfig | ssl.SSLContext | None, *, fingerprint: str | None = None, insecure: bool = False,
               cafile: PathLike | None = None) -> TLSConfig:
    """One client :class:`TLSConfig` from ``tls`` and the ``fingerprint``/``insecure``/``cafile`` shortcuts.

    The shortcuts keep their meaning: a ``fingerprint`` wins over
    ``insecure``, which wins over ``cafile``. What remains fills the field
    ``tls`` leaves unset; a field set to another value is a :class:`TLSConfigError`.
    """
    config = TLSConfig.from_ssl_context(tls) if isinstance(tls, ssl.SSLContext) else tls or TLSConfig()
    if fingerprint:
        return _merged(config, fingerprint=fingerprint)
    if insecure:
        return _merged(config, insecure=True)
    return _merged(config, cafile=cafile)


def _merged(config: TLSConfig, **shortcuts: object) -> TLSConfig:
    changes = {}
    for name, value in shortcuts.items():
        if value is None:
            continue
        current = getattr(config, name)
        if current in (None, False):
            changes[name] = value
        elif (os.fspath(current) if isinstance(current, os.PathLike) else current) != \
                (os.fspath(value) if isinstance(value, os.PathLike) else value):
            raise TLSConfigError(f"{name} is given twice, differently: {value!r} and tls.{name}={current!r}")
    return dataclasses.replace(config, **changes) if changes else config  # type: ignore[arg-type]


__all__ = ["ClientVerification", "KeyLog", "ServerCredentials", "TLSConfig", "TLSConfigError", "client_tls",
           "server_tls"]

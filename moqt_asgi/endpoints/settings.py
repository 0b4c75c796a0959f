"""The URL, certificate-pin and ticket helpers the endpoints share (QUIC settings: :mod:`moqt_asgi.transport.settings`)."""

from __future__ import annotations

import hashlib
import logging
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives import serialization

from ..protocol.errors import MoQError
from ..transport.aioquic_connection import peer_certificate
from ..transport.settings import MIN_STREAM_WINDOW, QuicSettings
from .tickets import ClientTicketStore, TicketSlot

logger = logging.getLogger("moqt_asgi.endpoints")

NATIVE_SCHEMES = ("moql", "moqt")


def redacted_url(url: str) -> str:
    """``url`` without its query and fragment, for errors and logs: a ``?jwt=`` token stays out of them."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def parse_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path_and_query)``; the port is required."""
    parts = urlsplit(url)
    if parts.scheme not in (*NATIVE_SCHEMES, "https"):
        raise MoQError(f"unsupported URL scheme {parts.scheme!r}: use moql://, moqt:// or https://")
    if not parts.hostname:
        raise MoQError(f"URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise MoQError(f"URL {url!r} has an invalid port: {exc}") from None
    if port is None:
        raise MoQError(f"URL {url!r} has no port (MoQ has no default port): add ':PORT'")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target


class HasQuic(Protocol):
    """A connection protocol of ours: it exposes its aioquic connection as ``quic``."""

    @property
    def quic(self) -> QuicConnection: ...


def check_fingerprint(protocol: HasQuic, expected: str) -> None:
    """Raise :class:`MoQError` unless the server's certificate has the SHA-256 fingerprint ``expected``."""
    quic = protocol.quic
    if quic.tls.session_resumed:
        return  # no certificate: the ticket was only offered under this same pinned fingerprint
    cert = peer_certificate(quic)
    if cert is None:
        raise MoQError("server sent no certificate")
    actual = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if actual != expected.lower().replace(":", ""):
        raise MoQError(f"server certificate fingerprint {actual} does not match the pinned {expected}")



def trust_label(fingerprint: str | None, insecure: bool, ca: str | None) -> str:
    """How a dial verifies the server, as :class:`ClientTicketStore` files its tickets.

    ``ca`` describes the CA check: a CA file's path, or what
    :meth:`TLSConfig.ca_label() <moqt_asgi.endpoints.tls.TLSConfig.ca_label>` says
    (``ca:...``: the CA files, directory and data, and a changed server name
    or hostname check). ``None``: the default roots.
    """
    if fingerprint:
        return "sha256:" + fingerprint.lower().replace(":", "")
    if insecure:
        return "insecure"
    if not ca:
        return "system"
    return ca if ca.startswith("ca:") else f"cafile:{ca}"


def use_tickets(configuration: QuicConfiguration, tickets: ClientTicketStore | None, host: str, port: int, *,
                early_data: bool, trust: str) -> TicketSlot | None:
    """Offer ``tickets``' ticket for ``host:port`` on ``configuration``; the handler that keeps the next one.

    Call :meth:`TicketSlot.verified` once the server's certificate has passed the checks.
    """
    if tickets is None:
        return None
    taken = tickets.take_with_alpn(host, port, trust=trust, early_data=early_data)
    slot = tickets.slot(host, port, trust)
    if taken is not None:
        configuration.session_ticket, alpn = taken
        if taken[0].max_early_data_size is not None and alpn in (configuration.alpn_protocols or ()):
            slot.early_alpn = alpn
    return slot


def resumption_note(resumed: bool, early_data_accepted: bool) -> str:
    """`` (resumed, 0-RTT accepted)``, `` (resumed)`` or nothing, for log lines."""
    if not resumed:
        return ""
    return " (resumed, 0-RTT accepted)" if early_data_accepted else " (resumed)"


__all__ = ["MIN_STREAM_WINDOW", "NATIVE_SCHEMES", "QuicSettings", "check_fingerprint", "parse_url", "resumption_note",
           "trust_label", "use_tickets"]

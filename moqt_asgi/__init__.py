"""moqt-asgi: Media over QUIC (moq-lite) for Python, native QUIC and ASGI.

The top level teaches one application object (:class:`MoQ`), one server
(:class:`Server`) and one client (:func:`dial`, or :class:`Client`), and the
objects they hand you. Everything else lives in its module: the lower-level
:class:`~moqt_asgi.endpoints.quic_server.QuicServer` and dialers
(:mod:`moqt_asgi.endpoints`), gomoqt-style helpers (:mod:`moqt_asgi.server`),
the relay (:mod:`moqt_asgi.relay`), tokens (:mod:`moqt_asgi.auth`), testing
helpers (:mod:`moqt_asgi.testing`).

Importing the package has one side effect: stock Hypercorn learns
WebTransport (:func:`moqt_asgi.webtransport.install`), so ``hypercorn app:moq``
serves MoQ apps unmodified.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from .app import MoQ
from .auth.tokens import Authenticator, AuthError, Grant
from .client import Client, dial
from .endpoints.tickets import ClientTicketStore, SessionTicketStore
from .endpoints.tls import TLSConfig, TLSConfigError
from .engine.announce import AnnouncementReader
from .engine.mux import Announcement, TrackHandler, TrackMux
from .engine.session import Session
from .engine.track import GroupReader, GroupWriter, TrackReader, TrackWriter
from .producer import Broadcast, GroupProducer, TrackConsumer, TrackProducer
from .protocol.errors import (
    ErrorCode,
    MoQError,
    ProtocolError,
    SessionClosed,
    SetupRejected,
    StreamError,
    SubscribeError,
)
from .protocol.limits import Limits
from .protocol.versions import Version
from .request import SetupRequest
from .routing import Route
from .server import Server, ServerClosed
from .transport.settings import QuicSettings
from .webtransport import install as _install_webtransport

_install_webtransport()  # Hypercorn serves WebTransport once the app module has imported moqt_asgi

try:
    __version__ = _distribution_version("moqt-asgi")  # one source: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Announcement",
    "AnnouncementReader",
    "AuthError",
    "Authenticator",
    "Broadcast",
    "Client",
    "ClientTicketStore",
    "ErrorCode",
    "Grant",
    "GroupProducer",
    "GroupReader",
    "GroupWriter",
    "Limits",
    "MoQ",
    "MoQError",
    "ProtocolError",
    "QuicSettings",
    "Route",
    "Server",
    "ServerClosed",
    "Session",
    "SessionClosed",
    "SessionTicketStore",
    "SetupRejected",
    "SetupRequest",
    "StreamError",
    "SubscribeError",
    "TLSConfig",
    "TLSConfigError",
    "TrackConsumer",
    "TrackHandler",
    "TrackMux",
    "TrackProducer",
    "TrackReader",
    "TrackWriter",
    "Version",
    "__version__",
    "dial",
]

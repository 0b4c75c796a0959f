"""moqt-asgi: Media over QUIC (moq-lite) for Python, native QUIC and ASGI."""

from .app import MoQ, accept_all
from .auth.tokens import Authenticator, AuthError, Grant
from .client import Client, dial
from .endpoints.dial_quic import dial_quic
from .endpoints.dial_webtransport import dial_webtransport
from .endpoints.quic_server import QuicServer
from .endpoints.tickets import ClientTicketStore, SessionTicketStore
from .endpoints.tls import TLSConfig, TLSConfigError
from .engine.announce import AnnouncementReader
from .engine.mux import Announcement, TrackHandler, TrackMux
from .engine.session import Session
from .engine.track import GroupReader, GroupWriter, TrackReader, TrackWriter
from .producer import Broadcast, GroupProducer, TrackConsumer, TrackProducer, serve_producer
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
from .request import SetupRequest
from .routing import Route
from .server import Server, ServerClosed, default_router, handle, handle_func, new_router
from .transport.settings import QuicSettings
from .webtransport import WebTransportSession
from .webtransport import install as install_webtransport

install_webtransport()  # Hypercorn serves WebTransport once the app module has imported moqt_asgi

__version__ = "0.1.0"

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
    "QuicServer",
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
    "WebTransportSession",
    "accept_all",
    "default_router",
    "dial",
    "dial_quic",
    "dial_webtransport",
    "handle",
    "handle_func",
    "install_webtransport",
    "new_router",
    "serve_producer",
    "__version__",
]

"""moqt-asgi: Media over QUIC (moq-lite) for Python, native QUIC and ASGI."""

from .announce import AnnouncementReader
from .app import MoQ, accept_all
from .auth import Authenticator, AuthError, Grant
from .client import Client, dial
from .mux import Announcement, TrackHandler, TrackMux
from .native import QuicServer, QuicSettings, dial_quic
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
from .session import Session
from .tickets import ClientTicketStore, SessionTicketStore
from .tls import TLSConfig, TLSConfigError
from .track import GroupReader, GroupWriter, TrackReader, TrackWriter
from .webtransport import WebTransportSession, dial_webtransport
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

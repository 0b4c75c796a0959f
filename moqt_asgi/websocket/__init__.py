"""MoQ over WebSocket: what browsers without WebTransport (Safari, older Firefox) and ``ws://`` clients use.

The framing is QMux (``qmux-00``/``-01``/``-02``) or the legacy ``webtransport``
framing, chosen by the negotiated subprotocol (``qmux-01.moq-lite-05``...):

* :mod:`.qmux`: the sans-IO codec of both framings;
* :mod:`.session`: :class:`WebSocketConnection`, the engine's
  :class:`~moqt_asgi.transport.base.Connection` over a message pipe (:mod:`.pipe`),
  with its streams (:mod:`.streams`) and settings (:mod:`.settings`);
* :mod:`.asgi`: the ASGI ``websocket`` scope of the :class:`~moqt_asgi.MoQ` app;
* :mod:`.client`: ``ws://`` and ``wss://`` dialling with wsproto.
"""

from .asgi import client_subprotocols, serve_websocket, server_subprotocols
from .client import dial_websocket, start_websocket_session
from .pipe import MemoryPipe, MessagePipe, memory_pipe_pair
from .qmux import Framing, QMuxError, parse_subprotocol
from .session import WebSocketConnection
from .settings import WebSocketSettings

__all__ = [
    "Framing", "MemoryPipe", "MessagePipe", "QMuxError", "WebSocketConnection", "WebSocketSettings",
    "client_subprotocols", "dial_websocket", "memory_pipe_pair", "parse_subprotocol", "serve_websocket",
    "server_subprotocols", "start_websocket_session",
]

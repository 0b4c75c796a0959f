"""HTTP/3 on :class:`~moqt_asgi.endpoints.QuicServer`'s port, without Hypercorn.

``QuicServer`` offers the ALPNs ``moql`` and ``h3`` on one UDP socket. A
connection that negotiates ``h3`` gets an :class:`H3ServerConnection`, which
speaks HTTP/3 with WebTransport (the same :class:`WebTransportH3Connection`
the Hypercorn integration uses) and serves

* ``CONNECT :protocol=webtransport`` as a :class:`WebTransportSession` run
  through the ASGI ``webtransport`` scope (:func:`build_scope`,
  :class:`WebTransportASGI`), exactly as under Hypercorn: the app gets the
  same scope, including the ``moqt.connection`` extension;
* any other request (not CONNECT) through the app's ASGI ``http`` scope
  (:class:`HTTPExchange`: the request body is delivered as it arrives, the
  response is streamed; no trailers, no server push);
* a CONNECT for another protocol with ``501``.

Limits: at most ``max_sessions`` WebTransport sessions at once (a CONNECT
beyond is answered ``429``); a request stream whose HEADERS frame is not
complete ``header_timeout`` seconds after its first byte is stopped and reset
(``H3_REQUEST_INCOMPLETE``), so slowly dribbled headers cannot hold streams;
frame sizes are bounded by :class:`WebTransportH3Connection`. A request that
arrived in 0-RTT early data (before the handshake completed) is answered
``425`` (Too Early, RFC 8470) unless its method is safe (GET, HEAD,
OPTIONS); safe ones reach the application with an ``early-data: 1`` header.
Request bodies are held against the QUIC receive credit until the
application takes them, so a slow ``http`` app slows its client down.

WebTransport events (stream data, datagrams, capsules, resets, the
connection's end) are routed by the connection's
:class:`~moqt_asgi.webtransport.router.WebTransportRouter`, as under
Hypercorn and in the client; this module handles what is left: HEADERS
(sessions, plain requests, refusals) and request bodies.

Everything aioquic calls (:meth:`H3ServerConnection.quic_event_received`)
runs inside the QUIC event path: it never awaits and never raises. Each
session and each request runs the application in its own task, started with
the ``spawn`` callable the server passes in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import ErrorCode as H3ErrorCode
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StopSendingReceived, StreamReset

from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..transport.aioquic_connection import (
    CreditedQuicConnection,
    handshake_complete,
    peer_address,
    protocol_quic,
    send_backlog,
    set_stream_limits,
)
from ..transport.transmit import TransmitSoon
from .asgi import ASGIApp, Message, build_scope
from .capsules import H3_INTERNAL_ERROR, H3_NO_ERROR
from .early import EarlyStreams
from .h3 import HeaderDeadline, WebTransportH3Connection
from .router import MAX_EARLY_BYTES, MAX_EARLY_STREAMS, RouterHost, WebTransportRouter, method_and_protocol
from .session import WebTransportSession

logger = logging.getLogger("moqt_asgi.webtransport")

MAX_STREAMS = 1000
"""Concurrent peer streams of each kind (aioquic's fixed default is 128; Chromium fails fast at the limit)."""
MAX_REQUEST_BUFFER = 1024 * 1024
"""Unread request-body bytes held for an ``http`` app; beyond that the request is cancelled."""
RESPONSE_HIGH_WATER = 1024 * 1024
"""``http.response.body`` waits while more than this is queued on the stream."""
MAX_SESSIONS = 16
"""WebTransport sessions at once on one connection (the default of ``max_sessions``)."""
HEADER_TIMEOUT = 10.0
"""Seconds a request stream has to deliver its complete HEADERS frame (the default of ``header_timeout``)."""
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
"""Methods served when they arrive in 0-RTT early data (RFC 8470); the others get 425."""
HTTP_SPEC_VERSION = "2.1"
# Connection-specific header fields are forbidden in HTTP/3 (aioquic clients close the connection).
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class H3ServerConnection(RouterHost):
    """HTTP/3 with WebTransport on one QUIC connection of the native server (see the module docstring)."""

    def __init__(self, protocol: QuicConnectionProtocol, app: ASGIApp, *, spawn: Spawn,
                 limits: Limits = DEFAULT_LIMITS, server: tuple[str, int] | None = None,
                 state: Mapping[str, Any] | None = None, root_path: str = "", max_sessions: int = MAX_SESSIONS,
                 header_timeout: float = HEADER_TIMEOUT) -> None:
        self.protocol = protocol
        self.quic = protocol_quic(protocol)
        set_stream_limits(self.quic, MAX_STREAMS, MAX_STREAMS, announced=True)  # the handshake is under way
        self.h3 = WebTransportH3Connection(self.quic)  # sends SETTINGS with WebTransport and H3_DATAGRAM
        self.max_sessions = max_sessions
        self.header_timeout = header_timeout
        self.transmitter = TransmitSoon(protocol.transmit, asyncio.get_running_loop())
        credit = self.quic if isinstance(self.quic, CreditedQuicConnection) else None
        self.credit = credit
        """The connection's receive credit, when it manages one (request bodies are held against it)."""
        if credit is not None:
            credit.on_credit = self.transmit_soon
        self.app = app
        self.spawn = spawn
        self.limits = limits
        self.server = server
        self.state: MutableMapping[str, Any] = dict(state or {})
        self.root_path = root_path
        self.client: tuple[str, int] | None = peer_address(self.quic)
        self._header_deadline = HeaderDeadline(self.h3, header_timeout, self.transmit_soon, self.client)
        self.requests: dict[int, HTTPExchange] = {}
        self.router = WebTransportRouter(self, early=EarlyStreams(MAX_EARLY_STREAMS, MAX_EARLY_BYTES),
                                         is_request=self.requests.__contains__)
        self.h3.router = self.router
        self.closing = False
        self.terminated = False
        self._writable: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<H3ServerConnection {self.client} sessions={len(self.sessions)} requests={len(self.requests)}>"

    # -- QUIC and HTTP/3 events (never await, never raise)
    def quic_event_received(self, event: QuicEvent) -> None:
        try:
            self._handle(event)
            if self.h3.incomplete:
                self._header_deadline.check()
        except Exception:
            logger.exception("error handling %s; closing this HTTP/3 connection", type(event).__name__)
            with contextlib.suppress(Exception):
                self.quic.close(error_code=H3_INTERNAL_ERROR, reason_phrase="internal error")
                self.transmit_soon()

    def _handle(self, event: QuicEvent) -> None:
        if isinstance(event, (StreamReset, StopSendingReceived)):
            if (request := self.requests.get(event.stream_id)) is not None:
                request.disconnect()
        elif isinstance(event, ConnectionTerminated):
            self._connection_lost()
        # the router takes the WebTransport events (sessions' streams, datagrams, capsules, resets)
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._headers(h3_event)
            elif isinstance(h3_event, DataReceived):
                if (request := self.requests.get(h3_event.stream_id)) is not None:
                    request.feed(h3_event.data, h3_event.stream_ended)

    def _headers(self, event: HeadersReceived) -> None:
        sid = event.stream_id
        method, protocol = method_and_protocol(event.headers)
        if method is None or sid in self.requests:
            return  # trailers: nothing to do
        is_connect = method == b"CONNECT"
        early = not handshake_complete(self.quic)
        if early and method not in SAFE_METHODS:
            self.router.refuse_early(sid)
            self._respond(sid, 425)  # Too Early: the client sends it again once the handshake is done
            return
        if is_connect and protocol == b"webtransport":
            self._open_session(event)
            return
        self.router.refuse_early(sid)
        if self.closing:
            self._respond(sid, 503)
        elif is_connect:
            self._respond(sid, 501)  # plain CONNECT, or extended CONNECT for something else
        else:
            self._open_request(event, early=early)

    def _respond(self, stream_id: int, status: int) -> None:
        """A bodiless answer that does not involve the application."""
        with contextlib.suppress(Exception):
            self.h3.send_headers(stream_id, [(b":status", str(status).encode()), (b"content-length", b"0")],
                                 end_stream=True)
        self.transmit_soon()

    def _connection_lost(self) -> None:
        """The QUIC connection is gone (the router ends the sessions)."""
        self.terminated = True
        self._header_deadline.cancel()
        for request in list(self.requests.values()):
            request.disconnect()
        self._wake_writable()

    # -- WebTransport sessions
    def _open_session(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        too_many = len(self.sessions) >= self.max_sessions
        if self.closing or event.stream_ended or too_many:
            if too_many and not self.closing:
                logger.info("%s: refusing a WebTransport session: %d already open on this connection", self.client,
                            len(self.sessions))
            self._respond(stream_id, 503 if self.closing else 429 if too_many else 400)
            self.router.refuse(stream_id)
            return
        session = WebTransportSession(self, stream_id, client=self.client, limits=self.limits)
        scope, adapter = build_scope(session, event.headers, server=self.server, root_path=self.root_path,
                                     state=self.state)
        self.router.open(session)
        self.spawn(adapter.run(self.app, scope))

    # -- plain HTTP requests
    def _open_request(self, event: HeadersReceived, *, early: bool = False) -> None:
        method = path_bytes = b""
        authority = None
        regular: list[tuple[bytes, bytes]] = []
        for name, value in event.headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path_bytes = value
            elif name == b":authority":
                authority = value
            elif not name.startswith(b":"):
                regular.append((name, value))
        if authority is not None and not any(name == b"host" for name, _ in regular):
            regular.insert(0, (b"host", authority))
        if early:
            regular = [(name, value) for name, value in regular if name != b"early-data"]
            regular.append((b"early-data", b"1"))
        raw_path, _, query = path_bytes.partition(b"?")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": HTTP_SPEC_VERSION},
            "http_version": "3",
            "method": method.decode("ascii", "replace"),
            "scheme": "https",
            "path": unquote(raw_path.decode("ascii", "replace")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self.root_path,
            "headers": regular,
            "client": self.client,
            "server": self.server,
            "state": dict(self.state),
            "extensions": {},
        }
        request = HTTPExchange(self, event.stream_id, scope)
        self.requests[event.stream_id] = request
        if event.stream_ended:
            request.feed(b"", True)
        self.spawn(request.run(self.app))

    # -- shutting down
    def shutdown(self, reason: str = "server shutting down") -> None:
        """Refuse new requests, close every session (code 0), and close the connection."""
        self.closing = True
        for session in list(self.sessions.values()):
            if session.state == "pending":
                session.reject(503)
            else:
                session.close(0, reason)
        for request in list(self.requests.values()):
            request.abort(H3_NO_ERROR)
        self.protocol.transmit()  # the CLOSE capsules go out before CONNECTION_CLOSE
        self.quic.close(error_code=H3_NO_ERROR, reason_phrase=reason)
        self.protocol.transmit()

    # -- transmission
    def after_transmit(self) -> None:
        """Called by the protocol after each transmit: wake writers waiting for the queue to drain."""
        self.router.after_transmit()
        if self._writable:
            self._wake_writable()

    # -- backpressure for HTTP responses
    def stream_backlog(self, stream_id: int) -> int:
        return send_backlog(self.quic, stream_id)

    async def wait_writable(self) -> None:
        if self.terminated:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._writable.append(waiter)
        await waiter

    def _wake_writable(self) -> None:
        waiters, self._writable = self._writable, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class HTTPExchange:
    """One plain HTTP/3 request served through the ASGI ``http`` scope.

    The QUIC side calls :meth:`feed` and :meth:`disconnect` (never awaiting);
    the application gets ``http.request`` messages as the body arrives, at
    most :data:`MAX_REQUEST_BUFFER` unread bytes of it, then
    ``http.disconnect`` once the response is done or the peer went away.
    """

    def __init__(self, connection: H3ServerConnection, stream_id: int, scope: dict[str, Any]) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.scope = scope
        self.state = "request"  # -> "response" -> "done"
        self.disconnected = False
        self.status = 0
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        credit = connection.credit
        self._max_buffer = max(MAX_REQUEST_BUFFER, 2 * credit.stream_window) if credit is not None else MAX_REQUEST_BUFFER
        self._body_ended = False
        self._delivered_end = False
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<HTTPExchange {self.scope['method']} {self.scope['path']} {self.state}>"

    # -- QUIC side
    def feed(self, data: bytes, ended: bool) -> None:
        if self.disconnected or self._body_ended:
            return
        if data:
            if self._inbox_bytes + len(data) > self._max_buffer:
                logger.info("request body on stream %d outran the application; cancelling it", self.stream_id)
                self.abort(int(H3ErrorCode.H3_EXCESSIVE_LOAD))
                return
            self._inbox.append(data)
            self._inbox_bytes += len(data)
            if self.connection.credit is not None:  # the client may send more once the application took these
                self.connection.credit.hold(self.stream_id, len(data))
        self._body_ended = ended
        self._wake()

    def _drop_inbox(self) -> None:
        if self._inbox_bytes and self.connection.credit is not None:
            self.connection.credit.release(self.stream_id, self._inbox_bytes)
        self._inbox.clear()
        self._inbox_bytes = 0

    def disconnect(self) -> None:
        """The peer reset or stopped the request, or the connection ended."""
        if not self.disconnected:
            self.disconnected = True
            self._drop_inbox()
            self.connection.requests.pop(self.stream_id, None)
            self._wake()

    def abort(self, code: int) -> None:
        """Reset the response and stop reading the request, with HTTP/3 ``code``."""
        quic = self.connection.quic
        with contextlib.suppress(Exception):
            quic.stop_stream(self.stream_id, code)
        with contextlib.suppress(Exception):
            quic.reset_stream(self.stream_id, code)
        self.connection.transmit_soon()
        self.disconnect()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- ASGI
    async def receive(self) -> Message:
        while not (self._inbox or (self._body_ended and not self._delivered_end)):
            if self.disconnected or self.state == "done":
                return {"type": "http.disconnect"}
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        body = b"".join(self._inbox)
        self._drop_inbox()
        self._delivered_end = self._body_ended
        return {"type": "http.request", "body": body, "more_body": not self._body_ended}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self.disconnected:
            return  # ASGI servers ignore sends after a disconnect
        if kind == "http.response.start" and self.state == "request":
            self.status = int(message["status"])
            headers = [(b":status", str(self.status).encode())]
            for name, value in message.get("headers", ()):
                name = bytes(name).strip().lower()
                if name and not name.startswith(b":") and name not in _HOP_BY_HOP:
                    headers.append((name, bytes(value).strip()))
            self.state = "response"
            try:
                self.connection.h3.send_headers(self.stream_id, headers)
            except Exception:  # the stream or the connection is gone
                self.disconnect()
                return
            self.connection.transmit_soon()
        elif kind == "http.response.body" and self.state == "response":
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if self.scope["method"] == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
                body = b""
            if body or not more:
                try:
                    self.connection.h3.send_data(self.stream_id, body, end_stream=not more)
                except Exception:  # the stream or the connection is gone
                    self.disconnect()
                    return
                self.connection.transmit_soon()
            if not more:
                self._finish()
                return
            while self.connection.stream_backlog(self.stream_id) > RESPONSE_HIGH_WATER and not self.disconnected:
                await self.connection.wait_writable()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in state {self.state!r}")

    def _finish(self) -> None:
        self.state = "done"
        self._drop_inbox()
        if not self._body_ended:  # the whole response went out: the rest of the request is not needed
            with contextlib.suppress(Exception):
                self.connection.quic.stop_stream(self.stream_id, H3_NO_ERROR)
        self.connection.requests.pop(self.stream_id, None)
        self._wake()

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            logger.exception("ASGI application failed on %s %s", self.scope["method"], self.scope["path"])
            if self.state == "request" and not self.disconnected:
                self._error(500)
            elif self.state == "response":
                self.abort(H3_INTERNAL_ERROR)
        else:
            if self.state == "request" and not self.disconnected:
                logger.error("ASGI application returned without a response to %s %s", self.scope["method"],
                             self.scope["path"])
                self._error(500)
            elif self.state == "response":  # returned in the middle of the body
                self.abort(H3_INTERNAL_ERROR)
        finally:
            self.connection.requests.pop(self.stream_id, None)

    def _error(self, status: int) -> None:
        with contextlib.suppress(Exception):
            self.connection.h3.send_headers(self.stream_id, [(b":status", str(status).encode()),
                                                             (b"content-length", b"0")], end_stream=True)
        self._finish()
        self.connection.transmit_soon()


__all__ = ["H3ServerConnection", "HTTPExchange"]

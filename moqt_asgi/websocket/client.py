"""A WebSocket client: ``dial_websocket("ws://host:port/path?jwt=...")`` → a MoQ :class:`Session`.

It speaks HTTP/1.1 and RFC 6455 with wsproto over an asyncio TCP (or TLS,
for ``wss://``) connection, offers the official clients' subprotocol list
for our versions (:func:`~.asgi.client_subprotocols`), and runs the session
over a :class:`~.session.WebSocketConnection`. A refusal in HTTP (401, 403,
404, 400) raises :class:`~moqt_asgi.SetupRejected` with the status as its
``code``. :func:`start_websocket_session` runs MoQ over any
:class:`~.pipe.MessagePipe` whose subprotocol is known (tests use it with
the in-memory pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import time
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from aioquic.quic.configuration import QuicConfiguration
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

from ..endpoints.settings import parse_url, redacted_url
from ..endpoints.tls import TLSConfig, client_tls
from ..engine.handshake import start_client
from ..engine.mux import TrackMux
from ..engine.session import Session
from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SetupRejected
from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..protocol.versions import ALPN_LITE, DEFAULT_VERSIONS, Version, ordered
from .asgi import client_subprotocols, finish
from .pipe import MessagePipe
from .qmux import LEGACY_MESSAGE_SIZE, parse_subprotocol
from .session import WebSocketConnection, WebSocketSettings

logger = logging.getLogger("moqt_asgi.websocket")

SCHEMES = ("ws", "wss")
READ_SIZE = 65536
MAX_HANDSHAKE = 64 * 1024
"""Most bytes of an HTTP answer to the upgrade we read before giving up."""


class WsprotoPipe(MessagePipe):
    """A client WebSocket over asyncio streams, framed by wsproto.

    Pings are answered here and count as activity (:attr:`last_activity`),
    as do pongs; a message larger than ``max_message`` closes the WebSocket.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: WSConnection, *,
                 max_message: int = LEGACY_MESSAGE_SIZE, pending: Sequence[object] = ()) -> None:
        self._reader = reader
        self._writer = writer
        self._ws = ws
        self._max_message = max_message
        self._partial = bytearray()
        self._events: list[object] = list(pending)
        self._closed = False
        self._send_lock = asyncio.Lock()
        self.last_activity = time.monotonic()
        peer = writer.get_extra_info("peername")
        self.peer_address = (str(peer[0]), int(peer[1])) if peer else None

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            self._writer.write(data)
            await self._writer.drain()

    async def send(self, data: bytes) -> None:
        if self._closed or self._ws.state is not ConnectionState.OPEN:
            raise ConnectionError("WebSocket closed")
        await self._write(self._ws.send(BytesMessage(data=data)))

    async def ping(self) -> None:
        if not self._closed and self._ws.state is ConnectionState.OPEN:
            await self._write(self._ws.send(Ping()))

    async def receive(self) -> bytes | str | None:
        while True:
            while self._events:
                event = self._events.pop(0)
                self.last_activity = time.monotonic()
                if isinstance(event, BytesMessage | TextMessage):
                    if len(self._partial) + len(event.data) > self._max_message:
                        logger.info("WebSocket message over %d bytes; closing", self._max_message)
                        await self.close()
                        return None
                    self._partial += event.data if isinstance(event, BytesMessage) else event.data.encode()
                    if event.message_finished:
                        data, self._partial = bytes(self._partial), bytearray()
                        return data if isinstance(event, BytesMessage) else data.decode("utf-8", "replace")
                elif isinstance(event, Ping):
                    with contextlib.suppress(Exception):
                        await self._write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        if self._ws.state is ConnectionState.REMOTE_CLOSING:
                            await self._write(self._ws.send(event.response()))
                    await self._shut()
                    return None
                elif isinstance(event, Pong):
                    continue
            if self._closed:
                return None
            try:
                data = await self._reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                await self._shut()
                return None
            self._ws.receive_data(data)  # a broken frame comes out as a CloseConnection event
            self._events.extend(self._ws.events())

    async def _shut(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(Exception):
            if self._ws.state is ConnectionState.OPEN:
                await self._write(self._ws.send(CloseConnection(code=CloseReason.NO_STATUS_RCVD)))
        await self._shut()


async def start_websocket_session(pipe: MessagePipe, subprotocol: str | None, *, mux: TrackMux | None = None,
                                  limits: Limits = DEFAULT_LIMITS, versions: Sequence[Version | str] = DEFAULT_VERSIONS,
                                  setup_timeout: float = 10.0, target: str = "/", log: logging.Logger = logger,
                                  settings: WebSocketSettings | None = None) -> Session:
    """Run the client side of MoQ over an open WebSocket whose server chose ``subprotocol``."""
    chosen = ordered(versions)
    framing, alpn = parse_subprotocol(subprotocol)
    connection = WebSocketConnection(pipe, framing, is_client=True, limits=limits,
                                     settings=settings or WebSocketSettings())
    connection.start()
    try:
        async with asyncio.timeout(setup_timeout):
            start = await start_client(connection, limits, protocol=ALPN_LITE if alpn is None else alpn, path=None,
                                       versions=chosen, timeout=setup_timeout)
    except BaseException:
        connection.close(int(ErrorCode.CANCEL))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.finished(), 1.0)
        raise

    async def close_connection() -> None:
        connection.close(int(ErrorCode.CANCEL))
        await finish(connection)

    session = Session(connection, start.codec, mux=mux, limits=limits, is_client=True, path=target,
                      session_stream=start.session_stream, logger_=log, timeout=setup_timeout)
    session.peer_setup = start.peer_setup
    session.add_cleanup(close_connection)
    session.start()
    await session.wait_started()
    return session


async def open_websocket(url: str, *, subprotocols: Sequence[str], headers: Sequence[tuple[str, str]] = (),
                         fingerprint: str | None = None, insecure: bool = False, cafile: str | None = None,
                         tls: TLSConfig | ssl.SSLContext | None = None) -> tuple[WsprotoPipe, str | None]:
    """Connect and upgrade; the pipe and the server's subprotocol. A refused upgrade raises
    :class:`SetupRejected` with the HTTP status."""
    scheme, host, port, target = parse_ws_url(url)
    context: ssl.SSLContext | None = None
    pin: str | None = None
    server_name: str | None = None
    if scheme == "wss":
        context, pin, server_name = tls_context(tls, host, fingerprint=fingerprint, insecure=insecure, cafile=cafile)
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=server_name)
    try:
        if pin is not None:
            check_pin(writer, pin)
        ws = WSConnection(ConnectionType.CLIENT)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(ws.send(Request(host=authority, target=target, subprotocols=list(subprotocols),
                                     extra_headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers])))
        await writer.drain()
        received = 0
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                raise ConnectionError("the server closed the connection during the upgrade")
            received += len(data)
            if received > MAX_HANDSHAKE:
                raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "the server's upgrade answer is too large")
            ws.receive_data(data)
            events = list(ws.events())
            for index, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    chosen = event.subprotocol
                    if chosen is not None and chosen not in subprotocols:
                        raise ProtocolError(ErrorCode.VERSION, f"server chose {chosen!r}, which we did not offer")
                    return WsprotoPipe(reader, writer, ws, pending=events[index + 1:]), chosen
                if isinstance(event, RejectConnection):
                    raise SetupRejected(event.status_code, f"the server refused the WebSocket upgrade "
                                                           f"({event.status_code})")
                if isinstance(event, RejectData):
                    continue
    except BaseException:
        writer.close()
        raise


def parse_ws_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path_and_query)`` of a ``ws://`` or ``wss://`` URL; the port is required."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise MoQError(f"{parts.scheme}:// is not a WebSocket URL: use ws:// or wss://")
    _, host, port, target = parse_url(urlunsplit(("https", *parts[1:])))
    return parts.scheme, host, port, target


def tls_context(tls: TLSConfig | ssl.SSLContext | None, host: str, *, fingerprint: str | None, insecure: bool,
                cafile: str | None) -> tuple[ssl.SSLContext, str | None, str]:
    """An :class:`ssl.SSLContext` for ``wss://`` from the options ``https://`` takes; the pin and the server name.

    The options are read as for QUIC (:class:`~moqt_asgi.endpoints.tls.TLSConfig` checks them), then
    carried over: a pin or ``insecure`` skip the chain check (the pin is checked once connected), CA
    files replace the default roots, and the key log file is kept.
    """
    config = client_tls(tls, fingerprint=fingerprint, insecure=insecure, cafile=cafile)
    quic = QuicConfiguration(is_client=True)
    pin, skip_verify, _ = config.apply_client(quic, host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_alpn_protocols(["http/1.1"])
    if pin or skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif quic.cafile is not None or quic.capath is not None or quic.cadata is not None:
        context.load_verify_locations(quic.cafile, quic.capath, quic.cadata.decode("ascii") if quic.cadata else None)
    else:
        context.load_default_certs()
    keylog = config.keylog_file
    if isinstance(keylog, str | os.PathLike):
        context.keylog_filename = os.fspath(keylog)
    return context, pin, quic.server_name or host


def check_pin(writer: asyncio.StreamWriter, pin: str) -> None:
    """Fail unless the TLS peer certificate's SHA-256 is ``pin`` (lowercase hex)."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der is None or hashlib.sha256(der).hexdigest() != pin:
        raise MoQError("the server certificate does not match the pinned fingerprint")


async def dial_websocket(url: str, *, mux: TrackMux | None = None, fingerprint: str | None = None,
                         insecure: bool = False, cafile: str | None = None, limits: Limits = DEFAULT_LIMITS,
                         setup_timeout: float = 10.0, versions: Sequence[Version | str] = DEFAULT_VERSIONS,
                         headers: Sequence[tuple[str, str]] = (), log: logging.Logger = logger,
                         tls: TLSConfig | ssl.SSLContext | None = None,
                         settings: WebSocketSettings | None = None) -> Session:
    """Connect to ``ws://`` or ``wss://host:port/path?query`` and set up a MoQ session over WebSocket.

    ``wss://`` checks the server certificate as ``https://`` does
    (``fingerprint``, ``cafile``, the system roots, or ``insecure``).
    """
    chosen = ordered(versions)
    offer = client_subprotocols(chosen)
    _, _, _, target = parse_ws_url(url)
    try:
        async with asyncio.timeout(setup_timeout):
            pipe, protocol = await open_websocket(url, subprotocols=offer, headers=headers, fingerprint=fingerprint,
                                                  insecure=insecure, cafile=cafile, tls=tls)
    except TimeoutError:
        raise MoQError(f"no WebSocket with {redacted_url(url)} within {setup_timeout:.1f}s") from None
    except (ConnectionError, OSError) as exc:
        raise MoQError(f"could not connect to {redacted_url(url)}: {exc}") from None
    session = await start_websocket_session(pipe, protocol, mux=mux, limits=limits, versions=chosen,
                                            setup_timeout=setup_timeout, target=target, log=log, settings=settings)
    log.info("WebSocket session established with %s using %s (%s)", url, session.codec.name, protocol)
    return session


__all__ = ["SCHEMES", "WsprotoPipe", "check_pin", "dial_websocket", "open_websocket", "start_websocket_session"]

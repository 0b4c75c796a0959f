"""Native QUIC entrypoints: a server for a :class:`~.app.MoQ` app and a client dialer.

ALPN ``moql`` carries moq-lite with the version chosen in SETUP (lite-02,
then lite-01). The server also offers ALPN ``h3`` on the same UDP socket:
those connections speak HTTP/3 and carry WebTransport sessions, served
through the app's ASGI ``webtransport`` scope exactly as under Hypercorn
(see :mod:`moqt_asgi.webtransport.native_h3`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import logging
import os
import socket
import ssl
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.server import QuicServer as AioquicServer
from aioquic.h3.connection import H3_ALPN
from aioquic.h3.connection import ErrorCode as H3ErrorCode
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket
from cryptography.hazmat.primitives import serialization

from .app import ASGIApp, MoQ
from .certs import ANTI_AMPLIFICATION_BUDGET, CERT_CHAIN_WARN_BYTES
from .handshake import ClientStart, start_client
from .mux import TrackMux
from .protocol.errors import ErrorCode, MoQError, SessionClosed
from .protocol.limits import DEFAULT_LIMITS, Limits
from .protocol.versions import DEFAULT_VERSIONS, Version, native_alpns, ordered
from .serving import serve_connection, session_hook
from .session import Session
from .stopping import CLOSE_GRACE
from .tickets import ClientTicketStore, SessionTicketStore, TicketSlot
from .tls import ServerCredentials, TLSConfig, client_tls, server_tls
from .transport.admission import Admission, AdmissionPolicy, serve_guarded
from .transport.aioquic_connection import forbid_early_data, peer_certificate
from .transport.quic import QuicProtocol, QuicTransport

if TYPE_CHECKING:
    from .webtransport.native_h3 import H3ServerConnection

logger = logging.getLogger("moqt_asgi.native")

NATIVE_SCHEMES = ("moql", "moqt")


MIN_STREAM_WINDOW = 128 * 1024
"""Smallest ``stream_receive_window``: an HTTP/3 HEADERS frame (up to 64 KiB) must fit in it."""


@dataclass
class QuicSettings:
    """QUIC knobs shared by server and client.

    Receive credit: the peer may send ``stream_receive_window`` bytes beyond
    what the application has read on a stream, and
    ``connection_receive_window`` bytes beyond what it has read on the whole
    connection; the windows never grow (see
    :mod:`moqt_asgi.transport.aioquic_connection`). A stream nobody reads
    blocks its sender after one window. Memory held for a connection's
    received data (reordering gaps included) stays under
    ``connection_receive_window``, plus what readers waiting for a frame ask for.

    Server admission (:mod:`moqt_asgi.transport.admission`): at most
    ``max_connections`` connections, ``max_connections_per_address`` from one
    IP address (None: no limit); a client over a limit is refused at its first
    packet with CONNECTION_REFUSED. ``retry`` makes clients prove their
    address with a Retry round trip first: always (True), never (False), or
    only while ``retry_threshold`` handshakes are pending or more than half of
    ``max_connections`` are in use ("auto"). A connection whose handshake has
    not completed ``handshake_timeout`` seconds after its first packet is
    dropped (at most ``idle_timeout``).

    HTTP/3 (the server's ``h3`` ALPN): at most ``max_webtransport_sessions``
    WebTransport sessions per connection (a CONNECT beyond is answered 429),
    and a request stream whose HEADERS frame is not complete after
    ``header_timeout`` seconds is reset.
    """

    idle_timeout: float = 30.0
    max_datagram_frame_size: int | None = 65536
    stream_receive_window: int = 1024 * 1024
    """Bytes a peer may send on one stream beyond what the application read (MAX_STREAM_DATA = read + this)."""
    connection_receive_window: int = 16 * 1024 * 1024
    """Bytes a peer may send on the connection beyond what the application read (MAX_DATA = read + this)."""
    max_streams_bidi: int = 1000
    """Concurrent bidirectional streams the peer may open (MoQ: one per subscription, announce, fetch)."""
    max_streams_uni: int = 1000
    """Concurrent unidirectional streams the peer may open (MoQ: one per group in flight)."""
    allow_0rtt: bool = False
    """Server: issue tickets that permit 0-RTT early data, accept it, and start a native session on
    it before the handshake completes. Client: when the stored ticket permits it, write the session
    start (the SETUP) as early data. Either way tickets still give 1-RTT resumption. A server
    forgets a ticket once presented, so a replayed first flight is not accepted again by the
    servers sharing that ticket store (servers with separate stores would each accept it once).
    On HTTP/3 a request in early data is answered 425 (Too Early) unless its method is safe
    (GET, HEAD, OPTIONS); safe ones reach the application with an ``early-data: 1`` header."""
    max_connections: int | None = 4096
    """Server: connections at once (None: no limit)."""
    max_connections_per_address: int | None = 256
    """Server: connections at once from one source IP address (None: no limit)."""
    retry: bool | Literal["auto"] = "auto"
    """Server: validate client addresses with a Retry packet: always, never, or under pressure ("auto")."""
    retry_threshold: int = 100
    """Server, ``retry="auto"``: pending handshakes from which new clients get a Retry."""
    handshake_timeout: float = 10.0
    """Server: seconds a connection has to complete its handshake (capped at ``idle_timeout``)."""
    header_timeout: float = 10.0
    """Server, HTTP/3: seconds a request stream has to deliver its complete HEADERS frame."""
    max_webtransport_sessions: int = 16
    """Server, HTTP/3: WebTransport sessions at once on one connection."""

    def __post_init__(self) -> None:
        if self.max_streams_bidi < 1 or self.max_streams_uni < 1:
            raise ValueError("max_streams_bidi and max_streams_uni must be at least 1")
        if self.stream_receive_window < MIN_STREAM_WINDOW:
            raise ValueError(f"stream_receive_window must be at least {MIN_STREAM_WINDOW} bytes")
        if self.connection_receive_window < self.stream_receive_window:
            raise ValueError("connection_receive_window must be at least stream_receive_window")
        if self.handshake_timeout <= 0 or self.header_timeout <= 0:
            raise ValueError("handshake_timeout and header_timeout must be positive")
        if self.max_webtransport_sessions < 1:
            raise ValueError("max_webtransport_sessions must be at least 1")
        self.admission_policy()  # checks the connection limits and retry

    @property
    def max_streams(self) -> tuple[int, int]:
        """``(bidi, uni)``, as :class:`~moqt_asgi.transport.quic.QuicProtocol` takes them."""
        return self.max_streams_bidi, self.max_streams_uni

    @property
    def max_data(self) -> int:
        """The connection's initial MAX_DATA: ``connection_receive_window``."""
        return self.connection_receive_window

    @property
    def max_stream_data(self) -> int:
        """A stream's initial MAX_STREAM_DATA: ``stream_receive_window``."""
        return self.stream_receive_window

    @property
    def effective_handshake_timeout(self) -> float:
        return min(self.handshake_timeout, self.idle_timeout)

    def admission_policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(max_connections=self.max_connections,
                               max_connections_per_address=self.max_connections_per_address,
                               retry=self.retry, retry_threshold=self.retry_threshold)

    def configuration(self, *, is_client: bool, alpn: list[str]) -> QuicConfiguration:
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=alpn,
            idle_timeout=self.idle_timeout,
            max_datagram_frame_size=self.max_datagram_frame_size,
            max_data=self.connection_receive_window,
            max_stream_data=self.stream_receive_window,
        )

    def check_limits(self, limits: Limits, log: logging.Logger = logger) -> None:
        """Warn when the engine's unread-bytes backstop would stop streams before flow control does."""
        if limits.max_stream_buffer < 2 * self.stream_receive_window:
            log.warning("Limits.max_stream_buffer (%d) is under twice stream_receive_window (%d): a stream whose "
                        "reader waits for a large frame may be stopped with TOO_LARGE before flow control "
                        "slows its sender", limits.max_stream_buffer, self.stream_receive_window)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, prefix: str = "MOQT_") -> QuicSettings:
        """Settings from ``MOQT_<FIELD>`` environment variables (e.g. ``MOQT_MAX_CONNECTIONS=500``).

        Integers and floats as written; ``none`` for no limit; ``MOQT_RETRY``
        is ``auto``, ``1``/``true`` or ``0``/``false``. Unset fields keep
        their defaults.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(prefix + field.name.upper())
            if raw is None:
                continue
            default = getattr(cls, field.name)
            text = raw.strip().lower()
            try:
                if field.name == "retry":
                    values[field.name] = "auto" if text == "auto" else text in ("1", "true", "yes", "on")
                elif text in ("none", "") and (default is None or field.name.startswith("max_connections")):
                    values[field.name] = None
                elif isinstance(default, bool):
                    values[field.name] = text in ("1", "true", "yes", "on")
                elif isinstance(default, float):
                    values[field.name] = float(text)
                else:
                    values[field.name] = int(text)
            except ValueError:
                raise ValueError(f"{prefix}{field.name.upper()}={raw!r} is not a valid value") from None
        return cls(**values)


class ServerProtocol(QuicProtocol):
    """A server connection that becomes native MoQ or HTTP/3 depending on the negotiated ALPN.

    ``moql`` connections behave exactly like :class:`QuicProtocol`. When the
    client negotiates ``h3`` and ``on_h3`` is given, every later event goes
    to the :class:`~moqt_asgi.webtransport.native_h3.H3ServerConnection` it
    returns instead (``None``: it refused the connection and closed it).
    With ``early_data`` (0-RTT allowed), a native connection whose early data
    was accepted starts its session at once (``transport.started_early``).
    """

    def __init__(self, *args: Any, on_h3: Callable[[ServerProtocol], H3ServerConnection | None] | None = None,
                 early_data: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, early_start=early_data, **kwargs)
        self._on_h3 = on_h3
        self._early_data = early_data
        self.h3: H3ServerConnection | None = None

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.ProtocolNegotiated) and not self._early_data:
            # aioquic's server TLS always advertises early data in the tickets it issues (sent
            # after the client's Finished, so after this event): take the permission out.
            forbid_early_data(self._quic)
        elif isinstance(event, quic_events.HandshakeCompleted):
            self.moq_transport.resumed = event.session_resumed
            self.moq_transport.early_data_accepted = event.early_data_accepted
        h3 = self.h3
        if h3 is not None:
            h3.quic_event_received(event)
        elif (self._on_h3 is not None and isinstance(event, quic_events.ProtocolNegotiated)
              and event.alpn_protocol in H3_ALPN):
            try:
                self.h3 = self._on_h3(self)
                if self.h3 is None:
                    self._on_h3 = None
            except Exception:  # an exception here would kill the whole listener
                logger.exception("could not start HTTP/3 on a connection; closing it")
                self._quic.close(error_code=H3ErrorCode.H3_INTERNAL_ERROR, reason_phrase="internal error")
        else:
            super().quic_event_received(event)

    def transmit(self) -> None:
        super().transmit()
        if self.h3 is not None:
            self.h3.after_transmit()


class QuicServer:
    """Serves a :class:`MoQ` app on one UDP port: native QUIC (``moql``) and WebTransport (``h3``).

    With ``webtransport=False`` only ``moql`` is offered. HTTP/3 connections
    run the app through its ASGI interface: ``webtransport`` scopes for
    WebTransport CONNECTs and ``http`` scopes for other requests. ``asgi_app``
    replaces the app for HTTP/3 only (an ASGI app that routes to ``app``, say).

    The server issues TLS session tickets and keeps them in ``tickets`` (a
    fresh :class:`~moqt_asgi.tickets.SessionTicketStore` by default; share one
    between servers so clients resume on any of them), so returning clients
    resume without a certificate exchange. With ``quic.allow_0rtt`` the
    tickets also permit 0-RTT early data, which the server then accepts.
    """

    def __init__(self, app: MoQ, *, host: str = "127.0.0.1", port: int = 4433, certfile: str | None = None,
                 keyfile: str | None = None, quic: QuicSettings | None = None, setup_timeout: float = 10.0,
                 versions: Sequence[Version] | None = None, log: logging.Logger = logger,
                 webtransport: bool = True, root_path: str = "", asgi_app: ASGIApp | None = None,
                 tickets: SessionTicketStore | None = None, tls: TLSConfig | ssl.SSLContext | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self.tls = tls
        """The certificate and TLS options (:class:`~moqt_asgi.tls.TLSConfig`); ``certfile``/``keyfile`` fill it in."""
        self.quic = quic or QuicSettings()
        self.quic.check_limits(app.limits, log)
        self.admission = Admission(self.quic.admission_policy(), log=log)
        """Connection caps and Retry for :meth:`start`'s listener (see :mod:`moqt_asgi.transport.admission`)."""
        self.setup_timeout = setup_timeout
        self.versions: tuple[Version, ...] = ordered(versions if versions is not None else app.versions)
        """Versions this server speaks (default: the app's); each has its own ALPN, ``moql`` covers lite-01/02."""
        self.log = log
        self.webtransport = webtransport
        self.root_path = root_path
        self.asgi_app: ASGIApp = asgi_app if asgi_app is not None else app
        self.state: dict[str, Any] = {}
        """Copied into every ASGI scope's ``state`` (``webtransport`` and ``http``)."""
        self._server: AioquicServer | None = None
        self._serving_elsewhere = False
        self._protocols: weakref.WeakSet[ServerProtocol] = weakref.WeakSet()
        self._connections: set[asyncio.Task[None]] = set()
        self._h3: weakref.WeakSet[H3ServerConnection] = weakref.WeakSet()
        self._address: tuple[str, int] | None = None
        self.tickets = tickets if tickets is not None else SessionTicketStore()
        """Session tickets this server issued (see :mod:`moqt_asgi.tickets`)."""
        self._sessions: set[Session] = set()
        self.draining = False
        """While True, new connections are refused (closed with code 0, "server is shutting down")."""
        self.on_session: Callable[[Session], None] | None = None
        """Called with every session this server accepts (native QUIC and WebTransport)."""

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; under aioquic's own ``serve()`` (see :meth:`serve_arguments`), known
        once a first connection has arrived."""
        if self._address is None:
            transport = self._server._transport if self._server is not None else next(
                (p._transport for p in list(self._protocols) if p._transport is not None), None)
            if transport is None:
                raise MoQError("server is not started" if self._server is None and not self._serving_elsewhere
                               else "no connection has arrived yet to tell the address")
            sockname = transport.get_extra_info("sockname")
            self._address = str(sockname[0]), int(sockname[1])
        return self._address

    @property
    def alpn_protocols(self) -> list[str]:
        alpns = list(native_alpns(self.versions))
        return [*alpns, *H3_ALPN] if self.webtransport else alpns

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Bind ``host:port`` and serve; with ``sock``, serve on that bound UDP socket instead.

        The server owns ``sock`` from then on: :meth:`close` closes it (as Go's
        ``Serve(listener)`` does). TLS settings are read and checked first: a
        :class:`~moqt_asgi.tls.TLSConfigError` says what is wrong.
        """
        arguments = self._serve_arguments()
        if sock is not None:
            self._check_socket(sock)
        self.admission = Admission(self.quic.admission_policy(), log=self.log)
        self._server = await serve_guarded(self.host, self.port, admission=self.admission, sock=sock, **arguments)
        self._serving_elsewhere = False
        self._address = None
        if self.webtransport:
            self.log.info("serving MoQ on moql://%s:%d and https://%s:%d (WebTransport)", *self.address, *self.address)
        else:
            self.log.info("serving MoQ on moql://%s:%d", *self.address)

    def quic_configuration(self) -> QuicConfiguration:
        """The server's aioquic configuration: every ALPN it serves, the QUIC settings and TLS (checked)."""
        configuration = self.quic.configuration(is_client=False, alpn=self.alpn_protocols)
        if self.webtransport and not configuration.max_datagram_frame_size:
            # HTTP/3 announces H3_DATAGRAM, which requires the transport parameter: without it
            # aioquic clients close the connection and Chromium silently drops every datagram.
            configuration.max_datagram_frame_size = 65536
        tls = server_tls(self.tls, certfile=self.certfile, keyfile=self.keyfile)
        self._check_certificate_size(tls.apply_server(configuration))
        return configuration

    def create_protocol(self, *args: Any, **kwargs: Any) -> ServerProtocol:
        """aioquic's ``create_protocol``: a connection served by this server."""
        protocol = ServerProtocol(*args, on_handshake=self._on_handshake, limits=self.app.limits,
                                  on_h3=self._on_h3 if self.webtransport else None,
                                  early_data=self.quic.allow_0rtt, max_streams=self.quic.max_streams,
                                  handshake_timeout=self.quic.effective_handshake_timeout, **kwargs)
        self._protocols.add(protocol)
        return protocol

    def serve_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``aioquic.asyncio.serve(host, port, **arguments)``, to serve through it.

        ``configuration`` (ALPNs, QUIC settings, TLS), ``create_protocol``,
        ``session_ticket_fetcher`` and ``session_ticket_handler``. Connections
        made that way are this server's: :attr:`sessions`, ``draining`` and
        :meth:`close` cover them, but the aioquic server and its socket stay
        the caller's to close, and the connection caps and Retry of
        :attr:`admission` apply only to :meth:`start`'s own listener (receive
        credit and the handshake deadline apply to both).
        """
        arguments = self._serve_arguments()
        self._serving_elsewhere = True
        self.log.info("serving MoQ through aioquic's serve() (%s)", "moql and WebTransport" if self.webtransport else "moql")
        return arguments

    def _serve_arguments(self) -> dict[str, Any]:
        return dict(configuration=self.quic_configuration(), create_protocol=self.create_protocol,
                    session_ticket_fetcher=self._fetch_ticket, session_ticket_handler=self.tickets.add)

    @staticmethod
    def _check_socket(sock: socket.socket) -> None:
        if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise MoQError(f"QUIC needs a UDP socket (AF_INET or AF_INET6, SOCK_DGRAM), got {sock!r}")
        if sock.fileno() < 0:
            raise MoQError("the socket is closed")
        if sock.getsockname()[1] == 0:
            raise MoQError("the socket is not bound: bind it to an address first")

    @property
    def sessions(self) -> list[Session]:
        """The MoQ sessions accepted on this server and not yet closed."""
        return [session for session in self._sessions if not session.closed]

    def _session_accepted(self, session: Session) -> None:
        self._sessions.add(session)

        async def forget() -> None:
            self._sessions.discard(session)

        session.add_cleanup(forget)
        if self.on_session is not None:
            self.on_session(session)

    def _check_certificate_size(self, credentials: ServerCredentials) -> None:
        size = credentials.size
        if size > CERT_CHAIN_WARN_BYTES:
            self.log.warning(
                "the certificate chain in %s is %d bytes: with the rest of the first flight it does not fit the "
                "%d bytes a QUIC server may send before the client's address is validated, so every full "
                "handshake costs an extra round trip; use an ECDSA P-256 certificate and a shorter chain "
                "(under %d bytes; `python -m moqt_asgi cert` makes one for development)",
                credentials.source, size, ANTI_AMPLIFICATION_BUDGET, CERT_CHAIN_WARN_BYTES)

    def _fetch_ticket(self, label: bytes) -> SessionTicket | None:
        ticket = self.tickets.pop(label)
        if ticket is not None and ticket.max_early_data_size is not None and not self.quic.allow_0rtt:
            # aioquic accepts early data whenever a resumed client offers it: refuse to resume a
            # ticket that permits it (issued while 0-RTT was allowed, or by another server).
            return None
        return ticket

    def _on_handshake(self, transport: QuicTransport) -> None:
        if self.draining:
            self.log.info("refusing a connection: the server is shutting down")
            transport.close(0, "server is shutting down")
            return
        if transport.alpn not in native_alpns(self.versions):
            self.log.info("closing connection with unsupported ALPN %r", transport.alpn)
            transport.close(ErrorCode.VERSION, "unsupported ALPN")
            return
        self._spawn(serve_connection(self.app, transport, transport="quic", versions=self.versions,
                                     protocol=transport.alpn, setup_timeout=self.setup_timeout, log=self.log))

    def _on_h3(self, protocol: ServerProtocol) -> H3ServerConnection | None:
        from .webtransport.native_h3 import H3ServerConnection  # the webtransport package imports this module

        if self.draining:
            self.log.info("refusing an HTTP/3 connection: the server is shutting down")
            protocol._quic.close(error_code=H3ErrorCode.H3_NO_ERROR, reason_phrase="server is shutting down")
            protocol.transmit()
            return None

        connection = H3ServerConnection(protocol, self.asgi_app, spawn=self._spawn, limits=self.app.limits,
                                        server=self.address, state=self.state, root_path=self.root_path,
                                        max_sessions=self.quic.max_webtransport_sessions,
                                        header_timeout=self.quic.header_timeout)
        self._h3.add(connection)
        return connection

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        context = contextvars.copy_context()
        context.run(session_hook.set, self._session_accepted)  # the registry, for native and WebTransport alike
        task = asyncio.get_running_loop().create_task(coro, context=context)
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    @property
    def connection_count(self) -> int:
        """MoQ connections, WebTransport sessions and HTTP requests being served."""
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and close every connection now.

        WebTransport sessions get CLOSE_WEBTRANSPORT_SESSION (code 0, reason
        ``"server shutting down"``) before their connection closes.
        """
        for connection in list(self._h3):
            with contextlib.suppress(Exception):
                connection.shutdown()
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            # A connection whose application ignores cancellation is not waited for (its session logs it).
            _, stuck = await asyncio.wait(set(self._connections), timeout=CLOSE_GRACE)
            if stuck:
                self.log.warning("%d connection(s) still stopping after %.1fs; not waiting for them", len(stuck),
                                 CLOSE_GRACE)
        await asyncio.sleep(0)  # the UDP transport closes its socket one loop step later: the port is free on return

    async def __aenter__(self) -> QuicServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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


def _check_fingerprint(protocol: QuicProtocol, expected: str) -> None:
    if protocol._quic.tls.session_resumed:
        return  # no certificate: the ticket was only offered under this same pinned fingerprint
    cert = peer_certificate(protocol._quic)
    if cert is None:
        raise MoQError("server sent no certificate")
    actual = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if actual != expected.lower().replace(":", ""):
        raise MoQError(f"server certificate fingerprint {actual} does not match the pinned {expected}")


async def dial_quic(url: str, *, mux: TrackMux | None = None, fingerprint: str | None = None,
                    insecure: bool = False, cafile: str | None = None, quic: QuicSettings | None = None,
                    limits: Limits = DEFAULT_LIMITS, setup_timeout: float = 10.0,
                    versions: Sequence[Version] = DEFAULT_VERSIONS, log: logging.Logger = logger,
                    tickets: ClientTicketStore | None = None, tls: TLSConfig | ssl.SSLContext | None = None) -> Session:
    """Connect to ``moql://host:port/path`` and set up a session (already running).

    The ALPN list offers every one of ``versions`` (newest first); the server
    picks, and the session speaks what it picked (:attr:`Session.version_name`).

    With ``tickets``, the ticket the server sends is kept there and the next
    dial to the same host and port offers it to resume (with 0-RTT early data
    if ``quic.allow_0rtt`` and the ticket permits it). The session's
    :class:`~moqt_asgi.transport.quic.QuicTransport` (``session.connection``)
    tells whether it ``resumed`` and whether ``early_data_accepted``.
    """
    scheme, host, port, target = parse_url(url)
    if scheme not in NATIVE_SCHEMES:
        raise MoQError(f"{scheme}:// is WebTransport: use dial_webtransport (or dial)")
    chosen = ordered(versions)
    settings = quic or QuicSettings()
    settings.check_limits(limits, log)
    configuration = settings.configuration(is_client=True, alpn=list(native_alpns(chosen)))
    # tls and the shortcuts as one: the pin to check once connected, and how the server is trusted
    pin, skip_verify, ca = client_tls(tls, fingerprint=fingerprint, insecure=insecure,
                                      cafile=cafile).apply_client(configuration, host)
    ticket_slot = use_tickets(configuration, tickets, host, port, early_data=settings.allow_0rtt,
                              trust=trust_label(pin, skip_verify, ca))
    early_alpn = ticket_slot.early_alpn if ticket_slot is not None and settings.allow_0rtt else None
    connect = functools.partial(_connect, url, host, port, target, configuration, limits=limits, versions=chosen,
                                setup_timeout=setup_timeout, fingerprint=pin, ticket_slot=ticket_slot,
                                max_streams=settings.max_streams)
    try:
        stack, transport, start = await connect(early_alpn=early_alpn)
    except _ProtocolChanged as changed:
        log.info("%s chose %s, not the %s its 0-RTT data was written in; dialing again without the ticket",
                 url, changed.alpn, early_alpn)
        configuration.session_ticket = None
        stack, transport, start = await connect(early_alpn=None)
    session = Session(transport, start.codec, mux=mux, limits=limits, is_client=True, path=target,
                      session_stream=start.session_stream, logger_=log, timeout=setup_timeout)
    session.peer_setup = start.peer_setup
    session.add_cleanup(stack.aclose)
    session.start()
    await session.wait_started()
    log.info("session established with %s using %s%s", url, start.codec.name,
             resumption_note(transport.resumed, transport.early_data_accepted))
    return session


class _ProtocolChanged(Exception):
    """The server negotiated another ALPN than the one a 0-RTT start assumed."""

    def __init__(self, alpn: str | None) -> None:
        super().__init__(alpn)
        self.alpn = alpn


async def _connect(url: str, host: str, port: int, target: str, configuration: QuicConfiguration, *,
                   limits: Limits, versions: tuple[Version, ...], setup_timeout: float, fingerprint: str | None,
                   ticket_slot: TicketSlot | None, max_streams: tuple[int, int],
                   early_alpn: str | None) -> tuple[contextlib.AsyncExitStack, QuicTransport, ClientStart]:
    """Connect and run the client's session start; with ``early_alpn``, start it in 0-RTT data."""
    stack = contextlib.AsyncExitStack()
    check = functools.partial(_check_fingerprint, expected=fingerprint) if fingerprint else None
    created: list[QuicProtocol] = []

    def protocol_factory(*args: Any, **kwargs: Any) -> QuicProtocol:
        made = QuicProtocol(*args, limits=limits, check_peer=check, max_streams=max_streams, **kwargs)
        created.append(made)
        return made

    try:
        async with asyncio.timeout(setup_timeout):
            protocol = await stack.enter_async_context(
                quic_connect(host, port, configuration=configuration, create_protocol=protocol_factory,
                             session_ticket_handler=ticket_slot, wait_connected=early_alpn is None))
            assert isinstance(protocol, QuicProtocol)
            transport = protocol.moq_transport
            if early_alpn is None:
                if protocol.peer_check_error is not None:
                    raise protocol.peer_check_error
                start = await start_client(transport, limits, protocol=transport.alpn, path=target,
                                           versions=versions, timeout=setup_timeout)
            else:
                start = await _start_early(protocol, early_alpn, limits=limits, target=target, versions=versions,
                                           setup_timeout=setup_timeout)
            if ticket_slot is not None:
                ticket_slot.verified(transport.alpn)
    except TimeoutError:
        await stack.aclose()
        raise MoQError(f"no session with {url} within {setup_timeout:.1f}s") from None
    except ConnectionError as exc:
        await stack.aclose()
        closed = created[0].moq_transport._closed if created else None
        reason = closed.reason if closed is not None and closed.reason else str(exc) or "connection closed"
        raise MoQError(f"could not connect to {url}: {reason}") from None
    except BaseException:
        await stack.aclose()
        raise
    return stack, transport, start


async def _start_early(protocol: QuicProtocol, alpn: str, *, limits: Limits, target: str,
                       versions: tuple[Version, ...], setup_timeout: float) -> ClientStart:
    """Write the session start as 0-RTT data in ``alpn``'s version, then confirm the handshake agrees.

    The ClientHello and the first 0-RTT bytes leave together. If the server
    refuses the early data, aioquic sends those bytes again under the
    handshake keys. If it negotiates another ALPN, :class:`_ProtocolChanged`.
    """
    transport = protocol.moq_transport
    transport.alpn = alpn
    transport.started_early = True
    connected = asyncio.ensure_future(protocol.wait_connected())
    starting = asyncio.ensure_future(start_client(transport, limits, protocol=alpn, path=target, versions=versions,
                                                  timeout=setup_timeout))
    asyncio.get_running_loop().call_soon(protocol.transmit)  # after the start has written its first bytes
    try:
        await asyncio.wait({connected, starting}, return_when=asyncio.FIRST_EXCEPTION)
        if not connected.done():
            starting.result()  # the start failed before the handshake finished: its error is the answer
        await connected
        if protocol.peer_check_error is not None:
            raise protocol.peer_check_error
        if transport.alpn != alpn:
            raise _ProtocolChanged(transport.alpn)
        return await starting
    finally:
        for task in (connected, starting):
            if not task.done():
                task.cancel()
        await asyncio.gather(connected, starting, return_exceptions=True)


def trust_label(fingerprint: str | None, insecure: bool, ca: str | None) -> str:
    """How a dial verifies the server, as :class:`ClientTicketStore` files its tickets.

    ``ca`` describes the CA check: a CA file's path, or what
    :meth:`TLSConfig.ca_label() <moqt_asgi.tls.TLSConfig.ca_label>` says
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


__all__ = ["QuicServer", "QuicSettings", "ServerProtocol", "SessionClosed", "dial_quic", "parse_url"]

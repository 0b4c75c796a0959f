"""The native QUIC server: a :class:`~moqt_asgi.app.MoQ` app on one UDP port.

ALPN ``moql`` carries moq-lite with the version chosen in SETUP (lite-02,
then lite-01), ``moq-lite-0N`` fixes the version, ``moq-00`` is gomoqt's
dialect. The server also offers ALPN ``h3`` on the same UDP socket: those
connections speak HTTP/3 and carry WebTransport sessions, served through the
app's ASGI ``webtransport`` scope exactly as under Hypercorn (see
:mod:`moqt_asgi.webtransport.h3_server`).

The QUIC stack is aioquic unless ``quic.backend`` asks for qh3
(:mod:`moqt_asgi.transport.qh3_connection`): then the server speaks native
QUIC only (``webtransport=False``; HTTP/3 is written against aioquic), with
the same admission control, Retry, handshake deadline and ticket policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import socket
import ssl
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from aioquic.asyncio.server import QuicServer as AioquicServer
from aioquic.h3.connection import H3_ALPN
from aioquic.h3.connection import ErrorCode as H3ErrorCode
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket
from cryptography.hazmat.primitives import serialization

from ..app import MoQ
from ..engine.session import Session
from ..protocol.errors import ErrorCode, MoQError
from ..protocol.versions import Version, native_alpns, ordered
from ..serving import serve_connection, session_hook
from ..stopping import CLOSE_GRACE
from ..transport.admission import Admission, serve_guarded
from ..transport.aioquic_connection import forbid_early_data, local_address
from ..transport.quic import QuicProtocol, QuicTransport
from ..transport.settings import QuicSettings
from ..types import ASGIApp
from .certs import ANTI_AMPLIFICATION_BUDGET, CERT_CHAIN_WARN_BYTES
from .tickets import SessionTicketStore
from .tls import ServerCredentials, TLSConfig, server_tls

if TYPE_CHECKING:
    from ..webtransport.h3_server import H3ServerConnection

logger = logging.getLogger("moqt_asgi.endpoints")

class ServerProtocol(QuicProtocol):
    """A server connection that becomes native MoQ or HTTP/3 depending on the negotiated ALPN.

    ``moql`` connections behave exactly like :class:`QuicProtocol`. When the
    client negotiates ``h3`` and ``on_h3`` is given, every later event goes
    to the :class:`~moqt_asgi.webtransport.h3_server.H3ServerConnection` it
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
            forbid_early_data(self.quic)
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
                self.quic.close(error_code=H3ErrorCode.H3_INTERNAL_ERROR, reason_phrase="internal error")
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
    fresh :class:`~moqt_asgi.endpoints.tickets.SessionTicketStore` by default; share one
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
        """The certificate and TLS options (:class:`~moqt_asgi.endpoints.tls.TLSConfig`); ``certfile``/``keyfile`` fill it in."""
        self.quic = quic or QuicSettings()
        self.quic.check_limits(app.limits, log)
        self.backend = self._choose_backend(self.quic, webtransport)
        """The QUIC stack: ``"aioquic"`` or ``"qh3"`` (from ``quic.backend``; see the module docstring)."""
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
        self._server: AioquicServer | Any | None = None  # a GuardedQh3Server on qh3
        self._serving_elsewhere = False
        self._protocols: weakref.WeakSet[ServerProtocol] = weakref.WeakSet()
        self._connections: set[asyncio.Task[None]] = set()
        self._h3: weakref.WeakSet[H3ServerConnection] = weakref.WeakSet()
        self._address: tuple[str, int] | None = None
        self.tickets = tickets if tickets is not None else SessionTicketStore()
        """Session tickets this server issued (see :mod:`moqt_asgi.endpoints.tickets`)."""
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
            address = local_address(self._server) if self._server is not None else next(
                (bound for p in list(self._protocols) if (bound := local_address(p)) is not None), None)
            if address is None:
                raise MoQError("server is not started" if self._server is None and not self._serving_elsewhere
                               else "no connection has arrived yet to tell the address")
            self._address = address
        return self._address

    @staticmethod
    def _choose_backend(settings: QuicSettings, webtransport: bool) -> str:
        if settings.backend == "aioquic" or (settings.backend == "auto" and webtransport):
            return "aioquic"
        if webtransport:
            raise MoQError("QuicSettings(backend='qh3') serves native QUIC only: pass webtransport=False "
                           "(HTTP/3 and WebTransport run on aioquic)")
        return settings.resolved_backend()

    @property
    def alpn_protocols(self) -> list[str]:
        alpns = list(native_alpns(self.versions))
        return [*alpns, *H3_ALPN] if self.webtransport else alpns

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Bind ``host:port`` and serve; with ``sock``, serve on that bound UDP socket instead.

        The server owns ``sock`` from then on: :meth:`close` closes it (as Go's
        ``Serve(listener)`` does). TLS settings are read and checked first: a
        :class:`~moqt_asgi.endpoints.tls.TLSConfigError` says what is wrong.
        """
        arguments = self._serve_arguments()
        if sock is not None:
            self._check_socket(sock)
        self.admission = Admission(self.quic.admission_policy(), log=self.log)
        if self.backend == "qh3":
            from ..transport.qh3_connection import serve_guarded_qh3

            self._server = await serve_guarded_qh3(self.host, self.port, admission=self.admission, sock=sock,
                                                   **arguments)
        else:
            self._server = await serve_guarded(self.host, self.port, admission=self.admission, sock=sock,
                                               **arguments)
        self._serving_elsewhere = False
        self._address = None
        if self.webtransport:
            self.log.info("serving MoQ on moql://%s:%d and https://%s:%d (WebTransport)", *self.address, *self.address)
        else:
            self.log.info("serving MoQ on moql://%s:%d%s", *self.address, " (qh3)" if self.backend == "qh3" else "")

    def quic_configuration(self) -> QuicConfiguration:
        """The server's aioquic configuration: every ALPN it serves, the QUIC settings and TLS (checked).

        On qh3 (:attr:`backend`), qh3's ``QuicConfiguration`` with the same content.
        """
        if self.backend == "qh3":
            return self._qh3_configuration()  # type: ignore[no-any-return]
        configuration = self.quic.configuration(is_client=False, alpn=self.alpn_protocols)
        if self.webtransport and not configuration.max_datagram_frame_size:
            # HTTP/3 announces H3_DATAGRAM, which requires the transport parameter: without it
            # aioquic clients close the connection and Chromium silently drops every datagram.
            configuration.max_datagram_frame_size = 65536
        tls = server_tls(self.tls, certfile=self.certfile, keyfile=self.keyfile)
        self._check_certificate_size(tls.apply_server(configuration))
        return configuration

    def _qh3_configuration(self) -> Any:
        from ..transport.qh3_connection import server_configuration

        tls = server_tls(self.tls, certfile=self.certfile, keyfile=self.keyfile)
        if tls.cipher_suites is not None or tls.keylog_file is not None:
            raise MoQError("cipher_suites and keylog_file are not supported on qh3 yet: use backend='aioquic'")
        credentials = tls.load_server_credentials()
        self._check_certificate_size(credentials)
        chain = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in credentials.chain)
        key = credentials.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())
        return server_configuration(alpn=self.alpn_protocols, idle_timeout=self.quic.idle_timeout,
                                    max_datagram_frame_size=self.quic.max_datagram_frame_size,
                                    max_data=self.quic.max_data, max_stream_data=self.quic.max_stream_data,
                                    chain_pem=chain, key_pem=key, max_datagram_size=self.quic.max_datagram_size)

    def create_protocol(self, *args: Any, **kwargs: Any) -> Any:
        """The stack's ``create_protocol``: a connection served by this server."""
        if self.backend == "qh3":
            qh3_protocol = _qh3_server_protocol()(
                *args, on_handshake=self._on_handshake, limits=self.app.limits, early_data=self.quic.allow_0rtt,
                max_streams=self.quic.max_streams, handshake_timeout=self.quic.effective_handshake_timeout, **kwargs)
            self._protocols.add(qh3_protocol)
            return qh3_protocol
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
        credit and the handshake deadline apply to both). On qh3 (:attr:`backend`)
        they are for ``qh3.asyncio.serve``.
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
        from ..webtransport.h3_server import H3ServerConnection

        if self.draining:
            self.log.info("refusing an HTTP/3 connection: the server is shutting down")
            protocol.quic.close(error_code=H3ErrorCode.H3_NO_ERROR, reason_phrase="server is shutting down")
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

    def close(self) -> asyncio.Task[None]:
        """Stop listening and close every connection, now; returns an awaitable.

        WebTransport sessions get CLOSE_WEBTRANSPORT_SESSION (code 0, reason
        ``"server shutting down"``) before their connection closes. Awaiting
        the result waits (at most ``CLOSE_GRACE`` for a connection whose
        application ignores cancellation) until the port is free.
        """
        for connection in list(self._h3):
            with contextlib.suppress(Exception):
                connection.shutdown()
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        return asyncio.ensure_future(self._closed(set(self._connections)))

    async def _closed(self, connections: set[asyncio.Task[None]]) -> None:
        if connections:
            # A connection whose application ignores cancellation is not waited for (its session logs it).
            _, stuck = await asyncio.wait(connections, timeout=CLOSE_GRACE)
            if stuck:
                self.log.warning("%d connection(s) still stopping after %.1fs; not waiting for them", len(stuck),
                                 CLOSE_GRACE)
        await asyncio.sleep(0)  # the UDP transport closes its socket one loop step later: the port is free on return

    async def __aenter__(self) -> QuicServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()



@functools.cache
def _qh3_server_protocol() -> type[Any]:
    """:class:`ServerProtocol`'s native part on qh3 (made on first use: qh3 is optional)."""
    from ..transport.qh3_connection import Qh3Protocol

    class Qh3ServerProtocol(Qh3Protocol):
        """A native QUIC server connection on qh3: 0-RTT as the settings say, resumption reported.

        qh3's tickets always permit early data: without ``allow_0rtt`` the
        server does not resume them (:meth:`QuicServer._fetch_ticket`), so
        every handshake is a full one, and no early data is ever accepted.
        """

        def __init__(self, *args: Any, early_data: bool = True, **kwargs: Any) -> None:
            super().__init__(*args, early_start=early_data, **kwargs)

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, self.backend.handshake_completed):
                self.moq_transport.resumed = event.session_resumed
                self.moq_transport.early_data_accepted = event.early_data_accepted
            super().quic_event_received(event)

    return Qh3ServerProtocol


__all__ = ["QuicServer", "ServerProtocol"]

"""``Server``: a MoQ server configured by fields, with immediate and graceful stopping.

The shape follows gomoqt's ``moqt.Server``: set the fields, then
``await server.listen_and_serve()`` (or :meth:`Server.serve_quic_listener`
on a socket of your own, or :meth:`Server.quic_serve_arguments` for
aioquic's ``serve()``); stop it with :meth:`Server.close` (now) or
:meth:`Server.shutdown` (GOAWAY, then a grace period). Setup handlers go
in a router, which is simply a :class:`~.app.MoQ` app: :func:`handle` and
:func:`handle_func` register on :data:`default_router`, :func:`new_router`
makes another. See ``docs/server-client.md``.

By default the server also listens on TCP at its UDP port's number
(:class:`~moqt_asgi.endpoints.tcp_server.TcpServer`): HTTP/1.1 and
WebSocket, plain and TLS, for ``/certificate.sha256`` and the WebSocket
fallback of browsers and moq-rs. See ``docs/operators.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import errno
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .app import MoQ
from .endpoints.quic_server import QuicServer
from .endpoints.tcp_server import TcpServer, TcpSettings, server_ssl_context
from .endpoints.tickets import SessionTicketStore
from .endpoints.tls import TLSConfig, server_tls
from .engine.session import Session
from .protocol.errors import MoQError
from .protocol.limits import Limits
from .protocol.versions import Version, ordered
from .serving import serve_connection, session_hook
from .stopping import CLOSE_GRACE, drain, send_goaway, session_idle
from .transport.base import Connection
from .transport.settings import QuicSettings
from .types import ASGIApp, SetupHandler

logger = logging.getLogger("moqt_asgi.server")

TCP_BIND_ATTEMPTS = 8
"""With port 0: how many free UDP ports are tried before giving up on one whose TCP number is also free."""

default_router = MoQ()
"""The router a :class:`Server` uses when its ``handler`` is unset."""


def new_router(**options: object) -> MoQ:
    """A new, empty router: a :class:`MoQ` app (``options`` go to its constructor)."""
    return MoQ(**options)  # type: ignore[arg-type]


def handle(path: str, handler: SetupHandler) -> None:
    """Route setup requests for ``path`` (path parameters allowed) to ``handler`` on :data:`default_router`."""
    default_router.add_route(path, handler)


def handle_func(path: str, func: SetupHandler) -> None:
    """The same as :func:`handle` (in Python a handler is a function)."""
    default_router.add_route(path, func)


def _split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"addr must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


async def _answer(value: bool) -> bool:
    return value


class ServerClosed(MoQError):
    """The server is closed (or closing): it cannot serve again."""


@dataclass(eq=False)
class Server:
    """A MoQ server: native QUIC (``moql``, ``moq-lite-0N``, ``moq-00``) and WebTransport on one UDP port,
    HTTP/1.1 and WebSocket on TCP at the same port number.

    Configure it by its fields, then ``await listen_and_serve()`` (or use it
    as an async context manager, which starts it and closes it on exit).
    ``handler`` is the router: a :class:`MoQ` app (:data:`default_router`
    when ``None``). ``limits`` and ``versions`` default to the handler's.

    Besides its own ``addr``, a server serves on sockets given to
    :meth:`serve_quic_listener` and on connections made by aioquic's
    ``serve()`` with :meth:`quic_serve_arguments`; :attr:`sessions`,
    :meth:`close` and :meth:`shutdown` cover them all, and they share one
    session-ticket store. With ``tcp`` (the default), :meth:`start` also
    listens on TCP at the UDP port's number and serves the handler there as
    an ASGI app (``http`` and ``websocket`` scopes, plain and TLS);
    :meth:`serve_tcp` adds more TCP listeners (a metrics app, say).
    """

    addr: str = "127.0.0.1:4433"
    """``host:port`` (UDP); port 0 picks a free one (see :attr:`address`)."""
    certfile: str | None = None
    """PEM certificate chain (a shortcut for ``tls``'s field of the same name)."""
    keyfile: str | None = None
    """PEM private key (a shortcut, as ``certfile``)."""
    tls: TLSConfig | ssl.SSLContext | None = None
    """Certificate and TLS options: a :class:`~moqt_asgi.endpoints.tls.TLSConfig` (files, or ``cryptography``
    objects), or an :class:`ssl.SSLContext`, which cannot give its certificate back and so needs
    ``certfile``/``keyfile`` too. ``certfile``/``keyfile`` fill in what it leaves unset; a different
    value in both places is an error. Checked by :meth:`start`, before anything binds."""
    quic: QuicSettings = field(default_factory=QuicSettings)
    setup_timeout: float = 10.0
    limits: Limits | None = None
    versions: Sequence[Version | str] | None = None
    handler: MoQ | None = None
    logger: logging.Logger = logger
    webtransport: bool = True
    lifespan: bool = True
    """Run the handler's startup hooks on start and its shutdown hooks once stopped."""
    tcp: bool = True
    """Also listen on TCP at the UDP port's number (see :attr:`tcp_address`): HTTP/1.1 and WebSocket,
    plain and TLS told apart by the first byte."""
    tcp_settings: TcpSettings | None = None
    """Limits of the TCP listeners; by default :meth:`TcpSettings.from_quic` of ``quic`` (the same
    connection caps and header deadline)."""

    def __post_init__(self) -> None:
        self._quic_servers: list[QuicServer] = []
        self._tickets = SessionTicketStore()
        self._starting = asyncio.Lock()
        self._app: MoQ | None = None
        self._own_sessions: set[Session] = set()
        self._state = "new"  # new -> serving -> stopping -> closed
        self._done = asyncio.Event()
        self._goaway_uri: str | None = None
        self._started_lifespan = False
        self._forced = False
        self._address: tuple[str, int] | None = None
        self._tcp_servers: list[TcpServer] = []
        self._tcp_address: tuple[str, int] | None = None

    # -- configuration
    @property
    def app(self) -> MoQ:
        """The handler actually served (with ``limits`` applied when set)."""
        app = self.handler if self.handler is not None else default_router
        if self.limits is not None and self.limits is not app.limits:
            app = copy.copy(app)  # shares routes and mux; only the limits differ
            app.limits = self.limits
        return app

    def _host_port(self) -> tuple[str, int]:
        return _split_host_port(self.addr)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` of the first listener once started (kept after the server stopped).

        Under aioquic's ``serve()`` (:meth:`quic_serve_arguments`) it is known once a connection has arrived.
        """
        if self._address is None:
            unknown = MoQError("server is not started")
            for server in self._quic_servers:
                try:
                    self._address = server.address
                    break
                except MoQError as exc:
                    unknown = exc
            else:
                raise unknown
        return self._address

    @property
    def tcp_address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` of the first TCP listener (kept after the server stopped)."""
        if self._tcp_address is None:
            raise MoQError("the server has no TCP listener" if self._state != "new" else "server is not started")
        return self._tcp_address

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    @property
    def sessions(self) -> list[Session]:
        """Live sessions: those accepted by the listener and those given to :meth:`handle_connection`."""
        listed = [session for server in self._quic_servers for session in server.sessions]
        return [*listed, *(s for s in self._own_sessions if not s.closed)]

    # -- serving
    async def start(self) -> None:
        """Bind ``addr`` and start accepting connections (returns at once).

        TLS settings are read and checked first: a bad one raises
        :class:`~moqt_asgi.endpoints.tls.TLSConfigError` before anything binds.
        """
        if self._state == "serving":
            raise ServerClosed("the server was already started")
        host, port = self._host_port()

        async def listen(server: QuicServer) -> None:
            for attempt in range(1, TCP_BIND_ATTEMPTS + 1):
                await server.start()
                if not self.tcp:
                    self._watch(server)
                    return
                try:
                    await self._start_tcp(self.app_served, host, server.address[1])
                    self._watch(server)
                    return
                except OSError as exc:
                    await server.close()
                    if port != 0 or exc.errno != errno.EADDRINUSE or attempt == TCP_BIND_ATTEMPTS:
                        raise OSError(exc.errno, f"cannot listen on TCP {host}:{server.address[1]} beside the "
                                                 f"UDP port: {exc.strerror} (tcp=False serves UDP only)") from exc
                    self.logger.debug("TCP port %d is taken; trying another UDP port", server.address[1])

        await self._add_listener(listen, host=host, port=port)

    @property
    def app_served(self) -> MoQ:
        """The app this server serves (set once it started; :attr:`app` before)."""
        return self._app if self._app is not None else self.app

    def _watch(self, server: QuicServer) -> None:
        """The app's metrics export ``server``'s connection counts and refusals (``moqt_connections*``)."""
        self.app_served.metrics.watch_admission(server.admission)

    async def serve_tcp(self, addr: str, app: ASGIApp | None = None) -> tuple[str, int]:
        """Listen on TCP at ``addr`` (``host:port``; port 0 picks one) for ``app``, default the handler.

        Returns the bound address. Plain HTTP/1.1 and WebSocket, and TLS with
        the server's certificate. The listener stops with the server
        (:meth:`close`, :meth:`shutdown`). Start the server first.
        """
        if self._state != "serving":
            raise ServerClosed("the server is not serving: start it first")
        host, port = _split_host_port(addr)
        listener = await self._start_tcp(app if app is not None else self.app_served, host, port)
        return listener.address

    async def _start_tcp(self, app: ASGIApp, host: str, port: int) -> TcpServer:
        credentials = server_tls(self.tls, certfile=self.certfile, keyfile=self.keyfile).load_server_credentials()
        settings = self.tcp_settings if self.tcp_settings is not None else TcpSettings.from_quic(self.quic)
        context = contextvars.copy_context()
        context.run(session_hook.set, self._register)  # MoQ sessions over WebSocket join :attr:`sessions`
        listener = TcpServer(app, host=host, port=port, ssl=server_ssl_context(credentials), settings=settings,
                             context=context, log=self.logger)
        await listener.start()
        self._tcp_servers.append(listener)
        self._tcp_address = self._tcp_address or listener.address
        return listener

    async def serve_quic_listener(self, sock: socket.socket) -> None:
        """Serve on ``sock``, a bound UDP socket, until :meth:`close` or :meth:`shutdown` has finished.

        gomoqt's ``ServeQUICListener``. The server owns ``sock`` from this
        call on and closes it when it stops, or at once if it cannot serve
        (as Go's ``Serve(listener)`` does); pass ``sock.dup()`` to keep a
        socket of your own open. On a server already serving, ``sock`` is one
        more listener. :attr:`address` stays the first listener's.
        """
        async def listen(server: QuicServer) -> None:
            await server.start(sock=sock)
            self._watch(server)

        try:
            await self._add_listener(listen)
        except BaseException:
            sock.close()
            raise
        await self._done.wait()

    async def quic_serve_arguments(self) -> dict[str, Any]:
        """Serve through aioquic's own ``serve()``: ``await aioquic.asyncio.serve(host, port, **arguments)``.

        Starts the server without a socket of its own and returns the keyword
        arguments that make aioquic's server ours: ``configuration`` (every
        ALPN we serve, the QUIC settings and TLS), ``create_protocol``,
        ``session_ticket_fetcher`` and ``session_ticket_handler``. Its
        connections are this server's: :attr:`sessions`, :meth:`close` and
        :meth:`shutdown` cover them, and connections arriving after that are
        refused. The aioquic server and its socket are yours to close.
        """
        arguments: dict[str, Any] = {}

        async def prepare(server: QuicServer) -> None:
            arguments.update(server.serve_arguments())

        await self._add_listener(prepare)
        return arguments

    async def _add_listener(self, listen: Callable[[QuicServer], Awaitable[None]], *, host: str = "127.0.0.1",
                            port: int = 0) -> QuicServer:
        async with self._starting:
            if self._state in ("stopping", "closed"):
                raise ServerClosed("the server is closed" if self._state == "closed" else
                                   "the server is shutting down")
            tls = server_tls(self.tls, certfile=self.certfile, keyfile=self.keyfile)
            tls.load_server_credentials()  # a bad certificate or key fails here, before any startup hook
            first = self._state == "new"
            if self._app is None:
                self._app = self.app
            app = self._app
            app.offer_certificate(tls.load_server_credentials().chain[0])  # for /certificate.sha256
            server = QuicServer(app, host=host, port=port, tls=tls, quic=self.quic, setup_timeout=self.setup_timeout,
                                versions=ordered(self.versions) if self.versions is not None else None,
                                log=self.logger, webtransport=self.webtransport,
                                tickets=self._tickets)
            server.on_session = self._session_accepted
            if first and self.lifespan:
                await app.startup()
                self._started_lifespan = True
            try:
                await listen(server)
            except BaseException:
                if first:
                    await self._end_lifespan()
                raise
            self._quic_servers.append(server)
            self._state = "serving"
            return server

    async def listen_and_serve(self) -> None:
        """Start (unless started) and serve until :meth:`close` or :meth:`shutdown` has finished."""
        if self._state == "new":
            await self.start()
        elif self._state == "closed":
            raise ServerClosed("the server is closed")
        await self._done.wait()

    async def handle_connection(self, connection: Connection, *, protocol: str | None = None,
                                transport: str = "quic") -> None:
        """Serve one already-established connection (a QUIC or WebTransport :class:`Connection`) to its end.

        ``protocol`` is what the transport negotiated (ALPN or ``wt-protocol``).
        Its session joins :attr:`sessions`, so :meth:`close` and
        :meth:`shutdown` stop it too.
        """
        if self._state in ("stopping", "closed"):
            connection.close(0, "server is shutting down")
            raise ServerClosed("the server is shutting down")
        app = self.app
        versions = ordered(self.versions) if self.versions is not None else None

        await serve_connection(app, connection, transport=transport, protocol=protocol,  # type: ignore[arg-type]
                               versions=versions, setup_timeout=self.setup_timeout, log=self.logger,
                               on_session=self._register)

    def _register(self, session: Session) -> None:
        """A session served outside the QUIC listeners (a connection given to us, a WebSocket): track it."""
        self._own_sessions.add(session)

        async def forget() -> None:
            self._own_sessions.discard(session)

        session.add_cleanup(forget)
        self._session_accepted(session)

    def _session_accepted(self, session: Session) -> None:
        if self._state == "stopping" and self._goaway_uri is not None and session.features.goaway:
            session.spawn(send_goaway(session, self._goaway_uri, self.logger), "goaway")

    # -- stopping
    def close(self) -> asyncio.Task[bool]:
        """Close every session now (code 0, no error) and the listener.

        Acts at once and returns an awaitable; awaiting it waits until the
        server has stopped and gives True if this call closed the server,
        False (and a log line) if it was already closed or closing. A
        :meth:`shutdown` in progress is cut short: its sessions close at once.
        """
        if self._state == "closed":
            self.logger.info("server already closed")
            return asyncio.ensure_future(_answer(False))
        already_stopping = self._state == "stopping"
        self._state = "stopping"
        self._forced = True
        for server in self._quic_servers:
            server.draining = True
        for listener in self._tcp_servers:
            listener.drain()
        for session in self.sessions:
            session.close(0, "server closed")
        return asyncio.ensure_future(self._closed_after(already_stopping))

    async def _closed_after(self, already_stopping: bool) -> bool:
        if already_stopping:
            self.logger.info("server is already shutting down; its sessions were closed now")
            await self._done.wait()
            return False
        await self._finish()
        return True

    async def shutdown(self, timeout: float = 5.0, *, uri: str = "") -> bool:
        """Stop gracefully: refuse new connections, GOAWAY, wait, then close what is left.

        * Sessions on lite-04+ get GOAWAY (with ``uri`` as the new-session
          address, if given) and ``timeout`` seconds to leave.
        * Older sessions (no GOAWAY in their version) are closed with code 0
          as soon as they are idle (:func:`session_idle`).
        * At the deadline every remaining session is closed with the
          GOAWAY-timeout code (0x10 for moq-rs and gomoqt), then the listener.

        Returns True if every session ended before the deadline; False if
        some had to be closed, or if the server was already stopping (logged).
        """
        if self._state in ("stopping", "closed"):
            self.logger.info("server is already %s", "closed" if self._state == "closed" else "shutting down")
            if self._state == "stopping":
                await self._done.wait()
            return False
        self._state = "stopping"
        self._goaway_uri = uri
        deadline = asyncio.get_running_loop().time() + timeout
        started = time.monotonic()
        for server in self._quic_servers:
            server.draining = True
        for listener in self._tcp_servers:
            listener.drain()  # no new TCP connections; requests in flight finish, WebSockets go on
        sessions = self.sessions
        old = set()
        sends = []
        for session in sessions:
            if session.features.goaway:
                sends.append(send_goaway(session, uri, self.logger))
            else:
                old.add(session)
        await asyncio.gather(*sends)
        clean = True
        while True:  # sessions accepted while we wait (setups in flight) get the same treatment
            clean = await drain(sessions, deadline, self.logger, close_when_idle=old) and clean
            late = [s for s in self.sessions if s not in sessions]
            if not late or self._state != "stopping":
                break
            sessions = late
            old = {s for s in late if not s.features.goaway}
        for listener in list(self._tcp_servers):  # HTTP requests in flight finish within the same deadline
            remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
            if not await listener.wait_requests(remaining):
                self.logger.info("HTTP requests still in flight after the grace period; closing them")
                clean = False
        clean = clean and not self._forced
        self.logger.info("shutdown %s after %.2fs", "finished" if clean else "forced", time.monotonic() - started)
        await self._finish()
        return clean

    async def _finish(self) -> None:
        servers, self._quic_servers = self._quic_servers, []
        listeners, self._tcp_servers = self._tcp_servers, []
        try:
            closing = [listener.close() for listener in listeners]
            for server in servers:
                with contextlib.suppress(MoQError):
                    self._address = self._address or server.address
                server.draining = True  # under aioquic's serve(), later connections are refused
                await server.close()
            own = list(self._own_sessions)
            for session in own:
                session.close(0, "server closed")
            if own:
                await asyncio.wait([asyncio.ensure_future(s.wait_closed()) for s in own], timeout=CLOSE_GRACE)
            if closing:
                await asyncio.gather(*closing, return_exceptions=True)
        finally:
            await self._end_lifespan()
            self._state = "closed"
            self._done.set()

    async def _end_lifespan(self) -> None:
        if self._started_lifespan:
            self._started_lifespan = False
            try:
                await (self._app or self.app).shutdown()
            except Exception:
                self.logger.exception("shutdown hook failed")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state != "closed":
            await self.close()


__all__ = ["Server", "ServerClosed", "default_router", "drain", "handle", "handle_func", "new_router",
           "session_idle"]

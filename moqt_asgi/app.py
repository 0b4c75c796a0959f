"""The application object: ``moq = MoQ(...)``.

It holds the setup-handler route table and the default :class:`TrackMux`,
and is an ASGI 3 application: lifespan events run its startup and shutdown
hooks, and scopes it does not serve go to an optional inner ASGI app. The
native-QUIC entrypoint (``python -m moqt_asgi serve``) uses the same object.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from .auth.tokens import Authenticator, AuthError, Grant
from .engine.mux import TrackMux
from .http import CertificateSource, HttpEndpointHandler, HttpEndpoints, certificate_sha256
from .load import LoadMonitor
from .metrics import AppMetrics, note_refusal, serve_metrics
from .protocol.limits import DEFAULT_LIMITS, Limits
from .protocol.versions import ALPN_LITE, DEFAULT_VERSIONS, Version, choose_alpn, ordered, protocols_for
from .request import SetupRequest
from .routing import OriginCheck, Route, origin_allowed
from .serving import serve_connection, session_hook
from .stopping import stop_on_shutdown
from .types import ASGIApp, Message, Receive, Scope, Send, SetupHandler
from .websocket.asgi import serve_websocket

logger = logging.getLogger("moqt_asgi.app")

Hook = Callable[[], Awaitable[None]]
Lifespan = Callable[["MoQ"], AbstractAsyncContextManager[Any]]
"""``lifespan(app)``, an async context manager: set up before the first session, torn down after the last."""


async def accept_all(request: SetupRequest) -> None:
    """Setup handler that accepts every session with the app's mux."""
    await request.accept()


class MoQ:
    """A MoQ application: setup routes, a track mux, lifespan hooks.

    With no routes registered, every session is accepted with :attr:`mux`.
    Unknown paths are rejected with 404 once any route exists.
    """

    def __init__(self, *, routes: Sequence[Route] = (), mux: TrackMux | None = None,
                 allow_origins: OriginCheck = None, app: ASGIApp | None = None,
                 on_startup: Sequence[Hook] = (), on_shutdown: Sequence[Hook] = (),
                 limits: Limits = DEFAULT_LIMITS, versions: Sequence[Version | str] = DEFAULT_VERSIONS,
                 goaway_uri: str = "", auth: Authenticator | None = None, require_origin: bool = False,
                 max_sessions: int | None = None, max_sessions_per_address: int | None = None,
                 setup_handler_timeout: float = 10.0, lifespan: Lifespan | None = None,
                 http_endpoints: bool | HttpEndpoints = True, metrics_path: str | None = None,
                 certificate: CertificateSource | None = None, max_loop_lag: float | None = None,
                 load_monitor: LoadMonitor | None = None) -> None:
        self.routes: list[Route] = list(routes)
        self.versions: tuple[Version, ...] = ordered(versions)
        """The versions sessions may use, preferred first (restrict it to force one)."""
        if not self.versions:
            raise ValueError("an app needs at least one version")
        self.mux = mux if mux is not None else TrackMux()
        self.allow_origins = allow_origins
        self.app = app
        self.limits = limits
        self.lifespan = lifespan
        """``lifespan(app)``: an async context manager entered at startup and left at shutdown (Starlette's
        ``lifespan=``); what it yields, if a mapping, becomes :attr:`state`."""
        self.state: dict[str, Any] = {}
        """What the lifespan context yielded (a mapping), for the application's own use."""
        self._lifespan_stack: contextlib.AsyncExitStack | None = None
        self.on_startup: list[Hook] = list(on_startup)
        """Older form of :attr:`lifespan`: coroutines run at startup, before the lifespan context."""
        self.on_shutdown: list[Hook] = list(on_shutdown)
        """Older form: coroutines run at shutdown, after the lifespan context is left."""
        self.goaway_uri = goaway_uri
        """Where GOAWAY sends WebTransport clients when the ASGI server stops (``""``: nowhere in particular)."""
        self.auth = auth
        """Decides each session's :class:`~moqt_asgi.auth.Grant` from its path and ``?jwt=`` token
        (refused with 401/403 otherwise); ``None``: every session may publish and read anything."""
        self.require_origin = require_origin
        """Refuse (403) sessions that send no ``Origin``. Origin checks protect browsers from other
        sites' pages; they are not access control (native QUIC and non-browser clients send none)."""
        self.max_sessions = max_sessions
        """Most sessions at once, setups included (``None``: no limit); more are refused (503)."""
        self.max_sessions_per_address = max_sessions_per_address
        """Most sessions at once from one IP address (``None``: no limit)."""
        self.setup_handler_timeout = setup_handler_timeout
        """Seconds a setup handler has to accept or reject; then the session is refused (408, ``TIMEOUT``)."""
        self.load_monitor = load_monitor if load_monitor is not None else (
            LoadMonitor(max_loop_lag) if max_loop_lag is not None else None)
        """Admission by measured load: while it says the process is overloaded, new sessions are refused
        (503, with a :class:`~moqt_asgi.load.Overloaded` text) and admitted ones keep going.
        ``MoQ(max_loop_lag=0.1)`` refuses while the event loop runs a smoothed 100 ms late (see
        :mod:`moqt_asgi.load`); pass ``load_monitor=`` for other settings (a CPU-share threshold, the
        interval, the hysteresis). ``None`` (the default): off."""
        self._sessions = 0
        self._per_address: dict[str, int] = {}
        self.http_endpoints = HttpEndpoints.of(http_endpoints)
        """The HTTP endpoints the app answers itself (``/certificate.sha256``, ``/health``, ``/announced``,
        ``/fetch``; see :mod:`moqt_asgi.http`); ``MoQ(http_endpoints=False)`` passes every request on."""
        self.metrics_path = metrics_path
        """Where the app serves its Prometheus metrics itself (``None``, the default: nowhere). Keep it internal;
        :func:`moqt_asgi.metrics.metrics_app` serves them on a listener of their own instead."""
        self.metrics = AppMetrics()
        """Counted at session start, end and refusal (see :mod:`moqt_asgi.metrics`)."""
        self._certificate_sha256: str | None = None
        self._certificate_explicit = False
        self._http = HttpEndpointHandler(self, self.http_endpoints, on_response=self.metrics.http_response)
        if certificate is not None:
            self.set_certificate(certificate)

    # -- the server's certificate
    def set_certificate(self, certificate: CertificateSource) -> None:
        """The certificate the app's QUIC/WebTransport server presents, for ``/certificate.sha256``.

        PEM or DER bytes, PEM text, a PEM or DER file's path, or an ``x509.Certificate``;
        of a chain, the first (leaf) certificate. Raises :class:`ValueError`
        for anything else. ``python -m moqt_asgi serve`` and Hypercorn (with
        ``--certfile``) tell the app by themselves; a certificate set here wins.
        """
        self._certificate_sha256 = certificate_sha256(certificate)
        self._certificate_explicit = True

    def offer_certificate(self, certificate: CertificateSource) -> None:
        """A server says which certificate it presents: kept unless :meth:`set_certificate` chose one."""
        digest = certificate_sha256(certificate)
        if self._certificate_explicit:
            if digest != self._certificate_sha256:
                logger.warning("the server presents certificate sha256=%s, not the one set on the app (%s); "
                               "/certificate.sha256 serves the one set", digest, self._certificate_sha256)
            return
        self._certificate_sha256 = digest

    @property
    def certificate_sha256(self) -> str | None:
        """Lowercase hex SHA-256 of the server certificate's DER, or ``None`` while unknown."""
        return self._certificate_sha256

    # -- registration
    def add_route(self, path: str, handler: SetupHandler, *, allow_origins: OriginCheck = None,
                  name: str | None = None) -> Route:
        route = Route(path, handler, allow_origins=allow_origins, name=name)
        self.routes.append(route)
        return route

    def route(self, path: str, *, allow_origins: OriginCheck = None,
              name: str | None = None) -> Callable[[SetupHandler], SetupHandler]:
        """Decorator: register a setup handler for ``path`` (adds to :attr:`routes`)."""
        def register(handler: SetupHandler) -> SetupHandler:
            self.add_route(path, handler, allow_origins=allow_origins, name=name)
            return handler
        return register

    def on_event(self, event: str) -> Callable[[Hook], Hook]:
        """Decorator for ``"startup"`` / ``"shutdown"`` hooks (the older form of ``lifespan=``)."""
        def register(hook: Hook) -> Hook:
            {"startup": self.on_startup, "shutdown": self.on_shutdown}[event].append(hook)
            return hook
        return register

    # -- lifespan
    async def startup(self) -> None:
        """Run the startup hooks, then enter the lifespan context (servers and ASGI lifespan call this)."""
        for hook in self.on_startup:
            await hook()
        if self.lifespan is not None and self._lifespan_stack is None:
            stack = contextlib.AsyncExitStack()
            state = await stack.enter_async_context(self.lifespan(self))
            self._lifespan_stack = stack
            if isinstance(state, Mapping):
                self.state.update(state)

    async def shutdown(self) -> None:
        """Leave the lifespan context, then run the shutdown hooks."""
        stack, self._lifespan_stack = self._lifespan_stack, None
        if stack is not None:
            await stack.aclose()
        for hook in self.on_shutdown:
            await hook()

    # -- admission
    def admit(self, client: tuple[str, int] | None) -> str | None:
        """Count a new session from ``client``; the reason it is refused, or ``None`` (then :meth:`release` it).

        Refused at :attr:`max_sessions`, at :attr:`max_sessions_per_address`, and while
        :attr:`load_monitor` says the process is overloaded (a :class:`~moqt_asgi.load.Overloaded` text).
        """
        address = client[0] if client else ""
        if self.max_sessions is not None and self._sessions >= self.max_sessions:
            return f"server is at its limit of {self.max_sessions} sessions"
        held = self._per_address.get(address, 0)
        if address and self.max_sessions_per_address is not None and held >= self.max_sessions_per_address:
            return f"{address} holds {held} sessions already (the limit per address)"
        if self.load_monitor is not None:
            self.load_monitor.ensure_running()
            overloaded = self.load_monitor.refusal()
            if overloaded is not None:
                return overloaded
        self._sessions += 1
        self._per_address[address] = held + 1
        return None

    def release(self, client: tuple[str, int] | None) -> None:
        """A session counted by :meth:`admit` has ended."""
        address = client[0] if client else ""
        self._sessions = max(0, self._sessions - 1)
        left = self._per_address.get(address, 0) - 1
        if left > 0:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    @property
    def session_count(self) -> int:
        """Sessions admitted and not yet ended (setups in progress included)."""
        return self._sessions

    def check_access(self, path: str, query: str, origin: str | None) -> tuple[int, str, Grant | None]:
        """The app-wide checks of a session request: ``(status, reason, grant)``, status 0 when it may go on.

        Origin (403), then :attr:`auth` (401/403). Route checks come after.
        """
        if self.require_origin and origin is None:
            return 403, "an Origin header is required", None
        if not origin_allowed(self.allow_origins, origin):
            return 403, f"origin {origin!r} not allowed", None
        if self.auth is None:
            return 0, "", None
        try:
            return 0, "", self.auth.authorize(path, query)
        except AuthError as exc:
            return exc.status, exc.message, None

    # -- setup dispatch
    def resolve(self, path: str) -> tuple[Route | None, dict[str, Any]]:
        for route in self.routes:
            params = route.match(path)
            if params is not None:
                return route, params
        return None, {}

    async def handle_setup(self, request: SetupRequest) -> None:
        """Route ``request`` to its handler; make sure it ends accepted or rejected."""
        request.default_mux = self.mux
        status, reason, grant = self.check_access(request.path, request.query, request.origin)
        if status:
            logger.info("session for %r refused (%d): %s", request.path, status, reason)
            await request.reject(status, reason)
            return
        if grant is not None:
            request.grant = grant
        if self.routes:
            route, request.path_params = self.resolve(request.path)
            if route is None:
                logger.info("no route for session path %r", request.path)
                await request.reject(404, "no such path")
                return
            if not origin_allowed(route.allow_origins, request.origin):
                logger.info("origin %r not allowed for %s", request.origin, route.path)
                await request.reject(403, "origin not allowed")
                return
            handler = route.handler
        else:
            handler = accept_all
        try:
            await handler(request)
        except Exception:
            logger.exception("setup handler for %r failed", request.path)
            if not request.decided:
                await request.reject(500, "setup handler failed")
            raise
        if not request.decided:
            logger.error("setup handler for %r returned without accepting or rejecting", request.path)
            await request.reject(500, "setup handler did not decide")

    # -- ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "webtransport":
            await self._webtransport(scope, receive, send)
        elif scope["type"] == "websocket":  # MoQ over WebSocket (qmux or the legacy framing)
            await serve_websocket(self, scope, receive, send)
        elif scope["type"] == "http" and await self._http_endpoint(scope, receive, send):
            return
        elif self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"Not Found"})
        else:
            raise RuntimeError(f"unsupported ASGI scope type {scope['type']!r}")

    async def _http_endpoint(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the metrics path and the HTTP endpoints; ``False`` for any other request."""
        if self.metrics_path is not None and scope.get("path") == self.metrics_path:
            await serve_metrics(self, scope, send)
            return True
        return await self._http(scope, receive, send)

    async def _webtransport(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebTransport session: origin and route checks in HTTP, then MoQ over the session.

        Refusals happen before any MoQ byte, as the HTTP answer to the
        CONNECT: 403 for a disallowed origin, 404 for a path no route
        matches. The MoQ setup then arrives on the first bidi stream; its
        request carries the CONNECT's path, query and headers.

        When the server says it is stopping (the session's ``on_shutdown``),
        the MoQ session is stopped as :meth:`Server.shutdown <moqt_asgi.server.Server.shutdown>`
        would: GOAWAY (to :attr:`goaway_uri`) on lite-04+, a close once idle
        on older versions, the GOAWAY-timeout close at the deadline.
        """
        message = await receive()
        if message["type"] != "webtransport.connect":
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        origin = headers.get("origin")
        path = scope.get("path") or "/"
        query = scope.get("query_string", b"").decode("latin-1")
        status, reason, _ = self.check_access(path, query, origin)
        if status:
            logger.info("WebTransport session for %r refused (%d): %s", path, status, reason)
        elif self.routes:
            route, _ = self.resolve(path)
            if route is None:
                logger.info("no route for WebTransport path %r", path)
                status = 404
            elif not origin_allowed(route.allow_origins, origin):
                logger.info("WebTransport origin %r not allowed for %s", origin, route.path)
                status, reason = 403, "origin not allowed"
        connection = scope.get("extensions", {}).get("moqt.connection", {}).get("connection")
        if not status and connection is None:
            logger.error("the server offers no moqt.connection extension; cannot run MoQ on this session")
            status = 501
        if status:
            self._refused_connect(status, reason if status in (401, 403) else "", scope)
            await send({"type": "webtransport.close", "status": status})
            return
        accept: Message = {"type": "webtransport.accept"}
        offered = list(scope.get("subprotocols", ()))
        protocol = choose_alpn(offered, protocols_for(self.versions)) if offered else None
        if offered and protocol is None:
            logger.info("WebTransport client offered no protocol we speak: %s", ", ".join(offered))
            self._refused_connect(400, "", scope, reason="version")
            await send({"type": "webtransport.close", "status": 400})
            return
        if protocol is not None:
            accept["subprotocol"] = protocol  # the wt-protocol response header
        await send(accept)
        target = f"{path}?{query}" if query else path
        stopper = stop_on_shutdown(getattr(connection, "on_shutdown", None), uri=self.goaway_uri,
                                   then=session_hook.get())
        await serve_connection(self, connection, transport="webtransport", target=target, headers=headers,
                               protocol=None if protocol == ALPN_LITE else protocol, on_session=stopper)

    def _refused_connect(self, status: int, text: str, scope: Scope, *, reason: str | None = None) -> None:
        """Count and log a WebTransport CONNECT refused before any MoQ byte."""
        client = scope.get("client")
        note_refusal(self, status, text, transport="webtransport", path=scope.get("path") or "/",
                     client=(client[0], client[1]) if client else None, reason=reason)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

"""Serving one connection: setup, the app's decision, the session's life.

Transport-independent: the native QUIC server and the in-memory pair call
:func:`serve_connection`; so will the WebTransport entrypoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import Awaitable, Mapping
from urllib.parse import unquote

from .auth.tokens import Grant
from .engine.handshake import (
    SessionStream,
    SetupOffer,
    read_client_setup,
    read_lite_setup,
    reject_setup,
    send_lite_setup,
    send_server_setup,
)
from .engine.mux import TrackMux
from .engine.session import STOP_TIMEOUT, Session, abandon_after
from .load import Overloaded
from .metrics import AppMetrics, MeasuredApp, log_fields, refusal_reason, session_log
from .protocol.codes import GOMOQT_SETUP_CODES, SCOPED_CODES
from .protocol.errors import ErrorCode, ProtocolError, SessionClosed, StreamError
from .protocol.limits import Limits
from .protocol.messages import LiteSetup
from .protocol.setup import SetupFraming
from .protocol.versions import (
    ALPN_GOMOQT,
    GOMOQT_DIALECT,
    Version,
    choose_version,
    ordered,
    setup_versions,
    version_by_alpn,
    version_name,
)
from .request import Acceptor, SetupRequest, Transport, status_to_code
from .transport.base import Connection
from .types import SessionHook, SetupApp

logger = logging.getLogger("moqt_asgi.server")

session_hook: contextvars.ContextVar[SessionHook | None] = contextvars.ContextVar("moqt_session_hook", default=None)
"""Called with every session :func:`serve_connection` accepts in this context.

A server sets it for the tasks it runs (native connections and ASGI
``webtransport`` scopes alike) to keep a registry of live sessions; an
explicit ``on_session`` argument takes precedence.
"""


async def serve_connection(app: SetupApp, connection: Connection, *, transport: Transport = "quic",
                           protocol: str | None = None, versions: tuple[Version, ...] | None = None,
                           setup_timeout: float = 10.0, log: logging.Logger = logger, target: str | None = None,
                           headers: Mapping[str, str] | None = None, on_session: SessionHook | None = None) -> None:
    """Run one connection from setup to close. Never raises for peer misbehaviour.

    ``protocol`` is what the transport negotiated: the ALPN on native QUIC,
    the ``wt-protocol`` we answered on WebTransport (``None`` if none). A
    ``moq-lite-0N`` protocol fixes the version; ``moql`` (or none) means a
    SETUP exchange on the first bidi stream; ``moq-00`` means gomoqt's
    dialect (an IETF ``0x20`` setup there is refused with a version error).
    ``versions`` (default: the app's) restricts what may be chosen.

    ``target`` (``/path?query``) and ``headers`` come from the transport when
    it has them (WebTransport's CONNECT); the request then uses them instead
    of the setup's path, and ``headers["origin"]`` as its origin.

    ``on_session`` (default: the :data:`session_hook` of this context) is
    called with the session as soon as it is accepted and running.

    Each session start, end and refusal is logged as one ``key=value`` line
    on ``moqt_asgi.sessions`` and counted in the app's
    :class:`~moqt_asgi.metrics.AppMetrics` (when it keeps them).
    """
    started = time.monotonic()
    hook = on_session if on_session is not None else session_hook.get()
    metrics = app.metrics if isinstance(app, MeasuredApp) else None
    refused = _Refusals(metrics, transport, connection.peer_address)
    versions = ordered(versions if versions is not None else app.versions)
    fixed = version_by_alpn(protocol)
    try:
        if fixed is not None:
            start = await _start_fixed(connection, fixed, versions, app, setup_timeout, log)
        else:
            start = await _start_negotiated(connection, protocol, versions, app, setup_timeout, log)
    except TimeoutError:
        log.info("no session setup within %.1fs; closing", setup_timeout)
        refused("setup_timeout")
        connection.close(ErrorCode.TIMEOUT, "setup timeout")
        return
    except ProtocolError as exc:
        log.info("bad session setup: %s", exc)
        refused("version" if exc.code == ErrorCode.VERSION else "protocol")
        connection.close(exc.code, exc.message[:100])
        return
    except (SessionClosed, StreamError) as exc:
        log.debug("connection ended during setup: %s", exc)
        connection.close(ErrorCode.CANCEL)
        return
    if start is None:
        refused("version")
        return
    if target is not None:
        path_target = target
        if start.peer_setup is not None and start.peer_setup.path is not None:
            # the CONNECT's path is the session's; a second one in SETUP is ignored, and not passed on
            start.peer_setup = dataclasses.replace(start.peer_setup, path=None)
    else:  # the SETUP's path: percent-decoded as an ASGI server decodes a request path
        raw_path, mark, query = (start.path or "").partition("?")
        path_target = unquote(raw_path) + mark + query
    decision = _Decision(start, log, transport, hook, metrics=metrics, started=started, refused=refused)
    request = SetupRequest.from_target(path_target, client=connection.peer_address, versions=start.offered,
                                       transport=transport, headers=dict(headers or {}),
                                       origin=(headers or {}).get("origin"),
                                       early_data=bool(getattr(connection, "started_early", False)),
                                       acceptor=Acceptor(decision.accept, decision.reject))
    refusal = app.admit(request.client)
    if refusal is not None:
        log.warning("session refused (%s) from %s", refusal, request.client)
        refused(refusal.reason if isinstance(refusal, Overloaded) else "admission", status=503, path=request.path)
        start.reject(status_to_code(503), refusal)
        return
    try:
        await decision.run(app, request)
    finally:
        app.release(request.client)
        connection.close(ErrorCode.CANCEL)


def _client_text(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None


class _Refusals:
    """Counts and logs the refusals of one connection (one line on ``moqt_asgi.sessions`` each)."""

    def __init__(self, metrics: AppMetrics | None, transport: str, client: tuple[str, int] | None) -> None:
        self.metrics = metrics
        self.transport = transport
        self.client = client

    def __call__(self, reason: str, *, status: int | None = None, path: str | None = None) -> None:
        if self.metrics is not None:
            self.metrics.session_refused(reason)
        session_log.info("session refused %s", log_fields(reason=reason, status=status, transport=self.transport,
                                                          path=path, client=_client_text(self.client)))


class _Decision:
    """The application's decision on one setup request, and the session it accepts."""

    def __init__(self, start: _Start, log: logging.Logger, transport: str, hook: SessionHook | None, *,
                 metrics: AppMetrics | None = None, started: float | None = None,
                 refused: _Refusals | None = None) -> None:
        self.start = start
        self.log = log
        self.transport = transport
        self.hook = hook
        self.metrics = metrics
        self.started = started if started is not None else time.monotonic()
        self.refused = refused
        self.accepted_at: float | None = None
        self.session: Session | None = None
        self.decided = asyncio.Event()

    async def accept(self, request: SetupRequest, mux: TrackMux) -> Session:
        session = await self.start.accept(mux, request.path, request.grant)
        self.session = session
        self.decided.set()
        if self.hook is not None:
            try:
                self.hook(session)
            except Exception:
                self.log.exception("session hook failed")
        self.log.info("session accepted: %s over %s path=%r from %s", session.version_name, self.transport,
                      request.path, request.client)
        self.accepted_at = time.monotonic()
        setup = self.accepted_at - self.started
        if self.metrics is not None:
            self.metrics.session_started(session, self.transport, setup)
        session_log.info("session start %s", log_fields(
            transport=self.transport, version=session.version_name, path=request.path,
            client=_client_text(request.client), setup_ms=f"{setup * 1000:.1f}"))
        return session

    def ended(self, request: SetupRequest) -> None:
        """The accepted session is over: count it and log its end."""
        session = self.session
        if session is None:
            return
        if self.metrics is not None:
            self.metrics.session_ended(session)
        reason = session.close_reason
        lasted = time.monotonic() - (self.accepted_at if self.accepted_at is not None else self.started)
        session_log.info("session end %s", log_fields(
            transport=self.transport, version=session.version_name, path=request.path,
            client=_client_text(request.client), duration_s=f"{lasted:.3f}",
            code=reason.code if reason is not None else 0, remote=reason.remote if reason is not None else False))

    async def reject(self, request: SetupRequest, status: int, reason: str) -> None:
        self.log.info("session rejected with %d (%s) path=%r", status, reason, request.path)
        if self.refused is not None:
            self.refused(refusal_reason(status, reason), status=status, path=request.path)
        self.start.reject(status_to_code(status), reason)
        self.decided.set()

    async def run(self, app: SetupApp, request: SetupRequest) -> None:
        """Hand ``request`` to the app, then serve the session it accepts until it closes.

        The handler has ``app.setup_handler_timeout`` seconds to decide (then
        the session is refused with ``TIMEOUT``), and is cancelled if the
        connection goes first. A handler that ignores cancellation is
        abandoned (logged).
        """
        log = self.log
        handler = asyncio.ensure_future(app.handle_setup(request))
        handler.add_done_callback(lambda _: self.decided.set())
        try:
            outcome = await _first(self.decided.wait(), self.start.connection.wait_closed(),
                                   timeout=app.setup_handler_timeout)
            if outcome is None and not request.decided:
                log.warning("setup handler for %r did not decide within %.1fs; refusing the session", request.path,
                            app.setup_handler_timeout)
                with contextlib.suppress(Exception):
                    await request.reject(408, "setup handler timeout")
            elif outcome == 1 and self.session is None:
                log.info("connection ended before the setup handler for %r decided", request.path)
            if self.session is not None:
                await self.session.wait_closed()
        finally:
            try:
                if not handler.done():
                    handler.cancel()
                await abandon_after(handler, STOP_TIMEOUT, f"setup handler for {request.path!r}", log)
                if self.session is not None:
                    await self.session.aclose()
            finally:
                self.ended(request)  # counted as ended even when cancelled while closing


async def _first(*aws: Awaitable[object], timeout: float) -> int | None:
    """Index of the first of ``aws`` to finish, or ``None`` after ``timeout`` seconds; the rest are cancelled."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    for index, task in enumerate(tasks):
        if task in done:
            return index
    return None


class _Start:
    """A connection whose version is known, waiting for the application's decision."""

    def __init__(self, connection: Connection, version: Version, limits: Limits, timeout: float, log: logging.Logger,
                 *, offer: SetupOffer | None = None, path: str | None = None,
                 peer_setup: LiteSetup | None = None) -> None:
        self.connection = connection
        self.version = version
        self.limits = limits
        self.timeout = timeout
        self.log = log
        self.offer = offer
        self.path = path
        self.peer_setup = peer_setup
        self.offered: tuple[int, ...] = offer.setup.versions if offer is not None else (version.number,)
        connection.error_codes = version.codec.error_codes

    async def accept(self, mux: TrackMux, path: str, grant: Grant | None = None) -> Session:
        if self.offer is not None:
            codec = send_server_setup(self.offer, self.version, self.limits)
            stream: SessionStream | None = (self.offer.stream, self.offer.reader)
        else:
            codec = self.version.new_codec(self.limits)
            stream = None
            if self.version.uni_setup:
                await send_lite_setup(self.connection, codec, LiteSetup())
        session = Session(self.connection, codec, mux=mux, limits=self.limits, is_client=False, path=path,
                          session_stream=stream, logger_=self.log, timeout=self.timeout)
        session.peer_setup = self.peer_setup
        session.grant = grant
        session.start()
        await session.wait_started()  # running: the handler may spawn into it at once
        return session

    def reject(self, code: int, reason: str) -> None:
        if self.offer is not None:
            reject_setup(self.offer, code)
        self.connection.close(code, reason[:100])


async def _start_fixed(connection: Connection, version: Version, versions: tuple[Version, ...], app: SetupApp,
                       timeout: float, log: logging.Logger) -> _Start | None:
    """lite-03+: the ALPN chose the version; 05+ also read the client's SETUP (its path, on native QUIC)."""
    connection.error_codes = version.codec.error_codes  # the ALPN fixed the dialect: a refused SETUP speaks it too
    if version not in versions:
        raise ProtocolError(ErrorCode.VERSION, f"{version.name} is not enabled on this server")
    path = None
    peer = None
    if version.uni_setup:
        async with asyncio.timeout(timeout):
            peer = await read_lite_setup(connection, version.new_codec(app.limits), app.limits)
        path = peer.path
    return _Start(connection, version, app.limits, timeout, log, path=path, peer_setup=peer)


async def _start_negotiated(connection: Connection, protocol: str | None, versions: tuple[Version, ...], app: SetupApp,
                            timeout: float, log: logging.Logger) -> _Start | None:
    """A SETUP exchange on the first bidi stream: lite-01/02 (``moql``) or gomoqt (``moq-00``).

    Setup failures close with moq-rs's scoped codes (as the lite session itself
    does), on ``moq-00`` with gomoqt's session codes, except an IETF ``0x20``
    setup, refused in IETF numbering (0x15, version negotiation failed).
    """
    connection.error_codes = GOMOQT_SETUP_CODES if protocol == ALPN_GOMOQT else SCOPED_CODES
    async with asyncio.timeout(timeout):
        offer = await read_client_setup(connection, app.limits)
    candidates = setup_versions(versions)
    if protocol == ALPN_GOMOQT:
        if offer.framing is SetupFraming.COMPAT:
            connection.error_codes = SCOPED_CODES
            _refuse(connection, offer, "IETF moq-transport (a 0x20 setup on moq-00) is not supported; "
                                       "speak moq-lite or gomoqt's dialect", log)
            return None
        candidates = tuple(v for v in candidates if v is GOMOQT_DIALECT)
    elif offer.framing is SetupFraming.COMPAT:
        candidates = tuple(v for v in candidates if v is not GOMOQT_DIALECT)
    version = choose_version(offer.setup.versions, candidates)
    if version is None:
        if offer.framing is SetupFraming.LEGACY and GOMOQT_DIALECT.number in offer.setup.versions:
            connection.error_codes = GOMOQT_SETUP_CODES  # gomoqt over WebTransport
        offered = ", ".join(version_name(v) for v in offer.setup.versions)
        _refuse(connection, offer, f"no common version; peer offered {offered}", log)
        return None
    start = _Start(connection, version, app.limits, timeout, log, offer=offer, path=offer.path)
    if version is GOMOQT_DIALECT:
        connection.error_codes = GOMOQT_SETUP_CODES  # until the session starts (a rejection resets its stream)
    return start


def _refuse(connection: Connection, offer: SetupOffer, reason: str, log: logging.Logger) -> None:
    log.info("refusing session: %s", reason)
    reject_setup(offer, ErrorCode.VERSION)
    connection.close(ErrorCode.VERSION, reason[:100])

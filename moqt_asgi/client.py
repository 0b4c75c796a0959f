"""One client entry point for every transport: ``dial(url)`` → a running MoQ :class:`Session`.

``moql://`` and ``moqt://`` dial native QUIC (:func:`~moqt_asgi.endpoints.dial_quic`);
``https://`` dials WebTransport over HTTP/3
(:func:`~moqt_asgi.endpoints.dial_webtransport.dial_webtransport`), and falls
back to a WebSocket at the same address when QUIC does not answer first, as
the official clients do; ``ws://`` and ``wss://`` dial MoQ over WebSocket
(:func:`~moqt_asgi.websocket.client.dial_websocket`). All take the
same TLS options: the ``fingerprint``/``cafile``/``insecure`` shortcuts, and
``tls`` (a :class:`~moqt_asgi.endpoints.tls.TLSConfig` or an :class:`ssl.SSLContext`)
for everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .endpoints.dial_quic import dial_quic
from .endpoints.dial_webtransport import dial_webtransport
from .endpoints.settings import NATIVE_SCHEMES, parse_url
from .endpoints.tickets import ClientTicketStore
from .endpoints.tls import TLSConfig
from .engine.mux import TrackMux
from .engine.session import Session
from .protocol.errors import MoQError, SessionClosed
from .protocol.limits import DEFAULT_LIMITS, Limits
from .protocol.versions import DEFAULT_VERSIONS, Version, ordered
from .stopping import drain, send_goaway
from .transport.settings import QuicSettings
from .websocket.client import dial_websocket

logger = logging.getLogger("moqt_asgi.client")

SCHEMES = (*NATIVE_SCHEMES, "https", "ws", "wss")
WEBSOCKET_SCHEMES = ("ws", "wss")
WEBSOCKET_DELAY = 0.5
"""Seconds WebTransport has to itself before the WebSocket fallback starts (@moq/net's head start)."""

_websocket_won: set[tuple[str | None, int | None]] = set()
"""Host and port where the WebSocket won a race in this process: the next race starts it at once."""


def websocket_url(url: str) -> str:
    """The WebSocket URL of an ``https://`` (or ``http://``) URL: same host, port, path and query."""
    parts = urlsplit(url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


async def race_websocket(url: str, webtransport: Callable[[], Awaitable[Session]],
                         websocket: Callable[[], Awaitable[Session]], *, delay: float = WEBSOCKET_DELAY,
                         log: logging.Logger = logger) -> Session:
    """WebTransport first, the WebSocket after ``delay`` seconds (at once if WebTransport fails or if the
    WebSocket won before for this host and port); the first session set up wins and the other is closed.

    Fails with WebTransport's error when both fail.
    """
    parts = urlsplit(url)
    key = (parts.hostname, parts.port)
    tasks: list[asyncio.Future[Session]] = [asyncio.ensure_future(webtransport())]
    winner: Session | None = None
    try:
        await asyncio.wait(tasks, timeout=0.0 if key in _websocket_won else delay)
        if not _succeeded(tasks[0]):
            log.debug("%s: trying the WebSocket", url)
            tasks.append(asyncio.ensure_future(websocket()))
        while True:
            won = next((task for task in tasks if _succeeded(task)), None)
            if won is not None:
                winner = won.result()
                if won is not tasks[0]:
                    _websocket_won.add(key)
                    log.warning("%s connected via WebSocket", url)
                return winner
            pending = [task for task in tasks if not task.done()]
            if not pending:
                break
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
            if _succeeded(task) and task.result() is not winner:
                await task.result().aclose()
    error = tasks[0].exception()
    assert error is not None
    raise error


def _succeeded(task: asyncio.Future[Session]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


async def dial(url: str, *, mux: TrackMux | None = None, fingerprint: str | None = None, insecure: bool = False,
               cafile: str | None = None, quic: QuicSettings | None = None, limits: Limits = DEFAULT_LIMITS,
               setup_timeout: float = 10.0, versions: Sequence[Version | str] = DEFAULT_VERSIONS,
               headers: Sequence[tuple[str, str]] = (), log: logging.Logger = logger,
               tickets: ClientTicketStore | None = None, tls: TLSConfig | ssl.SSLContext | None = None,
               websocket_fallback: bool = True, websocket_delay: float = WEBSOCKET_DELAY) -> Session:
    """Connect to ``url`` and set up a MoQ session (already running).

    * ``moql://host:port/path`` or ``moqt://...``: native QUIC; the ALPN list
      offers each of ``versions`` (``moq-lite-06`` … ``-03``, ``moql`` for
      lite-02/01, ``moq-00`` for gomoqt's dialect) and the server picks.
    * ``https://host:port/path?query``: WebTransport (extended CONNECT on
      HTTP/3); a refusal in HTTP raises :class:`~moqt_asgi.SetupRejected`
      with the status as its ``code``. The versions go in the
      ``wt-available-protocols`` header; the server's ``wt-protocol`` picks.
      Unless ``websocket_fallback`` is False, a WebSocket to ``wss://`` at the
      same host, port and path starts ``websocket_delay`` seconds later (at
      once if WebTransport fails), and the first session set up wins.
    * ``ws://host:port/path?query`` or ``wss://...``: MoQ over WebSocket (QMux);
      the versions go in the subprotocol offer and the server picks.

    The port is required (a URL without one raises :class:`MoQError` at
    once). The server certificate is checked against ``fingerprint``
    (SHA-256 hex), ``cafile``, or the system roots, unless ``insecure``.
    ``tls`` (a :class:`~moqt_asgi.endpoints.tls.TLSConfig` or an :class:`ssl.SSLContext`)
    gives the other TLS options: CA directory or data, another server name,
    cipher suites, a key log file; the shortcuts fill in what it leaves unset
    (a different value in both places is an error).
    ``headers`` go on the WebTransport CONNECT (``origin``, for instance);
    native QUIC has no headers, so passing some with a ``moql://`` URL is
    an error.

    ``tickets`` (a :class:`~moqt_asgi.endpoints.tickets.ClientTicketStore`) keeps the
    server's TLS session ticket so the next dial to the same host and port
    resumes, with 0-RTT early data if ``quic.allow_0rtt`` (see :mod:`moqt_asgi.endpoints.tickets`).
    """
    chosen = ordered(versions)  # names ("moq-lite-06") or Version objects
    if urlsplit(url).scheme in WEBSOCKET_SCHEMES:
        return await dial_websocket(url, mux=mux, fingerprint=fingerprint, insecure=insecure, cafile=cafile,
                                    limits=limits, setup_timeout=setup_timeout, versions=chosen, headers=headers,
                                    log=log, tls=tls)
    scheme, _, _, _ = parse_url(url)
    if scheme == "https":
        def webtransport() -> Awaitable[Session]:
            return dial_webtransport(url, mux=mux, fingerprint=fingerprint, insecure=insecure, cafile=cafile,
                                     quic=quic, limits=limits, setup_timeout=setup_timeout, versions=chosen,
                                     headers=headers, log=log, tickets=tickets, tls=tls)

        if not websocket_fallback:
            return await webtransport()
        return await race_websocket(url, webtransport, lambda: dial_websocket(
            websocket_url(url), mux=mux, fingerprint=fingerprint, insecure=insecure, cafile=cafile, limits=limits,
            setup_timeout=setup_timeout, versions=chosen, headers=headers, log=log, tls=tls),
            delay=websocket_delay, log=log)
    if headers:
        raise MoQError(f"{scheme}:// has no HTTP headers to send; use an https:// URL for WebTransport")
    return await dial_quic(url, mux=mux, fingerprint=fingerprint, insecure=insecure, cafile=cafile, quic=quic,
                           limits=limits, setup_timeout=setup_timeout, versions=chosen, log=log, tickets=tickets,
                           tls=tls)


CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
"""Headers a client keeps to the server it was given them for (a GOAWAY to another origin drops them)."""


def _same_origin(a: str, b: str) -> bool:
    """Same scheme family, host and port (``moql``/``moqt`` count as one scheme)."""
    first, second = urlsplit(a), urlsplit(b)

    def family(scheme: str) -> str:
        return "native" if scheme in NATIVE_SCHEMES else scheme

    return (family(first.scheme), first.hostname, first.port) == (family(second.scheme), second.hostname, second.port)


DialFunc = Callable[..., Awaitable[Session]]
GoawayCallback = Callable[[Session, str], Awaitable[None] | None]


@dataclass(eq=False)
class Client:
    """A MoQ client configured by fields (gomoqt's ``moqt.Client``); it tracks the sessions it dials.

    ``dial_quic_func`` / ``dial_webtransport_func`` / ``dial_websocket_func``
    replace the dialers for ``moql://`` / ``https://`` / ``ws://`` URLs (same
    keyword arguments as :func:`~moqt_asgi.endpoints.dial_quic` /
    ``dial_webtransport`` / :func:`~moqt_asgi.websocket.client.dial_websocket`).
    ``https://`` falls back to a WebSocket as :func:`dial` does unless
    ``websocket_fallback`` is False.
    ``on_goaway(session, uri)`` is called when a server sends GOAWAY (see
    :meth:`reconnect`); stop with :meth:`close` or :meth:`shutdown`.
    """

    fingerprint: str | None = None
    """Accept exactly the server certificate with this SHA-256 fingerprint (a shortcut for ``tls``'s field)."""
    cafile: str | None = None
    """PEM file of CA certificates to trust (a shortcut, as ``fingerprint``)."""
    insecure: bool = False
    """Accept any certificate (a shortcut, as ``fingerprint``). For tests only."""
    tls: TLSConfig | ssl.SSLContext | None = None
    """The other TLS options: a :class:`~moqt_asgi.endpoints.tls.TLSConfig`, or an :class:`ssl.SSLContext` (its
    verify mode, CA certificates and key log file are carried over). The shortcuts fill
    in what it leaves unset; a different value in both places is an error at :meth:`dial`. The dial
    functions get it as ``tls=`` (only when set)."""
    quic: QuicSettings | None = None
    limits: Limits = DEFAULT_LIMITS
    versions: Sequence[Version | str] = DEFAULT_VERSIONS
    setup_timeout: float = 10.0
    headers: Sequence[tuple[str, str]] = ()
    logger: logging.Logger = logger
    dial_quic_func: DialFunc = dial_quic
    dial_webtransport_func: DialFunc = dial_webtransport
    dial_websocket_func: DialFunc = dial_websocket
    on_goaway: GoawayCallback | None = None
    websocket_fallback: bool = True
    """``https://``: also try a WebSocket to the same address if QUIC has not answered after ``websocket_delay``."""
    websocket_delay: float = WEBSOCKET_DELAY

    def __post_init__(self) -> None:
        self._urls: weakref.WeakKeyDictionary[Session, str] = weakref.WeakKeyDictionary()
        self._watchers: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def sessions(self) -> list[Session]:
        """The sessions dialled by this client and still open."""
        return [session for session in list(self._urls) if not session.closed]

    def url_of(self, session: Session) -> str:
        """The URL ``session`` was dialled with."""
        return self._urls[session]

    async def dial(self, url: str, mux: TrackMux | None = None) -> Session:
        """Set up a session with ``url`` (``moql://``, ``moqt://``, ``https://``, ``ws://`` or ``wss://``) and track it."""
        if self._closed:
            raise MoQError("the client is closed")
        websocket = urlsplit(url).scheme in WEBSOCKET_SCHEMES
        scheme = urlsplit(url).scheme if websocket else parse_url(url)[0]
        options: dict[str, object] = dict(mux=mux, fingerprint=self.fingerprint, insecure=self.insecure,
                                          cafile=self.cafile, quic=self.quic, limits=self.limits,
                                          setup_timeout=self.setup_timeout, versions=ordered(self.versions), log=self.logger)
        if self.tls is not None:
            options["tls"] = self.tls
        if websocket:
            options.pop("quic")
            session = await self.dial_websocket_func(url, headers=self.headers, **options)
        elif scheme == "https" and self.websocket_fallback:
            ws_options = {name: value for name, value in options.items() if name != "quic"}
            session = await race_websocket(
                url, lambda: self.dial_webtransport_func(url, headers=self.headers, **options),
                lambda: self.dial_websocket_func(websocket_url(url), headers=self.headers, **ws_options),
                delay=self.websocket_delay, log=self.logger)
        elif scheme == "https":
            session = await self.dial_webtransport_func(url, headers=self.headers, **options)
        else:
            if self.headers:
                raise MoQError(f"{scheme}:// has no HTTP headers to send; use an https:// URL for WebTransport")
            session = await self.dial_quic_func(url, **options)
        self._urls[session] = url
        if self.on_goaway is not None and session.features.goaway:
            task = asyncio.get_running_loop().create_task(self._watch_goaway(session, self.on_goaway))
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)
        return session

    async def _watch_goaway(self, session: Session, callback: GoawayCallback) -> None:
        try:
            uri = await session.wait_goaway()
        except SessionClosed:
            return
        try:
            result = callback(session, uri)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.logger.exception("on_goaway callback failed")

    def goaway_target(self, session: Session, uri: str) -> str:
        """Where to go after GOAWAY ``uri``: the URI itself, a path on the same server, or (``""``) the same URL."""
        url = self._urls.get(session, "")
        if not uri:
            return url
        if uri.startswith("/"):
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.netloc}{uri}"
        return uri

    async def reconnect(self, session: Session, mux: TrackMux | None = None) -> Session:
        """Wait for the server's GOAWAY on ``session``, dial where it points, then close ``session``.

        The new session uses ``mux`` (default: the old session's). Without a
        URI in the GOAWAY the same URL is dialled again. Raises
        :class:`SessionClosed` if ``session`` closes before any GOAWAY.
        """
        uri = await session.wait_goaway()
        target = self.goaway_target(session, uri)
        self.logger.info("GOAWAY: reconnecting to %s", target)
        if _same_origin(self._urls.get(session, ""), target):
            new = await self.dial(target, mux=session.mux if mux is None else mux)
        else:
            # Another server: follow, but never hand it our credentials.
            kept = [(name, value) for name, value in self.headers if name.lower() not in CREDENTIAL_HEADERS]
            if len(kept) != len(self.headers):
                self.logger.info("GOAWAY to another origin: not sending %s there",
                                 ", ".join(sorted({n.lower() for n, _ in self.headers} & CREDENTIAL_HEADERS)))
            headers, self.headers = self.headers, kept
            try:
                new = await self.dial(target, mux=session.mux if mux is None else mux)
            finally:
                self.headers = headers
        await session.aclose()
        return new

    def close(self) -> asyncio.Task[bool]:
        """Close every session now (code 0); await the result to wait for them. False (logged) if already closed."""
        if self._closed:
            self.logger.info("client already closed")
            return asyncio.ensure_future(self._stopped(None))
        self._closed = True
        sessions = self.sessions
        for session in sessions:
            session.close(0, "client closed")
        return asyncio.ensure_future(self._stopped(sessions))

    async def _stopped(self, sessions: list[Session] | None) -> bool:
        if sessions is None:
            return False
        await self._stop(sessions)
        return True

    async def shutdown(self, timeout: float = 5.0) -> bool:
        """Leave gracefully: GOAWAY (no URI) on lite-04+, close each session once idle, force the rest at the deadline.

        Idle is :func:`~moqt_asgi.stopping.session_idle`: no subscription
        served or open. Sessions still busy at the deadline are closed with
        the GOAWAY-timeout code. Returns True if none had to be; False if
        some had, or if the client was already closed (logged).
        """
        if self._closed:
            self.logger.info("client already closed")
            return False
        self._closed = True
        deadline = asyncio.get_running_loop().time() + timeout
        sessions = self.sessions
        await asyncio.gather(*(send_goaway(s, "", self.logger) for s in sessions if s.features.goaway))
        clean = await drain(sessions, deadline, self.logger, close_when_idle=set(sessions))
        await self._stop(sessions)
        return clean

    async def _stop(self, sessions: list[Session]) -> None:
        await asyncio.gather(*(session.wait_closed() for session in sessions), return_exceptions=True)
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._closed:
            await self.close()


__all__ = ["SCHEMES", "WEBSOCKET_DELAY", "Client", "dial", "race_websocket", "websocket_url"]

"""A supervised upstream link: a :class:`~moqt_asgi.relay.Relay` as a leaf of a cluster.

An :class:`UpstreamLink` dials one upstream node (a moq-relay cluster node,
a moq-rs server, or another relay of ours) and keeps a session to it, for
ever, until it is closed:

* the session serves the relay's mux upstream, so every broadcast published
  on the relay is announced to the node (with its hop list on lite-04+);
* it ingests what the node announces under ``prefix`` into the relay
  (:meth:`Relay.ingest <moqt_asgi.relay.Relay.ingest>`), so the cluster's
  broadcasts can be played by the relay's own subscribers;
* when the session ends, or a dial fails, it waits a jittered, growing delay
  (:class:`Backoff`) and dials again.

The policy is moq-relay's for its ``[cluster] connect`` peers: 1 s doubling
to 10 s, each wait drawn between half and all of the current delay, and the
delay back to 1 s after a session that lasted 10 s (a peer that accepts and
drops us at once keeps the delay growing instead of being redialled in a
tight loop).

A token (``token=``) is added to the URL as ``?jwt=`` unless the URL has a
non-empty one already (moq-relay's ``cluster.token`` rule); it may be a
function, called before each dial, so a token can be renewed before its
``exp``. The token never appears in the log or in :class:`LinkStatus`: URLs
are shown without their query, and error texts with the token masked.

State for operators: :meth:`UpstreamLink.status` (connected or not, attempts,
sessions, last error, the wait in progress). The log (``moqt_asgi.upstream``)
has one line per change: connected, session ended, cannot connect (a repeat
of the same failure goes to the debug level), closed.

Loops: a broadcast of ours that the node announces back is never adopted
again. lite-04+ hop lists carry our origin id, and lite-05+ asks the node
not to send such routes at all; a moq-rs node sends none back on any
version. On lite-03 (a hop count only) our own relay as the node does send
it back, and the relay keeps its own publication (see :mod:`moqt_asgi.relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random as _random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from .client import Client
from .endpoints.settings import redacted_url
from .engine.mux import TrackMux
from .engine.session import Session
from .protocol.errors import MoQError

logger = logging.getLogger("moqt_asgi.upstream")

T = TypeVar("T")
LinkState = Literal["idle", "dialing", "connected", "waiting", "closed"]
TokenSource = str | Callable[[], str]


class RelayLike(Protocol):
    """What a link needs of a relay (:class:`moqt_asgi.relay.Relay` is one): its mux, and ``ingest``."""

    @property
    def mux(self) -> TrackMux: ...

    async def ingest(self, session: Session, prefix: str = "") -> None: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long an :class:`UpstreamLink` waits before each new dial (defaults: moq-relay's cluster links).

    The delay starts at ``initial`` and is multiplied by ``factor`` after each
    attempt, up to ``maximum``. Each wait is drawn between ``(1 - jitter)``
    times the delay and the delay itself, so nodes restarted together do not
    redial on the same tick. A session that lasted ``stable`` seconds or more
    resets the delay to ``initial``.
    """

    initial: float = 1.0
    maximum: float = 10.0
    stable: float = 10.0
    jitter: float = 0.5
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {self.initial} and {self.maximum}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter is a fraction of the delay (0 to 1), got {self.jitter}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, got {self.factor}")
        if self.stable < 0:
            raise ValueError(f"stable must not be negative, got {self.stable}")

    def wait(self, delay: float, draw: float) -> float:
        """The wait for ``delay`` given ``draw`` in [0, 1): from ``(1 - jitter) * delay`` up to ``delay``."""
        return delay * (1.0 - self.jitter * (1.0 - draw))

    def after(self, delay: float) -> float:
        """The delay that follows ``delay``: ``factor`` times it, at most ``maximum``."""
        return min(delay * self.factor, self.maximum)


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """What an :class:`UpstreamLink` is doing, for operators (:meth:`UpstreamLink.status`)."""

    url: str
    """The upstream URL without its query (no token)."""
    state: LinkState
    """``idle`` (not started), ``dialing``, ``connected``, ``waiting`` (before the next dial) or ``closed``."""
    attempts: int
    """Dials started since the link started."""
    failures: int
    """Attempts since the last session that was set up (0 while connected)."""
    sessions: int
    """Sessions set up since the link started."""
    reconnects: int
    """Sessions set up after the first."""
    last_error: str | None
    """Why the last session ended or the last dial failed."""
    delay: float | None
    """Seconds of the wait in progress (``waiting`` only)."""
    version: str | None
    """The protocol version of the current session (``connected`` only)."""


def with_token(url: str, token: str | None) -> str:
    """``url`` with ``jwt=token`` added to its query, unless ``token`` is empty or the URL has a non-empty ``jwt``."""
    if not token:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "jwt" and value for name, value in query):
        return url
    query = [(name, value) for name, value in query if name != "jwt"] + [("jwt", token)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


without_query = redacted_url
"""``url`` without its query and fragment (what the log shows: tokens stay out of it)."""


def _describe(error: BaseException, url: str = "", token: str | None = None) -> str:
    """What went wrong, for the log and :class:`LinkStatus`: never the query of ``url`` nor ``token``."""
    text = str(error) or type(error).__name__
    if url:
        text = text.replace(url, without_query(url))
    for secret in {token, quote(token or "", safe="")} - {None, ""}:
        text = text.replace(str(secret), "<token>")
    return text


class UpstreamLink:
    """Keep ``relay`` joined to the upstream node at ``url`` (``moql://``, ``moqt://``, ``https://``, ``ws://``).

    ``prefix`` limits what is taken from the node (``"live"`` leaves out a
    moq-relay cluster's ``.internal/`` and ``.stats/`` broadcasts); the
    relay's own broadcasts are offered to the node whatever the prefix.
    ``token`` (a string, or a function called before each dial) is sent as
    ``?jwt=``. ``client`` carries the dial options (TLS: ``fingerprint``,
    ``cafile``, ``tls``; ``versions``, ``quic``, ``setup_timeout``, the
    WebSocket fallback); its default trusts the system roots.
    ``backoff`` paces the redials.

    Run it with ``async with relay.link(url) as link:``, or :meth:`start`,
    or ``await link.run()`` in a task group; :meth:`close` stops it. ``clock``
    (seconds, monotonic), ``random`` (a draw in [0, 1)) and ``sleep`` replace
    the real ones in tests.
    """

    def __init__(self, relay: RelayLike, url: str, *, prefix: str = "", token: TokenSource | None = None,
                 client: Client | None = None, backoff: Backoff | None = None, log: logging.Logger = logger,
                 clock: Callable[[], float] = time.monotonic, random: Callable[[], float] = _random.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.relay = relay
        self.url = url
        self.prefix = prefix
        self.token = token
        self.client = client if client is not None else Client()
        self.backoff = backoff if backoff is not None else Backoff()
        self.log = log
        self._clock, self._random, self._sleep = clock, random, sleep
        self._state: LinkState = "idle"
        self._session: Session | None = None
        self._attempts = self._failures = self._sessions = 0
        self._last_error: str | None = None
        self._delay: float | None = None
        self._closed = False
        self._running = False
        self._stop = asyncio.Event()
        self._up = asyncio.Event()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session_closing: Awaitable[object] | None = None
        self._warned: str | None = None
        """The failure last logged as a warning (a repeat of it is logged at debug level)."""

    @classmethod
    def from_env(cls, relay: RelayLike, environ: Mapping[str, str] = os.environ, **options: Any) -> UpstreamLink | None:
        """A link configured from environment variables; ``None`` when ``MOQ_UPSTREAM`` is unset.

        * ``MOQ_UPSTREAM``: the node's URL (it may carry its own ``?jwt=``).
        * ``MOQ_UPSTREAM_TOKEN``: the token; or ``MOQ_UPSTREAM_TOKEN_FILE``: a
          file holding it, read again before each dial (replace the file to
          renew a token before its ``exp``).
        * ``MOQ_UPSTREAM_PREFIX``: ingest only the node's broadcasts under it.
        * ``MOQ_UPSTREAM_CAFILE``, ``MOQ_UPSTREAM_FINGERPRINT`` (SHA-256 hex):
          how the node's certificate is checked (default: the system roots);
          ``MOQ_UPSTREAM_INSECURE=1`` accepts any (tests only).

        ``options`` go to the constructor. Raises :class:`ValueError` when
        both token variables are set.
        """
        url = environ.get("MOQ_UPSTREAM") or None
        if url is None:
            return None
        token: TokenSource | None = environ.get("MOQ_UPSTREAM_TOKEN") or None
        token_file = environ.get("MOQ_UPSTREAM_TOKEN_FILE") or None
        if token is not None and token_file is not None:
            raise ValueError("set MOQ_UPSTREAM_TOKEN or MOQ_UPSTREAM_TOKEN_FILE, not both")
        if token_file is not None:
            path = Path(token_file)

            def read_token() -> str:
                return path.read_text(encoding="utf-8").strip()

            token = read_token
        options.setdefault("client", Client(cafile=environ.get("MOQ_UPSTREAM_CAFILE") or None,
                                            fingerprint=environ.get("MOQ_UPSTREAM_FINGERPRINT") or None,
                                            insecure=environ.get("MOQ_UPSTREAM_INSECURE", "") in ("1", "true", "yes")))
        return cls(relay, url, prefix=environ.get("MOQ_UPSTREAM_PREFIX", ""), token=token, **options)

    # -- state, for operators -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The upstream URL without its query (what the log shows)."""
        return without_query(self.url)

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def connected(self) -> bool:
        """A session with the node is up."""
        return self._state == "connected"

    @property
    def session(self) -> Session | None:
        """The current session, or ``None`` between sessions."""
        return self._session

    @property
    def attempts(self) -> int:
        """Dials started since the link started."""
        return self._attempts

    @property
    def reconnects(self) -> int:
        """Sessions set up after the first one."""
        return max(self._sessions - 1, 0)

    @property
    def last_error(self) -> str | None:
        """Why the last session ended or the last dial failed."""
        return self._last_error

    @property
    def delay(self) -> float | None:
        """Seconds of the wait before the next dial, while waiting."""
        return self._delay

    @property
    def closed(self) -> bool:
        return self._closed

    def status(self) -> LinkStatus:
        """A snapshot of the link's state and counters."""
        session = self._session
        return LinkStatus(url=self.name, state=self._state, attempts=self._attempts, failures=self._failures,
                          sessions=self._sessions, reconnects=self.reconnects, last_error=self._last_error,
                          delay=self._delay, version=session.version_name if session is not None else None)

    # -- running -----------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run the link in a task of its own (stopped by :meth:`close`)."""
        if self._task is not None or self._running:
            raise RuntimeError("the upstream link is already running")
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"upstream-{self.name}")
        return self._task

    async def run(self) -> None:
        """Dial, serve and ingest; after each session or failed dial, wait and dial again. Returns once closed."""
        if self._running:
            raise RuntimeError("the upstream link is already running")
        self._running = True
        try:
            delay = self.backoff.initial
            while not self._closed:
                connected_at = await self._attempt()
                if self._closed:
                    break
                if connected_at is not None and self._clock() - connected_at >= self.backoff.stable:
                    delay = self.backoff.initial
                wait = self.backoff.wait(delay, self._random())
                delay = self.backoff.after(delay)
                self._report(wait)
                self._state, self._delay = "waiting", wait
                await self._unless_closed(self._sleep(wait))
                self._delay = None
        finally:  # closed, or cancelled: either way a link runs once
            self._closed = True
            self._stop.set()
            self._state, self._delay = "closed", None
            self._running = False
            self._done.set()
            self.log.info("upstream %s: closed", self.name)

    async def _attempt(self) -> float | None:
        """One dial and, if it succeeds, the session until it ends; when it was set up (``None``: never)."""
        self._attempts += 1
        self._state = "dialing"
        self.log.debug("upstream %s: dialing (attempt %d)", self.name, self._attempts)
        token: str | None = None
        url = self.url
        try:
            token = self.token() if callable(self.token) else self.token
            url = with_token(self.url, token)
            dialed = await self._unless_closed(self.client.dial(url, mux=self.relay.mux))
        except Exception as exc:  # any failure to dial is retried; none is fatal
            self._failures += 1
            self._last_error = _describe(exc, url, token)
            return None
        if dialed is None:  # closed while dialing
            return None
        session: Session = dialed
        connected_at = self._clock()
        self._session, self._state = session, "connected"
        self._sessions += 1
        if self._failures or self._sessions > 1:
            self.log.info("upstream %s: connected again (%s) after %d failed attempt(s)", self.name,
                          session.version_name, self._failures)
        else:
            self.log.info("upstream %s: connected (%s)", self.name, session.version_name)
        self._failures = 0
        self._warned = None
        self._up.set()
        try:
            if self._closed:  # close() came while the dial was finishing
                session.close(0, "upstream link closed")
            await self.relay.ingest(session, self.prefix)
            reason = await session.wait_closed()
            self._last_error = _describe(reason, url, token)
        except Exception as exc:
            self._last_error = _describe(exc, url, token)
            self.log.warning("upstream %s: the session failed: %s", self.name, self._last_error)
        finally:
            self._up.clear()
            self._session = None
            if not session.closed:
                session.close(0, "upstream link closed")
            with contextlib.suppress(Exception):
                await session.wait_closed()
        return connected_at

    def _report(self, wait: float) -> None:
        """Log why the link is down, once per change (a repeat of the same failure goes to the debug log)."""
        error = self._last_error or "unknown"
        if self._failures == 0:
            self.log.warning("upstream %s: session ended (%s); reconnecting in %.1f s", self.name, error, wait)
            self._warned = None
        elif error != self._warned:
            self.log.warning("upstream %s: cannot connect (%s); retrying in %.1f s (attempt %d)", self.name, error,
                             wait, self._attempts)
            self._warned = error
        else:
            self.log.debug("upstream %s: cannot connect (%s); retrying in %.1f s (attempt %d)", self.name, error,
                           wait, self._attempts)

    async def _unless_closed(self, aw: Awaitable[T]) -> T | None:
        """``aw``'s result, or ``None`` if the link is closed first (``aw`` is then cancelled and awaited).

        A session dialled just as the link closed is closed at once (``None``).
        """
        task: asyncio.Future[T] = asyncio.ensure_future(aw)
        stop: asyncio.Future[bool] = asyncio.ensure_future(self._stop.wait())
        waiters: list[asyncio.Future[Any]] = [task, stop]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(stop, task, return_exceptions=True)
        if task.cancelled():
            return None
        result = task.result()  # raises what the dial raised
        if self._closed and isinstance(result, Session):
            await result.aclose(0, "upstream link closed")
            return None
        return result

    async def wait_connected(self) -> Session:
        """The current session, once there is one. Raises :class:`MoQError` if the link closes first."""
        while not self._closed:
            session = self._session
            if session is not None and not session.closed:
                return session
            up = asyncio.ensure_future(self._up.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({up, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (up, stop):
                    waiter.cancel()
                await asyncio.gather(up, stop, return_exceptions=True)
        raise MoQError("the upstream link is closed")

    # -- closing -----------------------------------------------------------------------------------

    def close(self) -> asyncio.Task[bool]:
        """Stop the link now: the current session is closed (code 0) and no dial follows.

        Await the result to wait until the link has stopped; False (logged)
        if it was already closed.
        """
        if self._closed:
            self.log.info("upstream %s: already closed", self.name)
            return asyncio.ensure_future(self._stopped(False))
        self._closed = True
        self._stop.set()
        session = self._session
        if session is not None:
            self._session_closing = session.close(0, "upstream link closed")
        if not self._running and self._task is None:
            self._state = "closed"
        return asyncio.ensure_future(self._stopped(True))

    async def _stopped(self, result: bool) -> bool:
        if self._session_closing is not None:
            with contextlib.suppress(Exception):
                await self._session_closing
        if self._task is not None:
            await asyncio.wait([self._task])  # however it ended (cancelled, even): it has stopped
        elif self._running:
            await self._done.wait()
        return result

    async def __aenter__(self) -> UpstreamLink:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["Backoff", "LinkState", "LinkStatus", "RelayLike", "TokenSource", "UpstreamLink", "with_token", "without_query"]

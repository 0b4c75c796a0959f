"""An app and a client session joined in memory: test a MoQ application without sockets.

::

    from moqt_asgi.testing import connect

    async with connect(app) as client:            # a running client Session
        track = await client.subscribe("clock", "seconds")

    async with MemoryPair(app, path="/room/1") as pair:   # both ends, when a test needs the server's
        assert pair.server.path == "/room/1"
        pair.server.close()

The server end is served by :func:`moqt_asgi.serving.serve_connection`, as a
native QUIC connection would be: the app's admission limits, origin and token
checks, routes and setup handlers all run, and a handler's refusal raises
:class:`~moqt_asgi.SetupRejected` from ``connect`` (``code`` is the MoQ close
code, ``reason`` the handler's). Nothing is monkeypatched: the server session
is handed over by ``serve_connection(on_session=...)``.

The version is negotiated as our native QUIC client and server do it: the
client offers the ALPNs of its versions (every version by default, as
:func:`moqt_asgi.dial` does), the app picks by its own preference (as aioquic
does), and the session starts as that version prescribes (a SETUP exchange for
lite-01/02 and gomoqt's dialect, nothing for lite-03/04, SETUP streams for
lite-05+). Pass ``version=`` (a :class:`~moqt_asgi.Version` or its name, such
as ``"moq-lite-03"``) to offer only that one. As on native QUIC, lite-03/04
carry no path: such a session is at ``/``.

Leaving the ``async with`` closes the client, waits until the server side has
finished (its session, its tasks and the setup handler), and leaves no task
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from ..app import MoQ
from ..engine.handshake import start_client
from ..engine.mux import TrackMux
from ..engine.session import Session
from ..protocol.errors import ErrorCode, SessionClosed, SetupRejected, StreamError
from ..protocol.limits import Limits
from ..protocol.versions import (
    ALPN_GOMOQT,
    DEFAULT_VERSIONS,
    GOMOQT_DIALECT,
    Version,
    choose_alpn,
    native_alpns,
    version_by_alpn,
    version_named,
)
from ..serving import serve_connection
from ..transport.memory import MemoryConnection

logger = logging.getLogger("moqt_asgi.testing")

VersionLike = Version | str
"""A :class:`~moqt_asgi.Version`, or its name (``"moq-lite-06"``, ``"gomoqt"``) or ALPN (``"moq-00"``)."""

CLOSE_TIMEOUT = 10.0
"""Seconds the server side may take to finish once the client has closed; then it is cancelled."""


def resolve_version(version: VersionLike) -> Version:
    """The :class:`~moqt_asgi.Version` ``version`` names (by name, or by the ALPN that fixes it)."""
    if isinstance(version, Version):
        return version
    by_alpn = GOMOQT_DIALECT if version == ALPN_GOMOQT else version_by_alpn(version)
    return by_alpn if by_alpn is not None else version_named(version)  # ValueError lists the known names


def negotiate_alpn(client: Sequence[Version], server: Sequence[Version]) -> str | None:
    """The ALPN a native QUIC handshake would settle on: the server's first that the client offered."""
    return choose_alpn(native_alpns(client), native_alpns(server))


class MemoryPair:
    """A client :class:`~moqt_asgi.engine.session.Session` connected in memory to ``app``, and the server's end.

    Use it as an async context manager (or call :meth:`open` and
    :meth:`aclose`). Once open, :attr:`client` and :attr:`server` are the two
    running sessions, and :attr:`client_connection` /
    :attr:`server_connection` the two in-memory connections underneath (to
    close one abruptly, or look at its backlog).

    :func:`connect` yields the client alone, which is what most tests need;
    this class is for the tests that also drive or inspect the server's end.

    Options (all keyword-only):

    * ``path``: the session's path, query included (``"/room/1?jwt=..."``),
      carried in the SETUP where the version has one.
    * ``version``: offer only this version; ``versions``: offer these
      (default: every version, so the app's preference decides).
    * ``mux``: what the client publishes (the server may subscribe to it).
    * ``limits``: the client's limits (default: the app's). Each end's
      in-memory receive buffers follow its own ``max_stream_buffer``.
    * ``flow_control``: bytes count in the writer's backlog until the other
      side reads them, as QUIC credit would (a reader that stops stalls the
      writer); off, they leave the backlog once delivered.
    * ``headers`` (lower-case names) and ``origin``: what the request carries
      in :attr:`SetupRequest.headers` and :attr:`SetupRequest.origin`, to test
      origin checks and handlers that read headers.
    * ``setup_timeout``: seconds each side waits for the other's setup.
    """

    def __init__(self, app: MoQ, *, path: str = "/", version: VersionLike | None = None,
                 versions: Sequence[VersionLike] | None = None, mux: TrackMux | None = None,
                 limits: Limits | None = None, flow_control: bool = False, headers: Mapping[str, str] | None = None,
                 origin: str | None = None, setup_timeout: float = 10.0) -> None:
        if version is not None and versions is not None:
            raise ValueError("pass version= or versions=, not both")
        self.app = app
        self.path = path
        offered = (version,) if version is not None else (versions if versions is not None else DEFAULT_VERSIONS)
        self.versions: tuple[Version, ...] = tuple(resolve_version(v) for v in offered)
        """The versions the client offers, in its order of preference."""
        if not self.versions:
            raise ValueError("the client needs at least one version to offer")
        self.mux = mux
        self.limits = limits if limits is not None else app.limits
        self.flow_control = flow_control
        self.headers = {name.lower(): value for name, value in (headers or {}).items()}
        if origin is not None:
            self.headers["origin"] = origin
        self.setup_timeout = setup_timeout
        self._client: Session | None = None
        self._server: Session | None = None
        self._serving: asyncio.Task[None] | None = None
        self.client_connection = MemoryConnection("client", self.limits.max_stream_buffer, flow_control=flow_control)
        self.server_connection = MemoryConnection("server", app.limits.max_stream_buffer, flow_control=flow_control)
        self.client_connection.peer, self.server_connection.peer = self.server_connection, self.client_connection

    # -- the two ends
    @property
    def client(self) -> Session:
        """The client session (running)."""
        if self._client is None:
            raise RuntimeError("the pair is not open")
        return self._client

    @property
    def server(self) -> Session:
        """The session the app accepted (running)."""
        if self._server is None:
            raise RuntimeError("the pair is not open")
        return self._server

    # -- lifecycle
    async def __aenter__(self) -> MemoryPair:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def open(self) -> MemoryPair:
        """Connect: negotiate, run the app's setup handling, and start the client session.

        Raises :class:`~moqt_asgi.SetupRejected` when the app refuses the
        session (or no version is common to both ends); nothing is left
        running then.
        """
        if self._serving is not None:
            raise RuntimeError("the pair was opened already")
        try:
            await self._open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[Session] = loop.create_future()

        def on_session(session: Session) -> None:
            if not accepted.done():
                accepted.set_result(session)

        alpn = negotiate_alpn(self.versions, self.app.versions)
        if alpn is None:
            offered = ", ".join(v.name for v in self.versions)
            raise SetupRejected(ErrorCode.VERSION, f"no version in common: the client offered {offered}")
        fixed = version_by_alpn(alpn)
        if fixed is not None:  # the ALPN fixed the dialect: a refusal during setup is already in its codes
            self.client_connection.error_codes = fixed.codec.error_codes
        self._serving = asyncio.ensure_future(serve_connection(
            self.app, self.server_connection, transport="memory", protocol=alpn, setup_timeout=self.setup_timeout,
            headers=self.headers, on_session=on_session))
        try:
            start = await start_client(self.client_connection, self.limits, protocol=alpn, path=self.path,
                                       versions=self.versions, timeout=self.setup_timeout)
        except (SetupRejected, SessionClosed, StreamError) as exc:
            raise await self._refusal(exc) from None
        client = Session(self.client_connection, start.codec, mux=self.mux, limits=self.limits, is_client=True,
                         path=self.path, session_stream=start.session_stream, timeout=self.setup_timeout)
        client.peer_setup = start.peer_setup
        self._client = client
        client.start()
        await client.wait_started()
        # lite-03/04 start without a word from the server: wait for the app's decision here
        decided = await _first_of(accepted, self._serving, timeout=self.setup_timeout + self.app.setup_handler_timeout)
        if decided is not accepted:
            raise await self._refusal(None)
        self._server = accepted.result()

    async def _refusal(self, error: BaseException | None) -> SetupRejected:
        """The :class:`SetupRejected` for a session the server did not accept (with the close code it sent)."""
        closed: SessionClosed | None = None
        if self.client_connection.is_closed or self._serving is None or self._serving.done():
            with contextlib.suppress(TimeoutError):
                closed = await asyncio.wait_for(self.client_connection.wait_closed(), CLOSE_TIMEOUT)
        if closed is not None and closed.remote:
            return SetupRejected(closed.code, closed.reason)
        if isinstance(error, SetupRejected):
            return error
        code = getattr(error, "code", ErrorCode.TIMEOUT)
        return SetupRejected(int(code), str(error) if error is not None else "the app did not accept the session")

    async def aclose(self) -> None:
        """Close the client, then wait until the server's side has finished. Idempotent."""
        if self._client is not None:
            await self._client.aclose()
        else:
            self.client_connection.close(ErrorCode.CANCEL)
        serving = self._serving
        if serving is not None and not serving.done():
            try:
                await asyncio.wait_for(asyncio.shield(serving), CLOSE_TIMEOUT)
            except TimeoutError:
                logger.warning("the server side did not finish within %.1fs of the close; cancelling it", CLOSE_TIMEOUT)
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
        self.server_connection.close(ErrorCode.CANCEL)


async def _first_of(*aws: asyncio.Future[Any], timeout: float) -> asyncio.Future[Any] | None:
    """The first of ``aws`` to finish (the earliest listed if several have), or ``None`` after ``timeout``; none is cancelled."""
    done, _ = await asyncio.wait(aws, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for aw in aws:
        if aw in done:
            return aw
    return None


@contextlib.asynccontextmanager
async def connect(app: MoQ, *, path: str = "/", version: VersionLike | None = None,
                  versions: Sequence[VersionLike] | None = None, mux: TrackMux | None = None,
                  limits: Limits | None = None, flow_control: bool = False, headers: Mapping[str, str] | None = None,
                  origin: str | None = None, setup_timeout: float = 10.0) -> AsyncIterator[Session]:
    """A running client session connected to ``app`` in memory; everything is closed on exit.

    The options are :class:`MemoryPair`'s. Yields the client alone because
    that is what a test of an app talks to; use :class:`MemoryPair` for the
    server's end too. A refusal raises :class:`~moqt_asgi.SetupRejected`.
    """
    async with MemoryPair(app, path=path, version=version, versions=versions, mux=mux, limits=limits,
                          flow_control=flow_control, headers=headers, origin=origin,
                          setup_timeout=setup_timeout) as pair:
        yield pair.client


@contextlib.asynccontextmanager
async def lifespan(app: MoQ) -> AsyncIterator[MoQ]:
    """Run ``app``'s startup hooks, then its shutdown hooks on exit (as an ASGI server's lifespan would)."""
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


__all__ = ["MemoryPair", "VersionLike", "connect", "lifespan", "negotiate_alpn", "resolve_version"]

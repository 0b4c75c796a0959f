"""Shared test plumbing: in-memory sessions and a native server in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from moqt_asgi.app import MoQ
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.engine.handshake import start_client
from moqt_asgi.engine.mux import TrackMux
from moqt_asgi.engine.session import Session
from moqt_asgi.engine.track import TrackWriter
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.versions import ALPN_GOMOQT, GOMOQT_DIALECT, SETUP_VERSIONS, Version
from moqt_asgi.request import SetupRequest
from moqt_asgi.serving import serve_connection
from moqt_asgi.transport.memory import MemoryConnection, memory_pair


def protocol_of(version: Version) -> str | None:
    """The ALPN that selects ``version`` (``None``: a SETUP exchange picks it)."""
    if version is GOMOQT_DIALECT:
        return ALPN_GOMOQT
    return version.alpn


@contextlib.asynccontextmanager
async def memory_sessions(app: MoQ | None = None, *, client_mux: TrackMux | None = None, path: str = "/",
                          limits: Limits = DEFAULT_LIMITS, version: Version | None = None,
                          flow_control: bool = False,
                          ) -> AsyncIterator[tuple[Session, Session, MemoryConnection, MemoryConnection]]:
    """A client session connected to ``app`` over the in-memory transport.

    ``version`` forces one version (as its ALPN would on native QUIC); the
    default is a lite-01/02 SETUP exchange. With ``flow_control``, what
    one side has not read stays in the other's backlog (a peer that stops
    reading stalls its writer). Yields ``(client, server, client_conn,
    server_conn)``.
    """
    app = app or MoQ(limits=limits)
    client_conn, server_conn = memory_pair(flow_control=flow_control)
    requests: list[SetupRequest] = []
    original = app.handle_setup

    async def capture(request: SetupRequest) -> None:
        requests.append(request)
        await original(request)

    app.handle_setup = capture  # type: ignore[method-assign]
    protocol = None if version is None else protocol_of(version)
    versions = SETUP_VERSIONS if version is None else (version,)
    serving = asyncio.ensure_future(serve_connection(app, server_conn, transport="memory", protocol=protocol))
    start = await start_client(client_conn, limits, protocol=protocol, path=path, versions=versions)
    client = Session(client_conn, start.codec, mux=client_mux, limits=limits, is_client=True, path=path,
                     session_stream=start.session_stream)
    client.start()
    for _ in range(1000):
        if requests and requests[0].session is not None:
            break
        await asyncio.sleep(0)
    server = requests[0].session
    assert server is not None, "the server did not accept the session"
    try:
        yield client, server, client_conn, server_conn
    finally:
        await client.aclose()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


@contextlib.asynccontextmanager
async def native_server(app: MoQ, certfile: str, keyfile: str) -> AsyncIterator[QuicServer]:
    """``app`` served on an ephemeral UDP port of 127.0.0.1, with lifespan hooks run."""
    await app.startup()
    server = QuicServer(app, host="127.0.0.1", port=0, certfile=certfile, keyfile=keyfile)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
        await app.shutdown()


def tick_app(versions: tuple[Version, ...] | None = None) -> MoQ:
    """An app publishing broadcast ``clock``: every track subscribed gets one group holding ``b"tick"``."""
    app = MoQ() if versions is None else MoQ(versions=versions)

    async def seconds(track: TrackWriter) -> None:
        group = await track.open_group()
        await group.write_frame(b"tick")
        await group.close()

    app.mux.publish("clock", seconds)
    return app


async def read_tick(session: Session, wait: float = 10.0) -> bytes | None:
    """Subscribe to ``clock/seconds`` (see :func:`tick_app`) and return its first frame."""
    track = await session.subscribe("clock", "seconds")
    group = await asyncio.wait_for(track.next_group(), wait)
    assert group is not None
    return await asyncio.wait_for(group.read_frame(), wait)

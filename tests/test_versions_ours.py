"""Every version between our own client and server, on every transport, in both roles.

For each version the server is restricted to it (``MoQ(versions=...)``) and
our client offers everything, so the negotiation itself is exercised: ALPN on
native QUIC, ``wt-available-protocols`` / ``wt-protocol`` over WebTransport
(through our HTTP/3 and through stock Hypercorn), the SETUP exchange for
lite-01/02 and gomoqt's dialect. Then the client subscribes to the server's
clock and the server subscribes to a broadcast the client publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from moqt_asgi import Broadcast, MoQ, SetupRequest, TrackMux, dial
from moqt_asgi.engine.session import Session
from moqt_asgi.protocol.versions import ALL_VERSIONS, GOMOQT_DIALECT, Version, features_of
from moqt_asgi.testing import connect as memory_connect

from .conftest import Certs
from .helpers import native_server
from .wt_client import hypercorn_server

TIMEOUT = 10
GROUPS = 3
TRANSPORTS = ["memory", "quic", "wt-native", "wt-hypercorn"]


def frames_of(sequence: int) -> list[bytes]:
    return [f"g{sequence}f{i}".encode() * (i + 1) for i in range(3)]


async def produce(track: object, stop: asyncio.Event) -> None:
    sequence = 0
    while not stop.is_set():
        group = track.append_group()  # type: ignore[attr-defined]
        for frame in frames_of(sequence):
            group.write_frame(frame)
        group.finish()
        sequence += 1
        await asyncio.sleep(0.02)


async def read_groups(session: Session, broadcast: str) -> list[tuple[int, list[bytes]]]:
    announcements = await session.announced("")
    async with asyncio.timeout(TIMEOUT):
        while broadcast not in announcements.active:
            await announcements.next()
    announcements.close()
    reader = await session.subscribe(broadcast, "video")
    got = []
    async with asyncio.timeout(TIMEOUT):
        async for group in reader:
            got.append((group.sequence, await group.read_all()))
            if len(got) == GROUPS:
                break
    reader.close()
    return got


def check(got: list[tuple[int, list[bytes]]]) -> None:
    assert len(got) == GROUPS
    sequences = [sequence for sequence, _ in got]
    assert sequences == sorted(sequences) and len(set(sequences)) == GROUPS
    for sequence, frames in got:
        assert frames == frames_of(sequence)


def server_app(version: Version, results: asyncio.Queue[object]) -> tuple[MoQ, Broadcast]:
    """Publishes ``server/clock`` and subscribes to the client's ``client/cam``.

    The route matches every path: lite-03/04 on native QUIC carry none (the session is at ``/``).
    """
    broadcast = Broadcast("server/clock")
    broadcast.create_track("video")
    app = MoQ(versions=(version,))
    app.mux.publish("server/clock", broadcast)

    @app.route("/{rest:path}")
    async def setup(request: SetupRequest) -> None:
        session = await request.accept()
        session.spawn(_server_reads(session, results))

    return app, broadcast


async def _server_reads(session: Session, results: asyncio.Queue[object]) -> None:
    try:
        await results.put((session.version_name, await read_groups(session, "client/cam")))
    except Exception as exc:  # surfaced to the test through the queue
        await results.put(exc)


@contextlib.asynccontextmanager
async def connect(transport: str, app: MoQ, certs: Certs, path: str, mux: TrackMux) -> AsyncIterator[Session]:
    if transport == "memory":  # negotiated as on native QUIC: our client offers every version
        async with memory_connect(app, mux=mux, path=path) as client:
            yield client
        return
    if transport == "wt-hypercorn":
        async with hypercorn_server(app, str(certs.cert), str(certs.key)) as port:
            session = await dial(f"https://127.0.0.1:{port}{path}", fingerprint=certs.fingerprint, mux=mux)
            async with session:
                yield session
        return
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        scheme = "moqt" if transport == "quic" else "https"
        session = await dial(f"{scheme}://127.0.0.1:{server.address[1]}{path}", fingerprint=certs.fingerprint, mux=mux)
        async with session:
            yield session


def cases() -> list[object]:
    out = []
    for version in ALL_VERSIONS:
        for transport in TRANSPORTS:
            marks = [] if transport == "memory" else [pytest.mark.slow]  # real UDP sockets
            if version is GOMOQT_DIALECT and transport.startswith("wt"):
                # gomoqt over WebTransport sends no protocol list and a legacy SETUP: our client does that only
                # when asked for gomoqt alone; covered in test_gomoqt_dialect.py.
                continue
            out.append(pytest.param(version, transport, marks=marks, id=f"{version.name}-{transport}"))
    return out


@pytest.mark.parametrize(("version", "transport"), cases())
async def test_our_client_and_server_on_every_version(version: Version, transport: str, certs: Certs) -> None:
    results: asyncio.Queue[object] = asyncio.Queue()
    app, clock = server_app(version, results)
    stop = asyncio.Event()
    client_mux = TrackMux()
    cam = Broadcast("client/cam")
    client_mux.publish("client/cam", cam)
    producers = [asyncio.ensure_future(produce(clock.tracks["video"], stop)),
                 asyncio.ensure_future(produce(cam.create_track("video"), stop))]
    try:
        async with connect(transport, app, certs, "/publish", client_mux) as client:
            assert client.version_name == version.name
            assert client.features == features_of(version.codec)
            # we subscribe to the server
            check(await read_groups(client, "server/clock"))
            # the server subscribes to us
            result = await asyncio.wait_for(results.get(), TIMEOUT)
            assert not isinstance(result, BaseException), result
            name, got = result  # type: ignore[misc]
            assert name == version.name
            check(got)
    finally:
        stop.set()
        await asyncio.gather(*producers)

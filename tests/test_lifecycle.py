"""Stopping servers and clients: close, graceful shutdown with GOAWAY, and what peers see."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator

import moq
import pytest

from moqt_asgi import Broadcast, Client, MoQ, Server, Session, TrackProducer
from moqt_asgi.protocol.codes import FLAT_CODES, GOAWAY_TIMEOUT, GOMOQT_CODES, SCOPED_CODES, goaway_timeout_code
from moqt_asgi.protocol.errors import ErrorCode
from moqt_asgi.protocol.versions import LITE_02_VERSION, LITE_04_VERSION, LITE_06_VERSION, Version
from moqt_asgi.server import new_router

from .conftest import ROOT, Certs
from .helpers import cli, free_udp_port

pytestmark = pytest.mark.slow

TIMEOUT = 10


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def no_leaks(*, fds_too: bool = True) -> AsyncIterator[None]:
    """No task left running and no file descriptor left open by what runs inside.

    ``fds_too=False`` for tests that start moq-rs: its runtime keeps its own threads and descriptors.
    """
    tasks = set(asyncio.all_tasks())
    fds = open_fds()
    yield
    for _ in range(40):
        leaked = {t for t in asyncio.all_tasks() - tasks if not t.done() and t is not asyncio.current_task()}
        extra = open_fds() - fds if fds_too else set()
        if not leaked and not extra:
            return
        await asyncio.sleep(0.05)
    assert not leaked, f"tasks left running: {leaked}"
    assert not extra, f"file descriptors left open: {extra}"


def clock_app(version: Version) -> tuple[MoQ, TrackProducer]:
    app = new_router(versions=(version,))
    broadcast = Broadcast("clock")
    track = broadcast.create_track("seconds")
    app.mux.publish("clock", broadcast)
    return app, track


async def ticking(track: TrackProducer, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        track.write_frame(str(n).encode())
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def server_for(app: MoQ, certs: Certs) -> Server:
    return Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app)


def url_of(server: Server) -> str:
    host, port = server.address
    return f"moql://{host}:{port}/"


def test_goaway_timeout_code_per_dialect() -> None:
    assert SCOPED_CODES.session_out(GOAWAY_TIMEOUT) == 0x10
    assert GOMOQT_CODES.session_out(GOAWAY_TIMEOUT) == 0x10
    assert goaway_timeout_code(FLAT_CODES) == ErrorCode.TIMEOUT
    assert goaway_timeout_code(SCOPED_CODES) == GOAWAY_TIMEOUT
    assert SCOPED_CODES.session_in(0x10) == ErrorCode.TIMEOUT


async def test_close_is_immediate_and_idempotent(certs: Certs) -> None:
    async with no_leaks():
        app, _ = clock_app(LITE_06_VERSION)
        server = server_for(app, certs)
        await server.start()
        client = Client(fingerprint=certs.fingerprint)
        session = await client.dial(url_of(server))
        await session.subscribe("clock", "seconds")
        for _ in range(100):
            if server.sessions:
                break
            await asyncio.sleep(0.01)
        assert len(server.sessions) == 1
        started = time.monotonic()
        assert await server.close() is True
        closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
        assert time.monotonic() - started < 1.0
        assert closed.code == ErrorCode.CANCEL and closed.remote  # no error
        assert await server.close() is False
        assert await server.shutdown(1) is False
        assert server.closed and not server.sessions
        assert await client.close() is True
        assert await client.close() is False


async def test_shutdown_sends_goaway_then_closes_a_client_that_stays(certs: Certs) -> None:
    async with no_leaks():
        app, broadcast = clock_app(LITE_06_VERSION)
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticking(broadcast, stop))
        async with server_for(app, certs) as server:
            client = Client(fingerprint=certs.fingerprint)
            session = await client.dial(url_of(server))
            assert session.version_name == LITE_06_VERSION.name
            track = await session.subscribe("clock", "seconds")
            await asyncio.wait_for(track.next_group(), TIMEOUT)
            started = time.monotonic()
            shutdown = asyncio.ensure_future(server.shutdown(0.5, uri="moql://127.0.0.1:1/next"))
            assert await asyncio.wait_for(session.wait_goaway(), TIMEOUT) == "moql://127.0.0.1:1/next"
            assert await asyncio.wait_for(shutdown, TIMEOUT) is False  # the client did not leave
            assert 0.45 < time.monotonic() - started < 2.0
            closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            assert closed.remote and closed.code == ErrorCode.TIMEOUT  # 0x10 GOAWAY_TIMEOUT on the wire
            assert client.goaway_target(session, "/other") == f"{url_of(server)[:-1]}/other"
            await client.close()
        stop.set()
        await tick


async def test_shutdown_returns_early_when_the_client_leaves(certs: Certs) -> None:
    async with no_leaks():
        app, broadcast = clock_app(LITE_06_VERSION)
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticking(broadcast, stop))
        server = server_for(app, certs)
        await server.start()
        told: list[str] = []

        async def leave(session: Session, uri: str) -> None:
            told.append(uri)
            await session.aclose()

        client = Client(fingerprint=certs.fingerprint, on_goaway=leave)
        session = await client.dial(url_of(server))
        track = await session.subscribe("clock", "seconds")
        await asyncio.wait_for(track.next_group(), TIMEOUT)
        started = time.monotonic()
        assert await server.shutdown(5) is True
        assert time.monotonic() - started < 2.0
        assert told == [""]
        assert server.closed
        await client.close()
        stop.set()
        await tick


async def test_client_reconnects_where_goaway_points(certs: Certs) -> None:
    async with no_leaks():
        app, _track = clock_app(LITE_06_VERSION)
        async with server_for(app, certs) as old, server_for(app, certs) as new:
            client = Client(fingerprint=certs.fingerprint)
            session = await client.dial(url_of(old))
            moved = asyncio.ensure_future(client.reconnect(session))
            await asyncio.sleep(0.05)
            assert await old.shutdown(5, uri=url_of(new)) is True  # the client left for the new server
            fresh = await asyncio.wait_for(moved, TIMEOUT)
            assert session.closed and not fresh.closed
            assert client.url_of(fresh) == url_of(new)
            assert client.sessions == [fresh]
            assert await client.shutdown(2) is True  # idle: closed at once
            assert fresh.closed


async def test_shutdown_closes_a_lite02_session_once_idle(certs: Certs) -> None:
    async with no_leaks():
        app, broadcast = clock_app(LITE_02_VERSION)
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticking(broadcast, stop))
        async with server_for(app, certs) as server:
            client = Client(fingerprint=certs.fingerprint)
            session = await client.dial(url_of(server))
            assert session.version_name == LITE_02_VERSION.name and not session.features.goaway
            track = await session.subscribe("clock", "seconds")
            await asyncio.wait_for(track.next_group(), TIMEOUT)
            shutdown = asyncio.ensure_future(server.shutdown(5))
            await asyncio.sleep(0.3)
            assert not session.closed  # still being served
            started = time.monotonic()
            track.close()
            closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            assert time.monotonic() - started < 1.0
            assert closed.remote and closed.code == ErrorCode.CANCEL
            assert await asyncio.wait_for(shutdown, TIMEOUT) is True
            await client.close()
        stop.set()
        await tick


async def test_client_close_and_shutdown(certs: Certs) -> None:
    async with no_leaks():
        app, broadcast = clock_app(LITE_06_VERSION)
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticking(broadcast, stop))
        async with server_for(app, certs) as server:
            peers: list[Session] = []
            # the client's GOAWAY reaches the server's session
            busy = Client(fingerprint=certs.fingerprint)
            session = await busy.dial(url_of(server))
            track = await session.subscribe("clock", "seconds")
            await asyncio.wait_for(track.next_group(), TIMEOUT)
            peers = server.sessions
            assert len(peers) == 1
            started = time.monotonic()
            assert await busy.shutdown(0.4) is False  # still subscribed at the deadline
            assert 0.35 < time.monotonic() - started < 2.0
            assert await asyncio.wait_for(peers[0].wait_goaway(), TIMEOUT) == ""
            closed = await asyncio.wait_for(peers[0].wait_closed(), TIMEOUT)
            assert closed.remote and closed.code == ErrorCode.TIMEOUT
            assert session.closed and await busy.shutdown(1) is False and await busy.close() is False
            idle = Client(fingerprint=certs.fingerprint)
            quiet = await idle.dial(url_of(server))
            started = time.monotonic()
            assert await idle.shutdown(5) is True
            assert time.monotonic() - started < 1.0 and quiet.closed
            with pytest.raises(Exception, match="closed"):
                await idle.dial(url_of(server))
        stop.set()
        await tick


@pytest.mark.interop
@pytest.mark.parametrize("version", [LITE_04_VERSION, LITE_06_VERSION], ids=lambda v: v.name)
async def test_moqrs_subscriber_leaves_on_goaway(certs: Certs, version: Version) -> None:
    async with no_leaks(fds_too=False):
        app, broadcast = clock_app(version)
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticking(broadcast, stop))
        async with server_for(app, certs) as server:
            async with moq.Client(url_of(server), tls_fingerprints=[certs.fingerprint], reconnect=False,
                                  websocket_enabled=False) as peer:
                announced = await asyncio.wait_for(peer.announced_broadcast("clock"), TIMEOUT)
                track = await announced.subscribe_track("seconds")
                await asyncio.wait_for(track.next_group(), TIMEOUT)
                assert [s.version_name for s in server.sessions] == [version.name]
                started = time.monotonic()
                clean = await server.shutdown(3)
                elapsed = time.monotonic() - started
                ended = await asyncio.wait_for(track_end(track), TIMEOUT)
                session = peer.session
                assert session is not None
                outcome = await asyncio.wait_for(session_end(session), TIMEOUT)
        stop.set()
        await tick
    assert clean is True, f"moq-rs did not leave within the grace ({elapsed:.2f}s)"
    assert elapsed < 2.0
    assert ended in ("end", "error"), ended
    assert outcome == "closed", outcome


async def track_end(track: object) -> str:
    try:
        while await track.next_group() is not None:  # type: ignore[attr-defined]
            pass
    except moq.Error:
        return "error"
    return "end"


async def session_end(session: object) -> str:
    try:
        await session.closed()  # type: ignore[attr-defined]
    except moq.Error as exc:
        return f"error: {exc}"
    return "closed"


@pytest.mark.cli
@pytest.mark.interop
def test_cli_serve_shuts_down_gracefully_on_sigterm(certs: Certs) -> None:
    port = free_udp_port()
    url = f"moql://127.0.0.1:{port}/"
    process = subprocess.Popen(
        cli("-v", "serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert),
            "--keyfile", str(certs.key), "--graceful-timeout", "3"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        while line and "serving" not in line:
            line = process.stdout.readline()
        assert "serving" in line, line

        async def watch() -> tuple[float, str, str]:
            async with moq.Client(url, tls_fingerprints=[certs.fingerprint], reconnect=False,
                                  websocket_enabled=False) as peer:
                broadcast = await asyncio.wait_for(peer.announced_broadcast("clock"), TIMEOUT)
                track = await broadcast.subscribe_track("seconds")
                await asyncio.wait_for(track.next_group(), TIMEOUT)
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                ended = await asyncio.wait_for(track_end(track), TIMEOUT)
                session = peer.session
                assert session is not None
                outcome = await asyncio.wait_for(session_end(session), TIMEOUT)
                return time.monotonic() - started, ended, outcome

        seconds, ended, outcome = asyncio.run(watch())
        assert process.wait(timeout=5) == 0
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert seconds < 3.0, (seconds, output)  # well within the grace: no idle timeout involved
    assert ended in ("end", "error") and outcome == "closed", (ended, outcome, output)
    assert "shutdown finished" in output, output


@pytest.mark.cli
def test_cli_second_signal_forces_close(certs: Certs) -> None:
    port = free_udp_port()
    process = subprocess.Popen(
        cli("-v", "serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert),
            "--keyfile", str(certs.key), "--graceful-timeout", "30"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        while line and "serving" not in line:
            line = process.stdout.readline()

        async def hold() -> float:
            client = Client(fingerprint=certs.fingerprint)
            session = await client.dial(f"moql://127.0.0.1:{port}/")
            track = await session.subscribe("clock", "seconds")
            await asyncio.wait_for(track.next_group(), TIMEOUT)  # busy: shutdown would wait 30 s
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(session.wait_goaway(), TIMEOUT)
            started = time.monotonic()
            process.send_signal(signal.SIGINT)
            closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            assert closed.code == ErrorCode.CANCEL, closed
            await client.close()
            return time.monotonic() - started

        assert asyncio.run(hold()) < 2.0
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


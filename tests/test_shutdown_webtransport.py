"""Stopping WebTransport MoQ sessions: ``Server.shutdown``/``close`` over our own HTTP/3, and Hypercorn's own stop.

Under Hypercorn the stop reaches each session as ``request_shutdown`` (ASGI
``webtransport.shutdown``); a ``MoQ`` app then does for that session what
``Server.shutdown`` does: GOAWAY on lite-04+, a close once idle on older
versions, the GOAWAY-timeout close at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import moq
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from moqt_asgi import Client, MoQ, Server, Session
from moqt_asgi.protocol.errors import ErrorCode
from moqt_asgi.protocol.versions import ALL_VERSIONS, LITE_02_VERSION, LITE_04_VERSION, LITE_06_VERSION, Version
from moqt_asgi.webtransport.asgi import WebTransportASGI
from moqt_asgi.webtransport.capsules import CloseCapsule, DrainCapsule
from moqt_asgi.webtransport.hypercorn import shutdown_grace
from moqt_asgi.webtransport.session import WebTransportSession

from .conftest import ROOT, Certs
from .helpers import free_udp_port
from .test_lifecycle import clock_app, no_leaks, session_end, ticking, track_end
from .test_webtransport_cli import hypercorn_command
from .test_webtransport_session import FakeHost
from .wt_client import wait_udp_port, wt_client

pytestmark = pytest.mark.slow

TIMEOUT = 10
GRACEFUL = 2.0
"""``--graceful-timeout`` of the Hypercorn subprocesses."""

CUT = "when Hypercorn's graceful_timeout ran out"
"""What the patched Hypercorn logs when its graceful timeout cut connections."""

Message = MutableMapping[str, Any]


def https_of(server: Server) -> str:
    host, port = server.address
    return f"https://{host}:{port}/"


def wt_server(app: MoQ, certs: Certs) -> Server:
    return Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app,
                  webtransport=True)


@contextlib.asynccontextmanager
async def clock_ticking(version: Version) -> AsyncIterator[MoQ]:
    app, track = clock_app(version)
    stop = asyncio.Event()
    tick = asyncio.ensure_future(ticking(track, stop))
    try:
        yield app
    finally:
        stop.set()
        await tick


async def subscribed(client: Client, url: str, version: Version) -> tuple[Session, Any]:
    """A session to ``url`` on ``version``, subscribed to the clock and past its first group."""
    session = await client.dial(url)
    assert session.version_name == version.name
    track = await session.subscribe("clock", "seconds")
    await asyncio.wait_for(track.next_group(), TIMEOUT)
    return session, track


# -- the signal itself
async def test_shutdown_signal_fires_once_and_late_callbacks_at_once() -> None:
    session = WebTransportSession(FakeHost(), 0)
    got: list[float] = []
    session.on_shutdown(got.append)
    assert session.shutdown_left() is None and not got
    session.request_shutdown(2.0)
    assert len(got) == 1 and 1.5 < got[0] <= 2.0
    session.request_shutdown(0.1)  # only the first request counts
    assert len(got) == 1
    left = session.shutdown_left()
    assert left is not None and 1.5 < left <= got[0]
    late: list[float] = []
    session.on_shutdown(late.append)
    assert len(late) == 1 and 1.5 < late[0] <= got[0]
    past = WebTransportSession(FakeHost(), 4)
    past.request_shutdown(-1.0)
    past.on_shutdown(late.append)
    assert late[1] == 0.0 and past.shutdown_left() == 0.0


async def test_asgi_receive_delivers_webtransport_shutdown() -> None:
    session = WebTransportSession(FakeHost(), 0)
    adapter = WebTransportASGI(session)
    assert (await adapter.receive())["type"] == "webtransport.connect"
    session.accept()
    pending = asyncio.ensure_future(adapter.receive())
    await asyncio.sleep(0.01)
    assert not pending.done()
    session.request_shutdown(3.0)
    message = await asyncio.wait_for(pending, TIMEOUT)
    assert message["type"] == "webtransport.shutdown" and 2.5 < message["timeout"] <= 3.0
    session.close(0)
    assert (await adapter.receive())["type"] == "webtransport.disconnect"
    await adapter.stop_pumps()


def test_hypercorn_grace_stays_within_graceful_timeout() -> None:
    assert shutdown_grace(3.0) == 2.5
    assert shutdown_grace(2.0) == 1.5
    assert shutdown_grace(0.6) == 0.3
    assert shutdown_grace(0.0) == 0.0


# -- Server over our own HTTP/3
@pytest.mark.parametrize("version", [LITE_06_VERSION, LITE_02_VERSION], ids=lambda v: v.name)
async def test_server_shutdown_closes_a_webtransport_client_that_stays(certs: Certs, version: Version) -> None:
    async with no_leaks(), clock_ticking(version) as app, wt_server(app, certs) as server:
        client = Client(fingerprint=certs.fingerprint, versions=(version,))
        session, _track = await subscribed(client, https_of(server), version)
        assert session.connection.__class__ is WebTransportSession
        shutdown = asyncio.ensure_future(server.shutdown(0.5, uri="https://127.0.0.1:1/next"))
        if session.features.goaway:
            assert await asyncio.wait_for(session.wait_goaway(), TIMEOUT) == "https://127.0.0.1:1/next"
        assert await asyncio.wait_for(shutdown, TIMEOUT) is False  # still subscribed at the deadline
        closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
        assert closed.remote and closed.code == ErrorCode.TIMEOUT, closed  # the GOAWAY-timeout code
        assert session.goaway_uri == ("https://127.0.0.1:1/next" if session.features.goaway else None)
        await client.close()


@pytest.mark.parametrize("version", [LITE_06_VERSION, LITE_02_VERSION], ids=lambda v: v.name)
async def test_server_shutdown_ends_when_the_webtransport_client_leaves(certs: Certs, version: Version) -> None:
    async with no_leaks(), clock_ticking(version) as app, wt_server(app, certs) as server:
        told: list[str] = []

        async def leave(session: Session, uri: str) -> None:
            told.append(uri)
            await session.aclose()

        client = Client(fingerprint=certs.fingerprint, versions=(version,), on_goaway=leave)
        session, track = await subscribed(client, https_of(server), version)
        shutdown = asyncio.ensure_future(server.shutdown(5))
        if not session.features.goaway:  # no GOAWAY: closed by the server as soon as it is idle
            await asyncio.sleep(0.3)
            assert not session.closed
            track.close()
        assert await asyncio.wait_for(shutdown, TIMEOUT) is True
        closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
        if session.features.goaway:
            assert told == [""] and not closed.remote
        else:
            assert closed.remote and closed.code == ErrorCode.CANCEL, closed
        assert server.closed and not server.sessions
        await client.close()


async def test_server_close_closes_webtransport_sessions_with_code_0(certs: Certs) -> None:
    async with no_leaks(), clock_ticking(LITE_06_VERSION) as app:
        old = MoQ(mux=app.mux, versions=(LITE_02_VERSION,))
        async with wt_server(app, certs) as server, wt_server(old, certs) as older:
            client = Client(fingerprint=certs.fingerprint)
            sessions = [(await subscribed(client, https_of(server), LITE_06_VERSION))[0],
                        (await subscribed(client, https_of(older), LITE_02_VERSION))[0]]
            assert await server.close() is True and await older.close() is True
            for session in sessions:
                closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
                assert closed.remote and closed.code == ErrorCode.CANCEL, closed  # 0: no error
            assert server.closed and older.closed
            await client.close()


@pytest.mark.interop
@pytest.mark.parametrize("version", [LITE_04_VERSION, LITE_06_VERSION], ids=lambda v: v.name)
async def test_moqrs_webtransport_subscriber_leaves_on_goaway(certs: Certs, version: Version) -> None:
    async with no_leaks(fds_too=False), clock_ticking(version) as app, wt_server(app, certs) as server:
        async with moq.Client(https_of(server), tls_fingerprints=[certs.fingerprint], reconnect=False,
                              websocket_enabled=False) as peer:
            announced = await asyncio.wait_for(peer.announced_broadcast("clock"), TIMEOUT)
            track = await announced.subscribe_track("seconds")
            await asyncio.wait_for(track.next_group(), TIMEOUT)
            assert [(s.version_name, type(s.connection)) for s in server.sessions] == [
                (version.name, WebTransportSession)]
            clean = await server.shutdown(3)
            ended = await asyncio.wait_for(track_end(track), TIMEOUT)
            assert peer.session is not None
            outcome = await asyncio.wait_for(session_end(peer.session), TIMEOUT)
    assert clean is True, "moq-rs did not leave within the grace"
    assert ended in ("end", "error") and outcome == "closed", (ended, outcome)


# -- Hypercorn in-process: the wire codes
@contextlib.asynccontextmanager
async def hypercorn_in_process(app: Any, certs: Certs, graceful_timeout: float
                               ) -> AsyncIterator[tuple[int, Callable[[], Awaitable[float]]]]:
    """``app`` on Hypercorn in this loop; yields ``(port, stop)``, ``stop()`` returning how long serve() took to end."""
    config = Config()
    port = free_udp_port()
    config.quic_bind = [f"127.0.0.1:{port}"]
    config.bind = []
    config.certfile, config.keyfile = str(certs.cert), str(certs.key)
    config.graceful_timeout = graceful_timeout
    trigger = asyncio.Event()
    task = asyncio.ensure_future(serve(app, config, shutdown_trigger=trigger.wait))  # type: ignore[arg-type]

    async def stop() -> float:
        started = time.monotonic()
        trigger.set()
        await asyncio.wait_for(task, TIMEOUT)
        return time.monotonic() - started

    try:
        await wait_udp_port(port, alive=lambda: not task.done())
        yield port, stop
    finally:
        if not task.done():
            trigger.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.parametrize("version", [LITE_06_VERSION, LITE_02_VERSION], ids=lambda v: v.name)
async def test_hypercorn_stop_closes_a_client_that_stays_with_the_goaway_timeout_code(
        certs: Certs, version: Version, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "moqt_asgi")
    async with no_leaks(), clock_ticking(version) as app:
        app.goaway_uri = "https://127.0.0.1:1/elsewhere"
        async with hypercorn_in_process(app, certs, graceful_timeout=1.0) as (port, stop):
            client = Client(fingerprint=certs.fingerprint, versions=(version,))
            session, _track = await subscribed(client, f"https://127.0.0.1:{port}/", version)
            stopping = asyncio.ensure_future(stop())
            if session.features.goaway:
                assert await asyncio.wait_for(session.wait_goaway(), TIMEOUT) == app.goaway_uri
            closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            assert closed.remote and closed.code == ErrorCode.TIMEOUT, closed  # the app's close, at its deadline
            assert await stopping >= shutdown_grace(1.0)
            await client.close()
    assert "still open after the grace period" in caplog.text  # closed by the app, not by the fallback
    assert CUT not in caplog.text  # before Hypercorn gave up


async def test_hypercorn_stop_closes_an_idle_lite02_session_at_once(certs: Certs) -> None:
    async with no_leaks(), clock_ticking(LITE_02_VERSION) as app:
        async with hypercorn_in_process(app, certs, graceful_timeout=5.0) as (port, stop):
            client = Client(fingerprint=certs.fingerprint, versions=(LITE_02_VERSION,))
            session = await client.dial(f"https://127.0.0.1:{port}/")
            stopping = asyncio.ensure_future(stop())
            closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            assert closed.remote and closed.code == ErrorCode.CANCEL, closed  # code 0: idle, closed at once
            assert await stopping < shutdown_grace(5.0)  # nothing waited for the deadline
            await client.close()


async def test_hypercorn_stop_reaches_an_asgi_app_as_webtransport_shutdown(certs: Certs) -> None:
    """A plain ASGI app gets ``webtransport.shutdown`` (the peer gets DRAIN) and closes with its own code."""
    seen: list[Message] = []

    async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "webtransport":
            return
        await receive()
        await send({"type": "webtransport.accept"})
        while (message := await receive())["type"] != "webtransport.disconnect":
            seen.append(message)
            if message["type"] == "webtransport.shutdown":
                await send({"type": "webtransport.close", "code": 42, "reason": "bye"})

    async with no_leaks(), hypercorn_in_process(app, certs, graceful_timeout=2.0) as (port, stop):
        async with wt_client(port) as client:
            session_id, response = await client.connect_session("/")
            assert response.status == 200
            stream = client.open_stream(session_id)
            client.send(stream, b"hello")
            await client.wait_for(lambda: seen)
            stopping = asyncio.ensure_future(stop())
            capsule = await client.wait_for(lambda: client.close_capsule(session_id))
            assert capsule == CloseCapsule(42, "bye")
            assert any(isinstance(c, DrainCapsule) for c in client.capsules[session_id])
            assert await stopping < shutdown_grace(2.0)  # the app closed at once: nobody waited for the grace
    shutdowns = [m for m in seen if m["type"] == "webtransport.shutdown"]
    assert len(shutdowns) == 1 and 1.0 < shutdowns[0]["timeout"] <= shutdown_grace(2.0), seen


async def test_hypercorn_stop_closes_an_asgi_app_that_ignores_it(certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "webtransport":
            await receive()
            await send({"type": "webtransport.accept"})
            while (await receive())["type"] != "webtransport.disconnect":
                pass

    async with no_leaks(), hypercorn_in_process(app, certs, graceful_timeout=1.0) as (port, stop):
        async with wt_client(port) as client:
            session_id, response = await client.connect_session("/")
            assert response.status == 200
            stopping = asyncio.ensure_future(stop())
            capsule = await client.wait_for(lambda: client.close_capsule(session_id))
            assert capsule == CloseCapsule(0, "server shutting down")
            assert await stopping >= shutdown_grace(1.0)
    assert CUT not in caplog.text  # closed before Hypercorn gave up


async def test_hypercorn_warns_when_its_graceful_timeout_cuts_a_session(
        certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    """An app that never returns keeps Hypercorn waiting until it gives up: that is logged."""
    async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "webtransport":
            await receive()
            await send({"type": "webtransport.accept"})
            while (await receive())["type"] != "webtransport.disconnect":
                pass
            await asyncio.sleep(3 * TIMEOUT)  # stuck

    async with no_leaks(), hypercorn_in_process(app, certs, graceful_timeout=0.6) as (port, stop):
        async with wt_client(port) as client:
            session_id, response = await client.connect_session("/")
            assert response.status == 200
            with caplog.at_level(logging.WARNING, "moqt_asgi.webtransport"):
                assert await stop() >= 0.6
            assert client.close_capsule(session_id) == CloseCapsule(0, "server shutting down")
    assert CUT in caplog.text


# -- the hypercorn command line
def hypercorn_clock(version_name: str) -> MoQ:
    """The app the ``hypercorn`` subprocesses serve: the clock on one version, logging to stderr."""
    log = logging.getLogger("moqt_asgi")
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler(sys.stderr))
    version = next(v for v in ALL_VERSIONS if v.name == version_name)
    app, track = clock_app(version)
    stop = asyncio.Event()
    tickers: list[asyncio.Task[None]] = []

    async def start() -> None:
        tickers.append(asyncio.ensure_future(ticking(track, stop)))

    async def end() -> None:
        stop.set()
        await asyncio.gather(*tickers)

    app.on_startup.append(start)
    app.on_shutdown.append(end)
    return app


def start_hypercorn(certs: Certs, version: Version) -> tuple[int, subprocess.Popen[str]]:
    port = free_udp_port()
    command = hypercorn_command(f"tests.test_shutdown_webtransport:hypercorn_clock({version.name!r})", port, certs,
                                "--graceful-timeout", str(int(GRACEFUL)))
    process = subprocess.Popen(command, cwd=ROOT, text=True, env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        asyncio.run(wait_udp_port(port, TIMEOUT, alive=lambda: process.poll() is None))
    except BaseException:
        process.kill()
        process.wait()
        raise
    return port, process


def finish(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
        process.wait()
    assert process.stdout is not None
    return process.stdout.read()


@pytest.mark.cli
@pytest.mark.interop
def test_hypercorn_sigterm_moqrs_leaves_on_goaway(certs: Certs) -> None:
    port, process = start_hypercorn(certs, LITE_06_VERSION)

    async def run() -> tuple[float, str, str, int, float]:
        async with moq.Client(f"https://127.0.0.1:{port}/", tls_fingerprints=[certs.fingerprint], reconnect=False,
                              websocket_enabled=False) as peer:
            announced = await asyncio.wait_for(peer.announced_broadcast("clock"), TIMEOUT)
            track = await announced.subscribe_track("seconds")
            await asyncio.wait_for(track.next_group(), TIMEOUT)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            ended = await asyncio.wait_for(track_end(track), TIMEOUT)
            assert peer.session is not None
            outcome = await asyncio.wait_for(session_end(peer.session), TIMEOUT)
            left = time.monotonic() - started
        code = await asyncio.to_thread(process.wait, TIMEOUT)
        return left, ended, outcome, code, time.monotonic() - started

    try:
        left, ended, outcome, code, exited = asyncio.run(run())
    finally:
        output = finish(process)
    assert f"session accepted: {LITE_06_VERSION.name} over webtransport" in output, output
    assert "sent GOAWAY" in output, output
    assert "still open after the grace period" not in output, output  # moq-rs left by itself
    assert ended in ("end", "error") and outcome == "closed", (ended, outcome, output)
    assert left < GRACEFUL, (left, output)
    assert code == 0 and exited < GRACEFUL, (code, exited, output)
    assert CUT not in output and "Traceback" not in output, output


@pytest.mark.cli
def test_hypercorn_sigterm_closes_a_client_that_ignores_goaway(certs: Certs) -> None:
    port, process = start_hypercorn(certs, LITE_06_VERSION)

    async def run() -> tuple[str, Any, float, int, float]:
        client = Client(fingerprint=certs.fingerprint)
        session, _track = await subscribed(client, f"https://127.0.0.1:{port}/", LITE_06_VERSION)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        uri = await asyncio.wait_for(session.wait_goaway(), TIMEOUT)
        closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
        closed_after = time.monotonic() - started
        await client.close()
        code = await asyncio.to_thread(process.wait, TIMEOUT)
        return uri, closed, closed_after, code, time.monotonic() - started

    try:
        uri, closed, closed_after, code, exited = asyncio.run(run())
    finally:
        output = finish(process)
    assert uri == "" and "sent GOAWAY" in output, output
    assert closed.remote and closed.code == ErrorCode.TIMEOUT, (closed, output)  # the GOAWAY-timeout code
    assert "still open after the grace period" in output, output
    assert closed_after < GRACEFUL, (closed_after, output)
    assert code == 0 and exited < GRACEFUL + 1.0, (code, exited, output)  # + the interpreter's own exit
    assert CUT not in output and "Traceback" not in output, output  # Hypercorn did not have to give up

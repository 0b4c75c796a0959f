"""Stopping MoQ sessions over WebSocket: Hypercorn's stop (hook H10, the ``moqt.shutdown`` extension) and ``serve``'s.

Under Hypercorn the WebSocket scope carries ``moqt.shutdown``; when the
worker stops, each session is told with the grace WebTransport gets
(:func:`shutdown_grace`), so a lite-04+ peer hears GOAWAY and whatever stays
is closed before Hypercorn's ``graceful_timeout`` cancels the connection.
``Server.shutdown`` reaches WebSocket sessions through its session registry.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import hypercorn.protocol.ws_stream as hc_ws_stream
import moq
import pytest
from hypercorn.config import Config
from hypercorn.protocol.events import Request
from hypercorn.typing import ConnectionState

from moqt_asgi import Server
from moqt_asgi.protocol.errors import ErrorCode
from moqt_asgi.websocket.client import dial_websocket
from moqt_asgi.webtransport.hypercorn import shutdown_grace

from .conftest import Certs
from .helpers import WAIT, eventually, tick_app, within
from .test_websocket_hypercorn import TIMEOUT, hypercorn_ws  # noqa: F401  (the fixture)

HYPERCORN_GRACE = 3.0
"""Hypercorn's default ``graceful_timeout``."""
CANCELLED = "CancelledError"
"""What Hypercorn's log shows when it cancels a TCP connection still open at its graceful timeout."""


# -- H10 in process
class _Context:
    def __init__(self) -> None:
        self.terminated = asyncio.Event()


class _TaskGroup:
    """Records the scope an application would be spawned with."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def spawn_app(self, app: Any, config: Any, scope: dict[str, Any], send: Any) -> Any:
        self.scopes.append(dict(scope, extensions=dict(scope["extensions"])))  # as the application sees it

        async def put(message: Any) -> None:
            pass

        return put


async def spawned_scope(graceful_timeout: float) -> tuple[dict[str, Any], _Context]:
    """Hypercorn's ``WSStream`` handles an upgrade request: the scope the application is spawned with."""
    config = Config()
    config.graceful_timeout = graceful_timeout
    context, task_group = _Context(), _TaskGroup()

    async def send(event: Any) -> None:
        pass

    stream = hc_ws_stream.WSStream(object(), config, context, task_group, False,  # type: ignore[arg-type]
                                   ("127.0.0.1", 40000), ("127.0.0.1", 8080), send, 1)
    headers = [(b"host", b"127.0.0.1"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"sec-websocket-version", b"13")]
    await stream.handle(Request(stream_id=1, headers=headers, http_version="1.1", method="GET", raw_path=b"/",
                                state=ConnectionState({})))
    (scope,) = task_group.scopes
    return scope, context


async def test_hypercorn_websocket_scope_offers_moqt_shutdown_with_the_webtransport_grace() -> None:
    scope, context = await spawned_scope(2.0)
    assert "websocket.http.response" in scope["extensions"]  # Hypercorn's own extension is kept
    register = scope["extensions"]["moqt.shutdown"]["on_shutdown"]
    told: list[float] = []
    withdrawn: list[float] = []
    register(told.append)
    withdraw = register(withdrawn.append)
    withdraw()  # a session that ended before the stop hears nothing
    await asyncio.sleep(0)
    assert told == []
    context.terminated.set()
    await eventually(lambda: told, "the registered callback is called")
    assert told == [shutdown_grace(2.0)] and withdrawn == []


async def test_hypercorn_websocket_scope_registered_after_the_stop_is_told_at_once() -> None:
    scope, context = await spawned_scope(3.0)
    context.terminated.set()
    told: list[float] = []
    scope["extensions"]["moqt.shutdown"]["on_shutdown"](told.append)
    await eventually(lambda: told, "the late callback is called")
    assert told == [shutdown_grace(3.0)]


# -- the stock hypercorn command line
def stop_and_collect(server: Any) -> tuple[float, str]:
    """SIGTERM Hypercorn; how long it took to exit, and everything it logged."""
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(TIMEOUT)
    took = time.monotonic() - started
    assert server.process.stdout is not None
    output = server.process.stdout.read()
    assert server.process.returncode == 0, output
    return took, output


@pytest.mark.cli
def test_hypercorn_stop_sends_goaway_over_websocket_then_closes_a_session_that_stays(hypercorn_ws: Any) -> None:  # noqa: F811
    server = hypercorn_ws("examples.clock:moq")

    async def run() -> tuple[str, Any, float, str]:
        session = await dial_websocket(server.url("ws"))
        async with session:
            reader = await session.subscribe("clock", "seconds")
            assert await asyncio.wait_for(reader.next_group(), TIMEOUT) is not None
            stopping = asyncio.ensure_future(asyncio.to_thread(stop_and_collect, server))
            goaway = await asyncio.wait_for(session.wait_goaway(), TIMEOUT)
            closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            took, output = await stopping
            return goaway, closed, took, output

    goaway, closed, took, output = asyncio.run(run())
    assert goaway == ""  # examples.clock sets no goaway_uri
    assert closed.remote and closed.code == ErrorCode.TIMEOUT, closed  # the app's close at the grace's end
    assert took < TIMEOUT, took
    assert CANCELLED not in output and "Traceback" not in output, output  # closed before Hypercorn cancelled it


@pytest.mark.cli
def test_hypercorn_stop_closes_an_idle_lite02_websocket_session_at_once(hypercorn_ws: Any) -> None:  # noqa: F811
    server = hypercorn_ws("examples.clock:moq")

    async def run() -> tuple[Any, float, str]:
        session = await dial_websocket(server.url("ws"), versions=("moq-lite-02",))
        async with session:
            assert session.codec.name == "moq-lite-02"
            started = time.monotonic()
            stopping = asyncio.ensure_future(asyncio.to_thread(stop_and_collect, server))
            closed = await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            closed_after = time.monotonic() - started
            _, output = await stopping
            return closed, closed_after, output

    closed, closed_after, output = asyncio.run(run())
    assert closed.remote and closed.code == ErrorCode.CANCEL, closed  # no GOAWAY in lite-02: code 0, idle
    assert closed_after < HYPERCORN_GRACE, closed_after  # closed by the app, not when Hypercorn gave up
    assert CANCELLED not in output and "Traceback" not in output, output


@pytest.mark.cli
@pytest.mark.interop
def test_hypercorn_stop_ends_a_moqrs_websocket_session_without_a_traceback(hypercorn_ws: Any, certs: Certs) -> None:  # noqa: F811
    server = hypercorn_ws("examples.clock:moq")

    async def run() -> tuple[float, str]:
        async with moq.Client(server.url("ws"), tls_fingerprints=[certs.fingerprint], reconnect=False,
                              websocket_enabled=True) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), TIMEOUT)
            track = await broadcast.subscribe_track("seconds")
            assert await asyncio.wait_for(track.next_group(), TIMEOUT) is not None
            return await asyncio.to_thread(stop_and_collect, server)

    took, output = asyncio.run(run())
    assert took < TIMEOUT, took
    assert CANCELLED not in output and "Traceback" not in output, output


# -- serve
async def test_server_shutdown_sends_goaway_to_a_websocket_session(certs: Certs) -> None:
    """``serve``'s TCP listener needs no ``moqt.shutdown``: its WebSocket sessions are in :attr:`Server.sessions`."""
    server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app())
    await server.start()
    try:
        session = await dial_websocket(f"ws://127.0.0.1:{server.tcp_address[1]}/")
        async with session:
            await eventually(lambda: server.sessions, "the WebSocket session is listed")
            stopping = asyncio.ensure_future(server.shutdown(WAIT, uri="https://127.0.0.1:1/next"))
            assert await within(session.wait_goaway()) == "https://127.0.0.1:1/next"
            await session.aclose()  # leaves on GOAWAY
            assert await asyncio.wait_for(stopping, WAIT) is True
    finally:
        await server.close()

"""Who gets a session, for how long a setup may take, and stopping when handlers misbehave.

* a setup handler that never decides: cancelled when the peer leaves, and
  refused with ``TIMEOUT`` after ``setup_handler_timeout``;
* handlers that swallow cancellation: ``close()``/``shutdown()`` still finish
  within their deadline, and the CLI's second signal exits;
* session caps (global and per address), ``require_origin``, and one path
  routing the same over native QUIC and WebTransport.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from moqt_asgi import MoQ, Server, SetupRejected, SetupRequest, TrackWriter, dial
from moqt_asgi.engine.handshake import start_client
from moqt_asgi.protocol.errors import ErrorCode, MoQError, SessionClosed
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.protocol.versions import LITE_02_VERSION, LITE_06_VERSION, SETUP_VERSIONS
from moqt_asgi.serving import serve_connection
from moqt_asgi.transport.memory import memory_pair

from .conftest import ROOT, Certs
from .helpers import free_udp_port

TIMEOUT = 10.0


def hanging_app() -> tuple[MoQ, asyncio.Event, list[str]]:
    """An app whose handler never decides; ``events`` records how it ended."""
    app = MoQ()
    events: list[str] = []
    entered = asyncio.Event()

    @app.route("/{rest:path}")
    async def undecided(request: SetupRequest) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    return app, entered, events


async def test_an_undecided_handler_is_cancelled_when_the_peer_leaves() -> None:
    """Before: the connection's task waited for a decision forever, after the peer had gone."""
    app, entered, events = hanging_app()
    client_conn, server_conn = memory_pair()
    serving = asyncio.ensure_future(serve_connection(app, server_conn, transport="memory"))
    starting = asyncio.ensure_future(start_client(client_conn, DEFAULT_LIMITS, protocol=None, path="/x",
                                                  versions=SETUP_VERSIONS))
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    client_conn.abort()  # the peer vanishes
    await asyncio.wait_for(serving, TIMEOUT)
    assert events == ["cancelled"]
    assert app.session_count == 0
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError, MoQError):
        await starting


async def test_an_undecided_handler_is_refused_with_timeout() -> None:
    app, _, events = hanging_app()
    app.setup_handler_timeout = 0.3
    client_conn, server_conn = memory_pair()
    serving = asyncio.ensure_future(serve_connection(app, server_conn, transport="memory"))
    started = time.monotonic()
    with pytest.raises(SetupRejected) as refused:
        await start_client(client_conn, DEFAULT_LIMITS, protocol=None, path="/x", versions=SETUP_VERSIONS,
                           timeout=TIMEOUT)
    assert refused.value.code == ErrorCode.TIMEOUT
    assert time.monotonic() - started < 3.0
    await asyncio.wait_for(serving, TIMEOUT)
    assert events == ["cancelled"]


class Stubborn:
    """Track handlers that swallow cancellation (until ``release``), as a buggy application might."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.released = False

    async def __call__(self, track: TrackWriter) -> None:
        self.running.set()
        while not self.released:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    def release(self) -> None:
        self.released = True


@contextlib.asynccontextmanager
async def stubborn_server(certs: Certs) -> AsyncIterator[tuple[Server, Stubborn, str]]:
    app = MoQ(versions=[LITE_06_VERSION])
    stubborn = Stubborn()
    app.mux.publish("stuck", stubborn)
    server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app)
    await server.start()
    host, port = server.address
    try:
        yield server, stubborn, f"moql://{host}:{port}/"
    finally:
        stubborn.release()
        await server.close()
        await asyncio.sleep(0.2)  # let the released handlers finish


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["shutdown", "close"])
async def test_stopping_finishes_when_a_handler_swallows_cancellation(certs: Certs, stop: str) -> None:
    """Before: ``shutdown(1)`` was still running after 6 s, and ``close()`` 4 s later."""
    async with stubborn_server(certs) as (server, stubborn, url):
        session = await dial(url, fingerprint=certs.fingerprint)
        subscribing = asyncio.ensure_future(session.subscribe("stuck", "t"))
        await asyncio.wait_for(stubborn.running.wait(), TIMEOUT)
        started = time.monotonic()
        if stop == "shutdown":
            await asyncio.wait_for(server.shutdown(1.0), 10)
            assert time.monotonic() - started < 3.0
        else:
            await asyncio.wait_for(server.close(), 10)
            assert time.monotonic() - started < 2.0
        assert server.closed
        subscribing.cancel()
        with contextlib.suppress(BaseException):
            await subscribing
        await session.aclose()


STUBBORN_APP = textwrap.dedent('''
    import asyncio, contextlib
    from moqt_asgi import MoQ

    moq = MoQ()

    async def stuck(track):
        group = await track.open_group()
        await group.write_frame(b"hello")
        await group.close()
        while True:  # ignores cancellation: only the process exiting stops it
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    moq.mux.publish("stuck", stuck)
''')


@pytest.mark.cli
def test_cli_second_signal_exits_even_when_a_handler_swallows_cancellation(certs: Certs, tmp_path: Path) -> None:
    (tmp_path / "stubborn_app.py").write_text(STUBBORN_APP)
    port = free_udp_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moqt_asgi", "serve", "stubborn_app:moq", "--bind", f"127.0.0.1:{port}", "--certfile",
         str(certs.cert), "--keyfile", str(certs.key), "--graceful-timeout", "30"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving" in line, line

        async def hold() -> None:
            session = await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint)
            track = await session.subscribe("stuck", "t")
            await asyncio.wait_for(track.next_group(), TIMEOUT)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(SessionClosed):
                await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            await session.aclose()

        started = time.monotonic()
        asyncio.run(hold())
        process.wait(timeout=8)
        assert time.monotonic() - started < 8
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            pytest.fail("serve did not exit after a second signal")


@pytest.mark.slow
async def test_session_caps(certs: Certs) -> None:
    app = MoQ(max_sessions=3, max_sessions_per_address=2)
    server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app)
    async with server:
        host, port = server.address
        kept = [await dial(f"moql://{host}:{port}/", fingerprint=certs.fingerprint) for _ in range(2)]
        for url in (f"moql://{host}:{port}/", f"https://{host}:{port}/"):
            with pytest.raises((SetupRejected, SessionClosed)) as refused:
                extra = await dial(url, fingerprint=certs.fingerprint, setup_timeout=5)
                async with extra:
                    await asyncio.wait_for(extra.wait_closed(), TIMEOUT)
                    raise SessionClosed(extra.close_reason.code if extra.close_reason else 0)
            assert refused.value.code in (503, 64 + 503)  # HTTP 503, or application code 503 on native QUIC
        await kept[0].aclose()
        for _ in range(100):
            if app.session_count < 2:
                break
            await asyncio.sleep(0.02)
        again = await dial(f"moql://{host}:{port}/", fingerprint=certs.fingerprint)
        await again.aclose()
        await kept[1].aclose()


@pytest.mark.slow
async def test_require_origin(certs: Certs) -> None:
    app = MoQ(require_origin=True, allow_origins=["https://example.org"])
    server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app)
    async with server:
        host, port = server.address
        with pytest.raises(SetupRejected) as refused:
            await dial(f"https://{host}:{port}/", fingerprint=certs.fingerprint)
        assert refused.value.code == 403
        session = await dial(f"https://{host}:{port}/", fingerprint=certs.fingerprint,
                             headers=[("origin", "https://example.org")])
        await session.aclose()
        with pytest.raises((SetupRejected, SessionClosed, MoQError)):
            native = await dial(f"moql://{host}:{port}/", fingerprint=certs.fingerprint, versions=[LITE_02_VERSION])
            await native.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_one_path_routes_the_same_on_every_transport(certs: Certs, scheme: str) -> None:
    """``%2F`` stays inside a segment on both transports (native QUIC used to route it raw)."""
    app = MoQ()
    seen: list[tuple[str, dict[str, str]]] = []

    @app.route("/rooms/{room}")
    async def room(request: SetupRequest) -> None:
        seen.append((request.path, dict(request.path_params)))
        await request.accept()

    server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app)
    async with server:
        host, port = server.address
        session = await dial(f"{scheme}://{host}:{port}/rooms/a%20b", fingerprint=certs.fingerprint,
                             versions=[LITE_06_VERSION])
        await session.aclose()
        with pytest.raises((SetupRejected, SessionClosed, MoQError)):
            other = await dial(f"{scheme}://{host}:{port}/rooms/a%2Fb", fingerprint=certs.fingerprint,
                               versions=[LITE_06_VERSION], setup_timeout=5)
            async with other:
                await asyncio.wait_for(other.wait_closed(), TIMEOUT)
                raise SessionClosed()
    assert seen == [("/rooms/a b", {"room": "a b"})]


@pytest.mark.cli
def test_serve_flags_set_the_connection_limits(certs: Certs) -> None:
    port = free_udp_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moqt_asgi", "serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}", "--certfile",
         str(certs.cert), "--keyfile", str(certs.key), "--max-connections-per-address", "1", "--retry", "never"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        assert "serving" in process.stdout.readline()

        async def two() -> None:
            first = await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint)
            async with first:
                started = time.monotonic()
                with pytest.raises(MoQError):
                    await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint, setup_timeout=5)
                assert time.monotonic() - started < 3.0  # refused at once, not timed out

        asyncio.run(two())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=TIMEOUT)

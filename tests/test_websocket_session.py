"""MoQ over WebSocket in memory: the ASGI branch of MoQ, the connection's flow control, limits, pings and closes.

The server side is our ``MoQ`` app called with an ASGI ``websocket`` scope by
a small in-memory ASGI server (:class:`FakeServer`); the client side is our
WebSocket client over the other end of an in-memory pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from moqt_asgi import Broadcast, MoQ
from moqt_asgi.engine.session import Session
from moqt_asgi.protocol.errors import SessionClosed, SetupRejected
from moqt_asgi.serving import session_hook
from moqt_asgi.websocket import qmux
from moqt_asgi.websocket.asgi import client_subprotocols
from moqt_asgi.websocket.client import start_websocket_session
from moqt_asgi.websocket.pipe import MemoryPipe, memory_pipe_pair
from moqt_asgi.websocket.qmux import Framing
from moqt_asgi.websocket.session import WebSocketConnection, WebSocketSettings
from tests.helpers import WAIT, eventually, within


class FakeServer:
    """Calls an ASGI app with a ``websocket`` scope whose messages travel over ``pipe``."""

    def __init__(self, pipe: MemoryPipe, *, http_response: bool = True) -> None:
        self.pipe = pipe
        self.http_response = http_response
        self.shutdown_callbacks: list[Any] = []
        self.answer: asyncio.Future[tuple[int, str | None]] = asyncio.get_running_loop().create_future()
        self.connected = False
        self.sessions: list[Session] = []

    def scope(self, path: str, query: str, subprotocols: list[str] | None, headers: list[tuple[bytes, bytes]]) -> Any:
        extensions: dict[str, Any] = {"websocket.http.response": {}} if self.http_response else {}
        extensions["moqt.shutdown"] = {"on_shutdown": self.shutdown_callbacks.append}
        return {"type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "ws",
                "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
                "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080),
                "subprotocols": subprotocols or [], "extensions": extensions}

    async def receive(self) -> Any:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        message = await self.pipe.receive()
        if message is None:
            return {"type": "websocket.disconnect", "code": 1005}
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self.answer.set_result((101, message.get("subprotocol")))
        elif kind == "websocket.send":
            await self.pipe.send(message["bytes"])
        elif kind == "websocket.close":
            if not self.answer.done():
                self.answer.set_result((403, None))
            await self.pipe.close()
        elif kind == "websocket.http.response.start":
            self.answer.set_result((message["status"], None))
        elif kind == "websocket.http.response.body":
            await self.pipe.close()

    def run(self, app: MoQ, *, path: str = "/", query: str = "", subprotocols: list[str] | None = None,
            headers: list[tuple[bytes, bytes]] = ()) -> asyncio.Task[None]:  # type: ignore[assignment]
        session_hook.set(self.sessions.append)
        return asyncio.get_running_loop().create_task(app(self.scope(path, query, subprotocols, list(headers)),
                                                          self.receive, self.send))


@contextlib.asynccontextmanager
async def ws_session(app: MoQ, *, offer: list[str] | None, versions: tuple[str, ...] | None = None,
                     path: str = "/", capacity: int = 256 * 1024,
                     settings: WebSocketSettings | None = None) -> AsyncIterator[tuple[Session, FakeServer]]:
    client_pipe, server_pipe = memory_pipe_pair(capacity)
    server = FakeServer(server_pipe)
    task = server.run(app, path=path, subprotocols=offer)
    status, protocol = await within(server.answer)
    assert status == 101
    session = await within(start_websocket_session(client_pipe, protocol, versions=versions or app.versions,
                                                   settings=settings))
    try:
        yield session, server
    finally:
        await session.aclose()
        await within(task)


VERSION_CASES = [
    (["qmux-01.moq-lite-05"], "moq-lite-05"),
    (["qmux-00.moq-lite-05"], "moq-lite-05"),
    (["qmux-02.moq-lite-06"], "moq-lite-06"),
    (["qmux-01.moq-lite-04"], "moq-lite-04"),
    (["qmux-00.moq-lite-03"], "moq-lite-03"),
    (["qmux-01.moql"], "moq-lite-02"),
    (["qmux-02"], "moq-lite-02"),
    (["qmux-00", "webtransport"], "moq-lite-02"),  # @moq/lite 0.2.2's offer
    (["webtransport"], "moq-lite-01"),
    (None, "moq-lite-02"),  # no subprotocol: legacy framing, SETUP exchange
]


@pytest.mark.parametrize(("offer", "version"), VERSION_CASES)
async def test_subscribe_over_every_framing(offer: list[str] | None, version: str) -> None:
    app = MoQ()
    broadcast = Broadcast("demo")
    track = broadcast.create_track("video")
    app.mux.publish("demo", broadcast)
    big = bytes(range(256)) * 1200  # 300 KiB: past the stream window, many records
    versions = (version,) if version in ("moq-lite-01",) else None
    async with ws_session(app, offer=offer, versions=versions) as (session, _):
        assert session.codec.name == version
        track.write_frame(b"first")  # the subscriber starts at the newest group
        reader = await within(session.subscribe("demo", "video"))
        got = await within(reader.next_group())
        assert got is not None
        assert await within(got.read_all()) == [b"first"]
        group = track.append_group()
        group.write_frame(big)
        group.write_frame(b"last")
        group.finish()
        got = await within(reader.next_group())
        assert got is not None
        assert await within(got.read_all()) == [big, b"last"]


async def test_server_prefers_lite05_from_the_official_offer() -> None:
    app = MoQ()
    moqrs_offer = [*client_subprotocols(app.versions)[:6], "qmux-01.moqt-22", "qmux-02", "qmux-01", "webtransport"]
    async with ws_session(app, offer=moqrs_offer) as (session, _):
        assert session.codec.name == "moq-lite-05"


@pytest.mark.parametrize(("kwargs", "path", "headers", "offer", "status"), [
    ({}, "/", [], ["qmux-01.moqt-18", "qmux-01.moq-00"], 400),
    ({"versions": ("moq-lite-05",)}, "/", [], None, 400),  # legacy framing needs a SETUP-negotiated version
    ({"allow_origins": ["https://good.example"]}, "/", [(b"origin", b"https://evil.example")], ["qmux-01.moq-lite-05"],
     403),
    ({"routes": "one"}, "/nowhere", [], ["qmux-01.moq-lite-05"], 404),
])
async def test_refusals_are_http_answers_before_the_upgrade(kwargs: dict[str, Any], path: str,
                                                           headers: list[tuple[bytes, bytes]],
                                                           offer: list[str] | None, status: int) -> None:
    routes = kwargs.pop("routes", None)
    app = MoQ(**kwargs)
    if routes:
        @app.route("/live")
        async def live(request: Any) -> None:
            await request.accept()
    for http_response, expected in ((True, status), (False, 403)):  # without the extension: a close, i.e. 403
        client_pipe, server_pipe = memory_pipe_pair()
        server = FakeServer(server_pipe, http_response=http_response)
        task = server.run(app, path=path, subprotocols=offer, headers=headers)
        assert (await within(server.answer))[0] == expected
        await within(task)
        assert await within(client_pipe.receive()) is None  # not one byte of MoQ


async def test_server_stopping_sends_goaway_then_closes_at_the_deadline() -> None:
    app = MoQ()
    async with ws_session(app, offer=["qmux-01.moq-lite-05"]) as (session, server):
        assert len(server.shutdown_callbacks) == 1
        server.shutdown_callbacks[0](0.5)  # the server stops in half a second
        assert await within(session.wait_goaway()) == ""
        closed = await within(session.wait_closed())
        assert closed.remote


async def test_setup_handler_rejection_closes_the_session() -> None:
    app = MoQ()

    @app.route("/private")
    async def private(request: Any) -> None:
        await request.reject(403, "no")

    client_pipe, server_pipe = memory_pipe_pair()
    server = FakeServer(server_pipe)
    task = server.run(app, path="/private", subprotocols=["qmux-01.moq-lite-05"])
    _, protocol = await within(server.answer)
    with pytest.raises((SetupRejected, SessionClosed)):
        session = await within(start_websocket_session(client_pipe, protocol))
        await within(session.wait_closed())
    await within(task)


# -- the connection alone: two ends over an in-memory pipe ---------------------------------------------------------


@contextlib.asynccontextmanager
async def connection_pair(framing: Framing = Framing.QMUX01, *, server: WebSocketSettings | None = None,
                          client: WebSocketSettings | None = None,
                          capacity: int = 256 * 1024) -> AsyncIterator[tuple[WebSocketConnection, WebSocketConnection]]:
    client_pipe, server_pipe = memory_pipe_pair(capacity)
    ours = WebSocketConnection(client_pipe, framing, is_client=True, settings=client or WebSocketSettings())
    theirs = WebSocketConnection(server_pipe, framing, is_client=False, settings=server or WebSocketSettings())
    ours.start()
    theirs.start()
    try:
        yield ours, theirs
    finally:
        ours.close(0)
        theirs.close(0)
        await within(asyncio.gather(ours.finished(), theirs.finished()))


async def test_receive_credit_bounds_what_an_unread_stream_holds() -> None:
    small = WebSocketSettings(stream_window=4000, connection_window=10000)
    async with connection_pair(server=small) as (client, server):
        streams = [await within(client.open_uni()) for _ in range(5)]
        for stream in streams:
            stream.write(bytes(50_000))
        # the server reads nothing: the client sends only what the server's credit allows
        await eventually(lambda: client.backlog() == 5 * 50_000 - 10_000)
        await asyncio.sleep(0.1)
        assert server._held <= 10_000
        assert client.backlog() == 5 * 50_000 - 10_000
        # reading gives credit back (as the engine reads: every stream at once): everything arrives
        async def read_all() -> bytes:
            incoming = await server.accept_uni()
            data = bytearray()
            while chunk := await incoming.read(65536):
                data += chunk
            return bytes(data)

        for stream in streams:
            stream.write(b"", end=True)
        received = await within(asyncio.gather(*(read_all() for _ in streams)))
        assert received == [bytes(50_000)] * 5
        await eventually(lambda: client.backlog() == 0)


async def test_stream_limit_waits_for_the_peer_to_grant_more() -> None:
    async with connection_pair(server=WebSocketSettings(max_streams=4)) as (client, server):
        opened = [await within(client.open_uni()) for _ in range(6)]
        for stream in opened:
            stream.write(b"x", end=True)
        await asyncio.sleep(0.1)
        assert [stream.stream_id for stream in opened[:4]] == [2, 6, 10, 14]
        assert client.backlog() == 2  # the last two wait for the server to allow more streams
        for _ in opened:
            incoming = await within(server.accept_uni())
            assert await within(incoming.read()) == b"x"
            assert await within(incoming.read()) == b""
        assert client.backlog() == 0


async def test_a_stream_opened_and_abandoned_unused_costs_no_stream_credit() -> None:
    async with connection_pair(server=WebSocketSettings(max_streams=2)) as (client, server):
        for _ in range(10):
            await within(client.open_uni())  # never written: the peer never hears of it
        used = await within(client.open_uni())
        used.write(b"y", end=True)
        incoming = await within(server.accept_uni())
        assert incoming.stream_id == 2
        assert await within(incoming.read()) == b"y"


async def test_reset_stop_and_fin() -> None:
    async with connection_pair() as (client, server):
        bidi = await within(client.open_bi())
        bidi.write(b"hello")
        peer = await within(server.accept_bi())
        assert await within(peer.read()) == b"hello"
        stopped: list[int] = []
        bidi.on_stopped(stopped.append)
        peer.stop(7)
        await eventually(lambda: stopped == [7])
        peer.write(b"back", end=True)
        assert await within(bidi.read()) == b"back"
        assert await within(bidi.read()) == b""
        uni = await within(client.open_uni())
        uni.write(b"partial")
        incoming = await within(server.accept_uni())
        assert await within(incoming.read()) == b"partial"
        uni.reset(9)
        with pytest.raises(Exception) as info:
            await within(incoming.read())
        assert getattr(info.value, "code", None) == 9


async def test_application_close_reaches_the_peer_with_its_code() -> None:
    async with connection_pair() as (client, server):
        client.close(0x45, "bye")
        closed = await within(server.wait_closed())
        assert (closed.code, closed.reason, closed.remote) == (0x45, "bye", True)
        await within(server.finished())


async def raw_peer(framing: Framing = Framing.QMUX01,
                   settings: WebSocketSettings | None = None) -> tuple[MemoryPipe, WebSocketConnection]:
    """A byte-scripted client (a raw pipe) facing a real server connection; the server's parameters read."""
    client_pipe, server_pipe = memory_pipe_pair()
    server = WebSocketConnection(server_pipe, framing, is_client=False, settings=settings or WebSocketSettings())
    server.start()
    if framing.qmux:
        params = qmux.decode_message(await within(client_pipe.receive()), framing)  # type: ignore[arg-type]
        assert isinstance(params[0], qmux.TransportParameters)
    return client_pipe, server


async def closing_frame(pipe: MemoryPipe, framing: Framing = Framing.QMUX01) -> qmux.Close:
    """Read until the peer's close frame; the WebSocket must close right after it."""
    while True:
        message = await within(pipe.receive())
        assert isinstance(message, bytes), "the WebSocket closed without a close frame"
        frames = qmux.decode_message(message, framing)
        closes = [f for f in frames if isinstance(f, qmux.Close)]
        if closes:
            assert await within(pipe.receive()) is None
            return closes[0]


PARAMS = qmux.TransportParameters(initial_max_data=1 << 20, max_stream_data_bidi_local=1 << 18,
                                  max_stream_data_bidi_remote=1 << 18, max_stream_data_uni=1 << 18,
                                  max_streams_bidi=100, max_streams_uni=100)


@pytest.mark.parametrize(("script", "reason"), [
    (["0e02000d0102"], "short frame"),
    (["01"], "invalid frame type"),
    ([PARAMS, "0e03000101"], "invalid stream id"),  # data on one of the server's own uni streams
    ([PARAMS, "0e4192000101"], "stream limit exceeded"),  # client uni stream index 100: past MAX_STREAMS 100
])
async def test_malformed_input_closes_with_connection_close(script: list[object], reason: str) -> None:
    pipe, server = await raw_peer()
    for item in script:
        data = qmux.encode_frame(item, Framing.QMUX01) if isinstance(item, qmux.TransportParameters) \
            else bytes.fromhex(str(item))
        await pipe.send(data)
    close = await closing_frame(pipe)
    assert not close.application and close.code == qmux.PROTOCOL_VIOLATION
    assert reason in close.reason
    assert (await within(server.wait_closed())).code == 15  # PROTOCOL_VIOLATION to the engine


async def test_sending_past_the_credit_is_fatal() -> None:
    pipe, _ = await raw_peer(settings=WebSocketSettings(stream_window=1000))
    await pipe.send(qmux.encode_frame(PARAMS, Framing.QMUX01))
    await pipe.send(qmux.encode_frame(qmux.StreamFrame(2, bytes(1001), 0), Framing.QMUX01))
    close = await closing_frame(pipe)
    assert "flow control error" in close.reason


async def test_oversized_message_and_text_are_refused() -> None:
    pipe, _ = await raw_peer()
    await pipe.send(bytes(qmux.DEFAULT_RECORD_SIZE + 1))
    assert "frame too large" in (await closing_frame(pipe)).reason
    pipe, _ = await raw_peer()
    await pipe.send_text("hello")
    close = await closing_frame(pipe)
    assert close.code == qmux.TEXT_MESSAGE


async def test_legacy_framing_stops_reading_while_the_engine_is_behind() -> None:
    pipe, server = await raw_peer(Framing.LEGACY, WebSocketSettings(connection_window=100_000))
    sent = 0
    for _ in range(100):  # up to 1.6 MB on one stream nobody reads
        try:
            await asyncio.wait_for(pipe.send(b"\x08\x02" + bytes(16000)), 0.3)
        except TimeoutError:
            break
        sent += 16000
    assert sent < 100 * 16000  # the server stopped reading: the pipe (TCP) pushes back
    # what the server holds is bounded by its window (plus one message)
    assert server._held <= 100_000 + 16_000
    stream = await within(server.accept_uni())
    total = 0
    while total < sent:
        total += len(await within(stream.read(65536)))
    assert total == sent


async def test_a_peer_that_reads_nothing_cannot_hold_a_closing_connection() -> None:
    pipe, server = await raw_peer()  # the raw peer never reads again
    pipe_capacity = pipe.capacity
    await pipe.send(qmux.encode_frame(PARAMS, Framing.QMUX01))
    stream = await within(server.open_uni())
    stream.write(bytes(4 * pipe_capacity))
    await eventually(lambda: pipe.unread >= pipe_capacity)  # the pipe is full: the next message waits
    server.close(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(server.finished(), 0.3)
    server.abort()
    await within(server.finished())


async def test_qx_ping_is_answered() -> None:
    pipe, _ = await raw_peer()
    await pipe.send(bytes.fromhex("f48c67529ef8c7bd05"))
    while True:
        frames = qmux.decode_message(await within(pipe.receive()), Framing.QMUX01)  # type: ignore[arg-type]
        if qmux.Ping(5, response=True) in frames:
            break


async def test_pings_keep_an_idle_session_alive_and_a_silent_peer_is_dropped() -> None:
    fast = WebSocketSettings(idle_timeout=0.6, ping_interval=0.1)
    async with connection_pair(server=fast, client=fast) as (client, server):
        await asyncio.sleep(2.0)  # several idle timeouts without application data
        assert not client.is_closed and not server.is_closed
    pipe, server = await raw_peer(settings=fast)
    started = time.monotonic()
    closed = await within(server.wait_closed())  # the raw peer never answers
    assert closed.reason == "idle timeout"
    assert time.monotonic() - started >= 0.5
    await within(server.finished())
    while (await within(pipe.receive())) is not None:  # our pings, then the WebSocket closes
        pass


async def test_a_slow_subscriber_costs_bounded_memory() -> None:
    """The subscriber never reads its WebSocket: what the server queues for it stays bounded while frames flow."""
    app = MoQ()
    broadcast = Broadcast("demo")
    track = broadcast.create_track("video")
    app.mux.publish("demo", broadcast)
    capacity = 64 * 1024  # what the "socket" holds towards the client
    async with ws_session(app, offer=["qmux-01.moq-lite-05"], capacity=capacity) as (session, server):
        track.write_frame(b"first")
        reader = await within(session.subscribe("demo", "video"))
        await eventually(lambda: bool(server.sessions))
        connection = server.sessions[0].connection
        assert isinstance(connection, WebSocketConnection)
        client_pipe = server.pipe.peer
        assert client_pipe is not None
        stall = asyncio.Event()
        original = client_pipe.receive

        async def stalled() -> bytes | str | None:
            await stall.wait()
            return await original()

        client_pipe.receive = stalled  # type: ignore[method-assign]
        await asyncio.sleep(0.05)
        frame = bytes(32 * 1024)
        peak = 0
        for _ in range(400):  # 12.8 MB written while the client reads nothing
            group = track.append_group()
            group.write_frame(frame)
            group.finish()
            await asyncio.sleep(0.002)
            peak = max(peak, connection.backlog())
        stall.set()
        client_pipe.receive = original  # type: ignore[method-assign]
        assert peak <= 1024 * 1024, peak
        # the subscriber then catches up with the newest groups
        latest = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):
                while True:
                    group_reader = await reader.next_group()
                    assert group_reader is not None
                    assert await group_reader.read_all() in ([frame], [b"first"])
                    latest = group_reader.sequence
                    if latest >= group.sequence - 1:
                        break
        assert latest is not None and latest >= group.sequence - 1


async def test_client_ends_at_once_on_a_broken_websocket_frame() -> None:
    """A server that upgrades, then sends a frame no WebSocket allows: the dial fails now, not at its timeout."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request

    from moqt_asgi.websocket.client import dial_websocket

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            ws.receive_data(await reader.read(65536))
            requests = [event for event in ws.events() if isinstance(event, Request)]
            if requests:
                break
        writer.write(ws.send(AcceptConnection(subprotocol="qmux-01.moq-lite-05")))
        writer.write(ws.send(BytesMessage(data=qmux.encode_frame(PARAMS, Framing.QMUX01))))
        writer.write(b"\x83\x00")  # opcode 3 is reserved
        await writer.drain()
        await asyncio.sleep(WAIT)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(Exception):  # noqa: B017 (the setup fails: how depends on when the frame is read)
            await within(dial_websocket(f"ws://127.0.0.1:{port}/", setup_timeout=30))
    finally:
        server.close()
    assert time.monotonic() - started < 5


async def test_a_pipe_that_fails_ends_the_session() -> None:
    class Broken(MemoryPipe):
        async def receive(self) -> bytes | str | None:
            raise RuntimeError("the server's receive broke")

    client_pipe, _ = memory_pipe_pair()
    broken = Broken(1024)
    broken.peer = client_pipe.peer
    connection = WebSocketConnection(broken, Framing.QMUX01, is_client=False)
    connection.start()
    closed = await within(connection.wait_closed())
    assert "WebSocket closed" in closed.reason
    await within(connection.finished())

"""Session engine behaviour over the in-memory transport (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from moqt_asgi import Broadcast, ErrorCode, MoQ, SetupRejected, StreamError, SubscribeError, TrackMux, TrackWriter
from moqt_asgi.engine._scheduler import SendScheduler
from moqt_asgi.engine.handshake import client_setup
from moqt_asgi.protocol.errors import SessionClosed
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.protocol.lite import LITE_01, LITE_02
from moqt_asgi.protocol.scoped_codes import to_session_code, to_stream_code
from moqt_asgi.protocol.setup import SetupFraming
from moqt_asgi.protocol.versions import LITE_01_VERSION
from moqt_asgi.serving import serve_connection
from moqt_asgi.transport.memory import memory_pair

from .helpers import memory_sessions, within


def clock_app() -> tuple[MoQ, Broadcast]:
    app = MoQ()
    broadcast = Broadcast("demo/clock")
    app.mux.publish("demo/clock", broadcast)
    return app, broadcast


async def test_announce_init_then_active_and_ended() -> None:
    app, _ = clock_app()
    async with memory_sessions(app) as (client, _, _, _):
        announcements = await client.announced("demo")
        assert list(announcements.active) == ["demo/clock"]
        first = await announcements.next()
        assert first is not None and first.path == "demo/clock"

        later = app.mux.publish("/demo/other/", Broadcast())  # absolute and trailing-slash forms normalise
        other = await within(announcements.next())
        assert other is not None and other.path == "demo/other"
        app.mux.publish("elsewhere", Broadcast())  # outside the prefix: not reported
        later.end()
        await within(other.wait_ended())
        assert "demo/other" not in announcements.active
        assert "elsewhere" not in announcements.active


async def test_subscribe_receives_groups_and_clean_track_end() -> None:
    app, broadcast = clock_app()
    track = broadcast.create_track("seconds")
    async with memory_sessions(app) as (client, _, _, _):
        reader = await client.subscribe("demo/clock", "seconds")
        for n in range(3):
            group = track.append_group()
            group.write_frame(f"{n}a".encode())
            group.write_frame(f"{n}b".encode())
            group.finish()
            received = await within(reader.next_group())
            assert received is not None
            assert received.sequence == n
            assert await received.read_all() == [f"{n}a".encode(), f"{n}b".encode()]
        track.finish()
        assert await within(reader.next_group()) is None
        assert reader.ended


async def test_late_subscriber_starts_at_latest_group() -> None:
    app, broadcast = clock_app()
    track = broadcast.create_track("seconds")
    for n in range(5):
        track.write_frame(f"old {n}".encode())
    current = track.append_group()
    current.write_frame(b"first half")
    async with memory_sessions(app) as (client, _, _, _):
        reader = await client.subscribe("demo/clock", "seconds")
        current.write_frame(b"second half")
        current.finish()
        group = await within(reader.next_group())
        assert group is not None and group.sequence == 5
        assert await group.read_all() == [b"first half", b"second half"]


async def test_unknown_track_and_unknown_broadcast_are_not_found() -> None:
    app, _ = clock_app()
    async with memory_sessions(app) as (client, _, _, _):
        with pytest.raises(SubscribeError) as missing_track:
            await client.subscribe("demo/clock", "nope")
        assert missing_track.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(SubscribeError) as missing_broadcast:
            await client.subscribe("nowhere", "x")
        assert missing_broadcast.value.code == ErrorCode.NOT_FOUND
        assert not client.closed


async def test_handler_per_subscription_and_unsubscribe_cancels_it() -> None:
    app = MoQ()
    started = asyncio.Event()
    cancelled = asyncio.Event()
    seen: list[tuple[str, str, int]] = []

    async def handler(track: TrackWriter) -> None:
        seen.append((track.broadcast, track.track, track.priority))
        started.set()
        try:
            n = 0
            while True:
                await track.write_group(f"{track.track}-{n}".encode())
                n += 1
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app.mux.publish("numbers", handler)
    async with memory_sessions(app) as (client, server, _, _):
        reader = await client.subscribe("/numbers", "evens", priority=7)
        group = await within(reader.next_group())
        assert group is not None and await group.read_all() == [b"evens-0"]
        assert seen == [("numbers", "evens", 7)]
        reader.close()
        await within(cancelled.wait())
        assert not server.served


async def test_either_side_publishes_server_subscribes_to_client() -> None:
    app = MoQ()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    @app.route("/{path:path}")
    async def handler(request):  # type: ignore[no-untyped-def]
        session = await request.accept()
        announcements = await session.announced("")
        announcement = await announcements.next()
        track = await session.subscribe(announcement.path, "mic")
        async for frame in track.frames():
            await got.put(frame)

    client_mux = TrackMux()
    mine = Broadcast("phone")
    mic = mine.create_track("mic")
    client_mux.publish("phone", mine)
    async with memory_sessions(app, client_mux=client_mux) as (_client, _server, _, _):
        for _ in range(200):
            if mic.subscribers:
                break
            await asyncio.sleep(0.005)
        mic.write_frame(b"hello from the client")
        assert await within(got.get()) == b"hello from the client"


async def test_publisher_leaving_ends_tracks_and_announcements() -> None:
    app, broadcast = clock_app()
    track = broadcast.create_track("seconds")
    async with memory_sessions(app) as (client, _, _, _):
        announcements = await client.announced("")
        reader = await client.subscribe("demo/clock", "seconds")
        announcement = announcements.active["demo/clock"]
        app.mux.unpublish("demo/clock")
        await within(announcement.wait_ended())
        assert await within(reader.next_group()) is None
        assert track.subscribers == 0


async def test_close_cancels_everything(no_leaked_tasks: None) -> None:
    app, broadcast = clock_app()
    broadcast.create_track("seconds")
    async with memory_sessions(app) as (client, server, _, _):
        reader = await client.subscribe("demo/clock", "seconds")
        await client.announced("")
        waiter = asyncio.ensure_future(reader.next_group())
        await client.aclose(0, "bye")
        with pytest.raises(SessionClosed):
            await within(waiter)
        reason = await within(server.wait_closed())
        assert reason.code == 0 and reason.remote
        await client.aclose()  # idempotent


async def test_lite01_only_client_gets_lite01_and_priority_in_subscribe_ok() -> None:
    app, broadcast = clock_app()
    track = broadcast.create_track("seconds")
    client_conn, server_conn = memory_pair()
    serving = asyncio.ensure_future(serve_connection(app, server_conn, transport="memory"))
    codec, stream, reader = await client_setup(client_conn, DEFAULT_LIMITS, path="/", versions=(LITE_01_VERSION,))
    assert codec.version == LITE_01
    from moqt_asgi.engine.session import Session

    session = Session(client_conn, codec, limits=DEFAULT_LIMITS, is_client=True, session_stream=(stream, reader))
    session.start()
    async with session:
        sub = await session.subscribe("demo/clock", "seconds", priority=200)
        track.write_frame(b"x")
        group = await within(sub.next_group())
        assert group is not None and await group.read_all() == [b"x"]
    await within(serving)


async def test_legacy_setup_framing_is_accepted() -> None:
    app, _ = clock_app()
    client_conn, server_conn = memory_pair()
    serving = asyncio.ensure_future(serve_connection(app, server_conn, transport="memory"))
    codec, _stream, _reader = await client_setup(client_conn, DEFAULT_LIMITS, path="/x", framing=SetupFraming.LEGACY)
    assert codec.version == LITE_02
    client_conn.close()
    await within(serving)


@pytest.mark.parametrize(
    ("path", "expected_code"),
    [("/private", ErrorCode.UNAUTHORIZED), ("/missing", ErrorCode.NOT_FOUND), ("/undecided", 64 + 500)],
)
async def test_setup_routes_reject_with_codes(path: str, expected_code: int) -> None:
    """The session stream is reset and the connection closed with the refusal, in moq-rs's registries.

    The client's connection keeps the identity map, so it reads the codes as they travel: a 403 resets
    with INTERNAL (0x0) and closes with UNAUTHORIZED (0x2), a 404 resets with NOT_FOUND (0x33) and closes
    with INTERNAL (0x1, the session registry has no "not found"); application codes pass through.
    """
    app = MoQ()

    @app.route("/private")
    async def private(request):  # type: ignore[no-untyped-def]
        await request.reject(403, "go away")

    @app.route("/undecided")
    async def undecided(request):  # type: ignore[no-untyped-def]
        return None

    client_conn, server_conn = memory_pair()
    serving = asyncio.ensure_future(serve_connection(app, server_conn, transport="memory"))
    with pytest.raises(SetupRejected) as rejected:
        await client_setup(client_conn, DEFAULT_LIMITS, path=path)
    assert rejected.value.code == to_stream_code(expected_code)
    closed = await within(client_conn.wait_closed())
    assert closed.code == to_session_code(expected_code)
    await within(serving)


async def test_route_path_params_and_query() -> None:
    app = MoQ()
    seen = []

    @app.route("/rooms/{room}/{rest:path}")
    async def room(request):  # type: ignore[no-untyped-def]
        seen.append((request.path, request.path_params, request.query, request.transport))
        await request.accept()

    async with memory_sessions(app, path="/rooms/42/a/b?token=t"):
        pass
    assert seen == [("/rooms/42/a/b", {"room": "42", "rest": "a/b"}, "token=t", "memory")]


class FakeConnection:
    """Just enough of a Connection for the scheduler: a settable backlog."""

    def __init__(self) -> None:
        self.backlog_bytes = 10**9
        self.callbacks: list[Callable[[], None]] = []
        self.is_closed = False

    def backlog(self) -> int:
        return self.backlog_bytes

    def on_writable(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def drain(self) -> None:
        self.backlog_bytes = 0
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


class RecordingStream:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def write(self, data: bytes, end: bool = False) -> None:
        self.log.append(self.name)


async def test_scheduler_sends_higher_priority_then_newer_group_first() -> None:
    connection = FakeConnection()
    scheduler = SendScheduler(connection, high_water=1)  # type: ignore[arg-type]
    log: list[str] = []
    sends = [
        ("low-old", 1, 10), ("high-old", 9, 10), ("low-new", 1, 11), ("high-new", 9, 11), ("mid", 5, 3),
    ]
    tasks = [asyncio.ensure_future(scheduler.send(RecordingStream(name, log), b"x", priority=p, sequence=s))  # type: ignore[arg-type]
             for name, p, s in sends]
    await asyncio.sleep(0)
    assert log == [] and scheduler.queued == 5
    connection.drain()
    await asyncio.gather(*tasks)
    assert log == ["high-new", "high-old", "mid", "low-new", "low-old"]


async def test_group_reset_by_publisher_raises_stream_error() -> None:
    app = MoQ()

    async def handler(track: TrackWriter) -> None:
        group = await track.open_group()
        await group.write_frame(b"partial")
        await asyncio.sleep(0.05)  # let the header reach the subscriber before the reset
        group.abort(ErrorCode.OLD)
        await asyncio.sleep(3600)

    app.mux.publish("b", handler)
    async with memory_sessions(app) as (client, _, _, _):
        reader = await client.subscribe("b", "t")
        group = await within(reader.next_group())
        assert group is not None
        with pytest.raises(StreamError) as reset:
            while await group.read_frame() is not None:
                pass
        assert reset.value.code == ErrorCode.OLD

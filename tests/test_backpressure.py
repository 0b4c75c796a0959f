"""What a peer that never reads can make a publisher hold: FETCH replies, announcements, subscriptions.

Each test is the attack itself, over the in-memory pair with flow control
(the peer's unread bytes stay in the publisher's backlog, as QUIC flow
control keeps them when the peer's application does not read), and checks
the bound the engine promises instead of letting memory grow with the
number of requests or changes.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import pytest

from moqt_asgi import Broadcast, MoQ
from moqt_asgi.engine._publisher import _BATCH
from moqt_asgi.engine._scheduler import CHUNK, DEFAULT_HIGH_WATER
from moqt_asgi.engine.session import Session
from moqt_asgi.protocol.errors import ErrorCode, StreamError
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.lite_wire import LiteBidi
from moqt_asgi.protocol.messages import AnnouncePlease, Fetch
from moqt_asgi.protocol.versions import (
    LITE_02_VERSION,
    LITE_03_VERSION,
    LITE_04_VERSION,
    LITE_05_VERSION,
    LITE_06_VERSION,
    Version,
)
from moqt_asgi.protocol.wire import encode_varint
from moqt_asgi.transport.base import BidiStream
from moqt_asgi.transport.memory import MemoryConnection

from .helpers import eventually, memory_sessions, read_to_end, settle, within

LITE_02, LITE_03, LITE_04, LITE_05, LITE_06 = LITE_02_VERSION, LITE_03_VERSION, LITE_04_VERSION, LITE_05_VERSION, LITE_06_VERSION
MiB = 1024 * 1024
FETCH_VERSIONS = [LITE_03, LITE_04, LITE_05, LITE_06]
ANNOUNCE_VERSIONS = [LITE_02, LITE_03, LITE_04, LITE_05, LITE_06]


def server_backlog(server_conn: MemoryConnection) -> int:
    return server_conn.backlog()


async def raw_request(client: Session, kind: int, body: bytes) -> BidiStream:
    """Open a bidi stream of ``kind`` and send ``body`` on it; the caller never reads it."""
    stream = await client.connection.open_bi()
    stream.write(encode_varint(kind) + body)
    return stream


def as_seen(client: Session, server: Session, code: int) -> int:
    """``code`` sent by the server on a bidi stream, as the client reads it in its dialect."""
    wire = server.connection.error_codes.stream_out(code, bidi=True)
    return client.connection.error_codes.stream_in(wire, bidi=True)


async def refusal_code(stream: BidiStream) -> int:
    with pytest.raises(StreamError) as refused:
        await read_to_end(stream)
    return refused.value.code


# -- FETCH


def cached_group_app(frames: int, frame_size: int) -> MoQ:
    app = MoQ()
    broadcast = Broadcast("vod")
    track = broadcast.create_track("video")
    group = track.append_group()
    for index in range(frames):
        group.write_frame(bytes([index]) * frame_size)
    group.finish()
    app.mux.publish("vod", broadcast)
    return app


@pytest.mark.parametrize("version", FETCH_VERSIONS, ids=lambda v: v.name)
async def test_fetches_to_a_reader_that_never_reads_hold_no_copies(version: Version) -> None:
    """50 FETCHes (about 1 KiB of requests) of a cached 4 MiB group, never read.

    Before: each request joined the group into two fresh copies and held them
    (≈ 8 MiB per request, +388 MiB here). Now frames go out by reference, at
    most ``max_fetches`` requests are served at once and the rest are refused.
    """
    app = cached_group_app(frames=4, frame_size=MiB)
    async with memory_sessions(app, version=version, flow_control=True) as (client, server, _, server_conn):
        codec: Any = client.codec
        request = codec.encode_fetch(Fetch("vod", "video", 0, 0))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            streams = [await raw_request(client, LiteBidi.FETCH, request) for _ in range(50)]
            await asyncio.sleep(0.5)  # every request read and answered as far as it can go
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        # What the reader holds unread, plus at most one chunk per blocked reply: nowhere near 50 copies.
        assert grown < 2 * MiB, f"{grown / MiB:.1f} MiB held for 50 unread FETCHes"
        assert server_backlog(server_conn) <= DEFAULT_HIGH_WATER + CHUNK
        assert server.stats().fetches == DEFAULT_LIMITS.max_fetches
        codes = [await refusal_code(stream) for stream in streams[DEFAULT_LIMITS.max_fetches:]]
        assert set(codes) == {as_seen(client, server, ErrorCode.BOUNDS_EXCEEDED)}
        for stream in streams[:DEFAULT_LIMITS.max_fetches]:
            stream.stop(ErrorCode.CANCEL)
            stream.reset(ErrorCode.CANCEL)
        await eventually(lambda: server.stats().fetches == 0, "no fetch being served")
        # The session is still usable: a fetch that is read arrives whole.
        frames = await within(client.fetch("vod", "video", 0))
        assert [len(frame) for frame in frames] == [MiB] * 4
        assert [frame[0] for frame in frames] == [0, 1, 2, 3]


@pytest.mark.parametrize("version", [LITE_03, LITE_06], ids=lambda v: v.name)
async def test_a_fetch_reply_nobody_reads_is_given_up(version: Version) -> None:
    app = cached_group_app(frames=2, frame_size=MiB)
    app.limits = Limits(fetch_timeout=0.3)
    async with memory_sessions(app, version=version, flow_control=True) as (client, server, _, _):
        codec: Any = client.codec
        stream = await raw_request(client, LiteBidi.FETCH, codec.encode_fetch(Fetch("vod", "video", 0, 0)))
        await eventually(lambda: server.stats().fetches == 1, "one fetch being served")
        await eventually(lambda: server.stats().fetches == 0, "no fetch being served")
        # The reply was reset with TIMEOUT after the part that fitted the backlog.
        with pytest.raises(StreamError) as stopped:
            while await within(stream.read()):
                pass
        assert stopped.value.code == as_seen(client, server, ErrorCode.TIMEOUT)


# -- announcements


@pytest.mark.parametrize("version", ANNOUNCE_VERSIONS, ids=lambda v: v.name)
async def test_announce_streams_to_a_reader_that_never_reads_stay_bounded(version: Version) -> None:
    """Announce streams never read, 300 paths of 4000 bytes, then one path toggled 500 times.

    Before: every change was written at once, whatever the peer had read
    (4 MiB per watching stream here, and 8 KB more per toggle, without end).
    Now each stream waits when its backlog passes ``announce_backlog`` and the
    watcher coalesces what it could not send (one entry per path).
    """
    streams_open = DEFAULT_LIMITS.max_announce_streams
    async with memory_sessions(MoQ(), version=version, flow_control=True) as (client, server, _, server_conn):
        codec: Any = client.codec
        request = codec.encode_announce_please(AnnouncePlease(""))
        for _ in range(streams_open):
            await raw_request(client, LiteBidi.ANNOUNCE, request)
        await eventually(lambda: len(server.mux._watchers) == streams_open, "the announce streams to be watched")
        long_names = [f"{index:04d}/" + "x" * 3990 for index in range(300)]
        for name in long_names:
            server.mux.publish(name, _never_called)
            await asyncio.sleep(0)
        toggled = None
        for _ in range(500):
            toggled = server.mux.publish("toggle/" + "y" * 3990, _never_called)
            await asyncio.sleep(0)
            toggled.end()
            await asyncio.sleep(0)
        await settle(200)
        bound = DEFAULT_LIMITS.announce_backlog + _BATCH + 2 * 4100
        assert server_backlog(server_conn) <= streams_open * bound, server_backlog(server_conn)
        watchers = list(server.mux._watchers)
        assert len(watchers) == streams_open
        for watcher in watchers:
            assert len(watcher._pending) <= len(long_names) + 1
        assert not server.closed


@pytest.mark.parametrize("version", [LITE_02, LITE_06], ids=lambda v: v.name)
async def test_announce_streams_per_session_are_capped(version: Version) -> None:
    limits = Limits(max_announce_streams=3)
    async with memory_sessions(MoQ(limits=limits), version=version) as (client, server, _, _):
        codec: Any = client.codec
        request = codec.encode_announce_please(AnnouncePlease(""))
        streams = [await raw_request(client, LiteBidi.ANNOUNCE, request) for _ in range(4)]
        assert await refusal_code(streams[3]) == as_seen(client, server, ErrorCode.BOUNDS_EXCEEDED)
        assert server.stats().announce_streams == 3
        assert not server.closed
        # A legitimate watcher still works once one of the others goes.
        streams[0].write(b"", end=True)
        await eventually(lambda: server.stats().announce_streams == 2, "two announce streams being served")
        server.mux.publish("room", _never_called)
        announcements = await within(client.announced(""))
        assert "room" in announcements.active


@pytest.mark.parametrize("version", [LITE_05, LITE_06], ids=lambda v: v.name)
async def test_more_broadcasts_than_our_receive_limit_still_reach_a_watcher(version: Version) -> None:
    """``max_announcements`` bounds what we accept; it must not cut off what we send (it closed the viewer)."""
    app = MoQ(limits=Limits(max_announcements=10))
    for index in range(12):
        app.mux.publish(f"room/{index}", _never_called)
    async with memory_sessions(app, version=version) as (client, server, _, _):
        announcements = await within(client.announced(""))
        await eventually(lambda: len(announcements.active) == 12, "12 announcements")
        assert not client.closed and not server.closed


@pytest.mark.parametrize("reader_limit", [DEFAULT_LIMITS.max_announce_init_size, 64 * 1024],
                         ids=["our-client", "a-64KiB-reader"])
async def test_a_large_announce_set_reaches_a_lite02_watcher(reader_limit: int) -> None:
    """3000 broadcasts make an 81 KB ANNOUNCE_INIT: we send 32 KiB of it and the rest as ANNOUNCEs."""
    app = MoQ()
    names = {f"broadcast-number-{index:08d}" for index in range(3000)}
    for name in names:
        app.mux.publish(name, _never_called)
    limits = Limits(max_announce_init_size=reader_limit)
    async with memory_sessions(app, version=LITE_02, limits=limits) as (client, _, _, _):
        announcements = await within(client.announced(""))
        await eventually(lambda: len(announcements.active) == len(names), "every announcement")
        assert set(announcements.active) == names


async def _never_called(track: Any) -> None:  # pragma: no cover - nobody subscribes in these tests
    raise AssertionError("not subscribed")


# -- the scheduler never lets a transport failure escape into the transport's callbacks


class _ResetUnderUs:
    """A send stream the transport reset on its own: aioquic then raises RuntimeError on write."""

    stream_id = 4

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes, end: bool = False) -> None:
        if self.written:
            raise RuntimeError("Cannot send data after the stream was reset")
        self.written.append(data)


class _Congested:
    """A connection whose queue is full until ``drain()``; ``on_writable`` callbacks run from ``drain``
    as they would from a QUIC datagram callback."""

    is_closed = False

    def __init__(self) -> None:
        self.queued = DEFAULT_HIGH_WATER
        self.callbacks: list[Any] = []

    def backlog(self) -> int:
        return self.queued

    def on_writable(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def drain(self) -> None:
        self.queued = 0
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()  # an exception here would escape into the event loop's datagram callback


async def test_a_write_the_transport_refuses_fails_the_writer_not_the_callback() -> None:
    from moqt_asgi.engine._scheduler import SendScheduler

    connection = _Congested()
    stream = _ResetUnderUs()
    scheduler = SendScheduler(connection)  # type: ignore[arg-type]
    first = asyncio.ensure_future(scheduler.send(stream, b"x" * 10, b"y" * (3 * CHUNK)))  # type: ignore[arg-type]
    await settle()
    connection.drain()  # first piece written; the next one meets the reset stream
    with pytest.raises(StreamError):
        await within(first)
    assert scheduler.queued == 0


async def test_a_write_to_a_stream_aioquic_reset_under_us_is_a_stream_error(certs: Any) -> None:
    """aioquic resets a sending stream itself (on STOP_SENDING) and then raises RuntimeError on write."""
    from moqt_asgi import dial
    from moqt_asgi.endpoints.quic_server import QuicServer
    from moqt_asgi.transport.quic import QuicTransport

    async with QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key)) as server:
        session = await dial(f"moql://127.0.0.1:{server.address[1]}/", fingerprint=certs.fingerprint)
        async with session:
            transport = session.connection
            assert isinstance(transport, QuicTransport)
            stream = await transport.open_uni()
            stream.write(b"first")
            transport.protocol._quic.reset_stream(stream.stream_id, 0)  # as aioquic does on STOP_SENDING
            with pytest.raises(StreamError):
                stream.write(b"second")


class _Chunks:
    """A receive stream that hands out the given chunks, then FIN."""

    stream_id = 2

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def read(self, max_bytes: int = 65536, min_bytes: int = 1) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def stop(self, code: int) -> None:
        pass


async def test_a_reader_keeps_nothing_once_a_frame_is_read() -> None:
    """A relay keeps the reader of each track's last group: it must not pin the last chunk it read (up to 512 KiB)."""
    from moqt_asgi.engine._reader import StreamReader

    reader = StreamReader(_Chunks(b"a" * 524288, b"b" * 524288))  # type: ignore[arg-type]
    assert len(await reader.read_exact(1 << 20)) == 1 << 20
    assert len(reader._buf) == 0
    assert await reader.at_eof()
    assert len(reader._buf) == 0
    small = StreamReader(_Chunks(b"xyz"))  # type: ignore[arg-type]
    assert await small.read_exact(3) == b"xyz" and len(small._buf) == 0


async def test_streams_opened_before_any_write_get_their_own_ids(certs: Any) -> None:
    """Native QUIC: aioquic gave the same id to streams opened before their first write (group headers
    waiting in the scheduler), and the second one then failed with "Cannot send data after FIN"."""
    from moqt_asgi import dial
    from moqt_asgi.endpoints.quic_server import QuicServer
    from moqt_asgi.transport.quic import QuicTransport

    async with QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key)) as server:
        session = await dial(f"moql://127.0.0.1:{server.address[1]}/", fingerprint=certs.fingerprint)
        async with session:
            transport = session.connection
            assert isinstance(transport, QuicTransport)
            unis = [await transport.open_uni() for _ in range(3)]
            bidis = [await transport.open_bi() for _ in range(3)]
            assert len({s.stream_id for s in unis}) == 3 and len({s.stream_id for s in bidis}) == 3
            for stream in unis:
                stream.write(b"x", end=True)


async def test_frames_being_assembled_are_bounded_per_session() -> None:
    """A publisher starts large frames on many groups and never finishes them.

    Flow control releases credit as the reader takes frame bytes, so the
    frames being assembled are what it could make us hold beyond the receive
    windows; ``max_assembling_bytes`` bounds them per session.
    """
    from moqt_asgi import TrackWriter

    frame = 8 * MiB
    app = MoQ()

    async def never_finished(track: TrackWriter) -> None:
        for _ in range(4):
            group = await track.open_group()
            assert group._stream is not None
            group._stream.write(track.session.codec.encode_frame_header(frame) + b"x" * 4096)
        await asyncio.Event().wait()

    app.mux.publish("p", never_finished)
    limits = Limits(max_assembling_bytes=20 * MiB)
    async with memory_sessions(app, limits=limits, version=LITE_04) as (client, _, _, _):
        track = await within(client.subscribe("p", "t"))
        groups = [await within(track.next_group()) for _ in range(4)]
        reads = [asyncio.ensure_future(group.read_frame()) for group in groups if group is not None]
        await asyncio.wait(reads, timeout=0.5)
        refused = [r for r in reads if r.done() and isinstance(r.exception(), StreamError)]
        waiting = [r for r in reads if not r.done()]
        assert len(refused) == 2 and len(waiting) == 2  # two 8 MiB frames fit in 20 MiB, the others are refused
        assert all(r.exception().code == ErrorCode.TOO_LARGE for r in refused)  # type: ignore[union-attr]
        assert client.stats().assembling_bytes == 2 * frame
        for r in waiting:
            r.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert client.stats().assembling_bytes == 0

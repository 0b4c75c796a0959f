"""Misbehaving peers against the real engine, over the in-memory transport.

One side is a raw peer driven byte by byte through the Connection API; the
other is our server (``serve_connection``) or our client :class:`Session`.
Each test checks the exact code the raw peer sees and that the process keeps
serving well-behaved sessions afterwards.

Codes: lite-02 numbers close and stream codes in moq-rs's scoped registries,
as every lite version does. The raw peer numbers the codes it sends that way
and reads ours exactly as they arrive (``WIRE``), so the tests expect our
codes as the registries carry them (``to_session_code``, ``to_stream_code``);
what our own client raises is still our :class:`ErrorCode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from moqt_asgi import Broadcast, MoQ
from moqt_asgi.engine._reader import StreamReader
from moqt_asgi.engine.handshake import client_setup
from moqt_asgi.engine.session import Session
from moqt_asgi.engine.track import TrackReader, TrackWriter
from moqt_asgi.protocol.errors import (
    ErrorCode,
    ProtocolError,
    SessionClosed,
    SetupRejected,
    StreamError,
    SubscribeError,
)
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.lite import LITE_02, Codec, frame_message
from moqt_asgi.protocol.messages import AnnounceInit, GroupHeader, Subscribe
from moqt_asgi.protocol.scoped_codes import to_session_code, to_stream_code
from moqt_asgi.protocol.setup import SetupFraming, decode_client_setup
from moqt_asgi.protocol.wire import encode_varint
from moqt_asgi.transport.base import BidiStream, SendStream
from moqt_asgi.transport.memory import MemoryConnection, memory_pair

from . import helpers
from .helpers import WAIT, eventually, memory_sessions, read_exact, read_to_end, settle, stop_code, within
from .test_bad_input_versions import WIRE


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


# The moq-ffi 0.4.18 client's setup and our expected reply (reference §2.11).
CLIENT_SETUP = (
    h("20 | 00 41 | 03 | c0 00 00 00 ff 0d ad 02 | c0 00 00 00 ff 0d ad 01 | c0 00 00 00 ff 00 00 0e")
    + h("05 | 02 c0 00 00 00 ff ff ff ff | 80 04 0b 5a 01 | 80 04 0b 5c 01")
    + h("01 05") + b"/room"
    + h("07 0b") + b"moq-lite-rs"
)
SERVER_SETUP = h("21 | 00 09 | c0 00 00 00 ff 0d ad 02 | 00")
CODEC = Codec(DEFAULT_LIMITS)


def subscribe_bytes(subscribe_id: int, broadcast: str = "demo/clock", track: str = "seconds", priority: int = 0) -> bytes:
    return encode_varint(0x02) + CODEC.encode_subscribe(Subscribe(subscribe_id, broadcast, track, priority))


# -- an app to attack, and a check that it still works --------------------------

class Demo:
    """An app publishing ``demo/clock`` (track ``seconds``) through a Broadcast."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.app = MoQ(limits=limits)
        self.broadcast = Broadcast("demo/clock")
        self.seconds = self.broadcast.create_track("seconds")
        self.app.mux.publish("demo/clock", self.broadcast)
        self._checks = itertools.count()

    async def assert_still_serving(self) -> None:
        """A fresh, well-behaved session on the same app subscribes and receives a frame."""
        name = f"check-{next(self._checks)}"
        track = self.broadcast.create_track(name)
        async with memory_sessions(self.app) as (client, server, _, _):
            assert client.version == LITE_02
            reader = await within(client.subscribe("demo/clock", name))
            track.write_frame(b"still alive")
            group = await within(reader.next_group())
            assert group is not None
            assert await within(group.read_all()) == [b"still alive"]
            reader.close()
            assert not server.closed


class RawClient(helpers.RawClient):
    """A raw peer acting as client against our real server, in lite-02's golden bytes."""

    def __init__(self, app: MoQ, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.conn.error_codes = WIRE

    async def setup(self) -> BidiStream:
        stream = await self.conn.open_bi()
        stream.write(CLIENT_SETUP)
        assert await read_exact(stream, len(SERVER_SETUP)) == SERVER_SETUP
        self.session_stream = stream
        return stream

    async def subscribe(self, subscribe_id: int, broadcast: str = "demo/clock", track: str = "seconds") -> BidiStream:
        stream = await self.open_bi(subscribe_bytes(subscribe_id, broadcast, track))
        assert await read_exact(stream, 1) == h("00")  # SUBSCRIBE_OK, lite-02
        return stream

    async def announced(self) -> list[str]:
        """ANNOUNCE_PLEASE "" and the suffixes of the ANNOUNCE_INIT reply (proves the session is alive)."""
        stream = await self.open_bi(h("01 01 00"))
        reader = StreamReader(stream)
        body = await within(reader.read_message(1024))
        stream.write(b"", end=True)
        return list(CODEC.decode_announce_init(body).suffixes)

    async def next_group(self) -> tuple[GroupHeader, list[bytes]]:
        stream = await within(self.conn.accept_uni())
        reader = StreamReader(stream)
        assert await within(reader.read_varint()) == 0x00
        header = CODEC.decode_group_header(await within(reader.read_message(64)))
        frames = []
        while (frame := await within(reader.read_message_or_eof(1 << 20))) is not None:
            frames.append(frame)
        return header, frames


@pytest.fixture
async def demo(no_leaked_tasks: None) -> AsyncIterator[Demo]:
    yield Demo()


def raw_client(app: MoQ, **kwargs: Any) -> RawClient:
    """A raw client of ``app`` (``async with`` it: the server's side must have ended on exit)."""
    return RawClient(app, **kwargs)


# -- malformed setup -------------------------------------------------------------

async def test_golden_setup_is_answered_byte_for_byte(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        assert await peer.announced() == ["demo/clock"]
        stream = await peer.subscribe(0)
        demo.seconds.write_frame(b"tick")
        header, frames = await peer.next_group()
        assert header == GroupHeader(0, 0)
        assert frames == [b"tick"]
        stream.write(b"", end=True)


@pytest.mark.parametrize("first", [h("05"), h("41"), h("17 00 00")])
async def test_setup_garbage_first_byte(demo: Demo, first: bytes) -> None:
    async with raw_client(demo.app) as peer:
        stream = await peer.open_bi(first + b"garbage")
        assert await peer.closed_code() == to_session_code(ErrorCode.UNEXPECTED_STREAM)
        with pytest.raises(SessionClosed):
            await within(stream.read())
    await demo.assert_still_serving()


async def test_setup_length_past_the_end(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        # Claims 0x41 bytes, sends 10, then FIN.
        stream = await peer.open_bi(CLIENT_SETUP[:13])
        stream.write(b"", end=True)
        assert await peer.closed_code() == to_session_code(ErrorCode.DECODE)
    await demo.assert_still_serving()


async def test_setup_body_inconsistent_with_its_length(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        # The frame is complete, but the body promises 3 versions and holds one.
        await peer.open_bi(h("20 00 09 03 c0 00 00 00 ff 0d ad 02"))
        assert await peer.closed_code() == to_session_code(ErrorCode.DECODE)
    await demo.assert_still_serving()


async def test_setup_too_large_for_limits(no_leaked_tasks: None) -> None:
    demo = Demo(Limits(max_message_size=32))
    async with raw_client(demo.app) as peer:
        await peer.open_bi(CLIENT_SETUP)  # 65-byte body
        assert await peer.closed_code() == to_session_code(ErrorCode.TOO_LARGE)
    demo.app.limits = DEFAULT_LIMITS  # our own client's setup does not fit in 32 bytes either
    await demo.assert_still_serving()


async def test_setup_no_common_version(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        # draft-14 and lite-03 only.
        stream = await peer.open_bi(h("20 00 12 02 c0 00 00 00 ff 00 00 0e c0 00 00 00 ff 0d ad 03 00"))
        assert await peer.closed_code() == to_session_code(ErrorCode.VERSION)
        with pytest.raises((StreamError, SessionClosed)) as info:
            await within(stream.read())
        reset = isinstance(info.value, StreamError)
        assert info.value.code == (to_stream_code if reset else to_session_code)(ErrorCode.VERSION)
    await demo.assert_still_serving()


async def test_setup_never_sent(demo: Demo) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with raw_client(demo.app, setup_timeout=0.2) as peer:
        assert await peer.closed_code() == to_session_code(ErrorCode.TIMEOUT)
        assert 0.15 <= loop.time() - started < 1.5
        await within(peer.serving)
    await demo.assert_still_serving()


async def test_setup_started_but_never_finished(demo: Demo) -> None:
    async with raw_client(demo.app, setup_timeout=0.2) as peer:
        await peer.open_bi(CLIENT_SETUP[:20])  # no FIN, nothing more
        assert await peer.closed_code() == to_session_code(ErrorCode.TIMEOUT)
    await demo.assert_still_serving()


# -- bad streams after setup -----------------------------------------------------

async def test_oversized_control_message(no_leaked_tasks: None) -> None:
    demo = Demo(Limits(max_message_size=1024))
    async with raw_client(demo.app) as peer:
        await peer.setup()
        # A SUBSCRIBE claiming 1025 bytes: refused on the length alone.
        await peer.open_bi(h("02") + encode_varint(1025) + b"\x00" * 16)
        assert await peer.closed_code() == to_session_code(ErrorCode.TOO_LARGE)
    await demo.assert_still_serving()


async def test_oversized_control_message_huge_length(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        await peer.open_bi(h("02 ff ff ff ff ff ff ff ff"))
        assert await peer.closed_code() == to_session_code(ErrorCode.TOO_LARGE)
    await demo.assert_still_serving()


@pytest.mark.parametrize("kind", [h("07"), h("03"), h("40 80")])
async def test_unknown_bidi_stream_type(demo: Demo, kind: bytes) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        await peer.open_bi(kind + b"\x00\x00")
        assert await peer.closed_code() == to_session_code(ErrorCode.UNEXPECTED_STREAM)
    await demo.assert_still_serving()


@pytest.mark.parametrize("kind", [h("01"), h("05"), h("40 80")])
async def test_unknown_uni_stream_type(demo: Demo, kind: bytes) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        uni = await peer.conn.open_uni()
        uni.write(kind + b"\x00\x00")
        assert await peer.closed_code() == to_session_code(ErrorCode.UNEXPECTED_STREAM)
    await demo.assert_still_serving()


async def test_second_session_stream(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        await peer.open_bi(h("00 02 00 00"))
        assert await peer.closed_code() == to_session_code(ErrorCode.UNEXPECTED_STREAM)
    await demo.assert_still_serving()


async def test_second_compat_setup_stream(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        await peer.open_bi(CLIENT_SETUP)  # 0x20 is not a stream type after setup
        assert await peer.closed_code() == to_session_code(ErrorCode.UNEXPECTED_STREAM)
    await demo.assert_still_serving()


async def test_session_stream_reset_ends_session(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        session_stream = await peer.setup()
        # The stream registry has no violation code: ours travels as INTERNAL (0x0) and reads back as
        # TRANSPORT, the code the server closes with (INTERNAL, 0x1, in the session registry).
        session_stream.reset(ErrorCode.PROTOCOL_VIOLATION)
        assert await peer.closed_code() == to_session_code(ErrorCode.TRANSPORT)
        await within(peer.serving)
    await demo.assert_still_serving()


async def test_duplicate_subscribe_id(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        first = await peer.subscribe(0)
        duplicate = await peer.open_bi(subscribe_bytes(0))
        with pytest.raises(StreamError) as info:
            await within(duplicate.read())
        assert info.value.code == to_stream_code(ErrorCode.DUPLICATE)
        # The stop makes further writes on the duplicate fail with the same code.
        with pytest.raises(StreamError) as info:
            duplicate.write(b"\x00")
        assert info.value.code == to_stream_code(ErrorCode.DUPLICATE)

        # The first subscription keeps working, the session stays open.
        demo.seconds.write_frame(b"one")
        header, frames = await peer.next_group()
        assert header.subscribe_id == 0
        assert frames == [b"one"]
        assert not peer.conn.is_closed
        second = await peer.subscribe(1)
        # A new subscriber starts at the latest group.
        assert await peer.next_group() == (GroupHeader(1, 0), [b"one"])
        demo.seconds.write_frame(b"two")
        got = sorted([await peer.next_group(), await peer.next_group()], key=lambda g: g[0].subscribe_id)
        assert [(g[0].subscribe_id, g[1]) for g in got] == [(0, [b"two"]), (1, [b"two"])]
        first.write(b"", end=True)
        second.write(b"", end=True)
        assert await peer.announced() == ["demo/clock"]
    await demo.assert_still_serving()


async def test_group_for_unknown_subscription(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        uni = await peer.conn.open_uni()
        stopped = stop_code(uni)
        uni.write(CODEC.encode_group_header(GroupHeader(5, 0)) + CODEC.encode_frame(b"unsolicited"))
        assert await within(stopped) == to_stream_code(ErrorCode.NOT_FOUND)
        with pytest.raises(StreamError) as info:
            uni.write(b"more")
        assert info.value.code == to_stream_code(ErrorCode.NOT_FOUND)
        await settle()
        assert not peer.conn.is_closed
        assert await peer.announced() == ["demo/clock"]
    await demo.assert_still_serving()


@pytest.mark.parametrize(("broadcast", "track"), [("nope", "seconds"), ("demo", "seconds"), ("demo/clock", "nope")])
async def test_subscribe_to_unknown(demo: Demo, broadcast: str, track: str) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        stream = await peer.open_bi(subscribe_bytes(0, broadcast, track))
        with pytest.raises(StreamError) as info:
            await within(stream.read())
        assert info.value.code == to_stream_code(ErrorCode.NOT_FOUND)
        await settle()
        assert not peer.conn.is_closed
        # The id is free again: a valid subscribe with it works.
        await peer.subscribe(0)
    await demo.assert_still_serving()


async def test_malformed_subscribe_closes_session(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        # Body length 3, but the broadcast string claims 10 bytes.
        await peer.open_bi(h("02 03 00 0a 61"))
        assert await peer.closed_code() == to_session_code(ErrorCode.DECODE)
    await demo.assert_still_serving()



async def test_subscribe_update_on_lite02_aborts_subscription(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        stream = await peer.subscribe(0)
        stream.write(h("01 05"))  # SUBSCRIBE_UPDATE priority 5: not part of lite-02
        with pytest.raises(StreamError) as info:
            await within(read_to_end(stream))
        assert info.value.code == to_stream_code(ErrorCode.UNEXPECTED_MESSAGE)
        await settle()
        assert not peer.conn.is_closed
        await peer.subscribe(1)
    await demo.assert_still_serving()


async def test_too_many_subscriptions(no_leaked_tasks: None) -> None:
    demo = Demo(Limits(max_subscriptions=2))
    async with raw_client(demo.app) as peer:
        await peer.setup()
        first = await peer.subscribe(0)
        await peer.subscribe(1)
        third = await peer.open_bi(subscribe_bytes(2))
        with pytest.raises(StreamError) as info:
            await within(third.read())
        assert info.value.code == to_stream_code(ErrorCode.BOUNDS_EXCEEDED)
        # Unsubscribing frees a slot.
        first.write(b"", end=True)
        assert await within(read_to_end(first)) == b""
        await peer.subscribe(2)
        assert not peer.conn.is_closed
    await demo.assert_still_serving()


async def test_data_after_announce_please_closes_session(demo: Demo) -> None:
    async with raw_client(demo.app) as peer:
        await peer.setup()
        stream = await peer.open_bi(h("01 01 00"))
        reader = StreamReader(stream)
        assert CODEC.decode_announce_init(await within(reader.read_message(1024))).suffixes == ("demo/clock",)
        stream.write(h("01 00"))  # a second ANNOUNCE_PLEASE
        assert await peer.closed_code() == to_session_code(ErrorCode.UNEXPECTED_MESSAGE)
    await demo.assert_still_serving()


async def test_stalled_streams_are_reset_with_timeout(demo: Demo) -> None:
    async with raw_client(demo.app, setup_timeout=0.2) as peer:
        await peer.setup()
        silent = await peer.conn.open_bi()  # no stream type
        typed = await peer.open_bi(h("02"))  # SUBSCRIBE stream type, then nothing
        partial = await peer.open_bi(subscribe_bytes(0)[:5])  # half a SUBSCRIBE
        uni = await peer.conn.open_uni()  # no stream type
        header = await peer.conn.open_uni()
        header.write(h("00 02 00"))  # half a group header
        stops = [stop_code(stream) for stream in (silent, typed, partial, uni, header)]
        for stream in (silent, typed, partial):
            with pytest.raises(StreamError) as info:
                await within(stream.read())
            assert info.value.code == to_stream_code(ErrorCode.TIMEOUT)
        assert [await within(stop) for stop in stops] == [to_stream_code(ErrorCode.TIMEOUT)] * 5
        assert not peer.conn.is_closed
        assert await peer.announced() == ["demo/clock"]
    await demo.assert_still_serving()

# -- a raw publisher against our client -------------------------------------------

class RawServer(helpers.RawServer):
    """A raw peer acting as server (and publisher) for our real client Session, on lite-02."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits.max_stream_buffer)
        self.limits = limits
        self.conn.error_codes = WIRE

    async def connect(self) -> Session:
        dialing = asyncio.ensure_future(client_setup(self.client_conn, self.limits, path="/room"))
        stream = await within(self.conn.accept_bi())
        head = await read_exact(stream, 3)
        assert head[0] == 0x20
        offer = decode_client_setup(SetupFraming.COMPAT, await read_exact(stream, int.from_bytes(head[1:], "big")),
                                    self.limits)
        assert offer.versions[0] == LITE_02
        stream.write(SERVER_SETUP)
        codec, session_stream, reader = await within(dialing)
        return self.start_client(Session(self.client_conn, codec, limits=self.limits, is_client=True, path="/room",
                                         session_stream=(session_stream, reader)))

    async def accept_subscription(self, broadcast: str = "demo/clock", track: str = "t") -> tuple[TrackReader, BidiStream]:
        subscribing = asyncio.ensure_future(self.client.subscribe(broadcast, track))
        stream = await within(self.conn.accept_bi())
        reader = StreamReader(stream)
        assert await within(reader.read_varint()) == 0x02
        msg = CODEC.decode_subscribe(await within(reader.read_message(1024)))
        assert (msg.broadcast, msg.track) == (broadcast, track)
        stream.write(h("00"))
        return await within(subscribing), stream

    async def open_group(self, subscribe_id: int, sequence: int) -> SendStream:
        uni = await self.conn.open_uni()
        uni.write(CODEC.encode_group_header(GroupHeader(subscribe_id, sequence)))
        return uni



@contextlib.asynccontextmanager
async def raw_server(limits: Limits) -> AsyncIterator[tuple[RawServer, Session]]:
    server = RawServer(limits)
    try:
        yield server, await server.connect()
    finally:
        await server.close()


async def test_frame_larger_than_limit(no_leaked_tasks: None) -> None:
    async with raw_server(Limits(max_frame_size=16)) as (server, client):
        track, _ = await server.accept_subscription()
        big = await server.open_group(track.subscribe_id, 0)
        stopped = stop_code(big)
        big.write(encode_varint(17) + b"x" * 17, end=True)
        group = await within(track.next_group())
        assert group is not None and group.sequence == 0
        with pytest.raises(ProtocolError) as info:
            await within(group.read_frame())
        assert info.value.code == ErrorCode.TOO_LARGE
        assert await within(stopped) == to_stream_code(ErrorCode.TOO_LARGE)

        # Other groups are still fine, at and under the limit.
        ok = await server.open_group(track.subscribe_id, 1)
        ok.write(CODEC.encode_frame(b"x" * 16) + CODEC.encode_frame(b"ok"), end=True)
        group = await within(track.next_group())
        assert group is not None and group.sequence == 1
        assert await within(group.read_all()) == [b"x" * 16, b"ok"]
        assert not client.closed
        assert not track.ended


async def test_truncated_frame_in_group(no_leaked_tasks: None) -> None:
    async with raw_server(DEFAULT_LIMITS) as (server, client):
        track, _ = await server.accept_subscription()
        uni = await server.open_group(track.subscribe_id, 0)
        uni.write(CODEC.encode_frame(b"whole") + encode_varint(10) + b"half", end=True)
        group = await within(track.next_group())
        assert group is not None
        assert await within(group.read_frame()) == b"whole"
        with pytest.raises(ProtocolError) as info:
            await within(group.read_frame())
        assert info.value.code == ErrorCode.DECODE
        assert not client.closed


async def test_group_reset_by_publisher(no_leaked_tasks: None) -> None:
    async with raw_server(DEFAULT_LIMITS) as (server, client):
        track, _ = await server.accept_subscription()
        uni = await server.open_group(track.subscribe_id, 0)
        uni.write(CODEC.encode_frame(b"a"))
        group = await within(track.next_group())
        assert group is not None
        assert await within(group.read_frame()) == b"a"
        uni.reset(ErrorCode.OLD)
        with pytest.raises(StreamError) as info:
            await within(group.read_frame())
        assert info.value.code == ErrorCode.OLD
        assert not client.closed


async def test_publisher_vanishes_mid_group(no_leaked_tasks: None) -> None:
    async with raw_server(DEFAULT_LIMITS) as (server, client):
        track, _ = await server.accept_subscription()
        uni = await server.open_group(track.subscribe_id, 0)
        uni.write(CODEC.encode_frame(b"first") + encode_varint(100) + b"partial")
        group = await within(track.next_group())
        assert group is not None
        assert await within(group.read_frame()) == b"first"
        server.conn.abort()
        with pytest.raises(SessionClosed) as info:
            await within(group.read_frame())
        assert info.value.code == ErrorCode.TRANSPORT
        with pytest.raises(SessionClosed):
            await within(track.next_group())
        closed = await within(client.wait_closed())
        assert closed.code == ErrorCode.TRANSPORT
        assert client.closed


async def test_subscriber_vanishes_mid_group(no_leaked_tasks: None) -> None:
    app = MoQ()
    handler_state: dict[str, Any] = {}
    release = asyncio.Event()

    async def handler(writer: TrackWriter) -> None:
        handler_state["started"] = True
        try:
            group = await writer.open_group()
            await group.write_frame(b"first")
            await release.wait()  # mid-group, forever
        except asyncio.CancelledError:
            handler_state["cancelled"] = True
            raise

    app.mux.publish("demo/clock", handler)
    async with raw_client(app) as peer:
        await peer.setup()
        await peer.subscribe(0, track="anything")
        uni = await within(peer.conn.accept_uni())
        assert await read_exact(uni, 5) == h("00 02 00 00 05")
        assert await read_exact(uni, 5) == b"first"
        peer.conn.abort()
        await within(peer.serving)  # the server's side of the session ends
        assert peer.server_conn.is_closed
        assert (await peer.server_conn.wait_closed()).code == ErrorCode.TRANSPORT
        assert handler_state == {"started": True, "cancelled": True}


# -- slow subscribers: bounded memory ----------------------------------------------

def buffered_bytes(conn: MemoryConnection) -> int:
    return sum(half.buffer.buffered for half in conn._halves if half.reader_conn is conn)


async def test_slow_subscriber_queue_is_bounded(no_leaked_tasks: None) -> None:
    limits = Limits(max_queued_groups=3)
    app = MoQ(limits=limits)
    groups = 50
    payload = b"p" * 1000
    done = asyncio.Event()

    async def handler(writer: TrackWriter) -> None:
        for sequence in range(groups):
            await writer.write_group(sequence.to_bytes(2, "big") + payload)
        done.set()
        await asyncio.Event().wait()  # keep the track open

    app.mux.publish("slow", handler)
    async with memory_sessions(app, limits=limits) as (client, _server, client_conn, _):
        reader = await within(client.subscribe("slow", "t"))
        await within(done.wait())
        await eventually(lambda: reader.dropped_groups == groups - 3, "groups to be dropped")
        await settle()
        assert reader.dropped_groups == groups - 3
        assert len(reader._queue) == 3
        # Only the queued groups' bytes are held; the dropped streams were stopped and freed.
        assert buffered_bytes(client_conn) <= 3 * (len(payload) + 16)
        # What is left is the newest groups, intact.
        received = []
        for _ in range(3):
            group = await within(reader.next_group())
            assert group is not None
            frames = await within(group.read_all())
            assert len(frames) == 1 and frames[0][2:] == payload
            received.append((group.sequence, int.from_bytes(frames[0][:2], "big")))
        assert received == [(s, s) for s in range(groups - 3, groups)]
        assert not client.closed


async def test_slow_subscriber_dropped_groups_are_stopped(no_leaked_tasks: None) -> None:
    limits = Limits(max_queued_groups=2)
    async with raw_server(limits) as (server, client):
        track, _ = await server.accept_subscription()
        stops = []
        for sequence in range(6):
            uni = await server.open_group(track.subscribe_id, sequence)
            stops.append(stop_code(uni))
            uni.write(CODEC.encode_frame(b"g%d" % sequence), end=True)
        await eventually(lambda: track.dropped_groups == 4, "groups to be dropped")
        assert [await within(stop) for stop in stops[:4]] == [to_stream_code(ErrorCode.CANCEL)] * 4
        assert not any(stop.done() for stop in stops[4:])
        got = []
        for _ in range(2):
            group = await within(track.next_group())
            assert group is not None
            got.append(await within(group.read_all()))
        assert got == [[b"g4"], [b"g5"]]
        assert not client.closed


async def test_receive_buffer_overflow_stops_stream(no_leaked_tasks: None) -> None:
    limits = Limits(max_stream_buffer=4096)
    async with raw_server(limits) as (server, client):
        track, _ = await server.accept_subscription()
        uni = await server.open_group(track.subscribe_id, 0)
        stopped = stop_code(uni)
        group = await within(track.next_group())  # the header was read; nobody reads the frames
        assert group is not None
        uni.write(encode_varint(100_000))
        written = 0
        with pytest.raises(StreamError) as info:
            for _ in range(100):
                uni.write(b"x" * 1024)
                written += 1024
                await settle(2)
        assert info.value.code == to_stream_code(ErrorCode.TOO_LARGE)
        assert written <= 4096 + 1024
        assert await within(stopped) == to_stream_code(ErrorCode.TOO_LARGE)
        assert buffered_bytes(server.client_conn) == 0
        with pytest.raises(StreamError) as info:
            await within(group.read_frame())
        assert info.value.code == ErrorCode.TOO_LARGE

        # The subscription and the session carry on.
        ok = await server.open_group(track.subscribe_id, 1)
        ok.write(CODEC.encode_frame(b"small"), end=True)
        group = await within(track.next_group())
        assert group is not None and group.sequence == 1
        assert await within(group.read_all()) == [b"small"]
        assert not client.closed


async def test_receive_buffer_overflow_on_our_published_group(no_leaked_tasks: None) -> None:
    # Our server publishes a group bigger than the subscriber will buffer; the subscriber's
    # transport stops that group, and the publisher carries on with the next one.
    app = MoQ()
    broadcast = Broadcast("big")
    track = broadcast.create_track("t")
    app.mux.publish("big", broadcast)
    client_limits = Limits(max_stream_buffer=8192)
    async with memory_sessions(app, limits=client_limits) as (client, server, client_conn, _):
        client_conn.max_stream_buffer = client_limits.max_stream_buffer  # applies to streams opened from now on
        reader = await within(client.subscribe("big", "t"))
        group_producer = track.append_group()
        group_producer.write_frame(b"h")
        first = await within(reader.next_group())
        assert first is not None and await within(first.read_frame()) == b"h"
        for _ in range(4):
            group_producer.write_frame(b"z" * 4096)
        group_producer.finish()
        with pytest.raises(StreamError) as info:
            await within(first.read_all())
        assert info.value.code == ErrorCode.TOO_LARGE
        assert buffered_bytes(client_conn) == 0
        track.write_frame(b"next")
        second = await within(reader.next_group())
        assert second is not None and second.sequence == 1
        assert await within(second.read_all()) == [b"next"]
        assert not client.closed and not server.closed



async def test_handler_giving_up_on_a_dropped_group_ends_the_subscription(no_leaked_tasks: None) -> None:
    # The subscriber drops an old group (stop with CANCEL); a handler that lets the
    # resulting StreamError escape ends the track, and the subscriber must see that.
    limits = Limits(max_queued_groups=1)
    app = MoQ(limits=limits)
    failures: list[int] = []

    async def handler(writer: TrackWriter) -> None:
        old = await writer.open_group()
        await old.write_frame(b"old")
        new = await writer.open_group()
        await new.write_frame(b"new")
        await new.close()
        try:
            for _ in range(200):
                await old.write_frame(b"more")
                await asyncio.sleep(0.005)
        except StreamError as exc:
            failures.append(exc.code)
            raise

    app.mux.publish("x", handler)
    async with memory_sessions(app, limits=limits) as (client, server, _, _):
        reader = await within(client.subscribe("x", "t"))
        await eventually(lambda: reader.dropped_groups == 1, "the old group to be dropped")
        with pytest.raises(SubscribeError) as info:
            async with asyncio.timeout(WAIT):
                async for group in reader:
                    assert group.sequence == 1
                    assert await within(group.read_all()) == [b"new"]
        assert info.value.code == ErrorCode.CANCEL
        assert failures == [ErrorCode.CANCEL]
        assert reader.dropped_groups == 1
        assert not client.closed and not server.closed


# -- a raw server against our client's setup and announce handling ----------------------

async def test_server_setup_with_a_version_we_did_not_offer(no_leaked_tasks: None) -> None:
    client_conn, evil = memory_pair()
    dialing = asyncio.ensure_future(client_setup(client_conn, DEFAULT_LIMITS, path="/"))
    stream = await within(evil.accept_bi())
    head = await read_exact(stream, 3)
    await read_exact(stream, int.from_bytes(head[1:], "big"))
    stream.write(h("21 00 09 c0 00 00 00 ff 00 00 0e 00"))  # draft-14
    with pytest.raises(ProtocolError) as info:
        await within(dialing)
    assert info.value.code == ErrorCode.VERSION
    client_conn.close()


async def test_server_setup_garbage(no_leaked_tasks: None) -> None:
    client_conn, evil = memory_pair()
    dialing = asyncio.ensure_future(client_setup(client_conn, DEFAULT_LIMITS, path="/"))
    stream = await within(evil.accept_bi())
    stream.write(h("40 00 00"))
    with pytest.raises(ProtocolError) as info:
        await within(dialing)
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    client_conn.close()


async def test_server_setup_refused_by_reset(no_leaked_tasks: None) -> None:
    client_conn, evil = memory_pair()
    dialing = asyncio.ensure_future(client_setup(client_conn, DEFAULT_LIMITS, path="/"))
    stream = await within(evil.accept_bi())
    stream.reset(ErrorCode.UNAUTHORIZED)
    with pytest.raises(SetupRejected) as info:
        await within(dialing)
    assert info.value.code == ErrorCode.UNAUTHORIZED
    client_conn.close()


async def test_server_never_answers_setup(no_leaked_tasks: None) -> None:
    client_conn, evil = memory_pair()
    dialing = asyncio.ensure_future(client_setup(client_conn, DEFAULT_LIMITS, path="/", timeout=0.1))
    await within(evil.accept_bi())
    with pytest.raises(TimeoutError):
        await within(dialing)
    client_conn.close()


async def test_bad_announce_status_from_publisher(no_leaked_tasks: None) -> None:
    async with raw_server(DEFAULT_LIMITS) as (server, client):
        asking = asyncio.ensure_future(client.announced(""))
        stream = await within(server.conn.accept_bi())
        assert await read_exact(stream, 3) == h("01 01 00")
        stream.write(CODEC.encode_announce_init(AnnounceInit(("a",))))
        announcements = await within(asking)
        assert list(announcements.active) == ["a"]
        stopped = stop_code(stream)
        stream.write(frame_message(h("02 01") + b"b"))  # status 2
        assert await within(stopped) == to_stream_code(ErrorCode.PROTOCOL_VIOLATION)
        closed = await within(client.wait_closed())
        assert closed.code == ErrorCode.PROTOCOL_VIOLATION
        assert (await within(server.conn.wait_closed())).code == to_session_code(ErrorCode.PROTOCOL_VIOLATION)
        assert await within(announcements.next()) is not None  # "a" was queued before the error
        with pytest.raises(ProtocolError) as info:
            await within(announcements.next())
        assert info.value.code == ErrorCode.PROTOCOL_VIOLATION

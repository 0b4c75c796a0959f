"""Malformed input for every message moq-lite-03..06 added, against the real engine.

A raw peer scripted byte by byte sends each malformed message to our server
(``serve_connection`` with the version's ALPN) or, where the message only flows
the other way, to our client (:class:`Session`): over the in-memory transport,
and a few cases over native QUIC on 127.0.0.1. Each test checks the exact code
the raw peer sees, that a well-behaved session of the same version opened on
the same app before the attack still works after it (and a new one too), and
that no task is left behind.

Codes: lite-03+ number close and stream codes in moq-rs's scoped registries
(``protocol/scoped_codes.py``). The raw peer numbers the codes it sends that
way and reads ours exactly as they arrive (:data:`WIRE`), so the tests assert
registry values. Every protocol error of ours closes the session with
``SessionCode.PROTOCOL_VIOLATION``; a stream refused for a protocol error is
reset or stopped with ``StreamCode.INTERNAL`` (the stream registry has no
violation code).

What is fatal follows the engine's rule (``Session._guard``; lite-02's in
test_bad_input.py): a malformed or forbidden control message closes the
session with its code. Confined to their stream: an unknown stream type
(lite-03+), a bad SUBSCRIBE_UPDATE (that subscription), a bad frame (that group
or fetch), a request for something that does not exist (NOT_FOUND), and a bad
answer to a request our client is still waiting on (subscribe's first
response, the announcements ANNOUNCE_OK promises, TRACK_INFO, a fetch): the
caller gets the error and the stream is refused with its code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration

from moqt_asgi import Broadcast, MoQ
from moqt_asgi.endpoints.dial_quic import dial_quic
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.engine._reader import StreamReader
from moqt_asgi.engine.announce import AnnouncementReader
from moqt_asgi.engine.handshake import client_setup, start_client
from moqt_asgi.engine.session import Session
from moqt_asgi.engine.track import MAX_DROP_NOTICES, TrackReader
from moqt_asgi.producer import TrackProducer
from moqt_asgi.protocol.codes import SCOPED_CODES, ScopedErrorCodes, app_to_http
from moqt_asgi.protocol.errors import ErrorCode, ProtocolError, StreamError
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.lite03 import MAX_URI_LENGTH
from moqt_asgi.protocol.lite_wire import MAX_HOPS, LiteBidi, LiteUni, frame_message, typed_message, zigzag_encode
from moqt_asgi.protocol.messages import (
    Announce,
    AnnounceOk,
    AnnouncePlease,
    AnnounceStart,
    Fetch,
    GroupHeader,
    LiteSetup,
    Probe,
    Subscribe,
    SubscribeEnd,
    SubscribeOk,
    SubscribeStart,
    SubscribeUpdate,
    TrackInfo,
    TrackRequest,
)
from moqt_asgi.protocol.scoped_codes import SessionCode, StreamCode
from moqt_asgi.protocol.versions import (
    LITE_02_VERSION,
    LITE_03_VERSION,
    LITE_04_VERSION,
    LITE_05_VERSION,
    LITE_06_VERSION,
    Version,
    features_of,
)
from moqt_asgi.protocol.wire import MAX_VARINT, decode_varint, encode_string, encode_varint
from moqt_asgi.transport.base import BidiStream, SendStream
from moqt_asgi.transport.memory import memory_pair

from . import helpers
from .conftest import Certs
from .helpers import WAIT, QuicPeer, eventually, memory_sessions, read_to_end, refused, settle, stop_code, within

CLIENT_TIMEOUT = 2.0
"""Our client's wait for the raw server's answers (a subscription's first response, say)."""
PROMPT = 0.3
"""How long a reaction to a handful of in-memory messages may take."""

V03, V04, V05, V06 = LITE_03_VERSION, LITE_04_VERSION, LITE_05_VERSION, LITE_06_VERSION
ALL = (V03, V04, V05, V06)
WITH_GOAWAY = (V04, V05, V06)
WITH_SETUP = (V05, V06)
WITH_ORDERED = (V03, V04, V05)
WITH_EXCLUDE_HOP = (V04, V05)
WITH_HOP_IDS = (V04, V05, V06)

MESSAGE_LIMIT = DEFAULT_LIMITS.max_message_size
OVERSIZED = encode_varint(MESSAGE_LIMIT + 1) + bytes(16)
"""A message length one past the limit, and a little of its body: refused on the length alone."""

VIOLATION = SessionCode.PROTOCOL_VIOLATION
INTERNAL = StreamCode.INTERNAL


class WireCodes(ScopedErrorCodes):
    """moq-rs's registries for the codes the raw peer sends; the codes it receives stay as they were on the wire."""

    __slots__ = ()

    def session_in(self, code: int) -> int:
        return int(code)

    def stream_in(self, code: int, *, bidi: bool) -> int:
        return int(code)


WIRE = WireCodes()


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def short(version: Version) -> str:
    return version.name.removeprefix("moq-")


def versions(*chosen: Version) -> list[Any]:
    return [pytest.param(version, id=short(version)) for version in chosen]


def cases(chosen: tuple[Version, ...], table: dict[str, Any]) -> list[Any]:
    """``(version, value)`` for every version in ``chosen`` and every entry of ``table``."""
    return [pytest.param(version, value, id=f"{short(version)}-{name}") for version in chosen for name, value in table.items()]


def per_version(chosen: tuple[Version, ...], table: Callable[[Version], dict[str, Any]]) -> list[Any]:
    """``(version, name)`` for every version in ``chosen`` and every entry of its ``table(version)``."""
    return [pytest.param(version, name, id=f"{short(version)}-{name}") for version in chosen for name in table(version)]


def unframe(framed: bytes) -> bytes:
    size, pos = decode_varint(framed)
    assert len(framed) - pos == size
    return framed[pos:]


def with_trailing(framed: bytes, extra: bytes = b"\x00") -> bytes:
    """A size-prefixed message with ``extra`` appended to its body (and counted in its length)."""
    return frame_message(unframe(framed) + extra)


def kind(value: int) -> bytes:
    return encode_varint(value)


def setup_stream(body: bytes) -> bytes:
    return kind(LiteUni.SETUP) + frame_message(body)


def typed_messages(data: bytes) -> list[tuple[int, bytes]]:
    """Split ``type, length, body`` messages."""
    out, pos = [], 0
    while pos < len(data):
        msg_type, pos = decode_varint(data, pos)
        size, pos = decode_varint(data, pos)
        out.append((msg_type, data[pos:pos + size]))
        pos += size
    return out


def goaway(uri: str) -> bytes:
    return kind(LiteBidi.GOAWAY) + frame_message(encode_string(uri))


def timed_frame(delta: int, payload: bytes) -> bytes:
    return encode_varint(zigzag_encode(delta)) + encode_varint(len(payload)) + payload


def frame_bytes(version: Version, payload: bytes) -> bytes:
    return timed_frame(0, payload) if features_of(version.codec).frame_timestamps else encode_varint(len(payload)) + payload


async def frames_of_next_group(reader: TrackReader) -> list[bytes]:
    group = await within(reader.next_group())
    assert group is not None
    return await within(group.read_all())


# -- the app under attack, and the sessions that must not notice ---------------------

class Demo:
    """An app publishing ``demo/clock`` (track ``seconds``, one group already written)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.app = MoQ(limits=limits)
        self.broadcast = Broadcast("demo/clock")
        self.seconds = self.broadcast.create_track("seconds")
        self.seconds.write_frame(b"tick")  # lite-05+ answers a SUBSCRIBE only once a group exists
        self.app.mux.publish("demo/clock", self.broadcast)
        self._names = itertools.count()

    def new_track(self, first_frame: bytes) -> TrackProducer:
        track = self.broadcast.create_track(f"check-{next(self._names)}")
        track.write_frame(first_frame)
        return track

    @contextlib.asynccontextmanager
    async def guarded(self, version: Version) -> AsyncIterator[None]:
        """Run the body next to a well-behaved session of ``version``; it, and a new one, must work after."""
        track = self.new_track(b"before")
        async with memory_sessions(self.app, version=version) as (client, server, _, _):
            reader = await within(client.subscribe("demo/clock", track.name))
            assert await frames_of_next_group(reader) == [b"before"]
            yield
            track.write_frame(b"after")
            assert await frames_of_next_group(reader) == [b"after"]
            reader.close()
            assert not client.closed and not server.closed
        await self.assert_still_serving(version)

    async def assert_still_serving(self, version: Version) -> None:
        track = self.new_track(b"still alive")
        async with memory_sessions(self.app, version=version) as (client, server, _, _):
            assert client.version == version.number
            announcements = await within(client.announced(""))
            first = await within(announcements.next())
            assert first is not None and first.path == "demo/clock"
            announcements.close()
            reader = await within(client.subscribe("demo/clock", track.name))
            assert await frames_of_next_group(reader) == [b"still alive"]
            reader.close()
            assert not server.closed


@pytest.fixture
async def demo(no_leaked_tasks: None) -> AsyncIterator[Demo]:
    yield Demo()


# -- a raw client against our server ---------------------------------------------------

class RawClient(helpers.RawClient):
    """A raw peer acting as client against our real server, on ``version``."""

    def __init__(self, app: MoQ, version: Version, *, setup_timeout: float = WAIT) -> None:
        super().__init__(app, protocol=version.alpn, setup_timeout=setup_timeout)
        self.version = version
        self.codec: Any = version.new_codec(DEFAULT_LIMITS)
        if version.codec.error_codes is SCOPED_CODES:
            self.conn.error_codes = WIRE

    async def send_setup(self, data: bytes | None = None, *, end: bool = True) -> SendStream:
        uni = await self.conn.open_uni()
        uni.write(self.codec.encode_setup_stream(LiteSetup(path="/")) if data is None else data, end=end)
        return uni

    async def setup(self, data: bytes | None = None) -> None:
        """lite-05/06: our SETUP (``data``, or a plain one), then the server's; lite-02: the SETUP exchange."""
        if self.version.bidi_setup:
            _, self.session_stream, _ = await within(
                client_setup(self.conn, DEFAULT_LIMITS, path="/", versions=(self.version,)))
            return
        if not self.version.uni_setup:
            return  # lite-03/04 have no setup at all
        await self.send_setup(data)
        stream = await within(self.conn.accept_uni())
        reader = StreamReader(stream)
        assert await within(reader.read_varint()) == LiteUni.SETUP
        self.codec.decode_setup(await within(reader.read_message(1024)))
        assert await within(reader.at_eof())

    def subscribe_bytes(self, subscribe_id: int, broadcast: str = "demo/clock", track: str = "seconds") -> bytes:
        return kind(LiteBidi.SUBSCRIBE) + bytes(self.codec.encode_subscribe(Subscribe(subscribe_id, broadcast, track, 0)))

    async def subscribe(self, subscribe_id: int, track: str = "seconds") -> BidiStream:
        """A subscription, once its first response (SUBSCRIBE_OK, or lite-05+ SUBSCRIBE_START) arrived."""
        stream = await self.open_bi(self.subscribe_bytes(subscribe_id, track=track))
        reader = StreamReader(stream)
        assert await within(reader.read_varint()) == 0
        response = self.codec.decode_subscribe_response(0, await within(reader.read_message(1024)))
        assert isinstance(response, SubscribeStart | SubscribeOk)
        return stream

    async def announced(self) -> list[str]:
        """ANNOUNCE_PLEASE "" and the suffixes announced at once (proves the session is alive)."""
        stream = await self.open_bi(kind(LiteBidi.ANNOUNCE) + self.codec.encode_announce_please(AnnouncePlease("")))
        reader = StreamReader(stream)
        features = self.codec.features
        count = 1  # lite-03/04 send no count: the demo publishes one broadcast
        if features.announce_ok:
            count = self.codec.decode_announce_ok(await within(reader.read_message(1024))).active_count
        suffixes = []
        for _ in range(count):
            if features.announce_ids:
                msg_type = await within(reader.read_varint())
                suffixes.append(self.codec.decode_announcement(msg_type, await within(reader.read_message(1024))).suffix)
            else:
                suffixes.append(self.codec.decode_announce(await within(reader.read_message(1024))).suffix)
        stream.write(b"", end=True)
        return suffixes

    async def assert_alive(self) -> None:
        await settle()
        assert not self.conn.is_closed
        assert await self.announced() == ["demo/clock"]



def raw_client(app: MoQ, version: Version, **kwargs: Any) -> RawClient:
    """A raw client of ``app`` on ``version`` (``async with`` it: the server's side must have ended on exit)."""
    return RawClient(app, version, **kwargs)


@contextlib.asynccontextmanager
async def attack(demo: Demo, version: Version, *, setup: bool = True, **kwargs: Any) -> AsyncIterator[RawClient]:
    """A raw client on ``version`` (set up unless told otherwise) next to a well-behaved session."""
    async with demo.guarded(version), raw_client(demo.app, version, **kwargs) as peer:
        if setup:
            await peer.setup()
        yield peer


# -- a raw server against our client ---------------------------------------------------

class RawServer(helpers.RawServer):
    """A raw peer acting as server (and publisher) for our real client :class:`Session` on ``version``."""

    def __init__(self, version: Version, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self.version = version
        self.limits = limits
        self.codec: Any = version.new_codec(DEFAULT_LIMITS)
        self.conn.error_codes = WIRE

    async def connect(self) -> Session:
        dialing = asyncio.ensure_future(start_client(self.client_conn, self.limits, protocol=self.version.alpn,
                                                     path="/room", versions=(self.version,), timeout=WAIT))
        if self.version.uni_setup:
            uni = await within(self.conn.accept_uni())
            reader = StreamReader(uni)
            assert await within(reader.read_varint()) == LiteUni.SETUP
            assert self.codec.decode_setup(await within(reader.read_message(1024))).path == "/room"
            out = await self.conn.open_uni()
            out.write(self.codec.encode_setup_stream(LiteSetup()), end=True)
        start = await within(dialing)
        return self.start_client(Session(self.client_conn, start.codec, limits=self.limits, is_client=True,
                                         path="/room", timeout=CLIENT_TIMEOUT))

    async def accept(self, expected: LiteBidi) -> tuple[BidiStream, bytes]:
        """The next stream our client opens, which must be of type ``expected``, and its first message."""
        stream = await within(self.conn.accept_bi())
        reader = StreamReader(stream)
        assert await within(reader.read_varint()) == expected
        return stream, await within(reader.read_message(MESSAGE_LIMIT))

    async def accept_announce(self) -> tuple[asyncio.Future[AnnouncementReader], BidiStream, AnnouncePlease]:
        asking = asyncio.ensure_future(self.client.announced(""))
        stream, body = await self.accept(LiteBidi.ANNOUNCE)
        return asking, stream, self.codec.decode_announce_please(body)

    def announce_ok(self, count: int = 0) -> bytes:
        """ANNOUNCE_OK (lite-05+) with ``count`` announcements to follow; nothing on lite-03/04."""
        return self.codec.encode_announce_ok(AnnounceOk(7, count)) if self.codec.features.announce_ok else b""

    def announce(self, suffix: str, hops: tuple[int, ...] = ()) -> bytes:
        """``suffix`` is active (ANNOUNCE, or lite-06 ANNOUNCE_START)."""
        if self.codec.features.announce_ids:
            return bytes(self.codec.encode_announcement(AnnounceStart(suffix, hops)))
        return bytes(self.codec.encode_announce(Announce(True, suffix, hops)))

    async def start_subscription(self, track: str = "t") -> tuple[asyncio.Future[TrackReader], BidiStream]:
        """Our client's SUBSCRIBE, not answered yet."""
        subscribing = asyncio.ensure_future(self.client.subscribe("demo/clock", track))
        stream, body = await self.accept(LiteBidi.SUBSCRIBE)
        msg = self.codec.decode_subscribe(body)
        assert (msg.broadcast, msg.track) == ("demo/clock", track)
        return subscribing, stream

    def first_response(self) -> bytes:
        if self.codec.features.subscribe_start_end:
            return bytes(self.codec.encode_subscribe_response(SubscribeStart(0)))
        return bytes(self.codec.encode_subscribe_ok(SubscribeOk(0)))

    def drop_response(self, start: int, end: int) -> bytes:
        """SUBSCRIBE_DROP ``start..end``, range not checked."""
        body = encode_varint(start) + encode_varint(end) + encode_varint(0)
        return typed_message(self.codec.response_types["DROP"], body)

    async def accept_subscription(self, track: str = "t") -> tuple[TrackReader, BidiStream]:
        subscribing, stream = await self.start_subscription(track)
        stream.write(self.first_response())
        return await within(subscribing), stream

    async def open_group(self, subscribe_id: int, sequence: int) -> SendStream:
        uni = await self.conn.open_uni()
        uni.write(self.codec.encode_group_header(GroupHeader(subscribe_id, sequence)))
        return uni

    async def assert_refused(self, stream: BidiStream, code: int, *, reset: bool = True) -> None:
        """Our client reset (unless it had finished its side) and stopped ``stream`` with ``code``; the session stays."""
        stopped = stop_code(stream)
        if reset:
            with pytest.raises(StreamError) as info:
                await read_to_end(stream)
            assert info.value.code == code
        assert await within(stopped, PROMPT) == code
        await settle()
        assert not self.client.closed



@contextlib.asynccontextmanager
async def raw_server(demo: Demo, version: Version, limits: Limits = DEFAULT_LIMITS) -> AsyncIterator[RawServer]:
    """A raw server with our client connected to it, next to a well-behaved session on the demo app."""
    async with demo.guarded(version):
        server = RawServer(version, limits)
        try:
            await server.connect()
            yield server
        finally:
            await server.close()


# -- lite-05/06 SETUP ----------------------------------------------------------------

SETUP_GARBAGE = {
    "value-past-the-end": setup_stream(h("01 | 01 05 00")),
    "probe-not-a-varint": setup_stream(h("01 | 01 00")),
    "role-with-trailing-bytes": setup_stream(h("01 | 03 02 01 00")),
    "origin-truncated-varint": setup_stream(h("01 | 05 01 40")),
    "key-truncated": setup_stream(h("01 | 40")),
    "trailing-after-parameters": setup_stream(h("00 | ff")),
    "empty-body": setup_stream(b""),
    "length-past-the-fin": h("01 | 05 | 00"),
    "fin-inside-the-length": h("01 | 40"),
}


@pytest.mark.parametrize(("version", "data"), cases(WITH_SETUP, SETUP_GARBAGE))
async def test_setup_garbage(demo: Demo, version: Version, data: bytes) -> None:
    async with attack(demo, version, setup=False) as peer:
        await peer.send_setup(data)
        assert await peer.closed_code() == VIOLATION


SETUP_DUPLICATES = {
    "probe": h("02 | 01 01 00 | 01 01 01"),
    "path": h("02 | 02 01 2f | 02 01 2f"),
    "unknown-id": h("03 | 40 20 00 | 02 01 2f | 40 20 01 00"),
}


@pytest.mark.parametrize(("version", "body"), cases(WITH_SETUP, SETUP_DUPLICATES))
async def test_setup_duplicate_parameter(demo: Demo, version: Version, body: bytes) -> None:
    async with attack(demo, version, setup=False) as peer:
        await peer.send_setup(setup_stream(body))
        assert await peer.closed_code() == VIOLATION


def unknown_parameters(count: int) -> bytes:
    return encode_varint(count) + b"".join(encode_varint(0x100 + i) + b"\x00" for i in range(count))


@pytest.mark.parametrize(("version", "body"), cases(WITH_SETUP, {
    "one-over-the-limit": unknown_parameters(DEFAULT_LIMITS.max_parameters + 1),
    "count-at-the-varint-maximum": encode_varint(MAX_VARINT),
}))
async def test_setup_too_many_parameters(demo: Demo, version: Version, body: bytes) -> None:
    async with attack(demo, version, setup=False) as peer:
        await peer.send_setup(setup_stream(body))
        assert await peer.closed_code() == SessionCode.KEY_VALUE_FORMATTING


@pytest.mark.parametrize("version", versions(*WITH_SETUP))
async def test_setup_parameter_limits_are_inclusive(demo: Demo, version: Version) -> None:
    # As many parameters as allowed, one of them the longest path allowed.
    path = b"/" + b"p" * (DEFAULT_LIMITS.max_path_length - 1)
    params = [encode_varint(0x100 + i) + b"\x00" for i in range(DEFAULT_LIMITS.max_parameters - 1)]
    params.append(h("02") + encode_varint(len(path)) + path)
    async with attack(demo, version, setup=False) as peer:
        await peer.setup(setup_stream(encode_varint(len(params)) + b"".join(params)))
        await peer.assert_alive()


@pytest.mark.parametrize(("version", "path"), cases(WITH_SETUP, {
    "not-utf8": h("2f ff fe"),
    "one-over-the-length-limit": b"/" + b"p" * DEFAULT_LIMITS.max_path_length,
}))
async def test_setup_bad_path(demo: Demo, version: Version, path: bytes) -> None:
    async with attack(demo, version, setup=False) as peer:
        await peer.send_setup(setup_stream(h("01 02") + encode_varint(len(path)) + path))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("sent", ["nothing", "half-a-setup", "stream-type-only", "other-streams-only"])
@pytest.mark.parametrize("version", versions(*WITH_SETUP))
async def test_setup_never_completes(demo: Demo, version: Version, sent: str) -> None:
    loop = asyncio.get_running_loop()
    async with attack(demo, version, setup=False, setup_timeout=0.2) as peer:
        started = loop.time()
        full = peer.codec.encode_setup_stream(LiteSetup(path="/"))
        if sent == "half-a-setup":
            await peer.send_setup(full[:-2], end=False)
        elif sent == "stream-type-only":
            await peer.send_setup(full[:1], end=False)
        elif sent == "other-streams-only":
            await peer.open_bi(kind(LiteBidi.ANNOUNCE) + peer.codec.encode_announce_please(AnnouncePlease("")))
        assert await peer.closed_code() == SessionCode.CONTROL_MESSAGE_TIMEOUT
        assert 0.15 <= loop.time() - started < 1.5
        await within(peer.serving)


@pytest.mark.parametrize(("version", "first"), cases(WITH_SETUP, {
    "group": h("00 | 02 00 00"),
    "unknown-type": h("02 00"),
    "two-byte-unknown-type": h("40 80 00"),
}))
async def test_first_uni_stream_is_not_setup(demo: Demo, version: Version, first: bytes) -> None:
    async with attack(demo, version, setup=False) as peer:
        await peer.open_uni(first)
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*WITH_SETUP))
async def test_server_sends_a_second_setup_stream(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        uni = await server.conn.open_uni()
        uni.write(server.codec.encode_setup_stream(LiteSetup()), end=True)
        assert await server.client_closed_code() == VIOLATION


@pytest.mark.parametrize(("version", "setup"), cases(WITH_SETUP, {
    "duplicate-parameter": (SETUP_DUPLICATES["probe"], ErrorCode.PROTOCOL_VIOLATION),
    "value-past-the-end": (h("01 | 01 05 00"), ErrorCode.DECODE),
}))
async def test_server_setup_garbage_to_our_client(version: Version, setup: tuple[bytes, int], no_leaked_tasks: None) -> None:
    body, code = setup
    client_conn, server_conn = memory_pair()
    dialing = asyncio.ensure_future(start_client(client_conn, DEFAULT_LIMITS, protocol=version.alpn, path="/",
                                                 versions=(version,), timeout=WAIT))
    await within(server_conn.accept_uni())  # the client's SETUP
    uni = await server_conn.open_uni()
    uni.write(setup_stream(body), end=True)
    with pytest.raises(ProtocolError) as info:
        await within(dialing)
    assert info.value.code == code
    client_conn.close()


@pytest.mark.parametrize("version", versions(*WITH_SETUP))
async def test_second_setup_stream(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        await peer.assert_alive()
        await peer.send_setup()
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize(("version", "data"), cases(WITH_SETUP, {
    "one-over-the-limit": kind(LiteUni.SETUP) + OVERSIZED,
    "length-at-the-varint-maximum": h("01 | ff ff ff ff ff ff ff ff"),
}))
async def test_setup_oversized(demo: Demo, version: Version, data: bytes) -> None:
    async with attack(demo, version, setup=False) as peer:
        await peer.send_setup(data, end=False)
        assert await peer.closed_code() == VIOLATION


# -- requests with trailing bytes, exclude hop ------------------------------------------

@pytest.mark.parametrize("version", versions(*ALL))
async def test_announce_request_with_trailing_bytes(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        please = peer.codec.encode_announce_please(AnnouncePlease("", 5))
        await peer.open_bi(kind(LiteBidi.ANNOUNCE) + with_trailing(please))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize(("version", "body"), cases(WITH_EXCLUDE_HOP, {
    "missing": encode_string(""),
    "truncated": encode_string("") + h("80 00"),
    "followed-by-trailing-bytes": encode_string("") + encode_varint(5) + h("00"),
}))
async def test_announce_request_bad_exclude_hop(demo: Demo, version: Version, body: bytes) -> None:
    async with attack(demo, version) as peer:
        await peer.open_bi(kind(LiteBidi.ANNOUNCE) + frame_message(body))
        assert await peer.closed_code() == VIOLATION


async def test_lite06_announce_request_carrying_an_exclude_hop(demo: Demo) -> None:
    async with attack(demo, V06) as peer:
        await peer.open_bi(kind(LiteBidi.ANNOUNCE) + frame_message(encode_string("") + encode_varint(5)))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*WITH_EXCLUDE_HOP))
async def test_exclude_hop_at_the_varint_maximum_is_accepted(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        stream = await peer.open_bi(kind(LiteBidi.ANNOUNCE) + frame_message(encode_string("") + encode_varint(MAX_VARINT)))
        reader = StreamReader(stream)
        if features_of(version.codec).announce_ok:
            assert peer.codec.decode_announce_ok(await within(reader.read_message(1024))).active_count == 1
        assert peer.codec.decode_announce(await within(reader.read_message(1024))).suffix == "demo/clock"
        await peer.assert_alive()


@pytest.mark.parametrize("version", versions(*ALL))
async def test_subscribe_with_trailing_bytes(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        framed = peer.subscribe_bytes(0)[1:]
        await peer.open_bi(kind(LiteBidi.SUBSCRIBE) + with_trailing(framed))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*WITH_SETUP))
async def test_track_request_with_trailing_bytes(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        request = peer.codec.encode_track_request(TrackRequest("demo/clock", "seconds"))
        await peer.open_bi(kind(LiteBidi.TRACK) + with_trailing(request))
        assert await peer.closed_code() == VIOLATION


def one_shot_requests(version: Version) -> dict[str, bytes]:
    """Streams that carry one request, then FIN."""
    codec: Any = version.new_codec(DEFAULT_LIMITS)
    table = {"announce-request": kind(LiteBidi.ANNOUNCE) + codec.encode_announce_please(AnnouncePlease(""))}
    if version in WITH_GOAWAY:
        table["goaway"] = goaway("")
    if version in WITH_SETUP:
        table["track"] = kind(LiteBidi.TRACK) + codec.encode_track_request(TrackRequest("demo/clock", "seconds"))
    return table



@pytest.mark.parametrize(("version", "case"), [
    pytest.param(v, c, id=f"{short(v)}-{c}")
    for v in ALL for c in one_shot_requests(v)
])
async def test_data_after_a_one_message_request(demo: Demo, version: Version, case: str) -> None:
    async with attack(demo, version) as peer:
        stream = await peer.open_bi(one_shot_requests(version)[case])
        await settle()
        stream.write(b"\x00" * 64)
        assert await peer.closed_code(PROMPT) == VIOLATION


# -- SUBSCRIBE fields --------------------------------------------------------------------

def lite03_subscribe(ordered: bytes, bounds: bytes = h("00 00 00")) -> bytes:
    """A lite-03..05 SUBSCRIBE body with a raw ``ordered`` byte and raw ``max latency, start, end``."""
    return encode_varint(0) + encode_string("demo/clock") + encode_string("seconds") + h("00") + ordered + bounds


def lite06_subscribe(bounds: bytes) -> bytes:
    """A lite-06 SUBSCRIBE body with raw ``max latency, start group, end group, start frame, end frame``."""
    return encode_varint(0) + encode_string("demo/clock") + encode_string("seconds") + h("00") + bounds


@pytest.mark.parametrize(("version", "flag"), cases(WITH_ORDERED, {"2": h("02"), "255": h("ff")}))
async def test_subscribe_bad_ordered_flag(demo: Demo, version: Version, flag: bytes) -> None:
    async with attack(demo, version) as peer:
        await peer.open_bi(kind(LiteBidi.SUBSCRIBE) + frame_message(lite03_subscribe(flag)))
        assert await peer.closed_code() == VIOLATION


async def test_lite06_subscribe_end_frame_without_end_group(demo: Demo) -> None:
    async with attack(demo, V06) as peer:
        # max latency 0, start group none, end group none, start frame 0, end frame 2
        await peer.open_bi(kind(LiteBidi.SUBSCRIBE) + frame_message(lite06_subscribe(h("00 00 00 00 03"))))
        assert await peer.closed_code() == VIOLATION


TRUNCATED_BOUNDS = {
    "end-group-cut": "00 00 c0 00 00",
    "start-group-cut": "00 80 00",
    "latency-cut": "40",
}


@pytest.mark.parametrize(("version", "bounds"), cases(ALL, TRUNCATED_BOUNDS))
async def test_subscribe_truncated_group_bounds(demo: Demo, version: Version, bounds: str) -> None:
    async with attack(demo, version) as peer:
        body = lite06_subscribe(h(bounds)) if version is V06 else lite03_subscribe(h("00"), h(bounds))
        await peer.open_bi(kind(LiteBidi.SUBSCRIBE) + frame_message(body))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*ALL))
async def test_subscribe_bounds_at_the_varint_maximum_are_served(demo: Demo, version: Version) -> None:
    top = h("ff ff ff ff ff ff ff ff")
    async with attack(demo, version) as peer:
        if version is V06:  # latency, start group, end group, start frame, end frame
            body = lite06_subscribe(top * 5)
        else:  # latency, start, end: groups from 2**62 - 2 on, nothing the track has yet
            body = lite03_subscribe(h("01"), top * 3)
        stream = await peer.open_bi(kind(LiteBidi.SUBSCRIBE) + frame_message(body))
        await peer.assert_alive()
        stream.write(b"", end=True)  # unsubscribe: the publisher ends the track cleanly
        responses = [peer.codec.decode_subscribe_response(t, body) for t, body in typed_messages(await read_to_end(stream))]
        if features_of(version.codec).subscribe_start_end:
            assert [type(r) for r in responses] == [SubscribeStart, SubscribeEnd]
        else:
            assert [type(r) for r in responses] == [SubscribeOk]
        await peer.assert_alive()


def bad_updates(version: Version) -> dict[str, tuple[bytes, int]]:
    """Malformed SUBSCRIBE_UPDATEs for ``version`` and the code the subscription is refused with."""
    codec: Any = version.new_codec(DEFAULT_LIMITS)
    table: dict[str, tuple[bytes, int]] = {
        "trailing-bytes": (with_trailing(codec.encode_subscribe_update(SubscribeUpdate(1))), INTERNAL),
        "truncated": (frame_message(h("01")), INTERNAL),
        "oversized": (OVERSIZED, StreamCode.FRAME_TOO_LARGE),
    }
    if version is V06:
        table["end-frame-without-end-group"] = (frame_message(h("01 00 00 00 00 03")), INTERNAL)
    else:
        table["bad-ordered-flag"] = (frame_message(h("01 02 00 00 00")), INTERNAL)
    return table


@pytest.mark.parametrize(("version", "case"), per_version(ALL, bad_updates))
async def test_subscribe_update_malformed(demo: Demo, version: Version, case: str) -> None:
    data, code = bad_updates(version)[case]
    async with attack(demo, version) as peer:
        stream = await peer.subscribe(0)
        stream.write(data)
        assert await refused(stream) == (code, code)
        await peer.assert_alive()
        await peer.subscribe(0)  # the id is free again


@pytest.mark.parametrize("version", versions(*ALL))
async def test_too_many_subscriptions(version: Version, no_leaked_tasks: None) -> None:
    demo = Demo(Limits(max_subscriptions=1))
    async with attack(demo, version) as peer:
        first = await peer.subscribe(0)
        second = await peer.open_bi(peer.subscribe_bytes(1))
        assert await refused(second) == (INTERNAL, INTERNAL)  # BOUNDS_EXCEEDED has no stream code of its own
        first.write(b"", end=True)
        await read_to_end(first)
        await peer.assert_alive()
        await peer.subscribe(1)  # the slot is free again


# -- announcements our client reads ---------------------------------------------------------

def too_many_hops(server: RawServer) -> bytes:
    """An announcement of ``deep`` whose route has one hop more than allowed."""
    hops = tuple(range(1, MAX_HOPS + 2))
    route = encode_varint(len(hops)) + b"".join(map(encode_varint, hops))
    if server.version is V03:  # a count only
        return frame_message(h("01") + encode_string("deep") + encode_varint(len(hops)))
    if server.version is V06:
        return typed_message(0, encode_string("deep") + route + h("00 00"))
    return frame_message(h("01") + encode_string("deep") + route)


async def announce_violation(server: RawServer, stream: BidiStream, announcements: AnnouncementReader, code: int) -> None:
    """Our client stopped the announce stream and closed the session; its reader raises ``code``."""
    with pytest.raises(ProtocolError) as info:
        async with asyncio.timeout(WAIT):
            async for _ in announcements:
                pass
    assert info.value.code == code
    assert await server.client_closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*ALL))
async def test_announce_with_too_many_hops(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(0))
        announcements = await within(asking)
        stopped = stop_code(stream)
        stream.write(too_many_hops(server))
        assert await within(stopped) == INTERNAL
        await announce_violation(server, stream, announcements, ErrorCode.BOUNDS_EXCEEDED)


async def test_lite06_announce_update_with_too_many_hops(demo: Demo) -> None:
    async with raw_server(demo, V06) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(0) + server.announce("a"))
        announcements = await within(asking)
        stopped = stop_code(stream)
        hops = tuple(range(1, MAX_HOPS + 2))
        stream.write(typed_message(2, encode_varint(0) + encode_varint(len(hops)) + b"".join(map(encode_varint, hops))
                                   + h("00 00")))
        assert await within(stopped) == INTERNAL
        await announce_violation(server, stream, announcements, ErrorCode.BOUNDS_EXCEEDED)


@pytest.mark.parametrize("version", versions(*ALL))
async def test_announce_with_the_most_hops_allowed(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(0) + server.announce("a", tuple(range(1, MAX_HOPS + 1))))
        announcements = await within(asking)
        first = await within(announcements.next())
        assert first is not None and first.path == "a"
        assert not server.client.closed


BAD_STATUS = {"2": 2, "3": 3, "255": 255}


@pytest.mark.parametrize(("version", "status"), [
    pytest.param(version, status, id=f"{short(version)}-{status}")
    for version in (V03, V04, V05) for status in BAD_STATUS.values() if not (version is V05 and status == 2)
])
async def test_announce_bad_status(demo: Demo, version: Version, status: int) -> None:
    async with raw_server(demo, version) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(1) + server.announce("a"))
        announcements = await within(asking)
        stopped = stop_code(stream)
        stream.write(frame_message(bytes((status,)) + unframe(server.announce("b"))[1:]))
        assert await within(stopped) == INTERNAL
        assert await within(announcements.next()) is not None  # "a", queued before the error
        await announce_violation(server, stream, announcements, ErrorCode.PROTOCOL_VIOLATION)


async def test_lite05_restart_status_reads_as_active(demo: Demo) -> None:
    async with raw_server(demo, V05) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(0) + frame_message(h("02") + encode_string("a") + h("00")))
        announcements = await within(asking)
        first = await within(announcements.next())
        assert first is not None and first.path == "a"
        assert not server.client.closed



@pytest.mark.parametrize(("version", "count"), cases(WITH_SETUP, {
    "one-over-the-limit": DEFAULT_LIMITS.max_announcements + 1,
    "varint-maximum": MAX_VARINT,
}))
async def test_announce_ok_absurd_active_count(demo: Demo, version: Version, count: int) -> None:
    async with raw_server(demo, version) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.codec.encode_announce_ok(AnnounceOk(7, count)))
        with pytest.raises(ProtocolError) as info:
            await within(asking)
        assert info.value.code == ErrorCode.TOO_LARGE
        await server.assert_refused(stream, StreamCode.FRAME_TOO_LARGE)


@pytest.mark.parametrize("version", versions(*WITH_SETUP))
async def test_bad_announcement_in_the_initial_batch(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(2) + server.announce("a") + too_many_hops(server))
        with pytest.raises(ProtocolError) as info:
            await within(asking)
        assert info.value.code == ErrorCode.BOUNDS_EXCEEDED
        await server.assert_refused(stream, INTERNAL)


LITE06_MISUSE = {
    "unknown-type": (typed_message(3, b""), ErrorCode.UNEXPECTED_MESSAGE),
    "end-of-an-unknown-id": (typed_message(1, encode_varint(9)), ErrorCode.PROTOCOL_VIOLATION),
    "end-of-an-ended-id": (typed_message(1, encode_varint(0)) * 2, ErrorCode.PROTOCOL_VIOLATION),
    "start-of-an-announced-suffix": (typed_message(0, encode_string("a") + h("00 00 00")), ErrorCode.PROTOCOL_VIOLATION),
    "update-of-an-unknown-id": (typed_message(2, encode_varint(9) + h("00 00 00")), ErrorCode.PROTOCOL_VIOLATION),
    "start-with-trailing-bytes": (typed_message(0, encode_string("b") + h("00 00 00 00")), ErrorCode.DECODE),
}


@pytest.mark.parametrize("case", LITE06_MISUSE)
async def test_lite06_typed_announcement_misuse(demo: Demo, case: str) -> None:
    data, code = LITE06_MISUSE[case]
    async with raw_server(demo, V06) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(1) + server.announce("a"))  # takes id 0
        announcements = await within(asking)
        assert list(announcements.active) == ["a"]
        stopped = stop_code(stream)
        stream.write(data)
        assert await within(stopped) == INTERNAL
        await announce_violation(server, stream, announcements, code)


@pytest.mark.parametrize("version", [
    pytest.param(v, id=short(v))
    for v in WITH_HOP_IDS
])
async def test_looped_announcements_are_bounded(demo: Demo, version: Version) -> None:
    limits = Limits(max_announcements=2)
    async with raw_server(demo, version, limits) as server:
        asking, stream, please = await server.accept_announce()
        ours = server.client.mux.hop_id
        if features_of(version.codec).exclude_hop:
            assert please.exclude_hop == ours
        stream.write(server.announce_ok(0))
        await within(asking)
        stopped = stop_code(stream)
        stream.write(b"".join(server.announce(f"loop/{n}", (5, ours)) for n in range(limits.max_announcements + 1)))
        assert await within(stopped, PROMPT) == StreamCode.FRAME_TOO_LARGE
        assert await server.client_closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*ALL))
async def test_too_many_active_announcements(demo: Demo, version: Version) -> None:
    limits = Limits(max_announcements=2)
    async with raw_server(demo, version, limits) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(0))
        announcements = await within(asking)
        stopped = stop_code(stream)
        stream.write(b"".join(server.announce(f"b/{n}") for n in range(limits.max_announcements + 1)))
        assert await within(stopped) == StreamCode.FRAME_TOO_LARGE
        await announce_violation(server, stream, announcements, ErrorCode.TOO_LARGE)


# -- subscribe responses our client reads ----------------------------------------------------

def bad_responses(server: RawServer, *, first: bool) -> dict[str, tuple[bytes, int]]:
    codec = server.codec
    table: dict[str, tuple[bytes, int]] = {
        "unknown-type": (typed_message(7, b""), ErrorCode.UNEXPECTED_MESSAGE),
        "reversed-drop": (server.drop_response(5, 3), ErrorCode.PROTOCOL_VIOLATION),
        "oversized": (encode_varint(0) + OVERSIZED, ErrorCode.TOO_LARGE),
        "trailing-bytes": (encode_varint(1) + with_trailing(frame_message(encode_varint(3) * 3)), ErrorCode.DECODE),
    }
    if codec.features.subscribe_start_end:
        table["trailing-bytes"] = (encode_varint(1) + with_trailing(frame_message(encode_varint(3))), ErrorCode.DECODE)
        if not first:
            table["second-start"] = (server.first_response(), ErrorCode.UNEXPECTED_MESSAGE)
    return table


RESPONSE_CASES = ["unknown-type", "reversed-drop", "oversized", "trailing-bytes"]


@pytest.mark.parametrize("case", RESPONSE_CASES)
@pytest.mark.parametrize("version", versions(*ALL))
async def test_bad_first_subscribe_response(demo: Demo, version: Version, case: str) -> None:
    async with raw_server(demo, version) as server:
        data, code = bad_responses(server, first=True)[case]
        subscribing, stream = await server.start_subscription()
        stream.write(data)
        with pytest.raises(ProtocolError) as info:
            await within(subscribing)
        assert info.value.code == code
        await server.assert_refused(stream, StreamCode.FRAME_TOO_LARGE if code == ErrorCode.TOO_LARGE else INTERNAL)


@pytest.mark.parametrize(("version", "case"), [
    pytest.param(v, c, id=f"{short(v)}-{c}") for v in ALL for c in [*RESPONSE_CASES, "second-start"]
    if c != "second-start" or v in WITH_SETUP
])
async def test_bad_later_subscribe_response(demo: Demo, version: Version, case: str) -> None:
    async with raw_server(demo, version) as server:
        data, code = bad_responses(server, first=False)[case]
        track, stream = await server.accept_subscription()
        stream.write(data)
        with pytest.raises(ProtocolError) as info:
            await within(track.next_group())
        assert info.value.code == code
        assert await server.client_closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*ALL))
async def test_drop_notices_are_bounded(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        track, stream = await server.accept_subscription()
        notices = 3 * MAX_DROP_NOTICES
        stream.write(b"".join(server.drop_response(n, n) for n in range(notices)))
        await eventually(lambda: bool(track.dropped_ranges) and track.dropped_ranges[-1][0] == notices - 1,
                         "the last notice to be read")
        assert track.dropped_ranges == [(n, n, 0) for n in range(notices - MAX_DROP_NOTICES, notices)]
        assert not server.client.closed


# -- group streams ----------------------------------------------------------------------

@pytest.mark.parametrize("version", versions(*ALL))
async def test_group_header_with_trailing_bytes(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        header = peer.codec.encode_group_header(GroupHeader(0, 0))
        await peer.open_uni(h("00") + with_trailing(header[1:]))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*ALL))
async def test_group_header_with_trailing_bytes_to_our_client(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        track, _ = await server.accept_subscription()
        header = server.codec.encode_group_header(GroupHeader(track.subscribe_id, 0))
        uni = await server.conn.open_uni()
        uni.write(h("00") + with_trailing(header[1:]))
        assert await server.client_closed_code() == VIOLATION


async def test_lite06_group_header_without_frame_start(demo: Demo) -> None:
    async with raw_server(demo, V06) as server:
        track, _ = await server.accept_subscription()
        uni = await server.conn.open_uni()
        uni.write(h("00") + frame_message(encode_varint(track.subscribe_id) + encode_varint(0)))  # the lite-05 header
        assert await server.client_closed_code() == VIOLATION


async def test_lite06_frame_start_is_reported(demo: Demo) -> None:
    async with raw_server(demo, V06) as server:
        track, _ = await server.accept_subscription()
        uni = await server.conn.open_uni()
        uni.write(server.codec.encode_group_header(GroupHeader(track.subscribe_id, 4, 2)) + timed_frame(5, b"third"),
                  end=True)
        group = await within(track.next_group())
        assert group is not None and (group.sequence, group.frame_start) == (4, 2)
        assert await within(group.read_all()) == [b"third"]


TIMESTAMPS = {
    "negative": ([-1], 0),
    "past-the-varint-maximum": ([(1 << 61) - 1, (1 << 61) - 1, 1, 1], 3),
}


@pytest.mark.parametrize(("version", "timestamps"), cases(WITH_SETUP, TIMESTAMPS))
async def test_frame_timestamp_out_of_range(demo: Demo, version: Version, timestamps: tuple[list[int], int]) -> None:
    deltas, good = timestamps
    async with raw_server(demo, version) as server:
        track, _ = await server.accept_subscription()
        uni = await server.open_group(track.subscribe_id, 0)
        stopped = stop_code(uni)
        uni.write(b"".join(timed_frame(delta, b"f%d" % n) for n, delta in enumerate(deltas)))
        group = await within(track.next_group())
        assert group is not None
        for n in range(good):
            assert await within(group.read_frame()) == b"f%d" % n
        if good:
            assert group.timestamp == MAX_VARINT  # the last timestamp allowed
        with pytest.raises(ProtocolError) as info:
            await within(group.read_frame())
        assert info.value.code == ErrorCode.BOUNDS_EXCEEDED
        assert await within(stopped) == INTERNAL
        # Only that group: the subscription and the session carry on.
        ok = await server.open_group(track.subscribe_id, 1)
        ok.write(timed_frame(1000, b"next"), end=True)
        assert await frames_of_next_group(track) == [b"next"]
        assert not server.client.closed


async def start_fetch(server: RawServer) -> tuple[asyncio.Future[list[bytes]], BidiStream]:
    """Our client's FETCH of group 3, not answered yet."""
    fetching = asyncio.ensure_future(server.client.fetch("demo/clock", "t", 3))
    stream, body = await server.accept(LiteBidi.FETCH)
    assert server.codec.decode_fetch(body).group == 3
    return fetching, stream



@pytest.mark.parametrize("version", versions(*WITH_SETUP))
async def test_fetched_frame_timestamp_out_of_range(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        fetching, stream = await start_fetch(server)
        stream.write(timed_frame(-1, b"x"), end=True)
        with pytest.raises(ProtocolError) as info:
            await within(fetching)
        assert info.value.code == ErrorCode.BOUNDS_EXCEEDED
        await server.assert_refused(stream, INTERNAL, reset=False)  # our side of a FETCH stream is finished already


@pytest.mark.parametrize("case", ["frame-too-large", "too-many-frames"])
@pytest.mark.parametrize("version", versions(*ALL))
async def test_fetch_reply_over_a_limit(demo: Demo, version: Version, case: str) -> None:
    async with raw_server(demo, version, Limits(max_frame_size=16)) as server:
        fetching, stream = await start_fetch(server)
        if case == "frame-too-large":
            stream.write(frame_bytes(version, b"x" * 17), end=True)
        else:  # a fetched group holds at most 65536 frames
            stream.write(frame_bytes(version, b"") * ((1 << 16) + 1), end=True)
        with pytest.raises(ProtocolError) as info:
            await within(fetching)
        assert info.value.code == ErrorCode.TOO_LARGE
        await server.assert_refused(stream, StreamCode.FRAME_TOO_LARGE, reset=False)


# -- FETCH, TRACK, PROBE, GOAWAY -----------------------------------------------------------

@pytest.mark.parametrize(("version", "request_kind"), [
    pytest.param(v, k, id=f"{short(v)}-{k.name.lower()}") for v in ALL
    for k in (LiteBidi.SUBSCRIBE, LiteBidi.FETCH, LiteBidi.TRACK) if k is not LiteBidi.TRACK or v in WITH_SETUP
])
async def test_request_for_an_unknown_broadcast(demo: Demo, version: Version, request_kind: LiteBidi) -> None:
    async with attack(demo, version) as peer:
        codec = peer.codec
        if request_kind is LiteBidi.SUBSCRIBE:
            data = peer.subscribe_bytes(0, broadcast="nope")
        elif request_kind is LiteBidi.FETCH:
            data = kind(LiteBidi.FETCH) + codec.encode_fetch(Fetch("nope", "seconds", 0, 0))
        else:
            data = kind(LiteBidi.TRACK) + codec.encode_track_request(TrackRequest("nope", "seconds"))
        stream = await peer.open_bi(data)
        assert await refused(stream) == (StreamCode.NOT_FOUND, StreamCode.NOT_FOUND)
        await peer.assert_alive()


@pytest.mark.parametrize("version", versions(*WITH_SETUP))
async def test_track_request_is_answered(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        stream = await peer.open_bi(kind(LiteBidi.TRACK) + peer.codec.encode_track_request(
            TrackRequest("demo/clock", "seconds")))
        stream.write(b"", end=True)
        info = peer.codec.decode_track_info(unframe(await read_to_end(stream)))
        assert info.timescale > 0
        # a track the broadcast does not have is refused, as its subscription would be
        stream = await peer.open_bi(kind(LiteBidi.TRACK) + peer.codec.encode_track_request(TrackRequest("demo/clock", "x")))
        stream.write(b"", end=True)
        assert await refused(stream) == (StreamCode.NOT_FOUND, StreamCode.NOT_FOUND)
        await peer.assert_alive()


def bad_fetches(version: Version) -> dict[str, bytes]:
    codec: Any = version.new_codec(DEFAULT_LIMITS)
    valid = codec.encode_fetch(Fetch("demo/clock", "seconds", 0, 0))
    table: dict[str, bytes] = {
        "trailing-bytes": with_trailing(valid),
        "truncated": frame_message(unframe(valid)[:-1]),
        "oversized": OVERSIZED,
    }
    if version is V06:
        table["without-frame-bounds"] = frame_message(unframe(valid)[:-2])
    return table


@pytest.mark.parametrize(("version", "case"), per_version(ALL, bad_fetches))
async def test_fetch_malformed(demo: Demo, version: Version, case: str) -> None:
    async with attack(demo, version) as peer:
        await peer.open_bi(kind(LiteBidi.FETCH) + bad_fetches(version)[case])
        assert await peer.closed_code() == VIOLATION



def bad_track_infos(version: Version) -> dict[str, tuple[bytes, int]]:
    ordered = h("00") if version is V05 else b""
    table: dict[str, tuple[bytes, int]] = {
        "timescale-zero": (frame_message(h("00") + ordered + h("00 00")), ErrorCode.PROTOCOL_VIOLATION),
        "trailing-bytes": (frame_message(h("00") + ordered + h("00 01 00")), ErrorCode.DECODE),
        "oversized": (OVERSIZED, ErrorCode.TOO_LARGE),
    }
    if version is V05:
        table["bad-ordered-flag"] = (frame_message(h("00 02 00 01")), ErrorCode.PROTOCOL_VIOLATION)
    return table


@pytest.mark.parametrize(("version", "case"), per_version(WITH_SETUP, bad_track_infos))
async def test_bad_track_info(demo: Demo, version: Version, case: str) -> None:
    data, code = bad_track_infos(version)[case]
    async with raw_server(demo, version) as server:
        asking = asyncio.ensure_future(server.client.track_info("demo/clock", "t"))
        stream, body = await server.accept(LiteBidi.TRACK)
        assert server.codec.decode_track_request(body) == TrackRequest("demo/clock", "t")
        stream.write(data, end=True)
        with pytest.raises(ProtocolError) as info:
            await within(asking)
        assert info.value.code == code
        await server.assert_refused(stream, StreamCode.FRAME_TOO_LARGE if code == ErrorCode.TOO_LARGE else INTERNAL,
                                    reset=False)  # our side of a TRACK stream is finished already


async def test_track_info_is_read(demo: Demo) -> None:
    async with raw_server(demo, V06) as server:
        asking = asyncio.ensure_future(server.client.track_info("demo/clock", "t"))
        stream, _ = await server.accept(LiteBidi.TRACK)
        stream.write(server.codec.encode_track_info(TrackInfo(3, 100, 90000)), end=True)
        assert await within(asking) == TrackInfo(3, 100, 90000)


def bad_probes(version: Version) -> dict[str, bytes]:
    codec: Any = version.new_codec(DEFAULT_LIMITS)
    valid = codec.encode_probe(Probe(1000, 20))
    table: dict[str, bytes] = {
        "trailing-bytes": with_trailing(valid),
        "truncated-varint": frame_message(h("40")),
        "valid-then-trailing-bytes": valid + with_trailing(valid),
        "oversized": OVERSIZED,
    }
    if version is V03:
        table["with-an-rtt"] = frame_message(encode_varint(1000) + encode_varint(20))
    else:
        table["without-an-rtt"] = frame_message(encode_varint(1000))
    return table


@pytest.mark.parametrize(("version", "case"), per_version(ALL, bad_probes))
async def test_probe_garbage(demo: Demo, version: Version, case: str) -> None:
    async with attack(demo, version) as peer:
        await peer.open_bi(kind(LiteBidi.PROBE) + bad_probes(version)[case])
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*ALL))
async def test_probes_are_read(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        valid = peer.codec.encode_probe(Probe(1000, 20))
        stream = await peer.open_bi(kind(LiteBidi.PROBE) + valid * 3)
        await peer.assert_alive()
        stream.write(b"", end=True)
        assert await read_to_end(stream) == b""


@pytest.mark.parametrize(("version", "uri"), cases(WITH_GOAWAY, {
    "redirect": "moql://elsewhere:4443/",
    "oversized-redirect": "x" * (MAX_URI_LENGTH + 1),
}))
async def test_client_goaway_with_a_uri(demo: Demo, version: Version, uri: str) -> None:
    async with attack(demo, version) as peer:
        await peer.open_bi(goaway(uri))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*WITH_GOAWAY))
async def test_client_goaway_then_a_second_one(demo: Demo, version: Version) -> None:
    async with attack(demo, version) as peer:
        first = await peer.open_bi(goaway(""))
        first.write(b"", end=True)
        await peer.assert_alive()  # the first is fine
        await peer.open_bi(goaway(""))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize(("version", "length"), cases(WITH_GOAWAY, {
    "longest-allowed": MAX_URI_LENGTH,
    "one-over-the-limit": MAX_URI_LENGTH + 1,
}))
async def test_server_goaway_uri_length(demo: Demo, version: Version, length: int) -> None:
    async with raw_server(demo, version) as server:
        uri = "moql://elsewhere:4443/" + "x" * (length - 22)
        stream = await server.conn.open_bi()
        stream.write(goaway(uri), end=True)
        if length <= MAX_URI_LENGTH:
            assert await within(server.client.wait_goaway()) == uri
            assert not server.client.closed
        else:
            assert await server.client_closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*WITH_GOAWAY))
async def test_server_sends_a_second_goaway(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        for _ in range(2):
            stream = await server.conn.open_bi()
            stream.write(goaway("moql://elsewhere:4443/"), end=True)
        assert await server.client_closed_code() == VIOLATION
        assert server.client.goaway_uri == "moql://elsewhere:4443/"


# -- unknown stream types ----------------------------------------------------------------

UNKNOWN_BIDI = {
    "lite-02-session": h("00"),
    "7": h("07"),
    "two-byte-128": h("40 80"),
    "four-byte": h("bf ff ff ff"),
}
UNKNOWN_UNI = {"2": h("02"), "two-byte-128": h("40 80")}


def unknown_bidi(version: Version) -> dict[str, bytes]:
    table = dict(UNKNOWN_BIDI)
    if version is V03:
        table["goaway-before-lite-04"] = kind(LiteBidi.GOAWAY)
    if version in (V03, V04):
        table["track-before-lite-05"] = kind(LiteBidi.TRACK)
    return table


def unknown_uni(version: Version) -> dict[str, bytes]:
    table = dict(UNKNOWN_UNI)
    if version in (V03, V04):
        table["setup-before-lite-05"] = kind(LiteUni.SETUP)
    return table


@pytest.mark.parametrize(("version", "case"), per_version(ALL, unknown_bidi))
async def test_unknown_bidi_stream_type_is_refused(demo: Demo, version: Version, case: str) -> None:
    async with attack(demo, version) as peer:
        stream = await peer.open_bi(unknown_bidi(version)[case] + h("05 00 00 00 00 00"))
        assert await refused(stream) == (INTERNAL, INTERNAL)
        await peer.assert_alive()


@pytest.mark.parametrize(("version", "case"), per_version(ALL, unknown_uni))
async def test_unknown_uni_stream_type_is_refused(demo: Demo, version: Version, case: str) -> None:
    async with attack(demo, version) as peer:
        uni = await peer.open_uni(unknown_uni(version)[case] + h("05 00 00 00 00 00"))
        assert await within(stop_code(uni)) == INTERNAL
        await peer.assert_alive()


@pytest.mark.parametrize(("first", "uni"), [
    pytest.param(kind(LiteBidi.PROBE), False, id="bidi-probe"),
    pytest.param(kind(LiteBidi.GOAWAY), False, id="bidi-goaway"),
    pytest.param(kind(LiteBidi.TRACK), False, id="bidi-track"),
    pytest.param(h("02"), True, id="uni-2"),
])
async def test_unknown_stream_type_is_fatal_on_lite02(demo: Demo, first: bytes, uni: bool) -> None:
    async with attack(demo, LITE_02_VERSION) as peer:
        data = first + h("05 00 00 00 00 00")
        await (peer.open_uni(data) if uni else peer.open_bi(data))
        assert await peer.closed_code() == VIOLATION  # our UNEXPECTED_STREAM, in moq-rs's session registry


# -- oversized messages on each stream type ----------------------------------------------

def oversized_streams(version: Version) -> dict[str, tuple[bool, bytes]]:
    """``(uni, bytes)`` opening each stream type ``version`` has with a message over the limit."""
    table: dict[str, tuple[bool, bytes]] = {
        "announce-request": (False, kind(LiteBidi.ANNOUNCE) + OVERSIZED),
        "subscribe": (False, kind(LiteBidi.SUBSCRIBE) + OVERSIZED),
        "fetch": (False, kind(LiteBidi.FETCH) + OVERSIZED),
        "probe": (False, kind(LiteBidi.PROBE) + OVERSIZED),
        "group-header": (True, kind(LiteUni.GROUP) + OVERSIZED),
    }
    if version in WITH_GOAWAY:
        table["goaway"] = (False, kind(LiteBidi.GOAWAY) + OVERSIZED)
    if version in WITH_SETUP:
        table["track"] = (False, kind(LiteBidi.TRACK) + OVERSIZED)
    return table


@pytest.mark.parametrize(("version", "case"), per_version(ALL, oversized_streams))
async def test_oversized_message(demo: Demo, version: Version, case: str) -> None:
    uni, data = oversized_streams(version)[case]
    async with attack(demo, version) as peer:
        await (peer.open_uni(data) if uni else peer.open_bi(data))
        assert await peer.closed_code() == VIOLATION


@pytest.mark.parametrize("version", versions(*ALL))
async def test_oversized_announcement_to_our_client(demo: Demo, version: Version) -> None:
    async with raw_server(demo, version) as server:
        asking, stream, _ = await server.accept_announce()
        stream.write(server.announce_ok(0))
        announcements = await within(asking)
        stopped = stop_code(stream)
        stream.write((encode_varint(0) if version is V06 else b"") + OVERSIZED)
        assert await within(stopped) == StreamCode.FRAME_TOO_LARGE
        await announce_violation(server, stream, announcements, ErrorCode.TOO_LARGE)


# -- native QUIC -----------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def native_attack(demo: Demo, certs: Certs, version: Version, *, setup_timeout: float = WAIT,
                        setup: bool = True) -> AsyncIterator[QuicPeer]:
    """Our native QUIC server, a well-behaved session on it, and a raw aioquic client on ``version``'s ALPN."""
    server = QuicServer(demo.app, host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                        setup_timeout=setup_timeout, webtransport=False)
    await server.start()
    try:
        port = server.address[1]
        track = demo.new_track(b"before")
        session = await dial_quic(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint, versions=(version,),
                                  setup_timeout=WAIT)
        async with session:
            reader = await within(session.subscribe("demo/clock", track.name))
            assert await frames_of_next_group(reader) == [b"before"]
            configuration = QuicConfiguration(is_client=True, alpn_protocols=[str(version.alpn)])
            configuration.verify_mode = ssl.CERT_NONE
            async with connect("127.0.0.1", port, configuration=configuration, create_protocol=QuicPeer,
                               wait_connected=True) as peer:
                assert isinstance(peer, QuicPeer)
                if setup and version.uni_setup:
                    codec: Any = version.new_codec(DEFAULT_LIMITS)
                    peer.open(codec.encode_setup_stream(LiteSetup(path="/")), uni=True, end=True)
                yield peer
            track.write_frame(b"after")
            assert await frames_of_next_group(reader) == [b"after"]
            assert not session.closed
    finally:
        await server.close()
    await demo.assert_still_serving(version)


@pytest.mark.slow  # native QUIC on 127.0.0.1
async def test_native_lite05_setup_timeout(demo: Demo, certs: Certs) -> None:
    async with native_attack(demo, certs, V05, setup_timeout=0.3, setup=False) as peer:
        assert await peer.closed_code() == SessionCode.CONTROL_MESSAGE_TIMEOUT


@pytest.mark.slow  # native QUIC on 127.0.0.1
async def test_native_lite06_duplicate_setup_parameter(demo: Demo, certs: Certs) -> None:
    async with native_attack(demo, certs, V06, setup=False) as peer:
        peer.open(setup_stream(SETUP_DUPLICATES["probe"]), uni=True, end=True)
        assert await peer.closed_code() == VIOLATION


@pytest.mark.slow  # native QUIC on 127.0.0.1
async def test_native_lite03_unknown_bidi_stream_is_refused(demo: Demo, certs: Certs) -> None:
    async with native_attack(demo, certs, V03) as peer:
        refused_id = peer.open(h("07 05 00 00 00 00 00"))
        assert await peer.reset_code(refused_id) == app_to_http(INTERNAL)
        assert await peer.stop_code(refused_id) == app_to_http(INTERNAL)
        codec: Any = V03.new_codec(DEFAULT_LIMITS)
        announce_id = peer.open(kind(LiteBidi.ANNOUNCE) + codec.encode_announce_please(AnnouncePlease("")))
        assert codec.decode_announce(unframe(await peer.answer_on(announce_id))).suffix == "demo/clock"


@pytest.mark.slow  # native QUIC on 127.0.0.1
async def test_native_lite04_fetch_of_an_unknown_broadcast(demo: Demo, certs: Certs) -> None:
    async with native_attack(demo, certs, V04) as peer:
        codec: Any = V04.new_codec(DEFAULT_LIMITS)
        stream_id = peer.open(kind(LiteBidi.FETCH) + codec.encode_fetch(Fetch("nope", "seconds", 0, 0)))
        assert await peer.reset_code(stream_id) == app_to_http(StreamCode.NOT_FOUND)
        assert await peer.stop_code(stream_id) == app_to_http(StreamCode.NOT_FOUND)


@pytest.mark.slow  # native QUIC on 127.0.0.1
async def test_native_lite04_client_goaway_with_a_uri(demo: Demo, certs: Certs) -> None:
    async with native_attack(demo, certs, V04) as peer:
        peer.open(goaway("moql://elsewhere:4443/"), end=True)
        assert await peer.closed_code() == VIOLATION


@pytest.mark.slow  # native QUIC on 127.0.0.1
async def test_native_lite05_oversized_track_request(demo: Demo, certs: Certs) -> None:
    async with native_attack(demo, certs, V05) as peer:
        peer.open(kind(LiteBidi.TRACK) + OVERSIZED)
        assert await peer.closed_code() == VIOLATION


@pytest.mark.slow  # native QUIC on 127.0.0.1
async def test_native_lite06_subscribe_update_malformed(demo: Demo, certs: Certs) -> None:
    async with native_attack(demo, certs, V06) as peer:
        codec: Any = V06.new_codec(DEFAULT_LIMITS)
        stream_id = peer.open(kind(LiteBidi.SUBSCRIBE) + codec.encode_subscribe(Subscribe(0, "demo/clock", "seconds", 0)))
        assert await peer.answer_on(stream_id) == codec.encode_subscribe_response(SubscribeStart(0))
        peer._quic.send_stream_data(stream_id, frame_message(h("01 00 00 00 00 03")))
        peer.transmit()
        assert await peer.reset_code(stream_id) == app_to_http(INTERNAL)
        assert await peer.stop_code(stream_id) == app_to_http(INTERNAL)


"""gomoqt's dialect end to end, in both roles.

A scripted gomoqt peer (a raw aioquic endpoint on ALPN ``moq-00``) sends
exactly the bytes gomoqt's encoders produce (reference vectors, §2.10 and
the §4.5 interop sequence) and checks the exact bytes we answer with; then
our own dialect client talks to our server over memory, native QUIC and
WebTransport; then refusals, malformed input and gomoqt's error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aioquic.tls
import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from moqt_asgi import Broadcast, MoQ, SetupRequest, SubscribeError, TrackMux, TrackProducer, dial, serving
from moqt_asgi.engine.handshake import SetupOffer, read_client_setup
from moqt_asgi.engine.session import Session
from moqt_asgi.protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, SetupRejected, StreamError
from moqt_asgi.protocol.gomoqt import GOMOQT_VERSION, SessionCode, SubscribeCode
from moqt_asgi.protocol.setup import PARAM_PATH, SetupFraming
from moqt_asgi.protocol.versions import GOMOQT_DIALECT, LITE_02_VERSION
from moqt_asgi.serving import serve_connection
from moqt_asgi.transport.memory import memory_pair

from .conftest import Certs
from .helpers import memory_sessions, native_server

T = TypeVar("T")

WAIT = 5.0
"""Upper bound on anything that should happen promptly (a hang fails instead of stalling)."""


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


# -- gomoqt's bytes ----------------------------------------------------------------
# Every control message is ``varint length, body``; all lengths below are < 64 (one byte).

SETUP_PATH = h("00 | 11 | 01 c0 00 00 00 fe ed ba be | 01 | 01 05") + b"/path"
"""Native-QUIC SESSION_CLIENT: offers 0xfeedbabe, parameter 0x01 = "/path"."""
SETUP_NO_PARAMS = h("00 0a 01 c0 00 00 00 fe ed ba be 00")
"""SESSION_CLIENT as gomoqt sends it over WebTransport (no parameters)."""
SESSION_SERVER = h("09 c0 00 00 00 fe ed ba be 00")
SESSION_UPDATE = h("04 80 0f 42 40")
"""SESSION_UPDATE, 1 000 000 bit/s."""
ANNOUNCE_ROOT = h("01 02 01 2f")
"""Announce stream type + ANNOUNCE_PLEASE "/"."""
SUBSCRIBE_OK = h("00")
UPDATE_PRIORITY_5 = h("01 05")

# The §4.5 interop sequence, verbatim.
SUBSCRIBE_INTEROP_SERVER = h("02 13 01 0f") + b"/interop/server" + h("00 00")
SUBSCRIBE_INTEROP_CLIENT = h("02 13 01 0f") + b"/interop/client" + h("00 00")
INIT_INTEROP_SERVER = h("10 01 0e") + b"interop/server"
INIT_INTEROP_CLIENT = h("10 01 0e") + b"interop/client"
GROUP_HELLO = h("00 02 01 00 05") + b"HELLO"


def s(text: str) -> bytes:
    """A gomoqt string shorter than 64 bytes: one-byte length, then the bytes."""
    raw = text.encode()
    assert len(raw) < 64
    return bytes((len(raw),)) + raw


def msg(*parts: bytes) -> bytes:
    """A control message shorter than 64 bytes: one-byte length, then the body."""
    body = b"".join(parts)
    assert len(body) < 64
    return bytes((len(body),)) + body


def subscribe(subscribe_id: int, path: str, track: str, priority: bytes = b"\x00") -> bytes:
    """Subscribe stream type + SUBSCRIBE (``priority`` is the varint's bytes)."""
    return b"\x02" + msg(bytes((subscribe_id,)), s(path), s(track), priority)


def group(subscribe_id: int, sequence: int, *frames: bytes) -> bytes:
    """A group stream's bytes: type 0, GROUP header, ``varint length, payload`` per frame (all small)."""
    return b"\x00" + msg(bytes((subscribe_id,)), bytes((sequence,))) + b"".join(s(f.decode()) for f in frames)


def test_script_helpers_match_the_reference_vectors() -> None:
    assert subscribe(1, "/interop/server", "") == SUBSCRIBE_INTEROP_SERVER
    assert group(1, 0, b"HELLO") == GROUP_HELLO
    assert b"\x01" + msg(s("/")) == ANNOUNCE_ROOT
    assert msg(b"\x01", s("interop/server")) == INIT_INTEROP_SERVER
    assert h("00") + msg(h("01 c0 00 00 00 fe ed ba be 01 01"), s("/nativequic")) == h(
        "00 17 01 c0 00 00 00 fe ed ba be 01 01 0b 2f 6e 61 74 69 76 65 71 75 69 63")
    assert h("00") + msg(h("01 c0 00 00 00 fe ed ba be 01 01"), s("/path")) == SETUP_PATH


# -- a raw QUIC endpoint that does only what the script says -------------------------

async def within(aw: Awaitable[T], timeout: float = WAIT) -> T:
    return await asyncio.wait_for(aw, timeout)


async def eventually(predicate: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``predicate`` (state on our side, which no peer event signals) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
    return result


class RawPeer(QuicConnectionProtocol):
    """An aioquic connection that records everything and sends only the bytes it is given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[events.QuicEvent] = []
        self.received: dict[int, bytearray] = defaultdict(bytearray)
        self.consumed: dict[int, int] = defaultdict(int)
        self.finished: set[int] = set()
        self.order: list[int] = []
        """Stream ids in the order their first event arrived."""
        self.taken: set[int] = set()
        self.changed = asyncio.Event()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        stream_id = getattr(event, "stream_id", None)
        if stream_id is not None and stream_id not in self.order:
            self.order.append(stream_id)
        if isinstance(event, events.StreamDataReceived):
            self.received[event.stream_id] += event.data
            if event.end_stream:
                self.finished.add(event.stream_id)
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        async def poll() -> T:
            while not (result := predicate()):
                self.changed.clear()
                await self.changed.wait()
            return result

        try:
            return await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    # -- streams
    def open(self, *, uni: bool = False) -> int:
        return self._quic.get_next_available_stream_id(is_unidirectional=uni)

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()

    def reset(self, stream_id: int, code: int) -> None:
        self._quic.reset_stream(stream_id, code)
        self.transmit()

    def closed(self) -> events.ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, events.ConnectionTerminated)), None)

    def _ended(self, stream_id: int) -> bool:
        return stream_id in self.finished or self.reset_code(stream_id) is not None or self.closed() is not None

    async def expect(self, stream_id: int, expected: bytes) -> None:
        """The next bytes on ``stream_id`` are exactly ``expected``."""
        start = self.consumed[stream_id]
        buffer = self.received[stream_id]
        await self.wait_for(lambda: len(buffer) - start >= len(expected) or self._ended(stream_id),
                            f"{len(expected)} bytes on stream {stream_id}")
        got = bytes(buffer[start:start + len(expected)])
        assert got == expected, f"stream {stream_id}: got {got.hex(' ')}, expected {expected.hex(' ')}"
        self.consumed[stream_id] = start + len(expected)

    async def expect_fin(self, stream_id: int) -> None:
        """The peer finished ``stream_id`` with nothing after what was already expected."""
        await self.wait_for(lambda: self._ended(stream_id), f"FIN on stream {stream_id}")
        assert stream_id in self.finished, f"stream {stream_id} was not finished cleanly"
        rest = bytes(self.received[stream_id][self.consumed[stream_id]:])
        assert rest == b"", f"stream {stream_id}: unexpected trailing bytes {rest.hex(' ')}"

    def pending(self, stream_id: int) -> bytes:
        return bytes(self.received[stream_id][self.consumed[stream_id]:])

    def reset_code(self, stream_id: int) -> int | None:
        found = [e.error_code for e in self.events if isinstance(e, events.StreamReset) and e.stream_id == stream_id]
        return found[0] if found else None

    def stop_code(self, stream_id: int) -> int | None:
        found = [e.error_code for e in self.events
                 if isinstance(e, events.StopSendingReceived) and e.stream_id == stream_id]
        return found[0] if found else None

    async def refused(self, stream_id: int) -> tuple[int, int]:
        """The (RESET_STREAM, STOP_SENDING) codes the peer refused ``stream_id`` with."""
        await self.wait_for(lambda: self.reset_code(stream_id) is not None and self.stop_code(stream_id) is not None,
                            f"reset and stop-sending of stream {stream_id}")
        return self.reset_code(stream_id) or 0, self.stop_code(stream_id) or 0

    async def accept(self, *, uni: bool) -> int:
        """The next stream the other side opened (by kind), in arrival order."""
        theirs = 1 if self._quic.configuration.is_client else 0  # the other side's initiator bit
        kind = theirs | (2 if uni else 0)

        def find() -> int | None:
            for stream_id in self.order:
                if stream_id & 3 == kind and stream_id not in self.taken:
                    return stream_id
            return None

        await self.wait_for(lambda: find() is not None, f"a new {'uni' if uni else 'bidi'} stream")
        found = find()
        assert found is not None
        self.taken.add(found)
        return found

    async def terminated(self) -> events.ConnectionTerminated:
        return await self.wait_for(self.closed, "the connection to close")


@contextlib.asynccontextmanager
async def raw_client(port: int, alpn: tuple[str, ...] = ("moq-00",)) -> AsyncIterator[RawPeer]:
    config = QuicConfiguration(is_client=True, alpn_protocols=list(alpn))
    config.verify_mode = ssl.CERT_NONE
    async with connect("127.0.0.1", port, configuration=config, create_protocol=RawPeer) as peer:
        assert isinstance(peer, RawPeer)
        yield peer


async def gomoqt_setup(peer: RawPeer, setup: bytes = SETUP_PATH) -> int:
    """gomoqt's client handshake; returns the session stream."""
    stream = peer.open()
    peer.send(stream, setup)
    await peer.expect(stream, SESSION_SERVER)
    return stream


@contextlib.asynccontextmanager
async def raw_server(certs: Certs, alpn: tuple[str, ...] = ("moq-00",)) -> AsyncIterator[tuple[int, asyncio.Queue[RawPeer]]]:
    """A scripted QUIC server on 127.0.0.1; yields its port and a queue of accepted connections."""
    config = QuicConfiguration(is_client=False, alpn_protocols=list(alpn))
    config.load_cert_chain(str(certs.cert), str(certs.key))
    peers: asyncio.Queue[RawPeer] = asyncio.Queue()

    def factory(*args: Any, **kwargs: Any) -> RawPeer:
        peer = RawPeer(*args, **kwargs)
        peers.put_nowait(peer)
        return peer

    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=factory)
    try:
        assert server._transport is not None
        yield server._transport.get_extra_info("sockname")[1], peers
    finally:
        server.close()


# -- our server under a scripted gomoqt client -----------------------------------------

class Origin:
    """A MoQ app publishing ``broadcast`` (track ``video``) through a Broadcast; sessions on route ``/path``."""

    def __init__(self, **app_options: Any) -> None:
        self.app = MoQ(**app_options)
        self.requests: list[SetupRequest] = []
        self.broadcast = Broadcast("broadcast")
        self.video = self.broadcast.create_track("video")
        self.app.mux.publish("broadcast", self.broadcast)

        @self.app.route("/path")
        async def setup(request: SetupRequest) -> None:
            self.requests.append(request)
            await request.accept()

    def session(self, index: int = -1) -> Session:
        session = self.requests[index].session
        assert session is not None
        return session


async def assert_gomoqt_client_served(port: int, origin: Origin) -> None:
    """A fresh, well-behaved gomoqt client session on the same server subscribes and gets a group."""
    track = origin.broadcast.create_track(f"check-{len(origin.requests)}")
    async with raw_client(port) as peer:
        await gomoqt_setup(peer)
        stream = peer.open()
        peer.send(stream, subscribe(1, "/broadcast", track.name))
        await peer.expect(stream, SUBSCRIBE_OK)
        track.write_frame(b"ok")
        uni = await peer.accept(uni=True)
        await peer.expect(uni, group(1, 0, b"ok"))
        await peer.expect_fin(uni)
        peer.close(error_code=0, reason_phrase="no error")
    origin.broadcast.remove_track(track.name)


async def test_scripted_gomoqt_client_against_our_server(certs: Certs) -> None:
    origin = Origin()
    async with native_server(origin.app, str(certs.cert), str(certs.key)) as server:
        port = server.address[1]
        async with raw_client(port) as peer:
            # Setup: legacy SESSION_CLIENT with the path parameter; SESSION_SERVER has no type byte.
            session_stream = await gomoqt_setup(peer)
            assert session_stream == 0
            request = origin.requests[0]
            assert request.path == "/path" and request.versions == (GOMOQT_VERSION,)
            assert request.transport == "quic"
            ours = origin.session()
            assert ours.version_name == "gomoqt" and ours.path == "/path"
            peer.send(session_stream, SESSION_UPDATE)  # read and ignored

            # Announcements: prefix "/" -> relative suffixes.
            announce = peer.open()
            peer.send(announce, ANNOUNCE_ROOT)
            await peer.expect(announce, msg(b"\x01", s("broadcast")))
            live = origin.app.mux.publish("live/cam", Broadcast())
            await peer.expect(announce, msg(b"\x01", s("live/cam")))
            nested = peer.open()
            peer.send(nested, b"\x01" + msg(s("/live/")))
            await peer.expect(nested, msg(b"\x01", s("cam")))
            live.end()
            await peer.expect(announce, msg(b"\x00", s("live/cam")))
            await peer.expect(nested, msg(b"\x00", s("cam")))

            # Subscribe with a two-byte varint priority (200) to an absolute path.
            sub = peer.open()
            peer.send(sub, subscribe(1, "/broadcast", "video", h("40 c8")))
            await peer.expect(sub, SUBSCRIBE_OK)
            writer = await eventually(lambda: ours.served.get(1), "the subscription on our side")
            assert (writer.broadcast, writer.track, writer.priority) == ("broadcast", "video", 200)
            origin.video.write_frame(b"HELLO")
            first = await peer.accept(uni=True)
            await peer.expect(first, GROUP_HELLO)
            await peer.expect_fin(first)

            peer.send(sub, UPDATE_PRIORITY_5)
            await eventually(lambda: writer.priority == 5, "SUBSCRIBE_UPDATE to apply")
            produced = origin.video.append_group()
            produced.write_frame(b"a")
            produced.write_frame(b"bc")
            produced.finish()
            second = await peer.accept(uni=True)
            await peer.expect(second, group(1, 1, b"a", b"bc"))
            await peer.expect_fin(second)

            # The publisher ends the track: the subscribe stream is finished, after SUBSCRIBE_OK only.
            origin.video.finish()
            await peer.expect_fin(sub)
            assert peer.pending(session_stream) == b"" and peer.closed() is None

            # gomoqt closes a session with NoError.
            peer.close(error_code=SessionCode.NO_ERROR, reason_phrase="no error")
            closed = await within(ours.wait_closed())
            assert closed.remote and closed.code == ErrorCode.CANCEL and closed.reason == "no error"


# -- our client under a scripted gomoqt server ----------------------------------------

@pytest.fixture
def offered_alpns(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ALPN lists clients offer to servers in this process (recorded where aioquic's TLS negotiates)."""
    seen: list[list[str]] = []
    original = aioquic.tls.negotiate

    def negotiate(supported: list[Any], offered: list[Any] | None, exc: Any = None) -> Any:
        if offered and all(isinstance(item, str) for item in offered):
            seen.append(list(offered))
        return original(supported, offered, exc)

    monkeypatch.setattr(aioquic.tls, "negotiate", negotiate)
    return seen


async def dial_scripted(certs: Certs, port: int, peers: asyncio.Queue[RawPeer], *, mux: TrackMux | None = None,
                        path: str = "/path") -> tuple[Session, RawPeer]:
    """``dial`` our gomoqt-dialect client and play gomoqt's server side of the handshake."""
    dialing = asyncio.ensure_future(dial(f"moqt://127.0.0.1:{port}{path}", versions=(GOMOQT_DIALECT,),
                                         fingerprint=certs.fingerprint, mux=mux))
    try:
        peer = await within(peers.get())
        stream = await peer.accept(uni=False)
        assert stream == 0
        await peer.expect(stream, h("00") + msg(h("01 c0 00 00 00 fe ed ba be 01 01"), s(path)))
        peer.send(stream, SESSION_SERVER)
        session = await within(dialing)
    finally:
        if not dialing.done():
            dialing.cancel()
    return session, peer


async def test_our_client_against_a_scripted_gomoqt_server(certs: Certs, offered_alpns: list[list[str]]) -> None:
    client_mux = TrackMux()
    published = Broadcast("interop/client")
    hello = published.create_track("")
    client_mux.publish("interop/client", published)
    async with raw_server(certs) as (port, peers):
        session, peer = await dial_scripted(certs, port, peers, mux=client_mux)
        async with session:
            assert offered_alpns == [["moq-00"]]
            handshake = next(e for e in peer.events if isinstance(e, events.HandshakeCompleted))
            assert handshake.alpn_protocol == "moq-00"
            assert session.version_name == "gomoqt" and session.version == GOMOQT_VERSION

            # The server discovers and subscribes to what we publish (§4.5 steps 4 and 5, verbatim).
            discover = peer.open()
            assert discover == 1
            peer.send(discover, ANNOUNCE_ROOT)
            await peer.expect(discover, INIT_INTEROP_CLIENT)
            theirs = peer.open()
            peer.send(theirs, SUBSCRIBE_INTEROP_CLIENT)
            await peer.expect(theirs, SUBSCRIBE_OK)
            hello.write_frame(b"HELLO")
            uni = await peer.accept(uni=True)
            await peer.expect(uni, GROUP_HELLO)
            await peer.expect_fin(uni)
            peer.send(theirs, UPDATE_PRIORITY_5)
            await eventually(lambda: session.served[1].priority == 5, "SUBSCRIBE_UPDATE to apply")
            other = client_mux.publish("interop/other", Broadcast())
            await peer.expect(discover, msg(b"\x01", s("interop/other")))
            other.end()
            await peer.expect(discover, msg(b"\x00", s("interop/other")))

            # We discover the server's broadcasts: ANNOUNCE_PLEASE "/" on our first bidi stream after setup.
            discovering = asyncio.ensure_future(session.announced(""))
            ours_announce = await peer.accept(uni=False)
            assert ours_announce == 4
            await peer.expect(ours_announce, ANNOUNCE_ROOT)
            peer.send(ours_announce, INIT_INTEROP_SERVER)
            announcements = await within(discovering)
            first = await within(announcements.next())
            assert first is not None and first.path == "interop/server"
            peer.send(ours_announce, msg(b"\x01", s("interop/extra")))
            extra = await within(announcements.next())
            assert extra is not None and extra.path == "interop/extra"
            peer.send(ours_announce, msg(b"\x00", s("interop/extra")))
            await within(extra.wait_ended())
            assert set(announcements.active) == {"interop/server"}

            # We subscribe (our ids start at 0) with priority 0, then update to 200 (a two-byte varint).
            subscribing = asyncio.ensure_future(session.subscribe("interop/server", ""))
            ours_sub = await peer.accept(uni=False)
            await peer.expect(ours_sub, subscribe(0, "/interop/server", ""))
            peer.send(ours_sub, SUBSCRIBE_OK)
            track = await within(subscribing)
            server_uni = peer.open(uni=True)
            peer.send(server_uni, group(0, 0, b"HELLO"), end=True)
            received = await within(track.next_group())
            assert received is not None and received.sequence == 0
            assert await within(received.read_all()) == [b"HELLO"]
            session.update_subscription(track, priority=200)
            await peer.expect(ours_sub, h("02 40 c8"))

            # A group for a subscription we do not have: STOP_SENDING with InvalidSubscribeID (0x7).
            stray = peer.open(uni=True)
            peer.send(stray, group(9, 0, b"x"))
            await peer.wait_for(lambda: peer.stop_code(stray) is not None, "STOP_SENDING on the stray group")
            assert peer.stop_code(stray) == 0x7

            # The publisher ends the track with a FIN: our reader sees a clean end.
            peer.send(ours_sub, b"", end=True)
            assert await within(track.next_group()) is None

            # A subscription gomoqt refuses with TrackNotFound (0x3) raises SubscribeError(NOT_FOUND).
            refused = asyncio.ensure_future(session.subscribe("interop/missing", "video"))
            missing = await peer.accept(uni=False)
            await peer.expect(missing, subscribe(1, "/interop/missing", "video"))
            peer.reset(missing, SubscribeCode.TRACK_NOT_FOUND)
            with pytest.raises(SubscribeError) as info:
                await within(refused)
            assert info.value.code == ErrorCode.NOT_FOUND

            # gomoqt's server closes the session with NoError.
            assert not session.closed
            peer.close(error_code=SessionCode.NO_ERROR, reason_phrase="no error")
            closed = await within(session.wait_closed())
            assert closed.remote and closed.code == ErrorCode.CANCEL and closed.reason == "no error"


# -- our dialect client against our server: memory, native QUIC, WebTransport -----------

@pytest.fixture
def setups(monkeypatch: pytest.MonkeyPatch) -> list[SetupOffer]:
    """Every client setup our server reads in this test, as received (framing, versions, parameters)."""
    seen: list[SetupOffer] = []

    async def recording(connection: Any, limits: Any) -> SetupOffer:
        offer = await read_client_setup(connection, limits)
        seen.append(offer)
        return offer

    monkeypatch.setattr(serving, "read_client_setup", recording)
    return seen


def client_side() -> tuple[TrackMux, TrackProducer]:
    """What our client publishes: ``client/cam`` with track ``mic``."""
    mux = TrackMux()
    broadcast = Broadcast("client/cam")
    mic = broadcast.create_track("mic")
    mux.publish("client/cam", broadcast)
    return mux, mic


async def exercise_both_roles(client: Session, server: Session, origin: Origin, mic: TrackProducer) -> None:
    """Discovery, subscriptions with updates and frames, both ways, then a refusal."""
    assert client.version_name == server.version_name == "gomoqt"

    announced = await within(client.announced(""))
    first = await within(announced.next())
    assert first is not None and first.path == "broadcast"
    down = await within(client.subscribe("broadcast", "video", priority=100))
    writer = await eventually(lambda: server.served.get(down.subscribe_id), "the subscription on the server")
    assert writer.priority == 100
    client.update_subscription(down, priority=250)
    await eventually(lambda: writer.priority == 250, "SUBSCRIBE_UPDATE on the server")
    origin.video.write_frame(b"down")
    received = await within(down.next_group())
    assert received is not None and await within(received.read_all()) == [b"down"]

    theirs = await within(server.announced(""))
    found = await within(theirs.next())
    assert found is not None and found.path == "client/cam"
    up = await within(server.subscribe("client/cam", "mic", priority=7))
    mic.write_frame(b"up")
    received = await within(up.next_group())
    assert received is not None and await within(received.read_all()) == [b"up"]

    with pytest.raises(SubscribeError) as info:
        await within(client.subscribe("nowhere", "video"))
    assert info.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(SubscribeError) as info:
        await within(server.subscribe("client/cam", "no-such-track"))
    assert info.value.code == ErrorCode.NOT_FOUND

    origin.video.finish()
    assert await within(down.next_group()) is None
    up.close()
    assert not client.closed and not server.closed


async def test_our_dialect_client_and_server_in_memory(setups: list[SetupOffer]) -> None:
    origin = Origin()
    mux, mic = client_side()
    async with memory_sessions(origin.app, version=GOMOQT_DIALECT, client_mux=mux, path="/path") as (
            client, server, _, _):
        assert [(o.framing, o.setup.versions, o.setup.parameters) for o in setups] == [
            (SetupFraming.LEGACY, (GOMOQT_VERSION,), {PARAM_PATH: b"/path"})]
        assert origin.requests[0].path == "/path" and origin.requests[0].transport == "memory"
        await exercise_both_roles(client, server, origin, mic)


async def test_our_dialect_client_and_server_on_native_quic(certs: Certs, setups: list[SetupOffer],
                                                            offered_alpns: list[list[str]]) -> None:
    origin = Origin()
    mux, mic = client_side()
    async with native_server(origin.app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        client = await dial(f"moqt://{host}:{port}/path", versions=(GOMOQT_DIALECT,), fingerprint=certs.fingerprint,
                            mux=mux)
        async with client:
            assert offered_alpns == [["moq-00"]]
            assert [(o.framing, o.setup.versions, o.setup.parameters) for o in setups] == [
                (SetupFraming.LEGACY, (GOMOQT_VERSION,), {PARAM_PATH: b"/path"})]
            assert origin.requests[0].path == "/path" and origin.requests[0].transport == "quic"
            await exercise_both_roles(client, origin.session(), origin, mic)


async def test_our_dialect_client_and_server_over_webtransport(certs: Certs, setups: list[SetupOffer]) -> None:
    origin = Origin()
    mux, mic = client_side()
    async with native_server(origin.app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        client = await dial(f"https://{host}:{port}/path?room=1", versions=(GOMOQT_DIALECT,),
                            fingerprint=certs.fingerprint, mux=mux)
        async with client:
            # Like gomoqt over WebTransport: no protocol list on the CONNECT, a legacy setup with no
            # parameters on the first bidi stream; the path comes from the CONNECT.
            request = origin.requests[0]
            assert request.transport == "webtransport"
            assert "wt-available-protocols" not in request.headers
            assert (request.path, request.query, request.versions) == ("/path", "room=1", (GOMOQT_VERSION,))
            assert [(o.framing, o.setup.versions, o.setup.parameters) for o in setups] == [
                (SetupFraming.LEGACY, (GOMOQT_VERSION,), {})]
            await exercise_both_roles(client, origin.session(), origin, mic)


# -- refusals ---------------------------------------------------------------------------

IETF_CLIENT_SETUP = (
    h("20 | 00 41 | 03 | c0 00 00 00 ff 0d ad 02 | c0 00 00 00 ff 0d ad 01 | c0 00 00 00 ff 00 00 0e")
    + h("05 | 02 c0 00 00 00 ff ff ff ff | 80 04 0b 5a 01 | 80 04 0b 5c 01")
    + h("01 05") + b"/room"
    + h("07 0b") + b"moq-lite-rs"
)
"""moq-rs's ``0x20`` CLIENT_SETUP (offering lite-02, lite-01 and IETF draft-14), as it would arrive on moq-00."""


@pytest.mark.parametrize(
    ("setup", "code", "reason"),
    [
        pytest.param(IETF_CLIENT_SETUP, 0x15,
                     "IETF moq-transport (a 0x20 setup on moq-00) is not supported; speak moq-lite or gomoqt's dialect",
                     id="ietf-0x20-setup"),
        pytest.param(h("00 0a 01 c0 00 00 00 de ad be ef 00"), SessionCode.UNSUPPORTED_VERSION,
                     "no common version; peer offered 0xdeadbeef", id="unknown-version"),
        pytest.param(h("00 12 02 c0 00 00 00 ff 0d ad 02 c0 00 00 00 ff 0d ad 01 00"), SessionCode.UNSUPPORTED_VERSION,
                     "no common version; peer offered moq-lite-02, moq-lite-01", id="lite-versions-on-moq-00"),
        pytest.param(SETUP_NO_PARAMS, SessionCode.SETUP_FAILED, "no such path", id="no-path"),
        pytest.param(h("00") + msg(h("01 c0 00 00 00 fe ed ba be 01 01"), s("/elsewhere")), SessionCode.SETUP_FAILED,
                     "no such path", id="unrouted-path"),
        pytest.param(h("00 80 01 00 01"), SessionCode.PROTOCOL_VIOLATION,
                     "setup message of 65537 bytes exceeds the limit of 65536", id="oversized-setup"),
        pytest.param(h("00 03 01 01 01"), SessionCode.PROTOCOL_VIOLATION, "message ends inside a varint",
                     id="truncated-setup"),
    ],
)
async def test_setup_refusals_on_moq_00(certs: Certs, setup: bytes, code: int, reason: str) -> None:
    """What a peer that cannot have a session gets: no SESSION_SERVER, a close code and reason that say why.

    On moq-00 the close codes are gomoqt's session codes (0x12 unsupported version, 0x13 setup
    failed, 0x3 protocol violation), except for an IETF 0x20 setup, which is answered in IETF's
    own numbering (0x15, version negotiation failed; 0x12 would read as a data stream timeout there).
    """
    origin = Origin()
    async with native_server(origin.app, str(certs.cert), str(certs.key)) as server:
        port = server.address[1]
        async with raw_client(port) as peer:
            stream = peer.open()
            peer.send(stream, setup)
            closed = await peer.terminated()
            assert (closed.error_code, closed.frame_type, closed.reason_phrase) == (code, None, reason)
            assert bytes(peer.received[stream]) == b""
        await assert_gomoqt_client_served(port, origin)


async def test_our_server_rejects_gomoqt_like_gomoqt_does() -> None:
    """A rejection resets the session stream with the *session* code (gomoqt's Reject), then closes."""
    origin = Origin()
    client_conn, server_conn = memory_pair()  # the raw client end reads the codes as they are on the wire
    serving_task = asyncio.ensure_future(
        serve_connection(origin.app, server_conn, transport="memory", protocol="moq-00"))
    try:
        stream = await client_conn.open_bi()
        stream.write(h("00") + msg(h("01 c0 00 00 00 fe ed ba be 01 01"), s("/elsewhere")))
        with pytest.raises(StreamError) as info:
            await within(stream.read())
        assert info.value.code == SessionCode.SETUP_FAILED
        closed = await within(client_conn.wait_closed())
        assert (closed.code, closed.reason, closed.remote) == (SessionCode.SETUP_FAILED, "no such path", True)
        await within(serving_task)
    finally:
        serving_task.cancel()
        client_conn.close()


async def test_our_client_reads_gomoqt_setup_refusals(certs: Certs) -> None:
    async with raw_server(certs) as (port, peers):
        url = f"moqt://127.0.0.1:{port}/path"

        # gomoqt's Reject: RESET_STREAM + STOP_SENDING on the session stream with SetupFailed (0x13).
        dialing = asyncio.ensure_future(dial(url, versions=(GOMOQT_DIALECT,), fingerprint=certs.fingerprint))
        peer = await within(peers.get())
        await peer.expect(0, SETUP_PATH)
        peer._quic.stop_stream(0, SessionCode.SETUP_FAILED)
        peer.reset(0, SessionCode.SETUP_FAILED)
        with pytest.raises(SetupRejected) as rejected:
            await within(dialing)
        assert rejected.value.code == ErrorCode.UNSUPPORTED  # gomoqt's SetupFailed, in our codes
        await peer.terminated()

        # A close with UnsupportedVersion (0x12) during setup.
        dialing = asyncio.ensure_future(dial(url, versions=(GOMOQT_DIALECT,), fingerprint=certs.fingerprint))
        peer = await within(peers.get())
        await peer.expect(0, SETUP_PATH)
        peer.close(error_code=SessionCode.UNSUPPORTED_VERSION, reason_phrase="unsupported version")
        with pytest.raises(SessionClosed) as closed:
            await within(dialing)
        assert (closed.value.code, closed.value.reason) == (ErrorCode.VERSION, "unsupported version")

        # A server that answers with a version we did not offer (lite-02) is refused by us.
        dialing = asyncio.ensure_future(dial(url, versions=(GOMOQT_DIALECT,), fingerprint=certs.fingerprint))
        peer = await within(peers.get())
        await peer.expect(0, SETUP_PATH)
        peer.send(0, h("09 c0 00 00 00 ff 0d ad 02 00"))
        with pytest.raises(ProtocolError) as wrong:
            await within(dialing)
        assert wrong.value.code == ErrorCode.VERSION
        await peer.terminated()

        # And a well-behaved gomoqt server still gets a working session.
        session, peer = await dial_scripted(certs, port, peers)
        async with session:
            assert session.version_name == "gomoqt"


async def test_a_lite_only_server_does_not_speak_gomoqt(certs: Certs) -> None:
    origin = Origin(versions=(LITE_02_VERSION,))
    async with native_server(origin.app, str(certs.cert), str(certs.key)) as server:
        assert server.alpn_protocols == ["moql", "h3"]
        host, port = server.address

        # Native QUIC: moq-00 is not offered, so the TLS handshake fails (no_application_protocol).
        with pytest.raises(ConnectionError):
            async with raw_client(port):
                pass
        with pytest.raises(MoQError, match="could not connect"):
            await dial(f"moqt://{host}:{port}/path", versions=(GOMOQT_DIALECT,), fingerprint=certs.fingerprint)

        # WebTransport carries no ALPN choice: the gomoqt setup is refused with gomoqt's UnsupportedVersion.
        with pytest.raises(SessionClosed) as closed:
            await dial(f"https://{host}:{port}/path", versions=(GOMOQT_DIALECT,), fingerprint=certs.fingerprint)
        assert (closed.value.code, closed.value.reason) == (ErrorCode.VERSION, "no common version; peer offered gomoqt")
        assert origin.requests == []

        # lite-02 is still served.
        session = await dial(f"moqt://{host}:{port}/path", fingerprint=certs.fingerprint)
        async with session:
            assert session.version_name == "moq-lite-02"


# -- malformed dialect input ----------------------------------------------------------

@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(subscribe(1, "/broadcast", "video", h("41 00")), "priority 256 does not fit in 0..255",
                     id="priority-256"),
        pytest.param(b"\x02" + msg(b"\x01", s("/broadcast"), s("video"), b"\x00", b"\x00"),
                     "SUBSCRIBE: 1 unexpected trailing bytes", id="subscribe-trailing-byte"),
        pytest.param(h("02 80 01 00 01"), "message of 65537 bytes exceeds the limit of 65536", id="oversized-subscribe"),
        pytest.param(b"\x01" + h("50 03 50 01") + b"/" * 0x1001, "field of 4097 bytes exceeds the limit of 4096",
                     id="oversized-prefix"),
        pytest.param(ANNOUNCE_ROOT + msg(b"\x02", s("x")), "unexpected data on an announce stream",
                     id="data-after-announce-please"),
        pytest.param(h("03 01 00"), "unknown bidi stream type 0x3", id="unknown-stream-type"),
        pytest.param(SETUP_PATH, "a second session stream", id="second-session-stream"),
    ],
)
async def test_malformed_input_closes_the_session_with_protocol_violation(certs: Certs, data: bytes,
                                                                           reason: str) -> None:
    origin = Origin()
    async with native_server(origin.app, str(certs.cert), str(certs.key)) as server:
        port = server.address[1]
        async with raw_client(port) as peer:
            await gomoqt_setup(peer)
            peer.send(peer.open(), data)
            closed = await peer.terminated()
            assert (closed.error_code, closed.reason_phrase) == (SessionCode.PROTOCOL_VIOLATION, reason)
        assert origin.session(0).close_reason is not None
        await assert_gomoqt_client_served(port, origin)


async def test_stream_level_errors_use_gomoqt_subscribe_codes(certs: Certs) -> None:
    """Refusals that concern one subscription reset just its stream, with gomoqt's subscribe-scope code."""
    origin = Origin()
    async with native_server(origin.app, str(certs.cert), str(certs.key)) as server:
        port = server.address[1]
        async with raw_client(port) as peer:
            await gomoqt_setup(peer)

            unknown_broadcast = peer.open()
            peer.send(unknown_broadcast, subscribe(1, "/nowhere", "video"))
            assert await peer.refused(unknown_broadcast) == (SubscribeCode.TRACK_NOT_FOUND,) * 2
            unknown_track = peer.open()
            peer.send(unknown_track, subscribe(2, "/broadcast", "audio"))
            assert await peer.refused(unknown_track) == (SubscribeCode.TRACK_NOT_FOUND,) * 2

            live = peer.open()
            peer.send(live, subscribe(3, "/broadcast", "video"))
            await peer.expect(live, SUBSCRIBE_OK)
            duplicate = peer.open()
            peer.send(duplicate, subscribe(3, "/broadcast", "video"))
            assert await peer.refused(duplicate) == (SubscribeCode.DUPLICATE_SUBSCRIBE_ID,) * 2

            # SUBSCRIBE_UPDATE with a priority above 255: gomoqt's InternalSubscribeError for a bad message.
            peer.send(live, h("02 41 00"))
            assert await peer.refused(live) == (SubscribeCode.INTERNAL,) * 2

            # A non-minimal varint priority is accepted (gomoqt's decoder accepts them too); id 3 is free again.
            again = peer.open()
            peer.send(again, subscribe(3, "/broadcast", "video", h("c0 00 00 00 00 00 00 05")))
            await peer.expect(again, SUBSCRIBE_OK)
            assert peer.closed() is None
            ours = origin.session()
            assert not ours.closed and ours.served[3].priority == 5
        await assert_gomoqt_client_served(port, origin)


ROOT_LATER = msg(b"\x01", s("room/mic")) + msg(b"\x00", s("broadcast"))


@pytest.mark.parametrize(
    ("prefix", "initial", "later"),
    [
        pytest.param("/", msg(b"\x02", s("broadcast"), s("room/cam")), ROOT_LATER, id="root"),
        pytest.param("", msg(b"\x02", s("broadcast"), s("room/cam")), ROOT_LATER, id="empty-is-root"),
        pytest.param("//", msg(b"\x02", s("broadcast"), s("room/cam")), ROOT_LATER, id="doubled-slash-is-root"),
        pytest.param("/room/", msg(b"\x01", s("cam")), msg(b"\x01", s("mic")), id="room"),
        pytest.param("room", msg(b"\x01", s("cam")), msg(b"\x01", s("mic")), id="room-without-slashes"),
        pytest.param("room/", msg(b"\x01", s("cam")), msg(b"\x01", s("mic")), id="room-without-leading-slash"),
        pytest.param("/room", msg(b"\x01", s("cam")), msg(b"\x01", s("mic")), id="room-without-trailing-slash"),
        pytest.param("/broadcast/", msg(b"\x00"), b"", id="a-prefix-does-not-list-itself"),
        pytest.param("/roo/", msg(b"\x00"), b"", id="segments-not-bytes"),
    ],
)
async def test_sloppy_prefixes_are_read_as_directories(certs: Certs, prefix: str, initial: bytes,
                                                       later: bytes) -> None:
    """gomoqt requires "/" or "/a/.../"; we accept any spelling and read it as that directory."""
    origin = Origin()
    origin.app.mux.publish("room/cam", Broadcast())
    async with native_server(origin.app, str(certs.cert), str(certs.key)) as server:
        async with raw_client(server.address[1]) as peer:
            await gomoqt_setup(peer)
            stream = peer.open()
            peer.send(stream, b"\x01" + msg(s(prefix)))
            await peer.expect(stream, initial)
            origin.app.mux.publish("room/mic", Broadcast())
            origin.app.mux.unpublish("broadcast")
            await peer.expect(stream, later)
            await asyncio.sleep(0.05)
            assert peer.pending(stream) == b""
            assert peer.closed() is None and peer.reset_code(stream) is None


async def test_our_client_against_malformed_gomoqt_server_input(certs: Certs) -> None:
    async with raw_server(certs) as (port, peers):
        # An ANNOUNCE status other than 0 or 1: a protocol violation that closes the session.
        session, peer = await dial_scripted(certs, port, peers)
        async with session:
            discovering = asyncio.ensure_future(session.announced(""))
            stream = await peer.accept(uni=False)
            await peer.expect(stream, ANNOUNCE_ROOT)
            peer.send(stream, msg(b"\x00"))
            announcements = await within(discovering)
            peer.send(stream, msg(b"\x02", s("interop/server")))
            closed = await peer.terminated()
            assert (closed.error_code, closed.reason_phrase) == (
                SessionCode.PROTOCOL_VIOLATION, "announce status 2 is neither 0 nor 1")
            with pytest.raises(ProtocolError) as info:
                await within(announcements.next())
            assert info.value.code == ErrorCode.PROTOCOL_VIOLATION
            assert (await within(session.wait_closed())).code == ErrorCode.PROTOCOL_VIOLATION

        # Oversized input on one stream costs that stream only; the session carries on.
        session, peer = await dial_scripted(certs, port, peers)
        async with session:
            refused = asyncio.ensure_future(session.subscribe("interop/server", ""))
            stream = await peer.accept(uni=False)
            await peer.expect(stream, subscribe(0, "/interop/server", ""))
            peer.send(stream, h("80 01 00 01"))  # a 65537-byte SUBSCRIBE_OK
            with pytest.raises(ProtocolError) as info:
                await within(refused)
            assert info.value.code == ErrorCode.TOO_LARGE
            await peer.wait_for(lambda: peer.reset_code(stream) is not None, "our reset of the subscribe stream")
            assert peer.reset_code(stream) == SubscribeCode.INTERNAL

            subscribing = asyncio.ensure_future(session.subscribe("interop/server", ""))
            stream = await peer.accept(uni=False)
            await peer.expect(stream, subscribe(1, "/interop/server", ""))
            peer.send(stream, SUBSCRIBE_OK)
            track = await within(subscribing)
            big = peer.open(uni=True)
            peer.send(big, h("00 02 01 00 | 81 00 00 01"))  # a frame of 16 MiB + 1 (over the limit)
            oversized = await within(track.next_group())
            assert oversized is not None
            with pytest.raises(ProtocolError) as info:
                await within(oversized.read_frame())
            assert info.value.code == ErrorCode.TOO_LARGE
            await peer.wait_for(lambda: peer.stop_code(big) is not None, "our STOP_SENDING of the group")
            assert peer.stop_code(big) == 0x0  # gomoqt's InternalGroupError: it has no code for "too large"
            fine = peer.open(uni=True)
            peer.send(fine, group(1, 1, b"HELLO"), end=True)
            received = await within(track.next_group())
            assert received is not None and await within(received.read_all()) == [b"HELLO"]
            assert not session.closed and peer.closed() is None

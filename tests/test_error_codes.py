"""Error codes per wire dialect: the three maps, and every transport applying them both ways."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from moqt_asgi.protocol import scoped_codes
from moqt_asgi.protocol.codec import Codec
from moqt_asgi.protocol.codes import FLAT_CODES, GOMOQT_CODES, SCOPED_CODES, ErrorCodes, app_to_http, http_to_app
from moqt_asgi.protocol.errors import ErrorCode, SessionClosed, StreamError
from moqt_asgi.protocol.gomoqt import GomoqtCodec
from moqt_asgi.protocol.gomoqt_codes import GroupCode, SubscribeCode
from moqt_asgi.protocol.gomoqt_codes import SessionCode as GomoqtSessionCode
from moqt_asgi.protocol.lite import Lite01Codec
from moqt_asgi.protocol.lite03 import Lite03Codec
from moqt_asgi.protocol.lite04 import Lite04Codec
from moqt_asgi.protocol.lite05 import Lite05Codec
from moqt_asgi.protocol.lite06 import Lite06Codec
from moqt_asgi.protocol.scoped_codes import SessionCode, StreamCode
from moqt_asgi.transport.memory import memory_pair
from moqt_asgi.transport.quic import QuicProtocol, QuicTransport
from moqt_asgi.webtransport import capsules
from moqt_asgi.webtransport.capsules import encode_close
from moqt_asgi.webtransport.session import WebTransportSession, WebTransportStream

from .conftest import Certs
from .test_webtransport_session import FakeHost

E = ErrorCode
APP = 64 + 7
WAIT = 5


# -- the maps


def test_codecs_name_their_map() -> None:
    for codec in (Lite01Codec, Codec, Lite03Codec, Lite04Codec, Lite05Codec, Lite06Codec):
        assert codec.error_codes is SCOPED_CODES
    assert GomoqtCodec.error_codes is GOMOQT_CODES
    assert [c.name for c in (FLAT_CODES, SCOPED_CODES, GOMOQT_CODES)] == ["flat", "scoped", "gomoqt"]
    assert [c.wt_mapped_on_quic for c in (FLAT_CODES, SCOPED_CODES, GOMOQT_CODES)] == [False, True, False]
    assert all(isinstance(c, ErrorCodes) for c in (FLAT_CODES, SCOPED_CODES, GOMOQT_CODES))


def test_capsules_reexport_the_http3_mapping() -> None:
    assert capsules.app_to_http is app_to_http and capsules.http_to_app is http_to_app
    assert capsules.WT_CODE_FIRST == app_to_http(0) and http_to_app(app_to_http(0x33)) == 0x33


def test_flat_is_the_identity() -> None:
    for code in [*ErrorCode, APP, 0x30, 0xFFFF_FFFF]:
        assert FLAT_CODES.session_out(code) == code == FLAT_CODES.session_in(code)
        for bidi in (True, False):
            assert FLAT_CODES.stream_out(code, bidi=bidi) == code == FLAT_CODES.stream_in(code, bidi=bidi)
    assert type(FLAT_CODES.session_out(E.NOT_FOUND)) is int


@pytest.mark.parametrize("bidi", [True, False])
def test_scoped(bidi: bool) -> None:
    codes = SCOPED_CODES
    assert codes.stream_out(E.NOT_FOUND, bidi=bidi) == StreamCode.NOT_FOUND == 0x33
    assert codes.session_out(E.UNAUTHORIZED) == SessionCode.UNAUTHORIZED == 0x2
    for code in (E.CANCEL, E.OLD, E.TIMEOUT, E.TRANSPORT, E.NOT_FOUND, E.WRONG_SIZE, E.TOO_LARGE):
        assert codes.stream_in(codes.stream_out(code, bidi=bidi), bidi=bidi) == code
    for code in (E.CANCEL, E.UNAUTHORIZED, E.TOO_MANY_PARAMETERS, E.TIMEOUT, E.VERSION, E.PROTOCOL_VIOLATION):
        assert codes.session_in(codes.session_out(code)) == code
    # many to one: violations share one session code; the stream registry has no "decode"
    assert codes.session_out(E.DECODE) == codes.session_out(E.UNEXPECTED_STREAM) == SessionCode.PROTOCOL_VIOLATION
    assert codes.stream_out(E.DECODE, bidi=bidi) == StreamCode.INTERNAL
    assert codes.stream_in(StreamCode.EVICTED, bidi=bidi) == E.OLD
    # unknown codes, both ways
    assert codes.stream_in(0x20, bidi=bidi) == E.TRANSPORT and codes.session_in(0x7) == E.TRANSPORT
    assert codes.session_out(0x3F) == SessionCode.INTERNAL and codes.stream_out(0x3F, bidi=bidi) == StreamCode.INTERNAL
    # application codes pass through
    assert codes.stream_out(APP, bidi=bidi) == APP == codes.stream_in(APP, bidi=bidi)
    assert codes.session_out(APP) == APP == codes.session_in(APP)
    # the same functions as the registry module
    for code in ErrorCode:
        assert codes.session_out(code) == scoped_codes.to_session_code(code)
        assert codes.stream_out(code, bidi=bidi) == scoped_codes.to_stream_code(code)


def test_gomoqt_uses_session_subscribe_and_group_scopes() -> None:
    codes = GOMOQT_CODES
    assert codes.session_out(E.UNAUTHORIZED) == GomoqtSessionCode.UNAUTHORIZED
    assert codes.session_out(E.VERSION) == GomoqtSessionCode.UNSUPPORTED_VERSION
    assert codes.stream_out(E.NOT_FOUND, bidi=True) == SubscribeCode.TRACK_NOT_FOUND
    assert codes.stream_out(E.NOT_FOUND, bidi=False) == GroupCode.INVALID_SUBSCRIBE_ID
    assert codes.stream_out(E.CANCEL, bidi=False) == GroupCode.SUBSCRIBE_CANCELED
    assert codes.stream_out(E.CANCEL, bidi=True) == SubscribeCode.INTERNAL
    for code in (E.CANCEL, E.UNAUTHORIZED, E.VERSION, E.PROTOCOL_VIOLATION, E.TIMEOUT, E.BOUNDS_EXCEEDED):
        assert codes.session_in(codes.session_out(code)) == code
    for code in (E.NOT_FOUND, E.UNAUTHORIZED, E.TIMEOUT, E.DUPLICATE, E.BOUNDS_EXCEEDED):
        assert codes.stream_in(codes.stream_out(code, bidi=True), bidi=True) == code
    for code in (E.CANCEL, E.NOT_FOUND, E.OLD, E.TRANSPORT, E.BOUNDS_EXCEEDED):
        assert codes.stream_in(codes.stream_out(code, bidi=False), bidi=False) == code
    assert codes.stream_in(GroupCode.PUBLISH_ABORTED, bidi=False) == E.CANCEL
    # unknown codes read as TRANSPORT; application codes pass through
    assert codes.session_in(0x4) == E.TRANSPORT and codes.stream_in(0x30, bidi=True) == E.TRANSPORT
    assert codes.stream_in(0x1, bidi=False) == E.TRANSPORT
    for bidi in (True, False):
        assert codes.stream_out(APP, bidi=bidi) == APP == codes.stream_in(APP, bidi=bidi)
    assert codes.session_out(APP) == APP == codes.session_in(APP)


# -- the in-memory transport


async def test_memory_default_is_flat() -> None:
    client, server = memory_pair()
    assert client.error_codes is FLAT_CODES and server.error_codes is FLAT_CODES
    send = await client.open_uni()
    recv = await server.accept_uni()
    send.reset(E.DECODE)
    with pytest.raises(StreamError) as error:
        await recv.read()
    assert error.value.code == E.DECODE


async def test_memory_scoped_reset_stop_and_close() -> None:
    client, server = memory_pair()
    client.error_codes = server.error_codes = SCOPED_CODES
    uni = await client.open_uni()
    uni.write(b"x")
    peer_uni = await server.accept_uni()
    uni.reset(E.NOT_FOUND)
    with pytest.raises(StreamError) as error:
        while await peer_uni.read():
            pass
    assert error.value.code == E.NOT_FOUND

    bidi = await client.open_bi()
    bidi.write(b"y")
    peer_bidi = await server.accept_bi()
    stopped: list[int] = []
    bidi.on_stopped(stopped.append)
    peer_bidi.stop(E.NOT_FOUND)
    assert stopped == [E.NOT_FOUND]
    with pytest.raises(StreamError) as error:
        bidi.write(b"more")
    assert error.value.code == E.NOT_FOUND
    peer_bidi.reset(E.DECODE)  # no stream code for "decode": the peer learns only that we failed
    with pytest.raises(StreamError) as error:
        await bidi.read()
    assert error.value.code == E.TRANSPORT

    client.close(E.UNAUTHORIZED, "go away")
    closed = await asyncio.wait_for(server.wait_closed(), WAIT)
    assert closed.code == E.UNAUTHORIZED and closed.remote and closed.reason == "go away"
    assert (await client.wait_closed()).code == E.UNAUTHORIZED


async def test_memory_receiving_end_reads_with_its_own_map() -> None:
    client, server = memory_pair()
    client.error_codes = SCOPED_CODES  # server stays flat: it sees the scoped numbers as they are
    uni = await client.open_uni()
    peer_uni = await server.accept_uni()
    uni.reset(E.NOT_FOUND)
    with pytest.raises(StreamError) as error:
        await peer_uni.read()
    assert error.value.code == StreamCode.NOT_FOUND
    client.close(E.UNAUTHORIZED)
    assert (await server.wait_closed()).code == SessionCode.UNAUTHORIZED


async def test_memory_gomoqt_scopes_by_stream_kind() -> None:
    client, server = memory_pair()
    client.error_codes = server.error_codes = GOMOQT_CODES
    uni = await client.open_uni()
    peer_uni = await server.accept_uni()
    uni.reset(E.OLD)
    with pytest.raises(StreamError) as error:
        await peer_uni.read()
    assert error.value.code == E.OLD  # group scope: "expired group"
    bidi = await client.open_bi()
    peer_bidi = await server.accept_bi()
    bidi.reset(E.OLD)  # subscribe scope has nothing for "old"
    with pytest.raises(StreamError) as error:
        await peer_bidi.read()
    assert error.value.code == E.TRANSPORT


# -- WebTransport (a fake HTTP/3 host)


async def test_webtransport_session_maps_before_the_http3_mapping() -> None:
    host = FakeHost()
    session = WebTransportSession(host, 0)
    session.error_codes = SCOPED_CODES
    session.accept()
    session.handle_stream_data(4, b"hi", False)
    stream = await session.accept_bi()
    assert isinstance(stream, WebTransportStream)
    stopped: list[int] = []
    stream.on_stopped(stopped.append)
    session.handle_stream_reset(4, app_to_http(StreamCode.NOT_FOUND))
    with pytest.raises(StreamError) as error:
        while await stream.read():
            pass
    assert error.value.code == E.NOT_FOUND and stream.peer_reset_code == E.NOT_FOUND
    session.handle_stop_sending(4, app_to_http(StreamCode.OLD))
    assert stopped == [E.OLD]

    session.handle_stream_data(8, b"again", False)
    other = await session.accept_bi()
    other.stop(E.NOT_FOUND)
    assert ("stop", 8, app_to_http(0x33)) in host.calls
    uni = await session.open_uni()
    uni.reset(E.CANCEL)
    assert ("reset", uni.stream_id, app_to_http(StreamCode.CANCELLED)) in host.calls
    session.handle_stream_data(12, b"z", False)
    late = await session.accept_bi()
    session.handle_stream_reset(12, 0x10C)  # an HTTP/3 code, not an application one: a cancel
    with pytest.raises(StreamError) as error:
        while await late.read():
            pass
    assert error.value.code == E.CANCEL

    session.close(E.UNAUTHORIZED, "no")
    assert ("connect-data", 0, encode_close(SessionCode.UNAUTHORIZED, "no"), True) in host.calls
    assert (await session.wait_closed()).code == E.UNAUTHORIZED


async def test_webtransport_session_reads_the_close_capsule_with_its_map() -> None:
    host = FakeHost()
    session = WebTransportSession(host, 0)
    session.error_codes = GOMOQT_CODES
    session.accept()
    uni = await session.open_uni()
    uni.reset(E.CANCEL)
    assert ("reset", uni.stream_id, app_to_http(GroupCode.SUBSCRIBE_CANCELED)) in host.calls
    session.handle_connect_data(encode_close(GomoqtSessionCode.UNSUPPORTED_VERSION, "old"), False)
    closed = await session.wait_closed()
    assert closed.code == E.VERSION and closed.remote and closed.reason == "old"


# -- native QUIC: our transport against a raw aioquic peer


class RawPeer(QuicConnectionProtocol):
    """An aioquic server that records every event and does only what the test tells it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[events.QuicEvent] = []
        self.changed = asyncio.Event()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, match: Callable[[events.QuicEvent], bool]) -> Any:
        async def look() -> events.QuicEvent:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(look(), WAIT)


@contextlib.asynccontextmanager
async def quic_pair(certs: Certs) -> AsyncIterator[tuple[QuicTransport, RawPeer]]:
    """Our :class:`QuicTransport` (client) connected to a :class:`RawPeer` on 127.0.0.1."""
    peers: list[RawPeer] = []

    def make_peer(*args: Any, **kwargs: Any) -> RawPeer:
        peer = RawPeer(*args, **kwargs)
        peers.append(peer)
        return peer

    server_config = QuicConfiguration(is_client=False, alpn_protocols=["moq-test"])
    server_config.load_cert_chain(str(certs.cert), str(certs.key))
    server = await serve("127.0.0.1", 0, configuration=server_config, create_protocol=make_peer)
    try:
        port = server._transport.get_extra_info("sockname")[1]
        client_config = QuicConfiguration(is_client=True, alpn_protocols=["moq-test"])
        client_config.verify_mode = ssl.CERT_NONE
        async with connect("127.0.0.1", port, configuration=client_config, create_protocol=QuicProtocol,
                           wait_connected=True) as protocol:
            assert isinstance(protocol, QuicProtocol)
            for _ in range(100):
                if peers:
                    break
                await asyncio.sleep(0.01)
            yield protocol.moq_transport, peers[0]
    finally:
        server.close()


def _reset_of(stream_id: int) -> Callable[[events.QuicEvent], bool]:
    return lambda e: isinstance(e, events.StreamReset) and e.stream_id == stream_id


def _stop_of(stream_id: int) -> Callable[[events.QuicEvent], bool]:
    return lambda e: isinstance(e, events.StopSendingReceived) and e.stream_id == stream_id


@pytest.mark.parametrize(
    ("codes", "uni_wire", "bidi_wire", "close_wire"),
    [
        (FLAT_CODES, 13, 13, 6),
        (SCOPED_CODES, app_to_http(0x33), app_to_http(0x33), 0x2),
        (GOMOQT_CODES, GroupCode.INVALID_SUBSCRIBE_ID, SubscribeCode.TRACK_NOT_FOUND, GomoqtSessionCode.UNAUTHORIZED),
    ],
    ids=["flat", "scoped", "gomoqt"],
)
async def test_native_quic_outgoing_codes(certs: Certs, codes: ErrorCodes, uni_wire: int, bidi_wire: int,
                                          close_wire: int) -> None:
    async with quic_pair(certs) as (transport, peer):
        transport.error_codes = codes
        uni = await transport.open_uni()
        uni.write(b"x")
        uni.reset(E.NOT_FOUND)
        assert (await peer.wait_for(_reset_of(uni.stream_id))).error_code == uni_wire

        bidi = await transport.open_bi()
        bidi.write(b"y")
        bidi.stop(E.NOT_FOUND)
        assert (await peer.wait_for(_stop_of(bidi.stream_id))).error_code == bidi_wire
        bidi.reset(E.NOT_FOUND)
        assert (await peer.wait_for(_reset_of(bidi.stream_id))).error_code == bidi_wire

        transport.close(E.UNAUTHORIZED, "bye")
        terminated = await peer.wait_for(lambda e: isinstance(e, events.ConnectionTerminated))
        assert terminated.error_code == close_wire and terminated.reason_phrase == "bye"
        assert (await transport.wait_closed()).code == E.UNAUTHORIZED


@pytest.mark.parametrize(
    ("codes", "reset_wire", "stop_wire", "close_wire"),
    [
        (FLAT_CODES, 13, 13, 6),
        (FLAT_CODES, app_to_http(13), app_to_http(13), 6),  # HTTP/3-mapped codes are unmapped on every version
        (SCOPED_CODES, app_to_http(0x33), app_to_http(0x33), 0x2),
        (SCOPED_CODES, 0x33, 0x33, 0x2),
        (GOMOQT_CODES, GroupCode.INVALID_SUBSCRIBE_ID, SubscribeCode.TRACK_NOT_FOUND, GomoqtSessionCode.UNAUTHORIZED),
    ],
    ids=["flat", "flat-mapped", "scoped", "scoped-unmapped", "gomoqt"],
)
async def test_native_quic_incoming_codes(certs: Certs, codes: ErrorCodes, reset_wire: int, stop_wire: int,
                                          close_wire: int) -> None:
    async with quic_pair(certs) as (transport, peer):
        transport.error_codes = codes
        quic = peer._quic
        uni_id = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(uni_id, b"z")
        quic.reset_stream(uni_id, reset_wire)
        peer.transmit()
        uni = await asyncio.wait_for(transport.accept_uni(), WAIT)
        with pytest.raises(StreamError) as error:
            while await asyncio.wait_for(uni.read(), WAIT):
                pass
        assert error.value.code == E.NOT_FOUND

        bidi = await transport.open_bi()
        stopped: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        bidi.on_stopped(stopped.set_result)
        bidi.write(b"hello")
        await peer.wait_for(lambda e: isinstance(e, events.StreamDataReceived) and e.stream_id == bidi.stream_id)
        quic.stop_stream(bidi.stream_id, stop_wire)
        peer.transmit()
        assert await asyncio.wait_for(stopped, WAIT) == E.NOT_FOUND

        quic.close(error_code=close_wire, reason_phrase="bye")
        peer.transmit()
        closed = await asyncio.wait_for(transport.wait_closed(), WAIT)
        assert isinstance(closed, SessionClosed)
        assert closed.code == E.UNAUTHORIZED and closed.remote and closed.reason == "bye"

"""The HTTP/3 WebTransport router against a fake host, and the coalesced transmit: no sockets."""

from __future__ import annotations

import asyncio

import pytest
from aioquic.h3.events import DatagramReceived, DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.events import ConnectionTerminated, StopSendingReceived, StreamReset

from moqt_asgi.protocol.errors import SessionClosed, StreamError
from moqt_asgi.transport.transmit import TransmitSoon
from moqt_asgi.webtransport.capsules import WT_BUFFERED_STREAM_REJECTED, WT_SESSION_GONE, app_to_http, encode_close
from moqt_asgi.webtransport.early import EarlyStreams
from moqt_asgi.webtransport.router import WebTransportRouter, is_webtransport_connect, method_and_protocol
from moqt_asgi.webtransport.session import WebTransportSession

from .test_webtransport_session import FakeHost


class RoutedHost(FakeHost):
    """The fake host, telling its router when a session ends (as every real host does)."""

    router: WebTransportRouter

    def session_ended(self, session: WebTransportSession) -> None:
        super().session_ended(session)
        self.router.session_ended(session)


def stream_data(session_id: int, stream_id: int, data: bytes, ended: bool = False) -> WebTransportStreamDataReceived:
    return WebTransportStreamDataReceived(data=data, session_id=session_id, stream_id=stream_id, stream_ended=ended)


def server_router(host: FakeHost, **options: object) -> WebTransportRouter:
    router = WebTransportRouter(host, early=EarlyStreams(max_streams=4, max_bytes=1000), **options)  # type: ignore[arg-type]
    if isinstance(host, RoutedHost):
        host.router = router
    return router


def refused(host: FakeHost, stream_id: int) -> int | None:
    """The code ``stream_id`` was stopped with, if it was."""
    return next((call[2] for call in host.calls if call[:2] == ("stop", stream_id)), None)


async def test_streams_that_beat_their_connect_are_held_then_delivered() -> None:
    host = FakeHost()
    router = server_router(host)
    assert router.route([stream_data(0, 2, b"ear"), stream_data(0, 2, b"ly", True)]) == []
    assert refused(host, 2) is None
    session = WebTransportSession(host, 0)
    router.open(session)
    session.accept()
    stream = await session.accept_uni()
    assert await stream.read(100, min_bytes=5) == b"early" and await stream.read() == b""


async def test_streams_of_refused_sessions_and_of_requests_are_refused() -> None:
    host = FakeHost()
    requests = {8}
    router = server_router(host, is_request=requests.__contains__)
    router.route([stream_data(4, 6, b"held")])
    router.refuse(4)  # the CONNECT on 4 got an error status
    assert refused(host, 6) == WT_BUFFERED_STREAM_REJECTED and router.ended(4)
    router.route([stream_data(4, 10, b"late"), stream_data(8, 14, b"not a session")])
    assert refused(host, 10) == WT_SESSION_GONE
    assert refused(host, 14) == WT_BUFFERED_STREAM_REJECTED
    router.route([stream_data(12, 18, b"x")])
    router.refuse_early(12)  # 12 turned out to be a plain request
    assert refused(host, 18) == WT_BUFFERED_STREAM_REJECTED


def test_ended_sessions_are_remembered_within_a_bound() -> None:
    router = server_router(FakeHost(), max_ended=2)
    for session_id in (0, 4, 8):
        router.refuse(session_id)
    assert [router.ended(n) for n in (0, 4, 8)] == [False, True, True]


async def test_resets_and_stops_reach_the_session_that_owns_the_stream() -> None:
    host = FakeHost()
    router = server_router(host)
    session = WebTransportSession(host, 0)
    router.open(session)
    session.accept()
    router.route([stream_data(0, 2, b"uni"), stream_data(0, 4, b"bidi")])
    uni, bidi = await session.accept_uni(), await session.accept_bi()
    stopped: list[int] = []
    bidi.on_stopped(stopped.append)
    router.handle_quic_event(StreamReset(error_code=app_to_http(42), stream_id=2))
    with pytest.raises(StreamError) as error:
        await uni.read()
    assert error.value.code == 42
    router.handle_quic_event(StopSendingReceived(error_code=app_to_http(43), stream_id=4))
    assert stopped == [43]
    router.route([stream_data(8, 10, b"held")])
    router.handle_quic_event(StreamReset(error_code=0, stream_id=10))  # a held stream: dropped
    assert router.early is not None and 10 not in router.early and router.early.buffered == 0


async def test_the_connect_stream_carries_the_session_end_and_its_datagrams() -> None:
    host = RoutedHost()
    router = server_router(host)
    first, second = WebTransportSession(host, 0), WebTransportSession(host, 4)
    for session in (first, second):
        router.open(session)
        session.accept()
    router.route([DatagramReceived(data=b"d", stream_id=0), DataReceived(data=encode_close(7, "bye"), stream_id=0,
                                                                          stream_ended=True)])
    assert await first.receive_datagram() == b"d"
    closed = await first.wait_closed()
    assert (closed.code, closed.reason) == (7, "bye")
    assert router.ended(0) and router.sessions == {4: second}  # the host's session_ended went to the router
    router.handle_quic_event(StreamReset(error_code=0x10C, stream_id=4))  # the CONNECT stream reset
    assert second.is_closed and router.sessions == {}


def test_headers_server_side_trailers_are_dropped_and_requests_offered_to_the_host() -> None:
    host = FakeHost()
    offered: list[int] = []

    def on_headers(event: HeadersReceived) -> bool:
        offered.append(event.stream_id)
        return is_webtransport_connect(event.headers)

    router = server_router(host, on_headers=on_headers)
    router.open(WebTransportSession(host, 0))
    connect = [(b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":path", b"/")]
    get = [(b":method", b"GET"), (b":path", b"/")]
    rest = router.route([HeadersReceived(headers=[(b"x", b"trailer")], stream_id=0, stream_ended=True),
                         HeadersReceived(headers=connect, stream_id=4, stream_ended=False),
                         HeadersReceived(headers=get, stream_id=8, stream_ended=False),
                         DataReceived(data=b"body", stream_id=8, stream_ended=True)])
    assert offered == [4, 8]
    assert [(type(event).__name__, event.stream_id) for event in rest] == [("HeadersReceived", 8), ("DataReceived", 8)]
    assert method_and_protocol(get) == (b"GET", None) and method_and_protocol([(b"x", b"y")]) == (None, None)


async def test_a_client_gets_its_responses_and_ends_every_session_with_the_connection() -> None:
    host = FakeHost()
    host.quic.configuration.is_client = True
    router = WebTransportRouter(host)
    session = WebTransportSession(host, 0)
    router.open(session)
    answer = HeadersReceived(headers=[(b":status", b"200")], stream_id=0, stream_ended=False)
    assert router.route([answer, DataReceived(data=b"\x00", stream_id=0, stream_ended=False)]) == [answer]
    router.route([stream_data(4, 3, b"no such session")])
    assert refused(host, 3) == WT_SESSION_GONE
    router.handle_quic_event(ConnectionTerminated(error_code=0, frame_type=None, reason_phrase="gone"))
    with pytest.raises(SessionClosed):
        await session.accept_bi()


async def test_transmit_soon_coalesces_requests_into_one_transmission() -> None:
    calls: list[int] = []
    transmitter = TransmitSoon(lambda: calls.append(1), asyncio.get_running_loop())
    for _ in range(3):
        transmitter.request()
    assert transmitter.scheduled and calls == []
    await asyncio.sleep(0)
    assert calls == [1] and not transmitter.scheduled
    lazy = TransmitSoon(lambda: calls.append(2))  # the running loop, found when asked
    lazy.request()
    await asyncio.sleep(0)
    assert calls == [1, 2]


def test_transmit_soon_without_an_event_loop_does_nothing() -> None:
    calls: list[int] = []
    transmitter = TransmitSoon(lambda: calls.append(1))
    transmitter.request()
    assert not transmitter.scheduled and calls == []

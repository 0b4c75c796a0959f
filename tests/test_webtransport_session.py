"""WebTransportSession against a fake HTTP/3 host: the session logic without sockets."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from moqt_asgi.protocol.errors import SessionClosed, StreamError
from moqt_asgi.webtransport.capsules import (
    WT_SESSION_GONE,
    CapsuleParser,
    CloseCapsule,
    app_to_http,
    encode_close,
    encode_drain,
)
from moqt_asgi.webtransport.session import SessionHost, WebTransportSession, WebTransportStream


class FakeHost(SessionHost):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.ended: list[WebTransportSession] = []
        self.next_uni, self.next_bidi = 3, 1
        host = self

        class Quic:
            def __init__(self) -> None:
                self.configuration = SimpleNamespace(is_client=False)
                self._streams: dict[int, Any] = {}
                self._remote_max_datagram_frame_size = 65536
                self._max_datagram_size = 1200
                self._datagrams_pending: deque[bytes] = deque()

            def stop_stream(self, sid: int, code: int) -> None:
                host.calls.append(("stop", sid, code))

            def reset_stream(self, sid: int, code: int) -> None:
                host.calls.append(("reset", sid, code))

            def send_stream_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
                host.calls.append(("data", sid, data, end_stream))

        class H3:
            def send_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
                host.calls.append(("headers", sid, dict(headers)[b":status"], end_stream))

            def send_data(self, sid: int, data: bytes, end_stream: bool) -> None:
                host.calls.append(("connect-data", sid, data, end_stream))

            def create_webtransport_stream(self, session_id: int, is_unidirectional: bool = False) -> int:
                if is_unidirectional:
                    sid, host.next_uni = host.next_uni, host.next_uni + 4
                else:
                    sid, host.next_bidi = host.next_bidi, host.next_bidi + 4
                return sid

            def send_datagram(self, sid: int, data: bytes) -> None:
                host.calls.append(("datagram", sid, data))

        self.quic = Quic()
        self.h3 = H3()

    def transmit_soon(self) -> None:
        pass

    def session_ended(self, session: WebTransportSession) -> None:
        self.ended.append(session)

    def finish_sending(self, stream_id: int) -> None:
        self.calls.append(("finish", stream_id))


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


async def test_data_after_a_local_stop_is_not_a_new_stream(host: FakeHost) -> None:
    session = WebTransportSession(host, 0)
    session.accept()
    session.handle_stream_data(4, b"abc", False)
    stream = await session.accept_bi()
    assert isinstance(stream, WebTransportStream) and await stream.read() == b"abc"
    stream.stop(5)
    stream.write(b"bye", end=True)
    assert ("stop", 4, app_to_http(5)) in host.calls and not session.owns(4)
    session.handle_stream_data(4, b"in flight", False)  # sent before the peer saw STOP_SENDING
    session.handle_stream_data(4, b"", True)
    session.handle_stream_data(8, b"new", False)
    assert (await session.accept_bi()).stream_id == 8
    assert session._accept_bi.empty() and 4 not in session._stopped


async def test_streams_before_accept_are_bounded_then_delivered(host: FakeHost) -> None:
    session = WebTransportSession(host, 0, max_pending_streams=3)
    for sid in (2, 6, 10, 14):
        session.handle_stream_data(sid, b"x", True)
    assert ("stop", 14, 0x3994BD84) in host.calls
    session.accept()
    assert [(await session.accept_uni()).stream_id for _ in range(3)] == [2, 6, 10]


async def test_peer_reset_and_stop_use_application_codes(host: FakeHost) -> None:
    session = WebTransportSession(host, 0)
    session.accept()
    session.handle_stream_data(4, b"hi", False)
    stream = await session.accept_bi()
    stopped: list[int] = []
    stream.on_stopped(stopped.append)
    session.handle_stream_reset(4, app_to_http(42))
    with pytest.raises(StreamError) as error:
        await stream.read()
    assert error.value.code == 42
    session.handle_stop_sending(4, app_to_http(43))
    assert stopped == [43]
    with pytest.raises(StreamError):
        stream.write(b"more")


async def test_close_sends_capsule_and_resets_open_streams(host: FakeHost) -> None:
    session = WebTransportSession(host, 0)
    session.accept()
    uni = await session.open_uni()
    uni.write(b"done", end=True)  # finished: left to deliver
    bidi = await session.open_bi()
    bidi.write(b"half")  # still open: reset
    session.handle_stream_data(4, b"peer", False)
    session.close(4001, "bye")
    connect = [c for c in host.calls if c[0] == "connect-data"]
    assert connect == [("connect-data", 0, encode_close(4001, "bye"), True)]
    assert ("reset", bidi.stream_id, WT_SESSION_GONE) in host.calls
    assert ("stop", 4, WT_SESSION_GONE) in host.calls
    assert not any(c[:2] == ("reset", uni.stream_id) for c in host.calls)
    closed = await session.wait_closed()
    assert (closed.code, closed.reason, closed.remote) == (4001, "bye", False)
    assert host.ended == [session]
    with pytest.raises(SessionClosed):
        await session.accept_bi()


async def test_peer_capsules(host: FakeHost) -> None:
    session = WebTransportSession(host, 0)
    session.accept()
    drained: list[bool] = []
    session.on_drain(lambda: drained.append(True))
    data = encode_drain() + encode_close(7, "peer-bye")
    session.handle_connect_data(data[:7], False)
    assert drained == [True] and not session.is_closed
    session.handle_connect_data(data[7:], False)
    closed = await asyncio.wait_for(session.wait_closed(), 1)
    assert (closed.code, closed.reason, closed.remote) == (7, "peer-bye", True)
    assert ("connect-data", 0, b"", True) in host.calls  # we end our side of the CONNECT stream


async def test_reject_and_close_before_accept(host: FakeHost) -> None:
    session = WebTransportSession(host, 0)
    session.handle_stream_data(2, b"early", False)
    session.close()  # before accept: an HTTP refusal
    assert ("headers", 0, b"403", True) in host.calls
    assert ("stop", 2, WT_SESSION_GONE) in host.calls
    assert session.state == "rejected"
    with pytest.raises(SessionClosed):
        await session.open_uni()


async def test_datagrams_are_bounded_both_ways(host: FakeHost) -> None:
    session = WebTransportSession(host, 0, max_datagrams=2)
    session.accept()
    for n in range(3):
        session.handle_datagram(bytes([n]))
    assert session.datagrams_dropped == 1
    assert [await session.receive_datagram() for _ in range(2)] == [b"\x01", b"\x02"]
    assert session.send_datagram(b"x" * 100) is True
    assert session.send_datagram(b"x" * 5000) is False  # larger than a packet
    session.handle_connection_terminated(0, "gone")
    with pytest.raises(SessionClosed):
        await session.receive_datagram()


def test_capsule_helper_round_trip() -> None:
    assert CapsuleParser().feed(encode_close(1, "x")) == [CloseCapsule(1, "x")]

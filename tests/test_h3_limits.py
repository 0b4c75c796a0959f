"""HTTP/3 frames are bounded before they are buffered; slow request headers are cut off.

A raw QUIC client (ALPN ``h3``, no HTTP/3 layer of its own) writes the
hostile bytes, against our server's h3 and against Hypercorn: a HEADERS frame
declaring 2^40 bytes followed by 1 MiB, an oversized SETTINGS frame, and a
HEADERS frame that never completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import ErrorCode, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StopSendingReceived, StreamReset

from moqt_asgi import MoQ, QuicSettings
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.protocol.wire import encode_varint
from moqt_asgi.testing.netsim import UdpRelay
from moqt_asgi.webtransport import h3 as h3_module
from moqt_asgi.webtransport import hypercorn as hypercorn_patch
from moqt_asgi.webtransport.capsules import CapsuleError, CapsuleParser
from moqt_asgi.webtransport.h3 import MAX_HEADER_FRAME, WebTransportH3Connection

from .conftest import Certs
from .wt_client import WebTransportClient, hypercorn_server

pytestmark = pytest.mark.slow

WAIT = 10.0
MIB = 1024 * 1024
HEADERS, SETTINGS = 0x01, 0x04


class RawClient(QuicConnectionProtocol):
    """Writes raw bytes on QUIC streams of an ``h3`` connection and records how the server answers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed: ConnectionTerminated | None = None
        self.resets: dict[int, int] = {}
        self.stops: dict[int, int] = {}
        self.changed = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.closed = event
        elif isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
        elif isinstance(event, StopSendingReceived):
            self.stops[event.stream_id] = event.error_code
        self.changed.set()

    async def wait_for(self, condition: Callable[[], Any], timeout: float = WAIT) -> Any:
        async with asyncio.timeout(timeout):
            while not (result := condition()):
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)
        return result


@contextlib.asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE,
                                      max_data=64 * MIB, max_stream_data=64 * MIB)
    async with connect("127.0.0.1", port, configuration=configuration, create_protocol=RawClient) as client:
        assert isinstance(client, RawClient)
        yield client


@contextlib.asynccontextmanager
async def our_server(certs: Certs, quic: QuicSettings | None = None) -> AsyncIterator[int]:
    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key), quic=quic)
    await server.start()
    try:
        yield server.address[1]
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def hypercorn(certs: Certs, quic: QuicSettings | None = None) -> AsyncIterator[int]:
    hypercorn_patch.configure(quic or QuicSettings())
    try:
        async with hypercorn_server(MoQ(), str(certs.cert), str(certs.key)) as port:
            yield port
    finally:
        hypercorn_patch.configure(None)


SERVERS = {"serve": our_server, "hypercorn": hypercorn}


class H3Meter:
    """Records, while installed, the bytes the HTTP/3 layer holds per request stream and the CPU it spends."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held = 0
        self.cpu = 0.0
        original = WebTransportH3Connection.receive_request_data
        meter = self

        def measured(h3: WebTransportH3Connection, stream: Any, data: bytes, ended: bool) -> Any:
            started = time.process_time()
            try:
                return original(h3, stream, data, ended)
            finally:
                meter.cpu += time.process_time() - started
                pending = getattr(h3, "_pending", {}).get(stream.stream_id, b"")
                meter.held = max(meter.held, len(stream.buffer) + len(pending))

        monkeypatch.setattr(WebTransportH3Connection, "receive_request_data", measured)


@pytest.mark.parametrize("where", SERVERS)
async def test_oversized_headers_frame_closes_the_connection(certs: Certs, monkeypatch: pytest.MonkeyPatch,
                                                             where: str) -> None:
    meter = H3Meter(monkeypatch)
    async with SERVERS[where](certs) as port, raw_client(port) as client:
        stream_id = client._quic.get_next_available_stream_id()
        client._quic.send_stream_data(stream_id, bytes([HEADERS]) + encode_varint(1 << 40))
        chunk = b"h" * 1024
        for _ in range(1024):  # 1 MiB, dribbled
            if client.closed is not None:
                break
            client._quic.send_stream_data(stream_id, chunk)
            client.transmit()
            await asyncio.sleep(0)
        closed = await client.wait_for(lambda: client.closed)
    assert closed.error_code == ErrorCode.H3_EXCESSIVE_LOAD
    assert meter.held < 100 * 1024
    assert meter.cpu < 0.1  # the HTTP/3 layer's CPU for it (aioquic alone: seconds, quadratic in the size)


@pytest.mark.parametrize("where", SERVERS)
async def test_headers_at_the_limit_are_served(certs: Certs, where: str) -> None:
    """A HEADERS frame just under the cap, sent in many packets, is parsed (and answered) as usual."""

    async with SERVERS[where](certs) as port, raw_client(port) as client:
        h3 = H3Connection(client._quic)
        stream_id = client._quic.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/x"),
                   (b"x-big", b"v" * (MAX_HEADER_FRAME - 2048))]
        h3.send_headers(stream_id, headers, end_stream=True)
        client.transmit()
        answered: list[Any] = []
        original = client.quic_event_received

        def record(event: QuicEvent) -> None:
            answered.extend(h3.handle_event(event))
            original(event)

        client.quic_event_received = record  # type: ignore[method-assign]
        await client.wait_for(lambda: any(getattr(e, "stream_id", None) == stream_id for e in answered))
        assert client.closed is None


@pytest.mark.parametrize("where", SERVERS)
async def test_oversized_settings_frame_closes_the_connection(certs: Certs, where: str) -> None:
    async with SERVERS[where](certs) as port, raw_client(port) as client:
        control = client._quic.get_next_available_stream_id(is_unidirectional=True)
        client._quic.send_stream_data(control, b"\x00" + bytes([SETTINGS]) + encode_varint(MIB) + b"\x01\x00" * 600)
        client.transmit()
        closed = await client.wait_for(lambda: client.closed)
    assert closed.error_code == ErrorCode.H3_EXCESSIVE_LOAD


@pytest.mark.parametrize("where", SERVERS)
async def test_headers_that_never_complete_are_reset(certs: Certs, where: str) -> None:
    quic = QuicSettings(header_timeout=0.5)
    async with SERVERS[where](certs, quic) as port, raw_client(port) as client:
        stream_id = client._quic.get_next_available_stream_id()
        client._quic.send_stream_data(stream_id, bytes([HEADERS]) + encode_varint(200) + b"partial")
        client.transmit()
        started = time.monotonic()
        await client.wait_for(lambda: stream_id in client.stops and stream_id in client.resets)
        assert time.monotonic() - started >= 0.4
        assert client.stops[stream_id] == ErrorCode.H3_REQUEST_INCOMPLETE
        assert client.resets[stream_id] == ErrorCode.H3_REQUEST_INCOMPLETE
        # the connection carries on (aioquic's sender answered the STOP_SENDING with its own reset)
        await asyncio.sleep(0.3)
        assert client.closed is None


def test_capsule_bounds_hold() -> None:
    """An unknown capsule of 2^40 bytes is skipped as it arrives; a known one that large is refused at once."""
    parser = CapsuleParser()
    assert parser.feed(encode_varint(0x1234) + encode_varint(1 << 40)) == []
    for _ in range(1024):
        assert parser.feed(b"c" * 1024) == []
        assert len(parser._buf) <= 16
    with pytest.raises(CapsuleError, match="too large"):
        CapsuleParser().feed(encode_varint(0x2843) + encode_varint(1 << 40) + b"x" * 100)


def test_frame_caps_are_what_the_module_says() -> None:
    assert h3_module.MAX_HEADER_FRAME == 64 * 1024
    assert h3_module.MAX_SETTINGS_FRAME < h3_module.MAX_HEADER_FRAME


# -- 0-RTT on our HTTP/3 server (RFC 8470)
async def early_echo(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
    """An ``http`` app answering with the method and the ``early-data`` header it saw."""
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    early = dict(scope["headers"]).get(b"early-data", b"-")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["method"].encode() + b" early-data=" + early})


async def test_unsafe_requests_in_0rtt_get_425(certs: Certs) -> None:


    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                        quic=QuicSettings(allow_0rtt=True), asgi_app=early_echo)  # type: ignore[arg-type]
    await server.start()
    tickets: list[Any] = []
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE,
                                      max_datagram_frame_size=65536, server_name="localhost")
    try:
        port = server.address[1]
        async with connect("127.0.0.1", port, configuration=configuration, create_protocol=WebTransportClient,
                           session_ticket_handler=tickets.append) as first:
            assert isinstance(first, WebTransportClient)
            response = await first.get("/")
            assert bytes(response.body) == b"GET early-data=-"  # 1-RTT: no marker
            await first.wait_for(lambda: tickets)
        configuration.session_ticket = tickets[-1]
        async with UdpRelay(server.address) as relay, \
                connect("127.0.0.1", relay.port, configuration=configuration, create_protocol=WebTransportClient,
                        wait_connected=False) as client:
            assert isinstance(client, WebTransportClient)
            pseudo = [(b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/")]
            post = client._quic.get_next_available_stream_id()
            client.h3.send_headers(post, [(b":method", b"POST"), *pseudo])
            client.h3.send_data(post, b"order=1", end_stream=True)
            get = client._quic.get_next_available_stream_id()
            client.h3.send_headers(get, [(b":method", b"GET"), *pseudo], end_stream=True)
            client.transmit()
            await client.wait_for(lambda: all(client.responses.get(s) and client.responses[s].ended
                                               for s in (post, get)))
            assert "0-rtt" in relay.packet_types("client")
            assert client.responses[post].status == 425
            assert client.responses[get].status == 200
            assert bytes(client.responses[get].body) == b"GET early-data=1"
            # once the handshake is done, the same POST is served
            stream_id = client._quic.get_next_available_stream_id()
            client.h3.send_headers(stream_id, [(b":method", b"POST"), *pseudo], end_stream=True)
            client.transmit()
            await client.wait_for(lambda: client.responses.get(stream_id) and client.responses[stream_id].ended)
            assert client.responses[stream_id].status == 200
    finally:
        await server.close()

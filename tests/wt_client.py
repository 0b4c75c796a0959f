"""A WebTransport test client on aioquic's HTTP/3 client, plus Hypercorn in-process.

The client records everything it receives (stream bytes, FINs, resets,
STOP_SENDINGs, datagrams, capsules) so tests can wait for conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN
from aioquic.h3.events import DatagramReceived, DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamReset
from hypercorn.asyncio import serve
from hypercorn.config import Config

from moqt_asgi.webtransport.capsules import CapsuleParser, CloseCapsule, app_to_http, encode_close, http_to_app
from moqt_asgi.webtransport.h3 import WebTransportH3Connection

TIMEOUT = 10.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StreamState:
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None
    """Application code of a RESET_STREAM from the server (None if it carried none)."""
    stopped: int | None = None


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False


class WebTransportClient(QuicConnectionProtocol):
    """aioquic H3 client with WebTransport enabled (and the same bidi-stream fix the server uses)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = WebTransportH3Connection(self._quic)
        self.authority = b"127.0.0.1"
        self.responses: dict[int, Response] = {}
        self.streams: dict[int, StreamState] = {}
        self.datagrams: list[tuple[int, bytes]] = []
        self.capsules: dict[int, list[Any]] = {}
        self._parsers: dict[int, CapsuleParser] = {}
        self.raw_resets: dict[int, int] = {}
        self.raw_stops: dict[int, int] = {}
        self.terminated = False
        self._changed = asyncio.Event()

    # -- events
    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset):
            self.raw_resets[event.stream_id] = event.error_code
            self.stream(event.stream_id).reset = http_to_app(event.error_code)
        elif isinstance(event, StopSendingReceived):
            self.raw_stops[event.stream_id] = event.error_code
            self.stream(event.stream_id).stopped = http_to_app(event.error_code)
        elif type(event).__name__ == "ConnectionTerminated":
            self.terminated = True
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                headers = dict(h3_event.headers)
                response = Response(int(headers[b":status"]), headers, ended=h3_event.stream_ended)
                self.responses[h3_event.stream_id] = response
            elif isinstance(h3_event, DataReceived):
                response = self.responses[h3_event.stream_id]
                response.body += h3_event.data
                response.ended = response.ended or h3_event.stream_ended
                parser = self._parsers.setdefault(h3_event.stream_id, CapsuleParser())
                if response.status == 200 and h3_event.data:
                    self.capsules.setdefault(h3_event.stream_id, []).extend(parser.feed(h3_event.data))
            elif isinstance(h3_event, WebTransportStreamDataReceived):
                state = self.stream(h3_event.stream_id)
                state.data += h3_event.data
                state.ended = state.ended or h3_event.stream_ended
            elif isinstance(h3_event, DatagramReceived):
                self.datagrams.append((h3_event.stream_id, h3_event.data))
        self._changed.set()

    def stream(self, stream_id: int) -> StreamState:
        return self.streams.setdefault(stream_id, StreamState())

    async def wait_for(self, condition: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        async with asyncio.timeout(timeout):
            while not (result := condition()):  # the condition may also depend on the in-process server
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.02)
        return result

    # -- requests
    async def request(self, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None,
                      protocol: str | None = None) -> tuple[int, Response]:
        stream_id = self._quic.get_next_available_stream_id()
        pseudo = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", self.authority),
                  (b":path", path.encode())]
        if protocol:
            pseudo.append((b":protocol", protocol.encode()))
        self.h3.send_headers(stream_id, pseudo + (headers or []), end_stream=method == "GET")
        self.transmit()
        response = await self.wait_for(lambda: self.responses.get(stream_id))
        return stream_id, response

    async def get(self, path: str) -> Response:
        stream_id, _response = await self.request("GET", path)
        await self.wait_for(lambda: self.responses[stream_id].ended)
        return self.responses[stream_id]

    async def connect_session(self, path: str = "/", headers: list[tuple[bytes, bytes]] | None = None
                              ) -> tuple[int, Response]:
        return await self.request("CONNECT", path, headers, protocol="webtransport")

    # -- WebTransport
    def open_stream(self, session_id: int, *, unidirectional: bool = False) -> int:
        stream_id: int = self.h3.create_webtransport_stream(session_id, is_unidirectional=unidirectional)
        self.transmit()
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self._quic.send_stream_data(stream_id, data, end)
        self.transmit()

    def reset(self, stream_id: int, code: int) -> None:
        self._quic.reset_stream(stream_id, app_to_http(code))
        self.transmit()

    def stop(self, stream_id: int, code: int) -> None:
        self._quic.stop_stream(stream_id, app_to_http(code))
        self.transmit()

    def send_datagram(self, session_id: int, data: bytes) -> None:
        self.h3.send_datagram(session_id, data)
        self.transmit()

    def close_session(self, session_id: int, code: int, reason: str) -> None:
        self.h3.send_data(session_id, encode_close(code, reason), end_stream=True)
        self.transmit()

    def close_capsule(self, session_id: int) -> CloseCapsule | None:
        for capsule in self.capsules.get(session_id, []):
            if isinstance(capsule, CloseCapsule):
                return capsule
        return None


def udp_port_bound(port: int) -> bool:
    """True once something listens on UDP ``127.0.0.1:port`` (our bind without SO_REUSEADDR fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


async def wait_udp_port(port: int, timeout: float = TIMEOUT, alive: Callable[[], bool] = lambda: True) -> None:
    async with asyncio.timeout(timeout):
        while not udp_port_bound(port):
            if not alive():
                raise RuntimeError("the server exited")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def wt_client(port: int) -> AsyncIterator[WebTransportClient]:
    """An HTTP/3 + WebTransport client connected to ``127.0.0.1:port``."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
                                      verify_mode=ssl.CERT_NONE, server_name="localhost")
    async with asyncio.timeout(TIMEOUT):
        context = connect("127.0.0.1", port, configuration=configuration, create_protocol=WebTransportClient)
        client = await context.__aenter__()
    assert isinstance(client, WebTransportClient)
    client.authority = f"127.0.0.1:{port}".encode()
    try:
        yield client
    finally:
        await context.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def hypercorn_server(app: Any, certfile: str, keyfile: str) -> AsyncIterator[int]:
    """``app`` on Hypercorn in this event loop (HTTP/3 only); yields the UDP port."""
    config = Config()
    port = free_udp_port()
    config.quic_bind = [f"127.0.0.1:{port}"]
    config.bind = []
    config.certfile = certfile
    config.keyfile = keyfile
    config.graceful_timeout = 2
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))
    try:
        await wait_udp_port(port, alive=lambda: not task.done())
        yield port
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()

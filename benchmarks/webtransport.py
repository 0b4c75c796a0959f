"""WebTransport (HTTP/3): MoQ pub -> sub through Hypercorn and through ``serve``, beside plain aioquic.

Three servers, one client stack. Every client is moqt-asgi's WebTransport
client (:class:`WebTransportClientProtocol` on aioquic's HTTP/3), so the rows
differ only by what serves the session:

* **aioquic WebTransport**: a minimal server written directly on aioquic's
  ``H3Connection(enable_webtransport=True)``, in the style of aioquic's
  ``examples/http3_server.py``. It answers a WebTransport CONNECT with
  ``200``, opens a WebTransport uni stream and writes the workload named in
  the request path on it, one frame-sized chunk at a time with the engine's
  backpressure rule (wait while more than ``HIGH_WATER`` bytes are queued but
  unsent; transmission coalesced to once per event-loop iteration). The
  client accepts that stream and reads it to the end, a frame's worth at a
  time. No MoQ, no framing: this is the ceiling for a WebTransport server on
  aioquic.
* **Hypercorn**: ``hypercorn.asyncio.serve`` in this process, with
  ``quic_bind`` and the certificate, serving a :class:`~moqt_asgi.MoQ` app
  whose track handler is the native benchmark's :class:`Source`; the
  subscriber is ``moqt_asgi.dial("https://...")``.
* **serve**: the same app on :class:`~moqt_asgi.endpoints.quic_server.QuicServer`'s HTTP/3 path.

Every server and client gets the QUIC settings of :func:`quic_settings`.
Hypercorn builds its own ``QuicConfiguration``; :func:`hypercorn_quic_settings`
copies the same knobs onto it while the benchmark runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hypercorn.protocol.quic as hc_quic
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve as quic_serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from moqt_asgi import MoQ, dial
from moqt_asgi.endpoints.dial_webtransport import WebTransportClientProtocol
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.endpoints.settings import QuicSettings

from .common import HIGH_WATER, HOST, Certificate, RunOnce, Sample, Workload, quic_settings
from .native import BROADCAST, SUBSCRIBER_LIMITS, Source, subscribe_once

SIZES = (64 * 1024, 1024)
"""The frame sizes the WebTransport rows are measured at."""


# -- baseline: plain aioquic HTTP/3 WebTransport
class PlainWebTransportServer(QuicConnectionProtocol):
    """HTTP/3 with WebTransport on aioquic alone: CONNECT -> 200, then the workload on a server uni stream."""

    def __init__(self, *args: Any, started: dict[int, float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http: H3Connection | None = None
        self._started = started
        self._writable: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._http = H3Connection(self._quic, enable_webtransport=True)
        if self._http is not None:
            for http_event in self._http.handle_event(event):
                self.http_event_received(http_event)

    def http_event_received(self, event: H3Event) -> None:
        assert self._http is not None
        if isinstance(event, HeadersReceived):
            headers = dict(event.headers)
            if headers.get(b":method") == b"CONNECT" and headers.get(b":protocol") == b"webtransport":
                self._http.send_headers(event.stream_id, [(b":status", b"200"),
                                                          (b"sec-webtransport-http3-draft", b"draft02")])
                query = parse_qs(urlsplit(headers.get(b":path", b"/").decode()).query)
                workload = Workload(int(query["size"][0]), int(query["frames"][0]), 1)
                task = self._loop.create_task(self.push(event.stream_id, workload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._http.send_headers(event.stream_id, [(b":status", b"404")], end_stream=True)
            self.transmit_soon()
        elif isinstance(event, DataReceived) and event.stream_ended:
            # The client closed the session (a CLOSE capsule and FIN on the CONNECT stream): FIN back.
            with contextlib.suppress(Exception):
                self._http.send_data(event.stream_id, b"", end_stream=True)
            self.transmit_soon()

    async def push(self, session_id: int, workload: Workload) -> None:
        assert self._http is not None
        stream_id = self._http.create_webtransport_stream(session_id, is_unidirectional=True)
        chunk = bytes(workload.frame_size)
        send_stream_data = self._quic.send_stream_data
        self._started[session_id] = time.perf_counter()
        last = workload.frames - 1
        for index in range(workload.frames):
            while self._backlog(stream_id) >= HIGH_WATER:
                waiter = self._loop.create_future()
                self._writable.append(waiter)
                await waiter
            send_stream_data(stream_id, chunk, end_stream=index == last)
            self.transmit_soon()

    def _backlog(self, stream_id: int) -> int:
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return max(0, sender._buffer_stop - sender.highest_offset)

    def transmit_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.transmit()

    def transmit(self) -> None:
        super().transmit()
        if self._writable:
            waiters, self._writable = self._writable, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _client_configuration() -> QuicConfiguration:
    configuration = quic_settings().configuration(is_client=True, alpn=list(H3_ALPN))
    configuration.verify_mode = ssl.CERT_NONE
    return configuration


@contextlib.asynccontextmanager
async def wt_aioquic(certificate: Certificate) -> AsyncIterator[RunOnce]:
    """Plain aioquic WebTransport server -> moqt-asgi's WebTransport client; one session per run."""
    started: dict[int, float] = {}
    server_config = quic_settings().configuration(is_client=False, alpn=list(H3_ALPN))
    server_config.load_cert_chain(str(certificate.cert), str(certificate.key))
    server = await quic_serve(HOST, 0, configuration=server_config,
                              create_protocol=functools.partial(PlainWebTransportServer, started=started))
    try:
        assert server._transport is not None
        port = server._transport.get_extra_info("sockname")[1]
        async with connect(HOST, port, configuration=_client_configuration(),
                           create_protocol=WebTransportClientProtocol) as client:
            assert isinstance(client, WebTransportClientProtocol)

            async def run_once(workload: Workload) -> Sample:
                target = f"/?size={workload.frame_size}&frames={workload.frames}"
                session, _ = await client.open_session(f"{HOST}:{port}", target)
                try:
                    stream = await asyncio.wait_for(session.accept_uni(), 10)
                    received = 0
                    async with asyncio.timeout(120):
                        # Woken once a whole frame is there, as the MoQ readers are (fewer bytes only at FIN).
                        while data := await stream.read(1 << 20, min_bytes=workload.frame_size):
                            received += len(data)
                    end = time.perf_counter()
                finally:
                    session.close()
                start = started.pop(session.session_id)
                return Sample(end - start, received, workload.frames, workload.total_bytes)

            yield run_once
    finally:
        server.close()


# -- MoQ over WebTransport
def moq_app() -> tuple[MoQ, Source]:
    source = Source()
    app = MoQ()
    app.mux.publish(BROADCAST, source)
    return app, source


@contextlib.asynccontextmanager
async def _moq_subscriber(port: int, certificate: Certificate, source: Source) -> AsyncIterator[RunOnce]:
    subscriber = await dial(f"https://{HOST}:{port}/", fingerprint=certificate.fingerprint, quic=quic_settings(),
                            limits=SUBSCRIBER_LIMITS)
    async with subscriber:

        async def run_once(workload: Workload) -> Sample:
            return await subscribe_once(subscriber, source, workload)

        yield run_once


@contextlib.contextmanager
def hypercorn_quic_settings(settings: QuicSettings) -> Iterator[None]:
    """Give the QUIC connections Hypercorn accepts the knobs every other server here gets.

    Hypercorn makes its ``QuicConfiguration`` with aioquic's defaults and no
    option to change them. The knobs only set transport parameters (flow
    control credit for what the client sends, the idle timeout); the data
    path is untouched.
    """
    original: Callable[..., None] = hc_quic.QuicProtocol.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        config = self.quic_config
        config.idle_timeout = settings.idle_timeout
        config.max_data = settings.max_data
        config.max_stream_data = settings.max_stream_data
        if settings.max_datagram_frame_size:
            config.max_datagram_frame_size = settings.max_datagram_frame_size

    setattr(hc_quic.QuicProtocol, "__init__", init)  # noqa: B010
    try:
        yield
    finally:
        setattr(hc_quic.QuicProtocol, "__init__", original)  # noqa: B010


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _udp_port_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


@contextlib.asynccontextmanager
async def wt_hypercorn(certificate: Certificate) -> AsyncIterator[RunOnce]:
    """The MoQ app on Hypercorn (HTTP/3 only, in this event loop) and one WebTransport subscriber."""
    app, source = moq_app()
    config = Config()
    port = _free_udp_port()
    config.bind = []
    config.quic_bind = [f"{HOST}:{port}"]
    config.certfile = str(certificate.cert)
    config.keyfile = str(certificate.key)
    config.graceful_timeout = 2
    config.errorlog = None  # no "Running on ..." lines among the benchmark's output
    stop = asyncio.Event()
    with hypercorn_quic_settings(quic_settings()):
        task = asyncio.ensure_future(hypercorn_serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(10):
                while not _udp_port_bound(port):
                    if task.done():
                        task.result()
                        raise RuntimeError("hypercorn exited before binding its QUIC port")
                    await asyncio.sleep(0.02)
            async with _moq_subscriber(port, certificate, source) as run_once:
                yield run_once
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 10)
            except TimeoutError:
                task.cancel()


@contextlib.asynccontextmanager
async def wt_native(certificate: Certificate) -> AsyncIterator[RunOnce]:
    """The MoQ app on ``QuicServer`` (its HTTP/3 path) and one WebTransport subscriber."""
    app, source = moq_app()
    server = QuicServer(app, host=HOST, port=0, certfile=str(certificate.cert), keyfile=str(certificate.key),
                        quic=quic_settings())
    await server.start()
    try:
        async with _moq_subscriber(server.address[1], certificate, source) as run_once:
            yield run_once
    finally:
        await server.close()

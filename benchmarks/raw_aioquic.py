"""Baseline: plain aioquic moving the same bytes on one stream, in either direction.

The sender writes one frame-sized chunk at a time straight into aioquic and,
like the moqt-asgi engine, waits whenever more than ``HIGH_WATER`` bytes are
queued but unsent; transmission is coalesced to once per event-loop
iteration and resumes as soon as aioquic has sent something. The receiver
counts the bytes aioquic hands to the application. There is no framing, no
per-group stream and no scheduling: this is as fast as a careful aioquic
application moving the same bytes gets.

Both directions are measured because they differ: aioquic's server
demultiplexes every datagram it receives, so a server that receives the bulk
data does more work per byte than one that sends it. The moqt-asgi scenarios
send from server to client (the server publishes), so that row is their
baseline.

Every stream starts with one byte: ``U`` (upload: the rest of the stream is
payload for the server) or ``D`` (download: ``"<frame size> <frames>"``
follows; the server answers with the payload on the same stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic import events

from .common import HIGH_WATER, HOST, Certificate, RunOnce, Sample, Workload, quic_settings

ALPN = "bench"
UPLOAD = b"U"
DOWNLOAD = b"D"


class Clock:
    """Start and end times of each stream's payload, shared by both ends (they run in one process)."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self._waiting: dict[int, asyncio.Future[tuple[int, float]]] = {}

    def expect(self, stream_id: int) -> asyncio.Future[tuple[int, float]]:
        future: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self._waiting[stream_id] = future
        return future

    def finished(self, stream_id: int, size: int) -> None:
        now = time.perf_counter()
        future = self._waiting.pop(stream_id, None)
        if future is not None and not future.done():
            future.set_result((size, now))


class BenchProtocol(QuicConnectionProtocol):
    """Sends with the engine's backpressure rule and counts what it receives."""

    def __init__(self, *args: Any, clock: Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self._writable: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._received: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- sending
    def transmit(self) -> None:
        super().transmit()
        if self._writable:
            waiters, self._writable = self._writable, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.transmit()

    def _backlog(self, stream_id: int) -> int:
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return max(0, sender._buffer_stop - sender.highest_offset)

    async def send_payload(self, stream_id: int, workload: Workload, prefix: bytes = b"") -> None:
        """Write the workload's bytes (after ``prefix``) on ``stream_id`` and finish the stream."""
        chunk = bytes(workload.frame_size)
        send_stream_data = self._quic.send_stream_data
        if prefix:
            send_stream_data(stream_id, prefix)
        self.clock.started[stream_id] = time.perf_counter()
        last = workload.frames - 1
        for index in range(workload.frames):
            while self._backlog(stream_id) >= HIGH_WATER:
                waiter = self._loop.create_future()
                self._writable.append(waiter)
                await waiter
            send_stream_data(stream_id, chunk, end_stream=index == last)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)

    # -- receiving
    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            size = self._received.get(event.stream_id, 0) + len(event.data)
            if event.end_stream:
                self._received.pop(event.stream_id, None)
                self.stream_finished(event.stream_id, size)
            else:
                self._received[event.stream_id] = size

    def stream_finished(self, stream_id: int, size: int) -> None:
        self.clock.finished(stream_id, size)


class ServerProtocol(BenchProtocol):
    """Counts uploads; answers download requests. Only the first byte of a stream is kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._requests: dict[int, bytes] = {}

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived) and event.stream_id not in self._received:
            head = self._requests.pop(event.stream_id, b"") + event.data
            if head[:1] == DOWNLOAD:
                if not event.end_stream:
                    self._requests[event.stream_id] = head
                    return
                size, frames = (int(part) for part in head[1:].split())
                task = self._loop.create_task(self.send_payload(event.stream_id, Workload(size, frames, frames)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            event = events.StreamDataReceived(data=head[1:], end_stream=event.end_stream, stream_id=event.stream_id)
        super().quic_event_received(event)


@contextlib.asynccontextmanager
async def _connection(certificate: Certificate) -> AsyncIterator[BenchProtocol]:
    clock = Clock()
    server_config = quic_settings().configuration(is_client=False, alpn=[ALPN])
    server_config.load_cert_chain(str(certificate.cert), str(certificate.key))
    server = await serve(HOST, 0, configuration=server_config,
                         create_protocol=functools.partial(ServerProtocol, clock=clock))
    assert server._transport is not None
    port = server._transport.get_extra_info("sockname")[1]
    client_config = quic_settings().configuration(is_client=True, alpn=[ALPN])
    client_config.verify_mode = ssl.CERT_NONE
    factory: Callable[..., QuicConnectionProtocol] = functools.partial(BenchProtocol, clock=clock)
    try:
        async with connect(HOST, port, configuration=client_config, create_protocol=factory) as client:
            assert isinstance(client, BenchProtocol)
            yield client
    finally:
        server.close()


@contextlib.asynccontextmanager
async def raw_upload(certificate: Certificate) -> AsyncIterator[RunOnce]:
    """Client -> server: the client writes the payload on a stream it opened."""
    async with _connection(certificate) as client:

        async def run_once(workload: Workload) -> Sample:
            stream_id: int = client._quic.get_next_available_stream_id()
            done = client.clock.expect(stream_id)
            await client.send_payload(stream_id, workload, prefix=UPLOAD)
            size, end = await asyncio.wait_for(done, 120)
            start = client.clock.started.pop(stream_id)
            return Sample(end - start, size, workload.frames, workload.total_bytes)

        yield run_once


@contextlib.asynccontextmanager
async def raw_download(certificate: Certificate) -> AsyncIterator[RunOnce]:
    """Server -> client: the client asks on a new stream and the server writes the payload back."""
    async with _connection(certificate) as client:

        async def run_once(workload: Workload) -> Sample:
            stream_id: int = client._quic.get_next_available_stream_id()
            done = client.clock.expect(stream_id)
            request = DOWNLOAD + f"{workload.frame_size} {workload.frames}".encode()
            client._quic.send_stream_data(stream_id, request, end_stream=True)
            client.transmit()
            size, end = await asyncio.wait_for(done, 120)
            start = client.clock.started.pop(stream_id)
            return Sample(end - start, size, workload.frames, workload.total_bytes)

        yield run_once

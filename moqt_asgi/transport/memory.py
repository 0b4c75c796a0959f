"""An in-memory transport pair: two connected :class:`Connection` objects.

Data written on one side is delivered to the other on the next event-loop
iteration, so the engine's tasks interleave as they would on a network.
Used by the tests and by examples that need no sockets.

Reset, stop-sending and close codes go through both ends' ``error_codes``
maps as they would through a wire: the sending end's ``*_out``, then the
receiving end's ``*_in``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from ..protocol.errors import ErrorCode, SessionClosed, StreamError
from ..protocol.limits import DEFAULT_LIMITS
from .base import BidiStream, Connection, ReceiveStream, SendStream
from .buffers import ReceiveBuffer
from .streams import next_stream

T = TypeVar("T")


class _Half:
    """One direction of a stream: a writer on one side, a buffer on the other."""

    def __init__(self, writer_conn: MemoryConnection, reader_conn: MemoryConnection, stream_id: int, *,
                 bidi: bool = False) -> None:
        self.writer_conn = writer_conn
        self.reader_conn = reader_conn
        self.stream_id = stream_id
        self.bidi = bidi
        self.buffer = ReceiveBuffer(reader_conn.max_stream_buffer, on_overflow=self._overflow)
        self.in_flight = 0
        self.fin_sent = False
        self.reset_code: int | None = None
        self.stop_code: int | None = None
        self.stopped_callbacks: list[Callable[[int], None]] = []

    def _overflow(self) -> None:
        self.receiver_stop(ErrorCode.TOO_LARGE)

    @property
    def done(self) -> bool:
        return (self.fin_sent or self.reset_code is not None) and self.in_flight == 0 and self.buffer.buffered == 0

    # writer side
    def write(self, data: bytes, end: bool) -> None:
        if self.stop_code is not None:
            raise StreamError(self.stop_code, f"peer stopped stream {self.stream_id} with code {self.stop_code}")
        if self.reset_code is not None or self.fin_sent:
            raise StreamError(0, f"stream {self.stream_id} is already finished")
        if self.writer_conn.is_closed:
            raise self.writer_conn.closed_error()
        self.fin_sent = end
        self.in_flight += len(data)
        loop = asyncio.get_running_loop()
        loop.call_soon(self._deliver, data, end)

    def _deliver(self, data: bytes, end: bool) -> None:
        delivered = self.reset_code is None and self.stop_code is None and not self.reader_conn.is_closed
        if delivered:
            self.buffer.feed(data, end)
        if not (delivered and self.reader_conn.flow_control):
            self.in_flight -= len(data)
        self.writer_conn._notify_writable()

    def consumed(self, size: int) -> None:
        """The reader took ``size`` bytes: with flow control, that frees the writer's backlog."""
        if size and self.reader_conn.flow_control:
            self.in_flight = max(0, self.in_flight - size)
            self.writer_conn._notify_writable()

    def _discard_unread(self) -> None:
        if self.reader_conn.flow_control and self.in_flight:
            self.in_flight = 0
            self.writer_conn._notify_writable()

    def reset(self, code: int) -> None:
        if self.reset_code is not None or (self.fin_sent and self.in_flight == 0 and self.buffer.finished):
            return
        wire = self.writer_conn.error_codes.stream_out(code, bidi=self.bidi)
        self.reset_code = seen = self.reader_conn.error_codes.stream_in(wire, bidi=self.bidi)
        self.buffer.fail(StreamError(seen, f"peer reset stream {self.stream_id} with code {seen}"))
        self._discard_unread()

    # reader side
    def receiver_stop(self, code: int) -> None:
        if self.stop_code is not None:
            return
        wire = self.reader_conn.error_codes.stream_out(code, bidi=self.bidi)
        self.stop_code = seen = self.writer_conn.error_codes.stream_in(wire, bidi=self.bidi)
        self.buffer.fail(StreamError(code, f"stream {self.stream_id} was stopped locally"))
        self._discard_unread()
        for callback in self.stopped_callbacks:
            callback(seen)
        self.stopped_callbacks.clear()


class MemorySendStream(SendStream):
    def __init__(self, half: _Half) -> None:
        self._half = half
        self.stream_id = half.stream_id

    def write(self, data: bytes, end: bool = False) -> None:
        self._half.write(data, end)

    def reset(self, code: int) -> None:
        self._half.reset(code)

    def backlog(self) -> int:
        return self._half.in_flight

    def on_stopped(self, callback: Callable[[int], None]) -> None:
        if self._half.stop_code is not None:
            callback(self._half.stop_code)
        else:
            self._half.stopped_callbacks.append(callback)


class MemoryReceiveStream(ReceiveStream):
    def __init__(self, half: _Half) -> None:
        self._half = half
        self.stream_id = half.stream_id

    async def read(self, max_bytes: int = 65536, min_bytes: int = 1) -> bytes:
        data = await self._half.buffer.read(max_bytes, min_bytes)
        self._half.consumed(len(data))
        return data

    def stop(self, code: int) -> None:
        self._half.receiver_stop(code)


class MemoryBidiStream(BidiStream):
    def __init__(self, send: _Half, recv: _Half) -> None:
        self._send = MemorySendStream(send)
        self._recv = MemoryReceiveStream(recv)
        self.stream_id = send.stream_id

    async def read(self, max_bytes: int = 65536, min_bytes: int = 1) -> bytes:
        return await self._recv.read(max_bytes, min_bytes)

    def stop(self, code: int) -> None:
        self._recv.stop(code)

    def write(self, data: bytes, end: bool = False) -> None:
        self._send.write(data, end)

    def reset(self, code: int) -> None:
        self._send.reset(code)

    def backlog(self) -> int:
        return self._send.backlog()

    def on_stopped(self, callback: Callable[[int], None]) -> None:
        self._send.on_stopped(callback)


class MemoryConnection(Connection):
    """One end of an in-memory connection; make a pair with :func:`memory_pair`."""

    def __init__(self, name: str, max_stream_buffer: int = DEFAULT_LIMITS.max_stream_buffer, *,
                 flow_control: bool = False) -> None:
        self.name = name
        self.max_stream_buffer = max_stream_buffer
        self.flow_control = flow_control
        """Bytes written to this end count in the writer's backlog until read here (as when a
        QUIC peer grants credit only as its application reads); off: until delivered."""
        self.peer: MemoryConnection | None = None
        self._bi: asyncio.Queue[MemoryBidiStream] = asyncio.Queue()
        self._uni: asyncio.Queue[MemoryReceiveStream] = asyncio.Queue()
        self._next_id = 0
        self._halves: list[_Half] = []
        self._closed: SessionClosed | None = None
        self._closed_event = asyncio.Event()
        self._writable_waiters: list[Callable[[], None]] = []

    @property
    def is_closed(self) -> bool:
        return self._closed is not None

    def closed_error(self) -> SessionClosed:
        return self._closed or SessionClosed(0, "closed")

    def _peer(self) -> MemoryConnection:
        if self.peer is None:
            raise RuntimeError("memory connection has no peer")
        return self.peer

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _track(self, half: _Half) -> None:
        self._halves.append(half)
        if len(self._halves) % 64 == 0:
            self._halves = [h for h in self._halves if not h.done]

    async def open_bi(self) -> BidiStream:
        if self._closed:
            raise self._closed
        peer = self._peer()
        sid = self._new_id()
        out, back = _Half(self, peer, sid, bidi=True), _Half(peer, self, sid, bidi=True)
        for conn in (self, peer):
            conn._track(out)
            conn._track(back)
        peer._bi.put_nowait(MemoryBidiStream(back, out))
        return MemoryBidiStream(out, back)

    async def open_uni(self) -> SendStream:
        if self._closed:
            raise self._closed
        peer = self._peer()
        half = _Half(self, peer, self._new_id())
        self._track(half)
        peer._track(half)
        peer._uni.put_nowait(MemoryReceiveStream(half))
        return MemorySendStream(half)

    async def _accept(self, queue: asyncio.Queue[T]) -> T:
        if self._closed:
            raise self._closed
        stream = await next_stream(queue, self._closed_event)
        if stream is None:
            raise self.closed_error()
        return stream

    async def accept_bi(self) -> BidiStream:
        return await self._accept(self._bi)

    async def accept_uni(self) -> ReceiveStream:
        return await self._accept(self._uni)

    def _terminate(self, error: SessionClosed) -> None:
        if self._closed is not None:
            return
        self._closed = error
        self._closed_event.set()
        for half in self._halves:
            half.buffer.fail(error)
            for callback in half.stopped_callbacks:
                callback(error.code)
            half.stopped_callbacks.clear()
        self._notify_writable()

    def close(self, code: int = 0, reason: str = "") -> None:
        if self._closed is not None:
            return
        self._terminate(SessionClosed(code, reason, remote=False))
        if self.peer is not None:
            seen = self.peer.error_codes.session_in(self.error_codes.session_out(code))
            self.peer._terminate(SessionClosed(seen, reason, remote=True))

    def abort(self) -> None:
        """Vanish without a close: the peer sees a transport error, as after an idle timeout."""
        if self._closed is not None:
            return
        self._terminate(SessionClosed(4, "connection aborted", remote=False))
        if self.peer is not None:
            self.peer._terminate(SessionClosed(4, "peer vanished (idle timeout)", remote=True))

    async def wait_closed(self) -> SessionClosed:
        await self._closed_event.wait()
        return self.closed_error()

    def backlog(self) -> int:
        return sum(h.in_flight for h in self._halves if h.writer_conn is self)

    def _notify_writable(self) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for waiter in waiters:
            waiter()

    def on_writable(self, callback: Callable[[], None]) -> None:
        if self._closed is not None:
            callback()
        else:
            self._writable_waiters.append(callback)


def memory_pair(max_stream_buffer: int = DEFAULT_LIMITS.max_stream_buffer, *,
                flow_control: bool = False) -> tuple[MemoryConnection, MemoryConnection]:
    """Two connected in-memory connections: ``(client, server)``.

    With ``flow_control``, a writer's :meth:`~MemoryConnection.backlog` keeps
    what the other end has not read yet, so a peer that stops reading makes
    the writer wait, as QUIC flow control would.
    """
    client = MemoryConnection("client", max_stream_buffer, flow_control=flow_control)
    server = MemoryConnection("server", max_stream_buffer, flow_control=flow_control)
    client.peer, server.peer = server, client
    return client, server

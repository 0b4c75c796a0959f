"""Decides which group data goes to the transport next.

aioquic sends whatever it has queued round-robin across streams and never
pushes back. So the engine keeps the transport's queue short (``high_water``
bytes) and holds everything else here, ordered by track priority (higher
first) and then by group sequence (newer first).

Memory is bounded by construction:

* each writer awaits its turn, so it has at most one write waiting here;
* a waiting write is kept as a *head* (a few bytes of framing) and a *body*
  that is a reference to the caller's payload, never a copy: a cached frame
  sent to a thousand subscribers stays one object;
* the transport is handed at most :data:`CHUNK` bytes of a body at a time,
  and only while its queue is under ``high_water``, so what the transport
  holds unsent stays near ``high_water`` however large the frames are.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging

from ..protocol.errors import ErrorCode, MoQError, StreamError
from ..transport.base import Connection, SendStream

DEFAULT_HIGH_WATER = 512 * 1024
CHUNK = 64 * 1024
"""Most bytes of one write handed to the transport in one turn."""

logger = logging.getLogger("moqt_asgi.engine._scheduler")


class _Entry:
    __slots__ = ("body", "end", "future", "head", "offset", "stream")

    def __init__(self, stream: SendStream, head: bytes, body: bytes | memoryview, end: bool,
                 future: asyncio.Future[None]) -> None:
        self.stream = stream
        self.head = head
        self.body = body
        self.offset = 0
        self.end = end
        self.future = future

    def next_piece(self) -> tuple[bytes, bool]:
        """The next piece to write (at most :data:`CHUNK` bytes of body) and whether it is the last."""
        head, self.head = self.head, b""
        body = self.body
        start = self.offset
        stop = min(len(body), start + CHUNK)
        self.offset = stop
        last = stop >= len(body)
        if start == 0 and last:
            piece = head + body if head else bytes(body)
        else:
            piece = head + bytes(memoryview(body)[start:stop])
        return piece, last


def _write(stream: SendStream, data: bytes, end: bool) -> None:
    """``stream.write``; whatever the transport raises becomes a :class:`MoQError`."""
    try:
        stream.write(data, end)
    except MoQError:
        raise
    except Exception as exc:  # a transport that refuses the write (the stream was reset under us)
        raise StreamError(ErrorCode.CANCEL, f"write on stream {stream.stream_id} failed: {exc}") from None


class SendScheduler:
    def __init__(self, connection: Connection, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self._connection = connection
        self._high_water = high_water
        self._heap: list[tuple[int, int, int, _Entry]] = []
        self._counter = itertools.count()
        self._pump_waiting = False

    @property
    def queued(self) -> int:
        """Writes waiting for their turn."""
        return len(self._heap)

    async def send(self, stream: SendStream, data: bytes, body: bytes | memoryview = b"", *, end: bool = False,
                   priority: int = 0, sequence: int = 0) -> None:
        """Write ``data`` then ``body`` (and FIN if ``end``) once it is this writer's turn.

        ``body`` is kept by reference until it is written, so pass a payload
        shared with other writers as ``body`` rather than joining it to ``data``.
        """
        size = len(data) + len(body)
        if not self._heap and size <= CHUNK and self._connection.backlog() < self._high_water:
            _write(stream, data + body if body else data, end)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (-priority, -sequence, next(self._counter), _Entry(stream, data, body, end, future)))
        if len(self._heap) == 1 and not self._pump_waiting:
            self.pump()
        else:
            self._ensure_pump()
        await future

    def _ensure_pump(self) -> None:
        if self._pump_waiting:
            return
        self._pump_waiting = True
        self._connection.on_writable(self._on_writable)

    def _on_writable(self) -> None:
        self._pump_waiting = False
        self.pump()

    def pump(self) -> None:
        """Hand queued pieces over, best first, while the transport has room. Never raises."""
        closed = self._connection.is_closed
        heap = self._heap
        while heap and (closed or self._connection.backlog() < self._high_water):
            entry = heap[0][3]
            if entry.future.done():  # the writer was cancelled
                heapq.heappop(heap)
                continue
            piece, last = entry.next_piece()
            try:
                _write(entry.stream, piece, entry.end and last)
            except MoQError as exc:
                heapq.heappop(heap)
                entry.future.set_exception(exc)
                continue
            if last:
                heapq.heappop(heap)
                entry.future.set_result(None)
        if heap:
            self._ensure_pump()

"""Decides which group data goes to the transport next.

aioquic sends whatever it has queued round-robin across streams and never
pushes back. So the engine keeps the transport's queue short (``high_water``
bytes) and holds everything else here, ordered by track priority (higher
first) and then by group sequence (newer first). Writers await their turn;
nothing is queued without bound because each writer has at most one chunk
waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from .protocol.errors import MoQError
from .transport.base import Connection, SendStream

DEFAULT_HIGH_WATER = 512 * 1024


class _Entry:
    __slots__ = ("data", "end", "future", "stream")

    def __init__(self, stream: SendStream, data: bytes, end: bool, future: asyncio.Future[None]) -> None:
        self.stream = stream
        self.data = data
        self.end = end
        self.future = future


class SendScheduler:
    def __init__(self, connection: Connection, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self._connection = connection
        self._high_water = high_water
        self._heap: list[tuple[int, int, int, _Entry]] = []
        self._counter = itertools.count()
        self._pump_waiting = False

    @property
    def queued(self) -> int:
        return len(self._heap)

    async def send(self, stream: SendStream, data: bytes, *, end: bool = False, priority: int = 0, sequence: int = 0) -> None:
        """Write ``data`` once it is this writer's turn."""
        if not self._heap and self._connection.backlog() < self._high_water:
            stream.write(data, end)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (-priority, -sequence, next(self._counter), _Entry(stream, data, end, future)))
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
        """Hand queued chunks over, best first, while the transport has room."""
        closed = self._connection.is_closed
        while self._heap and (closed or self._connection.backlog() < self._high_water):
            *_, entry = heapq.heappop(self._heap)
            if entry.future.done():  # the writer was cancelled
                continue
            try:
                entry.stream.write(entry.data, entry.end)
            except MoQError as exc:
                entry.future.set_exception(exc)
            else:
                entry.future.set_result(None)
        if self._heap:
            self._ensure_pump()

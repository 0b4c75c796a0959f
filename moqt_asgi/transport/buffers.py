"""A bounded receive buffer shared by the transport adapters.

Transports push bytes in from their event callbacks (never awaiting); the
engine pulls them out with :meth:`ReceiveBuffer.read`. If the reader falls
further behind than ``limit`` bytes the stream is failed rather than grown.

With a :class:`Credit` (QUIC streams), the buffer also decides when the
peer may send more: bytes that arrive while nobody waits to read them are
*held* (``credit.hold``) and count against the stream's and the
connection's flow-control windows until they are read or discarded
(``credit.release``). Bytes that arrive while a reader is waiting, and
everything held when a reader starts to wait, are released at once: that
reader takes them next. So a stream nobody reads blocks its sender after
one window, while a reader that keeps up never waits for credit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..protocol.errors import ErrorCode, MoQError, StreamError


class Credit(Protocol):
    """Flow-control credit of the stream a buffer belongs to (see the module docstring)."""

    @property
    def window(self) -> int:
        """The stream's receive window: a read never waits for more than half of it."""

    def hold(self, size: int) -> None:
        """``size`` bytes entered the buffer and wait for a reader."""

    def release(self, size: int) -> None:
        """``size`` held bytes were read or discarded."""


class ReceiveBuffer:
    __slots__ = ("_chunks", "_credit", "_error", "_fin", "_held", "_limit", "_max_wait", "_on_overflow", "_size",
                 "_waiter")

    def __init__(self, limit: int, on_overflow: Callable[[], None] | None = None, credit: Credit | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._fin = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._limit = limit
        self._on_overflow = on_overflow
        self._credit = credit
        self._held = 0
        """Bytes in the buffer still held against the credit (never more than ``_size``)."""
        self._max_wait = max(1, credit.window // 2) if credit is not None else limit

    @property
    def buffered(self) -> int:
        return self._size

    @property
    def finished(self) -> bool:
        """True once FIN arrived or the stream failed."""
        return self._fin or self._error is not None

    @property
    def drained(self) -> bool:
        """True once FIN arrived (or the stream failed) and nothing is left to read."""
        return (self._fin or self._error is not None) and not self._size

    def feed(self, data: bytes, fin: bool) -> None:
        if self._error is not None or self._fin:
            return
        if data:
            self._chunks.append(data)
            self._size += len(data)
            if self._credit is not None and self._waiter is None:
                self._held += len(data)
                self._credit.hold(len(data))
            if self._size > self._limit:
                self.fail(StreamError(ErrorCode.TOO_LARGE, f"more than {self._limit} unread bytes buffered"))
                if self._on_overflow is not None:
                    self._on_overflow()
                return
        if fin:
            self._fin = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not (self._fin and not self._chunks):
            self._error = error
            self._chunks.clear()
            self._size = 0
            self._release_held()
        self._wake()

    def _release_held(self) -> None:
        if self._held:
            held, self._held = self._held, 0
            if self._credit is not None:
                self._credit.release(held)

    def _taken(self, size: int) -> None:
        """``size`` bytes left the buffer for the reader: release the held ones among them."""
        unheld = self._size - self._held
        self._size -= size
        if size > unheld:
            released = size - unheld
            self._held -= released
            if self._credit is not None:
                self._credit.release(released)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None

    async def read(self, max_bytes: int, min_bytes: int = 1) -> bytes:
        """Up to ``max_bytes``; waits until ``min_bytes`` are buffered (or FIN) so a reader
        that needs a whole frame is woken once, not once per packet.

        With a credit, ``min_bytes`` is capped at half the stream's window: a
        read never waits for more than the peer may send before it is read.
        """
        min_bytes = max(1, min(min_bytes, max_bytes, self._max_wait))
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks and (self._size >= min_bytes or self._fin):
                chunk = self._chunks[0]
                if len(chunk) < min_bytes and len(self._chunks) > 1:
                    return self._gather(max_bytes)
                if len(chunk) <= max_bytes:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = chunk[max_bytes:]
                    chunk = chunk[:max_bytes]
                self._taken(len(chunk))
                return chunk
            if self._fin and not self._chunks:
                return b""
            if self._waiter is not None:
                raise MoQError("two readers on one stream")
            self._release_held()  # this reader takes them next: the peer may send what follows
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _gather(self, max_bytes: int) -> bytes:
        """Join buffered chunks into one read of at most ``max_bytes``."""
        out = bytearray()
        while self._chunks and len(out) < max_bytes:
            chunk = self._chunks.popleft()
            room = max_bytes - len(out)
            if len(chunk) > room:
                self._chunks.appendleft(chunk[room:])
                chunk = chunk[:room]
            out += chunk
        self._taken(len(out))
        return bytes(out)

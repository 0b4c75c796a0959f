"""What the QUIC-based transports share: the stream bookkeeping and accepting streams.

:class:`BufferedStream` is a QUIC stream as the engine sees it, on native
QUIC (:class:`~moqt_asgi.transport.quic.QuicStream`) and inside a
WebTransport session (:class:`~moqt_asgi.webtransport.session.WebTransportStream`):

* the receive half is a bounded :class:`ReceiveBuffer` that holds unread
  bytes against the stream's QUIC receive credit (when the connection
  manages one), and asks the peer to stop sending when it overflows;
* the send half remembers whether it is finished (FIN or reset) and
  whether the peer sent STOP_SENDING, and calls the ``on_stopped``
  callbacks once.

A subclass says how each of these reaches the wire, in its connection's
own code space: :meth:`BufferedStream._send_data`, :meth:`_send_reset`,
:meth:`_send_stop`, :meth:`backlog`, and what its connection does once a
half has ended (:meth:`_sending_ended`, :meth:`_receiving_ended`). The
connection feeds it with :meth:`deliver`, :meth:`peer_reset`,
:meth:`peer_stopped` and :meth:`connection_closed`; none of these awaits
or raises.

:func:`next_stream` is the accept of every :class:`~.base.Connection`
implementation: the next queued stream, or ``None`` once the connection
closed.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from ..protocol.errors import ErrorCode, StreamError
from .base import BidiStream
from .buffers import Credit, ReceiveBuffer

logger = logging.getLogger("moqt_asgi.transport")

T = TypeVar("T")


class BufferedStream(BidiStream):
    """Both halves of a QUIC stream's bookkeeping (see the module docstring); uni streams use one half."""

    __slots__ = ("_buffer", "_send_done", "_stop_code", "_stopped_callbacks", "peer_reset_code", "stream_id")

    def __init__(self, stream_id: int, *, readable: bool, writable: bool, limit: int, credit: Credit | None) -> None:
        self.stream_id = stream_id
        self._buffer = ReceiveBuffer(limit, on_overflow=self._overflow, credit=credit) if readable else None
        self._send_done = not writable
        self._stop_code: int | None = None
        self._stopped_callbacks: list[Callable[[int], None]] = []
        self.peer_reset_code: int | None = None
        """The code of the peer's RESET_STREAM once it arrived (in the engine's code space)."""

    # -- what the subclass puts on the wire
    @abc.abstractmethod
    def _send_data(self, data: bytes, end: bool) -> None:
        """Queue ``data`` (and FIN) on the connection; raises :class:`StreamError` if it cannot."""

    @abc.abstractmethod
    def _send_reset(self, code: int) -> None:
        """Send RESET_STREAM with ``code``."""

    @abc.abstractmethod
    def _send_stop(self, code: int) -> None:
        """Send STOP_SENDING with ``code`` (we stopped reading, or the buffer overflowed)."""

    def _sending_ended(self) -> None:
        """Our half ended (FIN written, reset, or stopped by the peer)."""

    def _receiving_ended(self) -> None:
        """The receive half ended (read to the end, or stopped)."""

    # -- state
    @property
    def readable(self) -> bool:
        """The stream has a receive half (not a uni stream we opened)."""
        return self._buffer is not None

    @property
    def writable(self) -> bool:
        """The send half is open: not finished, reset or stopped."""
        return not self._send_done

    @property
    def receiving(self) -> bool:
        """The receive half is open: the peer has not finished or reset it, and we did not stop it."""
        return self._buffer is not None and not self._buffer.finished

    @property
    def done(self) -> bool:
        """Both halves are over and nothing is left to read: the connection may forget the stream."""
        return self._send_done and (self._buffer is None or self._buffer.drained)

    # -- receive half
    async def read(self, max_bytes: int = 65536, min_bytes: int = 1) -> bytes:
        buffer = self._buffer
        if buffer is None:
            raise StreamError(ErrorCode.UNEXPECTED_STREAM, "stream is send-only")
        data = await buffer.read(max_bytes, min_bytes)
        if not data or buffer.drained:
            self._receiving_ended()
        return data

    def read_finished(self) -> bool:
        """True when everything up to the peer's FIN has been read."""
        return self._buffer is not None and self._buffer.finished and self._buffer.buffered == 0

    def stop(self, code: int) -> None:
        buffer = self._buffer
        if buffer is None or buffer.finished:
            return
        buffer.fail(StreamError(code, f"stream {self.stream_id} was stopped locally"))
        self._send_stop(code)
        self._receiving_ended()

    def _overflow(self) -> None:
        self._send_stop(ErrorCode.TOO_LARGE)

    # -- send half
    def write(self, data: bytes, end: bool = False) -> None:
        if self._stop_code is not None:
            raise StreamError(self._stop_code, f"peer stopped stream {self.stream_id} with code {self._stop_code}")
        if self._send_done:
            raise StreamError(ErrorCode.CANCEL, f"stream {self.stream_id} is already finished")
        self._send_data(data, end)
        if end:
            self._send_done = True
            self._sending_ended()

    def reset(self, code: int) -> None:
        if self._send_done:
            return
        self._send_done = True
        self._send_reset(code)
        self._sending_ended()

    def on_stopped(self, callback: Callable[[int], None]) -> None:
        if self._stop_code is not None:
            callback(self._stop_code)
        else:
            self._stopped_callbacks.append(callback)

    # -- what the connection reports (never awaits, never raises)
    def deliver(self, data: bytes, end: bool) -> None:
        """Bytes (and FIN) the peer sent on this stream."""
        if self._buffer is not None:
            self._buffer.feed(data, end)

    def peer_reset(self, code: int) -> bool:
        """The peer reset its half with ``code`` (ours); False if the stream has no receive half."""
        if self._buffer is None:
            return False
        self.peer_reset_code = code
        self._buffer.fail(StreamError(code, f"peer reset stream {self.stream_id} with code {code}"))
        return True

    def peer_stopped(self, code: int) -> None:
        """The peer sent STOP_SENDING with ``code`` (ours), or the stream died: our half is over."""
        if self._stop_code is not None:
            return
        self._stop_code = code
        self._send_done = True
        callbacks, self._stopped_callbacks = self._stopped_callbacks, []
        for callback in callbacks:
            try:
                callback(code)
            except Exception:
                logger.exception("on_stopped callback failed")

    def connection_closed(self, error: BaseException, code: int) -> None:
        """The connection (or session) is gone: reads raise ``error``, writes ``code`` as a stop."""
        if self._buffer is not None:
            self._buffer.fail(error)
        self.peer_stopped(code)


async def next_stream(queue: asyncio.Queue[T], closed: asyncio.Event) -> T | None:
    """The next stream from ``queue``, or None when ``closed`` is set first.

    It always waits for the queue's getter, one event-loop step even when a
    stream is queued: a burst of streams is accepted one per step, so the
    readers of those already accepted keep up (a subscriber keeps only the
    newest few groups it has not read).
    """
    getter = asyncio.ensure_future(queue.get())
    closer = asyncio.ensure_future(closed.wait())
    try:
        await asyncio.wait((getter, closer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closer.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None


__all__ = ["BufferedStream", "next_stream"]

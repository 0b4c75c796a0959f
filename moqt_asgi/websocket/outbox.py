"""What a WebSocket session sends next: the send side of :class:`~.session.WebSocketConnection`.

One ordered byte stream carries every MoQ stream, so an :class:`Outbox`
decides the order: control frames first (credit, resets, pings, the close),
then the streams with bytes queued, taken in turn, each message within the
peer's credit (the connection's :attr:`~Outbox.send_max` and the stream's
``send_max``) and within one record (qmux-01/02), one 16 KiB QMux message
(qmux-00) or one legacy STREAM frame. It counts every byte not yet handed to
the WebSocket (:attr:`~Outbox.backlog`), which the engine's scheduler reads to
drop whole old groups for a slow reader. Sans-IO: the connection's writer
task takes :meth:`~Outbox.next_message` and waits on :attr:`~Outbox.wake`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from . import qmux
from .qmux import Framing
from .settings import UNLIMITED
from .streams import WebSocketStream


class Outbox:
    """The queues of what waits to be sent on one WebSocket, and the peer's connection credit.

    ``on_fin(stream)`` is called when a stream's FIN is taken for sending.
    The legacy framing has no flow control (``send_max`` is unlimited).
    """

    def __init__(self, framing: Framing, on_fin: Callable[[WebSocketStream], None]) -> None:
        self.framing = framing
        self.control: deque[bytes] = deque()
        """Encoded control frames, sent before any stream data."""
        self.ready: deque[WebSocketStream] = deque()
        """Streams that may have something to send, in turn."""
        self.backlog = 0
        """Stream bytes queued and not yet handed to the WebSocket."""
        self.send_max = 0 if framing.qmux else UNLIMITED
        """The peer's connection credit: stream bytes we may send in all (MAX_DATA)."""
        self.sent = 0
        self.record_size = qmux.DEFAULT_RECORD_SIZE
        """The peer's ``max_record_size`` (qmux-01/02)."""
        self.wake = asyncio.Event()
        """Set when there may be something new to send."""
        self._on_fin = on_fin

    def send_control(self, frame: qmux.Frame) -> None:
        """Queue a control frame."""
        self.control.append(qmux.encode_frame(frame, self.framing))
        self.wake.set()

    def schedule(self, stream: WebSocketStream) -> None:
        """``stream`` queued bytes or a FIN (or got credit): take it in turn."""
        if stream not in self.ready:
            self.ready.append(stream)
        self.wake.set()

    def unblock(self, streams: Iterable[WebSocketStream]) -> None:
        """More connection credit: every stream with something left to send is taken in turn again."""
        for stream in streams:
            if stream not in self.ready and (stream.pending_size or (stream.fin_queued and not stream.fin_sent)):
                self.ready.append(stream)
        self.wake.set()

    def raise_credit(self, maximum: int) -> bool:
        """MAX_DATA from the peer; True if it raised the connection credit."""
        if maximum <= self.send_max:
            return False
        self.send_max = maximum
        return True

    def clear(self, last: bytes | None) -> None:
        """The session closed: drop everything queued; ``last`` (the closing message, if any) is all that is left."""
        self.ready.clear()
        self.backlog = 0
        self.control.clear()
        if last is not None:
            self.control.append(last)
        self.wake.set()

    def next_message(self, closed: bool) -> bytes | None:
        """The next message to send, or None (nothing, or only streams blocked on credit); only control once ``closed``."""
        if self.control:
            return self.control.popleft()
        if closed:
            return None
        for _ in range(len(self.ready)):
            stream = self.ready.popleft()
            message = self._stream_message(stream)
            if message is None:
                continue  # blocked on credit, or nothing left: MAX_* or a write puts it back
            if stream.pending_size or (stream.fin_queued and not stream.fin_sent):
                self.ready.append(stream)
            return message
        return None

    def _payload_room(self, stream_id: int, offset: int) -> int:
        """Most STREAM payload bytes that fit one message to the peer."""
        if self.framing is Framing.LEGACY:
            return qmux.MAX_STREAM_PAYLOAD
        limit = self.record_size if self.framing.records else qmux.QMUX00_MESSAGE_SIZE
        header = len(qmux.stream_header(stream_id, offset, limit, True, self.framing))
        return max(1, min(qmux.MAX_STREAM_PAYLOAD, limit - header))

    def _stream_message(self, stream: WebSocketStream) -> bytes | None:
        if stream.fin_sent and not stream.pending_size:
            return None
        size = min(stream.pending_size, self._payload_room(stream.stream_id, stream.send_offset),
                   stream.send_max - stream.send_offset, self.send_max - self.sent)
        if size <= 0 and stream.pending_size:
            return None  # blocked: stream or connection credit
        chunks = bytearray()
        while len(chunks) < size:
            head = stream.pending[0]
            take = size - len(chunks)
            if len(head) <= take:
                chunks += stream.pending.popleft()
            else:
                chunks += head[:take]
                stream.pending[0] = head[take:]
        stream.pending_size -= size
        self.backlog -= size
        fin = stream.fin_queued and not stream.pending_size
        if not size and not fin:
            return None
        header = qmux.stream_header(stream.stream_id, stream.send_offset, size, fin, self.framing)
        stream.send_offset += size
        self.sent += size
        if fin:
            stream.fin_sent = True
            stream.fin_queued = False
            self._on_fin(stream)
        return header + bytes(chunks)


__all__ = ["Outbox"]

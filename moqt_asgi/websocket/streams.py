"""The streams of a WebSocket session: QUIC's stream bookkeeping plus the send queue and the offsets.

A :class:`WebSocketStream` is a :class:`~moqt_asgi.transport.streams.BufferedStream`
whose wire is its connection (a :class:`StreamOwner`): what the engine
writes waits in :attr:`~WebSocketStream.pending` until the connection's
writer sends it in STREAM frames within the peer's credit; what arrives is
held in the bounded receive buffer against the stream's :class:`StreamCredit`.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from ..protocol.limits import Limits
from ..transport.streams import BufferedStream
from .settings import WebSocketSettings


class StreamOwner(Protocol):
    """What a :class:`WebSocketStream` needs of its connection (:class:`~.session.WebSocketConnection`)."""

    settings: WebSocketSettings
    limits: Limits

    def stream_write(self, stream: WebSocketStream, data: bytes, end: bool) -> None: ...

    def stream_reset(self, stream: WebSocketStream, code: int) -> None: ...

    def stream_stop(self, stream: WebSocketStream, code: int) -> None: ...

    def stream_ended(self, stream: WebSocketStream) -> None: ...

    def stream_discarded(self, size: int) -> None: ...

    def credit_held(self, size: int) -> None: ...

    def credit_released(self, stream: WebSocketStream, size: int) -> None: ...


class StreamCredit:
    """The receive credit of one stream: what its buffer holds unread (see :mod:`moqt_asgi.transport.buffers`)."""

    __slots__ = ("_owner", "held", "stream")

    def __init__(self, owner: StreamOwner, stream: WebSocketStream) -> None:
        self._owner = owner
        self.stream = stream
        self.held = 0

    @property
    def window(self) -> int:
        return self._owner.settings.stream_window

    def hold(self, size: int) -> None:
        self.held += size
        self._owner.credit_held(size)

    def release(self, size: int) -> None:
        self.held -= size
        self._owner.credit_released(self.stream, size)


class WebSocketStream(BufferedStream):
    """A stream of a WebSocket session; uni streams use one half.

    A stream we open takes its number (and a place under the peer's stream
    limit) when it first sends something: one the engine opens and then
    abandons unused costs the peer nothing, as on QUIC. Until then
    :attr:`stream_id` is the number it would get, and :attr:`assigned` is False.
    """

    __slots__ = ("_conn", "assigned", "credit", "fin_queued", "fin_sent", "pending", "pending_size",
                 "recv_final", "recv_max", "recv_offset", "send_max", "send_offset", "uni")

    def __init__(self, owner: StreamOwner, stream_id: int, *, readable: bool, writable: bool,
                 send_max: int, recv_max: int, assigned: bool = True) -> None:
        self._conn = owner
        self.credit = StreamCredit(owner, self)
        super().__init__(stream_id, readable=readable, writable=writable, limit=owner.limits.max_stream_buffer,
                         credit=self.credit if readable else None)
        self.uni = bool(stream_id & 2)
        self.assigned = assigned
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        self.fin_queued = False
        self.fin_sent = not writable
        self.send_offset = 0
        self.send_max = send_max
        self.recv_offset = 0
        self.recv_max = recv_max
        self.recv_final: int | None = None

    def __repr__(self) -> str:
        return f"<WebSocketStream {self.stream_id}>"

    def _send_data(self, data: bytes, end: bool) -> None:
        self._conn.stream_write(self, data, end)

    def _send_reset(self, code: int) -> None:
        self._conn.stream_reset(self, code)

    def _send_stop(self, code: int) -> None:
        self._conn.stream_stop(self, code)

    def _sending_ended(self) -> None:
        self._conn.stream_ended(self)

    def _receiving_ended(self) -> None:
        self._conn.stream_ended(self)

    def backlog(self) -> int:
        return self.pending_size

    def discard_pending(self) -> None:
        self._conn.stream_discarded(self.pending_size)
        self.pending.clear()
        self.pending_size = 0
        self.fin_queued = False


__all__ = ["StreamCredit", "StreamOwner", "WebSocketStream"]

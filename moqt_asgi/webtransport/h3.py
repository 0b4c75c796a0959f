"""aioquic's HTTP/3 connection with WebTransport enabled, stream-state fixes, and bounded frames.

Used everywhere we speak HTTP/3: Hypercorn's server connections (hook H1),
our own h3 server (:mod:`.h3_server`) and our client.

What it changes in aioquic's ``H3Connection`` (1.7):

* WebTransport is always enabled, and bidi WebTransport streams we open are
  marked as such (aioquic only marks the ones it receives), and freed once
  both halves ended.
* **Frame sizes are checked when a frame header is read, before anything is
  buffered.** aioquic waits for a whole HEADERS or PUSH_PROMISE frame (and a
  whole SETTINGS or MAX_PUSH_ID frame on the control stream) whatever length
  it declares. Here a HEADERS/PUSH_PROMISE frame over
  :data:`MAX_HEADER_FRAME` (64 KiB, as neqo), a SETTINGS frame over
  :data:`MAX_SETTINGS_FRAME` or a MAX_PUSH_ID frame over 8 bytes closes the
  connection with ``H3_EXCESSIVE_LOAD`` (``H3_FRAME_ERROR`` for MAX_PUSH_ID).
  Unknown frames are already discarded as they arrive by aioquic.
* **No quadratic copying.** aioquic appends each packet to the stream's
  buffer (``bytes +=``) and re-parses the whole buffer per packet while a
  frame is incomplete or the stream is QPACK-blocked. Those bytes are
  collected here in a ``bytearray`` and handed to aioquic once, when the
  frame is complete (or the stream unblocks).
* Bytes the HTTP/3 layer holds (a partial frame, data behind a blocked
  HEADERS) are held against the QUIC receive credit
  (:class:`~moqt_asgi.transport.aioquic_connection.CreditedQuicConnection`),
  so they count against the stream and connection windows.
* Server side, :attr:`WebTransportH3Connection.incomplete` lists the request
  streams whose HEADERS frame has not been completed yet, with when they
  started, so the server can reset slow ones (:meth:`abandon_request`).
* With a :attr:`WebTransportH3Connection.router` (a
  :class:`~moqt_asgi.webtransport.router.WebTransportRouter`),
  :meth:`~WebTransportH3Connection.handle_event` hands every WebTransport
  event to it (the QUIC resets and STOP_SENDING that concern sessions,
  stream data, datagrams, capsules on CONNECT streams) and returns only
  the events its owner handles itself.

aioquic's HTTP/3 internals (its stream records and receive hooks) are
reached through :mod:`moqt_asgi.transport.aioquic_connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioquic.h3.connection import ErrorCode, FrameType, HeadersState, ProtocolError, StreamType
from aioquic.h3.events import H3Event
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent

from ..protocol.wire import NeedMore, decode_varint
from ..transport.aioquic_connection import (
    CreditedQuicConnection,
    H3ConnectionHooks,
    Http3Stream,
    forget_h3_stream,
    h3_stream,
    mark_webtransport_stream,
)

if TYPE_CHECKING:
    from .router import WebTransportRouter

logger = logging.getLogger("moqt_asgi.webtransport")

MAX_HEADER_FRAME = 64 * 1024
"""Largest HEADERS or PUSH_PROMISE frame accepted (its encoded field section)."""
MAX_SETTINGS_FRAME = 16 * 1024
"""Largest SETTINGS frame accepted."""
MAX_PUSH_ID_FRAME = 8
"""A MAX_PUSH_ID frame holds one varint."""
_HEADER_FRAMES = (FrameType.HEADERS, FrameType.PUSH_PROMISE)


class ExcessiveLoad(ProtocolError):
    """A frame declares more than we accept: the connection is closed with ``H3_EXCESSIVE_LOAD``."""

    error_code = ErrorCode.H3_EXCESSIVE_LOAD


class MalformedFrame(ProtocolError):
    error_code = ErrorCode.H3_FRAME_ERROR


class WebTransportH3Connection(H3ConnectionHooks):
    """``H3Connection(enable_webtransport=True)`` with the changes listed in the module docstring."""

    def __init__(self, quic: QuicConnection, enable_webtransport: bool = True, *,
                 max_header_frame: int = MAX_HEADER_FRAME) -> None:
        self.quic = quic
        """The QUIC connection this HTTP/3 connection runs on."""
        self.is_client = bool(quic.configuration.is_client)
        self.router: WebTransportRouter | None = None
        """Set by the owner: WebTransport events go there instead of being returned (see the module docstring)."""
        self.max_header_frame = max_header_frame
        self._request_caps = {int(FrameType.HEADERS): max_header_frame, int(FrameType.PUSH_PROMISE): max_header_frame}
        self._pending: dict[int, bytearray] = {}
        """Per stream: bytes received while a frame is incomplete or the stream is blocked, not given to aioquic yet."""
        self._held: dict[int, int] = {}
        self._discarding: set[int] = set()
        self.incomplete: dict[int, float] = {}
        """Server: request streams whose HEADERS frame is not complete yet -> when their first byte came (monotonic)."""
        self._credit = quic if isinstance(quic, CreditedQuicConnection) else None
        super().__init__(quic, enable_webtransport=True)

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        """aioquic's ``handle_event``; with a :attr:`router`, only the events that are not WebTransport's."""
        router = self.router
        if router is None:
            return super().handle_event(event)
        router.handle_quic_event(event)
        return router.route(super().handle_event(event))

    # -- WebTransport streams we open
    def create_webtransport_stream(self, session_id: int, is_unidirectional: bool = False) -> int:
        stream_id: int = super().create_webtransport_stream(session_id, is_unidirectional)
        if not is_unidirectional:
            # aioquic only marks bidi WebTransport streams it *receives*; without this the
            # peer's reply would be parsed as HTTP/3 frames and kill the connection.
            mark_webtransport_stream(self, stream_id, session_id)
        return stream_id

    def finish_webtransport_sending(self, stream_id: int) -> None:
        """Our half of a bidi WebTransport stream ended: free its state once both halves did."""
        stream = h3_stream(self, stream_id)
        if stream is not None:
            stream.sending_ended = True
            if stream.is_ended():
                forget_h3_stream(self, stream_id)

    # -- slow request headers
    def abandon_request(self, stream_id: int) -> None:
        """Forget a request stream whose headers never completed; the caller stops and resets it.

        What it buffered is dropped (and its credit released), later bytes are
        discarded as they arrive, and no event is reported for it any more.
        """
        self.incomplete.pop(stream_id, None)
        self._discarding.add(stream_id)
        self._pending.pop(stream_id, None)
        stream = h3_stream(self, stream_id)
        if stream is not None:
            stream.buffer = b""
        self._hold(stream_id, 0)

    # -- receiving
    def receive_request_data(self, stream: Http3Stream, data: bytes, stream_ended: bool) -> list[H3Event]:
        if stream.frame_type == FrameType.WEBTRANSPORT_STREAM and stream.session_id is not None:
            return super().receive_request_data(stream, data, stream_ended)  # WebTransport data
        stream_id = stream.stream_id
        if stream_id in self._discarding:
            if stream_ended:
                self._discarding.discard(stream_id)
            return []
        if not self.is_client and stream.headers_recv_state == HeadersState.INITIAL and not stream_id % 4:
            self.incomplete.setdefault(stream_id, time.monotonic())
        pending = self._pending.get(stream_id)
        buffered = len(stream.buffer) + (len(pending) if pending is not None else 0)
        if stream.blocked or (stream.frame_type in _HEADER_FRAMES and stream.frame_size is not None
                              and not stream_ended and buffered + len(data) < stream.frame_size):
            # aioquic would copy and re-parse its whole buffer: collect in place until it can make progress
            if data:
                if pending is None:
                    pending = self._pending[stream_id] = bytearray()
                pending += data
            if stream_ended:
                stream.receiving_ended = True
            self._hold(stream_id, buffered + len(data))
            return []
        if pending is not None:
            del self._pending[stream_id]
            pending += data
            data = bytes(pending)
        self._check_frames(stream, data, self._request_caps)
        events = list(super().receive_request_data(stream, data, stream_ended))
        self._hold(stream_id, len(stream.buffer))
        if stream_id in self.incomplete and (stream.headers_recv_state != HeadersState.INITIAL
                                             or stream.session_id is not None):
            del self.incomplete[stream_id]
        return events

    def receive_uni_data(self, stream: Http3Stream, data: bytes, stream_ended: bool) -> list[H3Event]:
        control = stream.stream_type == StreamType.CONTROL
        if control:
            self._check_frames(stream, data, _CONTROL_CAPS)
        events = list(super().receive_uni_data(stream, data, stream_ended))
        if stream.stream_type == StreamType.CONTROL and stream.frame_size is not None:
            self._check_size(stream.frame_type, stream.frame_size, _CONTROL_CAPS)
        if self._pending:
            events.extend(self._resume_unblocked())
        if self._discarding:
            events = [event for event in events if getattr(event, "stream_id", None) not in self._discarding]
        return events

    def _resume_unblocked(self) -> list[H3Event]:
        """Streams the QPACK encoder stream just unblocked still have bytes with us: hand them over."""
        events: list[H3Event] = []
        for stream_id in list(self._pending):
            stream = h3_stream(self, stream_id)
            if stream is None:  # aioquic is done with it
                del self._pending[stream_id]
                self._hold(stream_id, 0)
            elif not stream.blocked:
                events.extend(self.receive_request_data(stream, b"", stream.receiving_ended))
        return events

    def stream_reset_received(self, stream_id: int) -> None:
        super().stream_reset_received(stream_id)
        self._pending.pop(stream_id, None)
        self.incomplete.pop(stream_id, None)
        self._discarding.discard(stream_id)
        self._hold(stream_id, 0)

    # -- checks and credit
    def _check_frames(self, stream: Http3Stream, data: bytes, caps: dict[int, int]) -> None:
        """Read the frame headers ``data`` completes or starts, and refuse the ones declaring too much."""
        if stream.frame_size is None:
            view: bytes = stream.buffer + data if stream.buffer else data
            pos = 0
        elif stream.frame_type == FrameType.WEBTRANSPORT_STREAM:
            return
        else:
            view = data
            pos = stream.frame_size - len(stream.buffer)  # the rest of the current frame
        end = len(view)
        while pos < end:
            try:
                frame_type, pos = decode_varint(view, pos)
                frame_size, pos = decode_varint(view, pos)
            except NeedMore:
                return
            if frame_type == FrameType.WEBTRANSPORT_STREAM:
                return
            self._check_size(frame_type, frame_size, caps)
            pos += frame_size

    @staticmethod
    def _check_size(frame_type: Any, frame_size: int, caps: dict[int, int]) -> None:
        cap = caps.get(frame_type)
        if cap is not None and frame_size > cap:
            name = FrameType(frame_type).name
            if frame_type == FrameType.MAX_PUSH_ID:
                raise MalformedFrame(f"{name} frame of {frame_size} bytes")
            raise ExcessiveLoad(f"{name} frame of {frame_size} bytes exceeds the limit of {cap}")

    def _hold(self, stream_id: int, size: int) -> None:
        """Hold ``size`` bytes of ``stream_id`` against the QUIC credit (whatever was held before is adjusted)."""
        before = self._held.get(stream_id, 0)
        if size == before:
            return
        if size:
            self._held[stream_id] = size
        else:
            del self._held[stream_id]
        credit = self._credit
        if credit is not None:
            if size > before:
                credit.hold(stream_id, size - before)
            else:
                credit.release(stream_id, before - size)


_CONTROL_CAPS = {int(FrameType.SETTINGS): MAX_SETTINGS_FRAME, int(FrameType.MAX_PUSH_ID): MAX_PUSH_ID_FRAME}


class HeaderDeadline:
    """Stops and resets request streams whose HEADERS frame is not complete ``timeout`` seconds after their first byte.

    Call :meth:`check` after handling QUIC events (it arms one event-loop
    timer while some request is incomplete) and :meth:`cancel` when the
    connection ends. The streams are reset with ``H3_REQUEST_INCOMPLETE``.
    """

    def __init__(self, h3: WebTransportH3Connection, timeout: float, transmit: Callable[[], None],
                 peer: object = None) -> None:
        self.h3 = h3
        self.timeout = timeout
        self.transmit = transmit
        self.peer = peer
        self.expired = 0
        """Request streams reset so far."""
        self._timer: asyncio.TimerHandle | None = None
        self._cancelled = False

    def check(self) -> None:
        if self._timer is None and self.h3.incomplete and not self._cancelled:
            oldest = min(self.h3.incomplete.values())
            delay = max(0.0, oldest + self.timeout - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def cancel(self) -> None:
        self._cancelled = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        limit = time.monotonic() - self.timeout
        expired = [stream_id for stream_id, since in self.h3.incomplete.items() if since <= limit]
        quic = self.h3.quic
        for stream_id in expired:
            self.h3.abandon_request(stream_id)
            for stop in (quic.stop_stream, quic.reset_stream):
                with contextlib.suppress(Exception):
                    stop(stream_id, int(ErrorCode.H3_REQUEST_INCOMPLETE))
        if expired:
            self.expired += len(expired)
            logger.info("%s: reset %d request stream(s) whose headers did not arrive within %.1fs", self.peer,
                        len(expired), self.timeout)
            self.transmit()
        self.check()

__all__ = ["MAX_HEADER_FRAME", "MAX_SETTINGS_FRAME", "ExcessiveLoad", "HeaderDeadline", "WebTransportH3Connection"]

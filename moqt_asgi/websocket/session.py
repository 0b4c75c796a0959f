"""MoQ's transport over one WebSocket: QUIC-like streams multiplexed with QMux.

A :class:`WebSocketConnection` is a :class:`~moqt_asgi.transport.base.Connection`
over a :class:`~.pipe.MessagePipe`, so the engine runs on it as on QUIC or
WebTransport. It keeps QUIC's semantics with the framings of :mod:`.qmux`:

* stream ids as QUIC numbers them (client bidi 0, 4, ...; server uni 3, 7, ...),
  ordered delivery per stream, FIN, RESET_STREAM and STOP_SENDING (a stream the
  peer stops is reset, as QUIC requires);
* flow control both ways on qmux: we send no more than the peer's credit
  (connection, stream and stream-count limits) and give credit as the
  engine reads, never more than a fixed window (:class:`WebSocketSettings`),
  so a peer cannot make us buffer without bound; the legacy framing has no
  flow control, so there we stop reading the WebSocket while more than the
  connection window waits unread (TCP then pushes back);
* one ordered byte stream underneath: what the engine writes waits in its
  stream's queue and goes out in frames of at most 16 KiB, streams taken in
  turn (the :class:`~.outbox.Outbox`, which also keeps the peer's connection
  credit); :meth:`WebSocketConnection.backlog` counts every byte not yet
  handed to the WebSocket, so the engine's scheduler drops whole old groups
  for a slow reader instead of queueing without bound;
* liveness: every ``QX_PING`` is answered; we ping on qmux-01/02 (and
  WebSocket-ping where the pipe can) and drop a peer silent for
  ``idle_timeout`` (the smaller of ours and the peer's);
* closing: APPLICATION_CLOSE (or CONNECTION_CLOSE for a framing error) as
  the last message, then the WebSocket close.

Codes cross the wire as on native QUIC: the connection's ``error_codes``
map translates ours on reset, stop and close, with no WebTransport mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from ..protocol.codes import app_to_http, clamp_app_code, http_to_app
from ..protocol.errors import ErrorCode, SessionClosed, StreamError
from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..transport.base import BidiStream, Connection, ReceiveStream, SendStream
from ..transport.streams import next_stream
from . import qmux
from .outbox import Outbox
from .pipe import MessagePipe
from .qmux import Framing, QMuxError
from .settings import DEFAULT_SETTINGS, LEGACY_MAX_STREAMS, UNLIMITED, WebSocketSettings
from .streams import WebSocketStream

logger = logging.getLogger("moqt_asgi.websocket")

T = TypeVar("T")


class WebSocketConnection(Connection):
    """One MoQ session's transport over a WebSocket (see the module docstring).

    ``framing`` comes from the negotiated subprotocol
    (:func:`~.qmux.parse_subprotocol`); ``is_client`` decides the stream
    numbering. :meth:`start` runs it (the reader, the writer and the
    keep-alive tasks); :meth:`finished` waits until the closing message
    left and the WebSocket is closed.
    """

    def __init__(self, pipe: MessagePipe, framing: Framing, *, is_client: bool, limits: Limits = DEFAULT_LIMITS,
                 settings: WebSocketSettings = DEFAULT_SETTINGS, peer_address: tuple[str, int] | None = None) -> None:
        self.pipe = pipe
        self.framing = framing
        self.is_client = is_client
        self.limits = limits
        self.settings = settings
        self._peer_address = peer_address if peer_address is not None else pipe.peer_address
        self._streams: dict[int, WebSocketStream] = {}
        self._accept_bi: asyncio.Queue[WebSocketStream] = asyncio.Queue()
        self._accept_uni: asyncio.Queue[WebSocketStream] = asyncio.Queue()
        self._closed: SessionClosed | None = None
        self._closed_event = asyncio.Event()
        self._done = asyncio.Event()
        self._writable_waiters: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox = Outbox(framing, self.stream_ended)
        self._shutdown_deadline: float | None = None
        self._shutdown_callbacks: list[Callable[[float], None]] = []
        # peer's credit towards us (send side); the legacy framing has no limits
        unlimited = not framing.qmux
        self._peer_params: qmux.TransportParameters | None = None
        self._params_ready = asyncio.Event()
        self._next_local = {False: 0, True: 0}  # uni? -> next index
        self._local_limit = {False: UNLIMITED, True: UNLIMITED} if unlimited else \
            {False: 0, True: 0}
        self._awaiting_id: dict[bool, deque[WebSocketStream]] = {False: deque(), True: deque()}
        self._unassigned: weakref.WeakSet[WebSocketStream] = weakref.WeakSet()
        if unlimited:
            self._params_ready.set()
        # our credit towards the peer (receive side)
        streams = settings.max_streams if framing.qmux else LEGACY_MAX_STREAMS
        self._recv_max = settings.connection_window
        self._received = 0
        self._held = 0
        self._next_remote = {False: 0, True: 0}
        self._remote_limit = {False: streams, True: streams}
        self._remote_retired = {False: 0, True: 0}
        self._stream_window = {False: streams, True: streams}
        self._read_resume = asyncio.Event()
        # liveness
        self._last_received = time.monotonic()
        self._ping_sequence = 0
        self._idle_timeout = settings.idle_timeout
        self.messages_received = 0
        self.messages_sent = 0

    # -- life
    def start(self) -> None:
        """Send our transport parameters (qmux) and start the reader, writer and keep-alive tasks."""
        if self._tasks:
            return
        if self.framing.qmux:
            s = self.settings
            params = qmux.TransportParameters(
                max_idle_timeout=int(s.idle_timeout * 1000), initial_max_data=s.connection_window,
                max_stream_data_bidi_local=s.stream_window, max_stream_data_bidi_remote=s.stream_window,
                max_stream_data_uni=s.stream_window, max_streams_bidi=s.max_streams, max_streams_uni=s.max_streams)
            self._outbox.control.append(qmux.encode_parameters(params, self.framing))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._reader()), loop.create_task(self._writer()),
                       loop.create_task(self._keepalive())]
        self._outbox.wake.set()

    async def finished(self) -> None:
        """Wait until the session ended, its closing message left and the WebSocket closed."""
        if not self._tasks:
            with contextlib.suppress(Exception):
                await self.pipe.close()
            return
        await self._done.wait()

    @property
    def is_closed(self) -> bool:
        return self._closed is not None

    @property
    def close_reason(self) -> SessionClosed | None:
        return self._closed

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return self._peer_address

    @property
    def peer_parameters(self) -> qmux.TransportParameters | None:
        """The peer's QX_TRANSPORT_PARAMETERS once they arrived (qmux only)."""
        return self._peer_params

    # -- Connection: streams
    def _local_id(self, uni: bool, index: int) -> int:
        return (index << 2) | (2 if uni else 0) | (0 if self.is_client else 1)

    async def _open(self, uni: bool) -> WebSocketStream:
        """A new stream of ours; it is numbered when it first sends (see :class:`WebSocketStream`)."""
        if self._closed is not None:
            raise self._closed
        stream = WebSocketStream(self, self._local_id(uni, self._next_local[uni]), readable=not uni, writable=True,
                                 send_max=0, recv_max=self.settings.stream_window if self.framing.qmux else UNLIMITED,
                                 assigned=False)
        self._unassigned.add(stream)
        return stream

    def _assign(self, stream: WebSocketStream) -> None:
        """Number ``stream`` now if the peer's stream limit allows, else queue it until MAX_STREAMS."""
        uni = stream.uni
        if not self._params_ready.is_set() or self._next_local[uni] >= self._local_limit[uni] \
                or self._awaiting_id[uni]:
            if stream not in self._awaiting_id[uni]:
                self._awaiting_id[uni].append(stream)
            return
        self._number(stream)

    def _number(self, stream: WebSocketStream) -> None:
        uni = stream.uni
        index = self._next_local[uni]
        self._next_local[uni] = index + 1
        stream.stream_id = self._local_id(uni, index)
        stream.assigned = True
        stream.send_max = self._initial_send_max(stream.stream_id)
        self._unassigned.discard(stream)
        self._streams[stream.stream_id] = stream

    def _assign_waiting(self) -> None:
        """The peer's stream limit or parameters arrived: number the streams that wait, in order."""
        for uni in (False, True):
            queue = self._awaiting_id[uni]
            while queue and self._params_ready.is_set() and self._next_local[uni] < self._local_limit[uni]:
                stream = queue.popleft()
                self._number(stream)
                self._outbox.schedule(stream)
        self._outbox.wake.set()

    def _initial_send_max(self, stream_id: int) -> int:
        params = self._peer_params
        if params is None:
            return UNLIMITED
        if stream_id & 2:
            return params.max_stream_data_uni
        ours = bool(stream_id & 1) != self.is_client
        return params.max_stream_data_bidi_remote if ours else params.max_stream_data_bidi_local

    async def open_bi(self) -> BidiStream:
        return await self._open(False)

    async def open_uni(self) -> SendStream:
        return await self._open(True)

    async def _accept(self, queue: asyncio.Queue[WebSocketStream]) -> WebSocketStream:
        if self._closed is not None:
            raise self._closed
        stream = await next_stream(queue, self._closed_event)
        if stream is None:
            raise self._closed or SessionClosed(0, "closed")
        return stream

    async def accept_bi(self) -> BidiStream:
        return await self._accept(self._accept_bi)

    async def accept_uni(self) -> ReceiveStream:
        return await self._accept(self._accept_uni)

    # -- Connection: closing
    def close(self, code: int = 0, reason: str = "") -> None:
        """APPLICATION_CLOSE with ``code`` (our code, mapped by ``error_codes``), then the WebSocket close."""
        if self._closed is not None:
            return
        wire = clamp_app_code(self.error_codes.session_out(code))
        self._terminate(SessionClosed(code, reason, remote=False), qmux.Close(wire, reason))

    def _fail(self, error: QMuxError) -> None:
        logger.info("WebSocket session with %s: %s", self._peer_address, error.message)
        self._terminate(SessionClosed(int(ErrorCode.PROTOCOL_VIOLATION), error.message, remote=False),
                        qmux.Close(error.code, error.message, application=False))

    def abort(self) -> None:
        """End now, without waiting for a peer that reads nothing: no closing message, the tasks stop and the
        WebSocket closes (what :meth:`finished` waits for)."""
        self._terminate(SessionClosed(int(ErrorCode.TRANSPORT), "aborted", remote=False), None)
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> SessionClosed:
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    def _terminate(self, error: SessionClosed, last: qmux.Close | None) -> None:
        """Mark closed, end every stream and waiter; the writer sends ``last`` (if any) and closes the pipe."""
        if self._closed is not None:
            return
        self._closed = error
        self._closed_event.set()
        for stream in [*self._streams.values(), *self._unassigned]:
            stream.discard_pending()
            stream.connection_closed(error, error.code)
        self._streams.clear()
        self._unassigned.clear()
        for waiting in self._awaiting_id.values():
            waiting.clear()
        for queue in (self._accept_bi, self._accept_uni):
            while not queue.empty():
                queue.get_nowait()
        self._outbox.clear(None if last is None else qmux.encode_frame(last, self.framing))
        self._read_resume.set()
        self._wake_writers()

    # -- the server is stopping
    def request_shutdown(self, timeout: float) -> None:
        """Server side: the server is stopping and closes this session in ``timeout`` seconds (first call counts)."""
        if self._shutdown_deadline is None:
            self._shutdown_deadline = time.monotonic() + max(0.0, timeout)
            self._fire_shutdown()

    def on_shutdown(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(seconds_left)`` once when the server is stopping (at once if it already is)."""
        self._shutdown_callbacks.append(callback)
        if self._shutdown_deadline is not None:
            self._fire_shutdown()

    def _fire_shutdown(self) -> None:
        callbacks, self._shutdown_callbacks = self._shutdown_callbacks, []
        left = max(0.0, (self._shutdown_deadline or 0.0) - time.monotonic())
        for callback in callbacks:
            try:
                callback(left)
            except Exception:
                logger.exception("on_shutdown callback failed")

    # -- backpressure
    def backlog(self) -> int:
        return self._outbox.backlog

    def on_writable(self, callback: Callable[[], None]) -> None:
        if self._closed is not None:
            callback()
        else:
            self._writable_waiters.append(callback)

    def _wake_writers(self) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for waiter in waiters:
            try:
                waiter()
            except Exception:
                logger.exception("on_writable callback failed")

    # -- codes
    def _code_out(self, stream_id: int, code: int) -> int:
        codes = self.error_codes
        wire = codes.stream_out(code, bidi=not stream_id & 2)
        return app_to_http(clamp_app_code(wire)) if codes.wt_mapped_on_quic else wire

    def _code_in(self, stream_id: int, wire: int) -> int:
        unmapped = http_to_app(wire)
        return self.error_codes.stream_in(wire if unmapped is None else unmapped, bidi=not stream_id & 2)

    # -- sending (called by the streams)
    def stream_write(self, stream: WebSocketStream, data: bytes, end: bool) -> None:
        """A stream's write: queue it for the writer (numbering the stream first if it is new)."""
        if self._closed is not None:
            raise self._closed
        if data:
            if stream.pending_size + len(data) > self.settings.send_buffer:
                stream.reset(int(ErrorCode.TOO_LARGE))
                raise StreamError(ErrorCode.TOO_LARGE, f"stream {stream.stream_id}: more than "
                                  f"{self.settings.send_buffer} bytes queued unsent")
            stream.pending.append(bytes(data))
            stream.pending_size += len(data)
            self._outbox.backlog += len(data)
        if end:
            stream.fin_queued = True
        if not stream.assigned:
            self._assign(stream)
            if not stream.assigned:
                return  # sent once the peer allows one more stream
        self._outbox.schedule(stream)

    def stream_reset(self, stream: WebSocketStream, code: int) -> None:
        """A stream's reset: drop what it queued, RESET_STREAM at what it sent."""
        if self._closed is not None:
            return
        stream.discard_pending()
        stream.fin_sent = True
        if not stream.assigned:  # the peer never heard of it: nothing to say
            with contextlib.suppress(ValueError):
                self._awaiting_id[stream.uni].remove(stream)
            return
        self._outbox.send_control(qmux.ResetStream(stream.stream_id, self._code_out(stream.stream_id, code),
                                            stream.send_offset))

    def stream_stop(self, stream: WebSocketStream, code: int) -> None:
        """A stream's stop: STOP_SENDING."""
        if self._closed is not None or stream.recv_final is not None or not stream.assigned:
            return
        self._outbox.send_control(qmux.StopSending(stream.stream_id, self._code_out(stream.stream_id, code)))

    def stream_ended(self, stream: WebSocketStream) -> None:
        """A half of ``stream`` ended: forget it once both did (a peer stream then frees a stream credit)."""
        if not stream.assigned or not stream.done or stream.pending_size or (stream.fin_queued and not stream.fin_sent):
            return
        if self._streams.pop(stream.stream_id, None) is None:
            return
        remote = bool(stream.stream_id & 1) == self.is_client
        if remote:
            uni = bool(stream.stream_id & 2)
            self._remote_retired[uni] += 1
            self._grant_streams(uni)

    def _grant_streams(self, uni: bool) -> None:
        """Raise the peer's stream limit as its streams end (never beyond ``max_streams`` open at once)."""
        window = self._stream_window[uni]
        limit = self._remote_retired[uni] + window
        headroom = self._remote_limit[uni] - self._next_remote[uni]
        if limit > self._remote_limit[uni] and headroom <= window // 2:
            self._remote_limit[uni] = limit
            if self.framing.qmux:
                self._outbox.send_control(qmux.MaxStreams(not uni, limit))

    def stream_discarded(self, size: int) -> None:
        """``size`` queued bytes of a stream were dropped unsent."""
        self._outbox.backlog -= size

    def credit_held(self, size: int) -> None:
        """``size`` received bytes wait unread in a stream's buffer."""
        self._held += size

    def credit_released(self, stream: WebSocketStream, size: int) -> None:
        """``size`` held bytes were read or dropped: give the peer credit again when due."""
        self._held -= size
        if stream.assigned and stream.stream_id in self._streams:
            self._grant_stream_credit(stream)
        self._grant_connection_credit()
        if self._held <= self.settings.connection_window:
            self._read_resume.set()

    def _grant_stream_credit(self, stream: WebSocketStream) -> None:
        if not self.framing.qmux or stream.recv_final is not None or self._closed is not None:
            return
        window = self.settings.stream_window
        consumed = stream.recv_offset - stream.credit.held
        if stream.recv_max - consumed <= window // 2:
            stream.recv_max = consumed + window
            self._outbox.send_control(qmux.MaxStreamData(stream.stream_id, stream.recv_max))

    def _grant_connection_credit(self) -> None:
        if not self.framing.qmux or self._closed is not None:
            return
        window = self.settings.connection_window
        consumed = self._received - self._held
        if self._recv_max - consumed <= window // 2:
            self._recv_max = consumed + window
            self._outbox.send_control(qmux.MaxData(self._recv_max))

    # -- the writer task
    async def _writer(self) -> None:
        try:
            while True:
                message = self._outbox.next_message(self._closed is not None)
                if message is None:
                    if self._closed is not None:
                        break
                    self._outbox.wake.clear()
                    await self._outbox.wake.wait()
                    continue
                try:
                    if self._closed is not None:
                        await asyncio.wait_for(self.pipe.send(message), self.settings.close_timeout)
                    else:
                        await self.pipe.send(message)
                except (ConnectionError, OSError, TimeoutError) as exc:
                    self._terminate(SessionClosed(int(ErrorCode.TRANSPORT), f"WebSocket gone: {exc}", remote=True),
                                    None)
                    break
                self.messages_sent += 1
                if self._writable_waiters:
                    self._wake_writers()
        finally:
            with contextlib.suppress(Exception):  # BaseException: a cancelled writer still closes the pipe
                await asyncio.wait_for(self.pipe.close(), self.settings.close_timeout)
            self._wake_writers()
            self._done.set()
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    # -- the keep-alive task
    async def _keepalive(self) -> None:
        interval = self.settings.ping_interval
        while self._closed is None:
            await asyncio.sleep(min(interval, self._idle_timeout / 3) if self._idle_timeout > 0 else interval)
            if self._closed is not None:
                return
            if self._idle_timeout > 0 and (self.framing.records or self.pipe.last_activity is not None):
                heard = max(self._last_received, self.pipe.last_activity or 0.0)
                if time.monotonic() - heard > self._idle_timeout:
                    logger.info("WebSocket session with %s idle for %.1fs; dropping it", self._peer_address,
                                self._idle_timeout)
                    self._terminate(SessionClosed(int(ErrorCode.TIMEOUT), "idle timeout", remote=True), None)
                    return
            if self.framing.records:
                self._outbox.send_control(qmux.Ping(self._ping_sequence))
                self._ping_sequence += 1
            with contextlib.suppress(Exception):
                await self.pipe.ping()

    # -- the reader task
    async def _reader(self) -> None:
        limit = self.framing.receive_limit()
        try:
            while self._closed is None:
                if not self.framing.qmux and self._held > self.settings.connection_window:
                    self._read_resume.clear()
                    await self._read_resume.wait()  # legacy: TCP pushes back while the engine catches up
                    continue
                try:
                    message = await self.pipe.receive()
                except Exception as exc:  # the pipe broke: the WebSocket is gone
                    message = None
                    logger.debug("WebSocket receive failed: %r", exc)
                if message is None:
                    self._terminate(SessionClosed(int(ErrorCode.TRANSPORT), "WebSocket closed", remote=True), None)
                    return
                self._last_received = time.monotonic()
                self.messages_received += 1
                if isinstance(message, str):
                    raise QMuxError("text frames are not valid for QMux", qmux.TEXT_MESSAGE)
                for frame in qmux.decode_message(message, self.framing, limit):
                    self._handle(frame)
                    if self._closed is not None:
                        return
        except QMuxError as exc:
            self._fail(exc)

    def _handle(self, frame: qmux.Frame) -> None:
        if isinstance(frame, qmux.TransportParameters):
            self._on_parameters(frame)
        elif self.framing is Framing.QMUX02 and self._peer_params is None:
            raise QMuxError("protocol violation: transport parameters must come first")
        elif isinstance(frame, qmux.StreamFrame):
            self._on_stream(frame)
        elif isinstance(frame, qmux.ResetStream):
            self._on_reset(frame)
        elif isinstance(frame, qmux.StopSending):
            self._on_stop(frame)
        elif isinstance(frame, qmux.MaxData):
            if self._outbox.raise_credit(frame.maximum):
                self._outbox.unblock(self._streams.values())
        elif isinstance(frame, qmux.MaxStreamData):
            stream = self._sending_stream(frame.stream_id)
            if stream is not None and frame.maximum > stream.send_max:
                stream.send_max = frame.maximum
                if stream.pending_size or stream.fin_queued:
                    self._outbox.schedule(stream)
        elif isinstance(frame, qmux.MaxStreams):
            uni = not frame.bidi
            if frame.maximum > self._local_limit[uni]:
                self._local_limit[uni] = frame.maximum
                self._assign_waiting()
        elif isinstance(frame, qmux.Ping):
            if not frame.response:
                self._outbox.send_control(qmux.Ping(frame.sequence, response=True))
        elif isinstance(frame, qmux.Close):
            code = self.error_codes.session_in(frame.code) if frame.application else int(ErrorCode.TRANSPORT)
            self._terminate(SessionClosed(code, frame.reason, remote=True), None)
        elif isinstance(frame, qmux.Blocked):
            return
        else:  # DATAGRAM, RESET_STREAM_AT: we advertised neither
            raise QMuxError(f"protocol violation: unexpected {type(frame).__name__}")

    def _on_parameters(self, params: qmux.TransportParameters) -> None:
        if not self.framing.qmux:
            raise QMuxError("protocol violation: transport parameters on the legacy framing")
        if self._peer_params is not None:
            raise QMuxError("protocol violation: transport parameters sent twice")
        self._peer_params = params
        self._outbox.raise_credit(params.initial_max_data)
        self._local_limit = {False: max(self._local_limit[False], params.max_streams_bidi),
                             True: max(self._local_limit[True], params.max_streams_uni)}
        self._outbox.record_size = params.max_record_size
        if params.max_idle_timeout and self.framing.records:
            self._idle_timeout = min(self._idle_timeout, params.max_idle_timeout / 1000) if self._idle_timeout \
                else params.max_idle_timeout / 1000
        self._params_ready.set()
        self._assign_waiting()
        self._outbox.unblock(self._streams.values())

    def _classify(self, stream_id: int) -> tuple[bool, bool, int]:
        """``(remote, uni, index)`` of a stream id."""
        remote = bool(stream_id & 1) == self.is_client
        return remote, bool(stream_id & 2), stream_id >> 2

    def _stream_for(self, stream_id: int) -> WebSocketStream | None:
        """The stream a frame names, opening peer streams up to it; None if it already ended (ignore the frame)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        remote, uni, index = self._classify(stream_id)
        if not remote:
            if index >= self._next_local[uni]:
                raise QMuxError(f"invalid stream id: {stream_id} was never opened")
            return None
        if index < self._next_remote[uni]:
            return None
        if index >= self._remote_limit[uni]:
            raise QMuxError(f"stream limit exceeded: stream {stream_id} (limit {self._remote_limit[uni]})")
        for i in range(self._next_remote[uni], index + 1):
            sid = (i << 2) | (2 if uni else 0) | (1 if self.is_client else 0)
            new = WebSocketStream(self, sid, readable=True, writable=not uni,
                                  send_max=self._initial_send_max(sid),
                                  recv_max=self.settings.stream_window if self.framing.qmux else UNLIMITED)
            self._streams[sid] = new
            (self._accept_uni if uni else self._accept_bi).put_nowait(new)
        self._next_remote[uni] = index + 1
        return self._streams[stream_id]

    def _receiving_stream(self, stream_id: int) -> WebSocketStream | None:
        remote, uni, _ = self._classify(stream_id)
        if uni and not remote:
            raise QMuxError(f"invalid stream id: {stream_id} is one of our send-only streams")
        return self._stream_for(stream_id)

    def _sending_stream(self, stream_id: int) -> WebSocketStream | None:
        remote, uni, _ = self._classify(stream_id)
        if uni and remote:
            raise QMuxError(f"invalid stream id: {stream_id} is one of the peer's send-only streams")
        return self._stream_for(stream_id)

    def _on_stream(self, frame: qmux.StreamFrame) -> None:
        stream = self._receiving_stream(frame.stream_id)
        size = len(frame.data)
        if stream is None:  # ended already: its bytes still count against the connection's credit
            self._count_received(size)
            self._grant_connection_credit()
            return
        offset = stream.recv_offset if frame.offset is None else frame.offset
        data = frame.data
        if offset > stream.recv_offset:
            raise QMuxError(f"protocol violation: stream {frame.stream_id} skips from offset "
                            f"{stream.recv_offset} to {offset}")
        end = offset + size
        if stream.recv_final is not None and (end > stream.recv_final or (frame.fin and end != stream.recv_final)):
            raise QMuxError(f"protocol violation: stream {frame.stream_id} data beyond its final size")
        if end > stream.recv_max:
            raise QMuxError(f"flow control error: stream {frame.stream_id} sent past its limit {stream.recv_max}")
        fresh = data[stream.recv_offset - offset:] if end > stream.recv_offset else b""
        if fresh:
            self._count_received(len(fresh))
            stream.recv_offset = end
        if frame.fin:
            stream.recv_final = end
        if fresh or frame.fin:
            stream.deliver(fresh, frame.fin)
        self._grant_stream_credit(stream)
        self._grant_connection_credit()
        self.stream_ended(stream)

    def _count_received(self, size: int) -> None:
        self._received += size
        if self.framing.qmux and self._received > self._recv_max:
            raise QMuxError(f"flow control error: the connection sent past its limit {self._recv_max}")

    def _on_reset(self, frame: qmux.ResetStream) -> None:
        stream = self._receiving_stream(frame.stream_id)
        if stream is None:
            return
        if self.framing.qmux and frame.final_size > stream.recv_offset:
            if frame.final_size > stream.recv_max:
                raise QMuxError(f"flow control error: stream {frame.stream_id} final size past its limit")
            self._count_received(frame.final_size - stream.recv_offset)
            stream.recv_offset = frame.final_size
        stream.recv_final = stream.recv_offset
        stream.peer_reset(self._code_in(frame.stream_id, frame.code))
        self._grant_connection_credit()
        self.stream_ended(stream)

    def _on_stop(self, frame: qmux.StopSending) -> None:
        stream = self._sending_stream(frame.stream_id)
        if stream is None:
            return
        unfinished = not stream.fin_sent
        stream.discard_pending()
        stream.peer_stopped(self._code_in(frame.stream_id, frame.code))
        if unfinished:  # QUIC: a stopped sender resets the stream, echoing the code
            stream.fin_sent = True
            self._outbox.send_control(qmux.ResetStream(stream.stream_id, frame.code, stream.send_offset))
        self._wake_writers()
        self.stream_ended(stream)


__all__ = ["DEFAULT_SETTINGS", "WebSocketConnection", "WebSocketSettings", "WebSocketStream"]

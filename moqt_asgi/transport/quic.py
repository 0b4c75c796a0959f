"""Native QUIC transport on aioquic.

:class:`QuicProtocol` is an aioquic protocol whose events feed a
:class:`QuicTransport` (the engine's :class:`~.base.Connection`). Nothing
here awaits application code: event handlers only push bytes into bounded
buffers and wake waiters. Transmission is coalesced to once per event-loop
iteration, and the engine sees how many bytes are queued but unsent so it can
decide what to hand over next (aioquic itself sends streams round-robin).

Receive credit: the aioquic connection is a
:class:`~.aioquic_connection.CreditedQuicConnection` (adopted when the
protocol is made), and each readable stream's :class:`ReceiveBuffer` holds
its unread bytes against that credit, so a peer that writes faster than the
engine reads is slowed down by QUIC flow control (one stream window per
stream, one connection window in all) instead of being buffered.

The QUIC stack is a backend (:class:`QuicBackend`): aioquic here
(:data:`AIOQUIC`), or qh3 (:mod:`moqt_asgi.transport.qh3_connection`, when
installed). :class:`QuicTransport` reaches the stack only through its
connection's public methods and the backend's accessors; the protocol logic
(:class:`MoqProtocolMixin`) is shared by both stacks' protocol classes.

Reset, stop-sending and close codes are translated with the connection's
``error_codes`` map (see :mod:`moqt_asgi.protocol.codes`). Incoming stream
codes that lie in WebTransport's HTTP/3 range are unmapped first, whatever
the map: moq-rs sends them that way on native QUIC on every version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import stream_is_client_initiated, stream_is_unidirectional

from ..protocol.codes import app_to_http, clamp_app_code, http_to_app
from ..protocol.errors import ErrorCode, SessionClosed, StreamError
from ..protocol.limits import DEFAULT_LIMITS, Limits
from .aioquic_connection import (
    IDLE_TIMEOUT_REASON,
    adopt_quic,
    connected_waiter,
    peer_address,
    protocol_quic,
    send_backlog,
    set_stream_limits,
    stream_credit,
)
from .base import BidiStream, Connection, ReceiveStream, SendStream
from .buffers import Credit
from .streams import BufferedStream, next_stream
from .transmit import TransmitSoon
from .udp import grow_socket_buffers

logger = logging.getLogger("moqt_asgi.quic")


@dataclass(frozen=True)
class QuicBackend:
    """What :class:`QuicTransport` needs from a QUIC stack: its event classes and a few accessors."""

    name: str
    stream_data: type[Any]
    stream_reset: type[Any]
    stop_sending: type[Any]
    terminated: type[Any]
    handshake_completed: type[Any]
    protocol_negotiated: type[Any]
    send_backlog: Callable[[Any, int], int]
    """Bytes written to a stream that the stack has not sent yet."""
    peer_address: Callable[[Any], tuple[str, int] | None]
    stream_credit: Callable[[Any, int], Credit | None]
    """The receive credit a readable stream's buffer reports to (None: the stack grants credit itself)."""
    early_data_accepted: Callable[[Any], bool]
    """Server, at ALPN negotiation: whether the client's 0-RTT data was accepted."""
    call_errors: tuple[type[Exception], ...] = (ValueError, RuntimeError)
    """What the stack's stream calls raise for a stream that ended or a connection that closed before its
    events reached us (aioquic: ValueError, RuntimeError; qh3 adds its ``QuicConnectionError``)."""
    connected_waiter: Callable[[Any], asyncio.Future[None] | None] = lambda protocol: None
    """The future the stack's ``wait_connected`` waits on (see :meth:`MoqProtocolMixin.wait_connected`)."""


AIOQUIC = QuicBackend(
    name="aioquic", stream_data=events.StreamDataReceived, stream_reset=events.StreamReset,
    stop_sending=events.StopSendingReceived, terminated=events.ConnectionTerminated,
    handshake_completed=events.HandshakeCompleted, protocol_negotiated=events.ProtocolNegotiated,
    send_backlog=send_backlog, peer_address=peer_address, stream_credit=stream_credit,
    early_data_accepted=lambda quic: bool(quic.tls.early_data_accepted), connected_waiter=connected_waiter)
"""aioquic: receive credit through :class:`~.aioquic_connection.CreditedQuicConnection`."""


class QuicStream(BufferedStream):
    """A QUIC stream as the engine sees it; uni streams use only one half."""

    __slots__ = ("_connection",)

    def __init__(self, connection: QuicTransport, stream_id: int, *, readable: bool, writable: bool) -> None:
        self._connection = connection
        super().__init__(stream_id, readable=readable, writable=writable, limit=connection.limits.max_stream_buffer,
                         credit=connection.backend.stream_credit(connection.quic, stream_id) if readable else None)

    def _send_data(self, data: bytes, end: bool) -> None:
        self._connection._send(self, data, end)

    def _send_reset(self, code: int) -> None:
        self._connection._reset_stream(self.stream_id, code)

    def _send_stop(self, code: int) -> None:
        self._connection._stop_stream(self.stream_id, code)

    def _sending_ended(self) -> None:
        self._connection._maybe_forget(self)

    def _receiving_ended(self) -> None:
        self._connection._maybe_forget(self)

    def backlog(self) -> int:
        return self._connection.backend.send_backlog(self._connection.quic, self.stream_id)


class QuicTransport(Connection):
    """The engine's view of one QUIC connection (aioquic's, or qh3's with ``backend``)."""

    def __init__(self, protocol: Any, limits: Limits, backend: QuicBackend = AIOQUIC) -> None:
        self.protocol = protocol
        self.backend = backend
        """The QUIC stack the connection runs on."""
        self.quic: Any = protocol_quic(protocol)
        """The stack's ``QuicConnection`` (a :class:`CreditedQuicConnection` under :class:`QuicProtocol`)."""
        self.limits = limits
        self.alpn: str | None = None
        self.resumed = False
        """The TLS handshake resumed an earlier session from a ticket (no certificate exchange)."""
        self.early_data_accepted = False
        """0-RTT early data was offered with a ticket and accepted by the server."""
        self.handshake_complete = False
        """The TLS handshake has completed (a 0-RTT session may run before it does)."""
        self.started_early = False
        """Server: the session started on 0-RTT data, before the handshake completed.
        Client: the session's first bytes (SETUP, if the version has one) went out as 0-RTT data."""
        self._streams: dict[int, QuicStream] = {}
        # Streams we stopped reading: aioquic still reports what the peer sent before it saw
        # STOP_SENDING, which must not look like a new stream once we have forgotten the old one.
        self._stopped: set[int] = set()
        self._pending: set[int] = set()
        self._backlog: int | None = None  # cached sum of the unsent bytes of _pending; None = recount
        self._accept_bi: asyncio.Queue[QuicStream] = asyncio.Queue()
        self._accept_uni: asyncio.Queue[QuicStream] = asyncio.Queue()
        self._closed: SessionClosed | None = None
        self._closed_event = asyncio.Event()
        self._writable_waiters: list[Callable[[], None]] = []
        self._transmitter = TransmitSoon(self._flush, asyncio.get_event_loop())

    # -- properties
    @property
    def is_closed(self) -> bool:
        return self._closed is not None

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return self.backend.peer_address(self.quic)

    # -- opening and accepting
    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    async def open_bi(self) -> BidiStream:
        return self._open(unidirectional=False)

    async def open_uni(self) -> SendStream:
        return self._open(unidirectional=True)

    def _open(self, *, unidirectional: bool) -> QuicStream:
        self._check_open()
        try:
            sid = self.quic.get_next_available_stream_id(is_unidirectional=unidirectional)
            # aioquic hands out the same id until the stream exists: create it now, so that two streams
            # opened before either writes (a group header waiting in the scheduler) never share an id
            self.quic.send_stream_data(sid, b"")
        except self.backend.call_errors as exc:  # the stack closed the connection before we heard of it (qh3)
            raise SessionClosed(0, f"the QUIC connection is closed: {exc}", remote=False) from None
        stream = QuicStream(self, sid, readable=not unidirectional, writable=True)
        self._streams[sid] = stream
        return stream

    async def _accept(self, queue: asyncio.Queue[QuicStream]) -> QuicStream:
        self._check_open()
        stream = await next_stream(queue, self._closed_event)
        if stream is None:
            raise self._closed or SessionClosed(0, "closed")
        return stream

    async def accept_bi(self) -> BidiStream:
        return await self._accept(self._accept_bi)

    async def accept_uni(self) -> ReceiveStream:
        return await self._accept(self._accept_uni)

    # -- closing
    def close(self, code: int = 0, reason: str = "") -> None:
        if self._closed is not None:
            return
        self._terminate(SessionClosed(code, reason, remote=False))
        self.protocol.close(error_code=self.error_codes.session_out(code), reason_phrase=reason)

    async def wait_closed(self) -> SessionClosed:
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    def _terminate(self, error: SessionClosed) -> None:
        if self._closed is not None:
            return
        self._closed = error
        self._closed_event.set()
        for stream in list(self._streams.values()):
            stream.connection_closed(error, error.code)
        self._streams.clear()
        self._stopped.clear()
        self._pending.clear()
        self._backlog = None
        self._wake_writers()

    # -- backpressure
    def backlog(self) -> int:
        # Asked before every write, so it is counted once and then kept up to date: between two
        # transmits what aioquic holds unsent only grows by what _send hands it. aioquic sends only
        # in transmit() and changes stream state only while handling a datagram or a timer, which
        # always raises events (handle_event) or ends in a transmit; both drop the cached count.
        total = self._backlog
        if total is None:
            total = 0
            done = []
            quic, unsent = self.quic, self.backend.send_backlog
            for sid in self._pending:
                size = unsent(quic, sid)
                if size:
                    total += size
                else:
                    done.append(sid)
            for sid in done:
                self._pending.discard(sid)
            self._backlog = total
        return total

    def on_writable(self, callback: Callable[[], None]) -> None:
        if self._closed is not None:
            callback()
        else:
            self._writable_waiters.append(callback)

    def _wake_writers(self) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for waiter in waiters:
            waiter()

    # -- sending (called by QuicStream)
    def _send(self, stream: QuicStream, data: bytes, end: bool) -> None:
        # Runs once per frame: _check_open is inlined, and the transmission is requested only once per iteration.
        if self._closed is not None:
            raise self._closed
        try:
            self.quic.send_stream_data(stream.stream_id, data, end_stream=end)
        except self.backend.call_errors as exc:  # stream already finished, reset under us, or connection closed
            raise StreamError(ErrorCode.CANCEL, str(exc)) from None
        self._pending.add(stream.stream_id)
        if self._backlog is not None:
            self._backlog += len(data)
        transmitter = self._transmitter
        if not transmitter.scheduled:
            transmitter.request()

    # -- error codes: ours (flat) <-> the wire
    def _stream_code_out(self, stream_id: int, code: int) -> int:
        codes = self.error_codes
        wire = codes.stream_out(code, bidi=not stream_id & 2)
        return app_to_http(clamp_app_code(wire)) if codes.wt_mapped_on_quic else wire

    def _stream_code_in(self, stream_id: int, wire: int) -> int:
        unmapped = http_to_app(wire)
        return self.error_codes.stream_in(wire if unmapped is None else unmapped, bidi=not stream_id & 2)

    def _reset_stream(self, stream_id: int, code: int) -> None:
        if self._closed is not None:
            return
        try:
            self.quic.reset_stream(stream_id, self._stream_code_out(stream_id, code))
        except self.backend.call_errors:  # the stream already ended, or the connection closed under us (qh3)
            return
        self._transmitter.request()

    def _stop_stream(self, stream_id: int, code: int) -> None:
        """STOP_SENDING; what the peer sent before it saw it will not look like a new stream."""
        if self._closed is not None:
            return
        self._stopped.add(stream_id)
        try:
            self.quic.stop_stream(stream_id, self._stream_code_out(stream_id, code))
        except self.backend.call_errors:
            return
        self._transmitter.request()

    def stop_receiving(self, stream_id: int, code: int) -> None:
        """Stop reading ``stream_id`` (STOP_SENDING with ``code``), if it is a stream we still read."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.stop(code)

    def transmit_soon(self) -> None:
        """Transmit on the next event-loop iteration (coalesced)."""
        self._transmitter.request()

    def _flush(self) -> None:
        if self._closed is None:
            self.protocol.transmit()

    def _maybe_forget(self, stream: QuicStream) -> None:
        if stream.done:
            self._streams.pop(stream.stream_id, None)

    # -- events from aioquic (never await, never raise)
    def handle_event(self, event: Any) -> None:
        self._backlog = None  # aioquic has just processed input: recount before the next write
        backend = self.backend
        if isinstance(event, backend.stream_data):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                if event.stream_id in self._stopped:
                    if event.end_stream:
                        self._stopped.discard(event.stream_id)
                    return
                stream = self._incoming(event.stream_id)
                if stream is None:
                    return
            stream.deliver(event.data, event.end_stream)
            if event.end_stream and self._stopped:
                self._stopped.discard(event.stream_id)
        elif isinstance(event, backend.stream_reset):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                if event.stream_id in self._stopped:
                    self._stopped.discard(event.stream_id)
                    return
                stream = self._incoming(event.stream_id)
            else:
                self._stopped.discard(event.stream_id)
            if stream is not None and stream.peer_reset(self._stream_code_in(event.stream_id, event.error_code)):
                self._maybe_forget(stream)
        elif isinstance(event, backend.stop_sending):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.peer_stopped(self._stream_code_in(event.stream_id, event.error_code))
                self._maybe_forget(stream)
        elif isinstance(event, backend.terminated):
            if event.reason_phrase == IDLE_TIMEOUT_REASON:  # our own timer: nothing came from the peer
                self._terminate(SessionClosed(ErrorCode.TIMEOUT, "idle timeout: nothing heard from the peer",
                                              remote=False))
                return
            code = event.error_code
            if event.frame_type is None:  # an application close; transport-level closes keep their code
                code = self.error_codes.session_in(code)
            logger.debug("%s: the connection closed (code %#x, %r)", self.backend.name, code, event.reason_phrase)
            self._terminate(SessionClosed(code, event.reason_phrase, remote=True))

    def _incoming(self, stream_id: int) -> QuicStream | None:
        is_client = self.quic.configuration.is_client
        if stream_is_client_initiated(stream_id) == is_client:
            return None  # a locally opened stream we already forgot
        uni = stream_is_unidirectional(stream_id)
        stream = QuicStream(self, stream_id, readable=True, writable=not uni)
        self._streams[stream_id] = stream
        (self._accept_uni if uni else self._accept_bi).put_nowait(stream)
        return stream

    def after_transmit(self) -> None:
        self._backlog = None
        if self._writable_waiters:
            self._wake_writers()


def _collect(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class MoqProtocolMixin:
    """What our protocol classes add to a QUIC stack's connection protocol: a :class:`QuicTransport`.

    ``on_handshake(transport)`` is called once the TLS handshake completes
    and the ALPN is known; with ``early_start`` (a server), already when the
    client's 0-RTT early data was accepted, so a session offered in 0-RTT is
    answered in the server's first flight. ``check_peer(protocol)`` (a
    client) runs as the handshake completes, before anything else is sent:
    if it raises, the connection is closed and :attr:`peer_check_error` holds
    the error. The stack's protocol class comes after this mixin.
    """

    quic: Any
    moq_transport: QuicTransport
    backend: QuicBackend

    def _init_moq(self, backend: QuicBackend, limits: Limits, on_handshake: Callable[[QuicTransport], None] | None,
                  early_start: bool, check_peer: Callable[[Any], None] | None) -> None:
        self.backend = backend
        self.moq_transport = QuicTransport(self, limits, backend)
        self._on_handshake = on_handshake
        self._early_start = early_start
        self._check_peer = check_peer
        self.peer_check_error: Exception | None = None

    async def wait_connected(self) -> None:
        """The stack's ``wait_connected``; cancelled (a dial's timeout), its outcome is still collected.

        The stack shields the future it waits on and later sets the
        handshake's failure on it; nobody would read that, and asyncio would
        log "Future exception was never retrieved" for every dial that timed out.
        """
        try:
            await super().wait_connected()  # type: ignore[misc]
        except asyncio.CancelledError:
            waiter = self.backend.connected_waiter(self)
            if waiter is not None:
                waiter.add_done_callback(_collect)
            raise

    def quic_event_received(self, event: Any) -> None:
        try:
            if isinstance(event, (self.backend.handshake_completed, self.backend.protocol_negotiated)):
                self._handshake_event(event)  # once per connection
            else:
                self.moq_transport.handle_event(event)
        except Exception:  # an exception here would kill the whole listener
            logger.exception("error handling QUIC event %r; closing the connection", event)
            self.moq_transport.close(ErrorCode.TRANSPORT, "internal error")

    def _handshake_event(self, event: Any) -> None:
        transport = self.moq_transport
        if isinstance(event, self.backend.protocol_negotiated):
            if self._early_start and self._on_handshake is not None and self.backend.early_data_accepted(self.quic):
                transport.alpn = event.alpn_protocol
                transport.resumed = transport.early_data_accepted = transport.started_early = True
                self._on_handshake(transport)
            return
        transport.alpn = event.alpn_protocol
        transport.resumed = event.session_resumed
        transport.early_data_accepted = event.early_data_accepted
        transport.handshake_complete = True
        if self._check_peer is not None and not self._peer_checked():
            return
        if self._on_handshake is not None and not transport.started_early:
            self._on_handshake(transport)

    def _peer_checked(self) -> bool:
        assert self._check_peer is not None
        try:
            self._check_peer(self)
        except Exception as exc:
            self.peer_check_error = exc
            # a transport close with the TLS bad_certificate alert (0x100 + 42), sent when this datagram's
            # events are done: before anything else goes out under the new keys
            self.quic.close(error_code=0x100 + 42, frame_type=0x06, reason_phrase="bad certificate")
            return False
        return True


class QuicProtocol(MoqProtocolMixin, QuicConnectionProtocol):
    """aioquic protocol that feeds a :class:`QuicTransport` (see :class:`MoqProtocolMixin`).

    The aioquic connection becomes a :class:`CreditedQuicConnection` (its
    windows are the configuration's ``max_stream_data`` and ``max_data``);
    with ``handshake_timeout`` (a server), a connection whose handshake has
    not completed that many seconds after its first datagram is dropped.
    """

    def __init__(
        self,
        *args: Any,
        on_handshake: Callable[[QuicTransport], None] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        early_start: bool = False,
        check_peer: Callable[[QuicProtocol], None] | None = None,
        max_streams: tuple[int, int] | None = None,
        handshake_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        QuicConnectionProtocol.__init__(self, *args, **kwargs)
        quic = self.quic = adopt_quic(self)
        quic.handshake_timeout = handshake_timeout
        if max_streams is not None:
            set_stream_limits(quic, *max_streams)
        self._init_moq(AIOQUIC, limits, on_handshake, early_start, check_peer)
        quic.on_credit = self.moq_transport.transmit_soon

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        grow_socket_buffers(transport)  # a client's own socket (a server's listener already has them)
        super().connection_made(transport)

    def transmit(self) -> None:
        super().transmit()
        self.moq_transport.after_transmit()

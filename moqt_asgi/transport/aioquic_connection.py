"""Our aioquic ``QuicConnection``, and every aioquic private name the project relies on.

aioquic 1.7 grants receive credit as data *arrives*: it doubles a stream's
``max_stream_data`` whenever the peer's highest offset passes half of it,
does the same for the connection's ``max_data``, and allocates every byte
before an out-of-order frame's offset. A peer that sends a few one-byte
frames at the edge of the window gets it doubled each round trip and makes
the receiver allocate the gaps: about 500 bytes of datagrams make it
allocate 255 MiB (aioquic issue #589).

:class:`CreditedQuicConnection` owns that policy instead. For every stream
and for the connection, the limit it advertises is

    released bytes + a fixed window

and it never doubles. A byte is *released* once the layer above took it:
when an application buffer that reads through a :class:`StreamCredit`
(the engine's :class:`~moqt_asgi.transport.buffers.ReceiveBuffer`) has
handed it to the application, or, on streams nobody holds (HTTP/3 control
and QPACK streams, plain HTTP bodies), as soon as aioquic delivered it in
order. So

* the bytes aioquic buffers for a stream, gaps included, stay under the
  stream window, and the bytes held for the whole connection (aioquic's
  buffers plus the unread application buffers) under the connection window;
* a peer writing to a stream nobody reads is blocked by QUIC flow control
  once the window is full;
* MAX_STREAM_DATA / MAX_DATA go out once a quarter of the window was
  released (:data:`UPDATE_FRACTION`), not per byte; a release that crosses
  that point calls :attr:`CreditedQuicConnection.on_credit` so the owner
  transmits soon. MAX_DATA also goes out as soon as anything more was
  released while the peer has less than a quarter of the window left:
  when streams nobody reads yet (a subscriber's later groups) hold more
  than three quarters of it, a whole quarter may never be released, and
  the stream being read would wait for bytes the peer has no credit to send.
  Held bytes still count: once unread streams hold the whole connection
  window, nothing moves until one of them is read or dropped (so the
  connection window must exceed what the readers may leave unread: the
  engine's ``max_queued_groups`` plus one stream windows per track read in
  order).

The windows are the configuration's ``max_stream_data`` and ``max_data``
(the initial credit aioquic announces). The class also carries the
handshake deadline (:attr:`CreditedQuicConnection.handshake_timeout`: a
server connection whose handshake has not completed by then ends silently,
as on an idle timeout) and reports handshake completion and termination to
a :class:`ConnectionWatcher` (the server's connection caps).

aioquic's server and client build the ``QuicConnection`` themselves;
:meth:`CreditedQuicConnection.adopt` turns such a fresh connection into ours
before it has handled any packet.

Every private aioquic name the project uses is reached from this module
only, and listed in :func:`check_compatible` (which runs on first use and
raises :class:`IncompatibleAioquic` naming whatever moved): the credit
policy above, and small named accessors for the rest (the connection of a
protocol, a stream's unsent bytes, the peer's address and certificate,
datagram room, stream limits, 0-RTT permission, the server's connection
table and Retry handler, the HTTP/3 stream records, and
:class:`H3ConnectionHooks`, which gives the HTTP/3 receive hooks public
names). An aioquic upgrade that moves one of them fails that check, in
this one module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import aioquic
import aioquic.quic.connection as aioquic_connection
from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.asyncio import protocol as aioquic_protocol
from aioquic.asyncio import server as aioquic_server
from aioquic.h3 import connection as h3_connection
from aioquic.h3.events import H3Event
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicHeader, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder

logger = logging.getLogger("moqt_asgi.quic")

SUPPORTED_AIOQUIC = "1.7."
UPDATE_FRACTION = 4
"""A new MAX_STREAM_DATA / MAX_DATA goes out once ``window / UPDATE_FRACTION`` more bytes were released."""

_StreamDataReceived = events.StreamDataReceived
_StreamReset = events.StreamReset
_HandshakeCompleted = events.HandshakeCompleted
_ConnectionTerminated = events.ConnectionTerminated
IDLE_TIMEOUT_REASON = "Idle timeout"
"""The reason aioquic gives a connection it ends at its own idle timer (its code, INTERNAL_ERROR, is no MoQ code)."""


class IncompatibleAioquic(RuntimeError):
    """The installed aioquic does not have a private name the project relies on."""


# -- the fence: which private names we use, checked once
_CONNECTION_METHODS = ("_write_connection_limits", "_write_stream_limits", "_on_connection_limit_delivery",
                       "_on_max_stream_data_delivery", "next_event", "receive_datagram", "handle_timer",
                       "get_timer", "_stream_limit")
_CONNECTION_ATTRIBUTES = ("_local_max_data", "_local_max_streams_bidi", "_local_max_streams_uni", "_streams",
                          "_quic_logger", "_close_at", "_close_event", "_handshake_complete", "_state", "_is_client",
                          "_network_paths", "_remote_max_datagram_frame_size", "_max_datagram_size",
                          "_datagrams_pending", "_streams_queue", "_remote_max_data")
_TLS_ATTRIBUTES = ("_max_early_data", "_peer_certificate", "session_resumed", "early_data_accepted")
_LIMIT_ATTRIBUTES = ("value", "sent", "used", "frame_type")
_MODULE_NAMES = ((aioquic_connection, "MAX_STREAM_DATA_FRAME_CAPACITY"),
                 (aioquic_connection, "CONNECTION_LIMIT_FRAME_CAPACITY"), (aioquic_connection, "END_STATES"),
                 (aioquic_connection, "TRANSPORT_CLOSE_FRAME_CAPACITY"), (aioquic_connection, "Limit"),
                 (aioquic_connection, "QuicConnectionState"),
                 (h3_connection, "H3Stream"), (h3_connection, "HeadersState"), (h3_connection, "ProtocolError"),
                 (h3_connection, "FrameType"), (h3_connection.H3Connection, "_receive_request_or_push_data"),
                 (h3_connection.H3Connection, "_receive_stream_data_uni"),
                 (h3_connection.H3Connection, "_receive_stream_reset"),
                 (h3_connection.H3Connection, "create_webtransport_stream"))
_H3_STREAM_ATTRIBUTES = ("buffer", "blocked", "frame_type", "frame_size", "headers_recv_state", "session_id",
                         "stream_id", "stream_type", "receiving_ended", "sending_ended", "is_ended")
_H3_CONNECTION_ATTRIBUTES = ("_stream",)
_INIT_ATTRIBUTES = ((aioquic_protocol.QuicConnectionProtocol, ("_quic", "_transport", "_connected_waiter")),
                    (aioquic_server.QuicServer, ("_protocols", "_retry", "_transport")))
_checked = False


def _aioquic_version() -> str:
    try:
        from importlib import metadata

        return metadata.version("aioquic")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return str(getattr(aioquic, "__version__", "unknown"))


def check_compatible() -> None:
    """Raise :class:`IncompatibleAioquic` unless every aioquic name we rely on is where we expect it.

    Runs once (the first :class:`CreditedQuicConnection`); call it directly to check again.
    """
    global _checked
    missing = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in _MODULE_NAMES
               if not hasattr(owner, name)]
    missing += [f"QuicConnection.{name}" for name in _CONNECTION_METHODS if not hasattr(QuicConnection, name)]
    probe = QuicConnection(configuration=QuicConfiguration(is_client=True))
    missing += [f"QuicConnection().{name}" for name in _CONNECTION_ATTRIBUTES if not hasattr(probe, name)]
    limit = getattr(probe, "_local_max_data", None)
    if limit is not None:
        missing += [f"Limit.{name}" for name in _LIMIT_ATTRIBUTES if not hasattr(limit, name)]
    stream_class = getattr(aioquic_connection, "QuicStream", None)
    if stream_class is None:
        missing.append("aioquic.quic.connection.QuicStream")
    else:
        stream = stream_class(stream_id=0, max_stream_data_local=1, max_stream_data_remote=1)
        for path in ("max_stream_data_local", "max_stream_data_local_sent", "receiver.highest_offset",
                     "receiver.is_finished", "receiver.starting_offset", "receiver._buffer_start", "receiver._buffer",
                     "sender._buffer_stop",
                     "sender.highest_offset"):
            owner: Any = stream
            for part in path.split("."):
                owner = getattr(owner, part, _MISSING)
            if owner is _MISSING:
                missing.append(f"QuicStream.{path}")
    missing += [f"tls.Context().{name}" for name in _TLS_ATTRIBUTES if not hasattr(tls.Context(is_client=True), name)]
    try:
        h3 = h3_connection.H3Connection(probe)
    except Exception as exc:  # pragma: no cover - only when aioquic changed
        missing.append(f"H3Connection(quic) ({exc})")
    else:
        missing += [f"H3Connection().{name}" for name in _H3_CONNECTION_ATTRIBUTES if not hasattr(h3, name)]
    h3_stream_class = getattr(h3_connection, "H3Stream", None)
    if h3_stream_class is not None:
        h3_stream = h3_stream_class(0)
        missing += [f"H3Stream.{name}" for name in _H3_STREAM_ATTRIBUTES if not hasattr(h3_stream, name)]
    for owner, names in _INIT_ATTRIBUTES:
        assigned = set(owner.__init__.__code__.co_names)  # attributes its __init__ sets (no instance without a loop)
        missing += [f"{owner.__name__}.{name}" for name in names if name not in assigned]
    missing += [f"QuicServer.{name}" for name in ("datagram_received", "_connection_terminated", "close")
                if not hasattr(aioquic_server.QuicServer, name)]
    if missing:
        raise IncompatibleAioquic(f"aioquic {_aioquic_version()} moved names moqt_asgi relies on (written for "
                                  f"aioquic {SUPPORTED_AIOQUIC}*): missing {', '.join(missing)}")
    _checked = True


_MISSING = object()


def _ensure_checked() -> None:
    if not _checked:
        check_compatible()


# -- small accessors for aioquic internals used across the project
def set_stream_limits(quic: QuicConnection, bidi: int, uni: int, *, announced: bool = False) -> None:
    """How many streams of each kind the peer may open at once (aioquic has no setting; its default is 128).

    Before the handshake (``announced=False``) the values go out in the
    transport parameters. Once they were announced, limits can only rise:
    aioquic then sends MAX_STREAMS frames with its next packet.
    """
    for limit, value in ((quic._local_max_streams_bidi, bidi), (quic._local_max_streams_uni, uni)):
        if announced:
            limit.value = max(limit.value, value)
        else:
            limit.value = limit.sent = value


def send_backlog(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to ``stream_id`` that aioquic has not sent yet."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return max(0, int(sender._buffer_stop) - int(sender.highest_offset))


def connected_waiter(protocol: Any) -> asyncio.Future[None] | None:
    """The future aioquic's ``wait_connected`` shields (it gets the handshake's outcome)."""
    waiter: asyncio.Future[None] | None = protocol._connected_waiter
    return waiter


def peer_address(quic: QuicConnection) -> tuple[str, int] | None:
    """The peer's current ``(host, port)``, if a path exists."""
    paths = quic._network_paths
    if not paths:
        return None
    addr = paths[0].addr
    return str(addr[0]), int(addr[1])


def datagram_room(quic: QuicConnection) -> tuple[int, int, int]:
    """``(peer's max_datagram_frame_size or 0, our max datagram size, datagrams queued)``."""
    return int(quic._remote_max_datagram_frame_size or 0), int(quic._max_datagram_size), len(quic._datagrams_pending)


def send_stream_first(quic: QuicConnection, stream_id: int) -> None:
    """Serve ``stream_id`` first in aioquic's round-robin of streams with data to send."""
    queue, stream = getattr(quic, "_streams_queue", None), quic._streams.get(stream_id)
    if isinstance(queue, list) and stream in queue:
        queue.remove(stream)
        queue.insert(0, stream)


def forbid_early_data(quic: QuicConnection) -> None:
    """Server: the tickets issued from now on do not permit 0-RTT (aioquic always permits it)."""
    quic.tls._max_early_data = None


def peer_certificate(quic: QuicConnection) -> Any:
    """The peer's certificate (a ``cryptography`` certificate) or None."""
    return quic.tls._peer_certificate


def handshake_complete(quic: QuicConnection) -> bool:
    """Whether the TLS handshake has completed (before it does, a server only receives 0-RTT application data)."""
    return bool(quic._handshake_complete)


_CLOSING_STATES = (aioquic_connection.QuicConnectionState.CLOSING, aioquic_connection.QuicConnectionState.DRAINING,
                   aioquic_connection.QuicConnectionState.TERMINATED)


def connection_closing(quic: QuicConnection) -> bool:
    """Whether the connection is closing, draining or gone (it sent or received CONNECTION_CLOSE, or timed out)."""
    return getattr(quic, "_state", None) in _CLOSING_STATES


def parse_header(data: bytes, connection_id_length: int) -> QuicHeader:
    """The QUIC packet header at the start of ``data``; raises ``ValueError`` if there is none."""
    return pull_quic_header(Buffer(data=data), host_cid_length=connection_id_length)


# -- aioquic's asyncio layer: the protocol's connection, the server's table
def protocol_quic(protocol: Any) -> QuicConnection:
    """The ``QuicConnection`` an aioquic ``QuicConnectionProtocol`` drives."""
    quic: QuicConnection = protocol._quic
    return quic


def adopt_quic(protocol: aioquic_protocol.QuicConnectionProtocol) -> CreditedQuicConnection:
    """Make the fresh connection of ``protocol`` a :class:`CreditedQuicConnection` (see :meth:`~CreditedQuicConnection.adopt`)."""
    quic = protocol._quic = CreditedQuicConnection.adopt(protocol._quic)
    return quic


def local_address(endpoint: Any) -> tuple[str, int] | None:
    """The bound ``(host, port)`` of an aioquic (or qh3) server or connection protocol; None before it has a socket."""
    transport = endpoint._transport
    if transport is None:
        return None
    sockname = transport.get_extra_info("sockname")
    return str(sockname[0]), int(sockname[1])


def server_transport(server: Any) -> asyncio.DatagramTransport | None:
    """The UDP transport of an aioquic (or qh3: the same name) ``QuicServer`` (None before it is bound)."""
    transport: asyncio.DatagramTransport | None = server._transport
    return transport


def server_protocol(server: Any, connection_id: bytes) -> Any:
    """The connection protocol an aioquic ``QuicServer`` routes ``connection_id`` to, or None."""
    return server._protocols.get(connection_id)


def has_connection(server: Any, connection_id: bytes) -> bool:
    """Whether an aioquic ``QuicServer`` already has a connection for ``connection_id``."""
    return bool(connection_id in server._protocols)


def use_retry_tokens(server: Any, handler: Any) -> None:
    """The Retry-token handler an aioquic ``QuicServer`` checks the next Initial with (None: no Retry happened)."""
    server._retry = handler


# -- HTTP/3: aioquic's per-stream records and its receive hooks
Http3Stream = h3_connection.H3Stream
"""aioquic's per-stream HTTP/3 state (frame being parsed, buffer, WebTransport session)."""


def h3_stream(h3: h3_connection.H3Connection, stream_id: int) -> Http3Stream | None:
    """The HTTP/3 record of ``stream_id``, if aioquic has one."""
    return h3._stream.get(stream_id)


def mark_webtransport_stream(h3: h3_connection.H3Connection, stream_id: int, session_id: int) -> None:
    """Record ``stream_id`` (a bidi stream we opened) as a WebTransport stream of ``session_id``.

    aioquic only marks the WebTransport streams it receives: without this,
    the peer's data on the stream would be parsed as HTTP/3 frames.
    """
    stream = h3_connection.H3Stream(stream_id)
    stream.frame_type = h3_connection.FrameType.WEBTRANSPORT_STREAM
    stream.session_id = session_id
    h3._stream[stream_id] = stream


def forget_h3_stream(h3: h3_connection.H3Connection, stream_id: int) -> None:
    """Drop aioquic's HTTP/3 record of ``stream_id`` (both halves are over)."""
    h3._stream.pop(stream_id, None)


class H3ConnectionHooks(h3_connection.H3Connection):
    """aioquic's ``H3Connection`` with its receive hooks under public names, to override.

    :meth:`receive_request_data` (request, push and bidi WebTransport
    streams), :meth:`receive_uni_data` (control, QPACK and uni WebTransport
    streams) and :meth:`stream_reset_received`; each calls aioquic's by default.
    """

    def _receive_request_or_push_data(self, stream: Http3Stream, data: bytes, stream_ended: bool) -> list[H3Event]:
        return self.receive_request_data(stream, data, stream_ended)

    def _receive_stream_data_uni(self, stream: Http3Stream, data: bytes, stream_ended: bool) -> list[H3Event]:
        return self.receive_uni_data(stream, data, stream_ended)

    def _receive_stream_reset(self, stream_id: int) -> None:
        self.stream_reset_received(stream_id)

    def receive_request_data(self, stream: Http3Stream, data: bytes, stream_ended: bool) -> list[H3Event]:
        """Bytes on a request, push or bidi WebTransport stream: the HTTP/3 events they complete."""
        return h3_connection.H3Connection._receive_request_or_push_data(self, stream, data, stream_ended)

    def receive_uni_data(self, stream: Http3Stream, data: bytes, stream_ended: bool) -> list[H3Event]:
        """Bytes on a peer's uni stream (control, QPACK, push, WebTransport)."""
        return h3_connection.H3Connection._receive_stream_data_uni(self, stream, data, stream_ended)

    def stream_reset_received(self, stream_id: int) -> None:
        """The peer reset ``stream_id``."""
        h3_connection.H3Connection._receive_stream_reset(self, stream_id)


# -- receive credit
class ConnectionWatcher(Protocol):
    """Told when an admitted connection completes its handshake and when it ends."""

    def handshake_done(self, connection: CreditedQuicConnection) -> None: ...

    def terminated(self, connection: CreditedQuicConnection) -> None: ...


class StreamCredit:
    """The credit of one stream whose bytes an application buffer holds until they are read.

    :meth:`hold` when bytes enter the buffer, :meth:`release` when they
    leave it (read, or discarded). Held bytes do not count as consumed, so
    the peer's credit stops growing while nobody reads.
    """

    __slots__ = ("connection", "stream_id")

    def __init__(self, connection: CreditedQuicConnection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id

    @property
    def window(self) -> int:
        return self.connection.stream_window

    def hold(self, size: int) -> None:
        self.connection.hold(self.stream_id, size)

    def release(self, size: int) -> None:
        self.connection.release(self.stream_id, size)


def stream_credit(quic: Any, stream_id: int) -> StreamCredit | None:
    """A :class:`StreamCredit` for ``stream_id`` if ``quic`` manages credit, else None (a plain aioquic connection)."""
    if isinstance(quic, CreditedQuicConnection):
        return StreamCredit(quic, stream_id)
    return None


class CreditedQuicConnection(QuicConnection):
    """aioquic's ``QuicConnection`` with our receive-credit policy (see the module docstring)."""

    stream_window: int
    connection_window: int
    on_credit: Callable[[], None] | None
    """Called when released bytes make a credit update due: the owner should transmit soon."""
    watcher: ConnectionWatcher | None
    handshake_timeout: float | None
    """Server: seconds from the first datagram for the handshake to complete (None: only the idle timeout)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_credit()

    @classmethod
    def adopt(cls, quic: QuicConnection) -> CreditedQuicConnection:
        """Make a fresh aioquic ``QuicConnection`` (made by aioquic's server or client) one of ours."""
        if isinstance(quic, cls):
            return quic
        if type(quic) is not QuicConnection:
            raise TypeError(f"cannot adopt a {type(quic).__name__}: only aioquic's own QuicConnection")
        if quic._state != aioquic_connection.QuicConnectionState.FIRSTFLIGHT or quic._streams:
            raise ValueError("the connection has already received data: adopt it before its first datagram")
        quic.__class__ = cls
        assert isinstance(quic, cls)
        quic._init_credit()
        return quic

    def _init_credit(self) -> None:
        _ensure_checked()
        configuration = self.configuration
        self.stream_window = int(configuration.max_stream_data)
        self.connection_window = int(configuration.max_data)
        self._stream_step = max(1, self.stream_window // UPDATE_FRACTION)
        self._connection_step = max(1, self.connection_window // UPDATE_FRACTION)
        self._released = 0
        """Bytes of all streams that count as consumed: delivered and not held, plus reset remainders."""
        self._held: dict[int, int] = {}
        """Per stream: delivered bytes an application buffer still holds."""
        self.on_credit = None
        self.watcher = None
        self.handshake_timeout = None
        self._handshake_deadline: float | None = None

    # -- what the layers above tell us
    def hold(self, stream_id: int, size: int) -> None:
        """``size`` delivered bytes of ``stream_id`` now sit in an application buffer."""
        if size > 0:
            self._held[stream_id] = self._held.get(stream_id, 0) + size
            self._released -= size

    def release(self, stream_id: int, size: int) -> None:
        """``size`` held bytes of ``stream_id`` were read or discarded."""
        held = self._held.get(stream_id)
        if held is None or size <= 0:
            return
        size = min(size, held)
        if held == size:
            del self._held[stream_id]
        else:
            self._held[stream_id] = held - size
        self._released += size
        if self.on_credit is not None and self._update_due(stream_id):
            self.on_credit()

    def held(self, stream_id: int | None = None) -> int:
        """Bytes held by application buffers, for one stream or the whole connection."""
        if stream_id is None:
            return sum(self._held.values())
        return self._held.get(stream_id, 0)

    @property
    def released(self) -> int:
        """Bytes that count as consumed on the connection (the base of MAX_DATA)."""
        return self._released

    def _connection_update_due(self) -> bool:
        """A new MAX_DATA is due: a step more was released, or the peer is nearly out of credit and any more helps.

        While bytes held by streams nobody reads yet (a subscriber's later groups) fill most of the window,
        what the peer may still send can stay under a step for good: the stream being read then waits for
        bytes the peer may not send, and nothing is released that would complete the step.
        """
        limit = self._local_max_data
        target = self._released + self.connection_window
        if target - limit.value >= self._connection_step:
            return True
        return target > limit.value and limit.value - limit.used < self._connection_step

    def _update_due(self, stream_id: int) -> bool:
        if self._connection_update_due():
            return True
        stream = self._streams.get(stream_id)
        if stream is None or stream.receiver.is_finished:
            return False
        target = stream.receiver.starting_offset() - self._held.get(stream_id, 0) + self.stream_window
        return bool(target - stream.max_stream_data_local >= self._stream_step)

    # -- events: count what aioquic delivered
    def next_event(self) -> events.QuicEvent | None:
        event = super().next_event()
        kind = type(event)
        if kind is _StreamDataReceived:
            self._released += len(event.data)  # type: ignore[union-attr]
        elif kind is _StreamReset:
            # The bytes between what was delivered and the final size will never be: release them.
            stream = self._streams.get(event.stream_id)  # type: ignore[union-attr]
            if stream is not None:
                receiver = stream.receiver
                self._released += max(0, receiver.highest_offset - receiver.starting_offset())
        elif kind is _HandshakeCompleted:
            self._handshake_deadline = None
            if self.watcher is not None:
                self.watcher.handshake_done(self)
        elif kind is _ConnectionTerminated:
            watcher, self.watcher = self.watcher, None
            if watcher is not None:
                watcher.terminated(self)
        return event

    # -- writing the limits: released + window, never doubled
    def _write_connection_limits(self, builder: QuicPacketBuilder, space: Any) -> None:
        limit = self._local_max_data
        if self._connection_update_due():
            limit.value = self._released + self.connection_window
        for current in (limit, self._local_max_streams_bidi, self._local_max_streams_uni):
            if current.value == current.sent:
                continue
            if current is not limit and current.sent - current.used >= current.value - current.sent:
                continue  # as aioquic does: batch MAX_STREAMS until the peer has used half of what it has
            self._send_limit(builder, current.frame_type, current.value, self._on_connection_limit_delivery,
                             (current,), aioquic_connection.CONNECTION_LIMIT_FRAME_CAPACITY)
            current.sent = current.value
            if self._quic_logger is not None and builder.quic_logger_frames is not None:
                builder.quic_logger_frames.append(self._quic_logger.encode_connection_limit_frame(
                    frame_type=current.frame_type, maximum=current.value))

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: Any, stream: Any) -> None:
        current = stream.max_stream_data_local
        if not current:
            return  # a stream we opened that only sends
        receiver = stream.receiver
        if not receiver.is_finished:  # called for every stream in every packet: kept cheap
            target = receiver._buffer_start + self.stream_window
            if self._held:
                target -= self._held.get(stream.stream_id, 0)
            if target - current >= self._stream_step:
                stream.max_stream_data_local = current = target
        if stream.max_stream_data_local_sent == current:
            return
        self._send_limit(builder, QuicFrameType.MAX_STREAM_DATA, current, self._on_max_stream_data_delivery,
                         (stream,), aioquic_connection.MAX_STREAM_DATA_FRAME_CAPACITY, stream_id=stream.stream_id)
        stream.max_stream_data_local_sent = current
        if self._quic_logger is not None and builder.quic_logger_frames is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_max_stream_data_frame(maximum=current, stream_id=stream.stream_id))

    @staticmethod
    def _send_limit(builder: QuicPacketBuilder, frame_type: int, value: int, handler: Any, handler_args: tuple[Any, ...],
                    capacity: int, stream_id: int | None = None) -> None:
        buf = builder.start_frame(frame_type, capacity=capacity, handler=handler, handler_args=handler_args)
        if stream_id is not None:
            buf.push_uint_var(stream_id)
        buf.push_uint_var(value)

    # -- handshake deadline
    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if self._handshake_deadline is None and self.handshake_timeout is not None and not self._is_client \
                and not self._handshake_complete:
            self._handshake_deadline = now + self.handshake_timeout
        super().receive_datagram(data, addr, now)

    def _deadline_pending(self) -> bool:
        if self._handshake_deadline is None:
            return False
        if self._handshake_complete or self._state in aioquic_connection.END_STATES:
            self._handshake_deadline = None
            return False
        return True

    def get_timer(self) -> float | None:
        timer = super().get_timer()
        if self._deadline_pending():
            deadline = self._handshake_deadline
            assert deadline is not None
            if timer is None or deadline < timer:
                return deadline
        return timer

    def handle_timer(self, now: float) -> None:
        if self._deadline_pending() and now >= self._handshake_deadline:  # type: ignore[operator]
            # End it as aioquic ends an idle connection: silently, no packet to a possibly spoofed address.
            if self._close_event is None:
                self._close_event = events.ConnectionTerminated(
                    error_code=QuicErrorCode.CONNECTION_REFUSED, frame_type=QuicFrameType.PADDING,
                    reason_phrase="handshake timeout")
            self._close_at = now
            self._handshake_deadline = None
        super().handle_timer(now)


__all__ = [
    "ConnectionWatcher",
    "CreditedQuicConnection",
    "H3ConnectionHooks",
    "IDLE_TIMEOUT_REASON",
    "Http3Stream",
    "IncompatibleAioquic",
    "StreamCredit",
    "adopt_quic",
    "check_compatible",
    "connection_closing",
    "datagram_room",
    "forbid_early_data",
    "forget_h3_stream",
    "h3_stream",
    "handshake_complete",
    "has_connection",
    "local_address",
    "mark_webtransport_stream",
    "parse_header",
    "peer_address",
    "peer_certificate",
    "protocol_quic",
    "send_backlog",
    "send_stream_first",
    "server_protocol",
    "server_transport",
    "set_stream_limits",
    "stream_credit",
    "use_retry_tokens",
]

"""One WebTransport session as the engine's :class:`~moqt_asgi.transport.base.Connection`.

aioquic parses the WebTransport stream prefaces but has no notion of a
session: this module adds it. A :class:`WebTransportSession` is created when
an extended CONNECT with ``:protocol = webtransport`` arrives and owns

* the streams of that session (bounded :class:`ReceiveBuffer` per stream,
  holding its unread bytes against the QUIC receive credit, so a reader
  that falls behind slows the peer down; streams that arrive before the
  application accepted are held, up to ``max_pending_streams``),
* the CONNECT stream: the ``200`` (or an error status), and the capsules
  CLOSE_WEBTRANSPORT_SESSION and DRAIN_WEBTRANSPORT_SESSION both ways,
* datagrams (a bounded queue: the oldest is dropped when full),
* the WebTransport application error-code mapping for resets and stops,
* the server's "stopping" signal (:meth:`WebTransportSession.request_shutdown`,
  :meth:`WebTransportSession.on_shutdown`): how long the application has to
  end the session before the server closes it.

Codes are translated in two steps: the connection's ``error_codes`` map
(the MoQ dialect's numbering, see :mod:`moqt_asgi.protocol.codes`) between
our flat codes and the application codes, then WebTransport's HTTP/3
mapping between application codes and the wire. CLOSE_WEBTRANSPORT_SESSION
carries the dialect's session close code.

The HTTP/3 layer drives a session through its inbound interface, the
``handle_*`` methods (:meth:`~WebTransportSession.handle_stream_data`,
:meth:`~WebTransportSession.handle_stream_reset`,
:meth:`~WebTransportSession.handle_stop_sending`,
:meth:`~WebTransportSession.handle_datagram`,
:meth:`~WebTransportSession.handle_connect_data`,
:meth:`~WebTransportSession.handle_connect_reset`,
:meth:`~WebTransportSession.handle_connection_terminated`, and on the client
:meth:`~WebTransportSession.handle_response`) and
:meth:`~WebTransportSession.after_transmit`; a
:class:`~moqt_asgi.webtransport.router.WebTransportRouter` makes those calls
for the three HTTP/3 hosts. They run inside the QUIC event path: they never
await and never raise. The :class:`SessionHost` (our h3 server, the
Hypercorn integration, the client) owns the QUIC and HTTP/3 connections and
the transmit scheduling.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from aioquic.quic.connection import stream_is_client_initiated, stream_is_unidirectional

from ..protocol.codes import clamp_app_code
from ..protocol.errors import ErrorCode, MoQError, SessionClosed, StreamError
from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..transport.aioquic_connection import IDLE_TIMEOUT_REASON, datagram_room, send_backlog, send_stream_first, stream_credit
from ..transport.base import BidiStream, Connection, ReceiveStream, SendStream
from ..transport.streams import BufferedStream, next_stream
from .capsules import (
    WT_BUFFERED_STREAM_REJECTED,
    WT_SESSION_GONE,
    CapsuleError,
    CapsuleParser,
    CloseCapsule,
    app_to_http,
    encode_close,
    encode_drain,
    http_to_app,
)

logger = logging.getLogger("moqt_asgi.webtransport")

Headers = Sequence[tuple[bytes, bytes]]
State = Literal["pending", "accepted", "rejected", "closed"]


class SessionHost(abc.ABC):
    """What a session needs from the HTTP/3 connection that carries it."""

    quic: Any
    """The aioquic ``QuicConnection``."""
    h3: Any
    """The aioquic ``H3Connection`` (with the WebTransport fixes of the integration)."""

    @abc.abstractmethod
    def transmit_soon(self) -> None:
        """Send whatever is queued, soon (coalesced; safe to call often)."""

    @abc.abstractmethod
    def session_ended(self, session: WebTransportSession) -> None:
        """The session is over: route its late stream data to :meth:`refuse_stream`."""

    @abc.abstractmethod
    def finish_sending(self, stream_id: int) -> None:
        """Our half of a bidi WebTransport stream is done (FIN or reset): let HTTP/3 free it."""

    def refuse_stream(self, stream_id: int, code: int) -> None:
        """Stop (and for bidi streams, reset) a peer stream with HTTP/3 ``code``."""
        try:
            self.quic.stop_stream(stream_id, code)
            if not stream_is_unidirectional(stream_id):
                self.quic.reset_stream(stream_id, code)
                self.finish_sending(stream_id)
        except ValueError:  # already gone
            return
        self.transmit_soon()


def _wire_code(code: int) -> int:
    """An engine error code as the HTTP/3 code on the wire (clamped to 32 bits)."""
    return app_to_http(clamp_app_code(code))


def _engine_code(http_code: int) -> int:
    """A peer's HTTP/3 reset or stop code as the application code the engine sees."""
    code = http_to_app(http_code)
    return int(ErrorCode.CANCEL) if code is None else code


class WebTransportStream(BufferedStream):
    """A stream of a WebTransport session; uni streams use only one half."""

    __slots__ = ("_session",)

    def __init__(self, session: WebTransportSession, stream_id: int, *, readable: bool, writable: bool) -> None:
        self._session = session
        super().__init__(stream_id, readable=readable, writable=writable, limit=session.limits.max_stream_buffer,
                         credit=stream_credit(session.host.quic, stream_id) if readable else None)

    def __repr__(self) -> str:
        return f"<WebTransportStream {self.stream_id} of session {self._session.session_id}>"

    def _send_data(self, data: bytes, end: bool) -> None:
        self._session._send(self, data, end)

    def _send_reset(self, code: int) -> None:
        self._session._reset_stream(self.stream_id, code)

    def _send_stop(self, code: int) -> None:
        self._session._stop_stream(self.stream_id, code)

    def _sending_ended(self) -> None:
        self._session._sending_finished(self)

    def _receiving_ended(self) -> None:
        self._session._maybe_forget(self)

    def backlog(self) -> int:
        return send_backlog(self._session.host.quic, self.stream_id)


class WebTransportSession(Connection):
    """The server side of one WebTransport session (see the module docstring)."""

    def __init__(self, host: SessionHost, session_id: int, *, client: tuple[str, int] | None = None,
                 limits: Limits = DEFAULT_LIMITS, max_pending_streams: int = 64, max_datagrams: int = 256) -> None:
        self.host = host
        self.session_id = session_id
        self.limits = limits
        self.client = client
        self.state: State = "pending"
        self.max_pending_streams = max_pending_streams
        self.max_datagrams = max_datagrams
        self.datagrams_dropped = 0
        self.draining = False
        """True once the peer sent DRAIN_WEBTRANSPORT_SESSION."""
        self.response_headers: list[tuple[bytes, bytes]] = []
        """Headers the server adds to every answer to the CONNECT (``server``, ``date``...)."""
        self._is_client = bool(host.quic.configuration.is_client)
        self._streams: dict[int, WebTransportStream] = {}
        self._pending_sends: set[int] = set()
        # Streams we stopped reading: the peer may still send what it had in flight before it saw
        # STOP_SENDING, which must not look like a new stream once we have forgotten the old one.
        self._stopped: set[int] = set()
        self._accept_bi: asyncio.Queue[WebTransportStream] = asyncio.Queue()
        self._accept_uni: asyncio.Queue[WebTransportStream] = asyncio.Queue()
        self._unaccepted = 0
        self._closed: SessionClosed | None = None
        self._closed_event = asyncio.Event()
        self._decided = asyncio.Event()
        self._writable_waiters: list[Callable[[], None]] = []
        self._drain_callbacks: list[Callable[[], None]] = []
        self._shutdown_deadline: float | None = None
        self._shutdown_callbacks: list[Callable[[float], None]] = []
        self._datagrams: deque[bytes] = deque()
        self._datagram_waiter: asyncio.Future[None] | None = None
        self._capsules = CapsuleParser()
        self._connect_fin_sent = False

    def __repr__(self) -> str:
        return f"<WebTransportSession {self.session_id} {self.state}>"

    # -- properties
    @property
    def is_closed(self) -> bool:
        return self._closed is not None

    @property
    def close_reason(self) -> SessionClosed | None:
        return self._closed

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return self.client

    @property
    def max_datagram_size(self) -> int:
        """Largest datagram payload that fits in one QUIC packet to this peer (conservative)."""
        remote, local, _ = datagram_room(self.host.quic)
        if not remote:
            return 0
        overhead = 1 + 8 + 32  # frame type + quarter stream id + short header, packet number and AEAD tag
        return max(0, min(remote, local) - overhead - 8)

    def owns(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def get_stream(self, stream_id: int) -> WebTransportStream | None:
        return self._streams.get(stream_id)

    # -- the HTTP answer to the CONNECT
    def accept(self, headers: Headers = ()) -> None:
        """Answer the CONNECT with ``200`` (plus ``headers``); the session is open."""
        if self.state != "pending":
            if self.state == "rejected":
                raise MoQError("cannot accept a rejected session")
            return  # already accepted, or the peer left first (the application learns it on receive)
        response = [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02"), *self.response_headers,
                    *headers]
        try:
            self.host.h3.send_headers(self.session_id, response)
        except Exception:  # the peer already reset the CONNECT stream
            logger.debug("could not accept session %d", self.session_id, exc_info=True)
            self._terminate(SessionClosed(int(ErrorCode.CANCEL), "CONNECT stream gone", remote=True))
            return
        self.state = "accepted"
        self._decided.set()
        self.host.transmit_soon()

    def handle_response(self, status: int) -> None:
        """Client side: the server answered the CONNECT with ``status``; 2xx opens the session, anything else ends it."""
        if 200 <= status < 300:
            if self.state == "pending":
                self.state = "accepted"
                self._decided.set()
        else:
            self._terminate(SessionClosed(status, "CONNECT refused", remote=True))

    def reject(self, status: int = 403, headers: Headers = ()) -> None:
        """Answer the CONNECT with an error ``status``; no session byte was exchanged."""
        if self.state != "pending":
            raise MoQError(f"cannot reject a {self.state} session")
        if not 200 < status <= 599:
            raise ValueError(f"a rejection needs a non-2xx HTTP status, got {status}")
        self.state = "rejected"
        self._decided.set()
        try:
            response = [(b":status", str(status).encode()), *self.response_headers, *headers]
            self.host.h3.send_headers(self.session_id, response, end_stream=True)
            self._connect_fin_sent = True
        except Exception:  # the CONNECT stream is already gone
            logger.debug("could not send the %d response for session %d", status, self.session_id, exc_info=True)
        self._terminate(SessionClosed(status, "rejected", remote=False))
        self.host.transmit_soon()

    async def wait_decided(self) -> None:
        """Wait until the session was accepted, rejected or closed."""
        await self._decided.wait()

    # -- Connection: streams
    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self.state != "accepted":
            raise MoQError("the WebTransport session is not accepted yet")

    async def open_bi(self) -> BidiStream:
        return self.open_stream(unidirectional=False)

    async def open_uni(self) -> SendStream:
        return self.open_stream(unidirectional=True)

    def open_stream(self, *, unidirectional: bool) -> WebTransportStream:
        """Open a stream now (synchronously); the peer sees it with its first bytes."""
        self._check_open()
        sid = self.host.h3.create_webtransport_stream(self.session_id, is_unidirectional=unidirectional)
        stream = WebTransportStream(self, sid, readable=not unidirectional, writable=True)
        self._streams[sid] = stream
        self._pending_sends.add(sid)
        self.host.transmit_soon()
        return stream

    async def _accept(self, queue: asyncio.Queue[WebTransportStream]) -> WebTransportStream:
        if self._closed is not None:
            raise self._closed
        stream = await next_stream(queue, self._closed_event)
        if stream is None:
            raise self._closed or SessionClosed(0, "closed")
        if self._unaccepted:
            self._unaccepted -= 1
        return stream

    async def accept_bi(self) -> BidiStream:
        return await self._accept(self._accept_bi)

    async def accept_uni(self) -> ReceiveStream:
        return await self._accept(self._accept_uni)

    # -- Connection: closing
    def close(self, code: int = 0, reason: str = "") -> None:
        """Close the session: CLOSE_WEBTRANSPORT_SESSION, then FIN on the CONNECT stream.

        Before :meth:`accept` this rejects the CONNECT with ``403`` instead.
        """
        if self._closed is not None:
            return
        if self.state == "pending":
            self.reject(403)
            return
        code = clamp_app_code(code)
        self._send_connect_end(encode_close(clamp_app_code(self.error_codes.session_out(code)), reason))
        # aioquic serves streams round-robin: put the CONNECT stream first, so that the peer reads the
        # CLOSE capsule before the stream resets below (else it may take a reset for the session's end)
        send_stream_first(self.host.quic, self.session_id)
        self._terminate(SessionClosed(code, reason, remote=False))

    async def wait_closed(self) -> SessionClosed:
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    def drain(self) -> None:
        """Ask the peer to finish up (DRAIN_WEBTRANSPORT_SESSION); the session stays usable."""
        self._check_open()
        self._send_capsule(encode_drain(), end=False)

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once when the peer sends DRAIN_WEBTRANSPORT_SESSION."""
        if self.draining:
            callback()
        else:
            self._drain_callbacks.append(callback)

    # -- the server is stopping
    def shutdown_left(self) -> float | None:
        """Seconds left before the server closes this session (0 when past); None if it is not stopping."""
        if self._shutdown_deadline is None:
            return None
        return max(0.0, self._shutdown_deadline - time.monotonic())

    def request_shutdown(self, timeout: float) -> None:
        """Server side: the server is stopping and closes this session in ``timeout`` seconds.

        Calls the :meth:`on_shutdown` callbacks; only the first request counts.
        Nothing is sent to the peer (:meth:`drain` does that).
        """
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
        for callback in callbacks:
            try:
                callback(self.shutdown_left() or 0.0)
            except Exception:
                logger.exception("on_shutdown callback failed")

    def _send_capsule(self, capsule: bytes, *, end: bool) -> None:
        if self._connect_fin_sent:
            return
        try:
            self.host.h3.send_data(self.session_id, capsule, end_stream=end)
        except Exception:
            logger.debug("could not send on the CONNECT stream of session %d", self.session_id, exc_info=True)
            return
        if end:
            self._connect_fin_sent = True
        self.host.transmit_soon()

    def _send_connect_end(self, capsule: bytes) -> None:
        self._send_capsule(capsule, end=True)

    def _terminate(self, error: SessionClosed, *, quic_alive: bool = True) -> None:
        """Mark closed, end every stream and waiter, and tell the host.

        While the QUIC connection lives, streams still open are reset and
        stopped with WT_SESSION_GONE (streams we already finished keep
        delivering what they hold).
        """
        if self._closed is not None:
            return
        self._closed = error
        if self.state in ("pending", "accepted"):
            self.state = "closed"
        self._decided.set()
        self._closed_event.set()
        for stream in list(self._streams.values()):
            if quic_alive:
                if stream.receiving:
                    self._stop_stream(stream.stream_id, WT_SESSION_GONE, wire=True)
                if stream.writable:
                    self._reset_stream(stream.stream_id, WT_SESSION_GONE, wire=True)
                    self.host.finish_sending(stream.stream_id)
            stream.connection_closed(error, error.code)
        self._streams.clear()
        self._stopped.clear()
        self._pending_sends.clear()
        for queue in (self._accept_bi, self._accept_uni):
            while not queue.empty():
                queue.get_nowait()
        self._wake_datagram_reader()
        self._wake_writers()
        self.host.session_ended(self)
        self.host.transmit_soon()

    # -- datagrams
    def send_datagram(self, data: bytes) -> bool:
        """Queue an HTTP datagram; False (nothing sent) if it cannot fit in a packet or too many are queued."""
        self._check_open()
        if len(data) > self.max_datagram_size or datagram_room(self.host.quic)[2] >= self.max_datagrams:
            return False
        self.host.h3.send_datagram(self.session_id, data)
        self.host.transmit_soon()
        return True

    async def receive_datagram(self) -> bytes:
        """The next datagram from the peer; raises :class:`SessionClosed` when the session ends."""
        while not self._datagrams:
            if self._closed is not None:
                raise self._closed
            waiter = asyncio.get_running_loop().create_future()
            self._datagram_waiter = waiter
            try:
                await waiter
            finally:
                self._datagram_waiter = None
        return self._datagrams.popleft()

    def _wake_datagram_reader(self) -> None:
        waiter = self._datagram_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- backpressure
    def backlog(self) -> int:
        total = 0
        done = []
        quic = self.host.quic
        for sid in self._pending_sends:
            size = send_backlog(quic, sid)
            if size:
                total += size
            else:
                done.append(sid)
        for sid in done:
            self._pending_sends.discard(sid)
        return total

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

    # -- sending (called by WebTransportStream)
    def _send(self, stream: WebTransportStream, data: bytes, end: bool) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            self.host.quic.send_stream_data(stream.stream_id, data, end_stream=end)
        except (ValueError, RuntimeError) as exc:  # finished, or reset under us by aioquic
            raise StreamError(ErrorCode.CANCEL, str(exc)) from None
        self._pending_sends.add(stream.stream_id)
        self.host.transmit_soon()

    def _reset_stream(self, stream_id: int, code: int, *, wire: bool = False) -> None:
        if self._closed is not None and not wire:
            return
        try:
            self.host.quic.reset_stream(stream_id, code if wire else self._stream_code_out(stream_id, code))
        except ValueError:
            return
        self.host.transmit_soon()

    def _stop_stream(self, stream_id: int, code: int, *, wire: bool = False) -> None:
        if self._closed is not None and not wire:
            return
        if self._closed is None:
            self._stopped.add(stream_id)
        try:
            self.host.quic.stop_stream(stream_id, code if wire else self._stream_code_out(stream_id, code))
        except ValueError:
            return
        self.host.transmit_soon()

    def _stream_code_out(self, stream_id: int, code: int) -> int:
        return _wire_code(self.error_codes.stream_out(code, bidi=not stream_id & 2))

    def _stream_code_in(self, stream_id: int, http_code: int) -> int:
        code = http_to_app(http_code)
        if code is None:  # not an application code (an HTTP/3 one): the stream was cancelled
            return int(ErrorCode.CANCEL)
        return self.error_codes.stream_in(code, bidi=not stream_id & 2)

    def _sending_finished(self, stream: WebTransportStream) -> None:
        if not stream_is_unidirectional(stream.stream_id):
            self.host.finish_sending(stream.stream_id)
        self._maybe_forget(stream)

    def _maybe_forget(self, stream: WebTransportStream) -> None:
        if stream.done:
            self._streams.pop(stream.stream_id, None)

    # -- the inbound interface: events from the HTTP/3 layer (never await, never raise)
    def claims(self, stream_id: int) -> bool:
        """Whether events of ``stream_id`` are this session's: a stream it holds, or one it stopped reading."""
        return stream_id in self._streams or stream_id in self._stopped

    def handle_stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        """Bytes (and FIN) on one of the session's streams; a new peer stream is queued for accepting."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id in self._stopped:
                if ended:
                    self._stopped.discard(stream_id)
                return
            stream = self._incoming(stream_id)
            if stream is None:
                return
        stream.deliver(data, ended)

    def _incoming(self, stream_id: int) -> WebTransportStream | None:
        if stream_is_client_initiated(stream_id) == self._is_client:
            return None  # one of ours that we already forgot
        if self._closed is not None or self.state not in ("pending", "accepted"):
            self.host.refuse_stream(stream_id, WT_SESSION_GONE)
            return None
        if self.state == "pending" and self._unaccepted >= self.max_pending_streams:
            logger.info("session %d: too many streams before the accept; refusing stream %d",
                        self.session_id, stream_id)
            self.host.refuse_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)
            return None
        uni = stream_is_unidirectional(stream_id)
        stream = WebTransportStream(self, stream_id, readable=True, writable=not uni)
        self._streams[stream_id] = stream
        self._unaccepted += 1
        (self._accept_uni if uni else self._accept_bi).put_nowait(stream)
        return stream

    def handle_stream_reset(self, stream_id: int, http_code: int) -> None:
        """The peer reset one of the session's streams with HTTP/3 ``http_code``."""
        self._stopped.discard(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None or not stream.readable:
            return
        stream.peer_reset(self._stream_code_in(stream_id, http_code))
        self._maybe_forget(stream)

    def handle_stop_sending(self, stream_id: int, http_code: int) -> None:
        """The peer sent STOP_SENDING with HTTP/3 ``http_code`` on one of the session's streams."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.peer_stopped(self._stream_code_in(stream_id, http_code))
        if not stream_is_unidirectional(stream_id):
            self.host.finish_sending(stream_id)
        self._maybe_forget(stream)

    def handle_datagram(self, data: bytes) -> None:
        """An HTTP datagram of the session (the oldest queued one is dropped when the queue is full)."""
        if self._closed is not None or self.state != "accepted":
            return
        if len(self._datagrams) >= self.max_datagrams:
            self._datagrams.popleft()
            self.datagrams_dropped += 1
        self._datagrams.append(data)
        self._wake_datagram_reader()

    def handle_connect_data(self, data: bytes, ended: bool) -> None:
        """Bytes (capsules) on the CONNECT stream, after the 200 (a client ignores them until it saw the 200)."""
        if self._closed is not None or (self._is_client and self.state == "pending"):
            return
        try:
            capsules = self._capsules.feed(data) if data else []
        except CapsuleError as exc:
            logger.info("session %d: %s", self.session_id, exc)
            self.close(int(ErrorCode.PROTOCOL_VIOLATION), "bad capsule")
            return
        for capsule in capsules:
            if isinstance(capsule, CloseCapsule):
                self._send_connect_end(b"")
                self._terminate(SessionClosed(self.error_codes.session_in(capsule.code), capsule.reason, remote=True))
                return
            if not self.draining:
                self.draining = True
                callbacks, self._drain_callbacks = self._drain_callbacks, []
                for callback in callbacks:
                    try:
                        callback()
                    except Exception:
                        logger.exception("on_drain callback failed")
        if ended:
            self._send_connect_end(b"")
            self._terminate(SessionClosed(0, "", remote=True))

    def handle_connect_reset(self, http_code: int) -> None:
        """The peer reset the CONNECT stream (or sent STOP_SENDING on it): the session is gone."""
        if self._closed is None:
            self._terminate(SessionClosed(_engine_code(http_code), "CONNECT stream reset", remote=True))

    def handle_connection_terminated(self, error_code: int, reason: str) -> None:
        """The QUIC connection is gone (at our own idle timer: nothing was heard from the peer)."""
        if reason == IDLE_TIMEOUT_REASON:
            self._terminate(SessionClosed(ErrorCode.TIMEOUT, "idle timeout: nothing heard from the peer", remote=False),
                            quic_alive=False)
            return
        self._terminate(SessionClosed(error_code, reason, remote=True), quic_alive=False)

    def after_transmit(self) -> None:
        """The host just sent what was queued: wake the writers waiting for the backlog to drop."""
        if self._writable_waiters:
            self._wake_writers()


__all__ = ["SessionHost", "WebTransportSession", "WebTransportStream"]

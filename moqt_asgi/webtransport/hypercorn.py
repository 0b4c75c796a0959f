"""WebTransport through stock Hypercorn's HTTP/3 stack.

Hypercorn (0.18) serves HTTP/3 with aioquic (1.7) but has no WebTransport:
it sends no WebTransport settings and turns every extended CONNECT into a
WebSocket stream. :func:`apply` patches it in-process, before any QUIC
connection exists (Hypercorn imports the application module first in every
worker, and ``import moqt_asgi`` calls it):

H1  ``hypercorn.protocol.h3.H3Connection`` → :class:`WebTransportH3Connection`:
    ``enable_webtransport=True``; marks locally opened bidi WebTransport
    streams so the peer's replies are not parsed as HTTP/3 frames; frees
    the HTTP/3 state of bidi streams whose sending half we ended.
H2  ``hypercorn.protocol.quic.H3Protocol`` → :class:`WebTransportH3Protocol`:
    ``CONNECT :protocol=webtransport`` becomes a :class:`WebTransportSession`
    served through the ASGI ``webtransport`` scope; raw QUIC resets,
    STOP_SENDING and connection ends reach the session; every other request
    keeps Hypercorn's behaviour; an exception closes that one connection
    instead of the UDP listener. At most ``max_webtransport_sessions`` per
    connection (429 beyond); request streams whose HEADERS do not complete
    within ``header_timeout`` are reset. When the worker stops, every session is
    told so (:meth:`WebTransportSession.request_shutdown`, the ASGI
    ``webtransport.shutdown`` message: a MoQ app sends GOAWAY) with a grace
    within ``graceful_timeout`` (:func:`shutdown_grace`) and gets DRAIN;
    what is left after the grace is closed, then the QUIC connection.
H3  ``QuicProtocol.__init__``: ``max_datagram_frame_size = 65536`` (HTTP
    datagrams are announced, so the transport parameter must be too), the
    receive windows of the settings (``max_data``/``max_stream_data``), and a
    loud warning when ``workers > 1`` (one UDP socket shared by several
    processes misroutes QUIC packets).
H4  ``QuicProtocol.send_all``: wakes the sessions' writers after each flush.
H5  ``hypercorn.protocol.quic.QuicConnection`` → a subclass of
    :class:`~moqt_asgi.transport.aioquic_connection.CreditedQuicConnection`
    (receive credit that follows what the application read, no window
    doubling; a handshake deadline) allowing 1000 concurrent peer streams of
    each kind (aioquic's fixed default is 128).
H6  ``hypercorn.asyncio.udp_server.UDPServer``: a queue of 1000 datagrams
    instead of 10 (the stock one drops packets under load); ``run`` is
    woken while stopping, so shutdown ends when the last connection does
    instead of waiting out ``graceful_timeout`` (a warning says when open
    connections or applications remained as that timeout ran out); once
    stopped, the UDP socket is closed (Hypercorn leaves it open).
H7  ``QuicProtocol.send_all`` (asyncio and uvloop workers): the QUIC timer is
    an event-loop timer re-armed only when aioquic's deadline moves earlier,
    instead of Hypercorn cancelling, awaiting and recreating a timer task
    after every flush (which cost several event-loop steps per datagram).
    When it fires it runs Hypercorn's ``_handle_timer`` work in a task; an
    exception there closes that one connection, not the worker's listener.
    The datagrams go straight to the UDP transport rather than through one
    awaited ``UDPServer.protocol_send`` each. Under trio the stock
    ``send_all`` is kept.
H8  ``QuicProtocol.handle``: connection caps and Retry before a connection
    exists (:class:`~moqt_asgi.transport.admission.Admission`), and an
    exception while handling a datagram closes that one connection instead
    of ending the worker's UDP loop.

The QUIC settings (receive windows, connection caps, Retry, handshake
deadline, WebTransport sessions per connection, HTTP/3 header deadline) are
a :class:`~moqt_asgi.endpoints.QuicSettings`: the one given to :func:`configure`
(call it from the application module), else one read from ``MOQT_*``
environment variables (:meth:`QuicSettings.from_environment`).

The application is never awaited from the QUIC loop: sessions feed
bounded buffers, and the app runs in its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import aioquic
import hypercorn.asyncio.udp_server as hc_udp_server
import hypercorn.asyncio.worker_context as hc_worker_context
import hypercorn.protocol.h3 as hc_h3
import hypercorn.protocol.quic as hc_quic
from aioquic.h3.connection import H3Connection, H3Stream
from aioquic.h3.events import DatagramReceived, DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.events import ConnectionTerminated, StopSendingReceived, StreamReset
from hypercorn.events import Closed, RawData
from hypercorn.protocol.events import Body, EndBody

from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..transport.admission import Admission
from ..transport.aioquic_connection import CreditedQuicConnection
from .asgi import build_scope
from .capsules import H3_INTERNAL_ERROR, H3_NO_ERROR, WT_BUFFERED_STREAM_REJECTED, WT_SESSION_GONE
from .early import EarlyStreams
from .h3 import HeaderDeadline, WebTransportH3Connection
from .hypercorn_quic import QuicTimer, WebTransportQuicConnection, admission_handle, configure, current_settings
from .session import SessionHost, WebTransportSession

logger = logging.getLogger("moqt_asgi.webtransport")

SUPPORTED_HYPERCORN = "0.18."
SUPPORTED_AIOQUIC = "1.7."
UDP_QUEUE_SIZE = 1000
MAX_DATAGRAM_FRAME_SIZE = 65536
MAX_EARLY_STREAMS = 32
MAX_EARLY_BYTES = 256 * 1024
MAX_ENDED_SESSIONS = 256
_CLOSING_STATES = (QuicConnectionState.CLOSING, QuicConnectionState.DRAINING, QuicConnectionState.TERMINATED)
SHUTDOWN_MARGIN = 0.5
"""Seconds of Hypercorn's ``graceful_timeout`` kept for closing the connections after the sessions' grace."""


class IncompatibleHypercorn(RuntimeError):
    """The installed Hypercorn or aioquic does not have what the patch relies on."""


def _is_webtransport_connect(headers: list[tuple[bytes, bytes]]) -> bool:
    method = protocol = None
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":protocol":
            protocol = value
        elif not name.startswith(b":"):
            break
    return method == b"CONNECT" and protocol == b"webtransport"


def _asyncio_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def shutdown_grace(graceful_timeout: float) -> float:
    """How long WebTransport sessions get to end once Hypercorn stops.

    Hypercorn cancels whatever still runs ``graceful_timeout`` seconds after
    it began to stop; the sessions' grace ends :data:`SHUTDOWN_MARGIN` before
    that (half of it for timeouts under a second), so that the sessions and
    their QUIC connections are closed while Hypercorn still waits for them.
    """
    return max(0.0, graceful_timeout - SHUTDOWN_MARGIN, graceful_timeout * 0.5)


def _app_limits(app: object) -> Limits:
    """The ``limits`` of the wrapped application when it has some (a :class:`~moqt_asgi.MoQ`)."""
    inner = getattr(app, "app", app)
    limits = getattr(inner, "limits", None)
    return limits if isinstance(limits, Limits) else DEFAULT_LIMITS


# -- H2
class WebTransportH3Protocol(hc_h3.H3Protocol, SessionHost):
    """Hypercorn's H3Protocol, plus WebTransport sessions."""

    def __init__(self, app: Any, config: Any, context: Any, task_group: Any, state: Any,
                 client: tuple[str, int] | None, server: tuple[str, int] | None, quic: QuicConnection,
                 send: Callable[[], Awaitable[None]]) -> None:
        super().__init__(app, config, context, task_group, state, client, server, quic, send)
        if not isinstance(self.connection, WebTransportH3Connection):
            raise IncompatibleHypercorn("hypercorn.protocol.h3.H3Connection is not patched")
        self.quic = quic
        self.h3: WebTransportH3Connection = self.connection
        settings = current_settings()
        self.max_sessions = settings.max_webtransport_sessions
        if isinstance(quic, CreditedQuicConnection):
            quic.on_credit = self.transmit_soon
        self._header_deadline = HeaderDeadline(self.connection, settings.header_timeout, self.transmit_soon, client)
        self.wt_sessions: dict[int, WebTransportSession] = {}
        self._ended: OrderedDict[int, None] = OrderedDict()
        self._early = EarlyStreams(MAX_EARLY_STREAMS, MAX_EARLY_BYTES)
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown_watch: asyncio.Task[None] | None = None
        self._all_ended = asyncio.Event()

    # -- QUIC and HTTP/3 events
    async def handle(self, quic_event: Any) -> None:
        try:
            await self._handle(quic_event)
            if self.h3.incomplete and _asyncio_running():
                self._header_deadline.check()
        except Exception:
            # Raising here would end Hypercorn's UDP loop: every connection of the worker would die.
            logger.exception("error handling %s; closing this QUIC connection", type(quic_event).__name__)
            with contextlib.suppress(Exception):
                self.quic.close(error_code=H3_INTERNAL_ERROR, reason_phrase="internal error")
                self.transmit_soon()

    async def _handle(self, quic_event: Any) -> None:
        if isinstance(quic_event, StreamReset):
            self._route_reset(quic_event.stream_id, quic_event.error_code)
        elif isinstance(quic_event, StopSendingReceived):
            self._route_stop(quic_event.stream_id, quic_event.error_code)
        elif isinstance(quic_event, ConnectionTerminated):
            for session in list(self.wt_sessions.values()):
                session._on_connection_terminated(quic_event.error_code, quic_event.reason_phrase)
            self._early.clear()
            self._header_deadline.cancel()
            if self._shutdown_watch is not None:
                self._shutdown_watch.cancel()
        for event in self.connection.handle_event(quic_event):
            if isinstance(event, WebTransportStreamDataReceived):
                self._stream_data(event.session_id, event.stream_id, event.data, event.stream_ended)
            elif isinstance(event, DatagramReceived):
                target = self.wt_sessions.get(event.stream_id)
                if target is not None:
                    target._on_datagram(event.data)
            elif isinstance(event, HeadersReceived):
                if event.stream_id in self.wt_sessions or event.stream_id in self._ended:
                    continue  # trailers on a CONNECT stream: nothing to do
                if _is_webtransport_connect(event.headers):
                    await self._open_session(event)
                elif not self.context.terminated.is_set():
                    self._refuse_early(event.stream_id)
                    await self._create_stream(event)
                    if event.stream_ended:
                        await self._to_http_stream(event.stream_id, EndBody(stream_id=event.stream_id))
            elif isinstance(event, DataReceived):
                owner = self.wt_sessions.get(event.stream_id)
                if owner is not None:
                    owner._on_connect_data(event.data, event.stream_ended)
                elif event.stream_id not in self._ended:
                    await self._to_http_stream(event.stream_id, Body(stream_id=event.stream_id, data=event.data))
                    if event.stream_ended:
                        await self._to_http_stream(event.stream_id, EndBody(stream_id=event.stream_id))

    async def _to_http_stream(self, stream_id: int, event: Any) -> None:
        stream = self.streams.get(stream_id)  # absent once Hypercorn closed it
        if stream is not None:
            await stream.handle(event)

    def _stream_data(self, session_id: int, stream_id: int, data: bytes, ended: bool) -> None:
        session = self.wt_sessions.get(session_id)
        if session is not None:
            session._on_stream_data(stream_id, data, ended)
        elif session_id in self._ended:
            self.refuse_stream(stream_id, WT_SESSION_GONE)
        elif session_id in self.streams:  # a plain HTTP request, not a session
            self.refuse_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)
        else:
            self._hold_early(session_id, stream_id, data, ended)

    def _hold_early(self, session_id: int, stream_id: int, data: bytes, ended: bool) -> None:
        """Keep (bounded) the data of a stream whose CONNECT has not been seen yet."""
        if not self._early.hold(session_id, stream_id, data, ended):
            self.refuse_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)

    def _refuse_early(self, session_id: int) -> None:
        """``session_id`` turned out to be a plain request: refuse streams that claimed it."""
        for stream_id in self._early.take_stream_ids(session_id):
            self.refuse_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)

    def _route_reset(self, stream_id: int, code: int) -> None:
        connect = self.wt_sessions.get(stream_id)
        if connect is not None:
            connect._on_connect_reset(code)
            return
        if stream_id in self._early:
            self._early.drop(stream_id)
            return
        for session in self.wt_sessions.values():
            if session.owns(stream_id) or stream_id in session._stopped:
                session._on_stream_reset(stream_id, code)
                return

    def _route_stop(self, stream_id: int, code: int) -> None:
        connect = self.wt_sessions.get(stream_id)
        if connect is not None:
            connect._on_connect_reset(code)
            return
        for session in self.wt_sessions.values():
            if session.owns(stream_id):
                session._on_stop_sending(stream_id, code)
                return

    # -- sessions
    async def _open_session(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        early = self._early.take(stream_id)
        too_many = len(self.wt_sessions) >= self.max_sessions
        if self.context.terminated.is_set() or not _asyncio_running() or event.stream_ended or too_many:
            status = (b"503" if self.context.terminated.is_set() else b"501" if not _asyncio_running()
                      else b"400" if event.stream_ended else b"429")
            if status == b"501":
                logger.warning("WebTransport needs an asyncio (or uvloop) worker; refusing the session")
            elif status == b"429":
                logger.info("%s: refusing a WebTransport session: %d already open on this connection", self.client,
                            len(self.wt_sessions))
            with contextlib.suppress(Exception):
                self.connection.send_headers(stream_id, [(b":status", status)], end_stream=True)
            for sid, _, _ in early:
                self.refuse_stream(sid, WT_BUFFERED_STREAM_REJECTED)
            self._ended[stream_id] = None
            self.transmit_soon()
            return
        session = WebTransportSession(self, stream_id, client=self.client, limits=_app_limits(self.app))
        session.response_headers = list(self.config.response_headers("h3"))
        self.wt_sessions[stream_id] = session
        scope, adapter = build_scope(session, event.headers, server=self.server, root_path=self.config.root_path,
                                     state=self.state)
        for sid, data, ended in early:
            session._on_stream_data(sid, data, ended)
        loop = asyncio.get_running_loop()

        async def call_app(scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send, functools.partial(loop.run_in_executor, None), _call_soon)

        self._spawn(adapter.run(call_app, scope))
        if self._shutdown_watch is None:
            self._shutdown_watch = loop.create_task(self._watch_shutdown())
        await self.context.mark_request()

    def _spawn(self, coro: Awaitable[None]) -> None:
        guarded = _guarded(coro)
        try:
            self.task_group.spawn(lambda: guarded)
        except RuntimeError:  # the worker's task group is shutting down
            task = asyncio.ensure_future(guarded)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def session_ended(self, session: WebTransportSession) -> None:
        if self.wt_sessions.pop(session.session_id, None) is not None:
            self._ended[session.session_id] = None
            while len(self._ended) > MAX_ENDED_SESSIONS:
                self._ended.popitem(last=False)
        if not self.wt_sessions:
            self._all_ended.set()

    async def _watch_shutdown(self) -> None:
        """When the worker stops: tell every session, DRAIN it, wait out the grace, close what remains."""
        await self.context.terminated.wait()
        graceful_timeout = float(self.config.graceful_timeout)
        grace = shutdown_grace(graceful_timeout)
        for session in list(self.wt_sessions.values()):
            session.request_shutdown(grace)
            if session.state == "accepted":
                with contextlib.suppress(Exception):
                    session.drain()
        if self.wt_sessions:
            self._all_ended.clear()
            # the application closes its sessions at the deadline: give that close a moment to land
            slack = min(0.25, (graceful_timeout - grace) / 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_ended.wait(), grace + slack)
        for session in list(self.wt_sessions.values()):
            if session.state == "pending":
                session.reject(503)
            else:
                session.close(0, "server shutting down")
        if not self.streams:
            await self._flush()  # the sessions' last capsules go out before CONNECTION_CLOSE
            self.quic.close(error_code=H3_NO_ERROR, reason_phrase="server shutting down")
        self.transmit_soon()

    # -- SessionHost
    def finish_sending(self, stream_id: int) -> None:
        self.h3.finish_webtransport_sending(stream_id)

    def transmit_soon(self) -> None:
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio (trio worker): the QUIC loop flushes after each event
                return
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        task = asyncio.ensure_future(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        try:
            await self.send()
        except Exception:
            logger.exception("sending QUIC datagrams failed")

    def after_transmit(self) -> None:
        for session in list(self.wt_sessions.values()):
            session._after_transmit()


async def _guarded(coro: Awaitable[None]) -> None:
    """Run ``coro`` in Hypercorn's task group without ever failing it (that would stop the listener)."""
    try:
        await coro
    except Exception:
        logger.exception("WebTransport session task failed")


def _call_soon(func: Callable[..., Any], *args: Any) -> Any:
    raise RuntimeError("call_soon is only available to WSGI applications")


_QuicTimer = QuicTimer  # its name before it moved to hypercorn_quic

# -- H3, H4, H6, H7, H8 (wrappers) and installation
_ORIGINALS: dict[str, Any] = {}
_applied = False
_STOCK_PROTOCOL_SEND = getattr(hc_udp_server.UDPServer, "protocol_send", None)


def _quic_protocol_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _ORIGINALS["QuicProtocol.__init__"](self, *args, **kwargs)
    settings = current_settings()
    config = self.quic_config
    config.max_datagram_frame_size = MAX_DATAGRAM_FRAME_SIZE
    config.max_data = settings.connection_receive_window  # the windows of our credit policy (H5)
    config.max_stream_data = settings.stream_receive_window
    self.moqt_admission = Admission(settings.admission_policy(), log=logger)
    workers = getattr(self.config, "workers", 1)
    if workers > 1:
        message = (f"moqt_asgi: hypercorn runs {workers} workers on one QUIC socket. QUIC packets will reach "
                   "the wrong worker and connections (HTTP/3 and WebTransport) will fail. Use --workers 1 "
                   "per UDP port.")
        logger.error(message)
        print(message, file=sys.stderr, flush=True)


async def _quic_protocol_send_all(self: Any, connection: Any) -> None:
    if isinstance(connection.task, hc_worker_context.AsyncioSingleTask):  # H7
        quic = connection.quic
        datagrams = quic.datagrams_to_send(now=self.context.time())
        send = self.send
        server: Any = getattr(send, "__self__", None)
        if getattr(send, "__func__", None) is _STOCK_PROTOCOL_SEND and server.transport is not None:
            sendto = server.transport.sendto  # what UDPServer.protocol_send does, without a coroutine per datagram
            for data, address in datagrams:
                sendto(data, address)
        else:
            for data, address in datagrams:
                await send(RawData(data=data, address=address))
        QuicTimer.of(self, connection).arm(quic.get_timer())
    else:
        await _ORIGINALS["QuicProtocol.send_all"](self, connection)
    h3 = connection.h3
    if isinstance(h3, WebTransportH3Protocol):
        h3.after_transmit()


def _udp_server_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _ORIGINALS["UDPServer.__init__"](self, *args, **kwargs)
    self.protocol_queue = asyncio.Queue(UDP_QUEUE_SIZE)


async def _udp_server_run(self: Any) -> None:
    waker = asyncio.ensure_future(_wake_on_shutdown(self))
    try:
        await _ORIGINALS["UDPServer.run"](self)
    except asyncio.CancelledError:
        if self.context.terminated.is_set():
            _report_cut(self)
        raise
    finally:
        waker.cancel()
        if self.context.terminated.is_set() and self.transport is not None:
            self.transport.close()  # Hypercorn never closes its UDP sockets (a programmatic serve() would leak them)


def _report_cut(server: Any) -> None:
    """Hypercorn's ``graceful_timeout`` ran out while ``server`` was stopping: say what it cut short."""
    connections = getattr(getattr(server, "protocol", None), "connections", {})
    quics = {id(c.quic): c.quic for c in connections.values()}
    live = sum(getattr(quic, "_state", None) not in _CLOSING_STATES for quic in quics.values())
    if live:
        logger.warning("%d QUIC connection(s) still open when Hypercorn's graceful_timeout ran out", live)
    elif quics:  # closed already: only QUIC's closing period was cut short
        logger.debug("Hypercorn's graceful_timeout ended the closing period of %d QUIC connection(s)", len(quics))
    else:
        logger.warning("applications still running when Hypercorn's graceful_timeout ran out")


async def _wake_on_shutdown(server: Any) -> None:
    """Hypercorn's UDP loop re-checks "stopping and no connections left" only when a datagram
    arrives; once stopping, feed it no-op events so it ends as soon as the last connection did."""
    await server.context.terminated.wait()
    while True:
        with contextlib.suppress(asyncio.QueueFull):
            server.protocol_queue.put_nowait(Closed())
        await asyncio.sleep(0.05)


def _version(distribution: str, module: object) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def check_compatible() -> None:
    """Raise :class:`IncompatibleHypercorn` unless every name the patch relies on is where it expects."""
    hypercorn_version = _version("hypercorn", hc_h3)
    aioquic_version = _version("aioquic", aioquic)
    if not hypercorn_version.startswith(SUPPORTED_HYPERCORN) or not aioquic_version.startswith(SUPPORTED_AIOQUIC):
        raise IncompatibleHypercorn(
            f"WebTransport support is written for hypercorn {SUPPORTED_HYPERCORN}* and aioquic {SUPPORTED_AIOQUIC}*; "
            f"found hypercorn {hypercorn_version} and aioquic {aioquic_version}")
    required = [
        (hc_h3, "H3Connection"), (hc_h3, "H3Protocol"), (hc_quic, "H3Protocol"), (hc_quic, "QuicConnection"),
        (hc_quic, "QuicProtocol"), (hc_udp_server, "UDPServer"),
        (hc_h3.H3Protocol, "_create_stream"), (hc_h3.H3Protocol, "handle"), (hc_h3.H3Protocol, "stream_send"),
        (hc_quic.QuicProtocol, "send_all"), (hc_quic.QuicProtocol, "_handle_events"), (hc_quic.QuicProtocol, "handle"),
        (hc_udp_server.UDPServer, "run"), (hc_udp_server.UDPServer, "datagram_received"),
        (hc_udp_server.UDPServer, "protocol_send"),
        (hc_worker_context, "AsyncioSingleTask"), (hc_quic.QuicProtocol, "_handle_timer"),
        (H3Connection, "create_webtransport_stream"), (H3Connection, "_get_or_create_stream"),
        (H3Connection, "send_datagram"), (H3Stream, "is_ended"),
    ]
    missing = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in required if not hasattr(owner, name)]
    if missing:
        raise IncompatibleHypercorn(f"hypercorn/aioquic internals moved: missing {', '.join(missing)}")


def apply(*, force: bool = False) -> None:
    """Install H1 to H8 into Hypercorn (idempotent). Raises :class:`IncompatibleHypercorn`."""
    global _applied
    if _applied:
        return
    try:
        check_compatible()
    except IncompatibleHypercorn:
        if not force:
            raise
    _ORIGINALS["QuicProtocol.__init__"] = hc_quic.QuicProtocol.__init__
    _ORIGINALS["QuicProtocol.send_all"] = hc_quic.QuicProtocol.send_all
    _ORIGINALS["QuicProtocol.handle"] = hc_quic.QuicProtocol.handle
    _ORIGINALS["UDPServer.__init__"] = hc_udp_server.UDPServer.__init__
    _ORIGINALS["UDPServer.run"] = hc_udp_server.UDPServer.run
    setattr(hc_h3, "H3Connection", WebTransportH3Connection)  # H1  # noqa: B010
    setattr(hc_quic, "H3Protocol", WebTransportH3Protocol)  # H2  # noqa: B010
    setattr(hc_quic.QuicProtocol, "__init__", _quic_protocol_init)  # H3  # noqa: B010
    setattr(hc_quic.QuicProtocol, "send_all", _quic_protocol_send_all)  # H4, H7  # noqa: B010
    setattr(hc_quic, "QuicConnection", WebTransportQuicConnection)  # H5  # noqa: B010
    setattr(hc_quic.QuicProtocol, "handle", admission_handle(_ORIGINALS["QuicProtocol.handle"]))  # H8  # noqa: B010
    setattr(hc_udp_server.UDPServer, "__init__", _udp_server_init)  # H6  # noqa: B010
    setattr(hc_udp_server.UDPServer, "run", _udp_server_run)  # H6  # noqa: B010
    _applied = True


def applied() -> bool:
    return _applied


__all__ = [
    "IncompatibleHypercorn",
    "WebTransportH3Connection",
    "WebTransportH3Protocol",
    "WebTransportQuicConnection",
    "apply",
    "applied",
    "check_compatible",
    "configure",
    "current_settings",
    "shutdown_grace",
]

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
    keeps Hypercorn's behaviour (Hypercorn's own ``H3Protocol.handle`` still
    dispatches every event, see below); an exception closes that one
    connection instead of the UDP listener. At most ``max_webtransport_sessions`` per
    connection (429 beyond); request streams whose HEADERS do not complete
    within ``header_timeout`` are reset. When the worker stops, every session is
    told so (:meth:`WebTransportSession.request_shutdown`, the ASGI
    ``webtransport.shutdown`` message: a MoQ app sends GOAWAY) with a grace
    within ``graceful_timeout`` (:func:`shutdown_grace`) and gets DRAIN;
    what is left after the grace is closed, then the QUIC connection.
H3  ``QuicProtocol.__init__``: ``max_datagram_frame_size = 65536`` (HTTP
    datagrams are announced, so the transport parameter must be too), the
    receive windows of the settings (``max_data``/``max_stream_data``); with
    ``workers > 1`` the worker refuses to start (one UDP socket shared by
    several processes misroutes QUIC packets): it exits with status 78 and
    Hypercorn stops the others.
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
    stopped, the UDP socket is closed (Hypercorn leaves it open); its
    buffers are raised (:func:`~moqt_asgi.transport.udp.grow_socket_buffers`) and it reads up to 64
    datagrams per wake-up (:func:`~moqt_asgi.transport.udp.read_in_batches`).
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
H9  ``QuicProtocol.__init__`` (with H3): the certificate the QUIC listener
    presents (Hypercorn's ``--certfile``, as loaded into the listener's
    QUIC configuration) is offered to the application once per worker, before
    any request: the first object along the ``.app`` chain of Hypercorn's
    wrapper that has ``offer_certificate(certificate)`` (a
    :class:`~moqt_asgi.MoQ`, which serves it at ``/certificate.sha256``);
    when that object's ``metrics`` has ``watch_admission``, the listener's
    connection counters go to it too.
H10 ``hypercorn.protocol.ws_stream.WSStream.scope`` (a descriptor; Hypercorn's
    code is untouched): the ``websocket`` scope Hypercorn builds for an
    upgrade (HTTP/1.1, HTTP/2 or HTTP/3) gains the ``moqt.shutdown``
    extension, ``{"on_shutdown": register}``, before the application is
    spawned. ``register(callback)`` starts a task that waits for the worker
    to stop, then calls ``callback(shutdown_grace(graceful_timeout))`` (a
    MoQ app sends GOAWAY, and closes what is left at that deadline, before
    Hypercorn cancels the connection); it returns a function that cancels
    that task (a session calls it when it ends). asyncio and uvloop workers
    only (under trio the scope is left as Hypercorn built it).

The QUIC settings (receive windows, connection caps, Retry, handshake
deadline, WebTransport sessions per connection, HTTP/3 header deadline) are
a :class:`~moqt_asgi.endpoints.QuicSettings`: the one given to :func:`configure`
(call it from the application module), else one read from ``MOQT_*``
environment variables (:meth:`QuicSettings.from_environment`).

The application is never awaited from the QUIC loop: sessions feed
bounded buffers, and the app runs in its own task.

**Hypercorn's dispatch is kept.** :class:`WebTransportH3Protocol` does not
re-implement ``H3Protocol.handle``: it calls it, and the connection's
:class:`~moqt_asgi.webtransport.router.WebTransportRouter` (the one our h3
server and the client use too) sits inside the ``H3Connection.handle_event``
that Hypercorn calls, so an upstream fix to the dispatch applies here. What
Hypercorn does not see, and why:

* a WebTransport CONNECT: its dispatch would make it a WebSocket stream;
* WebTransport stream data, HTTP datagrams, the capsules on a session's
  CONNECT stream and trailers on it: it has no sessions, and would index
  its request table with the session's stream and fail;
* late DATA on the CONNECT stream of a session that ended: likewise.

QUIC resets, STOP_SENDING and the connection's end are routed to the
sessions and still passed to Hypercorn (which ignores them). One stand-in
remains: Hypercorn's dispatch indexes ``streams[stream_id]`` for DATA on a
request stream that it may already have closed (the application answered
before the body ended), which raises ``KeyError``; ``streams`` hands out a
stand-in that drops such late data instead.

**The fence.** Hypercorn internals are used in this module and
:mod:`.hypercorn_quic` only; :func:`check_compatible` names each of them
(classes, methods, the data attributes its objects set, the fields of its
connection record, the application wrapper's call) and runs before anything
is patched, so an upgrade that moves one fails with the name of what moved.
aioquic internals go through :mod:`moqt_asgi.transport.aioquic_connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import aioquic
import hypercorn.app_wrappers as hc_app_wrappers
import hypercorn.asyncio.task_group as hc_task_group
import hypercorn.asyncio.udp_server as hc_udp_server
import hypercorn.asyncio.worker_context as hc_worker_context
import hypercorn.config as hc_config
import hypercorn.protocol.h3 as hc_h3
import hypercorn.protocol.quic as hc_quic
import hypercorn.protocol.ws_stream as hc_ws_stream
from aioquic.h3.events import HeadersReceived
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from hypercorn.events import Closed, RawData

from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..transport import aioquic_connection
from ..transport.admission import Admission
from ..transport.aioquic_connection import CreditedQuicConnection, IncompatibleAioquic, connection_closing
from ..transport.transmit import TransmitSoon
from ..transport.udp import grow_socket_buffers, read_in_batches
from .asgi import build_scope
from .capsules import H3_INTERNAL_ERROR, H3_NO_ERROR
from .early import EarlyStreams
from .h3 import HeaderDeadline, WebTransportH3Connection
from .hypercorn_quic import (
    QuicTimer,
    WebTransportQuicConnection,
    admission_handle,
    configure,
    current_settings,
    refuse_shared_quic_socket,
)
from .router import MAX_EARLY_BYTES, MAX_EARLY_STREAMS, RouterHost, WebTransportRouter, is_webtransport_connect
from .session import WebTransportSession

logger = logging.getLogger("moqt_asgi.webtransport")

SUPPORTED_HYPERCORN = "0.18."
SUPPORTED_AIOQUIC = "1.7."
UDP_QUEUE_SIZE = 1000
MAX_DATAGRAM_FRAME_SIZE = 65536
SHUTDOWN_MARGIN = 0.5
"""Seconds of Hypercorn's ``graceful_timeout`` kept for closing the connections after the sessions' grace."""


class IncompatibleHypercorn(RuntimeError):
    """The installed Hypercorn or aioquic does not have what the patch relies on."""


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
class _ClosedStream:
    """Stands in for a request stream Hypercorn already closed: late body events are dropped."""

    async def handle(self, event: Any) -> None:
        return None


_CLOSED_STREAM = _ClosedStream()


class _Streams(dict[int, Any]):
    """Hypercorn's table of request streams, where a stream it already closed is a :class:`_ClosedStream`.

    Hypercorn's ``H3Protocol.handle`` indexes the table for each DATA frame
    and for the end of a body; the stream is gone once the application has
    answered, and the client may still be sending (KeyError).
    """

    def __missing__(self, stream_id: int) -> Any:
        return _CLOSED_STREAM


class WebTransportH3Protocol(hc_h3.H3Protocol, RouterHost):
    """Hypercorn's H3Protocol, plus WebTransport sessions.

    Hypercorn's own ``handle`` still dispatches every QUIC event: the
    connection's :class:`~moqt_asgi.webtransport.router.WebTransportRouter`
    (set as the HTTP/3 connection's ``router``) takes the WebTransport
    events out of what ``H3Connection.handle_event`` returns, and sees the
    HEADERS of each request first: a WebTransport CONNECT opens a session
    (and never reaches Hypercorn); anything else goes on to Hypercorn's
    ``_create_stream`` as before.
    """

    def __init__(self, app: Any, config: Any, context: Any, task_group: Any, state: Any,
                 client: tuple[str, int] | None, server: tuple[str, int] | None, quic: QuicConnection,
                 send: Callable[[], Awaitable[None]]) -> None:
        super().__init__(app, config, context, task_group, state, client, server, quic, send)
        if not isinstance(self.connection, WebTransportH3Connection):
            raise IncompatibleHypercorn("hypercorn.protocol.h3.H3Connection is not patched")
        self.quic = quic
        self.h3: WebTransportH3Connection = self.connection
        self.streams = _Streams(self.streams)
        self.transmitter = TransmitSoon(self._start_flush)  # no asyncio loop (a trio worker): Hypercorn flushes
        settings = current_settings()
        self.max_sessions = settings.max_webtransport_sessions
        if isinstance(quic, CreditedQuicConnection):
            quic.on_credit = self.transmit_soon
        self._header_deadline = HeaderDeadline(self.connection, settings.header_timeout, self.transmit_soon, client)
        self.router = WebTransportRouter(self, early=EarlyStreams(MAX_EARLY_STREAMS, MAX_EARLY_BYTES),
                                         is_request=self.streams.__contains__, on_headers=self._headers)
        self.h3.router = self.router
        self._opened = 0
        """Sessions opened while Hypercorn's ``handle`` ran, to count as requests once it returned."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown_watch: asyncio.Task[None] | None = None
        self._all_ended = asyncio.Event()

    @property
    def wt_sessions(self) -> dict[int, WebTransportSession]:
        """The open WebTransport sessions, by the id of their CONNECT stream."""
        return self.router.sessions

    # -- QUIC and HTTP/3 events
    async def handle(self, quic_event: Any) -> None:
        try:
            if isinstance(quic_event, ConnectionTerminated):
                self._header_deadline.cancel()
                if self._shutdown_watch is not None:
                    self._shutdown_watch.cancel()
            await super().handle(quic_event)  # Hypercorn's dispatch; the router has taken the WebTransport events
            while self._opened:
                self._opened -= 1
                await self.context.mark_request()
            if self.h3.incomplete and _asyncio_running():
                self._header_deadline.check()
        except Exception:
            # Raising here would end Hypercorn's UDP loop: every connection of the worker would die.
            logger.exception("error handling %s; closing this QUIC connection", type(quic_event).__name__)
            with contextlib.suppress(Exception):
                self.quic.close(error_code=H3_INTERNAL_ERROR, reason_phrase="internal error")
                self.transmit_soon()

    def _headers(self, event: HeadersReceived) -> bool:
        """The router's ``on_headers``: open WebTransport sessions; leave every other request to Hypercorn."""
        if is_webtransport_connect(event.headers):
            self._open_session(event)
            return True
        if not self.context.terminated.is_set():
            self.router.refuse_early(event.stream_id)
        return False

    # -- sessions
    def _open_session(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
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
            self.router.refuse(stream_id)
            self.transmit_soon()
            return
        session = WebTransportSession(self, stream_id, client=self.client, limits=_app_limits(self.app))
        session.response_headers = list(self.config.response_headers("h3"))
        scope, adapter = build_scope(session, event.headers, server=self.server, root_path=self.config.root_path,
                                     state=self.state)
        self.router.open(session)
        loop = asyncio.get_running_loop()

        async def call_app(scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send, functools.partial(loop.run_in_executor, None), _call_soon)

        self._spawn(adapter.run(call_app, scope))
        if self._shutdown_watch is None:
            self._shutdown_watch = loop.create_task(self._watch_shutdown())
        self._opened += 1

    def _spawn(self, coro: Awaitable[None]) -> None:
        guarded = _guarded(coro)
        try:
            self.task_group.spawn(lambda: guarded)
        except RuntimeError:  # the worker's task group is shutting down
            task = asyncio.ensure_future(guarded)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def session_ended(self, session: WebTransportSession) -> None:
        super().session_ended(session)
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

    # -- transmission
    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        try:
            await self.send()
        except Exception:
            logger.exception("sending QUIC datagrams failed")

    def after_transmit(self) -> None:
        self.router.after_transmit()


async def _guarded(coro: Awaitable[None]) -> None:
    """Run ``coro`` in Hypercorn's task group without ever failing it (that would stop the listener)."""
    try:
        await coro
    except Exception:
        logger.exception("WebTransport session task failed")


def _call_soon(func: Callable[..., Any], *args: Any) -> Any:
    raise RuntimeError("call_soon is only available to WSGI applications")


# -- H10
_WEBSOCKET_WATCHES: set[asyncio.Task[None]] = set()


def websocket_shutdown(context: Any, config: Any) -> dict[str, Callable[..., Any]]:
    """The ``moqt.shutdown`` extension of a WebSocket scope served by the worker of ``context`` (H10).

    ``register(callback)`` returns a function that withdraws the registration.
    """
    def register(callback: Callable[[float], object]) -> Callable[[], object]:
        task = asyncio.get_running_loop().create_task(_tell_when_stopping(context, config, callback))
        _WEBSOCKET_WATCHES.add(task)
        task.add_done_callback(_WEBSOCKET_WATCHES.discard)
        return task.cancel

    return {"on_shutdown": register}


async def _tell_when_stopping(context: Any, config: Any, callback: Callable[[float], object]) -> None:
    await context.terminated.wait()
    try:
        callback(shutdown_grace(float(config.graceful_timeout)))
    except Exception:
        logger.exception("telling a WebSocket session that the server stops failed")


class _WebSocketScope:
    """H10: ``WSStream.scope``; the scope Hypercorn builds gains ``moqt.shutdown`` as it is stored."""

    def __get__(self, stream: Any, owner: type | None = None) -> Any:
        if stream is None:
            return self
        try:
            return stream.__dict__["scope"]
        except KeyError:
            raise AttributeError("scope") from None

    def __set__(self, stream: Any, scope: Any) -> None:
        extensions = scope.get("extensions") if isinstance(scope, dict) else None
        if isinstance(extensions, dict) and _asyncio_running():
            extensions.setdefault("moqt.shutdown", websocket_shutdown(stream.context, stream.config))
        stream.__dict__["scope"] = scope


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
    if settings.max_datagram_size is not None:
        config.max_datagram_size = settings.max_datagram_size
    self.moqt_admission = Admission(settings.admission_policy(), log=logger)
    _tell_app(self.app, config.certificate, self.moqt_admission)  # H9
    workers = getattr(self.config, "workers", 1)
    if workers > 1:
        refuse_shared_quic_socket(workers)


def _tell_app(app: Any, certificate: Any, admission: Admission) -> None:
    """H9: the first app along the ``.app`` chain that takes a certificate learns the QUIC listener's, and its
    metrics the listener's connection counters."""
    target, seen = app, 0
    while target is not None and seen < 16:
        offer = getattr(target, "offer_certificate", None)
        if callable(offer):
            try:
                if certificate is not None:
                    offer(certificate)
                watch = getattr(getattr(target, "metrics", None), "watch_admission", None)
                if callable(watch):
                    watch(admission)
            except Exception:
                logger.exception("telling the application about its QUIC listener failed")
            return
        target, seen = getattr(target, "app", None), seen + 1


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
    if self.transport is not None:
        grow_socket_buffers(self.transport)  # the kernel's default drops bursts under load
        read_in_batches(self.transport)  # not one datagram per event-loop step
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
    live = sum(not connection_closing(quic) for quic in quics.values())
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


# -- the fence: every Hypercorn name the patch relies on, checked before anything is patched
_MODULES = {"h3": hc_h3, "quic": hc_quic, "udp_server": hc_udp_server, "worker_context": hc_worker_context,
            "config": hc_config, "app_wrappers": hc_app_wrappers, "task_group": hc_task_group,
            "ws_stream": hc_ws_stream}
_REQUIRED = (
    "h3.H3Connection", "h3.H3Protocol.handle", "quic.H3Protocol", "quic.QuicConnection", "quic._Connection",
    "quic.QuicProtocol.send_all", "quic.QuicProtocol._handle_events", "quic.QuicProtocol.handle",
    "quic.QuicProtocol._handle_timer",
    "udp_server.UDPServer.run", "udp_server.UDPServer.datagram_received", "udp_server.UDPServer.protocol_send",
    "worker_context.AsyncioSingleTask", "worker_context.WorkerContext.mark_request", "worker_context.WorkerContext.time",
    "config.Config.response_headers", "config.Config.root_path", "config.Config.graceful_timeout",
    "config.Config.workers", "app_wrappers.ASGIWrapper.__call__", "task_group.TaskGroup.spawn",
    "ws_stream.WSStream.handle",
)
_CODE_NAMES = (
    # the attributes each method sets or reads, from its code (making instances needs a running server)
    ("h3.H3Protocol.__init__", ("app", "client", "config", "connection", "context", "send", "server", "state",
                                "streams", "task_group")),
    ("h3.H3Protocol.handle", ("connection", "handle_event", "streams")),  # the router's hook into it
    ("quic.QuicProtocol.__init__", ("app", "config", "connections", "context", "quic_config", "send",
                                    "task_group")),
    ("app_wrappers.ASGIWrapper.__init__", ("app",)),  # H9 walks the wrapper's .app
    ("udp_server.UDPServer.__init__", ("context", "protocol_queue", "transport")),
    ("udp_server.UDPServer.run", ("protocol",)),
    ("worker_context.WorkerContext.__init__", ("terminated",)),
    ("ws_stream.WSStream.__init__", ("config", "context")),  # H10 reads them from the stream
    ("ws_stream.WSStream.handle", ("scope", "spawn_app")),  # H10: the scope is stored, then the app spawned
)
_CONNECTION_FIELDS = ("cids", "quic", "task", "h3")
"""Fields of Hypercorn's per-connection record (``hypercorn.protocol.quic._Connection``)."""
_APP_CALL = ("scope", "receive", "send", "sync_spawn", "call_soon")
"""Hypercorn's application wrapper is called with these (sessions call it as Hypercorn's streams do)."""
_ABSENT = object()


def _lookup(path: str) -> tuple[str, Any]:
    """``("hypercorn.module.Name.attr", the object)`` for a path of :data:`_REQUIRED`; the object is ``_ABSENT`` if missing.

    Methods patched by :func:`apply` are looked up as Hypercorn wrote them.
    """
    module, _, rest = path.partition(".")
    owner: Any = _MODULES[module]
    label = f"{owner.__name__}.{rest}"
    if rest.count(".") == 1 and rest in _ORIGINALS:
        return label, _ORIGINALS[rest]
    for part in rest.split("."):
        owner = getattr(owner, part, _ABSENT)
        if owner is _ABSENT:
            break
    return label, owner


def _code_names(function: Any) -> set[str]:
    """The global and attribute names a function's code uses."""
    code = getattr(function, "__code__", None)
    return set(code.co_names) if code is not None else set()


def check_compatible(*, versions: bool = True) -> None:
    """Raise :class:`IncompatibleHypercorn` unless every name the patch relies on is where it expects.

    Covers the versions (unless ``versions`` is false), the modules'
    classes and methods, the data attributes of Hypercorn's objects (read
    from the code of the methods that set them), the fields of its
    connection record, the call signature of its application wrapper, and
    (through :func:`moqt_asgi.transport.aioquic_connection.check_compatible`)
    the aioquic internals.
    """
    hypercorn_version = _version("hypercorn", hc_h3)
    aioquic_version = _version("aioquic", aioquic)
    if versions and (not hypercorn_version.startswith(SUPPORTED_HYPERCORN)
                     or not aioquic_version.startswith(SUPPORTED_AIOQUIC)):
        raise IncompatibleHypercorn(
            f"WebTransport support is written for hypercorn {SUPPORTED_HYPERCORN}* and aioquic {SUPPORTED_AIOQUIC}*; "
            f"found hypercorn {hypercorn_version} and aioquic {aioquic_version}")
    missing = [label for label, found in map(_lookup, _REQUIRED) if found is _ABSENT]
    for path, names in _CODE_NAMES:
        label, function = _lookup(path)
        if function is not _ABSENT:
            used = _code_names(function)
            owner, _, method = label.rpartition(".")
            missing += [f"{owner}.{name} (in {method})" for name in names if name not in used]
    record = getattr(hc_quic, "_Connection", None)
    if record is not None:
        fields = {field.name for field in dataclasses.fields(record)} if dataclasses.is_dataclass(record) else set()
        missing += [f"hypercorn.protocol.quic._Connection.{name}" for name in _CONNECTION_FIELDS if name not in fields]
    label, call = _lookup("app_wrappers.ASGIWrapper.__call__")
    if call is not _ABSENT:
        parameters = tuple(inspect.signature(call).parameters)[1:]
        if parameters != _APP_CALL:
            missing.append(f"{label}{_APP_CALL} (found {parameters})")
    stored_scope = getattr(hc_ws_stream.WSStream, "scope", None)  # H10 adds the class attribute
    if stored_scope is not None and not isinstance(stored_scope, _WebSocketScope):
        missing.append("hypercorn.protocol.ws_stream.WSStream.scope (an instance attribute, now defined on the class)")
    if missing:
        raise IncompatibleHypercorn(f"hypercorn internals moved: missing {', '.join(missing)}")
    try:
        aioquic_connection.check_compatible()
    except IncompatibleAioquic as exc:
        raise IncompatibleHypercorn(str(exc)) from None


def apply(*, force: bool = False) -> None:
    """Install H1 to H10 into Hypercorn (idempotent). Raises :class:`IncompatibleHypercorn`.

    ``force`` patches other Hypercorn and aioquic versions too, as long as
    every name the patch relies on is where it expects.
    """
    global _applied
    if _applied:
        return
    check_compatible(versions=not force)
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
    setattr(hc_ws_stream.WSStream, "scope", _WebSocketScope())  # H10  # noqa: B010
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
    "websocket_shutdown",
]

"""Hypercorn's QUIC connections under the patch: their class (H5), their timer (H7), admission (H8),
and the refusal of several workers on one QUIC socket (H3).

See :mod:`moqt_asgi.webtransport.hypercorn` for the list of hooks;
this module holds the pieces that work on Hypercorn's ``QuicProtocol`` and
its ``_Connection`` records, and the :class:`~moqt_asgi.endpoints.QuicSettings`
they follow (:func:`configure`, :func:`current_settings`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from aioquic.quic.packet import QuicErrorCode
from hypercorn.events import RawData

from ..transport.admission import Admission, encode_refusal, parse_initial
from ..transport.aioquic_connection import CreditedQuicConnection, parse_header, set_stream_limits
from ..transport.settings import QuicSettings

logger = logging.getLogger("moqt_asgi.webtransport")

MAX_STREAMS = 1000
"""Concurrent peer streams of each kind on Hypercorn's connections (aioquic's fixed default is 128)."""

_settings: QuicSettings | None = None


def configure(settings: QuicSettings | None) -> None:
    """The QUIC settings for Hypercorn's connections from now on (None: back to the environment's)."""
    global _settings
    _settings = settings


def current_settings() -> QuicSettings:
    """The settings given to :func:`configure`, else ``MOQT_*`` environment variables (read once)."""
    global _settings
    if _settings is None:
        _settings = QuicSettings.from_environment()
    return _settings


# -- H5
_RETRIED: dict[bytes, bytes] = {}
"""Retry source connection id -> the client's original destination connection id, for the connection being made."""


class WebTransportQuicConnection(CreditedQuicConnection):
    """The connection Hypercorn makes: our receive credit, a handshake deadline, room for more peer streams.

    Hypercorn passes the Initial's destination connection id as the original
    one; after a Retry (:func:`admission_handle`) that is our Retry's
    source id, and the original comes from the validated token.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        destination = kwargs.get("original_destination_connection_id")
        original = _RETRIED.pop(destination, None) if destination is not None else None
        if original is not None:
            kwargs["original_destination_connection_id"] = original
            kwargs["retry_source_connection_id"] = destination
        super().__init__(*args, **kwargs)
        set_stream_limits(self, MAX_STREAMS, MAX_STREAMS)
        if not self.configuration.is_client:
            self.handshake_timeout = current_settings().effective_handshake_timeout


# -- H7
class QuicTimer:
    """The timer of one of Hypercorn's QUIC connections, on the asyncio event loop.

    Stock Hypercorn restarts a task after every flush (``AsyncioSingleTask.restart``:
    cancel the sleeping task, await it, create a new one). Here one
    ``loop.call_at`` handle is kept per connection. It is replaced only when
    aioquic's deadline moves earlier; when the deadline moved later, the
    handle fires early and is simply set again. A due timer runs what
    Hypercorn's ``_handle_timer`` does after its sleep, in a task of the
    server's task group; unlike the stock task, that work is never cancelled
    halfway by the next flush.
    """

    __slots__ = ("armed_at", "connection", "deadline", "handle", "loop", "protocol", "running")

    def __init__(self, protocol: Any, connection: Any) -> None:
        self.protocol = protocol
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.deadline: float | None = None
        """When aioquic wants ``handle_timer`` called (None: no timer)."""
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = 0.0
        """When :attr:`handle` fires."""
        self.running = False
        """A task handling the expired timer is scheduled or running (it re-arms when done)."""

    @classmethod
    def of(cls, protocol: Any, connection: Any) -> QuicTimer:
        timer: QuicTimer | None = getattr(connection, "moqt_timer", None)
        if timer is None:
            timer = cls(protocol, connection)
            connection.moqt_timer = timer
        return timer

    def arm(self, deadline: float | None) -> None:
        self.deadline = deadline
        if self.running:
            return
        handle = self.handle
        if deadline is None:
            if handle is not None:
                handle.cancel()
                self.handle = None
        elif handle is None:
            self._set(deadline)
        elif deadline < self.armed_at:
            handle.cancel()
            self._set(deadline)

    def _set(self, deadline: float) -> None:
        self.armed_at = deadline
        self.handle = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self.handle = None
        deadline = self.deadline
        if deadline is None:
            return
        if deadline > self.armed_at:  # the deadline moved later since this handle was set
            self._set(deadline)
            return
        work = self._expired(deadline)
        try:
            self.protocol.task_group.spawn(lambda: work)
        except RuntimeError:  # the server's task group is finished: the connection is gone
            work.close()
            self.deadline = None
        else:
            self.running = True

    async def _expired(self, due: float) -> None:
        try:
            deadline = self.deadline
            if deadline is not None and deadline <= due:  # not moved later by a flush since it fired
                connection = self.connection
                # As aioquic's own protocol does: never earlier than the deadline (the loop may fire a bit early).
                connection.quic.handle_timer(now=max(deadline, self.loop.time()))
                await self.protocol._handle_events(connection, None)  # ends with send_all: a new deadline
        except Exception:
            # Raising into Hypercorn's task group would stop the worker's UDP server: end this connection only.
            logger.exception("the QUIC timer of a connection failed; closing that connection")
            if not await fail_connection(self.protocol, self.connection):
                self.deadline = None
        finally:
            self.running = False
            self.arm(self.deadline)


async def fail_connection(protocol: Any, connection: Any) -> bool:
    """Close ``connection`` after an internal error; if even that fails, forget it. True if it was closed."""
    try:
        connection.quic.close(error_code=QuicErrorCode.INTERNAL_ERROR, reason_phrase="internal error")
        await protocol.send_all(connection)
        return True
    except Exception:
        logger.exception("could not close the QUIC connection; dropping it")
        for cid in list(connection.cids):
            protocol.connections.pop(cid, None)
        connection.cids = set()
        return False


# -- H8
HYPERCORN_CID_LENGTH = 8
"""The connection id length Hypercorn parses headers with (aioquic's default)."""


def admission_handle(original: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any, Any], Awaitable[None]]:
    """Hypercorn's ``QuicProtocol.handle`` (``original``) behind the worker's :class:`Admission` (H8)."""

    async def handle(self: Any, event: Any) -> None:
        await _admitted_handle(self, event, original)

    return handle


async def _admitted_handle(self: Any, event: Any, original: Callable[[Any, Any], Awaitable[None]]) -> None:
    admission: Admission | None = getattr(self, "moqt_admission", None)
    new: bytes | None = None  # the destination id of an Initial that may create a connection
    if isinstance(event, RawData) and admission is not None and not self.context.terminated.is_set():
        header = parse_initial(event.data, HYPERCORN_CID_LENGTH)
        if header is not None and header.destination_cid not in self.connections:
            address, now = event.address, self.context.time()
            verdict = admission.decide(header, address)
            reply: bytes | None = None
            if verdict == "retry":
                reply = admission.retry_packet(header, address, now)
            elif verdict == "refuse":
                reply = admission.refusal_packet(header)
            elif verdict == "accept" and header.token and admission.policy.retry:
                vouched = admission.validate(header, address, now)
                if vouched is None:
                    reply = encode_refusal(header, QuicErrorCode.INVALID_TOKEN, "invalid token")
                    verdict = "refuse"
                else:
                    _RETRIED[header.destination_cid] = vouched
            if verdict != "accept":
                if reply is not None:
                    await self.send(RawData(data=reply, address=address))
                return
            new = header.destination_cid
    try:
        await original(self, event)
    except Exception:
        # Raising here would end Hypercorn's UDP loop: every connection of the worker would die.
        logger.exception("error handling a QUIC datagram; closing its connection")
        connection = _connection_of(self, event)
        if connection is not None:
            await fail_connection(self, connection)
    finally:
        if new is not None:
            _RETRIED.pop(new, None)
    if new is not None and admission is not None:
        connection = self.connections.get(new)
        if connection is not None and isinstance(connection.quic, CreditedQuicConnection):
            admission.admitted(connection.quic, event.address)


def _connection_of(protocol: Any, event: Any) -> Any:
    if not isinstance(event, RawData):
        return None
    try:
        header = parse_header(event.data, HYPERCORN_CID_LENGTH)
    except ValueError:
        return None
    return protocol.connections.get(header.destination_cid)



__all__ = ["QuicTimer", "WebTransportQuicConnection", "admission_handle", "configure", "current_settings",
           "fail_connection"]


#: The exit status of a worker that refuses ``--workers N`` with ``--quic-bind`` (``EX_CONFIG`` of sysexits.h).
SHARED_SOCKET_EXIT = 78


def shared_socket_message(workers: int) -> str:
    """Why Hypercorn cannot serve QUIC with several workers (pgjones/hypercorn#114)."""
    return (f"moqt_asgi: refusing to serve QUIC with --workers {workers}. Hypercorn's workers share one UDP "
            "socket, so each QUIC packet reaches whichever worker reads it first, not the one that holds its "
            "connection: handshakes and sessions fail at random (pgjones/hypercorn#114). Run --workers 1 per "
            "--quic-bind port: several Hypercorn processes on several ports, `python -m moqt_asgi serve`, or an "
            "edge tier (see docs/scaling.md).")


def refuse_shared_quic_socket(workers: int) -> NoReturn:
    """Stop this worker process at once, with :data:`SHARED_SOCKET_EXIT`.

    Hypercorn's parent process stops every worker and exits with this status
    when one worker exits with an error, so the whole server refuses to start.
    ``os._exit`` because this runs inside the worker's UDP task, where an
    exception would only end that task and leave HTTP serving with a broken
    QUIC listener.
    """
    message = shared_socket_message(workers)
    logger.critical(message)
    print(message, file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(SHARED_SOCKET_EXIT)

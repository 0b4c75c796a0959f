"""What a session's halves share: the engine's internal contract, and the per-stream state machines.

:class:`SessionCore` is the one object the engine's modules pass around.
:class:`~moqt_asgi.engine.session.Session` is the public facade over it;
``_publisher`` serves the streams the peer opens and ``_subscriber`` runs the
streams we open, each through the core's public attributes (public inside
this private module, as h11 keeps its state machine in ``_state.py``).

Streams and their state machines
================================

Every stream starts with a type (a varint) and then runs one of these
machines. "Peer" is the other end; codes are :class:`~.ErrorCode` values,
translated to each dialect's wire codes by the transport.

SUBSCRIBE (bidi, opened by the subscriber)
    subscriber: ``SUBSCRIBE`` → waits for the answer: lite-01..04 one
    ``SUBSCRIBE_OK`` (a second one is a protocol violation); lite-05/06 no
    answer until the first group exists, then ``SUBSCRIBE_START`` (the first
    group), possibly ``SUBSCRIBE_DROP`` (groups the publisher gave up), and
    ``SUBSCRIBE_END`` (the first group it will never send) before FIN.
    Either side may send ``SUBSCRIBE_UPDATE`` (priority, latency, range;
    lite-03+). FIN from the publisher: the track ended cleanly, and groups
    still in flight on their own streams are awaited
    (:meth:`~.track.TrackReader.end_after_stragglers`). A reset: refused or
    aborted with that code. FIN or reset from the subscriber: unsubscribed.
GROUP (uni, opened by the publisher, one per group)
    ``GROUP`` header (subscribe id, sequence) → frames (size, payload; from
    lite-05 a timestamp delta first) → FIN. A reset means the group was
    abandoned (``OLD`` when a newer one made it stale, ``CANCEL``...), never
    a cut-short group passed off as whole. A group for an unknown
    subscription is stopped with ``NOT_FOUND``.
ANNOUNCE (bidi, opened by whoever wants to learn what the other publishes)
    ``ANNOUNCE_PLEASE``/``ANNOUNCE_REQUEST`` (a prefix) → lite-01/02 an
    ``ANNOUNCE_INIT`` with every active path (at most
    ``Limits.max_sent_announce_init`` bytes sent; the rest follow as
    announcements), lite-04 an ``ANNOUNCE_OK`` (hop id, count), then one
    message per change (lite-06: ids for ``ANNOUNCE_END``/``UPDATE``). Sent
    under backpressure (``Limits.announce_backlog``); the reader closes
    (FIN) to stop. A path announced twice, or ended without being active, is
    a protocol violation.
FETCH (bidi, lite-03+)
    ``FETCH`` (a cached group, lite-06 a frame range) → its frames → FIN, or
    a reset (``NOT_FOUND``; ``BOUNDS_EXCEEDED`` past ``Limits.max_fetches``;
    ``TIMEOUT`` after ``Limits.fetch_timeout``). The requester sends FIN
    after its request.
TRACK (bidi, lite-05+)
    ``TRACK`` (broadcast, track) → ``TRACK_INFO`` (priority, max latency,
    timescale) → FIN, or ``NOT_FOUND``.
GOAWAY (bidi, lite-04+, at most once per session)
    ``GOAWAY`` (a URI; only a server may redirect) → FIN. A second one is a
    protocol violation.
SETUP (lite-05+: one uni stream per side; lite-01/02 and gomoqt: the first
bidi stream, which then carries ``SESSION_INFO`` for the session's life)
    see :mod:`~moqt_asgi.engine.handshake`.

Every request a peer can start is bounded (:class:`~.Limits`): its first
message must arrive within the session timeout, and the counts of
subscriptions, announce streams, fetches and bytes of frames being
assembled are capped per session.

Traffic totals (frames and payload bytes each way, groups dropped for a
slow subscriber) are plain ints bumped in place where a frame is handed to
the scheduler or read whole (``track.py``; FETCH replies in
``_publisher.py`` and ``Session.fetch_timed``), so counting costs no call
and no lock per frame.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable
from typing import Any

from ..auth.tokens import Grant
from ..protocol.codec import Codec
from ..protocol.errors import ErrorCode, ProtocolError, SessionClosed, StreamError
from ..protocol.limits import Limits
from ..transport.base import Connection
from ._scheduler import SendScheduler
from .mux import TrackMux
from .track import TrackReader, TrackWriter


class SessionCore:
    """The state of one session that the engine's modules share (see the module docstring).

    Everything here is the engine's: applications use
    :class:`~moqt_asgi.engine.session.Session`.
    """

    def __init__(self, connection: Connection, codec: Codec, *, mux: TrackMux, limits: Limits, is_client: bool,
                 path: str, timeout: float, log: logging.Logger) -> None:
        self.connection = connection
        self.codec = codec
        self.features = codec.features
        self.limits = limits
        self.mux = mux
        self.is_client = is_client
        self.path = path
        self.timeout = timeout
        """Seconds a peer has to send the first message of a stream (and to answer our requests)."""
        self.log = log
        self.grant: Grant | None = None
        """What the peer may publish and read (``None``: anything)."""
        self.scheduler = SendScheduler(connection)
        """Orders group data by priority, then newest group, and keeps the transport's queue short."""
        self.subscriptions: dict[int, TrackReader] = {}
        """Our subscriptions, by subscribe id."""
        self.published: dict[int, TrackWriter] = {}
        """The peer's subscriptions we serve, by its subscribe id (at most ``limits.max_subscriptions``)."""
        self.fetches = 0
        """FETCH requests being served (at most ``limits.max_fetches``)."""
        self.announce_streams = 0
        """Announce requests of the peer's being served (at most ``limits.max_announce_streams``)."""
        self.assembling = 0
        """Bytes of frames being read (declared sizes; at most ``limits.max_assembling_bytes``)."""
        self.frames_sent = 0
        """Frames handed to the transport for the peer's subscriptions and fetches (skipped groups not counted)."""
        self.frames_received = 0
        """Frames read whole from the peer's groups and fetch replies."""
        self.bytes_sent = 0
        """Payload bytes of :attr:`frames_sent` (frame headers not counted)."""
        self.bytes_received = 0
        """Payload bytes of :attr:`frames_received`."""
        self.groups_dropped = 0
        """Groups given up for a slow subscriber: reset with ``OLD`` here as publisher, or left unread in our
        subscriptions' queues."""
        self.close_reason: SessionClosed | None = None
        self.closed_event = asyncio.Event()
        self.goaway_uri: str | None = None
        """The peer's GOAWAY redirect once one arrived (``""``: no new address)."""
        self.goaway_event = asyncio.Event()
        self.task_group: asyncio.TaskGroup | None = None
        """The session's TaskGroup while it runs (set by :meth:`Session.run <.session.Session.run>`)."""
        self.tasks: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count()
        connection.error_codes = codec.error_codes

    # -- identity
    @property
    def version_name(self) -> str:
        return self.codec.name

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    # -- lifecycle
    def mark_closed(self, reason: SessionClosed) -> None:
        """Record how the session ended (the first reason wins) and wake everything waiting for it."""
        if self.close_reason is None:
            self.close_reason = reason
            self.log.info("session closed: %s", reason)
        self.closed_event.set()

    def close(self, code: int = 0, reason: str = "") -> None:
        """Close the session and its connection with ``code``. Idempotent."""
        if self.close_reason is not None:
            return
        self.mark_closed(SessionClosed(code, reason, remote=False))
        self.connection.close(code, reason)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the session's TaskGroup, guarded (see :meth:`guard`).

        Raises :class:`SessionClosed` (and closes ``coro``) when the session
        is not running.
        """
        group = self.task_group
        if group is None or self.closed:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise self.close_reason or SessionClosed(0, "session is not running")
        guarded = self.guard(coro, name)
        try:
            task = group.create_task(guarded, name=name)
        except RuntimeError:  # the TaskGroup is already stopping
            guarded.close()
            if asyncio.iscoroutine(coro):
                coro.close()
            raise self.close_reason or SessionClosed(0, "session is stopping") from None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def guard(self, coro: Awaitable[Any], name: str) -> None:
        """Run one stream's work: a protocol error closes the session with its code; nothing escapes."""
        try:
            await coro
        except ProtocolError as exc:
            self.log.warning("%s: protocol error from peer: %s", name, exc)
            self.close(exc.code, exc.message[:100])
        except (SessionClosed, StreamError) as exc:
            self.log.debug("%s ended: %s", name, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("%s failed", name)

    def request(self, awaitable: Awaitable[Any]) -> Awaitable[Any]:
        """``awaitable`` within the session timeout (a peer's first message, or its answer to ours)."""
        return asyncio.wait_for(awaitable, self.timeout)

    # -- subscriptions
    def next_subscribe_id(self) -> int:
        return next(self._ids)

    def forget_subscription(self, track: TrackReader) -> None:
        self.subscriptions.pop(track.subscribe_id, None)

    # -- frames being assembled
    def take_frame_room(self, size: int) -> bool:
        """Reserve room to assemble a frame of ``size`` bytes; False when the session's budget is spent.

        Flow control gives credit as frame bytes are read off the stream, so
        frames being assembled are what a peer could make us hold beyond the
        receive windows (a frame it never finishes, on many streams). One
        frame is always allowed.
        """
        if self.assembling and self.assembling + size > self.limits.max_assembling_bytes:
            return False
        self.assembling += size
        return True

    def give_frame_room(self, size: int) -> None:
        self.assembling -= size

    # -- GOAWAY
    def goaway_received(self, uri: str) -> None:
        if self.goaway_uri is not None:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "a second GOAWAY")
        if uri and not self.is_client:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "a client may not redirect the server")
        self.goaway_uri = uri
        self.log.info("peer sent GOAWAY%s", f" to {uri}" if uri else "")
        self.goaway_event.set()


__all__ = ["SessionCore"]

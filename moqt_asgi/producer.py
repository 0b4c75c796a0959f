"""Produce once, deliver to every subscriber.

A :class:`Broadcast` holds named :class:`TrackProducer` objects. Each group a
producer appends is kept in memory while it is among the newest few
(``cached_groups``), and every current subscriber is fed from that same copy.
A new subscriber starts at the latest group, or at the ``start_group`` it
asked for if that is still cached; a subscriber that falls behind skips to
newer groups: slow readers lose old groups, never memory. Finished cached
groups also answer FETCH (:meth:`Broadcast.fetch_group`), and every frame
keeps its timestamp (lite-05+ carries it on the wire).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from .engine.track import DEFAULT_TIMESCALE
from .protocol.errors import ErrorCode, MoQError, SessionClosed, StreamError
from .protocol.messages import TrackInfo
from .protocol.paths import normalize_path

if TYPE_CHECKING:
    from .engine.track import GroupWriter, TrackWriter

DEFAULT_CACHED_GROUPS = 2
DEFAULT_MAX_GROUP_BYTES = 64 * 1024 * 1024

EVICTED = "evicted: the subscriber fell too far behind"
"""The cancel message :func:`serve_producer` gives a group's delivery when it abandons it for a newer one."""

FetchedGroup = list[tuple[bytes, int | None]]
"""The frames of one group as FETCH serves them: ``(payload, timestamp)`` each."""


class _Signal:
    """A level-triggered 'something changed' notification for many waiters.

    Each waiter awaits a future of its own, so ``fire`` wakes each with one
    loop callback (a shared future behind :func:`asyncio.shield` costs two),
    and a cancelled waiter cancels only its own.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter.cancelled():  # given up before a fire: it leaves no trace
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)


class ByteBudget:
    """Bytes that several producers' caches may hold together (``limit`` ``None``: no limit).

    A relay shares one among every track it relays: a group whose frames
    would take the total past the limit is dropped (``TOO_LARGE``), and a
    group's bytes are given back when it leaves its track's cache.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.limit is not None and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


class GroupProducer:
    """One group of frames, written once and read by any number of subscribers.

    Each frame keeps a timestamp in the track's ``timescale`` (units per
    second; milliseconds by default), the wall clock unless the writer gives one.
    """

    def __init__(self, sequence: int, max_bytes: int = DEFAULT_MAX_GROUP_BYTES, *,
                 timescale: int = DEFAULT_TIMESCALE, budget: ByteBudget | None = None) -> None:
        self.sequence = sequence
        self.frames: list[bytes] = []
        self.timestamps: list[int] = []
        """One per frame, in the track's timescale."""
        self.size = 0
        self.finished = False
        self.error: int | None = None
        self.timescale = timescale
        self.created = time.monotonic()
        """When the group was started (``time.monotonic()``), for max-latency decisions."""
        self._max_bytes = max_bytes
        self._budget = budget
        self._signal = _Signal()

    @property
    def done(self) -> bool:
        return self.finished or self.error is not None

    def _release(self) -> None:
        """The group left its track's cache: give its bytes back to the shared budget."""
        if self._budget is not None:
            self._budget.give(self.size)
            self._budget = None

    def age_ms(self, now: float | None = None) -> float:
        """Milliseconds since the group was started."""
        return ((time.monotonic() if now is None else now) - self.created) * 1000

    def write_frame(self, payload: bytes, timestamp: int | None = None) -> None:
        """Append a frame; ``timestamp`` (in the track's timescale) defaults to the wall clock."""
        if self.done:
            raise MoQError(f"group {self.sequence} is already {'finished' if self.finished else 'aborted'}")
        if self.size + len(payload) > self._max_bytes:
            self.abort(ErrorCode.TOO_LARGE)
            raise MoQError(f"group {self.sequence} would exceed {self._max_bytes} bytes")
        if self._budget is not None and not self._budget.take(len(payload)):
            self.abort(ErrorCode.TOO_LARGE)
            raise MoQError(f"group {self.sequence}: the cache budget of {self._budget.limit} bytes is spent")
        if timestamp is None:
            timestamp = int(time.time() * self.timescale)
        elif timestamp < 0:
            raise ValueError(f"timestamp must not be negative, got {timestamp}")
        self.frames.append(bytes(payload))
        self.timestamps.append(timestamp)
        self.size += len(payload)
        self._signal.fire()

    def finish(self) -> None:
        if not self.done:
            self.finished = True
            self._signal.fire()

    def abort(self, code: int = ErrorCode.CANCEL) -> None:
        if not self.done:
            self.error = int(code)
            self._signal.fire()

    def timed_frames(self) -> FetchedGroup:
        """The frames written so far, each with its timestamp."""
        return list(zip(self.frames, self.timestamps, strict=True))

    async def wait_frames(self, have: int) -> list[bytes]:
        """Frames after the first ``have``; empty once the group is done and fully read."""
        while have >= len(self.frames) and not self.done:
            await self._signal.wait()
        if self.error is not None:
            raise StreamError(self.error, f"group {self.sequence} was aborted")
        return self.frames[have:]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        have = 0
        while frames := await self.wait_frames(have):
            have += len(frames)
            for frame in frames:
                yield frame


class TrackProducer:
    """The publishing side of one track: append groups, write frames.

    The newest ``cached_groups`` groups are kept: late subscribers may start
    from any of them, and finished ones answer FETCH. What TRACK_INFO
    (lite-05+) reports: ``priority``; ``max_latency_ms``, the retention (how
    long a group is kept once a newer one exists; ``0`` means no limit and is
    sent as ``2**53 - 1``); ``latest_only``, the newest group only (sent as a
    retention of ``0``; ``max_latency_ms`` must then be ``0``); and
    ``timescale``, timestamp units per second.

    ``drop_queued`` (off by default) is how a subscriber that cannot keep up
    loses groups: see :attr:`drop_queued`.
    """

    def __init__(self, name: str, *, priority: int = 0, cached_groups: int = DEFAULT_CACHED_GROUPS,
                 max_group_bytes: int = DEFAULT_MAX_GROUP_BYTES, max_latency_ms: int = 0,
                 timescale: int = DEFAULT_TIMESCALE, budget: ByteBudget | None = None,
                 latest_only: bool = False, drop_queued: bool = False) -> None:
        if timescale <= 0:
            raise ValueError(f"timescale must be positive, got {timescale}")
        if latest_only and max_latency_ms:
            raise ValueError(f"latest_only keeps no retention, got max_latency_ms={max_latency_ms}")
        self.name = name
        self.priority = priority
        self.max_latency_ms = max_latency_ms
        self.latest_only = latest_only
        self.drop_queued = drop_queued
        """A group stays in flight for a subscriber until the transport has sent all of it, so a subscriber on
        a path slower than the track loses old groups even once they were handed to the transport (reset with
        ``OLD``, their unsent bytes discarded). Off, a group leaves the flight once handed over, and a slow
        path may hold up to the scheduler's ``high_water`` of older groups ahead of the newest."""
        self.timescale = timescale
        self._groups: deque[GroupProducer] = deque(maxlen=max(1, cached_groups))
        self._next_sequence = 0
        self._max_group_bytes = max_group_bytes
        self._budget = budget
        self.finished = False
        self.error: int | None = None
        self._signal = _Signal()
        self.subscribers = 0

    @property
    def done(self) -> bool:
        return self.finished or self.error is not None

    @property
    def cached_groups(self) -> int:
        """How many of the newest groups are kept."""
        return self._groups.maxlen or 1

    @property
    def latest(self) -> GroupProducer | None:
        return self._groups[-1] if self._groups else None

    def cached(self) -> list[GroupProducer]:
        """The groups still kept, oldest first."""
        return list(self._groups)

    def latest_finished(self) -> int | None:
        """The sequence of the newest finished group still cached, or ``None``."""
        finished = [group.sequence for group in self._groups if group.finished]
        return max(finished) if finished else None

    def group(self, sequence: int) -> GroupProducer | None:
        """Group ``sequence`` if it is still cached."""
        for group in self._groups:
            if group.sequence == sequence:
                return group
        return None

    def info(self) -> TrackInfo:
        """This track's TRACK_INFO."""
        return TrackInfo(priority=self.priority, max_latency_ms=self.max_latency_ms, timescale=self.timescale,
                         latest_only=self.latest_only)

    def create_group(self, sequence: int) -> GroupProducer:
        """Start group ``sequence``; later appends continue after it."""
        if self.done:
            raise MoQError(f"track {self.name!r} is closed")
        latest = self.latest
        if latest is not None and sequence <= latest.sequence:
            raise MoQError(f"group {sequence} is not newer than group {latest.sequence}")
        group = GroupProducer(sequence, self._max_group_bytes, timescale=self.timescale, budget=self._budget)
        if len(self._groups) == self._groups.maxlen:
            evicted = self._groups[0]
            if not evicted.done:
                # Still being written: it can never be completed for anyone, so say so
                # rather than let readers take a truncated group for a whole one.
                evicted.abort(ErrorCode.OLD)
            evicted._release()
        self._groups.append(group)
        self._next_sequence = sequence + 1
        self._signal.fire()
        return group

    def append_group(self) -> GroupProducer:
        return self.create_group(self._next_sequence)

    def write_frame(self, payload: bytes, timestamp: int | None = None) -> None:
        """Write a group holding just this frame."""
        group = self.append_group()
        group.write_frame(payload, timestamp)
        group.finish()

    def finish(self) -> None:
        """End the track cleanly. A group still being written is abandoned (reset), not cut short."""
        if not self.done:
            self.finished = True
            for group in self._groups:
                group.abort(ErrorCode.CANCEL)  # no-op for finished groups
            self._signal.fire()
        self._release_cache()

    def abort(self, code: int = ErrorCode.CANCEL) -> None:
        if not self.done:
            self.error = int(code)
            for group in self._groups:
                group.abort(code)
            self._signal.fire()
        self._release_cache()

    def _release_cache(self) -> None:
        """A shared budget no longer counts a closed track's cache (readers still holding groups keep them)."""
        if self._budget is not None:
            for group in self._groups:
                group._release()

    def fetch(self, sequence: int) -> FetchedGroup | None:
        """The frames of group ``sequence`` if it is cached and finished, else ``None``."""
        group = self.group(sequence)
        if group is None or not group.finished:
            return None
        return group.timed_frames()

    def subscribe(self, start_group: int | None = None) -> TrackConsumer:
        """A reader from the latest group on, or from ``start_group`` (see :class:`TrackConsumer`)."""
        return TrackConsumer(self, start_group)

    async def _next_after(self, sequence: int | None) -> GroupProducer | None:
        while True:
            if self.error is not None:
                raise StreamError(self.error, f"track {self.name!r} was aborted")
            if self._groups:
                if sequence is None:
                    return self._groups[-1]
                for group in self._groups:
                    if group.sequence > sequence:
                        return group
            if self.finished:
                return None
            await self._signal.wait()


class TrackConsumer:
    """Reads a :class:`TrackProducer`, skipping what it missed.

    It starts at the latest group, or with ``start_group`` at that group if
    it is still cached, else at the oldest cached group after it (waiting for
    it if it lies in the future).
    """

    def __init__(self, producer: TrackProducer, start_group: int | None = None) -> None:
        self.producer = producer
        self._last: int | None = None if start_group is None else start_group - 1

    @property
    def position(self) -> int | None:
        """The sequence of the group returned last (``None`` before the first)."""
        return self._last

    def skip_to(self, sequence: int) -> None:
        """Continue at ``sequence`` or later; never goes back to a group already passed."""
        if self._last is None or sequence - 1 > self._last:
            self._last = sequence - 1

    async def next_group(self) -> GroupProducer | None:
        group = await self.producer._next_after(self._last)
        if group is not None:
            self._last = group.sequence
        return group

    def __aiter__(self) -> TrackConsumer:
        return self

    async def __anext__(self) -> GroupProducer:
        group = await self.next_group()
        if group is None:
            raise StopAsyncIteration
        return group


def _stale(producer: TrackProducer, group: GroupProducer, max_latency_ms: int) -> bool:
    """Older than the subscriber's max latency while a newer group exists (as the engine judges open groups)."""
    latest = producer.latest
    return (max_latency_ms > 0 and latest is not None and latest.sequence > group.sequence
            and group.age_ms() > max_latency_ms)


async def serve_producer(producer: TrackProducer, writer: TrackWriter, *, max_groups_in_flight: int | None = None,
                         drop_queued: bool | None = None) -> None:
    """Deliver ``producer`` to one subscription until the track ends.

    The subscription's wishes are honoured, and re-read before each group so
    a SUBSCRIBE_UPDATE takes effect: ``start_group`` (start there if still
    cached, else at the oldest cached group after it, or wait for it),
    ``end_group`` (stop once it is sent; the track then ends cleanly) and
    ``max_latency_ms`` (a cached group older than that, with a newer one
    available, is skipped rather than sent late).

    Groups are sent concurrently (newer ones first, by the session's
    scheduler). When more than ``max_groups_in_flight`` (default: the
    producer's cache size, at least 2) are still being sent, the oldest is
    abandoned with a reset: a slow subscriber loses old groups. With
    ``drop_queued`` (default: the producer's :attr:`~TrackProducer.drop_queued`)
    a group counts as being sent until the transport has sent its last byte.
    """
    if drop_queued is None:
        drop_queued = producer.drop_queued
    limit = max_groups_in_flight if max_groups_in_flight is not None else max(2, producer.cached_groups)
    writer.timescale = producer.timescale
    writer.accept()
    start = writer.start_group
    consumer = producer.subscribe(start)
    producer.subscribers += 1
    failure: int | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            in_flight: deque[asyncio.Task[None]] = deque()
            while True:
                end = writer.end_group
                position = consumer.position
                if end is not None and position is not None and position >= end:
                    break  # everything up to the end group was handed out
                if writer.start_group != start:  # moved by SUBSCRIBE_UPDATE
                    start = writer.start_group
                    if start is not None:
                        consumer.skip_to(start)
                group = await consumer.next_group()
                if group is None:
                    break
                end, start = writer.end_group, writer.start_group
                if end is not None and group.sequence > end:
                    break
                if (start is not None and group.sequence < start) or _stale(producer, group, writer.max_latency_ms):
                    continue
                in_flight.append(tg.create_task(_send_group(group, writer, drop_queued)))
                while in_flight and in_flight[0].done():
                    in_flight.popleft()
                while len(in_flight) > limit:
                    in_flight.popleft().cancel(EVICTED)
    except* StreamError as group:
        failure = next(e.code for e in group.exceptions if isinstance(e, StreamError))
    finally:
        producer.subscribers -= 1
    if failure is not None:
        writer.close_with_error(failure)
    else:
        await writer.close()


async def _sent(out: GroupWriter, writer: TrackWriter) -> None:
    """Wait until the transport has sent every byte of ``out`` (its FIN follows then).

    Until then the group still counts as in flight, so a newer group can
    evict it: a subscriber whose path is slower than the track loses its
    old groups with their unsent bytes (reset with ``OLD``), instead of
    having whole groups queued in the transport's send buffer (up to the
    scheduler's ``high_water``, seconds of media on a slow path), which no
    newer group can overtake. A stream the subscriber stopped is not
    waited for (what it still holds will never be sent).
    """
    stream = out.stream  # None when the group is skipped
    if stream is None:
        return
    connection = writer.session.connection
    stopped: list[int] = []
    progress: asyncio.Future[None] | None = None

    def wake(code: int | None = None) -> None:
        if code is not None:
            stopped.append(code)
        if progress is not None and not progress.done():
            progress.set_result(None)

    stream.on_stopped(wake)
    while not (stopped or out.closed or connection.is_closed) and stream.backlog() > 0:
        progress = asyncio.get_running_loop().create_future()
        connection.on_writable(wake)
        await progress


async def _send_group(group: GroupProducer, writer: TrackWriter, drop_queued: bool = False) -> None:
    """Send ``group`` to one subscriber; :func:`serve_producer` cancels it with :data:`EVICTED` when it falls behind.

    An evicted group is reset with ``OLD`` (and counted among the session's
    dropped groups); a delivery cancelled for any other reason (the
    subscriber left, the track or the session ended) with ``CANCEL``.
    """
    try:
        out = await writer.open_group(group.sequence)
    except SessionClosed:
        return  # the subscriber's session is gone: nothing to send, nothing to report
    except MoQError:
        if writer.closed:
            return  # the engine ended the track meanwhile (the subscriber left, or broke the protocol)
        raise
    except asyncio.CancelledError as exc:
        if exc.args == (EVICTED,):  # evicted before its header went out (open_group has reset its stream)
            writer.session.groups_dropped += 1
        raise
    try:
        have = 0
        while frames := await group.wait_frames(have):
            timestamps = group.timestamps[have:have + len(frames)]
            have += len(frames)
            for frame, timestamp in zip(frames, timestamps, strict=True):
                await out.write_frame(frame, timestamp)
        if drop_queued:
            await _sent(out, writer)
        await out.close()
    except asyncio.CancelledError as exc:
        out.abort(ErrorCode.OLD if exc.args == (EVICTED,) else ErrorCode.CANCEL)
        raise
    except StreamError as exc:
        out.abort(exc.code)
    except SessionClosed:
        out.abort(ErrorCode.CANCEL)


class Broadcast:
    """A named set of tracks published together.

    ``on_missing_track(name)`` may create tracks on demand (a relay does);
    without it, unknown names are refused with ``NOT_FOUND``. As a track
    handler it also answers FETCH (:meth:`fetch_group`) and TRACK
    (:meth:`track_info`) from its tracks.
    """

    def __init__(self, path: str = "", *, on_missing_track: Callable[[str], TrackProducer | None] | None = None,
                 max_tracks: int = 1024) -> None:
        self.path = normalize_path(path)
        self._tracks: dict[str, TrackProducer] = {}
        self._on_missing_track = on_missing_track
        self.max_tracks = max_tracks
        """Most tracks ``on_missing_track`` may create (ended ones are forgotten first)."""

    def create_track(self, name: str, *, priority: int = 0, cached_groups: int = DEFAULT_CACHED_GROUPS,
                     max_latency_ms: int = 0, timescale: int = DEFAULT_TIMESCALE,
                     latest_only: bool = False, drop_queued: bool = False) -> TrackProducer:
        """A new track ``name`` (see :class:`TrackProducer` for what each argument means).

        ``max_latency_ms`` is the retention TRACK_INFO reports: ``0`` means no
        limit (sent as ``2**53 - 1``); ``latest_only`` reports that only the
        newest group is kept.
        """
        if name in self._tracks and not self._tracks[name].done:
            raise MoQError(f"track {name!r} already exists in broadcast {self.path!r}")
        track = TrackProducer(name, priority=priority, cached_groups=cached_groups, max_latency_ms=max_latency_ms,
                              timescale=timescale, latest_only=latest_only, drop_queued=drop_queued)
        self._tracks[name] = track
        return track

    def get_track(self, name: str) -> TrackProducer | None:
        """The track ``name``; unknown names go to ``on_missing_track`` (within :attr:`max_tracks`)."""
        track = self._tracks.get(name)
        if track is None and self._on_missing_track is not None:
            if len(self._tracks) >= self.max_tracks:
                self._tracks = {key: value for key, value in self._tracks.items() if not value.done}
                if len(self._tracks) >= self.max_tracks:
                    return None
            track = self._on_missing_track(name)
            if track is not None:
                self._tracks[name] = track
        return track

    def remove_track(self, name: str) -> None:
        track = self._tracks.pop(name, None)
        if track is not None:
            track.finish()

    @property
    def tracks(self) -> dict[str, TrackProducer]:
        return dict(self._tracks)

    def close(self) -> None:
        """Finish every track: subscribers see them end."""
        for track in self._tracks.values():
            track.finish()
        self._tracks.clear()

    async def fetch_group(self, track: str, sequence: int) -> FetchedGroup | None:
        """FETCH: the frames (with timestamps) of a finished cached group, else ``None`` (refused as NOT_FOUND)."""
        producer = self._tracks.get(track)
        return producer.fetch(sequence) if producer is not None else None

    def latest_group(self, track: str) -> int | None:
        """The newest finished group of ``track`` still cached (what ``GET /fetch`` serves by default)."""
        producer = self._tracks.get(track)
        return producer.latest_finished() if producer is not None else None

    def track_info(self, track: str) -> TrackInfo | None:
        """TRACK (lite-05+): the track's priority, max latency and timescale; ``None`` for an unknown track.

        Asking never creates a track (only a subscription goes to ``on_missing_track``).
        """
        producer = self._tracks.get(track)
        if producer is None:
            return TrackInfo(priority=0, max_latency_ms=0, timescale=DEFAULT_TIMESCALE) if self._on_missing_track else None
        return producer.info()

    async def __call__(self, writer: TrackWriter) -> None:
        """Serve one subscription (this makes a Broadcast a track handler)."""
        track = self.get_track(writer.track)
        if track is None or track.done:
            writer.close_with_error(ErrorCode.NOT_FOUND)
            return
        await serve_producer(track, writer)

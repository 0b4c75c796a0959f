"""The two ends of one subscription.

Publisher side: :class:`TrackWriter` (one per incoming SUBSCRIBE) opens
:class:`GroupWriter` streams. Subscriber side: :class:`TrackReader` yields
:class:`GroupReader` streams, which yield frames (``bytes``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from ..protocol.codec import Codec
from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError
from ..protocol.limits import Limits
from ..protocol.lite_wire import FrameClock
from ..protocol.messages import (
    GroupHeader,
    Subscribe,
    SubscribeDrop,
    SubscribeEnd,
    SubscribeOk,
    SubscribeStart,
    SubscribeUpdate,
)
from ..transport.base import BidiStream, Connection, SendStream
from ._reader import StreamReader
from ._scheduler import SendScheduler


class TrackContext(Protocol):
    """What both ends of a subscription need from their session (its engine core provides it)."""

    codec: Codec
    connection: Connection
    limits: Limits
    log: logging.Logger
    scheduler: SendScheduler
    timeout: float
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    groups_dropped: int
    """Traffic totals (plain ints, bumped in place on the per-frame path)."""

    def take_frame_room(self, size: int) -> bool: ...

    def give_frame_room(self, size: int) -> None: ...

    def forget_subscription(self, track: TrackReader) -> None: ...


def done() -> asyncio.Future[None]:
    """An awaitable that is already complete: what ``close()`` returns when closing had nothing to wait for."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


MAX_DROP_NOTICES = 64
"""SUBSCRIBE_DROP notices a subscription keeps (the most recent)."""
STRAGGLER_GRACE = 0.1
"""Seconds a cleanly ended subscription still accepts groups sent before its end (lite-01..04)."""
STRAGGLER_GAP = 0.5
"""lite-05+, where the end says which groups came before it: seconds the subscription waits for the
next of them to arrive (started again at each arrival, at most the session timeout in all), so groups
delayed by loss recovery are not cut off."""

DEFAULT_TIMESCALE = 1000
"""Frame timestamps (lite-05+) are milliseconds unless a track says otherwise."""


class GroupWriter:
    """Writes the frames of one group on its own unidirectional stream.

    A group outside the subscription's range, or one that went stale under
    the subscriber's max latency, is *skipped*: writes to it are dropped
    without error, so a handler need not know about either.
    """

    def __init__(self, track: TrackWriter, stream: SendStream | None, sequence: int) -> None:
        self.track = track
        self.sequence = sequence
        self._stream = stream
        self._done = stream is None
        self.skipped = stream is None
        """True if the group is not being delivered (out of range, or stale)."""
        self._opened = time.monotonic()
        self._clock: FrameClock | None = FrameClock() if track._timestamps else None

    @property
    def closed(self) -> bool:
        return self._done

    @property
    def stream(self) -> SendStream | None:
        """The group's own stream (``None`` when the group is skipped): for waiting on what it has sent."""
        return self._stream

    def _stale(self) -> bool:
        track = self.track
        return (track.max_latency_ms > 0 and track._next_sequence > self.sequence + 1
                and (time.monotonic() - self._opened) * 1000 > track.max_latency_ms)

    async def _send(self, data: bytes, end: bool = False, body: bytes = b"") -> None:
        if self._done:
            if self.skipped:
                return
            raise MoQError(f"group {self.sequence} is already closed")
        if self._stale():
            self.track.session.log.debug("group %d is older than the subscriber's max latency; skipped",
                                         self.sequence)
            self.abort(ErrorCode.OLD)
            self.skipped = True
            return
        assert self._stream is not None
        session = self.track.session
        await session.scheduler.send(self._stream, data, body, end=end, priority=self.track.priority,
                                      sequence=self.sequence)

    async def write_frame(self, payload: bytes, timestamp: int | None = None) -> None:
        """Send one frame; waits while the connection is congested.

        ``timestamp`` (lite-05+, in the track's timescale) defaults to the wall
        clock; older versions carry no timestamps and ignore it.
        """
        session = self.track.session
        codec = session.codec
        if self._clock is None:
            header = codec.encode_frame_header(len(payload))
        else:
            if timestamp is None:
                timestamp = int(time.time() * self.track.timescale)
            header = codec.encode_timed_frame_header(len(payload), self._clock, timestamp)
        await self._send(header, body=payload)
        if not self.skipped:
            session.frames_sent += 1
            session.bytes_sent += len(payload)

    def close(self) -> asyncio.Future[None]:
        """End the group cleanly (FIN), now; returns an awaitable (already complete).

        Every frame written before was handed over in order (each
        :meth:`write_frame` waits its turn), so the FIN goes straight out.
        """
        if not self._done:
            if self._stale():
                self.abort(ErrorCode.OLD)
                self.skipped = True
            else:
                assert self._stream is not None
                self._stream.write(b"", end=True)
                self._done = True
                self.track._groups.discard(self)
        self.track._group_closed(self)
        return done()

    def abort(self, code: int = ErrorCode.CANCEL) -> None:
        """Abandon the group (reset)."""
        if not self._done:
            self._done = True
            if code == ErrorCode.OLD:
                self.track.session.groups_dropped += 1
            assert self._stream is not None
            self._stream.reset(code)
            self.track._groups.discard(self)
            self.track._check_finished()


class TrackWriter:
    """The publisher's side of one subscription, handed to a track handler.

    ``accept()`` confirms the subscription (sent automatically with the first
    group); ``close()`` ends the track cleanly; ``close_with_error(code)``
    refuses or aborts it. The subscriber's wishes are attributes:
    ``start_group`` / ``end_group`` (``None``: latest / unbounded),
    ``max_latency_ms`` (0: no limit), ``ordered`` and ``priority``; the
    engine enforces the range and the latency, and they change when the
    subscriber sends SUBSCRIBE_UPDATE.
    """

    def __init__(self, session: TrackContext, stream: BidiStream, request: Subscribe, broadcast: str) -> None:
        self.session = session
        """The engine side of the session serving this subscription (codec, limits, log...)."""
        self.subscribe_id = request.subscribe_id
        self.broadcast = broadcast
        self.track = request.track
        self.priority = request.priority
        self.ordered = request.ordered
        self.max_latency_ms = request.max_latency_ms
        self.start_group = request.start_group
        self.end_group = request.end_group
        self.timescale = DEFAULT_TIMESCALE
        self._stream = stream
        features = session.codec.features
        self._timestamps = features.frame_timestamps
        self._start_end = features.subscribe_start_end
        self._accepted = False
        self._started = False
        self._closed = False
        self._next_sequence = 0
        self._groups: set[GroupWriter] = set()
        self._finished = asyncio.Event()
        self._end_passed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def apply_update(self, update: SubscribeUpdate) -> None:
        """The subscriber's SUBSCRIBE_UPDATE (the engine applies it): new priority, latency and range."""
        self.priority = update.priority
        self.ordered = update.ordered
        self.max_latency_ms = update.max_latency_ms
        self.start_group = update.start_group
        self.end_group = update.end_group

    def accept(self) -> None:
        """Confirm the subscription now (once). lite-05+ has no confirmation before the first group."""
        if self._accepted or self._closed:
            return
        self._accepted = True
        if not self._start_end:
            self._stream.write(self.session.codec.encode_subscribe_ok(SubscribeOk(self.priority)))

    def _start(self, sequence: int) -> None:
        if self._start_end and not self._started:
            self._started = True
            self._stream.write(self.session.codec.encode_subscribe_response(
                SubscribeStart(sequence)))

    def _in_range(self, sequence: int) -> bool:
        if self.start_group is not None and sequence < self.start_group:
            return False
        return self.end_group is None or sequence <= self.end_group

    async def open_group(self, sequence: int | None = None) -> GroupWriter:
        """Start group ``sequence`` (default: one after the last).

        A group outside the subscription's range comes back already
        :attr:`GroupWriter.skipped`; writing to it does nothing.
        """
        if self._closed:
            raise MoQError(f"track {self.track!r} is closed")
        if sequence is None:
            sequence = self._next_sequence
        self._next_sequence = max(self._next_sequence, sequence + 1)
        self.accept()
        if not self._in_range(sequence):
            group = GroupWriter(self, None, sequence)
            if self.end_group is not None and sequence > self.end_group:
                self._end_passed = True
                self._check_finished()
            return group
        self._start(sequence)
        stream = await self.session.connection.open_uni()
        group = GroupWriter(self, stream, sequence)
        self._groups.add(group)
        header = self.session.codec.encode_group_header(GroupHeader(self.subscribe_id, sequence))
        try:
            await group._send(header)
        except BaseException:
            group.abort(ErrorCode.CANCEL)  # cancelled while the header waited its turn: nobody else would end it
            raise
        return group

    def _group_closed(self, group: GroupWriter) -> None:
        if self.end_group is not None and group.sequence >= self.end_group:
            self._end_passed = True
        self._check_finished()

    def _check_finished(self) -> None:
        # The last group of a bounded subscription is out and none before it is still being sent: the track is done.
        end = self.end_group
        if self._end_passed and end is not None and not any(g.sequence <= end for g in self._groups):
            self._finished.set()

    async def wait_finished(self) -> None:
        """Wait until a bounded subscription's last group is out (``end_group`` sent); never for an unbounded one."""
        await self._finished.wait()

    async def write_group(self, *frames: bytes) -> None:
        """Write a whole group of ``frames`` and close it."""
        group = await self.open_group()
        for frame in frames:
            await group.write_frame(frame)
        await group.close()

    def close(self) -> asyncio.Future[None]:
        """End the track, now: the subscriber sees a clean end after its last group.

        Returns an awaitable (already complete), like every ``close()`` here.
        """
        if self._closed:
            return done()
        self.accept()
        self._closed = True
        try:
            if self._start_end:
                self._declare_end()
            self._stream.write(b"", end=True)
        except (StreamError, SessionClosed):
            pass
        return done()

    def _declare_end(self) -> None:
        """lite-05+: SUBSCRIBE_END (and SUBSCRIBE_START if no group went out) before the clean FIN.

        The end is exclusive: the first group this subscription will never
        deliver. A peer reads a FIN without it as a protocol violation (moq-rs
        does from 0.5), so every clean end goes through here. A subscription
        that received nothing starts and ends at the same group, never below
        the start it asked for.
        """
        end = self._next_sequence
        if self.end_group is not None:
            end = min(end, self.end_group + 1)
        if not self._started:
            end = max(end, self.start_group or 0)
            self._start(end)
        self._stream.write(self.session.codec.encode_subscribe_response(SubscribeEnd(end)))

    def close_with_error(self, code: int = ErrorCode.CANCEL) -> None:
        """Refuse or abort the subscription with ``code``; open groups are reset."""
        if self._closed:
            return
        self._closed = True
        for group in list(self._groups):
            group.abort(code)
        self._stream.reset(code)
        self._stream.stop(code)

    def abandon(self) -> None:
        """The subscriber went away (the engine calls this): abandon whatever is still open."""
        self._closed = True
        for group in list(self._groups):
            group.abort(ErrorCode.CANCEL)


class GroupReader:
    """Frames of one received group, in order. Iterate with ``async for``."""

    def __init__(self, track: TrackReader, reader: StreamReader, sequence: int, frame_start: int = 0) -> None:
        self.track = track
        self.sequence = sequence
        self.frame_start = frame_start
        """Index of the first frame on this stream (lite-06; non-zero when a subscription starts mid-group)."""
        self.timestamp: int | None = None
        """Timestamp of the frame read last (lite-05+, in the track's timescale), else ``None``."""
        self._reader = reader
        self._clock = FrameClock() if track._timestamps else None

    async def read_frame(self) -> bytes | None:
        """The next frame, or ``None`` at the end of the group.

        Raises :class:`StreamError` if the publisher abandoned the group.
        """
        reader = self._reader
        try:
            if await reader.at_eof():
                return None
            if self._clock is not None:
                self.timestamp = self._clock.decode(await reader.read_varint())
            size = await reader.read_varint()
            session = self.track.session
            session.codec.check_frame_size(size)
            if not session.take_frame_room(size):
                self._reader.stream.stop(ErrorCode.TOO_LARGE)
                raise StreamError(ErrorCode.TOO_LARGE, f"group {self.sequence}: no room to assemble a frame of {size} "
                                  f"bytes ({session.limits.max_assembling_bytes} in all per session)")
            try:
                frame = await reader.read_exact(size)
            finally:
                session.give_frame_room(size)
            session.frames_received += 1
            session.bytes_received += size
            return frame
        except ProtocolError as exc:
            self._reader.stream.stop(exc.code)
            raise

    def stop(self, code: int = ErrorCode.CANCEL) -> None:
        """Stop receiving this group."""
        self._reader.stream.stop(code)

    async def read_all(self) -> list[bytes]:
        return [frame async for frame in self]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (frame := await self.read_frame()) is not None:
            yield frame


class TrackReader:
    """The subscriber's side of one subscription. Iterate groups with ``async for``.

    Groups come in arrival order. At most ``max_queued_groups`` wait to be
    read; beyond that the oldest waiting group is dropped.
    """

    def __init__(self, session: TrackContext, stream: BidiStream, subscribe_id: int, broadcast: str, track: str,
                 priority: int) -> None:
        self.session = session
        """The engine side of the session this subscription belongs to (codec, limits, log...)."""
        self.subscribe_id = subscribe_id
        self.broadcast = broadcast
        self.track = track
        self.priority = priority
        self._stream = stream
        self._queue: deque[GroupReader] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        features = session.codec.features
        self._timestamps = features.frame_timestamps
        self._typed_responses = features.typed_subscribe_responses
        self.dropped_groups = 0
        self.end_group: int | None = None
        """lite-05+: the first sequence the publisher said it will never deliver (SUBSCRIBE_END)."""
        self.start_group: int | None = None
        """lite-05+: the first group the publisher will deliver (SUBSCRIBE_START)."""
        self.dropped_ranges: list[tuple[int, int, int]] = []
        """SUBSCRIBE_DROP notices (lite-03+): ``(first, last, error code)``, most recent last, at most 64."""
        self._responded = asyncio.Event()
        self._started_once = False
        self.newest_group: int | None = None
        """The highest group sequence received so far."""
        self._arrived = asyncio.Event()

    @property
    def ended(self) -> bool:
        """True once the publisher ended the track (or it failed)."""
        return self._ended

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def deliver(self, group: GroupReader) -> None:
        """A group stream of this subscription arrived (the engine calls this)."""
        self._responded.set()
        if self.newest_group is None or group.sequence > self.newest_group:
            self.newest_group = group.sequence
        self._arrived.set()
        if self._closed:
            group.stop(ErrorCode.CANCEL)
            return
        self._queue.append(group)
        while len(self._queue) > self.session.limits.max_queued_groups:
            self._queue.popleft().stop(ErrorCode.CANCEL)
            self.dropped_groups += 1
            self.session.groups_dropped += 1
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        """The track is over (the engine calls this): cleanly, or with ``error`` for the reader to raise."""
        self._responded.set()
        if not self._ended:
            self._ended = True
            self._error = error
            self._wake()

    # -- the subscribe stream's answers (the engine's subscriber half applies them)
    @property
    def responded(self) -> bool:
        """The publisher answered (a response or a group arrived), or the track ended."""
        return self._responded.is_set()

    async def wait_responded(self) -> None:
        await self._responded.wait()

    def apply_response(self, msg: SubscribeOk | SubscribeStart | SubscribeEnd | SubscribeDrop) -> None:
        """One answer on the subscribe stream; a second SUBSCRIBE_OK/START is a protocol violation."""
        if isinstance(msg, SubscribeOk | SubscribeStart):
            if self._started_once and self._typed_responses:
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a second subscribe response")
            self._started_once = True
        if isinstance(msg, SubscribeStart):
            self.start_group = msg.group
        elif isinstance(msg, SubscribeEnd):
            self.end_group = msg.group
        elif isinstance(msg, SubscribeDrop):
            self.dropped_ranges.append((msg.start, msg.end, msg.error))
            del self.dropped_ranges[:-MAX_DROP_NOTICES]
        elif msg.start_group is not None:
            self.start_group = msg.start_group
        self._responded.set()

    async def end_after_stragglers(self) -> None:
        """End cleanly once the groups sent before the publisher's end have arrived (or stopped coming).

        Groups travel on their own streams and may arrive after the end.
        lite-05+ says where the track ended (SUBSCRIBE_END), so this waits
        while the missing groups keep arriving (:data:`STRAGGLER_GAP` between
        them, the session timeout in all); without that bound, for
        :data:`STRAGGLER_GRACE`.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        known_end = self.end_group is not None
        deadline = started + (STRAGGLER_GAP if known_end else STRAGGLER_GRACE)
        limit = started + max(self.session.timeout, STRAGGLER_GAP)
        while not self._closed:
            end = self.end_group
            newest = self.newest_group
            if end is not None and (end <= (self.start_group or 0) or (newest is not None and newest >= end - 1)):
                break
            remaining = min(deadline, limit) - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
            if known_end:
                deadline = loop.time() + STRAGGLER_GAP  # one more came: give the next its time too
        self.end()

    def update(self, *, priority: int | None = None, max_latency_ms: int = 0, start_group: int | None = None,
               end_group: int | None = None) -> None:
        """Send SUBSCRIBE_UPDATE (lite-03+ and gomoqt): a new priority, latency bound or range."""
        codec = self.session.codec
        if not codec.features.subscribe_update:
            raise MoQError(f"{codec.name} has no SUBSCRIBE_UPDATE")
        if priority is not None:
            self.priority = priority
        self._stream.write(codec.encode_subscribe_update(
            SubscribeUpdate(self.priority, False, max_latency_ms, start_group, end_group)))

    async def next_group(self) -> GroupReader | None:
        """The next group to arrive, or ``None`` once the track ended cleanly."""
        while not self._queue:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def __aiter__(self) -> TrackReader:
        return self

    async def __anext__(self) -> GroupReader:
        group = await self.next_group()
        if group is None:
            raise StopAsyncIteration
        return group

    async def frames(self) -> AsyncIterator[bytes]:
        """Every frame of every group, flattened."""
        async for group in self:
            async for frame in group:
                yield frame

    def close(self) -> asyncio.Future[None]:
        """Unsubscribe, now: FIN our side of the subscribe stream and drop queued groups.

        Returns an awaitable (already complete), like every ``close()`` here.
        """
        if self._closed:
            return done()
        self._closed = True
        for group in self._queue:
            group.stop(ErrorCode.CANCEL)
        self._queue.clear()
        try:
            self._stream.write(b"", end=True)
        except (StreamError, SessionClosed):
            pass
        self.end()
        self.session.forget_subscription(self)
        return done()

    async def __aenter__(self) -> TrackReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DEFAULT_TIMESCALE", "GroupReader", "GroupWriter", "TrackContext", "TrackReader", "TrackWriter", "done"]

"""Produce once, deliver to every subscriber.

A :class:`Broadcast` holds named :class:`TrackProducer` objects. Each group a
producer appends is kept in memory while it is among the newest few, and
every current subscriber is fed from that same copy; a new subscriber starts
at the latest group. A subscriber that falls behind skips to newer groups:
slow readers lose old groups, never memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .paths import normalize_path
from .protocol.errors import ErrorCode, MoQError, StreamError

if TYPE_CHECKING:
    from .track import TrackWriter

DEFAULT_CACHED_GROUPS = 2
DEFAULT_MAX_GROUP_BYTES = 64 * 1024 * 1024


class _Signal:
    """A level-triggered 'something changed' notification for many waiters."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def fire(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None

    async def wait(self) -> None:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._future)


class GroupProducer:
    """One group of frames, written once and read by any number of subscribers."""

    def __init__(self, sequence: int, max_bytes: int = DEFAULT_MAX_GROUP_BYTES) -> None:
        self.sequence = sequence
        self.frames: list[bytes] = []
        self.size = 0
        self.finished = False
        self.error: int | None = None
        self._max_bytes = max_bytes
        self._signal = _Signal()

    @property
    def done(self) -> bool:
        return self.finished or self.error is not None

    def write_frame(self, payload: bytes) -> None:
        if self.done:
            raise MoQError(f"group {self.sequence} is already {'finished' if self.finished else 'aborted'}")
        if self.size + len(payload) > self._max_bytes:
            self.abort(ErrorCode.TOO_LARGE)
            raise MoQError(f"group {self.sequence} would exceed {self._max_bytes} bytes")
        self.frames.append(bytes(payload))
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

    async def wait_frames(self, have: int) -> list[bytes]:
        """Frames after the first ``have``; empty once the group is done and fully read."""
        while have >= len(self.frames) and not self.done:
            await self._signal.wait()
        if self.error is not None:
            raise StreamError(self.error, f"group {self.sequence} was aborted")
        return self.frames[have:]

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        have = 0
        while frames := await self.wait_frames(have):
            have += len(frames)
            for frame in frames:
                yield frame


class TrackProducer:
    """The publishing side of one track: append groups, write frames."""

    def __init__(self, name: str, *, priority: int = 0, cached_groups: int = DEFAULT_CACHED_GROUPS,
                 max_group_bytes: int = DEFAULT_MAX_GROUP_BYTES) -> None:
        self.name = name
        self.priority = priority
        self._groups: deque[GroupProducer] = deque(maxlen=max(1, cached_groups))
        self._next_sequence = 0
        self._max_group_bytes = max_group_bytes
        self.finished = False
        self.error: int | None = None
        self._signal = _Signal()
        self.subscribers = 0

    @property
    def done(self) -> bool:
        return self.finished or self.error is not None

    @property
    def latest(self) -> GroupProducer | None:
        return self._groups[-1] if self._groups else None

    def create_group(self, sequence: int) -> GroupProducer:
        """Start group ``sequence``; later appends continue after it."""
        if self.done:
            raise MoQError(f"track {self.name!r} is closed")
        latest = self.latest
        if latest is not None and sequence <= latest.sequence:
            raise MoQError(f"group {sequence} is not newer than group {latest.sequence}")
        group = GroupProducer(sequence, self._max_group_bytes)
        if len(self._groups) == self._groups.maxlen:
            evicted = self._groups[0]
            if not evicted.done:
                # Still being written: it can never be completed for anyone, so say so
                # rather than let readers take a truncated group for a whole one.
                evicted.abort(ErrorCode.OLD)
        self._groups.append(group)
        self._next_sequence = sequence + 1
        self._signal.fire()
        return group

    def append_group(self) -> GroupProducer:
        return self.create_group(self._next_sequence)

    def write_frame(self, payload: bytes) -> None:
        """Write a group holding just this frame."""
        group = self.append_group()
        group.write_frame(payload)
        group.finish()

    def finish(self) -> None:
        """End the track cleanly. A group still being written is abandoned (reset), not cut short."""
        if not self.done:
            self.finished = True
            for group in self._groups:
                group.abort(ErrorCode.CANCEL)  # no-op for finished groups
            self._signal.fire()

    def abort(self, code: int = ErrorCode.CANCEL) -> None:
        if not self.done:
            self.error = int(code)
            for group in self._groups:
                group.abort(code)
            self._signal.fire()

    def subscribe(self) -> TrackConsumer:
        return TrackConsumer(self)

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
    """Reads a :class:`TrackProducer` from its latest group on, skipping what it missed."""

    def __init__(self, producer: TrackProducer) -> None:
        self.producer = producer
        self._last: int | None = None

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


async def serve_producer(producer: TrackProducer, writer: TrackWriter, *, max_groups_in_flight: int = 2) -> None:
    """Deliver ``producer`` to one subscription until the track ends.

    Groups are sent concurrently (newer ones first, by the session's
    scheduler). When more than ``max_groups_in_flight`` are still being sent,
    the oldest is abandoned with a reset: a slow subscriber loses old groups.
    """
    writer.accept()
    consumer = producer.subscribe()
    producer.subscribers += 1
    failure: int | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            in_flight: deque[asyncio.Task[None]] = deque()
            async for group in consumer:
                in_flight.append(tg.create_task(_send_group(group, writer)))
                while in_flight and in_flight[0].done():
                    in_flight.popleft()
                while len(in_flight) > max_groups_in_flight:
                    in_flight.popleft().cancel()
    except* StreamError as group:
        failure = next(e.code for e in group.exceptions if isinstance(e, StreamError))
    finally:
        producer.subscribers -= 1
    if failure is not None:
        writer.close_with_error(failure)
    else:
        await writer.close()


async def _send_group(group: GroupProducer, writer: TrackWriter) -> None:
    out = await writer.open_group(group.sequence)
    try:
        have = 0
        while frames := await group.wait_frames(have):
            have += len(frames)
            for frame in frames:
                await out.write_frame(frame)
        await out.close()
    except asyncio.CancelledError:
        out.abort(ErrorCode.OLD)
        raise
    except StreamError as exc:
        out.abort(exc.code)


class Broadcast:
    """A named set of tracks published together.

    ``on_missing_track(name)`` may create tracks on demand (a relay does);
    without it, unknown names are refused with ``NOT_FOUND``.
    """

    def __init__(self, path: str = "", *, on_missing_track: Callable[[str], TrackProducer | None] | None = None) -> None:
        self.path = normalize_path(path)
        self._tracks: dict[str, TrackProducer] = {}
        self._on_missing_track = on_missing_track

    def create_track(self, name: str, *, priority: int = 0, cached_groups: int = DEFAULT_CACHED_GROUPS) -> TrackProducer:
        if name in self._tracks and not self._tracks[name].done:
            raise MoQError(f"track {name!r} already exists in broadcast {self.path!r}")
        track = TrackProducer(name, priority=priority, cached_groups=cached_groups)
        self._tracks[name] = track
        return track

    def get_track(self, name: str) -> TrackProducer | None:
        track = self._tracks.get(name)
        if track is None and self._on_missing_track is not None:
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

    async def __call__(self, writer: TrackWriter) -> None:
        """Serve one subscription (this makes a Broadcast a track handler)."""
        track = self.get_track(writer.track)
        if track is None or track.done:
            writer.close_with_error(ErrorCode.NOT_FOUND)
            return
        await serve_producer(track, writer)

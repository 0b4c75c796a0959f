"""The two ends of one subscription.

Publisher side: :class:`TrackWriter` (one per incoming SUBSCRIBE) opens
:class:`GroupWriter` streams. Subscriber side: :class:`TrackReader` yields
:class:`GroupReader` streams, which yield frames (``bytes``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError, SubscribeError
from .protocol.messages import GroupHeader, SubscribeOk
from .reader import StreamReader
from .transport.base import BidiStream, SendStream

if TYPE_CHECKING:
    from .session import Session


class GroupWriter:
    """Writes the frames of one group on its own unidirectional stream."""

    def __init__(self, track: TrackWriter, stream: SendStream, sequence: int) -> None:
        self.track = track
        self.sequence = sequence
        self._stream = stream
        self._done = False

    @property
    def closed(self) -> bool:
        return self._done

    async def _send(self, data: bytes, end: bool = False) -> None:
        if self._done:
            raise MoQError(f"group {self.sequence} is already closed")
        session = self.track.session
        await session._scheduler.send(self._stream, data, end=end, priority=self.track.priority, sequence=self.sequence)

    async def write_frame(self, payload: bytes) -> None:
        """Send one frame; waits while the connection is congested."""
        await self._send(self.track.session.codec.encode_frame(payload))

    async def close(self) -> None:
        """End the group cleanly (FIN)."""
        if not self._done:
            await self._send(b"", end=True)
            self._done = True
            self.track._groups.discard(self)

    def abort(self, code: int = ErrorCode.CANCEL) -> None:
        """Abandon the group (reset)."""
        if not self._done:
            self._done = True
            self._stream.reset(code)
            self.track._groups.discard(self)


class TrackWriter:
    """The publisher's side of one subscription, handed to a track handler.

    ``accept()`` confirms the subscription (sent automatically with the first
    group); ``close()`` ends the track cleanly; ``close_with_error(code)``
    refuses or aborts it.
    """

    def __init__(self, session: Session, stream: BidiStream, subscribe_id: int, broadcast: str, track: str,
                 priority: int) -> None:
        self.session = session
        self.subscribe_id = subscribe_id
        self.broadcast = broadcast
        self.track = track
        self.priority = priority
        self._stream = stream
        self._accepted = False
        self._closed = False
        self._next_sequence = 0
        self._groups: set[GroupWriter] = set()

    @property
    def closed(self) -> bool:
        return self._closed

    def accept(self) -> None:
        """Send SUBSCRIBE_OK now (once)."""
        if self._accepted or self._closed:
            return
        self._accepted = True
        self._stream.write(self.session.codec.encode_subscribe_ok(SubscribeOk(self.priority)))

    async def open_group(self, sequence: int | None = None) -> GroupWriter:
        """Start group ``sequence`` (default: one after the last)."""
        if self._closed:
            raise MoQError(f"track {self.track!r} is closed")
        if sequence is None:
            sequence = self._next_sequence
        self._next_sequence = max(self._next_sequence, sequence + 1)
        self.accept()
        stream = await self.session.connection.open_uni()
        group = GroupWriter(self, stream, sequence)
        self._groups.add(group)
        header = self.session.codec.encode_group_header(GroupHeader(self.subscribe_id, sequence))
        await group._send(header)
        return group

    async def write_group(self, *frames: bytes) -> None:
        """Write a whole group of ``frames`` and close it."""
        group = await self.open_group()
        for frame in frames:
            await group.write_frame(frame)
        await group.close()

    async def close(self) -> None:
        """End the track: the subscriber sees a clean end after its last group."""
        if self._closed:
            return
        self.accept()
        self._closed = True
        try:
            self._stream.write(b"", end=True)
        except (StreamError, SessionClosed):
            pass

    def close_with_error(self, code: int = ErrorCode.CANCEL) -> None:
        """Refuse or abort the subscription with ``code``; open groups are reset."""
        if self._closed:
            return
        self._closed = True
        for group in list(self._groups):
            group.abort(code)
        self._stream.reset(code)
        self._stream.stop(code)

    def _cancelled(self) -> None:
        """The subscriber went away: abandon whatever is still open."""
        self._closed = True
        for group in list(self._groups):
            group.abort(ErrorCode.CANCEL)


class GroupReader:
    """Frames of one received group, in order. Iterate with ``async for``."""

    def __init__(self, track: TrackReader, reader: StreamReader, sequence: int) -> None:
        self.track = track
        self.sequence = sequence
        self._reader = reader

    async def read_frame(self) -> bytes | None:
        """The next frame, or ``None`` at the end of the group.

        Raises :class:`StreamError` if the publisher abandoned the group.
        """
        reader = self._reader
        try:
            if await reader.at_eof():
                return None
            size = await reader.read_varint()
            self.track.session.codec.check_frame_size(size)
            return await reader.read_exact(size)
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

    def __init__(self, session: Session, stream: BidiStream, subscribe_id: int, broadcast: str, track: str,
                 priority: int) -> None:
        self.session = session
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
        self.dropped_groups = 0

    @property
    def ended(self) -> bool:
        """True once the publisher ended the track (or it failed)."""
        return self._ended

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _push_group(self, group: GroupReader) -> None:
        if self._closed:
            group.stop(ErrorCode.CANCEL)
            return
        self._queue.append(group)
        while len(self._queue) > self.session.limits.max_queued_groups:
            self._queue.popleft().stop(ErrorCode.CANCEL)
            self.dropped_groups += 1
        self._wake()

    def _end(self, error: BaseException | None = None) -> None:
        if not self._ended:
            self._ended = True
            self._error = error
            self._wake()

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

    def close(self) -> None:
        """Unsubscribe: FIN our side of the subscribe stream and drop queued groups."""
        if self._closed:
            return
        self._closed = True
        for group in self._queue:
            group.stop(ErrorCode.CANCEL)
        self._queue.clear()
        try:
            self._stream.write(b"", end=True)
        except (StreamError, SessionClosed):
            pass
        self._end()
        self.session._forget_subscription(self)

    async def __aenter__(self) -> TrackReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


__all__ = ["GroupReader", "GroupWriter", "SubscribeError", "TrackReader", "TrackWriter"]

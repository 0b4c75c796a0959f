"""The subscriber's view of a peer's announcements."""

from __future__ import annotations

import asyncio
from collections import deque

from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError
from ..transport.base import BidiStream
from .mux import Announcement
from .track import done


class AnnouncementReader:
    """Broadcasts the peer announces under a prefix.

    Iterating yields an :class:`Announcement` each time a broadcast becomes
    active; each one's :meth:`Announcement.wait_ended` returns when the peer
    withdraws it (or the stream or session ends). :attr:`active` is the
    current set.
    """

    def __init__(self, stream: BidiStream, prefix: str, max_active: int) -> None:
        self.prefix = prefix
        self._stream = stream
        self._max_active = max_active
        self.active: dict[str, Announcement] = {}
        self._queue: deque[Announcement] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def apply(self, path: str, active: bool, hops: tuple[int, ...] = (), *, refresh: bool = False) -> None:
        """One announcement read off the stream (the engine calls this); misuse is a protocol violation."""
        if active and refresh and path in self.active:
            self.active[path].hops = hops
            return
        if active:
            if path in self.active:
                raise ProtocolError(ErrorCode.DUPLICATE, f"broadcast {path!r} announced twice")
            if len(self.active) >= self._max_active:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"more than {self._max_active} active broadcasts")
            announcement = Announcement(path, hops=hops)
            self.active[path] = announcement
            self._queue.append(announcement)
            self._wake()
        else:
            ended = self.active.pop(path, None)
            if ended is None:
                raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"broadcast {path!r} ended but was never active")
            ended.end()
            # Drop it from the queue if nobody saw it yet: it is no longer news.
            if ended in self._queue:
                self._queue.remove(ended)

    def finish(self, error: BaseException | None = None) -> None:
        """The announce stream ended (the engine calls this): cleanly, or with ``error``.

        Announcements still active end too, with an error when the stream or
        session was lost under them (the publisher did not withdraw them).
        """
        if error is not None and self._error is None:
            self._error = error
        if self._done:
            return
        self._done = True
        error = self._error
        lost = ErrorCode.TRANSPORT if isinstance(error, StreamError) or (
            isinstance(error, SessionClosed) and error.abrupt) else None
        for announcement in self.active.values():
            announcement.end(lost)
        self.active.clear()
        self._wake()

    async def next(self) -> Announcement | None:
        """The next newly active broadcast, or ``None`` when the stream ended cleanly."""
        while not self._queue:
            if self._done:
                if self._error is not None and not isinstance(self._error, (SessionClosed, StreamError)):
                    raise self._error
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def __aiter__(self) -> AnnouncementReader:
        return self

    async def __anext__(self) -> Announcement:
        announcement = await self.next()
        if announcement is None:
            raise StopAsyncIteration
        return announcement

    def close(self) -> asyncio.Future[None]:
        """Stop listening (FIN our side), now; returns an awaitable (already complete)."""
        if not self._done:
            try:
                self._stream.write(b"", end=True)
                self._stream.stop(ErrorCode.CANCEL)
            except MoQError:
                pass
            self.finish()
        return done()

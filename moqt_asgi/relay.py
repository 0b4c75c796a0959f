"""A relay: every peer may publish and subscribe; one upstream per track.

A :class:`Relay` is a setup handler. It accepts each session with the
relay's shared :class:`TrackMux`, asks the peer what it announces, and
re-announces each broadcast to everyone. The first subscriber to a track
opens one upstream subscription; its groups go into a
:class:`~.producer.TrackProducer` that feeds every downstream subscriber
(late joiners start at the latest group). When the publisher withdraws a
broadcast or leaves, downstream subscribers see the track end and the
announcement go.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .mux import Announcement, TrackMux
from .producer import GroupProducer, TrackProducer, serve_producer
from .protocol.errors import ErrorCode, MoQError, SessionClosed, StreamError
from .request import SetupRequest
from .session import Session
from .track import GroupReader, TrackReader, TrackWriter

logger = logging.getLogger("moqt_asgi.relay")


@dataclass(slots=True)
class _Upstream:
    reader: TrackReader
    producer: TrackProducer


class RemoteBroadcast:
    """A broadcast announced by a peer, served to local subscribers through one upstream per track."""

    def __init__(self, session: Session, path: str, *, log: logging.Logger = logger) -> None:
        self.session = session
        self.path = path
        self.log = log
        self._tracks: dict[str, asyncio.Future[_Upstream]] = {}

    async def __call__(self, writer: TrackWriter) -> None:
        try:
            upstream = await self._upstream(writer.track, writer.priority)
        except StreamError as exc:
            writer.close_with_error(exc.code)
            return
        try:
            await serve_producer(upstream.producer, writer)
        finally:
            if upstream.producer.subscribers == 0:
                self._release(writer.track, upstream)

    async def _upstream(self, name: str, priority: int) -> _Upstream:
        pending = self._tracks.get(name)
        if pending is not None:
            upstream = await asyncio.shield(pending)
            if not upstream.producer.done:
                return upstream
        future: asyncio.Future[_Upstream] = asyncio.get_running_loop().create_future()
        self._tracks[name] = future
        try:
            reader = await self.session.subscribe(self.path, name, priority=priority)
        except BaseException as exc:
            self._tracks.pop(name, None)
            future.set_exception(exc if isinstance(exc, Exception) else MoQError("cancelled"))
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        upstream = _Upstream(reader, TrackProducer(name, priority=priority))
        future.set_result(upstream)
        self.log.info("upstream subscription to %s/%s", self.path, name)
        self.session.spawn(self._pump(upstream), f"relay-upstream-{self.path}/{name}")
        return upstream

    def _release(self, name: str, upstream: _Upstream) -> None:
        pending = self._tracks.get(name)
        if pending is not None and pending.done() and not pending.exception() and pending.result() is upstream:
            self._tracks.pop(name, None)
        upstream.reader.close()
        upstream.producer.finish()
        self.log.info("no subscribers left for %s/%s; unsubscribed upstream", self.path, name)

    async def _pump(self, upstream: _Upstream) -> None:
        producer = upstream.producer
        copies: set[asyncio.Task[None]] = set()
        try:
            async for group in upstream.reader:
                latest = producer.latest
                if latest is not None and group.sequence <= latest.sequence:
                    group.stop(ErrorCode.OLD)
                    continue
                out = producer.create_group(group.sequence)
                copy = self.session.spawn(_copy_group(group, out), f"relay-group-{group.sequence}")
                copies.add(copy)
                copy.add_done_callback(copies.discard)
            if copies:  # the last groups may still be arriving after the track's end
                await asyncio.wait(copies)
            producer.finish()
        except (StreamError, SessionClosed) as exc:
            if isinstance(exc, StreamError) and exc.code != ErrorCode.CANCEL:
                producer.abort(exc.code)
            else:
                producer.finish()
        except asyncio.CancelledError:
            producer.finish()
            raise
        finally:
            pending = self._tracks.get(producer.name)
            if pending is not None and pending.done() and not pending.exception() and pending.result() is upstream:
                self._tracks.pop(producer.name, None)


async def _copy_group(source: GroupReader, out: GroupProducer) -> None:
    try:
        async for frame in source:
            out.write_frame(frame)
        out.finish()
    except StreamError as exc:
        out.abort(exc.code)
    except (SessionClosed, asyncio.CancelledError):
        out.abort(ErrorCode.CANCEL)
        raise
    except MoQError:
        # The local copy refused the frame: evicted by newer groups (OLD) or over its size limit.
        code = out.error if out.error is not None else ErrorCode.TOO_LARGE
        source.stop(code)
        out.abort(code)


class Relay:
    """Setup handler that makes an app a relay. ``moq.add_route("/{path:path}", Relay())``."""

    def __init__(self, mux: TrackMux | None = None, *, log: logging.Logger = logger) -> None:
        self.mux = mux if mux is not None else TrackMux()
        self.log = log

    async def __call__(self, request: SetupRequest) -> None:
        session = await request.accept(self.mux)
        await self.ingest(session)

    async def ingest(self, session: Session, prefix: str = "") -> None:
        """Re-announce what ``session`` publishes under ``prefix`` until it leaves."""
        try:
            announcements = await session.announced(prefix)
        except (TimeoutError, MoQError) as exc:
            self.log.info("peer %r does not announce (%s); serving it as a subscriber only", session, exc)
            return
        mine: list[Announcement] = []
        try:
            async for announcement in announcements:
                self.log.info("peer announced %r", announcement.path)
                mine.append(announcement)
                self.mux.announce(announcement, RemoteBroadcast(session, announcement.path, log=self.log))
                mine = [a for a in mine if a.active]
        finally:
            announcements.close()
            for announcement in mine:
                announcement.end()

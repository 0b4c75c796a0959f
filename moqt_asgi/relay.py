"""A relay: every peer may publish and subscribe; one upstream per track.

A :class:`Relay` is a setup handler. It accepts each session with the
relay's shared :class:`TrackMux`, asks the peer what it announces, and
re-announces each broadcast to everyone with the route it came by
(:attr:`Announcement.hops`), so announcements further on carry the whole
route. The first subscriber to a track opens one upstream subscription; its
groups (frames and their timestamps) go into a
:class:`~.producer.TrackProducer` that feeds every downstream subscriber
(late joiners start at the latest group, or at a cached ``start_group``) and
answers FETCH. When the publisher withdraws a broadcast or leaves,
downstream subscribers see the track end and the announcement go.

Loops. Relays may ingest from each other in both directions. From lite-04
an announcement lists the hop id of every relay it passed, so a relay never
takes back a broadcast whose route already contains it (the engine drops
it, and on lite-04/05 the peer does not even send it). lite-03 carries only
a hop count, so a relay cannot recognise its own broadcast coming back: with
relays A and B ingesting from each other and a publisher on A, B does
announce the broadcast back to A, two hops longer. A relay therefore never
lets a route learned from a peer displace a local publication or a shorter
route, and never adopts a route of 32 hops or more (the most a route may
carry): A ignores the echo, and when the publisher leaves, A withdraws the
broadcast from B, B withdraws its echo from A, and it is gone from both. If
A's withdrawal crosses an echo still in flight, the broadcast can bounce
between A and B, one hop longer each time, until it reaches the 32-hop limit
and is dropped. lite-01/02 carry no route at all: federate those in one
direction only.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from . import subscriber
from .mux import Announcement, TrackMux
from .producer import FetchedGroup, GroupProducer, TrackProducer, serve_producer
from .protocol.errors import ErrorCode, MoQError, SessionClosed, StreamError
from .protocol.lite_wire import MAX_HOPS
from .protocol.messages import TrackInfo
from .request import SetupRequest
from .session import Session
from .track import GroupReader, TrackReader, TrackWriter

logger = logging.getLogger("moqt_asgi.relay")


@dataclass(slots=True)
class _Upstream:
    reader: TrackReader
    producer: TrackProducer


class RemoteBroadcast:
    """A broadcast announced by a peer, served to local subscribers through one upstream per track.

    FETCH is answered from the local copy of a track when it holds the
    group, else forwarded upstream (when the upstream's version has FETCH).
    """

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

    def _local(self, name: str) -> TrackProducer | None:
        pending = self._tracks.get(name)
        if pending is None or not pending.done() or pending.cancelled() or pending.exception() is not None:
            return None
        return pending.result().producer

    async def fetch_group(self, track: str, sequence: int) -> FetchedGroup | None:
        """FETCH: from the local copy if it has the finished group, else from upstream."""
        local = self._local(track)
        if local is not None and (frames := local.fetch(sequence)) is not None:
            return frames
        if not self.session.features.fetch or self.session.closed:
            return None
        try:
            return await subscriber.fetch_timed(self.session, self.path, track, sequence)
        except (MoQError, TimeoutError) as exc:
            self.log.debug("upstream fetch of %s/%s group %d failed: %s", self.path, track, sequence, exc)
            return None

    def track_info(self, track: str) -> TrackInfo | None:
        """TRACK: what upstream said of the track once it is relayed, else ``None`` (the defaults)."""
        local = self._local(track)
        return local.info() if local is not None else None

    async def _upstream(self, name: str, priority: int) -> _Upstream:
        pending = self._tracks.get(name)
        if pending is not None:
            upstream = await asyncio.shield(pending)
            if not upstream.producer.done:
                return upstream
        future: asyncio.Future[_Upstream] = asyncio.get_running_loop().create_future()
        self._tracks[name] = future
        info = (asyncio.ensure_future(self._track_info(name))
                if self.session.features.track_stream else None)
        try:
            reader = await self.session.subscribe(self.path, name, priority=priority)
            described = await info if info is not None else None
        except BaseException as exc:
            if info is not None:
                info.cancel()
            self._tracks.pop(name, None)
            future.set_exception(exc if isinstance(exc, Exception) else MoQError("cancelled"))
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        producer = TrackProducer(name, priority=priority)
        if described is not None:
            producer.priority = described.priority
            producer.max_latency_ms = described.max_latency_ms
            producer.timescale = described.timescale
        upstream = _Upstream(reader, producer)
        future.set_result(upstream)
        self.log.info("upstream subscription to %s/%s", self.path, name)
        self.session.spawn(self._pump(upstream), f"relay-upstream-{self.path}/{name}")
        return upstream

    async def _track_info(self, name: str) -> TrackInfo | None:
        """Upstream's TRACK_INFO (lite-05+), so timestamps keep their timescale; ``None`` if it has none."""
        try:
            return await self.session.track_info(self.path, name)
        except (MoQError, TimeoutError) as exc:
            self.log.debug("no track info for %s/%s: %s", self.path, name, exc)
            return None

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
            out.write_frame(frame, source.timestamp)  # lite-05+: the publisher's timestamp; else ours
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
    """Setup handler that makes an app a relay. ``moq.add_route("/{path:path}", Relay())``.

    See the module docstring for how routes are chosen and loops avoided.
    """

    def __init__(self, mux: TrackMux | None = None, *, log: logging.Logger = logger) -> None:
        self.mux = mux if mux is not None else TrackMux()
        self.log = log
        self._learned: set[Announcement] = set()
        """What this relay republished from peers and is still current (everything else in the mux is local)."""

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
            async for learned in announcements:
                published = self.adopt(learned, RemoteBroadcast(session, learned.path, log=self.log))
                if published is not None:
                    mine.append(published)
                mine = [a for a in mine if a.active]
        finally:
            announcements.close()
            for announcement in mine:
                announcement.end()

    def adopt(self, learned: Announcement, handler: RemoteBroadcast) -> Announcement | None:
        """Republish ``learned`` (a peer's announcement) with its route, unless a better route is known.

        ``learned.hops`` is the route it came by (origin first, the peer
        last), so what the mux announces onwards carries the whole route.
        Returns the announcement put in the mux, or ``None`` if the route
        was not taken: a local publication or a shorter route is already
        there, or the route has reached the hop limit.
        """
        path, hops = learned.path, learned.hops
        if not learned.active:
            return None
        if len(hops) >= MAX_HOPS:
            self.log.info("not relaying %r: its route has %d hops", path, len(hops))
            return None
        current = self.mux.route(path)
        if current is not None and current[0].active:
            if current[0] not in self._learned:
                self.log.debug("not relaying %r from a peer: it is published here", path)
                return None
            if len(hops) > len(current[0].hops):
                self.log.debug("not relaying %r by %d hops: a route of %d is known", path, len(hops),
                               len(current[0].hops))
                return None
        self.log.info("peer announced %r (route of %d hops)", path, len(hops))
        self._learned.add(learned)
        learned.on_end(self._learned.discard)
        self.mux.announce(learned, handler)
        return learned


__all__ = ["Relay", "RemoteBroadcast"]


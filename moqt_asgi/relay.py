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

Ownership and trust. With an authorising app (``MoQ(auth=...)``) each
session has a :class:`~moqt_asgi.auth.Grant`: it sees the relay's namespace
from the grant's ``root``, its announcements are taken only where it may
publish, and it may subscribe only where it may read. Two publishers of one
path: the newer (with a route no longer than the current one) serves new
subscribers, the older stays as a backup, keeps the subscribers it has, and
serves again when the newer leaves (as moq-relay does). Nobody can delete
another peer's broadcast. A publisher whose session is lost ends its tracks
with an error (``TRANSPORT``), not a clean end, so subscribers can tell.

Quotas (:class:`RelayLimits`) bound what peers can make the relay hold:
broadcasts per session and in all, upstream tracks per broadcast and in all
(a subscriber cannot make it subscribe upstream to names the publisher does
not serve: on lite-05+ the relay asks TRACK first), and the bytes of every
relayed cache together.

Upstream. :meth:`Relay.link` makes the relay a leaf of a cluster node (a
moq-relay node, or another relay): an :class:`~moqt_asgi.upstream.UpstreamLink`
dials it, announces the relay's broadcasts to it, ingests its announcements,
and redials with moq-relay's backoff whenever the session ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field

from .client import Client
from .engine.mux import Announcement, TrackMux
from .engine.session import Session
from .engine.track import DEFAULT_TIMESCALE, GroupReader, TrackReader, TrackWriter
from .producer import ByteBudget, FetchedGroup, GroupProducer, TrackProducer, serve_producer
from .protocol.errors import ErrorCode, MoQError, SessionClosed, StreamError
from .protocol.lite_wire import MAX_HOPS
from .protocol.messages import TrackInfo
from .protocol.paths import has_prefix, join_path, normalize_path
from .request import SetupRequest
from .upstream import Backoff, LinkStatus, TokenSource, UpstreamLink

logger = logging.getLogger("moqt_asgi.relay")


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What peers can make a :class:`Relay` hold (see ``docs/security.md``)."""

    max_broadcasts: int = 10_000
    """Broadcasts learned from peers, in all; more are ignored (logged)."""
    max_broadcasts_per_session: int = 1_000
    """Broadcasts one peer may publish into the relay."""
    max_tracks_per_broadcast: int = 64
    """Distinct tracks of one broadcast relayed at once (each one upstream subscription)."""
    max_upstream_tracks: int = 10_000
    """Upstream subscriptions in all."""
    max_cached_bytes: int = 512 * 1024 * 1024
    """Bytes of every relayed track's cached groups together; a group that would pass it is dropped."""
    max_group_bytes: int = 16 * 1024 * 1024
    """Largest relayed group; a larger one is dropped (``TOO_LARGE``)."""
    cached_groups: int = 2
    """Newest groups kept per relayed track (late joiners and FETCH)."""
    drop_queued: bool = True
    """A viewer on a path slower than the track loses old groups even once they were handed to the
    transport (``TrackProducer(drop_queued=True)``), instead of reading stale media first."""


@dataclass(eq=False)
class _Totals:
    """Counters one relay shares with its broadcasts."""

    limits: RelayLimits
    budget: ByteBudget
    broadcasts: int = 0
    upstream_tracks: int = 0
    sessions: dict[int, int] = field(default_factory=dict)
    """Broadcasts per publishing session (by ``id``)."""


@dataclass(slots=True)
class _Upstream:
    reader: TrackReader
    producer: TrackProducer


_DEFAULT_INFO = TrackInfo(priority=0, max_latency_ms=0, timescale=DEFAULT_TIMESCALE)


class RemoteBroadcast:
    """A broadcast announced by a peer, served to local subscribers through one upstream per track.

    FETCH is answered from the local copy of a track when it holds the
    group, else forwarded upstream (when the upstream's version has FETCH).
    """

    def __init__(self, session: Session, path: str, *, log: logging.Logger = logger,
                 limits: RelayLimits | None = None, totals: _Totals | None = None) -> None:
        self.session = session
        self.path = path
        """The broadcast's name as its publisher's session knows it."""
        self.log = log
        self._totals = totals if totals is not None else _Totals(limits or RelayLimits(), ByteBudget(None))
        self._tracks: dict[str, asyncio.Future[_Upstream]] = {}
        self._describing: dict[str, asyncio.Future[TrackInfo | None]] = {}
        """Upstream TRACK requests in flight, one per track name however many subscribers ask."""

    async def __call__(self, writer: TrackWriter) -> None:
        try:
            upstream = await self._upstream(writer.track, writer.priority)
        except (MoQError, TimeoutError) as exc:
            code = exc.code if isinstance(exc, StreamError) else ErrorCode.TIMEOUT if isinstance(exc, TimeoutError) \
                else ErrorCode.NOT_FOUND
            self.log.debug("not relaying %s/%s: %s", self.path, writer.track, exc or type(exc).__name__)
            writer.close_with_error(code)
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
            return await self.session.fetch_timed(self.path, track, sequence)
        except (MoQError, TimeoutError) as exc:
            self.log.debug("upstream fetch of %s/%s group %d failed: %s", self.path, track, sequence, exc)
            return None

    def latest_group(self, track: str) -> int | None:
        """The newest finished group of ``track`` in the local copy, or ``None`` when the track is not relayed."""
        local = self._local(track)
        return local.latest_finished() if local is not None else None

    def track_info(self, track: str) -> TrackInfo | Awaitable[TrackInfo | None] | None:
        """TRACK: what upstream said of the track once it is relayed; before that, upstream's own answer.

        A relay that answered with defaults until the track was relayed, and
        with the publisher's properties after, told two subscribers two
        different things about one track (a moq-rs edge then ends the
        subscriptions it merged). An upstream without TRACK (before lite-05)
        leaves the defaults; ``None`` (NOT_FOUND) when upstream does not serve it.
        """
        local = self._local(track)
        if local is not None:
            return local.info()
        if not self.session.features.track_stream or self.session.closed:
            return _DEFAULT_INFO
        return self._described(track)

    async def _described(self, track: str) -> TrackInfo | None:
        pending = self._describing.get(track)
        if pending is None:  # the first to ask: the others wait for the same answer
            pending = self._describing[track] = asyncio.get_running_loop().create_future()
            pending.add_done_callback(lambda done: self._describing.pop(track, None)
                                      if self._describing.get(track) is done else None)
            try:
                task = self.session.spawn(self._describe(track, pending), f"relay-track-{self.path}/{track}")
            except SessionClosed:
                pending.cancel()
                return None
            task.add_done_callback(lambda _: pending.cancel())  # ended without an answer: the waiters give up
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if pending.cancelled() and current is not None and not current.cancelling():
                return None  # the upstream session closed under the request: it no longer serves the track
            raise

    async def _describe(self, track: str, answer: asyncio.Future[TrackInfo | None]) -> None:
        try:
            info = await self._track_info(track)
        except StreamError:  # NOT_FOUND: the publisher does not serve it
            answer.set_result(None)
            return
        answer.set_result(info if info is not None else _DEFAULT_INFO)

    async def _upstream(self, name: str, priority: int) -> _Upstream:
        pending = self._tracks.get(name)
        if pending is not None:
            upstream = await asyncio.shield(pending)
            if not upstream.producer.done:
                return upstream
        totals, limits = self._totals, self._totals.limits
        if len(self._tracks) >= limits.max_tracks_per_broadcast or totals.upstream_tracks >= limits.max_upstream_tracks:
            self.log.info("not relaying %s/%s: %d tracks of it and %d in all are relayed already", self.path, name,
                          len(self._tracks), totals.upstream_tracks)
            raise StreamError(ErrorCode.BOUNDS_EXCEEDED, "too many relayed tracks")
        future: asyncio.Future[_Upstream] = asyncio.get_running_loop().create_future()
        self._tracks[name] = future
        totals.upstream_tracks += 1
        try:
            # lite-05+: ask TRACK first, so a name the publisher does not serve costs no subscription there
            described = await self._track_info(name) if self.session.features.track_stream else None
            # TRACK said the track exists: do not hold our subscriber until its first group exists too
            reader = await self.session.subscribe(self.path, name, priority=priority,
                                                  wait_for_start=described is None)
        except BaseException as exc:
            self._tracks.pop(name, None)
            totals.upstream_tracks -= 1
            future.set_exception(exc if isinstance(exc, Exception) else MoQError("cancelled"))
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        producer = TrackProducer(name, priority=priority, cached_groups=limits.cached_groups,
                                 max_group_bytes=limits.max_group_bytes, budget=totals.budget,
                                 drop_queued=limits.drop_queued)
        if described is not None:
            producer.priority = described.priority
            producer.max_latency_ms = described.max_latency_ms
            producer.timescale = described.timescale
            producer.latest_only = described.latest_only
        upstream = _Upstream(reader, producer)
        future.set_result(upstream)
        self.log.info("upstream subscription to %s/%s", self.path, name)
        self.session.spawn(self._pump(upstream), f"relay-upstream-{self.path}/{name}")
        return upstream

    async def _track_info(self, name: str) -> TrackInfo | None:
        """Upstream's TRACK_INFO (lite-05+), so timestamps keep their timescale.

        ``None`` if it gave none; a refusal with ``NOT_FOUND`` is raised: the
        publisher does not serve that track.
        """
        try:
            return await self.session.track_info(self.path, name)
        except StreamError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                raise
            self.log.debug("no track info for %s/%s: %s", self.path, name, exc)
            return None
        except (MoQError, TimeoutError) as exc:
            self.log.debug("no track info for %s/%s: %s", self.path, name, exc)
            return None

    def _forget(self, name: str, upstream: _Upstream) -> None:
        pending = self._tracks.get(name)
        if pending is not None and pending.done() and not pending.exception() and pending.result() is upstream:
            self._tracks.pop(name, None)
            self._totals.upstream_tracks -= 1

    def _release(self, name: str, upstream: _Upstream) -> None:
        self._forget(name, upstream)
        upstream.reader.close()
        upstream.producer.finish()
        self.log.info("no subscribers left for %s/%s; unsubscribed upstream", self.path, name)

    async def _pump(self, upstream: _Upstream) -> None:
        producer = upstream.producer
        copies: dict[asyncio.Task[None], GroupProducer] = {}
        try:
            async for group in upstream.reader:
                latest = producer.latest
                if latest is not None and group.sequence <= latest.sequence:
                    group.stop(ErrorCode.OLD)
                    continue
                out = producer.create_group(group.sequence)
                copy = self.session.spawn(_copy_group(group, out), f"relay-group-{group.sequence}")
                copies[copy] = out
                copy.add_done_callback(lambda done: copies.pop(done, None))
                # A copy whose group left the cache serves nobody: stop it (and its upstream stream) now,
                # even in the middle of a frame that would otherwise keep arriving.
                for task, copied in list(copies.items()):
                    if copied.error is not None and not task.done():
                        task.cancel()
            if copies:  # the last groups may still be arriving after the track's end
                await asyncio.wait(copies)
            producer.finish()
        except StreamError as exc:
            if exc.code != ErrorCode.CANCEL:
                producer.abort(exc.code)
            else:
                producer.finish()
        except SessionClosed as exc:
            if exc.abrupt:
                producer.abort(ErrorCode.TRANSPORT)  # the publisher was lost: not a clean end of the track
            else:
                producer.finish()
        except asyncio.CancelledError:
            reason = self.session.close_reason
            if reason is not None and reason.abrupt:
                producer.abort(ErrorCode.TRANSPORT)
            else:
                producer.finish()
            raise
        finally:
            self._forget(producer.name, upstream)


async def _copy_group(source: GroupReader, out: GroupProducer) -> None:
    try:
        async for frame in source:
            out.write_frame(frame, source.timestamp)  # lite-05+: the publisher's timestamp; else ours
        out.finish()
    except StreamError as exc:
        out.abort(exc.code)
    except asyncio.CancelledError:
        source.stop(out.error if out.error is not None else ErrorCode.CANCEL)
        out.abort(ErrorCode.CANCEL)
        raise
    except SessionClosed:
        out.abort(ErrorCode.CANCEL)
        raise
    except MoQError:
        # The local copy refused the frame: evicted by newer groups (OLD) or over its size limit.
        code = out.error if out.error is not None else ErrorCode.TOO_LARGE
        source.stop(code)
        out.abort(code)


class Relay:
    """Setup handler that makes an app a relay. ``moq.add_route("/{path:path}", Relay())``.

    See the module docstring for how routes are chosen, loops avoided, and
    what a session may publish and read.
    """

    def __init__(self, mux: TrackMux | None = None, *, log: logging.Logger = logger,
                 limits: RelayLimits | None = None) -> None:
        self.mux = mux if mux is not None else TrackMux()
        self.log = log
        self.limits = limits or RelayLimits()
        self._totals = _Totals(self.limits, ByteBudget(self.limits.max_cached_bytes))
        self._learned: set[Announcement] = set()
        """What this relay republished from peers and is still current (everything else in the mux is local)."""

    @property
    def cached_bytes(self) -> int:
        """Bytes held in the caches of every relayed track."""
        return self._totals.budget.used

    @property
    def upstream_tracks(self) -> int:
        """Upstream subscriptions open (or being opened)."""
        return self._totals.upstream_tracks

    def link(self, url: str, *, prefix: str = "", token: TokenSource | None = None, client: Client | None = None,
             backoff: Backoff | None = None) -> UpstreamLink:
        """An :class:`~moqt_asgi.upstream.UpstreamLink` making this relay a leaf of the node at ``url``.

        ``async with relay.link("https://node:4443/", token=..., prefix="live"):``
        keeps a session to the node (redialled with ``backoff``) that
        announces this relay's broadcasts to it and ingests its
        announcements under ``prefix``. ``token`` (or a function giving it)
        goes in the URL as ``?jwt=``; ``client`` carries the dial options
        (TLS, versions, timeouts).
        """
        return UpstreamLink(self, url, prefix=prefix, token=token, client=client, backoff=backoff)

    async def __call__(self, request: SetupRequest) -> None:
        grant = request.grant
        view = self.mux.scoped(grant.root) if grant is not None and grant.root else self.mux
        session = await request.accept(view)
        await self.ingest(session)

    async def ingest(self, session: Session, prefix: str = "") -> None:
        """Re-announce what ``session`` publishes under ``prefix`` until it leaves.

        Only what the session's grant lets it publish is taken, under the
        grant's root in the relay's namespace.
        """
        grant = session.grant
        prefixes = [normalize_path(prefix)]
        if grant is not None:
            prefixes = _narrow(grant.publish, normalize_path(prefix))
            if not prefixes:
                self.log.debug("%r may not publish here; serving it as a subscriber only", session)
                return
        if len(prefixes) == 1:
            await self._ingest(session, prefixes[0])
            return
        async with asyncio.TaskGroup() as group:
            for each in prefixes:
                group.create_task(self._ingest(session, each))

    async def _ingest(self, session: Session, prefix: str) -> None:
        try:
            announcements = await session.announced(prefix)
        except (TimeoutError, MoQError) as exc:
            self.log.info("peer %r does not announce (%s); serving it as a subscriber only", session, exc)
            return
        grant = session.grant
        root = grant.root if grant is not None else ""
        totals = self._totals
        key = id(session)
        mine: list[Announcement] = []
        try:
            async for learned in announcements:
                if grant is not None and not grant.can_publish(learned.path):
                    self.log.info("%r may not publish %r; ignored", session, learned.path)
                    continue
                if totals.sessions.get(key, 0) >= self.limits.max_broadcasts_per_session:
                    self.log.warning("%r publishes more than %d broadcasts; %r ignored", session,
                                     self.limits.max_broadcasts_per_session, learned.path)
                    continue
                if totals.broadcasts >= self.limits.max_broadcasts:
                    self.log.warning("the relay holds %d broadcasts; %r ignored", totals.broadcasts, learned.path)
                    continue
                linked = _linked(learned, join_path(root, learned.path))
                handler = RemoteBroadcast(session, learned.path, log=self.log, totals=totals)
                published = self.adopt(linked, handler)
                if published is None:
                    continue
                totals.broadcasts += 1
                totals.sessions[key] = totals.sessions.get(key, 0) + 1
                published.on_end(lambda _: self._count_gone(key))
                mine.append(published)
                mine = [a for a in mine if a.active]
        finally:
            announcements.close()
            lost = session.close_reason is not None and session.close_reason.abrupt
            for announcement in mine:
                announcement.end(ErrorCode.TRANSPORT if lost else None)

    def _count_gone(self, key: int) -> None:
        totals = self._totals
        totals.broadcasts -= 1
        left = totals.sessions.get(key, 0) - 1
        if left > 0:
            totals.sessions[key] = left
        else:
            totals.sessions.pop(key, None)

    def adopt(self, learned: Announcement, handler: RemoteBroadcast) -> Announcement | None:
        """Republish ``learned`` (a peer's announcement) with its route, unless a better route is known.

        ``learned.hops`` is the route it came by (origin first, the peer
        last), so what the mux announces onwards carries the whole route.
        A route no longer than the current one takes over, and the current
        one stays as its backup (it serves again if the newer one ends).
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
            self.log.info("peer announced %r again (route of %d hops): it serves new subscribers; the previous "
                          "publisher stays as its backup", path, len(hops))
        else:
            self.log.info("peer announced %r (route of %d hops)", path, len(hops))
        self._learned.add(learned)
        learned.on_end(self._learned.discard)
        self.mux.announce(learned, handler)
        return learned


def _linked(learned: Announcement, path: str) -> Announcement:
    """An announcement of ``path`` that ends (with its error) when ``learned`` does."""
    if path == learned.path:
        return learned
    linked = Announcement(path, hops=learned.hops)
    learned.on_end(lambda ended: linked.end(ended.error))
    return linked


def _narrow(granted: tuple[str, ...], prefix: str) -> list[str]:
    """The prefixes both ``granted`` and ``prefix`` cover (what to ask a publisher for)."""
    out = []
    for each in granted:
        if has_prefix(prefix, each):
            out.append(prefix)
        elif has_prefix(each, prefix):
            out.append(each)
    return sorted(set(out))


__all__ = ["Backoff", "LinkStatus", "Relay", "RelayLimits", "RemoteBroadcast", "UpstreamLink"]

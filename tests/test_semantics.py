"""What lite-03..06's newer fields mean, end to end over the in-memory transport.

FETCH served from the publisher's cache (and through a relay), frame
timestamps kept by the producer and across a relay hop, start/end groups
bounding a subscription, max latency skipping stale groups, hop lists
keeping federated relays from announcing in circles, and subscriber
priorities ordering a congested connection. Each test runs on every version
that has the feature, as its codec's ``features`` say.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from moqt_asgi import Broadcast, ErrorCode, MoQ, StreamError, SubscribeError, TrackMux, TrackProducer
from moqt_asgi.engine._subscriber import fetch_timed
from moqt_asgi.engine.mux import Announcement, TrackHandler
from moqt_asgi.engine.session import Session
from moqt_asgi.engine.track import TrackReader, TrackWriter
from moqt_asgi.protocol.lite_wire import HopEncoding
from moqt_asgi.protocol.messages import TrackInfo
from moqt_asgi.protocol.versions import ALL_VERSIONS, Version, features_of
from moqt_asgi.relay import Relay
from moqt_asgi.transport.base import SendStream

from .helpers import WAIT, eventually, memory_sessions, settle, within


def versions(*flags: str, where: Callable[[Any], bool] | None = None) -> list[Any]:
    """Every version whose features have all of ``flags`` set (and satisfy ``where``)."""
    chosen = []
    for version in ALL_VERSIONS:
        features = features_of(version.codec)
        if all(getattr(features, flag) for flag in flags) and (where is None or where(features)):
            chosen.append(pytest.param(version, id=version.name))
    return chosen


def single_broadcast_app(path: str = "b") -> tuple[MoQ, Broadcast]:
    app = MoQ()
    broadcast = Broadcast(path)
    app.mux.publish(path, broadcast)
    return app, broadcast


def write_group(track: TrackProducer, *frames: bytes, timestamps: tuple[int, ...] | None = None) -> int:
    group = track.append_group()
    for n, frame in enumerate(frames):
        group.write_frame(frame, None if timestamps is None else timestamps[n])
    group.finish()
    return group.sequence


async def received(reader: TrackReader, count: int | None = None) -> list[int]:
    """Sequences of complete groups, in arrival order, until ``count`` of them or the track's end."""
    out: list[int] = []
    async with asyncio.timeout(WAIT):
        while count is None or len(out) < count:
            group = await reader.next_group()
            if group is None:
                break
            await group.read_all()
            out.append(group.sequence)
    return out


def published(server: Session, track: str) -> TrackWriter:
    return next(w for w in server.served.values() if w.track == track)


class Link:
    """Gates one session's group data: nothing goes out until the test lets writes through, one at a time.

    It stands for a congested connection: the session's scheduler holds
    every chunk and must pick which goes next. Each write on a group stream
    is logged as ``(stream id, data, end)``.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.connection: Any = session.connection
        self.credit: int | None = None
        self.writes: list[tuple[int, bytes, bool]] = []
        self.resets: list[tuple[int, int]] = []
        self._open_uni = self.connection.open_uni
        self.connection.backlog = self._backlog
        self.connection.open_uni = self._logged_open_uni

    def _backlog(self) -> int:
        return 0 if self.credit is None or self.credit > 0 else 1 << 40

    async def _logged_open_uni(self) -> SendStream:
        stream = await self._open_uni()
        link = self
        original = stream.write

        def write(data: bytes, end: bool = False) -> None:
            original(data, end)
            link.writes.append((stream.stream_id, bytes(data), end))
            if link.credit is not None:
                link.credit -= 1

        original_reset = stream.reset

        def reset(code: int) -> None:
            link.resets.append((stream.stream_id, code))
            original_reset(code)

        stream.write = write  # type: ignore[method-assign]
        stream.reset = reset  # type: ignore[method-assign]
        return stream

    def pause(self) -> None:
        self.credit = 0

    async def drain(self) -> None:
        """Let queued writes out one by one, letting every writer queue its next chunk in between."""
        await settle()
        async with asyncio.timeout(WAIT):
            while self.session.stats().queued_writes:
                self.credit = 1
                self.connection._notify_writable()
                await settle()
        self.credit = 0

    def order(self, pattern: bytes) -> list[str]:
        """For each logged write, the first ``pattern`` match among all data of its stream."""
        label: dict[int, str] = {}
        for stream_id, data, _ in self.writes:
            if stream_id not in label and (match := re.search(pattern, data)):
                label[stream_id] = match.group(0).decode()
        return [label.get(stream_id, "?") for stream_id, _, _ in self.writes]


# -- 1. FETCH from the publisher's cache
@pytest.mark.parametrize("version", versions("fetch"))
async def test_fetch_serves_finished_cached_groups(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    track = broadcast.create_track("t", cached_groups=3)
    for g in range(4):  # groups 1..3 stay cached
        write_group(track, f"g{g}a".encode(), f"g{g}b".encode(), timestamps=(1000 + 10 * g, 1005 + 10 * g))
    open_group = track.append_group()
    open_group.write_frame(b"unfinished")
    timed = features_of(version.codec).frame_timestamps
    async with memory_sessions(app, version=version) as (client, _, _, _):
        assert await client.fetch("b", "t", 2) == [b"g2a", b"g2b"]
        frames = await fetch_timed(client, "b", "t", 3)
        assert frames == [(b"g3a", 1030 if timed else None), (b"g3b", 1035 if timed else None)]
        for missing in (0, 4, 9):  # evicted, still being written, never written
            with pytest.raises(SubscribeError) as refused:
                await client.fetch("b", "t", missing)
            assert refused.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(SubscribeError):
            await client.fetch("b", "nope", 2)
        assert not client.closed


@pytest.mark.parametrize("version", versions("fetch"))
async def test_relay_fetch_from_its_copy_else_upstream(version: Version) -> None:
    timed = features_of(version.codec).frame_timestamps
    async with relay_with_publisher(version, cached_groups=1) as (app, track):
        for g in range(3):  # only at the publisher, evicted there but for group 2
            write_group(track, f"old{g}".encode(), timestamps=(70 + g,))
        async with memory_sessions(app, version=version) as (client, _, _, _):
            # Not relayed yet: forwarded to the publisher, which has only its newest group.
            assert await fetch_timed(client, "pub", "t", 2) == [(b"old2", 72 if timed else None)]
            with pytest.raises(SubscribeError):
                await client.fetch("pub", "t", 1)
            reader = await client.subscribe("pub", "t")
            got = await received(reader, 1)
            for g in range(3, 5):
                write_group(track, f"new{g}".encode(), timestamps=(80 + g,))
                got += await received(reader, 1)
            assert got == [2, 3, 4]
            # Group 3 is gone at the publisher (it caches one group), the relay's copy still has it.
            assert track.fetch(3) is None
            assert await fetch_timed(client, "pub", "t", 3) == [(b"new3", 83 if timed else None)]


NEWEST_WITH_FETCH = next(v for v in ALL_VERSIONS if features_of(v.codec).fetch)


@pytest.mark.parametrize("upstream", versions(where=lambda f: not f.fetch))
async def test_relay_fetch_without_upstream_fetch_serves_its_copy_only(upstream: Version) -> None:
    async with relay_with_publisher(upstream) as (app, track):
        async with memory_sessions(app, version=NEWEST_WITH_FETCH) as (client, _, _, _):
            first = asyncio.ensure_future(client.subscribe("pub", "t"))
            await eventually(lambda: track.subscribers == 1, "the relay subscribed upstream")
            write_group(track, b"kept")
            reader = await within(first)
            assert await received(reader, 1) == [0]
            assert await client.fetch("pub", "t", 0) == [b"kept"]
            with pytest.raises(SubscribeError) as refused:  # not in the copy, and upstream cannot be asked
                await client.fetch("pub", "t", 1)
            assert refused.value.code == ErrorCode.NOT_FOUND


# -- 2. timestamps and track info
@pytest.mark.parametrize("version", versions("frame_timestamps", "track_stream"))
async def test_timestamps_and_track_info_survive_a_relay_hop(version: Version) -> None:
    async with relay_with_publisher(version, timescale=90_000, priority=7, max_latency_ms=300) as (app, track):
        async with memory_sessions(app, version=version) as (client, _, _, _):
            first = asyncio.ensure_future(client.subscribe("pub", "t"))
            await eventually(lambda: track.subscribers == 1, "the relay subscribed upstream")
            write_group(track, b"a", b"b", timestamps=(900_000, 903_000))
            reader = await within(first)
            group = await within(reader.next_group())
            assert group is not None
            stamps = []
            async for _ in group:
                stamps.append(group.timestamp)
            assert stamps == [900_000, 903_000]
            assert await client.track_info("pub", "t") == TrackInfo(priority=7, max_latency_ms=300, timescale=90_000)
            write_group(track, b"wall clock")  # no timestamp given: the producer's clock, in its timescale
            group = await within(reader.next_group())
            assert group is not None and await group.read_all() == [b"wall clock"]
            assert group.timestamp == track.latest.timestamps[0]  # type: ignore[union-attr]


@pytest.mark.parametrize("version", versions("track_stream"))
async def test_broadcast_answers_track_info(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    broadcast.create_track("video", priority=9, max_latency_ms=500, timescale=48_000)
    broadcast.create_track("plain")
    async with memory_sessions(app, version=version) as (client, _, _, _):
        assert await client.track_info("b", "video") == TrackInfo(priority=9, max_latency_ms=500, timescale=48_000)
        assert await client.track_info("b", "plain") == TrackInfo(priority=0, max_latency_ms=0, timescale=1000)


# -- 3. start and end groups
@pytest.mark.parametrize("version", versions("subscribe_ranges"))
async def test_start_group_still_cached_then_end_group_ends_the_track(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    track = broadcast.create_track("t", cached_groups=8)
    for g in range(6):
        write_group(track, f"{g}".encode())
    async with memory_sessions(app, version=version) as (client, _, _, _):
        reader = await client.subscribe("b", "t", start_group=2, end_group=6)
        assert await received(reader, 4) == [2, 3, 4, 5]
        write_group(track, b"6")
        write_group(track, b"7")  # past the end: never sent
        assert await received(reader) == [6]
        assert reader.ended
        if features_of(version.codec).subscribe_start_end:
            assert (reader.start_group, reader.end_group) == (2, 7)


@pytest.mark.parametrize("version", versions("subscribe_ranges"))
async def test_start_group_evicted_starts_at_oldest_cached_after_it(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    track = broadcast.create_track("t", cached_groups=3)
    for g in range(6):
        write_group(track, f"{g}".encode())
    async with memory_sessions(app, version=version) as (client, _, _, _):
        reader = await client.subscribe("b", "t", start_group=1, end_group=4)
        assert await received(reader) == [3, 4]


@pytest.mark.parametrize("version", versions("subscribe_ranges"))
async def test_start_group_in_the_future_is_waited_for(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    track = broadcast.create_track("t", cached_groups=8)
    write_group(track, b"0")
    async with memory_sessions(app, version=version) as (client, _, _, _):
        pending = asyncio.ensure_future(client.subscribe("b", "t", start_group=4, end_group=5))
        await eventually(lambda: track.subscribers == 1)
        for g in range(1, 4):
            write_group(track, f"{g}".encode())
        await settle()
        for g in range(4, 7):
            write_group(track, f"{g}".encode())
        reader = await within(pending)
        assert await received(reader) == [4, 5]
        assert track.subscribers == 0


@pytest.mark.parametrize("version", versions("subscribe_ranges", "subscribe_update"))
async def test_subscribe_update_moves_start_and_end(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    track = broadcast.create_track("t", cached_groups=8)
    write_group(track, b"0")
    async with memory_sessions(app, version=version) as (client, server, _, _):
        reader = await client.subscribe("b", "t")
        assert await received(reader, 1) == [0]
        client.update_subscription(reader, start_group=3, end_group=4)
        await eventually(lambda: published(server, "t").end_group == 4)
        for g in range(1, 6):
            write_group(track, f"{g}".encode())
        assert await received(reader) == [3, 4]
        assert reader.ended


@pytest.mark.parametrize("version", versions("subscribe_ranges"))
async def test_bounded_range_on_a_congested_connection_delivers_every_group(version: Version) -> None:
    """The scheduler sends newer groups first, so the end group may be done before the ones before it."""
    app, broadcast = single_broadcast_app()
    track = broadcast.create_track("t", cached_groups=4)
    for g in range(4):
        write_group(track, f"{g}a".encode(), f"{g}b".encode())
    async with memory_sessions(app, version=version) as (client, server, _, _):
        link = Link(server)
        link.pause()
        pending = asyncio.ensure_future(client.subscribe("b", "t", start_group=1, end_group=3))
        await eventually(lambda: server.stats().queued_writes >= 3)
        await link.drain()
        reader = await within(pending)
        assert sorted(await received(reader)) == [1, 2, 3]
        assert link.order(rb"\d[ab]")[:3] == ["3a", "3a", "3a"]  # the newest went first: header, frames


# -- 4. max latency
@pytest.mark.parametrize("version", versions("subscribe_ranges"))
async def test_late_subscriber_skips_cached_groups_older_than_its_max_latency(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    track = broadcast.create_track("t", cached_groups=8)
    for g in range(6):
        write_group(track, f"{g}".encode())
    for group in track.cached()[:4]:
        group.created -= 10  # groups 0..3 are ten seconds old; 4 and 5 were just written
    async with memory_sessions(app, version=version) as (client, _, _, _):
        patient = await client.subscribe("b", "t", start_group=1, end_group=5)
        assert await received(patient) == [1, 2, 3, 4, 5]
        hurried = await client.subscribe("b", "t", start_group=1, end_group=5, max_latency_ms=5_000)
        assert await received(hurried) == [4, 5]


@pytest.mark.parametrize("version", versions("subscribe_ranges"))
async def test_slow_subscriber_loses_groups_that_went_stale_in_flight(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    track = broadcast.create_track("t", cached_groups=4)
    write_group(track, b"0")
    async with memory_sessions(app, version=version) as (client, server, _, _):
        link = Link(server)
        link.pause()
        pending = asyncio.ensure_future(client.subscribe("b", "t", max_latency_ms=20))
        await eventually(lambda: server.stats().queued_writes == 1)
        write_group(track, b"1")
        await asyncio.sleep(0.05)  # groups 0 and 1 now wait longer than 20 ms
        write_group(track, b"2")  # the newest is never stale
        await link.drain()
        # The publisher gave up on groups 0 and 1 when their frames were due, and sent group 2 whole.
        assert sorted(code for _, code in link.resets) == [ErrorCode.OLD, ErrorCode.OLD]
        assert [data for _, data, _ in link.writes if data.endswith(b"2")] != []
        reader = await within(pending)
        complete: list[tuple[int, list[bytes]]] = []
        async with asyncio.timeout(WAIT):
            while not complete:
                group = await reader.next_group()
                assert group is not None
                try:
                    complete.append((group.sequence, await group.read_all()))
                except StreamError as exc:  # a reset may or may not overtake the group's header
                    assert exc.code == ErrorCode.OLD
        await settle(100)
        for late in list(reader._queue):
            with pytest.raises(StreamError):
                await late.read_all()
        assert complete == [(2, [b"2"])]


# -- 5. hops
class RecordingMux(TrackMux):
    """Logs every announcement registered, to count how often a path appeared."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, tuple[int, ...]]] = []

    def announce(self, announcement: Announcement, handler: TrackHandler) -> None:
        self.log.append((announcement.path, announcement.hops))
        super().announce(announcement, handler)


def relay_app(relay: Relay) -> MoQ:
    app = MoQ(mux=relay.mux)
    app.add_route("/{path:path}", relay)
    return app


@contextlib.asynccontextmanager
async def relay_with_publisher(version: Version, **track_options: Any) -> AsyncIterator[tuple[MoQ, TrackProducer]]:
    """A relay's app, with a publisher session on it (speaking ``version``) announcing ``pub`` with track ``t``."""
    relay = Relay()
    app = relay_app(relay)
    mux = TrackMux()
    broadcast = Broadcast("pub")
    track = broadcast.create_track("t", **track_options)
    mux.publish("pub", broadcast)
    async with memory_sessions(app, client_mux=mux, version=version):
        await eventually(lambda: relay.mux.route("pub") is not None, "the relay learned the broadcast")
        yield app, track


@contextlib.asynccontextmanager
async def federated(version: Version) -> AsyncIterator[tuple[Relay, Relay, MoQ, Session]]:
    """Relays A and B on one connection, each ingesting what the other announces. Yields A, B, A's app, A's session."""
    a, b = Relay(RecordingMux()), Relay(RecordingMux())
    async with memory_sessions(relay_app(b), client_mux=a.mux, version=version) as (a_to_b, _, _, _):
        ingest = asyncio.ensure_future(a.ingest(a_to_b))
        try:
            yield a, b, relay_app(a), a_to_b
        finally:
            ingest.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ingest


def announced_log(relay: Relay, path: str) -> list[tuple[int, ...]]:
    mux = relay.mux
    assert isinstance(mux, RecordingMux)
    return [hops for logged, hops in mux.log if logged == path]


@pytest.mark.parametrize("version", versions(where=lambda f: f.hops is HopEncoding.IDS))
async def test_federated_relays_do_not_announce_in_circles(version: Version) -> None:
    async with federated(version) as (a, b, a_app, a_to_b):
        publisher_mux = TrackMux()
        publisher_mux.publish("live", Broadcast())
        async with memory_sessions(a_app, client_mux=publisher_mux, version=version):
            await eventually(lambda: b.mux.route("live") is not None, "B learned the broadcast")
            # A's own view of what B announces, asked the way A's relay asks.
            echo = await a_to_b.announced("")
            await settle(100)
            assert "live" not in echo.active
            route = (publisher_mux.hop_id, a.mux.hop_id)
            assert announced_log(a, "live") == [route[:1]]  # only from the publisher: never back from B
            assert announced_log(b, "live") == [route]  # once, with the full route
            observer_mux = TrackMux()
            async with memory_sessions(relay_app(b), client_mux=observer_mux, version=version) as (observer, _, _, _):
                seen = await observer.announced("")
                await eventually(lambda: "live" in seen.active)
                assert seen.active["live"].hops == (*route, b.mux.hop_id)
        await eventually(lambda: a.mux.route("live") is None and b.mux.route("live") is None, "gone from both")
        await settle(100)
        assert a.mux.route("live") is None and b.mux.route("live") is None
        assert len(announced_log(a, "live")) == 1 and len(announced_log(b, "live")) == 1
        echo.close()


@pytest.mark.parametrize("version", versions(where=lambda f: f.hops is HopEncoding.COUNT))
async def test_hop_count_only_echo_is_ignored_not_adopted(version: Version) -> None:
    """lite-03: B announces A's broadcast back to A (it cannot know), but A keeps its shorter route."""
    async with federated(version) as (a, b, a_app, a_to_b):
        publisher_mux = TrackMux()
        publisher_mux.publish("live", Broadcast())
        async with memory_sessions(a_app, client_mux=publisher_mux, version=version):
            await eventually(lambda: b.mux.route("live") is not None, "B learned the broadcast")
            echo = await a_to_b.announced("")
            await eventually(lambda: "live" in echo.active, "B announced it back to A")
            assert len(echo.active["live"].hops) == 3  # publisher, A, B: counted, not named
            await settle(100)
            assert announced_log(a, "live") == [(0,)]
            assert announced_log(b, "live") == [(0, 0)]
            route = a.mux.route("live")
            assert route is not None and route[0].hops == (0,)  # still the publisher's, not B's echo
        await eventually(lambda: a.mux.route("live") is None and b.mux.route("live") is None, "gone from both")
        await eventually(lambda: "live" not in echo.active, "B withdrew its echo")
        await settle(100)
        assert a.mux.route("live") is None and b.mux.route("live") is None
        assert len(announced_log(a, "live")) == 1 and len(announced_log(b, "live")) == 1
        echo.close()


async def test_relay_keeps_local_and_shorter_routes() -> None:
    relay = Relay(RecordingMux())
    local = relay.mux.publish("here", Broadcast())

    async def handler(_: TrackWriter) -> None:
        return None

    remote: Any = handler
    assert relay.adopt(Announcement("here", hops=(5,)), remote) is None  # never displaces a local publication
    assert relay.mux.route("here") is not None and relay.mux.route("here")[0] is local  # type: ignore[index]
    far = relay.adopt(Announcement("there", hops=(1, 2, 3)), remote)
    near = relay.adopt(Announcement("there", hops=(7,)), remote)
    assert far is not None and near is not None
    route = relay.mux.route("there")
    assert route is not None and route[0] is near  # a shorter route takes over a longer one...
    assert far.active and relay.mux.publications("there") == 2  # ...which stays as its backup
    assert relay.adopt(Announcement("there", hops=(1, 2)), remote) is None
    near.end()
    route = relay.mux.route("there")
    assert route is not None and route[0] is far  # and serves again when the shorter one ends
    assert relay.adopt(Announcement("long", hops=tuple(range(1, 33))), remote) is None  # at the hop limit
    learned = Announcement("there2", hops=(9,))
    assert relay.adopt(learned, remote) is learned
    route = relay.mux.route("there2")
    assert route is not None and route[0].hops == (9,)  # announced onwards with the route it came by
    learned.end()
    assert relay.mux.route("there2") is None


# -- 6. priorities
@pytest.mark.parametrize("version", versions("subscribe_update"))
async def test_subscriber_priority_orders_a_congested_connection_and_update_reorders(version: Version) -> None:
    app, broadcast = single_broadcast_app()
    tracks = {name: broadcast.create_track(name) for name in ("hi", "lo")}
    for name, track in tracks.items():
        write_group(track, f"{name}-0".encode())
    async with memory_sessions(app, version=version) as (client, server, _, _):
        link = Link(server)
        link.pause()
        lo = await client.subscribe("b", "lo", priority=1)
        hi = await client.subscribe("b", "hi", priority=200)
        for name, track in tracks.items():
            write_group(track, f"{name}-1".encode(), f"{name}-1".encode())
        await link.drain()
        first = [label[:2] for label in link.order(rb"(hi|lo)-\d")]
        assert first == ["hi"] * 7 + ["lo"] * 7  # 2 groups each: header, frames, FIN
        assert await received(hi, 2) == [1, 0] and await received(lo, 2) == [1, 0]  # newest first within a track

        client.update_subscription(lo, priority=255)
        await eventually(lambda: published(server, "lo").priority == 255)
        link.writes.clear()
        for name, track in tracks.items():
            write_group(track, f"{name}-2".encode())
        await link.drain()
        assert [label[:2] for label in link.order(rb"(hi|lo)-\d")] == ["lo"] * 3 + ["hi"] * 3
        assert await received(hi, 1) == [2] and await received(lo, 1) == [2]


"""Traffic totals: frames and bytes each session sent and received, and the groups it dropped.

``Session.stats()`` carries them (``SessionCore`` bumps plain ints on the
per-frame path) and the app's metrics export them as ``moqt_frames_total``,
``moqt_bytes_total`` (``direction`` ``in`` / ``out``) and
``moqt_groups_dropped_total``. Counted once per frame whichever way it left:
a track handler's ``GroupWriter``, a producer's cache, a FETCH reply, a relay.
Bytes are payload bytes, not frame headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from moqt_asgi import Broadcast, MoQ, TrackMux
from moqt_asgi.engine._scheduler import DEFAULT_HIGH_WATER
from moqt_asgi.engine.session import Session
from moqt_asgi.metrics import render
from moqt_asgi.protocol.errors import ErrorCode, StreamError
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.versions import LITE_04_VERSION, LITE_05_VERSION
from moqt_asgi.relay import Relay
from moqt_asgi.testing import MemoryPair
from moqt_asgi.transport.base import SendStream

from .helpers import eventually, memory_sessions, settle, within
from .test_metrics import sample

BIG = 300_000
"""A frame large enough that two of them fill the send scheduler's transport queue (512 KiB)."""


def totals(session: Session) -> tuple[int, int, int, int, int]:
    stats = session.stats()
    return stats.frames_sent, stats.bytes_sent, stats.frames_received, stats.bytes_received, stats.groups_dropped


class GroupStreams:
    """Records how each uni stream a session opens ends: ``"fin"``, the reset code, or ``None`` while open."""

    def __init__(self, session: Session) -> None:
        self.ends: list[str | int | None] = []
        connection: Any = session.connection
        opener: Callable[[], Awaitable[SendStream]] = connection.open_uni

        async def open_uni() -> SendStream:
            stream = await opener()
            index = len(self.ends)
            self.ends.append(None)
            write, reset = stream.write, stream.reset

            def recorded_write(data: bytes, end: bool = False) -> None:
                write(data, end)
                if end and self.ends[index] is None:
                    self.ends[index] = "fin"

            def recorded_reset(code: int) -> None:
                reset(code)
                if self.ends[index] is None:
                    self.ends[index] = code

            stream.write = recorded_write  # type: ignore[method-assign]
            stream.reset = recorded_reset  # type: ignore[method-assign]
            return stream

        connection.open_uni = open_uni


async def closed_and_counted(app: MoQ, version: str) -> str:
    def closed() -> str:
        text = render(app).decode()
        return text if sample(text, "moqt_sessions_closed_total", transport="memory", version=version) == 1 else ""

    return await eventually(closed, "the session counted as closed")


async def test_metrics_count_frames_and_bytes_both_ways_for_a_session_that_came_and_went(
        no_leaked_tasks: None) -> None:
    app = MoQ()
    clock = Broadcast("clock")
    seconds = clock.create_track("seconds")
    app.mux.publish("clock", clock)
    mux = TrackMux()
    camera = Broadcast("cam")
    video = camera.create_track("video")
    mux.publish("cam", camera)
    assert "moqt_frames_total" not in render(app).decode()  # no session yet: absent, not zero
    async with MemoryPair(app, mux=mux) as pair:
        version = pair.client.version_name
        # out: the app's track to the client, two frames (10 + 20 bytes) in one group
        reader = await within(pair.client.subscribe("clock", "seconds", wait_for_start=False))
        group = seconds.append_group()
        group.write_frame(b"a" * 10)
        group.write_frame(b"b" * 20)
        group.finish()
        received = await within(reader.next_group())
        assert received is not None and await within(received.read_all()) == [b"a" * 10, b"b" * 20]
        # in: the server subscribes to the client's track, three frames (5 + 6 + 7 bytes) in one group
        track = await within(pair.server.subscribe("cam", "video", wait_for_start=False))
        group = video.append_group()
        for payload in (b"x" * 5, b"y" * 6, b"z" * 7):
            group.write_frame(payload)
        group.finish()
        received = await within(track.next_group())
        assert received is not None and len(await within(received.read_all())) == 3
        assert totals(pair.server) == (2, 30, 3, 18, 0)
        assert totals(pair.client) == (3, 18, 2, 30, 0)
        live = render(app).decode()
        assert sample(live, "moqt_frames_total", direction="out") == 2  # an open session counts too
    text = await closed_and_counted(app, version)
    assert sample(text, "moqt_frames_total", direction="out") == 2
    assert sample(text, "moqt_bytes_total", direction="out") == 30
    assert sample(text, "moqt_frames_total", direction="in") == 3
    assert sample(text, "moqt_bytes_total", direction="in") == 18
    assert sample(text, "moqt_groups_dropped_total") == 0


@pytest.mark.parametrize(("first", "ends", "delivered", "sent"), [
    # Group 0 is given up mid-frame when group 2 comes; its reset frees the queue and the rest flows.
    pytest.param((BIG, BIG), [ErrorCode.OLD, "fin", "fin", "fin", "fin", "fin"], [1, 2, 3, 4, 5],
                 (6, BIG + 5), id="mid-frame"),  # sent: group 0's first frame, and groups 1..5
    # Group 0 fills the queue exactly and is out whole; the headers of 1..5 wait, and 1..3 are given up
    # before their header went out (such a group used to be left open for the subscription's life).
    pytest.param((DEFAULT_HIGH_WATER,), ["fin", ErrorCode.CANCEL, ErrorCode.CANCEL, ErrorCode.CANCEL, "fin", "fin"],
                 [0, 4, 5], (3, DEFAULT_HIGH_WATER + 2), id="before-header"),
])
async def test_a_slow_subscriber_loses_old_groups_each_reset_and_counted(
        no_leaked_tasks: None, first: tuple[int, ...], ends: list[str | int], delivered: list[int],
        sent: tuple[int, int]) -> None:
    """The producer keeps at most two groups in flight per subscriber; older ones are reset, never left open."""
    app = MoQ()
    broadcast = Broadcast("b")
    track = broadcast.create_track("t")
    app.mux.publish("b", broadcast)
    async with memory_sessions(app, version=LITE_04_VERSION, flow_control=True) as (client, server, _, _):
        streams = GroupStreams(server)
        reader = await within(client.subscribe("b", "t"))
        group = track.append_group()
        for size in first:
            group.write_frame(bytes(size))
        group.finish()
        await settle(20)
        for sequence in range(1, 6):  # the client reads nothing meanwhile
            track.write_frame(b"%d" % sequence)
            await settle(20)
        got: dict[int, int] = {}
        while sorted(got) != delivered:
            received = await within(reader.next_group())
            assert received is not None
            try:
                got[received.sequence] = sum(map(len, await within(received.read_all())))
            except StreamError as exc:
                assert exc.code == ErrorCode.OLD and received.sequence == 0
        await eventually(lambda: len(streams.ends) == 6 and None not in streams.ends, "every group stream to end")
        assert streams.ends == ends
        dropped = sum(end != "fin" for end in ends)
        assert server.stats().groups_dropped == dropped
        assert totals(server)[:2] == sent  # frames handed to the transport, those of a group reset later too
        version = server.version_name
    text = await closed_and_counted(app, version)
    assert sample(text, "moqt_groups_dropped_total") == dropped


async def test_groups_a_slow_reader_never_read_are_counted_as_dropped(no_leaked_tasks: None) -> None:
    app = MoQ(limits=Limits(max_queued_groups=1))
    mux = TrackMux()
    camera = Broadcast("cam")
    video = camera.create_track("video", cached_groups=4)
    mux.publish("cam", camera)
    async with MemoryPair(app, mux=mux, limits=DEFAULT_LIMITS) as pair:
        version = pair.server.version_name
        track = await within(pair.server.subscribe("cam", "video", wait_for_start=False))
        await eventually(lambda: video.subscribers == 1, "the client to serve the subscription")
        for sequence in range(3):  # the app reads nothing meanwhile
            video.write_frame(b"%d" % sequence)
            await settle(20)
        await eventually(lambda: track.dropped_groups == 2, "two groups dropped unread")
        assert pair.server.stats().groups_dropped == 2
        group = await within(track.next_group())
        assert group is not None and await within(group.read_all()) == [b"2"]
        assert totals(pair.server) == (0, 0, 1, 1, 2)
    text = await closed_and_counted(app, version)
    assert sample(text, "moqt_groups_dropped_total") == 2
    assert sample(text, "moqt_frames_total", direction="in") == 1


async def test_fetched_frames_are_counted_once_on_each_side(no_leaked_tasks: None) -> None:
    app = MoQ()
    broadcast = Broadcast("b")
    track = broadcast.create_track("t")
    app.mux.publish("b", broadcast)
    group = track.append_group()
    for payload in (b"one", b"two!", b"three"):
        group.write_frame(payload)
    group.finish()
    async with memory_sessions(app, version=LITE_05_VERSION) as (client, server, _, _):
        assert await within(client.fetch("b", "t", group.sequence)) == [b"one", b"two!", b"three"]
        await eventually(lambda: server.stats().fetches == 0, "the fetch served")
        assert totals(server) == (3, 12, 0, 0, 0)
        assert totals(client) == (0, 0, 3, 12, 0)


async def test_a_relay_counts_what_it_receives_upstream_and_sends_downstream(no_leaked_tasks: None) -> None:
    relay = Relay()
    app = MoQ(mux=relay.mux)
    app.add_route("/{path:path}", relay)
    mux = TrackMux()
    broadcast = Broadcast("pub")
    track = broadcast.create_track("t")
    mux.publish("pub", broadcast)
    async with memory_sessions(app, client_mux=mux, version=LITE_04_VERSION) as (publisher, upstream, _, _):
        await eventually(lambda: relay.mux.route("pub") is not None, "the relay learned the broadcast")
        async with memory_sessions(app, version=LITE_04_VERSION) as (subscriber, downstream, _, _):
            reader = await within(subscriber.subscribe("pub", "t"))
            await eventually(lambda: track.subscribers == 1, "the relay subscribed upstream")
            group = track.append_group()
            group.write_frame(b"a" * 100)
            group.write_frame(b"b" * 50)
            group.finish()
            received = await within(reader.next_group())
            assert received is not None and await within(received.read_all()) == [b"a" * 100, b"b" * 50]
            assert totals(publisher) == (2, 150, 0, 0, 0)
            assert totals(upstream) == (0, 0, 2, 150, 0)  # the relay's session with the publisher
            assert totals(downstream) == (2, 150, 0, 0, 0)  # the relay's session with the subscriber
            assert totals(subscriber) == (0, 0, 2, 150, 0)
            text = render(app).decode()
            assert sample(text, "moqt_frames_total", direction="in") == 2
            assert sample(text, "moqt_frames_total", direction="out") == 2
            assert sample(text, "moqt_bytes_total", direction="in") == 150
            assert sample(text, "moqt_bytes_total", direction="out") == 150

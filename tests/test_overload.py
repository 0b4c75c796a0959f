"""Overload: admission by measured load, and fairness among subscribers that cannot keep up.

The load monitor is driven by hand (:meth:`LoadMonitor.observe`, or an
injected clock) so nothing here times anything. The fairness test runs
twenty viewers of one live track over the in-memory pair with flow control,
each reading one frame for every few the publisher writes (a path slower
than the track), and checks that they degrade evenly: Jain's fairness index
over the frames each received, the newest group reaching everyone, and a
viewer that joins during the overload getting its first frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import pytest

from moqt_asgi import Broadcast, MoQ, dial
from moqt_asgi.engine._scheduler import DEFAULT_HIGH_WATER
from moqt_asgi.engine.session import Session
from moqt_asgi.load import LoadMonitor, Overloaded
from moqt_asgi.metrics import REFUSAL_REASONS
from moqt_asgi.protocol.errors import ErrorCode, SessionClosed, SetupRejected, StreamError
from moqt_asgi.testing import MemoryPair
from moqt_asgi.testing.netsim import Link, UdpRelay

from .conftest import Certs
from .helpers import WAIT, eventually, native_server, read_tick, settle, tick_app, within


def jain(values: list[int]) -> float:
    """Jain's fairness index: 1.0 when all are equal, ``1/n`` when one has everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the load monitor ------------------------------------------------------------------------------

def test_jain_index() -> None:
    assert jain([5] * 20) == 1.0
    assert jain([100] + [0] * 19) == pytest.approx(1 / 20)
    assert jain([10] * 10 + [5] * 10) == pytest.approx(0.9)


def test_smoothed_lag_with_hysteresis() -> None:
    monitor = LoadMonitor(0.1, smoothing=0.5, clear_ratio=0.5)
    assert not monitor.observe(0.0)
    assert not monitor.observe(0.15)  # one late timer is not overload: 0.075 smoothed
    assert monitor.lag == pytest.approx(0.075)
    assert monitor.observe(0.15)  # 0.1125: over
    assert monitor.refusal() is not None
    assert monitor.observe(0.05)  # 0.081: under the threshold but over the clearing level, still on
    assert monitor.observe(0.03)  # 0.056
    assert not monitor.observe(0.0)  # 0.028: under half the threshold, off
    assert monitor.refusal() is None
    assert not monitor.observe(0.09)  # 0.059: over the clearing level but under the threshold, stays off


def test_cpu_share_threshold() -> None:
    monitor = LoadMonitor(None, max_cpu=0.9, smoothing=1.0)
    assert not monitor.observe(5.0, 0.5)  # lag is not watched
    assert monitor.observe(0.0, 0.95)
    refusal = monitor.refusal()
    assert isinstance(refusal, Overloaded) and refusal.reason == "load" and "CPU 95%" in refusal
    assert not monitor.observe(0.0, 0.2)


def test_bad_settings() -> None:
    for kwargs in ({"max_lag": 0.0}, {"max_cpu": -1.0}, {"interval": 0.0}, {"smoothing": 0.0}, {"clear_ratio": 2.0}):
        with pytest.raises(ValueError):
            LoadMonitor(**kwargs)  # type: ignore[arg-type]


async def test_the_timer_measures_lag_on_the_injected_clocks(caplog: pytest.LogCaptureFixture) -> None:
    clock, cpu = FakeClock(), FakeClock()
    monitor = LoadMonitor(0.1, max_cpu=0.9, interval=0.001, smoothing=1.0, clock=clock, cpu_clock=cpu)
    with caplog.at_level(logging.INFO, logger="moqt_asgi.load"):
        monitor.ensure_running()
        assert monitor.running
        monitor.ensure_running()  # already measuring on this loop: one timer only
        clock.now += 0.001 + 0.3  # the timer, due 1 ms from now, is seen to fire 300 ms late
        cpu.now += 0.1  # having used 0.1 s of CPU in those 301 ms
        await eventually(lambda: monitor.samples >= 2, "two measurements")
        monitor.stop()
    assert not monitor.running
    messages = [r.getMessage() for r in caplog.records]
    # the first: 300 ms late with a third of a core; the next, re-armed from the clock's now, on time
    assert messages[:2] == ["overloaded: event loop lag 300 ms, CPU 33%; new sessions are refused",
                            "load back to normal: event loop lag 0 ms, CPU 0%; new sessions are admitted again"]
    assert monitor.lag == 0.0 and not monitor.overloaded


def test_outside_a_loop_the_monitor_does_not_start() -> None:
    monitor = LoadMonitor(0.1)
    monitor.ensure_running()
    assert not monitor.running


# -- admission -------------------------------------------------------------------------------------

def test_the_load_reason_is_exported() -> None:
    assert "load" in REFUSAL_REASONS


def test_max_loop_lag_makes_a_monitor() -> None:
    assert MoQ().load_monitor is None
    app = MoQ(max_loop_lag=0.2)
    assert app.load_monitor is not None and app.load_monitor.max_lag == 0.2


async def test_an_overloaded_app_refuses_new_sessions_and_keeps_the_admitted(caplog: pytest.LogCaptureFixture) -> None:
    app = tick_app()
    monitor = LoadMonitor(0.1, interval=3600.0, smoothing=1.0, clear_ratio=0.5, clock=FakeClock())
    app.load_monitor = monitor
    async with MemoryPair(app) as kept:
        assert monitor.running  # started by the first admission, on this loop
        monitor.observe(0.5)
        with caplog.at_level(logging.INFO, logger="moqt_asgi"), pytest.raises(SetupRejected) as refused:
            async with MemoryPair(app):
                pass
        assert refused.value.code in (503, 64 + 503)  # HTTP 503, or application code 503 on a native session
        assert "overloaded" in refused.value.reason and "500 ms" in refused.value.reason
        assert any("session refused (server is overloaded" in r.getMessage() for r in caplog.records)
        assert app.metrics.refused["load"] == 1 and app.metrics.refused["admission"] == 0  # the metrics' reason
        assert app.session_count == 1
        assert await read_tick(kept.client) == b"tick"  # the admitted session goes on
        monitor.observe(0.08)  # under the threshold, over the clearing level: still refused
        with pytest.raises(SetupRejected):
            async with MemoryPair(app):
                pass
        monitor.observe(0.01)
        async with MemoryPair(app) as again:
            assert await read_tick(again.client) == b"tick"
    assert app.session_count == 0
    monitor.stop()


async def test_a_blocked_loop_is_measured_on_the_real_clock() -> None:
    """The event loop held for 300 ms by a callback: the timer due within 50 ms runs at least 250 ms late."""
    app = tick_app()
    monitor = LoadMonitor(0.1, interval=0.05, smoothing=1.0)
    app.load_monitor = monitor
    async with MemoryPair(app) as kept:
        asyncio.get_running_loop().call_soon(time.sleep, 0.3)
        lag = await eventually(lambda: monitor.lag if monitor.overloaded else 0.0, "the lag measured")
        assert lag >= 0.25
        assert app.admit(("10.0.0.1", 1)) is not None  # still the same sample: nothing ran in between
        assert await read_tick(kept.client) == b"tick"
        await eventually(lambda: not monitor.overloaded, "the lag back under half the threshold")
        async with MemoryPair(app) as again:
            assert await read_tick(again.client) == b"tick"
    monitor.stop()


def test_admit_says_load() -> None:
    app = MoQ(max_sessions=5, load_monitor=LoadMonitor(0.1, smoothing=1.0))
    assert app.admit(("10.0.0.1", 1)) is None
    assert app.load_monitor is not None
    app.load_monitor.observe(1.0)
    refusal = app.admit(("10.0.0.1", 2))
    assert isinstance(refusal, Overloaded) and refusal.reason == "load"
    assert app.session_count == 1
    app.release(("10.0.0.1", 1))


# -- fairness among viewers that cannot keep up ----------------------------------------------------

VIEWERS = 20
FRAME = 64 * 1024
FRAMES_PER_GROUP = 5
GROUPS = 40
READ_EVERY = 3
"""A viewer may read one frame for every ``READ_EVERY`` the publisher has written: the path is three times too slow."""


class Pace:
    """Frames published so far; viewers wait on it to read no faster than their path allows."""

    def __init__(self) -> None:
        self.published = 0
        self.done = False
        self._changed = asyncio.Event()

    def tick(self, *, done: bool = False) -> None:
        self.published += 0 if done else 1
        self.done = self.done or done
        self._changed.set()
        self._changed = asyncio.Event()

    async def allow(self, frames: int) -> None:
        """Return once ``frames`` may be read (at once when the publisher has finished: the viewer drains)."""
        while not self.done and self.published < frames:
            await self._changed.wait()


@dataclass
class Seen:
    frames: int = 0
    groups: int = 0
    newest: int = -1
    abandoned: int = 0


async def view(session: Session, pace: Pace, seen: Seen, first: asyncio.Event) -> None:
    """A live viewer on a slow path: one frame per ``READ_EVERY`` published, groups in arrival order."""
    track = await session.subscribe("live", "video")
    start = pace.published
    with contextlib.suppress(SessionClosed):
        async for group in track:
            try:
                while True:
                    await pace.allow(start + (seen.frames + 1) * READ_EVERY)
                    frame = await group.read_frame()
                    if frame is None:
                        break
                    assert len(frame) == FRAME
                    seen.frames += 1
                    seen.newest = max(seen.newest, group.sequence)
                    first.set()
                seen.groups += 1
            except StreamError:
                seen.abandoned += 1  # the server gave this group up (OLD): the viewer moves on


@pytest.mark.parametrize("drop_queued", [False, True], ids=["handed-over", "drop-queued"])
async def test_viewers_that_cannot_keep_up_degrade_evenly(drop_queued: bool) -> None:
    app = MoQ()
    broadcast = Broadcast("live")
    track = broadcast.create_track("video", drop_queued=drop_queued)
    app.mux.publish("live", broadcast)
    pace = Pace()
    payload = bytes(FRAME)
    async with contextlib.AsyncExitStack() as stack:
        pairs = [await stack.enter_async_context(MemoryPair(app, flow_control=True)) for _ in range(VIEWERS)]
        seen = [Seen() for _ in pairs]
        firsts = [asyncio.Event() for _ in pairs]
        viewers = [asyncio.ensure_future(view(p.client, pace, s, f)) for p, s, f in zip(pairs, seen, firsts, strict=True)]
        await eventually(lambda: track.subscribers == VIEWERS, "every viewer subscribed")
        late: MemoryPair | None = None
        late_seen, late_first = Seen(), asyncio.Event()
        late_viewer: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 6 * WAIT
        group_number = 0
        while group_number < GROUPS or not late_first.is_set():
            assert loop.time() < deadline, "the viewer that joined during the overload got no frame"
            group = track.append_group()
            for _ in range(FRAMES_PER_GROUP):
                group.write_frame(payload)
                pace.tick()
                for _ in range(4):
                    await asyncio.sleep(0)
            group.finish()
            group_number += 1
            if group_number == GROUPS // 2:  # a new honest viewer arrives in the middle of the overload
                late = await stack.enter_async_context(MemoryPair(app, flow_control=True))
                late_viewer = asyncio.ensure_future(view(late.client, pace, late_seen, late_first))
        last = track.latest
        assert last is not None
        track.finish()
        pace.tick(done=True)
        await within(asyncio.gather(*viewers))
        assert late is not None and late_viewer is not None
        await within(late_viewer)

        published = group_number * FRAMES_PER_GROUP
        frames = [s.frames for s in seen]
        dropped = [p.server.stats().groups_dropped for p in pairs]
        # the path really was too slow: every viewer lost groups, none got close to all frames
        assert all(d > 0 for d in dropped), dropped
        assert max(frames) < published * 0.8, (frames, published)
        # and the viewers degraded evenly, each still getting a fair share
        assert jain(frames) >= 0.9, frames
        assert min(frames) >= published / READ_EVERY / 4, frames
        # no one stalled: everyone, the latecomer too, received the newest group
        assert all(s.newest == last.sequence for s in seen), ([s.newest for s in seen], last.sequence)
        assert late_seen.newest == last.sequence and late_seen.frames > 0


@pytest.mark.parametrize("drop_queued", [False, True])
async def test_old_groups_queued_in_the_transport_are_dropped_for_a_stalled_viewer(drop_queued: bool) -> None:
    """Group 0 fits the transport's queue whole; four newer groups follow while the viewer reads nothing.

    Without ``drop_queued`` group 0 was handed over, so it stays and the viewer
    reads half a megabyte of stale media first. With it, group 0 is still
    being sent when newer groups come, so it is reset with ``OLD`` like the
    other old ones and the viewer goes straight to the newest two.
    """
    app = MoQ()
    broadcast = Broadcast("live")
    track = broadcast.create_track("video", drop_queued=drop_queued)
    app.mux.publish("live", broadcast)
    async with MemoryPair(app, flow_control=True) as pair:
        reader = await within(pair.client.subscribe("live", "video", wait_for_start=False))
        await eventually(lambda: track.subscribers == 1, "the subscription")
        group = track.append_group()
        for _ in range(DEFAULT_HIGH_WATER // FRAME):
            group.write_frame(bytes(FRAME))
        group.finish()
        await settle(20)
        assert pair.server_connection.backlog() >= DEFAULT_HIGH_WATER  # all of group 0 is in the transport
        for sequence in range(1, 5):
            track.write_frame(b"%d" % sequence)
            await settle(20)
        complete: list[int] = []
        abandoned: list[int] = []
        while not complete or complete[-1] != 4:
            received = await within(reader.next_group())
            assert received is not None
            try:
                await within(received.read_all())
                complete.append(received.sequence)
            except StreamError as exc:
                assert exc.code == ErrorCode.OLD
                abandoned.append(received.sequence)
        dropped = pair.server.stats().groups_dropped
    if drop_queued:
        assert 0 in abandoned and complete == [3, 4], (abandoned, complete)
        assert dropped == 3
    else:
        assert complete[0] == 0 and 0 not in abandoned, (abandoned, complete)


# -- the same over QUIC, through a rate-capped link ------------------------------------------------

LINK_RATE = 1_600_000
"""Bytes per second the shared link carries: a third of what twenty viewers of :data:`QUIC_FRAME` at 30 fps need."""
QUIC_FRAME = 8000
QUIC_FPS = 30
QUIC_SECONDS = 4.0


@dataclass
class Watched:
    frames: int = 0
    newest: int = -1
    abandoned: int = 0
    last: asyncio.Event = field(default_factory=asyncio.Event)
    first: asyncio.Event = field(default_factory=asyncio.Event)


async def watch(session: Session, seen: Watched, last: list[int]) -> None:
    """A viewer reading as fast as its path allows; sets ``seen.last`` once it has a frame of group ``last[0]``."""
    track = await session.subscribe("live", "video")
    with contextlib.suppress(SessionClosed):
        async for group in track:
            try:
                while await group.read_frame() is not None:
                    seen.frames += 1
                    seen.newest = max(seen.newest, group.sequence)
                    seen.first.set()
                    if last and seen.newest >= last[0]:
                        seen.last.set()
            except StreamError as exc:
                assert exc.code == ErrorCode.OLD
                seen.abandoned += 1


@pytest.mark.slow
async def test_quic_viewers_on_a_shared_slow_link_degrade_evenly_and_none_stalls(certs: Certs) -> None:
    """Twenty QUIC viewers share a link a third as fast as they need, with ``drop_queued``.

    Each loses old groups (reset with ``OLD``), they get about the same
    number of frames, everyone receives the last group, and a viewer that
    joins halfway gets its first frame. Without ``drop_queued`` the groups
    handed to aioquic are never given up: the viewers read seconds-old
    media and none has lost a group (measured: everyone two to six seconds
    behind, stuck on group 1 to 3 of 10 three seconds after the end).
    """
    app = MoQ()
    broadcast = Broadcast("live")
    track = broadcast.create_track("video", drop_queued=True)
    app.mux.publish("live", broadcast)
    payload = bytes(QUIC_FRAME)
    last: list[int] = []
    async with native_server(app, str(certs.cert), str(certs.key)) as server, \
            UdpRelay(("127.0.0.1", server.address[1]), server=Link(rate=LINK_RATE, delay=0.01),
                     client=Link(delay=0.01)) as relay:
        url = f"moql://127.0.0.1:{relay.port}/"
        sessions = [await within(dial(url, fingerprint=certs.fingerprint)) for _ in range(VIEWERS)]
        try:
            seen = [Watched() for _ in sessions]
            viewers = [asyncio.ensure_future(watch(s, w, last)) for s, w in zip(sessions, seen, strict=True)]
            await eventually(lambda: track.subscribers == VIEWERS, "every viewer subscribed")
            late_seen = Watched()
            frames = int(QUIC_SECONDS * QUIC_FPS)
            group = track.append_group()
            for n in range(frames):
                if n and n % 10 == 0:
                    group.finish()
                    group = track.append_group()
                group.write_frame(payload)
                if n == frames // 2:  # a new viewer arrives in the middle of the overload
                    late = await within(dial(url, fingerprint=certs.fingerprint))
                    sessions.append(late)
                    viewers.append(asyncio.ensure_future(watch(late, late_seen, last)))
                await asyncio.sleep(1 / QUIC_FPS)
            last.append(group.sequence)
            group.finish()
            await within(late_seen.first.wait())
            await within(asyncio.gather(*(w.last.wait() for w in [*seen, late_seen])))
            counts = [w.frames for w in seen]
            assert all(w.abandoned > 0 for w in seen), [w.abandoned for w in seen]
            assert jain(counts) >= 0.9, counts
            track.finish()
            await within(asyncio.gather(*viewers))
        finally:
            await asyncio.gather(*(s.aclose() for s in sessions), return_exceptions=True)


@pytest.mark.slow
async def test_a_group_the_viewer_stopped_is_not_waited_for(certs: Certs) -> None:
    """A group the viewer stops while most of it is still unsent does not hold up the track's end.

    The group (400 kB, under the scheduler's ``high_water``) is handed to
    aioquic whole, so the delivery waits for it to be sent; a 100 kB/s link
    keeps most of it unsent when the viewer stops it. The wait ends on the
    stop (aioquic would count the stopped stream's bytes as unsent until it
    forgets the stream).
    """
    app = MoQ()
    broadcast = Broadcast("live")
    track = broadcast.create_track("video", drop_queued=True)
    app.mux.publish("live", broadcast)
    async with native_server(app, str(certs.cert), str(certs.key)) as server, \
            UdpRelay(("127.0.0.1", server.address[1]), server=Link(rate=100_000)) as relay:
        session = await within(dial(f"moql://127.0.0.1:{relay.port}/", fingerprint=certs.fingerprint))
        try:
            reader = await within(session.subscribe("live", "video", wait_for_start=False))
            await eventually(lambda: track.subscribers == 1, "the subscription")
            group = track.append_group()
            group.write_frame(bytes(400_000))
            group.finish()
            received = await within(reader.next_group())
            assert received is not None and received.sequence == 0
            received.stop()
            track.finish()
            assert await within(reader.next_group()) is None  # the track ended
            await eventually(lambda: track.subscribers == 0, "the delivery to end")
        finally:
            await session.aclose()

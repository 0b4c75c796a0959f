"""Produce-once semantics: caching, eviction, and never passing off a cut group as whole."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest

from moqt_asgi import Broadcast, ErrorCode, StreamError, TrackProducer
from moqt_asgi.protocol.messages import TrackInfo


async def read(group_iter: object) -> list[bytes]:
    return [frame async for frame in group_iter]  # type: ignore[attr-defined]


async def test_evicted_unfinished_group_is_aborted_not_truncated() -> None:
    track = TrackProducer("t", cached_groups=2)
    slow = track.append_group()
    slow.write_frame(b"first")
    track.write_frame(b"next")
    assert not slow.done
    track.write_frame(b"newest")  # evicts `slow` from the cache while it is unfinished
    assert slow.error == ErrorCode.OLD
    with pytest.raises(StreamError) as aborted:
        await read(slow)
    assert aborted.value.code == ErrorCode.OLD


async def test_evicted_finished_group_stays_readable() -> None:
    track = TrackProducer("t", cached_groups=1)
    done = track.append_group()
    done.write_frame(b"a")
    done.finish()
    track.write_frame(b"b")
    assert await read(done) == [b"a"]


async def test_finish_abandons_unfinished_groups_and_keeps_finished_ones() -> None:
    track = TrackProducer("t", cached_groups=4)
    complete = track.append_group()
    complete.write_frame(b"whole")
    complete.finish()
    partial = track.append_group()
    partial.write_frame(b"half")
    track.finish()
    assert await read(complete) == [b"whole"]
    assert partial.error == ErrorCode.CANCEL


async def test_consumer_starts_at_latest_and_skips_what_it_missed() -> None:
    track = TrackProducer("t", cached_groups=2)
    for n in range(3):
        track.write_frame(bytes([n]))
    consumer = track.subscribe()
    first = await consumer.next_group()
    assert first is not None and first.sequence == 2
    for n in range(3, 8):
        track.write_frame(bytes([n]))
    following = await consumer.next_group()
    assert following is not None and following.sequence == 6  # the oldest still cached
    track.finish()
    rest = [g.sequence async for g in consumer]
    assert rest == [7]


async def test_group_size_limit() -> None:
    track = TrackProducer("t", max_group_bytes=10)
    group = track.append_group()
    group.write_frame(b"12345")
    with pytest.raises(Exception, match="exceed"):
        group.write_frame(b"123456")
    assert group.error == ErrorCode.TOO_LARGE
    await asyncio.sleep(0)


async def test_frames_keep_timestamps_given_or_wall_clock_in_the_track_timescale() -> None:
    track = TrackProducer("t")
    group = track.append_group()
    group.write_frame(b"given", 42)
    before = int(time.time() * 1000)
    group.write_frame(b"clock")
    after = int(time.time() * 1000)
    assert group.timestamps[0] == 42 and before <= group.timestamps[1] <= after
    with pytest.raises(ValueError):
        group.write_frame(b"negative", -1)
    video = TrackProducer("v", timescale=90_000)
    before = int(time.time() * 90_000)
    video.write_frame(b"frame")
    assert video.latest is not None and video.latest.timestamps[0] >= before
    with pytest.raises(ValueError):
        TrackProducer("bad", timescale=0)


async def test_fetch_returns_only_finished_cached_groups() -> None:
    track = TrackProducer("t", cached_groups=2)
    for n in range(3):
        track.write_frame(bytes([n]), 100 + n)
    writing = track.append_group()
    writing.write_frame(b"part", 7)
    assert track.fetch(0) is None and track.fetch(1) is None  # evicted
    assert track.fetch(2) == [(b"\x02", 102)]
    assert track.fetch(3) is None  # not finished
    writing.finish()
    assert track.fetch(3) == [(b"part", 7)]
    assert track.fetch(4) is None


async def test_broadcast_fetch_and_track_info() -> None:
    broadcast = Broadcast("b")
    track = broadcast.create_track("video", priority=3, cached_groups=4, max_latency_ms=250, timescale=90_000)
    track.write_frame(b"key", 9000)
    assert await broadcast.fetch_group("video", 0) == [(b"key", 9000)]
    assert await broadcast.fetch_group("video", 1) is None
    assert await broadcast.fetch_group("audio", 0) is None
    assert broadcast.track_info("video") == TrackInfo(priority=3, max_latency_ms=250, timescale=90_000)
    assert broadcast.track_info("audio") is None


async def test_consumer_start_group_cached_evicted_or_future() -> None:
    track = TrackProducer("t", cached_groups=3)
    for n in range(5):  # groups 2, 3, 4 stay cached
        track.write_frame(bytes([n]))
    cached = track.subscribe(3)
    assert [(await cached.next_group()).sequence for _ in range(2)] == [3, 4]  # type: ignore[union-attr]
    evicted = track.subscribe(0)
    first = await evicted.next_group()
    assert first is not None and first.sequence == 2
    future = track.subscribe(7)
    waiting = asyncio.ensure_future(future.next_group())
    for n in range(5, 7):
        track.write_frame(bytes([n]))
        await asyncio.sleep(0)
        assert not waiting.done()
    track.write_frame(b"\x07")
    group = await asyncio.wait_for(waiting, 1)
    assert group is not None and group.sequence == 7


async def test_consumer_skip_to_never_goes_back() -> None:
    track = TrackProducer("t", cached_groups=8)
    for n in range(6):
        track.write_frame(bytes([n]))
    consumer = track.subscribe(0)
    assert (await consumer.next_group()).sequence == 0  # type: ignore[union-attr]
    consumer.skip_to(4)
    assert (await consumer.next_group()).sequence == 4  # type: ignore[union-attr]
    consumer.skip_to(1)
    assert (await consumer.next_group()).sequence == 5  # type: ignore[union-attr]
    assert consumer.position == 5


async def test_group_age_for_max_latency() -> None:
    track = TrackProducer("t")
    track.write_frame(b"x")
    group = track.latest
    assert group is not None
    group.created -= 2
    assert group.age_ms() >= 2000


async def test_a_reader_that_gives_up_does_not_disturb_the_others() -> None:
    track = TrackProducer("t")
    group = track.append_group()
    readers = [asyncio.create_task(group.wait_frames(0)) for _ in range(3)]
    await asyncio.sleep(0)
    readers[1].cancel()
    await asyncio.sleep(0)
    group.write_frame(b"one")
    assert await asyncio.wait_for(readers[0], 1) == [b"one"]
    assert await asyncio.wait_for(readers[2], 1) == [b"one"]
    assert readers[1].cancelled()


async def test_readers_that_time_out_over_and_over_hold_nothing() -> None:
    track = TrackProducer("t")
    group = track.append_group()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(2000):  # a reader polling with a timeout on a group that gets no frames
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(group.wait_frames(0), 0.0001)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert held < 200_000  # about 90 kB of the machinery's own; 2000 abandoned waits kept add about 300 kB
    waiting = asyncio.create_task(group.wait_frames(0))
    await asyncio.sleep(0)
    group.finish()
    assert await asyncio.wait_for(waiting, 1) == []

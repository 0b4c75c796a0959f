"""Produce-once semantics: caching, eviction, and never passing off a cut group as whole."""

from __future__ import annotations

import asyncio

import pytest

from moqt_asgi import ErrorCode, StreamError, TrackProducer


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

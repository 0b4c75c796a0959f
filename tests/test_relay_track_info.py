"""TRACK through a relay (lite-05+): every subscriber hears the publisher's properties, relayed or not yet."""

from __future__ import annotations

import asyncio

import pytest

from moqt_asgi import Broadcast, TrackMux
from moqt_asgi.protocol.errors import ErrorCode, StreamError
from moqt_asgi.protocol.messages import TrackInfo
from moqt_asgi.protocol.versions import LITE_05_VERSION, LITE_06_VERSION, Version
from moqt_asgi.relay import Relay

from .helpers import eventually, within
from .test_relay_trust import peer, relay_app


@pytest.mark.parametrize("version", [LITE_05_VERSION, LITE_06_VERSION], ids=lambda v: v.name)
async def test_track_info_is_the_publishers_before_and_after_the_track_is_relayed(version: Version) -> None:
    relay = Relay()
    app = relay_app(relay)
    mux = TrackMux()
    broadcast = Broadcast("live")
    track = broadcast.create_track("video", priority=7, max_latency_ms=2500, timescale=90_000)
    mux.publish("live", broadcast)
    async with peer(app, version, mux), peer(app, version) as (viewer, _):
        await eventually(lambda: relay.mux.route("live") is not None, "the relay learned the broadcast")
        before = await within(viewer.track_info("live", "video"))  # nobody subscribed: the relay asks upstream
        assert (before.priority, before.max_latency_ms, before.timescale) == (7, 2500, 90_000)
        reader = await within(viewer.subscribe("live", "video", wait_for_start=False))
        await eventually(lambda: track.subscribers == 1, "the relay subscribed upstream")
        after = await within(viewer.track_info("live", "video"))
        assert after == before
        with pytest.raises(StreamError) as refused:  # a track the publisher does not serve
            await within(viewer.track_info("live", "audio"))
        assert refused.value.code == ErrorCode.NOT_FOUND
        reader.close()


async def test_subscribers_asking_at_once_cost_upstream_one_track_request() -> None:
    relay = Relay()
    app = relay_app(relay)
    mux = TrackMux()
    broadcast = Broadcast("live")
    broadcast.create_track("video", priority=3)
    asked: list[str] = []
    answer = broadcast.track_info

    async def counted(name: str) -> TrackInfo | None:
        asked.append(name)
        await asyncio.sleep(0.3)  # every request below reaches the relay while the first is being answered
        return answer(name)

    broadcast.track_info = counted  # type: ignore[assignment]
    mux.publish("live", broadcast)
    async with peer(app, LITE_05_VERSION, mux), peer(app, LITE_05_VERSION) as (viewer, _):
        await eventually(lambda: relay.mux.route("live") is not None, "the relay learned the broadcast")
        infos = await within(asyncio.gather(*(viewer.track_info("live", "video") for _ in range(8)),
                                            *(viewer.track_info("live", "nope") for _ in range(4)),
                                            return_exceptions=True))
        assert all(getattr(info, "priority", None) == 3 for info in infos[:8]), infos
        assert all(isinstance(refused, StreamError) and refused.code == ErrorCode.NOT_FOUND for refused in infos[8:])
        assert sorted(asked) == ["nope", "video"]  # one upstream TRACK per name, not one per request
        again = await within(viewer.track_info("live", "video"))  # answered: the next request asks afresh
        assert again.priority == 3 and asked.count("video") == 2


async def test_a_track_request_whose_publisher_leaves_is_answered() -> None:
    relay = Relay()
    app = relay_app(relay)
    mux = TrackMux()
    broadcast = Broadcast("live")
    broadcast.create_track("video")
    asked = asyncio.Event()

    async def never(name: str) -> TrackInfo | None:
        asked.set()
        await asyncio.Event().wait()  # the publisher never answers
        return None

    broadcast.track_info = never  # type: ignore[assignment]
    mux.publish("live", broadcast)
    async with peer(app, LITE_05_VERSION) as (viewer, _):
        async with peer(app, LITE_05_VERSION, mux):
            await eventually(lambda: relay.mux.route("live") is not None, "the relay learned the broadcast")
            requests = [asyncio.create_task(viewer.track_info("live", "video")) for _ in range(3)]
            await within(asyncio.shield(asyncio.ensure_future(asked.wait())))
        # the publisher's session is gone with the request in flight: every waiter is answered, none hangs
        answers = await within(asyncio.gather(*requests, return_exceptions=True))
        for answer in answers:
            assert isinstance(answer, TrackInfo) or (isinstance(answer, StreamError)
                                                     and answer.code == ErrorCode.NOT_FOUND), answer

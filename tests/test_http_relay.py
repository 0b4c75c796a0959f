"""``GET /fetch`` on a relay: the broadcast is a peer's, served from the relay's copy of the track."""

from __future__ import annotations

from moqt_asgi import Broadcast, MoQ, TrackMux
from moqt_asgi.producer import TrackProducer
from moqt_asgi.relay import Relay
from moqt_asgi.testing import connect

from .helpers import eventually, within
from .test_http_endpoints import call


def relay_app() -> tuple[Relay, MoQ]:
    relay = Relay()
    app = MoQ(mux=relay.mux)
    app.add_route("/{path:path}", relay)
    return relay, app


def publisher() -> tuple[TrackMux, TrackProducer]:
    mux = TrackMux()
    broadcast = Broadcast("live/clock")
    track = broadcast.create_track("seconds", cached_groups=4)
    for text in ("one", "two"):
        group = track.append_group()
        group.write_frame(text.encode())
        group.write_frame(b"+" + text.encode())
        group.finish()
    track.append_group().write_frame(b"unfinished")
    mux.publish("live/clock", broadcast)
    return mux, track


async def test_fetch_without_a_group_serves_the_relays_newest_finished_group() -> None:
    relay, app = relay_app()
    mux, track = publisher()
    async with connect(app, mux=mux):
        await eventually(lambda: relay.mux.route("live/clock") is not None, "the relay learned the broadcast")
        # nothing relayed yet: the relay holds no copy of the track, so there is no latest group to name
        status, _, _ = await call(app, "/fetch/live/clock/seconds")
        assert status == 404
        async with connect(app) as viewer:
            reader = await within(viewer.subscribe("live/clock", "seconds"))
            group = await within(reader.next_group())
            assert group is not None and group.sequence == 2  # a subscription starts at the live group
            # the relay's copy holds group 2 only, still being written: nothing finished to serve yet
            status, _, _ = await call(app, "/fetch/live/clock/seconds")
            assert status == 404
            assert await within(group.read_frame()) == b"unfinished"
            latest = track.latest
            assert latest is not None
            latest.write_frame(b"+done")
            latest.finish()
            track.append_group().write_frame(b"next")
            group = await within(reader.next_group())
            assert group is not None and group.sequence == 3
            # the relay's copy now has group 2 finished: the newest finished group, with no ?group
            status, headers, body = await call(app, "/fetch/live/clock/seconds")
            assert status == 200, body
            assert headers["moq-group"] == "2"
            assert body == b"unfinished+done"
            # an older group is fetched from the publisher through the relay
            status, headers, body = await call(app, "/fetch/live/clock/seconds", query="group=0")
            assert (status, body) == (200, b"one+one")
            reader.close()


async def test_a_relayed_track_keeps_what_its_publisher_said_of_it() -> None:
    """TRACK through the relay: priority, timescale and "the newest group only" come from the publisher."""
    relay, app = relay_app()
    mux = TrackMux()
    broadcast = Broadcast("live/scores")
    broadcast.create_track("latest", priority=9, latest_only=True).append_group().write_frame(b"3-1")
    mux.publish("live/scores", broadcast)
    async with connect(app, mux=mux, version="moq-lite-05"):
        await eventually(lambda: relay.mux.route("live/scores") is not None, "the relay learned the broadcast")
        async with connect(app, version="moq-lite-05") as viewer:
            reader = await within(viewer.subscribe("live/scores", "latest"))
            assert await within(reader.next_group()) is not None
            info = await within(viewer.track_info("live/scores", "latest"))
            assert info.priority == 9
            assert info.latest_only
            reader.close()

from __future__ import annotations

from moqt_asgi import Broadcast, MoQ

from .helpers import memory_sessions


async def test_subscribe_over_memory() -> None:
    app = MoQ()
    broadcast = Broadcast("demo")
    track = broadcast.create_track("t")
    app.mux.publish("demo", broadcast)
    async with memory_sessions(app) as (client, _server, _, _):
        announced = await client.announced("")
        assert "demo" in announced.active
        reader = await client.subscribe("demo", "t")
        track.write_frame(b"hello")
        group = await reader.next_group()
        assert group is not None
        assert await group.read_all() == [b"hello"]

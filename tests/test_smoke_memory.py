from __future__ import annotations

from moqt_asgi import Broadcast, MoQ
from moqt_asgi.testing.pytest_plugin import MoQConnect


async def test_subscribe_over_memory(moq_connect: MoQConnect) -> None:
    app = MoQ()
    broadcast = Broadcast("demo")
    track = broadcast.create_track("t")
    app.mux.publish("demo", broadcast)
    client = await moq_connect(app, version="moq-lite-02")
    announced = await client.announced("")
    assert "demo" in announced.active
    reader = await client.subscribe("demo", "t")
    track.write_frame(b"hello")
    group = await reader.next_group()
    assert group is not None
    assert await group.read_all() == [b"hello"]

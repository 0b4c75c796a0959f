"""Many sessions on one relay app: 500 subscribers of one broadcast, over the in-memory transport.

Every subscriber receives the publisher's frames through the relay's single
upstream subscription; once they have all left, the app holds no session
and no task for them. The memory each session costs while subscribed is
measured with tracemalloc and must stay under :data:`MAX_BYTES_PER_SESSION`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc
import weakref

import pytest

from benchmarks.soak import MEMORY_VERSIONS, Peer, memory_peer
from moqt_asgi import Broadcast, MoQ, Session, TrackMux, TrackReader
from moqt_asgi.relay import Relay

from .helpers import eventually

pytestmark = pytest.mark.slow

SESSIONS = 500
BATCH = 50
LOAD_WAIT = 60.0
"""Bound on each wait of this test: 500 sessions come and go on a machine that may be shared."""
MAX_BYTES_PER_SESSION = 160 * 1024
"""The bound on Python memory per subscribed session, both ends counted (they share the process).

Measured at about 100 KiB on CPython 3.11 (70 KiB before subscribing): the client and server
Session objects, their task groups, accept loops and stream buffers, the announce and subscribe
streams and the relay's fan-out to it. Most of it is asyncio tasks and futures. The bound
leaves room for the engine to grow a little and still catches a per-session leak of any
sizeable buffer.
"""


def relay_app() -> tuple[MoQ, Relay]:
    relay = Relay()
    app = MoQ(mux=relay.mux)
    app.add_route("/{path:path}", relay)
    return app, relay


def live_tasks() -> int:
    current = asyncio.current_task()
    return sum(1 for task in asyncio.all_tasks() if not task.done() and task is not current)


def traced_bytes() -> int:
    """Python memory allocated since tracing started and still alive, log records (kept by pytest) excepted."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, logging.__file__)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def test_500_sessions_share_one_broadcast_and_leave_nothing_behind(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "moqt_asgi")  # a thousand "session accepted" lines are not the point
    app, relay = relay_app()
    server_sessions: weakref.WeakSet[Session] = weakref.WeakSet()

    def live_server_sessions() -> int:
        return sum(1 for session in list(server_sessions) if not session.closed)

    publisher_mux = TrackMux()
    broadcast = Broadcast("shared")
    track = broadcast.create_track("video")
    publisher_mux.publish("shared", broadcast)
    publisher = await memory_peer(app, mux=publisher_mux, path="/pub", on_session=server_sessions)
    await eventually(lambda: relay.mux.route("shared") is not None, "the relay to learn the broadcast",
                     timeout=LOAD_WAIT, interval=0.02)
    track.write_frame(b"frame 0")  # a live broadcast: subscribers start at its latest group
    baseline_tasks = live_tasks()

    subscribers: list[Peer] = []
    readers: list[TrackReader] = []

    async def join(index: int) -> None:
        peer = await memory_peer(app, path=f"/sub/{index}", version=MEMORY_VERSIONS[index % len(MEMORY_VERSIONS)],
                                 on_session=server_sessions)
        subscribers.append(peer)
        readers.append(await peer.session.subscribe("shared", "video"))

    async def leave() -> None:
        for reader in readers:
            reader.close()
        for start in range(0, len(subscribers), BATCH):
            await asyncio.gather(*(peer.close() for peer in subscribers[start:start + BATCH]))
        readers.clear()
        subscribers.clear()
        await eventually(lambda: live_server_sessions() == 1, "the subscribers' sessions to close on the server",
                         timeout=LOAD_WAIT, interval=0.02)
        await eventually(lambda: live_tasks() <= baseline_tasks, "the subscribers' tasks to finish",
                         timeout=LOAD_WAIT, interval=0.02)

    async with asyncio.timeout(LOAD_WAIT):  # a warm-up, so what is measured is the sessions and not first-use caches
        await asyncio.gather(*(join(i) for i in range(BATCH)))
        await leave()

    tracemalloc.start()
    try:
        before = traced_bytes()
        async with asyncio.timeout(LOAD_WAIT):
            for start in range(0, SESSIONS, BATCH):
                await asyncio.gather(*(join(i) for i in range(start, start + BATCH)))
            assert live_server_sessions() == SESSIONS + 1

            # one frame per group: every subscriber gets the newest
            for n in range(1, 3):
                track.write_frame(b"frame %d" % n)
                await asyncio.sleep(0)

            async def last_frame(reader: TrackReader) -> bytes | None:
                frame = None
                while frame != b"frame 2":
                    group = await reader.next_group()
                    assert group is not None, "the track ended early"
                    frame = await group.read_frame()
                return frame

            frames = await asyncio.gather(*(last_frame(reader) for reader in readers))
        assert frames == [b"frame 2"] * SESSIONS
        subscribed = traced_bytes()
        per_session = (subscribed - before) / SESSIONS
        print(f"\n{SESSIONS} subscribed sessions: {per_session / 1024:.1f} KiB each (tracemalloc)")
        assert per_session < MAX_BYTES_PER_SESSION, f"{per_session / 1024:.1f} KiB per session"

        async with asyncio.timeout(LOAD_WAIT):
            await leave()
        assert live_tasks() == baseline_tasks
        del frames
        after = traced_bytes()
        print(f"after they left: {(after - before) / 1024:.0f} KiB still traced")
        assert after - before < (subscribed - before) / 10, "the sessions' memory was not released"
        assert len(server_sessions) == 1, "server Session objects outlived their sessions"
    finally:
        tracemalloc.stop()
        await publisher.close()
    assert live_server_sessions() == 0
    assert relay.mux.route("shared") is None

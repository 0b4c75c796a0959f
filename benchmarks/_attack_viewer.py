"""A live track and a viewer of it through a relay, in a process of their own, for :mod:`benchmarks.attacks`.

    python -m benchmarks._attack_viewer URL FINGERPRINT

One session publishes broadcast ``live``, track ``video`` (groups of
:data:`FRAMES_PER_GROUP` frames of :data:`FRAME_SIZE` bytes, :data:`RATE`
frames a second); a second session subscribes to it through the relay at
``URL`` and counts the frames it reads. ``frames N`` goes to stdout every
:data:`REPORT` seconds; the process ends when stdin closes. Kept out of the
attacking process, so that what the viewer sees measures the server, not
the attacker's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from moqt_asgi import Broadcast, Session, TrackMux, dial

FRAME_SIZE = 16 * 1024
FRAMES_PER_GROUP = 25
RATE = 50
REPORT = 0.25


async def feed(broadcast: Broadcast) -> None:
    track = broadcast.create_track("video")
    payload = b"v" * FRAME_SIZE
    while True:
        group = track.append_group()
        for _ in range(FRAMES_PER_GROUP):
            group.write_frame(payload)
            await asyncio.sleep(1 / RATE)
        group.finish()


async def watch(viewer: Session, counted: list[int]) -> None:
    announcements = await viewer.announced("")
    async with asyncio.timeout(15):
        while "live" not in announcements.active:
            await announcements.__anext__()
    announcements.close()
    subscription = await viewer.subscribe("live", "video")
    async for _ in subscription.frames():
        counted[0] += 1


async def main(url: str, fingerprint: str) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    broadcast = Broadcast("live")
    mux = TrackMux()
    mux.publish("live", broadcast)
    counted = [0]
    async with await dial(url, fingerprint=fingerprint, mux=mux), await dial(url, fingerprint=fingerprint) as viewer:
        tasks = [asyncio.ensure_future(feed(broadcast)), asyncio.ensure_future(watch(viewer, counted))]
        closed = asyncio.ensure_future(stdin.read())
        try:
            while not closed.done():
                for task in tasks:
                    error = task.exception() if task.done() else None
                    if error is not None:
                        raise error
                print(f"frames {counted[0]}", flush=True)
                await asyncio.wait({closed}, timeout=REPORT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(main(sys.argv[1], sys.argv[2]))

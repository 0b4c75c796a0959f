"""A clock: broadcast ``clock``, track ``seconds``, one group per second.

Each group holds one frame, the current UTC time in ISO-8601. Every session
is accepted, whatever its path. ``MOQ_ALLOW_ORIGINS`` (comma-separated)
restricts browser origins; unset allows any.

    python -m moqt_asgi cert --out certs
    python -m moqt_asgi serve examples.clock:moq --bind 127.0.0.1:4433 \\
        --certfile certs/cert.pem --keyfile certs/key.pem
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os

from moqt_asgi import Broadcast, MoQ

_allow = os.environ.get("MOQ_ALLOW_ORIGINS")
moq = MoQ(allow_origins=[o.strip() for o in _allow.split(",") if o.strip()] if _allow else None)

clock = Broadcast("clock")
seconds = clock.create_track("seconds")
moq.mux.publish("clock", clock)

_ticker: asyncio.Task[None] | None = None


async def tick(interval: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    while True:
        now = datetime.datetime.now(datetime.UTC)
        seconds.write_frame(now.isoformat(timespec="milliseconds").encode())
        await asyncio.sleep(interval - (loop.time() % interval))


@moq.on_event("startup")
async def start_clock() -> None:
    global _ticker
    _ticker = asyncio.get_running_loop().create_task(tick())


@moq.on_event("shutdown")
async def stop_clock() -> None:
    if _ticker is not None:
        _ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _ticker

"""The moq-rs processes of :mod:`benchmarks.fanout`: the publisher, the load generators and the moq-rs relay.

Every peer of the fan-out benchmark is a moq-rs endpoint (Rust QUIC, from
the ``moq-rs`` package), so that what is measured is the relay, not the
load generator. Each runs in a process of its own::

    python -m benchmarks._fanout_peer publish URL FINGERPRINT --profile frames
    python -m benchmarks._fanout_peer subscribe URL FINGERPRINT --count 50
    python -m benchmarks._fanout_peer relay --certfile C --keyfile K

and talks to :mod:`benchmarks.fanout` in lines: it prints ``ready ...`` once
connected, reads ``window START END GRACE`` (``time.monotonic_ns()`` values,
a clock every process of the machine shares on Linux) from stdin, and prints
one JSON line with what it saw once ``END + GRACE`` has passed. A load
generator may also be told ``sent N`` after the window (the frames the
publisher sent inside it): it then reports as soon as every one of its
subscribers has received those N, without waiting out the grace period.

Every frame starts with :data:`HEADER`: the publisher's ``monotonic_ns()``
just before it wrote the frame, the group sequence and the frame's index in
the group. A subscriber stamps each frame when ``read_frame`` hands it over,
so the difference is the one-way latency from the publishing application to
the subscribing one. Only frames sent inside the window count: the catch-up
frames a new subscriber gets from the relay's cache are older than the
window and are ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import moq

logger = logging.getLogger("moqt_asgi.fanout")

HEADER = struct.Struct(">QII")
"""Send time (``monotonic_ns``), group sequence, frame index in the group."""
BROADCAST = "fanout/live"
TRACK = "video"
CONNECT_TIMEOUT = 60.0
"""Seconds one subscriber has to connect and subscribe once its turn comes."""
READY_TIMEOUT = 150.0
"""Seconds all of a load generator's subscribers have; the late ones are reported as never subscribed."""
LOAD_CLIENTS = ("moq-rs", "qh3")
"""The subscribers' implementations: moq-rs (independent, the default) or moqt-asgi's client on qh3."""
COMPLETE_POLL = 0.05
"""Seconds between a load generator's checks, after the window, of whether every subscriber has every frame."""


@dataclass(frozen=True)
class Profile:
    """A stream: ``fps`` frames a second, a group every ``group_frames`` frames, sizes by position in the group."""

    name: str
    fps: int
    group_frames: int
    first_size: int
    """Bytes of a group's first frame (a keyframe)."""
    size: int
    """Bytes of every other frame."""

    def frame_size(self, index: int) -> int:
        return self.first_size if index == 0 else self.size

    @property
    def bytes_per_second(self) -> float:
        return (self.first_size + (self.group_frames - 1) * self.size) * self.fps / self.group_frames

    def describe(self) -> str:
        if self.first_size == self.size:
            return f"{self.fps} fps x {self.size} B, a group every {self.group_frames / self.fps:g} s"
        return (f"{self.fps} fps, a group every {self.group_frames / self.fps:g} s: a {self.first_size // 1000} kB "
                f"keyframe then {self.size} B frames ({self.bytes_per_second * 8 / 1e6:.2f} Mbit/s)")


PROFILES = {
    "frames": Profile("frames", fps=30, group_frames=30, first_size=1200, size=1200),
    "video": Profile("video", fps=30, group_frames=30, first_size=30_000, size=3_276),
}
"""``frames``: 30 frames/s of 1200 B; ``video``: about 1 Mbit/s, a 30 kB keyframe then 29 smaller frames a second."""


def client(url: str, fingerprint: str) -> moq.Client:
    """A moq-rs client of ``url`` pinned to ``fingerprint``: no reconnects, no WebSocket fallback."""
    return moq.Client(url, tls_fingerprints=[fingerprint], reconnect=False, websocket_enabled=False)


async def read_line() -> str:
    """The next line on stdin ('' at its end), read without blocking the event loop."""
    return await asyncio.to_thread(sys.stdin.readline)


def say(*words: object) -> None:
    print(*words, flush=True)


async def read_window() -> tuple[int, int, int]:
    """Wait for ``window START END GRACE`` on stdin."""
    while True:
        line = await read_line()
        if not line:
            raise SystemExit("stdin closed before the window was given")
        parts = line.split()
        if parts and parts[0] == "window":
            start, end, grace = (int(part) for part in parts[1:4])
            return start, end, grace


async def read_sent() -> int | None:
    """Wait for ``sent N`` on stdin: the frames the publisher sent inside the window (None if stdin closes first)."""
    while line := await read_line():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "sent" and parts[1].isdigit():
            return int(parts[1])
    return None


async def sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


# -- the publisher
async def publish(args: argparse.Namespace) -> None:
    """Publish the profile's stream from the moment it is connected until stdin closes.

    Frames are written on a fixed schedule (frame ``i`` at ``start + i / fps``),
    so a late wake-up never shifts the ones after it. After the window it
    prints how many frames it sent inside it, and how late against that
    schedule the latest of them was written (its own scheduling, not the
    relay's: a large figure means the load-generator cores were saturated).
    """
    profile = PROFILES[args.profile]
    sent: list[tuple[int, int]] = []
    """(when each frame was due, when it was written)."""
    async with client(args.url, args.fingerprint) as session:
        broadcast = session.create_broadcast(args.broadcast)
        track = broadcast.publish_track(args.track)
        broadcast.announce()
        say("ready")
        window: asyncio.Task[tuple[int, int, int]] = asyncio.ensure_future(read_window())
        padding = bytes(max(profile.first_size, profile.size))
        start = time.monotonic_ns()
        period = 1_000_000_000 // profile.fps
        index = 0
        group: Any = None
        reported = False
        while True:
            await sleep_until(start + index * period)
            position = index % profile.group_frames
            if position == 0:
                if group is not None:
                    group.finish()
                group = track.append_group()
            size = profile.frame_size(position)
            now = time.monotonic_ns()
            group.write_frame(HEADER.pack(now, index // profile.group_frames, position) + padding[:size - HEADER.size])
            sent.append((start + index * period, now))
            index += 1
            if window.done() and not reported:
                begin, end, _grace = window.result()
                if now >= end:
                    counted = [(due, stamp) for due, stamp in sent if begin <= stamp < end]
                    late = max((stamp - due for due, stamp in counted), default=0) / 1e6
                    say(json.dumps({"sent": len(counted), "late_ms": late}))
                    reported = True
                    sent.clear()


# -- the load generator
@dataclass
class Subscriber:
    """What one subscriber saw inside the window."""

    seen: set[tuple[int, int]] = field(default_factory=set)
    latencies_us: list[int] = field(default_factory=list)
    frames: int = 0
    """Every frame read, in the window or not."""
    error: str | None = None

    def record(self, payload: bytes, begin: int, end: int, now: int) -> None:
        self.frames += 1
        sent, group, index = HEADER.unpack_from(payload)
        if begin <= sent < end and (group, index) not in self.seen:
            self.seen.add((group, index))
            self.latencies_us.append((now - sent) // 1000)


def _hold(*_: object) -> None:
    """Keeps its arguments referenced until an exit stack calls it."""


class LoadGenerator:
    """``count`` moq-rs subscribers of one track, each its own QUIC connection."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.subscribers = [Subscriber() for _ in range(args.count)]
        self.window = (0, 0)
        """Send times counted: ``[begin, end)``; ``(0, 0)`` counts nothing until the window is known."""
        self.connected = 0
        self.failed = 0

    async def run(self) -> None:
        gate = asyncio.Semaphore(self.args.connect_batch)
        ready = [asyncio.Event() for _ in self.subscribers]
        tasks = [asyncio.ensure_future(self.subscribe(subscriber, gate, event))
                 for subscriber, event in zip(self.subscribers, ready, strict=True)]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.gather(*(event.wait() for event in ready))
        say("ready", self.connected, len(self.subscribers) - self.connected)
        begin, end, grace = await read_window()
        self.window = (begin, end)
        expected: asyncio.Task[int | None] = asyncio.ensure_future(read_sent())
        try:
            await self.wait_for_frames(expected, end + grace)
        finally:
            expected.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        say(json.dumps({"subscribers": [self.report(s) for s in self.subscribers]}))

    def report(self, subscriber: Subscriber) -> dict[str, Any]:
        """What the final JSON line says of one subscriber."""
        return {"received": len(subscriber.seen), "frames": subscriber.frames,
                "latencies_us": subscriber.latencies_us, "error": subscriber.error}

    async def wait_for_frames(self, expected: asyncio.Future[int | None], deadline_ns: int) -> None:
        """Until ``deadline_ns`` (the window's end plus the grace), or sooner once every subscriber has every frame.

        ``expected`` gives the number of frames the publisher sent inside the
        window once it is known (``sent N`` on stdin); a subscriber cannot
        count more, so once each has that many nothing is left to wait for.
        """
        while (remaining := (deadline_ns - time.monotonic_ns()) / 1e9) > 0:
            if expected.done() and (count := expected.result()) is not None and all(
                    len(subscriber.seen) >= count for subscriber in self.subscribers):
                return
            await asyncio.sleep(min(remaining, COMPLETE_POLL))

    async def subscribe(self, subscriber: Subscriber, gate: asyncio.Semaphore, ready: asyncio.Event) -> None:
        groups: set[asyncio.Task[None]] = set()
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with gate, asyncio.timeout(CONNECT_TIMEOUT):
                    next_group = await self.open_track(stack)
                self.connected += 1
                ready.set()
                try:
                    while (group := await next_group()) is not None:
                        task = asyncio.ensure_future(self.read_group(subscriber, group))
                        groups.add(task)
                        task.add_done_callback(groups.discard)
                    subscriber.error = subscriber.error or "track ended"
                finally:
                    for task in groups:
                        task.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            subscriber.error = subscriber.error or f"{type(exc).__name__}: {exc}"
            if not ready.is_set():
                self.failed += 1
                ready.set()

    async def open_track(self, stack: contextlib.AsyncExitStack) -> Callable[[], Awaitable[Any]]:
        """Connect and subscribe (closed with ``stack``); what returns the track's next group, or ``None``."""
        session = await stack.enter_async_context(client(self.args.url, self.args.fingerprint))
        broadcast = await session.announced_broadcast(self.args.broadcast)
        track = await broadcast.subscribe_track(self.args.track)
        stack.callback(_hold, broadcast, track)  # both live as long as the subscriber does
        return track.recv_group  # type: ignore[no-any-return]

    @staticmethod
    def payload(frame: Any) -> bytes:
        return frame.payload  # type: ignore[no-any-return]

    async def read_group(self, subscriber: Subscriber, group: Any) -> None:
        with contextlib.suppress(Exception):
            while (frame := await group.read_frame()) is not None:
                now = time.monotonic_ns()
                begin, end = self.window
                subscriber.record(self.payload(frame), begin, end, now)


class Qh3LoadGenerator(LoadGenerator):
    """``count`` moqt-asgi subscribers over qh3 (``--client qh3``): a load generator about 1.6 times cheaper per frame.

    Not an independent implementation: use it only to measure past what the
    moq-rs load generators can drive on the machine, and say so with the figures.
    """

    async def open_track(self, stack: contextlib.AsyncExitStack) -> Callable[[], Awaitable[Any]]:
        from moqt_asgi import QuicSettings, dial  # only this mode needs the package's client

        session = await dial(self.args.url, fingerprint=self.args.fingerprint, quic=QuicSettings(backend="qh3"),
                             websocket_fallback=False)
        stack.callback(session.close)
        track = await session.subscribe(self.args.broadcast, self.args.track)
        return track.next_group

    @staticmethod
    def payload(frame: Any) -> bytes:
        return frame  # type: ignore[no-any-return]  # read_frame hands over the payload itself


async def subscribe(args: argparse.Namespace) -> None:
    await (Qh3LoadGenerator if args.client == "qh3" else LoadGenerator)(args).run()


# -- the moq-rs relay
async def relay(args: argparse.Namespace) -> None:
    """moq-rs as a relay: a ``moq.Server`` whose sessions publish into and consume from one ``OriginProducer``."""
    origin = moq.OriginProducer()
    async with moq.Server(args.bind, tls_cert=[args.certfile], tls_key=[args.keyfile], publish=origin,
                          subscribe=origin) as server:
        say(f"listening {server.local_addr}")
        await server.serve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._fanout_peer", description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in ("publish", "subscribe"):
        mode = modes.add_parser(name)
        mode.add_argument("url")
        mode.add_argument("fingerprint")
        mode.add_argument("--broadcast", default=BROADCAST)
        mode.add_argument("--track", default=TRACK)
    modes.choices["publish"].add_argument("--profile", choices=list(PROFILES), default="frames")
    modes.choices["subscribe"].add_argument("--count", type=int, default=1)
    modes.choices["subscribe"].add_argument("--connect-batch", type=int, default=8,
                                            help="connections being set up at once")
    modes.choices["subscribe"].add_argument("--client", choices=LOAD_CLIENTS, default="moq-rs",
                                            help="the subscribers' implementation (qh3: moqt-asgi's client on qh3)")
    relay_mode = modes.add_parser("relay")
    relay_mode.add_argument("--bind", default="127.0.0.1:0")
    relay_mode.add_argument("--certfile", required=True)
    relay_mode.add_argument("--keyfile", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.mode}[{os.getpid()}] %(message)s")
    run = {"publish": publish, "subscribe": subscribe, "relay": relay}[args.mode]
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()

"""Attacks through MoQ sessions, for :mod:`benchmarks.attacks`: peers that ask and never read.

Every attacker is one of our client sessions (moq-lite-06 over native QUIC)
made into a :class:`NonReader`: it writes raw requests on bidi streams and
reads neither their replies nor the group streams the server opens toward
it. Our client's QUIC connection grants credit only for what the
application read, so such a peer withholds flow-control credit exactly as a
hostile one would: the server can put one stream window per stream (and
one connection window in all) into it, and must hold or drop the rest.

The publishers the attacks need are sessions of ours too, connected to the
served relay before the baseline is taken (the live track that unread
subscriptions ask for, and a viewer of it, run in a process of their own:
:mod:`benchmarks._attack_viewer`); a FETCH needs a server-side cached
group, so that attack serves :data:`FETCH_APP` instead of the relay. Some
attacks reach into the engine on purpose (a session's ``_serve_uni``, a
group writer's ``_send``): that is how a hostile peer's bytes are written
with our own client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from moqt_asgi import Broadcast, Session, TrackMux, TrackWriter, dial
from moqt_asgi.protocol.lite_wire import LiteBidi
from moqt_asgi.protocol.messages import AnnouncePlease, Fetch, Subscribe
from moqt_asgi.protocol.versions import LITE_06_VERSION
from moqt_asgi.protocol.wire import encode_varint
from moqt_asgi.transport.base import BidiStream, ReceiveStream

from . import _attack_viewer as viewer
from ._attack_common import MIB, Sent, Target, size
from ._attack_server import REPOSITORY

Prepared = Callable[[Sent], Awaitable[None]]
"""Runs the attack once everything it needs is connected (the baseline is taken just before), recording what it
sends in the :class:`Sent` it is given as it goes (so an interrupted attack still says what it did)."""

HOLD = 2.0
"""Seconds the attacker stays connected, holding what it made the server keep, before the memory is read."""
PUBLISH_TIMEOUT = 60.0
"""Seconds a publisher has to write what the relay asked it for."""
VIEWER_WINDOW = 2.0
"""Seconds over which a legitimate viewer's frame rate is counted, before and during an attack."""

FETCH_FRAMES = 4
FETCH_FRAME_SIZE = MIB
FETCH_APP = f'''"""Serves broadcast ``vod``; its track ``video`` caches one group of {FETCH_FRAMES} x {FETCH_FRAME_SIZE} bytes."""

from moqt_asgi import Broadcast, MoQ

broadcast = Broadcast("vod")
track = broadcast.create_track("video")
group = track.append_group()
for index in range({FETCH_FRAMES}):
    group.write_frame(bytes([index]) * {FETCH_FRAME_SIZE})
group.finish()
moq = MoQ()
moq.mux.publish("vod", broadcast)
'''
"""An app module (written to a temporary directory and served) with the group the FETCH attack asks for."""


async def connect(target: Target, stack: contextlib.AsyncExitStack, mux: TrackMux | None = None) -> Session:
    """A lite-06 session to the served app, closed with ``stack``."""
    session = await asyncio.wait_for(dial(target.url, fingerprint=target.fingerprint, mux=mux,
                                          versions=(LITE_06_VERSION,)), 15)
    stack.push_async_callback(_close, session)
    return session


async def _close(session: Session) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(session.aclose(), 5)


class NonReader:
    """A session that never reads: not the replies to its requests, not the streams the server opens."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.parked: list[ReceiveStream] = []
        self.requests: list[BidiStream] = []
        self.written = 0
        self._ids = itertools.count(1 << 20)

        async def park(stream: ReceiveStream) -> None:
            self.parked.append(stream)  # kept open and never read: its bytes hold the server's credit

        session._serve_uni = park  # type: ignore[method-assign]

    @property
    def codec(self) -> Any:
        return self.session.codec

    async def request(self, kind: int, body: bytes) -> BidiStream:
        stream = await self.session.connection.open_bi()
        data = encode_varint(kind) + body
        stream.write(data)
        self.written += len(data)
        self.requests.append(stream)
        return stream

    async def subscribe(self, broadcast: str, track: str) -> BidiStream:
        request = Subscribe(next(self._ids), broadcast, track, 0)
        return await self.request(LiteBidi.SUBSCRIBE, self.codec.encode_subscribe(request))

    def held(self) -> int:
        """Bytes the server sent us that we hold unread (what its credit let it send)."""
        quic: Any = getattr(self.session.connection, "protocol", None)
        quic = getattr(quic, "_quic", None)
        held = getattr(quic, "held", None)
        return int(held()) if callable(held) else 0


def refused(streams: list[BidiStream]) -> int:
    """How many request streams the server reset (refused), without reading any of them."""
    count = 0
    for stream in streams:
        buffer: Any = getattr(stream, "_buffer", None)
        if getattr(stream, "_stop_code", None) is not None or getattr(buffer, "_error", None) is not None:
            count += 1
    return count


async def non_readers(target: Target, stack: contextlib.AsyncExitStack, count: int) -> list[NonReader]:
    return [NonReader(await connect(target, stack)) for _ in range(count)]


async def wait_announced(session: Session, path: str, timeout: float = 15.0) -> None:
    """Until the served relay announces ``path`` to ``session``."""
    announcements = await session.announced("")
    try:
        async with asyncio.timeout(timeout):
            while path not in announcements.active:
                await announcements.__anext__()
    finally:
        announcements.close()


def _summary(sent: Sent, readers: list[NonReader], what: str) -> None:
    sent.bytes = sum(reader.written for reader in readers)
    parked = sum(len(reader.parked) for reader in readers)
    sent.streams = sum(len(reader.requests) for reader in readers) + parked
    sent.extra["parked"] = parked
    held = sum(reader.held() for reader in readers)
    sent.summary = f"{what}; the attacker holds {size(held)} unread"


# -- C2: FETCH of a cached group, never read
@contextlib.asynccontextmanager
async def fetch_flood(target: Target, *, connections: int, per_connection: int) -> AsyncIterator[Prepared]:
    async with contextlib.AsyncExitStack() as stack:
        readers = await non_readers(target, stack, connections)

        async def run(sent: Sent) -> None:
            sent.unit, sent.connections = "FETCHes", connections
            request = readers[0].codec.encode_fetch(Fetch("vod", "video", 0, 0))
            for reader in readers:
                for _ in range(per_connection):
                    await reader.request(LiteBidi.FETCH, request)
                    sent.requests += 1
            await asyncio.sleep(HOLD)
            streams = [stream for reader in readers for stream in reader.requests]
            group = FETCH_FRAMES * FETCH_FRAME_SIZE
            _summary(sent, readers, f"{connections} conns x {per_connection} FETCHes of one cached "
                                           f"{size(group)} group ({refused(streams)} refused)")

        yield run


# -- H1/M4: announce streams never read, long paths announced, one path toggled
@contextlib.asynccontextmanager
async def announce_flood(target: Target, *, sessions: int, streams: int, paths: int, path_length: int,
                         toggles: int) -> AsyncIterator[Prepared]:
    async with contextlib.AsyncExitStack() as stack:
        publisher, toggler = TrackMux(), TrackMux()
        await connect(target, stack, publisher)
        await connect(target, stack, toggler)
        readers = await non_readers(target, stack, sessions)

        async def run(sent: Sent) -> None:
            sent.unit, sent.connections = "announce streams", sessions + 2
            sent.extra.update(paths=paths + 1, path_length=path_length, sessions=sessions, streams=streams)
            request = readers[0].codec.encode_announce_please(AnnouncePlease(""))
            for reader in readers:
                for _ in range(streams):
                    await reader.request(LiteBidi.ANNOUNCE, request)
                    sent.requests += 1
            await asyncio.sleep(0.3)
            for index in range(paths):
                name = f"{index:05d}/"
                publisher.publish(name + "x" * (path_length - len(name)), Broadcast())
                if index % 20 == 0:
                    await asyncio.sleep(0.001)
            await target.idle()
            toggled = "toggle/" + "y" * (path_length - 7)
            for _ in range(toggles):
                announcement = toggler.publish(toggled, Broadcast())
                await asyncio.sleep(0.002)
                announcement.end()
                await asyncio.sleep(0.002)
            await target.idle()
            await asyncio.sleep(HOLD)
            opened = [stream for reader in readers for stream in reader.requests]
            _summary(sent, readers, f"{sessions} sessions x {streams} announce streams never read "
                                           f"({refused(opened)} refused), {paths} paths of {path_length} B "
                                           f"announced, one toggled {toggles} times")

        yield run


# -- H4: invented track names through the relay
@contextlib.asynccontextmanager
async def invented_names(target: Target, *, names: int, group_size: int, groups: int = 2) -> AsyncIterator[Prepared]:
    served: list[str] = []
    finished: list[str] = []
    ended: list[str] = []
    opening = asyncio.Lock()

    async def any_name(track: TrackWriter) -> None:
        served.append(track.track)
        try:
            for _ in range(groups):
                # One group open at a time: on native QUIC two opens that overlap while the connection is
                # congested can be given the same stream id (the id is only taken by the first write).
                async with opening:
                    group = await track.open_group()
                await group.write_frame(b"\0" * group_size)
                await group.close()
            finished.append(track.track)
            await asyncio.Event().wait()  # the track stays open: the relay keeps its cache
        finally:
            ended.append(track.track)  # written, or the relay gave the subscription up

    async with contextlib.AsyncExitStack() as stack:
        publisher = TrackMux()
        publisher.publish("p", any_name)
        await connect(target, stack, publisher)
        (reader,) = await non_readers(target, stack, 1)
        await wait_announced(reader.session, "p")

        async def run(sent: Sent) -> None:
            sent.unit, sent.connections = "SUBSCRIBEs", 2
            sent.extra.update(names=names, group_size=group_size, groups=groups)
            for index in range(names):
                await reader.subscribe("p", f"made-up-{index}")
                sent.requests += 1
            # until every track the relay asked for was written and no new one was asked for a second
            deadline = asyncio.get_running_loop().time() + PUBLISH_TIMEOUT
            asked = -1
            while (asked != len(served) or len(set(finished) | set(ended)) < len(served)) and not target.stopped() \
                    and asyncio.get_running_loop().time() < deadline:
                asked = len(served)
                await asyncio.sleep(1.0)
            await target.idle()
            await asyncio.sleep(HOLD)
            sent.extra["relayed"] = len(set(served))
            _summary(sent, [reader], f"{names} invented track names, the publisher answering each with "
                                            f"{groups} x {size(group_size)}: {len(set(served))} reached it, "
                                            f"{len(finished)} fully written ({refused(reader.requests)} refused by the relay)")

        yield run


# -- frames that never finish, on many group streams into the relay
@contextlib.asynccontextmanager
async def unfinished_frames(target: Target, *, streams: int, declared: int, partial: int) -> AsyncIterator[Prepared]:
    """A publisher whose groups each start a frame of ``declared`` bytes and send only ``partial`` of it.

    A second session subscribes through the relay, so the relay subscribes
    to the publisher and reads every group it opens, waiting for each frame
    to complete.
    """
    fed: list[int] = []
    opening = asyncio.Lock()
    feeding: set[asyncio.Task[None]] = set()

    async def feed(group: Any) -> None:
        chunk = b"z" * (256 * 1024)
        for _ in range(partial // len(chunk)):
            await group._send(b"", body=chunk)
            fed.append(len(chunk))

    async def unfinished(track: TrackWriter) -> None:
        codec: Any = track.session.codec
        for _ in range(streams):
            async with opening:  # see invented_names
                group = await track.open_group()
            clock = group._clock
            header = (codec.encode_frame_header(declared) if clock is None
                      else codec.encode_timed_frame_header(declared, clock, int(time.time() * 1000)))
            await group._send(header)
            task = asyncio.ensure_future(feed(group))
            feeding.add(task)
            task.add_done_callback(feeding.discard)
        await asyncio.Event().wait()

    async with contextlib.AsyncExitStack() as stack:
        publisher = TrackMux()
        publisher.publish("big", unfinished)
        await connect(target, stack, publisher)
        viewer = await connect(target, stack)
        await wait_announced(viewer, "big")
        stack.callback(lambda: [task.cancel() for task in feeding])

        async def run(sent: Sent) -> None:
            sent.unit, sent.connections, sent.requests = "group streams", 2, streams
            sent.extra.update(streams=streams, declared=declared)
            subscribing = asyncio.ensure_future(viewer.subscribe("big", "video"))
            stack.callback(subscribing.cancel)
            deadline = asyncio.get_running_loop().time() + PUBLISH_TIMEOUT
            while sum(fed) < streams * partial and not target.stopped() \
                    and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - a deadline and a kill to watch
                await asyncio.sleep(0.5)
            sent.bytes = sum(fed)
            await target.idle()
            await asyncio.sleep(HOLD)
            sent.summary = (f"a publisher opening {streams} groups, each a frame of {size(declared)} of which it sends "
                            f"{size(partial)} ({size(sum(fed))} in all), while a viewer subscribes through the relay")

        yield run


# -- subscriptions never read
@contextlib.asynccontextmanager
async def viewer_process(target: Target) -> AsyncIterator[Callable[[], int]]:
    """A live track and a viewer of it in a process of their own (:mod:`benchmarks._attack_viewer`): frames seen so far."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks._attack_viewer", target.url, target.fingerprint, cwd=REPOSITORY,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdin is not None and process.stdout is not None
    stdout = process.stdout
    seen = [0]

    async def read() -> None:
        async for line in stdout:
            if line.startswith(b"frames "):
                seen[0] = int(line.split()[1])

    reading = asyncio.ensure_future(read())
    try:
        yield lambda: seen[0]
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        reading.cancel()


async def rate(seen: Callable[[], int], seconds: float) -> float:
    """Frames a second over the next ``seconds``."""
    before = seen()
    await asyncio.sleep(seconds)
    return (seen() - before) / seconds


@contextlib.asynccontextmanager
async def unread_subscriptions(target: Target, *, sessions: int, per_session: int) -> AsyncIterator[Prepared]:
    """Sessions subscribing again and again to a live track and reading nothing, while a viewer watches it."""
    async with contextlib.AsyncExitStack() as stack:
        seen = await stack.enter_async_context(viewer_process(target))
        deadline = asyncio.get_running_loop().time() + 20
        while not seen() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - a child's stdout
            await asyncio.sleep(0.1)
        readers = await non_readers(target, stack, sessions)
        calm = await rate(seen, VIEWER_WINDOW)  # the relay's upstream subscription and cache exist before the baseline

        async def run(sent: Sent) -> None:
            sent.unit, sent.connections = "SUBSCRIBEs", sessions + 2
            sent.extra["subscriptions"] = sessions * per_session
            for reader in readers:
                for _ in range(per_session):
                    await reader.subscribe("live", "video")
                    sent.requests += 1
            await asyncio.sleep(1.0)
            during = await rate(seen, VIEWER_WINDOW)
            await asyncio.sleep(max(0.0, HOLD - VIEWER_WINDOW))
            sent.notes.append(f"a viewer of the same track through the relay (another process) got {calm:.0f} "
                              f"frames/s before the attack and {during:.0f} frames/s during it "
                              f"(published: {viewer.RATE}/s)")
            _summary(sent, readers, f"{sessions} sessions x {per_session} subscriptions to a live track "
                                    f"({size(viewer.FRAME_SIZE)} frames, {viewer.RATE}/s), never read; the server "
                                    f"opened {sum(len(r.parked) for r in readers)} group streams")

        yield run

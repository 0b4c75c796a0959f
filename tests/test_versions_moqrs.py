"""Every moq-lite version against moq-rs, in both roles, on every transport.

1. Our server restricted to one version (``MoQ(versions=(V,))``) on ``QuicServer``'s one port:
   native QUIC (``moql://``) and WebTransport through our own HTTP/3 (``https://``). moq-rs offers
   everything (lite-06..03 by ALPN or ``wt-available-protocols``, and ``moql``), so what is exercised
   is the server's choice; for lite-01/02 that choice is made inside moql's SETUP.
2. The same apps under stock Hypercorn (WebTransport only), one version of each kind: SETUP-negotiated
   (lite-01), chosen by protocol alone (lite-04), chosen by protocol with uni-stream SETUPs (lite-06).
3. Our client restricted to one version (``dial(url, versions=(V,))``) against a moq-rs server, which
   cannot be restricted and follows the client's offer; unrestricted, the two settle on lite-06.
4. A relay serving two versions at once, with a moq-rs peer on each.

In 1-3 each case starts with a refused subscription (the code reaches the other side and the session
carries on), then a few paced groups are compared byte for byte, then the end of the track must reach
the reader. In 4 the publisher leaves at the end and its announcement must go.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import moq
import pytest

from moqt_asgi import Broadcast, MoQ, SetupRequest, SubscribeError, TrackMux, TrackReader
from moqt_asgi import dial as dial_any
from moqt_asgi.engine.session import Session
from moqt_asgi.protocol.errors import ErrorCode
from moqt_asgi.protocol.versions import (
    DEFAULT_VERSIONS,
    LITE_01_VERSION,
    LITE_02_VERSION,
    LITE_03_VERSION,
    LITE_04_VERSION,
    LITE_05_VERSION,
    LITE_06_VERSION,
    Version,
)
from moqt_asgi.relay import Relay

from .conftest import Certs
from .helpers import moqrs_client, moqrs_server, native_server
from .test_quic_backends import backend_native_server, needs_qh3, on_backend
from .wt_client import hypercorn_server

pytestmark = pytest.mark.interop

TIMEOUT = 10
GROUPS = 3
PACE = 0.05
"""Seconds between groups: a moq-rs subscriber reads only the newest groups of a burst."""
BROADCAST = "v/cam"
TRACK = "video"
MISSING = "missing"

VERSIONS = [LITE_01_VERSION, LITE_02_VERSION, LITE_03_VERSION, LITE_04_VERSION, LITE_05_VERSION, LITE_06_VERSION]
SCHEME_BACKENDS = [("moql", "aioquic"), pytest.param("moql", "qh3", marks=needs_qh3), ("https", "aioquic")]
"""Native QUIC on each QUIC backend of ours; WebTransport (our HTTP/3) runs on aioquic only."""
ROLES = ["moqrs-subscribes", "moqrs-publishes"]

Groups = list[tuple[int, list[bytes]]]


def version_id(version: object) -> str:
    return version.name if isinstance(version, Version) else str(version)


def frames_of(tag: str, sequence: int) -> list[bytes]:
    """Group ``sequence``: a header naming it, then every byte value, in three sizes (1 B .. 1.4 kB)."""
    return [f"{tag} g{sequence} f{f}|".encode() + bytes((sequence * 7 + f + i) % 256 for i in range(1 + 700 * f))
            for f in range(3)]


def check_groups(got: Groups, tag: str) -> None:
    assert len(got) == GROUPS, got
    sequences = [sequence for sequence, _ in got]
    assert sequences == sorted(sequences) and len(set(sequences)) == GROUPS, sequences
    for sequence, frames in got:
        assert frames == frames_of(tag, sequence)


def check_end(version: Version, left: int, seconds: float) -> None:
    """The reader saw the track end, after at most the groups that were in flight.

    lite-05+ publishers send SUBSCRIBE_END with the final sequence, and the reader ends at once.
    lite-01..04 end a track by FIN of the subscribe stream only; a moq-rs subscriber logs
    "subscribe complete" as the FIN arrives but its consumer reports the end 1.0 s later
    (measured: 1.002-1.003 s on every such case, nothing else on the wire meanwhile).
    Our subscriber ends within a fraction of a second of the FIN.
    """
    assert left <= 2, left
    assert seconds < (0.5 if version.uni_setup else 3.0), seconds


def check_our_refusal(version: Version, code: int) -> None:
    """What our subscriber read when moq-rs refused a track it does not have.

    moq-rs numbers stream codes from its scoped registry on every version (NOT_FOUND = 0x33), and so
    do we: the refusal reads as our NOT_FOUND on each of them.
    """
    assert code == ErrorCode.NOT_FOUND, (version.name, code)


def check_moqrs_refusal(version: Version, scheme: str, error: BaseException) -> None:
    """What moq-rs read when we refused a track we do not have.

    Our NOT_FOUND goes out as moq-rs's scoped 0x33 on every version and over both transports, and it
    reads "not found"; only that subscription fails.
    """
    detail = moq.protocol_error(error)
    assert detail is not None and (detail.code, detail.kind) == (0x33, moq.ProtocolKind.NOT_FOUND), \
        (version.name, scheme, error)


async def produce(track: Any, tag: str, stop: asyncio.Event) -> None:
    """Write a group every ``PACE`` seconds into ``track`` (ours or moq-rs's) until ``stop``."""
    sequence = 0
    while not stop.is_set():
        group = track.append_group()
        for frame in frames_of(tag, sequence):
            group.write_frame(frame)
        group.finish()
        sequence += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PACE)


@contextlib.asynccontextmanager
async def producing(track: Any, tag: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Produce into ``track`` while inside; yields ``finish()``: stop producing and end the track."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(produce(track, tag, stop))

    async def finish() -> None:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)
        track.finish()

    try:
        yield finish
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- reading with moq-rs
async def moqrs_refused(broadcast: Any) -> BaseException:
    """Subscribe to a track the publisher does not have; the error it ends with."""
    with pytest.raises(moq.Error) as refused:
        consumer = await asyncio.wait_for(broadcast.subscribe_track(MISSING), TIMEOUT)
        await asyncio.wait_for(consumer.next_group(), TIMEOUT)
    error: BaseException = refused.value
    return error


async def moqrs_read(track: Any) -> Groups:
    """``GROUPS`` groups, in sequence order, from a moq-rs track consumer."""
    got: Groups = []
    for _ in range(GROUPS):
        group = await asyncio.wait_for(track.next_group(), TIMEOUT)
        assert group is not None, "the track ended early"
        frames = []
        while (frame := await asyncio.wait_for(group.read_frame(), TIMEOUT)) is not None:
            frames.append(bytes(frame.payload))
        got.append((group.sequence, frames))
    return got


async def moqrs_end(track: Any, finish: Callable[[], Awaitable[None]]) -> tuple[int, float]:
    """End the track with ``finish()``; the groups a moq-rs consumer still read, and how long the end took."""
    await finish()
    started = time.monotonic()
    left = 0
    async with asyncio.timeout(TIMEOUT):
        while await track.next_group() is not None:
            left += 1
    return left, time.monotonic() - started


# -- reading with our session
async def our_subscription(session: Session) -> tuple[int, TrackReader]:
    """Discover ``BROADCAST``, fail to subscribe to a missing track, then subscribe to ``TRACK``.

    Returns the refusal's code and the subscription.
    """
    announcements = await session.announced("")
    async with asyncio.timeout(TIMEOUT):
        while BROADCAST not in announcements.active:
            await announcements.next()
    announcements.close()
    with pytest.raises(SubscribeError) as refused:
        missing = await session.subscribe(BROADCAST, MISSING)
        await asyncio.wait_for(missing.next_group(), TIMEOUT)
    return refused.value.code, await session.subscribe(BROADCAST, TRACK)


async def our_read(reader: TrackReader) -> Groups:
    got: Groups = []
    async with asyncio.timeout(TIMEOUT):
        async for group in reader:
            got.append((group.sequence, await group.read_all()))
            if len(got) == GROUPS:
                break
    return got


async def our_end(reader: TrackReader, finish: Callable[[], Awaitable[None]]) -> tuple[int, float]:
    await finish()
    started = time.monotonic()
    left = 0
    async with asyncio.timeout(TIMEOUT):
        async for group in reader:
            await group.read_all()
            left += 1
    return left, time.monotonic() - started


# -- 1 and 2: a moq-rs client against our server
class Served:
    """An app restricted to one version, in one of two roles toward its moq-rs client.

    ``moqrs-subscribes``: the app publishes ``BROADCAST``. ``moqrs-publishes``: its setup handler
    discovers the client's ``BROADCAST`` and subscribes; results go to :attr:`results` (or the
    exception that stopped the handler).
    """

    def __init__(self, version: Version, role: str) -> None:
        self.version = version
        self.role = role
        self.app = MoQ(versions=(version,))
        self.sessions: list[Session] = []
        self.results: asyncio.Queue[Any] = asyncio.Queue()
        self.finish: asyncio.Future[Callable[[], Awaitable[None]]] = asyncio.get_running_loop().create_future()
        broadcast = Broadcast(BROADCAST)
        self.track = broadcast.create_track(TRACK)
        if role == "moqrs-subscribes":
            self.app.mux.publish(BROADCAST, broadcast)
        self.app.add_route("/{path:path}", self.on_session)

    async def on_session(self, request: SetupRequest) -> None:
        session = await request.accept()
        self.sessions.append(session)
        if self.role == "moqrs-publishes":
            try:
                code, reader = await our_subscription(session)
                await self.results.put(code)
                await self.results.put(await our_read(reader))
                await self.results.put(await our_end(reader, await self.finish))
            except Exception as exc:
                await self.results.put(exc)

    async def result(self) -> Any:
        value = await asyncio.wait_for(self.results.get(), TIMEOUT * 2)
        if isinstance(value, Exception):
            raise value
        return value

    async def run(self, port: int, scheme: str, fingerprint: str) -> None:
        path = f"/{self.version.name}/{self.role}"
        tag = f"{self.version.name} {scheme} {self.role}"
        async with moqrs_client(f"{scheme}://127.0.0.1:{port}{path}?k=v", fingerprint) as client:
            if self.role == "moqrs-subscribes":
                broadcast = await asyncio.wait_for(client.announced_broadcast(BROADCAST), TIMEOUT)
                check_moqrs_refusal(self.version, scheme, await moqrs_refused(broadcast))
                consumer = await broadcast.subscribe_track(TRACK)
                async with producing(self.track, tag) as finish:
                    got = await moqrs_read(consumer)
                    left, seconds = await moqrs_end(consumer, finish)
            else:
                broadcast = client.create_broadcast(BROADCAST)
                video = broadcast.publish_track(TRACK)
                broadcast.announce()
                async with producing(video, tag) as finish:
                    check_our_refusal(self.version, await self.result())
                    got = await self.result()
                    self.finish.set_result(finish)
                    left, seconds = await self.result()
        check_groups(got, tag)
        check_end(self.version, left, seconds)
        assert [s.version_name for s in self.sessions] == [self.version.name]
        # lite-03/04 carry no path on native QUIC: those sessions are at the root
        expected = "/" if scheme == "moql" and self.version in (LITE_03_VERSION, LITE_04_VERSION) else path
        assert [s.path for s in self.sessions] == [expected]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("scheme", "backend"), SCHEME_BACKENDS)
@pytest.mark.parametrize("version", VERSIONS, ids=version_id)
async def test_moqrs_client_against_our_server(certs: Certs, version: Version, scheme: str, backend: str,
                                               role: str) -> None:
    served = Served(version, role)
    async with backend_native_server(served.app, str(certs.cert), str(certs.key), backend=backend) as server:
        await served.run(server.address[1], scheme, certs.fingerprint)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("version", [LITE_01_VERSION, LITE_04_VERSION, LITE_06_VERSION], ids=version_id)
async def test_moqrs_client_against_our_app_in_hypercorn(certs: Certs, version: Version, role: str) -> None:
    served = Served(version, role)
    async with hypercorn_server(served.app, str(certs.cert), str(certs.key)) as port:
        await served.run(port, "https", certs.fingerprint)


# -- 3: our client against a moq-rs server
@pytest.mark.parametrize("role", ["we-subscribe", "we-publish"])
@pytest.mark.parametrize(("scheme", "backend"), SCHEME_BACKENDS)
@pytest.mark.parametrize("version", [*VERSIONS, None], ids=lambda v: version_id(v) if v is not None else "default")
async def test_our_client_against_moqrs_server(version: Version | None, scheme: str, backend: str, role: str) -> None:
    dial = on_backend(dial_any, backend)
    expected = version or LITE_06_VERSION  # unrestricted, the newest both speak
    offered = DEFAULT_VERSIONS if version is None else (version,)
    tag = f"{expected.name} {scheme} {role}"
    async with moqrs_server() as (port, origin, fingerprint):
        url = f"{scheme}://127.0.0.1:{port}/room"
        if role == "we-subscribe":
            broadcast = origin.create_broadcast(BROADCAST)
            video = broadcast.publish_track(TRACK)
            broadcast.announce()
            session = await dial(url, fingerprint=fingerprint, versions=offered)
            async with session, producing(video, tag) as finish:
                assert session.version_name == expected.name
                code, reader = await our_subscription(session)
                check_our_refusal(expected, code)
                got = await our_read(reader)
                left, seconds = await our_end(reader, finish)
        else:
            mux = TrackMux()
            ours = Broadcast(BROADCAST)
            track = ours.create_track(TRACK)
            mux.publish(BROADCAST, ours)
            session = await dial(url, fingerprint=fingerprint, mux=mux, versions=offered)
            async with session:
                assert session.version_name == expected.name
                announced = await asyncio.wait_for(origin.consume().announced_broadcast(BROADCAST), TIMEOUT)
                check_moqrs_refusal(expected, scheme, await moqrs_refused(announced))
                consumer = await announced.subscribe_track(TRACK)
                async with producing(track, tag) as finish:
                    got = await moqrs_read(consumer)
                    left, seconds = await moqrs_end(consumer, finish)
    check_groups(got, tag)
    check_end(expected, left, seconds)


# -- 4: one relay, two versions
@pytest.mark.parametrize(("publisher", "subscriber"), [(LITE_01_VERSION, LITE_06_VERSION),
                                                       (LITE_06_VERSION, LITE_03_VERSION),
                                                       (LITE_04_VERSION, LITE_02_VERSION),
                                                       (LITE_05_VERSION, LITE_04_VERSION),
                                                       (LITE_02_VERSION, LITE_05_VERSION),
                                                       (LITE_03_VERSION, LITE_01_VERSION)], ids=version_id)
async def test_relay_between_two_versions(certs: Certs, publisher: Version, subscriber: Version) -> None:
    """A moq-rs publisher on one version reaches a moq-rs subscriber on another through one relay.

    Two servers share the relay's mux, each restricted to one version. When the publisher leaves,
    its announcement goes: ended on the publisher's version, re-announced ended on the subscriber's.
    """
    relay = Relay()
    apps = [MoQ(mux=relay.mux, versions=(publisher,)), MoQ(mux=relay.mux, versions=(subscriber,))]
    for app in apps:
        app.add_route("/{path:path}", relay)
    tag = f"{publisher.name} to {subscriber.name}"
    async with native_server(apps[0], str(certs.cert), str(certs.key)) as pub_server, \
            native_server(apps[1], str(certs.cert), str(certs.key)) as sub_server, \
            moqrs_client(f"https://127.0.0.1:{sub_server.address[1]}/", certs.fingerprint) as sub:
        watch = sub.announced("v")
        async with moqrs_client(f"moql://127.0.0.1:{pub_server.address[1]}/", certs.fingerprint) as pub:
            broadcast = pub.create_broadcast(BROADCAST)
            video = broadcast.publish_track(TRACK)
            broadcast.announce()
            announced = await asyncio.wait_for(sub.announced_broadcast(BROADCAST), TIMEOUT)
            consumer = await announced.subscribe_track(TRACK)
            async with producing(video, tag) as finish:
                got = await moqrs_read(consumer)
                left, seconds = await moqrs_end(consumer, finish)
            assert relay.mux.active_paths("") == [BROADCAST]
        updates = []
        async with asyncio.timeout(TIMEOUT):
            async for update in watch:
                updates.append(update.active)
                if not update.active:
                    break
        assert updates == [True, False]
        for _ in range(100):
            if not relay.mux.active_paths(""):
                break
            await asyncio.sleep(0.02)
        assert relay.mux.active_paths("") == []
    check_groups(got, tag)
    # the relay ends its upstream subscription at once on any version; downstream the subscriber's version decides
    check_end(subscriber, left, seconds)

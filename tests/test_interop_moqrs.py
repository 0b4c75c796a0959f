"""Wire compatibility with moq-rs (the Rust reference stack, from PyPI) over native QUIC.

moq-rs runs in-process through its Python bindings, on the same event loop
as our server or client; every byte between them crosses a real UDP socket.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import sys

import pytest

from moqt_asgi import Broadcast, MoQ, Session, TrackMux
from moqt_asgi.endpoints.dial_quic import dial_quic
from moqt_asgi.protocol.lite06 import LITE_06

from .conftest import Certs
from .helpers import moqrs_client, moqrs_server, native_server
from .test_quic_backends import BACKENDS, backend_native_server, on_backend

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True, params=BACKENDS)
def quic_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on each QUIC backend: our server (native QUIC) and our client on aioquic, then on qh3."""
    backend = str(request.param)
    if backend != "aioquic":
        module = sys.modules[__name__]
        monkeypatch.setattr(module, "native_server", functools.partial(backend_native_server, backend=backend))
        monkeypatch.setattr(module, "dial_quic", on_backend(dial_quic, backend))
    return backend

TIMEOUT = 10


async def read_groups(track: object, count: int) -> list[tuple[int, list[bytes]]]:
    """Read ``count`` groups (sequence order) from a moq-rs track consumer."""
    groups = []
    for _ in range(count):
        group = await asyncio.wait_for(track.next_group(), TIMEOUT)  # type: ignore[attr-defined]
        frames = []
        while (frame := await asyncio.wait_for(group.read_frame(), TIMEOUT)) is not None:
            frames.append(bytes(frame.payload))
        groups.append((group.sequence, frames))
    return groups


def fresh_clock_app() -> MoQ:
    module = importlib.import_module("examples.clock")
    return importlib.reload(module).moq


async def test_moqrs_client_subscribes_to_clock_example(certs: Certs) -> None:
    app = fresh_clock_app()
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        async with moqrs_client(f"moql://{host}:{port}/anything", certs.fingerprint) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), TIMEOUT)
            track = await broadcast.subscribe_track("seconds")
            groups = await read_groups(track, 2)
    sequences = [seq for seq, _ in groups]
    assert sequences[1] == sequences[0] + 1
    for _, frames in groups:
        assert len(frames) == 1
        stamp = frames[0].decode()
        assert stamp.endswith("+00:00") and "T" in stamp  # ISO-8601 UTC


async def test_moqrs_client_publishes_and_our_server_subscribes(certs: Certs) -> None:
    app = MoQ()
    received: asyncio.Queue[tuple[str, int, list[bytes]]] = asyncio.Queue()
    versions: list[int] = []

    @app.route("/{path:path}")
    async def on_session(request):  # type: ignore[no-untyped-def]
        session = await request.accept()
        versions.append(session.version)
        announcements = await session.announced("")
        async for announcement in announcements:
            if announcement.path == "pub/cam":
                break
        track = await session.subscribe("pub/cam", "video", priority=3)
        async for group in track:
            await received.put((announcement.path, group.sequence, await group.read_all()))

    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        async with moqrs_client(f"moql://{host}:{port}/publish", certs.fingerprint) as client:
            producer = client.create_broadcast("pub/cam")
            video = producer.publish_track("video")
            producer.announce()
            sent = []
            for g in range(4):
                group = video.append_group()
                frames = [f"g{g}f{f}".encode() * (f + 1) for f in range(3)]
                for frame in frames:
                    group.write_frame(frame)
                group.finish()
                sent.append(frames)
                await asyncio.sleep(0.15 if g == 0 else 0.05)
            got = [await asyncio.wait_for(received.get(), TIMEOUT) for _ in range(3)]
    assert versions == [LITE_06]  # the newest both sides speak
    # the first group may race the subscription; every group we got is byte-identical
    for path, sequence, frames in got:
        assert path == "pub/cam"
        assert frames == sent[sequence]
    assert [seq for _, seq, _ in got] == sorted(seq for _, seq, _ in got)


async def test_our_client_subscribes_to_moqrs_server() -> None:
    async with moqrs_server() as (port, origin, fingerprint):
        broadcast = origin.create_broadcast("demo/clock")
        track = broadcast.publish_track("seconds")
        broadcast.announce()
        session: Session = await dial_quic(f"moql://127.0.0.1:{port}/room?jwt=abc", fingerprint=fingerprint)
        async with session:
            assert session.version == LITE_06
            announcements = await session.announced("demo")
            if "demo/clock" not in announcements.active:
                await asyncio.wait_for(announcements.next(), TIMEOUT)
            assert "demo/clock" in announcements.active
            reader = await session.subscribe("demo/clock", "seconds")

            async def produce() -> None:
                for g in range(5):
                    group = track.append_group()
                    for f in range(3):
                        group.write_frame(f"rs g{g} f{f}".encode())
                    group.finish()
                    await asyncio.sleep(0.05)

            producer = asyncio.ensure_future(produce())
            got = []
            async for group in reader:
                got.append((group.sequence, await group.read_all()))
                if len(got) == 3:
                    break
            await producer
        for sequence, frames in got:
            assert frames == [f"rs g{sequence} f{f}".encode() for f in range(3)]


async def test_our_client_publishes_into_moqrs_server() -> None:
    async with moqrs_server() as (port, origin, fingerprint):
        mux = TrackMux()
        broadcast = Broadcast("py/cam")
        track = broadcast.create_track("video")
        mux.publish("py/cam", broadcast)
        session = await dial_quic(f"moql://127.0.0.1:{port}/", fingerprint=fingerprint, mux=mux)
        async with session:
            announced = await asyncio.wait_for(origin.consume().announced_broadcast("py/cam"), TIMEOUT)
            consumer = await announced.subscribe_track("video")

            async def produce() -> None:
                for g in range(20):
                    group = track.append_group()
                    group.write_frame(f"py g{g} a".encode())
                    group.write_frame(bytes(range(256)) * 40)
                    group.finish()
                    await asyncio.sleep(0.05)

            producer = asyncio.ensure_future(produce())
            groups = await read_groups(consumer, 3)
            producer.cancel()
        for sequence, frames in groups:
            assert frames == [f"py g{sequence} a".encode(), bytes(range(256)) * 40]


async def test_relay_fans_out_moqrs_publisher_to_two_moqrs_subscribers(certs: Certs) -> None:
    relay_app = importlib.reload(importlib.import_module("examples.relay")).moq
    async with native_server(relay_app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        url = f"moql://{host}:{port}/"
        async with moqrs_client(url, certs.fingerprint) as sub_a, moqrs_client(url, certs.fingerprint) as sub_b:
            watch = sub_a.announced("live")
            payloads: dict[int, list[bytes]] = {}
            async with moqrs_client(url, certs.fingerprint) as publisher:
                producer = publisher.create_broadcast("live/cam")
                video = producer.publish_track("video")
                producer.announce()
                tracks = []
                for sub in (sub_a, sub_b):
                    announced = await asyncio.wait_for(sub.announced_broadcast("live/cam"), TIMEOUT)
                    tracks.append(await announced.subscribe_track("video"))

                async def produce() -> None:
                    for g in range(100):
                        group = video.append_group()
                        frames = [f"relay g{g} f{f} ".encode() + bytes([g, f]) * 500 for f in range(2)]
                        payloads[g] = frames
                        for frame in frames:
                            group.write_frame(frame)
                        group.finish()
                        await asyncio.sleep(0.05)

                pump = asyncio.ensure_future(produce())
                got_a, got_b = await asyncio.gather(read_groups(tracks[0], 4), read_groups(tracks[1], 4))
                pump.cancel()
                assert relay_app.mux.active_paths("live") == ["live/cam"]
            # the publisher has left: the announcement goes and both tracks end
            updates = []
            async with asyncio.timeout(TIMEOUT):
                async for update in watch:
                    updates.append((update.prefix, update.active))
                    if not update.active:
                        break
            assert updates[-1][1] is False
            for track in tracks:
                async with asyncio.timeout(TIMEOUT):
                    while await track.next_group() is not None:
                        pass
            assert relay_app.mux.active_paths("") == []
        for got in (got_a, got_b):
            for sequence, frames in got:
                assert frames == payloads[sequence]
        assert {s for s, _ in got_a} & {s for s, _ in got_b}, "both subscribers should get the same groups"


@pytest.mark.parametrize("path", ["/", "/room/1?jwt=abc"])
async def test_moqrs_path_reaches_setup_handler(certs: Certs, path: str) -> None:
    app = MoQ()
    seen: list[tuple[str, str]] = []

    @app.route("/{rest:path}")
    async def on_session(request):  # type: ignore[no-untyped-def]
        seen.append((request.path, request.query))
        await request.accept()

    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        async with moqrs_client(f"moql://{host}:{port}{path}", certs.fingerprint):
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
    expected_path, _, expected_query = path.partition("?")
    assert seen == [(expected_path, expected_query)]

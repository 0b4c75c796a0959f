"""One UDP port, both transports: ``QuicServer`` (and ``python -m moqt_asgi serve``) speaks ALPN ``moql``
and HTTP/3 with WebTransport side by side; ``dial`` and the CLI take ``moql://`` and ``https://``.

Publishers on ``moql://`` reach subscribers on ``https://`` through the relay, byte for byte, with
moq-rs and our client on both sides. The native HTTP/3 path refuses and routes exactly as Hypercorn does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from moqt_asgi import Broadcast, MoQ, MoQError, SetupRejected, TrackMux, dial
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.protocol.lite03 import LITE_03
from moqt_asgi.protocol.lite06 import LITE_06
from moqt_asgi.relay import Relay

from .conftest import ROOT, Certs
from .helpers import cli, free_udp_port, moqrs_client, native_server, stop_serve
from .test_webtransport_moq import counter_app
from .wt_client import hypercorn_server, wt_client

pytestmark = pytest.mark.slow

TIMEOUT = 15
BROADCAST = "pub/cam"
GROUPS = 3


def relay_app() -> MoQ:
    relay = Relay()
    app = MoQ(mux=relay.mux)
    app.add_route("/{path:path}", relay)
    return app


def group_frames(g: int) -> list[bytes]:
    """Frames of group ``g``: a header naming the group, then every byte value, in varied sizes."""
    return [f"g{g:05d}f{f}|".encode() + bytes((g * 7 + f + i) % 256 for i in range(1 + 700 * f)) for f in range(3)]


def check_groups(groups: list[list[bytes]]) -> None:
    assert len(groups) == GROUPS
    numbers = [int(frames[0][1:6]) for frames in groups]
    assert numbers == sorted(numbers) and len(set(numbers)) == GROUPS
    for number, frames in zip(numbers, groups, strict=True):
        assert frames == group_frames(number)


# -- publishers (on moql://) and subscribers (on https://)
async def publish_moqrs(url: str, fingerprint: str, stop: asyncio.Event) -> None:
    async with moqrs_client(url, fingerprint) as client:
        producer = client.create_broadcast(BROADCAST)
        video = producer.publish_track("video")
        producer.announce()
        g = 0
        while not stop.is_set():
            group = video.append_group()
            for frame in group_frames(g):
                group.write_frame(frame)
            group.finish()
            g += 1
            await asyncio.sleep(0.05)


async def publish_ours(url: str, fingerprint: str, stop: asyncio.Event) -> None:
    mux = TrackMux()
    broadcast = Broadcast(BROADCAST)
    video = broadcast.create_track("video")
    mux.publish(BROADCAST, broadcast)
    session = await dial(url, fingerprint=fingerprint, mux=mux)
    async with session:
        assert session.version == LITE_06
        g = 0
        while not stop.is_set():
            group = video.append_group()
            for frame in group_frames(g):
                group.write_frame(frame)
            group.finish()
            g += 1
            await asyncio.sleep(0.05)


async def subscribe_moqrs(url: str, fingerprint: str) -> list[list[bytes]]:
    async with moqrs_client(url, fingerprint) as client:
        broadcast = await asyncio.wait_for(client.announced_broadcast(BROADCAST), TIMEOUT)
        track = await broadcast.subscribe_track("video")
        groups = []
        for _ in range(GROUPS):
            group = await asyncio.wait_for(track.next_group(), TIMEOUT)
            frames = []
            while (frame := await asyncio.wait_for(group.read_frame(), TIMEOUT)) is not None:
                frames.append(bytes(frame.payload))
            groups.append(frames)
        return groups


async def subscribe_ours(url: str, fingerprint: str) -> list[list[bytes]]:
    session = await dial(url, fingerprint=fingerprint)
    async with session:
        announcements = await session.announced(BROADCAST)
        if BROADCAST not in announcements.active:
            async for announcement in announcements:
                if announcement.path == BROADCAST:
                    break
        announcements.close()
        reader = await session.subscribe(BROADCAST, "video")
        groups = []
        async for group in reader:
            groups.append(await group.read_all())
            if len(groups) == GROUPS:
                break
        return groups


async def relay_roundtrip(port: int, fingerprint: str, publisher: str) -> None:
    """A publisher on ``moql://``, moq-rs and our client subscribed on ``https://``, all on ``port``."""
    stop = asyncio.Event()
    publish = publish_moqrs if publisher == "moqrs" else publish_ours
    publishing = asyncio.ensure_future(publish(f"moql://127.0.0.1:{port}/pub", fingerprint, stop))
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            by_moqrs, by_us = await asyncio.gather(subscribe_moqrs(f"https://127.0.0.1:{port}/sub/rs", fingerprint),
                                                   subscribe_ours(f"https://127.0.0.1:{port}/sub/py", fingerprint))
    finally:
        stop.set()
        await asyncio.wait_for(publishing, TIMEOUT)
    check_groups(by_moqrs)
    check_groups(by_us)


# -- in-process
@pytest.mark.interop
@pytest.mark.parametrize("publisher", ["moqrs", "ours"])
async def test_moql_publisher_reaches_https_subscribers_on_one_port(certs: Certs, publisher: str) -> None:
    app = relay_app()
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        assert server.alpn_protocols == ["moq-lite-06", "moq-lite-05", "moq-lite-04", "moq-lite-03", "moql", "moq-00", "h3"]
        await relay_roundtrip(server.address[1], certs.fingerprint, publisher)


async def test_https_publisher_reaches_moql_subscriber(certs: Certs) -> None:
    app = relay_app()
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        port = server.address[1]
        stop = asyncio.Event()
        publishing = asyncio.ensure_future(publish_ours(f"https://127.0.0.1:{port}/pub", certs.fingerprint, stop))
        try:
            async with asyncio.timeout(TIMEOUT):
                groups = await subscribe_ours(f"moql://127.0.0.1:{port}/sub", certs.fingerprint)
        finally:
            stop.set()
            await asyncio.wait_for(publishing, TIMEOUT)
        check_groups(groups)


@contextlib.asynccontextmanager
async def served(kind: str, app: MoQ, certs: Certs) -> AsyncIterator[int]:
    """``app`` on Hypercorn or on our own server; yields the UDP port."""
    if kind == "hypercorn":
        async with hypercorn_server(app, str(certs.cert), str(certs.key)) as port:
            yield port
    else:
        async with native_server(app, str(certs.cert), str(certs.key)) as server:
            yield server.address[1]


@pytest.mark.parametrize("kind", ["hypercorn", "native"])
async def test_refusals_and_http_match_hypercorn(certs: Certs, kind: str) -> None:
    app, requests = counter_app()
    async with served(kind, app, certs) as port, wt_client(port) as client:
        _, response = await client.connect_session("/nowhere", [(b"origin", b"https://good.test")])
        assert response.status == 404
        _, response = await client.connect_session("/rooms/1", [(b"origin", b"https://evil.test")])
        assert response.status == 403
        _, response = await client.connect_session("/rooms/1")  # no Origin: not a browser, allowed
        assert response.status == 200
        offered = [(b"origin", b"https://good.test"), (b"wt-available-protocols", b'"moq-lite-03", "moql"')]
        session_id, response = await client.connect_session("/rooms/1", offered)
        assert response.status == 200
        assert response.headers[b"sec-webtransport-http3-draft"] == b"draft02"
        assert response.headers[b"wt-protocol"] == b'"moq-lite-03"'  # the newest offered
        await client.wait_for(lambda: all(r.ended for r in client.responses.values() if r.status != 200))
        # lite-03 has no SETUP: the version came with the CONNECT, so the setup handler ran at once
        await client.wait_for(lambda: len(requests) == 1)
        assert requests[0].versions == (LITE_03,) and requests[0].path == "/rooms/1"
        client.close_session(session_id, 0, "")
        hello = await client.get("/hello?name=h3")
        assert (hello.status, bytes(hello.body)) == (200, b"hello h3")
        missing = await client.get("/missing")
        assert missing.status == 404
        assert not client.terminated


@pytest.mark.parametrize("kind", ["hypercorn", "native"])
async def test_app_wide_origin_check(certs: Certs, kind: str) -> None:
    app, _ = counter_app(allow_origins=["https://good.test"])
    async with served(kind, app, certs) as port, wt_client(port) as client:
        statuses = []
        for origin in (b"https://other.test", b"https://good.test"):
            _, response = await client.connect_session("/rooms/1", [(b"origin", origin)])
            statuses.append(response.status)
        assert statuses == [403, 200]
        with pytest.raises(SetupRejected) as refused:
            await dial(f"https://127.0.0.1:{port}/rooms/1", fingerprint=certs.fingerprint,
                       headers=[("origin", "https://other.test")])
        assert refused.value.code == 403


async def test_native_http_without_inner_app_and_other_connects(certs: Certs) -> None:
    app = MoQ()
    async with native_server(app, str(certs.cert), str(certs.key)) as server, wt_client(server.address[1]) as client:
        response = await client.get("/anything")
        assert (response.status, bytes(response.body)) == (404, b"Not Found")
        assert b"connection" not in response.headers
        _, response = await client.request("CONNECT", "/", protocol="websocket")
        assert response.status == 501
        _, response = await client.connect_session("/")
        assert response.status == 200  # no routes: every session is accepted


async def test_native_http_request_body_reaches_the_app(certs: Certs) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route as HTTPRoute

    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body[::-1], headers={"x-length": str(len(body)), "Connection": "keep-alive"})

    app = MoQ(app=Starlette(routes=[HTTPRoute("/echo", echo, methods=["POST"])]))
    body = bytes(range(256)) * 1000
    async with native_server(app, str(certs.cert), str(certs.key)) as server, wt_client(server.address[1]) as client:
        stream_id = client._quic.get_next_available_stream_id()
        client.h3.send_headers(stream_id, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"x"),
                                           (b":path", b"/echo")])
        for at in range(0, len(body), 50_000):
            client.h3.send_data(stream_id, body[at:at + 50_000], end_stream=at + 50_000 >= len(body))
            client.transmit()
        await client.wait_for(lambda: stream_id in client.responses and client.responses[stream_id].ended)
        response = client.responses[stream_id]
    assert response.status == 200
    assert response.headers[b"x-length"] == str(len(body)).encode()
    assert b"connection" not in response.headers
    assert bytes(response.body) == body[::-1]


async def test_server_close_ends_webtransport_sessions(certs: Certs, no_leaked_tasks: None) -> None:
    app = MoQ()
    await app.startup()
    server = QuicServer(app, host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key))
    await server.start()
    try:
        async with wt_client(server.address[1]) as client:
            session_id, response = await client.connect_session("/")
            assert response.status == 200
            await client.wait_for(lambda: server.connection_count == 1)
            await server.close()
            await client.wait_for(lambda: client.close_capsule(session_id) is not None or client.terminated)
            capsule = client.close_capsule(session_id)
            assert capsule is not None and (capsule.code, capsule.reason) == (0, "server shutting down")
            await client.wait_for(lambda: client.terminated)
    finally:
        await server.close()
        await app.shutdown()
    assert server.connection_count == 0


async def test_webtransport_can_be_turned_off(certs: Certs) -> None:
    app = MoQ()
    async with contextlib.AsyncExitStack() as stack:
        server = QuicServer(app, host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                            webtransport=False)
        await stack.enter_async_context(server)
        assert "h3" not in server.alpn_protocols and "moql" in server.alpn_protocols
        with pytest.raises(MoQError, match="could not connect"):  # no common ALPN
            await dial(f"https://127.0.0.1:{server.address[1]}/", fingerprint=certs.fingerprint, setup_timeout=3)
        session = await dial(f"moql://127.0.0.1:{server.address[1]}/", fingerprint=certs.fingerprint)
        await session.aclose()


async def test_dial_url_errors() -> None:
    with pytest.raises(MoQError, match="no port"):
        await dial("https://127.0.0.1/", insecure=True)
    with pytest.raises(MoQError, match="no port"):
        await dial("moqt://localhost/room", insecure=True)
    with pytest.raises(MoQError, match="unsupported URL scheme"):
        await dial("http://127.0.0.1:4433/", insecure=True)
    with pytest.raises(MoQError, match="no HTTP headers"):
        await dial("moql://127.0.0.1:4433/", insecure=True, headers=[("origin", "https://a.test")])


# -- the real command line
@pytest.fixture
def serve(certs: Certs) -> Iterator[Any]:
    """``python -m moqt_asgi serve APP --bind 127.0.0.1:PORT``; yields ``start(app) -> (port, process)``."""
    processes: list[subprocess.Popen[str]] = []

    def start(app: str) -> tuple[int, subprocess.Popen[str]]:
        port = free_udp_port()
        process = subprocess.Popen(
            cli("serve", app, "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert), "--keyfile", str(certs.key)),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"moql://127.0.0.1:{port}/ and https://127.0.0.1:{port}/" in line, line
        return port, process

    yield start
    for process in processes:
        stop_serve(process, TIMEOUT)


@pytest.mark.cli
@pytest.mark.interop
def test_serve_cli_relays_moql_to_https(serve: Any, certs: Certs) -> None:
    port, _ = serve("examples.relay:moq")
    asyncio.run(relay_roundtrip(port, certs.fingerprint, "moqrs"))


@pytest.mark.cli
@pytest.mark.interop
def test_moqrs_over_https_subscribes_to_served_clock_then_server_stops(serve: Any, certs: Certs) -> None:
    port, process = serve("examples.clock:moq")

    async def subscribe_then_stop_server() -> tuple[list[str], float]:
        async with moqrs_client(f"https://127.0.0.1:{port}/", certs.fingerprint) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), TIMEOUT)
            track = await broadcast.subscribe_track("seconds")
            frames = []
            for _ in range(2):
                group = await asyncio.wait_for(track.next_group(), TIMEOUT)
                frames.append(bytes((await asyncio.wait_for(group.read_frame(), TIMEOUT)).payload).decode())
            started = time.monotonic()  # stop with the session still open
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, TIMEOUT)
            return frames, time.monotonic() - started

    frames, stop_seconds = asyncio.run(subscribe_then_stop_server())
    stamps = [datetime.datetime.fromisoformat(frame) for frame in frames]
    assert all(stamp.utcoffset() == datetime.timedelta(0) for stamp in stamps) and stamps[1] > stamps[0]
    assert process.stdout is not None
    output = process.stdout.read()
    assert process.returncode == 0, output
    assert stop_seconds < 3, stop_seconds
    assert "Traceback" not in output, output


@pytest.mark.cli
def test_sub_cli_over_https_prints_clock_lines(serve: Any, certs: Certs) -> None:
    port, _ = serve("examples.clock:moq")
    result = subprocess.run(cli("sub", f"https://127.0.0.1:{port}/", "clock", "seconds", "--fingerprint",
                                certs.fingerprint, "--count", "2"),
                            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    stamps = [datetime.datetime.fromisoformat(line) for line in result.stdout.splitlines()]
    assert len(stamps) == 2 and stamps[0].tzinfo is not None and stamps[1] > stamps[0]


@pytest.mark.cli
def test_pub_cli_over_https_reaches_sub_cli_over_moql(serve: Any, certs: Certs) -> None:
    port, _ = serve("examples.relay:moq")
    sub = subprocess.Popen(cli("sub", f"moql://127.0.0.1:{port}/", "chat", "room", "--fingerprint", certs.fingerprint,
                               "--count", "3"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pub = subprocess.Popen(cli("pub", f"https://127.0.0.1:{port}/", "chat", "room", "--fingerprint", certs.fingerprint,
                               "--origin", "https://app.test"),
                           cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert pub.stdin is not None
    try:
        for n in range(200):  # keep writing until the subscriber has what it needs (it joins at the latest group)
            if sub.poll() is not None:
                break
            pub.stdin.write(f"line {n}\n")
            pub.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                sub.wait(timeout=0.1)
        out, err = sub.communicate(timeout=TIMEOUT)
    finally:
        pub.stdin.close()
        pub.wait(timeout=TIMEOUT)
    assert sub.returncode == 0, err
    lines = out.splitlines()
    numbers = [int(line.split()[1]) for line in lines]
    assert len(lines) == 3 and all(line.startswith("line ") for line in lines) and numbers == sorted(numbers)


@pytest.mark.cli
def test_https_url_without_port_is_a_clear_error() -> None:
    result = subprocess.run(cli("sub", "https://127.0.0.1/", "a", "b", "--insecure"), capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=ROOT)
    assert result.returncode == 1
    assert "no port" in result.stderr

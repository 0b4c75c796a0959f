"""MoQ over WebSocket under the stock ``hypercorn`` command line, with moq-rs 0.5.1 and our client as peers.

Hypercorn serves the ``websocket`` scope on its TCP listeners (``--insecure-bind``
for ``ws://``, ``--bind`` with the certificate for ``wss://``) beside
``--quic-bind`` for WebTransport; it does the upgrade and echoes our subprotocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import moq
import pytest

from moqt_asgi import Broadcast
from moqt_asgi.client import Client, dial
from moqt_asgi.protocol.errors import MoQError
from moqt_asgi.websocket.client import dial_websocket

from .conftest import ROOT, Certs
from .helpers import cli
from .test_webtransport_cli import free_tcp_port, hypercorn_command
from .wt_client import free_udp_port, wait_udp_port

pytestmark = [pytest.mark.cli, pytest.mark.interop]

TIMEOUT = 15


@dataclass
class Hypercorn:
    process: subprocess.Popen[str]
    quic: int
    tls: int
    plain: int

    def url(self, scheme: str, path: str = "/") -> str:
        port = {"ws": self.plain, "wss": self.tls, "https": self.quic}[scheme]
        return f"{scheme}://127.0.0.1:{port}{path}"


async def wait_tcp_port(port: int, timeout: float, alive: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("hypercorn exited")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listens on TCP port {port}")


@pytest.fixture
def hypercorn_ws(certs: Certs) -> Iterator[Any]:
    """``start(app, env=None) -> Hypercorn``: stock hypercorn with QUIC, TLS TCP and plain TCP listeners."""
    processes: list[subprocess.Popen[str]] = []

    def start(app: str, env: dict[str, str] | None = None) -> Hypercorn:
        quic, plain = free_udp_port(), free_tcp_port()
        command = hypercorn_command(app, quic, certs, "--insecure-bind", f"127.0.0.1:{plain}")
        tls = int(command[command.index("--bind") + 1].rsplit(":", 1)[1])
        process = subprocess.Popen(command, cwd=ROOT, text=True, env={**os.environ, **(env or {})},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(process)
        alive = lambda: process.poll() is None  # noqa: E731
        asyncio.run(wait_udp_port(quic, TIMEOUT, alive=alive))
        asyncio.run(wait_tcp_port(plain, TIMEOUT, alive))
        asyncio.run(wait_tcp_port(tls, TIMEOUT, alive))
        return Hypercorn(process, quic, tls, plain)

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail("hypercorn did not stop on SIGTERM")


@contextlib.asynccontextmanager
async def moqrs(url: str, certs: Certs) -> AsyncIterator[moq.Client]:
    websocket = not url.startswith("https")
    async with moq.Client(url, tls_fingerprints=[certs.fingerprint], reconnect=False,
                          websocket_enabled=websocket) as client:
        yield client


async def read_clock(client: moq.Client, count: int = 2) -> list[str]:
    broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), TIMEOUT)
    track = await broadcast.subscribe_track("seconds")
    frames = []
    for _ in range(count):
        group = await asyncio.wait_for(track.next_group(), TIMEOUT)
        frames.append(bytes((await asyncio.wait_for(group.read_frame(), TIMEOUT)).payload).decode())
    return frames


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_moqrs_reads_the_clock_over_websocket(hypercorn_ws: Any, certs: Certs, scheme: str) -> None:
    server = hypercorn_ws("examples.clock:moq")

    async def run() -> tuple[list[str], float]:
        async with moqrs(server.url(scheme), certs) as client:
            frames = await read_clock(client)
            started = time.monotonic()  # stop the server with the session open
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.process.wait, TIMEOUT)
            return frames, time.monotonic() - started

    frames, stop_seconds = asyncio.run(run())
    assert frames[1] > frames[0]
    assert server.process.stdout is not None
    output = server.process.stdout.read()
    assert server.process.returncode == 0, output
    assert stop_seconds < TIMEOUT
    # the session is told (hook H10) and closed before Hypercorn's graceful timeout would cancel its connection
    assert "Error in ASGI" not in output and "moqt_asgi" not in output and "Traceback" not in output, output


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_our_client_reads_the_clock_over_websocket(hypercorn_ws: Any, certs: Certs, scheme: str) -> None:
    server = hypercorn_ws("examples.clock:moq")

    async def run() -> tuple[str, list[list[bytes]]]:
        session = await dial_websocket(server.url(scheme), fingerprint=certs.fingerprint if scheme == "wss" else None)
        async with session:
            reader = await session.subscribe("clock", "seconds")
            groups = []
            for _ in range(2):
                group = await asyncio.wait_for(reader.next_group(), TIMEOUT)
                assert group is not None
                groups.append(await group.read_all())
            return session.codec.name, groups

    version, groups = asyncio.run(run())
    assert version == "moq-lite-05"
    assert groups[1] > groups[0]


def test_webtransport_publisher_and_websocket_subscribers_see_the_same_bytes(hypercorn_ws: Any, certs: Certs) -> None:
    server = hypercorn_ws("examples.relay:moq")

    async def run() -> tuple[dict[int, list[bytes]], list[tuple[int, list[bytes]]], list[tuple[int, list[bytes]]]]:
        payloads: dict[int, list[bytes]] = {}
        async with moqrs(server.url("https"), certs) as publisher, moqrs(server.url("ws"), certs) as subscriber:
            producer = publisher.create_broadcast("live/cam")
            video = producer.publish_track("video")
            producer.announce()
            announced = await asyncio.wait_for(subscriber.announced_broadcast("live/cam"), TIMEOUT)
            track = await announced.subscribe_track("video")
            ours = await dial_websocket(server.url("ws"))
            our_reader = await ours.subscribe("live/cam", "video")

            async def produce() -> None:
                for g in range(200):
                    group = video.append_group()
                    frames = [f"g{g} ".encode() + bytes([g % 256, f]) * 3000 for f in range(3)]
                    payloads[g] = frames
                    for frame in frames:
                        group.write_frame(frame)
                    group.finish()
                    await asyncio.sleep(0.05)

            async def read_moqrs() -> list[tuple[int, list[bytes]]]:
                got = []
                while len(got) < 4:
                    group = await asyncio.wait_for(track.next_group(), TIMEOUT)
                    frames = []
                    while (frame := await asyncio.wait_for(group.read_frame(), TIMEOUT)) is not None:
                        frames.append(bytes(frame.payload))
                    got.append((group.sequence, frames))
                return got

            async def read_ours() -> list[tuple[int, list[bytes]]]:
                got = []
                while len(got) < 4:
                    group = await asyncio.wait_for(our_reader.next_group(), TIMEOUT)
                    assert group is not None
                    got.append((group.sequence, await group.read_all()))
                return got

            pump = asyncio.ensure_future(produce())
            try:
                from_moqrs, from_ours = await asyncio.gather(read_moqrs(), read_ours())
            finally:
                pump.cancel()
                await ours.aclose()
        return payloads, from_moqrs, from_ours

    payloads, from_moqrs, from_ours = asyncio.run(run())
    for got in (from_moqrs, from_ours):
        assert len(got) == 4
        for sequence, frames in got:
            assert frames == payloads[sequence]


def test_moqrs_publishes_over_websocket(hypercorn_ws: Any, certs: Certs) -> None:
    server = hypercorn_ws("examples.relay:moq")

    async def run() -> tuple[dict[int, list[bytes]], list[tuple[int, list[bytes]]]]:
        payloads: dict[int, list[bytes]] = {}
        async with moqrs(server.url("ws"), certs) as publisher, moqrs(server.url("https"), certs) as subscriber:
            producer = publisher.create_broadcast("up/cam")
            video = producer.publish_track("video")
            producer.announce()
            announced = await asyncio.wait_for(subscriber.announced_broadcast("up/cam"), TIMEOUT)
            track = await announced.subscribe_track("video")

            async def produce() -> None:
                for g in range(200):
                    group = video.append_group()
                    payloads[g] = [f"up g{g} f{f}".encode() * 100 for f in range(2)]
                    for frame in payloads[g]:
                        group.write_frame(frame)
                    group.finish()
                    await asyncio.sleep(0.05)

            pump = asyncio.ensure_future(produce())
            got = []
            try:
                while len(got) < 3:
                    group = await asyncio.wait_for(track.next_group(), TIMEOUT)
                    frames = []
                    while (frame := await asyncio.wait_for(group.read_frame(), TIMEOUT)) is not None:
                        frames.append(bytes(frame.payload))
                    got.append((group.sequence, frames))
            finally:
                pump.cancel()
        return payloads, got

    payloads, got = asyncio.run(run())
    for sequence, frames in got:
        assert frames == payloads[sequence]


def _upgrade(port: int, protocols: str, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: zQBi++E91oAaXsoFcY2q4A==\r\n"
                     f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n".encode())
        return sock.recv(4096)


def test_hypercorn_answers_the_upgrade_with_our_choice_or_our_status(hypercorn_ws: Any) -> None:
    server = hypercorn_ws("examples.relay:moq", {"MOQ_AUTH_PUBLIC": "anon"})
    accepted = _upgrade(server.plain, "qmux-02.moq-lite-06, qmux-01.moq-lite-05, qmux-01, webtransport", "/anon")
    assert accepted.startswith(b"HTTP/1.1 101")
    assert b"sec-websocket-protocol: qmux-01.moq-lite-05\r\n" in accepted.lower()
    assert _upgrade(server.plain, "qmux-01.moqt-18", "/anon").startswith(b"HTTP/1.1 400")
    refused = _upgrade(server.plain, "qmux-01.moq-lite-05", "/private")  # no token, outside the public prefix
    assert refused.startswith((b"HTTP/1.1 401", b"HTTP/1.1 403")), refused


def test_https_falls_back_to_websocket_when_quic_does_not_answer(hypercorn_ws: Any, certs: Certs) -> None:
    server = hypercorn_ws("examples.clock:moq")
    url = f"https://127.0.0.1:{server.tls}/"  # the TCP port: no QUIC answers there

    async def run() -> tuple[str, str, type[BaseException] | None, type[BaseException] | None]:
        session = await dial(url, fingerprint=certs.fingerprint, setup_timeout=TIMEOUT, websocket_delay=0.2)
        async with session:
            transport = type(session.connection).__name__
            reader = await session.subscribe("clock", "seconds")
            assert await asyncio.wait_for(reader.next_group(), TIMEOUT) is not None
        async with Client(fingerprint=certs.fingerprint, setup_timeout=TIMEOUT) as client:
            over_ws = await client.dial(server.url("wss"))
            client_transport = type(over_ws.connection).__name__
        failures: list[type[BaseException] | None] = []
        for attempt in (dial(url, fingerprint=certs.fingerprint, setup_timeout=2, websocket_fallback=False),
                        Client(fingerprint=certs.fingerprint, setup_timeout=2, websocket_fallback=False).dial(url)):
            try:
                await attempt
                failures.append(None)
            except (MoQError, OSError) as exc:
                failures.append(type(exc))
        return transport, client_transport, failures[0], failures[1]

    transport, client_transport, *failures = asyncio.run(run())
    assert transport == client_transport == "WebSocketConnection"
    assert None not in failures  # without the fallback, WebTransport alone fails


def test_cli_sub_reads_the_clock_over_ws(hypercorn_ws: Any) -> None:
    server = hypercorn_ws("examples.clock:moq")
    result = subprocess.run(cli("sub", server.url("ws"), "clock", "seconds", "--count", "2"), cwd=ROOT, text=True,
                            capture_output=True, timeout=TIMEOUT * 2)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[1] > lines[0], result.stdout


@pytest.mark.slow
def test_an_idle_moqrs_session_outlives_its_30s_idle_timeout(hypercorn_ws: Any, certs: Certs) -> None:
    """moq-rs drops a WebSocket peer silent for 30 s: we answer its QX_PINGs, so an idle session lives on."""
    server = hypercorn_ws("examples.relay:moq")

    async def run() -> list[str]:
        async with moqrs(server.url("ws"), certs) as client:
            await asyncio.sleep(35)  # no MoQ traffic at all: only pings
            publisher = await dial(server.url("ws"))
            async with publisher:
                broadcast = Broadcast("late/cam")
                track = broadcast.create_track("video")
                publisher.mux.publish("late/cam", broadcast)
                announced = await asyncio.wait_for(client.announced_broadcast("late/cam"), TIMEOUT)
                reader = await announced.subscribe_track("video")
                track.write_frame(b"still here")
                group = await asyncio.wait_for(reader.next_group(), TIMEOUT)
                return [bytes((await asyncio.wait_for(group.read_frame(), TIMEOUT)).payload).decode()]

    assert asyncio.run(run()) == ["still here"]

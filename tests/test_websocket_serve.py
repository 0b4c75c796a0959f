"""MoQ over WebSocket from ``python -m moqt_asgi serve``: its TCP listener shares the UDP port's number."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any

import moq
import pytest

from moqt_asgi.client import dial

from .conftest import ROOT, Certs
from .helpers import cli, free_udp_port, stop_serve

pytestmark = [pytest.mark.cli, pytest.mark.interop]

TIMEOUT = 15


@pytest.fixture
def serve(certs: Certs) -> Iterator[Any]:
    """``start(app, *extra) -> port``: ``serve APP --bind 127.0.0.1:PORT`` with the test certificate."""
    processes: list[subprocess.Popen[str]] = []

    def start(app: str, *extra: str) -> int:
        port = free_udp_port()
        process = subprocess.Popen(
            cli("serve", app, "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert), "--keyfile", str(certs.key),
                *extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving" in line and "ws://" in line, line
        return port

    yield start
    for process in processes:
        stop_serve(process, TIMEOUT)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_moqrs_reads_the_clock_from_serve_over_websocket(serve: Any, certs: Certs, scheme: str) -> None:
    port = serve("examples.clock:moq")

    async def run() -> list[str]:
        async with moq.Client(f"{scheme}://127.0.0.1:{port}/", tls_fingerprints=[certs.fingerprint], reconnect=False,
                              websocket_enabled=True) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), TIMEOUT)
            track = await broadcast.subscribe_track("seconds")
            frames = []
            for _ in range(2):
                group = await asyncio.wait_for(track.next_group(), TIMEOUT)
                frames.append(bytes((await asyncio.wait_for(group.read_frame(), TIMEOUT)).payload).decode())
            return frames

    frames = asyncio.run(run())
    assert frames[1] > frames[0]


def test_https_falls_back_to_wss_when_serve_offers_no_webtransport(serve: Any, certs: Certs) -> None:
    port = serve("examples.clock:moq", "--no-webtransport")

    async def run() -> tuple[str, str]:
        async with await dial(f"https://127.0.0.1:{port}/", fingerprint=certs.fingerprint) as session:
            reader = await session.subscribe("clock", "seconds")
            group = await asyncio.wait_for(reader.next_group(), TIMEOUT)
            assert group is not None
            return type(session.connection).__name__, session.codec.name

    assert asyncio.run(run()) == ("WebSocketConnection", "moq-lite-05")

"""The real ``hypercorn`` command line serving MoQ over WebTransport (the app module imports moqt_asgi)."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import moq
import pytest

from moqt_asgi.webtransport.hypercorn_quic import SHARED_SOCKET_EXIT

from .conftest import ROOT, Certs
from .wt_client import free_udp_port, wait_udp_port, wt_client

pytestmark = [pytest.mark.cli, pytest.mark.interop]

TIMEOUT = 15


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hypercorn_command(app: str, port: int, certs: Certs, *extra: str) -> list[str]:
    executable = shutil.which("hypercorn")
    command = [executable] if executable else [sys.executable, "-m", "hypercorn"]
    return [*command, app, "--quic-bind", f"127.0.0.1:{port}", "--bind", f"127.0.0.1:{free_tcp_port()}",
            "--certfile", str(certs.cert), "--keyfile", str(certs.key), *extra]


@pytest.fixture
def hypercorn(certs: Certs) -> Iterator[Any]:
    """Start ``hypercorn APP --quic-bind ...`` (cwd = repo root); yields ``start(app, env=None) -> port``."""
    processes: list[subprocess.Popen[str]] = []

    def start(app: str, env: dict[str, str] | None = None, *extra: str) -> tuple[int, subprocess.Popen[str]]:
        port = free_udp_port()
        process = subprocess.Popen(hypercorn_command(app, port, certs, *extra), cwd=ROOT, text=True,
                                   env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        processes.append(process)
        asyncio.run(wait_udp_port(port, TIMEOUT, alive=lambda: process.poll() is None))
        return port, process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail("hypercorn did not stop on SIGTERM")


def test_hypercorn_cli_serves_clock_to_moqrs_over_webtransport(hypercorn: Any, certs: Certs) -> None:
    port, process = hypercorn("examples.clock:moq")

    async def subscribe_then_stop_server() -> tuple[list[str], float]:
        async with moq.Client(f"https://127.0.0.1:{port}/", tls_fingerprints=[certs.fingerprint], reconnect=False,
                              websocket_enabled=False) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), TIMEOUT)
            track = await broadcast.subscribe_track("seconds")
            frames = []
            for _ in range(2):
                group = await asyncio.wait_for(track.next_group(), TIMEOUT)
                frames.append(bytes((await asyncio.wait_for(group.read_frame(), TIMEOUT)).payload).decode())
            # a graceful stop with the session still open: DRAIN, then close, without waiting out timeouts
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, TIMEOUT)
            return frames, time.monotonic() - started

    frames, stop_seconds = asyncio.run(subscribe_then_stop_server())
    stamps = [datetime.datetime.fromisoformat(frame) for frame in frames]
    assert all(stamp.utcoffset() == datetime.timedelta(0) for stamp in stamps)
    assert stamps[1] > stamps[0]
    assert process.stdout is not None
    output = process.stdout.read()
    assert process.returncode == 0, output
    assert stop_seconds < 3, stop_seconds
    assert "Traceback" not in output and "Error in ASGI" not in output, output


def test_allow_origins_env_var_with_hypercorn_cli(hypercorn: Any) -> None:
    port, _ = hypercorn("examples.clock:moq", {"MOQ_ALLOW_ORIGINS": "https://good.test, https://also.test"})

    async def statuses() -> list[int]:
        async with wt_client(port) as client:
            out = []
            for origin in (b"https://good.test", b"https://evil.test", b"https://also.test"):
                _, response = await client.connect_session("/", [(b"origin", origin)])
                out.append(response.status)
            return out

    assert asyncio.run(statuses()) == [200, 403, 200]


def test_several_workers_on_one_quic_socket_refuse_to_start(certs: Certs) -> None:
    """``--workers 2`` with ``--quic-bind``: Hypercorn exits with the explanation instead of serving QUIC badly."""
    command = hypercorn_command("examples.clock:moq", free_udp_port(), certs, "--workers", "2")
    try:
        result = subprocess.run(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                timeout=6 * TIMEOUT)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"hypercorn --workers 2 kept running: {error.output}")
    # Each worker exits with SHARED_SOCKET_EXIT and Hypercorn stops. Hypercorn 0.18's run() may still report 0: when
    # every worker has exited before it looks, its second _join_exited() call overwrites the status it collected.
    assert result.returncode in (SHARED_SOCKET_EXIT, 0), result.stdout
    assert "refusing to serve QUIC with --workers 2" in result.stdout, result.stdout
    assert "hypercorn#114" in result.stdout
    assert "Traceback" not in result.stdout, result.stdout


def test_one_worker_is_not_refused(hypercorn: Any) -> None:
    _, process = hypercorn("examples.clock:moq", None, "--workers", "1")
    time.sleep(0.5)
    assert process.poll() is None


def test_hypercorn_cli_relay_moqrs_publishes_and_another_moqrs_subscribes(hypercorn: Any, certs: Certs) -> None:
    port, _ = hypercorn("examples.relay:moq")
    url = f"https://127.0.0.1:{port}/"

    def client() -> moq.Client:
        return moq.Client(url, tls_fingerprints=[certs.fingerprint], reconnect=False, websocket_enabled=False)

    async def run() -> tuple[dict[int, list[bytes]], list[tuple[int, list[bytes]]]]:
        sent: dict[int, list[bytes]] = {}
        got: list[tuple[int, list[bytes]]] = []
        async with client() as publisher, client() as subscriber:
            broadcast = publisher.create_broadcast("wt/cam")
            video = broadcast.publish_track("video")
            broadcast.announce()
            announced = await asyncio.wait_for(subscriber.announced_broadcast("wt/cam"), TIMEOUT)
            track = await announced.subscribe_track("video")

            async def produce() -> None:
                for g in range(100):
                    group = video.append_group()
                    frames = [f"wt g{g} f{f}".encode() + bytes([g % 256]) * 3000 for f in range(3)]
                    sent[g] = frames
                    for frame in frames:
                        group.write_frame(frame)
                    group.finish()
                    await asyncio.sleep(0.05)

            producer = asyncio.ensure_future(produce())
            try:
                for _ in range(3):
                    group = await asyncio.wait_for(track.next_group(), TIMEOUT)
                    frames = []
                    while (frame := await asyncio.wait_for(group.read_frame(), TIMEOUT)) is not None:
                        frames.append(bytes(frame.payload))
                    got.append((group.sequence, frames))
            finally:
                producer.cancel()
        return sent, got

    sent, got = asyncio.run(run())
    assert len(got) == 3
    for sequence, frames in got:
        assert frames == sent[sequence]

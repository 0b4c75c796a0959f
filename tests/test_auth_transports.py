"""Tokens minted by the official ``moq-token`` CLI (npm ``@moq/token``) against ``examples/relay.py``, served by the CLI.

The relay runs as ``python -m moqt_asgi serve examples.relay:moq`` with
``MOQ_AUTH_KEY`` (a public key the CLI generated) and ``MOQ_AUTH_PUBLIC``, as
moq-relay runs with ``--auth-key`` and ``--auth-public``; peers connect over
``moql://``, ``https://`` and ``ws://`` (the relay's TCP listener at the same port number) with
``?jwt=`` in the URL, as moq-relay's clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import moq
import pytest

from moqt_asgi import Broadcast, SetupRejected, TrackMux, dial
from moqt_asgi.engine.session import Session
from moqt_asgi.protocol.errors import ErrorCode, MoQError, SessionClosed, SubscribeError
from moqt_asgi.protocol.scoped_codes import SessionCode

from .conftest import ROOT, Certs, TokenTools
from .helpers import cli, free_udp_port, stop_serve

pytestmark = [pytest.mark.cli, pytest.mark.browser]

TIMEOUT = 15.0


@dataclass
class AuthRelay:
    port: int
    tokens: dict[str, str]
    fingerprint: str

    def url(self, scheme: str, path: str, token: str | None = None) -> str:
        query = f"?jwt={self.tokens[token]}" if token else ""
        return f"{scheme}://127.0.0.1:{self.port}{path}{query}"


@pytest.fixture(scope="module")
def relay(tools: TokenTools, cli_keys: Path, certs: Certs) -> Iterator[AuthRelay]:
    es = str(cli_keys / "es.jwk")
    tokens = {
        "alice": tools.cli("sign", "--key", es, "--root", "demo", "--publish", "alice", "--subscribe", ""),
        "viewer": tools.cli("sign", "--key", es, "--root", "demo", "--subscribe", ""),
        "camera": tools.cli("sign", "--key", es, "--root", "demo", "--publish", "cam"),
        "elsewhere": tools.cli("sign", "--key", es, "--root", "other", "--publish", "", "--subscribe", ""),
        "forged": tools.cli("sign", "--key", str(cli_keys / "ed.jwk"), "--root", "demo", "--subscribe", ""),
    }
    port = free_udp_port()
    env = {**os.environ, "MOQ_AUTH_KEY": str(cli_keys / "es.pub.jwk"), "MOQ_AUTH_PUBLIC": "anon"}
    process = subprocess.Popen(
        cli("serve", "examples.relay:moq", "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert), "--keyfile",
            str(certs.key)),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "serving" in line, line
    try:
        yield AuthRelay(port, tokens, certs.fingerprint)
    finally:
        stop_serve(process, TIMEOUT)


@contextlib.asynccontextmanager
async def publishing(url: str, fingerprint: str, name: str, label: bytes) -> AsyncIterator[Session]:
    """A session at ``url`` publishing broadcast ``name`` (track ``video``), a frame every 20 ms."""
    mux = TrackMux()
    broadcast = Broadcast(name)
    track = broadcast.create_track("video")
    mux.publish(name, broadcast)
    session = await dial(url, mux=mux, fingerprint=fingerprint)

    async def produce() -> None:
        count = 0
        while True:
            track.write_frame(label + b"-%d" % count)
            count += 1
            await asyncio.sleep(0.02)

    pump = asyncio.ensure_future(produce())
    try:
        yield session
    finally:
        pump.cancel()
        await session.aclose()


async def first_frame(session: Session, broadcast: str) -> bytes:
    announced = await asyncio.wait_for(session.announced(""), TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        while broadcast not in announced.active:
            await announced.next()
    announced.close()
    track = await asyncio.wait_for(session.subscribe(broadcast, "video"), TIMEOUT)
    group = await asyncio.wait_for(track.next_group(), TIMEOUT)
    assert group is not None
    frame = await asyncio.wait_for(group.read_frame(), TIMEOUT)
    assert frame is not None
    return frame


@pytest.mark.parametrize(("publish_scheme", "read_scheme"),
                         [("moql", "https"), ("https", "moql"), ("ws", "moql"), ("https", "ws")])
async def test_cli_tokens_grant_publish_and_read(relay: AuthRelay, publish_scheme: str, read_scheme: str) -> None:
    async with publishing(relay.url(publish_scheme, "/demo", "alice"), relay.fingerprint, "alice", b"alice"):
        viewer = await dial(relay.url(read_scheme, "/demo", "viewer"), fingerprint=relay.fingerprint)
        async with viewer:
            assert (await first_frame(viewer, "alice")).startswith(b"alice-")


async def test_a_reader_cannot_publish_over_the_owner(relay: AuthRelay) -> None:
    async with publishing(relay.url("moql", "/demo", "alice"), relay.fingerprint, "alice", b"alice"):
        async with publishing(relay.url("https", "/demo", "viewer"), relay.fingerprint, "alice", b"impostor"):
            await asyncio.sleep(0.3)
            viewer = await dial(relay.url("moql", "/demo", "viewer"), fingerprint=relay.fingerprint)
            async with viewer:
                assert (await first_frame(viewer, "alice")).startswith(b"alice-")
                # ".." is a literal path segment: it names nothing outside the root
                with pytest.raises(SubscribeError) as refused:
                    await asyncio.wait_for(viewer.subscribe("../other/alice", "video"), TIMEOUT)
                assert refused.value.code == ErrorCode.NOT_FOUND


@pytest.mark.parametrize("scheme", ["moql", "https", "ws"])
@pytest.mark.parametrize(("path", "token", "status"), [
    ("/demo", None, 401),        # no token and not the public prefix
    ("/demo", "forged", 401),    # signed by a key the relay does not trust
    ("/demo", "elsewhere", 403), # a valid token for another root
])
async def test_refused_without_a_valid_grant(relay: AuthRelay, scheme: str, path: str, token: str | None,
                                             status: int) -> None:
    with pytest.raises((SetupRejected, SessionClosed, MoQError)) as refused:
        session = await dial(relay.url(scheme, path, token), fingerprint=relay.fingerprint, setup_timeout=5)
        async with session:  # lite-05+ on native QUIC: the refusal closes the session right after SETUP
            await asyncio.wait_for(session.wait_closed(), TIMEOUT)
            raise SessionClosed(session.close_reason.code if session.close_reason else 0)
    code = getattr(refused.value, "code", None)
    if scheme in ("https", "ws"):
        assert code == status  # refused in HTTP, before any MoQ byte (the CONNECT, or the WebSocket upgrade)
    else:
        assert code in (ErrorCode.UNAUTHORIZED, SessionCode.UNAUTHORIZED)


async def test_the_public_prefix_needs_no_token(relay: AuthRelay) -> None:
    async with publishing(relay.url("https", "/anon"), relay.fingerprint, "cam", b"anon"):
        viewer = await dial(relay.url("moql", "/anon"), fingerprint=relay.fingerprint)
        async with viewer:
            assert (await first_frame(viewer, "cam")).startswith(b"anon-")


@pytest.mark.interop
async def test_moqrs_reads_with_a_cli_token(relay: AuthRelay) -> None:
    async with publishing(relay.url("moql", "/demo", "alice"), relay.fingerprint, "alice", b"alice"):
        url = relay.url("https", "/demo", "viewer")
        async with moq.Client(url, tls_fingerprints=[relay.fingerprint], reconnect=False,
                              websocket_enabled=False) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("alice"), TIMEOUT)
            track = await broadcast.subscribe_track("video")
            group = await asyncio.wait_for(track.next_group(), TIMEOUT)
            frame = await asyncio.wait_for(group.read_frame(), TIMEOUT)
            assert frame.payload.startswith(b"alice-")


@pytest.mark.interop
async def test_moqrs_publishes_with_a_publish_only_cli_token(relay: AuthRelay) -> None:
    """moq-rs asks for announcements too; with nothing to read it gets an empty set and goes on publishing.

    A refusal of that request ended the moq-rs publisher's whole session.
    """
    url = relay.url("moql", "/demo", "camera")
    async with moq.Client(url, tls_fingerprints=[relay.fingerprint], reconnect=False,
                          websocket_enabled=False) as client:
        broadcast = client.create_broadcast("cam")
        track = broadcast.publish_track("video")
        broadcast.announce()
        viewer = await dial(relay.url("moql", "/demo", "viewer"), fingerprint=relay.fingerprint)
        async with viewer:
            reading = asyncio.ensure_future(first_frame(viewer, "cam"))
            for index in range(int(TIMEOUT * 10)):
                group = track.append_group()
                group.write_frame(f"cam-{index}".encode())
                group.finish()
                await asyncio.wait({reading}, timeout=0.1)
                if reading.done():
                    break
            assert (await reading).startswith(b"cam-")

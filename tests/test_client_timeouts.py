"""The client's setup timeout covers the whole start: no answer at all, or a handshake and then silence."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.events import QuicEvent

from moqt_asgi import Client, QuicSettings
from moqt_asgi.protocol.errors import MoQError
from moqt_asgi.protocol.versions import ALL_VERSIONS, native_alpns

from .conftest import Certs
from .test_lifecycle import no_leaks

pytestmark = pytest.mark.slow

SETUP_TIMEOUT = 0.5


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A bound UDP port that reads nothing and answers nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


class Silent(QuicConnectionProtocol):
    """Completes the QUIC handshake, then ignores everything (no streams opened, none answered)."""

    def quic_event_received(self, event: QuicEvent) -> None:
        pass


@contextlib.asynccontextmanager
async def silent_server(certs: Certs) -> AsyncIterator[int]:
    configuration = QuicSettings().configuration(is_client=False, alpn=[*native_alpns(ALL_VERSIONS), *H3_ALPN])
    configuration.load_cert_chain(str(certs.cert), str(certs.key))
    server = await serve("127.0.0.1", 0, configuration=configuration, create_protocol=Silent)
    try:
        assert server._transport is not None
        yield int(server._transport.get_extra_info("sockname")[1])
    finally:
        server.close()
        await asyncio.sleep(0)


async def expect_timeout(client: Client, url: str) -> None:
    started = time.monotonic()
    with pytest.raises(MoQError, match=r"within 0\.5s"):
        await client.dial(url)
    assert time.monotonic() - started < SETUP_TIMEOUT + 2.0


@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_no_answer_at_all(certs: Certs, scheme: str) -> None:
    async with no_leaks():
        with black_hole() as port:
            client = Client(fingerprint=certs.fingerprint, setup_timeout=SETUP_TIMEOUT)
            await expect_timeout(client, f"{scheme}://127.0.0.1:{port}/")
            await client.close()


@pytest.mark.parametrize("version", [v for v in ALL_VERSIONS if v.uni_setup or v.bidi_setup], ids=lambda v: v.name)
async def test_handshake_then_no_setup(certs: Certs, version: object) -> None:
    """The server completes QUIC but never answers the SETUP (lite-01/02/05/06, gomoqt)."""
    async with no_leaks(), silent_server(certs) as port:
        client = Client(fingerprint=certs.fingerprint, setup_timeout=SETUP_TIMEOUT, versions=(version,))  # type: ignore[arg-type]
        await expect_timeout(client, f"moql://127.0.0.1:{port}/")
        await client.close()


async def test_webtransport_connect_never_answered(certs: Certs) -> None:
    """HTTP/3 handshake done, then no SETTINGS and no answer to the CONNECT."""
    async with no_leaks(), silent_server(certs) as port:
        client = Client(fingerprint=certs.fingerprint, setup_timeout=SETUP_TIMEOUT)
        await expect_timeout(client, f"https://127.0.0.1:{port}/")
        await client.close()

"""0-RTT session start over real UDP: the SETUP travels in early data and the server answers at once.

A :class:`~moqt_asgi.testing.netsim.UdpRelay` between client and server records the
QUIC packet types on the wire, so these tests see the 0-RTT packets rather
than trusting the endpoints' own flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from moqt_asgi import ClientTicketStore, QuicSettings, Session, SessionTicketStore, SetupRequest, dial
from moqt_asgi.endpoints.certs import write_certificate
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.protocol.errors import MoQError
from moqt_asgi.protocol.versions import (
    ALL_VERSIONS,
    GOMOQT_DIALECT,
    LITE_01_VERSION,
    LITE_02_VERSION,
    LITE_03_VERSION,
    LITE_04_VERSION,
    LITE_05_VERSION,
    LITE_06_VERSION,
    Version,
)
from moqt_asgi.testing.netsim import UdpRelay, packet_types
from moqt_asgi.transport.quic import QuicTransport

from .conftest import Certs
from .helpers import read_tick, tick_app

pytestmark = pytest.mark.slow

ZERO_RTT = QuicSettings(allow_0rtt=True)
SETUP_VERSIONS = [LITE_06_VERSION, LITE_05_VERSION, LITE_02_VERSION, LITE_01_VERSION, GOMOQT_DIALECT]
"""Versions whose client writes a SETUP before anything else: that SETUP is the early data."""


@contextlib.asynccontextmanager
async def server(certfile: Path, keyfile: Path, versions: tuple[Version, ...], *, port: int = 0,
                 tickets: SessionTicketStore | None = None) -> AsyncIterator[tuple[QuicServer, list[Session]]]:
    quic = QuicServer(tick_app(versions), host="127.0.0.1", port=port, certfile=str(certfile), keyfile=str(keyfile),
                      quic=ZERO_RTT, webtransport=False, tickets=tickets)
    accepted: list[Session] = []
    quic.on_session = accepted.append
    await quic.start()
    try:
        yield quic, accepted
    finally:
        await quic.close()


def transport_of(session: Session) -> QuicTransport:
    assert isinstance(session.connection, QuicTransport)
    return session.connection


def test_packet_types_reads_coalesced_long_headers() -> None:
    cid = bytes(8)
    initial = bytes([0xC0]) + b"\x00\x00\x00\x01" + b"\x08" + cid + b"\x08" + cid + b"\x00" + b"\x02" + b"ab"
    zero_rtt = bytes([0xD0]) + b"\x00\x00\x00\x01" + b"\x08" + cid + b"\x00" + b"\x41\x00" + bytes(256)
    assert packet_types(initial + zero_rtt) == ["initial", "0-rtt"]
    assert packet_types(initial + bytes(20)) == ["initial"]  # padding after the packet
    assert packet_types(bytes([0x41]) + bytes(30)) == ["1-rtt"]
    assert packet_types(initial[:7]) == ["unknown"]


@pytest.mark.parametrize("version", SETUP_VERSIONS, ids=lambda v: v.name)
async def test_setup_travels_in_0rtt_and_the_server_answers_before_the_handshake(
        certs: Certs, version: Version, caplog: pytest.LogCaptureFixture) -> None:
    store = ClientTicketStore()
    async with server(certs.cert, certs.key, (version,)) as (quic, accepted), \
            UdpRelay(quic.address) as relay:
        url = f"moql://127.0.0.1:{relay.port}/"
        first = await dial(url, fingerprint=certs.fingerprint, tickets=store, quic=ZERO_RTT, versions=(version,))
        async with first:
            assert await read_tick(first) == b"tick"
        assert "0-rtt" not in relay.packet_types("client")
        assert not transport_of(accepted[0]).started_early

        relay.clear()
        with caplog.at_level(logging.INFO, logger="moqt_asgi"):
            second = await dial(url, fingerprint=certs.fingerprint, tickets=store, quic=ZERO_RTT, versions=(version,))
        async with second:
            client = transport_of(second)
            assert (client.resumed, client.early_data_accepted, client.started_early) == (True, True, True)
            assert "0-rtt" in relay.packet_types("client")
            # the client's first datagram carries its ClientHello and the 0-RTT SETUP together
            assert relay.log[0].direction == "client" and relay.log[0].packet_types[:2] == ["initial", "0-rtt"]
            # the server started the session on the early data, before the client's Finished arrived
            assert transport_of(accepted[1]).started_early
            assert second.version_name == version.name
            assert await read_tick(second) == b"tick"
        assert "(resumed, 0-RTT accepted)" in caplog.text


@pytest.mark.parametrize("version", [LITE_04_VERSION, LITE_03_VERSION], ids=lambda v: v.name)
async def test_versions_without_setup_resume_with_nothing_to_send_early(certs: Certs, version: Version) -> None:
    """lite-03/04 start without a SETUP: early data is permitted, but the client has nothing to put in it."""
    store = ClientTicketStore()
    async with server(certs.cert, certs.key, (version,)) as (quic, _), UdpRelay(quic.address) as relay:
        url = f"moql://127.0.0.1:{relay.port}/"
        async with await dial(url, fingerprint=certs.fingerprint, tickets=store, quic=ZERO_RTT,
                              versions=(version,)) as first:
            assert await read_tick(first) == b"tick"  # by then the ticket has arrived
        relay.clear()
        async with await dial(url, fingerprint=certs.fingerprint, tickets=store, quic=ZERO_RTT,
                              versions=(version,)) as session:
            client = transport_of(session)
            assert (client.resumed, client.early_data_accepted) == (True, True)
            assert "0-rtt" not in relay.packet_types("client")
            assert await read_tick(session) == b"tick"


async def ticket_then_stop(stack: contextlib.AsyncExitStack, certs: Certs, store: ClientTicketStore,
                           versions: tuple[Version, ...]) -> tuple[int, UdpRelay]:
    """Serve, get a 0-RTT ticket through a relay (which stays, on ``stack``), stop the server: ``(port, relay)``."""
    quic, _ = await stack.enter_async_context(server(certs.cert, certs.key, versions))
    port = quic.address[1]
    relay = await stack.enter_async_context(UdpRelay(("127.0.0.1", port)))
    async with await dial(f"moql://127.0.0.1:{relay.port}/", fingerprint=certs.fingerprint, tickets=store,
                          quic=ZERO_RTT) as first:
        assert await read_tick(first) == b"tick"
    await quic.close()
    return port, relay


async def test_refused_early_data_is_sent_again_after_the_handshake(certs: Certs) -> None:
    """A server that does not know the ticket (a restart) refuses the 0-RTT SETUP; it still arrives."""
    store = ClientTicketStore()
    versions = (LITE_06_VERSION,)
    async with contextlib.AsyncExitStack() as stack:
        port, relay = await ticket_then_stop(stack, certs, store, versions)
        url = f"moql://127.0.0.1:{relay.port}/"
        async with server(certs.cert, certs.key, versions, port=port) as (_, accepted):
            relay.clear()
            session = await dial(url, fingerprint=certs.fingerprint, tickets=store, quic=ZERO_RTT)
            async with session:
                client = transport_of(session)
                assert (client.resumed, client.early_data_accepted, client.started_early) == (False, False, True)
                assert "0-rtt" in relay.packet_types("client")
                assert not transport_of(accepted[0]).started_early
                assert await read_tick(session) == b"tick"


async def test_changed_protocol_redials_without_the_ticket(certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    """The ticket came from a lite-06 connection; the server now speaks only lite-05: dial again, in full."""
    store = ClientTicketStore()
    tickets = SessionTicketStore()
    both = (LITE_06_VERSION, LITE_05_VERSION)
    async with server(certs.cert, certs.key, (LITE_06_VERSION,), tickets=tickets) as (quic, _):
        port = quic.address[1]
        async with await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint, tickets=store,
                              quic=ZERO_RTT, versions=both) as session:
            assert session.version_name == LITE_06_VERSION.name
    async with server(certs.cert, certs.key, (LITE_05_VERSION,), port=port, tickets=tickets) as (quic, _):
        with caplog.at_level(logging.INFO, logger="moqt_asgi"):
            session = await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint, tickets=store,
                                 quic=ZERO_RTT, versions=both)
        async with session:
            assert session.version_name == LITE_05_VERSION.name
            assert not transport_of(session).resumed  # the second attempt offered no ticket
            assert await read_tick(session) == b"tick"
        assert "dialing again without the ticket" in caplog.text


async def test_impostor_never_receives_the_early_setup(certs: Certs, tmp_path: Path) -> None:
    """Another certificate on the same port: the pinned fingerprint fails before the SETUP is sent again."""
    store = ClientTicketStore()
    versions = (LITE_06_VERSION,)
    other_cert, other_key, _ = write_certificate(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        port, relay = await ticket_then_stop(stack, certs, store, versions)
        url = f"moql://127.0.0.1:{relay.port}/"
        async with server(other_cert, other_key, versions, port=port) as (impostor, accepted):
            relay.clear()
            with pytest.raises(MoQError, match="fingerprint"):
                await dial(url, fingerprint=certs.fingerprint, tickets=store, quic=ZERO_RTT)
            assert "0-rtt" in relay.packet_types("client")  # it was offered, and refused
            await asyncio.sleep(0.3)  # time for anything the client might still send
            assert accepted == []
            assert impostor.connection_count == 0
        assert ("127.0.0.1", relay.port) not in store  # no ticket from the impostor was kept


def test_every_version_is_covered() -> None:
    assert set(SETUP_VERSIONS) | {LITE_03_VERSION, LITE_04_VERSION} == set(ALL_VERSIONS)


async def test_the_setup_handler_is_told_when_the_setup_came_in_early_data(certs: Certs) -> None:
    """A 0-RTT setup can be replayed: the handler sees ``request.early_data`` and can refuse what is unsafe twice."""
    store = ClientTicketStore()
    app = tick_app((LITE_06_VERSION,))
    seen: list[bool] = []

    @app.route("/{rest:path}")
    async def record(request: SetupRequest) -> None:
        seen.append(request.early_data)
        await request.accept()

    quic = QuicServer(app, host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key), quic=ZERO_RTT,
                      webtransport=False)
    async with quic:
        url = f"moql://127.0.0.1:{quic.address[1]}/"
        for _ in range(2):
            session = await dial(url, fingerprint=certs.fingerprint, tickets=store, quic=ZERO_RTT,
                                 versions=(LITE_06_VERSION,))
            async with session:
                assert await read_tick(session) == b"tick"
    assert seen == [False, True]

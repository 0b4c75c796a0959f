"""TLS session resumption and 0-RTT over real UDP on 127.0.0.1, native QUIC and WebTransport."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator

import pytest
from aioquic.tls import CipherSuite, SessionTicket

from moqt_asgi import ClientTicketStore, QuicSettings, Session, SessionTicketStore, dial
from moqt_asgi.endpoints.dial_webtransport import WebTransportClientProtocol
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.endpoints.settings import trust_label
from moqt_asgi.protocol.errors import MoQError
from moqt_asgi.transport.quic import QuicTransport

from .conftest import Certs
from .helpers import WAIT, tick_app

pytestmark = pytest.mark.slow



@contextlib.asynccontextmanager
async def server(certs: Certs, *, allow_0rtt: bool = False, tickets: SessionTicketStore | None = None
                 ) -> AsyncIterator[QuicServer]:
    app = tick_app()
    await app.startup()
    quic = QuicServer(app, host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                      quic=QuicSettings(allow_0rtt=allow_0rtt), tickets=tickets)
    await quic.start()
    try:
        yield quic
    finally:
        await quic.close()
        await app.shutdown()


def pinned(certs: Certs) -> str:
    return trust_label(certs.fingerprint, False, None)


def resumption(session: Session) -> tuple[bool, bool]:
    """``(resumed, early_data_accepted)`` of the connection under ``session``."""
    connection = session.connection
    if isinstance(connection, QuicTransport):
        return connection.resumed, connection.early_data_accepted
    host = connection.host  # type: ignore[attr-defined]
    assert isinstance(host, WebTransportClientProtocol)
    return host.resumed, host.early_data_accepted


async def dial_and_read(url: str, certs: Certs, store: ClientTicketStore, *, allow_0rtt: bool = False
                        ) -> tuple[bool, bool]:
    """Dial, read one frame of the clock track, close; returns what :func:`resumption` says."""
    session = await dial(url, fingerprint=certs.fingerprint, tickets=store, quic=QuicSettings(allow_0rtt=allow_0rtt))
    async with session:
        track = await session.subscribe("clock", "seconds")
        group = await asyncio.wait_for(track.next_group(), WAIT)
        assert group is not None
        assert await asyncio.wait_for(group.read_frame(), WAIT) == b"tick"
        result = resumption(session)
    return result


@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_second_dial_resumes(certs: Certs, scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    store = ClientTicketStore()
    async with server(certs) as quic:
        host, port = quic.address
        url = f"{scheme}://{host}:{port}/"
        assert await dial_and_read(url, certs, store) == (False, False)
        assert (host, port) in store  # the server's ticket arrived during the first session
        with caplog.at_level(logging.INFO, logger="moqt_asgi"):
            assert await dial_and_read(url, certs, store) == (True, False)
        assert "(resumed)" in caplog.text
        assert (host, port) in store  # and a fresh one for the third
        assert await dial_and_read(url, certs, store) == (True, False)


@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_0rtt_accepted_when_both_sides_allow_it(certs: Certs, scheme: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    store = ClientTicketStore()
    async with server(certs, allow_0rtt=True) as quic:
        host, port = quic.address
        url = f"{scheme}://{host}:{port}/"
        assert await dial_and_read(url, certs, store, allow_0rtt=True) == (False, False)
        with caplog.at_level(logging.INFO, logger="moqt_asgi"):
            assert await dial_and_read(url, certs, store, allow_0rtt=True) == (True, True)
        assert "(resumed, 0-RTT accepted)" in caplog.text
        # a client that does not allow 0-RTT still resumes, without early data
        assert await dial_and_read(url, certs, store, allow_0rtt=False) == (True, False)


async def test_server_without_0rtt_resumes_without_early_data(certs: Certs) -> None:
    store = ClientTicketStore()
    async with server(certs, allow_0rtt=False) as quic:
        host, port = quic.address
        url = f"moql://{host}:{port}/"
        assert await dial_and_read(url, certs, store, allow_0rtt=True) == (False, False)
        ticket = store.take(host, port, trust=pinned(certs))
        assert ticket is not None and ticket.max_early_data_size is None  # the ticket does not permit it
        store.put(host, port, ticket, pinned(certs))
        assert await dial_and_read(url, certs, store, allow_0rtt=True) == (True, False)


async def test_server_refuses_early_data_tickets_when_0rtt_is_off(certs: Certs) -> None:
    """A ticket issued with 0-RTT (by a server sharing the store) is not resumed by a server without it."""
    shared = SessionTicketStore()
    store = ClientTicketStore()
    async with server(certs, allow_0rtt=True, tickets=shared) as first:
        host, port = first.address
        assert await dial_and_read(f"moql://{host}:{port}/", certs, store, allow_0rtt=True) == (False, False)
    ticket = store.take(host, port, trust=pinned(certs))
    assert ticket is not None and ticket.max_early_data_size is not None
    async with server(certs, allow_0rtt=False, tickets=shared) as second:
        host2, port2 = second.address
        store.put(host2, port2, ticket, pinned(certs))
        assert await dial_and_read(f"moql://{host2}:{port2}/", certs, store, allow_0rtt=True) == (False, False)


async def test_shared_server_store_resumes_across_servers(certs: Certs) -> None:
    shared = SessionTicketStore()
    store = ClientTicketStore()
    async with server(certs, tickets=shared) as first, server(certs, tickets=shared) as second:
        host, port = first.address
        _, port2 = second.address
        assert await dial_and_read(f"moql://{host}:{port}/", certs, store) == (False, False)
        ticket = store.take(host, port, trust=pinned(certs))
        assert ticket is not None
        store.put(host, port2, ticket, pinned(certs))
        assert await dial_and_read(f"moql://{host}:{port2}/", certs, store) == (True, False)


async def test_other_store_or_restarted_server_does_not_resume(certs: Certs) -> None:
    store = ClientTicketStore()
    async with server(certs) as quic:
        host, port = quic.address
        url = f"moql://{host}:{port}/"
        assert await dial_and_read(url, certs, store) == (False, False)
        assert await dial_and_read(url, certs, ClientTicketStore()) == (False, False)  # a different store
        ticket = store.take(host, port, trust=pinned(certs))
        assert ticket is not None
    async with server(certs, allow_0rtt=True) as restarted:  # new process state, new ticket store
        host, port = restarted.address
        store.put(host, port, ticket, pinned(certs))
        assert await dial_and_read(f"moql://{host}:{port}/", certs, store, allow_0rtt=True) == (False, False)
        assert await dial_and_read(f"https://{host}:{port}/", certs, store, allow_0rtt=True) == (True, True)


async def test_tickets_follow_the_certificate_check(certs: Certs) -> None:
    """No ticket from a server that failed the pin; a ticket obtained under one pin is not offered under another."""
    store = ClientTicketStore()
    async with server(certs) as quic:
        host, port = quic.address
        url = f"moql://{host}:{port}/"
        with pytest.raises(MoQError, match="fingerprint"):
            await dial(url, fingerprint="00" * 32, tickets=store)
        await asyncio.sleep(0.1)
        assert (host, port) not in store
        assert await dial_and_read(url, certs, store) == (False, False)
        session = await dial(url, insecure=True, tickets=store)  # verifies differently: full handshake
        async with session:
            assert resumption(session) == (False, False)


async def test_dial_without_store_gets_no_ticket(certs: Certs) -> None:
    async with server(certs) as quic:
        host, port = quic.address
        session = await dial(f"moql://{host}:{port}/", fingerprint=certs.fingerprint)
        async with session:
            assert resumption(session) == (False, False)
        assert len(quic.tickets) == 0  # the client did not ask for tickets, so none were issued


def make_ticket(label: bytes, *, server_name: str = "localhost", valid_for: float = 3600.0) -> SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    return SessionTicket(age_add=0, cipher_suite=CipherSuite.AES_128_GCM_SHA256, not_valid_after=now
                         + datetime.timedelta(seconds=valid_for), not_valid_before=now - datetime.timedelta(seconds=1),
                         resumption_secret=b"s" * 32, server_name=server_name, ticket=label, max_early_data_size=0xFFFFFFFF)


def test_server_store_is_bounded_single_use_and_expires() -> None:
    now = [0.0]
    store = SessionTicketStore(max_size=2, lifetime=10.0, clock=lambda: now[0])
    for label in (b"a", b"b", b"c"):
        store.add(make_ticket(label))
    assert len(store) == 2
    assert store.pop(b"a") is None  # the oldest was dropped
    assert store.pop(b"b") is not None
    assert store.pop(b"b") is None  # single use
    now[0] = 11.0
    assert store.pop(b"c") is None  # expired
    store.add(make_ticket(b"d", valid_for=-1.0))  # already past its own not_valid_after
    store.add(make_ticket(b"e"))
    assert store.expire() == 1
    assert len(store) == 1
    with pytest.raises(ValueError):
        SessionTicketStore(max_size=0)


def test_client_store_is_bounded_and_keyed_by_name_and_port() -> None:
    store = ClientTicketStore(max_size=2)
    store.put("a", 1, make_ticket(b"1"))
    store.put("a", 2, make_ticket(b"2"))
    store.put("b", 1, make_ticket(b"3"))
    assert len(store) == 2 and ("a", 1) not in store
    taken = store.take("a", 2, early_data=False)
    assert taken is not None and taken.ticket == b"2" and taken.max_early_data_size is None
    assert store.take("a", 2) is None  # taken once
    store.put("c", 1, make_ticket(b"4", valid_for=-1.0))
    assert store.take("c", 1) is None  # expired tickets are not offered

"""Connection caps, Retry and the handshake deadline, before any connection state exists.

Also: at most ``max_webtransport_sessions`` sessions per HTTP/3 connection,
and under Hypercorn a failing QUIC timer closes its one connection, not the
worker's listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from moqt_asgi import MoQ, QuicSettings, Session, dial
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.protocol.errors import MoQError
from moqt_asgi.testing.netsim import UdpRelay, packet_types
from moqt_asgi.transport.admission import Admission, AdmissionPolicy
from moqt_asgi.webtransport import hypercorn as hypercorn_patch
from moqt_asgi.webtransport.hypercorn_quic import WebTransportQuicConnection

from .conftest import Certs
from .helpers import read_tick, tick_app
from .wt_client import hypercorn_server, wt_client

pytestmark = pytest.mark.slow

WAIT = 10.0
FAST = 4.0
"""A refused client learns it well before its 10 s setup timeout."""


@contextlib.asynccontextmanager
async def moq_server(certs: Certs, quic: QuicSettings, **kwargs: Any) -> AsyncIterator[QuicServer]:
    app = tick_app()
    server = QuicServer(app, host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key), quic=quic,
                        **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def live_connections(server: QuicServer) -> int:
    """Connections aioquic's server knows (distinct protocols in its connection-id map)."""
    assert server._server is not None
    return len(set(server._server._protocols.values()))


async def wait_until(condition: Callable[[], Any], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling transport state the test cannot subscribe to
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(("total", "per_address", "admitted"), [(10, None, 10), (None, 3, 3)])
async def test_connection_cap_refuses_quickly(certs: Certs, total: int | None, per_address: int | None,
                                              admitted: int) -> None:
    quic = QuicSettings(max_connections=total, max_connections_per_address=per_address, retry=False)
    async with moq_server(certs, quic) as server, contextlib.AsyncExitStack() as stack:
        url = f"moql://127.0.0.1:{server.address[1]}/"
        for _ in range(admitted):
            session = await dial(url, fingerprint=certs.fingerprint)
            await stack.enter_async_context(session)
        assert server.admission.connections == admitted == live_connections(server)
        started = time.monotonic()
        with pytest.raises(MoQError, match=r"could not connect.*too many connections"):
            await dial(url, fingerprint=certs.fingerprint)
        assert time.monotonic() - started < FAST
        assert server.admission.connections == admitted == live_connections(server)  # nothing made for it
        assert server.admission.refused >= 1
    # once some leave, new ones are admitted again
    async with moq_server(certs, QuicSettings(max_connections=1, retry=False)) as server:
        url = f"moql://127.0.0.1:{server.address[1]}/"
        first = await dial(url, fingerprint=certs.fingerprint)
        await first.aclose()
        await wait_until(lambda: server.admission.connections == 0)
        async with await dial(url, fingerprint=certs.fingerprint) as second:
            assert await read_tick(second) == b"tick"


async def test_retry_is_sent(certs: Certs) -> None:
    async with moq_server(certs, QuicSettings(retry=True)) as server, UdpRelay(server.address) as relay:
        session: Session = await dial(f"moql://127.0.0.1:{relay.port}/", fingerprint=certs.fingerprint)
        async with session:
            assert await read_tick(session) == b"tick"
        assert "retry" in relay.packet_types("server")
        assert server.admission.retries == 1


def initial_datagram(port: int) -> bytes:
    """The first datagram of a fresh aioquic client: an Initial of 1200 bytes (what a spoofer replays)."""
    client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["moql"]))
    client.connect(("127.0.0.1", port), now=time.monotonic())
    datagram = client.datagrams_to_send(now=time.monotonic())[0][0]
    assert packet_types(datagram)[0] == "initial" and len(datagram) >= 1200
    return datagram


async def flood(port: int, count: int, settle: float = 0.5) -> list[list[str]]:
    """``count`` Initials from as many source ports; the packet types of what came back to each."""
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sockets.append(sock)
    try:
        for sock in sockets:
            sock.sendto(initial_datagram(port), ("127.0.0.1", port))
        await asyncio.sleep(settle)
        answers = []
        for sock in sockets:
            kinds: list[str] = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    kinds += packet_types(sock.recv(65536))
            answers.append(kinds)
        return answers
    finally:
        for sock in sockets:
            sock.close()


async def test_spoofed_initials_create_no_state_with_retry(certs: Certs) -> None:
    quic = QuicSettings(retry=True, max_connections_per_address=None)
    async with moq_server(certs, quic) as server:
        answers = await flood(server.address[1], 60)
        assert all(kinds == ["retry"] for kinds in answers)
        assert server.admission.connections == 0 == live_connections(server)


async def test_spoofed_initials_stop_at_the_cap_without_retry(certs: Certs) -> None:
    quic = QuicSettings(retry=False, max_connections=10, max_connections_per_address=None)
    async with moq_server(certs, quic) as server:
        answers = await flood(server.address[1], 40)
        assert server.admission.connections == 10 == live_connections(server)
        assert server.admission.refused == 30
        refused = [kinds for kinds in answers if kinds == ["initial"]]  # a lone Initial: the CONNECTION_CLOSE
        assert len(refused) == 30


async def test_auto_retry_under_pressure(certs: Certs) -> None:
    quic = QuicSettings(retry="auto", retry_threshold=3, max_connections_per_address=None)
    async with moq_server(certs, quic) as server:
        port = server.address[1]
        async with UdpRelay(server.address) as relay:
            async with await dial(f"moql://127.0.0.1:{relay.port}/", fingerprint=certs.fingerprint):
                pass
            assert "retry" not in relay.packet_types("server")  # calm: no extra round trip
        await flood(port, 3)  # three handshakes that never finish
        assert server.admission.half_open == 3
        async with UdpRelay(server.address) as relay:
            async with await dial(f"moql://127.0.0.1:{relay.port}/", fingerprint=certs.fingerprint) as session:
                assert await read_tick(session) == b"tick"
            assert "retry" in relay.packet_types("server")


async def test_handshake_deadline_frees_half_open_connections(certs: Certs) -> None:
    quic = QuicSettings(retry=False, handshake_timeout=1.0, max_connections_per_address=None)
    async with moq_server(certs, quic) as server:
        await flood(server.address[1], 5, settle=0.2)
        assert server.admission.half_open == 5
        started = time.monotonic()
        await wait_until(lambda: server.admission.connections == 0 and live_connections(server) == 0, timeout=5)
        assert time.monotonic() - started < 5  # the idle timeout (30 s) would have kept them


def test_admission_policy_checks_its_values() -> None:
    with pytest.raises(ValueError, match="retry"):
        AdmissionPolicy(retry="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_connections"):
        QuicSettings(max_connections=0)
    admission = Admission(AdmissionPolicy(max_connections=4, retry="auto", retry_threshold=100))
    assert not admission.under_pressure()


def test_settings_from_environment() -> None:
    settings = QuicSettings.from_environment({"MOQT_MAX_CONNECTIONS": "500", "MOQT_RETRY": "true",
                                              "MOQT_MAX_CONNECTIONS_PER_ADDRESS": "none",
                                              "MOQT_HANDSHAKE_TIMEOUT": "2.5", "MOQT_STREAM_RECEIVE_WINDOW": "262144"})
    assert (settings.max_connections, settings.retry, settings.max_connections_per_address) == (500, True, None)
    assert settings.handshake_timeout == 2.5 and settings.stream_receive_window == 262144
    with pytest.raises(ValueError, match="MOQT_MAX_CONNECTIONS"):
        QuicSettings.from_environment({"MOQT_MAX_CONNECTIONS": "many"})


# -- WebTransport sessions per connection
async def holding_app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
    """Accepts every WebTransport session and keeps it until the peer leaves."""
    assert scope["type"] == "webtransport"
    await receive()
    await send({"type": "webtransport.accept"})
    while (await receive())["type"] != "webtransport.disconnect":
        pass


@contextlib.asynccontextmanager
async def serve_h3(certs: Certs, quic: QuicSettings) -> AsyncIterator[int]:
    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key), quic=quic,
                        asgi_app=holding_app)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server.address[1]
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def hypercorn_h3(certs: Certs, quic: QuicSettings) -> AsyncIterator[int]:
    hypercorn_patch.configure(quic)
    try:
        async with hypercorn_server(holding_app, str(certs.cert), str(certs.key)) as port:
            yield port
    finally:
        hypercorn_patch.configure(None)


H3_SERVERS = {"serve": serve_h3, "hypercorn": hypercorn_h3}


@pytest.mark.parametrize("where", H3_SERVERS)
async def test_webtransport_sessions_per_connection_are_capped(certs: Certs, where: str) -> None:
    async with H3_SERVERS[where](certs, QuicSettings(max_webtransport_sessions=2)) as port, wt_client(port) as client:
        statuses = [(await client.connect_session("/"))[1].status for _ in range(3)]
        assert statuses == [200, 200, 429]


# -- the same caps and Retry under Hypercorn
async def h3_handshake(port: int) -> None:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE)
    async with asyncio.timeout(WAIT), connect("127.0.0.1", port, configuration=configuration):
        pass


async def test_hypercorn_connection_cap(certs: Certs) -> None:
    quic = QuicSettings(max_connections=2, retry=False)
    async with hypercorn_h3(certs, quic) as port, wt_client(port), wt_client(port):
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await h3_handshake(port)
        assert time.monotonic() - started < FAST


async def test_hypercorn_retry(certs: Certs) -> None:
    async with hypercorn_h3(certs, QuicSettings(retry=True)) as port, UdpRelay(("127.0.0.1", port)) as relay, \
            wt_client(relay.port) as client:
        _, response = await client.connect_session("/")
        assert response.status == 200
        assert "retry" in relay.packet_types("server")


async def test_hypercorn_timer_failure_closes_one_connection(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception from aioquic's timer handling ends that connection; the listener serves the next one."""
    victims: list[WebTransportQuicConnection] = []
    original = WebTransportQuicConnection.handle_timer

    def failing(self: WebTransportQuicConnection, now: float) -> None:
        if self in victims:
            raise RuntimeError("timer failure injected by the test")
        original(self, now)

    monkeypatch.setattr(WebTransportQuicConnection, "handle_timer", failing)
    made = WebTransportQuicConnection.__init__

    def remember(self: WebTransportQuicConnection, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        if not victims:
            victims.append(self)

    monkeypatch.setattr(WebTransportQuicConnection, "__init__", remember)
    async with hypercorn_h3(certs, QuicSettings()) as port:
        async with wt_client(port) as doomed:
            await doomed.wait_for(lambda: doomed.terminated)  # its first timer (an ACK, a probe) fails
        async with wt_client(port) as client:
            _, response = await client.connect_session("/")
            assert response.status == 200

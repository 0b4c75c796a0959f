"""QUIC receive credit: windows that follow what the application read, never doubled (aioquic issue #589).

The attack (a few one-byte STREAM frames at the last offset the receiver
allows) is replayed against our connection class with a raw aioquic client
driven in memory; the rest runs over 127.0.0.1: a stream nobody reads blocks
its sender, and transfers larger than the connection window complete on
native QUIC, on our HTTP/3 server and under Hypercorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic import tls
from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder

from moqt_asgi import MoQ, QuicSettings, TrackWriter, dial
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.transport import aioquic_connection
from moqt_asgi.transport.admission import Admission, AdmissionPolicy, serve_guarded
from moqt_asgi.transport.aioquic_connection import CreditedQuicConnection, IncompatibleAioquic, check_compatible
from moqt_asgi.transport.buffers import ReceiveBuffer
from moqt_asgi.transport.quic import QuicProtocol, QuicStream, QuicTransport

from .conftest import Certs
from .wt_client import hypercorn_server, wt_client

pytestmark = pytest.mark.slow

WAIT = 20.0
MIB = 1024 * 1024
SETTINGS = QuicSettings()
CLIENT_ADDR = ("10.0.0.1", 1234)
SERVER_ADDR = ("10.0.0.2", 4433)


# -- an in-memory pair: a raw aioquic client against our connection class
class Pair:
    """A raw aioquic client and a server connection exchanging datagrams in memory, on a fake clock."""

    def __init__(self, certs: Certs, server_class: type[QuicConnection] = CreditedQuicConnection) -> None:
        server_configuration = SETTINGS.configuration(is_client=False, alpn=["moql"])
        server_configuration.load_cert_chain(certs.cert, certs.key)
        client_configuration = QuicConfiguration(is_client=True, alpn_protocols=["moql"], verify_mode=ssl.CERT_NONE)
        self.now = 1.0
        self.client = QuicConnection(configuration=client_configuration)
        self.server = server_class(configuration=server_configuration,
                                   original_destination_connection_id=self.client._original_destination_connection_id)
        self.delivered: dict[int, bytearray] = {}
        self.buffers: dict[int, ReceiveBuffer] = {}
        """Streams whose delivered bytes go into an application buffer (held until read), as the engine's do."""
        self.client.connect(SERVER_ADDR, now=self.now)
        self.exchange()
        assert self.server._handshake_complete

    def exchange(self) -> None:
        for _ in range(100):
            moved = False
            for source, target, addr in ((self.client, self.server, CLIENT_ADDR), (self.server, self.client, SERVER_ADDR)):
                for data, _ in source.datagrams_to_send(now=self.now):
                    target.receive_datagram(data, addr, now=self.now)
                    moved = True
            self._drain()
            if not moved:
                return
            self.now += 0.001

    def _drain(self) -> None:
        """Pull both sides' events, as the layer above each connection does."""
        while (event := self.server.next_event()) is not None:
            data = getattr(event, "data", None)
            if data is not None and hasattr(event, "stream_id"):
                buffer = self.buffers.get(event.stream_id)
                if buffer is not None:
                    buffer.feed(data, False)
                else:
                    self.delivered.setdefault(event.stream_id, bytearray()).extend(data)
        while self.client.next_event() is not None:
            pass

    def inject(self, stream_id: int, offset: int, data: bytes) -> None:
        """A client STREAM frame at any offset, in a 1-RTT packet of its own (what an attacker writes)."""
        client = self.client
        builder = QuicPacketBuilder(host_cid=client.host_cid, peer_cid=client._peer_cid.cid, version=client._version,
                                    is_client=True, max_datagram_size=1200, packet_number=client._packet_number,
                                    spin_bit=client._spin_bit)
        builder.start_packet(QuicPacketType.ONE_RTT, client._cryptos[tls.Epoch.ONE_RTT])
        buf = builder.start_frame(QuicFrameType.STREAM_BASE | 0x04 | 0x02, capacity=64 + len(data))  # OFF and LEN
        buf.push_uint_var(stream_id)
        buf.push_uint_var(offset)
        buf.push_uint_var(len(data))
        buf.push_bytes(data)
        datagrams, _ = builder.flush()
        client._packet_number = builder.packet_number
        for datagram in datagrams:
            self.server.receive_datagram(datagram, CLIENT_ADDR, now=self.now)
        self.exchange()

    def receive_buffered(self) -> int:
        """Bytes aioquic holds in the server's stream receive buffers, gaps included."""
        return sum(len(stream.receiver._buffer) for stream in self.server._streams.values())


def test_edge_of_window_frames_do_not_inflate_the_windows(certs: Certs) -> None:
    pair = Pair(certs)
    server = pair.server
    stream_window, connection_window = SETTINGS.stream_receive_window, SETTINGS.connection_receive_window
    # one stream: 20 one-byte frames, each at the last offset the server allows (as its MAX_STREAM_DATA says)
    pair.client.send_stream_data(0, b"")  # the client knows the stream, so it takes the server's MAX_STREAM_DATA
    for _ in range(20):
        pair.inject(0, pair.client._streams[0].max_stream_data_remote - 1, b"x")
        stream = server._streams[0]
        assert stream.max_stream_data_local <= stream_window  # nothing was read: no more credit
        assert server._local_max_data.value <= connection_window + server.released
    assert pair.receive_buffered() <= stream_window
    # then 20 more streams, each as far as both the stream and the connection allow
    for index in range(1, 21):
        stream_id = 4 * index
        pair.client.send_stream_data(stream_id, b"")
        used = sum(s.receiver.highest_offset for s in server._streams.values())
        room = pair.client._remote_max_data - used
        if room <= 0:
            break
        pair.inject(stream_id, min(pair.client._streams[stream_id].max_stream_data_remote, room) - 1, b"y")
        assert server._local_max_data.value <= connection_window + server.released
        assert all(s.max_stream_data_local <= stream_window for s in server._streams.values())
    assert pair.receive_buffered() <= connection_window
    assert pair.client._remote_max_data <= connection_window


def test_credit_follows_reads_not_arrivals(certs: Certs) -> None:
    """Delivered bytes held by an unread buffer earn no credit; reading them refills the window once."""
    pair = Pair(certs)
    server = pair.server
    window = SETTINGS.stream_receive_window
    credit = aioquic_connection.stream_credit(server, 0)
    assert credit is not None
    buffer = pair.buffers[0] = ReceiveBuffer(64 * MIB, credit=credit)
    pair.client.send_stream_data(0, b"z" * (3 * window))
    for _ in range(5):
        pair.exchange()
    assert buffer.buffered == window  # the client is blocked at one window: nothing was read
    assert pair.client._streams[0].max_stream_data_remote == window
    assert server.held(0) == window

    async def read_some() -> bytes:
        return await buffer.read(window // 2, window // 2)

    asyncio.run(read_some())
    pair.exchange()
    assert pair.client._streams[0].max_stream_data_remote == window + window // 2  # one update, read + window
    assert server._local_max_data.value <= SETTINGS.connection_receive_window + server.released


def test_a_connection_from_aioquic_itself_would_double(certs: Certs) -> None:
    """The same exchange against aioquic's own class shows what the policy prevents."""
    pair = Pair(certs, server_class=QuicConnection)
    pair.client.send_stream_data(0, b"")
    for _ in range(3):
        pair.inject(0, pair.client._streams[0].max_stream_data_remote - 1, b"x")
    assert pair.server._streams[0].max_stream_data_local == 8 * SETTINGS.stream_receive_window
    assert pair.receive_buffered() >= 4 * SETTINGS.stream_receive_window - 1


def test_adopt_only_fresh_aioquic_connections(certs: Certs) -> None:
    pair = Pair(certs, server_class=QuicConnection)
    with pytest.raises(ValueError, match="already received data"):
        CreditedQuicConnection.adopt(pair.server)
    fresh = QuicConnection(configuration=QuicConfiguration(is_client=True))
    adopted = CreditedQuicConnection.adopt(fresh)
    assert adopted is fresh and isinstance(fresh, CreditedQuicConnection)
    assert fresh.stream_window == fresh.configuration.max_stream_data


def test_compatibility_check_names_a_moved_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    check_compatible()
    monkeypatch.delattr(QuicConnection, "_write_stream_limits")
    with pytest.raises(IncompatibleAioquic, match=r"QuicConnection\._write_stream_limits"):
        check_compatible()


def test_compatibility_check_sees_instance_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    original = QuicConnection.__init__

    def without_limit(self: QuicConnection, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._local_max_data

    monkeypatch.setattr(QuicConnection, "__init__", without_limit)
    with pytest.raises(IncompatibleAioquic, match=r"_local_max_data"):
        check_compatible()


# -- over 127.0.0.1
@contextlib.asynccontextmanager
async def native_pair(certs: Certs, settings: QuicSettings = SETTINGS
                      ) -> AsyncIterator[tuple[QuicProtocol, asyncio.Future[QuicTransport]]]:
    """Our QuicProtocol on both ends; yields the client protocol and the server transport (once connected)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[QuicTransport] = loop.create_future()

    def on_handshake(transport: QuicTransport) -> None:
        if not accepted.done():
            accepted.set_result(transport)

    configuration = settings.configuration(is_client=False, alpn=["moql"])
    configuration.load_cert_chain(certs.cert, certs.key)
    server = await serve_guarded("127.0.0.1", 0, admission=Admission(AdmissionPolicy()), configuration=configuration,
                                 create_protocol=lambda *a, **k: QuicProtocol(*a, on_handshake=on_handshake, **k))
    assert server._transport is not None
    port = server._transport.get_extra_info("sockname")[1]
    client_configuration = settings.configuration(is_client=True, alpn=["moql"])
    client_configuration.verify_mode = ssl.CERT_NONE
    try:
        async with connect("127.0.0.1", port, configuration=client_configuration, create_protocol=QuicProtocol) as client:
            assert isinstance(client, QuicProtocol)
            yield client, accepted
    finally:
        server.close()


async def wait_until(condition: Callable[[], Any], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling transport state the test cannot subscribe to
            await asyncio.sleep(0.02)


async def test_a_stream_nobody_reads_blocks_its_sender_then_drains(certs: Certs) -> None:
    """No TOO_LARGE stop: the sender's credit stops at one window; once read, more than a connection window flows."""
    window = SETTINGS.stream_receive_window
    payload = bytes(range(256)) * (20 * MIB // 256)  # more than the 16 MiB connection window
    async with native_pair(certs) as (client, accepted):
        outgoing = await client.moq_transport.open_bi()
        outgoing.write(payload, end=True)
        server = await asyncio.wait_for(accepted, WAIT)
        incoming = await asyncio.wait_for(server.accept_bi(), WAIT)
        assert isinstance(incoming, QuicStream)
        server_quic = server.protocol._quic
        assert isinstance(server_quic, CreditedQuicConnection)
        await wait_until(lambda: server_quic.held(incoming.stream_id) >= window)
        await asyncio.sleep(0.3)  # a sender that had more credit would now have sent more
        quic_stream = client._quic._streams[outgoing.stream_id]
        assert quic_stream.max_stream_data_remote == window
        assert client._quic._remote_max_data <= SETTINGS.connection_receive_window
        assert incoming._buffer is not None and incoming._buffer.buffered <= window
        assert outgoing.backlog() >= len(payload) - window  # blocked by flow control, not stopped
        assert outgoing._stop_code is None
        digest, received = hashlib.sha256(), 0
        async with asyncio.timeout(60):
            while data := await incoming.read(256 * 1024):
                digest.update(data)
                received += len(data)
        assert received == len(payload) and digest.digest() == hashlib.sha256(payload).digest()
        assert server_quic.held() == 0


# -- many MiB through every server, read by our clients
FRAME = 256 * 1024
FRAMES = 80  # 20 MiB: more than the connection window, so MAX_DATA must be raised as the client reads


def bulk_app() -> MoQ:
    app = MoQ()

    async def bulk(track: TrackWriter) -> None:
        group = await track.open_group()
        for index in range(FRAMES):
            await group.write_frame(bytes([index]) * FRAME)
        await group.close()

    app.mux.publish("bulk", bulk)
    return app


async def fetch_bulk(url: str, fingerprint: str) -> None:
    session = await dial(url, fingerprint=fingerprint)
    async with session:
        track = await session.subscribe("bulk", "data")
        group = await asyncio.wait_for(track.next_group(), WAIT)
        assert group is not None
        async with asyncio.timeout(60):
            for index in range(FRAMES):
                frame = await group.read_frame()
                assert frame == bytes([index]) * FRAME


@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_bulk_transfer_through_our_server(certs: Certs, scheme: str) -> None:
    app = bulk_app()
    server = QuicServer(app, host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key))
    await server.start()
    try:
        await fetch_bulk(f"{scheme}://127.0.0.1:{server.address[1]}/", certs.fingerprint)
    finally:
        await server.close()


async def test_bulk_transfer_through_hypercorn(certs: Certs) -> None:
    async with hypercorn_server(bulk_app(), str(certs.cert), str(certs.key)) as port:
        await fetch_bulk(f"https://127.0.0.1:{port}/", certs.fingerprint)


async def upload_counter(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
    """A raw ASGI WebTransport app: counts and hashes what arrives on one stream, echoes the digest on a uni stream."""
    assert scope["type"] == "webtransport"
    assert (await receive())["type"] == "webtransport.connect"
    await send({"type": "webtransport.accept"})
    digest, total = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] != "webtransport.stream.receive":
            return
        digest.update(message["data"])
        total += len(message["data"])
        if message["end_stream"]:
            stream = await scope["extensions"]["webtransport"]["open_stream"](True)
            await send({"type": "webtransport.stream.send", "stream": stream,
                        "data": f"{total} {digest.hexdigest()}".encode(), "end_stream": True})


async def upload(port: int) -> None:
    payload = bytes(range(256)) * (20 * MIB // 256)
    async with wt_client(port) as client:
        session_id, response = await client.connect_session("/")
        assert response.status == 200
        stream_id = client.open_stream(session_id, unidirectional=True)
        client.send(stream_id, payload, end=True)

        def answer() -> bytes | None:
            for sid, state in client.streams.items():
                if sid != stream_id and state.ended:
                    return bytes(state.data)
            return None

        reply = await client.wait_for(answer, timeout=60)
        assert reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


async def test_upload_through_our_http3_server(certs: Certs) -> None:
    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                        asgi_app=upload_counter)  # type: ignore[arg-type]
    await server.start()
    try:
        await upload(server.address[1])
    finally:
        await server.close()


async def test_upload_through_hypercorn(certs: Certs) -> None:
    async with hypercorn_server(upload_counter, str(certs.cert), str(certs.key)) as port:
        await upload(port)


def test_compatibility_check_sees_what_init_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names only an ``__init__`` running in an event loop sets (aioquic's server and protocol) are checked too."""
    from aioquic.asyncio.server import QuicServer as AioquicServer

    monkeypatch.setattr(aioquic_connection, "_INIT_ATTRIBUTES", ((AioquicServer, ("_protocols", "_moved_away")),))
    with pytest.raises(IncompatibleAioquic, match=r"QuicServer\._moved_away"):
        check_compatible()

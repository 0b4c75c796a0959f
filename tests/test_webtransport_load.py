"""WebTransport under load: several subscribers in one process, flow-control windows crossed many times.

Checked on our h3 server (``serve``) and on Hypercorn where it applies:

* **every frame arrives.** Four WebTransport subscribers in this process read
  a track of 6 MiB each through windows of 128 KiB per stream and 1.5 MiB per
  connection, so the receive credit of every stream and connection must be
  returned many times; a credit update that is not sent, or a writer that
  is not woken after one, leaves a subscriber waiting forever (a generous
  deadline turns that into a failure). The connection window is larger than
  what a reader reading groups in order may leave unread (``max_queued_groups``
  + 1 stream windows): below that, later groups can fill it and the group
  being read waits for good, whatever the credit policy;
* **MAX_DATA while unread streams hold most of the window**, in memory: it
  goes out as soon as the reader frees anything, not a quarter window later;
* **the UDP sockets have room for a burst.** With the kernel's default
  receive buffer (208 KiB on Linux, about 90 QUIC packets) a burst that
  arrives while the process is busy is dropped, QUIC takes the loss for
  congestion and a live stream falls seconds behind: the clients' sockets
  (WebTransport and native QUIC) and the servers' listening sockets ask for
  :data:`~moqt_asgi.transport.udp.SOCKET_BUFFER` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypercorn.asyncio import udp_server

from moqt_asgi import MoQ
from moqt_asgi.client import dial
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.engine.session import Session
from moqt_asgi.engine.track import TrackWriter
from moqt_asgi.transport import aioquic_connection
from moqt_asgi.transport.aioquic_connection import server_transport
from moqt_asgi.transport.buffers import ReceiveBuffer
from moqt_asgi.transport.settings import QuicSettings
from moqt_asgi.transport.udp import SOCKET_BUFFER, grow_socket_buffers
from moqt_asgi.webtransport.hypercorn_quic import configure

from . import test_quic_credit
from .conftest import Certs
from .helpers import native_server
from .wt_client import hypercorn_server

FRAME = 16 * 1024
FRAMES_PER_GROUP = 24
"""384 KiB per group: each group stream crosses its 128 KiB window three times."""
GROUPS = 16
"""6 MiB per subscriber: four times the connection's window, 48 stream windows."""
SUBSCRIBERS = 4
DEADLINE = 120.0
"""Generous: the whole transfer takes about a second on an idle machine."""
SMALL_WINDOWS = QuicSettings(stream_receive_window=128 * 1024, connection_receive_window=1536 * 1024)


def frame(group: int, index: int) -> bytes:
    """A frame that says where it belongs, padded to :data:`FRAME` bytes with a pattern of its own."""
    head = struct.pack("!II", group, index)
    return head + bytes([(group * 31 + index) % 251]) * (FRAME - len(head))


def load_app() -> MoQ:
    """Broadcast ``load``: every subscriber to any track gets :data:`GROUPS` groups, then the track ends."""
    app = MoQ()

    async def track(writer: TrackWriter) -> None:
        for sequence in range(GROUPS):
            group = await writer.open_group()
            for index in range(FRAMES_PER_GROUP):
                await group.write_frame(frame(sequence, index))
            await group.close()

    app.mux.publish("load", track)
    return app


async def read_all(session: Session) -> list[bytes]:
    track = await session.subscribe("load", "video")
    return [bytes(payload) async for payload in track.frames()]


async def subscribers_read_everything(url: str, fingerprint: str) -> None:
    sessions = [await dial(url, fingerprint=fingerprint, quic=SMALL_WINDOWS) for _ in range(SUBSCRIBERS)]
    try:
        received = await asyncio.wait_for(asyncio.gather(*(read_all(s) for s in sessions)), DEADLINE)
    finally:
        for session in sessions:
            await session.aclose()
    expected = [frame(g, i) for g in range(GROUPS) for i in range(FRAMES_PER_GROUP)]
    for frames in received:
        assert len(frames) == len(expected)
        assert sorted(frames) == sorted(expected)  # groups are separate streams: they may interleave


@contextlib.asynccontextmanager
async def ours(app: MoQ, certs: Certs, settings: QuicSettings | None = None) -> AsyncIterator[QuicServer]:
    """``app`` on our QUIC server (moql and h3 on one port), as ``serve`` runs it."""
    async with native_server(app, str(certs.cert), str(certs.key), quic=settings) as server:
        yield server


@contextlib.contextmanager
def hypercorn_settings(settings: QuicSettings) -> Any:
    configure(settings)
    try:
        yield
    finally:
        configure(None)


def rcvbuf(sock: Any) -> int:
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def grantable() -> int:
    """The receive buffer the kernel lets an unprivileged socket have when it asks for :data:`SOCKET_BUFFER`."""
    try:
        ceiling = int(Path("/proc/sys/net/core/rmem_max").read_text())
        default = int(Path("/proc/sys/net/core/rmem_default").read_text())
    except OSError:
        pytest.skip("no /proc/sys/net/core: not Linux")
    if ceiling <= default:
        pytest.skip("net.core.rmem_max allows no UDP buffer larger than the default")
    return min(SOCKET_BUFFER, ceiling)


# -- every frame arrives ---------------------------------------------------------------------------

@pytest.mark.slow
async def test_webtransport_subscribers_on_our_server_get_every_frame(certs: Certs) -> None:
    async with ours(load_app(), certs, SMALL_WINDOWS) as server:
        host, port = server.address
        await subscribers_read_everything(f"https://{host}:{port}/", certs.fingerprint)


@pytest.mark.slow
async def test_webtransport_subscribers_on_hypercorn_get_every_frame(certs: Certs) -> None:
    with hypercorn_settings(SMALL_WINDOWS):
        async with hypercorn_server(load_app(), str(certs.cert), str(certs.key)) as port:
            await subscribers_read_everything(f"https://127.0.0.1:{port}/", certs.fingerprint)


# -- socket buffers ---------------------------------------------------------------------------------

def test_grow_socket_buffers_raises_and_never_shrinks() -> None:
    wanted = grantable()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = rcvbuf(sock)
        assert before < wanted
        received, sent = grow_socket_buffers(sock)
        assert received == rcvbuf(sock) >= wanted
        assert sent >= min(wanted, SOCKET_BUFFER)
        assert grow_socket_buffers(sock, size=4096) == (received, sent)  # smaller asks leave it as it is
    assert grow_socket_buffers(None) == (0, 0)


async def test_webtransport_client_and_our_server_sockets_are_large(certs: Certs) -> None:
    wanted = grantable()
    async with ours(load_app(), certs) as server:
        host, port = server.address
        listener = server_transport(server._server)
        assert listener is not None
        assert rcvbuf(listener.get_extra_info("socket")) >= wanted
        session = await dial(f"https://{host}:{port}/", fingerprint=certs.fingerprint)
        try:
            client = session.connection.host  # type: ignore[attr-defined]
            assert rcvbuf(client._transport.get_extra_info("socket")) >= wanted
        finally:
            await session.aclose()


async def test_native_quic_client_socket_is_large(certs: Certs) -> None:
    wanted = grantable()
    async with ours(load_app(), certs) as server:
        host, port = server.address
        session = await dial(f"moql://{host}:{port}/", fingerprint=certs.fingerprint)
        try:
            protocol = session.connection.protocol  # type: ignore[attr-defined]
            assert rcvbuf(protocol._transport.get_extra_info("socket")) >= wanted
        finally:
            await session.aclose()


async def test_hypercorn_listening_socket_is_large(certs: Certs) -> None:
    wanted = grantable()
    async with hypercorn_server(load_app(), str(certs.cert), str(certs.key)) as port:
        session = await dial(f"https://127.0.0.1:{port}/", fingerprint=certs.fingerprint)  # Hypercorn is serving
        await session.aclose()
        servers = [obj for obj in gc.get_objects() if isinstance(obj, udp_server.UDPServer)
                   and obj.transport is not None and obj.transport.get_extra_info("sockname")[1] == port]
        assert len(servers) == 1
        assert rcvbuf(servers[0].transport.get_extra_info("socket")) >= wanted


# -- the connection's credit while unread streams fill most of its window ------------------------------

def test_connection_credit_flows_while_unread_streams_hold_most_of_the_window(
        certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Later groups nobody reads yet hold more than the window less one update step: the group being read
    still completes. Updates used to wait for a whole step (a quarter of the window) more to be read, and
    the peer, out of credit, sent nothing more to read."""
    stream_window, window = 128 * 1024, 512 * 1024
    monkeypatch.setattr(test_quic_credit, "SETTINGS", QuicSettings(stream_receive_window=stream_window,
                                                                   connection_receive_window=window))
    pair = test_quic_credit.Pair(certs)
    server, client = pair.server, pair.client
    unread = {4: stream_window, 8: stream_window, 12: stream_window, 16: 10_000}  # 394 000 bytes: over 3/4 of it
    for stream_id, size in unread.items():
        credit = aioquic_connection.stream_credit(server, stream_id)
        assert credit is not None
        pair.buffers[stream_id] = ReceiveBuffer(64 * stream_window, credit=credit)
        client.send_stream_data(stream_id, b"u" * size)
    for _ in range(10):
        pair.exchange()
    assert server.held() == sum(unread.values())
    payload = bytes(range(256)) * 4096  # 1 MiB on a stream that is read as it arrives
    client.send_stream_data(20, payload, end_stream=True)
    for _ in range(200):
        pair.exchange()
        if len(pair.delivered.get(20, b"")) == len(payload):
            break
    assert bytes(pair.delivered.get(20, b"")) == payload
    assert server.held() == sum(unread.values())  # the unread streams still hold what they held
    assert server._local_max_data.value <= window + server.released  # and the window is what it was

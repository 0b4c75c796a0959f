"""A loopback UDP relay that delays datagrams and records the QUIC packets it carries.

For tests and benchmarks that need a round trip longer than loopback's, or
need to see what went over the wire (which packet types, in which order)::

    async with UdpRelay(("127.0.0.1", server_port), delay=0.025) as relay:
        session = await dial(f"moql://127.0.0.1:{relay.port}/")   # RTT about 50 ms
        relay.packet_types("client")   # e.g. ["initial", "0-rtt", "handshake", "1-rtt", ...]

It relays one client address at a time per upstream socket and drops
nothing; it is not a network emulator (no loss, no reordering, no rate).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["client", "server"]

LONG_HEADER_TYPES = ("initial", "0-rtt", "handshake", "retry")
"""QUIC version 1 long-header packet types, by their two type bits (RFC 9000 section 17.2)."""

MAX_PACKETS_PER_DATAGRAM = 8


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``offset``: ``(value, next offset)``."""
    first = data[offset]
    length = 1 << (first >> 6)
    if offset + length > len(data):
        raise ValueError("truncated varint")
    value = first & 0x3F
    for byte in data[offset + 1:offset + length]:
        value = (value << 8) | byte
    return value, offset + length


def packet_types(datagram: bytes) -> list[str]:
    """The types of the QUIC packets coalesced in one datagram (``"1-rtt"`` for a short header).

    Only the unprotected header bits are read. Anything unparsable ends the
    list with ``"unknown"``.
    """
    kinds: list[str] = []
    offset = 0
    while offset < len(datagram) and len(kinds) < MAX_PACKETS_PER_DATAGRAM:
        first = datagram[offset]
        if not first & 0x80:
            if first & 0x40:  # the fixed bit: a short header, which runs to the end of the datagram
                kinds.append("1-rtt")
            break  # otherwise padding
        try:
            kind = LONG_HEADER_TYPES[(first & 0x30) >> 4]
            pos = offset + 5  # first byte, version
            pos += 1 + datagram[pos]  # destination connection id
            pos += 1 + datagram[pos]  # source connection id
            if kind == "retry":
                kinds.append(kind)
                break
            if kind == "initial":
                token_length, pos = _varint(datagram, pos)
                pos += token_length
            length, pos = _varint(datagram, pos)
        except (IndexError, ValueError):
            kinds.append("unknown")
            break
        kinds.append(kind)
        offset = pos + length
    return kinds


@dataclass
class Datagram:
    direction: Direction
    """``"client"``: from the client to the server; ``"server"``: the other way."""
    at: float
    size: int
    packet_types: list[str] = field(default_factory=list)


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: object) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.on_datagram(data, addr)  # type: ignore[operator]


class UdpRelay:
    """Relays UDP between clients and ``upstream``, each way after ``delay`` seconds.

    ``log`` keeps every datagram (direction, time, size, packet types), at
    most ``max_log`` of them.
    """

    def __init__(self, upstream: tuple[str, int], *, delay: float = 0.0, host: str = "127.0.0.1",
                 max_log: int = 100_000) -> None:
        self.upstream = upstream
        self.delay = delay
        self.host = host
        self.max_log = max_log
        self.log: list[Datagram] = []
        self._listener: _Side | None = None
        self._upstreams: dict[tuple[str, int], _Side] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._waiting: dict[tuple[str, int], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._listener is None or self._listener.transport is None:
            raise RuntimeError("relay is not started")
        return int(self._listener.transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        _, self._listener = await loop.create_datagram_endpoint(lambda: _Side(self._from_client),
                                                                local_addr=(self.host, 0))

    def _record(self, direction: Direction, data: bytes) -> None:
        if len(self.log) < self.max_log:
            self.log.append(Datagram(direction, time.monotonic(), len(data), packet_types(data)))

    def _later(self, callback: object, *args: object) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            callback(*args)  # type: ignore[operator]

        handle = loop.call_later(self.delay, fire)
        self._timers.add(handle)

    def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self._record("client", data)
        self._later(self._send_up, data, addr)

    def _send_up(self, data: bytes, client: tuple[str, int]) -> None:
        side = self._upstreams.get(client)
        if side is not None and side.transport is not None:
            side.transport.sendto(data)
        elif client in self._waiting:
            self._waiting[client].append(data)
        else:
            self._waiting[client] = [data]
            task = asyncio.ensure_future(self._open_upstream(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open_upstream(self, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        _, side = await loop.create_datagram_endpoint(
            lambda: _Side(lambda data, _addr: self._from_server(data, client)), remote_addr=self.upstream)
        self._upstreams[client] = side
        assert side.transport is not None
        for data in self._waiting.pop(client, []):
            side.transport.sendto(data)

    def _from_server(self, data: bytes, client: tuple[str, int]) -> None:
        self._record("server", data)
        self._later(self._send_down, data, client)

    def _send_down(self, data: bytes, client: tuple[str, int]) -> None:
        if self._listener is not None and self._listener.transport is not None:
            self._listener.transport.sendto(data, client)

    def packet_types(self, direction: Direction) -> list[str]:
        """Every packet type seen in ``direction``, in order."""
        return [kind for datagram in self.log if datagram.direction == direction for kind in datagram.packet_types]

    def clear(self) -> None:
        self.log.clear()

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._waiting.clear()
        for side in [*self._upstreams.values(), *([self._listener] if self._listener else [])]:
            if side.transport is not None:
                side.transport.close()
        self._upstreams.clear()
        self._listener = None
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> UdpRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["Datagram", "UdpRelay", "packet_types"]

"""A loopback UDP relay that emulates a lossy link and records the QUIC packets it carries.

For tests and benchmarks that need a round trip longer than loopback's, an
imperfect network, or to see what went over the wire (which packet types, in
which order)::

    async with UdpRelay(("127.0.0.1", server_port), delay=0.025) as relay:
        session = await dial(f"moql://127.0.0.1:{relay.port}/")   # RTT about 50 ms
        relay.packet_types("client")   # e.g. ["initial", "0-rtt", "handshake", "1-rtt", ...]

    # 5 % loss, some reordering and duplication both ways, 2 MB/s with a 64 KB queue, seeded
    UdpRelay(upstream, loss=0.05, reorder=0.05, duplicate=0.01, rate=2_000_000, queue_bytes=65536, seed=7)

It works in user space (no netem needed). Each direction is a :class:`Link`,
``relay.links["client"]`` for datagrams from the client and
``relay.links["server"]`` for the others; both may differ (pass ``client=``
/ ``server=``) and may be changed while running (``loss=1.0`` cuts that way
off). A datagram goes through, in order:

1. **loss**: dropped with probability ``loss``;
2. **duplicate**: with probability ``duplicate`` a second copy follows it;
3. **rate**: with a ``rate`` (bytes per second) datagrams leave one after
   another at that rate; one that would take the queue of waiting bytes past
   ``queue_bytes`` is dropped (tail drop);
4. **delay**: each then arrives ``delay`` seconds later;
5. **reorder**: with probability ``reorder`` an arriving datagram is held
   back and released just after the next one (or after ``reorder_delay`` if
   none comes), so the next one overtakes it.

Every random choice comes from one ``random.Random`` per direction, seeded
from ``seed``: the same sequence of datagrams meets the same fate on every
run (though what QUIC sends depends on timing, so a whole run may still
differ). ``relay.stats[direction]`` counts what happened (:class:`LinkStats`).
The relay gives each client address its own upstream socket, and closes
one that has carried nothing for ``upstream_idle`` seconds (a later datagram
from that client opens a new one, as a NAT would rebind it).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

Direction = Literal["client", "server"]
Address = tuple[str, int]
Deliver = Callable[[bytes, Address], None]

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


@dataclass
class Link:
    """What one direction of a :class:`UdpRelay` does to the datagrams it carries (defaults: nothing)."""

    delay: float = 0.0
    """Seconds each datagram spends on the wire."""
    loss: float = 0.0
    """Probability that a datagram is dropped (1.0: nothing gets through)."""
    reorder: float = 0.0
    """Probability that a datagram is held back until the next one has gone by."""
    reorder_delay: float = 0.005
    """The longest a held-back datagram waits for another to overtake it."""
    duplicate: float = 0.0
    """Probability that a datagram is sent twice."""
    rate: float | None = None
    """Bandwidth in bytes per second (``None``: unlimited)."""
    queue_bytes: int = 64 * 1024
    """With a ``rate``: bytes that may wait to be sent; a datagram past that is dropped."""

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability, between 0 and 1")
        if self.delay < 0 or self.reorder_delay < 0:
            raise ValueError("delays cannot be negative")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive (or None for unlimited)")
        if self.queue_bytes <= 0:
            raise ValueError("queue_bytes must be positive")


@dataclass
class LinkStats:
    """What one direction did to its datagrams so far."""

    received: int = 0
    """Datagrams that entered the link."""
    delivered: int = 0
    """Datagrams sent on, duplicates included."""
    delivered_bytes: int = 0
    lost: int = 0
    """Dropped by ``loss``."""
    queue_dropped: int = 0
    """Dropped because the rate-limited queue was full."""
    reordered: int = 0
    """Held back for another datagram to overtake."""
    duplicated: int = 0
    """Extra copies made."""


class _Pipe:
    """One direction of the relay: applies its :class:`Link` and hands survivors to ``deliver``."""

    def __init__(self, link: Link, rng: random.Random, deliver: Deliver,
                 schedule: Callable[..., asyncio.TimerHandle], cancel: Callable[[asyncio.TimerHandle], None]) -> None:
        self.link = link
        self.stats = LinkStats()
        self._rng = rng
        self._deliver = deliver
        self._schedule = schedule
        self._cancel = cancel
        self._busy_until = 0.0
        self._held: tuple[bytes, Address] | None = None
        self._held_timer: asyncio.TimerHandle | None = None

    def _chance(self, probability: float) -> bool:
        return probability > 0 and self._rng.random() < probability

    def push(self, data: bytes, to: Address) -> None:
        self.stats.received += 1
        if self._chance(self.link.loss):
            self.stats.lost += 1
            return
        copies = 1
        if self._chance(self.link.duplicate):
            self.stats.duplicated += 1
            copies = 2
        for _ in range(copies):
            self._send(data, to)

    def _send(self, data: bytes, to: Address) -> None:
        wait = self.link.delay
        if self.link.rate is not None:
            now = asyncio.get_running_loop().time()
            start = max(now, self._busy_until)
            if (start - now) * self.link.rate + len(data) > self.link.queue_bytes:
                self.stats.queue_dropped += 1
                return
            self._busy_until = start + len(data) / self.link.rate
            wait += self._busy_until - now
        self._schedule(wait, self._arrive, data, to)

    def _arrive(self, data: bytes, to: Address) -> None:
        if self._held is None and self._chance(self.link.reorder):
            self.stats.reordered += 1
            self._held = (data, to)
            self._held_timer = self._schedule(self.link.reorder_delay, self._release)
            return
        self._out(data, to)
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if self._held_timer is not None:
            self._cancel(self._held_timer)
            self._held_timer = None
        if held is not None:
            self._out(*held)

    def _out(self, data: bytes, to: Address) -> None:
        self.stats.delivered += 1
        self.stats.delivered_bytes += len(data)
        self._deliver(data, to)


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Deliver) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, addr)


class UdpRelay:
    """Relays UDP between clients and ``upstream`` through an emulated link (see the module docstring).

    ``delay``, ``loss``, ``reorder``, ``duplicate``, ``rate`` and
    ``queue_bytes`` set both directions alike; ``client`` and ``server``
    (each a :class:`Link`) set one direction instead. ``log`` keeps every
    datagram that reached the relay (direction, time, size, packet types),
    at most ``max_log`` of them, whether or not it was then dropped (pass 0
    for long runs).
    """

    def __init__(self, upstream: Address, *, delay: float = 0.0, loss: float = 0.0, reorder: float = 0.0,
                 duplicate: float = 0.0, rate: float | None = None, queue_bytes: int = 64 * 1024, seed: int = 0,
                 client: Link | None = None, server: Link | None = None, host: str = "127.0.0.1",
                 max_log: int = 100_000, upstream_idle: float = 60.0) -> None:
        if upstream_idle <= 0:
            raise ValueError("upstream_idle must be positive")
        both = Link(delay=delay, loss=loss, reorder=reorder, duplicate=duplicate, rate=rate, queue_bytes=queue_bytes)
        self.upstream = upstream
        self.host = host
        self.max_log = max_log
        self.upstream_idle = upstream_idle
        self.log: list[Datagram] = []
        self._pipes: dict[Direction, _Pipe] = {
            "client": _Pipe(client or replace(both), random.Random(f"{seed}/client"), self._send_up, self._later,
                            self._cancel),
            "server": _Pipe(server or replace(both), random.Random(f"{seed}/server"), self._send_down, self._later,
                            self._cancel),
        }
        self._listener: _Side | None = None
        self._upstreams: dict[Address, _Side] = {}
        self._last_seen: dict[Address, float] = {}
        self._sweeping = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._waiting: dict[Address, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def links(self) -> dict[Direction, Link]:
        """Each direction's :class:`Link`; change its fields to change the network while running."""
        return {direction: pipe.link for direction, pipe in self._pipes.items()}

    @property
    def stats(self) -> dict[Direction, LinkStats]:
        """What each direction has done so far."""
        return {direction: pipe.stats for direction, pipe in self._pipes.items()}

    @property
    def delay(self) -> float:
        """The client-to-server delay (both directions', unless they were set apart)."""
        return self._pipes["client"].link.delay

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

    def _later(self, delay: float, callback: Callable[..., None], *args: object) -> asyncio.TimerHandle:
        def fire() -> None:
            self._timers.discard(handle)
            callback(*args)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)
        return handle

    def _cancel(self, handle: asyncio.TimerHandle) -> None:
        handle.cancel()
        self._timers.discard(handle)

    @property
    def upstream_sockets(self) -> int:
        """Upstream sockets open now (one per client address recently seen)."""
        return len(self._upstreams)

    def _seen(self, client: Address) -> None:
        self._last_seen[client] = asyncio.get_running_loop().time()

    def _sweep(self) -> None:
        """Close the upstream sockets of clients quiet for ``upstream_idle`` seconds."""
        horizon = asyncio.get_running_loop().time() - self.upstream_idle
        for client, seen in list(self._last_seen.items()):
            if seen < horizon:
                del self._last_seen[client]
                side = self._upstreams.pop(client, None)
                if side is not None and side.transport is not None:
                    side.transport.close()
        self._sweeping = bool(self._last_seen)
        if self._sweeping:
            self._later(self.upstream_idle / 2, self._sweep)

    def _from_client(self, data: bytes, addr: Address) -> None:
        self._record("client", data)
        self._seen(addr)
        self._pipes["client"].push(data, addr)

    def _send_up(self, data: bytes, client: Address) -> None:
        side = self._upstreams.get(client)
        if side is not None and side.transport is not None:
            side.transport.sendto(data)
        elif client in self._waiting:
            self._waiting[client].append(data)
        elif self._listener is not None:
            self._waiting[client] = [data]
            task = asyncio.ensure_future(self._open_upstream(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open_upstream(self, client: Address) -> None:
        loop = asyncio.get_running_loop()
        _, side = await loop.create_datagram_endpoint(
            lambda: _Side(lambda data, _addr: self._from_server(data, client)), remote_addr=self.upstream)
        self._upstreams[client] = side
        self._seen(client)
        if not self._sweeping:
            self._sweeping = True
            self._later(self.upstream_idle / 2, self._sweep)
        assert side.transport is not None
        for data in self._waiting.pop(client, []):
            side.transport.sendto(data)

    def _from_server(self, data: bytes, client: Address) -> None:
        self._record("server", data)
        self._seen(client)
        self._pipes["server"].push(data, client)

    def _send_down(self, data: bytes, client: Address) -> None:
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
        self._last_seen.clear()
        self._sweeping = False
        self._listener = None
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> UdpRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["Datagram", "Link", "LinkStats", "UdpRelay", "packet_types"]

"""Network faults on a real path: loss, reordering, duplication, a rate cap, and a peer that vanishes.

Everything runs over UDP on 127.0.0.1 through :class:`~moqt_asgi.testing.netsim.UdpRelay`
(a seeded user-space emulator), on native QUIC (``moql://``) and on
WebTransport (``https://`` to the same :class:`QuicServer` port), through the
relay app (``Relay()`` + ``MoQ(mux=relay.mux)`` + route ``/{path:path}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from moqt_asgi import AnnouncementReader, MoQ, MoQError, QuicSettings, Session, StreamError, TrackMux, TrackWriter, dial
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.engine.mux import Announcement
from moqt_asgi.protocol.errors import ErrorCode
from moqt_asgi.relay import Relay
from moqt_asgi.testing.netsim import Link, UdpRelay

from .conftest import Certs
from .helpers import eventually

pytestmark = pytest.mark.slow

LOSSY_WAIT = 30.0
"""Bound on each wait here: QUIC recovers from the simulated loss and reordering in its own time."""
SCHEMES = ["moql", "https"]
BROADCAST = "feed"
TRACK = "video"
GROUPS = 80
LOSSY: dict[str, Any] = dict(loss=0.05, reorder=0.05, duplicate=0.02)
"""5 % loss, 5 % of datagrams overtaken by the next one, 2 % sent twice: each way."""


# -- the emulator on its own, with plain datagrams --------------------------------------------------------


class _Endpoint(asyncio.DatagramProtocol):
    """A UDP socket that echoes (``echo=True``) or collects what it receives."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.echo:
            assert self.transport is not None
            self.transport.sendto(data, addr)
        else:
            self.received.append(data)
            self.changed.set()


@contextlib.asynccontextmanager
async def echo_through(**options: Any) -> AsyncIterator[tuple[UdpRelay, _Endpoint]]:
    """An echo server behind a relay built with ``options``, and a client socket facing the relay."""
    loop = asyncio.get_running_loop()
    echo_transport, _ = await loop.create_datagram_endpoint(lambda: _Endpoint(echo=True), local_addr=("127.0.0.1", 0))
    try:
        async with UdpRelay(echo_transport.get_extra_info("sockname"), **options) as relay:
            client_transport, client = await loop.create_datagram_endpoint(
                _Endpoint, remote_addr=("127.0.0.1", relay.port))
            try:
                yield relay, client
            finally:
                client_transport.close()
    finally:
        echo_transport.close()


async def exchange(count: int, size: int = 100, quiet: float = 0.3, **options: Any) -> tuple[UdpRelay, list[int]]:
    """Send ``count`` numbered datagrams through an echo relay; the numbers that came back, in arrival order."""
    async with echo_through(**options) as (relay, client):
        assert client.transport is not None
        for n in range(count):
            client.transport.sendto(n.to_bytes(4, "big") + bytes(size - 4))
            if n % 10 == 9:
                await asyncio.sleep(0.002)  # in small bursts, so no socket buffer overflows
        while True:  # until nothing more arrives for ``quiet`` seconds
            client.changed.clear()
            try:
                await asyncio.wait_for(client.changed.wait(), quiet)
            except TimeoutError:
                break
        return relay, [int.from_bytes(data[:4], "big") for data in client.received]


async def test_no_faults_by_default() -> None:
    relay, got = await exchange(200)
    assert got == list(range(200))
    stats = relay.stats
    assert (stats["client"].received, stats["client"].delivered, stats["server"].delivered) == (200, 200, 200)
    assert stats["client"].lost == stats["client"].reordered == stats["client"].duplicated == 0


async def test_loss_is_seeded_and_counted() -> None:
    relay, got = await exchange(400, loss=0.1, seed=7)
    again, got_again = await exchange(400, loss=0.1, seed=7)
    other, got_other = await exchange(400, loss=0.1, seed=8)
    assert got == got_again  # the same datagrams were lost
    assert got != got_other
    lost = relay.stats["client"].lost + relay.stats["server"].lost
    assert len(got) == 400 - lost and got == sorted(got)
    assert 40 <= lost <= 120  # about 10 % each way of 400
    assert relay.stats["client"].lost == again.stats["client"].lost
    assert other.stats["client"].received == 400


async def test_reordering_lets_the_next_datagram_overtake() -> None:
    relay, got = await exchange(300, reorder=0.1, seed=3)
    assert sorted(got) == list(range(300))  # nothing lost
    reordered = relay.stats["client"].reordered + relay.stats["server"].reordered
    assert reordered > 10
    overtaken = sum(1 for a, b in itertools.pairwise(got) if a > b)
    assert 0 < overtaken <= reordered


async def test_held_back_datagrams_leave_no_timer_behind() -> None:
    async with echo_through(reorder=0.5, seed=2) as (relay, client):
        assert client.transport is not None
        for n in range(100):
            client.transport.sendto(n.to_bytes(4, "big"))
            if n % 10 == 9:
                await asyncio.sleep(0.002)
        await eventually(lambda: len(client.received) == 100, "every datagram", timeout=LOSSY_WAIT, interval=0.01)
        assert relay.stats["client"].reordered > 10
        await asyncio.sleep(Link().reorder_delay * 2)
        assert len(relay._timers) <= 1  # at most the idle-socket sweep


async def test_duplicates() -> None:
    relay, got = await exchange(300, duplicate=0.1, seed=5, server=Link())
    stats = relay.stats
    assert stats["server"].duplicated == 0 and stats["client"].duplicated > 10
    assert len(got) == 300 + stats["client"].duplicated
    assert set(got) == set(range(300))


async def test_rate_cap_paces_and_tail_drops() -> None:
    """100 datagrams of 1000 bytes at once into a 100 kB/s link with a 10 kB queue: about 10 pass, at that pace."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    relay, got = await exchange(100, size=1000, rate=100_000, queue_bytes=10_000, server=Link())
    stats = relay.stats["client"]
    assert stats.queue_dropped > 50
    assert stats.delivered == len(got) == 100 - stats.queue_dropped
    # each datagram took 10 ms of the link: the ones through cannot all have arrived sooner
    assert loop.time() - start >= (len(got) - 1) * 0.01
    assert got == sorted(got)


async def test_quiet_clients_lose_their_upstream_socket() -> None:
    async with echo_through(upstream_idle=0.2) as (relay, client):
        assert client.transport is not None
        client.transport.sendto(b"one")
        await asyncio.wait_for(client.changed.wait(), LOSSY_WAIT)
        assert relay.upstream_sockets == 1
        await eventually(lambda: relay.upstream_sockets == 0, "the idle upstream socket to close",
                         timeout=LOSSY_WAIT, interval=0.01)
        client.changed.clear()
        client.transport.sendto(b"two")  # a new socket carries it
        await asyncio.wait_for(client.changed.wait(), LOSSY_WAIT)
        assert client.received == [b"one", b"two"] and relay.upstream_sockets == 1


def test_link_checks_its_values() -> None:
    with pytest.raises(ValueError):
        Link(loss=1.5)
    with pytest.raises(ValueError):
        Link(rate=0)
    with pytest.raises(ValueError):
        Link(delay=-1)


# -- MoQ through the relay app over a lossy path ---------------------------------------------------------


def relay_app() -> tuple[MoQ, Relay]:
    relay = Relay()
    app = MoQ(mux=relay.mux)
    app.add_route("/{path:path}", relay)
    return app, relay


@contextlib.asynccontextmanager
async def relay_server(certs: Certs, quic: QuicSettings | None = None
                       ) -> AsyncIterator[tuple[QuicServer, Relay, list[Session]]]:
    """The relay app on a QuicServer (moql and WebTransport on one port); also yields the sessions it accepted."""
    app, relay = relay_app()
    server = QuicServer(app, host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key), quic=quic)
    accepted: list[Session] = []
    server.on_session = accepted.append
    await app.startup()
    await server.start()
    try:
        yield server, relay, accepted
    finally:
        await server.close()
        await app.shutdown()


def make_groups(seed: int = 1) -> list[list[bytes]]:
    """``GROUPS`` groups of 1 to 6 random frames, from 1 byte to 6000 (many span several datagrams)."""
    rng = random.Random(seed)
    sizes = [1, 40, 500, 1200, 1400, 3000, 6000]
    return [[rng.randbytes(rng.choice(sizes)) for _ in range(rng.randint(1, 6))] for _ in range(GROUPS)]


class LockstepFeed:
    """A track handler that writes ``groups`` in order, each once the subscriber has read the one before.

    The subscriber thus keeps up by construction, and the relay's default
    cache (two groups) never has to give up a group: every frame must arrive.
    """

    def __init__(self, groups: list[list[bytes]]) -> None:
        self.groups = groups
        self.read = 0
        self._progress = asyncio.Event()
        self.subscriptions = 0

    def done_reading(self, sequence: int) -> None:
        self.read = max(self.read, sequence + 1)
        self._progress.set()

    async def __call__(self, writer: TrackWriter) -> None:
        self.subscriptions += 1
        for sequence, frames in enumerate(self.groups):
            while self.read < sequence:
                self._progress.clear()
                await self._progress.wait()
            group = await writer.open_group(sequence)
            for frame in frames:
                await group.write_frame(frame)
            await group.close()
        await writer.close()


async def wait_announced(announcements: AnnouncementReader, path: str) -> Announcement:
    """The announcement of ``path``, once the peer has made it."""
    if path in announcements.active:
        return announcements.active[path]
    async for announcement in announcements:
        if announcement.path == path:
            return announcement
    raise AssertionError(f"announcements ended before {path!r} was announced")


async def read_track(session: Session, on_group: Callable[[int], None]
                     ) -> tuple[list[tuple[int, list[bytes]]], list[tuple[int, list[bytes]]]]:
    """Subscribe to the feed and read it to its end.

    Returns ``(complete, reset)``: ``(sequence, frames)`` for each group read
    to its end, in arrival order, and for each group the publisher side reset
    partway (the frames read before the reset).
    """
    reader = await session.subscribe(BROADCAST, TRACK)
    complete: list[tuple[int, list[bytes]]] = []
    reset: list[tuple[int, list[bytes]]] = []
    async for group in reader:
        frames: list[bytes] = []
        try:
            async for frame in group:
                frames.append(frame)
        except StreamError:
            reset.append((group.sequence, frames))
            continue
        complete.append((group.sequence, frames))
        on_group(group.sequence)
    return complete, reset


def url(scheme: str, port: int, path: str) -> str:
    return f"{scheme}://127.0.0.1:{port}/{path}"


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_frames_arrive_byte_identical_through_loss_reordering_and_duplicates(
        certs: Certs, scheme: str, no_leaked_tasks: None) -> None:
    groups = make_groups()
    feed = LockstepFeed(groups)
    publisher_mux = TrackMux()
    publisher_mux.publish(BROADCAST, feed)
    async with relay_server(certs) as (server, _, _), \
            UdpRelay(server.address, seed=11, **LOSSY) as net:
        async with asyncio.timeout(LOSSY_WAIT):
            publisher = await dial(url(scheme, net.port, "pub"), fingerprint=certs.fingerprint, mux=publisher_mux)
            subscriber = await dial(url(scheme, net.port, "sub"), fingerprint=certs.fingerprint)
            async with publisher, subscriber:
                await wait_announced(await subscriber.announced(), BROADCAST)
                received, reset = await read_track(subscriber, feed.done_reading)
    assert not reset
    assert [sequence for sequence, _ in received] == list(range(GROUPS))
    assert [frames for _, frames in received] == groups
    assert feed.subscriptions == 1  # one upstream subscription, never re-made
    for direction in ("client", "server"):
        stats = net.stats[direction]
        assert stats.lost > 0 and stats.reordered > 0 and stats.duplicated > 0, (direction, stats)


class FreeRunningFeed:
    """A track handler that writes every group as fast as it can: the relay may drop whole groups, never part of one."""

    def __init__(self, groups: list[list[bytes]]) -> None:
        self.groups = groups

    async def __call__(self, writer: TrackWriter) -> None:
        for sequence, frames in enumerate(self.groups):
            group = await writer.open_group(sequence)
            for frame in frames:
                await group.write_frame(frame)
            await group.close()
            await asyncio.sleep(0)
        await writer.close()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_an_unpaced_publisher_loses_whole_groups_only(certs: Certs, scheme: str, no_leaked_tasks: None) -> None:
    """Without pacing, the relay (two cached groups) and the newest-group-wins rule may skip groups under loss.

    A group read to its end must be whole and byte-identical, each group
    comes at most once, and a group given up partway is reset (the subscriber
    is told), never cut short silently. Which groups survive depends on
    timing, so that is not asserted; but the newest one always arrives: the
    track's clean end can overtake the last groups' streams, and the
    subscriber waits for them while they keep coming (lite-05+ says where
    the track ended).
    """
    groups = make_groups(seed=2)
    publisher_mux = TrackMux()
    publisher_mux.publish(BROADCAST, FreeRunningFeed(groups))
    async with relay_server(certs) as (server, _, _), \
            UdpRelay(server.address, seed=12, **LOSSY) as net:
        async with asyncio.timeout(LOSSY_WAIT):
            publisher = await dial(url(scheme, net.port, "pub"), fingerprint=certs.fingerprint, mux=publisher_mux)
            subscriber = await dial(url(scheme, net.port, "sub"), fingerprint=certs.fingerprint)
            async with publisher, subscriber:
                await wait_announced(await subscriber.announced(), BROADCAST)
                received, reset = await read_track(subscriber, lambda _: None)
    sequences = [sequence for sequence, _ in received]
    assert len(sequences) == len(set(sequences))  # each group once, in arrival order (their streams race)
    assert sequences, "no group arrived whole"
    assert max(sequences) == len(groups) - 1, "the newest group was cut off by the track's end"
    for sequence, frames in received:
        assert frames == groups[sequence], f"group {sequence} arrived altered"
    for sequence, frames in reset:  # cut short, and said so: what did arrive is the group's beginning
        # (all of it, at times: a group evicted while its last bytes waited to be acknowledged is reset after them)
        assert frames == groups[sequence][:len(frames)] and len(frames) <= len(groups[sequence])


# -- a peer that vanishes without a word -----------------------------------------------------------------

IDLE_TIMEOUT = 1.0


def live_tasks(excluding: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() - excluding if not t.done() and t is not asyncio.current_task()}


class EndlessFeed:
    """A track handler writing a small group every 20 ms until cancelled (the publisher stays busy)."""

    async def __call__(self, writer: TrackWriter) -> None:
        sequence = 0
        while True:
            await writer.write_group(b"frame %d" % sequence)
            sequence += 1
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_vanished_publisher_is_dropped_within_the_idle_timeout(
        certs: Certs, scheme: str, no_leaked_tasks: None) -> None:
    """The publisher's datagrams stop (no CLOSE, no reset): the server gives up on it after the idle timeout.

    Its session closes, the relay withdraws its broadcast from the other
    peers, and no task or session is left for it on the server. The
    publisher asks for a short idle timeout; QUIC uses the smaller of the two
    endpoints' values, so the server applies it to that connection only and
    the quiet subscriber keeps the default.
    """
    publisher_mux = TrackMux()
    publisher_mux.publish(BROADCAST, EndlessFeed())
    settings = QuicSettings(idle_timeout=IDLE_TIMEOUT)
    loop = asyncio.get_running_loop()
    async with relay_server(certs) as (server, relay, accepted), UdpRelay(server.address) as net:
        async with asyncio.timeout(LOSSY_WAIT):
            subscriber = await dial(url(scheme, server.address[1], "sub"), fingerprint=certs.fingerprint)
            async with subscriber:
                await eventually(lambda: len(server.sessions) == 1, "the subscriber's session", timeout=LOSSY_WAIT, interval=0.01)
                announcements = await subscriber.announced()
                await asyncio.sleep(0.3)  # the server's side of the announce stream settles
                before = live_tasks(set())  # the server and the subscriber, settled
                publisher = await dial(url(scheme, net.port, "pub"), fingerprint=certs.fingerprint, mux=publisher_mux,
                                       quic=settings)
                await eventually(lambda: len(accepted) == 2, "the publisher's session", timeout=LOSSY_WAIT, interval=0.01)
                on_server = accepted[1]
                announcement = await wait_announced(announcements, BROADCAST)
                reader = await subscriber.subscribe(BROADCAST, TRACK)
                for _ in range(3):
                    group = await reader.next_group()
                    assert group is not None and (await group.read_frame() or b"").startswith(b"frame ")

                net.links["client"].loss = net.links["server"].loss = 1.0  # the publisher is gone
                cut = loop.time()
                closed = await on_server.wait_closed()
                detected = loop.time() - cut
                assert detected >= IDLE_TIMEOUT * 0.5  # it waited for the idle timeout, nothing told it
                assert detected <= IDLE_TIMEOUT * 4 + 1, f"took {detected:.2f} s"
                assert not closed.remote and closed.code == ErrorCode.TIMEOUT and "idle" in closed.reason.lower(), closed

                await asyncio.wait_for(announcement.wait_ended(), IDLE_TIMEOUT * 4)  # withdrawn downstream
                with contextlib.suppress(MoQError):  # the track fails or ends: either way it stops
                    while await reader.next_group() is not None:
                        pass
                assert reader.ended
                assert relay.mux.route(BROADCAST) is None
                assert server.sessions == [accepted[0]] and not subscriber.closed

                await publisher.wait_closed()  # its own idle timeout, on the far side of the cut
                await publisher.aclose()
                await eventually(lambda: server.connection_count == 1, "the server to forget the publisher's connection",
                                 timeout=LOSSY_WAIT, interval=0.01)
                # the subscriber's connection replaces its stream-accept waiters as streams come: count, not identity
                await eventually(lambda: len(live_tasks(set())) <= len(before), "the publisher's tasks to finish",
                                 timeout=LOSSY_WAIT, interval=0.01)

"""Soak: publish/subscribe churn against a relay for a while, watching memory and tasks.

    python -m benchmarks.soak --minutes 10

One process runs the relay app (``Relay()`` + ``MoQ(mux=relay.mux)``) on
a :class:`~moqt_asgi.endpoints.quic_server.QuicServer` and drives it in waves. Each wave, sessions
come and go: publishers announce broadcasts, feed them, withdraw one and
announce another; subscribers watch the announcements, subscribe, read a
few groups, unsubscribe and subscribe again, then leave. Most sessions use
the in-memory transport (cheap, and the versions vary: lite-06, -04, -02);
a share dials native QUIC over real UDP through a
:class:`~moqt_asgi.testing.netsim.UdpRelay` with mild loss and reordering. A steady
publisher stays throughout.

Every few seconds the resident set size (``VmRSS``), the number of asyncio
tasks and the relay's live sessions are sampled. After each wave, once its
sessions have gone, the task count, the sessions and the relay's broadcasts
must be back to what they were before the first wave, within
:data:`QUIET_TIMEOUT`. The verdict also compares memory: the highest RSS of
the last third of the run may exceed that of the first third (after a
warm-up wave) by at most :data:`RSS_MARGIN_MIB` or :data:`RSS_MARGIN_FRACTION`,
whichever is larger, and the objects alive between waves (after a garbage
collection) may grow by :data:`OBJECTS_MARGIN_FRACTION`. Errors logged by
``moqt_asgi`` and exceptions in the workload fail it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import random
import resource
import sys
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from moqt_asgi import Broadcast, MoQ, MoQError, QuicSettings, Session, TrackMux, TrackProducer, dial
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.engine.handshake import start_client
from moqt_asgi.engine.mux import Announcement
from moqt_asgi.protocol.versions import LITE_02_VERSION, LITE_04_VERSION, LITE_06_VERSION, Version
from moqt_asgi.relay import Relay
from moqt_asgi.serving import serve_connection
from moqt_asgi.testing.netsim import UdpRelay
from moqt_asgi.transport.memory import memory_pair

from .common import Certificate, temporary_certificate

logger = logging.getLogger("moqt_asgi.soak")

HOST = "127.0.0.1"
PREFIX = "soak"
TRACK = "video"
SESSION_PATH = "/soak"
MEMORY_VERSIONS: tuple[Version, ...] = (LITE_06_VERSION, LITE_04_VERSION, LITE_02_VERSION)
RSS_MARGIN_MIB = 16.0
"""Allowed RSS growth from the first third of the run to the last, in MiB (or the fraction below)."""
RSS_MARGIN_FRACTION = 0.10
OBJECTS_MARGIN_FRACTION = 0.05
"""Allowed growth of the live object count between waves, from the first third of the run to the last."""
READ_TIMEOUT = 5.0
"""A subscriber that waits this long for a group counts a stall."""
QUIET_TIMEOUT = 15.0
"""How long the end of a wave may take to settle (sessions closed, tasks finished)."""
IDLE_TIMEOUT = 5.0
"""The server's QUIC idle timeout. A client's CONNECTION_CLOSE lost on the lossy path leaves its
session open on the server until then (QUIC has no other way to learn it), so it must be well
under :data:`QUIET_TIMEOUT`."""
MAX_STALL_FRACTION = 0.01
"""Stalled reads allowed, as a share of subscriptions: a subscriber may pick a broadcast whose
publisher's close was lost, which stays announced until the idle timeout."""


def rss_mib() -> float:
    """This process's resident set size in MiB (``VmRSS``; the peak where /proc is missing)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Sample:
    at: float
    """Seconds since the start."""
    rss_mib: float
    tasks: int
    sessions: int
    """The relay's live sessions."""
    wave: int


@dataclass
class Quiet:
    """The state after a wave's sessions have gone."""

    wave: int
    tasks: int
    sessions: int
    broadcasts: int
    settled_in: float
    objects: int = 0
    """Objects the garbage collector tracks, after a collection."""


@dataclass
class Counters:
    sessions: int = 0
    quic_sessions: int = 0
    subscriptions: int = 0
    groups: int = 0
    bytes: int = 0
    announcements: int = 0
    withdrawals: int = 0
    stalls: int = 0
    errors: list[str] = field(default_factory=list)
    """Unexpected exceptions in the workload."""
    logged: list[str] = field(default_factory=list)
    """Errors the library logged (first lines)."""


@dataclass
class SoakReport:
    duration: float
    samples: list[Sample] = field(default_factory=list)
    quiet: list[Quiet] = field(default_factory=list)
    baseline: Quiet | None = None
    counters: Counters = field(default_factory=Counters)
    packets_lost: int = 0

    def thirds(self) -> tuple[list[Sample], list[Sample]]:
        """The samples of the first third (after the warm-up wave) and of the last third."""
        warm = [s for s in self.samples if s.wave >= 1] or self.samples
        if not warm:
            return [], []
        start, end = warm[0].at, warm[-1].at
        third = (end - start) / 3
        return [s for s in warm if s.at <= start + third], [s for s in warm if s.at >= end - third]

    def rss_growth(self) -> tuple[float, float, float]:
        """``(first third's max RSS, last third's max RSS, allowed growth)`` in MiB."""
        first, last = self.thirds()
        if not first or not last:
            return 0.0, 0.0, RSS_MARGIN_MIB
        before, after = max(s.rss_mib for s in first), max(s.rss_mib for s in last)
        return before, after, max(RSS_MARGIN_MIB, before * RSS_MARGIN_FRACTION)

    def object_growth(self) -> tuple[int, int]:
        """The most objects alive between waves: ``(in the first third, in the last third)``."""
        if len(self.quiet) < 3:
            return 0, 0
        third = max(1, len(self.quiet) // 3)
        return max(q.objects for q in self.quiet[:third]), max(q.objects for q in self.quiet[-third:])

    def problems(self) -> list[str]:
        """Why the run is not flat (empty: it is)."""
        found: list[str] = []
        before, after, allowed = self.rss_growth()
        if after - before > allowed:
            found.append(f"RSS grew {after - before:.1f} MiB (from {before:.1f} to {after:.1f}; {allowed:.1f} allowed)")
        first, last = self.object_growth()
        if last > first * (1 + OBJECTS_MARGIN_FRACTION):
            found.append(f"live objects between waves grew from {first} to {last}")
        base = self.baseline
        if base is None:
            found.append("no baseline was taken")
        else:
            for quiet in self.quiet:
                if (quiet.tasks, quiet.sessions, quiet.broadcasts) != (base.tasks, base.sessions, base.broadcasts):
                    found.append(f"after wave {quiet.wave}: {quiet.tasks} tasks, {quiet.sessions} sessions, "
                                 f"{quiet.broadcasts} broadcasts; baseline {base.tasks}, {base.sessions}, {base.broadcasts}")
        if len(self.quiet) < 2:
            found.append(f"only {len(self.quiet)} waves completed")
        if self.counters.errors:
            found.append(f"{len(self.counters.errors)} unexpected errors, first: {self.counters.errors[0]}")
        if self.counters.logged:
            found.append(f"{len(self.counters.logged)} errors logged by moqt_asgi, first: {self.counters.logged[0]}")
        if self.counters.stalls > MAX_STALL_FRACTION * max(1, self.counters.subscriptions):
            found.append(f"{self.counters.stalls} reads stalled for {READ_TIMEOUT:.0f} s")
        if self.counters.groups == 0:
            found.append("no group was received")
        return found

    def table(self) -> str:
        lines = [f"{'time':>7} {'wave':>5} {'RSS MiB':>8} {'tasks':>6} {'sessions':>8}"]
        lines += [f"{s.at:7.1f} {s.wave:5d} {s.rss_mib:8.1f} {s.tasks:6d} {s.sessions:8d}" for s in self.samples]
        return "\n".join(lines)

    def summary(self) -> str:
        c = self.counters
        before, after, allowed = self.rss_growth()
        base = self.baseline
        lines = [
            f"duration {self.duration:.0f} s, {len(self.quiet)} waves; sessions {c.sessions} ({c.quic_sessions} over "
            f"lossy UDP, {self.packets_lost} datagrams lost), subscriptions {c.subscriptions}, groups read {c.groups} "
            f"({c.bytes / 1e6:.1f} MB), broadcasts announced {c.announcements} / withdrawn {c.withdrawals}, "
            f"reads stalled {c.stalls}, errors logged {len(c.logged)}",
            f"RSS max, first third {before:.1f} MiB, last third {after:.1f} MiB (allowed growth {allowed:.1f} MiB)",
            "live objects between waves, max, first third {} / last third {}".format(*self.object_growth()),
        ]
        if base is not None:
            settle = max((q.settled_in for q in self.quiet), default=0.0)
            lines.append(f"between waves: baseline {base.tasks} tasks, {base.sessions} sessions, {base.broadcasts} "
                         f"broadcasts; after every wave: tasks {sorted({q.tasks for q in self.quiet})}, sessions "
                         f"{sorted({q.sessions for q in self.quiet})}; slowest settle {settle:.2f} s")
        problems = self.problems()
        lines.append("verdict: FLAT" if not problems else "verdict: NOT FLAT\n  " + "\n  ".join(problems))
        return "\n".join(lines)


def _exception_name(exc: BaseException) -> str:
    """``SessionClosed``; for a group, ``ExceptionGroup(SessionClosed, ...)``."""
    if isinstance(exc, BaseExceptionGroup):
        return f"{type(exc).__name__}({', '.join(_exception_name(e) for e in exc.exceptions)})"
    return type(exc).__name__


class _ErrorLog(logging.Handler):
    """Keeps every record at ERROR or above as one line: logger, first line, exception type."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.name}: {record.getMessage().splitlines()[0]}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f" [{_exception_name(record.exc_info[1])}]"
        self.into.append(line)


def live_tasks() -> int:
    """Unfinished asyncio tasks other than the one asking."""
    current = asyncio.current_task()
    return sum(1 for task in asyncio.all_tasks() if not task.done() and task is not current)


class Peer:
    """A client session; for the in-memory transport, also the task serving its other end."""

    def __init__(self, session: Session, serving: asyncio.Task[None] | None = None) -> None:
        self.session = session
        self.serving = serving

    async def close(self) -> None:
        await self.session.aclose()
        if self.serving is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self.serving, QUIET_TIMEOUT)


async def memory_peer(app: MoQ, *, mux: TrackMux | None = None, path: str = "/", version: Version = LITE_06_VERSION,
                      on_session: weakref.WeakSet[Session] | None = None) -> Peer:
    """A client session on ``app`` over the in-memory transport, speaking ``version``."""
    client_conn, server_conn = memory_pair()
    protocol = version.alpn
    hook = on_session.add if on_session is not None else None
    serving = asyncio.ensure_future(serve_connection(app, server_conn, transport="memory", protocol=protocol,
                                                     on_session=hook))
    try:
        start = await start_client(client_conn, app.limits, protocol=protocol, path=path, versions=(version,))
        session = Session(client_conn, start.codec, mux=mux, limits=app.limits, is_client=True, path=path,
                          session_stream=start.session_stream)
        session.start()
        await session.wait_started()
    except BaseException:
        client_conn.close()
        serving.cancel()
        raise
    return Peer(session, serving)


class Soak:
    """The relay under test, its QUIC server behind a lossy link, and the churn that drives it."""

    def __init__(self, certificate: Certificate, *, seed: int = 1, quic_share: float = 0.1, loss: float = 0.01,
                 publishers: int = 3, subscribers: int = 12) -> None:
        self.certificate = certificate
        self.rng = random.Random(seed)
        self.quic_share = quic_share
        self.loss = loss
        self.publishers = publishers
        self.subscribers = subscribers
        self.relay = Relay()
        self.app = MoQ(mux=self.relay.mux)
        self.app.add_route("/{path:path}", self.relay)
        self.server: QuicServer | None = None
        self.net: UdpRelay | None = None
        self.sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self.counters = Counters()
        self.wave = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Soak]:
        await self.app.startup()
        self.server = QuicServer(self.app, host=HOST, port=0, certfile=str(self.certificate.cert),
                                 keyfile=str(self.certificate.key), webtransport=False,
                                 quic=QuicSettings(idle_timeout=IDLE_TIMEOUT))
        self.server.on_session = self.sessions.add
        await self.server.start()
        self.net = UdpRelay(self.server.address, loss=self.loss, reorder=self.loss, seed=self.rng.randrange(1 << 30),
                            max_log=0, upstream_idle=5.0)
        await self.net.start()
        try:
            yield self
        finally:
            await self.net.close()
            await self.server.close()
            await self.app.shutdown()

    @property
    def live_sessions(self) -> int:
        return sum(1 for session in list(self.sessions) if not session.closed)

    def broadcasts(self) -> int:
        return len(self.relay.mux.active_paths(PREFIX))

    async def connect(self, mux: TrackMux | None = None, *, quic: bool | None = None) -> Peer:
        """A new client session: over lossy UDP with probability ``quic_share``, else in memory."""
        if quic is None:
            quic = self.rng.random() < self.quic_share
        self.counters.sessions += 1
        if quic:
            assert self.net is not None
            self.counters.quic_sessions += 1
            url = f"moql://{HOST}:{self.net.port}{SESSION_PATH}"
            return Peer(await dial(url, fingerprint=self.certificate.fingerprint, mux=mux))
        version = self.rng.choice(MEMORY_VERSIONS)
        return await memory_peer(self.app, mux=mux, path=SESSION_PATH, version=version, on_session=self.sessions)

    def error(self, where: str, exc: BaseException) -> None:
        self.counters.errors.append(f"{where}: {exc!r}")
        logger.warning("%s failed: %r", where, exc, exc_info=exc)

    # -- publishers
    async def feed(self, track: TrackProducer, rng: random.Random) -> None:
        """A group of one to three frames every 20 ms, 50 bytes to 3 kB each."""
        while True:
            group = track.append_group()
            for _ in range(rng.randint(1, 3)):
                group.write_frame(rng.randbytes(rng.randint(50, 3000)))
            group.finish()
            await asyncio.sleep(0.02)

    async def publisher(self, name: str, lifetime: float, *, quic: bool | None = None) -> None:
        """Announce ``name``, feed it; halfway, withdraw it and announce ``name-2`` instead; leave after ``lifetime``."""
        rng = random.Random(self.rng.random())
        mux = TrackMux()
        peer = await self.connect(mux, quic=quic)
        feeders: list[asyncio.Task[None]] = []
        try:
            for path in (name, f"{name}-2"):
                broadcast = Broadcast(path)
                track = broadcast.create_track(TRACK)
                announcement: Announcement = mux.publish(path, broadcast)
                self.counters.announcements += 1
                feeders.append(asyncio.ensure_future(self.feed(track, rng)))
                await asyncio.sleep(lifetime / 2)
                announcement.end()
                broadcast.close()
                self.counters.withdrawals += 1
                feeders.pop().cancel()
        finally:
            for task in feeders:
                task.cancel()
            await peer.close()

    # -- subscribers
    async def read_some(self, session: Session, path: str, groups: int) -> None:
        reader = await asyncio.wait_for(session.subscribe(path, TRACK), READ_TIMEOUT)
        self.counters.subscriptions += 1
        try:
            for _ in range(groups):
                try:
                    group = await asyncio.wait_for(reader.next_group(), READ_TIMEOUT)
                except TimeoutError:
                    self.counters.stalls += 1
                    return
                if group is None:
                    return  # the publisher withdrew it
                with contextlib.suppress(MoQError):  # a group reset because a newer one superseded it
                    async for frame in group:
                        self.counters.bytes += len(frame)
                    self.counters.groups += 1
        except MoQError:
            pass  # the publisher left mid-read
        finally:
            reader.close()

    async def subscriber(self, rounds: int) -> None:
        peer = await self.connect()
        try:
            announcements = await asyncio.wait_for(peer.session.announced(PREFIX), READ_TIMEOUT)
            try:
                for _ in range(rounds):
                    if not announcements.active:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(announcements.next(), READ_TIMEOUT)
                    paths = sorted(announcements.active)
                    if not paths:
                        self.counters.stalls += 1
                        return
                    with contextlib.suppress(MoQError):  # refused: withdrawn between announce and subscribe
                        await self.read_some(peer.session, self.rng.choice(paths), self.rng.randint(2, 8))
            finally:
                announcements.close()
        finally:
            await peer.close()

    async def guarded(self, where: str, coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except (MoQError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                self.counters.stalls += 1
            else:
                self.error(where, exc)
        except Exception as exc:
            self.error(where, exc)

    async def run_wave(self, length: float) -> None:
        """One wave of churn, about ``length`` seconds; returns when its sessions have all left."""
        self.wave += 1
        wave = self.wave
        jobs = [self.guarded("publisher", self.publisher(f"{PREFIX}/w{wave}p{i}", length * self.rng.uniform(0.5, 0.9)))
                for i in range(self.publishers)]
        jobs += [self.guarded("subscriber", self.subscriber(self.rng.randint(1, 3))) for _ in range(self.subscribers)]

        async def staggered(index: int, job: object) -> None:
            await asyncio.sleep(self.rng.uniform(0, length * 0.3) if index >= self.publishers else 0)
            await job  # type: ignore[misc]

        await asyncio.gather(*(staggered(i, job) for i, job in enumerate(jobs)))

    async def settle(self, baseline: Quiet | None) -> Quiet:
        """Wait until tasks, sessions and broadcasts are back to ``baseline`` (or for a while); what they are then."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            quiet = Quiet(self.wave, live_tasks(), self.live_sessions, self.broadcasts(), loop.time() - start)
            done = baseline is not None and (quiet.tasks, quiet.sessions, quiet.broadcasts) == (
                baseline.tasks, baseline.sessions, baseline.broadcasts)
            if done or quiet.settled_in > (QUIET_TIMEOUT if baseline is not None else 0.5):
                gc.collect()
                quiet.objects = len(gc.get_objects())
                return quiet
            await asyncio.sleep(0.05)


async def soak(certificate: Certificate, duration: float, *, wave_length: float = 4.0, sample_every: float = 5.0,
               seed: int = 1, quic_share: float = 0.1, loss: float = 0.01, publishers: int = 3,
               subscribers: int = 12, progress: bool = False) -> SoakReport:
    """Churn against a relay for ``duration`` seconds; the samples and the verdict in a :class:`SoakReport`."""
    report = SoakReport(duration)
    driver = Soak(certificate, seed=seed, quic_share=quic_share, loss=loss, publishers=publishers,
                  subscribers=subscribers)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def sampler() -> None:
        while True:
            sample = Sample(loop.time() - start, rss_mib(), live_tasks(), driver.live_sessions, driver.wave)
            report.samples.append(sample)
            if progress:
                print(f"{sample.at:7.1f} {sample.wave:5d} {sample.rss_mib:8.1f} {sample.tasks:6d} {sample.sessions:8d}",
                      flush=True)
            await asyncio.sleep(sample_every)

    errors = _ErrorLog(driver.counters.logged)
    library = logging.getLogger("moqt_asgi")
    library.addHandler(errors)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(library.removeHandler, errors)
        await stack.enter_async_context(driver.running())
        steady_mux = TrackMux()
        steady = Broadcast(f"{PREFIX}/steady")
        steady_mux.publish(steady.path, steady)
        steady_peer = await driver.connect(steady_mux, quic=False)
        feeding = asyncio.ensure_future(driver.feed(steady.create_track(TRACK), random.Random(seed)))
        sampling = asyncio.ensure_future(sampler())
        try:
            await driver.run_wave(wave_length)  # warm-up: caches, codecs, the first QUIC handshake
            report.baseline = await driver.settle(None)
            while loop.time() - start < duration:
                await driver.run_wave(wave_length)
                report.quiet.append(await driver.settle(report.baseline))
        finally:
            sampling.cancel()
            feeding.cancel()
            await steady_peer.close()
        report.packets_lost = sum(stats.lost for stats in driver.net.stats.values()) if driver.net else 0
    report.counters = driver.counters
    report.duration = loop.time() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--wave", type=float, default=4.0, help="seconds per wave of churn (default 4)")
    parser.add_argument("--publishers", type=int, default=3, help="publishers per wave (default 3)")
    parser.add_argument("--subscribers", type=int, default=12, help="subscribers per wave (default 12)")
    parser.add_argument("--quic-share", type=float, default=0.1, help="share of sessions over lossy UDP (default 0.1)")
    parser.add_argument("--loss", type=float, default=0.01, help="loss and reordering on that UDP path (default 0.01)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"soak for {args.minutes:g} min; samples every {args.sample_every:g} s", flush=True)
    print(f"{'time':>7} {'wave':>5} {'RSS MiB':>8} {'tasks':>6} {'sessions':>8}", flush=True)
    started = time.perf_counter()
    with temporary_certificate() as certificate:
        report = asyncio.run(soak(certificate, args.minutes * 60, wave_length=args.wave, sample_every=args.sample_every,
                                  seed=args.seed, quic_share=args.quic_share, loss=args.loss,
                                  publishers=args.publishers, subscribers=args.subscribers, progress=True))
    print(report.summary())
    print(f"(wall time {time.perf_counter() - started:.0f} s)")
    return 0 if not report.problems() else 1


if __name__ == "__main__":
    sys.exit(main())

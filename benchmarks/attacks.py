"""Server memory and CPU under each hostile-input attack, measured from outside the server.

    python -m benchmarks.attacks              # every attack (about four minutes)
    python -m benchmarks.attacks --quick      # smaller attacks (under two minutes)
    python -m benchmarks.attacks --only fetch --before 54dd811

The attacks (``--only`` takes the first word):

* ``edge``: one-byte STREAM frames at the edge of the receive window, on
  many streams of several connections, round after round;
* ``headers``: HTTP/3 HEADERS frames declaring 2^40 bytes, then MiB dribbled;
* ``slow-headers``: request streams whose HEADERS frame, just under the
  cap, never completes;
* ``fetch``: FETCHes of a cached 4 MiB group from a peer that never reads;
* ``announce``: announce streams never read, 1000 paths of 4000 bytes
  announced, one path toggled 500 times;
* ``names``: invented track names subscribed through the relay, the
  publisher answering every name with two groups;
* ``frames``: a publisher whose groups start 16 MiB frames and never finish
  them, while someone subscribes through the relay;
* ``initials``: client Initials from as many spoofed source ports;
* ``subscriptions``: sessions holding hundreds of subscriptions to a live
  track and reading nothing, while a viewer in another process watches it.

Each attack gets a server of its own: ``python -m moqt_asgi serve`` in a
separate process (the example relay, or a small app module written to a
temporary directory when the attack needs a particular publisher), with the
library's default limits. After a warm-up session, with the attacker (and
any publisher it needs) connected, the server's resident set (``VmRSS``)
and CPU time are read; the attack runs from this process; then the
resident set is read again while the attacker still holds what it made the
server keep, along with the peak over the attack (``VmHWM``, restarted at
the baseline, and a 20 ms sampler) and the CPU the server spent.

The bound printed next to each figure is what the documented limits
promise for that attack (``docs/security.md``: the QUIC receive windows,
``Limits.max_fetches``, ``announce_backlog`` x ``max_announce_streams``,
``RelayLimits``...), computed from the attack's own size, plus an allowance
for the state every connection, stream and subscription costs (sizes
measured on CPython 3.11, see the ``*_STATE`` constants), :data:`HEAP_FACTOR`
where buffers grow a packet at a time, and :data:`SLACK` for allocator
noise; two attacks also have a CPU bound. The run exits with status 1 if any
attack goes over its bound on the code being measured.

``--before REV`` also runs every attack against the project at another
revision (unpacked from git into a temporary directory and served from
there), for a before/after comparison; a server whose resident set passes
``--ceiling`` is killed and its row says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moqt_asgi import dial
from moqt_asgi.engine._publisher import _BATCH
from moqt_asgi.engine._scheduler import CHUNK, DEFAULT_HIGH_WATER
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.relay import RelayLimits
from moqt_asgi.transport.settings import QuicSettings
from moqt_asgi.webtransport.h3 import MAX_HEADER_FRAME

from . import _attack_moq as moq
from . import _attack_quic as quic
from ._attack_common import KIB, MIB, Sent, Target, size
from ._attack_server import REPOSITORY, Monitor, ServerProcess, code_at
from ._fanout_servers import tail
from .common import Certificate, temporary_certificate

logger = logging.getLogger("moqt_asgi.attacks")

QUIC = QuicSettings()
LIMITS = DEFAULT_LIMITS
RELAY = RelayLimits()

# -- allowances: what the state of one connection, stream... costs (CPython 3.11, aioquic 1.7)
SLACK = 8 * MIB
"""Allocator and garbage-collector noise around any measurement of a whole process."""
CONNECTION_STATE = 192 * KIB
"""One QUIC connection with a MoQ session: aioquic's connection, TLS and recovery state, the session's tasks
(an idle relay session measured 118 KiB)."""
HALF_OPEN_STATE = 160 * KIB
"""A connection whose handshake never completes: aioquic's connection and TLS state (79 KiB measured)."""
STREAM_STATE = 8 * KIB
"""One open QUIC stream: aioquic's stream and its buffers' bookkeeping, ours, and the task serving it."""
SUBSCRIPTION_STATE = 64 * KIB
"""One subscription served (through a relay: both legs): tasks, futures, reader and writer state
(about 30 KiB measured, tests/test_many_sessions.py)."""
WATCH_ENTRY = 192
"""One path in one announce stream's state: the watcher's delivered set, the encoder's sent set and lite-06 ids,
and a pending entry while the peer is slow (about 150 B by ``sys.getsizeof``)."""
BROADCAST_STATE = 4 * KIB
"""One broadcast a relay learned: its route, announcement, remote broadcast and bookkeeping."""
PATH_COPIES = 4
"""Copies of a broadcast's path a relay keeps (decoded message, routes, the peer's announce state...):
1000 broadcasts of 4000-byte paths measured 18 KiB each with nobody watching."""
HEAP_FACTOR = 2
"""Resident bytes per byte held in buffers grown a packet at a time, many streams interleaved (the heap
fragments: 1.4 to 1.8 measured for HTTP/3 header frames of 32 to 63 KiB on 400 streams)."""
# -- CPU allowances (this 2-core machine, loaded by the attacker in the same box)
HANDSHAKE_CPU = 0.01
"""Seconds of server CPU for one full handshake."""
RECEIVE_CPU_PER_MIB = 0.25
"""Seconds of server CPU to receive and hand up one MiB of stream data (aioquic's Python packet path)."""
HALF_OPEN_CPU = 0.0025
"""Seconds of server CPU for an Initial that creates a connection (its first flight; 1.28 ms measured)."""
INITIAL_CPU = 0.0005
"""Seconds of server CPU for an Initial answered without state (a Retry or a refusal)."""
CPU_SLACK = 0.2
"""Seconds: CPU time is counted in 10 ms ticks, and timers and acknowledgements run meanwhile."""
ATTACK_TIMEOUT = 240.0
HELD_HEADER = MAX_HEADER_FRAME - 1024
"""The HEADERS frames a slow client leaves unfinished: just under the server's cap, so they are buffered."""


@dataclass(frozen=True)
class Bound:
    memory: int
    """Bytes the resident set may grow by."""
    formula: str
    cpu: float | None = None
    """Seconds of CPU the attack may cost (None: not a promise this attack tests)."""


@dataclass(frozen=True)
class Attack:
    key: str
    finding: str
    title: str
    run: Callable[[Target], AbstractAsyncContextManager[moq.Prepared]]
    bound: Callable[[Sent], Bound]
    app: str = "examples.relay:moq"
    app_source: str | None = None
    """Source of the app module when ``app`` is not the example relay."""


@contextlib.asynccontextmanager
async def _plain(run: Callable[[Target, Sent], Awaitable[None]], target: Target) -> AsyncIterator[moq.Prepared]:
    yield lambda sent: run(target, sent)


# -- the attacks, their sizes (full, quick) and what the limits promise
def _edge_frames(target: Target) -> AbstractAsyncContextManager[moq.Prepared]:
    connections = 4 if target.quick else 8
    return _plain(lambda t, sent: quic.edge_frames(t.port, sent, connections=connections, streams=24, rounds=10,
                                                   stop=t.stopped), target)


def _edge_bound(sent: Sent) -> Bound:
    window = QUIC.connection_receive_window
    memory = sent.connections * (window + CONNECTION_STATE) + sent.streams * STREAM_STATE + SLACK
    return Bound(memory, f"{sent.connections} conns x {size(window)} connection_receive_window "
                         f"(max_connections_per_address {QUIC.max_connections_per_address})")


def _headers(target: Target) -> AbstractAsyncContextManager[moq.Prepared]:
    connections, budget = (2, 2 * MIB) if target.quick else (4, 4 * MIB)
    return _plain(lambda t, sent: quic.dribbled_headers(t.port, sent, connections=connections, budget=budget), target)


def _headers_bound(sent: Sent) -> Bound:
    taken = sent.extra.get("taken", 0.0)
    memory = sent.connections * (MAX_HEADER_FRAME + CONNECTION_STATE) + SLACK
    cpu = CPU_SLACK + sent.connections * HANDSHAKE_CPU + taken / MIB * RECEIVE_CPU_PER_MIB
    return Bound(memory, f"{sent.connections} x {size(MAX_HEADER_FRAME)} MAX_HEADER_FRAME; CPU linear in bytes taken",
                 cpu)


def _held_headers(target: Target) -> AbstractAsyncContextManager[moq.Prepared]:
    connections = 2 if target.quick else 4
    return _plain(lambda t, sent: quic.held_headers(t.port, sent, connections=connections, streams=100,
                                                    declared=HELD_HEADER, hold=moq.HOLD), target)


def _held_headers_bound(sent: Sent) -> Bound:
    per_connection = min(QUIC.connection_receive_window, sent.streams // max(1, sent.connections) * MAX_HEADER_FRAME)
    memory = (sent.connections * (HEAP_FACTOR * per_connection + CONNECTION_STATE) + sent.streams * STREAM_STATE
              + SLACK)
    return Bound(memory, f"{sent.connections} conns x min({sent.streams // max(1, sent.connections)} streams x "
                         f"{size(MAX_HEADER_FRAME)} MAX_HEADER_FRAME, {size(QUIC.connection_receive_window)} "
                         f"connection_receive_window) x {HEAP_FACTOR} heap, until header_timeout {QUIC.header_timeout:g} s")


@contextlib.asynccontextmanager
async def _initials(target: Target) -> AsyncIterator[moq.Prepared]:
    datagrams = quic.initial_datagrams(target.port, 1000 if target.quick else 3000)
    yield lambda sent: quic.spoofed_initials(target.port, sent, datagrams)


def _initials_bound(sent: Sent) -> Bound:
    half_open = QUIC.retry_threshold if QUIC.retry == "auto" else (0 if QUIC.retry else sent.requests)
    if QUIC.max_connections_per_address is not None:
        half_open = min(half_open, QUIC.max_connections_per_address)
    memory = half_open * HALF_OPEN_STATE + SLACK
    cpu = CPU_SLACK + half_open * HALF_OPEN_CPU + sent.requests * INITIAL_CPU
    return Bound(memory, f"retry={QUIC.retry!r}: {half_open} half-open (retry_threshold) x {size(HALF_OPEN_STATE)}, "
                         "the rest stateless", cpu)


def _fetch(target: Target) -> AbstractAsyncContextManager[moq.Prepared]:
    connections = 1 if target.quick else 4
    return moq.fetch_flood(target, connections=connections, per_connection=50)


def _queued(connections: int, writers: int) -> int:
    """What the scheduler keeps queued: ``DEFAULT_HIGH_WATER`` per connection and a ``CHUNK`` per waiting writer."""
    return connections * DEFAULT_HIGH_WATER + writers * CHUNK


def _fetch_bound(sent: Sent) -> Bound:
    served = sent.connections * LIMITS.max_fetches
    memory = (_queued(sent.connections, served) + sent.connections * CONNECTION_STATE + sent.streams * STREAM_STATE
              + SLACK)
    return Bound(memory, f"{sent.connections} conns x ({size(DEFAULT_HIGH_WATER)} queued + max_fetches "
                         f"{LIMITS.max_fetches} x {size(CHUNK)}), no copy of the group")


def _announce(target: Target) -> AbstractAsyncContextManager[moq.Prepared]:
    sessions = 1 if target.quick else 4
    return moq.announce_flood(target, sessions=sessions, streams=40, paths=1000, path_length=4000, toggles=500)


def _announce_bound(sent: Sent) -> Bound:
    paths, path_length = int(sent.extra["paths"]), int(sent.extra["path_length"])
    watching = int(sent.extra["sessions"]) * min(int(sent.extra["streams"]), LIMITS.max_announce_streams)
    per_stream = LIMITS.announce_backlog + _BATCH + 2 * (path_length + 64) + paths * WATCH_ENTRY
    memory = (watching * per_stream + paths * (BROADCAST_STATE + PATH_COPIES * path_length)
              + sent.connections * CONNECTION_STATE + sent.streams * STREAM_STATE + SLACK)
    return Bound(memory, f"{watching} streams (max_announce_streams {LIMITS.max_announce_streams}/session) x "
                         f"({size(LIMITS.announce_backlog)} announce_backlog + {paths} paths) + {paths} broadcasts")


def _names(target: Target) -> AbstractAsyncContextManager[moq.Prepared]:
    return moq.invented_names(target, names=100, group_size=256 * KIB if target.quick else MIB)


def _names_bound(sent: Sent) -> Bound:
    tracks = min(int(sent.extra["names"]), RELAY.max_tracks_per_broadcast, RELAY.max_upstream_tracks)
    group = min(int(sent.extra["group_size"]), RELAY.max_group_bytes)
    cached = min(RELAY.max_cached_bytes, tracks * min(int(sent.extra["groups"]), RELAY.cached_groups) * group)
    memory = (cached + QUIC.connection_receive_window + _queued(sent.connections, tracks)
              + tracks * SUBSCRIPTION_STATE + sent.connections * CONNECTION_STATE + sent.streams * STREAM_STATE + SLACK)
    return Bound(memory, f"min(max_cached_bytes {size(RELAY.max_cached_bytes)}, max_tracks_per_broadcast "
                         f"{RELAY.max_tracks_per_broadcast} x {RELAY.cached_groups} groups x {size(group)}) "
                         f"+ {size(QUIC.connection_receive_window)} unread upstream")


def _unfinished(target: Target) -> AbstractAsyncContextManager[moq.Prepared]:
    streams, partial = (8, 4 * MIB) if target.quick else (16, 4 * MIB)
    return moq.unfinished_frames(target, streams=streams, declared=LIMITS.max_frame_size, partial=partial)


def _unfinished_bound(sent: Sent) -> Bound:
    streams = int(sent.extra["streams"])
    memory = (streams * LIMITS.max_frame_size + QUIC.connection_receive_window + sent.connections * CONNECTION_STATE
              + streams * STREAM_STATE + SLACK)
    return Bound(memory, f"{streams} readers waiting for a frame x {size(LIMITS.max_frame_size)} max_frame_size "
                         f"+ {size(QUIC.connection_receive_window)} connection_receive_window")


def _subscriptions(target: Target) -> AbstractAsyncContextManager[moq.Prepared]:
    sessions, per_session = (1, 500) if target.quick else (2, 900)
    return moq.unread_subscriptions(target, sessions=sessions, per_session=per_session)


def _subscriptions_bound(sent: Sent) -> Bound:
    subscriptions = int(sent.extra["subscriptions"])
    memory = (_queued(sent.connections, subscriptions) + subscriptions * SUBSCRIPTION_STATE
              + sent.connections * CONNECTION_STATE + sent.streams * STREAM_STATE + SLACK)
    return Bound(memory, f"{sent.connections} conns x {size(DEFAULT_HIGH_WATER)} queued + {subscriptions} "
                         f"subscriptions x ({size(CHUNK)} + state); frames shared, not copied")


ATTACKS = (
    Attack("edge", "C1", "edge-of-window STREAM frames", _edge_frames, _edge_bound),
    Attack("headers", "H2", "HEADERS of 2^40 bytes, dribbled", _headers, _headers_bound),
    Attack("slow-headers", "H2", "HEADERS just under the cap, never finished", _held_headers, _held_headers_bound),
    Attack("fetch", "C2", "FETCH of a cached group, never read", _fetch, _fetch_bound, app="_attack_app_fetch:moq",
           app_source=moq.FETCH_APP),
    Attack("announce", "H1/M4", "announce streams never read", _announce, _announce_bound),
    Attack("names", "H4", "invented track names via the relay", _names, _names_bound),
    Attack("frames", "-", "unfinished frames into the relay", _unfinished, _unfinished_bound),
    Attack("initials", "H3", "Initials from spoofed ports", _initials, _initials_bound),
    Attack("subscriptions", "H3", "subscriptions never read", _subscriptions, _subscriptions_bound),
)
BY_KEY = {attack.key: attack for attack in ATTACKS}


# -- running one attack against one server
@dataclass
class Row:
    key: str
    finding: str
    title: str
    code: str
    sent: str = ""
    sent_bytes: int = 0
    requests: int = 0
    unit: str = ""
    baseline: int = 0
    held: int = 0
    """Resident set growth at the end of the attack, the attacker still connected."""
    peak: int = 0
    """Highest resident set growth during the attack."""
    cpu: float = 0.0
    attacker_cpu: float = 0.0
    """CPU seconds this process (attacker, publishers, viewers) spent meanwhile: near the wall time, it was the limit."""
    seconds: float = 0.0
    """Wall time of the attack."""
    bound: int = 0
    bound_cpu: float | None = None
    formula: str = ""
    killed: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def over(self) -> bool:
        return (self.killed or self.error is not None or self.peak > self.bound
                or (self.bound_cpu is not None and self.cpu > self.bound_cpu))

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "FAILED"
        if self.killed:
            return "OVER (killed at the ceiling)"
        reasons = []
        if self.peak > self.bound:
            reasons.append("memory")
        if self.bound_cpu is not None and self.cpu > self.bound_cpu:
            reasons.append("CPU")
        return f"OVER ({', '.join(reasons)})" if reasons else "within"


async def warm_up(port: int, fingerprint: str) -> None:
    """A legitimate session and an HTTP/3 handshake, so the baseline has every module loaded."""
    session = await asyncio.wait_for(dial(f"moql://127.0.0.1:{port}/", fingerprint=fingerprint), 15)
    async with session:
        announcements = await session.announced("")
        announcements.close()
    async with quic.raw_clients(port, 1, "h3"):
        pass


async def _watched(prepared: moq.Prepared, sent: Sent, monitor: Monitor, killed: list[bool]) -> None:
    """Run the attack; once ``monitor`` killed the server, give it a few seconds to notice, then cancel it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ATTACK_TIMEOUT
    task = asyncio.ensure_future(prepared(sent))
    while not task.done():
        await asyncio.wait({task}, timeout=0.1)
        if monitor.killed and not killed[0]:
            killed[0] = True  # the attack sees it through Target.stopped
            deadline = min(deadline, loop.time() + 15)
        if loop.time() > deadline:
            task.cancel()
            await asyncio.wait({task})
    exc = None if task.cancelled() else task.exception()
    if not monitor.killed:
        if task.cancelled():
            raise RuntimeError(f"the attack did not finish in {ATTACK_TIMEOUT:.0f} s")
        if exc is not None:
            raise exc
    elif task.cancelled() or exc is not None:
        sent.notes.append(f"interrupted when the server was killed ({exc!r})" if exc else "interrupted when the server "
                          "was killed")


async def run_one(attack: Attack, *, quick: bool, code: str, root: Path, app_dir: Path, certificate: Certificate,
                  ceiling: int, log: Path) -> Row:
    row = Row(attack.key, attack.finding, attack.title, code)
    cert, key, fingerprint = certificate.cert, certificate.key, certificate.fingerprint
    if attack.app_source is not None:
        (app_dir / f"{attack.app.partition(':')[0]}.py").write_text(attack.app_source)
    try:
        server = await ServerProcess.start(attack.app, certfile=cert, keyfile=key, root=root, app_dir=app_dir, log=log)
    except Exception as exc:
        row.error = f"{exc!r}"
        return row
    killed = [False]
    sent = Sent()
    target = Target(server.port, fingerprint, quick, stopped=lambda: killed[0], cpu=server.cpu)
    try:
        await warm_up(server.port, fingerprint)
        async with attack.run(target) as prepared:
            await target.idle(timeout=10)
            server.reset_peak()
            row.baseline, cpu_before = server.rss(), server.cpu()
            ours, started = time.process_time(), time.monotonic()
            with Monitor(server, ceiling) as monitor:
                await _watched(prepared, sent, monitor, killed)
                row.attacker_cpu, row.seconds = time.process_time() - ours, time.monotonic() - started
                held = server.rss()
                row.killed = monitor.killed
                row.peak = max(monitor.highest, server.peak()) - row.baseline
            row.held = (held - row.baseline) if held else row.peak
            row.cpu = server.cpu() - cpu_before
    except Exception as exc:
        row.error = f"{exc!r}"
        logger.warning("%s against %s failed: %r\n%s", attack.key, code, exc, tail(log))
    finally:
        await server.stop()
    row.sent, row.sent_bytes, row.requests, row.unit = sent.summary, sent.bytes, sent.requests, sent.unit
    row.notes = list(sent.notes)
    if row.error is None:
        bound = attack.bound(sent)
        row.bound, row.bound_cpu, row.formula = bound.memory, bound.cpu, bound.formula
    return row


# -- the table
def mib(count: float) -> str:
    return f"{count / MIB:.1f}"


def format_table(rows: list[Row]) -> str:
    header = ("finding", "attack", "code", "sent", "RSS +MiB", "peak +MiB", "CPU s", "bound", "verdict")
    cells = []
    for row in rows:
        if row.error is not None:
            cells.append((row.finding, row.title, row.code, "-", "-", "-", "-", "-", f"FAILED: {row.error}"))
            continue
        bound = f"{mib(row.bound)} MiB"
        if row.bound_cpu is not None:
            bound += f", {row.bound_cpu:.1f} s"
        peak = f">{mib(row.peak)}" if row.killed else mib(row.peak)
        cells.append((row.finding, row.title, row.code, f"{size(row.sent_bytes)}, {row.requests} {row.unit}",
                      mib(row.held), peak, f"{row.cpu:.2f}", bound, row.verdict))
    widths = [max(len(line[i]) for line in (header, *cells)) for i in range(len(header))]
    numeric = {4, 5, 6}

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.rjust(widths[i]) if i in numeric else v.ljust(widths[i])
                                 for i, v in enumerate(values)) + " |"

    separator = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2))
                               for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), separator, *(line(c) for c in cells)])


def format_details(rows: list[Row]) -> str:
    lines = []
    for row in rows:
        if row.error is not None:
            continue
        lines.append(f"- {row.finding} {row.title} ({row.code}): {row.sent}")
        lines.append(f"  {row.seconds:.1f} s; CPU: server {row.cpu:.2f} s, attacker {row.attacker_cpu:.2f} s")
        lines.append(f"  bound: {row.formula}, + state and {size(SLACK)} slack = {mib(row.bound)} MiB"
                     + (f"; CPU {row.bound_cpu:.2f} s" if row.bound_cpu is not None else ""))
        lines += [f"  {note}" for note in row.notes]
    return "\n".join(lines)


# -- the command line
async def main_async(args: argparse.Namespace) -> list[Row]:
    chosen = [BY_KEY[key] for key in args.only] if args.only else list(ATTACKS)
    ceiling = args.ceiling * MIB
    rows: list[Row] = []

    def progress(message: str) -> None:
        if not args.json:
            print(f"  {message}", file=sys.stderr, flush=True)

    with temporary_certificate() as certificate, tempfile.TemporaryDirectory(prefix="moqt-attacks-") as work, \
            contextlib.ExitStack() as stack:
        app_dir = Path(work)
        codes: list[tuple[str, Path]] = [("now", REPOSITORY)]
        if args.before:
            root, commit = stack.enter_context(code_at(args.before))
            codes.append((commit, root))
        for attack in chosen:
            for code, root in codes:
                progress(f"{attack.finding} {attack.title} against {code} ...")
                row = await run_one(attack, quick=args.quick, code=code, root=root, app_dir=app_dir,
                                    certificate=certificate, ceiling=ceiling, log=app_dir / f"{attack.key}-{code}.log")
                progress(f"    peak +{mib(row.peak)} MiB, {row.cpu:.2f} s CPU: {row.verdict}")
                rows.append(row)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attacks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=list(BY_KEY), metavar="NAME",
                        help=f"run only this attack (repeatable): {', '.join(BY_KEY)}")
    parser.add_argument("--quick", action="store_true", help="smaller attacks (about two minutes in all)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    parser.add_argument("--before", metavar="REV",
                        help="also attack the project at this git revision (e.g. 54dd811), for a before/after")
    parser.add_argument("--ceiling", type=int, default=1536, metavar="MIB",
                        help="kill an attacked server whose resident set passes this many MiB (default 1536)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the attacking clients see")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL)
    logging.getLogger("moqt_asgi.attacks").setLevel(logging.WARNING)
    rows = asyncio.run(main_async(args))
    now = [row for row in rows if row.code == "now"]
    if args.json:
        print(json.dumps([{**asdict(row), "verdict": row.verdict, "over": row.over} for row in rows], indent=2))
    else:
        print()
        print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; each attack against a fresh "
              f"`python -m moqt_asgi serve` with default limits{' (quick sizes)' if args.quick else ''}; "
              "RSS = resident set growth with the attacker still connected, peak = highest growth; MiB = 2^20 bytes")
        print(format_table(rows))
        print()
        print(format_details(rows))
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    if any(row.over for row in now):
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Fan-out: one live publisher, N subscribers, through a relay; how large an audience does one core serve?

    python -m benchmarks.fanout                         # every server, both streams, N = 50 ... 500
    python -m benchmarks.fanout --quick                 # one CI-sized point (10 subscribers, 5 s)
    python -m benchmarks.fanout --server serve-quic --server moq-rs --stream frames --subscribers 50,100,150,200
    python -m benchmarks.fanout --json                  # one JSON document instead of the tables

For each point (a server, a stream, a number of subscribers N):

1. the relay starts in a process of its own, pinned to one core
   (``--server-core``, the last one by default): ``python -m moqt_asgi serve
   examples.relay:moq`` reached over native QUIC or WebTransport, the same
   on qh3 (``--quic-backend qh3 --no-webtransport``, native QUIC), stock
   Hypercorn serving the same app over WebTransport, or moq-rs's relay
   (``moq.Server`` with one ``moq.OriginProducer``);
2. a moq-rs publisher (another process) connects, announces
   ``fanout/live`` and writes the stream on a fixed schedule, every frame
   stamped with its send time (``time.monotonic_ns()``, which every process
   of a Linux machine shares);
3. N moq-rs subscribers, spread over several load-generator processes
   (``--load-processes``), connect, subscribe and read every frame. The
   publisher and the load generators run on the other cores, so the load
   generator (Rust QUIC) is not what is measured;
4. once everyone is subscribed, a window of ``--duration`` seconds starts
   after ``--warmup`` seconds. Frames the publisher sent inside the window
   count; a subscriber that has not read one ``--grace`` seconds after the
   window ended has not received it (once every subscriber has every frame
   the point ends without waiting out the grace).

Per point: the delivered fraction (frames received / frames sent x N), the
p50, p99 and largest one-way latency over every frame received, the worst
subscriber's delivered fraction and p99, Jain's fairness index over the
frames each subscriber received (1: all alike; past capacity, near 1 means
every subscriber lost alike, towards k/N that k of them took everything),
the server's share of its core and its CPU seconds per thousand frames
delivered (``/proc/PID/stat`` over the window), the share of the window it was runnable but waited for its core
(``/proc/PID/task/*/schedstat``: other processes had it; on a quiet machine
near 0), its resident-set growth per subscriber (``VmRSS`` at the window's
end against the moment only the publisher was connected), how busy the
load-generator cores were (if near 100%, the figures measure the load
generator too), and the datagrams dropped over the window because a receive
buffer was full: by the server's socket (``/proc/net/udp``) and by any
socket of the machine (``RcvbufErrors``). The summary gives, per server, the largest N measured that
meets p99 <= 300 ms with >= 99% delivered, over all subscribers together
and for the worst single subscriber. A server's sweep stops after the first
point where less than half was delivered.

Streams (``--stream``): ``frames`` is 30 frames/s of 1200 B, a group per
second; ``video`` is about 1 Mbit/s, a group per second of a 30 kB keyframe
then 29 frames of 3276 B.

``--at REV`` serves the Python relays from another git revision (a clean
copy, unaffected by uncommitted changes). ``--py-spy DIR`` records the Python servers with py-spy over each window
and prints where their time went (own time per function, and the shares of
moqt_asgi, aioquic, qh3, Hypercorn and asyncio).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _fanout_profile as profiling
from ._attack_server import code_at
from ._fanout_peer import LOAD_CLIENTS, PROFILES
from ._fanout_servers import (
    KINDS,
    REPOSITORY,
    RunningServer,
    ServerKind,
    open_log,
    process_cpu,
    process_wait,
    start_server,
    tail,
    udp_receive_drops,
)
from ._fanout_stats import COLLAPSED, Point, format_points, format_summary
from .common import temporary_certificate

logger = logging.getLogger("moqt_asgi.fanout")

SUBSCRIBERS = (50, 100, 150, 200, 300, 400, 500)
QUICK_SUBSCRIBERS = (10,)
PER_LOAD_PROCESS = 100
"""Subscribers per load-generator process (at least two processes run)."""
READY_TIMEOUT = 180.0
REPORT_TIMEOUT = 60.0
LINE_LIMIT = 64 * 1024 * 1024
"""A load generator's report holds every latency it measured."""


@dataclass(frozen=True)
class Settings:
    """What every point of a run shares: the certificate, the window, the cores, where logs go."""

    certfile: Path
    keyfile: Path
    fingerprint: str
    duration: float
    warmup: float
    grace: float
    server_cores: set[int] | None
    load_cores: set[int] | None
    load_processes: int | None
    connect_batch: int
    load_client: str
    """``moq-rs`` or ``qh3`` (moqt-asgi's client on qh3): the subscribers' implementation."""
    logs: Path
    py_spy: Path | None
    root: Path
    """The copy of the project the Python relays are served from."""

    def processes_for(self, subscribers: int) -> int:
        wanted = self.load_processes or max(2, math.ceil(subscribers / PER_LOAD_PROCESS))
        return max(1, min(wanted, subscribers))


class Peer:
    """A ``benchmarks._fanout_peer`` process (publisher or load generator) and its line protocol."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self._last_cpu = 0.0

    @classmethod
    async def start(cls, log: Path, *args: str) -> Peer:
        with open_log(log) as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks._fanout_peer", *args, cwd=REPOSITORY,
                env={**os.environ, "PYTHONPATH": str(REPOSITORY), "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, limit=LINE_LIMIT)
        return cls(process, log)

    async def line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.log.stem} exited ({self.process.returncode}): {tail(self.log, 5)}")
        return line.decode()

    async def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()

    def waited(self) -> float:
        return process_wait(self.process.pid)

    def cpu(self) -> float:
        value = process_cpu(self.process.pid)
        if value is not None:
            self._last_cpu = value
        return self._last_cpu

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


def split(total: int, parts: int) -> list[int]:
    """``total`` spread as evenly as possible over ``parts``."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def measure(kind: ServerKind, stream: str, subscribers: int, settings: Settings) -> Point:
    """One point: start the server, the publisher and the load generators, time the window, read the figures."""
    point = Point(kind.key, stream, subscribers)
    tag = f"{stream}-{kind.key}-{subscribers}"
    server = await start_server(kind, certfile=settings.certfile, keyfile=settings.keyfile,
                                log=settings.logs / f"{tag}-server.log", cores=settings.server_cores,
                                root=settings.root)
    peers: list[Peer] = []
    try:
        await _measure(server, point, tag, settings, peers)
    finally:
        await asyncio.gather(*(peer.stop() for peer in peers), return_exceptions=True)
        await server.stop()
    return point


async def _measure(server: RunningServer, point: Point, tag: str, settings: Settings, peers: list[Peer]) -> None:
    url, fingerprint = server.url, settings.fingerprint
    publisher = await Peer.start(settings.logs / f"{tag}-publisher.log", "publish", url, fingerprint,
                                 "--profile", point.stream)
    peers.append(publisher)
    await publisher.line(READY_TIMEOUT)
    await asyncio.sleep(1.0)
    point.rss_before = server.rss()
    loads = [await Peer.start(settings.logs / f"{tag}-load{i}.log", "subscribe", url, fingerprint, "--count",
                              str(count), "--connect-batch", str(settings.connect_batch),
                              "--client", settings.load_client)
             for i, count in enumerate(split(point.subscribers, settings.processes_for(point.subscribers)))]
    peers += loads
    ready = await asyncio.gather(*(load.line(READY_TIMEOUT) for load in loads))
    point.connected = sum(int(line.split()[1]) for line in ready)
    start = time.monotonic_ns() + int(settings.warmup * 1e9)
    end = start + int(settings.duration * 1e9)
    grace = int(settings.grace * 1e9)
    for peer in peers:
        await peer.send(f"window {start} {end} {grace}")
    await sleep_until(start)
    cpu_before, load_before = server.cpu(), sum(peer.cpu() for peer in peers)
    drops_before, all_drops_before = server.drops(), udp_receive_drops()
    wait_before, load_wait_before = server.waited(), sum(peer.waited() for peer in peers)
    started = time.monotonic()
    spy = profiling.record(server, settings.py_spy, tag, settings.duration)
    await sleep_until(end)
    point.window_s = time.monotonic() - started
    point.server_cpu_s = server.cpu() - cpu_before
    load_cores = len(settings.load_cores) if settings.load_cores else (os.cpu_count() or 1)
    point.load_cpu = (sum(peer.cpu() for peer in peers) - load_before) / point.window_s / load_cores
    point.rss_after = server.rss()
    point.server_drops = server.drops() - drops_before
    point.server_wait_s = server.waited() - wait_before
    point.load_wait = (sum(peer.waited() for peer in peers) - load_wait_before) / point.window_s
    point.udp_drops = udp_receive_drops() - all_drops_before
    point.load_average = os.getloadavg()
    if not server.alive:
        point.error = f"the server exited: {tail(server.log, 3)}"
    sent = json.loads(await publisher.line(REPORT_TIMEOUT))
    point.sent, point.publisher_late_ms = int(sent["sent"]), float(sent["late_ms"])
    for load in loads:  # a load generator whose subscribers all have every frame reports without the grace
        await load.send(f"sent {point.sent}")
    reports = await asyncio.gather(*(load.line(settings.grace + REPORT_TIMEOUT) for load in loads))
    point.add_subscribers(subscriber for report in reports for subscriber in json.loads(report)["subscribers"])
    if spy is not None:
        await spy


async def sweep(servers: Sequence[str], streams: Sequence[str], audiences: Sequence[int], settings: Settings,
                progress: bool) -> list[Point]:
    """Every point, the servers taking turns at each audience size so that the machine's noise hits them alike."""
    points: list[Point] = []
    stopped: dict[tuple[str, str], int] = {}
    for stream in streams:
        for subscribers in audiences:
            for key in servers:
                if (stream, key) in stopped:
                    points.append(Point(key, stream, subscribers, error=f"not run: collapsed at "
                                                                          f"N={stopped[stream, key]}"))
                    continue
                if progress:
                    print(f"  {stream}: {KINDS[key].label}, {subscribers} subscribers ...", file=sys.stderr, flush=True)
                try:
                    point = await measure(KINDS[key], stream, subscribers, settings)
                except Exception as exc:
                    logger.debug("point failed", exc_info=True)
                    point = Point(key, stream, subscribers, error=f"failed: {exc!r}"[:300])
                points.append(point)
                if point.collapsed:
                    stopped[stream, key] = subscribers
    return points


def pinning(args: argparse.Namespace) -> tuple[set[int] | None, set[int] | None]:
    """(server cores, load cores): the server on one core, everything else on the others."""
    available = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(available) < 2:
        return None, None
    server = args.server_core if args.server_core is not None else available[-1]
    if server not in available:
        raise SystemExit(f"--server-core {server} is not one of the usable cores {available}")
    return {server}, set(available) - {server}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", choices=list(KINDS), help="measure only this server (repeatable)")
    parser.add_argument("--stream", action="append", choices=list(PROFILES), help="only this stream (repeatable)")
    parser.add_argument("--subscribers", type=lambda text: [int(n) for n in text.split(",")],
                        help=f"comma-separated audience sizes (default {','.join(map(str, SUBSCRIBERS))})")
    parser.add_argument("--quick", action="store_true",
                        help="one CI-sized point: 10 subscribers, a 5 s window, the frames stream")
    parser.add_argument("--duration", type=float, help="seconds of the measured window (default 20; quick 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds between all subscribed and the window")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds after the window a frame may still arrive (later: not delivered)")
    parser.add_argument("--load-processes", type=int, help=f"load-generator processes (default N/{PER_LOAD_PROCESS},"
                                                           " at least 2)")
    parser.add_argument("--connect-batch", type=int, default=8,
                        help="connections each load generator sets up at once (default 8)")
    parser.add_argument("--load-client", choices=LOAD_CLIENTS, default="moq-rs",
                        help="the subscribers: moq-rs (default, independent) or moqt-asgi's client on qh3, about "
                             "1.6 times less CPU per frame, for audiences the moq-rs load generators cannot drive")
    parser.add_argument("--server-core", type=int, help="the core the server is pinned to (default the last one)")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="record the Python servers with py-spy over each window, into DIR")
    parser.add_argument("--at", metavar="REV",
                        help="serve the Python relays from this git revision (unpacked into a temporary directory) "
                             "instead of the working tree")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep every process's log here")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    args.servers = args.server or list(KINDS)
    args.streams = args.stream or (["frames"] if args.quick else list(PROFILES))
    args.audiences = args.subscribers or list(QUICK_SUBSCRIBERS if args.quick else SUBSCRIBERS)
    args.duration = args.duration if args.duration is not None else (5.0 if args.quick else 20.0)
    if min(args.audiences) < 1 or args.duration <= 0:
        parser.error("audiences and the duration must be positive")
    return args


async def main_async(args: argparse.Namespace) -> tuple[list[Point], dict[str, object]]:
    server_cores, load_cores = pinning(args)
    if load_cores:
        os.sched_setaffinity(0, load_cores)  # this process, the publisher and the load generators
    conditions: dict[str, object] = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "server_cores": sorted(server_cores) if server_cores else None,
        "load_cores": sorted(load_cores) if load_cores else None,
        "duration_s": args.duration, "warmup_s": args.warmup, "grace_s": args.grace,
        "load_average_start": os.getloadavg(), "load_client": args.load_client,
    }
    with contextlib.ExitStack() as stack:
        certificate = stack.enter_context(temporary_certificate())
        logs = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moqt-fanout-")))
        logs.mkdir(parents=True, exist_ok=True)
        if args.py_spy:
            args.py_spy.mkdir(parents=True, exist_ok=True)
        root = REPOSITORY
        if args.at:
            root, conditions["revision"] = stack.enter_context(code_at(args.at))
        settings = Settings(certificate.cert, certificate.key, certificate.fingerprint, args.duration, args.warmup,
                            args.grace, server_cores, load_cores, args.load_processes, args.connect_batch, args.load_client, logs,
                            args.py_spy, root)
        points = await sweep(args.servers, args.streams, args.audiences, settings, progress=not args.quiet)
    conditions["load_average_end"] = os.getloadavg()
    return points, conditions


def report(points: list[Point], conditions: dict[str, object], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({"conditions": conditions, "points": [p.as_json() for p in points]}, indent=1))
        return
    pins = (f"server pinned to core {conditions['server_cores']}, publisher and load generators to "
            f"{conditions['load_cores']}" if conditions["server_cores"] else "nothing pinned")
    start_load = ", ".join(f"{v:.2f}" for v in conditions["load_average_start"])  # type: ignore[attr-defined]
    end_load = ", ".join(f"{v:.2f}" for v in conditions["load_average_end"])  # type: ignore[attr-defined]
    code = f"relays served from revision {conditions['revision']}; " if "revision" in conditions else ""
    print(f"\npython {conditions['python']}, {conditions['cpus']} CPUs, {conditions['machine']}; {code}{pins}; "
          f"{args.duration:g} s window, {args.grace:g} s grace; subscribers: {args.load_client}; "
          f"load average {start_load} at the start, "
          f"{end_load} at the end")
    for stream in args.streams:
        mine = [p for p in points if p.stream == stream]
        if not mine:
            continue
        print(f"\n{stream}: {PROFILES[stream].describe()}")
        print(format_points(mine))
        print()
        print(format_summary(mine, args.servers))
    print("\nJain: Jain's fairness index over the frames each subscriber received (1: all alike); server core: "
          "share of its one core over the window; CPU s/1k: server CPU seconds per 1000 frames delivered; "
          "RSS/session: resident-set growth per subscriber; load CPU: how busy the load-generator cores were. "
          f"A server's sweep stops after a point with under {COLLAPSED:.0%} delivered.")
    for server in args.servers:
        print(f"  {server}: {KINDS[server].label}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    points, conditions = asyncio.run(main_async(args))
    report(points, conditions, args)
    if args.py_spy:
        profiling.print_summaries(args.py_spy)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Edges: the fan-out of :mod:`benchmarks.fanout` served by our relay alone, and by our relay as the origin of Rust edges.

    python -m benchmarks.edges                      # both setups, N = 50, 100, 200, 400, 800, 1600
    python -m benchmarks.edges --quick              # one CI-sized point per setup (10 subscribers, 5 s)
    python -m benchmarks.edges --setup edges --subscribers 50 --edges 3
    python -m benchmarks.edges --json               # one JSON document instead of the table

Two setups, the same workload as ``benchmarks.fanout --stream frames`` (a
moq-rs publisher of 30 frames/s x 1200 B, every frame stamped with its send
time; N moq-rs subscribers in load-generator processes; the same window,
statistics and objective):

``alone``
    ``python -m moqt_asgi serve examples.relay:moq`` (the origin, pinned to
    one core) and the N subscribers connected to it directly.
``edges``
    the same origin, and ``--edges`` moq-rs edges (``benchmarks._edge_peer``:
    the Rust relay core moq-relay is built on, dialing the origin as a
    moq-relay cluster node does) with the N subscribers spread over them.
    The origin serves one subscription per edge, whatever N.

The origin runs with JWT auth on (``MOQ_AUTH_KEY``): the publisher, the
direct subscribers and the edges present tokens minted with
:func:`moqt_asgi.auth.sign_token` (the edges a cluster token: root ``""``,
put and get ``[""]``). Viewers of the edges present none (the edges do not
check them).

Per point: what ``benchmarks.fanout`` reports (delivered, worst subscriber,
p50/p99/max one-way latency, the origin's share of its core, drops), plus the
origin's CPU seconds over the window, the subscriptions it serves (read from
its ``/metrics``, ``moqt_subscriptions_served``, in the middle of the
window: N alone, one per edge with edges), and the edges' CPU. The edges,
the publisher and the load generators share the other cores: the load
column is how busy those cores were (edges included), and past
``LOAD_SATURATED`` of them the figures measure the load generators as much
as the relays (moq-rs's Python bindings spend about 180 us of CPU per frame
read, which caps a 2-core machine near 150-200 subscribers in all). A
setup's sweep stops after a point where less than half was delivered or the
load side was saturated.
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
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from moqt_asgi.auth import generate_key, sign_token

from ._edge_peer import with_token
from ._fanout_servers import (
    HOST,
    KINDS,
    REPOSITORY,
    RunningServer,
    free_tcp_port,
    process_cpu,
    spawn_listening,
    start_server,
    tail,
    udp_receive_drops,
)
from ._fanout_stats import COLLAPSED, LOAD_SATURATED, Point
from .common import temporary_certificate
from .fanout import Peer, pinning, sleep_until, split

logger = logging.getLogger("moqt_asgi.edges")

SETUPS = {"alone": "our relay alone, subscribers connected to it",
          "edges": "our relay as the origin of moq-rs edges, subscribers on the edges"}
SUBSCRIBERS = (50, 100, 200, 400, 800, 1600)
QUICK_SUBSCRIBERS = (10,)
PER_LOAD_PROCESS = 100
"""Subscribers per load-generator process (at least one per edge, two alone)."""
READY_TIMEOUT = 180.0
REPORT_TIMEOUT = 60.0
EDGE_START_TIMEOUT = 30.0
STREAM = "frames"
CLUSTER = {"root": "", "put": [""], "get": [""]}
"""What a moq-relay cluster token grants: everything, both ways."""
PUBLISHER = {"put": "fanout", "get": "fanout"}
"""moq-rs's client asks for announcements as well as publishing, and leaves if that is refused: it gets both."""
VIEWER = {"get": ""}


@dataclass
class EdgePoint(Point):
    """A :class:`~benchmarks._fanout_stats.Point` (``server`` is the setup) with the origin's and the edges' figures."""

    edges: int = 0
    upstream: int | None = None
    """Subscriptions the origin served in the middle of the window (``None``: its metrics could not be read)."""
    edge_cpu_s: float = 0.0
    """CPU seconds of every edge together over the window."""

    @property
    def saturated(self) -> bool:
        return self.load_cpu > LOAD_SATURATED

    def as_json(self) -> dict[str, object]:
        return {**super().as_json(), "setup": self.server, "edges": self.edges, "upstream": self.upstream,
                "origin_cpu_s": round(self.server_cpu_s, 4), "edge_cpu_s": round(self.edge_cpu_s, 4),
                "saturated": self.saturated}


@dataclass(frozen=True)
class Settings:
    certfile: Path
    keyfile: Path
    fingerprint: str
    auth_key: Path
    """The origin's MOQ_AUTH_KEY."""
    tokens: dict[str, str]
    cluster_token_file: Path
    duration: float
    warmup: float
    grace: float
    edges: int
    server_cores: set[int] | None
    load_cores: set[int] | None
    connect_batch: int
    logs: Path


class EdgeProcess:
    """A ``benchmarks._edge_peer`` process: its viewers' URL and its CPU time."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self._last_cpu = 0.0

    @classmethod
    async def start(cls, origin: str, settings: Settings, log: Path) -> EdgeProcess:
        process, port = await spawn_listening(
            [sys.executable, "-m", "benchmarks._edge_peer", origin, "--fingerprint", settings.fingerprint,
             "--token-file", str(settings.cluster_token_file), "--bind", f"{HOST}:0",
             "--certfile", str(settings.certfile), "--keyfile", str(settings.keyfile)],
            cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY), "PYTHONUNBUFFERED": "1"}, log=log,
            timeout=EDGE_START_TIMEOUT, stdin=subprocess.PIPE, cores=settings.load_cores, what="an edge")
        return cls(process, port, log)

    @property
    def url(self) -> str:
        return f"moql://{HOST}:{self.port}/"

    def cpu(self) -> float:
        value = process_cpu(self.process.pid)
        if value is not None:
            self._last_cpu = value
        return self._last_cpu

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the edge's signal to leave
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set, for a child process started inside the block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def served_subscriptions(metrics_url: str) -> int | None:
    """``moqt_subscriptions_served`` from the origin's Prometheus metrics (None if unreadable)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("moqt_subscriptions_served "):
            return int(float(line.split()[1]))
    return None


def load_targets(subscribers: int, origin: str, edges: Sequence[str], viewer_token: str) -> list[tuple[str, int]]:
    """(URL, subscribers) per load-generator process: spread evenly over the ``edges`` (URLs) if there are any,
    else all on the origin with ``viewer_token``."""
    if not edges:
        urls = [with_token(origin, viewer_token)]
        processes = max(2, math.ceil(subscribers / PER_LOAD_PROCESS))
    else:
        urls = list(edges)
        processes = len(urls) * max(1, math.ceil(subscribers / PER_LOAD_PROCESS / len(urls)))
    processes = max(1, min(processes, subscribers))
    return [(urls[i % len(urls)], count) for i, count in enumerate(split(subscribers, processes)) if count]


async def measure(setup: str, subscribers: int, settings: Settings) -> EdgePoint:
    """One point: the origin, the publisher, the edges (for ``edges``), the load generators; the window; figures."""
    point = EdgePoint(setup, STREAM, subscribers, edges=settings.edges if setup == "edges" else 0)
    tag = f"{setup}-{subscribers}"
    metrics_port = free_tcp_port()
    with environment(MOQ_AUTH_KEY=str(settings.auth_key)):
        origin = await start_server(KINDS["serve-quic"], certfile=settings.certfile, keyfile=settings.keyfile,
                                    log=settings.logs / f"{tag}-origin.log", cores=settings.server_cores,
                                    extra=["--metrics-bind", f"{HOST}:{metrics_port}"])
    peers: list[Peer] = []
    edges: list[EdgeProcess] = []
    try:
        await _measure(origin, f"http://{HOST}:{metrics_port}/metrics", point, tag, settings, peers, edges)
    finally:
        await asyncio.gather(*(peer.stop() for peer in peers), *(edge.stop() for edge in edges),
                             return_exceptions=True)
        await origin.stop()
    return point


async def _measure(origin: RunningServer, metrics: str, point: EdgePoint, tag: str, settings: Settings,
                   peers: list[Peer], edges: list[EdgeProcess]) -> None:
    fingerprint, tokens = settings.fingerprint, settings.tokens
    publisher = await Peer.start(settings.logs / f"{tag}-publisher.log", "publish",
                                 with_token(origin.url, tokens["publisher"]), fingerprint, "--profile", STREAM)
    peers.append(publisher)
    await publisher.line(READY_TIMEOUT)
    for i in range(point.edges):
        edges.append(await EdgeProcess.start(origin.url, settings, settings.logs / f"{tag}-edge{i}.log"))
    await asyncio.sleep(1.0)
    point.rss_before = origin.rss()
    targets = load_targets(point.subscribers, origin.url, [edge.url for edge in edges], tokens["viewer"])
    loads = [await Peer.start(settings.logs / f"{tag}-load{i}.log", "subscribe", url, fingerprint, "--count",
                              str(count), "--connect-batch", str(settings.connect_batch))
             for i, (url, count) in enumerate(targets)]
    peers += loads
    ready = await asyncio.gather(*(load.line(READY_TIMEOUT) for load in loads))
    point.connected = sum(int(line.split()[1]) for line in ready)
    start = time.monotonic_ns() + int(settings.warmup * 1e9)
    end = start + int(settings.duration * 1e9)
    for peer in peers:
        await peer.send(f"window {start} {end} {int(settings.grace * 1e9)}")
    await sleep_until(start)
    cpu_before, edge_before = origin.cpu(), sum(edge.cpu() for edge in edges)
    load_before = sum(peer.cpu() for peer in peers)
    drops_before, all_drops_before, wait_before = origin.drops(), udp_receive_drops(), origin.waited()
    started = time.monotonic()
    await sleep_until(start + (end - start) // 2)
    point.upstream = await asyncio.to_thread(served_subscriptions, metrics)
    await sleep_until(end)
    point.window_s = time.monotonic() - started
    point.server_cpu_s = origin.cpu() - cpu_before
    point.edge_cpu_s = sum(edge.cpu() for edge in edges) - edge_before
    load_cores = len(settings.load_cores) if settings.load_cores else (os.cpu_count() or 1)
    load_cpu = sum(peer.cpu() for peer in peers) - load_before + point.edge_cpu_s
    point.load_cpu = load_cpu / point.window_s / load_cores
    point.rss_after = origin.rss()
    point.server_drops = origin.drops() - drops_before
    point.udp_drops = udp_receive_drops() - all_drops_before
    point.server_wait_s = origin.waited() - wait_before
    point.load_average = os.getloadavg()
    if not origin.alive:
        point.error = f"the origin exited: {tail(origin.log, 3)}"
    for edge in edges:
        if edge.process.returncode is not None:
            point.error = f"an edge exited: {tail(edge.log, 3)}"
    sent = json.loads(await publisher.line(REPORT_TIMEOUT))
    point.sent, point.publisher_late_ms = int(sent["sent"]), float(sent["late_ms"])
    for load in loads:  # a load generator whose subscribers all have every frame reports without the grace
        await load.send(f"sent {point.sent}")
    reports = await asyncio.gather(*(load.line(settings.grace + REPORT_TIMEOUT) for load in loads))
    point.add_subscribers(subscriber for report in reports for subscriber in json.loads(report)["subscribers"])


async def sweep(setups: Sequence[str], audiences: Sequence[int], settings: Settings, progress: bool) -> list[EdgePoint]:
    """Every point, the setups taking turns at each audience size; a setup stops once collapsed or saturated."""
    points: list[EdgePoint] = []
    stopped: dict[str, str] = {}
    for subscribers in audiences:
        for setup in setups:
            if setup in stopped:
                points.append(EdgePoint(setup, STREAM, subscribers, error=f"not run: {stopped[setup]}"))
                continue
            if progress:
                print(f"  {setup}, {subscribers} subscribers ...", file=sys.stderr, flush=True)
            try:
                point = await measure(setup, subscribers, settings)
            except Exception as exc:
                logger.debug("point failed", exc_info=True)
                point = EdgePoint(setup, STREAM, subscribers, error=f"failed: {exc!r}"[:300])
            points.append(point)
            if point.collapsed:
                stopped[setup] = f"collapsed at N={subscribers}"
            elif point.saturated:
                stopped[setup] = f"load generators saturated at N={subscribers}"
    return points


def _cell(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else ("none" if math.isinf(value) else f"{value:,.{digits}f}")


def format_table(points: Sequence[EdgePoint]) -> str:
    """A Markdown table: one row a point."""
    header = ("setup", "subs", "edges", "delivered", "worst sub", "p50 ms", "p99 ms", "max ms", "origin core",
              "origin CPU s", "origin subs served", "edges CPU s", "load CPU", "notes")
    rows: list[tuple[str, ...]] = []
    for p in points:
        if p.error is not None:
            rows.append((p.server, str(p.subscribers), *["-"] * 11, p.error))
            continue
        notes = []
        if p.connected < p.subscribers:
            notes.append(f"{p.subscribers - p.connected} not subscribed in time")
        notes += p.errors[:2]
        if p.saturated:
            notes.append("load side saturated: the figures are a bound")
        if p.udp_drops:
            notes.append(f"{p.udp_drops} datagrams dropped ({p.server_drops} by the origin)")
        if p.publisher_late_ms > 50:
            notes.append(f"publisher up to {p.publisher_late_ms:.0f} ms late")
        rows.append((p.server, str(p.subscribers), str(p.edges), f"{p.delivered:.1%}", f"{p.worst_delivered:.1%}",
                     _cell(p.p50_ms), _cell(p.p99_ms), _cell(p.max_ms), f"{p.server_core:.0%}",
                     _cell(p.server_cpu_s, 2), "?" if p.upstream is None else str(p.upstream),
                     _cell(p.edge_cpu_s, 2), f"{p.load_cpu:.0%}", "; ".join(notes)))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in (header, *rows)]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edges", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="append", choices=list(SETUPS), help="only this setup (repeatable)")
    parser.add_argument("--subscribers", type=lambda text: [int(n) for n in text.split(",")],
                        help=f"comma-separated audience sizes (default {','.join(map(str, SUBSCRIBERS))})")
    parser.add_argument("--edges", type=int, default=3, help="moq-rs edges in the edges setup (default 3)")
    parser.add_argument("--quick", action="store_true", help="one CI-sized point per setup: 10 subscribers, 5 s")
    parser.add_argument("--duration", type=float, help="seconds of the measured window (default 20; quick 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds between all subscribed and the window")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds after the window a frame may still arrive (later: not delivered)")
    parser.add_argument("--connect-batch", type=int, default=8,
                        help="connections each load generator sets up at once (default 8)")
    parser.add_argument("--server-core", type=int, help="the core the origin is pinned to (default the last one)")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep every process's log here")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    args.setups = args.setup or list(SETUPS)
    args.audiences = args.subscribers or list(QUICK_SUBSCRIBERS if args.quick else SUBSCRIBERS)
    args.duration = args.duration if args.duration is not None else (5.0 if args.quick else 20.0)
    if min(args.audiences) < 1 or args.duration <= 0 or args.edges < 1:
        parser.error("audiences, the duration and the number of edges must be positive")
    return args


async def main_async(args: argparse.Namespace) -> tuple[list[EdgePoint], dict[str, object]]:
    server_cores, load_cores = pinning(args)
    if load_cores:
        os.sched_setaffinity(0, load_cores)  # this process, the publisher, the edges and the load generators
    conditions: dict[str, object] = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "server_cores": sorted(server_cores) if server_cores else None,
        "load_cores": sorted(load_cores) if load_cores else None, "edges": args.edges,
        "duration_s": args.duration, "warmup_s": args.warmup, "grace_s": args.grace,
        "load_average_start": os.getloadavg(),
    }
    with contextlib.ExitStack() as stack:
        certificate = stack.enter_context(temporary_certificate())
        secrets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moqt-edges-keys-")))
        logs = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moqt-edges-")))
        logs.mkdir(parents=True, exist_ok=True)
        key = generate_key("HS256")
        (secrets / "origin.jwk").write_text(json.dumps(key))
        tokens = {"cluster": sign_token(key, CLUSTER), "publisher": sign_token(key, PUBLISHER),
                  "viewer": sign_token(key, VIEWER)}
        (secrets / "cluster.jwt").write_text(tokens["cluster"])
        settings = Settings(certificate.cert, certificate.key, certificate.fingerprint, secrets / "origin.jwk", tokens,
                            secrets / "cluster.jwt", args.duration, args.warmup, args.grace, args.edges, server_cores,
                            load_cores, args.connect_batch, logs)
        points = await sweep(args.setups, args.audiences, settings, progress=not args.quiet)
    conditions["load_average_end"] = os.getloadavg()
    return points, conditions


def report(points: list[EdgePoint], conditions: dict[str, object], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({"conditions": conditions, "points": [p.as_json() for p in points]}, indent=1))
        return
    pins = (f"origin pinned to core {conditions['server_cores']}, publisher, edges and load generators to "
            f"{conditions['load_cores']}" if conditions["server_cores"] else "nothing pinned")
    loads = [", ".join(f"{v:.2f}" for v in conditions[name]) for name in  # type: ignore[attr-defined]
             ("load_average_start", "load_average_end")]
    print(f"\npython {conditions['python']}, {conditions['cpus']} CPUs, {conditions['machine']}; {pins}; "
          f"{args.duration:g} s window, {args.grace:g} s grace; load average {loads[0]} at the start, "
          f"{loads[1]} at the end")
    print("frames: 30 fps x 1200 B, a group a second\n")
    print(format_table(points))
    print("\norigin core: share of its one core over the window; origin subs served: subscriptions the origin "
          "served in the middle of the window; load CPU: how "
          "busy the cores of the publisher, edges and load generators were. A setup's sweep stops after a point "
          f"under {COLLAPSED:.0%} delivered or with the load side above {LOAD_SATURATED:.0%}.")
    for setup in args.setups:
        print(f"  {setup}: {SETUPS[setup]}" + (f" ({args.edges} edges)" if setup == "edges" else ""))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    points, conditions = asyncio.run(main_async(args))
    report(points, conditions, args)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()


if __name__ == "__main__":
    main()

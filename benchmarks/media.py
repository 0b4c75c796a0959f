"""Live media: latency from ffmpeg to a subscriber, CPU per published stream, viewers per core.

``python -m benchmarks.media [--seconds 10] [--viewers 1,8] [--size 1280x720] [--bitrate 2.5M]``

ffmpeg encodes a live test pattern (``testsrc``, H.264 ultrafast/zerolatency,
30 fps, GoP 1 s, one fragment per frame). The publisher stamps each video
frame with the wall clock at the moment it read the frame from ffmpeg's
stdout, on a JSON stream track beside the media (``stamps.jsonl``:
``{"pts": µs, "wall": s}``); each subscriber notes when the frame arrives.
Everything runs on this host, so both ends read the same clock. Latency is
arrival minus stamp, over every frame and every viewer (p50, p99).

Scenarios, in one run:

* **hypercorn**: ``hypercorn benchmarks.media:app``; the app publishes ffmpeg's
  output itself (``HangBroadcast`` + ``Fmp4Ingest``); viewers connect over WebTransport.
* **relay**: ``python -m moqt_asgi serve examples.relay:moq``; a publisher process
  (our client) sends ffmpeg's output to it; viewers over native QUIC.
* **moq-rs relay**: the same relay, the publisher is moq-rs (``publish_container_stream``)
  fed with the same ffmpeg command.

CPU is the server process's (and the publisher process's) user + system time
over the measured window, ffmpeg excluded; ``viewers/core`` extrapolates from
the CPU the server spends per viewer between the smallest and largest
viewer counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import moq

from moqt_asgi import MoQ
from moqt_asgi.client import dial
from moqt_asgi.endpoints.certs import write_certificate
from moqt_asgi.engine.mux import TrackMux
from moqt_asgi.media import Catalog, HangBroadcast, decode_cmaf, read_snapshots, read_stream
from moqt_asgi.media.ingest import Fmp4Ingest, Fmp4Parser, SampleEvent
from moqt_asgi.media.jsontracks import JsonStreamProducer
from moqt_asgi.media.mp4 import parse_init

ROOT = Path(__file__).resolve().parent.parent
BROADCAST = "bench.hang"
VIDEO_TRACK = "0.m4s"
STAMPS = "stamps.jsonl"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ffmpeg_command(size: str, rate: int = 30, bitrate: str = "") -> list[str]:
    """ffmpeg's live test pattern; ``bitrate`` (e.g. ``2.5M``) forces a constant bitrate (x264 CBR with filler)."""
    constant = (["-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate, "-x264-params",
                 "nal-hrd=cbr:force-cfr=1"] if bitrate else [])
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}",
            "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-profile:v",
            "baseline", "-bf", "0", "-g", str(rate), *constant, "-an", "-f", "mp4", "-movflags",
            "cmaf+separate_moof+delay_moov+skip_trailer+frag_every_frame", "-"]


# -- publishing (in the Hypercorn app, or in a publisher process) ----------------------------------

async def publish_ffmpeg(hang: HangBroadcast, stamps: JsonStreamProducer, size: str, bitrate: str = "") -> None:
    """Run ffmpeg and publish its output on ``hang``, stamping each video frame as it is read."""
    ffmpeg = await asyncio.create_subprocess_exec(*ffmpeg_command(size, bitrate=bitrate), stdout=asyncio.subprocess.PIPE,
                                                  stdin=asyncio.subprocess.DEVNULL)
    assert ffmpeg.stdout is not None
    ingest = Fmp4Ingest(hang)
    try:
        while data := await ffmpeg.stdout.read(65536):
            now = time.time()
            for event in ingest.parser.feed(data):
                if isinstance(event, SampleEvent) and event.track.kind == "video":
                    stamps.append({"pts": event.timestamp_us, "wall": now})
                ingest.apply(event)
    finally:
        if ffmpeg.returncode is None:
            ffmpeg.kill()
        await ffmpeg.wait()


@contextlib.asynccontextmanager
async def lifespan(app: MoQ) -> AsyncIterator[None]:
    hang = HangBroadcast(BROADCAST)
    stamps = hang.json_stream(STAMPS)
    app.mux.publish(hang.path, hang.broadcast)
    task = asyncio.create_task(publish_ffmpeg(hang, stamps, os.environ.get("MOQ_BENCH_SIZE", "1280x720"),
                                              os.environ.get("MOQ_BENCH_BITRATE", "")))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


app = MoQ(lifespan=lifespan)
"""``hypercorn benchmarks.media:app``: publishes the benchmark broadcast from ffmpeg."""


async def publisher_ours(url: str, fingerprint: str, size: str, bitrate: str) -> None:
    hang = HangBroadcast(BROADCAST)
    stamps = hang.json_stream(STAMPS)
    mux = TrackMux()
    mux.publish(hang.path, hang.broadcast)
    session = await dial(url, mux=mux, fingerprint=fingerprint)
    async with session:
        await publish_ffmpeg(hang, stamps, size, bitrate)


async def publisher_moqrs(url: str, fingerprint: str, size: str, bitrate: str) -> None:
    ffmpeg = await asyncio.create_subprocess_exec(*ffmpeg_command(size, bitrate=bitrate), stdout=asyncio.subprocess.PIPE,
                                                  stdin=asyncio.subprocess.DEVNULL)
    assert ffmpeg.stdout is not None
    parser = Fmp4Parser()  # only to know which frames a chunk completes, for the stamps
    async with moq.Client(url, tls_fingerprints=[fingerprint], reconnect=False, websocket_enabled=False) as client:
        broadcast = client.create_broadcast(BROADCAST)
        stream = broadcast.publish_container_stream(moq.ContainerFormat.FMP4)
        stamps = broadcast.publish_json_stream(STAMPS)
        broadcast.announce()
        while data := await ffmpeg.stdout.read(65536):
            now = time.time()
            stream.write(data)
            for event in parser.feed(data):
                if isinstance(event, SampleEvent) and event.track.kind == "video":
                    stamps.append({"pts": event.timestamp_us, "wall": now})


# -- viewing -------------------------------------------------------------------------------------------

@dataclass
class Viewer:
    arrivals: dict[int, float] = field(default_factory=dict)
    stamps: dict[int, float] = field(default_factory=dict)
    bytes: int = 0

    def latencies_ms(self, since: float, until: float) -> list[float]:
        """Latency of the frames read from ffmpeg between ``since`` and ``until`` (wall clock)."""
        return [(self.arrivals[pts] - wall) * 1000 for pts, wall in self.stamps.items()
                if pts in self.arrivals and since <= wall <= until]


async def view(url: str, fingerprint: str, viewer: Viewer, stop: asyncio.Event) -> None:
    session = await dial(url, fingerprint=fingerprint)
    async with session:
        announced = await session.announced(BROADCAST)
        if BROADCAST not in announced.active:
            async for announcement in announced:
                if announcement.path == BROADCAST:
                    break
        announced.close()
        catalog_track = await session.subscribe(BROADCAST, "catalog.json")
        init = None
        async for value in read_snapshots(catalog_track):
            catalog = Catalog.from_json(value)
            if catalog.video is not None and VIDEO_TRACK in catalog.video.renditions:
                init = catalog.video.renditions[VIDEO_TRACK].container.init
                break
        catalog_track.close()
        assert init is not None
        timescale = parse_init(init)[0].timescale

        async def media() -> None:
            async for frame in (await session.subscribe(BROADCAST, VIDEO_TRACK, priority=60)).frames():
                now = time.time()
                viewer.bytes += len(frame)
                for sample in decode_cmaf(frame, timescale):
                    viewer.arrivals[sample.timestamp_us] = now

        async def stamp() -> None:
            async for record in read_stream(await session.subscribe(BROADCAST, STAMPS)):
                viewer.stamps[int(record["pts"])] = float(record["wall"])

        tasks = [asyncio.ensure_future(media()), asyncio.ensure_future(stamp())]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- processes and measurement ------------------------------------------------------------------------

def group_cpu(group: int) -> float:
    """User + system seconds of every process in process group ``group`` but ffmpeg (a server's workers too)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, _, rest = text.partition(" (")[2].rpartition(")")
        fields = rest.split()
        if int(fields[2]) == group and name != "ffmpeg":
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield child
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)


@dataclass
class Row:
    scenario: str
    viewers: int
    p50: float
    p99: float
    frames: int
    server_cpu: float
    publisher_cpu: float
    mbps: float


async def measure(scenario: str, url: str, fingerprint: str, viewers: int, seconds: float, server: int,
                  publisher: int | None) -> Row:
    stop = asyncio.Event()
    watchers = [Viewer() for _ in range(viewers)]
    tasks = [asyncio.ensure_future(view(url, fingerprint, w, stop)) for w in watchers]
    await asyncio.sleep(3)  # connect, first keyframe
    cpu0 = group_cpu(server), group_cpu(publisher) if publisher else 0.0
    bytes0 = sum(w.bytes for w in watchers)
    started, since = time.monotonic(), time.time()
    await asyncio.sleep(seconds)
    elapsed, until = time.monotonic() - started, time.time()
    cpu1 = group_cpu(server), group_cpu(publisher) if publisher else 0.0
    bytes1 = sum(w.bytes for w in watchers)
    await asyncio.sleep(0.5)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    latencies = sorted(x for w in watchers for x in w.latencies_ms(since, until))
    if not latencies:
        raise RuntimeError(f"{scenario}: no frame arrived")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Row(scenario, viewers, statistics.median(latencies), p99, len(latencies) // viewers,
               (cpu1[0] - cpu0[0]) / elapsed, (cpu1[1] - cpu0[1]) / elapsed,
               (bytes1 - bytes0) * 8 / elapsed / viewers / 1e6)


def udp_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def wait_port(port: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not udp_bound(port):
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{child.args!r} did not start")
        time.sleep(0.05)


async def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    counts = [int(v) for v in args.viewers.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        cert, key, fingerprint = write_certificate(Path(folder))
        env = {"MOQ_BENCH_SIZE": args.size, "MOQ_BENCH_BITRATE": args.bitrate}
        if "hypercorn" in args.scenarios:
            port = free_port()
            hypercorn = shutil.which("hypercorn")
            command = [hypercorn] if hypercorn else [sys.executable, "-m", "hypercorn"]
            command += ["benchmarks.media:app", "--quic-bind", f"127.0.0.1:{port}", "--bind", "127.0.0.1:0",
                        "--certfile", str(cert), "--keyfile", str(key)]
            with process(command, env) as server:
                wait_port(port, server)
                for count in counts:
                    rows.append(await measure("hypercorn (app publishes)", f"https://127.0.0.1:{port}/", fingerprint,
                                              count, args.seconds, server.pid, None))
        for name, mode in (("relay, moqt-asgi publisher", "ours"), ("relay, moq-rs publisher", "moqrs")):
            if f"relay-{mode}" not in args.scenarios:
                continue
            port = free_port()
            relay = [sys.executable, "-m", "moqt_asgi", "serve", "examples.relay:moq", "--bind", f"127.0.0.1:{port}",
                     "--certfile", str(cert), "--keyfile", str(key)]
            with process(relay) as server:
                wait_port(port, server)
                url = f"moql://127.0.0.1:{port}/"
                publish = [sys.executable, "-m", "benchmarks.media", "--publish", mode, "--url", url, "--fingerprint",
                           fingerprint, "--size", args.size, "--bitrate", args.bitrate]
                with process(publish) as publisher:
                    for count in counts:
                        rows.append(await measure(name, url, fingerprint, count, args.seconds, server.pid,
                                                  publisher.pid))
    return rows


def table(rows: list[Row], size: str) -> str:
    lines = [f"live {size} H.264 30 fps, one fragment per frame; CPU in cores (1.0 = one core busy)", "",
             "| scenario | viewers | p50 ms | p99 ms | frames/viewer | server CPU | publisher CPU | Mbit/s/viewer |"
             " viewers/core |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_scenario: dict[str, list[Row]] = {}
    for row in rows:
        by_scenario.setdefault(row.scenario, []).append(row)
    for scenario_rows in by_scenario.values():
        low, high = scenario_rows[0], scenario_rows[-1]
        per_viewer = (high.server_cpu - low.server_cpu) / (high.viewers - low.viewers) if high.viewers > low.viewers else 0
        per_core = f"{1 / per_viewer:.0f}" if per_viewer > 0 else "-"
        for row in scenario_rows:
            lines.append(f"| {row.scenario} | {row.viewers} | {row.p50:.1f} | {row.p99:.1f} | {row.frames} | "
                         f"{row.server_cpu:.3f} | {row.publisher_cpu:.3f} | {row.mbps:.2f} | {per_core} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.media", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--viewers", default="1,8", help="viewer counts to measure, comma-separated")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--bitrate", default="", help="force a constant video bitrate, e.g. 2.5M (default: x264's own)")
    parser.add_argument("--scenarios", default="hypercorn,relay-ours,relay-moqrs",
                        help="comma-separated: hypercorn, relay-ours, relay-moqrs")
    parser.add_argument("--publish", choices=("ours", "moqrs"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--fingerprint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        runner = publisher_ours if args.publish == "ours" else publisher_moqrs
        asyncio.run(runner(args.url, args.fingerprint, args.size, args.bitrate))
        return
    rows = asyncio.run(run(args))
    print(table(rows, args.size))
    print(json.dumps([row.__dict__ for row in rows]))


if __name__ == "__main__":
    main()

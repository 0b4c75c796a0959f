"""MoQ over WebSocket beside WebTransport, both through Hypercorn in this process.

    python -m benchmarks.websocket                 # goodput at 64 KiB and 1 KiB, then a 100-subscriber fan-out
    python -m benchmarks.websocket --quick         # fewer bytes, a shorter fan-out
    python -m benchmarks --only wt-hypercorn --only ws-hypercorn   # the goodput rows inside the main table

* **Goodput**: one subscriber reads a track the app's handler writes as fast
  as the subscriber takes it (the native benchmark's :class:`Source`), over
  ``https://`` (WebTransport on Hypercorn's ``--quic-bind``) and over ``ws://``
  (MoQ over WebSocket on Hypercorn's plain TCP ``--insecure-bind``). The
  subscriber is moqt-asgi's client in both rows.
* **Fan-out**: one live track (``--fps`` frames a second of ``--frame-size``
  bytes, each stamped with its send time, a group a second) and ``--subscribers`` moqt-asgi
  subscribers, all over WebTransport or all over WebSocket, for
  ``--duration`` seconds. Per transport: the share of frames delivered, the
  p50 and p99 latency from write to read, and the process's CPU seconds over
  the window. Everything (server and every client) runs in one process on
  one event loop, so the figures compare the two transports; they are not
  the capacity of a server on a core of its own (``benchmarks.fanout`` measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from moqt_asgi import Broadcast, MoQ, dial
from moqt_asgi.engine.session import Session
from moqt_asgi.producer import GroupProducer

from .common import HOST, Certificate, RunOnce, Sample, Workload, quic_settings, temporary_certificate, workloads
from .native import SUBSCRIBER_LIMITS, subscribe_once
from .webtransport import SIZES, hypercorn_quic_settings, moq_app

WS_HYPERCORN = "moqt-asgi pub -> sub, Hypercorn ws://"
"""The goodput row of MoQ over WebSocket (the WebTransport row is ``webtransport.wt_hypercorn``)."""
WSS_HYPERCORN = "moqt-asgi pub -> sub, Hypercorn wss://"


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _wait_tcp(port: int, task: asyncio.Future[None]) -> None:
    async with asyncio.timeout(10):
        while True:
            if task.done():
                task.result()
                raise RuntimeError("hypercorn exited before listening")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(HOST, port)
                writer.close()
                return
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def hypercorn_both(app: MoQ, certificate: Certificate) -> AsyncIterator[tuple[int, int, int]]:
    """Hypercorn in this event loop serving ``app`` on QUIC (WebTransport), plain TCP and TLS TCP (WebSocket):
    the three ports."""
    config = Config()
    quic_port, tcp_port, tls_port = (_free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM),
                                     _free_port(socket.SOCK_STREAM))
    config.bind = [f"{HOST}:{tls_port}"]
    config.insecure_bind = [f"{HOST}:{tcp_port}"]
    config.quic_bind = [f"{HOST}:{quic_port}"]
    config.certfile = str(certificate.cert)
    config.keyfile = str(certificate.key)
    config.graceful_timeout = 2
    config.errorlog = None
    stop = asyncio.Event()
    with hypercorn_quic_settings(quic_settings()):
        task = asyncio.ensure_future(hypercorn_serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        try:
            await _wait_tcp(tcp_port, task)
            await _wait_tcp(tls_port, task)
            await asyncio.sleep(0.1)  # the QUIC socket binds beside the TCP ones
            yield quic_port, tcp_port, tls_port
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 10)
            except TimeoutError:
                task.cancel()


@contextlib.asynccontextmanager
async def ws_hypercorn(certificate: Certificate, *, tls: bool = False) -> AsyncIterator[RunOnce]:
    """The MoQ app on Hypercorn's TCP listener and one subscriber over ``ws://`` (``wss://`` with ``tls``)."""
    app, source = moq_app()
    async with hypercorn_both(app, certificate) as (_, tcp_port, tls_port):
        url = f"wss://{HOST}:{tls_port}/" if tls else f"ws://{HOST}:{tcp_port}/"
        subscriber = await dial(url, limits=SUBSCRIBER_LIMITS, fingerprint=certificate.fingerprint if tls else None)
        async with subscriber:

            async def run_once(workload: Workload) -> Sample:
                return await subscribe_once(subscriber, source, workload)

            yield run_once


def wss_hypercorn(certificate: Certificate) -> contextlib.AbstractAsyncContextManager[RunOnce]:
    """As :func:`ws_hypercorn`, over TLS (``wss://`` on Hypercorn's ``--bind`` listener)."""
    return ws_hypercorn(certificate, tls=True)


# -- fan-out
STAMP = struct.Struct("!d")


@dataclass
class FanoutResult:
    transport: str
    subscribers: int
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    cpu_seconds: float = 0.0
    error: str | None = None

    def row(self, duration: float) -> tuple[str, ...]:
        if self.error:
            return (self.transport, str(self.subscribers), "-", "-", "-", "-", self.error)
        delivered = self.received / (self.sent * self.subscribers) if self.sent else 0.0
        ordered = sorted(self.latencies) or [0.0]
        p50 = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (self.transport, str(self.subscribers), f"{delivered * 100:.1f}%", f"{p50 * 1000:.1f}",
                f"{p99 * 1000:.1f}", f"{self.cpu_seconds / duration * 100:.0f}%", "")


async def _reader(session: Session, arrivals: list[tuple[float, float]]) -> None:
    """Record ``(sent at, latency)`` of every frame read."""
    reader = await session.subscribe("fanout", "live")
    while (group := await reader.next_group()) is not None:
        with contextlib.suppress(Exception):
            while (frame := await group.read_frame()) is not None:
                sent_at = STAMP.unpack_from(frame)[0]
                arrivals.append((sent_at, time.perf_counter() - sent_at))


async def fanout(certificate: Certificate, transport: str, subscribers: int, *, fps: float, frame_size: int,
                 duration: float, warmup: float = 1.0, grace: float = 1.0) -> FanoutResult:
    """``subscribers`` sessions over ``transport`` ("webtransport" or "websocket") reading one live track."""
    app = MoQ()
    broadcast = Broadcast("fanout")
    track = broadcast.create_track("live")
    app.mux.publish("fanout", broadcast)
    result = FanoutResult(transport, subscribers)
    arrivals: list[tuple[float, float]] = []
    window_start = window_end = 0.0
    async with hypercorn_both(app, certificate) as (quic_port, tcp_port, _):
        if transport == "websocket":
            url, options = f"ws://{HOST}:{tcp_port}/", {}
        else:
            url, options = f"https://{HOST}:{quic_port}/", {"fingerprint": certificate.fingerprint,
                                                            "quic": quic_settings(), "websocket_fallback": False}
        sessions: list[Session] = []
        readers: list[asyncio.Task[None]] = []
        try:
            for _ in range(subscribers):
                session = await dial(url, **options)  # type: ignore[arg-type]
                sessions.append(session)
                readers.append(asyncio.ensure_future(_reader(session, arrivals)))
            padding = bytes(max(0, frame_size - STAMP.size))
            per_group = max(1, round(fps))
            group: GroupProducer | None = None
            interval = 1.0 / fps
            loop = asyncio.get_running_loop()
            start = loop.time()
            cpu_start = 0.0
            frames = int((warmup + duration) * fps)
            for index in range(frames):
                if index == int(warmup * fps):
                    window_start = time.perf_counter()
                    cpu_start = time.process_time()
                now = time.perf_counter()
                if window_start and window_start <= now:
                    result.sent += 1
                if index % per_group == 0:  # a group a second, as a live video's keyframes
                    if group is not None:
                        group.finish()
                    group = track.append_group()
                assert group is not None
                group.write_frame(STAMP.pack(now) + padding)
                await asyncio.sleep(max(0.0, start + (index + 1) * interval - loop.time()))
            window_end = time.perf_counter()
            result.cpu_seconds = time.process_time() - cpu_start
            await asyncio.sleep(grace)
            inside = [latency for sent_at, latency in arrivals if window_start <= sent_at <= window_end]
            result.received = len(inside)
            result.latencies = inside
        except Exception as exc:
            result.error = f"failed: {exc!r}"
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await asyncio.gather(*(session.aclose() for session in sessions), return_exceptions=True)
    return result


# -- the command
def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], numeric: set[int]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                                 for i, cell in enumerate(row)) + " |"

    separator = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2))
                               for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


async def main_async(args: argparse.Namespace) -> None:
    from .__main__ import WT_HYPERCORN, format_table, run_all

    loads = [w for w in workloads(args.scale) if w.frame_size in SIZES]
    with temporary_certificate() as certificate:
        if not args.fanout_only:
            results = await run_all(["wt-hypercorn", "ws-hypercorn", "wss-hypercorn"], certificate, loads, args.repeat,
                                    lambda message: print(f"  measuring {message} ...", flush=True))
            print(f"\ngoodput, one subscriber (best of {args.repeat} runs after a warm-up; MB = 10^6 bytes):")
            print(format_table(results, WT_HYPERCORN, "vs WebTransport"))
        fanouts = []
        for transport in ("webtransport", "websocket"):
            print(f"  fan-out: {args.subscribers} subscribers over {transport} ...", flush=True)
            fanouts.append(await fanout(certificate, transport, args.subscribers, fps=args.fps,
                                        frame_size=args.frame_size, duration=args.duration))
    print(f"\nfan-out through Hypercorn: one live track, {args.fps:g} frames/s of {args.frame_size} B, "
          f"{args.duration:g} s (server and every subscriber in one process):")
    header = ("transport", "subscribers", "delivered", "p50 ms", "p99 ms", "process CPU", "notes")
    print(_table(header, [r.row(args.duration) for r in fanouts], {1, 2, 3, 4, 5}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.websocket", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a quarter of the bytes, a 3 s fan-out")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the bytes sent per goodput run")
    parser.add_argument("--repeat", type=int, default=3, help="measured goodput runs after one warm-up (default 3)")
    parser.add_argument("--subscribers", type=int, default=100, help="fan-out subscribers (default 100)")
    parser.add_argument("--fps", type=float, default=25.0, help="fan-out frames per second (default 25)")
    parser.add_argument("--frame-size", type=int, default=2048, help="fan-out frame size in bytes (default 2048)")
    parser.add_argument("--duration", type=float, default=8.0, help="fan-out measuring window in s (default 8)")
    parser.add_argument("--fanout-only", action="store_true", help="skip the goodput table")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale *= 0.25
        args.duration = min(args.duration, 3.0)
    logging.basicConfig(level=logging.ERROR)
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; 127.0.0.1")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

"""``python -m benchmarks``: run every scenario and print one table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import os
import platform
import pstats
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from .common import Certificate, Result, RunOnce, Workload, size_label, temporary_certificate, workloads
from .native import moq_native, moq_native_qh3
from .raw_aioquic import raw_download, raw_upload
from .relay import RelayUnavailable, moq_relay
from .startup import StartupResult, format_startup, measure_startup
from .websocket import WS_HYPERCORN, WSS_HYPERCORN, ws_hypercorn, wss_hypercorn
from .webtransport import SIZES as WT_SIZES
from .webtransport import wt_aioquic, wt_hypercorn, wt_native

RAW = "raw aioquic, server -> client"
RAW_UP = "raw aioquic, client -> server"
NATIVE = "moqt-asgi pub -> sub"
NATIVE_QH3 = "moqt-asgi pub -> sub, qh3"
RELAY = "moqt-asgi pub -> relay -> sub"
WT_RAW = "aioquic WebTransport, server -> client"
WT_HYPERCORN = "moqt-asgi pub -> sub, Hypercorn"
WT_NATIVE = "moqt-asgi pub -> sub, serve"
ORDER = (RAW, RAW_UP, NATIVE, NATIVE_QH3, RELAY, WT_RAW, WT_HYPERCORN, WT_NATIVE, WS_HYPERCORN, WSS_HYPERCORN)

Scenario = Callable[[Certificate], AbstractAsyncContextManager[RunOnce]]
SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "raw": (RAW, raw_download),
    "raw-up": (RAW_UP, raw_upload),
    "native": (NATIVE, moq_native),
    "native-qh3": (NATIVE_QH3, moq_native_qh3),
    "relay": (RELAY, moq_relay),
    "wt-aioquic": (WT_RAW, wt_aioquic),
    "wt-hypercorn": (WT_HYPERCORN, wt_hypercorn),
    "wt-serve": (WT_NATIVE, wt_native),
    "ws-hypercorn": (WS_HYPERCORN, ws_hypercorn),
    "wss-hypercorn": (WSS_HYPERCORN, wss_hypercorn),
}
ONLY_SIZES: dict[str, tuple[int, ...]] = {WT_RAW: WT_SIZES, WT_HYPERCORN: WT_SIZES, WT_NATIVE: WT_SIZES,
                                          WS_HYPERCORN: WT_SIZES, WSS_HYPERCORN: WT_SIZES}
"""Scenarios measured at some frame sizes only."""


@dataclass(frozen=True)
class Table:
    """One printed table: its scenarios and the one every ratio is taken against."""

    title: str
    scenarios: tuple[str, ...]
    baseline: str
    column: str
    footnote: str


TABLES = (
    Table("native QUIC (ALPN moql)", (RAW, RAW_UP, NATIVE, NATIVE_QH3, RELAY), RAW, "vs raw aioquic",
          f"vs raw aioquic: MB/s over the '{RAW}' row of the same frame size; the moqt-asgi rows also send "
          f"from server to client; '{NATIVE_QH3}' runs server and client on qh3 (QuicSettings(backend='qh3'))."),
    Table("WebTransport (HTTP/3)", (WT_RAW, WT_HYPERCORN, WT_NATIVE), WT_RAW, "vs aioquic WT",
          f"vs aioquic WT: MB/s over the '{WT_RAW}' row of the same frame size; every WebTransport row uses "
          "moqt-asgi's WebTransport client."),
    Table("WebSocket (Hypercorn's TCP listener)", (WT_HYPERCORN, WS_HYPERCORN, WSS_HYPERCORN), WT_HYPERCORN, "vs WebTransport",
          f"vs WebTransport: MB/s over the '{WT_HYPERCORN}' row of the same frame size; both rows use moqt-asgi's "
          "client (python -m benchmarks.websocket adds a 100-subscriber fan-out)."),
)


def measures(scenario: str, workload: Workload) -> bool:
    """Whether ``scenario`` is measured at this workload's frame size."""
    sizes = ONLY_SIZES.get(scenario)
    return sizes is None or workload.frame_size in sizes


async def run_all(keys: list[str], certificate: Certificate, loads: list[Workload], repeat: int,
                  progress: Callable[[str], None]) -> list[Result]:
    """Measure every chosen scenario at every frame size.

    All scenarios stay connected and take turns, one run each per round (the
    first round is the warm-up), so whatever else the machine is doing hits
    them all alike.
    """
    results: list[Result] = []
    async with contextlib.AsyncExitStack() as stack:
        runners: dict[str, RunOnce] = {}
        for key in keys:
            name, factory = SCENARIOS[key]
            try:
                runners[name] = await stack.enter_async_context(factory(certificate))
            except RelayUnavailable as exc:
                results += [Result(name, workload, error=str(exc)) for workload in loads if measures(name, workload)]
            except Exception as exc:
                results += [Result(name, workload, error=f"setup failed: {exc!r}")
                            for workload in loads if measures(name, workload)]
        for workload in loads:
            chosen = {name: run_once for name, run_once in runners.items() if measures(name, workload)}
            if not chosen:
                continue
            progress(f"{size_label(workload.frame_size)} frames: {', '.join(chosen)}")
            row = {name: Result(name, workload) for name in chosen}
            for round_ in range(repeat + 1):
                for name, run_once in chosen.items():
                    result = row[name]
                    if result.error is not None:
                        continue
                    try:
                        sample = await run_once(workload)
                    except Exception as exc:
                        result.error = f"failed: {exc!r}"
                        continue
                    if round_:
                        result.samples.append(sample)
            results += row.values()
    return results


def format_table(results: list[Result], baseline: str = RAW, column: str = "vs raw aioquic") -> str:
    baselines = {r.workload.frame_size: r for r in results if r.scenario == baseline and not r.error}
    header = ("scenario", "frame size", "MB/s", "frames/s", column, "notes")
    rows: list[tuple[str, ...]] = []
    for result in results:
        label = size_label(result.workload.frame_size)
        if result.error:
            rows.append((result.scenario, label, "-", "-", "-", result.error))
            continue
        reference = baselines.get(result.workload.frame_size)
        ratio = f"{result.mb_per_s / reference.mb_per_s:.2f}" if reference is not None else "-"
        notes = [f"spread {result.spread * 100:.0f}%"]
        worst = min(result.samples, key=lambda s: s.delivered)
        if worst.delivered < 1.0:
            notes.append(f"worst run delivered {worst.delivered * 100:.1f}%: {worst.groups_missing} groups "
                         f"dropped, {worst.groups_short} cut short")
        rows.append((result.scenario, label, f"{result.mb_per_s:.1f}", f"{result.frames_per_s:,.0f}", ratio,
                     ", ".join(notes)))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    numeric = {2, 3, 4}

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "| " + " | ".join(cells) + " |"

    separator = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2))
                               for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


async def main_async(args: argparse.Namespace) -> tuple[list[Result], list[StartupResult]]:
    loads = workloads(args.scale)
    if args.sizes:
        loads = [w for w in loads if w.frame_size in args.sizes]
    chosen = [] if args.startup_only else args.only or list(SCENARIOS)

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  measuring {message} ...", file=sys.stderr, flush=True)

    startup: list[StartupResult] = []
    with temporary_certificate() as certificate:
        results = await run_all(chosen, certificate, loads, args.repeat, progress) if chosen else []
        if args.startup_only or not (args.only or args.sizes):
            progress(f"time to first frame over a {args.rtt:g} ms round trip")
            startup = await measure_startup(certificate, rtt=args.rtt / 1000, repeat=max(args.repeat, 5))
    sizes = [w.frame_size for w in loads]
    results.sort(key=lambda r: (sizes.index(r.workload.frame_size), ORDER.index(r.scenario)))
    return results, startup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="send a quarter of the bytes per run (rougher figures)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the bytes sent per run (default 1; far above 4, connections waiting "
                             "for their turn may reach the 30 s idle timeout)")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per cell after one warm-up (default 3)")
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), help="run only this scenario (repeatable)")
    parser.add_argument("--size", dest="sizes", action="append", type=int,
                        help="run only this frame size in bytes: 65536, 1024 or 100 (repeatable)")
    parser.add_argument("--startup-only", action="store_true",
                        help="measure only the time to the first frame (full handshake, resumption, 0-RTT)")
    parser.add_argument("--rtt", type=float, default=40.0,
                        help="round-trip time in ms the relay adds for the time-to-first-frame table (default 40)")
    parser.add_argument("--quiet", action="store_true", help="print only the tables")
    parser.add_argument("--profile", action="store_true",
                        help="run under cProfile and print where the time went (slower; combine with --only/--size)")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale *= 0.25
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def _area(filename: str) -> str:
    """Which part of the stack a profiled function belongs to."""
    path = filename.replace("\\", "/")
    for marker in ("moqt_asgi/", "aioquic/", "hypercorn/", "benchmarks/"):
        if marker in path:
            return marker + path.split(marker, 1)[1]
    if "asyncio/" in path:
        return "asyncio"
    return "other (stdlib, builtins, C extensions)" if path.startswith(("~", "<")) or "/lib/" in path else path


def print_profile(profiler: cProfile.Profile, top: int = 20) -> None:
    stats = pstats.Stats(profiler)
    by_file: dict[str, float] = {}
    own: list[tuple[float, int, str]] = []
    for (filename, line, name), (_cc, calls, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        area = _area(filename)
        by_file[area] = by_file.get(area, 0.0) + tottime
        if area.startswith("moqt_asgi/"):
            own.append((tottime, calls, f"{area}:{line}({name})"))
    total = sum(by_file.values()) or 1.0
    print("\nown time by file (cProfile; its overhead inflates small functions):")
    for area, seconds in sorted(by_file.items(), key=lambda item: -item[1])[:top]:
        print(f"  {seconds / total * 100:5.1f}%  {area}")
    print("\nmoqt_asgi functions by own time:")
    for seconds, calls, where in sorted(own, reverse=True)[:top]:
        print(f"  {seconds / total * 100:5.1f}%  {calls:>9,} calls  {where}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    results, startup = asyncio.run(main_async(args))
    if profiler is not None:
        profiler.disable()
        print_profile(profiler)
    print()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; "
          f"all endpoints in one process on 127.0.0.1; best of {args.repeat} runs after a warm-up; MB = 10^6 bytes")
    tables = [(table, [r for r in results if r.scenario in table.scenarios]) for table in TABLES]
    tables = [(table, rows) for table, rows in tables if rows]
    for table, rows in tables:
        if len(tables) > 1:
            print(f"\n{table.title}:")
        print(format_table(rows, table.baseline, table.column))
        print(table.footnote)
    if startup:
        print(f"\ntime to first frame, through a relay adding {args.rtt:g} ms of round trip (median of "
              f"{max(args.repeat, 5)} dials after a warm-up):")
        print(format_startup(startup, args.rtt / 1000))
        print("vs raw aioquic: over the raw aioquic row with the same handshake ('resumed' is compared with "
              "'full'). RTTs: the median divided by the added round trip.")
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()


if __name__ == "__main__":
    main()

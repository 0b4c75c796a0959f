"""``python -m moqt_asgi publish`` and ``record``: fragmented MP4 to a hang broadcast, and back.

``publish URL NAME --input FILE|-`` dials a server or relay, announces
``NAME`` and publishes the fMP4 read from a file (paced at real time;
``--loop`` starts again at the end, the timeline carrying on) or from stdin
(ffmpeg's ``-f mp4 -movflags cmaf+separate_moof+empty_moov+skip_trailer+frag_every_frame -``).
``record URL NAME --out FILE.mp4`` subscribes and writes a fragmented MP4.
The dialling (URL forms, certificate options) is the CLI's own, passed in.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

from ..engine.mux import TrackMux
from ..engine.session import Session
from .catalog import CatalogError
from .ingest import Fmp4Ingest, publish_fmp4
from .mp4 import Mp4Error
from .publisher import HangBroadcast
from .record import Recorder, RecordError

Dial = Callable[[argparse.Namespace, TrackMux | None], Awaitable[Session]]

logger = logging.getLogger("moqt_asgi.media")


def add_arguments(publish: argparse.ArgumentParser, record: argparse.ArgumentParser) -> None:
    """The options of ``publish`` and ``record`` beyond URL, NAME and the certificate options."""
    publish.add_argument("--input", required=True, help="fragmented MP4 file, or - for stdin (e.g. ffmpeg ... -f mp4 -)")
    publish.add_argument("--loop", action="store_true", help="play the file again at its end (files only)")
    publish.add_argument("--container", choices=("cmaf", "legacy", "loc"), default="cmaf",
                         help="cmaf: one moof+mdat per frame (default); legacy: timestamp + codec payload; "
                              "loc: LOC properties + codec payload")
    publish.add_argument("--linger", type=float, default=0.5, help="seconds to stay connected after the input ends")
    record.add_argument("--out", required=True, help="the fragmented MP4 file to write")
    record.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    record.add_argument("--frames", type=int, default=None, help="stop after this many frames (all tracks)")


async def publish(args: argparse.Namespace, dial: Dial) -> None:
    try:
        await _publish(args, dial)
    except (Mp4Error, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None


async def _publish(args: argparse.Namespace, dial: Dial) -> None:
    hang = HangBroadcast(args.broadcast)
    mux = TrackMux()
    mux.publish(hang.path, hang.broadcast)
    session = await dial(args, mux)
    async with session:
        ingest = Fmp4Ingest(hang, container=args.container)
        if args.input == "-":
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
            await publish_fmp4(reader, hang, ingest=ingest)
        else:
            while True:
                file = await asyncio.to_thread(open, args.input, "rb")
                with file:
                    await publish_fmp4(file, hang, realtime=True, ingest=ingest)
                if not args.loop:
                    break
        logger.info("input ended after %d samples", ingest.samples)
        hang.close()
        await asyncio.sleep(args.linger)


async def record(args: argparse.Namespace, dial: Dial) -> None:
    try:
        await _record(args, dial)
    except (RecordError, CatalogError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None


RECORD_MARGIN = 5.0
"""Seconds ``record --duration`` may run past the duration (dialling, closing) before it gives up."""


async def _record(args: argparse.Namespace, dial: Dial) -> None:
    """Record; with ``--duration`` the whole run, waits included, ends within the duration plus :data:`RECORD_MARGIN`."""
    if args.duration is None:
        await _recording(args, dial)
        return
    try:
        async with asyncio.timeout(args.duration + RECORD_MARGIN):
            await _recording(args, dial)
    except TimeoutError:
        raise RecordError(f"record did not end within --duration {args.duration:g} s and {RECORD_MARGIN:g} s more"
                          ) from None


async def _recording(args: argparse.Namespace, dial: Dial) -> None:
    loop = asyncio.get_running_loop()
    deadline = None if args.duration is None else loop.time() + args.duration
    session = await dial(args, None)
    async with session:
        announcements = await session.announced(args.broadcast)
        try:
            if args.broadcast not in announcements.active:
                logger.info("waiting for %s to be announced", args.broadcast)
                async with asyncio.timeout_at(deadline):
                    async for announcement in announcements:
                        if announcement.path == args.broadcast:
                            break
        except TimeoutError:
            raise RecordError(f"{args.broadcast} was not announced within --duration {args.duration:g} s") from None
        finally:
            announcements.close()
        out = await asyncio.to_thread(open, args.out, "wb")
        with out:
            recorder = Recorder(session, args.broadcast, out)
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            tracks = await recorder.run(duration=remaining, max_frames=args.frames)
    for track in tracks:
        print(f"{track.name}: {track.kind}, {track.frames} frames, {track.bytes} bytes", flush=True)
    if not any(track.frames for track in tracks):
        raise RecordError(f"nothing was recorded from {args.broadcast}: its tracks sent no frame"
                          + (f" within --duration {args.duration:g} s" if args.duration is not None else ""))


__all__ = ["add_arguments", "publish", "record"]

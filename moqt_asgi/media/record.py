"""Recording a hang broadcast to a fragmented MP4 file.

:class:`Recorder` subscribes to ``catalog.json``, picks the first playable
video and audio renditions in the ``cmaf`` container, writes one init
(``ftyp`` + a ``moov`` holding both tracks, renumbered 1 and 2), then each
frame (``moof`` + ``mdat``) as it arrives. The result is a playable fMP4
(``ffprobe``/``ffplay`` read it). A subscription starts at the newest
group, which begins at a keyframe, so the file starts decodable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ..protocol.errors import SessionClosed, StreamError
from .catalog import AudioConfig, Catalog, VideoConfig
from .jsontracks import read_snapshots
from .mp4 import build_init, parse_init, retrack, set_fragment_track
from .publisher import CATALOG_TRACK

if TYPE_CHECKING:
    from ..engine.session import Session

logger = logging.getLogger("moqt_asgi.media")


class RecordError(RuntimeError):
    """Nothing in the broadcast can be recorded."""


@dataclass(slots=True)
class RecordedTrack:
    """One rendition being recorded: its track name, new track id and what was written."""

    name: str
    track_id: int
    kind: str
    frames: int = 0
    bytes: int = 0


def choose_renditions(catalog: Catalog) -> list[tuple[str, VideoConfig | AudioConfig]]:
    """The first ``cmaf`` video rendition and the first ``cmaf`` audio rendition of ``catalog``."""
    chosen: list[tuple[str, VideoConfig | AudioConfig]] = []
    for section in (catalog.video, catalog.audio):
        if section is None:
            continue
        for name, config in section.renditions.items():
            if config.container.kind == "cmaf" and config.container.init and not config.broadcast:
                chosen.append((name, config))
                break
    return chosen


class Recorder:
    """Write broadcast ``broadcast`` of ``session`` to ``out`` (a binary file) as fragmented MP4."""

    def __init__(self, session: Session, broadcast: str, out: BinaryIO) -> None:
        self.session = session
        self.broadcast = broadcast
        self.out = out
        self.tracks: list[RecordedTrack] = []
        self.catalog: Catalog | None = None

    async def run(self, *, duration: float | None = None, max_frames: int | None = None) -> list[RecordedTrack]:
        """Record until every track ends, ``duration`` seconds pass, or ``max_frames`` frames are written."""
        catalog_track = await self.session.subscribe(self.broadcast, CATALOG_TRACK, priority=100)
        snapshots = read_snapshots(catalog_track)
        try:
            async for value in snapshots:
                catalog = Catalog.from_json(value)
                if choose_renditions(catalog):
                    self.catalog = catalog
                    break
                logger.info("catalog of %s lists nothing recordable yet", self.broadcast)
            else:
                raise RecordError(f"{self.broadcast} ended before listing a cmaf rendition")
        finally:
            await snapshots.aclose()
            catalog_track.close()
        chosen = choose_renditions(self.catalog)
        inits = []
        for track_id, (name, config) in enumerate(chosen, start=1):
            assert config.container.init is not None
            (track,) = parse_init(config.container.init)[:1]
            inits.append(retrack(track, track_id))
            self.tracks.append(RecordedTrack(name, track_id, track.kind))
        self.out.write(build_init(inits))
        done = asyncio.Event()
        total = [0]

        async def record(recorded: RecordedTrack) -> None:
            reader = await self.session.subscribe(self.broadcast, recorded.name,
                                                  priority=60 if recorded.kind == "video" else 80)
            try:
                async for frame in reader.frames():
                    data = set_fragment_track(frame, recorded.track_id)
                    self.out.write(data)
                    recorded.frames += 1
                    recorded.bytes += len(data)
                    total[0] += 1
                    if max_frames is not None and total[0] >= max_frames:
                        done.set()
                        return
            except (StreamError, SessionClosed) as exc:
                logger.warning("track %s of %s ended: %s", recorded.name, self.broadcast, exc)
            finally:
                reader.close()

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(record(recorded)) for recorded in self.tracks]
            waiter = group.create_task(_first(done, tasks, duration))
            await waiter
            for task in tasks:
                task.cancel()
        self.out.flush()
        return self.tracks


async def _first(done: asyncio.Event, tasks: list[asyncio.Task[None]], duration: float | None) -> None:
    """Return when ``done`` is set, every task ended, or ``duration`` passed."""
    async def all_ended() -> None:
        await asyncio.gather(*tasks, return_exceptions=True)

    waits = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(all_ended())]
    try:
        await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wait


__all__ = ["RecordError", "RecordedTrack", "Recorder", "choose_renditions"]

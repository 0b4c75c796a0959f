"""Recording a hang broadcast to a fragmented MP4 file.

:class:`Recorder` subscribes to ``catalog.json``, picks the first video and
the first audio rendition it can record, writes one init (``ftyp`` + a
``moov`` holding both tracks, renumbered 1 and 2), then each frame as a
``moof`` + ``mdat`` as it arrives. A ``cmaf`` rendition brings its init and
fragments; a ``legacy`` one (H.264 ``avc1``, HEVC ``hvc1``, AV1, AAC, Opus) gets
a track built from its catalog ``description`` and each frame wrapped in a
fragment (the first frame of a group is the keyframe). The result is a
playable fMP4 (``ffprobe``/``ffplay`` read it). A subscription starts at
the newest group, which begins at a keyframe, so the file starts decodable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ..protocol.errors import SessionClosed, StreamError
from .catalog import AudioConfig, Catalog, VideoConfig
from .container import ContainerError, decode_legacy, decode_loc
from .jsontracks import read_catalogs
from .mp4 import (
    DELTA_FLAGS,
    KEYFRAME_FLAGS,
    Mp4Error,
    Sample,
    TrackInit,
    build_fragment,
    build_init,
    parse_init,
    retrack,
    set_fragment_track,
)
from .mp4write import legacy_track
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
    skipped: int = 0
    """Frames that did not decode in their container (not written)."""


def track_for(config: VideoConfig | AudioConfig, track_id: int) -> TrackInit | None:
    """The MP4 track to record ``config`` as (renumbered ``track_id``), or ``None`` if it cannot be recorded."""
    if config.broadcast:
        return None
    if config.container.kind == "cmaf" and config.container.init:
        try:
            tracks = parse_init(config.container.init)
        except Mp4Error as exc:
            logger.warning("a cmaf init that does not parse: %s", exc)
            return None
        return retrack(tracks[0], track_id) if tracks else None
    if config.container.kind in ("legacy", "loc"):
        return legacy_track(config, track_id)
    return None


def choose_renditions(catalog: Catalog) -> list[tuple[str, VideoConfig | AudioConfig, TrackInit]]:
    """The first recordable video rendition and the first recordable audio rendition of ``catalog``."""
    chosen: list[tuple[str, VideoConfig | AudioConfig, TrackInit]] = []
    for section in (catalog.video, catalog.audio):
        if section is None:
            continue
        for name, config in section.renditions.items():
            track = track_for(config, len(chosen) + 1)
            if track is not None:
                chosen.append((name, config, track))
                break
    return chosen


class LegacyWrapper:
    """Wraps ``legacy`` (or ``loc``) frames into fragments; each is written once the next gives its duration."""

    def __init__(self, track_id: int, video: bool, container: str = "legacy") -> None:
        self.track_id = track_id
        self.video = video
        self._decode = decode_loc if container == "loc" else decode_legacy
        self._pending: tuple[int, bytes, bool] | None = None
        self._duration = 0
        self._sequence = 0

    def frame(self, frame: bytes, first_in_group: bool) -> bytes | None:
        timestamp, payload = self._decode(frame)
        if not payload:
            return None  # an end-of-content marker
        pending, self._pending = self._pending, (timestamp, payload, first_in_group or not self.video)
        if pending is None:
            return None
        if timestamp > pending[0]:
            self._duration = timestamp - pending[0]
        return self._fragment(pending)

    def flush(self) -> bytes | None:
        pending, self._pending = self._pending, None
        return self._fragment(pending) if pending is not None else None

    def _fragment(self, pending: tuple[int, bytes, bool]) -> bytes:
        timestamp, payload, keyframe = pending
        self._sequence += 1
        sample = Sample(self.track_id, timestamp, self._duration, len(payload),
                        KEYFRAME_FLAGS if keyframe else DELTA_FLAGS, 0, 0)
        return build_fragment(self._sequence, self.track_id, sample, payload)


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
        catalogs = read_catalogs(catalog_track)
        try:
            async for catalog in catalogs:
                if choose_renditions(catalog):
                    self.catalog = catalog
                    break
                logger.info("catalog of %s lists nothing recordable yet", self.broadcast)
            else:
                raise RecordError(f"{self.broadcast} ended before listing a rendition that can be recorded")
        finally:
            await catalogs.aclose()
            catalog_track.close()
        chosen = choose_renditions(self.catalog)
        wrapped: dict[str, str] = {}
        for name, config, track in chosen:
            self.tracks.append(RecordedTrack(name, track.track_id, track.kind))
            if config.container.kind in ("legacy", "loc"):
                wrapped[name] = config.container.kind
        self.out.write(build_init([track for _, _, track in chosen]))
        done = asyncio.Event()
        total = [0]

        def write(recorded: RecordedTrack, data: bytes) -> None:
            self.out.write(data)
            recorded.frames += 1
            recorded.bytes += len(data)
            total[0] += 1
            if max_frames is not None and total[0] >= max_frames:
                done.set()

        async def record(recorded: RecordedTrack) -> None:
            reader = await self.session.subscribe(self.broadcast, recorded.name,
                                                  priority=60 if recorded.kind == "video" else 80)
            container = wrapped.get(recorded.name)
            wrap = LegacyWrapper(recorded.track_id, recorded.kind == "video", container) if container else None
            try:
                async for group in reader:
                    first = True
                    async for frame in group:
                        try:
                            if wrap is None:
                                write(recorded, set_fragment_track(frame, recorded.track_id))
                            elif (fragment := wrap.frame(frame, first)) is not None:
                                write(recorded, fragment)
                        except (Mp4Error, ContainerError) as exc:
                            recorded.skipped += 1
                            logger.warning("skipping a frame of %s that does not decode: %s", recorded.name, exc)
                        first = False
                        if done.is_set():
                            return
                if wrap is not None and (tail := wrap.flush()) is not None:
                    write(recorded, tail)
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


__all__ = ["LegacyWrapper", "RecordError", "RecordedTrack", "Recorder", "choose_renditions", "track_for"]

"""Recording a hang broadcast to a fragmented MP4 file.

:class:`Recorder` subscribes to ``catalog.json``, picks the first video and
the first audio rendition it can record, writes one init (``ftyp`` + a
``moov`` holding both tracks, renumbered 1 and 2), then each frame as a
``moof`` + ``mdat`` as it arrives. A ``cmaf`` rendition brings its init and
fragments; a ``legacy`` one (H.264 ``avc1``, HEVC ``hvc1``, AV1, AAC, Opus) gets
a track built from its catalog ``description`` and each frame wrapped in a
fragment (the first frame of a group is the keyframe; decode times and
composition offsets are worked out from the presentation times, which
B-frames reorder). The result is a playable fMP4 (``ffprobe``/``ffplay`` read it). A subscription starts at
the newest group, which begins at a keyframe, so the file starts decodable.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
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


NO_RENDITIONS = "no renditions"


def describe_renditions(catalog: Catalog) -> str:
    """The renditions of ``catalog`` with codec and container, for messages: ``0.vp09 (vp09.00.10.08, legacy)``."""
    parts = []
    for section in (catalog.video, catalog.audio):
        for name, config in (section.renditions.items() if section is not None else ()):
            where = f", in broadcast {config.broadcast}" if config.broadcast else ""
            parts.append(f"{name} ({config.codec}, {config.container.kind}{where})")
    return ", ".join(parts) or NO_RENDITIONS


REORDER_WINDOW = 8
"""Video frames :class:`LegacyWrapper` holds back to give decode times (x264 reorders at most 2 with ``-bf 2``)."""


@dataclass(slots=True)
class _Held:
    """A frame held by :class:`LegacyWrapper`: its presentation time, bytes, keyframe flag and decode time once known."""

    pts: int
    payload: bytes
    keyframe: bool
    dts: int | None = None


class LegacyWrapper:
    """Wraps ``legacy`` (or ``loc``) frames into fragments, with decode times and composition offsets.

    Frames arrive in decode order but carry only their presentation time,
    which goes back and forth with B-frames. A frame gets its decode time once
    ``window`` later frames arrived: the k-th frame's is the k-th smallest
    presentation time seen, minus the reorder delay measured over the first
    window (so no frame is decoded after it is shown; a reorder up to half
    the window is measured), kept increasing. Its
    composition offset is presentation minus decode time (signed: ``trun``
    version 1) and its duration runs to the next frame's decode time, so a
    frame is written once the next one has its decode time. ``window``
    defaults to :data:`REORDER_WINDOW` for video and 0 for audio (never
    reordered).
    """

    def __init__(self, track_id: int, video: bool, container: str = "legacy", *, window: int | None = None) -> None:
        self.track_id = track_id
        self.video = video
        self.window = (REORDER_WINDOW if video else 0) if window is None else max(0, window)
        self._decode = decode_loc if container == "loc" else decode_legacy
        self._held: deque[_Held] = deque()
        self._undated = 0
        """How many frames at the end of ``_held`` have no decode time yet."""
        self._times: list[int] = []
        """A heap of the presentation times not yet given out as decode times."""
        self._delay: int | None = None
        self._last_dts: int | None = None
        self._duration = 0
        self._sequence = 0

    def frame(self, frame: bytes, first_in_group: bool) -> bytes | None:
        """The next fragment to write once ``frame`` arrived, if one is ready."""
        timestamp, payload = self._decode(frame)
        if not payload:
            return None  # an end-of-content marker
        self._held.append(_Held(timestamp, payload, first_in_group or not self.video))
        heapq.heappush(self._times, timestamp)
        self._undated += 1
        if self._undated > self.window:
            self._date_oldest()
        return self._fragment() if len(self._held) > 1 and self._held[1].dts is not None else None

    def flush(self) -> list[bytes]:
        """The fragments of every frame still held (at the end of the track)."""
        while self._undated:
            self._date_oldest(final=True)
        out = []
        while self._held:
            out.append(self._fragment())
        return out

    def _date_oldest(self, final: bool = False) -> None:
        held = self._held[len(self._held) - self._undated]
        if self._delay is None:
            # How far the k-th smallest presentation time runs ahead of the k-th frame's, over the first half
            # of the first window (later ranks may still miss frames that have not arrived), or over every
            # frame at the end of the track.
            ranked = sorted(self._times)
            pending = list(self._held)[-self._undated:]
            reliable = pending if final else pending[:len(pending) - self.window // 2]
            self._delay = max([0, *(ranked[k] - frame.pts for k, frame in enumerate(reliable))])
        dts = heapq.heappop(self._times) - self._delay
        held.dts = max(dts, 0 if self._last_dts is None else self._last_dts + 1)
        self._last_dts = held.dts
        self._undated -= 1

    def _fragment(self) -> bytes:
        held = self._held.popleft()
        assert held.dts is not None
        if self._held and self._held[0].dts is not None:
            self._duration = self._held[0].dts - held.dts
        self._sequence += 1
        sample = Sample(self.track_id, held.dts, self._duration, len(held.payload),
                        KEYFRAME_FLAGS if held.keyframe else DELTA_FLAGS, held.pts - held.dts, 0)
        return build_fragment(self._sequence, self.track_id, sample, held.payload)


class Recorder:
    """Write broadcast ``broadcast`` of ``session`` to ``out`` (a binary file) as fragmented MP4."""

    def __init__(self, session: Session, broadcast: str, out: BinaryIO) -> None:
        self.session = session
        self.broadcast = broadcast
        self.out = out
        self.tracks: list[RecordedTrack] = []
        self.catalog: Catalog | None = None
        self._last_catalog: Catalog | None = None

    async def run(self, *, duration: float | None = None, max_frames: int | None = None) -> list[RecordedTrack]:
        """Record until every track ends, ``duration`` seconds pass, or ``max_frames`` frames are written.

        ``duration`` counts from this call: waiting for a catalog that lists something recordable is
        part of it, and a :class:`RecordError` (naming what the catalog lists) if none came in time.
        """
        loop = asyncio.get_running_loop()
        deadline = None if duration is None else loop.time() + duration
        try:
            async with asyncio.timeout_at(deadline):
                self.catalog = await self._recordable_catalog()
        except TimeoutError:
            listed = "no catalog arrived" if self._last_catalog is None else describe_renditions(self._last_catalog)
            raise RecordError(f"{self.broadcast} listed nothing that can be recorded within the duration ({listed})"
                              ) from None
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
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
                for tail in wrap.flush() if wrap is not None else ():
                    write(recorded, tail)
            except (StreamError, SessionClosed) as exc:
                logger.warning("track %s of %s ended: %s", recorded.name, self.broadcast, exc)
            finally:
                reader.close()

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(record(recorded)) for recorded in self.tracks]
            waiter = group.create_task(_first(done, tasks, remaining))
            await waiter
            for task in tasks:
                task.cancel()
        self.out.flush()
        return self.tracks

    async def _recordable_catalog(self) -> Catalog:
        """The first version of the catalog that lists something recordable (warning about those that do not)."""
        catalog_track = await self.session.subscribe(self.broadcast, CATALOG_TRACK, priority=100)
        catalogs = read_catalogs(catalog_track)
        try:
            async for catalog in catalogs:
                if choose_renditions(catalog):
                    return catalog
                self._last_catalog = catalog
                listed = describe_renditions(catalog)
                # an empty catalog is what a publisher starts (or ends) with: worth a warning only with renditions
                logger.log(logging.INFO if listed == NO_RENDITIONS else logging.WARNING,
                           "catalog of %s lists nothing recordable yet: %s", self.broadcast, listed)
            raise RecordError(f"{self.broadcast} ended before listing a rendition that can be recorded")
        finally:
            await catalogs.aclose()
            catalog_track.close()


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


__all__ = ["REORDER_WINDOW", "LegacyWrapper", "RecordError", "RecordedTrack", "Recorder", "choose_renditions",
           "describe_renditions", "track_for"]

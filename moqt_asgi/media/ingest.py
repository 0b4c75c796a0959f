"""Fragmented MP4 in (ffmpeg's stdout, a file), hang tracks out.

:class:`Fmp4Parser` reads the byte stream box by box, holding at most one
box (``max_box_size`` bytes; a bigger one is an error, never an unbounded
read): the ``moov`` gives one init per track; each ``moof`` + ``mdat``
gives samples with their decode time, composition offset, duration and
keyframe flag (``tfhd``/``trex`` defaults, ``tfdt``, ``trun``).

:class:`Fmp4Ingest` publishes them on a :class:`HangBroadcast`: one
rendition per track, in the ``cmaf`` container (the track's ``ftyp`` +
``moov`` as ``init``; one ``moof`` + ``mdat`` per sample, ffmpeg's own
fragment passed through when it already is exactly that, re-fragmented
otherwise), the ``legacy`` one (µs timestamp + sample) or ``loc``. A video group
starts at each keyframe. A second ``moov`` with the same tracks (a looped
file) continues the timeline where it stopped.

:func:`publish_fmp4` drives it from an ``asyncio.StreamReader`` or a file,
optionally paced at real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import BinaryIO

from .catalog import AudioConfig, Container, VideoConfig
from .mp4 import (
    Fragment,
    Mp4Error,
    Sample,
    TrackInit,
    box_header,
    build_fragment,
    build_init,
    iter_boxes,
    parse_moof,
    parse_moov,
    trex_defaults,
)
from .publisher import HangBroadcast, MediaTrack

logger = logging.getLogger("moqt_asgi.media")

DEFAULT_MAX_BOX_SIZE = 32 * 1024 * 1024
IGNORED_BOXES = frozenset({"ftyp", "styp", "sidx", "ssix", "prft", "emsg", "free", "skip", "mfra", "uuid", "meta", "udta"})


@dataclass(slots=True)
class InitEvent:
    """A ``moov`` was read: its tracks."""

    tracks: list[TrackInit]


@dataclass(slots=True)
class SampleEvent:
    """One sample; ``fragment`` is the input's own ``moof`` + ``mdat`` when that holds exactly this sample."""

    track: TrackInit
    sample: Sample
    data: bytes
    fragment: bytes | None

    @property
    def timestamp_us(self) -> int:
        return (self.sample.decode_time + self.sample.cts_offset) * 1_000_000 // self.track.timescale

    @property
    def end_us(self) -> int:
        return (self.sample.decode_time + self.sample.duration) * 1_000_000 // self.track.timescale


Event = InitEvent | SampleEvent


class Fmp4Parser:
    """Incremental fragmented-MP4 reader: :meth:`feed` bytes, get :data:`Event` objects."""

    def __init__(self, *, max_box_size: int = DEFAULT_MAX_BOX_SIZE) -> None:
        self.max_box_size = max_box_size
        self._buffer = bytearray()
        self._position = 0
        """Stream offset of the first byte in the buffer."""
        self._tracks: dict[int, TrackInit] = {}
        self._defaults: dict[int, tuple[int, int, int]] = {}
        self._decode_times: dict[int, int] = {}
        self._moof: tuple[bytes, int, Fragment] | None = None

    @property
    def tracks(self) -> dict[int, TrackInit]:
        return dict(self._tracks)

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a box."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Take more bytes; returns what they completed."""
        self._buffer += data
        events: list[Event] = []
        while True:
            header = box_header(self._buffer)
            if header is None:
                break
            kind, size, _ = header
            if size > self.max_box_size:
                raise Mp4Error(f"box {kind!r} of {size} bytes is larger than the limit of {self.max_box_size}")
            if len(self._buffer) < size:
                break
            raw = bytes(self._buffer[:size])
            del self._buffer[:size]
            position = self._position
            self._position += size
            self._box(kind, raw, position, events)
        return events

    def end(self) -> None:
        """The input ended: raise if it stopped inside a box."""
        if self._buffer:
            raise Mp4Error(f"input ended inside a box ({len(self._buffer)} bytes left over)")

    def _box(self, kind: str, raw: bytes, position: int, events: list[Event]) -> None:
        if kind == "moov":
            tracks = parse_moov(raw)
            self._tracks = {track.track_id: track for track in tracks}
            self._defaults = {track.track_id: trex_defaults(track) for track in tracks}
            self._decode_times = {}
            events.append(InitEvent(tracks))
        elif kind == "moof":
            if not self._tracks:
                raise Mp4Error("a moof came before the moov")
            self._moof = (raw, position, parse_moof(raw, position, self._defaults, self._decode_times))
        elif kind == "mdat":
            if self._moof is None:
                logger.debug("mdat without a moof at %d: skipped", position)
                return
            moof, moof_position, fragment = self._moof
            self._moof = None
            self._samples(moof, moof_position, fragment, raw, position, events)
        elif kind not in IGNORED_BOXES:
            logger.debug("skipping %r box at %d", kind, position)

    def _samples(self, moof: bytes, moof_position: int, fragment: Fragment, mdat: bytes, mdat_position: int,
                 events: list[Event]) -> None:
        header = box_header(mdat)
        assert header is not None
        payload_start = mdat_position + header[2]
        payload_end = mdat_position + len(mdat)
        passthrough = (len(fragment.samples) == 1 and mdat_position == moof_position + len(moof)
                       and sum(1 for box in iter_boxes(moof, 8) if box.type == "traf") == 1
                       and moof_position + fragment.samples[0].offset == payload_start
                       and fragment.samples[0].size == payload_end - payload_start)
        for sample in fragment.samples:
            start = moof_position + sample.offset
            if start < payload_start or start + sample.size > payload_end:
                raise Mp4Error(f"a sample of track {sample.track_id} lies outside the mdat that follows its moof")
            track = self._tracks.get(sample.track_id)
            if track is None:
                raise Mp4Error(f"a traf names track {sample.track_id}, which the moov does not have")
            data = mdat[start - mdat_position:start - mdat_position + sample.size]
            events.append(SampleEvent(track, sample, data, moof + mdat if passthrough else None))


@dataclass(slots=True)
class _Published:
    track: MediaTrack
    init: TrackInit
    container: str
    sequence: int = 0


class Fmp4Ingest:
    """Publish a fragmented MP4 stream on ``hang``: feed it bytes as they come.

    ``container`` is ``"cmaf"`` (default), ``"legacy"`` or ``"loc"``. Tracks are named
    ``{n}.m4s`` (cmaf) or ``{n}.{format}`` (legacy and loc, e.g. ``0.avc1``) in ``trak``
    order, unless ``names`` maps a kind (``video``/``audio``) to a name. An
    audio group spans ``audio_group_duration_us`` (1 s, as moq-rs groups
    imported audio): an input fragmented by GoP delivers a second of audio at
    once, and groups sent newest first would reach a reader that keeps only
    the latest group out of order.
    """

    def __init__(self, hang: HangBroadcast, *, container: str = "cmaf", max_box_size: int = DEFAULT_MAX_BOX_SIZE,
                 audio_group_duration_us: int = 1_000_000, names: dict[str, str] | None = None) -> None:
        if container not in ("cmaf", "legacy", "loc"):
            raise ValueError(f"container must be 'cmaf', 'legacy' or 'loc', got {container!r}")
        self.hang = hang
        self.container = container
        self.parser = Fmp4Parser(max_box_size=max_box_size)
        self.audio_group_duration_us = audio_group_duration_us
        self.names = dict(names or {})
        self._published: dict[int, _Published] = {}
        self._offset_us = 0
        self._end_us = 0
        self.samples = 0

    @property
    def offset_us(self) -> int:
        """What is added to the input's timestamps (non-zero once a looped input started again)."""
        return self._offset_us

    @property
    def tracks(self) -> dict[str, MediaTrack]:
        """The published tracks by name."""
        return {p.track.name: p.track for p in self._published.values()}

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        for event in self.parser.feed(data):
            self.apply(event)

    def apply(self, event: Event) -> None:
        if isinstance(event, InitEvent):
            self._init(event.tracks)
        else:
            self._sample(event)

    def _init(self, tracks: list[TrackInit]) -> None:
        if self._published:
            now = {track.track_id: track for track in tracks}
            if all(tid in now and now[tid].entry.codec == p.init.entry.codec for tid, p in self._published.items()):
                self._offset_us = self._end_us  # a looped input: carry on after what was sent
                for tid, published in self._published.items():
                    published.init = now[tid]
                return
            for published in self._published.values():
                self.hang.remove(published.track.name, publish=False)
            self._published.clear()
        for index, track in enumerate(tracks):
            if not track.entry.codec or track.kind == "other":
                logger.warning("track %d (%s, %s) is not a codec we can name; not published", track.track_id,
                               track.handler, track.entry.format)
                continue
            self._add(index, track)
        self.hang.publish_catalog()

    def _add(self, index: int, track: TrackInit) -> None:
        entry = track.entry
        kind = self.container
        name = self.names.get(track.kind) or (f"{index}.m4s" if kind == "cmaf" else f"{index}.{entry.format}")
        container = Container("cmaf", build_init([track])) if kind == "cmaf" else Container(kind)
        media: MediaTrack
        if track.kind == "video":
            media = self.hang.add_video(name, VideoConfig(entry.codec, description=entry.description,
                                                          coded_width=entry.width, coded_height=entry.height,
                                                          container=container), publish=False)
        else:
            if not entry.sample_rate or not entry.channels:
                logger.warning("audio track %d has no sample rate or channel count; not published", track.track_id)
                return
            media = self.hang.add_audio(name, AudioConfig(entry.codec, entry.sample_rate, entry.channels,
                                                          bitrate=entry.bitrate, description=entry.description,
                                                          container=container),
                                        group_duration_us=self.audio_group_duration_us, publish=False)
        self._published[track.track_id] = _Published(media, track, kind)

    def _sample(self, event: SampleEvent) -> None:
        published = self._published.get(event.track.track_id)
        if published is None:
            return
        sample = event.sample
        if self._offset_us:
            shift = round(self._offset_us * event.track.timescale / 1_000_000)
            sample = Sample(sample.track_id, sample.decode_time + shift, sample.duration, sample.size, sample.flags,
                            sample.cts_offset, sample.offset)
            event = SampleEvent(event.track, sample, event.data, None)
        timestamp = max(0, event.timestamp_us)
        self._end_us = max(self._end_us, event.end_us)
        published.sequence += 1
        if published.container == "legacy":
            published.track.write_sample(event.data, timestamp, sample.keyframe)
        elif published.container == "loc":
            published.track.write_loc(event.data, timestamp, sample.keyframe)
        else:
            frame = event.fragment or build_fragment(published.sequence, sample.track_id, sample, event.data)
            published.track.write(frame, timestamp, sample.keyframe)
        self.samples += 1

    def finish(self) -> None:
        """The input ended: take this stream's renditions out of the catalog and end their tracks."""
        for published in self._published.values():
            self.hang.remove(published.track.name, publish=False)
        self._published.clear()
        self.hang.publish_catalog()


async def publish_fmp4(source: asyncio.StreamReader | BinaryIO, hang: HangBroadcast, *, realtime: bool = False,
                       container: str = "cmaf", chunk_size: int = 64 * 1024, max_box_size: int = DEFAULT_MAX_BOX_SIZE,
                       ingest: Fmp4Ingest | None = None) -> Fmp4Ingest:
    """Publish the fragmented MP4 read from ``source`` on ``hang`` until it ends; returns the ingest.

    ``source`` is an ``asyncio.StreamReader`` (ffmpeg's stdout) or a binary
    file (read in a thread). With ``realtime``, samples are released no
    faster than their timestamps (for files; a live encoder paces itself).
    The renditions stay in the catalog at the end: call ``ingest.finish()``
    or ``hang.close()`` when done.
    """
    ingest = ingest or Fmp4Ingest(hang, container=container, max_box_size=max_box_size)
    loop = asyncio.get_running_loop()
    clock: tuple[float, int] | None = None
    while True:
        if isinstance(source, asyncio.StreamReader):
            data = await source.read(chunk_size)
        else:
            data = await loop.run_in_executor(None, source.read, chunk_size)
        if not data:
            break
        for event in ingest.parser.feed(data):
            if realtime and isinstance(event, SampleEvent):
                now = time.monotonic()
                timestamp = event.timestamp_us + ingest.offset_us
                if clock is None or timestamp < clock[1]:
                    clock = (now, timestamp)
                due = clock[0] + (timestamp - clock[1]) / 1_000_000
                if due > now:
                    await asyncio.sleep(due - now)
            ingest.apply(event)
    ingest.parser.end()
    return ingest


__all__ = ["DEFAULT_MAX_BOX_SIZE", "Event", "Fmp4Ingest", "Fmp4Parser", "InitEvent", "SampleEvent", "publish_fmp4"]

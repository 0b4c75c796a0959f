"""Publishing a hang broadcast: the catalog track, media tracks with GoP-aligned groups, JSON data tracks.

::

    hang = HangBroadcast("room/alice.hang")
    app.mux.publish(hang.path, hang.broadcast)
    video = hang.add_video("video", VideoConfig("avc1.42c01e", description=avcc, coded_width=640, coded_height=360))
    video.write_sample(access_unit, timestamp_us, keyframe=True)     # legacy container
    status = hang.json_snapshot("status.json")
    status.update({"viewers": 3})

The catalog (``catalog.json``, and ``catalog.json.z`` deflated) is a JSON
snapshot track republished on every change: by default each version is a
new group of one frame, as moq-rs writes it; ``catalog_delta_ratio`` > 0
sends merge-patch deltas inside a group instead. A subscriber starts at the
newest group, so a late joiner reads the current catalog at once.

A video track opens a new group at each keyframe and only there (frames
before the first keyframe are dropped); an audio track opens one every
``group_duration_us`` (0: each frame its own group). Frame timestamps on the
wire (lite-05+) are the media timestamps in microseconds.
"""

from __future__ import annotations

import logging

from ..producer import Broadcast, GroupProducer, TrackProducer
from ..protocol.errors import MoQError
from .catalog import RESERVED_SECTIONS, AudioConfig, AudioSection, Catalog, Json, JsonTrack, VideoConfig, VideoSection
from .container import encode_legacy, encode_loc
from .jsontracks import DEFAULT_MAX_STREAM_GROUP_BYTES, JsonSnapshotProducer, JsonStreamProducer

logger = logging.getLogger("moqt_asgi.media")

HANG_SUFFIX = ".hang"
CATALOG_TRACK = "catalog.json"
CATALOG_TRACK_DEFLATE = "catalog.json.z"
PRIORITY_CATALOG = 100
PRIORITY_AUDIO = 80
PRIORITY_VIDEO = 60
MEDIA_TIMESCALE = 1_000_000
"""Media tracks carry microsecond frame timestamps."""
VIDEO_CACHED_GROUPS = 2
"""GoPs a video track keeps: the one being written and the one before."""
AUDIO_CACHED_GROUPS = 64
"""Groups an audio track keeps: audio groups are short (one frame by default) and an input that
fragments by GoP delivers a second of them at once, which a subscriber must still get."""


def hang_name(name: str) -> str:
    """``name`` with the ``.hang`` suffix that tells players to read a hang catalog."""
    return name if name.endswith(HANG_SUFFIX) else name + HANG_SUFFIX


class MediaTrack:
    """One rendition's track: frames go into groups that each start with a keyframe."""

    def __init__(self, producer: TrackProducer, kind: str, *, group_duration_us: int = 0) -> None:
        self.producer = producer
        self.kind = kind
        """``video`` or ``audio``."""
        self.group_duration_us = group_duration_us
        self._group: GroupProducer | None = None
        self._group_start = 0
        self.frames = 0
        self.dropped = 0
        """Frames dropped because no keyframe had started a group yet."""

    @property
    def name(self) -> str:
        return self.producer.name

    @property
    def group(self) -> GroupProducer | None:
        """The group being written."""
        return self._group

    def write(self, frame: bytes, timestamp_us: int, keyframe: bool) -> bool:
        """Write one frame, already in the rendition's container; returns ``False`` if it was dropped.

        Video: a keyframe starts a new group. Audio: a keyframe starts one
        once the current group spans ``group_duration_us``.
        """
        if self.producer.done:
            raise MoQError(f"track {self.name!r} is closed")
        group = self._group
        if keyframe and (group is None or self.kind == "video"
                         or timestamp_us - self._group_start >= self.group_duration_us):
            if group is not None:
                group.finish()
            group = self._group = self.producer.append_group()
            self._group_start = timestamp_us
        if group is None:
            self.dropped += 1
            return False
        group.write_frame(frame, timestamp_us)
        self.frames += 1
        return True

    def write_sample(self, payload: bytes, timestamp_us: int, keyframe: bool) -> bool:
        """Write one codec sample in the ``legacy`` container (µs timestamp varint + payload)."""
        return self.write(encode_legacy(timestamp_us, payload), timestamp_us, keyframe)

    def write_loc(self, payload: bytes, timestamp_us: int, keyframe: bool) -> bool:
        """Write one codec sample in the ``loc`` container (a timestamp property + payload)."""
        return self.write(encode_loc(timestamp_us, payload), timestamp_us, keyframe)

    def finish(self) -> None:
        """End the track; the group being written is completed first."""
        if self._group is not None:
            self._group.finish()
            self._group = None
        self.producer.finish()


class HangBroadcast:
    """A broadcast in the hang format: its :class:`~moqt_asgi.Broadcast`, catalog and tracks.

    Publish :attr:`broadcast` under :attr:`path` (``app.mux.publish(hang.path, hang.broadcast)``,
    or through a client session's mux).
    """

    def __init__(self, path: str, *, catalog_delta_ratio: float = 0, deflated_catalog: bool = True,
                 broadcast: Broadcast | None = None) -> None:
        self.broadcast = broadcast if broadcast is not None else Broadcast(path)
        self.path = self.broadcast.path
        if not self.path.endswith(HANG_SUFFIX):
            logger.warning("broadcast %r has no .hang suffix; players may not read its catalog", self.path)
        self.catalog = Catalog(VideoSection(), AudioSection())
        self.tracks: dict[str, MediaTrack] = {}
        self.json_tracks: dict[str, JsonSnapshotProducer | JsonStreamProducer] = {}
        catalog_track = self.broadcast.create_track(CATALOG_TRACK, priority=PRIORITY_CATALOG)
        self._catalog = JsonSnapshotProducer(catalog_track, delta_ratio=catalog_delta_ratio)
        self._catalog_deflated: JsonSnapshotProducer | None = None
        if deflated_catalog:
            self._catalog_deflated = JsonSnapshotProducer(
                self.broadcast.create_track(CATALOG_TRACK_DEFLATE, priority=PRIORITY_CATALOG),
                delta_ratio=catalog_delta_ratio, compression=True)
        self.closed = False

    # -- media
    def add_video(self, name: str, config: VideoConfig, *, priority: int = PRIORITY_VIDEO,
                  publish: bool = True) -> MediaTrack:
        """A video rendition on track ``name``, listed in the catalog (published now unless ``publish`` is false)."""
        track = self._media_track(name, "video", priority, 0, VIDEO_CACHED_GROUPS)
        assert self.catalog.video is not None
        self.catalog.video.renditions[name] = config
        if publish:
            self.publish_catalog()
        return track

    def add_audio(self, name: str, config: AudioConfig, *, priority: int = PRIORITY_AUDIO, group_duration_us: int = 0,
                  publish: bool = True) -> MediaTrack:
        """An audio rendition on track ``name``; a group spans ``group_duration_us`` (0: one frame per group)."""
        track = self._media_track(name, "audio", priority, group_duration_us, AUDIO_CACHED_GROUPS)
        assert self.catalog.audio is not None
        self.catalog.audio.renditions[name] = config
        if publish:
            self.publish_catalog()
        return track

    def _media_track(self, name: str, kind: str, priority: int, group_duration_us: int, cached: int) -> MediaTrack:
        if self.closed:
            raise MoQError(f"broadcast {self.path!r} is closed")
        if name in (CATALOG_TRACK, CATALOG_TRACK_DEFLATE) or name in self.tracks or name in self.json_tracks:
            raise MoQError(f"track name {name!r} is taken")
        producer = self.broadcast.create_track(name, priority=priority, timescale=MEDIA_TIMESCALE, cached_groups=cached)
        track = self.tracks[name] = MediaTrack(producer, kind, group_duration_us=group_duration_us)
        return track

    def remove(self, name: str, *, publish: bool = True) -> None:
        """Take rendition or JSON track ``name`` out of the catalog and end its track."""
        for section in (self.catalog.video, self.catalog.audio):
            if section is not None:
                section.renditions.pop(name, None)
        self.catalog.json_tracks.pop(name, None)
        if publish:
            self.publish_catalog()
        if (media := self.tracks.pop(name, None)) is not None:
            media.finish()
        if (data := self.json_tracks.pop(name, None)) is not None:
            data.finish()

    # -- JSON data tracks and sections
    def json_snapshot(self, name: str, *, delta_ratio: float = 8, compression: bool = False,
                      schema: str | None = None, priority: int = 0) -> JsonSnapshotProducer:
        """A JSON snapshot track listed in the catalog's ``json.tracks``."""
        producer = JsonSnapshotProducer(self._json_track(name, priority), delta_ratio=delta_ratio,
                                        compression=compression)
        self._list_json(name, JsonTrack("snapshot", "deflate" if compression else None, schema), producer)
        return producer

    def json_stream(self, name: str, *, compression: bool = False, schema: str | None = None,
                    priority: int = 0, max_group_bytes: int = DEFAULT_MAX_STREAM_GROUP_BYTES) -> JsonStreamProducer:
        """A JSON stream track (an append-only log) listed in the catalog's ``json.tracks``.

        A new group starts when the next record would take the current one past ``max_group_bytes``.
        """
        producer = JsonStreamProducer(self._json_track(name, priority), compression=compression,
                                      max_group_bytes=max_group_bytes)
        self._list_json(name, JsonTrack("stream", "deflate" if compression else None, schema), producer)
        return producer

    def _json_track(self, name: str, priority: int) -> TrackProducer:
        if self.closed:
            raise MoQError(f"broadcast {self.path!r} is closed")
        if name in (CATALOG_TRACK, CATALOG_TRACK_DEFLATE) or name in self.tracks or name in self.json_tracks:
            raise MoQError(f"track name {name!r} is taken")
        return self.broadcast.create_track(name, priority=priority)

    def _list_json(self, name: str, entry: JsonTrack, producer: JsonSnapshotProducer | JsonStreamProducer) -> None:
        self.json_tracks[name] = producer
        self.catalog.json_tracks[name] = entry
        self.publish_catalog()

    def set_section(self, name: str, value: Json) -> None:
        """Set an application root section of the catalog (players pass unknown sections through)."""
        if name in RESERVED_SECTIONS:
            raise ValueError(f"{name!r} is a reserved catalog section name")
        self.catalog.sections[name] = value
        self.publish_catalog()

    def remove_section(self, name: str) -> None:
        if self.catalog.sections.pop(name, None) is not None:
            self.publish_catalog()

    # -- the catalog track
    def publish_catalog(self, *, new_group: bool = False) -> None:
        """Publish :attr:`catalog` as it is now (validated first); nothing is sent if it did not change.

        ``new_group`` restates the whole catalog in a new group even if nothing changed.
        """
        self.catalog.validate()
        value = self.catalog.to_json()
        for producer in (self._catalog, self._catalog_deflated):
            if producer is None:
                continue
            if new_group:
                producer.new_group(value)
            else:
                producer.update(value)

    def close(self) -> None:
        """Publish a last catalog without renditions, then end every track."""
        if self.closed:
            return
        for section in (self.catalog.video, self.catalog.audio):
            if section is not None:
                section.renditions.clear()
        self.catalog.json_tracks.clear()
        self.publish_catalog()
        self.closed = True
        for media in self.tracks.values():
            media.finish()
        for data in self.json_tracks.values():
            data.finish()
        self._catalog.finish()
        if self._catalog_deflated is not None:
            self._catalog_deflated.finish()


__all__ = [
    "CATALOG_TRACK", "CATALOG_TRACK_DEFLATE", "HANG_SUFFIX", "MEDIA_TIMESCALE", "PRIORITY_AUDIO", "PRIORITY_CATALOG",
    "PRIORITY_VIDEO", "HangBroadcast", "MediaTrack", "hang_name",
]

"""JSON data tracks, as ``@moq/json`` and moq-rs write and read them; the catalog is one of them.

* **Snapshot** (latest value, lossy): frame 0 of each group is the whole
  value, later frames of the group are RFC 7396 merge patches applied in
  order. :class:`JsonSnapshotProducer` writes deltas until they outweigh
  ``delta_ratio`` times the snapshot (``0``: every value is a new group of
  one frame, which is what moq-rs and the JS publisher do for the catalog).
* **Stream** (lossless log): one record per frame, a new group every
  ``max_group_bytes`` (1 MiB).
* **Compression** ``deflate``: each group is one raw DEFLATE stream,
  sync-flushed per frame, each frame without its trailing ``00 00 ff ff``.

Every frame is compact UTF-8 JSON with no trailing newline.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from ..protocol.errors import StreamError
from .catalog import Catalog, CatalogError, Json, dumps

if TYPE_CHECKING:
    from ..engine.track import TrackReader
    from ..producer import GroupProducer, TrackProducer

logger = logging.getLogger("moqt_asgi.media")

SYNC_TAIL = b"\x00\x00\xff\xff"
MAX_FRAMES_PER_GROUP = 256
MAX_INFLATED = 64 * 1024 * 1024
"""Most bytes one compressed frame may inflate to."""


class JsonTrackError(ValueError):
    """A JSON track frame that cannot be decoded."""


def merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7396: ``patch`` applied to ``target`` (neither is modified)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def diff(old: dict[str, Json], new: dict[str, Json]) -> dict[str, Json]:
    """The merge patch turning ``old`` into ``new`` (removed keys become ``null``; objects recurse)."""
    patch: dict[str, Json] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = diff(before, value)
            if inner:
                patch[key] = inner
        elif before is _MISSING or before != value or type(before) is not type(value):
            patch[key] = value
    return patch


_MISSING = object()


def _has_null(value: Json) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    return False


class Deflater:
    """One group's DEFLATE stream: :meth:`frame` gives each frame's compressed bytes."""

    def __init__(self, level: int = 6) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -15)

    def frame(self, data: bytes) -> bytes:
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(SYNC_TAIL) else out


class Inflater:
    """One group's DEFLATE stream, read frame by frame (at most :data:`MAX_INFLATED` bytes per frame)."""

    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj(-15)

    def frame(self, data: bytes) -> bytes:
        try:
            out = self._decompressor.decompress(data + SYNC_TAIL, MAX_INFLATED)
        except zlib.error as exc:
            raise JsonTrackError(f"bad DEFLATE frame: {exc}") from None
        if self._decompressor.unconsumed_tail:
            raise JsonTrackError(f"a frame inflates past {MAX_INFLATED} bytes")
        return out


def _loads(data: bytes) -> Json:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise JsonTrackError(f"frame is not JSON: {exc}") from None
    except RecursionError:
        raise JsonTrackError("frame nests too deeply") from None


class JsonSnapshotProducer:
    """Publish the latest value of something on a snapshot track (see the module docstring).

    ``timestamp`` for frames defaults to the track's wall clock.
    """

    def __init__(self, track: TrackProducer, *, delta_ratio: float = 8, compression: bool = False) -> None:
        self.track = track
        self.delta_ratio = delta_ratio
        self.compression = compression
        self.value: Json = None
        self._has_value = False
        self._group: GroupProducer | None = None
        self._deflater: Deflater | None = None
        self._snapshot_bytes = 0
        self._delta_bytes = 0

    def update(self, value: Json) -> bool:
        """Publish ``value``; an unchanged value writes nothing (returns whether something was written)."""
        if self._has_value and value == self.value:
            return False
        delta = None
        if (self._has_value and self.delta_ratio > 0 and self._group is not None and not self._group.done
                and isinstance(value, dict) and isinstance(self.value, dict) and not _has_null(value)
                and len(self._group.frames) < MAX_FRAMES_PER_GROUP
                and self._delta_bytes <= self.delta_ratio * self._snapshot_bytes):
            delta = diff(self.value, value)
        if delta is not None:
            payload = self._encode(dumps(delta))
            assert self._group is not None
            self._group.write_frame(payload)
            self._delta_bytes += len(payload)
        else:
            self.new_group(value)
            return True
        self.value = value
        return True

    def new_group(self, value: Json | None = None) -> None:
        """Start a new group with the full value (``value``, else the current one) in frame 0."""
        if value is not None or not self._has_value:
            self.value = value
            self._has_value = True
        if self._group is not None:
            self._group.finish()
        self._deflater = Deflater() if self.compression else None
        group = self.track.append_group()
        payload = self._encode(dumps(self.value))
        group.write_frame(payload)
        self._snapshot_bytes, self._delta_bytes = len(payload), 0
        if self.delta_ratio > 0 and isinstance(self.value, dict):
            self._group = group
        else:
            group.finish()
            self._group = None

    def _encode(self, data: bytes) -> bytes:
        return self._deflater.frame(data) if self._deflater is not None else data

    def finish(self) -> None:
        if self._group is not None:
            self._group.finish()
            self._group = None
        self.track.finish()


DEFAULT_MAX_STREAM_GROUP_BYTES = 1024 * 1024
"""The bytes a JSON stream group holds before :class:`JsonStreamProducer` starts the next one."""


class JsonStreamProducer:
    """Append records to a stream track, one record per frame.

    A group holds records until the next one would take it past
    ``max_group_bytes``: the group is finished and the record starts a new
    one (a record larger than that goes alone in its group). Compressed,
    each group is its own DEFLATE stream, so a reader that joins at the
    newest group decodes it alone, as ``@moq/json`` readers do (a cold
    window per group).
    """

    def __init__(self, track: TrackProducer, *, compression: bool = False,
                 max_group_bytes: int = DEFAULT_MAX_STREAM_GROUP_BYTES) -> None:
        if max_group_bytes <= 0:
            raise ValueError(f"max_group_bytes must be positive, got {max_group_bytes}")
        self.track = track
        self.compression = compression
        self.max_group_bytes = max_group_bytes
        self._group: GroupProducer | None = None
        self._deflater: Deflater | None = None

    def append(self, record: Json) -> None:
        """Write ``record`` as the next frame, in a new group if it would take the current one past the limit."""
        data = dumps(record)
        group = self._group
        if group is not None and not group.done:
            payload = self._encode(data)
            if not group.frames or group.size + len(payload) <= self.max_group_bytes:
                group.write_frame(payload)
                return
            group.finish()  # its deflater took this record in: the new group starts a new stream
        self._group = group = self.track.append_group()
        self._deflater = Deflater() if self.compression else None
        group.write_frame(self._encode(data))

    def _encode(self, data: bytes) -> bytes:
        return self._deflater.frame(data) if self._deflater is not None else data

    def finish(self) -> None:
        if self._group is not None:
            self._group.finish()
        self.track.finish()


class SnapshotDecoder:
    """Turns the frames of a snapshot track back into values, group by group."""

    def __init__(self, *, compression: bool = False) -> None:
        self.compression = compression
        self.value: Json = None
        self._inflater: Inflater | None = None
        self._in_group = False

    def start_group(self) -> None:
        self._inflater = Inflater() if self.compression else None
        self._in_group = False

    def frame(self, payload: bytes) -> Json:
        """The value after this frame (frame 0 of a group replaces, later frames patch)."""
        data = self._inflater.frame(payload) if self._inflater is not None else payload
        decoded = _loads(data)
        try:
            self.value = merge_patch(self.value, decoded) if self._in_group else decoded
        except RecursionError:
            raise JsonTrackError("patch nests too deeply") from None
        self._in_group = True
        return self.value


class StreamDecoder:
    """Turns the frames of a stream track back into records."""

    def __init__(self, *, compression: bool = False) -> None:
        self.compression = compression
        self._inflater: Inflater | None = None

    def start_group(self) -> None:
        self._inflater = Inflater() if self.compression else None

    def frame(self, payload: bytes) -> Json:
        return _loads(self._inflater.frame(payload) if self._inflater is not None else payload)


async def read_snapshots(track: TrackReader, *, compression: bool = False) -> AsyncGenerator[Json, None]:
    """Each value of a subscribed snapshot track, newest groups only (an older group that arrives late is skipped).

    A group that fails is skipped: the next group's snapshot resynchronises.
    """
    decoder = SnapshotDecoder(compression=compression)
    newest = -1
    async for group in track:
        if group.sequence <= newest:
            group.stop()
            continue
        newest = group.sequence
        decoder.start_group()
        try:
            async for frame in group:
                yield decoder.frame(frame)
        except JsonTrackError as exc:
            logger.warning("skipping snapshot group %d: %s", group.sequence, exc)
        except StreamError as exc:  # a reset group: wait for the next snapshot
            logger.debug("snapshot group %d failed: %s", group.sequence, exc)


async def read_catalogs(track: TrackReader) -> AsyncGenerator[Catalog, None]:
    """Each version of a subscribed ``catalog.json`` (deltas applied); a version that does not parse is skipped."""
    async for value in read_snapshots(track):
        try:
            yield Catalog.from_json(value)
        except CatalogError as exc:
            logger.warning("skipping a catalog the player would reject: %s", exc)


async def read_stream(track: TrackReader, *, compression: bool = False) -> AsyncGenerator[Json, None]:
    """Every record of a subscribed stream track, in order."""
    decoder = StreamDecoder(compression=compression)
    async for group in track:
        decoder.start_group()
        async for frame in group:
            yield decoder.frame(frame)


__all__ = [
    "DEFAULT_MAX_STREAM_GROUP_BYTES", "Deflater", "Inflater",
    "JsonSnapshotProducer", "JsonStreamProducer", "JsonTrackError", "SnapshotDecoder",
    "StreamDecoder", "diff", "merge_patch", "read_catalogs", "read_snapshots", "read_stream",
]

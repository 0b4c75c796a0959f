"""ISO-BMFF (MP4) boxes: what fragmented-MP4 ingest, the ``cmaf`` container and recording need.

Reading: :func:`iter_boxes`, :func:`parse_moov` (one :class:`TrackInit` per
``trak``: ids, timescale, sample entry, codec facts) and :func:`parse_moof`
(the samples of every ``traf`` with their decode times, offsets and flags).
Writing: :func:`build_init` (``ftyp`` + a ``moov`` describing one or more
tracks, with ``mvex``/``trex``) and :func:`build_fragment` (one ``moof`` +
``mdat`` for one sample of one track, data at the first byte of the ``mdat``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from .codecs import SampleEntryInfo, describe_sample_entry


class Mp4Error(ValueError):
    """Malformed or unsupported MP4 data."""


@dataclass(frozen=True, slots=True)
class Box:
    """One box: its four-character ``type``, where it starts in the buffer read, and its bytes."""

    type: str
    raw: bytes
    header_size: int
    start: int = 0
    """Where the box starts in the buffer it was read from."""

    @property
    def payload(self) -> bytes:
        return self.raw[self.header_size:]


def box_header(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[str, int, int] | None:
    """``(type, size, header size)`` of the box at ``offset``, or ``None`` if the header is not all there.

    A size of 0 ("to the end of the file") is refused: a stream has no end to run to.
    """
    if len(data) - offset < 8:
        return None
    size, kind = struct.unpack_from(">I4s", data, offset)
    header = 8
    if size == 1:
        if len(data) - offset < 16:
            return None
        (size,) = struct.unpack_from(">Q", data, offset + 8)
        header = 16
    elif size == 0:
        raise Mp4Error(f"box {kind!r} runs to the end of the file (size 0), which a stream cannot have")
    if size < header:
        raise Mp4Error(f"box {kind!r} claims {size} bytes, less than its header")
    return kind.decode("latin-1"), int(size), header


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The boxes in ``data[start:end]``, in order; a truncated box is an :class:`Mp4Error`."""
    end = len(data) if end is None else end
    offset = start
    while offset < end:
        header = box_header(data, offset)
        if header is None:
            raise Mp4Error(f"truncated box header at {offset}")
        kind, size, header_size = header
        if offset + size > end:
            raise Mp4Error(f"box {kind!r} at {offset} runs past its parent ({size} bytes)")
        yield Box(kind, bytes(data[offset:offset + size]), header_size, offset)
        offset += size


def children(box: Box, skip: int = 0) -> dict[str, list[Box]]:
    """The child boxes of ``box`` by type (``skip``: bytes of fields before the first child)."""
    found: dict[str, list[Box]] = {}
    for child in iter_boxes(box.raw, box.header_size + skip):
        found.setdefault(child.type, []).append(child)
    return found


def first(boxes: dict[str, list[Box]], kind: str) -> Box:
    try:
        return boxes[kind][0]
    except KeyError:
        raise Mp4Error(f"missing {kind!r} box") from None


def make_box(kind: str, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind.encode("latin-1")) + body


def full_box(kind: str, version: int, flags: int, *parts: bytes) -> bytes:
    return make_box(kind, struct.pack(">I", (version << 24) | flags), *parts)


# -- init segments --------------------------------------------------------------------------------

@dataclass(slots=True)
class TrackInit:
    """What a ``moov`` says about one track."""

    track_id: int
    handler: str
    """``vide``, ``soun``, ...: the ``hdlr`` handler type."""
    timescale: int
    """``mdhd`` units per second: the unit of every ``tfdt`` and ``trun`` value of the track."""
    trak: bytes
    trex: bytes | None
    entry: SampleEntryInfo
    mvhd: bytes = b""

    @property
    def kind(self) -> str:
        """``video``, ``audio`` or ``other``."""
        return {"vide": "video", "soun": "audio"}.get(self.handler, "other")


def _mdhd_timescale(mdhd: Box) -> int:
    payload = mdhd.payload
    version = payload[0]
    offset = 4 + (16 if version == 1 else 8)
    return int(struct.unpack_from(">I", payload, offset)[0])


def _tkhd_track_id(tkhd: Box) -> int:
    payload = tkhd.payload
    offset = 4 + (16 if payload[0] == 1 else 8)
    return int(struct.unpack_from(">I", payload, offset)[0])


def parse_moov(moov: bytes) -> list[TrackInit]:
    """One :class:`TrackInit` per ``trak`` of ``moov`` (its bytes, header included), in order."""
    try:
        box = next(iter_boxes(moov))
        if box.type != "moov":
            raise Mp4Error(f"expected a moov box, got {box.type!r}")
        top = children(box)
        mvhd = first(top, "mvhd").raw
        trexes: dict[int, bytes] = {}
        for mvex in top.get("mvex", []):
            for trex in children(mvex).get("trex", []):
                trexes[int(struct.unpack_from(">I", trex.payload, 4)[0])] = trex.raw
        tracks = []
        for trak in top.get("trak", []):
            parts = children(trak)
            track_id = _tkhd_track_id(first(parts, "tkhd"))
            mdia = children(first(parts, "mdia"))
            timescale = _mdhd_timescale(first(mdia, "mdhd"))
            handler = first(mdia, "hdlr").payload[8:12].decode("latin-1")
            stbl = children(first(children(first(mdia, "minf")), "stbl"))
            stsd = first(stbl, "stsd")
            entries = list(iter_boxes(stsd.raw, stsd.header_size + 8))
            if not entries:
                raise Mp4Error(f"track {track_id} has no sample entry")
            if timescale <= 0:
                raise Mp4Error(f"track {track_id} has timescale {timescale}")
            tracks.append(TrackInit(track_id, handler, timescale, trak.raw, trexes.get(track_id),
                                    describe_sample_entry(entries[0].type, entries[0].raw), mvhd))
        return tracks
    except (struct.error, IndexError) as exc:
        raise Mp4Error(f"malformed moov: {exc}") from None


FTYP = make_box("ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"mp41")
"""The ``ftyp`` of the inits we write: major brand ``isom``, compatible ``isom iso6 mp41``."""

DEFAULT_MVHD = full_box("mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0), struct.pack(">IH", 0x00010000, 0x0100),
                        bytes(10), struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000),
                        bytes(24), struct.pack(">I", 0xFFFFFFFF))


def default_trex(track_id: int) -> bytes:
    return full_box("trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))


def build_init(tracks: list[TrackInit]) -> bytes:
    """``ftyp`` + ``moov`` (``mvhd``, ``mvex`` with each track's ``trex``, the ``trak`` boxes): a CMAF init."""
    if not tracks:
        raise Mp4Error("an init needs a track")
    mvhd = tracks[0].mvhd or DEFAULT_MVHD
    mvex = make_box("mvex", *(t.trex or default_trex(t.track_id) for t in tracks))
    return FTYP + make_box("moov", mvhd, mvex, *(t.trak for t in tracks))


def parse_init(init: bytes) -> list[TrackInit]:
    """The tracks of an init segment (``ftyp`` + ``moov``)."""
    for box in iter_boxes(init):
        if box.type == "moov":
            return parse_moov(box.raw)
    raise Mp4Error("init segment has no moov")


def retrack(track: TrackInit, track_id: int) -> TrackInit:
    """``track`` renumbered as ``track_id`` (its ``tkhd`` and ``trex`` rewritten)."""
    trak = bytearray(track.trak)
    for child in iter_boxes(track.trak, 8):
        if child.type == "tkhd":
            offset = child.start + child.header_size + 4 + (16 if child.raw[child.header_size] == 1 else 8)
            struct.pack_into(">I", trak, offset, track_id)
            break
    trex = bytearray(track.trex or default_trex(track.track_id))
    struct.pack_into(">I", trex, 12, track_id)
    return TrackInit(track_id, track.handler, track.timescale, bytes(trak), bytes(trex), track.entry, track.mvhd)


# -- fragments ------------------------------------------------------------------------------------

MAX_SAMPLES = 4096
"""Most samples one ``moof`` may describe (a GoP-long fragment of 60 fps video holds a few hundred);
a ``trun`` without per-sample fields could otherwise claim billions of empty samples."""
NON_SYNC = 0x00010000
"""``sample_is_non_sync_sample`` in the sample flags: set on every frame that is not a keyframe."""
KEYFRAME_FLAGS = 0x02000000
"""``sample_depends_on = 2`` (does not depend on others), sync."""
DELTA_FLAGS = 0x01010000
"""``sample_depends_on = 1``, non-sync."""


@dataclass(slots=True)
class Sample:
    """One sample of a ``traf``: where its bytes are (from the ``moof``'s first byte) and its timing."""

    track_id: int
    decode_time: int
    duration: int
    size: int
    flags: int
    cts_offset: int
    offset: int

    @property
    def keyframe(self) -> bool:
        return not self.flags & NON_SYNC


@dataclass(slots=True)
class _Defaults:
    duration: int = 0
    size: int = 0
    flags: int = 0


@dataclass(slots=True)
class Fragment:
    """A parsed ``moof``: its sequence number and samples (offsets relative to the moof's first byte)."""

    sequence: int
    samples: list[Sample] = field(default_factory=list)


def parse_moof(moof: bytes, moof_position: int, trex_defaults: dict[int, tuple[int, int, int]],
               decode_times: dict[int, int]) -> Fragment:
    """The samples of every ``traf`` in ``moof`` (the box's bytes).

    ``moof_position`` is where the moof starts in the stream (to turn an
    absolute ``base_data_offset`` into one relative to the moof);
    ``trex_defaults`` maps a track id to its (duration, size, flags);
    ``decode_times`` carries each track's next decode time for ``traf`` boxes
    without a ``tfdt`` (updated in place).
    """
    try:
        box = next(iter_boxes(moof))
        parts = children(box)
        sequence = int(struct.unpack_from(">I", first(parts, "mfhd").payload, 4)[0])
        fragment = Fragment(sequence)
        for traf in parts.get("traf", []):
            _parse_traf(traf, moof_position, trex_defaults, decode_times, fragment)
        return fragment
    except (struct.error, IndexError, StopIteration) as exc:
        raise Mp4Error(f"malformed moof: {exc}") from None


def _parse_traf(traf: Box, moof_position: int, trex_defaults: dict[int, tuple[int, int, int]],
                decode_times: dict[int, int], fragment: Fragment) -> None:
    parts = children(traf)
    tfhd = first(parts, "tfhd").payload
    flags = int.from_bytes(tfhd[1:4], "big")
    track_id = int(struct.unpack_from(">I", tfhd, 4)[0])
    duration, size, sample_flags = trex_defaults.get(track_id, (0, 0, 0))
    defaults = _Defaults(duration, size, sample_flags)
    position = 8
    base = 0  # relative to the moof: default-base-is-moof, and the ISO default for the first traf
    if flags & 0x000001:
        base = int(struct.unpack_from(">Q", tfhd, position)[0]) - moof_position
        position += 8
    if flags & 0x000002:
        position += 4  # sample_description_index
    if flags & 0x000008:
        defaults.duration = int(struct.unpack_from(">I", tfhd, position)[0])
        position += 4
    if flags & 0x000010:
        defaults.size = int(struct.unpack_from(">I", tfhd, position)[0])
        position += 4
    if flags & 0x000020:
        defaults.flags = int(struct.unpack_from(">I", tfhd, position)[0])
    if "tfdt" in parts:
        tfdt = parts["tfdt"][0].payload
        decode_time = int(struct.unpack_from(">Q", tfdt, 4)[0]) if tfdt[0] == 1 else int(struct.unpack_from(">I", tfdt, 4)[0])
    else:
        decode_time = decode_times.get(track_id, 0)
    data_end = base
    for trun in parts.get("trun", []):
        decode_time, data_end = _parse_trun(trun.payload, track_id, base, data_end, decode_time, defaults, fragment)
    decode_times[track_id] = decode_time


def _parse_trun(trun: bytes, track_id: int, base: int, data_end: int, decode_time: int, defaults: _Defaults,
                fragment: Fragment) -> tuple[int, int]:
    version = trun[0]
    flags = int.from_bytes(trun[1:4], "big")
    count = int(struct.unpack_from(">I", trun, 4)[0])
    position = 8
    offset = data_end
    if flags & 0x000001:
        offset = base + int(struct.unpack_from(">i", trun, position)[0])
        position += 4
    first_flags: int | None = None
    if flags & 0x000004:
        first_flags = int(struct.unpack_from(">I", trun, position)[0])
        position += 4
    per_sample = sum(4 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
    if position + count * per_sample > len(trun):
        raise Mp4Error(f"trun of track {track_id} claims {count} samples but holds fewer")
    if len(fragment.samples) + count > MAX_SAMPLES:
        raise Mp4Error(f"a moof with more than {MAX_SAMPLES} samples")
    for index in range(count):
        duration, size = defaults.duration, defaults.size
        sample_flags = first_flags if index == 0 and first_flags is not None else defaults.flags
        cts = 0
        if flags & 0x100:
            duration = int(struct.unpack_from(">I", trun, position)[0])
            position += 4
        if flags & 0x200:
            size = int(struct.unpack_from(">I", trun, position)[0])
            position += 4
        if flags & 0x400:
            sample_flags = int(struct.unpack_from(">I", trun, position)[0])
            position += 4
        if flags & 0x800:
            cts = int(struct.unpack_from(">i" if version else ">I", trun, position)[0])
            position += 4
        fragment.samples.append(Sample(track_id, decode_time, duration, size, sample_flags, cts, offset))
        decode_time += duration
        offset += size
    return decode_time, offset


def trex_defaults(track: TrackInit) -> tuple[int, int, int]:
    """(duration, size, flags) defaults of a track's ``trex`` (zeros without one)."""
    if track.trex is None:
        return 0, 0, 0
    duration, size, flags = struct.unpack_from(">III", track.trex, 20)
    return int(duration), int(size), int(flags)


def build_fragment(sequence: int, track_id: int, sample: Sample, data: bytes | memoryview) -> bytes:
    """One ``moof`` + ``mdat`` holding ``data``, the one sample of ``track_id``.

    ``tfhd`` has default-base-is-moof, ``tfdt`` is version 1, ``trun`` (version
    1: signed composition offsets) gives the data offset and the sample's
    duration, size, flags and composition offset: the sample starts at the
    first byte of the ``mdat``, which is all a hang player reads.
    """
    tfhd = full_box("tfhd", 0, 0x020000, struct.pack(">I", track_id))
    tfdt = full_box("tfdt", 1, 0, struct.pack(">Q", sample.decode_time))
    trun_size = 8 + 4 + 4 + 4 + 16
    moof_size = 8 + 16 + 8 + len(tfhd) + len(tfdt) + trun_size
    trun = full_box("trun", 1, 0x000F01, struct.pack(">Ii", 1, moof_size + 8),
                    struct.pack(">IIIi", sample.duration, len(data), sample.flags, sample.cts_offset))
    moof = make_box("moof", full_box("mfhd", 0, 0, struct.pack(">I", sequence)), make_box("traf", tfhd, tfdt, trun))
    assert len(moof) == moof_size
    return moof + struct.pack(">I4s", 8 + len(data), b"mdat") + bytes(data)


def set_fragment_track(fragment: bytes, track_id: int) -> bytes:
    """``fragment`` (``moof`` + ``mdat``, one ``traf``) with its ``tfhd`` naming ``track_id``."""
    out = bytearray(fragment)
    boxes = list(iter_boxes(fragment))
    if not boxes or boxes[0].type != "moof" or not any(box.type == "mdat" for box in boxes):
        raise Mp4Error("a cmaf frame is a moof and an mdat")
    moof = boxes[0]
    try:
        for traf in iter_boxes(fragment, moof.header_size, len(moof.raw)):
            if traf.type != "traf":
                continue
            for child in iter_boxes(traf.raw, traf.header_size):
                if child.type == "tfhd":
                    if len(child.raw) < child.header_size + 8:
                        raise Mp4Error("tfhd too short for a track id")
                    struct.pack_into(">I", out, traf.start + child.start + child.header_size + 4, track_id)
    except struct.error as exc:
        raise Mp4Error(f"malformed tfhd: {exc}") from None
    return bytes(out)


__all__ = [
    "DELTA_FLAGS", "FTYP", "KEYFRAME_FLAGS", "MAX_SAMPLES", "NON_SYNC", "Box", "Fragment", "Mp4Error", "Sample", "TrackInit",
    "box_header", "build_fragment", "build_init", "children", "full_box", "iter_boxes", "make_box", "parse_init",
    "parse_moof", "parse_moov", "retrack", "set_fragment_track", "trex_defaults",
]

"""MP4 track descriptions built from a catalog rendition, to record ``legacy`` renditions as fragmented MP4.

A ``legacy`` rendition has no init segment, only the catalog's codec string
and ``description``; :func:`legacy_track` builds a ``trak`` (microsecond
timescale) whose sample entry carries that description: ``avc1`` + ``avcC``,
``hvc1`` + ``hvcC``, ``av01`` + ``av1C``, ``mp4a`` + ``esds`` (the AAC
AudioSpecificConfig), ``Opus`` + ``dOps`` (from the ``OpusHead``).
"""

from __future__ import annotations

import struct

from .catalog import AudioConfig, VideoConfig
from .codecs import describe_sample_entry
from .mp4 import TrackInit, default_trex, full_box, make_box

TIMESCALE = 1_000_000
"""The timescale of the tracks built here: legacy timestamps are microseconds."""
MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def _descriptor(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([0x80 | (size >> 21) & 0x7F, 0x80 | (size >> 14) & 0x7F, 0x80 | (size >> 7) & 0x7F, size & 0x7F])
    return bytes([tag]) + length + body


def esds(asc: bytes, bitrate: int) -> bytes:
    decoder_config = _descriptor(0x04, struct.pack(">BB", 0x40, 0x15) + bytes(3) + struct.pack(">II", bitrate, bitrate)
                                 + _descriptor(0x05, asc))
    return full_box("esds", 0, 0, _descriptor(0x03, struct.pack(">HB", 1, 0) + decoder_config + _descriptor(0x06, b"\x02")))


def dops(opus_head: bytes) -> bytes:
    """``dOps`` from an ``OpusHead`` (little-endian there, big-endian here)."""
    channels, pre_skip, rate, gain, family = struct.unpack_from("<BHIhB", opus_head, 9)
    return make_box("dOps", struct.pack(">BBHIhB", 0, channels, pre_skip, rate, gain, family) + opus_head[19:])


def visual_entry(kind: str, width: int, height: int, *children: bytes) -> bytes:
    fields = (bytes(6) + struct.pack(">H", 1) + bytes(16) + struct.pack(">HHIIIH", width, height, 0x00480000, 0x00480000,
                                                                        0, 1)
              + bytes(32) + struct.pack(">Hh", 0x18, -1))
    return make_box(kind, fields, *children)


def audio_entry(kind: str, sample_rate: int, channels: int, *children: bytes) -> bytes:
    fields = bytes(6) + struct.pack(">H", 1) + bytes(8) + struct.pack(">HHHHI", channels, 16, 0, 0,
                                                                      min(sample_rate, 0xFFFF) << 16)
    return make_box(kind, fields, *children)


def build_trak(track_id: int, handler: str, entry: bytes, *, width: int = 0, height: int = 0) -> bytes:
    audio = handler == "soun"
    tkhd = full_box("tkhd", 0, 3, struct.pack(">IIIII", 0, 0, track_id, 0, 0), bytes(8),
                    struct.pack(">hhhH", 0, 0, 0x0100 if audio else 0, 0), MATRIX,
                    struct.pack(">II", width << 16, height << 16))
    mdhd = full_box("mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, 0, 0x55C4, 0))
    name = b"SoundHandler\0" if audio else b"VideoHandler\0"
    hdlr = full_box("hdlr", 0, 0, struct.pack(">I4s", 0, handler.encode()), bytes(12), name)
    header = full_box("smhd", 0, 0, bytes(4)) if audio else full_box("vmhd", 0, 1, bytes(8))
    dinf = make_box("dinf", full_box("dref", 0, 0, struct.pack(">I", 1), full_box("url ", 0, 1)))
    stbl = make_box("stbl", full_box("stsd", 0, 0, struct.pack(">I", 1), entry), full_box("stts", 0, 0, bytes(4)),
                    full_box("stsc", 0, 0, bytes(4)), full_box("stsz", 0, 0, bytes(8)), full_box("stco", 0, 0, bytes(4)))
    return make_box("trak", tkhd, make_box("mdia", mdhd, hdlr, make_box("minf", header, dinf, stbl)))


def legacy_track(config: VideoConfig | AudioConfig, track_id: int) -> TrackInit | None:
    """A track for a ``legacy`` rendition, or ``None`` if its codec cannot be described from the catalog."""
    description = config.description
    codec = config.codec
    if isinstance(config, VideoConfig):
        width, height = config.coded_width or 0, config.coded_height or 0
        if codec.startswith("avc1.") and description:
            entry = visual_entry("avc1", width, height, make_box("avcC", description))
        elif codec.startswith("hvc1.") and description:
            entry = visual_entry("hvc1", width, height, make_box("hvcC", description))
        elif codec.startswith("av01.") and description:
            entry = visual_entry("av01", width, height, make_box("av1C", description))
        else:
            return None
        trak = build_trak(track_id, "vide", entry, width=width, height=height)
        handler = "vide"
    else:
        if codec.startswith("mp4a.40.") and description:
            entry = audio_entry("mp4a", config.sample_rate, config.number_of_channels,
                                esds(description, config.bitrate or 0))
        elif codec == "opus" and description and description.startswith(b"OpusHead") and len(description) >= 19:
            entry = audio_entry("Opus", 48000, config.number_of_channels, dops(description))
        else:
            return None
        trak = build_trak(track_id, "soun", entry)
        handler = "soun"
    return TrackInit(track_id, handler, TIMESCALE, trak, default_trex(track_id), describe_sample_entry(entry[4:8].decode(),
                                                                                                     entry))


__all__ = ["TIMESCALE", "audio_entry", "build_trak", "dops", "esds", "legacy_track", "visual_entry"]

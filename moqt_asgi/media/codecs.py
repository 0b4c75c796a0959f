"""Codec facts from MP4 sample entries: the WebCodecs codec string, the decoder description, sizes and rates.

The codec strings follow the WebCodecs codec registry (``avc1.PPCCLL``,
``hvc1.…``, ``vp09.PP.LL.DD``, ``av01.P.LLT.DD``, ``mp4a.40.N``, ``opus``).
The description is what a hang catalog's ``description`` carries: the
``avcC``/``hvcC``/``av1C`` payload, the AAC AudioSpecificConfig, or for Opus
the 19-byte ``OpusHead`` rebuilt from ``dOps``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VISUAL_FIELDS = 78
"""Bytes of fixed fields in a VisualSampleEntry before its child boxes."""
AUDIO_FIELDS = 28
"""Bytes of fixed fields in an AudioSampleEntry (version 0) before its child boxes."""


@dataclass(slots=True)
class SampleEntryInfo:
    """What a sample entry says: ``codec`` is ``""`` when the format is not one we can name."""

    format: str
    codec: str = ""
    description: bytes | None = None
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    bitrate: int | None = None


def _child_boxes(raw: bytes, start: int) -> dict[str, bytes]:
    """Payloads of the boxes from ``start`` (first of each type); a malformed tail is ignored."""
    found: dict[str, bytes] = {}
    offset = start
    while offset + 8 <= len(raw):
        size, kind = struct.unpack_from(">I4s", raw, offset)
        if size < 8 or offset + size > len(raw):
            break
        found.setdefault(kind.decode("latin-1"), raw[offset + 8:offset + size])
        offset += size
    return found


def describe_sample_entry(kind: str, raw: bytes) -> SampleEntryInfo:
    """The codec facts of one ``stsd`` entry (``raw``: the whole entry box)."""
    info = SampleEntryInfo(kind)
    boxes: dict[str, bytes] = {}
    if kind in ("avc1", "avc3", "hvc1", "hev1", "vp09", "av01", "vp08"):
        if len(raw) >= 8 + VISUAL_FIELDS:
            info.width, info.height = struct.unpack_from(">HH", raw, 8 + 24)
        boxes = _child_boxes(raw, 8 + VISUAL_FIELDS)
        _video(kind, boxes, info)
    elif kind in ("mp4a", "Opus", "fLaC"):
        if len(raw) >= 8 + AUDIO_FIELDS:
            info.channels = struct.unpack_from(">H", raw, 8 + 16)[0]
            info.sample_rate = struct.unpack_from(">I", raw, 8 + 24)[0] >> 16
        boxes = _child_boxes(raw, 8 + AUDIO_FIELDS)
        _audio(kind, boxes, info)
    btrt = boxes.get("btrt", b"")
    if info.bitrate is None and len(btrt) >= 12:
        info.bitrate = struct.unpack_from(">I", btrt, 8)[0] or None
    return info


def _video(kind: str, boxes: dict[str, bytes], info: SampleEntryInfo) -> None:
    if kind in ("avc1", "avc3") and "avcC" in boxes:
        avcc = boxes["avcC"]
        if len(avcc) >= 4:
            info.codec = f"{kind}.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"
            info.description = avcc
    elif kind in ("hvc1", "hev1") and "hvcC" in boxes:
        info.codec = hevc_codec(kind, boxes["hvcC"])
        info.description = boxes["hvcC"]
    elif kind == "vp09" and "vpcC" in boxes:
        vpcc = boxes["vpcC"]
        if len(vpcc) >= 7:
            info.codec = f"vp09.{vpcc[4]:02d}.{vpcc[5]:02d}.{vpcc[6] >> 4:02d}"
    elif kind == "vp08":
        info.codec = "vp8"
    elif kind == "av01" and "av1C" in boxes:
        info.codec = av1_codec(boxes["av1C"])
        info.description = boxes["av1C"]


def hevc_codec(kind: str, hvcc: bytes) -> str:
    """``hvc1.1.6.L93.B0``-style codec string from an ``hvcC`` payload ("" if too short)."""
    if len(hvcc) < 13:
        return ""
    space = "" if hvcc[1] >> 6 == 0 else "ABC"[(hvcc[1] >> 6) - 1]
    profile = hvcc[1] & 0x1F
    tier = "H" if hvcc[1] & 0x20 else "L"
    compat = int.from_bytes(hvcc[2:6], "big")
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = bytearray(hvcc[6:12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    parts = [f"{kind}", f"{space}{profile}", f"{reversed_compat:x}", f"{tier}{hvcc[12]}"]
    parts += [f"{byte:x}" for byte in constraints]
    return ".".join(parts)


def av1_codec(av1c: bytes) -> str:
    """``av01.P.LLT.DD`` from an ``av1C`` payload ("" if too short)."""
    if len(av1c) < 4:
        return ""
    profile = av1c[1] >> 5
    level = av1c[1] & 0x1F
    tier = "H" if av1c[2] & 0x80 else "M"
    high_bitdepth, twelve_bit = bool(av1c[2] & 0x40), bool(av1c[2] & 0x20)
    depth = (12 if twelve_bit else 10) if high_bitdepth else 8
    return f"av01.{profile}.{level:02d}{tier}.{depth:02d}"


def _audio(kind: str, boxes: dict[str, bytes], info: SampleEntryInfo) -> None:
    if kind == "mp4a" and "esds" in boxes:
        _esds(boxes["esds"][4:], info)
    elif kind == "Opus" and "dOps" in boxes:
        dops = boxes["dOps"]
        if len(dops) >= 11:
            info.codec = "opus"
            channels = dops[1]
            pre_skip, rate, gain = struct.unpack_from(">HIh", dops, 2)
            head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, rate, gain, dops[10]) + dops[11:]
            info.description = head
            info.channels = channels
            info.sample_rate = rate or 48000
    elif kind == "fLaC":
        info.codec = "flac"


def _descriptor(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, payload start, payload size) of the MPEG-4 descriptor at ``offset``."""
    tag = data[offset]
    offset += 1
    size = 0
    for _ in range(4):
        byte = data[offset]
        offset += 1
        size = (size << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, offset, size


AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def _asc_layout(asc: bytes, info: SampleEntryInfo) -> None:
    """Sample rate and channel count from an AudioSpecificConfig (they beat the sample entry's, which
    muxers often leave at 2 channels)."""
    bits = int.from_bytes(asc[:8].ljust(8, b"\0"), "big")
    position = 64 - 5
    if (bits >> position) & 0x1F == 31:
        position -= 6
    position -= 4
    index = (bits >> position) & 0x0F
    if index == 15:
        position -= 24
        info.sample_rate = (bits >> position) & 0xFFFFFF
    elif index < len(AAC_RATES):
        info.sample_rate = AAC_RATES[index]
    position -= 4
    if channels := (bits >> position) & 0x0F:
        info.channels = {7: 8}.get(channels, channels)


def _esds(esds: bytes, info: SampleEntryInfo) -> None:
    try:
        tag, position, _ = _descriptor(esds, 0)
        if tag != 0x03:
            return
        flags = esds[position + 2]
        position += 3
        if flags & 0x80:
            position += 2
        if flags & 0x40:
            position += 1 + esds[position]
        if flags & 0x20:
            position += 2
        tag, position, size = _descriptor(esds, position)
        if tag != 0x04:
            return
        object_type = esds[position]
        max_bitrate, avg_bitrate = struct.unpack_from(">II", esds, position + 5)
        info.bitrate = avg_bitrate or max_bitrate or None
        end = position + size
        position += 13
        asc = b""
        if position < end:
            tag, start, length = _descriptor(esds, position)
            if tag == 0x05:
                asc = esds[start:start + length]
        if object_type == 0x40 and asc:
            audio_object = asc[0] >> 3
            if audio_object == 31 and len(asc) > 1:
                audio_object = 32 + (((asc[0] & 0x07) << 3) | (asc[1] >> 5))
            info.codec = f"mp4a.40.{audio_object}"
            info.description = asc
            _asc_layout(asc, info)
        elif object_type in (0x69, 0x6B):
            info.codec = "mp3"
    except (IndexError, struct.error):
        return


__all__ = ["SampleEntryInfo", "av1_codec", "describe_sample_entry", "hevc_codec"]

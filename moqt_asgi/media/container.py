"""Media frame containers: ``legacy`` (a QUIC varint timestamp, then the codec payload) and ``cmaf`` helpers.

``legacy``: the presentation timestamp in microseconds as a QUIC variable-
length integer (RFC 9000 §16; shortest form written, any form read), then
the ``EncodedVideoChunk``/``EncodedAudioChunk`` bytes. An empty payload is an
end-of-content marker. ``cmaf``: one ``moof`` + ``mdat`` per frame (see
:mod:`moqt_asgi.media.mp4`); :func:`decode_cmaf` reads its samples back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mp4 import Mp4Error, iter_boxes, parse_moof

MAX_TIMESTAMP = 2**62 - 1


class ContainerError(ValueError):
    """A frame that does not decode in its container."""


def encode_varint(value: int) -> bytes:
    """QUIC variable-length integer, shortest form."""
    if value < 0 or value > MAX_TIMESTAMP:
        raise ValueError(f"{value} does not fit a QUIC varint")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def decode_varint(data: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """``(value, bytes used)`` of the QUIC varint at ``offset``."""
    if offset >= len(data):
        raise ContainerError("frame too short for its timestamp")
    length = 1 << (data[offset] >> 6)
    if offset + length > len(data):
        raise ContainerError("frame too short for its timestamp")
    value = int.from_bytes(bytes(data[offset:offset + length]), "big") & ((1 << (8 * length - 2)) - 1)
    return value, length


def encode_legacy(timestamp_us: int, payload: bytes | memoryview) -> bytes:
    """A ``legacy`` frame: ``varint(timestamp_us)`` + ``payload``."""
    return encode_varint(timestamp_us) + bytes(payload)


def decode_legacy(frame: bytes) -> tuple[int, bytes]:
    """``(timestamp_us, payload)`` of a ``legacy`` frame (an empty payload marks the end of content)."""
    timestamp, used = decode_varint(frame)
    return timestamp, frame[used:]


@dataclass(frozen=True, slots=True)
class DecodedSample:
    """One sample of a ``cmaf`` frame: its bytes, timestamp in µs, and whether it is a keyframe."""

    payload: bytes
    timestamp_us: int
    keyframe: bool
    duration_us: int


def decode_cmaf(frame: bytes, timescale: int) -> list[DecodedSample]:
    """The samples of a ``cmaf`` frame (``moof`` + ``mdat``), walking the mdat from its first byte as players do.

    Timestamps are whole microseconds, rounded down (as moq-rs computes them)."""
    try:
        boxes = list(iter_boxes(frame))
    except Mp4Error as exc:
        raise ContainerError(str(exc)) from None
    moof = next((box for box in boxes if box.type == "moof"), None)
    mdat = next((box for box in boxes if box.type == "mdat"), None)
    if moof is None or mdat is None:
        raise ContainerError("a cmaf frame needs a moof and an mdat")
    try:
        fragment = parse_moof(moof.raw, 0, {}, {})
    except Mp4Error as exc:
        raise ContainerError(str(exc)) from None
    data = mdat.payload
    out = []
    position = 0
    for sample in fragment.samples:
        if position + sample.size > len(data):
            raise ContainerError("mdat holds fewer bytes than the trun says")
        pts = sample.decode_time + sample.cts_offset
        out.append(DecodedSample(data[position:position + sample.size], pts * 1_000_000 // timescale,
                                 sample.keyframe, sample.duration * 1_000_000 // timescale))
        position += sample.size
    return out


__all__ = [
    "MAX_TIMESTAMP", "ContainerError", "DecodedSample", "decode_cmaf", "decode_legacy", "decode_varint",
    "encode_legacy", "encode_varint",
]

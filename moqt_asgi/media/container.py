"""Media frame containers: ``legacy`` and ``loc`` (a timestamp, then the codec payload), and ``cmaf`` helpers.

``legacy``: the presentation timestamp in microseconds as a QUIC variable-
length integer (RFC 9000 §16; shortest form written, any form read), then
the ``EncodedVideoChunk``/``EncodedAudioChunk`` bytes. An empty payload is an
end-of-content marker. ``loc`` (the Low Overhead Container of
draft-ietf-moq-loc): a varint-length block of properties (the timestamp
``0x10``, optionally a timescale ``0x08``), then the payload. ``cmaf``: one
``moof`` + ``mdat`` per frame (see :mod:`moqt_asgi.media.mp4`);
:func:`decode_cmaf` reads its samples back.
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


LOC_TIMESCALE = 0x08
LOC_TIMESTAMP = 0x10
LOC_TIMESTAMP_DRAFT03 = 0x06
"""Accepted when reading, never written."""


def encode_loc(timestamp_us: int, payload: bytes | memoryview) -> bytes:
    """A ``loc`` frame: properties (the timestamp in µs, property ``0x10``), then ``payload``."""
    properties = encode_varint(LOC_TIMESTAMP) + encode_varint(timestamp_us)
    return encode_varint(len(properties)) + properties + bytes(payload)


def decode_loc(frame: bytes) -> tuple[int, bytes]:
    """``(timestamp_us, payload)`` of a ``loc`` frame; unknown properties are skipped, a missing timestamp is an error."""
    length, used = decode_varint(frame)
    if used + length > len(frame):
        raise ContainerError("loc properties run past the frame")
    properties, payload = frame[used:used + length], frame[used + length:]
    timestamp: int | None = None
    timescale = 1_000_000
    kind, position = 0, 0
    while position < len(properties):
        delta, size = decode_varint(properties, position)
        kind = delta if position == 0 else kind + delta
        position += size
        value, size = decode_varint(properties, position)
        position += size
        if kind % 2:  # odd: a length, then that many bytes
            if position + value > len(properties):
                raise ContainerError("a loc property runs past the properties")
            position += value
        elif kind in (LOC_TIMESTAMP, LOC_TIMESTAMP_DRAFT03):
            timestamp = value
        elif kind == LOC_TIMESCALE:
            if value == 0:
                raise ContainerError("a loc timescale of 0")
            timescale = value
    if timestamp is None:
        raise ContainerError("a loc frame without a timestamp")
    return timestamp * 1_000_000 // timescale, payload


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
    "MAX_TIMESTAMP", "ContainerError", "DecodedSample", "decode_cmaf", "decode_legacy", "decode_loc", "decode_varint",
    "encode_legacy", "encode_loc", "encode_varint",
]

"""Wire primitives shared by the moq-lite-03..06 codecs, and codec features.

Everything here is pure. Decoders raise :class:`~.errors.DecodeError` for a
short or over-long body and :class:`~.errors.ProtocolError` for values the
protocol forbids; sizes and counts are checked before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .errors import ErrorCode, ProtocolError
from .wire import MAX_VARINT, Reader, encode_varint

MAX_HOPS = 32
"""Longest hop chain an announcement may carry (the reference's limit)."""

MAX_DATAGRAM_BODY = 1200
"""Largest datagram body the draft allows (lite-05+)."""

_ZIGZAG_RANGE = 1 << 61


class LiteBidi(IntEnum):
    """First varint of a bidirectional stream, lite-03 and later."""

    ANNOUNCE = 0x1
    SUBSCRIBE = 0x2
    FETCH = 0x3
    PROBE = 0x4
    GOAWAY = 0x5
    TRACK = 0x6


class LiteUni(IntEnum):
    """First varint of a unidirectional stream, lite-03 and later."""

    GROUP = 0x0
    SETUP = 0x1


class HopEncoding(IntEnum):
    """How an announcement carries its route."""

    NONE = 0
    """lite-01/02: no route at all."""
    COUNT = 1
    """lite-03: a hop count only."""
    IDS = 2
    """lite-04+: a list of hop ids."""


@dataclass(frozen=True, slots=True)
class Features:
    """What a codec's version has, so an engine asks instead of comparing version numbers."""

    version_in_alpn: bool = False
    """The ALPN alone picks the version (lite-03+); no SETUP negotiation."""
    session_stream: bool = True
    """lite-01/02: a bidi SETUP stream that stays open for SESSION_INFO."""
    setup_stream: bool = False
    """lite-05+: each side opens a uni SETUP stream (one message, then FIN)."""
    announce_init: bool = True
    announce_ok: bool = False
    announce_ids: bool = False
    """lite-06: typed ANNOUNCE_START/END/UPDATE with implicit ids."""
    hops: HopEncoding = HopEncoding.NONE
    exclude_hop: bool = False
    route_cost: bool = False
    subscribe_ok: bool = True
    """A SUBSCRIBE_OK is sent once the subscription is accepted (lite-01..04)."""
    typed_subscribe_responses: bool = False
    """Responses on the subscribe stream are ``type, length, body`` (lite-03+)."""
    subscribe_start_end: bool = False
    """SUBSCRIBE_START / SUBSCRIBE_END instead of SUBSCRIBE_OK (lite-05+)."""
    subscribe_update: bool = False
    subscribe_ranges: bool = False
    frame_ranges: bool = False
    fetch: bool = False
    probe: bool = False
    probe_rtt: bool = False
    goaway: bool = False
    track_stream: bool = False
    frame_timestamps: bool = False
    datagrams: bool = False
    unknown_stream_fatal: bool = True
    """lite-01/02 and gomoqt treat an unknown stream type as fatal; lite-03+ reset that stream."""
    one_byte_stream_type: bool = False
    """gomoqt writes the stream type as one raw byte."""


LITE_02_FEATURES = Features()
"""lite-01 and lite-02 share these (they differ only in SUBSCRIBE_OK's priority byte)."""


def frame_message(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


def typed_message(msg_type: int, body: bytes) -> bytes:
    """``type, length, body``: the framing of subscribe responses (03+) and lite-06 announcements."""
    return encode_varint(msg_type) + encode_varint(len(body)) + body


def encode_flag(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def decode_flag(reader: Reader, what: str) -> bool:
    value = reader.u8()
    if value > 1:
        raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"{what} is {value}, not 0 or 1")
    return value == 1


def encode_u8(value: int, what: str = "priority") -> bytes:
    if not 0 <= value <= 255:
        raise ValueError(f"{what} must be 0..255, got {value}")
    return bytes((value,))


def encode_optional(value: int | None) -> bytes:
    """``None`` as 0, ``n`` as ``n + 1`` (group and frame bounds)."""
    if value is None:
        return b"\x00"
    if value < 0 or value >= MAX_VARINT:
        raise ValueError(f"sequence out of range: {value}")
    return encode_varint(value + 1)


def decode_optional(reader: Reader) -> int | None:
    value = reader.varint()
    return None if value == 0 else value - 1


def encode_hops(hops: tuple[int, ...]) -> bytes:
    if len(hops) > MAX_HOPS:
        raise ValueError(f"{len(hops)} hops exceed the limit of {MAX_HOPS}")
    return encode_varint(len(hops)) + b"".join(encode_varint(hop) for hop in hops)


def decode_hop_count(reader: Reader) -> int:
    count = reader.varint()
    if count > MAX_HOPS:
        raise ProtocolError(ErrorCode.BOUNDS_EXCEEDED, f"{count} hops exceed the limit of {MAX_HOPS}")
    return count


def decode_hops(reader: Reader) -> tuple[int, ...]:
    count = decode_hop_count(reader)
    return tuple(reader.varint() for _ in range(count))


def zigzag_encode(value: int) -> int:
    """Map a signed delta to an unsigned varint value (0, -1, 1, -2 -> 0, 1, 2, 3)."""
    if not -_ZIGZAG_RANGE <= value < _ZIGZAG_RANGE:
        raise ValueError(f"timestamp delta {value} out of range")
    return value << 1 if value >= 0 else ((-value) << 1) - 1


def zigzag_decode(value: int) -> int:
    return -((value + 1) >> 1) if value & 1 else value >> 1


class FrameClock:
    """Per-stream timestamp state for lite-05+ frames (group or fetch stream).

    Each frame carries its timestamp as a zigzag delta from the previous frame's;
    the first frame's delta is from 0.
    """

    __slots__ = ("previous",)

    def __init__(self) -> None:
        self.previous = 0

    def encode(self, timestamp: int) -> bytes:
        if not 0 <= timestamp <= MAX_VARINT:
            raise ValueError(f"timestamp out of range: {timestamp}")
        delta = zigzag_encode(timestamp - self.previous)
        self.previous = timestamp
        return encode_varint(delta)

    def decode(self, delta: int) -> int:
        """The absolute timestamp for a frame whose wire delta is ``delta``."""
        timestamp = self.previous + zigzag_decode(delta)
        if not 0 <= timestamp <= MAX_VARINT:
            raise ProtocolError(ErrorCode.BOUNDS_EXCEEDED, f"frame timestamp {timestamp} out of range")
        self.previous = timestamp
        return timestamp


def expect_type(msg_type: int, known: type[IntEnum], what: str) -> int:
    try:
        return int(known(msg_type))
    except ValueError:
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"unknown {what} message type {msg_type:#x}") from None


def unsupported(name: str, what: str) -> ProtocolError:
    """What a codec raises when asked for a message its version does not have."""
    return ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{name} has no {what}")


__all__ = [
    "LITE_02_FEATURES",
    "MAX_DATAGRAM_BODY",
    "MAX_HOPS",
    "Features",
    "FrameClock",
    "HopEncoding",
    "LiteBidi",
    "LiteUni",
    "decode_flag",
    "decode_hop_count",
    "decode_hops",
    "decode_optional",
    "encode_flag",
    "encode_hops",
    "encode_optional",
    "encode_u8",
    "expect_type",
    "frame_message",
    "typed_message",
    "unsupported",
    "zigzag_decode",
    "zigzag_encode",
]

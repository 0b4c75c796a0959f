"""Wire primitives shared by the codecs: stream types, features, framing, per-stream state.

Everything here is pure. Decoders raise :class:`~.errors.DecodeError` for a
short or over-long body and :class:`~.errors.ProtocolError` for values the
protocol forbids; sizes and counts are checked before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .errors import ErrorCode, ProtocolError
from .messages import AnnounceEnd, Announcement, AnnounceStart
from .wire import MAX_VARINT, Reader, encode_varint

MAX_HOPS = 32
"""Longest hop chain an announcement may carry (the reference's limit)."""

MAX_DATAGRAM_BODY = 1200
"""Largest datagram body the draft allows (lite-05+)."""

_ZIGZAG_RANGE = 1 << 61


class BidiStreamType(IntEnum):
    """The first varint of a bidirectional stream (one raw byte in gomoqt's dialect).

    One space for every version; a codec's ``bidi_stream_types`` says which of
    these its peer may open.
    """

    SESSION = 0x0
    """lite-01/02 and gomoqt: the SETUP exchange, then SESSION_INFO (the first stream only)."""
    ANNOUNCE = 0x1
    SUBSCRIBE = 0x2
    FETCH = 0x3
    """lite-03+."""
    PROBE = 0x4
    """lite-03+."""
    GOAWAY = 0x5
    """lite-04+."""
    TRACK = 0x6
    """lite-05+."""


class UniStreamType(IntEnum):
    """The first varint of a unidirectional stream."""

    GROUP = 0x0
    SETUP = 0x1
    """lite-05+: each side's one SETUP message."""


LiteBidi = BidiStreamType
"""The name :class:`BidiStreamType` had when it covered lite-03+ only."""
LiteUni = UniStreamType
"""The name :class:`UniStreamType` had when it covered lite-03+ only."""


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
    """What a codec's version has, so an engine asks instead of comparing version numbers.

    Each codec class holds one (``Codec.features``), derived from its parent's
    with :func:`dataclasses.replace`. This is the one copy of each fact below;
    other facts about a version live on its codec class: the version number,
    name and ALPN (``version``, ``name``, ``alpn``; "the ALPN alone fixes the
    version" is ``alpn is not None``), the stream-type encoding
    (``encode_stream_type``: one raw byte in gomoqt's dialect), and which
    bidi streams a peer may open (``bidi_stream_types``, derived from the
    flags here). :class:`~.versions.Version` only reads them.
    """

    session_stream: bool = True
    """lite-01/02, gomoqt: the version is negotiated in a SETUP exchange on the first bidi stream,
    which then stays open for SESSION_INFO."""
    setup_stream: bool = False
    """lite-05+: each side opens a uni SETUP stream (one message, then FIN)."""
    announce_init: bool = True
    """lite-01/02, gomoqt: the publisher answers an announce request with ANNOUNCE_INIT (the active suffixes)."""
    announce_ok: bool = False
    """lite-05+: the publisher answers an announce request with ANNOUNCE_OK (hop id, active count)."""
    announce_ids: bool = False
    """lite-06: typed ANNOUNCE_START/END/UPDATE with implicit ids (and a route cost) instead of ANNOUNCE."""
    hops: HopEncoding = HopEncoding.NONE
    """How an announcement carries its route."""
    exclude_hop: bool = False
    """lite-04/05: the announce request carries the subscriber's own hop id."""
    typed_subscribe_responses: bool = False
    """Responses on the subscribe stream are ``type, length, body`` (lite-03+)."""
    subscribe_start_end: bool = False
    """SUBSCRIBE_START / SUBSCRIBE_END instead of SUBSCRIBE_OK (lite-05+); without it a SUBSCRIBE_OK
    is sent once the subscription is accepted."""
    subscribe_update: bool = False
    """A subscriber may send SUBSCRIBE_UPDATE on its subscribe stream (lite-03+, gomoqt)."""
    subscribe_ranges: bool = False
    """SUBSCRIBE carries a latency bound and a group range (lite-03+)."""
    frame_ranges: bool = False
    """lite-06: SUBSCRIBE, FETCH and GROUP carry frame bounds as well."""
    fetch: bool = False
    """The FETCH bidi stream: one group, answered with its frames (lite-03+)."""
    probe: bool = False
    """The PROBE bidi stream: a bitrate estimate (lite-03+)."""
    probe_rtt: bool = False
    """lite-04+: PROBE also carries a round-trip time."""
    goaway: bool = False
    """The GOAWAY bidi stream (lite-04+)."""
    track_stream: bool = False
    """The TRACK bidi stream: TRACK answered by TRACK_INFO (lite-05+)."""
    frame_timestamps: bool = False
    """lite-05+: every frame on a group or fetch stream starts with a timestamp delta (:class:`FrameClock`)."""
    datagrams: bool = False
    """lite-05+: groups of one frame may travel as QUIC datagrams."""
    unknown_stream_fatal: bool = True
    """lite-01/02 and gomoqt treat an unknown stream type as fatal; lite-03+ reset that stream."""


LITE_02_FEATURES = Features()
"""lite-01 and lite-02 share these (they differ only in SUBSCRIBE_OK's priority byte)."""


def bidi_stream_types(features: Features) -> frozenset[BidiStreamType]:
    """The bidi streams a peer may open once a session on a version with ``features`` runs.

    The session stream is not among them: it is the first stream, or none.
    """
    optional = (
        (features.fetch, BidiStreamType.FETCH),
        (features.probe, BidiStreamType.PROBE),
        (features.goaway, BidiStreamType.GOAWAY),
        (features.track_stream, BidiStreamType.TRACK),
    )
    return frozenset({BidiStreamType.ANNOUNCE, BidiStreamType.SUBSCRIBE, *(kind for has, kind in optional if has)})


def uni_stream_types(features: Features) -> frozenset[UniStreamType]:
    """The uni streams a peer may open on a version with ``features``."""
    return frozenset({UniStreamType.GROUP, *((UniStreamType.SETUP,) if features.setup_stream else ())})


def frame_message(body: bytes) -> bytes:
    """Size-prefix a message body, as every lite control message is."""
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


class AnnounceIds:
    """The implicit announce ids of one lite-06 announce stream.

    Both sides keep one: the publisher to turn a suffix into the id its
    ANNOUNCE_END / ANNOUNCE_UPDATE reference, the subscriber to turn those ids
    back into suffixes. Misuse by the peer is a protocol violation. A codec
    makes one with ``new_announce_ids``.
    """

    __slots__ = ("_by_id", "_by_suffix", "_limit", "_next")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._next = 0
        self._by_id: dict[int, str] = {}
        self._by_suffix: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def start(self, suffix: str) -> int:
        """Assign the next id to ``suffix`` (an ANNOUNCE_START was sent or received)."""
        if suffix in self._by_suffix:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"ANNOUNCE_START for {suffix!r}, which is already announced")
        if len(self._by_id) >= self._limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"more than {self._limit} active announcements")
        announce_id = self._next
        self._next += 1
        self._by_id[announce_id] = suffix
        self._by_suffix[suffix] = announce_id
        return announce_id

    def suffix(self, announce_id: int) -> str:
        try:
            return self._by_id[announce_id]
        except KeyError:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"announce id {announce_id} is not active") from None

    def id_of(self, suffix: str) -> int | None:
        return self._by_suffix.get(suffix)

    def end(self, announce_id: int) -> str:
        """Retire ``announce_id`` and return its suffix."""
        suffix = self.suffix(announce_id)
        del self._by_id[announce_id]
        del self._by_suffix[suffix]
        return suffix

    def apply(self, msg: Announcement) -> tuple[str, bool]:
        """Receiver side: ``(suffix, active)`` for an announcement, updating the table."""
        if isinstance(msg, AnnounceStart):
            self.start(msg.suffix)
            return msg.suffix, True
        if isinstance(msg, AnnounceEnd):
            return self.end(msg.announce_id), False
        return self.suffix(msg.announce_id), True


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
    "AnnounceIds",
    "BidiStreamType",
    "Features",
    "FrameClock",
    "HopEncoding",
    "LiteBidi",
    "LiteUni",
    "UniStreamType",
    "bidi_stream_types",
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
    "uni_stream_types",
    "unsupported",
    "zigzag_decode",
    "zigzag_encode",
]

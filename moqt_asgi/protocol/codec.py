"""The codec interface every version answers, and moq-lite-02, the version it starts from.

A :class:`Codec` turns message values into framed bytes and framed bodies
back into values. Every message of every version is declared here, with its
types, so that a type checker follows version-specific calls; a version that
lacks a message answers with a :class:`~.errors.ProtocolError` ("moq-lite-02
has no FETCH", ``UNEXPECTED_MESSAGE``) from the default below. Later versions
subclass :class:`Codec` (``lite.py``, ``lite03.py`` .. ``lite06.py``,
``gomoqt.py``), replace its :class:`~.lite_wire.Features` and override what
changed; the engine never branches on version numbers itself, it asks the
codec and its features.

Everything a version *is* lives on its codec class: ``version`` (the number),
``name``, ``alpn`` (the ALPN that fixes exactly this version, if any),
``features`` and ``error_codes``. :class:`~.versions.Version` is derived from
the class. ``bidi_stream_types`` and ``uni_stream_types`` are derived from
``features`` when a subclass is created.

Encoders return the whole message as it goes on its stream (a size-prefixed
body; ``type, size, body`` for typed messages). Decoders take the body, after
the size (and type) were read.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .codes import SCOPED_CODES, ErrorCodes
from .errors import ErrorCode, ProtocolError
from .limits import Limits
from .lite_wire import (
    LITE_02_FEATURES,
    AnnounceIds,
    BidiStreamType,
    Features,
    FrameClock,
    UniStreamType,
    bidi_stream_types,
    frame_message,
    uni_stream_types,
    unsupported,
)
from .messages import (
    Announce,
    AnnounceInit,
    Announcement,
    AnnounceOk,
    AnnouncePlease,
    Datagram,
    Fetch,
    Goaway,
    GroupHeader,
    LiteSetup,
    Probe,
    SessionInfo,
    Subscribe,
    SubscribeDrop,
    SubscribeOk,
    SubscribeResponse,
    SubscribeUpdate,
    TrackInfo,
    TrackRequest,
)
from .wire import Reader, encode_string, encode_varint

LITE_02 = 0xFF0DAD02


class Codec:
    """moq-lite-02, and the interface (with its defaults) of every other codec."""

    version: ClassVar[int] = LITE_02
    """The version number, as offered in a SETUP exchange."""
    name: ClassVar[str] = "moq-lite-02"
    alpn: ClassVar[str | None] = None
    """The ALPN (or WebTransport protocol) that fixes exactly this version, with no SETUP negotiation."""
    features: ClassVar[Features] = LITE_02_FEATURES
    error_codes: ClassVar[ErrorCodes] = SCOPED_CODES
    """How this dialect numbers reset, stop-sending and close codes on the wire.

    moq-rs 0.5.1 numbers every lite version from its scoped registries, lite-01/02 included.
    """
    bidi_stream_types: ClassVar[frozenset[BidiStreamType]] = bidi_stream_types(LITE_02_FEATURES)
    """The bidi streams a peer may open once the session runs (derived from ``features``)."""
    uni_stream_types: ClassVar[frozenset[UniStreamType]] = uni_stream_types(LITE_02_FEATURES)
    """The uni streams a peer may open (derived from ``features``)."""
    subscribe_ok_has_priority: ClassVar[bool] = False
    """lite-01: SUBSCRIBE_OK carries the publisher's priority byte."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.bidi_stream_types = bidi_stream_types(cls.features)
        cls.uni_stream_types = uni_stream_types(cls.features)

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    @property
    def accepts_subscribe_update(self) -> bool:
        """``features.subscribe_update``, under the name the engine first used."""
        return self.features.subscribe_update

    # -- stream types
    def encode_stream_type(self, kind: int) -> bytes:
        """The first bytes of a stream of type ``kind`` (a varint; gomoqt writes one raw byte)."""
        return encode_varint(kind)

    def bidi_stream_type(self, value: int) -> BidiStreamType | None:
        """The kind of a peer-opened bidi stream, or ``None`` for a type this version lacks."""
        try:
            kind = BidiStreamType(value)
        except ValueError:
            return None
        return kind if kind in self.bidi_stream_types else None

    def uni_stream_type(self, value: int) -> UniStreamType | None:
        """The kind of a peer-opened uni stream, or ``None`` for a type this version lacks."""
        try:
            kind = UniStreamType(value)
        except ValueError:
            return None
        return kind if kind in self.uni_stream_types else None

    # -- priority: one raw byte in kixelated lite; gomoqt uses a varint
    def _encode_priority(self, priority: int) -> bytes:
        if not 0 <= priority <= 255:
            raise ValueError(f"priority must be 0..255, got {priority}")
        return bytes((priority,))

    def _decode_priority(self, reader: Reader) -> int:
        return reader.u8()

    # -- paths: kixelated sends relative paths; dialects may differ
    def path_to_wire(self, path: str) -> str:
        """A broadcast path as this version writes it."""
        return path

    def path_from_wire(self, path: str) -> str:
        """A broadcast path read from the wire, in our relative form."""
        return path

    def prefix_to_wire(self, prefix: str) -> str:
        """An announce prefix as this version writes it (the same form as a path in kixelated lite)."""
        return self.path_to_wire(prefix)

    def prefix_from_wire(self, prefix: str) -> str:
        """An announce prefix read from the wire, in our relative form."""
        return self.path_from_wire(prefix)

    # -- session stream (lite-01/02, gomoqt) and uni SETUP streams (lite-05+)
    def encode_session_info(self, msg: SessionInfo) -> bytes:
        return frame_message(encode_varint(msg.bitrate))

    def decode_session_info(self, body: bytes) -> SessionInfo:
        reader = Reader(body)
        bitrate = reader.varint()
        return SessionInfo(bitrate)  # later fields are ignored, as the reference does

    def encode_setup_stream(self, msg: LiteSetup) -> bytes:
        """The whole uni SETUP stream: its type and one SETUP (the caller then FINs)."""
        raise unsupported(self.name, "uni SETUP stream")

    def decode_setup(self, body: bytes) -> LiteSetup:
        """A SETUP body read from a uni SETUP stream (after the stream type and the size)."""
        raise unsupported(self.name, "uni SETUP stream")

    # -- announce stream
    def encode_announce_please(self, msg: AnnouncePlease) -> bytes:
        return frame_message(encode_string(self.prefix_to_wire(msg.prefix)))

    def decode_announce_please(self, body: bytes) -> AnnouncePlease:
        reader = Reader(body)
        prefix = reader.string(self.limits.max_path_length)
        reader.expect_end("ANNOUNCE_PLEASE")
        return AnnouncePlease(self.prefix_from_wire(prefix))

    def encode_announce_init(self, msg: AnnounceInit) -> bytes:
        body = bytearray(encode_varint(len(msg.suffixes)))
        for suffix in msg.suffixes:
            body += encode_string(suffix)
        return frame_message(bytes(body))

    def decode_announce_init(self, body: bytes) -> AnnounceInit:
        reader = Reader(body)
        count = reader.count(self.limits.max_announcements, "ANNOUNCE_INIT")
        suffixes = tuple(reader.string(self.limits.max_path_length) for _ in range(count))
        reader.expect_end("ANNOUNCE_INIT")
        return AnnounceInit(suffixes)

    def encode_announce_ok(self, msg: AnnounceOk) -> bytes:
        raise unsupported(self.name, "ANNOUNCE_OK")

    def decode_announce_ok(self, body: bytes) -> AnnounceOk:
        raise unsupported(self.name, "ANNOUNCE_OK")

    def encode_announce(self, msg: Announce) -> bytes:
        return frame_message(bytes((1 if msg.active else 0,)) + encode_string(msg.suffix))

    def decode_announce(self, body: bytes) -> Announce:
        reader = Reader(body)
        status = reader.u8()
        if status not in (0, 1):
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"announce status {status} is neither 0 nor 1")
        suffix = reader.string(self.limits.max_path_length)
        reader.expect_end("ANNOUNCE")
        return Announce(status == 1, suffix)

    def encode_announcement(self, msg: Announcement) -> bytes:
        """A typed ANNOUNCE_START / END / UPDATE (lite-06)."""
        raise unsupported(self.name, "typed announcements")

    def decode_announcement(self, msg_type: int, body: bytes) -> Announcement:
        """A typed announcement whose ``type`` and size-delimited ``body`` were read (lite-06)."""
        raise unsupported(self.name, "typed announcements")

    def new_announce_ids(self, limit: int) -> AnnounceIds | None:
        """The implicit-id table of one announce stream (lite-06), holding at most ``limit``; ``None`` elsewhere."""
        return None

    # -- subscribe stream
    def encode_subscribe(self, msg: Subscribe) -> bytes:
        body = (
            encode_varint(msg.subscribe_id)
            + encode_string(self.path_to_wire(msg.broadcast))
            + encode_string(msg.track)
            + self._encode_priority(msg.priority)
        )
        return frame_message(body)

    def decode_subscribe(self, body: bytes) -> Subscribe:
        reader = Reader(body)
        subscribe_id = reader.varint()
        broadcast = reader.string(self.limits.max_path_length)
        track = reader.string(self.limits.max_path_length)
        priority = self._decode_priority(reader)
        reader.expect_end("SUBSCRIBE")
        return Subscribe(subscribe_id, self.path_from_wire(broadcast), track, priority)

    def encode_subscribe_ok(self, msg: SubscribeOk) -> bytes:
        if self.subscribe_ok_has_priority:
            return frame_message(bytes((msg.priority or 0,)))
        return frame_message(b"")

    def decode_subscribe_ok(self, body: bytes) -> SubscribeOk:
        reader = Reader(body)
        priority = reader.u8() if self.subscribe_ok_has_priority else None
        reader.expect_end("SUBSCRIBE_OK")
        return SubscribeOk(priority)

    def encode_subscribe_drop(self, msg: SubscribeDrop) -> bytes:
        raise unsupported(self.name, "SUBSCRIBE_DROP")

    def decode_subscribe_drop(self, body: bytes) -> SubscribeDrop:
        raise unsupported(self.name, "SUBSCRIBE_DROP")

    def encode_subscribe_response(self, msg: SubscribeResponse) -> bytes:
        """Any typed response a publisher sends on a subscribe stream (lite-03+)."""
        raise unsupported(self.name, "typed subscribe responses")

    def decode_subscribe_response(self, msg_type: int, body: bytes) -> SubscribeResponse:
        """A typed response whose ``type`` and size-delimited ``body`` were read (lite-03+)."""
        raise unsupported(self.name, "typed subscribe responses")

    def encode_subscribe_update(self, msg: SubscribeUpdate) -> bytes:
        if not self.features.subscribe_update:
            raise ProtocolError(ErrorCode.UNSUPPORTED, f"{self.name} has no SUBSCRIBE_UPDATE")
        return frame_message(self._encode_priority(msg.priority))

    def decode_subscribe_update(self, body: bytes) -> SubscribeUpdate:
        if not self.features.subscribe_update:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{self.name} has no SUBSCRIBE_UPDATE")
        reader = Reader(body)
        priority = self._decode_priority(reader)
        reader.expect_end("SUBSCRIBE_UPDATE")
        return SubscribeUpdate(priority)

    # -- group streams
    def encode_group_header(self, msg: GroupHeader) -> bytes:
        """The stream type and the GROUP header of a group stream."""
        return encode_varint(UniStreamType.GROUP) + frame_message(
            encode_varint(msg.subscribe_id) + encode_varint(msg.sequence)
        )

    def decode_group_header(self, body: bytes) -> GroupHeader:
        reader = Reader(body)
        subscribe_id = reader.varint()
        sequence = reader.varint()
        reader.expect_end("GROUP")
        return GroupHeader(subscribe_id, sequence)

    def encode_frame(self, payload: bytes) -> bytes:
        """One FRAME of a version without timestamps: the size, the payload."""
        return encode_varint(len(payload)) + payload

    def encode_frame_header(self, size: int) -> bytes:
        """What precedes a frame payload of ``size`` bytes (so the payload itself need not be copied)."""
        return encode_varint(size)

    def new_frame_clock(self) -> FrameClock | None:
        """Timestamp state for one group or fetch stream (lite-05+); ``None`` where frames carry no timestamp."""
        return None

    def encode_timed_frame(self, payload: bytes, clock: FrameClock, timestamp: int) -> bytes:
        """One FRAME with its timestamp (lite-05+): the timestamp delta, the size, the payload."""
        raise unsupported(self.name, "frame timestamps")

    def encode_timed_frame_header(self, size: int, clock: FrameClock, timestamp: int) -> bytes:
        """What precedes a timed frame payload of ``size`` bytes (lite-05+): the timestamp delta and the size."""
        raise unsupported(self.name, "frame timestamps")

    def check_frame_size(self, size: int) -> None:
        """Refuse a frame larger than ``limits.max_frame_size`` (``TOO_LARGE``) before reading it."""
        if size > self.limits.max_frame_size:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {size} bytes exceeds the limit of {self.limits.max_frame_size}")

    # -- fetch stream (lite-03+)
    def encode_fetch(self, msg: Fetch) -> bytes:
        raise unsupported(self.name, "FETCH")

    def decode_fetch(self, body: bytes) -> Fetch:
        raise unsupported(self.name, "FETCH")

    # -- probe stream (lite-03+)
    def encode_probe(self, msg: Probe) -> bytes:
        raise unsupported(self.name, "PROBE")

    def decode_probe(self, body: bytes) -> Probe:
        raise unsupported(self.name, "PROBE")

    # -- goaway stream (lite-04+)
    def encode_goaway(self, msg: Goaway) -> bytes:
        raise unsupported(self.name, "GOAWAY")

    def decode_goaway(self, body: bytes) -> Goaway:
        raise unsupported(self.name, "GOAWAY")

    # -- track stream (lite-05+)
    def encode_track_request(self, msg: TrackRequest) -> bytes:
        raise unsupported(self.name, "TRACK")

    def decode_track_request(self, body: bytes) -> TrackRequest:
        raise unsupported(self.name, "TRACK")

    def encode_track_info(self, msg: TrackInfo) -> bytes:
        raise unsupported(self.name, "TRACK_INFO")

    def decode_track_info(self, body: bytes) -> TrackInfo:
        raise unsupported(self.name, "TRACK_INFO")

    # -- datagrams (lite-05+)
    def encode_datagram(self, msg: Datagram) -> bytes:
        """The whole datagram body (no size prefix)."""
        raise unsupported(self.name, "datagrams")

    def decode_datagram(self, data: bytes) -> Datagram:
        raise unsupported(self.name, "datagrams")


__all__ = ["LITE_02", "Codec"]

"""moq-lite-01 and moq-lite-02 message codecs.

A :class:`Codec` turns message values into framed bytes and framed bodies
back into values. Later versions subclass it and override what changed; the
engine never branches on version numbers itself, it asks the codec.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

from .codes import FLAT_CODES, ErrorCodes
from .errors import ErrorCode, ProtocolError
from .limits import Limits
from .messages import (
    Announce,
    AnnounceInit,
    AnnouncePlease,
    GroupHeader,
    SessionInfo,
    Subscribe,
    SubscribeOk,
    SubscribeUpdate,
)
from .wire import Reader, encode_string, encode_varint

LITE_01 = 0xFF0DAD01
LITE_02 = 0xFF0DAD02


class BidiStreamType(IntEnum):
    SESSION = 0x00
    ANNOUNCE = 0x01
    SUBSCRIBE = 0x02


class UniStreamType(IntEnum):
    GROUP = 0x00


def frame_message(body: bytes) -> bytes:
    """Size-prefix a message body, as every lite control message is."""
    return encode_varint(len(body)) + body


class Codec:
    """moq-lite-02: the base every other lite codec refines."""

    version: int = LITE_02
    name: str = "moq-lite-02"
    subscribe_ok_has_priority: bool = False
    accepts_subscribe_update: bool = False
    error_codes: ClassVar[ErrorCodes] = FLAT_CODES
    """How this dialect numbers reset, stop-sending and close codes on the wire."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    # -- priority: one raw byte in kixelated lite; gomoqt uses a varint
    def _encode_priority(self, priority: int) -> bytes:
        if not 0 <= priority <= 255:
            raise ValueError(f"priority must be 0..255, got {priority}")
        return bytes((priority,))

    def _decode_priority(self, reader: Reader) -> int:
        return reader.u8()

    # -- paths: kixelated sends relative paths; dialects may differ
    def path_to_wire(self, path: str) -> str:
        return path

    def path_from_wire(self, path: str) -> str:
        return path

    # -- session stream
    def encode_session_info(self, msg: SessionInfo) -> bytes:
        return frame_message(encode_varint(msg.bitrate))

    def decode_session_info(self, body: bytes) -> SessionInfo:
        reader = Reader(body)
        bitrate = reader.varint()
        return SessionInfo(bitrate)  # later fields are ignored, as the reference does

    # -- announce stream
    def encode_announce_please(self, msg: AnnouncePlease) -> bytes:
        return frame_message(encode_string(self.path_to_wire(msg.prefix)))

    def decode_announce_please(self, body: bytes) -> AnnouncePlease:
        reader = Reader(body)
        prefix = reader.string(self.limits.max_path_length)
        reader.expect_end("ANNOUNCE_PLEASE")
        return AnnouncePlease(self.path_from_wire(prefix))

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

    def encode_subscribe_update(self, msg: SubscribeUpdate) -> bytes:
        if not self.accepts_subscribe_update:
            raise ProtocolError(ErrorCode.UNSUPPORTED, f"{self.name} has no SUBSCRIBE_UPDATE")
        return frame_message(self._encode_priority(msg.priority))

    def decode_subscribe_update(self, body: bytes) -> SubscribeUpdate:
        if not self.accepts_subscribe_update:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{self.name} has no SUBSCRIBE_UPDATE")
        reader = Reader(body)
        priority = self._decode_priority(reader)
        reader.expect_end("SUBSCRIBE_UPDATE")
        return SubscribeUpdate(priority)

    # -- group streams
    def encode_group_header(self, msg: GroupHeader) -> bytes:
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
        return encode_varint(len(payload)) + payload

    def encode_frame_header(self, size: int) -> bytes:
        """What precedes a frame payload of ``size`` bytes (so the payload itself need not be copied)."""
        return encode_varint(size)

    def check_frame_size(self, size: int) -> None:
        if size > self.limits.max_frame_size:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {size} bytes exceeds the limit of {self.limits.max_frame_size}")


class Lite01Codec(Codec):
    """moq-lite-01: SUBSCRIBE_OK carries the publisher's priority byte."""

    version = LITE_01
    name = "moq-lite-01"
    subscribe_ok_has_priority = True


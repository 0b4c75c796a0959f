"""moq-lite-06 (ALPN ``moq-lite-06``) as moq-rs 0.5.1 / moq-ffi 0.4.18 speaks it.

The installed reference is newer than both the published reference source and
the draft text, and its lite-06 differs from each (see
``docs/wire-differences.md``). Every layout here was captured from it or
checked by feeding it these bytes. Changes from lite-05:

* ANNOUNCE_REQUEST is just the prefix (Exclude Hop dropped).
* Announcements are typed (``type, length, body``) with implicit ids: each
  ANNOUNCE_START takes the next id (0, 1, ...) on its stream.
  ``0`` START: ``suffix, hops, cost, cold cost``; ``1`` END: ``id``;
  ``2`` UPDATE (RESTART in the reference): ``id, hops, cost, cold cost``.
* SETUP adds 0x4 Cost and 0x5 Origin (both varints).
* SUBSCRIBE / SUBSCRIBE_UPDATE drop ``ordered`` and gain frame bounds:
  ``... u8 priority, max latency, start group, end group, start frame, end frame``.
  The start group is written as is (0 = none, so group 0 cannot be asked for
  explicitly), the end group and end frame as ``n + 1`` (0 = none), the start
  frame as is. An end frame needs an end group.
* GROUP gains ``frame start``: the index of the first frame on the stream.
* FETCH gains ``start frame, end frame`` (same encodings).
* TRACK_INFO drops ``ordered``: ``u8 priority, max latency, timescale``.
"""

from __future__ import annotations

from dataclasses import replace
from enum import IntEnum
from typing import ClassVar

from .errors import ErrorCode, ProtocolError
from .lite05 import Lite05Codec
from .lite_wire import (
    AnnounceIds,
    Features,
    UniStreamType,
    decode_hops,
    decode_optional,
    encode_hops,
    encode_optional,
    encode_u8,
    expect_type,
    frame_message,
    typed_message,
)
from .messages import (
    AnnounceEnd,
    Announcement,
    AnnounceStart,
    AnnounceUpdate,
    Fetch,
    GroupHeader,
    Subscribe,
    SubscribeUpdate,
)
from .wire import Reader, encode_string, encode_varint

LITE_06 = 0xFF0DAD06
ALPN_LITE_06 = "moq-lite-06"


class AnnounceType(IntEnum):
    START = 0x0
    END = 0x1
    UPDATE = 0x2


def _frame_bounds(reader: Reader, end_group: int | None, what: str) -> tuple[int, int | None]:
    start_frame = reader.varint()
    end_frame = decode_optional(reader)
    if end_frame is not None and end_group is None:
        raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"{what} has an end frame but no end group")
    return start_frame, end_frame


def _encode_bounds(start_group: int | None, end_group: int | None, start_frame: int, end_frame: int | None) -> bytes:
    if end_frame is not None and end_group is None:
        raise ValueError("an end frame needs an end group")
    return encode_varint(start_group or 0) + encode_optional(end_group) + encode_varint(start_frame) + encode_optional(end_frame)


class Lite06Codec(Lite05Codec):
    version: ClassVar[int] = LITE_06
    name: ClassVar[str] = "moq-lite-06"
    alpn: ClassVar[str | None] = ALPN_LITE_06
    features: ClassVar[Features] = replace(Lite05Codec.features, announce_ids=True, exclude_hop=False, frame_ranges=True)
    accepts_restart_status: ClassVar[bool] = False
    track_info_has_ordered: ClassVar[bool] = False

    # -- typed announcements
    def encode_announcement(self, msg: Announcement) -> bytes:
        if isinstance(msg, AnnounceStart):
            body = encode_string(msg.suffix) + encode_hops(msg.hops) + encode_varint(msg.cost) + encode_varint(msg.cold_cost)
            return typed_message(AnnounceType.START, body)
        if isinstance(msg, AnnounceEnd):
            return typed_message(AnnounceType.END, encode_varint(msg.announce_id))
        body = encode_varint(msg.announce_id) + encode_hops(msg.hops) + encode_varint(msg.cost) + encode_varint(msg.cold_cost)
        return typed_message(AnnounceType.UPDATE, body)

    def decode_announcement(self, msg_type: int, body: bytes) -> Announcement:
        """Decode a typed announcement whose ``type`` and length-delimited ``body`` were read."""
        kind = AnnounceType(expect_type(msg_type, AnnounceType, "announce"))
        reader = Reader(body)
        result: Announcement
        if kind is AnnounceType.START:
            suffix = reader.string(self.limits.max_path_length)
            hops = decode_hops(reader)
            result = AnnounceStart(suffix, hops, reader.varint(), reader.varint())
        elif kind is AnnounceType.END:
            result = AnnounceEnd(reader.varint())
        else:
            announce_id = reader.varint()
            hops = decode_hops(reader)
            result = AnnounceUpdate(announce_id, hops, reader.varint(), reader.varint())
        reader.expect_end(f"ANNOUNCE_{kind.name}")
        return result

    def new_announce_ids(self, limit: int) -> AnnounceIds:
        return AnnounceIds(limit)

    # -- subscribe stream: no ordered byte, frame bounds
    def encode_subscribe(self, msg: Subscribe) -> bytes:
        body = (
            encode_varint(msg.subscribe_id)
            + encode_string(self.path_to_wire(msg.broadcast))
            + encode_string(msg.track)
            + encode_u8(msg.priority)
            + encode_varint(msg.max_latency_ms)
            + _encode_bounds(msg.start_group, msg.end_group, msg.start_frame, msg.end_frame)
        )
        return frame_message(body)

    def decode_subscribe(self, body: bytes) -> Subscribe:
        reader = Reader(body)
        subscribe_id = reader.varint()
        broadcast = reader.string(self.limits.max_path_length)
        track = reader.string(self.limits.max_path_length)
        priority = reader.u8()
        max_latency = reader.varint()
        start_group = reader.varint() or None
        end_group = decode_optional(reader)
        start_frame, end_frame = _frame_bounds(reader, end_group, "SUBSCRIBE")
        reader.expect_end("SUBSCRIBE")
        return Subscribe(
            subscribe_id, self.path_from_wire(broadcast), track, priority, False, max_latency,
            start_group, end_group, start_frame, end_frame,
        )

    def encode_subscribe_update(self, msg: SubscribeUpdate) -> bytes:
        body = (
            encode_u8(msg.priority)
            + encode_varint(msg.max_latency_ms)
            + _encode_bounds(msg.start_group, msg.end_group, msg.start_frame, msg.end_frame)
        )
        return frame_message(body)

    def decode_subscribe_update(self, body: bytes) -> SubscribeUpdate:
        reader = Reader(body)
        priority = reader.u8()
        max_latency = reader.varint()
        start_group = reader.varint() or None
        end_group = decode_optional(reader)
        start_frame, end_frame = _frame_bounds(reader, end_group, "SUBSCRIBE_UPDATE")
        reader.expect_end("SUBSCRIBE_UPDATE")
        return SubscribeUpdate(priority, False, max_latency, start_group, end_group, start_frame, end_frame)

    # -- group streams
    def encode_group_header(self, msg: GroupHeader) -> bytes:
        body = encode_varint(msg.subscribe_id) + encode_varint(msg.sequence) + encode_varint(msg.frame_start)
        return encode_varint(UniStreamType.GROUP) + frame_message(body)

    def decode_group_header(self, body: bytes) -> GroupHeader:
        reader = Reader(body)
        subscribe_id = reader.varint()
        sequence = reader.varint()
        frame_start = reader.varint()
        reader.expect_end("GROUP")
        return GroupHeader(subscribe_id, sequence, frame_start)

    # -- fetch: frame bounds after the group
    def _encode_fetch_frames(self, msg: Fetch) -> bytes:
        return encode_varint(msg.start_frame) + encode_optional(msg.end_frame)

    def _decode_fetch_frames(self, reader: Reader) -> tuple[int, int | None]:
        return reader.varint(), decode_optional(reader)


__all__ = ["ALPN_LITE_06", "LITE_06", "AnnounceIds", "AnnounceType", "Lite06Codec"]

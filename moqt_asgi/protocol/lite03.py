"""moq-lite-03: the version is the ALPN (``moq-lite-03``); there is no SETUP.

Changes from lite-02 (bytes verified against moq-rs 0.5.1 / moq-ffi 0.4.18):

* No session stream and no SESSION_INFO; ANNOUNCE_INIT is gone.
* ANNOUNCE gains a hop count after the suffix.
* SUBSCRIBE gains ``u8 ordered, max latency (ms), start group, end group``,
  group bounds written as 0 for none, else ``n + 1``.
* Subscribe-stream responses are typed (``type, length, body``):
  ``0`` SUBSCRIBE_OK (``u8 priority, u8 ordered, max latency, start, end``),
  ``1`` SUBSCRIBE_DROP (``start, end, error``). SUBSCRIBE_UPDATE has SUBSCRIBE_OK's fields.
* New bidi streams: FETCH (0x3; one group, answered with bare frames) and
  PROBE (0x4; ``bitrate``, 0 = unknown). An unknown stream type is reset, not fatal.

:class:`Lite03Codec` is written against :class:`~.lite_wire.Features`, so the
lite-04..06 codecs only change the features and the few layouts that moved.
"""

from __future__ import annotations

from dataclasses import replace
from enum import IntEnum
from typing import ClassVar

from .codec import Codec
from .errors import ErrorCode, ProtocolError
from .lite_wire import (
    MAX_HOPS,
    Features,
    HopEncoding,
    decode_flag,
    decode_hop_count,
    decode_hops,
    decode_optional,
    encode_flag,
    encode_hops,
    encode_optional,
    encode_u8,
    expect_type,
    frame_message,
    typed_message,
    unsupported,
)
from .messages import (
    Announce,
    AnnounceInit,
    AnnouncePlease,
    Fetch,
    Goaway,
    Probe,
    SessionInfo,
    Subscribe,
    SubscribeDrop,
    SubscribeOk,
    SubscribeResponse,
    SubscribeUpdate,
)
from .wire import Reader, encode_string, encode_varint

LITE_03 = 0xFF0DAD03
ALPN_LITE_03 = "moq-lite-03"

MAX_URI_LENGTH = 8192
"""Longest GOAWAY redirect accepted (lite-04+)."""


class SubscribeResponseType(IntEnum):
    """Subscribe-stream response types in lite-03 and lite-04."""

    OK = 0x0
    DROP = 0x1


class Lite03Codec(Codec):
    """moq-lite-03, and the base of the lite-04..06 codecs."""

    version: ClassVar[int] = LITE_03
    name: ClassVar[str] = "moq-lite-03"
    alpn: ClassVar[str | None] = ALPN_LITE_03
    features: ClassVar[Features] = replace(
        Codec.features,
        session_stream=False,
        announce_init=False,
        hops=HopEncoding.COUNT,
        typed_subscribe_responses=True,
        subscribe_update=True,
        subscribe_ranges=True,
        fetch=True,
        probe=True,
        unknown_stream_fatal=False,
    )
    response_types: ClassVar[type[IntEnum]] = SubscribeResponseType
    """The subscribe-stream response types (their names say which is which)."""
    accepts_restart_status: ClassVar[bool] = False
    """lite-05: ANNOUNCE status 2 (restart) is accepted and reads as active."""

    # -- gone since lite-03
    def encode_session_info(self, msg: SessionInfo) -> bytes:
        raise unsupported(self.name, "SESSION_INFO")

    def decode_session_info(self, body: bytes) -> SessionInfo:
        raise unsupported(self.name, "SESSION_INFO")

    def encode_announce_init(self, msg: AnnounceInit) -> bytes:
        raise unsupported(self.name, "ANNOUNCE_INIT")

    def decode_announce_init(self, body: bytes) -> AnnounceInit:
        raise unsupported(self.name, "ANNOUNCE_INIT")

    # -- announce stream
    def encode_announce_please(self, msg: AnnouncePlease) -> bytes:
        body = encode_string(self.prefix_to_wire(msg.prefix))
        if self.features.exclude_hop:
            body += encode_varint(msg.exclude_hop)
        return frame_message(body)

    def decode_announce_please(self, body: bytes) -> AnnouncePlease:
        reader = Reader(body)
        prefix = reader.string(self.limits.max_path_length)
        exclude_hop = reader.varint() if self.features.exclude_hop else 0
        reader.expect_end("ANNOUNCE_PLEASE")
        return AnnouncePlease(self.prefix_from_wire(prefix), exclude_hop)

    def _encode_route(self, hops: tuple[int, ...]) -> bytes:
        if self.features.hops is HopEncoding.COUNT:
            if len(hops) > MAX_HOPS:
                raise ValueError(f"{len(hops)} hops exceed the limit of {MAX_HOPS}")
            return encode_varint(len(hops))
        return encode_hops(hops)

    def _decode_route(self, reader: Reader) -> tuple[int, ...]:
        if self.features.hops is HopEncoding.COUNT:
            return (0,) * decode_hop_count(reader)
        return decode_hops(reader)

    def encode_announce(self, msg: Announce) -> bytes:
        if self.features.announce_ids:
            raise unsupported(self.name, "untyped ANNOUNCE")
        body = bytes((1 if msg.active else 0,)) + encode_string(msg.suffix) + self._encode_route(msg.hops)
        return frame_message(body)

    def decode_announce(self, body: bytes) -> Announce:
        if self.features.announce_ids:
            raise unsupported(self.name, "untyped ANNOUNCE")
        reader = Reader(body)
        status = reader.u8()
        if status > 1 and not (status == 2 and self.accepts_restart_status):
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"announce status {status} is not valid in {self.name}")
        suffix = reader.string(self.limits.max_path_length)
        hops = self._decode_route(reader)
        reader.expect_end("ANNOUNCE")
        return Announce(status != 0, suffix, hops)

    # -- subscribe stream
    def _encode_range(self, ordered: bool, max_latency_ms: int, start: int | None, end: int | None) -> bytes:
        return encode_flag(ordered) + encode_varint(max_latency_ms) + encode_optional(start) + encode_optional(end)

    def encode_subscribe(self, msg: Subscribe) -> bytes:
        body = (
            encode_varint(msg.subscribe_id)
            + encode_string(self.path_to_wire(msg.broadcast))
            + encode_string(msg.track)
            + encode_u8(msg.priority)
            + self._encode_range(msg.ordered, msg.max_latency_ms, msg.start_group, msg.end_group)
        )
        return frame_message(body)

    def decode_subscribe(self, body: bytes) -> Subscribe:
        reader = Reader(body)
        subscribe_id = reader.varint()
        broadcast = reader.string(self.limits.max_path_length)
        track = reader.string(self.limits.max_path_length)
        priority = reader.u8()
        ordered = decode_flag(reader, "ordered")
        max_latency = reader.varint()
        start = decode_optional(reader)
        end = decode_optional(reader)
        reader.expect_end("SUBSCRIBE")
        return Subscribe(subscribe_id, self.path_from_wire(broadcast), track, priority, ordered, max_latency, start, end)

    def _subscribe_ok_body(self, msg: SubscribeOk) -> bytes:
        return encode_u8(msg.priority or 0) + self._encode_range(msg.ordered, msg.max_latency_ms, msg.start_group, msg.end_group)

    def encode_subscribe_ok(self, msg: SubscribeOk) -> bytes:
        """The whole typed message (type 0, length, body)."""
        if self.features.subscribe_start_end:
            raise unsupported(self.name, "SUBSCRIBE_OK")
        return typed_message(SubscribeResponseType.OK, self._subscribe_ok_body(msg))

    def decode_subscribe_ok(self, body: bytes) -> SubscribeOk:
        """The body of a type-0 response (after its type and length)."""
        if self.features.subscribe_start_end:
            raise unsupported(self.name, "SUBSCRIBE_OK")
        reader = Reader(body)
        priority = reader.u8()
        ordered = decode_flag(reader, "ordered")
        max_latency = reader.varint()
        start = decode_optional(reader)
        end = decode_optional(reader)
        reader.expect_end("SUBSCRIBE_OK")
        return SubscribeOk(priority, ordered, max_latency, start, end)

    def encode_subscribe_drop(self, msg: SubscribeDrop) -> bytes:
        body = encode_varint(msg.start) + encode_varint(msg.end) + encode_varint(msg.error)
        return typed_message(self.response_types["DROP"], body)

    def decode_subscribe_drop(self, body: bytes) -> SubscribeDrop:
        reader = Reader(body)
        start = reader.varint()
        end = reader.varint()
        error = reader.varint()
        reader.expect_end("SUBSCRIBE_DROP")
        if end < start:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"SUBSCRIBE_DROP range {start}..{end} is reversed")
        return SubscribeDrop(start, end, error)

    def encode_subscribe_response(self, msg: SubscribeResponse) -> bytes:
        """Any response the publisher sends on a subscribe stream, framed for this version."""
        if isinstance(msg, SubscribeOk):
            return self.encode_subscribe_ok(msg)
        if isinstance(msg, SubscribeDrop):
            return self.encode_subscribe_drop(msg)
        raise unsupported(self.name, type(msg).__name__)

    def decode_subscribe_response(self, msg_type: int, body: bytes) -> SubscribeResponse:
        """Decode a typed response whose ``type`` and length-delimited ``body`` were read."""
        kind = self.response_types(expect_type(msg_type, self.response_types, "subscribe response"))
        if kind.name == "DROP":
            return self.decode_subscribe_drop(body)
        return self.decode_subscribe_ok(body)

    def encode_subscribe_update(self, msg: SubscribeUpdate) -> bytes:
        body = encode_u8(msg.priority) + self._encode_range(msg.ordered, msg.max_latency_ms, msg.start_group, msg.end_group)
        return frame_message(body)

    def decode_subscribe_update(self, body: bytes) -> SubscribeUpdate:
        reader = Reader(body)
        priority = reader.u8()
        ordered = decode_flag(reader, "ordered")
        max_latency = reader.varint()
        start = decode_optional(reader)
        end = decode_optional(reader)
        reader.expect_end("SUBSCRIBE_UPDATE")
        return SubscribeUpdate(priority, ordered, max_latency, start, end)

    # -- fetch stream: the request, then the group's frames and FIN
    def encode_fetch(self, msg: Fetch) -> bytes:
        body = (
            encode_string(self.path_to_wire(msg.broadcast))
            + encode_string(msg.track)
            + encode_u8(msg.priority)
            + encode_varint(msg.group)
        )
        return frame_message(body + self._encode_fetch_frames(msg))

    def _encode_fetch_frames(self, msg: Fetch) -> bytes:
        return b""

    def decode_fetch(self, body: bytes) -> Fetch:
        reader = Reader(body)
        broadcast = reader.string(self.limits.max_path_length)
        track = reader.string(self.limits.max_path_length)
        priority = reader.u8()
        group = reader.varint()
        start_frame, end_frame = self._decode_fetch_frames(reader)
        reader.expect_end("FETCH")
        return Fetch(self.path_from_wire(broadcast), track, priority, group, start_frame, end_frame)

    def _decode_fetch_frames(self, reader: Reader) -> tuple[int, int | None]:
        return 0, None

    # -- probe stream
    def encode_probe(self, msg: Probe) -> bytes:
        body = encode_varint(_probe_value(msg.bitrate))
        if self.features.probe_rtt:
            body += encode_varint(_probe_value(msg.rtt_ms))
        return frame_message(body)

    def decode_probe(self, body: bytes) -> Probe:
        reader = Reader(body)
        bitrate = reader.varint() or None
        rtt = (reader.varint() or None) if self.features.probe_rtt else None
        reader.expect_end("PROBE")
        return Probe(bitrate, rtt)

    # -- goaway stream (lite-04+)
    def encode_goaway(self, msg: Goaway) -> bytes:
        if not self.features.goaway:
            raise unsupported(self.name, "GOAWAY")
        return frame_message(encode_string(msg.uri))

    def decode_goaway(self, body: bytes) -> Goaway:
        if not self.features.goaway:
            raise unsupported(self.name, "GOAWAY")
        reader = Reader(body)
        uri = reader.string(MAX_URI_LENGTH)
        reader.expect_end("GOAWAY")
        return Goaway(uri)


def _probe_value(value: int | None) -> int:
    """0 means unknown on the wire, so a measured 0 goes out as 1 (as the reference does)."""
    if value is None:
        return 0
    if value < 0:
        raise ValueError(f"probe values are non-negative, got {value}")
    return max(value, 1)


__all__ = ["ALPN_LITE_03", "LITE_03", "MAX_URI_LENGTH", "Lite03Codec", "SubscribeResponseType"]

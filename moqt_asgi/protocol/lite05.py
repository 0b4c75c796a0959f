"""moq-lite-05 (ALPN ``moq-lite-05``), bytes verified against moq-rs.

Changes from lite-04:

* Each side opens a unidirectional SETUP stream (type 0x1), writes one SETUP
  (``count, (id, length, value)...``) and FINs it. Parameters: 0x1 Probe level,
  0x2 Path (client only, native QUIC; may end in ``?query``), 0x3 Role; moq-rs
  also sends 0x5 Origin here although the draft adds it in lite-06.
* The publisher's first message on an announce stream is ANNOUNCE_OK
  (``hop id, active count``); it no longer appends itself to hop lists.
  ANNOUNCE status 2 (restart) is accepted and means "active again".
* New TRACK stream (0x6): TRACK (``broadcast, track``) answered by one
  TRACK_INFO (``u8 priority, u8 ordered, max latency ms, timescale``) and FIN.
  The max latency is the publisher's retention: ``0`` keeps only the latest
  group, ``2**53 - 1`` means no limit (our ``TrackInfo`` says 0 and
  ``latest_only`` for these two).
* SUBSCRIBE_OK is gone: responses are ``0`` SUBSCRIBE_START (``group``),
  ``1`` SUBSCRIBE_END (``group``, exclusive), ``2`` SUBSCRIBE_DROP.
* Every FRAME on a group or fetch stream starts with a zigzag timestamp delta
  (:class:`~.lite_wire.FrameClock`); FETCH answers with such frames.
* QUIC datagrams: ``subscribe id, sequence, timestamp, payload`` (no length).
"""

from __future__ import annotations

from dataclasses import replace
from enum import IntEnum
from typing import ClassVar

from .errors import ErrorCode, ProtocolError
from .lite04 import Lite04Codec
from .lite_wire import (
    MAX_DATAGRAM_BODY,
    Features,
    FrameClock,
    UniStreamType,
    decode_flag,
    encode_flag,
    encode_u8,
    expect_type,
    frame_message,
    typed_message,
    unsupported,
)
from .messages import (
    UNLIMITED_MAX_LATENCY_MS,
    AnnounceOk,
    Datagram,
    LiteSetup,
    SubscribeDrop,
    SubscribeEnd,
    SubscribeResponse,
    SubscribeStart,
    TrackInfo,
    TrackRequest,
)
from .wire import NeedMore, Reader, decode_varint, encode_bytes, encode_string, encode_varint

LITE_05 = 0xFF0DAD05
ALPN_LITE_05 = "moq-lite-05"


class SetupParam(IntEnum):
    PROBE = 0x1
    PATH = 0x2
    ROLE = 0x3
    COST = 0x4
    ORIGIN = 0x5


class ProbeLevel(IntEnum):
    NONE = 0
    REPORT = 1
    INCREASE = 2
    """Any higher (future) level is read as INCREASE."""


class Role(IntEnum):
    """The client's intended direction; absent (``None``) means both."""

    PUBLISHER = 1
    SUBSCRIBER = 2


class SubscribeResponseType(IntEnum):
    """Subscribe-stream response types from lite-05 on."""

    START = 0x0
    END = 0x1
    DROP = 0x2


def _varint_param(raw: bytes, name: str) -> int:
    try:
        value, end = decode_varint(raw)
    except NeedMore:
        raise ProtocolError(ErrorCode.DECODE, f"SETUP {name} parameter is not a varint") from None
    if end != len(raw):
        raise ProtocolError(ErrorCode.DECODE, f"SETUP {name} parameter has {len(raw) - end} trailing bytes")
    return value


def _retention_to_wire(msg: TrackInfo) -> int:
    """TRACK_INFO's max latency on the wire: 0 keeps only the latest group, 2**53 - 1 is no limit."""
    if msg.latest_only:
        return 0
    return msg.max_latency_ms or UNLIMITED_MAX_LATENCY_MS


class Lite05Codec(Lite04Codec):
    version: ClassVar[int] = LITE_05
    name: ClassVar[str] = "moq-lite-05"
    alpn: ClassVar[str | None] = ALPN_LITE_05
    features: ClassVar[Features] = replace(
        Lite04Codec.features,
        setup_stream=True,
        announce_ok=True,
        subscribe_start_end=True,
        track_stream=True,
        frame_timestamps=True,
        datagrams=True,
    )
    response_types: ClassVar[type[IntEnum]] = SubscribeResponseType
    accepts_restart_status: ClassVar[bool] = True
    track_info_has_ordered: ClassVar[bool] = True
    """TRACK_INFO carries ``ordered`` (lite-05 only)."""

    # -- setup stream
    def encode_setup_stream(self, msg: LiteSetup) -> bytes:
        """The whole uni setup stream: type 0x1 and one SETUP (the caller then FINs)."""
        params: list[tuple[int, bytes]] = []
        if msg.probe:
            params.append((SetupParam.PROBE, encode_varint(msg.probe)))
        if msg.path is not None:
            params.append((SetupParam.PATH, msg.path.encode("utf-8")))
        if msg.role is not None:
            params.append((SetupParam.ROLE, encode_varint(msg.role)))
        if msg.cost is not None:
            params.append((SetupParam.COST, encode_varint(msg.cost)))
        if msg.origin:
            params.append((SetupParam.ORIGIN, encode_varint(msg.origin)))
        known = {key for key, _ in params}
        for key, value in msg.extensions:
            if key in known or key in SetupParam._value2member_map_:
                raise ValueError(f"extension parameter {key:#x} collides with a SETUP parameter")
            known.add(key)
            params.append((key, value))
        if len(params) > self.limits.max_parameters:
            raise ValueError(f"{len(params)} SETUP parameters exceed the limit of {self.limits.max_parameters}")
        body = bytearray(encode_varint(len(params)))
        for key, value in params:
            body += encode_varint(key) + encode_bytes(value)
        return encode_varint(UniStreamType.SETUP) + frame_message(bytes(body))

    def decode_setup(self, body: bytes) -> LiteSetup:
        """The SETUP body (after the stream type and the length)."""
        reader = Reader(body)
        count = reader.varint()
        if count > self.limits.max_parameters:
            raise ProtocolError(ErrorCode.TOO_MANY_PARAMETERS, f"{count} SETUP parameters (limit {self.limits.max_parameters})")
        params: dict[int, bytes] = {}
        for _ in range(count):
            key = reader.varint()
            value = reader.bytes(self.limits.max_message_size)
            if key in params:
                raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"SETUP parameter {key:#x} appears twice")
            params[key] = value
        reader.expect_end("SETUP")
        probe = min(_varint_param(params.pop(SetupParam.PROBE, b"\x00"), "probe"), ProbeLevel.INCREASE)
        path = None
        if (raw := params.pop(SetupParam.PATH, None)) is not None:
            if len(raw) > self.limits.max_path_length:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"SETUP path of {len(raw)} bytes exceeds {self.limits.max_path_length}")
            try:
                path = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "SETUP path is not valid UTF-8") from None
        role = None
        if (raw := params.pop(SetupParam.ROLE, None)) is not None:
            code = _varint_param(raw, "role")
            role = code if code in (Role.PUBLISHER, Role.SUBSCRIBER) else None
        cost = None
        if (raw := params.pop(SetupParam.COST, None)) is not None:
            cost = _varint_param(raw, "cost")
        origin = None
        if (raw := params.pop(SetupParam.ORIGIN, None)) is not None:
            origin = _varint_param(raw, "origin") or None
        return LiteSetup(probe, path, role, cost, origin, tuple(sorted(params.items())))

    # -- announce stream
    def encode_announce_ok(self, msg: AnnounceOk) -> bytes:
        return frame_message(encode_varint(msg.hop_id) + encode_varint(msg.active_count))

    def decode_announce_ok(self, body: bytes) -> AnnounceOk:
        reader = Reader(body)
        hop_id = reader.varint()
        active = reader.count(self.limits.max_announcements, "ANNOUNCE_OK active")
        reader.expect_end("ANNOUNCE_OK")
        return AnnounceOk(hop_id, active)

    # -- subscribe stream: START / END / DROP
    def encode_subscribe_response(self, msg: SubscribeResponse) -> bytes:
        if isinstance(msg, SubscribeStart):
            return typed_message(SubscribeResponseType.START, encode_varint(msg.group))
        if isinstance(msg, SubscribeEnd):
            return typed_message(SubscribeResponseType.END, encode_varint(msg.group))
        if isinstance(msg, SubscribeDrop):
            return self.encode_subscribe_drop(msg)
        raise unsupported(self.name, "SUBSCRIBE_OK")

    def decode_subscribe_response(self, msg_type: int, body: bytes) -> SubscribeResponse:
        kind = SubscribeResponseType(expect_type(msg_type, SubscribeResponseType, "subscribe response"))
        if kind is SubscribeResponseType.DROP:
            return self.decode_subscribe_drop(body)
        reader = Reader(body)
        group = reader.varint()
        reader.expect_end(f"SUBSCRIBE_{kind.name}")
        return SubscribeStart(group) if kind is SubscribeResponseType.START else SubscribeEnd(group)

    # -- track stream
    def encode_track_request(self, msg: TrackRequest) -> bytes:
        return frame_message(encode_string(self.path_to_wire(msg.broadcast)) + encode_string(msg.track))

    def decode_track_request(self, body: bytes) -> TrackRequest:
        reader = Reader(body)
        broadcast = reader.string(self.limits.max_path_length)
        track = reader.string(self.limits.max_path_length)
        reader.expect_end("TRACK")
        return TrackRequest(self.path_from_wire(broadcast), track)

    def encode_track_info(self, msg: TrackInfo) -> bytes:
        if msg.timescale <= 0:
            raise ValueError(f"timescale must be positive, got {msg.timescale}")
        if msg.max_latency_ms < 0:
            raise ValueError(f"max latency must not be negative, got {msg.max_latency_ms}")
        body = encode_u8(msg.priority)
        if self.track_info_has_ordered:
            body += encode_flag(msg.ordered)
        return frame_message(body + encode_varint(_retention_to_wire(msg)) + encode_varint(msg.timescale))

    def decode_track_info(self, body: bytes) -> TrackInfo:
        reader = Reader(body)
        priority = reader.u8()
        ordered = decode_flag(reader, "ordered") if self.track_info_has_ordered else False
        max_latency = reader.varint()
        timescale = reader.varint()
        reader.expect_end("TRACK_INFO")
        if timescale == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "TRACK_INFO timescale is 0")
        if max_latency == 0:
            return TrackInfo(priority, 0, timescale, ordered, latest_only=True)
        return TrackInfo(priority, 0 if max_latency == UNLIMITED_MAX_LATENCY_MS else max_latency, timescale, ordered)

    # -- frames carry a timestamp delta
    def new_frame_clock(self) -> FrameClock:
        """Timestamp state for one group or fetch stream."""
        return FrameClock()

    def encode_timed_frame(self, payload: bytes, clock: FrameClock, timestamp: int) -> bytes:
        """One FRAME: the timestamp delta, the size, the payload."""
        return clock.encode(timestamp) + encode_varint(len(payload)) + payload

    def encode_timed_frame_header(self, size: int, clock: FrameClock, timestamp: int) -> bytes:
        """What precedes a timed frame payload of ``size`` bytes: the timestamp delta and the size."""
        return clock.encode(timestamp) + encode_varint(size)

    # -- datagrams
    def encode_datagram(self, msg: Datagram) -> bytes:
        data = encode_varint(msg.subscribe_id) + encode_varint(msg.sequence) + encode_varint(msg.timestamp) + msg.payload
        if len(data) > MAX_DATAGRAM_BODY:
            raise ValueError(f"datagram body of {len(data)} bytes exceeds {MAX_DATAGRAM_BODY}")
        return data

    def decode_datagram(self, data: bytes) -> Datagram:
        """Raises TOO_LARGE for an oversized datagram, which a receiver drops silently."""
        if len(data) > MAX_DATAGRAM_BODY:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"datagram body of {len(data)} bytes exceeds {MAX_DATAGRAM_BODY}")
        reader = Reader(data)
        subscribe_id = reader.varint()
        sequence = reader.varint()
        timestamp = reader.varint()
        return Datagram(subscribe_id, sequence, timestamp, reader.raw(reader.remaining))


__all__ = [
    "ALPN_LITE_05",
    "LITE_05",
    "Lite05Codec",
    "ProbeLevel",
    "Role",
    "SetupParam",
    "SubscribeResponseType",
]

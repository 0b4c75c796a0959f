"""The QMux and legacy ``webtransport`` framings of MoQ over WebSocket, sans-IO.

A WebSocket carries QUIC-like streams in one of four framings, chosen by the
negotiated subprotocol (``qmux-01.moq-lite-05`` and so on):

* **qmux-01 / qmux-02**: one binary message is one QMux record (without its
  size prefix), a run of one or more QUIC frames. Each side's first message
  is ``QX_TRANSPORT_PARAMETERS``; flow control is QUIC's (``MAX_DATA``,
  ``MAX_STREAM_DATA``, ``MAX_STREAMS``); ``QX_PING`` keeps the session alive.
* **qmux-00**: the same frames, exactly one per message, no ``QX_PING``.
* **legacy** (``webtransport``, no subprotocol, anything unknown): one frame
  per message with a one-byte type, no parameters, no flow control.

This module turns frames into message bytes and message bytes into frames.
It owns no socket and no task. Every length read from a message is checked
against what remains of it (and every message against the receive bound)
before anything is allocated; malformed input raises :class:`QMuxError`,
whose ``code`` is what to send in ``CONNECTION_CLOSE``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ..protocol.wire import MAX_VARINT, NeedMore, decode_varint, encode_varint

# -- frame types (QUIC v1 layouts; the QX_ ones are QMux's own)
PADDING: Final = 0x00
RESET_STREAM: Final = 0x04
STOP_SENDING: Final = 0x05
STREAM: Final = 0x08  # 0x08..0x0f: | 0x04 OFF, | 0x02 LEN, | 0x01 FIN
STREAM_OFF: Final = 0x04
STREAM_LEN: Final = 0x02
STREAM_FIN: Final = 0x01
MAX_DATA: Final = 0x10
MAX_STREAM_DATA: Final = 0x11
MAX_STREAMS_BIDI: Final = 0x12
MAX_STREAMS_UNI: Final = 0x13
DATA_BLOCKED: Final = 0x14
STREAM_DATA_BLOCKED: Final = 0x15
STREAMS_BLOCKED_BIDI: Final = 0x16
STREAMS_BLOCKED_UNI: Final = 0x17
CONNECTION_CLOSE: Final = 0x1C
APPLICATION_CLOSE: Final = 0x1D
RESET_STREAM_AT: Final = 0x24
DATAGRAM: Final = 0x30
DATAGRAM_LEN: Final = 0x31
QX_TRANSPORT_PARAMETERS: Final = 0x3F5153300D0A0D0A
QX_PING_REQUEST: Final = 0x348C67529EF8C7BD
QX_PING_RESPONSE: Final = 0x348C67529EF8C7BE

# -- transport parameter ids
PARAM_MAX_IDLE_TIMEOUT: Final = 0x01
PARAM_INITIAL_MAX_DATA: Final = 0x04
PARAM_MAX_STREAM_DATA_BIDI_LOCAL: Final = 0x05
PARAM_MAX_STREAM_DATA_BIDI_REMOTE: Final = 0x06
PARAM_MAX_STREAM_DATA_UNI: Final = 0x07
PARAM_MAX_STREAMS_BIDI: Final = 0x08
PARAM_MAX_STREAMS_UNI: Final = 0x09
PARAM_RESET_STREAM_AT: Final = 0x1D
PARAM_MAX_DATAGRAM_FRAME_SIZE: Final = 0x20
PARAM_MAX_RECORD_SIZE: Final = 0x0571C59429CD0845
PARAM_APPLICATION_PROTOCOLS: Final = 0x3D4F9C2A8B1E6075
FORBIDDEN_PARAMS: Final = frozenset({0x00, 0x02, 0x03, *range(0x0A, 0x11)})
"""QUIC v1 parameters that have no meaning in QMux: receiving one is an error."""

# -- sizes
DEFAULT_RECORD_SIZE: Final = 16382
"""The QMux record size every implementation advertises (and the default when none is)."""
QMUX00_MESSAGE_SIZE: Final = 16384
"""Largest message on qmux-00."""
LEGACY_MESSAGE_SIZE: Final = 65536
"""Largest message we accept on the legacy framing (the protocol sets none; senders stay under 16 KiB)."""
MAX_STREAM_PAYLOAD: Final = 16352
"""Most STREAM payload bytes one frame carries (the ceiling every sender applies)."""
MAX_REASON: Final = 1024
"""Longest close reason we send (longer ones are cut)."""

# -- CONNECTION_CLOSE codes (what the QMux implementations send)
PROTOCOL_VIOLATION: Final = 1002
"""Any framing, flow-control or stream-limit error."""
TEXT_MESSAGE: Final = 1003
"""A text message arrived."""


class QMuxError(Exception):
    """The peer broke the framing; ``code`` goes in our ``CONNECTION_CLOSE``."""

    def __init__(self, message: str, code: int = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Framing(enum.Enum):
    """How frames travel in WebSocket messages."""

    QMUX00 = "qmux-00"
    QMUX01 = "qmux-01"
    QMUX02 = "qmux-02"
    LEGACY = "webtransport"

    @property
    def qmux(self) -> bool:
        """Transport parameters and flow control (every framing but the legacy one)."""
        return self is not Framing.LEGACY

    @property
    def records(self) -> bool:
        """One message may carry several frames, and ``QX_PING`` exists (qmux-01/02)."""
        return self in (Framing.QMUX01, Framing.QMUX02)

    def receive_limit(self, record_size: int = DEFAULT_RECORD_SIZE) -> int:
        """The largest message we accept, given the record size we advertised."""
        if self is Framing.LEGACY:
            return LEGACY_MESSAGE_SIZE
        if self is Framing.QMUX00:
            return QMUX00_MESSAGE_SIZE
        return record_size


def parse_subprotocol(value: str | None) -> tuple[Framing, str | None]:
    """The framing and the application protocol (an ALPN such as ``moq-lite-05``) of a subprotocol.

    ``qmux-0N.X`` is framing N with protocol X; a bare ``qmux-0N`` has no
    protocol; ``webtransport``, nothing, or anything else is the legacy
    framing without a protocol.
    """
    if value:
        prefix, dot, rest = value.partition(".")
        for framing in (Framing.QMUX00, Framing.QMUX01, Framing.QMUX02):
            if prefix == framing.value:
                return framing, (rest or None) if dot else None
    return Framing.LEGACY, None


# -- frames
@dataclass(frozen=True, slots=True)
class TransportParameters:
    """QX_TRANSPORT_PARAMETERS (values as RFC 9000 §18; 0 or absent means none)."""

    max_idle_timeout: int = 0
    initial_max_data: int = 0
    max_stream_data_bidi_local: int = 0
    max_stream_data_bidi_remote: int = 0
    max_stream_data_uni: int = 0
    max_streams_bidi: int = 0
    max_streams_uni: int = 0
    max_datagram_frame_size: int = 0
    max_record_size: int = DEFAULT_RECORD_SIZE
    reset_stream_at: bool = False


@dataclass(frozen=True, slots=True)
class StreamFrame:
    stream_id: int
    data: bytes
    offset: int | None = 0
    """None: the frame had no OFF bit (the receiver tracks the offset)."""
    fin: bool = False


@dataclass(frozen=True, slots=True)
class ResetStream:
    stream_id: int
    code: int
    final_size: int = 0


@dataclass(frozen=True, slots=True)
class ResetStreamAt:
    stream_id: int
    code: int
    final_size: int
    reliable_size: int


@dataclass(frozen=True, slots=True)
class StopSending:
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class MaxData:
    maximum: int


@dataclass(frozen=True, slots=True)
class MaxStreamData:
    stream_id: int
    maximum: int


@dataclass(frozen=True, slots=True)
class MaxStreams:
    bidi: bool
    maximum: int


@dataclass(frozen=True, slots=True)
class Blocked:
    """DATA_BLOCKED, STREAM_DATA_BLOCKED or STREAMS_BLOCKED: informational, decoded and ignored."""

    frame_type: int
    limit: int
    stream_id: int | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """QX_PING request (``response`` False) or response, with its sequence number."""

    sequence: int
    response: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    """APPLICATION_CLOSE (``application``) or CONNECTION_CLOSE (a transport error)."""

    code: int
    reason: str = ""
    application: bool = True
    frame_type: int = 0


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes


Frame = (TransportParameters | StreamFrame | ResetStream | ResetStreamAt | StopSending | MaxData | MaxStreamData
         | MaxStreams | Blocked | Ping | Close | Datagram)


# -- encoding
def _param(ident: int, value: bytes) -> bytes:
    return encode_varint(ident) + encode_varint(len(value)) + value


def encode_parameters(params: TransportParameters, framing: Framing) -> bytes:
    """The QX_TRANSPORT_PARAMETERS frame (zero values left out; datagrams only on qmux-01/02)."""
    body = bytearray()
    for ident, value in ((PARAM_MAX_IDLE_TIMEOUT, params.max_idle_timeout),
                         (PARAM_INITIAL_MAX_DATA, params.initial_max_data),
                         (PARAM_MAX_STREAM_DATA_BIDI_LOCAL, params.max_stream_data_bidi_local),
                         (PARAM_MAX_STREAM_DATA_BIDI_REMOTE, params.max_stream_data_bidi_remote),
                         (PARAM_MAX_STREAM_DATA_UNI, params.max_stream_data_uni),
                         (PARAM_MAX_STREAMS_BIDI, params.max_streams_bidi),
                         (PARAM_MAX_STREAMS_UNI, params.max_streams_uni)):
        if value:
            body += _param(ident, encode_varint(value))
    if params.max_datagram_frame_size and framing.records:
        body += _param(PARAM_MAX_DATAGRAM_FRAME_SIZE, encode_varint(params.max_datagram_frame_size))
    if params.max_record_size:
        body += _param(PARAM_MAX_RECORD_SIZE, encode_varint(params.max_record_size))
    if params.reset_stream_at and framing is Framing.QMUX02:
        body += _param(PARAM_RESET_STREAM_AT, b"")
    return encode_varint(QX_TRANSPORT_PARAMETERS) + encode_varint(len(body)) + bytes(body)


def stream_header(stream_id: int, offset: int, size: int, fin: bool, framing: Framing) -> bytes:
    """The bytes of a STREAM frame before its ``size`` payload bytes (OFF and LEN always set on qmux)."""
    if framing is Framing.LEGACY:
        return bytes((STREAM | (STREAM_FIN if fin else 0),)) + encode_varint(stream_id)
    return (bytes((STREAM | STREAM_OFF | STREAM_LEN | (STREAM_FIN if fin else 0),)) + encode_varint(stream_id)
            + encode_varint(offset) + encode_varint(size))


def _reason(reason: str) -> bytes:
    raw = reason.encode("utf-8")[:MAX_REASON]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def encode_frame(frame: Frame, framing: Framing) -> bytes:
    """One frame's bytes in ``framing`` (a frame the framing lacks raises ``ValueError``)."""
    legacy = framing is Framing.LEGACY
    if isinstance(frame, StreamFrame):
        return stream_header(frame.stream_id, frame.offset or 0, len(frame.data), frame.fin, framing) + frame.data
    if isinstance(frame, ResetStream):
        out = bytes((RESET_STREAM,)) + encode_varint(frame.stream_id) + encode_varint(frame.code)
        return out if legacy else out + encode_varint(frame.final_size)
    if isinstance(frame, StopSending):
        return bytes((STOP_SENDING,)) + encode_varint(frame.stream_id) + encode_varint(frame.code)
    if isinstance(frame, Close):
        kind = APPLICATION_CLOSE if frame.application else CONNECTION_CLOSE
        reason = _reason(frame.reason)
        if legacy:
            return bytes((kind,)) + encode_varint(frame.code) + reason
        extra = b"" if frame.application else encode_varint(frame.frame_type)
        return bytes((kind,)) + encode_varint(frame.code) + extra + encode_varint(len(reason)) + reason
    if legacy:
        raise ValueError(f"the legacy framing has no {type(frame).__name__}")
    if isinstance(frame, TransportParameters):
        return encode_parameters(frame, framing)
    if isinstance(frame, MaxData):
        return bytes((MAX_DATA,)) + encode_varint(frame.maximum)
    if isinstance(frame, MaxStreamData):
        return bytes((MAX_STREAM_DATA,)) + encode_varint(frame.stream_id) + encode_varint(frame.maximum)
    if isinstance(frame, MaxStreams):
        return bytes((MAX_STREAMS_BIDI if frame.bidi else MAX_STREAMS_UNI,)) + encode_varint(frame.maximum)
    if isinstance(frame, Blocked):
        sid = b"" if frame.stream_id is None else encode_varint(frame.stream_id)
        return bytes((frame.frame_type,)) + sid + encode_varint(frame.limit)
    if isinstance(frame, Ping):
        if not framing.records:
            raise ValueError("QX_PING exists on qmux-01/02 only")
        kind = QX_PING_RESPONSE if frame.response else QX_PING_REQUEST
        return encode_varint(kind) + encode_varint(frame.sequence)
    if isinstance(frame, Datagram):
        if not framing.records:
            raise ValueError("DATAGRAM exists on qmux-01/02 only")
        return bytes((DATAGRAM_LEN,)) + encode_varint(len(frame.data)) + frame.data
    if isinstance(frame, ResetStreamAt):
        if framing is not Framing.QMUX02:
            raise ValueError("RESET_STREAM_AT exists on qmux-02 only")
        return (bytes((RESET_STREAM_AT,)) + encode_varint(frame.stream_id) + encode_varint(frame.code)
                + encode_varint(frame.final_size) + encode_varint(frame.reliable_size))
    raise ValueError(f"cannot encode {frame!r}")


# -- decoding
class _Cursor:
    """Reads one message; running off its end is a framing error."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def varint(self, what: str) -> int:
        try:
            value, self.pos = decode_varint(self.data, self.pos)
        except NeedMore:
            raise QMuxError(f"short frame: message ends inside {what}") from None
        return value

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise QMuxError(f"short frame: message ends before {what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, size: int, what: str) -> bytes:
        if size > self.remaining:
            raise QMuxError(f"short frame: {what} of {size} bytes runs past the end of the message")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def decode_parameters(body: bytes) -> TransportParameters:
    """The parameters in a QX_TRANSPORT_PARAMETERS body (RFC 9000 §18 triples)."""
    cursor = _Cursor(body)
    seen: set[int] = set()
    values: dict[int, int] = {}
    reset_stream_at = False
    known = {PARAM_MAX_IDLE_TIMEOUT, PARAM_INITIAL_MAX_DATA, PARAM_MAX_STREAM_DATA_BIDI_LOCAL,
             PARAM_MAX_STREAM_DATA_BIDI_REMOTE, PARAM_MAX_STREAM_DATA_UNI, PARAM_MAX_STREAMS_BIDI,
             PARAM_MAX_STREAMS_UNI, PARAM_MAX_DATAGRAM_FRAME_SIZE, PARAM_MAX_RECORD_SIZE}
    while cursor.remaining:
        ident = cursor.varint("a parameter id")
        size = cursor.varint("a parameter length")
        value = cursor.take(size, f"parameter {ident:#x}")
        if ident in FORBIDDEN_PARAMS:
            raise QMuxError(f"transport parameter error: {ident:#x} is not allowed in QMux")
        if ident == PARAM_APPLICATION_PROTOCOLS:
            raise QMuxError("transport parameter error: unexpected application_protocols")
        if ident not in known and ident != PARAM_RESET_STREAM_AT:
            continue
        if ident in seen:
            raise QMuxError(f"transport parameter error: duplicate parameter {ident:#x}")
        seen.add(ident)
        if ident == PARAM_RESET_STREAM_AT:
            if value:
                raise QMuxError("transport parameter error: reset_stream_at carries no value")
            reset_stream_at = True
            continue
        try:
            number, end = decode_varint(value)
        except NeedMore:
            raise QMuxError(f"transport parameter error: {ident:#x} is not a varint") from None
        if end != len(value):
            raise QMuxError(f"transport parameter error: {ident:#x} does not fill its length")
        values[ident] = number
    record = values.get(PARAM_MAX_RECORD_SIZE, DEFAULT_RECORD_SIZE)
    if record < DEFAULT_RECORD_SIZE:
        raise QMuxError(f"transport parameter error: max_record_size {record} is below {DEFAULT_RECORD_SIZE}")
    return TransportParameters(
        max_idle_timeout=values.get(PARAM_MAX_IDLE_TIMEOUT, 0),
        initial_max_data=values.get(PARAM_INITIAL_MAX_DATA, 0),
        max_stream_data_bidi_local=values.get(PARAM_MAX_STREAM_DATA_BIDI_LOCAL, 0),
        max_stream_data_bidi_remote=values.get(PARAM_MAX_STREAM_DATA_BIDI_REMOTE, 0),
        max_stream_data_uni=values.get(PARAM_MAX_STREAM_DATA_UNI, 0),
        max_streams_bidi=values.get(PARAM_MAX_STREAMS_BIDI, 0),
        max_streams_uni=values.get(PARAM_MAX_STREAMS_UNI, 0),
        max_datagram_frame_size=values.get(PARAM_MAX_DATAGRAM_FRAME_SIZE, 0),
        max_record_size=record,
        reset_stream_at=reset_stream_at,
    )


def _stream(kind: int, cursor: _Cursor) -> StreamFrame:
    stream_id = cursor.varint("a stream id")
    offset: int | None = cursor.varint("a stream offset") if kind & STREAM_OFF else None
    if kind & STREAM_LEN:
        data = cursor.take(cursor.varint("a stream length"), "stream data")
    else:  # QUIC: no LEN means "to the end of the record" (the message)
        data = cursor.rest()
    if (offset or 0) + len(data) > MAX_VARINT:
        raise QMuxError("flow control error: stream offset beyond 2^62")
    return StreamFrame(stream_id, data, offset, bool(kind & STREAM_FIN))


def _decode_qmux(cursor: _Cursor, framing: Framing) -> Frame | None:
    """One frame at the cursor (None for PADDING)."""
    kind = cursor.varint("a frame type")
    if kind == PADDING:
        return None
    if STREAM <= kind <= STREAM | 0x07:
        return _stream(kind, cursor)
    if kind == RESET_STREAM:
        return ResetStream(cursor.varint("a stream id"), cursor.varint("an error code"),
                           cursor.varint("a final size"))
    if kind == STOP_SENDING:
        return StopSending(cursor.varint("a stream id"), cursor.varint("an error code"))
    if kind == MAX_DATA:
        return MaxData(cursor.varint("a maximum"))
    if kind == MAX_STREAM_DATA:
        return MaxStreamData(cursor.varint("a stream id"), cursor.varint("a maximum"))
    if kind in (MAX_STREAMS_BIDI, MAX_STREAMS_UNI):
        maximum = cursor.varint("a maximum")
        if maximum > 1 << 60:
            raise QMuxError(f"stream limit error: MAX_STREAMS {maximum} is above 2^60")
        return MaxStreams(kind == MAX_STREAMS_BIDI, maximum)
    if kind == STREAM_DATA_BLOCKED:
        return Blocked(kind, stream_id=cursor.varint("a stream id"), limit=cursor.varint("a limit"))
    if kind in (DATA_BLOCKED, STREAMS_BLOCKED_BIDI, STREAMS_BLOCKED_UNI):
        return Blocked(kind, cursor.varint("a limit"))
    if kind in (CONNECTION_CLOSE, APPLICATION_CLOSE):
        code = cursor.varint("an error code")
        frame_type = cursor.varint("a frame type") if kind == CONNECTION_CLOSE else 0
        reason = cursor.take(cursor.varint("a reason length"), "the reason")
        return Close(code, _text(reason), application=kind == APPLICATION_CLOSE, frame_type=frame_type)
    if kind == QX_TRANSPORT_PARAMETERS:
        return decode_parameters(cursor.take(cursor.varint("a parameters length"), "the parameters"))
    if kind in (QX_PING_REQUEST, QX_PING_RESPONSE) and framing.records:
        return Ping(cursor.varint("a ping sequence"), response=kind == QX_PING_RESPONSE)
    if kind in (DATAGRAM, DATAGRAM_LEN) and framing.records:
        if kind == DATAGRAM_LEN:
            return Datagram(cursor.take(cursor.varint("a datagram length"), "the datagram"))
        return Datagram(cursor.rest())
    if kind == RESET_STREAM_AT and framing is Framing.QMUX02:
        return ResetStreamAt(cursor.varint("a stream id"), cursor.varint("an error code"),
                             cursor.varint("a final size"), cursor.varint("a reliable size"))
    raise QMuxError(f"invalid frame type: {kind:#x}")


def _decode_legacy(cursor: _Cursor) -> Frame:
    kind = cursor.byte("a frame type")
    if kind in (STREAM, STREAM | STREAM_FIN):
        return StreamFrame(cursor.varint("a stream id"), cursor.rest(), None, kind == STREAM | STREAM_FIN)
    if kind == RESET_STREAM:
        return ResetStream(cursor.varint("a stream id"), cursor.varint("an error code"))
    if kind == STOP_SENDING:
        return StopSending(cursor.varint("a stream id"), cursor.varint("an error code"))
    if kind in (APPLICATION_CLOSE, CONNECTION_CLOSE):
        return Close(cursor.varint("an error code"), _text(cursor.rest()), application=kind == APPLICATION_CLOSE)
    raise QMuxError(f"invalid frame type: {kind:#x}")


def decode_message(data: bytes, framing: Framing, limit: int | None = None) -> list[Frame]:
    """The frames of one binary message (``limit``: the largest message accepted, default the framing's).

    qmux-01/02 messages are records: zero or more frames, PADDING skipped.
    qmux-00 and legacy messages are exactly one frame.
    """
    bound = framing.receive_limit() if limit is None else limit
    if len(data) > bound:
        raise QMuxError(f"frame too large: message of {len(data)} bytes (at most {bound})")
    cursor = _Cursor(bytes(data))
    if framing is Framing.LEGACY:
        frame = _decode_legacy(cursor)
        return [frame]
    frames: list[Frame] = []
    while cursor.remaining:
        decoded = _decode_qmux(cursor, framing)
        if decoded is not None:
            frames.append(decoded)
        if framing is Framing.QMUX00:
            if cursor.remaining and any(cursor.data[cursor.pos:]):
                raise QMuxError("protocol violation: qmux-00 carries one frame per message")
            break
    if framing is Framing.QMUX00 and not frames:
        raise QMuxError("protocol violation: empty qmux-00 message")
    return frames


__all__ = [
    "DEFAULT_RECORD_SIZE", "MAX_STREAM_PAYLOAD", "PROTOCOL_VIOLATION", "TEXT_MESSAGE", "Blocked", "Close",
    "Datagram", "Frame", "Framing", "MaxData", "MaxStreamData", "MaxStreams", "Ping", "QMuxError", "ResetStream",
    "ResetStreamAt", "StopSending", "StreamFrame", "TransportParameters", "decode_message", "decode_parameters",
    "encode_frame", "encode_parameters", "parse_subprotocol", "stream_header",
]

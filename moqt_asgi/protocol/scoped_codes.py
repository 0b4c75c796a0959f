"""The scoped error registries of moq-rs 0.5.1 / moq-ffi 0.4.18.

The installed reference no longer uses moq-lite's flat code space
(:class:`~.errors.ErrorCode`) on any lite version: session close codes and
stream reset / stop-sending codes are separate registries, numbered like IETF
moq-transport's. Each value below was checked by sending it to a moq-rs client
and reading back how it classified the code.

On the wire, moq-rs carries stream codes in WebTransport's HTTP/3 mapping
(``0x52e4a40fa8db + n + n // 0x1e``) even on native QUIC, and reads a bare
code as a transport failure; session close codes travel unmapped. The mapping
functions live in :mod:`.codes` (``app_to_http``, ``http_to_app``).
Application codes are ``64 + n`` in both registries.
"""

from __future__ import annotations

from enum import IntEnum

from .errors import APPLICATION_CODE_BASE, ErrorCode


class SessionCode(IntEnum):
    NO_ERROR = 0x0
    INTERNAL = 0x1
    UNAUTHORIZED = 0x2
    PROTOCOL_VIOLATION = 0x3
    KEY_VALUE_FORMATTING = 0x6
    GOAWAY_TIMEOUT = 0x10
    CONTROL_MESSAGE_TIMEOUT = 0x11
    VERSION_NEGOTIATION_FAILED = 0x15


class StreamCode(IntEnum):
    INTERNAL = 0x0
    CANCELLED = 0x1
    DELIVERY_TIMEOUT = 0x2
    SESSION_CLOSED = 0x3
    GOING_AWAY = 0x4
    TOO_FAR_BEHIND = 0x5
    MALFORMED_TRACK = 0x12
    NOT_FOUND = 0x33
    OLD = 0x34
    EVICTED = 0x35
    UNROUTABLE = 0x36
    WRONG_SIZE = 0x37
    FRAME_TOO_LARGE = 0x38
    TIMESTAMP_MISMATCH = 0x39


E = ErrorCode
_VIOLATIONS = (
    E.DECODE, E.PROTOCOL_VIOLATION, E.UNEXPECTED_STREAM, E.UNEXPECTED_MESSAGE, E.WRONG_SIZE,
    E.TOO_LARGE, E.DUPLICATE, E.BOUNDS_EXCEEDED, E.INVALID_ROLE,
)

_TO_SESSION: dict[ErrorCode, SessionCode] = {
    E.CANCEL: SessionCode.NO_ERROR,
    E.UNAUTHORIZED: SessionCode.UNAUTHORIZED,
    E.TOO_MANY_PARAMETERS: SessionCode.KEY_VALUE_FORMATTING,
    E.TIMEOUT: SessionCode.CONTROL_MESSAGE_TIMEOUT,
    E.VERSION: SessionCode.VERSION_NEGOTIATION_FAILED,
    **{code: SessionCode.PROTOCOL_VIOLATION for code in _VIOLATIONS},
}

_FROM_SESSION: dict[int, ErrorCode] = {
    SessionCode.NO_ERROR: E.CANCEL,
    SessionCode.INTERNAL: E.TRANSPORT,
    SessionCode.UNAUTHORIZED: E.UNAUTHORIZED,
    SessionCode.PROTOCOL_VIOLATION: E.PROTOCOL_VIOLATION,
    SessionCode.KEY_VALUE_FORMATTING: E.TOO_MANY_PARAMETERS,
    SessionCode.GOAWAY_TIMEOUT: E.TIMEOUT,
    SessionCode.CONTROL_MESSAGE_TIMEOUT: E.TIMEOUT,
    SessionCode.VERSION_NEGOTIATION_FAILED: E.VERSION,
}

_TO_STREAM: dict[ErrorCode, StreamCode] = {
    E.CANCEL: StreamCode.CANCELLED,
    E.OLD: StreamCode.OLD,
    E.TIMEOUT: StreamCode.DELIVERY_TIMEOUT,
    E.TRANSPORT: StreamCode.SESSION_CLOSED,
    E.NOT_FOUND: StreamCode.NOT_FOUND,
    E.WRONG_SIZE: StreamCode.WRONG_SIZE,
    E.TOO_LARGE: StreamCode.FRAME_TOO_LARGE,
}

_FROM_STREAM: dict[int, ErrorCode] = {
    StreamCode.INTERNAL: E.TRANSPORT,
    StreamCode.CANCELLED: E.CANCEL,
    StreamCode.DELIVERY_TIMEOUT: E.TIMEOUT,
    StreamCode.SESSION_CLOSED: E.TRANSPORT,
    StreamCode.GOING_AWAY: E.CANCEL,
    StreamCode.TOO_FAR_BEHIND: E.OLD,
    StreamCode.MALFORMED_TRACK: E.DECODE,
    StreamCode.NOT_FOUND: E.NOT_FOUND,
    StreamCode.OLD: E.OLD,
    StreamCode.EVICTED: E.OLD,
    StreamCode.UNROUTABLE: E.NOT_FOUND,
    StreamCode.WRONG_SIZE: E.WRONG_SIZE,
    StreamCode.FRAME_TOO_LARGE: E.TOO_LARGE,
    StreamCode.TIMESTAMP_MISMATCH: E.PROTOCOL_VIOLATION,
}


def _ours(code: int) -> ErrorCode | None:
    try:
        return ErrorCode(code)
    except ValueError:
        return None


def to_session_code(code: int) -> int:
    """The session close code for one of ours (application codes pass through)."""
    if code >= APPLICATION_CODE_BASE:
        return code
    ours = _ours(code)
    return int(_TO_SESSION.get(ours, SessionCode.INTERNAL)) if ours is not None else int(SessionCode.INTERNAL)


def to_stream_code(code: int) -> int:
    """The (unmapped) stream reset code for one of ours (application codes pass through)."""
    if code >= APPLICATION_CODE_BASE:
        return code
    ours = _ours(code)
    return int(_TO_STREAM.get(ours, StreamCode.INTERNAL)) if ours is not None else int(StreamCode.INTERNAL)


def from_session_code(code: int) -> int:
    """Our :class:`ErrorCode` for a session close code; unknown ones read as ``TRANSPORT``."""
    if code >= APPLICATION_CODE_BASE:
        return code
    return int(_FROM_SESSION.get(code, E.TRANSPORT))


def from_stream_code(code: int) -> int:
    """Our :class:`ErrorCode` for an (unmapped) stream code; unknown ones read as ``TRANSPORT``."""
    if code >= APPLICATION_CODE_BASE:
        return code
    return int(_FROM_STREAM.get(code, E.TRANSPORT))


__all__ = [
    "SessionCode",
    "StreamCode",
    "from_session_code",
    "from_stream_code",
    "to_session_code",
    "to_stream_code",
]

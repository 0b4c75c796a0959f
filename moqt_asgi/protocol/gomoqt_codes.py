"""gomoqt's error codes: one table per scope, and the translation to and from ours.

gomoqt numbers errors per scope (session, announce, subscribe, group) where
moq-lite has one flat space (:class:`~.errors.ErrorCode`). :func:`to_gomoqt`
and :func:`from_gomoqt` translate; :class:`~.codes.GomoqtErrorCodes` applies
them at the transport edge. The values are gomoqt's own. Application codes
(``64 + n``) pass through in both directions.
"""

from __future__ import annotations

from enum import IntEnum

from .errors import APPLICATION_CODE_BASE, ErrorCode


class ErrorScope(IntEnum):
    SESSION = 0
    ANNOUNCE = 1
    SUBSCRIBE = 2
    GROUP = 3


class SessionCode(IntEnum):
    NO_ERROR = 0x0
    INTERNAL = 0x1
    UNAUTHORIZED = 0x2
    PROTOCOL_VIOLATION = 0x3
    PARAMETER_LENGTH_MISMATCH = 0x5
    TOO_MANY_SUBSCRIBE = 0x6
    GOAWAY_TIMEOUT = 0x10
    UNSUPPORTED_VERSION = 0x12
    SETUP_FAILED = 0x13


class AnnounceCode(IntEnum):
    INTERNAL = 0x0
    DUPLICATED_ANNOUNCE = 0x1
    INVALID_ANNOUNCE_STATUS = 0x2
    UNINTERESTED = 0x3
    BANNED_PREFIX = 0x4
    INVALID_PREFIX = 0x5


class SubscribeCode(IntEnum):
    INTERNAL = 0x0
    INVALID_RANGE = 0x1
    DUPLICATE_SUBSCRIBE_ID = 0x2
    TRACK_NOT_FOUND = 0x3
    UNAUTHORIZED = 0x4
    TIMEOUT = 0x5


class GroupCode(IntEnum):
    INTERNAL = 0x0
    OUT_OF_RANGE = 0x2
    EXPIRED_GROUP = 0x3
    SUBSCRIBE_CANCELED = 0x4
    PUBLISH_ABORTED = 0x5
    CLOSED_SESSION = 0x6
    INVALID_SUBSCRIBE_ID = 0x7


E = ErrorCode
_VIOLATIONS = (E.DECODE, E.PROTOCOL_VIOLATION, E.UNEXPECTED_STREAM, E.UNEXPECTED_MESSAGE, E.WRONG_SIZE, E.TOO_LARGE)

_TO: dict[ErrorScope, tuple[IntEnum, dict[ErrorCode, IntEnum]]] = {
    ErrorScope.SESSION: (SessionCode.INTERNAL, {
        E.CANCEL: SessionCode.NO_ERROR,
        E.UNAUTHORIZED: SessionCode.UNAUTHORIZED,
        E.VERSION: SessionCode.UNSUPPORTED_VERSION,
        E.TOO_MANY_PARAMETERS: SessionCode.PARAMETER_LENGTH_MISMATCH,
        E.BOUNDS_EXCEEDED: SessionCode.TOO_MANY_SUBSCRIBE,
        E.TIMEOUT: SessionCode.GOAWAY_TIMEOUT,
        E.NOT_FOUND: SessionCode.SETUP_FAILED,
        E.UNSUPPORTED: SessionCode.SETUP_FAILED,
        E.INVALID_ROLE: SessionCode.SETUP_FAILED,
        E.REQUIRED_EXTENSION: SessionCode.SETUP_FAILED,
        E.DUPLICATE: SessionCode.PROTOCOL_VIOLATION,
        **{code: SessionCode.PROTOCOL_VIOLATION for code in _VIOLATIONS},
    }),
    ErrorScope.ANNOUNCE: (AnnounceCode.INTERNAL, {
        E.DUPLICATE: AnnounceCode.DUPLICATED_ANNOUNCE,
        E.PROTOCOL_VIOLATION: AnnounceCode.INVALID_ANNOUNCE_STATUS,
        E.UNAUTHORIZED: AnnounceCode.BANNED_PREFIX,
        E.NOT_FOUND: AnnounceCode.UNINTERESTED,
        E.BOUNDS_EXCEEDED: AnnounceCode.INVALID_PREFIX,
    }),
    ErrorScope.SUBSCRIBE: (SubscribeCode.INTERNAL, {
        E.BOUNDS_EXCEEDED: SubscribeCode.INVALID_RANGE,
        E.DUPLICATE: SubscribeCode.DUPLICATE_SUBSCRIBE_ID,
        E.NOT_FOUND: SubscribeCode.TRACK_NOT_FOUND,
        E.UNAUTHORIZED: SubscribeCode.UNAUTHORIZED,
        E.TIMEOUT: SubscribeCode.TIMEOUT,
    }),
    ErrorScope.GROUP: (GroupCode.INTERNAL, {
        E.CANCEL: GroupCode.SUBSCRIBE_CANCELED,
        E.BOUNDS_EXCEEDED: GroupCode.OUT_OF_RANGE,
        E.OLD: GroupCode.EXPIRED_GROUP,
        E.TIMEOUT: GroupCode.EXPIRED_GROUP,
        E.TRANSPORT: GroupCode.CLOSED_SESSION,
        E.NOT_FOUND: GroupCode.INVALID_SUBSCRIBE_ID,
    }),
}

_FROM: dict[ErrorScope, dict[int, ErrorCode]] = {
    ErrorScope.SESSION: {
        SessionCode.NO_ERROR: E.CANCEL,
        SessionCode.INTERNAL: E.TRANSPORT,
        SessionCode.UNAUTHORIZED: E.UNAUTHORIZED,
        SessionCode.PROTOCOL_VIOLATION: E.PROTOCOL_VIOLATION,
        SessionCode.PARAMETER_LENGTH_MISMATCH: E.DECODE,
        SessionCode.TOO_MANY_SUBSCRIBE: E.BOUNDS_EXCEEDED,
        SessionCode.GOAWAY_TIMEOUT: E.TIMEOUT,
        SessionCode.UNSUPPORTED_VERSION: E.VERSION,
        SessionCode.SETUP_FAILED: E.UNSUPPORTED,
    },
    ErrorScope.ANNOUNCE: {
        AnnounceCode.INTERNAL: E.TRANSPORT,
        AnnounceCode.DUPLICATED_ANNOUNCE: E.DUPLICATE,
        AnnounceCode.INVALID_ANNOUNCE_STATUS: E.PROTOCOL_VIOLATION,
        AnnounceCode.UNINTERESTED: E.CANCEL,
        AnnounceCode.BANNED_PREFIX: E.UNAUTHORIZED,
        AnnounceCode.INVALID_PREFIX: E.PROTOCOL_VIOLATION,
    },
    ErrorScope.SUBSCRIBE: {
        SubscribeCode.INTERNAL: E.TRANSPORT,
        SubscribeCode.INVALID_RANGE: E.BOUNDS_EXCEEDED,
        SubscribeCode.DUPLICATE_SUBSCRIBE_ID: E.DUPLICATE,
        SubscribeCode.TRACK_NOT_FOUND: E.NOT_FOUND,
        SubscribeCode.UNAUTHORIZED: E.UNAUTHORIZED,
        SubscribeCode.TIMEOUT: E.TIMEOUT,
    },
    ErrorScope.GROUP: {
        GroupCode.INTERNAL: E.TRANSPORT,
        GroupCode.OUT_OF_RANGE: E.BOUNDS_EXCEEDED,
        GroupCode.EXPIRED_GROUP: E.OLD,
        GroupCode.SUBSCRIBE_CANCELED: E.CANCEL,
        GroupCode.PUBLISH_ABORTED: E.CANCEL,
        GroupCode.CLOSED_SESSION: E.TRANSPORT,
        GroupCode.INVALID_SUBSCRIBE_ID: E.NOT_FOUND,
    },
}


def to_gomoqt(code: int, scope: ErrorScope) -> int:
    """The gomoqt code for one of ours in ``scope``; application codes (64+) pass through."""
    if code >= APPLICATION_CODE_BASE:
        return code
    default, table = _TO[scope]
    try:
        return int(table.get(ErrorCode(code), default))
    except ValueError:
        return int(default)


def from_gomoqt(code: int, scope: ErrorScope) -> int:
    """Our :class:`ErrorCode` for a gomoqt code in ``scope``.

    Application codes (64+) pass through; other codes gomoqt does not define
    read as ``TRANSPORT``, like its own INTERNAL ("the peer failed").
    """
    if code >= APPLICATION_CODE_BASE:
        return code
    return int(_FROM[scope].get(code, E.TRANSPORT))


__all__ = [
    "AnnounceCode",
    "ErrorScope",
    "GroupCode",
    "SessionCode",
    "SubscribeCode",
    "from_gomoqt",
    "to_gomoqt",
]

"""gomoqt's dialect of moq-lite (version ``0xfeedbabe``).

It is lite-02 with these differences, all handled here at the codec edge:

* Setup uses only the legacy framing (``0x00, varint length, body``; the
  server answers without a type byte) and offers ``0xfeedbabe``. Native QUIC
  uses ALPN ``moq-00`` (which kixelated peers read as IETF draft-14) and puts
  the path in setup parameter 0x1.
* Stream types are one raw byte (equal to the varint for values below 64).
* Priority in SUBSCRIBE and SUBSCRIBE_UPDATE is a varint (0..255), and
  SUBSCRIBE_UPDATE is allowed. ANNOUNCE's status is a varint.
* Broadcast paths start with ``/``; announce prefixes start and end with ``/``
  (the root is ``"/"``). Suffixes are relative, as ours are, and never empty:
  a prefix lists what lies under it, not the broadcast at the prefix itself.
* Errors are numbered per scope (session, announce, subscribe, group);
  :func:`to_gomoqt` / :func:`from_gomoqt` translate our :class:`~.errors.ErrorCode`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

from .codes import GOMOQT_CODES, ErrorCodes
from .errors import APPLICATION_CODE_BASE, ErrorCode, ProtocolError
from .lite import Codec
from .lite_wire import Features
from .messages import Announce, AnnounceInit, AnnouncePlease, ClientSetup, Parameters
from .setup import PARAM_PATH, SetupFraming, path_parameter
from .wire import Reader, encode_string, encode_varint

GOMOQT_VERSION = 0xFEEDBABE
ALPN_GOMOQT = "moq-00"
"""gomoqt's native-QUIC ALPN (kixelated peers use the same string for IETF draft-14)."""


def _normalize(path: str) -> str:
    return "/".join(part for part in path.split("/") if part)


class GomoqtCodec(Codec):
    version = GOMOQT_VERSION
    name = "gomoqt"
    subscribe_ok_has_priority = False
    accepts_subscribe_update = True
    setup_framing: ClassVar[SetupFraming] = SetupFraming.LEGACY
    features: ClassVar[Features] = Features(subscribe_update=True, one_byte_stream_type=True)
    error_codes: ClassVar[ErrorCodes] = GOMOQT_CODES

    # -- stream types: one raw byte
    def encode_stream_type(self, kind: int) -> bytes:
        if not 0 <= kind <= 255:
            raise ValueError(f"stream type {kind} does not fit in a byte")
        return bytes((kind,))

    # -- priority: a varint holding 0..255
    def _encode_priority(self, priority: int) -> bytes:
        if not 0 <= priority <= 255:
            raise ValueError(f"priority must be 0..255, got {priority}")
        return encode_varint(priority)

    def _decode_priority(self, reader: Reader) -> int:
        priority = reader.varint()
        if priority > 255:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"priority {priority} does not fit in 0..255")
        return priority

    # -- paths: absolute on the wire, relative here
    def path_to_wire(self, path: str) -> str:
        return "/" + _normalize(path)

    def path_from_wire(self, path: str) -> str:
        return _normalize(path)

    def prefix_to_wire(self, prefix: str) -> str:
        relative = _normalize(prefix)
        return f"/{relative}/" if relative else "/"

    def prefix_from_wire(self, prefix: str) -> str:
        return _normalize(prefix)

    def encode_announce_please(self, msg: AnnouncePlease) -> bytes:
        body = encode_string(self.prefix_to_wire(msg.prefix))
        return encode_varint(len(body)) + body

    def decode_announce_please(self, body: bytes) -> AnnouncePlease:
        reader = Reader(body)
        prefix = reader.string(self.limits.max_path_length)
        reader.expect_end("ANNOUNCE_PLEASE")
        return AnnouncePlease(self.prefix_from_wire(prefix))

    # -- a prefix is a directory: gomoqt lists only what lies strictly under it, never the
    #    broadcast at the prefix itself (an empty suffix would read as the path "/p/", not "/p")
    def encode_announce_init(self, msg: AnnounceInit) -> bytes:
        return super().encode_announce_init(AnnounceInit(tuple(suffix for suffix in msg.suffixes if suffix)))

    def encode_announce(self, msg: Announce) -> bytes:
        """ANNOUNCE for ``msg``, or ``b""`` (nothing to send) for an empty suffix."""
        return super().encode_announce(msg) if msg.suffix else b""

    # -- ANNOUNCE status is a varint (same bytes for 0 and 1)
    def decode_announce(self, body: bytes) -> Announce:
        reader = Reader(body)
        status = reader.varint()
        if status not in (0, 1):
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"announce status {status} is neither 0 nor 1")
        suffix = reader.string(self.limits.max_path_length)
        reader.expect_end("ANNOUNCE")
        return Announce(status == 1, suffix)

    # -- setup helpers
    def client_setup(self, path: str | None = None) -> ClientSetup:
        """What a gomoqt client offers; ``path`` goes in parameter 0x1 (native QUIC only)."""
        params: Parameters = {} if path is None else {PARAM_PATH: path_parameter(path)}
        return ClientSetup((GOMOQT_VERSION,), params)


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
    "ALPN_GOMOQT",
    "GOMOQT_VERSION",
    "AnnounceCode",
    "ErrorScope",
    "GomoqtCodec",
    "GroupCode",
    "SessionCode",
    "SubscribeCode",
    "from_gomoqt",
    "to_gomoqt",
]

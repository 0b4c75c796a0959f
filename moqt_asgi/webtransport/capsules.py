"""WebTransport-over-HTTP/3 wire details that aioquic leaves to the application.

* Application error codes: WebTransport carries a 32-bit application code
  ``n`` in RESET_STREAM / STOP_SENDING as the HTTP/3 code
  ``0x52e4a40fa8db + n + n // 0x1e`` (the range skips the reserved
  ``0x1f * N + 0x21`` code points). :func:`app_to_http` and
  :func:`http_to_app` convert; they live in :mod:`moqt_asgi.protocol.codes`
  (native QUIC uses them too) and are re-exported here.
* Capsules on the CONNECT stream (RFC 9297 framing: varint type, varint
  length, value): CLOSE_WEBTRANSPORT_SESSION (``0x2843``: u32 code and a
  UTF-8 reason of at most 1024 bytes) and DRAIN_WEBTRANSPORT_SESSION
  (``0x78ae``, empty). :class:`CapsuleParser` decodes them incrementally,
  skipping unknown types without buffering their payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.codes import MAX_APP_CODE, WT_CODE_FIRST, WT_CODE_LAST, app_to_http, http_to_app
from ..protocol.wire import NeedMore, decode_varint, encode_varint

WT_BUFFERED_STREAM_REJECTED = 0x3994BD84
"""HTTP/3 code for a stream refused because its session is unknown or has too many buffered streams."""
WT_SESSION_GONE = 0x170D7B68
"""HTTP/3 code for streams of a session that has ended."""
H3_NO_ERROR = 0x100
H3_INTERNAL_ERROR = 0x102
H3_REQUEST_CANCELLED = 0x10C

CAPSULE_CLOSE = 0x2843
CAPSULE_DRAIN = 0x78AE
MAX_REASON_BYTES = 1024
MAX_CAPSULE_SIZE = 4 + MAX_REASON_BYTES
"""Largest known capsule we buffer; bigger known capsules are a protocol error."""


def encode_capsule(capsule_type: int, value: bytes = b"") -> bytes:
    return encode_varint(capsule_type) + encode_varint(len(value)) + value


def encode_close(code: int, reason: str = "") -> bytes:
    """A CLOSE_WEBTRANSPORT_SESSION capsule; the reason is cut to 1024 bytes on a character boundary."""
    if not 0 <= code <= MAX_APP_CODE:
        raise ValueError(f"session close codes are 32-bit, got {code}")
    raw = reason.encode("utf-8")
    if len(raw) > MAX_REASON_BYTES:
        raw = raw[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return encode_capsule(CAPSULE_CLOSE, code.to_bytes(4, "big") + raw)


def encode_drain() -> bytes:
    return encode_capsule(CAPSULE_DRAIN)


class CapsuleError(Exception):
    """The peer sent a malformed capsule."""


@dataclass(frozen=True, slots=True)
class CloseCapsule:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class DrainCapsule:
    pass


Capsule = CloseCapsule | DrainCapsule


class CapsuleParser:
    """Incremental capsule decoder for the bytes of a CONNECT stream's DATA frames."""

    __slots__ = ("_buf", "_skip")

    def __init__(self) -> None:
        self._buf = b""
        self._skip = 0

    def feed(self, data: bytes) -> list[Capsule]:
        """Decode every complete capsule in ``data`` (plus what was held back)."""
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buf = self._buf + data if self._buf else data
        out: list[Capsule] = []
        pos = 0
        while pos < len(buf):
            try:
                capsule_type, at = decode_varint(buf, pos)
                length, at = decode_varint(buf, at)
            except NeedMore:
                break
            if capsule_type not in (CAPSULE_CLOSE, CAPSULE_DRAIN):
                available = len(buf) - at
                if available >= length:
                    pos = at + length
                    continue
                self._skip = length - available
                pos = len(buf)
                break
            if length > MAX_CAPSULE_SIZE:
                raise CapsuleError(f"capsule {capsule_type:#x} of {length} bytes is too large")
            if len(buf) - at < length:
                break
            value = bytes(buf[at : at + length])
            pos = at + length
            out.append(_decode_known(capsule_type, value))
        self._buf = bytes(buf[pos:])  # at most one header (16 bytes) plus a known capsule's value
        return out

    @property
    def pending(self) -> bool:
        """True if a capsule was cut off (the stream ended inside it)."""
        return bool(self._buf) or self._skip > 0


def _decode_known(capsule_type: int, value: bytes) -> Capsule:
    if capsule_type == CAPSULE_DRAIN:
        if value:
            raise CapsuleError("DRAIN_WEBTRANSPORT_SESSION capsule must be empty")
        return DrainCapsule()
    if len(value) < 4:
        raise CapsuleError("CLOSE_WEBTRANSPORT_SESSION capsule shorter than its code")
    reason = value[4:]
    if len(reason) > MAX_REASON_BYTES:
        raise CapsuleError("CLOSE_WEBTRANSPORT_SESSION reason longer than 1024 bytes")
    try:
        text = reason.decode("utf-8")
    except UnicodeDecodeError:
        raise CapsuleError("CLOSE_WEBTRANSPORT_SESSION reason is not UTF-8") from None
    return CloseCapsule(int.from_bytes(value[:4], "big"), text)


__all__ = [
    "CAPSULE_CLOSE",
    "CAPSULE_DRAIN",
    "MAX_APP_CODE",
    "WT_BUFFERED_STREAM_REJECTED",
    "WT_CODE_FIRST",
    "WT_CODE_LAST",
    "WT_SESSION_GONE",
    "Capsule",
    "CapsuleError",
    "CapsuleParser",
    "CloseCapsule",
    "DrainCapsule",
    "app_to_http",
    "encode_close",
    "encode_drain",
    "http_to_app",
]

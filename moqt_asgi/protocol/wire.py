"""QUIC variable-length integers, strings and a bounded byte reader.

Everything here is pure: bytes in, values out. Every length read from the
network is checked against a caller-supplied limit before anything is
allocated.
"""

from __future__ import annotations

from .errors import DecodeError, ErrorCode, ProtocolError

MAX_VARINT = (1 << 62) - 1


class NeedMore(Exception):
    """The buffer ends before the value it is decoding."""


def encode_varint(value: int) -> bytes:
    """Encode ``value`` as a QUIC varint in its shortest form (RFC 9000 §16)."""
    if value < 0x40:
        if value < 0:
            raise ValueError(f"varint must be non-negative, got {value}")
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value <= MAX_VARINT:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint too large: {value}")


def decode_varint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a varint at ``pos``; return ``(value, new_pos)``.

    Raises :class:`NeedMore` when ``data`` ends inside the varint.
    """
    if pos >= len(data):
        raise NeedMore
    first = data[pos]
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(data):
        raise NeedMore
    value = first & 0x3F
    for i in range(pos + 1, end):
        value = (value << 8) | data[i]
    return value, end


def encode_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return encode_varint(len(raw)) + raw


def encode_bytes(value: bytes) -> bytes:
    return encode_varint(len(value)) + value


class Reader:
    """Reads values from one complete message body.

    Running off the end is a decode error (the message was framed with a
    length, so a short body is malformed, not incomplete).
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def expect_end(self, what: str) -> None:
        if self._pos != len(self._data):
            raise DecodeError(f"{what}: {self.remaining} unexpected trailing bytes")

    def varint(self) -> int:
        try:
            value, self._pos = decode_varint(self._data, self._pos)
        except NeedMore:
            raise DecodeError("message ends inside a varint") from None
        return value

    def u8(self) -> int:
        if self._pos >= len(self._data):
            raise DecodeError("message ends before a u8")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def u16(self) -> int:
        return (self.u8() << 8) | self.u8()

    def raw(self, size: int) -> bytes:
        if size > self.remaining:
            raise DecodeError(f"length {size} runs past the end of the message")
        value = self._data[self._pos : self._pos + size]
        self._pos += size
        return value

    def bytes(self, limit: int) -> bytes:
        size = self.varint()
        if size > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"field of {size} bytes exceeds the limit of {limit}")
        return self.raw(size)

    def string(self, limit: int) -> str:
        raw = self.bytes(limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("string is not valid UTF-8") from None

    def count(self, limit: int, what: str) -> int:
        value = self.varint()
        if value > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{what} count {value} exceeds the limit of {limit}")
        return value

"""Encoded messages as parts: what precedes the length, the length prefix, the body.

A :class:`Framed` message is ``head + length(body) + body``; a :data:`Wire` is
what one stream (or datagram) carries, a sequence of them. Keeping the parts
apart lets a mutation replace exactly the length prefix of one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from moqt_asgi.protocol.wire import MAX_VARINT, decode_varint, encode_varint

LengthKind = Literal["varint", "u16", "none"]

VARINT_WIDTHS = (1, 2, 4, 8)
_WIDTH_PREFIX = {1: 0x00, 2: 0x40, 4: 0x80, 8: 0xC0}


@dataclass(frozen=True, slots=True)
class Framed:
    """One message: ``head`` (stream type, message type...), then ``body`` behind a length prefix."""

    head: bytes
    length: LengthKind
    body: bytes

    def encode(self, length: int | None = None, width: int = 0) -> bytes:
        """The bytes on the wire; ``length``/``width`` replace the true length prefix (a lie)."""
        value = len(self.body) if length is None else length
        if self.length == "none":
            prefix = b""
        elif self.length == "u16":
            prefix = (value & 0xFFFF).to_bytes(2, "big")
        else:
            prefix = varint_of_width(min(value, MAX_VARINT), width)
        return self.head + prefix + self.body


Wire = tuple[Framed, ...]


def raw(data: bytes) -> Framed:
    """Bytes with no length prefix (a stream type, a datagram)."""
    return Framed(data, "none", b"")


def to_bytes(wire: Wire) -> bytes:
    return b"".join(part.encode() for part in wire)


def varint_of_width(value: int, width: int = 0) -> bytes:
    """``value`` as a varint of ``width`` bytes (1, 2, 4, 8), or its shortest form if ``width`` is 0 or too small.

    A wider-than-needed encoding is legal QUIC (RFC 9000 §16 only recommends the
    shortest), so decoders must take it.
    """
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"varint out of range: {value}")
    shortest = len(encode_varint(value))
    size = width if width in VARINT_WIDTHS and width >= shortest else shortest
    raw_value = value | (_WIDTH_PREFIX[size] << (8 * (size - 1)))
    return raw_value.to_bytes(size, "big")


def split(data: bytes, *, heads: int = 0, length: LengthKind = "varint") -> Framed:
    """Parse one encoded message: ``heads`` leading varints (or one raw byte for ``u16``), a length, the body.

    ``data`` must be exactly one well-formed message (this splits our own
    encoder's output, not peer input).
    """
    pos = 0
    if length == "u16":
        pos = heads  # the compat setup framing: one type byte, a u16 length
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
    else:
        for _ in range(heads):
            _, pos = decode_varint(data, pos)
        if length == "none":
            return Framed(data, "none", b"")
        size, pos = decode_varint(data, pos)
    head_end = pos - (2 if length == "u16" else len(encode_varint(size)))
    body = data[pos:]
    if len(body) != size:
        raise ValueError(f"not one framed message: length {size}, body {len(body)} bytes")
    return Framed(data[:head_end], length, body)


__all__ = ["VARINT_WIDTHS", "Framed", "LengthKind", "Wire", "raw", "split", "to_bytes", "varint_of_width"]

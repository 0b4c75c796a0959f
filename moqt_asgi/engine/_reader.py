"""Buffered, bounded reads of varints and messages from a receive stream."""

from __future__ import annotations

from ..protocol.errors import DecodeError, ErrorCode, ProtocolError
from ..protocol.wire import NeedMore, decode_varint
from ..transport.base import ReceiveStream

_READ_SIZE = 256 * 1024


class StreamReader:
    """Reads framed values from a :class:`ReceiveStream`.

    It holds at most one read's worth of bytes beyond what the caller asked
    for; sizes are checked against caller limits before any body is read.
    """

    __slots__ = ("_buf", "_eof", "_pos", "stream")

    def __init__(self, stream: ReceiveStream) -> None:
        self.stream = stream
        self._buf = b""
        self._pos = 0
        self._eof = False

    async def _fill(self, need: int = 1) -> bool:
        """Read more (waiting for ``need`` bytes where the stream can); False at FIN."""
        if self._eof:
            return False
        chunk = await self.stream.read(max(_READ_SIZE, need), need)
        if not chunk:
            self._eof = True
            self._buf, self._pos = b"", 0  # nothing more will come: hold nothing
            return False
        if self._pos >= len(self._buf):
            self._buf = chunk
        else:
            self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    async def at_eof(self) -> bool:
        """True if the stream ended cleanly with nothing left to read."""
        while self._pos >= len(self._buf):
            if not await self._fill():
                return True
        return False

    async def read_varint(self) -> int:
        buf, pos = self._buf, self._pos
        if pos < len(buf):  # fast path for the common one- and two-byte varints (frame sizes, types)
            first = buf[pos]
            if first < 0x40:
                self._pos = pos + 1
                return first
            if first < 0x80 and pos + 2 <= len(buf):
                self._pos = pos + 2
                return ((first & 0x3F) << 8) | buf[pos + 1]
        while True:
            try:
                value, self._pos = decode_varint(self._buf, self._pos)
                return value
            except NeedMore:
                if not await self._fill():
                    raise DecodeError("stream ended inside a varint") from None

    async def read_exact(self, size: int) -> bytes:
        if size == 0:
            return b""
        end = self._pos + size
        if end <= len(self._buf):
            data = self._buf[self._pos : end]
            self._pos = end
            if end == len(self._buf):
                self._buf, self._pos = b"", 0  # all taken: do not keep the chunk alive
            return data
        parts = [self._buf[self._pos :]] if self._pos < len(self._buf) else []
        have = len(parts[0]) if parts else 0
        self._buf, self._pos = b"", 0
        while have < size:
            if not await self._fill(size - have):
                raise DecodeError(f"stream ended {size - have} bytes short")
            need = size - have
            take = self._buf[:need]
            self._pos = len(take)
            parts.append(take)
            have += len(take)
        if self._pos >= len(self._buf):
            self._buf, self._pos = b"", 0  # all taken: do not keep the last chunk alive
        return b"".join(parts)

    async def read_message(self, limit: int) -> bytes:
        """One size-prefixed message body."""
        size = await self.read_varint()
        if size > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"message of {size} bytes exceeds the limit of {limit}")
        return await self.read_exact(size)

    async def read_message_or_eof(self, limit: int) -> bytes | None:
        """Like :meth:`read_message`, but ``None`` at a clean FIN between messages."""
        if await self.at_eof():
            return None
        return await self.read_message(limit)

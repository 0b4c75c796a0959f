"""The transport interface the session engine runs on.

A transport gives the engine QUIC-like streams: open and accept uni and bidi
streams, write with FIN, read until FIN, reset and stop-sending with codes,
and close the whole connection with a code. Three adapters implement it:
native QUIC (aioquic), WebTransport, and an in-memory pair for tests.

Writes never block: the engine asks :meth:`Connection.backlog` how many
bytes are queued but not yet sent, and :meth:`Connection.on_writable` to
learn when that drops, and decides itself what to hand over next.

Codes cross this interface in the engine's flat code space
(:class:`~moqt_asgi.protocol.errors.ErrorCode`) both ways. Each connection
translates them for the wire with its :attr:`Connection.error_codes` (set by
the engine once the version is known), only when it resets, stops or closes.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable

from ..protocol.codes import FLAT_CODES, ErrorCodes
from ..protocol.errors import SessionClosed, StreamError


class ReceiveStream(abc.ABC):
    """The receiving half of a stream."""

    stream_id: int

    @abc.abstractmethod
    async def read(self, max_bytes: int = 65536, min_bytes: int = 1) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer's FIN is reached.

        Waits until at least ``min_bytes`` are available (fewer at FIN, or when ``min_bytes``
        exceeds half the stream's receive window: the reader then joins several reads).

        Raises :class:`StreamError` if the peer reset the stream, and
        :class:`SessionClosed` if the connection is gone.
        """

    @abc.abstractmethod
    def stop(self, code: int) -> None:
        """Ask the peer to stop sending (STOP_SENDING); further reads fail."""


class SendStream(abc.ABC):
    """The sending half of a stream."""

    stream_id: int

    @abc.abstractmethod
    def write(self, data: bytes, end: bool = False) -> None:
        """Queue ``data`` (and FIN if ``end``). Raises :class:`StreamError` if stopped."""

    @abc.abstractmethod
    def reset(self, code: int) -> None:
        """Abandon the stream (RESET_STREAM). Idempotent."""

    @abc.abstractmethod
    def backlog(self) -> int:
        """Bytes written to this stream and not yet sent."""

    @abc.abstractmethod
    def on_stopped(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(code)`` once when the peer sends STOP_SENDING (or the stream dies)."""


class BidiStream(ReceiveStream, SendStream, abc.ABC):
    """Both halves of a bidirectional stream."""


class Connection(abc.ABC):
    """One transport connection carrying one MoQ session."""

    error_codes: ErrorCodes = FLAT_CODES
    """How reset, stop-sending and close codes are numbered on the wire (settable per connection).

    Every method takes and reports our flat codes; the transport applies
    this map when a code goes out or comes in.
    """

    @abc.abstractmethod
    async def open_bi(self) -> BidiStream: ...

    @abc.abstractmethod
    async def open_uni(self) -> SendStream: ...

    @abc.abstractmethod
    async def accept_bi(self) -> BidiStream:
        """The next peer-opened bidi stream; raises :class:`SessionClosed` when closed."""

    @abc.abstractmethod
    async def accept_uni(self) -> ReceiveStream: ...

    @abc.abstractmethod
    def close(self, code: int = 0, reason: str = "") -> None:
        """Close the connection with an application code. Idempotent."""

    @abc.abstractmethod
    async def wait_closed(self) -> SessionClosed:
        """Wait until the connection is closed; returns how it closed."""

    @abc.abstractmethod
    def backlog(self) -> int:
        """Bytes queued on this connection's streams and not yet sent."""

    @abc.abstractmethod
    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, after some queued data was sent or the connection closed."""

    async def wait_writable(self) -> None:
        """Wait until some queued data has been sent (or the connection closed)."""
        if self.is_closed:
            return
        waiter = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self.on_writable(wake)
        await waiter

    @property
    @abc.abstractmethod
    def is_closed(self) -> bool: ...

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return None


__all__ = ["BidiStream", "Connection", "ReceiveStream", "SendStream", "SessionClosed", "StreamError"]

"""The message pipe a WebSocket session runs over, and an in-memory pair of them.

A :class:`MessagePipe` is a WebSocket as the session needs it: send one
binary message, receive the next message (``bytes``, ``str`` for a text
message, ``None`` once the WebSocket closed), close. The ASGI ``websocket``
scope (:mod:`.asgi`), our wsproto client (:mod:`.client`) and the in-memory
pair for tests (:func:`memory_pipe_pair`) implement it.

``send`` may wait (that is the WebSocket's backpressure: an ASGI server's
send returns once the bytes are handed to the socket's bounded buffer);
the session keeps what waits to be sent in its own bounded queues.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import deque


class MessagePipe(abc.ABC):
    """One WebSocket, message by message (see the module docstring)."""

    last_activity: float | None = None
    """``time.monotonic()`` of the last frame of any kind (pings and pongs too) the pipe received, for
    pipes that see WebSocket control frames; ``None`` if it cannot tell (an ASGI server answers pings)."""

    peer_address: tuple[str, int] | None = None

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one binary message; raises ``ConnectionError`` once the WebSocket is gone."""

    @abc.abstractmethod
    async def receive(self) -> bytes | str | None:
        """The next message: bytes (binary), str (text), or None once the WebSocket closed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the WebSocket (idempotent; never raises)."""

    async def ping(self) -> None:
        """Send a WebSocket ping, if this pipe can (the default cannot)."""
        return None


class MemoryPipe(MessagePipe):
    """One end of an in-memory WebSocket; make a pair with :func:`memory_pipe_pair`.

    ``capacity`` bounds the bytes in flight towards the peer: :meth:`send`
    waits while the peer has that much unread, as a socket's buffer would.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.peer: MemoryPipe | None = None
        self._inbox: deque[bytes | str] = deque()
        self._inbox_bytes = 0
        self._closed = False
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.sent_messages = 0
        self.last_activity = time.monotonic()

    @property
    def unread(self) -> int:
        """Bytes sent to this end and not received yet."""
        return self._inbox_bytes

    def _deliver(self, message: bytes | str) -> None:
        self._inbox.append(message)
        self._inbox_bytes += len(message)
        self.last_activity = time.monotonic()
        self._readable.set()

    async def send(self, data: bytes) -> None:
        peer = self.peer
        if self._closed or peer is None or peer._closed:
            raise ConnectionError("WebSocket closed")
        while peer.unread >= self.capacity:
            peer._space.clear()
            await peer._space.wait()
            if self._closed or peer._closed:
                raise ConnectionError("WebSocket closed")
        self.sent_messages += 1
        peer._deliver(bytes(data))

    async def send_text(self, text: str) -> None:
        """Send a text message (for tests: the session refuses them)."""
        if self.peer is not None and not self.peer._closed:
            self.peer._deliver(text)

    async def receive(self) -> bytes | str | None:
        while not self._inbox:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        message = self._inbox.popleft()
        self._inbox_bytes -= len(message)
        self._space.set()
        return message

    def _shut(self) -> None:
        self._closed = True
        self._readable.set()
        self._space.set()

    async def close(self) -> None:
        self._shut()
        if self.peer is not None:
            self.peer._shut()


def memory_pipe_pair(capacity: int = 256 * 1024) -> tuple[MemoryPipe, MemoryPipe]:
    """Two connected in-memory pipes ``(client, server)``, each holding at most ``capacity`` unread bytes."""
    client, server = MemoryPipe(capacity), MemoryPipe(capacity)
    client.peer, server.peer = server, client
    return client, server


__all__ = ["MemoryPipe", "MessagePipe", "memory_pipe_pair"]

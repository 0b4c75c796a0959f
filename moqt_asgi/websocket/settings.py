"""The windows, limits and timers of a WebSocket session."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.wire import MAX_VARINT


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """Windows, limits and timers of a WebSocket session."""

    connection_window: int = 1024 * 1024
    """Receive credit for the whole connection (bytes the peer may send ahead of the engine's reads)."""
    stream_window: int = 256 * 1024
    """Receive credit per stream."""
    max_streams: int = 100
    """Streams of each direction the peer may have open at once (the legacy framing: 1024)."""
    idle_timeout: float = 30.0
    """Seconds of silence from the peer before the session is dropped (qmux-01/02, or a pipe that sees pings)."""
    ping_interval: float = 10.0
    """Seconds between our pings (QX_PING on qmux-01/02; WebSocket pings where the pipe can send them)."""
    send_buffer: int = 4 * 1024 * 1024
    """Most bytes one stream may hold unsent (a write beyond it fails the stream: the engine bounds its own
    queue far below this, so only a writer that ignores :meth:`~.session.WebSocketConnection.backlog` meets it)."""
    close_timeout: float = 2.0
    """Seconds the closing message may take to leave before the WebSocket is closed anyway."""


DEFAULT_SETTINGS = WebSocketSettings()
LEGACY_MAX_STREAMS = 1024
"""Streams of each direction a legacy-framing peer may have open at once (it is told no limit: more is fatal)."""
UNLIMITED = MAX_VARINT


__all__ = ["DEFAULT_SETTINGS", "LEGACY_MAX_STREAMS", "UNLIMITED", "WebSocketSettings"]

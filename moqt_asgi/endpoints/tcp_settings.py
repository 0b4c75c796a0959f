"""Limits of the TCP listener (:class:`TcpSettings`) and the error its ``send`` raises once a peer is gone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..transport.settings import QuicSettings


class ClientDisconnected(OSError):
    """The peer is gone (or the connection is closing): what the application sent cannot be delivered."""


@dataclass
class TcpSettings:
    """Limits of :class:`TcpServer`: every value bounds what one peer can make the server hold.

    ``max_connections`` and ``max_connections_per_address`` (None: no limit)
    count open TCP connections; a connection over a cap is closed at once,
    before any byte is read, with a log line (at most one a second).
    ``header_timeout`` bounds the time from accepting a connection (or from
    the first byte of a later request on it) to the end of the request's
    head and body, TLS handshake included; an idle keep-alive connection is
    closed after ``keep_alive_timeout``. ``max_header_bytes`` bounds a
    request line with its headers (431 beyond), ``max_body_bytes`` a request
    body (413). A WebSocket message may be ``max_message_bytes`` long (closed
    with 1009 beyond); the server stops reading the socket while
    ``receive_buffer`` bytes of messages wait for the application. Writes
    queue at most ``write_buffer`` bytes before the application's ``send``
    waits; a peer that takes nothing for ``send_timeout`` seconds is dropped.
    A WebSocket silent for ``websocket_idle_timeout`` seconds is closed
    (1001); the server pings it after a third of that.
    """

    max_connections: int | None = 4096
    max_connections_per_address: int | None = 256
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    max_message_bytes: int = 1024 * 1024
    receive_buffer: int = 2 * 1024 * 1024
    write_buffer: int = 256 * 1024
    send_timeout: float = 30.0
    websocket_idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_address"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for no limit)")
        for name in ("header_timeout", "keep_alive_timeout", "send_timeout", "websocket_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_header_bytes", "max_body_bytes", "max_message_bytes", "receive_buffer", "write_buffer"):
            if getattr(self, name) < 1024:
                raise ValueError(f"{name} must be at least 1024 bytes")

    @classmethod
    def from_quic(cls, quic: QuicSettings, **changes: Any) -> TcpSettings:
        """Settings sharing ``quic``'s connection caps and header deadline (``changes`` override)."""
        values: dict[str, Any] = dict(max_connections=quic.max_connections,
                                      max_connections_per_address=quic.max_connections_per_address,
                                      header_timeout=quic.header_timeout)
        values.update(changes)
        return cls(**values)


__all__ = ["ClientDisconnected", "TcpSettings"]

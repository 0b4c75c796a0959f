"""QUIC settings shared by servers and clients: receive windows, connection caps, timeouts."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aioquic.quic.configuration import QuicConfiguration

from ..protocol.limits import Limits
from .admission import AdmissionPolicy

logger = logging.getLogger("moqt_asgi.quic")


BACKENDS = ("aioquic", "qh3", "auto")
"""QUIC stacks: aioquic, qh3 (``moqt-asgi[fast]``), or qh3 when it is installed and passes our checks."""


def qh3_available() -> bool:
    """Whether qh3 is installed and has every name :mod:`~.qh3_connection` relies on."""
    if importlib.util.find_spec("qh3") is None:
        return False
    from .qh3_connection import IncompatibleQh3, check_compatible

    try:
        check_compatible()
    except IncompatibleQh3 as exc:
        logger.warning("not using qh3: %s", exc)
        return False
    return True


MIN_STREAM_WINDOW = 128 * 1024
"""Smallest ``stream_receive_window``: an HTTP/3 HEADERS frame (up to 64 KiB) must fit in it."""
SMALLEST_DATAGRAM = 1200
"""RFC 9000 14: every QUIC path carries 1200-byte UDP payloads."""
LARGEST_DATAGRAM = 65527
"""RFC 9000 18.2: the largest ``max_udp_payload_size``."""


@dataclass
class QuicSettings:
    """QUIC knobs shared by server and client.

    Receive credit: the peer may send ``stream_receive_window`` bytes beyond
    what the application has read on a stream, and
    ``connection_receive_window`` bytes beyond what it has read on the whole
    connection; the windows never grow (see
    :mod:`moqt_asgi.transport.aioquic_connection`). A stream nobody reads
    blocks its sender after one window. Memory held for a connection's
    received data (reordering gaps included) stays under
    ``connection_receive_window``, plus what readers waiting for a frame ask for.

    Server admission (:mod:`moqt_asgi.transport.admission`): at most
    ``max_connections`` connections, ``max_connections_per_address`` from one
    IP address (None: no limit); a client over a limit is refused at its first
    packet with CONNECTION_REFUSED. ``retry`` makes clients prove their
    address with a Retry round trip first: always (True), never (False), or
    only while ``retry_threshold`` handshakes are pending or more than half of
    ``max_connections`` are in use ("auto"). A connection whose handshake has
    not completed ``handshake_timeout`` seconds after its first packet is
    dropped (at most ``idle_timeout``).

    HTTP/3 (the server's ``h3`` ALPN): at most ``max_webtransport_sessions``
    WebTransport sessions per connection (a CONNECT beyond is answered 429),
    and a request stream whose HEADERS frame is not complete after
    ``header_timeout`` seconds is reset.

    ``backend`` picks the QUIC stack of native QUIC: ``"aioquic"`` (the
    default), ``"qh3"`` (faster, see ``docs/quic-backends.md``; raises if it
    is not installed) or ``"auto"`` (qh3 when installed and compatible). A
    server runs on qh3 only without WebTransport (HTTP/3 stays on aioquic:
    ``"qh3"`` with WebTransport refuses to start, ``"auto"`` falls back).
    On qh3 the windows follow what was delivered and never grow, but credit
    cannot be held back for unread bytes: a stream whose unread bytes take
    the connection past ``connection_receive_window`` is stopped (TOO_LARGE)
    instead of its sender being blocked. Environment: ``MOQT_QUIC_BACKEND``.
    """

    idle_timeout: float = 30.0
    max_datagram_frame_size: int | None = 65536
    stream_receive_window: int = 1024 * 1024
    """Bytes a peer may send on one stream beyond what the application read (MAX_STREAM_DATA = read + this)."""
    connection_receive_window: int = 16 * 1024 * 1024
    """Bytes a peer may send on the connection beyond what the application read (MAX_DATA = read + this)."""
    max_streams_bidi: int = 1000
    """Concurrent bidirectional streams the peer may open (MoQ: one per subscription, announce, fetch)."""
    max_streams_uni: int = 1000
    """Concurrent unidirectional streams the peer may open (MoQ: one per group in flight)."""
    allow_0rtt: bool = False
    """Server: issue tickets that permit 0-RTT early data, accept it, and start a native session on
    it before the handshake completes. Client: when the stored ticket permits it, write the session
    start (the SETUP) as early data. Either way tickets still give 1-RTT resumption. A server
    forgets a ticket once presented, so a replayed first flight is not accepted again by the
    servers sharing that ticket store (servers with separate stores would each accept it once).
    On HTTP/3 a request in early data is answered 425 (Too Early) unless its method is safe
    (GET, HEAD, OPTIONS); safe ones reach the application with an ``early-data: 1`` header."""
    max_connections: int | None = 4096
    """Server: connections at once (None: no limit)."""
    max_connections_per_address: int | None = 256
    """Server: connections at once from one source IP address (None: no limit)."""
    retry: bool | Literal["auto"] = "auto"
    """Server: validate client addresses with a Retry packet: always, never, or under pressure ("auto")."""
    retry_threshold: int = 100
    """Server, ``retry="auto"``: pending handshakes from which new clients get a Retry."""
    handshake_timeout: float = 10.0
    """Server: seconds a connection has to complete its handshake (capped at ``idle_timeout``)."""
    header_timeout: float = 10.0
    """Server, HTTP/3: seconds a request stream has to deliver its complete HEADERS frame."""
    max_webtransport_sessions: int = 16
    """Server, HTTP/3: WebTransport sessions at once on one connection."""
    backend: Literal["aioquic", "qh3", "auto"] = "aioquic"
    """QUIC stack of native QUIC (see above)."""
    max_datagram_size: int | None = None
    """Largest UDP payload this endpoint sends (``None``: the stack's default, 1200 bytes on aioquic, 1280 on
    qh3). aioquic does no path MTU discovery, so a larger value is for paths known to carry it (loopback, a
    data-centre network: 1452 fits a 1500-byte Ethernet MTU over IPv6); a datagram larger than the path
    carries is lost, every time. A qh3 client probes the path (RFC 8899) up to this size."""

    def __post_init__(self) -> None:
        if self.max_streams_bidi < 1 or self.max_streams_uni < 1:
            raise ValueError("max_streams_bidi and max_streams_uni must be at least 1")
        if self.stream_receive_window < MIN_STREAM_WINDOW:
            raise ValueError(f"stream_receive_window must be at least {MIN_STREAM_WINDOW} bytes")
        if self.connection_receive_window < self.stream_receive_window:
            raise ValueError("connection_receive_window must be at least stream_receive_window")
        if self.handshake_timeout <= 0 or self.header_timeout <= 0:
            raise ValueError("handshake_timeout and header_timeout must be positive")
        if self.max_webtransport_sessions < 1:
            raise ValueError("max_webtransport_sessions must be at least 1")
        size = self.max_datagram_size
        if size is not None and not SMALLEST_DATAGRAM <= size <= LARGEST_DATAGRAM:
            raise ValueError(f"max_datagram_size must be between {SMALLEST_DATAGRAM} and {LARGEST_DATAGRAM}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        self.admission_policy()  # checks the connection limits and retry

    def resolved_backend(self) -> Literal["aioquic", "qh3"]:
        """The stack to use: ``backend``, with ``"auto"`` resolved (qh3 if installed and compatible).

        ``"qh3"`` raises :class:`~.qh3_connection.IncompatibleQh3` (a ``RuntimeError``) when qh3 is
        missing or moved a name we rely on.
        """
        if self.backend == "aioquic":
            return "aioquic"
        if self.backend == "auto":
            return "qh3" if qh3_available() else "aioquic"
        if importlib.util.find_spec("qh3") is None:
            raise RuntimeError("QuicSettings(backend='qh3') needs qh3: pip install 'moqt-asgi[fast]'")
        from .qh3_connection import check_compatible

        check_compatible()
        return "qh3"

    @property
    def max_streams(self) -> tuple[int, int]:
        """``(bidi, uni)``, as :class:`~moqt_asgi.transport.quic.QuicProtocol` takes them."""
        return self.max_streams_bidi, self.max_streams_uni

    @property
    def max_data(self) -> int:
        """The connection's initial MAX_DATA: ``connection_receive_window``."""
        return self.connection_receive_window

    @property
    def max_stream_data(self) -> int:
        """A stream's initial MAX_STREAM_DATA: ``stream_receive_window``."""
        return self.stream_receive_window

    @property
    def effective_handshake_timeout(self) -> float:
        return min(self.handshake_timeout, self.idle_timeout)

    def admission_policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(max_connections=self.max_connections,
                               max_connections_per_address=self.max_connections_per_address,
                               retry=self.retry, retry_threshold=self.retry_threshold)

    def configuration(self, *, is_client: bool, alpn: list[str]) -> QuicConfiguration:
        configuration = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=alpn,
            idle_timeout=self.idle_timeout,
            max_datagram_frame_size=self.max_datagram_frame_size,
            max_data=self.connection_receive_window,
            max_stream_data=self.stream_receive_window,
        )
        if self.max_datagram_size is not None:
            configuration.max_datagram_size = self.max_datagram_size
        return configuration

    def check_limits(self, limits: Limits, log: logging.Logger = logger) -> None:
        """Warn when the engine's unread-bytes backstop would stop streams before flow control does."""
        if limits.max_stream_buffer < 2 * self.stream_receive_window:
            log.warning("Limits.max_stream_buffer (%d) is under twice stream_receive_window (%d): a stream whose "
                        "reader waits for a large frame may be stopped with TOO_LARGE before flow control "
                        "slows its sender", limits.max_stream_buffer, self.stream_receive_window)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, prefix: str = "MOQT_") -> QuicSettings:
        """Settings from ``MOQT_<FIELD>`` environment variables (e.g. ``MOQT_MAX_CONNECTIONS=500``).

        Integers and floats as written; ``none`` for no limit; ``MOQT_RETRY``
        is ``auto``, ``1``/``true`` or ``0``/``false``; ``MOQT_QUIC_BACKEND``
        is ``aioquic``, ``qh3`` or ``auto``. Unset fields keep
        their defaults.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = prefix + ("QUIC_BACKEND" if field.name == "backend" else field.name.upper())
            raw = environ.get(name)
            if raw is None:
                continue
            default = getattr(cls, field.name)
            text = raw.strip().lower()
            try:
                if field.name == "backend":
                    if text not in BACKENDS:
                        raise ValueError(text)
                    values[field.name] = text
                elif field.name == "retry":
                    values[field.name] = "auto" if text == "auto" else text in ("1", "true", "yes", "on")
                elif text in ("none", "") and (default is None or field.name.startswith("max_connections")):
                    values[field.name] = None
                elif isinstance(default, bool):
                    values[field.name] = text in ("1", "true", "yes", "on")
                elif isinstance(default, float):
                    values[field.name] = float(text)
                else:
                    values[field.name] = int(text)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid value") from None
        return cls(**values)


__all__ = ["BACKENDS", "LARGEST_DATAGRAM", "MIN_STREAM_WINDOW", "SMALLEST_DATAGRAM", "QuicSettings", "qh3_available"]

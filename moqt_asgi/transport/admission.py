"""Which new QUIC connections a server takes: connection caps and address validation (Retry).

A QUIC server creates a connection, and pays for its TLS handshake, for any
Initial packet of 1200 bytes or more, from any source address: one spoofed
datagram costs the server about a millisecond of CPU and 80 KiB of state for
the whole idle timeout. :class:`Admission` looks at the datagram first, before
any connection (or its crypto) exists:

* over ``max_connections`` in all, or ``max_connections_per_address`` from
  that source IP, the Initial is answered with a stateless CONNECTION_CLOSE
  carrying ``CONNECTION_REFUSED`` (RFC 9000 section 10.2.3 lets a server do
  this from the client's Initial keys without creating state). The client
  fails at once instead of waiting out its handshake timeout, and the answer
  is smaller than the client's padded Initial, so it amplifies nothing.
  Refusals are rate limited (:data:`REFUSALS_PER_SECOND`; beyond that the
  Initial is dropped silently) and logged once per second at most, with the
  count of what was refused since the last line;
* with ``retry=True`` every Initial without a token gets a Retry packet
  (RFC 9000 section 8.1.2): the client proves it owns its address with one
  more round trip, so spoofed Initials never create state. ``retry="auto"``
  does this only while the server is under pressure: half-open connections
  (handshake not done) at least ``retry_threshold``, or more than half of
  ``max_connections`` in use.

Both the native server (:class:`GuardedQuicServer`, a subclass of aioquic's
``QuicServer``) and the Hypercorn integration use it; admitted connections
report their handshake and their end through the
:class:`~.aioquic_connection.ConnectionWatcher` protocol, so the counts follow
the connections without any polling.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from aioquic.asyncio.server import QuicServer as AioquicServer
from aioquic.quic import connection as aioquic_connection
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler

from .aioquic_connection import (
    CreditedQuicConnection,
    has_connection,
    parse_header,
    protocol_quic,
    server_protocol,
    server_transport,
    use_retry_tokens,
)
from .udp import grow_socket_buffers, read_in_batches

logger = logging.getLogger("moqt_asgi.admission")

Retry = bool | Literal["auto"]
Verdict = Literal["accept", "retry", "refuse", "drop"]
REFUSALS_PER_SECOND = 200
"""Stateless refusals sent per second at most; Initials refused beyond that are dropped silently."""


@dataclass(frozen=True)
class AdmissionPolicy:
    """The limits :class:`Admission` applies (from :class:`~moqt_asgi.endpoints.QuicSettings`)."""

    max_connections: int | None = None
    max_connections_per_address: int | None = None
    retry: Retry = False
    retry_threshold: int = 100

    def __post_init__(self) -> None:
        if self.retry not in (True, False, "auto"):
            raise ValueError(f"retry must be True, False or 'auto', not {self.retry!r}")
        for name in ("max_connections", "max_connections_per_address"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None: no limit)")


def encode_refusal(header: QuicHeader, error_code: int = QuicErrorCode.CONNECTION_REFUSED, reason: str = "") -> bytes:
    """A server Initial packet closing the connection ``header``'s client asked for, built without any state.

    The Initial keys come from the client's Destination Connection ID, as
    for any first server packet. ``reason`` (short) is the phrase the client
    reports.
    """
    phrase = reason.encode()[:64]
    assert header.version is not None
    crypto = CryptoPair()
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    builder = QuicPacketBuilder(host_cid=header.destination_cid, is_client=False, peer_cid=header.source_cid,
                                version=header.version, max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE)
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE,
                              capacity=aioquic_connection.TRANSPORT_CLOSE_FRAME_CAPACITY + len(phrase))
    buf.push_uint_var(error_code)
    buf.push_uint_var(QuicFrameType.PADDING)  # the frame that caused it: none
    buf.push_uint_var(len(phrase))
    buf.push_bytes(phrase)
    datagrams, _ = builder.flush()
    return datagrams[0]


def parse_initial(data: bytes, connection_id_length: int) -> QuicHeader | None:
    """The long header of ``data`` if it is an Initial that could open a connection (1200 bytes or more)."""
    if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
        return None
    try:
        header = parse_header(data, connection_id_length)
    except ValueError:
        return None
    if header.packet_type != QuicPacketType.INITIAL or header.version is None:
        return None
    return header


class Admission:
    """Counts a server's connections and decides on each Initial that would open a new one."""

    def __init__(self, policy: AdmissionPolicy, *, log: logging.Logger = logger,
                 clock: Any = time.monotonic) -> None:
        self.policy = policy
        self.log = log
        self._clock = clock
        self.retry_tokens = QuicRetryTokenHandler()
        self._addresses: dict[int, str] = {}  # id(connection) -> source IP
        self._half_open: set[int] = set()
        self.by_address: Counter[str] = Counter()
        self.refused = 0
        """Initials refused (answered or dropped) since the server started."""
        self.retries = 0
        """Retry packets sent since the server started."""
        self.last_refusal = ""
        """The reason phrase of the latest refusal (what :meth:`refusal_packet` tells the client)."""
        self._unlogged = 0
        self._last_log = -1.0
        self._tokens = float(REFUSALS_PER_SECOND)
        self._tokens_at = clock()

    @property
    def connections(self) -> int:
        """Admitted connections that have not ended yet."""
        return len(self._addresses)

    @property
    def half_open(self) -> int:
        """Admitted connections whose handshake has not completed."""
        return len(self._half_open)

    def under_pressure(self) -> bool:
        """Whether ``retry="auto"`` asks new clients to validate their address."""
        policy = self.policy
        if self.half_open >= policy.retry_threshold:
            return True
        return policy.max_connections is not None and self.connections * 2 > policy.max_connections

    def decide(self, header: QuicHeader, addr: Any) -> Verdict:
        """What to do with an Initial that would open a connection from ``addr``.

        ``"retry"``: send :meth:`retry_packet` instead; ``"refuse"``: send
        :meth:`refusal_packet`; ``"drop"``: refused, nothing sent (refusals
        are rate limited); ``"accept"``: create the connection, then call
        :meth:`admitted`.
        """
        policy = self.policy
        host = str(addr[0])
        if policy.max_connections is not None and self.connections >= policy.max_connections:
            self.last_refusal = "server busy: too many connections"
            return self._refuse(host, "the server has reached max_connections", policy.max_connections)
        if not header.token and (policy.retry is True or (policy.retry == "auto" and self.under_pressure())):
            self.retries += 1
            return "retry"
        limit = policy.max_connections_per_address
        if limit is not None and self.by_address[host] >= limit:
            self.last_refusal = "too many connections from this address"
            return self._refuse(host, "this address has reached max_connections_per_address", limit)
        return "accept"

    def _refuse(self, host: str, why: str, limit: int) -> Verdict:
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        if now - self._last_log >= 1.0:
            self.log.warning("refusing new QUIC connections: %s (%d); %d refused since the last report (latest "
                             "from %s)", why, limit, self._unlogged, host)
            self._last_log = now
            self._unlogged = 0
        self._tokens = min(float(REFUSALS_PER_SECOND), self._tokens + (now - self._tokens_at) * REFUSALS_PER_SECOND)
        self._tokens_at = now
        if self._tokens < 1.0:
            return "drop"
        self._tokens -= 1.0
        return "refuse"

    def retry_packet(self, header: QuicHeader, addr: Any, now: float) -> bytes:
        """A Retry for ``header``'s Initial; the client comes back with a token bound to ``addr``."""
        assert header.version is not None
        source_cid = os.urandom(8)
        token = self.retry_tokens.create_token(address=addr, original_destination_connection_id=header.destination_cid,
                                               retry_source_connection_id=source_cid, now=now)
        return encode_quic_retry(version=header.version, source_cid=source_cid, destination_cid=header.source_cid,
                                 original_destination_cid=header.destination_cid, retry_token=token)

    def refusal_packet(self, header: QuicHeader) -> bytes:
        """CONNECTION_CLOSE (CONNECTION_REFUSED) for the Initial just refused, with why."""
        return encode_refusal(header, reason=self.last_refusal)

    def validate(self, header: QuicHeader, addr: Any, now: float) -> bytes | None:
        """The original Destination Connection ID ``header``'s token vouches for, or None if it is not valid."""
        try:
            return self.retry_tokens.validate_token(address=addr, destination_cid=header.destination_cid,
                                                    token=header.token, now=now)
        except ValueError:
            return None

    # -- counting admitted connections
    def admitted(self, connection: Any, addr: Any) -> None:
        """``connection`` was created for ``addr``: count it until it ends."""
        key = id(connection)
        if key in self._addresses:
            return
        host = str(addr[0])
        self._addresses[key] = host
        self.by_address[host] += 1
        self._half_open.add(key)
        connection.watcher = self

    def handshake_done(self, connection: Any) -> None:
        self._half_open.discard(id(connection))

    def terminated(self, connection: Any) -> None:
        key = id(connection)
        self._half_open.discard(key)
        host = self._addresses.pop(key, None)
        if host is not None:
            self.by_address[host] -= 1
            if self.by_address[host] <= 0:
                del self.by_address[host]

    def clear(self) -> None:
        self._addresses.clear()
        self._half_open.clear()
        self.by_address.clear()


class AdmissionGuard:
    """The admission part of a QUIC server class: caps and Retry before any connection exists.

    Mixed in before a stack's ``QuicServer`` (:class:`GuardedQuicServer`
    for aioquic; qh3's in :mod:`~.qh3_connection`), whose ``_protocols``,
    ``_retry`` and ``_transport`` the fence accessors reach. Everything else
    (version negotiation, routing datagrams by connection ID, token
    validation) is the stack's.
    """

    admission: Admission

    def _init_guard(self, admission: Admission, configuration: Any) -> None:
        self.admission = admission
        use_retry_tokens(self, None)  # set per datagram
        self._connection_id_length = int(configuration.connection_id_length)
        self._loop_time = asyncio.get_running_loop().time

    def _stack_datagram_received(self, data: bytes, addr: Any) -> None:
        """The stack server's own ``datagram_received``."""
        raise NotImplementedError

    def _retry_tokens(self, header: QuicHeader, now: float) -> Any:
        """The token handler the stack checks ``header``'s token with."""
        return self.admission.retry_tokens

    def _watchable(self, quic: Any) -> bool:
        """Whether ``quic`` reports its handshake and its end to a watcher."""
        return isinstance(quic, CreditedQuicConnection)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        assert isinstance(data, bytes)
        header = parse_initial(data, self._connection_id_length)
        if header is None or has_connection(self, header.destination_cid):
            self._stack_datagram_received(data, addr)
            return
        admission = self.admission
        verdict = admission.decide(header, addr)
        transport = server_transport(self)
        if verdict == "retry":
            if transport is not None:
                transport.sendto(admission.retry_packet(header, addr, self._loop_time()), addr)
            return
        if verdict != "accept":
            if verdict == "refuse" and transport is not None:
                transport.sendto(admission.refusal_packet(header), addr)
            return
        # a token is checked by the stack against our token handler; without one, no Retry happened
        use_retry_tokens(self, self._retry_tokens(header, self._loop_time())
                         if header.token and admission.policy.retry else None)
        try:
            self._stack_datagram_received(data, addr)
        finally:
            use_retry_tokens(self, None)
        protocol = server_protocol(self, header.destination_cid)
        if protocol is not None:
            quic = protocol_quic(protocol)
            if self._watchable(quic):
                admission.admitted(quic, addr)


class GuardedQuicServer(AdmissionGuard, AioquicServer):
    """aioquic's ``QuicServer`` behind an :class:`Admission` (see :class:`AdmissionGuard`).

    Connections are made by aioquic and adopted by the protocol
    (``create_protocol``) as :class:`~.aioquic_connection.CreditedQuicConnection`,
    which is what reports their handshake and their end to the admission.
    """

    def __init__(self, *, admission: Admission, configuration: QuicConfiguration, **kwargs: Any) -> None:
        AioquicServer.__init__(self, configuration=configuration, **kwargs)
        self._init_guard(admission, configuration)

    def _stack_datagram_received(self, data: bytes, addr: Any) -> None:
        AioquicServer.datagram_received(self, data, addr)

    def close(self) -> None:
        AioquicServer.close(self)
        self.admission.clear()


async def serve_guarded(host: str, port: int, *, admission: Admission, sock: Any = None,
                        server_class: Any = GuardedQuicServer, **arguments: Any) -> Any:
    """Like aioquic's ``serve()``, with :class:`GuardedQuicServer` (or ``server_class``); on ``sock`` when given.

    The socket's buffers are raised (:func:`~.udp.grow_socket_buffers`): every connection shares them; and it
    reads up to :data:`~.udp.READ_BATCH` datagrams each time it is readable (:func:`~.udp.read_in_batches`).
    """
    loop = asyncio.get_running_loop()
    if sock is not None:
        transport, server = await loop.create_datagram_endpoint(
            lambda: server_class(admission=admission, **arguments), sock=sock)
    else:
        transport, server = await loop.create_datagram_endpoint(
            lambda: server_class(admission=admission, **arguments), local_addr=(host, port))
    grow_socket_buffers(transport)
    read_in_batches(transport)  # every connection's datagrams arrive on this socket: not one per loop step
    assert isinstance(server, server_class)
    return server


__all__ = ["Admission", "AdmissionGuard", "AdmissionPolicy", "GuardedQuicServer", "encode_refusal", "parse_initial",
           "serve_guarded"]

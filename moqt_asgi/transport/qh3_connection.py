"""qh3 as a second QUIC stack, and every qh3 name the project relies on.

qh3 2.1 (an aioquic fork) keeps aioquic's module layout and its asyncio
layer in Python, but its connection is a thin facade over a Rust packet
core (``qh3._hazmat.QuicConnectionCore``): packet building, encryption,
ACKs, recovery, streams and flow control all live there, out of reach of a
subclass. What differs from aioquic for us (measured, see
``docs/quic-backends.md``):

* **Receive credit follows delivery, not arrival.** The core announces
  ``delivered + window`` (``max_data`` / ``max_stream_data`` of the
  configuration) and does not double it: one-byte STREAM frames at the
  edge of the window earn no credit and allocate nothing. So qh3's own
  reassembly buffers are bounded like aioquic's are under
  :class:`~.aioquic_connection.CreditedQuicConnection`.
* **Credit cannot be held back.** Delivered bytes count as consumed at
  once: qh3 has no call to withhold credit for bytes an application buffer
  has not read. Our policy (a stream nobody reads blocks its sender after
  one window) is therefore enforced differently: :class:`HeldCredit` counts
  the bytes the engine's buffers hold unread, and a stream that brings the
  connection's unread bytes past the connection window is stopped
  (STOP_SENDING, TOO_LARGE). The connection's memory bound is the same; a
  peer that outruns its reader loses a stream instead of being slowed.
* **Stream limits are fixed in the core's constructor** (100 bidirectional,
  103 unidirectional): :class:`Qh3Connection` passes ours instead.

Here: :class:`Qh3Connection` (stream limits, :class:`HeldCredit`, the
server's handshake deadline and admission watcher, and a send loop that
survives the core running out of packet room), :class:`Qh3Protocol` (our
:class:`~.quic.MoqProtocolMixin` on qh3's protocol), :class:`GuardedQh3Server`
(qh3's server behind our :class:`~.admission.Admission`), and the
configurations and ``connect()``. Native QUIC only: HTTP/3 and WebTransport
are written against aioquic's ``H3Connection`` and stay there.

Every qh3 name used is reached from this module only and listed in
:func:`check_compatible`, which raises :class:`IncompatibleQh3` naming
whatever moved. The module needs qh3 installed: import it only after
:func:`moqt_asgi.transport.settings.qh3_available` said so.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from qh3 import _hazmat
from qh3.asyncio import _transport as _qh3_transport
from qh3.asyncio import client as _qh3_client
from qh3.asyncio import protocol as _qh3_protocol
from qh3.asyncio import server as _qh3_server
from qh3.asyncio.protocol import QuicConnectionProtocol as _Qh3Protocol
from qh3.quic import configuration as _qh3_configuration
from qh3.quic import connection as _qh3_connection
from qh3.quic import events as _qh3_events

from ..protocol.errors import ErrorCode, MoQError
from ..protocol.limits import DEFAULT_LIMITS, Limits
from .admission import Admission, AdmissionGuard
from .aioquic_connection import ConnectionWatcher
from .quic import MoqProtocolMixin, QuicBackend, QuicTransport
from .udp import grow_socket_buffers

logger = logging.getLogger("moqt_asgi.quic")

SUPPORTED_QH3 = "2.1."
CORE_ARGUMENTS = 28
"""Positional arguments qh3's ``QuicConnection._create_core`` passes to ``QuicConnectionCore``."""
CAPACITY_EXHAUSTED = "packet builder capacity exhausted"
"""What qh3 2.1's core raises when its next packet does not fit (see :meth:`Qh3Connection.datagrams_to_send`)."""
LOCAL_MAX_STREAMS = (21, 22)
"""Their positions of ``local_max_streams_bidi`` and ``local_max_streams_uni``."""


class IncompatibleQh3(RuntimeError):
    """qh3 is missing, or it moved a name the project relies on."""


def qh3_version() -> str:
    try:
        from importlib import metadata

        return metadata.version("qh3")
    except Exception:
        return "unknown"


_checked = False


def check_compatible() -> None:
    """Raise :class:`IncompatibleQh3` unless qh3 is installed with every name we rely on where we expect it."""
    global _checked
    client, protocol, server = _qh3_client, _qh3_protocol, _qh3_server
    configuration, connection, events = _qh3_configuration, _qh3_connection, _qh3_events
    missing: list[str] = []
    for owner, names in (
        (connection.QuicConnection, ("_create_core", "_log_datagram", "_log_packets", "get_send_buffer_size",
                                     "get_next_available_stream_id", "send_stream_data", "reset_stream",
                                     "stop_stream", "close", "next_event", "get_peercert", "tls", "configuration")),
        (protocol.QuicConnectionProtocol, ("transmit", "close", "quic_event_received", "wait_connected")),
        (events, ("StreamDataReceived", "StreamReset", "StopSendingReceived", "ConnectionTerminated",
                  "HandshakeCompleted", "ProtocolNegotiated")),
        (client, ("connect",)), (server, ("QuicServer",)),
        (_qh3_transport, ("create_optimized_datagram_transport",)), (configuration, ("QuicConfiguration",)),
        (_hazmat, ("QuicConnectionCore",)), (connection, ("QuicConnectionCore", "QuicConnectionError")),
        (_hazmat.QuicConnectionCore, ("poll_transmit",)),
    ):
        missing += [f"{getattr(owner, '__name__', owner)}.{name}" for name in names if not hasattr(owner, name)]
    probe = connection.QuicConnection(configuration=configuration.QuicConfiguration(is_client=True))
    missing += [f"QuicConnection().{name}" for name in ("_remote_addr", "_core", "_state", "_close_event", "_quic_logger")
                if not hasattr(probe, name)]
    assigned = set(protocol.QuicConnectionProtocol.__init__.__code__.co_names)
    missing += [f"QuicConnectionProtocol.{name}" for name in ("_quic", "_transport", "_connected_waiter")
                if name not in assigned]
    assigned = set(server.QuicServer.__init__.__code__.co_names)
    missing += [f"QuicServer.{name}" for name in ("_protocols", "_retry", "_transport") if name not in assigned]
    missing += [f"QuicServer.{name}" for name in ("datagram_received", "close") if not hasattr(server.QuicServer, name)]
    if not hasattr(probe, "_events") or not hasattr(probe, "_handshake_complete"):
        missing.append("QuicConnection()._events/_handshake_complete")
    try:
        parameters = list(inspect.signature(_hazmat.QuicConnectionCore).parameters)
    except (TypeError, ValueError):  # a native class may not tell its signature: check the call instead
        parameters = []
    if parameters and (len(parameters) != CORE_ARGUMENTS
                       or [parameters[i] for i in LOCAL_MAX_STREAMS] != ["local_max_streams_bidi",
                                                                        "local_max_streams_uni"]):
        missing.append("QuicConnectionCore(..., local_max_streams_bidi, local_max_streams_uni, ...)")
    if missing:
        raise IncompatibleQh3(f"qh3 {qh3_version()} moved names moqt_asgi relies on (written for qh3 "
                              f"{SUPPORTED_QH3}*): missing {', '.join(missing)}")
    _checked = True
    quiet_peer_closes()


class _PeerCloseFilter(logging.Filter):
    """Drops qh3's WARNING for every connection its peer closed (a server sees one per viewer that leaves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(PEER_CLOSE_MESSAGE))


PEER_CLOSE_MESSAGE = "Native peer close"
"""How qh3 2.1 begins the warning it logs (logger ``quic``) whenever a peer closes a connection."""
_PEER_CLOSE_FILTER = _PeerCloseFilter()


def quiet_peer_closes() -> None:
    """Silence qh3's per-close warning; :class:`~.quic.QuicTransport` logs the close itself at DEBUG."""
    qh3_logger = logging.getLogger("quic")
    if _PEER_CLOSE_FILTER not in qh3_logger.filters:
        qh3_logger.addFilter(_PEER_CLOSE_FILTER)


def _ensure_checked() -> None:
    if not _checked:
        check_compatible()


# -- receive credit: count what the engine's buffers hold unread, stop a stream past the windows
class HeldCredit:
    """The unread bytes of one connection's stream buffers, against the connection window.

    qh3 grants credit as it delivers, so nothing here slows the peer: a
    stream whose bytes take the connection's unread bytes past
    ``connection_window`` is handed to ``on_overrun`` (the transport stops
    it), after the current event. One stream may hold more than
    ``stream_window`` (a large group queued before it is read): where
    aioquic would block its sender there, qh3 keeps delivering, and only
    the connection's total is bounded (per stream, the buffer's own limit,
    ``Limits.max_stream_buffer``, still applies).
    """

    def __init__(self, stream_window: int, connection_window: int) -> None:
        self.stream_window = stream_window
        self.connection_window = connection_window
        self._held: dict[int, int] = {}
        self.total = 0
        self.on_overrun: Callable[[int], None] | None = None
        self.overruns = 0
        """Streams stopped because their unread bytes passed a window."""

    def hold(self, stream_id: int, size: int) -> None:
        if size <= 0:
            return
        self._held[stream_id] = self._held.get(stream_id, 0) + size
        self.total += size
        if self.total > self.connection_window and self.on_overrun is not None:
            self.overruns += 1
            asyncio.get_running_loop().call_soon(self.on_overrun, stream_id)

    def release(self, stream_id: int, size: int) -> None:
        held = self._held.get(stream_id)
        if held is None or size <= 0:
            return
        size = min(size, held)
        if held == size:
            del self._held[stream_id]
        else:
            self._held[stream_id] = held - size
        self.total -= size

    def held(self, stream_id: int | None = None) -> int:
        return self.total if stream_id is None else self._held.get(stream_id, 0)


class Qh3StreamCredit:
    """A stream's view of :class:`HeldCredit` (the engine's buffer :class:`~.buffers.Credit`)."""

    __slots__ = ("credit", "stream_id")

    def __init__(self, credit: HeldCredit, stream_id: int) -> None:
        self.credit = credit
        self.stream_id = stream_id

    @property
    def window(self) -> int:
        return self.credit.stream_window

    def hold(self, size: int) -> None:
        self.credit.hold(self.stream_id, size)

    def release(self, size: int) -> None:
        self.credit.release(self.stream_id, size)


# -- the connection: our stream limits, our held-bytes count
class Qh3Connection(_qh3_connection.QuicConnection):
    """qh3's ``QuicConnection`` with our stream limits and a :class:`HeldCredit`."""

    stream_limits: tuple[int, int] | None
    held_credit: HeldCredit
    watcher: ConnectionWatcher | None
    """Told when the handshake completes and when the connection ends (the server's admission)."""
    handshake_timeout: float | None
    """Server: seconds from the first datagram for the handshake to complete (None: only the idle timeout)."""
    _handshake_deadline: float | None
    _silenced: bool

    @classmethod
    def adopt(cls, quic: _qh3_connection.QuicConnection) -> Qh3Connection:
        """Make the fresh connection qh3's ``connect()`` built one of ours (before it is started)."""
        _ensure_checked()
        if type(quic) is not _qh3_connection.QuicConnection:
            raise TypeError(f"cannot adopt a {type(quic).__name__}: only qh3's own QuicConnection")
        if quic._core is not None:
            raise ValueError("the connection has already started: adopt it before connect()")
        quic.__class__ = cls
        assert isinstance(quic, cls)
        configuration = quic.configuration
        quic.stream_limits = None
        quic.held_credit = HeldCredit(int(configuration.max_stream_data), int(configuration.max_data))
        quic.watcher = None
        quic.handshake_timeout = None
        quic._handshake_deadline = None
        quic._silenced = False
        return quic

    # -- events: the watcher
    def next_event(self) -> Any:
        event = super().next_event()
        if event is not None and self.watcher is not None:
            kind = type(event)
            if kind is _qh3_events.HandshakeCompleted:
                self._handshake_deadline = None
                self.watcher.handshake_done(self)  # type: ignore[arg-type]
            elif kind is _qh3_events.ConnectionTerminated:
                watcher, self.watcher = self.watcher, None
                watcher.terminated(self)  # type: ignore[arg-type]
        return event

    # -- handshake deadline: ended silently, as on an idle timeout (no packet to a possibly spoofed address)
    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if self._silenced:
            return
        if self._handshake_deadline is None and self.handshake_timeout is not None and not self._is_client \
                and not self._handshake_complete:
            self._handshake_deadline = now + self.handshake_timeout
        super().receive_datagram(data, addr, now)

    def receive_many_datagrams(self, datagrams: list[bytes], addr: Any, now: float) -> None:
        if not self._silenced:
            super().receive_many_datagrams(datagrams, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """What qh3's does, except that a core that runs out of room for a packet only ends this round.

        qh3 2.1's core raises "packet builder capacity exhausted" when the
        room left (the anti-amplification budget of a server during the
        handshake, seen with aioquic clients) cannot hold its next packet;
        qh3's own loop then loses the datagrams it had already collected.
        """
        core = self._core
        if self._silenced or core is None:
            return []
        datagrams: list[tuple[bytes, Any]] = []
        logging_on = self._quic_logger is not None
        while True:
            try:
                transmit = core.poll_transmit(now)
            except RuntimeError as exc:
                if CAPACITY_EXHAUSTED not in str(exc):
                    raise _qh3_connection.QuicConnectionError(0x1, None, str(exc)) from exc
                logger.debug("qh3: no room for the next packet (%s); sending %d datagrams", exc, len(datagrams))
                break
            if transmit is None:
                break
            if logging_on:
                self._log_datagram("datagrams_sent", transmit[0])
                self._log_packets("packet_sent", transmit[0])
            datagrams.append((transmit[0], transmit[1]))
        return datagrams

    def _deadline_pending(self) -> bool:
        if self._handshake_deadline is None:
            return False
        if self._handshake_complete or self._silenced:
            self._handshake_deadline = None
            return False
        return True

    def get_timer(self) -> float | None:
        if self._silenced:
            return None
        timer = super().get_timer()
        deadline = self._handshake_deadline
        if deadline is not None and self._deadline_pending() and (timer is None or deadline < timer):
            return deadline
        return timer

    def handle_timer(self, now: float) -> None:
        deadline = self._handshake_deadline
        if deadline is not None and self._deadline_pending() and now >= deadline:
            self._silenced = True
            self._handshake_deadline = None
            self._state = _qh3_connection.QuicConnectionState.TERMINATED
            self._close_event = _qh3_events.ConnectionTerminated(
                error_code=0x2, frame_type=0, reason_phrase="handshake timeout")  # CONNECTION_REFUSED
            self._events.append(self._close_event)
            return
        if not self._silenced:
            super().handle_timer(now)

    def _create_core(self, remote_addr: Any, initial_dcid: bytes, now: float) -> None:
        limits = self.stream_limits
        if limits is None:
            super()._create_core(remote_addr, initial_dcid, now)
            return
        module: Any = _qh3_connection
        real = module.QuicConnectionCore

        def core(*args: Any) -> Any:
            if len(args) != CORE_ARGUMENTS:
                raise IncompatibleQh3(f"qh3 {qh3_version()} builds its core with {len(args)} arguments, "
                                      f"not {CORE_ARGUMENTS}: stream limits cannot be set")
            values = list(args)
            values[LOCAL_MAX_STREAMS[0]], values[LOCAL_MAX_STREAMS[1]] = limits
            return real(*values)

        module.QuicConnectionCore = core  # the facade calls the name it imported: ours, for this one call
        try:
            super()._create_core(remote_addr, initial_dcid, now)
        finally:
            module.QuicConnectionCore = real


def _send_backlog(quic: Any, stream_id: int) -> int:
    return int(quic.get_send_buffer_size(stream_id))


def _peer_address(quic: Any) -> tuple[str, int] | None:
    addr = getattr(quic, "_remote_addr", None)
    if not addr:
        return None
    host = str(addr[0])
    return host.removeprefix("::ffff:"), int(addr[1])


def _stream_credit(quic: Any, stream_id: int) -> Qh3StreamCredit | None:
    credit = getattr(quic, "held_credit", None)
    return Qh3StreamCredit(credit, stream_id) if credit is not None else None


def _early_data_accepted(quic: Any) -> bool:
    context = quic.tls
    return bool(context is not None and context.early_data_accepted)


def peer_certificate_der(quic: Any) -> bytes | None:
    """The DER bytes of the peer's certificate, or None."""
    cert = quic.get_peercert()
    return None if cert is None else bytes(cert.public_bytes())


def session_resumed(quic: Any) -> bool:
    context = quic.tls
    return bool(context is not None and context.session_resumed)


def check_fingerprint(protocol: Any, expected: str) -> None:
    """Raise :class:`MoQError` unless the server's certificate has the SHA-256 fingerprint ``expected``."""
    quic = protocol.quic
    if session_resumed(quic):
        return
    der = peer_certificate_der(quic)
    if der is None:
        raise MoQError("server sent no certificate")
    actual = hashlib.sha256(der).hexdigest()
    if actual != expected.lower().replace(":", ""):
        raise MoQError(f"server certificate fingerprint {actual} does not match the pinned {expected}")


def _connected_waiter(protocol: Any) -> asyncio.Future[None] | None:
    waiter: asyncio.Future[None] | None = protocol._connected_waiter
    return waiter


def backend() -> QuicBackend:
    """The qh3 :class:`QuicBackend` (:class:`IncompatibleQh3` if qh3 is missing or moved a name)."""
    _ensure_checked()
    return QuicBackend(
        name="qh3", stream_data=_qh3_events.StreamDataReceived, stream_reset=_qh3_events.StreamReset,
        stop_sending=_qh3_events.StopSendingReceived, terminated=_qh3_events.ConnectionTerminated,
        handshake_completed=_qh3_events.HandshakeCompleted, protocol_negotiated=_qh3_events.ProtocolNegotiated,
        send_backlog=_send_backlog, peer_address=_peer_address, stream_credit=_stream_credit,
        early_data_accepted=_early_data_accepted,
        call_errors=(ValueError, RuntimeError, _qh3_connection.QuicConnectionError),
        connected_waiter=_connected_waiter)


class Qh3Protocol(MoqProtocolMixin, _Qh3Protocol):
    """qh3 protocol that feeds a :class:`~.quic.QuicTransport` (see :class:`~.quic.MoqProtocolMixin`).

    The connection becomes a :class:`Qh3Connection` with ``max_streams``;
    its :class:`HeldCredit` stops streams whose unread bytes pass the windows.
    """

    def __init__(self, quic: Any, *, on_handshake: Callable[[QuicTransport], None] | None = None,
                 limits: Limits = DEFAULT_LIMITS, early_start: bool = False,
                 check_peer: Callable[[Any], None] | None = None, max_streams: tuple[int, int] | None = None,
                 handshake_timeout: float | None = None, **kwargs: Any) -> None:
        quic = Qh3Connection.adopt(quic)
        quic.stream_limits = max_streams
        quic.handshake_timeout = handshake_timeout
        _Qh3Protocol.__init__(self, quic, **kwargs)
        self.quic = quic
        self._init_moq(backend(), limits, on_handshake, early_start, check_peer)
        quic.held_credit.on_overrun = self._overrun

    def _overrun(self, stream_id: int) -> None:
        logger.info("stopping stream %d: its unread bytes passed the receive window", stream_id)
        self.moq_transport.stop_receiving(stream_id, ErrorCode.TOO_LARGE)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        grow_socket_buffers(transport)  # a client's own socket (a server's listener already has them)
        super().connection_made(transport)

    def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
        self.quic.close(error_code=error_code, reason_phrase=reason_phrase)
        self.transmit()

    def transmit(self) -> None:
        super().transmit()
        self.moq_transport.after_transmit()


class _RetryTokens:
    """aioquic's token handler (the one :class:`~.admission.Admission` makes Retry packets with), as qh3 calls it."""

    def __init__(self, admission: Admission, destination_cid: bytes, now: float) -> None:
        self._admission = admission
        self._destination_cid = destination_cid
        self._now = now

    def validate_token(self, addr: Any, token: bytes) -> tuple[bytes, bytes]:
        original = self._admission.retry_tokens.validate_token(address=addr, destination_cid=self._destination_cid,
                                                               token=token, now=self._now)
        return original, self._destination_cid  # the client sent to the Retry's source CID: it is ours


class GuardedQh3Server(AdmissionGuard, _qh3_server.QuicServer):
    """qh3's ``QuicServer`` behind an :class:`~.admission.Admission` (see :class:`~.admission.AdmissionGuard`)."""

    def __init__(self, *, admission: Admission, configuration: Any, **kwargs: Any) -> None:
        _ensure_checked()
        _qh3_server.QuicServer.__init__(self, configuration=configuration, **kwargs)
        self._init_guard(admission, configuration)

    def _stack_datagram_received(self, data: bytes, addr: Any) -> None:
        _qh3_server.QuicServer.datagram_received(self, data, addr)

    def _retry_tokens(self, header: Any, now: float) -> Any:
        return _RetryTokens(self.admission, header.destination_cid, now)

    def _watchable(self, quic: Any) -> bool:
        return isinstance(quic, Qh3Connection)

    def close(self) -> None:
        _qh3_server.QuicServer.close(self)  # type: ignore[no-untyped-call]
        self.admission.clear()


async def serve_guarded_qh3(host: str, port: int, *, admission: Admission, sock: socket.socket | None = None,
                            **arguments: Any) -> GuardedQh3Server:
    """:class:`GuardedQh3Server` on ``host:port`` (or ``sock``), through qh3's batched UDP transport (GSO/GRO
    where the kernel has them), so a connection's datagrams of one transmit leave in one system call."""
    _ensure_checked()
    if sock is None:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
    transport, server = await _qh3_transport.create_optimized_datagram_transport(
        asyncio.get_running_loop(), lambda: GuardedQh3Server(admission=admission, **arguments), sock=sock)
    grow_socket_buffers(transport)  # every connection shares the socket, as on aioquic
    assert isinstance(server, GuardedQh3Server)
    return server


def server_configuration(*, alpn: list[str], idle_timeout: float, max_datagram_frame_size: int | None,
                         max_data: int, max_stream_data: int, chain_pem: bytes, key_pem: bytes,
                         max_datagram_size: int | None = None) -> Any:
    """A qh3 server ``QuicConfiguration`` presenting ``chain_pem`` (leaf first) with the PKCS#8 ``key_pem``."""
    _ensure_checked()
    configuration = _qh3_configuration.QuicConfiguration(
        is_client=False, alpn_protocols=alpn, idle_timeout=idle_timeout,
        max_datagram_frame_size=max_datagram_frame_size, max_data=max_data, max_stream_data=max_stream_data)
    if max_datagram_size is not None:
        configuration.max_datagram_size = max_datagram_size
    configuration.load_cert_chain(chain_pem, key_pem)
    return configuration


def client_configuration(*, alpn: list[str], idle_timeout: float, max_datagram_frame_size: int | None,
                         max_data: int, max_stream_data: int, max_datagram_size: int | None = None) -> Any:
    """A qh3 client ``QuicConfiguration`` (the same fields as aioquic's)."""
    _ensure_checked()
    configuration = _qh3_configuration.QuicConfiguration(
        is_client=True, alpn_protocols=alpn, idle_timeout=idle_timeout,
        max_datagram_frame_size=max_datagram_frame_size, max_data=max_data, max_stream_data=max_stream_data)
    if max_datagram_size is not None:
        configuration.max_datagram_size = max_datagram_size
    return configuration


@asynccontextmanager
async def connect(host: str, port: int, *, configuration: Any, create_protocol: Callable[..., Any],
                  session_ticket_handler: Callable[[Any], None] | None = None,
                  wait_connected: bool = True) -> AsyncIterator[Any]:
    """qh3's ``connect()``: a client connection on its own UDP socket, closed on exit."""
    _ensure_checked()
    async with _qh3_client.connect(host, port, configuration=configuration, create_protocol=create_protocol,
                                   session_ticket_handler=session_ticket_handler,
                                   wait_connected=wait_connected) as protocol:
        yield protocol


__all__ = [
    "GuardedQh3Server",
    "HeldCredit",
    "IncompatibleQh3",
    "Qh3Protocol",
    "Qh3StreamCredit",
    "backend",
    "check_compatible",
    "check_fingerprint",
    "client_configuration",
    "connect",
    "peer_certificate_der",
    "serve_guarded_qh3",
    "server_configuration",
    "session_resumed",
]

"""The native QUIC client: ``dial_quic("moql://host:port/path")`` to a running session."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Sequence
from typing import Any

from aioquic.asyncio.client import connect as quic_connect
from aioquic.quic.configuration import QuicConfiguration

from ..engine.handshake import ClientStart, start_client
from ..engine.mux import TrackMux
from ..engine.session import Session
from ..protocol.errors import MoQError
from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..protocol.versions import DEFAULT_VERSIONS, Version, native_alpns, ordered
from ..transport.quic import QuicProtocol, QuicTransport
from ..transport.settings import QuicSettings
from .settings import NATIVE_SCHEMES, check_fingerprint, parse_url, redacted_url, resumption_note, trust_label, use_tickets
from .tickets import ClientTicketStore, TicketSlot
from .tls import TLSConfig, client_tls

logger = logging.getLogger("moqt_asgi.endpoints")

async def dial_quic(url: str, *, mux: TrackMux | None = None, fingerprint: str | None = None,
                    insecure: bool = False, cafile: str | None = None, quic: QuicSettings | None = None,
                    limits: Limits = DEFAULT_LIMITS, setup_timeout: float = 10.0,
                    versions: Sequence[Version] = DEFAULT_VERSIONS, log: logging.Logger = logger,
                    tickets: ClientTicketStore | None = None, tls: TLSConfig | ssl.SSLContext | None = None) -> Session:
    """Connect to ``moql://host:port/path`` and set up a session (already running).

    The ALPN list offers every one of ``versions`` (newest first); the server
    picks, and the session speaks what it picked (:attr:`Session.version_name`).

    With ``tickets``, the ticket the server sends is kept there and the next
    dial to the same host and port offers it to resume (with 0-RTT early data
    if ``quic.allow_0rtt`` and the ticket permits it). The session's
    :class:`~moqt_asgi.transport.quic.QuicTransport` (``session.connection``)
    tells whether it ``resumed`` and whether ``early_data_accepted``.

    ``quic.backend`` picks the QUIC stack (:meth:`QuicSettings.resolved_backend`);
    on qh3, ``tickets`` give 1-RTT resumption but no 0-RTT start.
    """
    scheme, host, port, target = parse_url(url)
    if scheme not in NATIVE_SCHEMES:
        raise MoQError(f"{scheme}:// is WebTransport: use dial_webtransport (or dial)")
    chosen = ordered(versions)
    settings = quic or QuicSettings()
    settings.check_limits(limits, log)
    on_qh3 = settings.resolved_backend() == "qh3"
    configuration: Any
    if on_qh3:
        from ..transport import qh3_connection

        configuration = qh3_connection.client_configuration(
            alpn=list(native_alpns(chosen)), idle_timeout=settings.idle_timeout,
            max_datagram_frame_size=settings.max_datagram_frame_size, max_data=settings.max_data,
            max_stream_data=settings.max_stream_data, max_datagram_size=settings.max_datagram_size)
    else:
        configuration = settings.configuration(is_client=True, alpn=list(native_alpns(chosen)))
    # tls and the shortcuts as one: the pin to check once connected, and how the server is trusted
    pin, skip_verify, ca = client_tls(tls, fingerprint=fingerprint, insecure=insecure,
                                      cafile=cafile).apply_client(configuration, host)
    # tickets of one stack are filed apart from the other's (their classes differ); qh3 resumes, without 0-RTT
    trust = trust_label(pin, skip_verify, ca) + ("|qh3" if on_qh3 else "")
    ticket_slot = use_tickets(configuration, tickets, host, port, early_data=settings.allow_0rtt and not on_qh3,
                              trust=trust)
    early_alpn = ticket_slot.early_alpn if ticket_slot is not None and settings.allow_0rtt and not on_qh3 else None
    connect = functools.partial(_connect, url, host, port, target, configuration, limits=limits, versions=chosen,
                                setup_timeout=setup_timeout, fingerprint=pin, ticket_slot=ticket_slot,
                                max_streams=settings.max_streams, on_qh3=on_qh3)
    try:
        stack, transport, start = await connect(early_alpn=early_alpn)
    except _ProtocolChanged as changed:
        log.info("%s chose %s, not the %s its 0-RTT data was written in; dialing again without the ticket",
                 url, changed.alpn, early_alpn)
        configuration.session_ticket = None
        stack, transport, start = await connect(early_alpn=None)
    session = Session(transport, start.codec, mux=mux, limits=limits, is_client=True, path=target,
                      session_stream=start.session_stream, logger_=log, timeout=setup_timeout)
    session.peer_setup = start.peer_setup
    session.add_cleanup(stack.aclose)
    session.start()
    await session.wait_started()
    log.info("session established with %s using %s%s", url, start.codec.name,
             resumption_note(transport.resumed, transport.early_data_accepted))
    return session


class _ProtocolChanged(Exception):
    """The server negotiated another ALPN than the one a 0-RTT start assumed."""

    def __init__(self, alpn: str | None) -> None:
        super().__init__(alpn)
        self.alpn = alpn


async def _connect(url: str, host: str, port: int, target: str, configuration: QuicConfiguration, *,
                   limits: Limits, versions: tuple[Version, ...], setup_timeout: float, fingerprint: str | None,
                   ticket_slot: TicketSlot | None, max_streams: tuple[int, int], on_qh3: bool = False,
                   early_alpn: str | None) -> tuple[contextlib.AsyncExitStack, QuicTransport, ClientStart]:
    """Connect and run the client's session start; with ``early_alpn``, start it in 0-RTT data."""
    stack = contextlib.AsyncExitStack()
    protocol_class: Any = QuicProtocol
    connecting: Any = quic_connect
    fingerprint_check: Any = check_fingerprint
    if on_qh3:
        from ..transport import qh3_connection

        protocol_class, connecting = qh3_connection.Qh3Protocol, qh3_connection.connect
        fingerprint_check = qh3_connection.check_fingerprint
    check = functools.partial(fingerprint_check, expected=fingerprint) if fingerprint else None
    created: list[Any] = []

    def protocol_factory(*args: Any, **kwargs: Any) -> Any:
        made = protocol_class(*args, limits=limits, check_peer=check, max_streams=max_streams, **kwargs)
        created.append(made)
        return made

    try:
        async with asyncio.timeout(setup_timeout):
            protocol = await stack.enter_async_context(
                connecting(host, port, configuration=configuration, create_protocol=protocol_factory,
                           session_ticket_handler=ticket_slot, wait_connected=early_alpn is None))
            assert isinstance(protocol, protocol_class)
            transport = protocol.moq_transport
            if early_alpn is None:
                if protocol.peer_check_error is not None:
                    raise protocol.peer_check_error
                start = await start_client(transport, limits, protocol=transport.alpn, path=target,
                                           versions=versions, timeout=setup_timeout)
            else:
                start = await _start_early(protocol, early_alpn, limits=limits, target=target, versions=versions,
                                           setup_timeout=setup_timeout)
            if ticket_slot is not None:
                ticket_slot.verified(transport.alpn)
    except TimeoutError:
        await stack.aclose()
        raise MoQError(f"no session with {redacted_url(url)} within {setup_timeout:.1f}s") from None
    except ConnectionError as exc:
        await stack.aclose()
        closed = created[0].moq_transport._closed if created else None
        reason = closed.reason if closed is not None and closed.reason else str(exc) or "connection closed"
        raise MoQError(f"could not connect to {redacted_url(url)}: {reason}") from None
    except BaseException:
        await stack.aclose()
        raise
    return stack, transport, start


async def _start_early(protocol: Any, alpn: str, *, limits: Limits, target: str,
                       versions: tuple[Version, ...], setup_timeout: float) -> ClientStart:
    """Write the session start as 0-RTT data in ``alpn``'s version, then confirm the handshake agrees.

    The ClientHello and the first 0-RTT bytes leave together. If the server
    refuses the early data, aioquic sends those bytes again under the
    handshake keys. If it negotiates another ALPN, :class:`_ProtocolChanged`.
    """
    transport = protocol.moq_transport
    transport.alpn = alpn
    transport.started_early = True
    connected = asyncio.ensure_future(protocol.wait_connected())
    starting = asyncio.ensure_future(start_client(transport, limits, protocol=alpn, path=target, versions=versions,
                                                  timeout=setup_timeout))
    asyncio.get_running_loop().call_soon(protocol.transmit)  # after the start has written its first bytes
    try:
        await asyncio.wait({connected, starting}, return_when=asyncio.FIRST_EXCEPTION)
        if not connected.done():
            starting.result()  # the start failed before the handshake finished: its error is the answer
        await connected
        if protocol.peer_check_error is not None:
            raise protocol.peer_check_error
        if transport.alpn != alpn:
            raise _ProtocolChanged(transport.alpn)
        return await starting
    finally:
        for task in (connected, starting):
            if not task.done():
                task.cancel()
        await asyncio.gather(connected, starting, return_exceptions=True)



__all__ = ["dial_quic"]

"""A WebTransport client: ``dial_webtransport("https://host:port/path")`` → a MoQ :class:`Session`.

It speaks HTTP/3 with aioquic, sends the extended CONNECT (offering
``moql`` in ``wt-available-protocols``), and runs the session over a
:class:`WebTransportSession`, the same object the server side uses. MoQ
then starts with the ``0x20`` SETUP on the first bidi stream (lite-02,
then lite-01), as moq-rs and @moq/lite do over WebTransport.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Sequence
from typing import Any

from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN
from aioquic.h3.events import HeadersReceived
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StopSendingReceived, StreamReset

from ..engine.handshake import start_client
from ..engine.mux import TrackMux
from ..engine.session import Session
from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, SetupRejected
from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..protocol.versions import DEFAULT_VERSIONS, Version, ordered, protocols_for
from ..transport.aioquic_connection import adopt_quic
from ..transport.settings import QuicSettings
from ..transport.transmit import TransmitSoon
from ..transport.udp import grow_socket_buffers
from ..webtransport.asgi import parse_sf_string_list, sf_string
from ..webtransport.capsules import H3_INTERNAL_ERROR
from ..webtransport.h3 import WebTransportH3Connection
from ..webtransport.router import RouterHost, WebTransportRouter
from ..webtransport.session import WebTransportSession
from .settings import check_fingerprint, parse_url, redacted_url, resumption_note, trust_label, use_tickets
from .tickets import ClientTicketStore
from .tls import TLSConfig, client_tls

logger = logging.getLogger("moqt_asgi.webtransport")


class WebTransportClientProtocol(QuicConnectionProtocol, RouterHost):
    """An HTTP/3 client connection carrying WebTransport sessions.

    The sessions' events are routed by a
    :class:`~moqt_asgi.webtransport.router.WebTransportRouter`, as on the
    servers; this class keeps the answers to its CONNECTs.
    """

    def __init__(self, *args: Any, limits: Limits = DEFAULT_LIMITS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.quic = adopt_quic(self)  # our receive-credit policy
        self.transmitter = TransmitSoon(self.transmit, asyncio.get_running_loop())
        self.quic.on_credit = self.transmit_soon
        self.h3 = WebTransportH3Connection(self.quic)
        self.router = WebTransportRouter(self)
        self.h3.router = self.router
        self.limits = limits
        self._responses: dict[int, asyncio.Future[list[tuple[bytes, bytes]]]] = {}
        self.resumed = False
        """The TLS handshake resumed an earlier session from a ticket (no certificate exchange)."""
        self.early_data_accepted = False
        """0-RTT early data was offered with a ticket and accepted by the server."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aioquic's socket has the system's default buffers (208 KiB on Linux): a burst that arrives while
        # this process is busy elsewhere would be dropped by the kernel and taken for congestion
        grow_socket_buffers(transport)
        super().connection_made(transport)

    async def open_session(self, authority: str, target: str,
                           headers: Sequence[tuple[bytes, bytes]] = ()) -> tuple[WebTransportSession, str | None]:
        """Send the CONNECT and wait for the answer; raises :class:`SetupRejected` on a non-2xx status.

        Returns the session and the server's ``wt-protocol`` choice (``None`` if it made none).
        """
        session_id = self.quic.get_next_available_stream_id()
        session = WebTransportSession(self, session_id, limits=self.limits)
        self.router.open(session)
        response = self._responses[session_id] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(session_id, [
            (b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":scheme", b"https"),
            (b":authority", authority.encode()), (b":path", target.encode()),
            (b"sec-webtransport-http3-draft02", b"1"), *headers])
        self.transmit()
        try:
            answer = await response
        finally:
            self._responses.pop(session_id, None)
        status = int(dict(answer).get(b":status", b"0"))
        session.handle_response(status)
        if not 200 <= status < 300:
            raise SetupRejected(status, f"the server answered the WebTransport CONNECT with {status}")
        return session, _chosen_protocol(answer)

    # -- events (never raise: an exception here would be lost inside aioquic)
    def quic_event_received(self, event: QuicEvent) -> None:
        try:
            self._handle(event)
        except Exception:
            logger.exception("error handling %s; closing the connection", type(event).__name__)
            self.quic.close(error_code=H3_INTERNAL_ERROR, reason_phrase="internal error")
            self.transmit()

    def _handle(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.resumed = event.session_resumed
            self.early_data_accepted = event.early_data_accepted
        elif isinstance(event, (StreamReset, StopSendingReceived)):
            if event.stream_id in self.sessions:  # the CONNECT stream: no answer is coming
                self._fail_response(event.stream_id, SessionClosed(event.error_code, "CONNECT stream reset",
                                                                   remote=True))
        elif isinstance(event, ConnectionTerminated):
            for stream_id in list(self._responses):
                self._fail_response(stream_id, SessionClosed(event.error_code, event.reason_phrase, remote=True))
        # the router takes the WebTransport events (sessions' streams, datagrams, capsules, resets)
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                waiter = self._responses.get(h3_event.stream_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(list(h3_event.headers))

    def _fail_response(self, stream_id: int, error: SessionClosed) -> None:
        future = self._responses.get(stream_id)
        if future is not None and not future.done():
            future.set_exception(error)

    def transmit(self) -> None:
        super().transmit()
        self.router.after_transmit()


def _chosen_protocol(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The server's ``wt-protocol`` answer (an SF string), or ``None`` if it sent none or garbage."""
    for name, value in headers:
        if name == b"wt-protocol":
            chosen = parse_sf_string_list(value.decode("latin-1"))
            return chosen[0] if len(chosen) == 1 else None
    return None


async def dial_webtransport(url: str, *, mux: TrackMux | None = None, fingerprint: str | None = None,
                            insecure: bool = False, cafile: str | None = None, quic: QuicSettings | None = None,
                            limits: Limits = DEFAULT_LIMITS, setup_timeout: float = 10.0,
                            versions: Sequence[Version] = DEFAULT_VERSIONS,
                            headers: Sequence[tuple[str, str]] = (), log: logging.Logger = logger,
                            tickets: ClientTicketStore | None = None,
                            tls: TLSConfig | ssl.SSLContext | None = None) -> Session:
    """Connect to ``https://host:port/path?query`` over WebTransport and set up a MoQ session.

    ``headers`` are added to the CONNECT (``origin``, for instance). The
    certificate is checked against ``fingerprint`` (SHA-256 hex), ``cafile``,
    or the system roots, unless ``insecure``; ``tls`` (a
    :class:`~moqt_asgi.endpoints.tls.TLSConfig` or an :class:`ssl.SSLContext`) gives
    every other TLS option, and the shortcuts fill in what it leaves unset.

    ``tickets`` keeps the server's session ticket for the next dial to the
    same host and port, which then resumes (see :func:`~moqt_asgi.endpoints.dial_quic`);
    ``session.connection.host`` (the :class:`WebTransportClientProtocol`)
    tells whether it ``resumed`` and whether ``early_data_accepted``.
    """
    scheme, host, port, target = parse_url(url)
    if scheme != "https":
        raise MoQError(f"{scheme}:// is native QUIC: use dial_quic")
    settings = quic or QuicSettings()
    settings.check_limits(limits, log)
    configuration = settings.configuration(is_client=True, alpn=list(H3_ALPN))
    # tls and the shortcuts as one: the pin to check once connected, and how the server is trusted
    pin, skip_verify, ca = client_tls(tls, fingerprint=fingerprint, insecure=insecure,
                                      cafile=cafile).apply_client(configuration, host)
    ticket_slot = use_tickets(configuration, tickets, host, port, early_data=settings.allow_0rtt,
                              trust=trust_label(pin, skip_verify, ca))
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    chosen = ordered(versions)
    offer = protocols_for(chosen)
    extra = [(b"wt-available-protocols", b", ".join(sf_string(p) for p in offer))] if offer else []
    extra += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    stack = contextlib.AsyncExitStack()
    try:
        async with asyncio.timeout(setup_timeout):
            factory = functools.partial(WebTransportClientProtocol, limits=limits)
            protocol = await stack.enter_async_context(
                quic_connect(host, port, configuration=configuration, create_protocol=factory,
                             session_ticket_handler=ticket_slot))
            assert isinstance(protocol, WebTransportClientProtocol)
            if pin:
                check_fingerprint(protocol, pin)
            if ticket_slot is not None:
                ticket_slot.verified()
            connection, chosen_protocol = await protocol.open_session(authority, target, extra)
            if chosen_protocol is not None and chosen_protocol not in offer:
                raise ProtocolError(ErrorCode.VERSION, f"server chose {chosen_protocol!r}, which we did not offer")
            start = await start_client(connection, limits, protocol=chosen_protocol, path=None, versions=chosen,
                                       timeout=setup_timeout)
    except TimeoutError:
        await stack.aclose()
        raise MoQError(f"no session with {redacted_url(url)} within {setup_timeout:.1f}s") from None
    except ConnectionError as exc:
        await stack.aclose()
        raise MoQError(f"could not connect to {redacted_url(url)}: {exc}") from None
    except BaseException:
        await stack.aclose()
        raise

    async def close_connection() -> None:
        connection.close(int(ErrorCode.CANCEL))
        await stack.aclose()

    session = Session(connection, start.codec, mux=mux, limits=limits, is_client=True, path=target,
                      session_stream=start.session_stream, logger_=log, timeout=setup_timeout)
    session.peer_setup = start.peer_setup
    session.add_cleanup(close_connection)
    session.start()
    await session.wait_started()
    log.info("WebTransport session established with %s using %s%s", url, start.codec.name,
             resumption_note(protocol.resumed, protocol.early_data_accepted))
    return session


__all__ = ["WebTransportClientProtocol", "dial_webtransport"]

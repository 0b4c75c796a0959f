"""The one place where HTTP/3 and QUIC events reach WebTransport sessions.

Three hosts carry :class:`~moqt_asgi.webtransport.session.WebTransportSession`
objects over aioquic's HTTP/3: our h3 server
(:class:`~moqt_asgi.webtransport.h3_server.H3ServerConnection`), the
Hypercorn integration (:class:`~moqt_asgi.webtransport.hypercorn.WebTransportH3Protocol`)
and the client (:class:`~moqt_asgi.endpoints.dial_webtransport.WebTransportClientProtocol`).
Each owns a :class:`WebTransportRouter` and sets it as its
:class:`~moqt_asgi.webtransport.h3.WebTransportH3Connection`'s ``router``;
``handle_event`` then hands the router every event and returns only what
the host handles itself. The router does, for all three:

* **stream data**: a WebTransport stream's bytes go to its session; a
  stream naming a session that ended (or was refused) is refused with
  ``WT_SESSION_GONE``, one naming a plain HTTP request with
  ``WT_BUFFERED_STREAM_REJECTED``; on a server, a stream whose CONNECT has
  not arrived yet is held (bounded, :class:`~.early.EarlyStreams`) until the
  session opens (:meth:`WebTransportRouter.open`), turns out to be a plain
  request (:meth:`WebTransportRouter.refuse_early`) or is refused
  (:meth:`WebTransportRouter.refuse`);
* **resets and STOP_SENDING**: on a CONNECT stream they end the session;
  on a held stream the reset drops it; otherwise they reach the session
  that owns (or stopped reading) the stream;
* **datagrams** and the **capsules** on each CONNECT stream;
* the **end of the connection**, for every session;
* the **ended sessions**: the ids of the last :data:`MAX_ENDED_SESSIONS`
  sessions that ended or were refused, so their late streams are refused
  and their trailers ignored;
* **after a transmission**, waking the sessions' writers.

What the hosts keep is what differs: Hypercorn's hand-off of plain
requests to its own streams, our :class:`~.h3_server.HTTPExchange`, the
client's response futures, and how each opens (or refuses) a session.
They are :class:`RouterHost` objects: a :class:`SessionHost` whose ended
sessions go back to the router and whose transmissions are coalesced
(:class:`~moqt_asgi.transport.transmit.TransmitSoon`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from aioquic.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StopSendingReceived, StreamReset

from ..transport.transmit import TransmitSoon
from .capsules import WT_BUFFERED_STREAM_REJECTED, WT_SESSION_GONE
from .early import EarlyStreams
from .session import SessionHost, WebTransportSession

logger = logging.getLogger("moqt_asgi.webtransport")

MAX_ENDED_SESSIONS = 256
"""Ended (or refused) session ids remembered per connection."""
MAX_EARLY_STREAMS = 32
"""Streams held per connection while their CONNECT has not arrived (servers)."""
MAX_EARLY_BYTES = 256 * 1024
"""Bytes held per connection for those streams."""


def method_and_protocol(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """A request's ``:method`` and ``:protocol`` (None for trailers, which have neither)."""
    method = protocol = None
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":protocol":
            protocol = value
        elif not name.startswith(b":"):
            break  # pseudo-headers come first
    return method, protocol


def is_webtransport_connect(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's headers are an extended CONNECT for WebTransport."""
    return method_and_protocol(headers) == (b"CONNECT", b"webtransport")


class RouterHost(SessionHost):
    """A :class:`SessionHost` with a :class:`WebTransportRouter` and a coalesced transmit.

    Subclasses set :attr:`router` and :attr:`transmitter` in their constructor.
    """

    router: WebTransportRouter
    transmitter: TransmitSoon

    @property
    def sessions(self) -> dict[int, WebTransportSession]:
        """The open sessions, by the id of their CONNECT stream."""
        return self.router.sessions

    def transmit_soon(self) -> None:
        self.transmitter.request()

    def session_ended(self, session: WebTransportSession) -> None:
        self.router.session_ended(session)

    def finish_sending(self, stream_id: int) -> None:
        self.h3.finish_webtransport_sending(stream_id)


class WebTransportRouter:
    """Routes one HTTP/3 connection's events to its WebTransport sessions (see the module docstring).

    ``host`` is the connection's :class:`SessionHost` (it refuses streams).
    ``early`` holds streams that beat their CONNECT (servers; without it,
    such streams are refused with ``WT_SESSION_GONE``). ``is_request(id)``
    tells whether a stream is a plain HTTP request of the host.
    ``on_headers(event)`` sees the HEADERS of every request stream (not the
    trailers of a session's CONNECT) before they are returned, and consumes
    them by returning True.
    """

    def __init__(self, host: SessionHost, *, early: EarlyStreams | None = None,
                 is_request: Callable[[int], bool] | None = None,
                 on_headers: Callable[[HeadersReceived], bool] | None = None,
                 max_ended: int = MAX_ENDED_SESSIONS) -> None:
        self.host = host
        self.is_client = bool(host.quic.configuration.is_client)
        self.sessions: dict[int, WebTransportSession] = {}
        """The open sessions, by the id of their CONNECT stream."""
        self.early = early
        self.max_ended = max_ended
        self._is_request = is_request
        self._on_headers = on_headers
        self._ended: OrderedDict[int, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"<WebTransportRouter sessions={len(self.sessions)} ended={len(self._ended)}>"

    # -- sessions
    def open(self, session: WebTransportSession) -> None:
        """Route to ``session`` from now on, starting with the streams held for it."""
        self.sessions[session.session_id] = session
        if self.early is not None:
            for stream_id, data, ended in self.early.take(session.session_id):
                session.handle_stream_data(stream_id, data, ended)

    def refuse(self, session_id: int) -> None:
        """The CONNECT on ``session_id`` was refused: refuse the streams held for it, and later ones."""
        if self.early is not None:
            for stream_id in {stream_id for stream_id, _, _ in self.early.take(session_id)}:
                self.host.refuse_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)
        self._remember_ended(session_id)

    def refuse_early(self, request_id: int) -> None:
        """``request_id`` turned out to be a plain request: refuse the streams held for it as a session."""
        if self.early is not None:
            for stream_id in self.early.take_stream_ids(request_id):
                self.host.refuse_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)

    def session_ended(self, session: WebTransportSession) -> None:
        """``session`` is over (called by the host's :meth:`SessionHost.session_ended`)."""
        if self.sessions.pop(session.session_id, None) is not None:
            self._remember_ended(session.session_id)

    def ended(self, session_id: int) -> bool:
        """Whether ``session_id`` is a session that ended or was refused (among the last few)."""
        return session_id in self._ended

    def _remember_ended(self, session_id: int) -> None:
        ended = self._ended
        ended[session_id] = None
        while len(ended) > self.max_ended:
            ended.popitem(last=False)

    # -- QUIC events (before the HTTP/3 layer sees them)
    def handle_quic_event(self, event: QuicEvent) -> None:
        """Route a reset, STOP_SENDING or the connection's end to the sessions it concerns."""
        if isinstance(event, StreamReset):
            self._stream_reset(event.stream_id, event.error_code)
        elif isinstance(event, StopSendingReceived):
            self._stop_sending(event.stream_id, event.error_code)
        elif isinstance(event, ConnectionTerminated):
            for session in list(self.sessions.values()):
                session.handle_connection_terminated(event.error_code, event.reason_phrase)
            if self.early is not None:
                self.early.clear()

    def _stream_reset(self, stream_id: int, code: int) -> None:
        connect = self.sessions.get(stream_id)
        if connect is not None:
            connect.handle_connect_reset(code)
        elif self.early is not None and stream_id in self.early:
            self.early.drop(stream_id)
        else:
            for session in self.sessions.values():
                if session.claims(stream_id):
                    session.handle_stream_reset(stream_id, code)
                    return

    def _stop_sending(self, stream_id: int, code: int) -> None:
        connect = self.sessions.get(stream_id)
        if connect is not None:
            connect.handle_connect_reset(code)
            return
        for session in self.sessions.values():
            if session.owns(stream_id):
                session.handle_stop_sending(stream_id, code)
                return

    # -- HTTP/3 events
    def route(self, events: list[H3Event]) -> list[H3Event]:
        """Deliver the WebTransport events among ``events``; return the others, in order, for the host."""
        rest: list[H3Event] = []
        for event in events:
            if isinstance(event, WebTransportStreamDataReceived):
                self._stream_data(event.session_id, event.stream_id, event.data, event.stream_ended)
            elif isinstance(event, DataReceived):
                session = self.sessions.get(event.stream_id)
                if session is not None:
                    session.handle_connect_data(event.data, event.stream_ended)
                elif event.stream_id not in self._ended:
                    rest.append(event)
            elif isinstance(event, DatagramReceived):
                target = self.sessions.get(event.stream_id)
                if target is not None:
                    target.handle_datagram(event.data)
            elif isinstance(event, HeadersReceived) and not self.is_client:
                if event.stream_id in self.sessions or event.stream_id in self._ended:
                    continue  # trailers on a CONNECT stream: nothing to do
                if self._on_headers is None or not self._on_headers(event):
                    rest.append(event)
            else:
                rest.append(event)
        return rest

    def _stream_data(self, session_id: int, stream_id: int, data: bytes, ended: bool) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.handle_stream_data(stream_id, data, ended)
        elif session_id in self._ended:
            self.host.refuse_stream(stream_id, WT_SESSION_GONE)
        elif self._is_request is not None and self._is_request(session_id):  # a plain HTTP request, not a session
            self.host.refuse_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)
        elif self.early is None:
            self.host.refuse_stream(stream_id, WT_SESSION_GONE)
        elif not self.early.hold(session_id, stream_id, data, ended):
            self.host.refuse_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)

    # -- transmission
    def after_transmit(self) -> None:
        """The host just transmitted: wake the sessions' writers."""
        for session in list(self.sessions.values()):
            session.after_transmit()


__all__ = [
    "MAX_EARLY_BYTES",
    "MAX_EARLY_STREAMS",
    "MAX_ENDED_SESSIONS",
    "RouterHost",
    "WebTransportRouter",
    "is_webtransport_connect",
    "method_and_protocol",
]

"""TLS session tickets: 1-RTT resumption and 0-RTT for native QUIC and WebTransport.

A server that keeps the tickets it issued lets a returning client skip the
certificate exchange (the handshake is smaller and needs no signature), and,
when both sides allow it, accept 0-RTT early data. :class:`SessionTicketStore`
is the server half: an in-memory, bounded map from ticket identity to ticket,
plugged into aioquic as ``session_ticket_fetcher`` / ``session_ticket_handler``.
One store may be shared by several servers in the same process so a client
resumes on any of them. :class:`ClientTicketStore` is the client half: it
keeps the latest ticket per ``(server name, port)`` and offers it on the next
dial.

A resumed handshake carries no certificate: the server proves it holds the
session the ticket came from. The client store therefore files each ticket
under the way the server was verified when it was obtained (pinned
fingerprint, CA file, system roots, or not at all) and offers it only to a
dial that verifies the same way, and a connection's tickets are kept only
once its certificate has passed the check.

Tickets are single use on both sides (RFC 8446 section 8.1 advises this for
0-RTT anti-replay): the server forgets a ticket once a client presents it, and
the client drops it once offered; every handshake that used the stores issues
a fresh ticket for next time.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

from aioquic.tls import SessionTicket


class SessionTicketStore:
    """Server-side ticket store: at most ``max_size`` tickets, each kept at most ``lifetime`` seconds.

    ``add`` is aioquic's ``session_ticket_handler`` and ``pop`` its
    ``session_ticket_fetcher``. When full, the oldest ticket is dropped. A
    ticket also expires at its own ``not_valid_after`` (aioquic issues them
    for 24 hours), whichever comes first.
    """

    def __init__(self, max_size: int = 10_000, lifetime: float = 86_400.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self.max_size = max_size
        self.lifetime = lifetime
        self._clock = clock
        self._tickets: OrderedDict[bytes, tuple[float, SessionTicket]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def add(self, ticket: SessionTicket) -> None:
        """Keep a ticket the server just issued."""
        self._tickets.pop(ticket.ticket, None)
        self._tickets[ticket.ticket] = (self._clock() + self.lifetime, ticket)
        while len(self._tickets) > self.max_size:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        """The ticket a client presented, if it is known and still valid; it is forgotten either way."""
        entry = self._tickets.pop(label, None)
        if entry is None:
            return None
        deadline, ticket = entry
        if self._clock() > deadline or not ticket.is_valid:
            return None
        return ticket

    def expire(self) -> int:
        """Drop every expired ticket now; returns how many were dropped."""
        now = self._clock()
        stale = [label for label, (deadline, ticket) in self._tickets.items() if now > deadline or not ticket.is_valid]
        for label in stale:
            del self._tickets[label]
        return len(stale)

    def clear(self) -> None:
        self._tickets.clear()


class ClientTicketStore:
    """Client-side ticket store, keyed by ``(server name, port)``; at most ``max_size`` servers.

    Pass the same store to successive ``dial_quic`` / ``dial_webtransport``
    / ``dial`` calls (``tickets=store``): the ticket the server sends on one
    connection is offered on the next one to the same name and port. Native
    QUIC and WebTransport to the same port share the entry (the TLS session
    is the same kind), so the last connection's ticket wins.
    """

    def __init__(self, max_size: int = 256) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._tickets: OrderedDict[tuple[str, int], tuple[str, SessionTicket, str | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def __contains__(self, key: object) -> bool:
        return key in self._tickets

    def put(self, server_name: str, port: int, ticket: SessionTicket, trust: str = "", *,
            alpn: str | None = None) -> None:
        """Keep ``ticket`` for ``server_name:port``, obtained from a server verified as ``trust``.

        ``alpn`` is the protocol the connection that received it negotiated:
        0-RTT data is written in that protocol before the server confirms it.
        """
        key = (server_name, port)
        self._tickets.pop(key, None)
        self._tickets[key] = (trust, ticket, alpn)
        while len(self._tickets) > self.max_size:
            self._tickets.popitem(last=False)

    def take(self, server_name: str, port: int, *, trust: str = "", early_data: bool = True) -> SessionTicket | None:
        """The ticket to offer ``server_name:port`` (removed from the store), or ``None``.

        A ticket obtained under another ``trust`` is not offered (and is
        dropped). With ``early_data=False`` the ticket is returned without its
        early-data permission, so the client resumes but does not attempt 0-RTT.
        """
        taken = self.take_with_alpn(server_name, port, trust=trust, early_data=early_data)
        return taken[0] if taken is not None else None

    def take_with_alpn(self, server_name: str, port: int, *, trust: str = "",
                       early_data: bool = True) -> tuple[SessionTicket, str | None] | None:
        """Like :meth:`take`, with the ALPN the ticket's connection negotiated (``None`` if unknown)."""
        entry = self._tickets.pop((server_name, port), None)
        if entry is None or entry[0] != trust or not entry[1].is_valid:
            return None
        ticket = entry[1]
        if not early_data and ticket.max_early_data_size is not None:
            ticket = dataclasses.replace(ticket, max_early_data_size=None)
        return ticket, entry[2]

    def slot(self, server_name: str, port: int, trust: str = "") -> TicketSlot:
        """An aioquic ``session_ticket_handler`` for one connection to ``server_name:port``.

        Tickets are held back until :meth:`TicketSlot.verified` is called.
        """
        return TicketSlot(self, server_name, port, trust)

    def clear(self) -> None:
        self._tickets.clear()


class TicketSlot:
    """Receives one connection's tickets; they reach the store once the server has been verified."""

    def __init__(self, store: ClientTicketStore, server_name: str, port: int, trust: str) -> None:
        self.store = store
        self.server_name = server_name
        self.port = port
        self.trust = trust
        self._verified = False
        self._pending: SessionTicket | None = None
        self.alpn: str | None = None
        self.early_alpn: str | None = None
        """Set by the dialer when the ticket it offers permits 0-RTT: the ALPN to write early data in."""

    def __call__(self, ticket: SessionTicket) -> None:
        if self._verified:
            self.store.put(self.server_name, self.port, ticket, self.trust, alpn=self.alpn)
        else:
            self._pending = ticket

    def verified(self, alpn: str | None = None) -> None:
        """The server passed the certificate check (and negotiated ``alpn``): keep its tickets from now on."""
        self._verified = True
        self.alpn = alpn
        if self._pending is not None:
            ticket, self._pending = self._pending, None
            self.store.put(self.server_name, self.port, ticket, self.trust, alpn=alpn)


__all__ = ["ClientTicketStore", "SessionTicketStore", "TicketSlot"]

"""Coalesced transmission: send what is queued once per event-loop iteration.

aioquic only builds packets when its protocol's ``transmit()`` is called.
Calling it after every write would build a packet per write; calling it
never would send nothing. Every connection owner here (the native QUIC
transport, the HTTP/3 hosts and the WebTransport client) asks for a
transmission with :meth:`TransmitSoon.request` as often as it likes and
gets one call of its ``transmit`` function on the next event-loop
iteration, after everything the current one queued (as aioquic's own
``QuicConnectionProtocol._transmit_soon`` does for its stream writers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class TransmitSoon:
    """Calls ``transmit()`` once, on the next event-loop iteration, however often it was requested before.

    ``loop`` is the event loop to schedule on; without one, the running
    loop at the time of the request, and no loop running (a trio worker)
    means no transmission: the owner then transmits by other means.
    """

    __slots__ = ("_event_loop", "_transmit", "scheduled")

    def __init__(self, transmit: Callable[[], None], loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._transmit = transmit
        self._event_loop = loop
        self.scheduled = False
        """A transmission is due on the next event-loop iteration (hot paths test this before calling :meth:`request`)."""

    def request(self) -> None:
        """Transmit on the next event-loop iteration (once, whatever the number of requests until then)."""
        if self.scheduled:
            return
        loop = self._event_loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
        self.scheduled = True
        loop.call_soon(self._run)

    def _run(self) -> None:
        self.scheduled = False
        self._transmit()


__all__ = ["TransmitSoon"]

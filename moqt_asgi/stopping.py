"""Stopping sessions gracefully: GOAWAY, close when idle, and a deadline.

:meth:`~moqt_asgi.server.Server.shutdown` and :meth:`~moqt_asgi.client.Client.shutdown`
stop their sessions with :func:`send_goaway` and :func:`drain`;
:func:`stop_session` stops one session the same way.

A server that is not a :class:`~moqt_asgi.server.Server` (Hypercorn, with
WebTransport added by :mod:`moqt_asgi.webtransport.hypercorn`) tells
each WebTransport session that it is stopping
(:meth:`~moqt_asgi.webtransport.session.WebTransportSession.request_shutdown`).
The :class:`~moqt_asgi.app.MoQ` app then stops the MoQ session on it with
:func:`stop_session`: GOAWAY on lite-04+, a close (code 0) as soon as it is
idle on older versions, and at the deadline a close with the GOAWAY-timeout
code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .engine.session import Session
from .protocol.codes import goaway_timeout_code
from .protocol.errors import SessionClosed
from .types import SessionHook

logger = logging.getLogger("moqt_asgi.server")

POLL_INTERVAL = 0.05
"""How often a graceful stop looks at its sessions (seconds)."""
CLOSE_GRACE = 0.5
"""Seconds a server waits for sessions it closed to finish before it returns anyway. A session whose
application ignores cancellation goes on in the background until it is abandoned (logged)."""


def session_idle(session: Session) -> bool:
    """True when a session has no work in flight.

    Idle means: no subscription of the peer's is being served by us and no
    subscription of ours is open. Announcement streams do not count (they
    stay open for the life of a session).
    """
    return session.idle


async def drain(sessions: list[Session], deadline: float, log: logging.Logger, *,
                close_when_idle: set[Session]) -> bool:
    """Wait until every session in ``sessions`` closed, or ``deadline`` (loop time).

    Sessions in ``close_when_idle`` are closed (code 0) as soon as they are
    idle (:func:`session_idle`). At the deadline the rest are closed with
    ``GOAWAY_TIMEOUT``. Returns True if none had to be closed that way.
    """
    loop = asyncio.get_running_loop()
    while True:
        for session in list(close_when_idle):
            if session.closed:
                close_when_idle.discard(session)
            elif session_idle(session):
                log.info("closing idle session %r", session)
                close_when_idle.discard(session)
                session.close(0, "shutting down")
        live = [session for session in sessions if not session.closed]
        if not live:
            return True
        if loop.time() >= deadline:
            break
        await asyncio.sleep(min(POLL_INTERVAL, max(deadline - loop.time(), 0.0)))
    log.info("%d session(s) still open after the grace period; closing them", len(live))
    for session in live:
        session.close(goaway_timeout_code(session.codec.error_codes), "goaway timeout")
    await asyncio.wait([asyncio.ensure_future(session.wait_closed()) for session in live], timeout=CLOSE_GRACE)
    return False


async def send_goaway(session: Session, uri: str, log: logging.Logger) -> None:
    """Send GOAWAY (with ``uri``, if any); a session closing under us is only logged."""
    try:
        await session.send_goaway(uri)
        log.info("sent GOAWAY%s to %r", f" ({uri})" if uri else "", session)
    except Exception as exc:  # the session may be closing under us
        log.debug("could not send GOAWAY to %r: %s", session, exc)


ShutdownSignal = Callable[[Callable[[float], None]], None]
"""``on_shutdown(callback)``: calls ``callback(seconds_left)`` once the server is stopping."""


async def stop_session(session: Session, timeout: float, *, uri: str = "", log: logging.Logger = logger) -> bool:
    """Stop ``session`` within ``timeout`` seconds; True if it ended before the deadline.

    * lite-04+: GOAWAY (``uri``: where to reconnect, ``""`` for nowhere in
      particular), then the peer has until the deadline to leave;
    * older versions: closed with code 0 as soon as it is idle
      (:func:`session_idle`);
    * at the deadline: closed with the GOAWAY-timeout code of its dialect.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    close_when_idle: set[Session] = set()
    if session.features.goaway:
        await send_goaway(session, uri, log)
    else:
        close_when_idle.add(session)
    return await drain([session], deadline, log, close_when_idle=close_when_idle)


def stop_on_shutdown(on_shutdown: ShutdownSignal | None, *, uri: str = "", log: logging.Logger = logger,
                     then: SessionHook | None = None) -> SessionHook:
    """A session hook (``serve_connection(on_session=...)``) that stops the session when told to.

    Once ``on_shutdown`` (the connection's signal; ``None`` if it has none)
    reports that the server is stopping, the session runs :func:`stop_session`
    with the seconds left, in its own task group (it ends with the session).
    ``then`` (the hook the connection would have had otherwise, e.g. a
    server's registry: :data:`moqt_asgi.serving.session_hook`) is called
    afterwards.
    """
    chained = then

    def hook(session: Session) -> None:
        if on_shutdown is not None:
            on_shutdown(lambda left: _start_stopping(session, left, uri, log))
        if chained is not None:
            chained(session)

    return hook


def _start_stopping(session: Session, left: float, uri: str, log: logging.Logger) -> None:
    if session.closed:
        return
    log.info("server stopping: %r has %.2fs to end", session, left)
    try:
        session.spawn(stop_session(session, left, uri=uri, log=log), "shutdown")
    except SessionClosed:  # closed, or not running any more
        return


__all__ = ["POLL_INTERVAL", "ShutdownSignal", "drain", "send_goaway", "session_idle", "stop_on_shutdown",
           "stop_session"]

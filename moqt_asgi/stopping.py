"""Stopping one session the way :meth:`~moqt_asgi.server.Server.shutdown` stops all of its own.

A server that is not a :class:`~moqt_asgi.server.Server` (Hypercorn, with
WebTransport added by :mod:`moqt_asgi.webtransport.hypercorn_patch`) tells
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

from .protocol.errors import SessionClosed
from .serving import SessionHook, session_hook
from .session import Session

logger = logging.getLogger("moqt_asgi.server")

ShutdownSignal = Callable[[Callable[[float], None]], None]
"""``on_shutdown(callback)``: calls ``callback(seconds_left)`` once the server is stopping."""


async def stop_session(session: Session, timeout: float, *, uri: str = "", log: logging.Logger = logger) -> bool:
    """Stop ``session`` within ``timeout`` seconds; True if it ended before the deadline.

    * lite-04+: GOAWAY (``uri``: where to reconnect, ``""`` for nowhere in
      particular), then the peer has until the deadline to leave;
    * older versions: closed with code 0 as soon as it is idle
      (:func:`~moqt_asgi.server.session_idle`);
    * at the deadline: closed with the GOAWAY-timeout code of its dialect.
    """
    from .server import _send_goaway, drain  # the server module imports the app, which uses this one

    deadline = asyncio.get_running_loop().time() + timeout
    close_when_idle: set[Session] = set()
    if session.features.goaway:
        await _send_goaway(session, uri, log)
    else:
        close_when_idle.add(session)
    return await drain([session], deadline, log, close_when_idle=close_when_idle)


def stop_on_shutdown(on_shutdown: ShutdownSignal | None, *, uri: str = "", log: logging.Logger = logger,
                     then: SessionHook | None = None) -> SessionHook:
    """A session hook (``serve_connection(on_session=...)``) that stops the session when told to.

    Once ``on_shutdown`` (the connection's signal; ``None`` if it has none)
    reports that the server is stopping, the session runs :func:`stop_session`
    with the seconds left, in its own task group (it ends with the session).
    ``then`` (default: the :data:`~moqt_asgi.serving.session_hook` of the
    calling context, a server's registry) is called afterwards, as it would
    have been without this hook.
    """
    chained = then if then is not None else session_hook.get()

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


__all__ = ["ShutdownSignal", "stop_on_shutdown", "stop_session"]

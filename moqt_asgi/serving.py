"""Serving one connection: setup, the app's decision, the session's life.

Transport-independent: the native QUIC server and the in-memory pair call
:func:`serve_connection`; so will the WebTransport entrypoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from .app import MoQ
from .handshake import SetupOffer, read_client_setup, reject_setup, send_server_setup
from .mux import TrackMux
from .protocol.errors import ErrorCode, ProtocolError, SessionClosed, StreamError
from .protocol.versions import SETUP_VERSIONS, Version, choose_version, version_name
from .request import Acceptor, SetupRequest, Transport, status_to_code
from .session import Session
from .transport.base import Connection

logger = logging.getLogger("moqt_asgi.server")


async def serve_connection(app: MoQ, connection: Connection, *, transport: Transport = "quic",
                           versions: tuple[Version, ...] = SETUP_VERSIONS, setup_timeout: float = 10.0,
                           log: logging.Logger = logger, target: str | None = None,
                           headers: Mapping[str, str] | None = None) -> None:
    """Run one connection from setup to close. Never raises for peer misbehaviour.

    ``target`` (``/path?query``) and ``headers`` come from the transport when
    it has them (WebTransport's CONNECT); the request then uses them instead
    of the setup's Path parameter, and ``headers["origin"]`` as its origin.
    """
    limits = app.limits
    try:
        async with asyncio.timeout(setup_timeout):
            offer = await read_client_setup(connection, limits)
    except TimeoutError:
        log.info("no session setup within %.1fs; closing", setup_timeout)
        connection.close(ErrorCode.TIMEOUT, "setup timeout")
        return
    except ProtocolError as exc:
        log.info("bad session setup: %s", exc)
        connection.close(exc.code, exc.message[:100])
        return
    except (SessionClosed, StreamError) as exc:
        log.debug("connection ended during setup: %s", exc)
        connection.close(ErrorCode.CANCEL)
        return

    request = SetupRequest.from_target(offer.path if target is None else target, client=connection.peer_address,
                                       versions=offer.setup.versions, transport=transport,
                                       headers=dict(headers or {}), origin=(headers or {}).get("origin"))
    session_box: list[Session] = []
    decided = asyncio.Event()

    async def accept(mux: TrackMux) -> Session:
        version = choose_version(offer.setup.versions, versions)
        if version is None:
            offered = ", ".join(version_name(v) for v in offer.setup.versions)
            log.info("no common version (peer offered %s)", offered)
            _reject(connection, offer, ErrorCode.VERSION, "no common version")
            raise ProtocolError(ErrorCode.VERSION, f"no common version; peer offered {offered}")
        codec = send_server_setup(offer, version, limits)
        session = Session(connection, codec, mux=mux, limits=limits, is_client=False, path=request.path,
                          session_stream=(offer.stream, offer.reader), logger_=log, timeout=setup_timeout)
        session.start()
        session_box.append(session)
        decided.set()
        log.info("session accepted: %s path=%r from %s", version.name, request.path, request.client)
        return session

    async def reject(status: int, reason: str) -> None:
        log.info("session rejected with %d (%s) path=%r", status, reason, request.path)
        _reject(connection, offer, status_to_code(status), reason)
        decided.set()

    request._acceptor = Acceptor(accept, reject)
    handler = asyncio.ensure_future(app.handle_setup(request))
    handler.add_done_callback(lambda _: decided.set())
    try:
        await decided.wait()
        if session_box:
            await session_box[0].wait_closed()
    finally:
        if not handler.done():
            handler.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await handler
        for session in session_box:
            await session.aclose()
        connection.close(ErrorCode.CANCEL)


def _reject(connection: Connection, offer: SetupOffer, code: int, reason: str) -> None:
    reject_setup(offer, code)
    connection.close(code, reason[:100])

"""MoQ over an ASGI ``websocket`` scope: the checks before the upgrade, then a session.

:func:`serve_websocket` is what :class:`~moqt_asgi.app.MoQ` does with a
``websocket`` scope, under any ASGI server (Hypercorn's TCP listeners, or
``serve``'s own):

1. the app-wide checks (origin, ``auth`` from the path and ``?jwt=``), then the
   routes (404 for a path none matches, 403 for a route's origin rule), all
   answered in HTTP before the upgrade: with the ASGI
   ``websocket.http.response`` extension the exact status, otherwise a
   ``websocket.close`` before the accept (the server answers 403). Each
   refusal, including the 400s below, is counted in the app's metrics
   (``moqt_sessions_refused_total``) and logged as WebTransport's are
   (:func:`~moqt_asgi.metrics.note_refusal`, ``transport=websocket``);
2. the subprotocol, chosen from the offered ones by our preference
   (:func:`server_subprotocols`: ``qmux-01.moq-lite-05`` first, as moq-relay);
   400 if some were offered and none is ours. Exactly the chosen one is
   echoed; a client that offers none gets the legacy framing with the SETUP
   negotiation;
3. the upgrade, then :func:`~moqt_asgi.serving.serve_connection` on a
   :class:`~.session.WebSocketConnection` over the scope's ``receive`` and
   ``send``.

A server that can say when it is stopping offers the ``moqt.shutdown``
extension: ``scope["extensions"]["moqt.shutdown"]["on_shutdown"](callback)``
registers ``callback(seconds_left)`` to be called once when it stops; if
``register`` returns a callable, it is called when the session has ended (to
withdraw the registration). The
session is then stopped as on WebTransport (:func:`~moqt_asgi.stopping.stop_on_shutdown`:
GOAWAY on lite-04+, a close once idle on older versions, the GOAWAY-timeout
close at the deadline). ASGI itself has no such signal: without the
extension a session lasts until the server closes its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..auth.tokens import Grant
from ..metrics import note_refusal
from ..protocol.versions import ALPN_LITE, Version, protocols_for
from ..routing import Route, origin_allowed
from ..serving import serve_connection, session_hook
from ..stopping import stop_on_shutdown
from ..types import Message, Receive, Scope, Send, SetupApp
from .pipe import MessagePipe
from .qmux import Framing, parse_subprotocol
from .session import WebSocketConnection, WebSocketSettings

logger = logging.getLogger("moqt_asgi.websocket")

CLOSE_REPLY_TIMEOUT = 1.0
"""Seconds a closing WebSocket waits for the peer's Close frame (the closing handshake) before it ends anyway."""
FIRST_ALPN = "moq-lite-05"
"""The protocol preferred over WebSocket (what moq-relay and every official client settle on)."""
BARE = ("qmux-01", "qmux-00", "qmux-02", Framing.LEGACY.value)
"""Subprotocols without an application protocol: the SETUP exchange chooses the version (like ``moql``)."""


class WebSocketApp(SetupApp, Protocol):
    """What serving a ``websocket`` scope needs of the application (:class:`~moqt_asgi.app.MoQ` is one)."""

    routes: list[Route]
    goaway_uri: str

    def check_access(self, path: str, query: str, origin: str | None) -> tuple[int, str, Grant | None]: ...

    def resolve(self, path: str) -> tuple[Route | None, dict[str, Any]]: ...


def _alpns(versions: Iterable[Version | str]) -> list[str]:
    alpns = list(protocols_for(versions))
    if FIRST_ALPN in alpns:
        alpns.remove(FIRST_ALPN)
        alpns.insert(0, FIRST_ALPN)
    return alpns


def server_subprotocols(versions: Iterable[Version | str]) -> list[str]:
    """The subprotocols a server accepts for ``versions``, preferred first.

    Each protocol (``moq-lite-05`` first, then the others newest first, then
    ``moql``) with ``qmux-01.``, ``qmux-00.`` and ``qmux-02.``; then the bare
    framings, which mean the SETUP exchange, if a SETUP-negotiated version is
    among ``versions``.
    """
    alpns = _alpns(versions)
    out = [f"{framing}.{alpn}" for alpn in alpns for framing in ("qmux-01", "qmux-00", "qmux-02")]
    if ALPN_LITE in alpns:
        out.extend(BARE)
    return out


def client_subprotocols(versions: Iterable[Version | str]) -> list[str]:
    """What a client offers for ``versions``, in the official clients' order.

    moq-rs and ``@moq/net`` offer each protocol newest first with
    ``qmux-02.``, ``qmux-01.``, ``qmux-00.``, then the bare
    ``qmux-02, qmux-01, qmux-00, webtransport``; we offer the moq-lite part of
    that list (the bare ones only with a SETUP-negotiated version).
    """
    alpns = list(protocols_for(versions))
    out = [f"{framing}.{alpn}" for alpn in alpns for framing in ("qmux-02", "qmux-01", "qmux-00")]
    if ALPN_LITE in alpns:
        out.extend(("qmux-02", "qmux-01", "qmux-00", Framing.LEGACY.value))
    return out


def split_subprotocols(values: Iterable[str]) -> list[str]:
    """Offered subprotocols, each header value split on commas and trimmed."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def choose_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first of ``supported`` (our preference) that was ``offered``."""
    offered_set = set(offered)
    return next((protocol for protocol in supported if protocol in offered_set), None)


class ASGIPipe(MessagePipe):
    """An accepted ASGI ``websocket`` scope as a :class:`~.pipe.MessagePipe`."""

    def __init__(self, receive: Receive, send: Send, peer: tuple[str, int] | None = None) -> None:
        self._receive = receive
        self._send = send
        self._closed = False
        self._disconnected = False
        self._receiving = 0
        self._received = asyncio.Event()
        self.peer_address = peer

    async def send(self, data: bytes) -> None:
        if self._closed or self._disconnected:
            raise ConnectionError("WebSocket closed")
        try:
            await self._send({"type": "websocket.send", "bytes": data})
        except Exception as exc:
            self._disconnected = True
            raise ConnectionError(f"WebSocket send failed: {exc}") from exc

    async def receive(self) -> bytes | str | None:
        if self._disconnected:
            return None
        self._receiving += 1
        try:
            message = await self._receive()
        finally:
            self._receiving -= 1
            self._received.set()
        kind = message["type"]
        if kind == "websocket.receive":
            data = message.get("bytes")
            if data is not None:
                return bytes(data)
            return str(message.get("text") or "")
        self._disconnected = True  # websocket.disconnect
        return None

    async def close(self) -> None:
        if self._closed or self._disconnected:
            self._closed = True
            return
        self._closed = True
        try:
            await self._send({"type": "websocket.close"})
        except Exception:
            return
        await self._await_disconnect(CLOSE_REPLY_TIMEOUT)

    async def _await_disconnect(self, timeout: float) -> None:
        """The closing handshake: wait (at most ``timeout``) for the peer's Close, discarding what comes before it.

        Returning from the ASGI app lets the server close the TCP connection
        (with TLS, its ``close_notify``); a peer's Close frame that arrives after
        that is data after ``close_notify``, which Hypercorn's TCP server does not
        expect. Waiting for ``websocket.disconnect`` orders the two.
        """
        with contextlib.suppress(Exception):  # TimeoutError included
            async with asyncio.timeout(timeout):
                while not self._disconnected:
                    if self._receiving:  # the session's reader is in receive(): its result is ours to see
                        self._received.clear()
                        await self._received.wait()
                    else:
                        await self.receive()


async def refuse(scope: Scope, send: Send, status: int) -> None:
    """Answer the upgrade with ``status`` (exactly, where the server offers ``websocket.http.response``)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "websocket.http.response.body", "body": b""})
    else:
        await send({"type": "websocket.close"})


def request_headers(scope: Scope) -> dict[str, str]:
    """The scope's headers, lower-case names, repeated ones joined with ``", "``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def serve_websocket(app: WebSocketApp, scope: Scope, receive: Receive, send: Send,
                          settings: WebSocketSettings | None = None) -> None:
    """Serve one ASGI ``websocket`` scope with ``app`` (see the module docstring)."""
    message: Message = await receive()
    if message["type"] != "websocket.connect":
        return
    headers = request_headers(scope)
    origin = headers.get("origin")
    path = scope.get("path") or "/"
    query = scope.get("query_string", b"").decode("latin-1")
    status, reason, _ = app.check_access(path, query, origin)
    label: str | None = None
    if status:
        logger.info("WebSocket session for %r refused (%d): %s", path, status, reason)
    elif app.routes:
        route, _ = app.resolve(path)
        if route is None:
            logger.info("no route for WebSocket path %r", path)
            status = 404
        elif not origin_allowed(route.allow_origins, origin):
            logger.info("WebSocket origin %r not allowed for %s", origin, route.path)
            status, reason = 403, "origin not allowed"
    offered = split_subprotocols(scope.get("subprotocols", ()))
    protocol = choose_subprotocol(offered, server_subprotocols(app.versions))
    if not status and offered and protocol is None:
        logger.info("WebSocket client offered no subprotocol we speak: %s", ", ".join(offered))
        status, label = 400, "version"
    if not status and protocol is None and ALPN_LITE not in protocols_for(app.versions):
        logger.info("WebSocket client offered no subprotocol, and no SETUP-negotiated version is enabled")
        status, label = 400, "version"
    client: Any = scope.get("client")
    peer = (str(client[0]), int(client[1])) if client else None
    if status:
        note_refusal(app, status, reason if status in (401, 403) else "", transport="websocket", path=path,
                     client=peer, reason=label)
        await refuse(scope, send, status)
        return
    accept: Message = {"type": "websocket.accept"}
    if protocol is not None:
        accept["subprotocol"] = protocol
    await send(accept)
    framing, alpn = parse_subprotocol(protocol)
    connection = WebSocketConnection(ASGIPipe(receive, send, peer), framing, is_client=False, limits=app.limits,
                                     settings=settings or WebSocketSettings(), peer_address=peer)
    logger.debug("WebSocket session from %s on %r: %s", peer, path, protocol or "(no subprotocol)")
    connection.start()
    shutdown = scope.get("extensions", {}).get("moqt.shutdown") or {}
    withdraw = shutdown["on_shutdown"](connection.request_shutdown) if callable(shutdown.get("on_shutdown")) else None
    target = f"{path}?{query}" if query else path
    stopper = stop_on_shutdown(connection.on_shutdown, uri=app.goaway_uri, then=session_hook.get())
    try:
        await serve_connection(app, connection, transport="websocket", target=target, headers=headers,
                               protocol=None if alpn == ALPN_LITE else alpn, on_session=stopper)
    finally:
        if callable(withdraw):
            withdraw()
        connection.close(0)
        await finish(connection)


async def finish(connection: WebSocketConnection) -> None:
    """Wait for a closed connection's last message to leave; abort it if the peer reads nothing meanwhile."""
    try:
        await asyncio.wait_for(connection.finished(), connection.settings.close_timeout)
    except TimeoutError:
        connection.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.finished(), connection.settings.close_timeout + 1.0)


__all__ = ["ASGIPipe", "WebSocketApp", "choose_subprotocol", "finish", "client_subprotocols", "refuse", "serve_websocket",
           "server_subprotocols", "split_subprotocols"]

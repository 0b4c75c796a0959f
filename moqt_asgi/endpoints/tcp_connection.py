"""One TCP connection of :class:`~moqt_asgi.endpoints.tcp_server.TcpServer`: HTTP/1.1 requests as ASGI ``http``
scopes, and a WebSocket upgrade as a ``websocket`` scope (see :mod:`moqt_asgi.endpoints.tcp_websocket`).

HTTP/1.1 is parsed by ``h11``, which bounds a request head
(``max_header_bytes``: 431 beyond). A request body is read whole before the
application runs, up to ``max_body_bytes`` (413 beyond); head and body must
arrive within ``header_timeout``. Connections are kept alive between requests
for ``keep_alive_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol
from urllib.parse import unquote

import h11

from ..types import ASGIApp, Message, Scope
from .tcp_settings import ClientDisconnected, TcpSettings
from .tcp_websocket import WebSocketSession

READ_SIZE = 64 * 1024
"""Bytes asked of the socket at a time."""


class ConnectionHost(Protocol):
    """What a connection needs of its server (:class:`~moqt_asgi.endpoints.tcp_server.TcpServer` is one)."""

    app: ASGIApp
    settings: TcpSettings
    log: logging.Logger
    state: dict[str, Any] | None
    root_path: str
    draining: bool


class TcpConnection:
    """Serves the requests of one accepted TCP connection (plain or TLS) until it ends."""

    def __init__(self, server: ConnectionHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tls: bool,
                 client: tuple[str, int], server_address: tuple[str, int], deadline: float) -> None:
        self.server = server
        self.settings = server.settings
        self.log: logging.Logger = server.log
        self.reader = reader
        self.writer = writer
        self.tls = tls
        self.client = client
        self.server_address = server_address
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.settings.max_header_bytes)
        self._deadline = deadline
        self._task: asyncio.Task[Any] | None = None
        self._idle = False
        self.websocket: WebSocketSession | None = None
        """The WebSocket once the connection is upgraded."""

    # -- the server's controls
    def drain(self) -> None:
        """Close the connection if it waits for a next request; a request in flight ends it after its response."""
        if self._idle and self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        """End now: a WebSocket application is told (1012), anything else is cancelled."""
        if self.websocket is not None:
            self.websocket.stop()
        elif self._task is not None:
            self._task.cancel()

    # -- serving
    async def run(self) -> None:
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        deadline, idle = self._deadline, False
        while True:
            got = await self._read_request(deadline, idle)
            if got is None:
                return
            request, deadline = got
            if _is_upgrade(request):
                await self._upgrade(request, deadline)
                return
            body = await self._read_body(request, deadline)
            if body is None:
                return
            keep = await self._serve_http(request, body)
            if not keep or self.server.draining or self.h11.our_state is not h11.DONE:
                return
            try:
                self.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return
            deadline, idle = loop.time() + self.settings.keep_alive_timeout, True

    async def _read_request(self, deadline: float, idle: bool) -> tuple[h11.Request, float] | None:
        """The next request head, and the deadline for its body; None if the connection ends first."""
        loop = asyncio.get_running_loop()
        while True:
            event = await self._next_event(deadline, idle=idle)
            if event is None:
                return None
            if isinstance(event, h11.Request):
                if _head_size(event) > self.settings.max_header_bytes:  # h11 bounds only heads still incomplete
                    self.log.info("request head from %s over %d bytes: 431", self.client[0],
                                  self.settings.max_header_bytes)
                    await self.respond(431, "Request Header Fields Too Large")
                    return None
                return event, deadline
            if event is h11.NEED_DATA:  # the first bytes of a request after an idle wait
                idle = False
                deadline = loop.time() + self.settings.header_timeout
                continue
            return None

    async def _next_event(self, deadline: float, *, idle: bool = False) -> Any:
        """h11's next event, reading as needed until ``deadline``; None when the connection must end.

        With ``idle``, the first bytes read return ``NEED_DATA`` (the caller starts the request's deadline).
        """
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                self.log.info("bad HTTP request from %s: %s (%d)", self.client[0], exc, status)
                await self.respond(status, "Request Header Fields Too Large" if status == 431 else "Bad Request")
                return None
            if event is not h11.NEED_DATA:
                return None if isinstance(event, h11.ConnectionClosed) else event
            self._idle = idle
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(min(READ_SIZE, self.settings.max_header_bytes))
            except TimeoutError:
                if not idle:
                    self.log.info("closing a TCP connection from %s: request not complete within %.1fs",
                                  self.client[0], self.settings.header_timeout)
                return None
            except OSError:
                return None
            finally:
                self._idle = False
            self.h11.receive_data(data)
            if idle and data:
                return h11.NEED_DATA

    async def _read_body(self, request: h11.Request, deadline: float) -> bytes | None:
        """The whole request body (at most ``max_body_bytes``), or None once the connection must end."""
        limit = self.settings.max_body_bytes
        length = _header(request.headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self.respond(413, "Content Too Large")
            return None
        if self.h11.they_are_waiting_for_100_continue:
            await self.send_event(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    self.log.info("request body from %s over %d bytes: 413", self.client[0], limit)
                    await self.respond(413, "Content Too Large")
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                return None

    def scope(self, request: h11.Request, kind: str) -> Scope:
        """The ASGI scope of ``request``: ``kind`` is ``"http"`` or ``"websocket"``."""
        target = request.target
        if not target.startswith(b"/") and b"://" in target:  # absolute form
            target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
        raw_path, _, query = target.partition(b"?")
        secure = self.tls
        scope: Scope = {
            "type": kind,
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.http_version.decode("ascii"),
            "scheme": ("wss" if secure else "ws") if kind == "websocket" else ("https" if secure else "http"),
            "path": unquote(raw_path.decode("latin-1"), encoding="utf-8", errors="replace"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self.server.root_path,
            "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
            "client": self.client,
            "server": self.server_address,
            "extensions": {},
        }
        if kind == "http":
            scope["method"] = request.method.decode("ascii")
        if self.server.state is not None:
            scope["state"] = dict(self.server.state)
        return scope

    async def _serve_http(self, request: h11.Request, body: bytes) -> bool:
        """Run the application for one request; True if the connection may serve another."""
        scope = self.scope(request, "http")
        head = request.method == b"HEAD"
        done = asyncio.Event()
        given = False
        started: list[tuple[int, list[tuple[bytes, bytes]]]] = []
        sent_head = False
        finished = False

        async def receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal sent_head, finished
            kind = message["type"]
            if kind == "http.response.start":
                if started:
                    raise RuntimeError("http.response.start sent twice")
                started.append((int(message["status"]), [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]))
            elif kind == "http.response.body":
                if not started or finished:
                    raise RuntimeError("http.response.body outside a response")
                data = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if not sent_head:
                    status, headers = started[0]
                    names = {name.lower() for name, _ in headers}
                    if not more and b"content-length" not in names and b"transfer-encoding" not in names:
                        headers.append((b"content-length", str(len(data)).encode()))
                    if self.server.draining:
                        headers.append((b"connection", b"close"))
                    await self.send_event(h11.Response(status_code=status, headers=headers))
                    sent_head = True
                if data and not head:
                    await self.send_event(h11.Data(data=data))
                if not more:
                    await self.send_event(h11.EndOfMessage())
                    finished = True
                    done.set()
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r} in an http scope")

        try:
            await self.server.app(scope, receive, send)
        except ClientDisconnected:
            return False
        except Exception:
            self.log.exception("ASGI application failed on %s %s", scope["method"], scope["path"])
            if not sent_head:
                await self.respond(500, "Internal Server Error")
            return False
        finally:
            done.set()
        if not sent_head:
            if not started:
                self.log.error("ASGI application returned without a response to %s %s", scope["method"], scope["path"])
            await self.respond(500, "Internal Server Error")
            return False
        return finished

    async def _upgrade(self, request: h11.Request, deadline: float) -> None:
        version = _header(request.headers, b"sec-websocket-version")
        key = _header(request.headers, b"sec-websocket-key")
        if request.method != b"GET" or version != "13" or not key:
            await self.respond(400 if version == "13" or request.method != b"GET" else 426, "Bad WebSocket request",
                               extra=[(b"sec-websocket-version", b"13")])
            return
        event = await self._next_event(deadline)  # the end of the (empty) request
        if not isinstance(event, h11.EndOfMessage):
            if event is not None:
                await self.respond(400, "Bad Request")
            return
        scope = self.scope(request, "websocket")
        scope["subprotocols"] = [p for p in _ordered_tokens(request.headers, b"sec-websocket-protocol")]
        scope["extensions"] = {"websocket.http.response": {}}
        self.websocket = WebSocketSession(self, self.server.app, scope, key)
        await self.websocket.run()

    # -- writing
    async def send_event(self, event: Any) -> None:
        """Write one h11 event and wait until the socket takes it (``send_timeout``)."""
        await self.write(self.h11.send(event) or b"")

    async def write(self, data: bytes) -> None:
        """Queue ``data``; wait while more than ``write_buffer`` bytes are queued, for at most ``send_timeout``."""
        if self.writer.is_closing():
            raise ClientDisconnected("the connection is closed")
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await self.writer.drain()
        except TimeoutError:
            self.log.info("dropping a TCP connection from %s: it took nothing for %.1fs", self.client[0],
                          self.settings.send_timeout)
            self.writer.transport.abort()
            raise ClientDisconnected("the peer does not read") from None
        except ConnectionError as exc:
            raise ClientDisconnected(str(exc)) from exc

    def write_now(self, data: bytes) -> None:
        """Queue ``data`` without waiting (a last Close frame)."""
        if not self.writer.is_closing():
            self.writer.write(data)

    async def respond(self, status: int, text: str, *, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """A short plain-text answer that closes the connection (if a response can still be sent)."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (text + "\n").encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close"), *(extra or [])]
        try:
            await self.send_event(h11.Response(status_code=status, headers=headers))
            await self.send_event(h11.Data(data=body))
            await self.send_event(h11.EndOfMessage())
        except (ClientDisconnected, h11.LocalProtocolError):
            pass


def _header(headers: Any, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return bytes(value).decode("latin-1").strip()
    return None


def _tokens(headers: Any, name: bytes) -> set[str]:
    found: set[str] = set()
    for key, value in headers:
        if key == name:
            found.update(part.strip().lower() for part in bytes(value).decode("latin-1").split(","))
    return found


def _ordered_tokens(headers: Any, name: bytes) -> list[str]:
    found: list[str] = []
    for key, value in headers:
        if key == name:
            found.extend(part.strip() for part in bytes(value).decode("latin-1").split(",") if part.strip())
    return found


def _head_size(request: h11.Request) -> int:
    """The size of ``request``'s head as sent (give or take optional spaces)."""
    line = len(request.method) + len(request.target) + len(b" HTTP/1.1\r\n") + 1
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


def _is_upgrade(request: h11.Request) -> bool:
    return "websocket" in _tokens(request.headers, b"upgrade") and "upgrade" in _tokens(request.headers, b"connection")


__all__ = ["ClientDisconnected", "ConnectionHost", "TcpConnection"]

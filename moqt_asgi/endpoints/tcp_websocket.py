"""A WebSocket on the TCP listener: an HTTP/1.1 upgrade served as an ASGI ``websocket`` scope, through ``wsproto``.

The application sees ASGI 3 messages: ``websocket.connect``, then
``websocket.receive`` (``bytes`` or ``text``) and finally
``websocket.disconnect`` (with ``code`` and ``reason``); it answers with
``websocket.accept`` (``subprotocol``, ``headers``), ``websocket.send`` and
``websocket.close``. Closing before accepting answers 403; the
``websocket.http.response`` extension answers with any status and body.
Pings are answered; no extension (compression) is negotiated.

Bounds: a message longer than ``max_message_bytes`` closes the connection
(1009). Received messages wait for the application in a queue of at most
``receive_buffer`` bytes: beyond it the socket is not read, so a peer that
sends faster than the application receives is slowed by TCP. ``send`` waits
while ``write_buffer`` bytes are queued and drops a peer that takes nothing
for ``send_timeout`` (:class:`ClientDisconnected`). A WebSocket silent for
``websocket_idle_timeout`` is closed with 1001 (it is pinged first).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Protocol

import h11
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, generate_accept_token

from ..types import ASGIApp, Scope
from ..types import Message as AsgiMessage
from .tcp_settings import ClientDisconnected, TcpSettings

GOING_AWAY = 1001
INTERNAL_ERROR = 1011
MESSAGE_TOO_BIG = 1009
SERVICE_RESTART = 1012
ABNORMAL = 1006


class Carrier(Protocol):
    """What a WebSocket needs of the HTTP/1.1 connection it was upgraded from."""

    reader: asyncio.StreamReader
    h11: h11.Connection
    settings: TcpSettings
    log: logging.Logger
    client: tuple[str, int]

    async def write(self, data: bytes) -> None: ...

    def write_now(self, data: bytes) -> None: ...

    async def send_event(self, event: Any) -> None: ...

    async def respond(self, status: int, text: str, *, extra: list[tuple[bytes, bytes]] | None = None) -> None: ...


class WebSocketSession:
    """One WebSocket: runs ``app`` with ``scope`` (a ``websocket`` scope) over ``carrier``'s socket."""

    def __init__(self, carrier: Carrier, app: ASGIApp, scope: Scope, key: str) -> None:
        self.carrier = carrier
        self.app = app
        self.scope = scope
        self.settings = carrier.settings
        self.log = carrier.log
        self._key = key
        self.state = "connecting"  # connecting -> open -> closed; or -> responding -> closed (denied)
        self._ws: WSConnection | None = None
        self._messages: collections.deque[tuple[AsgiMessage, int]] = collections.deque()
        self.queued = 0
        """Bytes of received messages the application has not taken yet."""
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._connect_given = False
        self._disconnect: AsgiMessage | None = None
        self._reader: asyncio.Task[None] | None = None
        self._response: tuple[int, list[tuple[bytes, bytes]]] | None = None

    # -- the application's side
    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except Exception:
            self.log.exception("ASGI application failed on WebSocket %s", self.scope.get("path"))
            if self.state == "connecting":
                await self.carrier.respond(500, "Internal Server Error")
            elif self.state == "open":
                await self._close(INTERNAL_ERROR, "internal error")
        else:
            if self.state == "connecting":
                await self.carrier.respond(403, "Forbidden")
            elif self.state == "open":
                await self._close(1000, "")
            elif self.state == "responding":
                await self.carrier.respond(500, "Internal Server Error")
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)

    async def receive(self) -> AsgiMessage:
        if not self._connect_given:
            self._connect_given = True
            return {"type": "websocket.connect"}
        while not self._messages:
            if self._disconnect is not None:
                return dict(self._disconnect)
            self._arrived.clear()
            await self._arrived.wait()
        message, size = self._messages.popleft()
        self.queued -= size
        if self.queued < self.settings.receive_buffer:
            self._room.set()
        return message

    async def send(self, message: AsgiMessage) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if self.state != "open" or self._ws is None or self._ws.state is not ConnectionState.OPEN:
                raise ClientDisconnected("the WebSocket is closed")
            data, text = message.get("bytes"), message.get("text")
            event: Message[Any]
            if data is not None:
                event = BytesMessage(data=bytes(data))
            elif text is not None:
                event = TextMessage(data=str(text))
            else:
                raise RuntimeError("websocket.send without bytes or text")
            await self.carrier.write(self._ws.send(event))
        elif kind == "websocket.accept" and self.state == "connecting":
            await self._accept(message)
        elif kind == "websocket.close":
            if self.state == "connecting":
                self.state = "closed"
                await self.carrier.respond(403, "Forbidden")
            elif self.state == "open":
                await self._close(int(message.get("code") or 1000), str(message.get("reason") or ""))
        elif kind == "websocket.http.response.start" and self.state == "connecting":
            self.state = "responding"
            self._response = (int(message["status"]), [(bytes(n), bytes(v)) for n, v in message.get("headers", ())])
        elif kind == "websocket.http.response.body" and self.state == "responding":
            await self._http_body(message)
        elif self._disconnect is not None:
            raise ClientDisconnected("the WebSocket is closed")
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in WebSocket state {self.state}")

    async def _accept(self, message: AsgiMessage) -> None:
        headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                   (b"sec-websocket-accept", generate_accept_token(self._key.encode()))]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append((b"sec-websocket-protocol", str(subprotocol).encode()))
        headers.extend((bytes(n), bytes(v)) for n, v in message.get("headers", ()))
        await self.carrier.send_event(h11.InformationalResponse(status_code=101, headers=headers,
                                                                reason=b"Switching Protocols"))
        trailing, _ = self.carrier.h11.trailing_data
        self._ws = WSConnection(ConnectionType.SERVER, trailing_data=trailing)
        self.state = "open"
        self._reader = asyncio.create_task(self._read_loop())

    async def _http_body(self, message: AsgiMessage) -> None:
        assert self._response is not None
        status, headers = self._response
        if self.carrier.h11.our_state is h11.SEND_RESPONSE:
            await self.carrier.send_event(h11.Response(status_code=status, headers=[*headers, (b"connection", b"close")]))
        body = bytes(message.get("body", b""))
        if body:
            await self.carrier.send_event(h11.Data(data=body))
        if not message.get("more_body", False):
            await self.carrier.send_event(h11.EndOfMessage())
            self.state = "closed"

    # -- the server's side
    def stop(self) -> None:
        """The server is closing: the application gets ``websocket.disconnect`` (1012), the peer a Close frame."""
        if self.state == "open" and self._ws is not None:
            with _quiet():
                self.carrier.write_now(self._ws.send(CloseConnection(SERVICE_RESTART, "server stopping")))
        self._disconnected(SERVICE_RESTART, "server stopping")

    def _disconnected(self, code: int, reason: str = "") -> None:
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        if self.state != "responding":
            self.state = "closed"
        self._arrived.set()
        self._room.set()

    async def _close(self, code: int, reason: str) -> None:
        ws = self._ws
        self._disconnected(code, reason)
        if ws is not None and ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            with _quiet():
                await self.carrier.write(ws.send(CloseConnection(code, reason)))

    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        idle = self.settings.websocket_idle_timeout
        heard = loop.time()
        partial: list[Any] = []
        size = 0
        try:
            size = await self._handle(ws, partial, size)  # frames that came with the upgrade request
            while self._disconnect is None:
                if self.queued >= self.settings.receive_buffer:
                    self._room.clear()
                    await self._room.wait()
                    continue
                try:
                    async with asyncio.timeout(idle / 3):
                        data = await self.carrier.reader.read(self._read_size())
                except TimeoutError:
                    if loop.time() - heard >= idle:
                        self.log.info("closing a silent WebSocket from %s", self.carrier.client[0])
                        await self._close(GOING_AWAY, "idle timeout")
                        return
                    await self.carrier.write(ws.send(Ping(b"")))
                    continue
                except OSError:
                    data = b""
                heard = loop.time()
                ws.receive_data(data or None)
                size = await self._handle(ws, partial, size)
                if not data:
                    self._disconnected(ABNORMAL, "connection lost")
        except (ClientDisconnected, LocalProtocolError):
            self._disconnected(ABNORMAL, "connection lost")

    def _read_size(self) -> int:
        """Bytes to read next: what is left of ``receive_buffer`` (at least 4 KiB, at most 64 KiB)."""
        return min(64 * 1024, max(4096, self.settings.receive_buffer - self.queued))

    async def _handle(self, ws: WSConnection, partial: list[Any], size: int) -> int:
        """Turn received frames into queued messages; the size of a message still partial is returned."""
        for event in ws.events():
            if isinstance(event, BytesMessage | TextMessage):
                partial.append(event.data)
                size += len(event.data) if isinstance(event, BytesMessage) else len(event.data.encode())
                if size > self.settings.max_message_bytes:
                    self.log.info("WebSocket message from %s over %d bytes: closing (1009)", self.carrier.client[0],
                                  self.settings.max_message_bytes)
                    await self._close(MESSAGE_TOO_BIG, "message too big")
                    return 0
                if event.message_finished:
                    if isinstance(event, BytesMessage):
                        message: AsgiMessage = {"type": "websocket.receive", "bytes": b"".join(partial)}
                    else:
                        message = {"type": "websocket.receive", "text": "".join(partial)}
                    self._messages.append((message, size))
                    self.queued += size
                    self._arrived.set()
                    partial.clear()
                    size = 0
            elif isinstance(event, Ping):
                await self.carrier.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    with _quiet():
                        await self.carrier.write(ws.send(event.response() if ws.state is ConnectionState.REMOTE_CLOSING
                                                         else CloseConnection(event.code, event.reason)))
                self._disconnected(int(event.code), event.reason or "")
                return 0
        return size


class _quiet:
    """Ignore a write to a peer that is gone (a Close frame in a closing connection)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, ClientDisconnected | LocalProtocolError | ConnectionError)


__all__ = ["Carrier", "WebSocketSession"]

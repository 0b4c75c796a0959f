"""The ASGI ``webtransport`` scope on top of a :class:`WebTransportSession`.

The message vocabulary is a superset of the one in aioquic's
``examples/http3_server.py``; ``docs/asgi-webtransport.md`` is the
reference. In short:

receive
    ``webtransport.connect`` (first), ``webtransport.stream.receive``
    ``{stream, data, end_stream}``, ``webtransport.stream.reset``
    ``{stream, error_code}``, ``webtransport.stream.stop_sending``
    ``{stream, error_code}``, ``webtransport.datagram.receive {data}``,
    ``webtransport.drain``, ``webtransport.shutdown {timeout}`` (the server is
    stopping and closes the session in ``timeout`` seconds),
    ``webtransport.disconnect {code, reason}`` (last).
send
    ``webtransport.accept {headers?, subprotocol?}``, ``webtransport.close
    {code?, reason?}`` (before accept: ``{status?, headers?}``, default 403),
    ``webtransport.stream.send {stream, data, end_stream?}``,
    ``webtransport.stream.reset {stream, error_code}``,
    ``webtransport.stream.stop_sending {stream, error_code}``,
    ``webtransport.datagram.send {data}``, ``webtransport.drain``.

``scope["extensions"]["webtransport"]["open_stream"]`` opens server streams;
``scope["extensions"]["moqt.connection"]["connection"]`` is the session
itself (a :class:`~moqt_asgi.transport.base.Connection`) for applications
that would rather not pay for a dict per chunk; such an application stops
calling ``receive()`` after the accept, and learns that the server is
stopping from the session (:meth:`~.session.WebTransportSession.on_shutdown`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote

from ..protocol.errors import ErrorCode, SessionClosed, StreamError
from .session import WebTransportSession, WebTransportStream

logger = logging.getLogger("moqt_asgi.webtransport")

Message = MutableMapping[str, Any]
ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]

SPEC_VERSION = "0.1"
INBOX_LIMIT = 1024 * 1024
"""Bytes of received stream data waiting in the ASGI inbox before the pumps pause."""
SEND_HIGH_WATER = 1024 * 1024
"""``webtransport.stream.send`` waits while more than this is queued on the session."""


def parse_sf_string_list(value: str) -> list[str]:
    """The strings of a structured-field list like ``"moq-lite-03", "moql"`` (other members are skipped)."""
    items: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        if value[i] != '"':
            while i < n and value[i] != ",":  # a token or other member: skip it
                i += 1
            continue
        i += 1
        out = []
        while i < n and value[i] != '"':
            if value[i] == "\\" and i + 1 < n:
                i += 1
            out.append(value[i])
            i += 1
        i += 1
        while i < n and value[i] != ",":  # parameters
            i += 1
        items.append("".join(out))
    return items


def sf_string(value: str) -> bytes:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'.encode("ascii")


def build_scope(session: WebTransportSession, headers: Iterable[tuple[bytes, bytes]], *,
                server: tuple[str, int] | None, root_path: str = "",
                state: MutableMapping[str, Any] | None = None) -> tuple[dict[str, Any], WebTransportASGI]:
    """The ``webtransport`` scope for a CONNECT's headers, and the adapter that serves it."""
    path_bytes = b"/"
    authority = b""
    regular: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b":path":
            path_bytes = value
        elif name == b":authority":
            authority = value
        elif not name.startswith(b":"):
            regular.append((name, value))
    if authority and not any(name == b"host" for name, _ in regular):
        regular.insert(0, (b"host", authority))
    raw_path, _, query = path_bytes.partition(b"?")
    subprotocols: list[str] = []
    for name, value in regular:
        if name == b"wt-available-protocols":
            subprotocols.extend(parse_sf_string_list(value.decode("latin-1")))
    adapter = WebTransportASGI(session)
    scope: dict[str, Any] = {
        "type": "webtransport",
        "asgi": {"version": "3.0", "spec_version": SPEC_VERSION},
        "http_version": "3",
        "method": "CONNECT",
        "scheme": "https",
        "path": unquote(raw_path.decode("ascii", "replace")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": regular,
        "client": session.client,
        "server": server,
        "subprotocols": subprotocols,
        "state": dict(state) if state is not None else {},
        "extensions": {
            "webtransport": {
                "session_id": session.session_id,
                "open_stream": adapter.open_stream,
                "max_datagram_size": lambda: session.max_datagram_size,
            },
            "moqt.connection": {"connection": session},
        },
    }
    return scope, adapter


class WebTransportASGI:
    """Turns one session into ASGI ``receive``/``send`` callables.

    Received data is read by small pump tasks (started on the first
    ``receive()`` after the accept) into an inbox bounded by bytes; while
    the application is behind, the pumps pause and the session's per-stream
    buffers absorb (and eventually stop) what the peer sends.
    """

    def __init__(self, session: WebTransportSession, *, inbox_limit: int = INBOX_LIMIT,
                 send_high_water: int = SEND_HIGH_WATER) -> None:
        self.session = session
        self.inbox_limit = inbox_limit
        self.send_high_water = send_high_water
        self._inbox: deque[Message] = deque()
        self._inbox_bytes = 0
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._space_waiters: list[asyncio.Future[None]] = []
        self._connect_delivered = False
        self._pumping = False
        self._disconnect: Message | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._early_opened: list[WebTransportStream] = []

    # -- running the application
    async def run(self, app: ASGIApp, scope: MutableMapping[str, Any]) -> None:
        """Call ``app`` and make sure the session ends decided and closed."""
        session = self.session
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            logger.exception("WebTransport application failed (session %d)", session.session_id)
            if session.state == "pending":
                session.reject(500)
            else:
                session.close(int(ErrorCode.TRANSPORT), "internal error")
        finally:
            if session.state == "pending":
                session.reject(403)
            elif not session.is_closed:
                session.close(0, "")
            await self.stop_pumps()

    async def stop_pumps(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- receive
    async def receive(self) -> Message:
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "webtransport.connect"}
        session = self.session
        if not self._pumping:
            await session.wait_decided()
            if session.state != "accepted":
                return self._disconnect_message()
            self._start_pumps()
        while not self._inbox:
            if self._disconnect is not None:
                return self._disconnect
            waiter = asyncio.get_running_loop().create_future()
            self._inbox_waiter = waiter
            try:
                await waiter
            finally:
                self._inbox_waiter = None
        message = self._inbox.popleft()
        if message["type"] == "webtransport.stream.receive":
            self._inbox_bytes -= len(message["data"])
            if self._inbox_bytes < self.inbox_limit:
                self._wake_space()
        return message

    def _disconnect_message(self) -> Message:
        if self._disconnect is None:
            reason = self.session.close_reason
            self._disconnect = {"type": "webtransport.disconnect", "code": reason.code if reason else 0,
                                "reason": reason.reason if reason else ""}
        return self._disconnect

    def _put(self, message: Message) -> None:
        self._inbox.append(message)
        if message["type"] == "webtransport.stream.receive":
            self._inbox_bytes += len(message["data"])
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_space(self) -> None:
        while self._inbox_bytes >= self.inbox_limit:
            waiter = asyncio.get_running_loop().create_future()
            self._space_waiters.append(waiter)
            await waiter

    def _wake_space(self) -> None:
        waiters, self._space_waiters = self._space_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- pumps
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_pumps(self) -> None:
        self._pumping = True
        session = self.session
        self._spawn(self._accept_loop(unidirectional=False))
        self._spawn(self._accept_loop(unidirectional=True))
        self._spawn(self._datagram_loop())
        self._spawn(self._closed_watch())
        session.on_drain(lambda: self._put({"type": "webtransport.drain"}))
        session.on_shutdown(self._on_shutdown)
        early, self._early_opened = self._early_opened, []
        for stream in early:
            self._track(stream)

    def _on_shutdown(self, left: float) -> None:
        if not self.session.is_closed:
            self._put({"type": "webtransport.shutdown", "timeout": left})

    def _track(self, stream: WebTransportStream) -> None:
        if stream.writable:
            sid = stream.stream_id
            stream.on_stopped(lambda code: self._on_peer_stopped(sid, code))
        if stream.readable:
            self._spawn(self._read_loop(stream))

    def _on_peer_stopped(self, stream_id: int, code: int) -> None:
        if not self.session.is_closed:
            self._put({"type": "webtransport.stream.stop_sending", "stream": stream_id, "error_code": code})

    async def _accept_loop(self, *, unidirectional: bool) -> None:
        session = self.session
        with contextlib.suppress(SessionClosed):
            while True:
                stream = await (session.accept_uni() if unidirectional else session.accept_bi())
                assert isinstance(stream, WebTransportStream)
                self._track(stream)

    async def _read_loop(self, stream: WebTransportStream) -> None:
        sid = stream.stream_id
        while True:
            await self._wait_space()
            try:
                data = await stream.read(65536)
            except StreamError as exc:
                if stream.peer_reset_code is not None and not self.session.is_closed:
                    self._put({"type": "webtransport.stream.reset", "stream": sid, "error_code": exc.code})
                return
            except SessionClosed:
                return
            end = not data or stream.read_finished()
            self._put({"type": "webtransport.stream.receive", "stream": sid, "data": data, "end_stream": end})
            if end:
                return

    async def _datagram_loop(self) -> None:
        session = self.session
        with contextlib.suppress(SessionClosed):
            while True:
                await self._wait_space()
                data = await session.receive_datagram()
                self._put({"type": "webtransport.datagram.receive", "data": data})

    async def _closed_watch(self) -> None:
        await self.session.wait_closed()
        self._disconnect_message()
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- send
    async def open_stream(self, unidirectional: bool = False) -> int:
        """Open a server-initiated stream and return its id (the ``open_stream`` extension)."""
        stream = self.session.open_stream(unidirectional=unidirectional)
        if self._pumping:
            self._track(stream)
        else:
            self._early_opened.append(stream)
        return stream.stream_id

    def _stream(self, message: Message) -> WebTransportStream:
        stream_id = message.get("stream")
        stream = self.session.get_stream(stream_id) if isinstance(stream_id, int) else None
        if stream is None:
            if self.session.is_closed:
                raise self.session.close_reason or SessionClosed(0, "closed")
            raise StreamError(int(ErrorCode.CANCEL), f"unknown or finished stream {stream_id!r}")
        return stream

    async def send(self, message: Message) -> None:
        kind = message["type"]
        session = self.session
        if kind == "webtransport.stream.send":
            stream = self._stream(message)
            while session.backlog() > self.send_high_water and not session.is_closed:
                await session.wait_writable()
            stream.write(bytes(message.get("data", b"")), bool(message.get("end_stream", False)))
        elif kind == "webtransport.datagram.send":
            session.send_datagram(bytes(message["data"]))
        elif kind == "webtransport.accept":
            headers = list(message.get("headers", ()))
            subprotocol = message.get("subprotocol")
            if subprotocol:
                headers.append((b"wt-protocol", sf_string(subprotocol)))
            session.accept(headers)
        elif kind == "webtransport.close":
            if session.state == "pending":
                session.reject(int(message.get("status", 403)), list(message.get("headers", ())))
            else:
                session.close(int(message.get("code", 0)), str(message.get("reason", "")))
        elif kind == "webtransport.stream.reset":
            self._stream(message).reset(int(message["error_code"]))
        elif kind == "webtransport.stream.stop_sending":
            self._stream(message).stop(int(message["error_code"]))
        elif kind == "webtransport.drain":
            session.drain()
        else:
            raise ValueError(f"unknown ASGI message type {kind!r} for a webtransport scope")


__all__ = ["WebTransportASGI", "build_scope", "parse_sf_string_list", "sf_string"]

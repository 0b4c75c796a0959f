"""A small ASGI server on TCP: HTTP/1.1 and WebSocket, plain and TLS on one port.

Browsers and moq-rs, given an ``http://host:port/`` URL, fetch
``/certificate.sha256`` over TCP at the QUIC port's number, and fall back to
WebSocket (``ws://``/``wss://``) at the same address. :class:`TcpServer` runs
any ASGI app there: ``http`` scopes for requests (HTTP/1.1 with keep-alive,
through ``h11``) and ``websocket`` scopes for upgrades (through ``wsproto``);
see :mod:`moqt_asgi.endpoints.tcp_connection`.

Plain and TLS share the port: the first byte of a connection tells them apart
(0x16 opens a TLS ClientHello; anything else is plain HTTP/1.1), and a TLS
connection is wrapped with the server's certificate. Every peer is assumed
hostile: connections are capped in total and per address, a connection must
finish its TLS handshake and each request head and body within
``header_timeout``, request heads and bodies and WebSocket messages are
bounded, and a peer that does not read what it is sent is dropped after
``send_timeout``. See :class:`TcpSettings`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import errno
import logging
import os
import socket
import ssl
import struct
import tempfile
import time
from typing import Any

from cryptography.hazmat.primitives import serialization

from ..protocol.errors import MoQError
from ..stopping import CLOSE_GRACE, POLL_INTERVAL
from ..types import ASGIApp
from .tcp_connection import TcpConnection
from .tcp_settings import TcpSettings
from .tls import ServerCredentials

logger = logging.getLogger("moqt_asgi.tcp")

TLS_HANDSHAKE = 0x16
"""The first byte of a TLS record carrying a handshake message: a ClientHello opens with it."""
READER_LIMIT = 16 * 1024
"""asyncio's stream reader stops taking bytes from the socket once twice this is unread (TCP then slows the peer)."""
REFUSALS_LOGGED_EVERY = 1.0
"""Seconds between two log lines about refused connections (the count in between is reported)."""


def server_ssl_context(credentials: ServerCredentials) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` presenting ``credentials`` (TLS 1.2+, ALPN ``http/1.1``).

    :mod:`ssl` loads certificates only from files: the chain and the key go
    through a private temporary file, the key encrypted under a one-time
    password, and the file is removed before this returns.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    password = os.urandom(24).hex().encode()
    pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in credentials.chain)
    pem += credentials.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.BestAvailableEncryption(password))
    with tempfile.TemporaryDirectory(prefix="moqt-tls-") as directory:
        path = os.path.join(directory, "chain.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(pem)
        context.load_cert_chain(path, password=password)
    return context


class TcpServer:
    """Serves an ASGI ``app`` on one TCP port: HTTP/1.1 and WebSocket, plain and (with ``ssl``) TLS.

    ``start()`` binds ``host:port`` (port 0 picks one; :attr:`address` tells
    it). Without ``ssl`` a TLS ClientHello is refused (the connection is
    closed). Connection tasks run in copies of ``context`` (default: the
    context of :meth:`start`), so a context variable set there reaches the
    app. ``state`` is copied into every scope's ``state``.

    :meth:`close` stops now: the listener closes, WebSocket apps receive
    ``websocket.disconnect`` (1012) and have ``CLOSE_GRACE`` to return.
    :meth:`drain` stops accepting and closes idle connections; requests in
    flight finish (their responses say ``connection: close``) and WebSocket
    sessions go on until :meth:`close`. :meth:`shutdown` is both, with a
    grace period between.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, ssl: ssl.SSLContext | None = None,
                 settings: TcpSettings | None = None, context: contextvars.Context | None = None,
                 state: dict[str, Any] | None = None, root_path: str = "", log: logging.Logger = logger) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.ssl = ssl
        self.settings = settings or TcpSettings()
        self.state = state
        self.root_path = root_path
        self.log = log
        self.draining = False
        """While True, new connections are refused and responses close their connection."""
        self._context = context
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None
        self._tasks: dict[asyncio.Task[None], TcpConnection | None] = {}
        self.by_address: collections.Counter[str] = collections.Counter()
        """Open connections per client IP address."""
        self._refused = 0
        self._last_refusal_log = 0.0

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (kept after the server stopped)."""
        if self._address is None:
            raise MoQError("TCP server is not started")
        return self._address

    @property
    def connection_count(self) -> int:
        """TCP connections open now."""
        return len(self._tasks)

    @property
    def connections(self) -> list[TcpConnection]:
        """The connections serving requests or a WebSocket now (not those still silent or in a TLS handshake)."""
        return [connection for connection in self._tasks.values() if connection is not None]

    async def start(self) -> None:
        """Bind and start accepting (returns at once). An address in use raises :class:`OSError`."""
        if self._listener is not None:
            raise MoQError("TCP server already started")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        if not infos:
            raise OSError(f"cannot resolve {self.host!r}")
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # IPV6_V6ONLY is left at the system's default, as for the UDP socket: "::" takes IPv4 too where it does
            listener.bind(address)
            listener.listen(512)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        bound = listener.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        self.draining = False
        context = self._context if self._context is not None else contextvars.copy_context()
        self._context = context
        self._accepting = loop.create_task(self._accept_loop(listener), context=context.copy())
        self.log.info("serving HTTP/1.1 and WebSocket on tcp://%s:%d (%s)", *self._address,
                      "plain and TLS" if self.ssl is not None else "plain only")

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.warning("cannot accept TCP connections: %s; pausing for a moment", exc)
                    await asyncio.sleep(0.1)
                    continue
                if listener.fileno() < 0:
                    return
                self.log.debug("accept failed: %s", exc)
                continue
            host = str(peer[0])
            why = self._over_cap(host)
            if why is not None or self.draining:
                self._refuse(sock, host, why or "the server is shutting down")
                continue
            self.by_address[host] += 1
            task = loop.create_task(self._connection(sock, (host, int(peer[1]))), context=self._new_context())
            self._tasks[task] = None
            task.add_done_callback(lambda done, host=host: self._forget(done, host))  # type: ignore[misc]

    def _new_context(self) -> contextvars.Context:
        assert self._context is not None
        return self._context.copy()

    def _over_cap(self, host: str) -> str | None:
        settings = self.settings
        if settings.max_connections is not None and len(self._tasks) >= settings.max_connections:
            return f"max_connections ({settings.max_connections})"
        cap = settings.max_connections_per_address
        if cap is not None and self.by_address[host] >= cap:
            return f"max_connections_per_address ({cap})"
        return None

    def _refuse(self, sock: socket.socket, host: str, why: str) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
        self._refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSALS_LOGGED_EVERY:
            self.log.warning("refusing TCP connections: %s; %d refused since the last report (latest from %s)",
                             why, self._refused, host)
            self._last_refusal_log = now
            self._refused = 0

    def _forget(self, task: asyncio.Task[None], host: str) -> None:
        self._tasks.pop(task, None)
        self.by_address[host] -= 1
        if self.by_address[host] <= 0:
            del self.by_address[host]
        if not task.cancelled() and task.exception() is not None:
            self.log.error("TCP connection failed", exc_info=task.exception())

    async def _connection(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        deadline = loop.time() + settings.header_timeout
        writer: asyncio.StreamWriter | None = None
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                async with asyncio.timeout_at(deadline):
                    first = await _peek(loop, sock)
            except TimeoutError:
                self.log.debug("closing a silent TCP connection from %s", peer[0])
                return
            if not first:
                return
            tls = first[0] == TLS_HANDSHAKE
            if tls and self.ssl is None:
                self.log.info("closing a TLS connection from %s: this listener has no certificate", peer[0])
                return
            reader = asyncio.StreamReader(limit=READER_LIMIT)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=self.ssl if tls else None,
                    ssl_handshake_timeout=max(deadline - loop.time(), 0.01) if tls else None)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                self.log.debug("TLS handshake with %s failed: %s", peer[0], exc)
                return
            transport.set_write_buffer_limits(high=settings.write_buffer)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            local = transport.get_extra_info("sockname") or self.address
            connection = TcpConnection(self, reader, writer, tls=tls, client=peer,
                                       server_address=(str(local[0]), int(local[1])), deadline=deadline)
            task = asyncio.current_task()
            assert task is not None
            self._tasks[task] = connection
            await connection.run()
        finally:
            if writer is not None:
                await _close(writer)
            else:
                sock.close()

    # -- stopping
    def _stop_listening(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def drain(self) -> None:
        """Stop accepting; close idle connections; requests in flight finish with ``connection: close``."""
        self.draining = True
        self._stop_listening()
        for task, connection in list(self._tasks.items()):
            if connection is None:
                task.cancel()  # no request yet (silent, or in its TLS handshake)
            else:
                connection.drain()

    def close(self) -> asyncio.Task[None]:
        """Stop listening and end every connection now; returns an awaitable.

        WebSocket apps receive ``websocket.disconnect`` (code 1012) and their
        peers a Close frame; anything still running after ``CLOSE_GRACE`` is
        cancelled. Awaiting the result waits until the connections have ended.
        """
        self.draining = True
        self._stop_listening()
        for task, connection in list(self._tasks.items()):
            if connection is None:
                task.cancel()
            else:
                connection.stop()
        return asyncio.ensure_future(self._closed(set(self._tasks)))

    async def _closed(self, tasks: set[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_GRACE)
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=CLOSE_GRACE)
            if stuck:
                self.log.warning("%d TCP connection(s) still stopping after %.1fs; not waiting for them", len(stuck),
                                 2 * CLOSE_GRACE)

    async def wait_requests(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no HTTP request is in flight (WebSockets are not waited for).

        True if none is left. Call it after :meth:`drain`, so that no new one starts.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(connection is None or connection.websocket is None for connection in self._tasks.values()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)
        return True

    async def shutdown(self, timeout: float = 5.0) -> bool:
        """:meth:`drain`, wait up to ``timeout`` seconds for connections to end, then :meth:`close`.

        True if every connection ended before the deadline.
        """
        self.drain()
        tasks = set(self._tasks)
        clean = True
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            clean = not pending
        await self.close()
        return clean

    async def __aenter__(self) -> TcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close after what is queued is sent; abort if the peer does not take it within ``CLOSE_GRACE``."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first byte waiting on ``sock``, left in place (b"" if the peer closed)."""
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    try:
        return sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return await _peek(loop, sock)
    except OSError:
        return b""


__all__ = ["TLS_HANDSHAKE", "TcpServer", "TcpSettings", "server_ssl_context"]

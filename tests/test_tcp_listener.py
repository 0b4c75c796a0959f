"""The TCP listener (HTTP/1.1 and WebSocket, plain and TLS on one port) with a tiny ASGI app, under hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import queue
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import moq
import pytest
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from moqt_asgi import MoQError, Server, dial
from moqt_asgi.endpoints.tcp_server import TcpServer, TcpSettings, server_ssl_context
from moqt_asgi.endpoints.tls import TLSConfig
from moqt_asgi.types import Receive, Scope, Send

from .chromium import chromium
from .conftest import ROOT, Certs
from .helpers import WAIT, cli, eventually, free_udp_port, read_tick, stop_serve, tick_app
from .test_browser_http import http_bundle, pages  # noqa: F401  (fixtures: the page server and its bundle)
from .test_lifecycle import no_leaks

# -- a tiny ASGI app


class EchoApp:
    """``GET /hello`` answers ``hello``; ``POST /size`` answers the body's length; a WebSocket echoes.

    WebSocket paths: ``/deny`` closes before accepting (403), ``/teapot`` answers 418 through the
    ``websocket.http.response`` extension, ``/flood`` sends 64 KiB messages without end, anything else
    accepts the first offered subprotocol and echoes each message.
    """

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.disconnects: list[dict[str, Any]] = []
        self.sent = 0
        self.send_failed: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            request = await receive()
            body = b"hello" if scope["path"] == "/hello" else str(len(request["body"])).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": body})
            return
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/deny":
            await send({"type": "websocket.close"})
            return
        if scope["path"] == "/teapot":
            await send({"type": "websocket.http.response.start", "status": 418, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"short and stout"})
            return
        offered = scope["subprotocols"]
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        if scope["path"] == "/flood":
            try:
                while True:
                    await send({"type": "websocket.send", "bytes": bytes(64 * 1024)})
                    self.sent += 1
            except OSError as exc:
                self.send_failed = exc
                return
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(dict(message))
                return
            if message.get("text") == "close":
                await send({"type": "websocket.close", "code": 4000, "reason": "asked"})
                return
            await send({"type": "websocket.send", **{k: v for k, v in message.items() if k in ("bytes", "text")}})


@contextlib.asynccontextmanager
async def tcp_server(app: Any, **options: Any) -> AsyncIterator[TcpServer]:
    server = TcpServer(app, **options)
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(), WAIT)


async def connect(server: TcpServer, *, tls: ssl.SSLContext | None = None
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.address
    return await asyncio.open_connection(host, port, ssl=tls, server_hostname="localhost" if tls else None)


def client_tls(certs: Certs) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.cert))
    return context


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(), WAIT)
    return b""


class HttpClient:
    """HTTP/1.1 on one connection, through h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
        headers = [("host", "localhost"), ("content-length", str(len(body)))]
        self.writer.write(self.h11.send(h11.Request(method=method, target=path, headers=headers)) or b"")
        self.writer.write(self.h11.send(h11.Data(data=body)) or b"" if body else b"")
        self.writer.write(self.h11.send(h11.EndOfMessage()) or b"")
        status, response_headers, data = 0, {}, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await asyncio.wait_for(self.reader.read(65536), WAIT))
            elif isinstance(event, h11.Response):
                status, response_headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return status, response_headers, data
            else:
                raise AssertionError(f"unexpected {event!r}")


class WsClient:
    """A WebSocket client through wsproto."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []

    async def handshake(self, path: str, subprotocols: list[str] | None = None) -> Event:
        self.writer.write(self.ws.send(Request(host="localhost", target=path, subprotocols=subprotocols or [])))
        return await self.next_event()

    async def next_event(self) -> Event:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def message(self) -> Message[Any]:
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            assert isinstance(event, Message), event
            parts.append(event.data)
            if event.message_finished:
                return type(event)(data=type(event.data)().join(parts))

    def send(self, event: Event) -> None:
        self.writer.write(self.ws.send(event))


# -- HTTP


async def test_http_get_and_keep_alive() -> None:
    app = EchoApp()
    async with tcp_server(app) as server:
        client = HttpClient(*await connect(server))
        assert await client.request("GET", "/hello?x=1") == (200, {b"content-type": b"text/plain",
                                                                   b"content-length": b"5"}, b"hello")
        assert (await client.request("POST", "/size", b"12345678"))[2] == b"8"  # the same connection
        assert server.connection_count == 1
        scope = app.scopes[0]
        assert scope["type"] == "http" and scope["scheme"] == "http" and scope["http_version"] == "1.1"
        assert scope["method"] == "GET" and scope["path"] == "/hello" and scope["raw_path"] == b"/hello"
        assert scope["query_string"] == b"x=1" and scope["server"] == server.address
        assert scope["client"][0] == "127.0.0.1" and (b"host", b"localhost") in scope["headers"]
        client.writer.close()


async def test_plain_and_tls_on_one_port(certs: Certs) -> None:
    credentials = TLSConfig(certfile=certs.cert, keyfile=certs.key).load_server_credentials()
    app = EchoApp()
    async with tcp_server(app, ssl=server_ssl_context(credentials)) as server:
        secure = HttpClient(*await connect(server, tls=client_tls(certs)))
        assert (await secure.request("GET", "/hello"))[2] == b"hello"
        plain = HttpClient(*await connect(server))
        assert (await plain.request("GET", "/hello"))[2] == b"hello"
        assert [scope["scheme"] for scope in app.scopes] == ["https", "http"]
        reader, writer = await connect(server, tls=client_tls(certs))
        ws = WsClient(reader, writer)
        accepted = await ws.handshake("/echo", ["moq-lite-06"])
        assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "moq-lite-06"
        assert app.scopes[-1]["scheme"] == "wss"
        for each in (secure.writer, plain.writer, writer):
            each.close()


async def test_a_tls_hello_without_a_certificate_is_closed() -> None:
    async with tcp_server(EchoApp()) as server:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(connect(server, tls=context), WAIT)


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with tcp_server(EchoApp(), settings=TcpSettings(keep_alive_timeout=0.3)) as server:
        client = HttpClient(*await connect(server))
        assert (await client.request("GET", "/hello"))[2] == b"hello"
        assert await read_until_closed(client.reader) == b""  # nothing more asked: closed after the timeout
        client.writer.close()


# -- WebSocket


async def test_websocket_echo_with_a_subprotocol_and_ping() -> None:
    app = EchoApp()
    async with tcp_server(app) as server:
        ws = WsClient(*await connect(server))
        accepted = await ws.handshake("/echo?room=1", ["moq-lite-06", "moql"])
        assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "moq-lite-06"
        scope = app.scopes[0]
        assert scope["type"] == "websocket" and scope["scheme"] == "ws" and scope["path"] == "/echo"
        assert scope["subprotocols"] == ["moq-lite-06", "moql"] and scope["query_string"] == b"room=1"
        assert "websocket.http.response" in scope["extensions"]
        ws.send(BytesMessage(data=b"\x00\x01binary"))
        assert (await ws.message()).data == b"\x00\x01binary"
        ws.send(TextMessage(data="text ✓"))
        assert (await ws.message()).data == "text ✓"
        ws.send(Ping(payload=b"are you there"))
        pong = await ws.next_event()
        assert isinstance(pong, Pong) and pong.payload == b"are you there"
        ws.send(CloseConnection(code=1000, reason="bye"))
        closed = await ws.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 1000
        await eventually(lambda: app.disconnects, "the app saw the disconnect")
        assert app.disconnects[0]["code"] == 1000
        await eventually(lambda: server.connection_count == 0, "the connection ended")


async def test_a_silent_websocket_is_pinged_then_closed() -> None:
    app = EchoApp()
    async with tcp_server(app, settings=TcpSettings(websocket_idle_timeout=0.6)) as server:
        ws = WsClient(*await connect(server))  # it reads, but answers nothing (not even pings)
        assert isinstance(await ws.handshake("/echo"), AcceptConnection)
        assert isinstance(await ws.next_event(), Ping)
        closed = await ws.next_event()
        while isinstance(closed, Ping):
            closed = await ws.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 1001
        await eventually(lambda: app.disconnects, "the app saw the disconnect")
        assert app.disconnects[0]["code"] == 1001


async def test_websocket_closed_by_the_app() -> None:
    async with tcp_server(EchoApp()) as server:
        ws = WsClient(*await connect(server))
        assert isinstance(await ws.handshake("/echo"), AcceptConnection)
        ws.send(TextMessage(data="close"))
        closed = await ws.next_event()
        assert isinstance(closed, CloseConnection) and (closed.code, closed.reason) == (4000, "asked")


async def test_websocket_denied_before_accept() -> None:
    async with tcp_server(EchoApp()) as server:
        ws = WsClient(*await connect(server))
        denied = await ws.handshake("/deny")
        assert isinstance(denied, RejectConnection) and denied.status_code == 403
        ws = WsClient(*await connect(server))
        teapot = await ws.handshake("/teapot")
        assert isinstance(teapot, RejectConnection) and teapot.status_code == 418 and teapot.has_body
        body = await ws.next_event()
        assert isinstance(body, RejectData) and body.data == b"short and stout"


async def test_server_close_tells_the_websocket_app() -> None:
    app = EchoApp()
    server = TcpServer(app)
    await server.start()
    ws = WsClient(*await connect(server))
    assert isinstance(await ws.handshake("/echo"), AcceptConnection)
    await asyncio.wait_for(server.close(), WAIT)
    assert app.disconnects == [{"type": "websocket.disconnect", "code": 1012, "reason": "server stopping"}]
    closed = await ws.next_event()
    assert isinstance(closed, CloseConnection) and closed.code == 1012
    assert server.connection_count == 0
    with pytest.raises(OSError):
        await connect(server)  # the listener is gone


async def test_shutdown_closes_idle_connections_and_finishes_requests() -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        arrived.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    server = TcpServer(slow)
    await server.start()
    idle_reader, idle_writer = await connect(server)
    busy = HttpClient(*await connect(server))
    answer = asyncio.ensure_future(busy.request("GET", "/"))
    await eventually(lambda: server.connection_count == 2, "both connections accepted")
    await asyncio.wait_for(arrived.wait(), WAIT)
    stopping = asyncio.ensure_future(server.shutdown(WAIT))
    assert await read_until_closed(idle_reader) == b""  # an idle connection is closed at once
    release.set()
    status, headers, body = await asyncio.wait_for(answer, WAIT)
    assert (status, body, headers[b"connection"]) == (200, b"late", b"close")
    assert await asyncio.wait_for(stopping, WAIT) is True
    idle_writer.close()


# -- hostile input


async def test_a_request_head_that_never_ends_is_closed_at_the_deadline() -> None:
    async with tcp_server(EchoApp(), settings=TcpSettings(header_timeout=0.5)) as server:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        started = asyncio.get_running_loop().time()
        assert await read_until_closed(reader) == b""
        assert asyncio.get_running_loop().time() - started < WAIT
        silent_reader, silent_writer = await connect(server)  # nothing at all: closed too
        assert await read_until_closed(silent_reader) == b""
        for w in (writer, silent_writer):
            w.close()


async def test_a_tls_handshake_that_never_ends_is_closed_at_the_deadline(certs: Certs) -> None:
    credentials = TLSConfig(certfile=certs.cert, keyfile=certs.key).load_server_credentials()
    settings = TcpSettings(header_timeout=0.5)
    async with tcp_server(EchoApp(), ssl=server_ssl_context(credentials), settings=settings) as server:
        reader, writer = await connect(server)
        writer.write(b"\x16\x03\x01\x02\x00")  # a ClientHello's record header, and then nothing
        assert await read_until_closed(reader) == b""
        writer.close()


async def test_oversized_headers_get_431() -> None:
    app = EchoApp()
    async with tcp_server(app, settings=TcpSettings(max_header_bytes=4096)) as server:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-big: " + b"a" * 8192 + b"\r\n\r\n")
        answer = await read_until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 431 ") and app.scopes == []
        writer.close()
        reader, writer = await connect(server)  # a head that h11 sees complete in its buffer: counted all the same
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-big: " + b"a" * 4500 + b"\r\n\r\n")
        answer = await read_until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 431 ") and app.scopes == []
        writer.close()


async def test_a_huge_body_gets_413() -> None:
    app = EchoApp()
    async with tcp_server(app, settings=TcpSettings(max_body_bytes=4096)) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /size HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n")
        assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 413 ")
        writer.close()
        reader, writer = await connect(server)  # chunked, no length announced
        writer.write(b"POST /size HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(3):
            writer.write(b"800\r\n" + b"a" * 2048 + b"\r\n")
        assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 413 ")
        assert app.scopes == []
        writer.close()


async def test_a_websocket_message_over_the_limit_closes_with_1009() -> None:
    app = EchoApp()
    async with tcp_server(app, settings=TcpSettings(max_message_bytes=8192)) as server:
        ws = WsClient(*await connect(server))
        assert isinstance(await ws.handshake("/echo"), AcceptConnection)
        ws.send(BytesMessage(data=bytes(4096)))
        assert len((await ws.message()).data) == 4096
        ws.send(BytesMessage(data=bytes(10_000)))
        closed = await ws.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 1009
        await eventually(lambda: app.disconnects, "the app saw the disconnect")
        assert app.disconnects[0]["code"] == 1009


async def test_a_peer_that_never_reads_bounds_what_the_app_can_queue() -> None:
    app = EchoApp()
    settings = TcpSettings(write_buffer=64 * 1024, send_timeout=1.0)
    async with tcp_server(app, settings=settings) as server:
        reader, writer = await connect(server)
        transport = writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        ws = WsClient(reader, writer)
        assert isinstance(await ws.handshake("/flood"), AcceptConnection)
        transport.pause_reading()  # the peer stops reading: the kernel buffers fill, then the server's
        await eventually(lambda: app.send_failed is not None, "the app's send gave up on the peer")
        # The kernel's socket buffers hold some messages; the server held at most write_buffer and one message.
        assert isinstance(app.send_failed, OSError)
        sent_bytes = app.sent * 64 * 1024
        assert sent_bytes < 64 * 1024 * 1024, sent_bytes  # nowhere near unbounded
        await eventually(lambda: server.connection_count == 0, "the connection was dropped")
        writer.close()


async def test_a_peer_that_sends_faster_than_the_app_receives_is_not_read() -> None:
    gate = asyncio.Event()
    received: list[int] = []

    async def sluggish(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await gate.wait()
        while (message := await receive())["type"] == "websocket.receive":
            received.append(len(message["bytes"]))

    settings = TcpSettings(receive_buffer=64 * 1024)
    async with tcp_server(sluggish, settings=settings) as server:
        reader, writer = await connect(server)
        ws = WsClient(reader, writer)
        assert isinstance(await ws.handshake("/"), AcceptConnection)
        writer.transport.set_write_buffer_limits(high=1 << 30)
        for _ in range(400):  # 400 messages of 16 KiB = 6.4 MiB, far more than the server will buffer
            ws.send(BytesMessage(data=bytes(16 * 1024)))
        await eventually(lambda: writer.transport.get_write_buffer_size() > 0, "the server stopped reading")
        await asyncio.sleep(0.2)
        (connection,) = server.connections
        assert connection.websocket is not None
        assert connection.websocket.queued <= 64 * 1024 + 16 * 1024 + 4096  # the buffer, a message, a read
        gate.set()
        await eventually(lambda: len(received) == 400, "every message arrived once the app read")
        writer.close()


@pytest.mark.parametrize("cap", ["max_connections_per_address", "max_connections"])
async def test_too_many_connections_are_refused(caplog: pytest.LogCaptureFixture, cap: str) -> None:
    async with tcp_server(EchoApp(), settings=TcpSettings(**{cap: 3})) as server:
        kept = [await connect(server) for _ in range(3)]
        await eventually(lambda: server.connection_count == 3, "three connections accepted")
        reader, writer = await connect(server)
        assert await read_until_closed(reader) == b""  # refused at once
        assert f"{cap} (3)" in caplog.text
        kept[0][1].close()
        await eventually(lambda: server.connection_count == 2, "one left")
        client = HttpClient(*await connect(server))  # room again
        assert (await client.request("GET", "/hello"))[2] == b"hello"
        for _, w in [*kept, (reader, writer), (client.reader, client.writer)]:
            w.close()
    gc.collect()


# -- Server: UDP and TCP on one port number


async def http_get(host: str, port: int, path: str, *, tls: ssl.SSLContext | None = None
                   ) -> tuple[int, dict[bytes, bytes], bytes]:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname="localhost" if tls else None)
    try:
        return await HttpClient(reader, writer).request("GET", path)
    finally:
        writer.close()


async def test_server_serves_udp_and_tcp_on_one_port_number_and_stops_cleanly(certs: Certs) -> None:
    async with no_leaks():
        server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app())
        await server.start()
        host, port = server.address
        assert server.tcp_address == (host, port)
        session = await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint)  # UDP still serves
        assert await read_tick(session) == b"tick"
        for tls in (None, client_tls(certs)):
            status, _, body = await http_get(host, port, "/certificate.sha256", tls=tls)
            assert (status, body.decode()) == (200, certs.fingerprint.replace(":", "").lower())
        assert (await http_get(host, port, "/health"))[0] == 200
        assert await server.close() is True
        await asyncio.wait_for(session.wait_closed(), WAIT)
        with pytest.raises(OSError):
            await asyncio.open_connection(host, port)
        assert server.tcp_address == (host, port)


async def test_server_without_tcp(certs: Certs) -> None:
    async with Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app(),
                      tcp=False) as server:
        with pytest.raises(MoQError):
            server.tcp_address  # noqa: B018
        with pytest.raises(OSError):
            await asyncio.open_connection(*server.address)


async def test_server_on_a_port_whose_tcp_number_is_taken(certs: Certs) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        server = Server(addr=f"127.0.0.1:{port}", certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app())
        with pytest.raises(OSError, match="tcp=False"):
            await server.start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", port))  # the UDP port was released
        udp.close()
    finally:
        taken.close()


async def test_server_on_port_0_tries_another_port_when_the_tcp_number_is_taken(
        certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[int] = []
    start = TcpServer.start

    async def clashing(self: TcpServer) -> None:
        tried.append(self.port)
        if len(tried) == 1:  # the first UDP port's TCP number is taken
            raise OSError(errno.EADDRINUSE, "Address already in use")
        await start(self)

    monkeypatch.setattr(TcpServer, "start", clashing)
    async with no_leaks():
        server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app())
        await server.start()
        assert len(tried) == 2 and tried[1] == server.address[1] == server.tcp_address[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", tried[0]))  # the first UDP port was let go
        udp.close()
        assert await server.close() is True


async def test_server_shutdown_stops_a_websocket_session(certs: Certs) -> None:
    async with no_leaks():
        server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app())
        await server.start()
        reader, writer = await asyncio.open_connection(*server.tcp_address)
        ws = WsClient(reader, writer)
        accepted = await ws.handshake("/", ["qmux-01.moq-lite-03"])
        assert isinstance(accepted, AcceptConnection), accepted
        assert await server.shutdown(1.0) in (True, False)
        while not isinstance(closed := await ws.next_event(), CloseConnection):  # the app's first messages
            assert isinstance(closed, BytesMessage)
        assert server.closed
        writer.close()


# -- moq-rs against Server's TCP side


async def moqrs_reads_tick(url: str, server: Server, **options: Any) -> bytes:
    """moq-rs reads ``clock/seconds`` from ``server`` at ``url``; its session is listed by the server meanwhile."""
    async with moq.Client(url, reconnect=False, **options) as peer:
        await eventually(lambda: server.sessions, "moq-rs's session is listed")
        broadcast = await asyncio.wait_for(peer.announced_broadcast("clock"), WAIT)
        track = await broadcast.subscribe_track("seconds")
        group = await asyncio.wait_for(track.next_group(), WAIT)
        assert group is not None
        frame = await asyncio.wait_for(group.read_frame(), WAIT)
        assert frame is not None
        return bytes(frame.payload)


@pytest.mark.interop
async def test_moqrs_http_url_fetches_the_certificate_over_tcp_then_dials_webtransport(certs: Certs) -> None:
    async with Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key),
                      handler=tick_app()) as server:
        port = server.address[1]
        # http:// makes moq-rs GET /certificate.sha256 over TCP at the port, then pin it for WebTransport
        assert await moqrs_reads_tick(f"http://127.0.0.1:{port}/", server, websocket_enabled=False) == b"tick"


@pytest.mark.interop
@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_moqrs_over_websocket(certs: Certs, scheme: str) -> None:
    async with Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key),
                      handler=tick_app()) as server:
        port = server.tcp_address[1]
        options: dict[str, Any] = {"websocket_enabled": True}
        if scheme == "wss":
            options["tls_roots"] = [str(certs.cert)]
        assert await moqrs_reads_tick(f"{scheme}://localhost:{port}/", server, **options) == b"tick"


async def test_server_shutdown_lets_an_http_request_finish(certs: Certs) -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        arrived.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    async with no_leaks():
        server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app())
        await server.start()
        host, port = await server.serve_tcp("127.0.0.1:0", slow)
        answer = asyncio.ensure_future(http_get(host, port, "/"))
        await asyncio.wait_for(arrived.wait(), WAIT)
        stopping = asyncio.ensure_future(server.shutdown(WAIT))
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waits for the request in flight
        release.set()
        assert (await asyncio.wait_for(answer, WAIT))[2] == b"late"
        assert await asyncio.wait_for(stopping, WAIT) is True


@pytest.mark.interop
async def test_shutdown_stops_a_moqrs_websocket_session(certs: Certs) -> None:
    async with no_leaks(fds_too=False):
        server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app())
        await server.start()
        async with moq.Client(f"ws://127.0.0.1:{server.tcp_address[1]}/", reconnect=False, websocket_enabled=True):
            await eventually(lambda: server.sessions, "moq-rs's session is listed")
            (session,) = server.sessions
            await asyncio.wait_for(server.shutdown(1.0), WAIT)  # GOAWAY; moq-rs stays, so the deadline closes it
            assert session.closed and server.closed and not server.sessions


# -- python -m moqt_asgi serve


@pytest.mark.cli
def test_serve_answers_http_on_tcp_at_its_port_and_metrics_on_another(certs: Certs) -> None:
    port = free_udp_port()
    process = subprocess.Popen(
        cli("serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert),
            "--keyfile", str(certs.key), "--metrics-bind", "127.0.0.1:0"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/ and ws://127.0.0.1:{port}/" in line, line
        metrics = process.stdout.readline()
        assert metrics.startswith("metrics on http://127.0.0.1:"), metrics
        metrics_url = metrics.split()[-1]

        async def check() -> None:
            status, _, body = await http_get("127.0.0.1", port, "/health")
            assert status == 200 and body.startswith(b"ok")
            status, _, body = await http_get("127.0.0.1", port, "/certificate.sha256", tls=client_tls(certs))
            assert (status, body.decode()) == (200, certs.fingerprint.replace(":", "").lower())
            metrics_port = int(metrics_url.rsplit(":", 1)[1].split("/")[0])
            status, _, body = await http_get("127.0.0.1", metrics_port, "/metrics")
            assert status == 200 and b"# TYPE" in body
            assert b"\nmoqt_connections " in body  # the QUIC listener's connection counts are exported

        asyncio.run(check())
    finally:
        stop_serve(process, 15)
    assert process.returncode == 0


@pytest.mark.cli
def test_serve_no_tcp(certs: Certs) -> None:
    port = free_udp_port()
    process = subprocess.Popen(
        cli("serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert),
            "--keyfile", str(certs.key), "--no-tcp"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving" in line and "ws://" not in line, line
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=WAIT):
            pass
    finally:
        stop_serve(process, 15)


@pytest.mark.browser
@pytest.mark.cli
def test_chromium_given_an_http_url_reads_the_clock_from_serve(pages: Any, certs: Certs,  # noqa: F811
                                                               tmp_path: Path) -> None:
    """@moq/net fetches /certificate.sha256 from serve's TCP listener, pins it and reads over WebTransport."""
    port = free_udp_port()
    process = subprocess.Popen(
        cli("serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert),
            "--keyfile", str(certs.key)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        moq_url = f"http://127.0.0.1:{port}/"
        page = f"http://127.0.0.1:{pages.server_address[1]}/http.html?moq={moq_url}"
        with chromium(page, tmp_path) as browser:
            try:
                result = pages.results.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"the page posted no result; page text:\n{browser.page_text()}\n{browser.log_tail()}")
    finally:
        stop_serve(process, 15)
    assert result["error"] is None, result["error"]
    assert f"{moq_url}certificate.sha256" in result["resources"]
    assert len(result["frames"]) == 1


@pytest.mark.browser
@pytest.mark.cli
def test_chromium_opens_a_websocket_to_serve(certs: Certs, tmp_path: Path) -> None:
    """Chromium loads /health from serve's TCP listener, then opens a WebSocket there with a qmux subprotocol."""
    port = free_udp_port()
    process = subprocess.Popen(
        cli("serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert),
            "--keyfile", str(certs.key)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        assert "ws://" in process.stdout.readline()
        with chromium(f"http://127.0.0.1:{port}/health", tmp_path) as browser:
            assert browser.wait_for("document.body && document.body.innerText", 30).startswith("ok")
            browser.evaluate(f"""
                window.result = null;
                const ws = new WebSocket("ws://127.0.0.1:{port}/", ["qmux-01.moq-lite-05"]);
                ws.binaryType = "arraybuffer";
                ws.onmessage = (e) => {{ window.result = window.result || {{
                    protocol: ws.protocol, extensions: ws.extensions, first: e.data.byteLength }}; ws.close(1000); }};
                ws.onerror = () => {{ window.result = {{ error: "websocket error" }}; }};
            """)
            result = browser.wait_for("window.result", 30)
    finally:
        stop_serve(process, 15)
    # the server chose the subprotocol, negotiated no compression, and spoke first (qmux transport parameters)
    assert result == {"protocol": "qmux-01.moq-lite-05", "extensions": "", "first": result["first"]}, result
    assert result["first"] > 0

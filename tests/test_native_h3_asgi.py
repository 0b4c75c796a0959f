"""The ASGI ``webtransport`` scope on ``QuicServer``'s own HTTP/3 (no Hypercorn).

Every test of ``test_webtransport_asgi`` that uses the ``echo`` fixture runs here again, with the
echo application served by ``QuicServer(asgi_app=...)`` instead of Hypercorn: the same messages,
codes, capsules and limits must come out of both servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from moqt_asgi import MoQ
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.webtransport.h3_server import RESPONSE_HIGH_WATER
from moqt_asgi.webtransport.session import WebTransportSession

from .conftest import Certs
from .test_webtransport_asgi import (  # noqa: F401  (collected here again, with the fixture below)
    Events,
    echo_app,
    open_session,
    test_bulk_stream_echo_through_the_dict_surface,
    test_client_close_reaches_app,
    test_client_uni_stream_gets_server_uni_reply,
    test_connect_accept_and_bidi_echo,
    test_datagram_echo,
    test_drain_capsule,
    test_reject_before_accept_is_403,
    test_resets_and_stop_sending_both_ways,
    test_server_close_reaches_client,
    test_server_opened_uni_and_bidi_streams,
    test_streams_before_accept_are_held,
)
from .wt_client import WebTransportClient, wt_client

pytestmark = pytest.mark.slow


@pytest.fixture
async def echo(certs: Certs) -> AsyncIterator[tuple[WebTransportClient, Events]]:
    events: Events = []
    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                        asgi_app=echo_app(events))
    async with server, wt_client(server.address[1]) as client:
        yield client, events


async def test_scope_extensions_expose_the_session(certs: Certs) -> None:
    seen: list[Any] = []
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "webtransport":
            return
        scopes.append(scope)
        await receive()
        await send({"type": "webtransport.accept"})
        connection = scope["extensions"]["moqt.connection"]["connection"]
        seen.append(connection)
        stream = await connection.accept_bi()  # the fast path: no dicts
        data = await stream.read()
        stream.write(data.upper(), end=True)
        await connection.wait_closed()

    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                        asgi_app=app, root_path="/base")
    server.state["greeting"] = "hi"
    async with server, wt_client(server.address[1]) as client:
        session_id = await open_session(client)
        sid = client.open_stream(session_id)
        client.send(sid, b"fast path")
        await client.wait_for(lambda: client.stream(sid).ended)
        assert bytes(client.stream(sid).data) == b"FAST PATH"
        assert seen[0].max_datagram_size > 1000  # the client saw max_datagram_frame_size from the server
        client.close_session(session_id, 0, "")
        await client.wait_for(lambda: seen[0].is_closed)
        [scope] = scopes
        assert (scope["server"], scope["root_path"], scope["state"]) == (server.address, "/base", {"greeting": "hi"})
        assert scope["client"][0] == "127.0.0.1" and scope["http_version"] == "3"
        assert isinstance(seen[0], WebTransportSession)


async def test_an_error_in_event_handling_closes_one_connection_not_the_listener(
        certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: WebTransportSession, data: bytes) -> None:
        raise RuntimeError("boom")

    events: Events = []
    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                        asgi_app=echo_app(events))
    async with server:
        port = server.address[1]
        async with wt_client(port) as client:
            session_id = await open_session(client)
            monkeypatch.setattr(WebTransportSession, "handle_datagram", explode)
            client.send_datagram(session_id, b"x")
            await client.wait_for(lambda: client.terminated)
            monkeypatch.undo()
        async with wt_client(port) as client:  # the UDP listener is still serving
            session_id = await open_session(client)
            client.send_datagram(session_id, b"again")
            await client.wait_for(lambda: client.datagrams)
            assert client.datagrams == [(session_id, b"echo:again")]


async def test_http_app_failures(certs: Certs) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] == "/silent":
            return
        if scope["path"] == "/head":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"X-Upper", b"kept")]})
            await send({"type": "http.response.body", "body": b"dropped for HEAD"})
            return
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})
        raise RuntimeError("mid-body")

    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                        asgi_app=app)
    async with server, wt_client(server.address[1]) as client:
        assert (await client.get("/boom")).status == 500
        assert (await client.get("/silent")).status == 500
        _, response = await client.request("HEAD", "/head")
        await client.wait_for(lambda: response.ended)
        assert response.headers[b"x-upper"] == b"kept" and bytes(response.body) == b""
        stream_id = client._quic.get_next_available_stream_id()  # not client.request: no answer may come
        client.h3.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                                           (b":path", b"/half")], end_stream=True)
        client.transmit()
        await client.wait_for(lambda: client.raw_resets.get(stream_id) is not None)
        assert client.raw_resets[stream_id] == 0x102  # H3_INTERNAL_ERROR
        assert (await client.get("/silent")).status == 500  # the connection is fine
        assert not client.terminated


async def test_streamed_http_response_with_backpressure(certs: Certs) -> None:
    chunk = bytes(range(256)) * 512  # 128 KiB
    backlogs: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        for _ in range(64):  # 8 MiB: far more than the 1 MiB the stream may hold unsent
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            [h3] = list(server._h3)
            [exchange] = h3.requests.values()
            backlogs.append(h3.stream_backlog(exchange.stream_id))
        await send({"type": "http.response.body", "body": b"end"})

    server = QuicServer(MoQ(), host="127.0.0.1", port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                        asgi_app=app)
    async with server, wt_client(server.address[1]) as client:
        stream_id, response = await client.request("GET", "/big")
        await client.wait_for(lambda: response.ended, timeout=30)
        assert bytes(response.body) == chunk * 64 + b"end"
        [h3] = list(server._h3)
        assert h3.stream_backlog(stream_id) == 0 and not h3.requests
    assert max(backlogs) <= RESPONSE_HIGH_WATER + len(chunk) + 64  # send() waited while the stream was full

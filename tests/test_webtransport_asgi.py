"""The ASGI ``webtransport`` scope through Hypercorn (in-process) with aioquic's HTTP/3 client.

A small echo application exercises every message of the dict surface:
accept and reject, stream data with FIN both ways, server-opened uni and
bidi streams, resets and STOP_SENDING with codes both ways, datagrams,
DRAIN, and session close with code and reason both ways.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from moqt_asgi.webtransport.capsules import DrainCapsule

from .conftest import Certs
from .wt_client import WebTransportClient, hypercorn_server, wt_client

pytestmark = pytest.mark.slow

Events = list[dict[str, Any]]


def echo_app(events: Events) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"plain http/3"})
            return
        assert scope["type"] == "webtransport"
        events.append({"type": "scope", "path": scope["path"], "query": scope["query_string"],
                       "headers": dict(scope["headers"]), "subprotocols": scope["subprotocols"]})
        assert (await receive())["type"] == "webtransport.connect"
        if scope["path"] == "/reject":
            await send({"type": "webtransport.close"})  # before accept: 403
            events.append(await receive())
            return
        if scope["path"] == "/missing":
            await send({"type": "webtransport.close", "status": 404})
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(0.3)  # streams arriving meanwhile are held until the accept
        accept: dict[str, Any] = {"type": "webtransport.accept", "headers": [(b"x-echo", b"yes")]}
        if "echo-v1" in scope["subprotocols"]:
            accept["subprotocol"] = "echo-v1"
        await send(accept)
        open_stream = scope["extensions"]["webtransport"]["open_stream"]
        buffers: dict[int, bytes] = {}
        while True:
            message = await receive()
            events.append(message)
            kind = message["type"]
            if kind == "webtransport.disconnect":
                return
            if kind == "webtransport.datagram.receive":
                await send({"type": "webtransport.datagram.send", "data": b"echo:" + message["data"]})
                continue
            if kind != "webtransport.stream.receive":
                continue
            sid = message["stream"]
            if scope["path"] == "/stream-echo":  # echo each chunk as it comes
                await send({"type": "webtransport.stream.send", "stream": sid, "data": message["data"],
                            "end_stream": message["end_stream"]})
                continue
            buffers[sid] = buffers.get(sid, b"") + message["data"]
            if buffers[sid] == b"stop-me":
                await send({"type": "webtransport.stream.stop_sending", "stream": sid, "error_code": 78})
            if not message["end_stream"]:
                continue
            data = buffers.pop(sid)
            if sid % 4 == 2:  # client uni: answer on a server uni stream
                reply = await open_stream(unidirectional=True)
                await send({"type": "webtransport.stream.send", "stream": reply, "data": b"uni:" + data,
                            "end_stream": True})
            elif sid % 4 == 1:  # our own bidi stream: the client answered
                await send({"type": "webtransport.stream.send", "stream": sid, "data": b"ack:" + data,
                            "end_stream": True})
            elif data == b"open-uni":
                reply = await open_stream(unidirectional=True)
                await send({"type": "webtransport.stream.send", "stream": reply, "data": b"server-uni",
                            "end_stream": True})
            elif data == b"open-bi":
                reply = await open_stream(unidirectional=False)
                await send({"type": "webtransport.stream.send", "stream": reply, "data": b"server-bi"})
            elif data == b"reset":
                await send({"type": "webtransport.stream.reset", "stream": sid, "error_code": 77})
            elif data == b"close":
                await send({"type": "webtransport.close", "code": 4001, "reason": "server-bye"})
            elif data == b"drain":
                await send({"type": "webtransport.drain"})
                await send({"type": "webtransport.stream.send", "stream": sid, "data": b"drained",
                            "end_stream": True})
            else:
                await send({"type": "webtransport.stream.send", "stream": sid, "data": data, "end_stream": True})

    return app


@pytest.fixture
async def echo(certs: Certs) -> AsyncIterator[tuple[WebTransportClient, Events]]:
    events: Events = []
    async with hypercorn_server(echo_app(events), str(certs.cert), str(certs.key)) as port:
        async with wt_client(port) as client:
            yield client, events


async def open_session(client: WebTransportClient, path: str = "/wt?x=1") -> int:
    session_id, response = await client.connect_session(path, [(b"origin", b"https://example.test")])
    assert response.status == 200
    return session_id


def wait_event(events: Events, kind: str, **match: Any) -> Any:
    def find() -> dict[str, Any] | None:
        for event in events:
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event
        return None
    return find


async def test_connect_accept_and_bidi_echo(echo: tuple[WebTransportClient, Events]) -> None:
    client, events = echo
    session_id, response = await client.connect_session(
        "/wt?x=1", [(b"origin", b"https://example.test"), (b"wt-available-protocols", b'"echo-v2", "echo-v1"')])
    assert response.status == 200
    assert response.headers[b"sec-webtransport-http3-draft"] == b"draft02"
    assert response.headers[b"x-echo"] == b"yes"
    assert response.headers[b"wt-protocol"] == b'"echo-v1"'
    assert b"connection" not in response.headers
    scope = events[0]
    assert scope["path"] == "/wt" and scope["query"] == b"x=1"
    assert scope["headers"][b"origin"] == b"https://example.test"
    assert scope["subprotocols"] == ["echo-v2", "echo-v1"]
    sid = client.open_stream(session_id)
    payload = bytes(range(256)) * 200  # several QUIC packets
    client.send(sid, payload, end=True)
    await client.wait_for(lambda: client.stream(sid).ended)
    assert bytes(client.stream(sid).data) == payload


async def test_client_uni_stream_gets_server_uni_reply(echo: tuple[WebTransportClient, Events]) -> None:
    client, _ = echo
    session_id = await open_session(client)
    sid = client.open_stream(session_id, unidirectional=True)
    client.send(sid, b"hello uni", end=True)
    reply = await client.wait_for(lambda: next((s for s, st in client.streams.items() if st.ended and s % 4 == 3), None))
    assert bytes(client.stream(reply).data) == b"uni:hello uni"


async def test_server_opened_uni_and_bidi_streams(echo: tuple[WebTransportClient, Events]) -> None:
    client, _ = echo
    session_id = await open_session(client)
    cmd = client.open_stream(session_id)
    client.send(cmd, b"open-uni", end=True)
    uni = await client.wait_for(lambda: next((s for s, st in client.streams.items() if s % 4 == 3 and st.ended), None))
    assert bytes(client.stream(uni).data) == b"server-uni"

    cmd = client.open_stream(session_id)
    client.send(cmd, b"open-bi", end=True)
    bidi = await client.wait_for(lambda: next((s for s, st in client.streams.items() if s % 4 == 1 and st.data), None))
    assert bytes(client.stream(bidi).data) == b"server-bi"
    client.send(bidi, b"client-answer", end=True)  # the reply on a server-opened bidi stream
    await client.wait_for(lambda: client.stream(bidi).ended)
    assert bytes(client.stream(bidi).data) == b"server-biack:client-answer"
    assert not client.terminated


async def test_resets_and_stop_sending_both_ways(echo: tuple[WebTransportClient, Events]) -> None:
    client, events = echo
    session_id = await open_session(client)
    # client RESET_STREAM(42) reaches the app with the application code
    sid = client.open_stream(session_id)
    client.send(sid, b"partial")
    await client.wait_for(wait_event(events, "webtransport.stream.receive", stream=sid))
    client.reset(sid, 42)
    reset = await client.wait_for(wait_event(events, "webtransport.stream.reset", stream=sid))
    assert reset["error_code"] == 42
    # client STOP_SENDING(43)
    sid = client.open_stream(session_id)
    client.send(sid, b"hello")
    await client.wait_for(wait_event(events, "webtransport.stream.receive", stream=sid))
    client.stop(sid, 43)
    stop = await client.wait_for(wait_event(events, "webtransport.stream.stop_sending", stream=sid))
    assert stop["error_code"] == 43
    # server RESET_STREAM(77)
    sid = client.open_stream(session_id)
    client.send(sid, b"reset", end=True)
    await client.wait_for(lambda: client.stream(sid).reset is not None)
    assert client.stream(sid).reset == 77
    # server STOP_SENDING(78)
    sid = client.open_stream(session_id)
    client.send(sid, b"stop-me")
    await client.wait_for(lambda: client.stream(sid).stopped is not None)
    assert client.stream(sid).stopped == 78
    # the session survived all of it
    sid = client.open_stream(session_id)
    client.send(sid, b"still here", end=True)
    await client.wait_for(lambda: client.stream(sid).ended)
    assert bytes(client.stream(sid).data) == b"still here"


async def test_datagram_echo(echo: tuple[WebTransportClient, Events]) -> None:
    client, _ = echo
    session_id = await open_session(client)
    for n in range(5):
        client.send_datagram(session_id, f"ping {n}".encode())
    await client.wait_for(lambda: len(client.datagrams) >= 5)
    assert sorted(client.datagrams) == [(session_id, f"echo:ping {n}".encode()) for n in range(5)]


async def test_client_close_reaches_app(echo: tuple[WebTransportClient, Events]) -> None:
    client, events = echo
    session_id = await open_session(client)
    client.close_session(session_id, 4242, "client-bye")
    disconnect = await client.wait_for(wait_event(events, "webtransport.disconnect"))
    assert (disconnect["code"], disconnect["reason"]) == (4242, "client-bye")
    await client.wait_for(lambda: client.responses[session_id].ended)  # the server ended the CONNECT stream too
    assert events[-1]["type"] == "webtransport.disconnect"
    # the connection (and the listener) keep working
    assert (await client.get("/after")).status == 200


async def test_server_close_reaches_client(echo: tuple[WebTransportClient, Events]) -> None:
    client, _ = echo
    session_id = await open_session(client)
    sid = client.open_stream(session_id)
    client.send(sid, b"close", end=True)
    capsule = await client.wait_for(lambda: client.close_capsule(session_id))
    assert (capsule.code, capsule.reason) == (4001, "server-bye")
    await client.wait_for(lambda: client.responses[session_id].ended)
    client.send(session_id, b"", end=True)  # answer with our FIN, as browsers do
    await asyncio.sleep(0.05)
    session_id = await open_session(client)  # a new session on the same connection works
    assert session_id != 0


async def test_drain_capsule(echo: tuple[WebTransportClient, Events]) -> None:
    client, _ = echo
    session_id = await open_session(client)
    sid = client.open_stream(session_id)
    client.send(sid, b"drain", end=True)
    await client.wait_for(lambda: client.stream(sid).ended)
    assert any(isinstance(c, DrainCapsule) for c in client.capsules[session_id])


async def test_reject_before_accept_is_403(echo: tuple[WebTransportClient, Events]) -> None:
    client, events = echo
    _, response = await client.connect_session("/reject")
    assert response.status == 403
    await client.wait_for(lambda: response.ended)
    disconnect = await client.wait_for(wait_event(events, "webtransport.disconnect"))
    assert disconnect["code"] == 403
    _, response = await client.connect_session("/missing")
    assert response.status == 404
    assert (await client.get("/plain")).body == b"plain http/3"


async def test_scope_extensions_expose_the_session(certs: Certs) -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "webtransport":
            return
        await receive()
        await send({"type": "webtransport.accept"})
        connection = scope["extensions"]["moqt.connection"]["connection"]
        seen.append(connection)
        stream = await connection.accept_bi()  # the fast path: no dicts
        data = await stream.read()
        stream.write(data.upper(), end=True)
        await connection.wait_closed()

    async with hypercorn_server(app, str(certs.cert), str(certs.key)) as port, wt_client(port) as client:
        session_id = await open_session(client)
        sid = client.open_stream(session_id)
        client.send(sid, b"fast path")
        await client.wait_for(lambda: client.stream(sid).ended)
        assert bytes(client.stream(sid).data) == b"FAST PATH"
        client.close_session(session_id, 0, "")
        await client.wait_for(lambda: seen[0].is_closed)


async def test_streams_before_accept_are_held(echo: tuple[WebTransportClient, Events]) -> None:
    client, events = echo
    session_id = client._quic.get_next_available_stream_id()
    client.h3.send_headers(session_id, [(b":method", b"CONNECT"), (b":protocol", b"webtransport"),
                                        (b":scheme", b"https"), (b":authority", client.authority),
                                        (b":path", b"/slow")])
    sid = client.open_stream(session_id)  # sent right behind the CONNECT, before any answer
    client.send(sid, b"early bird", end=True)
    unis = [client.open_stream(session_id, unidirectional=True) for _ in range(70)]
    for n, uni in enumerate(unis):
        client.send(uni, f"u{n}".encode())  # no FIN: the streams stay open
    await client.wait_for(lambda: client.stream(sid).ended)
    assert client.responses[session_id].status == 200
    assert bytes(client.stream(sid).data) == b"early bird"
    # at most 64 streams wait for the accept (the bidi one and 63 uni); the rest are refused
    refused = await client.wait_for(lambda: [u for u in unis if client.raw_stops.get(u) == 0x3994BD84] or None)
    assert refused == unis[63:]
    def received() -> set[int]:
        return {e["stream"] for e in events if e["type"] == "webtransport.stream.receive" and e["stream"] % 4 == 2}

    await client.wait_for(lambda: len(received()) >= 63)
    assert received() == set(unis[:63])


async def test_bulk_stream_echo_through_the_dict_surface(echo: tuple[WebTransportClient, Events]) -> None:
    client, _ = echo
    session_id = await open_session(client, "/stream-echo")
    sid = client.open_stream(session_id)
    payload = bytes(range(251)) * (4 * 1024 * 1024 // 251)
    for offset in range(0, len(payload), 256 * 1024):
        client.send(sid, payload[offset:offset + 256 * 1024])
    client.send(sid, b"", end=True)
    await client.wait_for(lambda: client.stream(sid).ended, timeout=30)
    assert bytes(client.stream(sid).data) == payload


async def test_an_error_in_event_handling_closes_one_connection_not_the_listener(
        certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    from moqt_asgi.webtransport.session import WebTransportSession

    def explode(self: WebTransportSession, data: bytes) -> None:
        raise RuntimeError("boom")

    events: Events = []
    async with hypercorn_server(echo_app(events), str(certs.cert), str(certs.key)) as port:
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

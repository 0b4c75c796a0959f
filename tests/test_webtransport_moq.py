"""MoQ over WebTransport: the MoQ app served by Hypercorn in-process, moq-rs as the client.

Also: refusals happen in HTTP before any MoQ byte (403 origin, 404 path),
and a plain HTTP app passed as ``MoQ(app=...)`` is served beside.
"""

from __future__ import annotations

import asyncio
from typing import Any

import moq
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route as HTTPRoute

from moqt_asgi import Broadcast, MoQ, SetupRequest
from moqt_asgi.protocol.lite06 import LITE_06

from .conftest import Certs
from .wt_client import hypercorn_server, wt_client

pytestmark = pytest.mark.interop

TIMEOUT = 10


def moqrs_client(url: str, fingerprint: str) -> moq.Client:
    return moq.Client(url, tls_fingerprints=[fingerprint], reconnect=False, websocket_enabled=False)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello {request.query_params.get('name', 'world')}")


def counter_app(**kwargs: Any) -> tuple[MoQ, list[SetupRequest]]:
    """A MoQ app publishing ``demo`` / ``count`` (one frame per group, every 50 ms while running)."""
    app = MoQ(app=Starlette(routes=[HTTPRoute("/hello", hello)]), **kwargs)
    broadcast = Broadcast("demo")
    track = broadcast.create_track("count")
    app.mux.publish("demo", broadcast)
    requests: list[SetupRequest] = []
    ticker: list[asyncio.Task[None]] = []

    async def tick() -> None:
        n = 0
        while True:
            track.write_frame(f"n={n}".encode())
            n += 1
            await asyncio.sleep(0.05)

    @app.on_event("startup")
    async def start() -> None:
        ticker.append(asyncio.ensure_future(tick()))

    @app.on_event("shutdown")
    async def stop() -> None:
        for task in ticker:
            task.cancel()

    @app.route("/rooms/{room}", allow_origins=["https://good.test"])
    async def room(request: SetupRequest) -> None:
        requests.append(request)
        await request.accept()

    return app, requests


async def test_moqrs_subscribes_over_webtransport_beside_http(certs: Certs) -> None:
    app, requests = counter_app()
    async with hypercorn_server(app, str(certs.cert), str(certs.key)) as port:
        async with moqrs_client(f"https://127.0.0.1:{port}/rooms/7?token=abc", certs.fingerprint) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("demo"), TIMEOUT)
            track = await broadcast.subscribe_track("count")
            frames = []
            for _ in range(3):
                group = await asyncio.wait_for(track.next_group(), TIMEOUT)
                frames.append(bytes((await asyncio.wait_for(group.read_frame(), TIMEOUT)).payload))
            async with wt_client(port) as http:
                response = await http.get("/hello?name=h3")
        numbers = [int(frame.split(b"=")[1]) for frame in frames]
        assert numbers == sorted(numbers) and len(set(numbers)) == 3
        assert response.status == 200 and response.body == b"hello h3"
        [request] = requests
        assert (request.path, request.query, request.path_params) == ("/rooms/7", "token=abc", {"room": "7"})
        assert request.transport == "webtransport"
        assert request.session is not None and request.session.version == LITE_06
        assert request.client is not None and request.client[0] == "127.0.0.1"
        assert "moql" in request.headers.get("wt-available-protocols", "")
        assert request.origin is None  # moq-rs sends no Origin


async def test_refusals_happen_in_http_before_any_moq_byte(certs: Certs) -> None:
    app, requests = counter_app()
    async with hypercorn_server(app, str(certs.cert), str(certs.key)) as port, wt_client(port) as client:
        _, response = await client.connect_session("/nowhere", [(b"origin", b"https://good.test")])
        assert response.status == 404
        _, response = await client.connect_session("/rooms/1", [(b"origin", b"https://evil.test")])
        assert response.status == 403
        session_id, response = await client.connect_session("/rooms/1", [(b"origin", b"https://good.test")])
        assert response.status == 200
        assert b"wt-protocol" not in response.headers  # nothing offered: moq-lite via SETUP
        await client.wait_for(lambda: all(r.ended for r in client.responses.values() if r.status != 200))
        assert requests == []  # no SETUP was sent, so no setup handler ran
        client.close_session(session_id, 0, "")
        assert (await client.get("/hello")).body == b"hello world"


async def test_app_wide_origin_check_and_moql_echo(certs: Certs) -> None:
    app, _ = counter_app(allow_origins=["https://good.test"])
    async with hypercorn_server(app, str(certs.cert), str(certs.key)) as port, wt_client(port) as client:
        _, response = await client.connect_session("/rooms/1", [(b"origin", b"https://other.test")])
        assert response.status == 403
        offered = [(b"origin", b"https://good.test"), (b"wt-available-protocols", b'"moq-lite-99", "moql"')]
        _, response = await client.connect_session("/rooms/1", offered)
        assert response.status == 200
        assert response.headers[b"wt-protocol"] == b'"moql"'

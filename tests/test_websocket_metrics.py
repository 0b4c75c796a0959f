"""Metrics of MoQ over WebSocket: upgrades refused before any MoQ byte are counted as WebTransport's refusals are."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from moqt_asgi import Authenticator, MoQ
from moqt_asgi.metrics import render
from moqt_asgi.websocket.pipe import memory_pipe_pair
from tests.helpers import within

from .test_metrics import sample
from .test_websocket_session import FakeServer, ws_session

OFFER = ["qmux-01.moq-lite-05"]


async def refused(app: MoQ, *, path: str = "/", offer: list[str] | None = OFFER,
                  headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """Offer ``app`` one WebSocket upgrade that it must refuse; the HTTP status it answered."""
    _client_pipe, server_pipe = memory_pipe_pair()
    server = FakeServer(server_pipe)
    task = server.run(app, path=path, subprotocols=offer, headers=headers or [])
    status, _ = await within(server.answer)
    await within(task)
    return status


async def test_refusals_before_the_upgrade_are_counted_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    app = MoQ(auth=Authenticator(public="open"))

    @app.route("/open/{room}")
    async def room(request: Any) -> None:
        await request.accept()

    @app.route("/shop", allow_origins=["https://good.example"])
    async def shop(request: Any) -> None:
        await request.accept()

    evil = [(b"origin", b"https://evil.example")]
    with caplog.at_level(logging.INFO, logger="moqt_asgi.sessions"):
        assert await refused(app, path="/closed") == 401  # no token, not public
        assert await refused(app, path="/open") == 404  # public, but no route
        app.auth = None
        assert await refused(app, path="/shop", headers=evil) == 403  # the route's origin rule
        app.allow_origins = ["https://good.example"]
        assert await refused(app, path="/open/a", headers=evil) == 403  # the app-wide origin rule
        app.allow_origins = None
        assert await refused(app, path="/open/a", offer=["qmux-01.moqt-18"]) == 400  # no subprotocol of ours
    text = render(app).decode()
    for reason, count in (("auth", 1), ("route", 1), ("origin", 2), ("version", 1), ("protocol", 0),
                          ("rejected", 0)):
        assert sample(text, "moqt_sessions_refused_total", reason=reason) == count, (reason, text)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("session refused ")]
    assert len(lines) == 5, lines
    assert any("reason=auth status=401 transport=websocket path=/closed client=127.0.0.1:40000" in line
               for line in lines), lines


async def test_legacy_framing_without_a_setup_version_is_a_version_refusal() -> None:
    app = MoQ(versions=("moq-lite-05",))
    assert await refused(app, offer=None) == 400
    assert sample(render(app).decode(), "moqt_sessions_refused_total", reason="version") == 1


async def test_an_accepted_session_is_not_a_refusal() -> None:
    app = MoQ()
    async with ws_session(app, offer=OFFER):
        pass
    text = render(app).decode()
    assert sample(text, "moqt_sessions_opened_total", transport="websocket", version="moq-lite-05") == 1
    assert all(sample(text, "moqt_sessions_refused_total", reason=reason) == 0
               for reason in ("auth", "origin", "route", "protocol", "version", "rejected"))

"""The application surface: lifespan, typed path parameters, the close rule, the public top level."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import moqt_asgi
from moqt_asgi import MoQ, SetupRequest, TrackWriter
from moqt_asgi.routing import Route

from .helpers import memory_sessions


async def test_lifespan_context_runs_around_the_app_and_yields_state() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: MoQ) -> AsyncIterator[dict[str, Any]]:
        events.append("up")
        yield {"db": "connected"}
        events.append("down")

    app = MoQ(lifespan=lifespan, on_startup=[lambda: _note(events, "hook-up")],
              on_shutdown=[lambda: _note(events, "hook-down")])
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app({"type": "lifespan"}, receive, send)
    assert events == ["hook-up", "up", "down", "hook-down"]
    assert app.state == {"db": "connected"}
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def _note(events: list[str], what: str) -> None:
    events.append(what)


def test_path_parameters_are_converted() -> None:
    async def handler(request: SetupRequest) -> None:
        return None

    route = Route("/rooms/{room}/seat/{n:int}/{x:float}/{key:uuid}/{rest:path}", handler)
    key = uuid.uuid4()
    params = route.match(f"/rooms/lobby/seat/12/0.5/{key}/a/b")
    assert params == {"room": "lobby", "n": 12, "x": 0.5, "key": key, "rest": "a/b"}
    assert route.match("/rooms/lobby/seat/twelve/0.5/x/y") is None
    with pytest.raises(ValueError, match="unknown path parameter type"):
        Route("/{n:number}", handler)


async def test_a_handler_sees_typed_parameters() -> None:
    app = MoQ()
    seen: list[Any] = []

    @app.route("/seat/{n:int}")
    async def seat(request: SetupRequest) -> None:
        seen.append(request.path_params["n"])
        await request.accept()

    async with memory_sessions(app, path="/seat/7"):
        pass
    assert seen == [7]


async def test_close_acts_at_once_and_can_be_awaited() -> None:
    """One rule: ``close()`` acts at once (no await needed) and returns an awaitable to wait for the end."""
    app = MoQ()
    ended = asyncio.Event()

    async def handler(track: TrackWriter) -> None:
        group = await track.open_group()
        await group.write_frame(b"x")
        group.close()  # no await: the FIN is out
        track.close()  # no await: the track ends
        ended.set()

    app.mux.publish("b", handler)
    async with memory_sessions(app) as (client, _, _, _):
        reader = await client.subscribe("b", "t")
        group = await asyncio.wait_for(reader.next_group(), 5)
        assert group is not None and await group.read_all() == [b"x"]
        assert await asyncio.wait_for(reader.next_group(), 5) is None
        assert ended.is_set()
        closing = client.close()
        assert client.closed  # acted at once
        reason = await closing  # waited until every task stopped
        assert reason.code == 0


def test_the_top_level_teaches_one_server_and_one_client() -> None:
    names = set(moqt_asgi.__all__)
    assert {"MoQ", "Server", "Client", "dial", "Session", "Version", "QuicSettings", "Grant"} <= names
    assert not names & {"QuicServer", "dial_quic", "dial_webtransport", "handle", "handle_func", "new_router",
                        "default_router", "install_webtransport"}
    assert moqt_asgi.__version__ and moqt_asgi.__version__ != "0+unknown"


async def test_versions_by_name(certs: Any) -> None:
    from moqt_asgi import Server, dial

    app = MoQ(versions=["moq-lite-06", "moq-lite-02"])
    assert [v.name for v in app.versions] == ["moq-lite-06", "moq-lite-02"]
    async with Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app) as server:
        url = f"moql://127.0.0.1:{server.address[1]}/"
        for name in ("moq-lite-02", "moq-lite-06"):
            session = await dial(url, fingerprint=certs.fingerprint, versions=[name])
            assert session.version_name == name
            await session.aclose()
    with pytest.raises(ValueError, match="moq-lite-99"):
        MoQ(versions=["moq-lite-99"])


def test_importing_without_hypercorn_is_quiet() -> None:
    """Hypercorn is an extra: without it the package imports, warns nothing, and says why nothing was patched."""
    import subprocess
    import sys

    code = ("import sys, warnings; sys.modules['hypercorn'] = None; warnings.simplefilter('error'); "
            "import moqt_asgi, moqt_asgi.webtransport as wt; print(wt.install_error())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Hypercorn is not installed" in result.stdout

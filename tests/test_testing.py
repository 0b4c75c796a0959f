"""The public testing helpers: ``moqt_asgi.testing.connect`` / ``MemoryPair`` and the pytest plugin."""

from __future__ import annotations

import asyncio

import pytest

from moqt_asgi import Broadcast, ErrorCode, MoQ, SetupRejected, SetupRequest, TrackMux
from moqt_asgi.engine.session import Session
from moqt_asgi.protocol.versions import (
    ALL_VERSIONS,
    GOMOQT_DIALECT,
    LITE_01_VERSION,
    LITE_02_VERSION,
    LITE_03_VERSION,
    LITE_06_VERSION,
    SETUP_VERSIONS,
    Version,
)
from moqt_asgi.request import status_to_code
from moqt_asgi.testing import MemoryPair, UdpRelay, connect, lifespan, memory_pair, resolve_version
from moqt_asgi.testing.pytest_plugin import MoQConnect, MoQPairFactory

from .helpers import WAIT, within

VERSIONS = [pytest.param(version, id=version.name) for version in ALL_VERSIONS]


def clock_app(**options: object) -> tuple[MoQ, Broadcast]:
    app = MoQ(**options)  # type: ignore[arg-type]
    clock = Broadcast("clock")
    clock.create_track("seconds").write_frame(b"tick")
    app.mux.publish("clock", clock)
    return app, clock


async def first_frame(client: Session) -> bytes:
    track = await within(client.subscribe("clock", "seconds"))
    group = await within(track.next_group())
    assert group is not None
    frame = await within(group.read_frame())
    track.close()
    assert frame is not None
    return frame


async def test_connect_in_two_lines(no_leaked_tasks: None) -> None:
    app, _ = clock_app()
    async with connect(app) as client:
        assert await first_frame(client) == b"tick"
    assert client.closed


async def test_the_default_negotiates_as_our_native_client_does() -> None:
    app, _ = clock_app()
    async with connect(app) as client:
        assert client.version_name == LITE_06_VERSION.name  # the newest: moq-lite-06's ALPN comes first
    app.versions = (LITE_03_VERSION, LITE_01_VERSION)
    async with connect(app) as client:
        assert client.version_name == LITE_03_VERSION.name  # the app's preference among what both speak
    async with connect(app, versions=SETUP_VERSIONS) as client:
        assert client.version_name == LITE_01_VERSION.name


@pytest.mark.parametrize("version", VERSIONS)
async def test_every_version_by_object_and_by_name(version: Version, no_leaked_tasks: None) -> None:
    app, _ = clock_app()
    for chosen in (version, version.name):
        async with MemoryPair(app, version=chosen) as pair:
            assert pair.client.version_name == version.name
            assert pair.server.version_name == version.name
            assert not pair.server.is_client
            assert await first_frame(pair.client) == b"tick"
        assert pair.server.closed and pair.server_connection.is_closed


def test_versions_are_named_by_name_or_alpn() -> None:
    assert resolve_version("moq-lite-03") is LITE_03_VERSION
    assert resolve_version("gomoqt") is GOMOQT_DIALECT
    assert resolve_version("moq-00") is GOMOQT_DIALECT
    assert resolve_version(LITE_02_VERSION) is LITE_02_VERSION
    with pytest.raises(ValueError, match="moq-lite-99"):
        resolve_version("moq-lite-99")
    with pytest.raises(ValueError):
        MemoryPair(MoQ(), version="moq-lite-02", versions=["moq-lite-01"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_handler_refusal_raises_setup_rejected(version: Version, no_leaked_tasks: None) -> None:
    app = MoQ()

    @app.route("/")
    async def closed_door(request: SetupRequest) -> None:
        await request.reject(403, "members only")

    with pytest.raises(SetupRejected) as info:
        async with connect(app, version=version):
            raise AssertionError("the session was refused")
    assert info.value.code == status_to_code(403)
    assert info.value.reason == "members only"
    assert app.session_count == 0


async def test_routes_paths_and_headers_reach_the_handler(no_leaked_tasks: None) -> None:
    app = MoQ(allow_origins=["https://example.com"])
    seen: list[SetupRequest] = []

    @app.route("/rooms/{room}")
    async def room(request: SetupRequest) -> None:
        seen.append(request)
        await request.accept()

    async with MemoryPair(app, path="/rooms/7?jwt=x", origin="https://example.com", headers={"X-Trace": "1"}) as pair:
        assert pair.server.path == "/rooms/7"
    (request,) = seen
    assert (request.path_params, request.query, request.origin) == ({"room": "7"}, "jwt=x", "https://example.com")
    assert request.headers["x-trace"] == "1" and request.transport == "memory"
    with pytest.raises(SetupRejected) as info:
        async with connect(app, path="/rooms/7", origin="https://evil.example"):
            pass
    assert info.value.code == status_to_code(403)
    with pytest.raises(SetupRejected) as info:
        async with connect(app, path="/elsewhere", version="moq-lite-02"):
            pass
    assert info.value.code == ErrorCode.TRANSPORT  # moq-rs's session registry has no "not found"


async def test_no_common_version_is_a_refusal(no_leaked_tasks: None) -> None:
    app = MoQ(versions=(LITE_03_VERSION,))
    with pytest.raises(SetupRejected) as info:
        async with connect(app, version=LITE_06_VERSION):
            pass
    assert info.value.code == ErrorCode.VERSION


async def test_a_handler_that_never_decides_times_out(no_leaked_tasks: None) -> None:
    app = MoQ(setup_handler_timeout=0.2)

    @app.route("/")
    async def undecided(request: SetupRequest) -> None:
        await asyncio.sleep(WAIT)

    for version in (LITE_03_VERSION, LITE_06_VERSION, LITE_02_VERSION):  # no setup, uni SETUPs, SETUP exchange
        with pytest.raises(SetupRejected) as info:
            await within(MemoryPair(app, version=version).open())
        assert info.value.code == ErrorCode.TIMEOUT


async def test_the_server_subscribes_to_what_the_client_publishes(no_leaked_tasks: None) -> None:
    mux = TrackMux()
    camera = Broadcast("cam")
    camera.create_track("video").write_frame(b"frame")
    mux.publish("cam", camera)
    async with MemoryPair(MoQ(), mux=mux) as pair:
        track = await within(pair.server.subscribe("cam", "video"))
        group = await within(track.next_group())
        assert group is not None and await within(group.read_all()) == [b"frame"]


async def test_closing_the_server_ends_the_client(no_leaked_tasks: None) -> None:
    async with MemoryPair(MoQ()) as pair:
        await pair.server.aclose(ErrorCode.CANCEL, "bye")
        closed = await within(pair.client.wait_closed())
        assert closed.remote and closed.code == ErrorCode.CANCEL


async def test_a_handler_that_keeps_running_is_stopped_on_exit(no_leaked_tasks: None) -> None:
    app = MoQ()
    stopped = asyncio.Event()

    @app.route("/")
    async def keeps_serving(request: SetupRequest) -> None:
        session = await request.accept()
        try:
            await session.wait_closed()
        finally:
            stopped.set()

    async with connect(app):
        pass
    assert stopped.is_set()


async def test_lifespan_runs_the_hooks() -> None:
    calls: list[str] = []
    app = MoQ()

    @app.on_event("startup")
    async def up() -> None:
        calls.append("up")

    @app.on_event("shutdown")
    async def down() -> None:
        calls.append("down")

    async with lifespan(app):
        assert calls == ["up"]
    assert calls == ["up", "down"]


def test_the_package_re_exports_the_transport_and_the_relay() -> None:
    client, server = memory_pair()
    assert client.peer is server
    assert UdpRelay.__module__ == "moqt_asgi.testing.netsim"


# -- the pytest plugin

async def test_moq_connect_fixture(moq_connect: MoQConnect, no_leaked_tasks: None) -> None:
    app, _ = clock_app()
    first = await moq_connect(app)
    second = await moq_connect(app, version="moq-lite-03")
    assert await first_frame(first) == b"tick" and await first_frame(second) == b"tick"
    assert second.version_name == "moq-lite-03"
    assert app.session_count == 2


async def test_moq_pair_fixture(moq_pair: MoQPairFactory) -> None:
    pair = await moq_pair(MoQ(), version=GOMOQT_DIALECT)
    assert pair.server.version_name == GOMOQT_DIALECT.name


PLUGIN_TESTS = '''
import asyncio

import pytest

from moqt_asgi import Broadcast, MoQ

SESSIONS = []


def app():
    moq = MoQ()
    clock = Broadcast("clock")
    clock.create_track("seconds").write_frame(b"tick")
    moq.mux.publish("clock", clock)
    return moq


@pytest.mark.asyncio
async def test_subscribes(moq_connect, no_leaked_tasks):
    client = await moq_connect(app())
    SESSIONS.append(client)
    track = await client.subscribe("clock", "seconds")
    group = await track.next_group()
    assert await group.read_frame() == b"tick"


def test_the_sessions_were_closed_at_teardown():
    assert SESSIONS and all(session.closed for session in SESSIONS)


@pytest.mark.asyncio
async def test_a_leak_is_reported(no_leaked_tasks):
    asyncio.get_running_loop().create_task(asyncio.sleep(30))
'''


def test_the_plugin_in_a_project_of_its_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=PLUGIN_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-o", "asyncio_mode=strict",
                                          "-o", "asyncio_default_fixture_loop_scope=function")
    result.assert_outcomes(passed=3, errors=1)  # the leak fails the last test's teardown
    result.stdout.fnmatch_lines(["*tasks left running*"])


def test_the_plugin_named_in_a_conftest_as_well(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["moqt_asgi.testing.pytest_plugin"]')
    pytester.makepyfile(test_app=PLUGIN_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-o", "asyncio_mode=strict",
                                          "-o", "asyncio_default_fixture_loop_scope=function")
    result.assert_outcomes(passed=3, errors=1)

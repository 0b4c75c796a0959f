"""Metrics of a MoQ app (Prometheus text) and the session log lines.

In memory through ``moqt_asgi.testing.connect``, on the app's own path and on :func:`metrics_app`,
and through the stock ``hypercorn`` command line with a moq-rs session that comes and goes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from moqt_asgi import Authenticator, Broadcast, MoQ, SetupRejected
from moqt_asgi.metrics import (
    CONTENT_TYPE,
    AppMetrics,
    MetricsUnavailable,
    log_fields,
    metrics_app,
    refusal_reason,
    render,
)
from moqt_asgi.testing import connect
from moqt_asgi.transport.admission import Admission, AdmissionPolicy
from moqt_asgi.types import Message, Scope

from .conftest import ROOT, Certs
from .helpers import WAIT, eventually
from .test_http_endpoints import HypercornOnePort, call


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name{labels}`` in exposition ``text`` (labels matched exactly), or None."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def clock_app(**kwargs: Any) -> MoQ:
    app = MoQ(**kwargs)
    broadcast = Broadcast("clock")
    broadcast.create_track("seconds").write_frame(b"tick")
    app.mux.publish("clock", broadcast)
    return app


async def one_session(app: MoQ, **kwargs: Any) -> str:
    async with connect(app, **kwargs) as session:
        version = session.version_name
        text = render(app).decode()
        assert sample(text, "moqt_sessions", transport="memory", version=version) == 1
        assert sample(text, "moqt_sessions_opened_total", transport="memory", version=version) == 1
    return version


def test_a_session_that_came_and_went_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    app = clock_app()
    with caplog.at_level(logging.INFO, logger="moqt_asgi.sessions"):
        version = asyncio.run(one_session(app))

    def closed() -> str:
        text = render(app).decode()
        return text if sample(text, "moqt_sessions_closed_total", transport="memory", version=version) == 1 else ""

    text = asyncio.run(eventually(closed, "the session counted as closed"))
    assert sample(text, "moqt_sessions", transport="memory", version=version) == 0
    assert sample(text, "moqt_sessions_opened_total", transport="memory", version=version) == 1
    assert sample(text, "moqt_session_setup_seconds_count") == 1
    assert sample(text, "moqt_session_setup_seconds_bucket", le="+Inf") == 1
    assert sample(text, "moqt_announcements") == 1
    assert sample(text, "moqt_sessions_refused_total", reason="auth") == 0
    lines = [record.getMessage() for record in caplog.records if record.name == "moqt_asgi.sessions"]
    start = next(line for line in lines if line.startswith("session start "))
    end = next(line for line in lines if line.startswith("session end "))
    for line in (start, end):
        assert f"transport=memory version={version} path=/ " in line, line
    assert re.search(r" setup_ms=\d+\.\d ", start + " "), start
    assert re.search(r" duration_s=\d+\.\d{3} ", end), end


def test_open_subscriptions_are_read_from_the_live_sessions() -> None:
    app = clock_app()

    async def run() -> str:
        async with connect(app) as session:
            reader = await session.subscribe("clock", "seconds")
            def served() -> str:
                text = render(app).decode()
                return text if sample(text, "moqt_subscriptions_served") == 1 else ""

            text = await eventually(served, "the subscription counted")
            reader.close()
            return text

    text = asyncio.run(run())
    assert sample(text, "moqt_subscriptions_served") == 1


def test_refusals_are_counted_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    app = clock_app(auth=Authenticator(public="open"), max_sessions=1)

    async def refused(**kwargs: Any) -> None:
        with pytest.raises(SetupRejected):
            async with connect(app, **kwargs):
                pass

    async def run() -> None:
        await refused(path="/closed")  # no token, not public: auth
        app.allow_origins = ["https://good.example"]
        await refused(path="/open", origin="https://evil.example")
        app.allow_origins = None

        @app.route("/open/{room}")
        async def room(request: Any) -> None:
            await request.reject(418, "no")

        await refused(path="/open")  # no route
        await refused(path="/open/a")  # the handler said no
        async with _held(app):
            await refused(path="/open/b")  # the cap of one session is taken

    with caplog.at_level(logging.INFO, logger="moqt_asgi.sessions"):
        asyncio.run(run())
    text = render(app).decode()
    for reason, count in (("auth", 1), ("origin", 1), ("route", 1), ("rejected", 1), ("admission", 1),
                          ("setup_timeout", 0)):
        assert sample(text, "moqt_sessions_refused_total", reason=reason) == count, (reason, text)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("session refused ")]
    assert any("reason=auth status=401 transport=memory path=/closed" in line for line in refusals), refusals


class _held:
    """Holds one admission slot of ``app`` (as a session in setup would)."""

    def __init__(self, app: MoQ) -> None:
        self.app = app

    async def __aenter__(self) -> None:
        assert self.app.admit(("10.0.0.1", 1)) is None

    async def __aexit__(self, *exc: object) -> None:
        self.app.release(("10.0.0.1", 1))


def test_refusal_reasons() -> None:
    assert refusal_reason(401) == "auth"
    assert refusal_reason(403, "a token for another path") == "auth"
    assert refusal_reason(403, "origin 'x' not allowed") == "origin"
    assert refusal_reason(403, "origin not allowed") == "origin"
    assert refusal_reason(403, "an Origin header is required") == "origin"
    assert refusal_reason(403, "path 'origin/x' is outside the token's root 'a'") == "auth"
    assert refusal_reason(404) == "route"
    assert refusal_reason(408) == "handler_timeout"
    assert refusal_reason(503) == "admission"
    assert refusal_reason(500) == "rejected"
    assert log_fields(a=1, b="two words", c=None, d="") == 'a=1 b="two words" c=- d=""'


def test_quic_listeners_connection_counts() -> None:
    app = clock_app()
    assert "moqt_connections" not in render(app).decode()  # no listener watched: absent, not zero
    first, second = Admission(AdmissionPolicy()), Admission(AdmissionPolicy())
    app.metrics.watch_admission(first)
    app.metrics.watch_admission(second)
    app.metrics.watch_admission(first)  # once only
    first.refused, second.refused, second.retries = 2, 3, 4
    text = render(app).decode()
    assert sample(text, "moqt_connections_refused_total") == 5
    assert sample(text, "moqt_connection_retries_total") == 4
    assert sample(text, "moqt_connections") == 0
    assert sample(text, "moqt_connections_half_open") == 0


def test_metrics_path_is_off_by_default_and_served_when_set() -> None:
    assert asyncio.run(call(clock_app(), "/metrics"))[0] == 404
    app = clock_app(metrics_path="/internal/metrics")
    status, headers, body = asyncio.run(call(app, "/internal/metrics"))
    assert status == 200 and headers["content-type"] == CONTENT_TYPE
    assert b"# TYPE moqt_sessions_opened_total counter" in body
    assert b"# TYPE moqt_session_setup_seconds histogram" in body
    asyncio.run(call(app, "/health"))
    text = asyncio.run(call(app, "/internal/metrics"))[2].decode()
    assert sample(text, "moqt_http_requests_total", endpoint="health", status="200") == 1
    assert asyncio.run(call(app, "/internal/metrics", method="POST"))[0] == 405


def test_metrics_app_serves_only_the_metrics() -> None:
    app = clock_app()
    internal = metrics_app(app)
    status, headers, body = asyncio.run(call(internal, "/metrics"))
    assert status == 200 and headers["content-type"] == CONTENT_TYPE and b"moqt_announcements 1.0" in body
    assert asyncio.run(call(internal, "/health"))[0] == 404
    assert asyncio.run(call(internal, "/"))[0] == 404

    async def lifespan() -> list[str]:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[str] = []

        async def receive() -> Message:
            return next(messages)

        async def send(message: Message) -> None:
            sent.append(message["type"])

        scope: Scope = {"type": "lifespan"}
        await internal(scope, receive, send)
        return sent

    assert asyncio.run(lifespan()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_without_prometheus_client_rendering_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    app = clock_app(metrics_path="/metrics")
    app.metrics = AppMetrics()
    with pytest.raises(MetricsUnavailable, match=r"moqt-asgi\[metrics\]"):
        render(app)
    status, _, body = asyncio.run(call(app, "/metrics"))
    assert status == 503 and b"prometheus-client" in body


@pytest.mark.cli
def test_the_package_imports_without_prometheus_client() -> None:
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "import moqt_asgi, moqt_asgi.metrics, moqt_asgi.http\n"
            "print(moqt_asgi.MoQ(metrics_path='/metrics').metrics_path)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "/metrics", result.stderr


metrics_clock: MoQ | None = None
"""For the hypercorn tests: ``examples.clock:moq`` with its metrics at /metrics."""
if os.environ.get("METRICS_TEST_APP"):
    from examples.clock import moq as metrics_clock

    metrics_clock.metrics_path = "/metrics"


@pytest.mark.cli
@pytest.mark.interop
def test_hypercorn_metrics_count_a_moqrs_session_that_came_and_went(certs: Certs) -> None:
    import moq

    server = HypercornOnePort("tests.test_metrics:metrics_clock", certs, env={"METRICS_TEST_APP": "1"})

    async def visit() -> str:
        async with moq.Client(f"http://127.0.0.1:{server.port}/", reconnect=False, websocket_enabled=False) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), WAIT)
            track = await broadcast.subscribe_track("seconds")
            await asyncio.wait_for(track.next_group(), WAIT)
            return await asyncio.to_thread(scrape)

    def scrape() -> str:
        status, headers, body = server.get("/metrics")
        assert status == 200 and headers["content-type"] == CONTENT_TYPE
        return body.decode()

    try:
        during = asyncio.run(visit())

        def closed() -> bool:
            return any(line.startswith("moqt_sessions_closed_total{") and line.endswith(" 1.0")
                       for line in scrape().splitlines())

        asyncio.run(eventually(closed, "the session counted as closed", interval=0.1))
        text = scrape()
    finally:
        server.stop()
    opened = [line for line in text.splitlines() if line.startswith("moqt_sessions_opened_total{")]
    assert len(opened) == 1 and 'transport="webtransport"' in opened[0] and opened[0].endswith(" 1.0"), opened
    assert re.search(r'^moqt_sessions\{transport="webtransport",version="moq-lite-0\d"\} 0\.0$', text, re.M), text
    assert sample(text, "moqt_session_setup_seconds_count") == 1
    assert sample(text, "moqt_http_requests_total", endpoint="certificate", status="200") == 1
    # the QUIC listener's counters reached the app (Hypercorn's patch hands them over with the certificate)
    assert sample(during, "moqt_connections") == 1 and sample(during, "moqt_subscriptions_served") == 1, during
    assert sample(text, "moqt_connections_refused_total") == 0
    assert "Traceback" not in server.output, server.output


@dataclasses.dataclass
class _Stats:
    served: int = 0
    subscribed: int = 0
    fetches: int = 0
    announce_streams: int = 0
    queued_writes: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    groups_dropped: int = 0


class _CountingSession:
    """Stands in for a session whose stats carry traffic totals."""

    version_name = "moq-lite-05"

    def __init__(self, **stats: int) -> None:
        self.counts = _Stats(**stats)

    def stats(self) -> _Stats:
        return self.counts


def test_traffic_totals_appear_once_sessions_report_them() -> None:
    app = clock_app()
    assert "moqt_bytes_total" not in render(app).decode()  # no session reported traffic: absent, not zero
    ended = _CountingSession(frames_sent=3, bytes_sent=300, frames_received=1, bytes_received=10, groups_dropped=2)
    live = _CountingSession(frames_sent=1, bytes_sent=50)
    for session in (ended, live):
        app.metrics.session_started(session, "quic", 0.01)  # type: ignore[arg-type]
    app.metrics.session_ended(ended)  # type: ignore[arg-type]
    ended.counts.bytes_sent = 10_000  # what it does after its end is not counted
    text = render(app).decode()
    assert sample(text, "moqt_bytes_total", direction="out") == 350
    assert sample(text, "moqt_bytes_total", direction="in") == 10
    assert sample(text, "moqt_frames_total", direction="out") == 4
    assert sample(text, "moqt_frames_total", direction="in") == 1
    assert sample(text, "moqt_groups_dropped_total") == 2
    assert sample(text, "moqt_sessions", transport="quic", version="moq-lite-05") == 1


def test_refused_webtransport_connects_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    app = clock_app(allow_origins=["https://good.example"], auth=Authenticator(public="clock"))

    @app.route("/clock")
    async def accept(request: Any) -> None:
        await request.accept()

    async def connect_to(path: str, origin: str, protocols: tuple[str, ...] = (), served: bool = True) -> int:
        sent: list[Message] = []
        scope: Scope = {"type": "webtransport", "path": path, "query_string": b"", "client": ("127.0.0.1", 9),
                        "headers": [(b"origin", origin.encode())], "subprotocols": list(protocols),
                        "extensions": {"moqt.connection": {"connection": object()}} if served else {}}

        async def receive() -> Message:
            return {"type": "webtransport.connect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[-1]["type"] == "webtransport.close", sent
        return int(sent[-1]["status"])

    async def run() -> list[int]:
        return [await connect_to("/clock", "https://evil.example"), await connect_to("/secret", "https://good.example"),
                await connect_to("/clock/x", "https://good.example"),
                await connect_to("/clock", "https://good.example", ("moq-lite-99",)),
                await connect_to("/clock", "https://good.example", served=False)]

    with caplog.at_level(logging.INFO, logger="moqt_asgi.sessions"):
        assert asyncio.run(run()) == [403, 401, 404, 400, 501]
    text = render(app).decode()
    for reason in ("origin", "auth", "route", "version", "protocol"):
        assert sample(text, "moqt_sessions_refused_total", reason=reason) == 1, (reason, text)
    lines = [r.getMessage() for r in caplog.records if r.name == "moqt_asgi.sessions"]
    assert "session refused reason=origin status=403 transport=webtransport path=/clock client=127.0.0.1:9" in lines


def test_upstream_links_are_exported_without_their_token() -> None:
    from moqt_asgi.relay import Relay
    from moqt_asgi.upstream import LinkStatus, UpstreamLink

    relay = Relay()
    app = MoQ(mux=relay.mux)
    assert "moqt_upstream" not in render(app).decode()  # no link watched: absent, not zero
    link = UpstreamLink(relay, "moql://node.test:4443/?jwt=secret")
    app.metrics.watch_upstream(link)
    app.metrics.watch_upstream(link)  # once only
    text = render(app).decode()
    assert "secret" not in text
    assert sample(text, "moqt_upstream_connected", url="moql://node.test:4443/") == 0
    assert sample(text, "moqt_upstream_attempts_total", url="moql://node.test:4443/") == 0
    assert sample(text, "moqt_upstream_reconnects_total", url="moql://node.test:4443/") == 0

    @dataclasses.dataclass
    class Redialled:  # a link that redialled: what its status() says
        def status(self) -> LinkStatus:
            return dataclasses.replace(link.status(), state="connected", attempts=3, sessions=3, reconnects=2)

    other = MoQ(mux=relay.mux)
    other.metrics.watch_upstream(Redialled())
    text = render(other).decode()
    assert sample(text, "moqt_upstream_connected", url="moql://node.test:4443/") == 1
    assert sample(text, "moqt_upstream_attempts_total", url="moql://node.test:4443/") == 3
    assert sample(text, "moqt_upstream_reconnects_total", url="moql://node.test:4443/") == 2

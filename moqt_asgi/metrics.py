"""Metrics of a MoQ app in Prometheus' text format, and the session log lines.

Every :class:`~moqt_asgi.app.MoQ` keeps an :class:`AppMetrics` (``moq.metrics``):
plain counters bumped once per session start, end or refusal and once per
HTTP endpoint answer, never per frame. What sessions hold right now
(subscriptions, fetches) is read from :meth:`Session.stats()
<moqt_asgi.engine.session.Session.stats>` of the live sessions when the
metrics are scraped.

Two ways to serve them, both rendered with ``prometheus-client`` (the
``[metrics]`` extra; imported only when metrics are rendered):

* ``MoQ(metrics_path="/metrics")``: the app answers that path itself, on the
  same listener as everything else. Off by default; keep it internal (a
  reverse proxy or firewall should not expose it).
* :func:`metrics_app` ``(moq)``: an ASGI app that serves only ``/metrics``,
  for a separate listener bound to an internal address
  (``serve --metrics-bind 127.0.0.1:9090``).

Metric names and labels are listed in ``docs/operators.md``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from .engine.mux import TrackMux
from .engine.session import Session
from .transport.admission import Admission
from .types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("moqt_asgi.metrics")
session_log = logging.getLogger("moqt_asgi.sessions")
"""One line per session start, end and refusal, as ``key=value`` pairs."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the setup-latency histogram's buckets."""
REFUSAL_REASONS = ("admission", "load", "auth", "origin", "route", "setup_timeout", "handler_timeout", "protocol",
                   "version", "rejected")
"""The ``reason`` label of ``moqt_sessions_refused_total`` (``load``: refused while the process is overloaded,
see :mod:`moqt_asgi.load`; ``admission``: the session caps)."""


class MetricsUnavailable(RuntimeError):
    """``prometheus-client`` is not installed (``pip install 'moqt-asgi[metrics]'``)."""


def refusal_reason(status: int, reason: str = "") -> str:
    """The ``reason`` label for a session refused with HTTP-style ``status`` (and its text).

    401 is auth; 403 is origin when the text is one of the app's origin
    refusals (``origin ... not allowed``, ``an Origin header is required``),
    else auth; 404 a missing route; 408 a setup handler that did not decide
    in time; 429 and 503 the admission caps; 400 and 501 protocol.
    """
    if status == 401:
        return "auth"
    if status == 403:
        return "origin" if reason.startswith(("origin ", "an Origin header")) else "auth"
    if status == 404:
        return "route"
    if status == 408:
        return "handler_timeout"
    if status in (429, 503):
        return "admission"
    if status in (400, 501):
        return "protocol"
    return "rejected"


def log_fields(**fields: object) -> str:
    """``key=value`` pairs; values with spaces, quotes or ``=`` are quoted."""
    parts = []
    for key, value in fields.items():
        text = "-" if value is None else str(value)
        if not text or any(ch in text for ch in ' "=\\\n'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


TRAFFIC = ("frames_sent", "frames_received", "bytes_sent", "bytes_received", "groups_dropped")
"""The traffic totals a session's stats may carry (see :class:`TrafficStats`)."""


@runtime_checkable
class TrafficStats(Protocol):
    """Per-session traffic totals, when :meth:`Session.stats() <moqt_asgi.engine.session.Session.stats>` has them.

    Exported as ``moqt_frames_total``, ``moqt_bytes_total`` (``direction``
    ``in``/``out``) and ``moqt_groups_dropped_total`` once the engine reports
    them; until then those metrics are absent rather than a misleading zero.
    """

    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    groups_dropped: int


def traffic_of(session: Session) -> dict[str, int] | None:
    """``session``'s traffic totals, or ``None`` when its stats carry none."""
    stats = session.stats()
    if not isinstance(stats, TrafficStats):
        return None
    return {"frames_sent": stats.frames_sent, "frames_received": stats.frames_received,
            "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received,
            "groups_dropped": stats.groups_dropped}


class AppMetrics:
    """What one app counts for its metrics: bumped at session start and end, refusals and HTTP answers."""

    def __init__(self) -> None:
        self.live: dict[Session, tuple[str, str]] = {}
        """Open sessions and their ``(transport, version)`` labels."""
        self.opened: Counter[tuple[str, str]] = Counter()
        self.closed: Counter[tuple[str, str]] = Counter()
        self.refused: Counter[str] = Counter()
        self.http: Counter[tuple[str, int]] = Counter()
        self.setup_buckets = [0] * len(SETUP_BUCKETS)
        self.setup_count = 0
        self.setup_sum = 0.0
        self.traffic_ended: Counter[str] = Counter()
        """Traffic totals of the sessions that ended (when their stats carry them)."""
        self.traffic_known = False
        self.admissions: list[Admission] = []
        """The QUIC listeners' connection counters (:meth:`watch_admission`)."""
        self.upstreams: list[Any] = []
        """Upstream links (:class:`~moqt_asgi.upstream.UpstreamLink`) to export (:meth:`watch_upstream`)."""
        self._registry: Any = None

    def watch_admission(self, admission: Admission) -> None:
        """Export a QUIC listener's connection counts and refusals (its caps, before any connection exists)."""
        if all(admission is not known for known in self.admissions):
            self.admissions.append(admission)

    def watch_upstream(self, link: Any) -> None:
        """Export an upstream link's state (``moqt_upstream_connected``, ``_attempts``, ``_reconnects``, by URL).

        ``link`` is an :class:`~moqt_asgi.upstream.UpstreamLink` (anything whose ``status()`` has ``url``,
        ``state``, ``attempts`` and ``reconnects``).
        """
        if all(link is not known for known in self.upstreams):
            self.upstreams.append(link)

    def session_started(self, session: Session, transport: str, setup_seconds: float) -> None:
        labels = (transport, session.version_name)
        self.live[session] = labels
        self.opened[labels] += 1
        self.setup_count += 1
        self.setup_sum += setup_seconds
        for index, bound in enumerate(SETUP_BUCKETS):
            if setup_seconds <= bound:
                self.setup_buckets[index] += 1
                break

    def session_ended(self, session: Session) -> None:
        labels = self.live.pop(session, None)
        if labels is not None:
            self.closed[labels] += 1
            traffic = traffic_of(session)
            if traffic is not None:
                self.traffic_known = True
                self.traffic_ended.update(traffic)

    def traffic(self) -> Counter[str] | None:
        """Traffic totals of every session so far, ended and open; ``None`` when sessions report none."""
        total = Counter(self.traffic_ended)
        known = self.traffic_known
        for session in list(self.live):
            traffic = traffic_of(session)
            if traffic is not None:
                known = True
                total.update(traffic)
        return total if known else None

    def session_refused(self, reason: str) -> None:
        self.refused[reason] += 1

    def http_response(self, endpoint: str, status: int) -> None:
        self.http[(endpoint, status)] += 1


@runtime_checkable
class MeasuredApp(Protocol):
    """An app whose sessions are counted (:class:`~moqt_asgi.app.MoQ` is one)."""

    metrics: AppMetrics
    mux: TrackMux


def note_refusal(app: object, status: int, text: str = "", *, transport: str, path: str | None = None,
                 client: tuple[str, int] | None = None, reason: str | None = None) -> None:
    """Count (when ``app`` keeps metrics) and log a session refused before it reached :func:`serve_connection
    <moqt_asgi.serving.serve_connection>`: a WebTransport CONNECT or a WebSocket upgrade answered with ``status``.

    ``reason`` defaults to :func:`refusal_reason` of ``status`` and ``text``.
    """
    label = reason or refusal_reason(status, text)
    if isinstance(app, MeasuredApp):
        app.metrics.session_refused(label)
    session_log.info("session refused %s", log_fields(reason=label, status=status, transport=transport, path=path,
                                                      client=f"{client[0]}:{client[1]}" if client else None))


def _families(app: MeasuredApp) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    metrics = app.metrics
    open_sessions = GaugeMetricFamily("moqt_sessions", "MoQ sessions open now.", labels=["transport", "version"])
    counts: Counter[tuple[str, str]] = Counter(metrics.live.values())
    for labels in {*metrics.opened, *counts}:
        open_sessions.add_metric(list(labels), counts.get(labels, 0))
    yield open_sessions
    for name, counter, text in (("moqt_sessions_opened", metrics.opened, "MoQ sessions accepted."),
                                ("moqt_sessions_closed", metrics.closed, "MoQ sessions ended.")):
        family = CounterMetricFamily(name, text, labels=["transport", "version"])
        for labels, value in sorted(counter.items()):
            family.add_metric(list(labels), value)
        yield family
    refused = CounterMetricFamily("moqt_sessions_refused", "Sessions refused, by reason.", labels=["reason"])
    for reason in sorted({*REFUSAL_REASONS, *metrics.refused}):
        refused.add_metric([reason], metrics.refused.get(reason, 0))
    yield refused
    served = subscribed = fetches = announce_streams = queued = 0
    for session in list(metrics.live):
        stats = session.stats()
        served += stats.served
        subscribed += stats.subscribed
        fetches += stats.fetches
        announce_streams += stats.announce_streams
        queued += stats.queued_writes
    for name, value, text in (
            ("moqt_subscriptions_served", served, "Peers' subscriptions being served by open sessions."),
            ("moqt_subscriptions_open", subscribed, "Subscriptions the open sessions hold to their peers."),
            ("moqt_fetches_serving", fetches, "FETCH requests being served."),
            ("moqt_announce_streams", announce_streams, "Peers' announce requests being served."),
            ("moqt_queued_writes", queued, "Writes waiting in the sessions' send schedulers."),
            ("moqt_announcements", len(app.mux.active_paths()), "Broadcasts announced in the app's mux.")):
        yield GaugeMetricFamily(name, text, value=value)
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(SETUP_BUCKETS, metrics.setup_buckets, strict=True):
        total += count
        buckets.append((repr(bound), total))
    buckets.append(("+Inf", metrics.setup_count))
    yield HistogramMetricFamily("moqt_session_setup_seconds", "From a connection's start to its session's accept.",
                                buckets=buckets, sum_value=metrics.setup_sum)
    if metrics.admissions:
        admissions = list(metrics.admissions)
        yield GaugeMetricFamily("moqt_connections", "QUIC connections admitted and not yet ended.",
                                value=sum(admission.connections for admission in admissions))
        yield GaugeMetricFamily("moqt_connections_half_open", "QUIC connections whose handshake is not done.",
                                value=sum(admission.half_open for admission in admissions))
        yield CounterMetricFamily("moqt_connections_refused", "QUIC connections refused by the connection caps.",
                                  value=sum(admission.refused for admission in admissions))
        yield CounterMetricFamily("moqt_connection_retries", "QUIC Retry packets sent.",
                                  value=sum(admission.retries for admission in admissions))
    if metrics.upstreams:
        connected = GaugeMetricFamily("moqt_upstream_connected", "1 while the upstream link has a session.",
                                      labels=["url"])
        attempts = CounterMetricFamily("moqt_upstream_attempts", "Dials an upstream link started.", labels=["url"])
        reconnects = CounterMetricFamily("moqt_upstream_reconnects", "Upstream sessions set up after the first.",
                                         labels=["url"])
        for link in list(metrics.upstreams):
            status = link.status()
            connected.add_metric([status.url], 1 if status.state == "connected" else 0)
            attempts.add_metric([status.url], status.attempts)
            reconnects.add_metric([status.url], status.reconnects)
        yield from (connected, attempts, reconnects)
    traffic = metrics.traffic()
    if traffic is not None:
        for name, unit in (("moqt_frames", "frames"), ("moqt_bytes", "bytes")):
            family = CounterMetricFamily(name, f"Frame {unit} carried by MoQ sessions.", labels=["direction"])
            family.add_metric(["in"], traffic[f"{unit}_received"])
            family.add_metric(["out"], traffic[f"{unit}_sent"])
            yield family
        yield CounterMetricFamily("moqt_groups_dropped", "Groups dropped for slow subscribers.",
                                  value=traffic["groups_dropped"])
    http = CounterMetricFamily("moqt_http_requests", "HTTP endpoint answers.", labels=["endpoint", "status"])
    for (endpoint, status), value in sorted(metrics.http.items()):
        http.add_metric([endpoint, str(status)], value)
    yield http


class _Collector:
    def __init__(self, app: MeasuredApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        return _families(self.app)


def render(app: MeasuredApp) -> bytes:
    """The app's metrics in Prometheus' text format (0.0.4). Raises :class:`MetricsUnavailable`."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError:
        raise MetricsUnavailable("metrics need prometheus-client: pip install 'moqt-asgi[metrics]'") from None
    metrics = app.metrics
    if metrics._registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(app))
        metrics._registry = registry
    return bytes(generate_latest(metrics._registry))


async def serve_metrics(app: MeasuredApp, scope: Scope, send: Send) -> None:
    """Answer one HTTP request with the metrics (GET and HEAD; 405 otherwise, 503 without prometheus-client)."""
    method = scope.get("method", "GET")
    headers: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store")]
    if method not in ("GET", "HEAD"):
        status, body, content_type = 405, b"method not allowed\n", b"text/plain; charset=utf-8"
        headers.append((b"allow", b"GET, HEAD"))
    else:
        try:
            status, body, content_type = 200, render(app), CONTENT_TYPE.encode()
        except MetricsUnavailable as exc:
            logger.error("%s", exc)
            status, body, content_type = 503, f"{exc}\n".encode(), b"text/plain; charset=utf-8"
    headers += [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def metrics_app(app: MeasuredApp, *, path: str = "/metrics") -> ASGIApp:
    """An ASGI app serving only ``app``'s metrics at ``path`` (404 elsewhere), for an internal listener.

    It answers ASGI lifespan itself and does not run ``app``'s startup or
    shutdown (the listener that serves ``app`` does).
    """

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("path") == path:
            await serve_metrics(app, scope, send)
            return
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"Not Found\n"})

    return serve


__all__ = [
    "CONTENT_TYPE",
    "REFUSAL_REASONS",
    "SETUP_BUCKETS",
    "TRAFFIC",
    "AppMetrics",
    "MeasuredApp",
    "MetricsUnavailable",
    "TrafficStats",
    "log_fields",
    "metrics_app",
    "note_refusal",
    "refusal_reason",
    "render",
    "serve_metrics",
    "traffic_of",
]

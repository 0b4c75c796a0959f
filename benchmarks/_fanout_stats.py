"""The figures of :mod:`benchmarks.fanout`: one measured point, the objective, and the printed tables."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

P99_OBJECTIVE_MS = 300.0
DELIVERED_OBJECTIVE = 0.99
LOAD_SATURATED = 0.8
"""Above this share of their cores the load generators' own delays show in the latencies."""
COLLAPSED = 0.5
"""Below this delivered fraction a server's sweep stops: larger audiences would only fail harder."""


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (NaN if there are none)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index of ``values``: ``(sum x)^2 / (n * sum x^2)``.

    1 when every value is the same, ``1/n`` when one holds everything, and
    ``k/n`` when ``k`` of them share it evenly and the rest get nothing. NaN
    when there are no values or they are all 0 (nothing was shared).
    """
    squares = sum(value * value for value in values)
    if not values or not squares:
        return math.nan
    return sum(values) ** 2 / (len(values) * squares)


@dataclass
class SubscriberFigures:
    received: int
    """Distinct frames sent inside the window that arrived within the grace period."""
    p99_ms: float
    error: str | None = None


@dataclass
class Point:
    """One server, one stream, ``subscribers`` subscribers: what was delivered, how late, at what cost."""

    server: str
    stream: str
    subscribers: int
    connected: int = 0
    sent: int = 0
    """Frames the publisher sent inside the window."""
    window_s: float = 0.0
    received: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    worst_delivered: float = 0.0
    worst_p99_ms: float = math.nan
    fairness: float = math.nan
    """Jain's index over the frames each subscriber received (one that sent no report counts as 0): 1 when
    all received alike; past capacity it tells an even degradation (near 1) from some starved (towards ``k/n``)."""
    server_cpu_s: float = 0.0
    """CPU seconds the server spent over the window."""
    server_wait_s: float = 0.0
    """Seconds over the window the server was runnable but did not get its core (other processes had it)."""
    load_wait: float = 0.0
    """Seconds a second the publisher's and load generators' threads, summed, were runnable but waiting for a core."""
    rss_before: int = 0
    """The server's resident set with only the publisher connected."""
    rss_after: int = 0
    """The server's resident set at the window's end, every subscriber connected."""
    load_cpu: float = 0.0
    """Fraction of the load-generator cores the publisher and load generators used over the window."""
    publisher_late_ms: float = 0.0
    """The publisher's worst lateness against its own schedule (if large, the load side was saturated)."""
    server_drops: int = 0
    """Datagrams the server's socket dropped over the window because its receive buffer was full."""
    udp_drops: int = 0
    """Datagrams the machine (any process, the server included) dropped for a full receive buffer over the window."""
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    errors: list[str] = field(default_factory=list)
    error: str | None = None
    """Set when the point could not be measured at all."""

    @property
    def expected(self) -> int:
        return self.sent * self.subscribers

    @property
    def delivered(self) -> float:
        return self.received / self.expected if self.expected else 0.0

    @property
    def cpu_per_thousand(self) -> float:
        """Server CPU seconds per thousand frames delivered to subscribers."""
        return self.server_cpu_s / (self.received / 1000) if self.received else math.nan

    @property
    def server_core(self) -> float:
        """Fraction of one core the server used over the window."""
        return self.server_cpu_s / self.window_s if self.window_s else math.nan

    @property
    def server_wait(self) -> float:
        """Fraction of the window the server waited for its core (its threads summed): other processes had it."""
        return self.server_wait_s / self.window_s if self.window_s else math.nan

    @property
    def rss_per_session(self) -> float:
        return (self.rss_after - self.rss_before) / self.subscribers if self.subscribers else math.nan

    @property
    def meets(self) -> bool:
        """p99 within the objective with enough of the frames delivered, over all subscribers together."""
        return self.error is None and self.delivered >= DELIVERED_OBJECTIVE and self.p99_ms <= P99_OBJECTIVE_MS

    @property
    def meets_worst(self) -> bool:
        """The same objective held by every single subscriber."""
        return (self.error is None and self.worst_delivered >= DELIVERED_OBJECTIVE
                and self.worst_p99_ms <= P99_OBJECTIVE_MS)

    @property
    def collapsed(self) -> bool:
        return self.error is not None or self.delivered < COLLAPSED

    def add_subscribers(self, reports: Iterable[dict[str, object]]) -> None:
        """Fold in the load generators' per-subscriber reports (``received``, ``latencies_us``, ``error``)."""
        everything: list[float] = []
        figures: list[SubscriberFigures] = []
        for report in reports:
            latencies = sorted(float(value) / 1000 for value in report["latencies_us"])  # type: ignore[attr-defined]
            everything.extend(latencies)
            received = int(report["received"])  # type: ignore[call-overload]
            error = report.get("error")
            figures.append(SubscriberFigures(received, percentile(latencies, 0.99) if latencies else math.inf,
                                             str(error) if error else None))
        everything.sort()
        self.received = sum(f.received for f in figures)
        missing = self.subscribers - len(figures)
        figures += [SubscriberFigures(0, math.inf, "no report")] * missing
        if everything:
            self.p50_ms = percentile(everything, 0.50)
            self.p99_ms = percentile(everything, 0.99)
            self.max_ms = everything[-1]
        if figures and self.sent:
            self.worst_delivered = min(f.received for f in figures) / self.sent
            self.worst_p99_ms = max(f.p99_ms for f in figures)
        self.fairness = jain([f.received for f in figures])
        errors: dict[str, int] = {}
        for f in figures:
            if f.error:
                errors[f.error] = errors.get(f.error, 0) + 1
        self.errors = [f"{count} x {error}" for error, count in sorted(errors.items(), key=lambda item: -item[1])]

    def as_json(self) -> dict[str, object]:
        def number(value: float) -> float | None:
            return None if math.isnan(value) or math.isinf(value) else round(value, 4)

        return {
            "server": self.server, "stream": self.stream, "subscribers": self.subscribers,
            "connected": self.connected, "window_s": number(self.window_s), "sent": self.sent,
            "expected": self.expected, "received": self.received, "delivered": number(self.delivered),
            "p50_ms": number(self.p50_ms), "p99_ms": number(self.p99_ms), "max_ms": number(self.max_ms),
            "worst_delivered": number(self.worst_delivered), "worst_p99_ms": number(self.worst_p99_ms),
            "jain": number(self.fairness),
            "server_cpu_s": number(self.server_cpu_s), "server_core": number(self.server_core),
            "server_wait": number(self.server_wait), "load_wait": number(self.load_wait),
            "cpu_s_per_1000": number(self.cpu_per_thousand), "rss_before": self.rss_before,
            "rss_after": self.rss_after, "rss_per_session": number(self.rss_per_session),
            "load_cpu": number(self.load_cpu), "publisher_late_ms": number(self.publisher_late_ms),
            "server_drops": self.server_drops, "udp_drops": self.udp_drops,
            "load_average": list(self.load_average), "meets": self.meets, "meets_worst": self.meets_worst,
            "errors": self.errors, "error": self.error,
        }


def _ms(value: float) -> str:
    if math.isinf(value):
        return "none"
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%" if value < 0.9995 else "100%"


def _fairness(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _render(header: tuple[str, ...], rows: list[tuple[str, ...]], numeric: set[int]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "| " + " | ".join(cells) + " |"

    separator = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2))
                               for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


def format_points(points: list[Point]) -> str:
    header = ("server", "subs", "delivered", "worst sub", "Jain", "p50 ms", "p99 ms", "max ms", "worst p99 ms",
              "server core", "waited", "CPU s/1k", "RSS/session", "load CPU", "notes")
    rows: list[tuple[str, ...]] = []
    for point in points:
        if point.error is not None:
            rows.append((point.server, str(point.subscribers), *["-"] * 12, point.error))
            continue
        notes = []
        if point.connected < point.subscribers:
            notes.append(f"{point.subscribers - point.connected} not subscribed in time")
        notes += point.errors[:2]
        if point.load_cpu > LOAD_SATURATED:
            notes.append("load generators saturated: the figures are a bound")
        if point.load_wait > 0.1:
            notes.append(f"load generators' threads waited {point.load_wait:.2f} s a second for a core")
        if point.server_drops:
            notes.append(f"server socket dropped {point.server_drops} datagrams")
        if point.udp_drops > point.server_drops:
            notes.append(f"{point.udp_drops - point.server_drops} datagrams dropped elsewhere")
        if point.publisher_late_ms > 50:
            notes.append(f"publisher up to {point.publisher_late_ms:.0f} ms late")
        rows.append((point.server, str(point.subscribers), _percent(point.delivered), _percent(point.worst_delivered),
                     _fairness(point.fairness), _ms(point.p50_ms), _ms(point.p99_ms), _ms(point.max_ms),
                     _ms(point.worst_p99_ms),
                     f"{point.server_core * 100:.0f}%", f"{point.server_wait * 100:.0f}%",
                     f"{point.cpu_per_thousand:.3f}",
                     f"{point.rss_per_session / 1024:.0f} KiB", f"{point.load_cpu * 100:.0f}%", "; ".join(notes)))
    return _render(header, rows, set(range(1, 14)))


def largest(points: list[Point], worst: bool = False) -> str:
    """The largest audience meeting the objective, with what happened above it."""
    measured = sorted(points, key=lambda p: p.subscribers)
    passing = [p.subscribers for p in measured if (p.meets_worst if worst else p.meets)]
    if not passing:
        return f"none (smallest measured: {measured[0].subscribers})" if measured else "-"
    best = max(passing)
    above = [p.subscribers for p in measured if p.subscribers > best]
    if not above:
        return f">= {best} (largest measured)"
    return f"{best} ({above[0]} failed)"


def format_summary(points: list[Point], servers: list[str]) -> str:
    header = ("server", f"largest N: p99 <= {P99_OBJECTIVE_MS:g} ms, >= {DELIVERED_OBJECTIVE:.0%} delivered",
              "the same for the worst subscriber")
    rows: list[tuple[str, ...]] = []
    for server in servers:
        mine = [p for p in points if p.server == server]
        if mine:
            rows.append((server, largest(mine), largest(mine, worst=True)))
    return _render(header, rows, set())

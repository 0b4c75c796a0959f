"""``python -m benchmarks.fanout``: its arithmetic, its profile summary, and a ``--quick`` run against every server.

The run is a real one (a moq-rs publisher, moq-rs subscribers in their own
processes, each relay in a process of its own), so it is marked ``slow``,
``interop`` and ``cli``; the figures it checks are the ones a sweep prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks._fanout_peer import HEADER, PROFILES, LoadGenerator, Subscriber
from benchmarks._fanout_profile import summarise
from benchmarks._fanout_servers import KINDS, command
from benchmarks._fanout_stats import Point, format_points, format_summary, jain, largest, percentile
from benchmarks.fanout import split

from .conftest import ROOT


def report(received: int, latencies_ms: list[float], error: str | None = None) -> dict[str, object]:
    return {"received": received, "latencies_us": [int(ms * 1000) for ms in latencies_ms], "error": error}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_jain_index_tells_even_shares_from_starved_subscribers() -> None:
    assert jain([90.0, 90.0, 90.0, 90.0]) == pytest.approx(1.0)
    assert jain([100.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)  # one took everything: 1/n
    assert jain([100.0, 100.0, 0.0, 0.0]) == pytest.approx(0.5)  # two of four shared it evenly: k/n
    assert jain([50.0, 50.0, 50.0, 45.0]) == pytest.approx(195 ** 2 / (4 * (3 * 2500 + 2025)))
    assert math.isnan(jain([])) and math.isnan(jain([0.0, 0.0]))


def test_point_figures_come_from_every_subscriber() -> None:
    point = Point("serve-quic", "frames", subscribers=3, sent=100, window_s=10.0, server_cpu_s=2.5,
                  rss_before=10_000_000, rss_after=10_600_000)
    point.add_subscribers([
        report(100, [10.0] * 100),
        report(100, [20.0] * 98 + [400.0] * 2),
        report(90, [5.0] * 90, error="track ended"),
    ])
    assert point.received == 290 and point.expected == 300
    assert point.delivered == pytest.approx(290 / 300)
    assert point.worst_delivered == pytest.approx(0.9)
    assert point.p50_ms == 10.0 and point.max_ms == 400.0
    assert point.p99_ms == 20.0  # rank 288 of 290: two late frames are not the 99th percentile of all
    assert point.worst_p99_ms == 400.0  # ... but it is the second subscriber's
    assert point.fairness == pytest.approx(290 ** 2 / (3 * (100 ** 2 + 100 ** 2 + 90 ** 2)))
    assert point.as_json()["jain"] == pytest.approx(point.fairness, abs=1e-4)
    assert point.cpu_per_thousand == pytest.approx(2.5 / 0.29)
    assert point.server_core == pytest.approx(0.25)
    assert point.rss_per_session == pytest.approx(200_000)
    assert point.errors == ["1 x track ended"]
    assert not point.meets  # 96.7% delivered
    assert not point.meets_worst


def test_a_subscriber_without_a_report_counts_as_receiving_nothing() -> None:
    point = Point("moq-rs", "frames", subscribers=2, sent=50)
    point.add_subscribers([report(50, [3.0] * 50)])
    assert point.delivered == 0.5 and point.worst_delivered == 0.0
    assert point.fairness == pytest.approx(0.5)  # one of two received everything
    assert math.isinf(point.worst_p99_ms)
    assert point.errors == ["1 x no report"]
    assert point.collapsed is False and not point.meets


def test_the_objective_and_the_largest_audience_meeting_it() -> None:
    def point(subscribers: int, delivered: int, late: float) -> Point:
        made = Point("serve-quic", "frames", subscribers, sent=100)
        made.add_subscribers([report(delivered, [late] * delivered) for _ in range(subscribers)])
        return made

    points = [point(50, 100, 20.0), point(100, 99, 250.0), point(150, 100, 301.0), point(200, 40, 900.0)]
    assert [p.meets for p in points] == [True, True, False, False]
    assert points[-1].collapsed
    assert largest(points) == "100 (150 failed)"
    assert largest(points[:2]) == ">= 100 (largest measured)"
    assert largest(points[2:]) == "none (smallest measured: 150)"
    table = format_points(points)
    assert "| serve-quic |   50 |" in table and "40.0%" in table
    assert "|  Jain |" in table and "| 1.000 |" in table
    assert "100 (150 failed)" in format_summary(points, ["serve-quic", "moq-rs"])


def test_the_qh3_kind_serves_the_same_relay_on_qh3_without_webtransport(tmp_path: Path) -> None:
    qh3 = command(KINDS["serve-quic-qh3"], tmp_path / "cert.pem", tmp_path / "key.pem", 0)
    plain = command(KINDS["serve-quic"], tmp_path / "cert.pem", tmp_path / "key.pem", 0)
    assert KINDS["serve-quic-qh3"].scheme == "moql"
    assert qh3[:len(plain)] == plain and qh3[len(plain):] == ["--quic-backend", "qh3", "--no-webtransport"]
    assert plain[2:5] == ["moqt_asgi", "serve", "examples.relay:moq"]


def test_a_load_generator_reports_once_every_subscriber_has_every_frame() -> None:
    """Told how many frames the window held, it stops waiting as soon as each subscriber has them all."""
    args = argparse.Namespace(count=2, connect_batch=1, url="", fingerprint="", broadcast="b", track="t")

    async def waited(received: list[int], told: int | None, grace_s: float) -> float:
        load = LoadGenerator(args)
        for subscriber, count in zip(load.subscribers, received, strict=True):
            subscriber.seen = {(0, index) for index in range(count)}
        expected: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        expected.set_result(told)
        started = time.monotonic()
        await load.wait_for_frames(expected, time.monotonic_ns() + int(grace_s * 1e9))
        return time.monotonic() - started

    assert asyncio.run(waited([30, 30], 30, grace_s=60)) < 30  # everything is in: no grace
    assert asyncio.run(waited([30, 29], 30, grace_s=0.3)) >= 0.25  # one frame missing: the whole grace
    assert asyncio.run(waited([30, 30], None, grace_s=0.3)) >= 0.25  # not told: the whole grace


def test_load_is_split_evenly() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 2) == [1, 1]
    assert sum(split(501, 6)) == 501


def test_a_subscriber_counts_each_frame_of_the_window_once() -> None:
    subscriber = Subscriber()
    begin, end = 1_000_000_000, 2_000_000_000
    inside = HEADER.pack(1_500_000_000, 4, 7) + bytes(100)
    subscriber.record(HEADER.pack(900_000_000, 3, 0), begin, end, now=1_010_000_000)  # catch-up, before the window
    subscriber.record(inside, begin, end, now=1_512_000_000)
    subscriber.record(inside, begin, end, now=1_900_000_000)  # the same frame again
    assert subscriber.frames == 3
    assert subscriber.seen == {(4, 7)}
    assert subscriber.latencies_us == [12_000]


def test_the_video_profile_is_about_one_megabit() -> None:
    video = PROFILES["video"]
    assert video.frame_size(0) == 30_000 and video.frame_size(1) < 30_000
    assert 0.9e6 <= video.bytes_per_second * 8 <= 1.1e6
    assert PROFILES["frames"].bytes_per_second == 30 * 1200


def test_profile_summary_attributes_own_time_and_leaves_idle_out(tmp_path: Path) -> None:
    raw = tmp_path / "frames-serve-quic-100.txt"
    raw.write_text(
        '_run_once (asyncio/base_events.py:1900);select (selectors.py:468) 50\n'
        'process 12:"python -m moqt_asgi serve" 3\n'
        '_run_once (asyncio/base_events.py:1900);datagram_received (moqt_asgi/transport/quic.py:10);'
        'receive_datagram (aioquic/quic/connection.py:1000) 30\n'
        '_run_once (asyncio/base_events.py:1900);transmit (moqt_asgi/transport/quic.py:20);'
        'sendto (asyncio/selector_events.py:1200) 15\n'
        '_run_once (asyncio/base_events.py:1900);transmit (moqt_asgi/transport/quic.py:20) 5\n')
    summary = summarise(raw)
    assert "50 busy samples" in summary and "3 no Python frame" in summary and "50 waiting in epoll" in summary
    assert "60.0%  aioquic" in summary and "30.0%  asyncio" in summary and "10.0%  moqt_asgi" in summary
    assert "60.0%  receive_datagram (aioquic/quic/connection.py)" in summary


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.cli
@pytest.mark.timeout(600)
def test_quick_run_measures_every_server(tmp_path: Path) -> None:
    """Every server (``serve`` on aioquic and on qh3 among them) gets a row built from real measurements: frames
    counted, latencies, fairness, CPU and memory from /proc."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.fanout", "--quick", "--subscribers", "3", "--duration", "3", "--warmup", "1",
         "--grace", "2", "--json",
         "--quiet", "--logs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    points = {point["server"]: point for point in document["points"]}
    assert set(points) == set(KINDS)
    for server, point in points.items():
        assert point["error"] is None, (server, point["error"])
        assert point["connected"] == 3, server
        assert point["sent"] >= 30, server  # 3 s at 30 frames/s, give or take the edges of the window
        assert point["received"] > 0.5 * point["expected"], server
        assert 0 < point["p50_ms"] <= point["p99_ms"] <= point["max_ms"] < 5000, server
        assert point["worst_delivered"] is not None and point["worst_p99_ms"] is not None, server
        assert 0.9 <= point["jain"] <= 1.0, server  # three subscribers on an idle relay receive alike
        assert point["server_cpu_s"] > 0 and point["cpu_s_per_1000"] > 0, server
        assert point["rss_after"] > 1_000_000, server
        assert point["load_cpu"] > 0, server
        assert point["server_wait"] is not None and point["server_wait"] >= 0, server
        assert point["server_drops"] >= 0 and point["udp_drops"] >= 0, server
    assert document["conditions"]["duration_s"] == 3.0


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.cli
@pytest.mark.timeout(300)
def test_qh3_load_generator_measures_the_moqrs_relay(tmp_path: Path) -> None:
    """``--load-client qh3``: moqt-asgi subscribers on qh3 read every server's frames, moq-rs's relay among them."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.fanout", "--quick", "--server", "moq-rs", "--load-client", "qh3",
         "--subscribers", "3", "--duration", "3", "--warmup", "1", "--grace", "2", "--json", "--quiet",
         "--logs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["conditions"]["load_client"] == "qh3"
    [point] = document["points"]
    assert point["error"] is None, point["error"]
    assert point["connected"] == 3
    assert point["received"] > 0.5 * point["expected"]
    assert 0 < point["p50_ms"] <= point["p99_ms"] < 5000
    assert point["load_cpu"] > 0

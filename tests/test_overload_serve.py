"""A real ``serve`` process at about twice its capacity: subscribers degrade alike, a newcomer is still served.

The server is ``python -m moqt_asgi serve tests.apps.slow_relay:moq``: the
example relay, made slower on ``SIGUSR1`` (see :mod:`tests.apps.slow_relay`)
so that a small audience is past its capacity. :data:`SUBSCRIBERS` moq-rs
subscribers in two load-generator processes (the fan-out benchmark's,
:mod:`tests.apps.overload_peer`, which also reports the groups each
subscriber read) read one live track of 30 frames/s of 1200 B, a group a
second. Everyone connects and subscribes while the relay runs at full speed;
then the signal cuts its capacity under the admitted audience, and a window
of :data:`WINDOW` seconds is measured.

* The fan-out past capacity (the first test): the server publishes the
  track itself (``MOQT_TEST_SOURCE``) and runs :data:`SLOWDOWN` times slower
  (it sleeps fifteen times the CPU time it uses). Six times slower it
  delivers everything within the objective (p99 271 ms), ten times everything
  but late (p99 0.9 s), twelve times 98%, sixteen times 68-78%. The test checks that the
  overload is real, that the subscribers lose roughly alike (Jain's index over their
  delivered frames, the worst against the mean), that none stalls (each
  receives frames of the window's last seconds), that a new moq-rs
  subscriber gets its first frame within :data:`NEWCOMER_BOUND`, and that
  the server survives with no traceback.
* Admission by load (the second test): the fan-out benchmark's moq-rs
  publisher, and the relay's loop held :data:`STALL_MS` of every
  :data:`PERIOD_MS`, which the monitor sees as loop lag (50-90 ms smoothed).
  With ``serve --max-loop-lag`` a newcomer (ours and moq-rs's) is refused
  with application code 503 and the load reason, while the admitted
  subscribers keep receiving the newest groups. (Reading one datagram per
  step, that relay took in only about half the frames and the refusals came
  after 3.7-13 s; reading in batches it delivers everything, p99 about
  200 ms, and refuses within a second.)

Before the relay read its socket in batches (up to 64 datagrams per
wake-up, :func:`moqt_asgi.transport.udp.read_in_batches`) it read one
datagram per event-loop step: three times slower it delivered 15-45% with
Jain 0.80-0.985, and a newcomer waited 7.5-10 s behind the audience's
datagrams in the socket's receive queue. Sixteen times slower, a newcomer
still waits 8-10 s: every one of its round trips waits for event-loop steps
that the slowdown stretches sixteen times (with the real CPU overload of
160-200 subscribers on this machine, 0.4 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import moq
import pytest

from benchmarks._fanout_peer import BROADCAST, HEADER, TRACK
from benchmarks._fanout_servers import KINDS, RunningServer, open_log, spawn_listening
from benchmarks._fanout_stats import jain
from benchmarks.fanout import Peer, split
from moqt_asgi import dial
from moqt_asgi.protocol.errors import SessionClosed, SetupRejected

from .conftest import ROOT, Certs
from .helpers import cli, moqrs_client

APP = "tests.apps.slow_relay:moq"
SUBSCRIBERS = 40
"""The audience: two load generators of 20 moq-rs subscribers (their cost is small next to the relay's)."""
STALL_MS = 85
PERIOD_MS = 100
"""Admission by load: once signalled the relay's loop runs 15 ms of every 100 (at 30 it still serves everyone)."""
SLOWDOWN = 16.0
"""The fan-out test: once signalled the relay runs sixteen times slower (at six times it serves everyone in time)."""
SETTLE = 2.0
"""Seconds between the capacity drop and the window: the queues of the overload build up."""
WINDOW = 6.0
GRACE = 2.0
"""Seconds after the window a frame of it may still arrive to count."""
NEWCOMER_BOUND = 15.0
"""Seconds a new subscriber may wait, from its dial, for its first frame during the overload. Measured 8.4-9.7 s
sixteen times slower (1-4 s when the moq-rs publisher's track is what gives way): each of its round trips waits for
event-loop steps the slowdown stretches. The bound says it is served at all, not that it is served quickly."""
FPS = 30
MAX_LOOP_LAG = 0.04
"""``serve --max-loop-lag``: under the loop held :data:`STALL_MS` of every :data:`PERIOD_MS` the monitor reads
50-90 ms; 40 subscribers' handshakes at once on a busy machine read up to about 30 ms, and must be admitted."""
REFUSAL_TIMEOUT = 25.0
"""Seconds a refused newcomer may take to learn it (its handshake crosses the overloaded relay too)."""
START_TIMEOUT = 30.0
READY_TIMEOUT = 60.0


@dataclass
class Outcome:
    """What one run measured."""

    sent: int = 0
    """Frames the publisher sent inside the window."""
    counts: list[int] = field(default_factory=list)
    """Frames of the window each subscriber received (within the grace)."""
    groups: list[dict[int, int]] = field(default_factory=list)
    """Per subscriber: group sequence -> frames of it received."""
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    newcomer_s: float | None = None
    """Seconds from the newcomer's dial to its first frame (None: refused)."""
    newcomer_age_ms: float | None = None
    """How old its first frame was when it arrived."""
    refusal: SetupRejected | SessionClosed | None = None
    refused_s: float | None = None
    """Seconds from the newcomer's dial to its refusal."""
    moqrs_refusal: str | None = None
    """How moq-rs's newcomer session ended (None: it did not)."""
    moqrs_code: int | None = None
    """The session's close code moq-rs reports for it."""
    log: str = ""
    alive: bool = False

    @property
    def delivered(self) -> float:
        return sum(self.counts) / (self.sent * len(self.counts))

    @property
    def fairness(self) -> float:
        return jain([float(count) for count in self.counts])

    @property
    def worst_share(self) -> float:
        """The worst subscriber's frames against the mean."""
        return min(self.counts) / (sum(self.counts) / len(self.counts))

    @property
    def newest(self) -> int:
        """The newest group any subscriber received of the window."""
        return max(max(groups, default=-1) for groups in self.groups)

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")

    def summary(self) -> str:
        newcomer = (f"newcomer's first frame {self.newcomer_s:.2f} s (it was {self.newcomer_age_ms:.0f} ms old)"
                    if self.newcomer_s is not None else f"newcomer refused after {self.refused_s} s: {self.refusal}")
        return (f"sent {self.sent}, delivered {self.delivered:.1%}, Jain {self.fairness:.3f}, worst "
                f"{self.worst_share:.2f} of the mean, latency p50 {self.percentile(0.5):.0f} ms p99 "
                f"{self.percentile(0.99):.0f} ms, {newcomer}; counts {sorted(self.counts)}")


@contextlib.asynccontextmanager
async def slow_relay(certs: Certs, log: Path, *options: str, source: bool,
                     slowdown: float) -> AsyncIterator[RunningServer]:
    """``serve tests.apps.slow_relay:moq`` on a free port of 127.0.0.1 (native QUIC), stopped on exit.

    ``source``: the server publishes the track itself (``MOQT_TEST_SOURCE``); ``slowdown``: once signalled it runs
    that many times slower (``MOQT_TEST_SLOWDOWN``), else its loop is held :data:`STALL_MS` of every :data:`PERIOD_MS`.
    """
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                   "MOQT_TEST_SOURCE": "1" if source else "",
                   "MOQT_MAX_CONNECTIONS_PER_ADDRESS": "none",  # every peer comes from 127.0.0.1
                   "MOQT_TEST_STALL_MS": str(STALL_MS), "MOQT_TEST_STALL_PERIOD_MS": str(PERIOD_MS),
                   "MOQT_TEST_SLOWDOWN": str(slowdown) if slowdown else ""}
    process, port = await spawn_listening(
        cli("serve", APP, "--bind", "127.0.0.1:0", "--certfile", str(certs.cert), "--keyfile", str(certs.key),
            "--graceful-timeout", "0", "--no-webtransport", "--no-tcp", *options),
        cwd=ROOT, env=environment, log=log, timeout=START_TIMEOUT, what="serve")
    server = RunningServer(KINDS["serve-quic"], process, port, log)
    try:
        yield server
    finally:
        await server.stop()


async def start_load(log: Path, url: str, fingerprint: str, count: int) -> Peer:
    """A load generator of ``count`` subscribers (:mod:`tests.apps.overload_peer`)."""
    with open_log(log) as errors:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.apps.overload_peer", "subscribe", url, fingerprint, "--count", str(count),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, limit=64 * 1024 * 1024)
    return Peer(process, log)


async def first_frame(url: str, fingerprint: str) -> tuple[float, float]:
    """A moq-rs subscriber dials and subscribes: (seconds to its first frame, that frame's age in ms)."""
    started = time.monotonic()
    async with moqrs_client(url, fingerprint) as session:
        broadcast = await session.announced_broadcast(BROADCAST)
        track = await broadcast.subscribe_track(TRACK)
        group = await track.recv_group()
        assert group is not None
        frame = await group.read_frame()
        assert frame is not None
        now = time.monotonic_ns()
    sent, _, _ = HEADER.unpack_from(frame.payload)
    return time.monotonic() - started, (now - sent) / 1e6


async def refused(url: str, fingerprint: str, outcome: Outcome) -> None:
    """New sessions of ours and of moq-rs, at once, during the overload: record how each was refused (or not)."""

    async def ours() -> None:
        started = time.monotonic()
        try:
            session = await dial(url, fingerprint=fingerprint, setup_timeout=REFUSAL_TIMEOUT)
        except (SetupRejected, SessionClosed) as exc:  # lite-05+ on native QUIC: the connection is closed, 64 + 503
            outcome.refusal = exc
            outcome.refused_s = time.monotonic() - started
        else:
            await session.aclose()

    async def moqrs() -> None:
        try:
            async with asyncio.timeout(REFUSAL_TIMEOUT), moqrs_client(url, fingerprint) as session:
                assert session.session is not None
                await session.session.closed()
        except moq.Error as exc:
            reason = moq.protocol_error(exc)
            outcome.moqrs_refusal = f"{exc!r}: {vars(reason) if reason is not None else None}"
            outcome.moqrs_code = reason.code if reason is not None else None
        except TimeoutError:
            outcome.moqrs_refusal = f"moq-rs reported no close within {REFUSAL_TIMEOUT:.0f} s"

    await asyncio.gather(ours(), moqrs())


def frames_due(begin: int, end: int) -> int:
    """Frames of the server's own source (:class:`tests.apps.slow_relay.Source`) due in ``[begin, end)``."""
    period = 1_000_000_000 // FPS
    return -(-end // period) - -(-begin // period)


async def overload(certs: Certs, logs: Path, *options: str, source: bool, slowdown: float = 0.0,
                   newcomer_refused: bool = False) -> Outcome:
    """Run the relay at about twice its capacity and measure it (see the module's docstring).

    ``source``: the server publishes the track (else a moq-rs publisher does); ``newcomer_refused``: the newcomer
    is expected to be refused (:func:`refused`) rather than served (:func:`first_frame`).
    """
    outcome = Outcome()
    peers: list[Peer] = []
    publisher: Peer | None = None
    async with slow_relay(certs, logs / "server.log", *options, source=source, slowdown=slowdown) as server:
        url = server.url
        try:
            if not source:
                publisher = await Peer.start(logs / "publisher.log", "publish", url, certs.fingerprint, "--profile",
                                             "frames")
                peers.append(publisher)
                await publisher.line(READY_TIMEOUT)
            loads = [await start_load(logs / f"load{i}.log", url, certs.fingerprint, count)
                     for i, count in enumerate(split(SUBSCRIBERS, 2))]
            peers += loads
            ready = await asyncio.gather(*(load.line(READY_TIMEOUT) for load in loads))
            assert sum(int(line.split()[1]) for line in ready) == SUBSCRIBERS, ready
            os.kill(server.pid, signal.SIGUSR1)  # the capacity drops under the admitted audience
            start = time.monotonic_ns() + int(SETTLE * 1e9)
            end = start + int(WINDOW * 1e9)
            for peer in peers:
                await peer.send(f"window {start} {end} {int(GRACE * 1e9)}")
            await asyncio.sleep((start - time.monotonic_ns()) / 1e9 + WINDOW / 2)
            if newcomer_refused:
                await refused(url, certs.fingerprint, outcome)
            else:
                outcome.newcomer_s, outcome.newcomer_age_ms = await asyncio.wait_for(
                    first_frame(url, certs.fingerprint), NEWCOMER_BOUND + 5)
            if publisher is None:
                await asyncio.sleep((end - time.monotonic_ns()) / 1e9)
                outcome.sent = frames_due(start, end)
            else:
                outcome.sent = int(json.loads(await publisher.line(READY_TIMEOUT))["sent"])
            for load in loads:
                await load.send(f"sent {outcome.sent}")
            for load in loads:
                for subscriber in json.loads(await load.line(GRACE + READY_TIMEOUT))["subscribers"]:
                    outcome.counts.append(subscriber["received"])
                    outcome.groups.append(dict(subscriber["groups"]))
                    outcome.latencies_ms += [us / 1000 for us in subscriber["latencies_us"]]
                    outcome.errors.append(subscriber["error"])
            outcome.alive = server.alive
        finally:
            await asyncio.gather(*(peer.stop() for peer in peers), return_exceptions=True)
    outcome.log = server.log.read_text(errors="replace")
    return outcome


def assert_no_one_stalled(outcome: Outcome, seconds: int) -> None:
    """Every subscriber received frames of the window's newest groups (its last ``seconds``), not only old ones."""
    recent = outcome.newest - seconds + 1
    stalled = [i for i, groups in enumerate(outcome.groups) if max(groups, default=-1) < recent]
    assert not stalled, ([max(outcome.groups[i], default=-1) for i in stalled], outcome.newest)


def assert_healthy_server(outcome: Outcome) -> None:
    assert outcome.alive, outcome.log[-3000:]
    assert "Traceback" not in outcome.log, outcome.log[-3000:]
    assert all(error is None for error in outcome.errors), outcome.errors


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.cli
@pytest.mark.timeout(120)
async def test_the_fan_out_at_twice_its_capacity_starves_no_one_and_serves_a_newcomer(certs: Certs, tmp_path: Path) -> None:
    """The fan-out past capacity, the relay sixteen times slower (about twice what it serves in time).

    Measured in three runs: 68-78% delivered, Jain 0.998-0.999, the worst
    subscriber 0.87-0.93 of the mean, p99 2.8-3.6 s (two groups in flight per
    subscriber, older ones evicted), the newcomer's first frame after
    8.4-9.7 s. With one datagram read per step the same test three times
    slower gave Jain 0.80-0.985 and a worst share of 0.30-0.71.
    """
    outcome = await overload(certs, tmp_path, source=True, slowdown=SLOWDOWN)
    print(outcome.summary())
    assert_healthy_server(outcome)
    assert outcome.sent >= WINDOW * FPS * 0.95
    assert outcome.delivered < 0.9, outcome.summary()  # the overload is real
    assert outcome.fairness >= 0.9, outcome.summary()
    assert outcome.worst_share >= 1 / 3, outcome.summary()
    assert_no_one_stalled(outcome, 2)
    assert outcome.newcomer_s is not None and outcome.newcomer_s < NEWCOMER_BOUND, outcome.summary()


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.cli
@pytest.mark.timeout(120)
async def test_with_max_loop_lag_the_newcomer_is_refused_for_load(certs: Certs, tmp_path: Path) -> None:
    """The moq-rs publisher's track past capacity, with ``serve --max-loop-lag``.

    The threshold is low (:data:`MAX_LOOP_LAG`): the lag the monitor measures
    here is mostly the held loop's (50-90 ms smoothed), not the overload's;
    in a real CPU overload of ``serve`` (160 subscribers, no hold) it stayed
    at 2-40 ms while frames arrived seconds late.
    """
    outcome = await overload(certs, tmp_path, "--max-loop-lag", str(MAX_LOOP_LAG), source=False,
                             newcomer_refused=True)
    print(outcome.summary(), outcome.moqrs_refusal)
    assert_healthy_server(outcome)
    assert outcome.refusal is not None, outcome.summary()
    assert outcome.refusal.code in (503, 64 + 503), outcome.refusal  # HTTP 503, or application code 503 on QUIC
    assert "server is overloaded (event loop lag" in outcome.refusal.reason, outcome.refusal
    # moq-rs: the session closed with application code 503. In about one run in six moq-rs reported no close
    # within REFUSAL_TIMEOUT although the server logged the refusal (the log count below); the cause is not pinned
    # down, so that case is allowed here and the server's side is what is asserted.
    assert outcome.moqrs_code == 64 + 503 or outcome.moqrs_refusal == \
        f"moq-rs reported no close within {REFUSAL_TIMEOUT:.0f} s", outcome.moqrs_refusal
    assert outcome.log.count("session refused (server is overloaded") == 2, outcome.log[-3000:]  # both newcomers
    assert min(outcome.counts) > 0, outcome.summary()  # the admitted ones keep receiving
    assert outcome.fairness >= 0.9, outcome.summary()
    assert_no_one_stalled(outcome, 2)

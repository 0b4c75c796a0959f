"""The example relay, made slower on a signal so that a small audience is past its capacity.

``python -m moqt_asgi serve tests.apps.slow_relay:moq`` serves
:mod:`examples.relay` unchanged until the process gets ``SIGUSR1``. Starting
on a signal lets an audience connect and subscribe at full speed first: the
capacity then drops under sessions that were all admitted. From then on,
for as long as the server runs:

* with ``MOQT_TEST_SLOWDOWN=K`` (:class:`Slowdown`), the process sleeps
  ``K - 1`` times the CPU time it used, every few milliseconds: it runs as on
  a CPU ``K`` times slower, whatever it spends its time on;
* else (:class:`Stall`), a timer holds the event loop for
  ``MOQT_TEST_STALL_MS`` out of every ``MOQT_TEST_STALL_PERIOD_MS`` (default
  100) milliseconds. The holds come at fixed times, so a long step of the
  loop runs in full between two of them: the share of time left is not a
  share of capacity when the steps grow.

Both sleep rather than spin: to the relay it is the same (nothing of it runs
meanwhile, datagrams wait in the socket's buffer), but the core stays free
for the load generators on a small machine, so the relay is the one
bottleneck. ``MOQT_TEST_STALL_SPIN=1`` makes the holds spin instead.

``MOQT_TEST_SOURCE=1``: the server also publishes the fan-out benchmark's
track itself (:class:`Source`), so nothing stands between the source and
the fan-out. ``MOQT_TEST_REPORT_LAG=1``: the load monitor's smoothed lag
(``serve --max-loop-lag``) is logged twice a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from benchmarks._fanout_peer import BROADCAST, HEADER, TRACK
from examples.relay import moq, relay
from moqt_asgi import Broadcast
from moqt_asgi.producer import GroupProducer

__all__ = ["Slowdown", "Source", "Stall", "moq", "relay"]

logger = logging.getLogger("moqt_asgi.tests.slow_relay")


class Stall:
    """Holds the running loop for ``hold`` seconds of every ``period`` (started by :meth:`start`)."""

    def __init__(self, hold: float, period: float, *, spin: bool = False) -> None:
        if not 0 <= hold < period:
            raise ValueError(f"the hold ({hold}) must be shorter than the period ({period})")
        self.hold = hold
        self.period = period
        self.spin = spin
        self.holds = 0
        """How many times the loop was held so far."""
        self._timer: asyncio.Handle | None = None
        self._due = 0.0

    @classmethod
    def from_env(cls) -> Stall:
        hold = float(os.environ.get("MOQT_TEST_STALL_MS", "0")) / 1000
        period = float(os.environ.get("MOQT_TEST_STALL_PERIOD_MS", "100")) / 1000
        return cls(hold, period, spin=os.environ.get("MOQT_TEST_STALL_SPIN", "") == "1")

    def start(self) -> None:
        """Start holding the running loop (again from now if already started)."""
        self.stop()
        if self.hold > 0:
            logger.warning("holding the event loop %.0f ms of every %.0f ms", self.hold * 1000, self.period * 1000)
            loop = asyncio.get_running_loop()
            self._due = loop.time()
            self._timer = loop.call_soon(self._run)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _run(self) -> None:
        started = time.monotonic()
        if self.spin:
            while time.monotonic() - started < self.hold:
                pass
        else:
            time.sleep(self.hold)
        self.holds += 1
        loop = asyncio.get_running_loop()
        self._due = max(self._due + self.period, loop.time() + self.period - self.hold)
        self._timer = loop.call_at(self._due, self._run)


class Slowdown:
    """Makes the process ``factor`` times slower: after each tick, sleeps ``factor - 1`` times the CPU time it used.

    Unlike :class:`Stall`, whose holds come at fixed times (a long step of
    the loop runs in full between two of them), this charges every
    millisecond of work: the relay runs as on a CPU ``factor`` times slower,
    whatever it does with the time it has.
    """

    TICK = 0.005
    """Seconds between two charges (a longer step of the loop is charged once it ends)."""

    def __init__(self, factor: float) -> None:
        if factor < 1:
            raise ValueError(f"the slowdown factor must be at least 1, got {factor}")
        self.factor = factor
        self._timer: asyncio.TimerHandle | None = None
        self._cpu = 0.0

    def start(self) -> None:
        self.stop()
        if self.factor > 1:
            logger.warning("running %g times slower", self.factor)
            self._cpu = time.process_time()
            self._timer = asyncio.get_running_loop().call_later(self.TICK, self._run)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _run(self) -> None:
        used = time.process_time() - self._cpu
        time.sleep(used * (self.factor - 1))
        self._cpu = time.process_time()
        self._timer = asyncio.get_running_loop().call_later(self.TICK, self._run)


stall: Stall | Slowdown = (Slowdown(float(os.environ["MOQT_TEST_SLOWDOWN"])) if os.environ.get("MOQT_TEST_SLOWDOWN")
                           else Stall.from_env())


class Source:
    """A live track published by the server itself into the relay: no network path between it and the fan-out.

    Frame ``k`` of the track is due at ``k * 1e9 / fps`` on ``time.monotonic_ns()`` (a clock every process
    of the machine shares), in group ``k // group_frames``; it starts with
    :data:`benchmarks._fanout_peer.HEADER` holding that due time, so a subscriber's latency counts the
    time the loop was held before the frame could be written. Frames that fell due while the loop was held
    are written at once when it runs again, as an encoder's queue would hand them over.
    """

    def __init__(self, broadcast: str, track: str, *, fps: int = 30, group_frames: int = 30, size: int = 1200) -> None:
        self.broadcast = Broadcast(broadcast)
        self.track = self.broadcast.create_track(track, drop_queued=relay.limits.drop_queued,
                                                 cached_groups=relay.limits.cached_groups)
        self.period_ns = 1_000_000_000 // fps
        self.group_frames = group_frames
        self.padding = bytes(size - HEADER.size)
        self.written = 0

    async def run(self) -> None:
        group: GroupProducer | None = None
        index = time.monotonic_ns() // self.period_ns + 1
        while True:
            delay = (index * self.period_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            sequence, position = divmod(index, self.group_frames)
            if group is None or group.sequence != sequence:
                if group is not None:
                    group.finish()
                group = self.track.create_group(sequence)
            group.write_frame(HEADER.pack(index * self.period_ns, sequence, position) + self.padding)
            self.written += 1
            index += 1


async def _report_lag() -> None:
    while True:
        await asyncio.sleep(0.5)
        if moq.load_monitor is not None:
            logger.warning("lag %.1f ms", moq.load_monitor.lag * 1000)


async def _start_stall() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stall.start)
    if os.environ.get("MOQT_TEST_REPORT_LAG"):
        _tasks.add(asyncio.ensure_future(_report_lag()))
    if os.environ.get("MOQT_TEST_SOURCE"):
        source = Source(BROADCAST, TRACK)
        moq.mux.publish(BROADCAST, source.broadcast)
        _tasks.add(asyncio.ensure_future(source.run()))


_tasks: set[asyncio.Task[None]] = set()


async def _stop_stall() -> None:
    asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
    stall.stop()
    for task in _tasks:
        task.cancel()


moq.on_startup.append(_start_stall)
moq.on_shutdown.insert(0, _stop_stall)

"""The example relay whose capacity drops on a signal: its event loop is then held part of every period.

``python -m moqt_asgi serve tests.apps.slow_relay:moq`` serves
:mod:`examples.relay` unchanged until the process gets ``SIGUSR1``; from
then on a timer holds the event loop (``time.sleep``) for
``MOQT_TEST_STALL_MS`` out of every ``MOQT_TEST_STALL_PERIOD_MS`` (default
100) milliseconds, for as long as the server runs. The relay is left with
``1 - STALL / PERIOD`` of the wall clock, so its capacity is that
share of what it carries on a free core, and an audience a few times
smaller than the fan-out benchmark's overloads it. Starting on a signal
lets an audience connect and subscribe at full speed first: the capacity
then drops under sessions that were all admitted.

The hold is a sleep, not a busy loop: to the relay it is the same (nothing
of it runs meanwhile, datagrams wait in the socket's buffer), but the core
stays free for the publisher and the load generators on a small machine,
so the relay is the one bottleneck. ``MOQT_TEST_STALL_SPIN=1`` spins
instead, for a relay that really competes for the CPU.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from examples.relay import moq, relay

__all__ = ["moq", "relay", "Stall"]

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


stall = Stall.from_env()


async def _report_lag() -> None:
    while True:
        await asyncio.sleep(0.5)
        if moq.load_monitor is not None:
            logger.warning("lag %.1f ms", moq.load_monitor.lag * 1000)


async def _start_stall() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stall.start)
    if os.environ.get("MOQT_TEST_REPORT_LAG"):
        _tasks.add(asyncio.ensure_future(_report_lag()))


_tasks: set[asyncio.Task[None]] = set()


async def _stop_stall() -> None:
    asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
    stall.stop()


moq.on_startup.append(_start_stall)
moq.on_shutdown.insert(0, _stop_stall)

"""How loaded the process is: event-loop lag, and optionally its CPU share.

An asyncio server that takes on more than it can carry does not fail at
once: every callback runs later and later, and every session degrades
together. The standard early signal is the event loop's lag: how late a
timer fires. :class:`LoadMonitor` arms a ``call_later`` every ``interval``
seconds and measures how late each one runs, smoothed (an exponentially
weighted mean, so one slow callback does not count as overload). Given
``max_cpu`` it also watches the share of one core the process used between
two timers (``time.process_time`` over wall time).

The app (``MoQ(max_loop_lag=...)``) asks :attr:`LoadMonitor.overloaded`
before it admits a new session and refuses it (503, reason ``load``) while
the process is over its threshold; sessions already admitted keep going.
The state has hysteresis: it turns on at the threshold and off only once
the smoothed figures are under ``clear_ratio`` times the threshold, so
admission does not flap around the limit.

Both clocks are injectable, and :meth:`LoadMonitor.observe` takes a sample
directly, so tests drive the monitor without timing anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger("moqt_asgi.load")

Clock = Callable[[], float]

DEFAULT_INTERVAL = 0.25
"""Seconds between two measurements of the loop's lag."""
DEFAULT_SMOOTHING = 0.3
"""Weight of the newest sample in the smoothed figures (1.0: no smoothing)."""
DEFAULT_CLEAR_RATIO = 0.5
"""The overload ends once the smoothed figures are under this share of their thresholds."""


class Overloaded(str):
    """The text of a session refused for load; :attr:`reason` is its metrics label."""

    reason = "load"


class LoadMonitor:
    """Measures the event loop's lag (and optionally the CPU share) and says when the process is overloaded.

    ``max_lag`` (seconds of smoothed lag) and ``max_cpu`` (share of one
    core, e.g. ``0.95``) are the thresholds; ``None`` leaves a figure
    unwatched. ``clock`` is the wall clock the timer is measured with (the
    loop's own by default), ``cpu_clock`` the process's CPU time.
    """

    def __init__(self, max_lag: float | None = 0.1, *, max_cpu: float | None = None,
                 interval: float = DEFAULT_INTERVAL, smoothing: float = DEFAULT_SMOOTHING,
                 clear_ratio: float = DEFAULT_CLEAR_RATIO, clock: Clock | None = None,
                 cpu_clock: Clock = time.process_time) -> None:
        if max_lag is not None and max_lag <= 0:
            raise ValueError(f"max_lag must be positive, got {max_lag}")
        if max_cpu is not None and max_cpu <= 0:
            raise ValueError(f"max_cpu must be positive, got {max_cpu}")
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0 < clear_ratio <= 1:
            raise ValueError(f"clear_ratio must be in (0, 1], got {clear_ratio}")
        self.max_lag = max_lag
        self.max_cpu = max_cpu
        self.interval = interval
        self.smoothing = smoothing
        self.clear_ratio = clear_ratio
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.lag = 0.0
        """The smoothed lag, seconds."""
        self.cpu = 0.0
        """The smoothed CPU share (0.0 until measured, or when ``max_cpu`` is ``None``)."""
        self.samples = 0
        """Measurements taken so far."""
        self.overloaded = False
        """Over a threshold now (with hysteresis): new sessions are refused."""
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._cpu_at = 0.0

    # -- measurement
    def observe(self, lag: float, cpu: float | None = None) -> bool:
        """Take one sample: ``lag`` seconds late, ``cpu`` share of a core; whether the process is overloaded."""
        weight = self.smoothing if self.samples else 1.0
        self.lag += weight * (max(0.0, lag) - self.lag)
        if cpu is not None:
            self.cpu += weight * (max(0.0, cpu) - self.cpu)
        self.samples += 1
        over = self._over(1.0)
        if not self.overloaded and over:
            self.overloaded = True
            logger.warning("overloaded: %s; new sessions are refused", self.describe())
        elif self.overloaded and not self._over(self.clear_ratio):
            self.overloaded = False
            logger.info("load back to normal: %s; new sessions are admitted again", self.describe())
        return self.overloaded

    def _over(self, ratio: float) -> bool:
        return ((self.max_lag is not None and self.lag >= self.max_lag * ratio)
                or (self.max_cpu is not None and self.cpu >= self.max_cpu * ratio))

    def describe(self) -> str:
        """The smoothed figures, for logs and refusals."""
        text = f"event loop lag {self.lag * 1000:.0f} ms"
        if self.max_cpu is not None:
            text += f", CPU {self.cpu:.0%}"
        return text

    def refusal(self) -> Overloaded | None:
        """The text to refuse a new session with while overloaded, else ``None``."""
        if not self.overloaded:
            return None
        return Overloaded(f"server is overloaded ({self.describe()})")

    # -- the timer
    @property
    def running(self) -> bool:
        """The timer is armed on a loop that is still open."""
        return self._timer is not None and self._event_loop is not None and not self._event_loop.is_closed()

    def ensure_running(self) -> None:
        """Start measuring on the running loop, unless already measuring there (no-op outside a loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.running and self._event_loop is loop:
            return
        self.stop()
        self._event_loop = loop
        self._arm()

    def stop(self) -> None:
        """Stop measuring (the figures and state stay as last measured)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._event_loop = None

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        assert self._event_loop is not None
        return self._event_loop.time()

    def _arm(self) -> None:
        assert self._event_loop is not None
        self._due = self._now() + self.interval
        self._cpu_at = self._cpu_clock()
        self._timer = self._event_loop.call_later(self.interval, self._fire)

    def _fire(self) -> None:
        now = self._now()
        lag = now - self._due
        cpu: float | None = None
        if self.max_cpu is not None:
            wall = self.interval + max(0.0, lag)
            cpu = (self._cpu_clock() - self._cpu_at) / wall
        self.observe(lag, cpu)
        if self._event_loop is not None and not self._event_loop.is_closed():
            self._arm()


__all__ = ["DEFAULT_CLEAR_RATIO", "DEFAULT_INTERVAL", "DEFAULT_SMOOTHING", "LoadMonitor", "Overloaded"]

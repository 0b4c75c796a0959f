"""What :mod:`benchmarks.attacks` hands an attack, and what an attack hands back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * 1024


@dataclass
class Sent:
    """What an attack sent: a one-line summary, its byte and request counts, and what a bound is computed from."""

    summary: str = ""
    bytes: int = 0
    """Bytes the attacker wrote (datagrams for raw QUIC attacks, stream bytes otherwise)."""
    requests: int = 0
    unit: str = "requests"
    """What ``requests`` counts: frames, FETCHes, Initials..."""
    connections: int = 0
    """Connections the attack held open on the server."""
    streams: int = 0
    """Streams the attack made the server keep open (opened by either side)."""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    """Other numbers a bound is computed from (names relayed, subscriptions, paths...)."""

    @property
    def short(self) -> str:
        return f"{size(self.bytes)}, {self.requests} {self.unit}"


def size(count: float) -> str:
    """``count`` bytes, readable."""
    if count >= MIB:
        return f"{count / MIB:.1f} MiB"
    if count >= KIB:
        return f"{count / KIB:.0f} KiB"
    return f"{count:.0f} B"


@dataclass
class Target:
    """The served app an attack runs against."""

    port: int
    fingerprint: str
    quick: bool
    stopped: Callable[[], bool]
    """True once the server's memory passed the ceiling (it was killed): stop attacking."""
    cpu: Callable[[], float]
    """The server's CPU seconds so far."""

    @property
    def url(self) -> str:
        return f"moql://{HOST}:{self.port}/"

    async def idle(self, quiet: float = 0.3, busy: float = 0.05, timeout: float = 60.0) -> None:
        """Wait until the server used at most ``busy`` of a core over ``quiet`` seconds (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopped():
            before = self.cpu()
            await asyncio.sleep(quiet)
            if self.cpu() - before <= busy * quiet:
                return

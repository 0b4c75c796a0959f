"""Shared pieces: workloads, results, timing and certificates."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moqt_asgi.endpoints.certs import write_certificate
from moqt_asgi.endpoints.settings import QuicSettings

HOST = "127.0.0.1"
HIGH_WATER = 512 * 1024
"""Bytes queued in aioquic but not yet sent before a sender waits (the engine's default)."""


@dataclass(frozen=True)
class Workload:
    """``frames`` frames of ``frame_size`` bytes, ``frames_per_group`` to a group."""

    frame_size: int
    frames: int
    frames_per_group: int

    @property
    def total_bytes(self) -> int:
        return self.frame_size * self.frames

    @property
    def groups(self) -> int:
        return -(-self.frames // self.frames_per_group)

    def group_frames(self, index: int) -> int:
        """How many frames group ``index`` holds (the last one may be short)."""
        return min(self.frames_per_group, self.frames - index * self.frames_per_group)

    def label(self) -> str:
        return size_label(self.frame_size)


def size_label(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def workloads(scale: float = 1.0) -> list[Workload]:
    """The measured frame sizes; ``scale`` shrinks or grows the bytes sent per run."""

    def make(frame_size: int, total: int) -> Workload:
        frames = max(200, int(total * scale) // frame_size)
        per_group = max(100, (1024 * 1024) // frame_size)
        return Workload(frame_size, frames, per_group)

    return [
        make(64 * 1024, 24 * 1024 * 1024),
        make(1024, 8 * 1024 * 1024),
        make(100, 3 * 1024 * 1024),
    ]


@dataclass
class Sample:
    """One run: ``payload`` bytes in ``frames`` frames arrived in ``seconds``."""

    seconds: float
    payload: int
    frames: int
    expected_payload: int
    groups_missing: int = 0
    """Groups never received or abandoned part-way by the publisher."""
    groups_short: int = 0
    """Groups that ended cleanly with frames missing."""

    @property
    def delivered(self) -> float:
        return self.payload / self.expected_payload if self.expected_payload else 1.0


@dataclass
class Result:
    scenario: str
    workload: Workload
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def best(self) -> Sample:
        """The fastest run: anything else on the machine only ever slows a run down."""
        return max(self.samples, key=lambda s: s.payload / s.seconds)

    @property
    def mb_per_s(self) -> float:
        sample = self.best
        return sample.payload / sample.seconds / 1e6

    @property
    def frames_per_s(self) -> float:
        sample = self.best
        return sample.frames / sample.seconds

    @property
    def spread(self) -> float:
        """(max - min) / median of the measured rates, as a fraction: how noisy the runs were."""
        rates = [s.payload / s.seconds for s in self.samples]
        return (max(rates) - min(rates)) / statistics.median(rates) if rates else 0.0


RunOnce = Callable[[Workload], Awaitable[Sample]]
"""Runs one transfer of a workload and times it."""


def quic_settings() -> QuicSettings:
    """The QUIC knobs every scenario uses, raw aioquic included: the library defaults."""
    return QuicSettings()


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    fingerprint: str


@contextlib.contextmanager
def temporary_certificate() -> Iterator[Certificate]:
    with tempfile.TemporaryDirectory(prefix="moqt-bench-") as directory:
        cert, key, fingerprint = write_certificate(directory)
        yield Certificate(cert, key, fingerprint)

"""A soak sized for CI: about :data:`SOAK_SECONDS` of publish/subscribe churn against the relay app.

Sessions come and go in waves (most in memory, some over native QUIC on
real UDP through a lossy :class:`~moqt_asgi.testing.netsim.UdpRelay`); publishers
announce, feed and withdraw broadcasts; subscribers watch, subscribe,
unsubscribe and leave. RSS, the task count and the relay's sessions are
sampled every few seconds. See :mod:`benchmarks.soak` for the workload and
for the verdict's rules (the margins are documented there); the long run is
``python -m benchmarks.soak --minutes 10``.

This test takes about 40 s (plus a few seconds to settle).
"""

from __future__ import annotations

import pytest

from benchmarks.common import Certificate
from benchmarks.soak import soak

from .conftest import Certs

pytestmark = pytest.mark.slow

SOAK_SECONDS = 40.0
SAMPLE_EVERY = 4.0


@pytest.mark.timeout(SOAK_SECONDS * 5)
async def test_churn_leaves_memory_tasks_and_sessions_flat(certs: Certs) -> None:
    """After a warm-up wave: every wave ends with the baseline's tasks, sessions and broadcasts, and memory is flat."""
    report = await soak(Certificate(certs.cert, certs.key, certs.fingerprint), SOAK_SECONDS, sample_every=SAMPLE_EVERY)
    print("\n" + report.table() + "\n" + report.summary())
    counters = report.counters
    assert counters.quic_sessions > 0 and report.packets_lost > 0, "the lossy UDP path was not exercised"
    assert counters.withdrawals > 0 and counters.subscriptions > counters.sessions / 2
    assert len(report.samples) >= SOAK_SECONDS / SAMPLE_EVERY - 1
    assert report.problems() == []  # among them: any error the library logged

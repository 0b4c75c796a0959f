"""moqt-asgi: publisher -> relay -> subscriber, all over native QUIC.

The relay is the ``moq`` app of ``examples/relay.py``. The publisher is a
client session that publishes the benchmark broadcast from its own mux; the
relay discovers it and offers it to the subscriber, a second client session.
The relay keeps only the newest groups for a subscriber that falls behind,
so the notes column shows how much of the payload arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator

from moqt_asgi import MoQ, Session, TrackMux
from moqt_asgi.endpoints.dial_quic import dial_quic
from moqt_asgi.endpoints.quic_server import QuicServer

from .common import HOST, Certificate, RunOnce, Sample, Workload, quic_settings
from .native import BROADCAST, SUBSCRIBER_LIMITS, Source, subscribe_once

RELAY_APP = "examples.relay"


class RelayUnavailable(Exception):
    """The relay example could not be imported."""


def load_relay() -> MoQ:
    try:
        module = importlib.import_module(RELAY_APP)
    except ImportError as exc:
        raise RelayUnavailable(f"relay example not available ({exc})") from None
    app = getattr(module, "moq", None)
    if not isinstance(app, MoQ):
        raise RelayUnavailable(f"relay example not available ({RELAY_APP} has no MoQ app named 'moq')")
    return app


async def wait_announced(session: Session, path: str, timeout: float = 10.0) -> None:
    """Return once the peer announces ``path``."""
    async with asyncio.timeout(timeout):
        announcements = await session.announced("")
        while path not in announcements.active:
            if await announcements.next() is None:
                raise RuntimeError(f"the relay stopped announcing before {path!r} appeared")
        announcements.close()


@contextlib.asynccontextmanager
async def moq_relay(certificate: Certificate) -> AsyncIterator[RunOnce]:
    """The relay app served in-process, a publishing client and a subscribing client."""
    app = load_relay()
    await app.startup()
    server = QuicServer(app, host=HOST, port=0, certfile=str(certificate.cert), keyfile=str(certificate.key),
                        quic=quic_settings())
    await server.start()
    try:
        host, port = server.address
        url = f"moql://{host}:{port}/"
        source = Source()
        mux = TrackMux()
        mux.publish(BROADCAST, source)
        publisher = await dial_quic(url, mux=mux, fingerprint=certificate.fingerprint, quic=quic_settings())
        async with publisher:
            subscriber = await dial_quic(url, fingerprint=certificate.fingerprint, quic=quic_settings(),
                                         limits=SUBSCRIBER_LIMITS)
            async with subscriber:
                await wait_announced(subscriber, BROADCAST)

                async def run_once(workload: Workload) -> Sample:
                    return await subscribe_once(subscriber, source, workload)

                yield run_once
    finally:
        await server.close()
        await app.shutdown()

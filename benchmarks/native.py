"""moqt-asgi: one publisher, one subscriber, over native QUIC.

The publisher is a track handler writing groups with
:meth:`TrackWriter.open_group` and ``await GroupWriter.write_frame``: it never
drops anything and waits whenever the connection is congested. The track
name carries the workload, so one server serves every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from moqt_asgi import MoQ, Session, StreamError, TrackReader, TrackWriter
from moqt_asgi.endpoints.dial_quic import dial_quic
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.protocol.limits import Limits

from .common import HOST, Certificate, RunOnce, Sample, Workload, quic_settings

BROADCAST = "bench"

SUBSCRIBER_LIMITS = Limits(max_queued_groups=1024)
"""Subscribers keep every group that arrives: the benchmark reads them all."""


@dataclass(frozen=True)
class TrackSpec:
    workload: Workload
    run: int

    @property
    def name(self) -> str:
        w = self.workload
        return f"{w.frame_size}-{w.frames}-{w.frames_per_group}-{self.run}"

    @classmethod
    def parse(cls, name: str) -> TrackSpec:
        size, frames, per_group, run = (int(part) for part in name.split("-"))
        return cls(Workload(size, frames, per_group), run)


class Source:
    """Track handler that writes the workload named by the track, with backpressure.

    It records when it started writing each track; once everything is written
    it waits for the subscriber to unsubscribe.
    """

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    async def __call__(self, writer: TrackWriter) -> None:
        workload = TrackSpec.parse(writer.track).workload
        payload = bytes(workload.frame_size)
        self.started[writer.track] = time.perf_counter()
        for index in range(workload.groups):
            group = await writer.open_group()
            write_frame = group.write_frame
            try:
                for _ in range(workload.group_frames(index)):
                    await write_frame(payload)
                await group.close()
            except StreamError:
                group.abort()  # the peer stopped this group (a relay dropping old groups): go on
        await asyncio.Event().wait()  # until the subscriber is done (it unsubscribes)


@dataclass
class Received:
    payload: int = 0
    frames: int = 0
    groups: int = 0
    reset: int = 0
    """Groups the publisher abandoned part-way (a relay drops old groups of a slow subscriber)."""
    short: int = 0
    """Groups that ended cleanly but with frames missing."""


async def consume(reader: TrackReader, workload: Workload) -> Received:
    """Read groups until the last one is complete; only frames that arrived count."""
    last = workload.groups - 1
    got = Received()
    while True:
        group = await reader.next_group()
        if group is None:
            raise RuntimeError(f"track ended after {got.frames} of {workload.frames} frames")
        got.groups += 1
        in_group = 0
        try:
            while (frame := await group.read_frame()) is not None:
                got.payload += len(frame)
                in_group += 1
        except StreamError:
            got.reset += 1
        else:
            if in_group < workload.group_frames(group.sequence):
                got.short += 1
        got.frames += in_group
        if group.sequence == last and in_group == workload.group_frames(last):
            return got


_runs = itertools.count()


async def subscribe_once(subscriber: Session, source: Source, workload: Workload) -> Sample:
    spec = TrackSpec(workload, next(_runs))
    reader = await subscriber.subscribe(BROADCAST, spec.name)
    try:
        got = await asyncio.wait_for(consume(reader, workload), 120)
        end = time.perf_counter()
    finally:
        reader.close()
    start = source.started.pop(spec.name)
    return Sample(end - start, got.payload, got.frames, workload.total_bytes,
                  groups_missing=workload.groups - got.groups + got.reset, groups_short=got.short)


@contextlib.asynccontextmanager
async def moq_native(certificate: Certificate, backend: str = "aioquic") -> AsyncIterator[RunOnce]:
    """A server publishing :class:`Source` and one subscribing client session, both on the QUIC ``backend``."""
    source = Source()
    app = MoQ()
    app.mux.publish(BROADCAST, source)
    settings = dataclasses.replace(quic_settings(), backend=backend)
    server = QuicServer(app, host=HOST, port=0, certfile=str(certificate.cert), keyfile=str(certificate.key),
                        quic=settings, webtransport=backend == "aioquic")
    await server.start()
    try:
        host, port = server.address
        subscriber = await dial_quic(f"moql://{host}:{port}/", fingerprint=certificate.fingerprint,
                                     quic=settings, limits=SUBSCRIBER_LIMITS)
        async with subscriber:

            async def run_once(workload: Workload) -> Sample:
                return await subscribe_once(subscriber, source, workload)

            yield run_once
    finally:
        await server.close()


def moq_native_qh3(certificate: Certificate) -> contextlib.AbstractAsyncContextManager[RunOnce]:
    """:func:`moq_native` with the server and the client on qh3 (``QuicSettings(backend="qh3")``)."""
    return moq_native(certificate, backend="qh3")

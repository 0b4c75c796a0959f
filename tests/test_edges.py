"""A Rust edge tier in front of our relay: moq-rs edges pull from it as moq-relay cluster nodes do.

Our relay (``examples/relay.py``'s app, with JWT auth on) is the origin; a
moq-rs publisher sends it a live track; two edges (``benchmarks._edge_peer.Edge``:
a ``moq.OriginProducer`` fed by a ``moq.Client`` dialed with a cluster token
and served to viewers by a ``moq.Server``, the shape of a moq-relay node whose
``[cluster] connect`` names the origin) each serve ten moq-rs viewers.
Every viewer reads the publisher's frames byte for byte, and the origin
serves exactly one subscription per edge. An edge without a token is
refused, and one whose token does not grant the path never gets it.
``python -m benchmarks.edges --quick`` runs both of its setups (``slow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import moq
import pytest

from benchmarks._edge_peer import Edge, with_token
from benchmarks.edges import load_targets
from moqt_asgi import MoQ
from moqt_asgi.auth import Authenticator, Key, KeySet, generate_key, sign_token
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.relay import Relay

from .conftest import ROOT, Certs
from .helpers import eventually, moqrs_client, native_server

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

KEY = generate_key("HS256")
CLUSTER = {"root": "", "put": [""], "get": [""]}
"""A moq-relay cluster token: everything, both ways."""
VIEWER = {"get": ""}
PUBLISHER = {"put": "fanout", "get": "fanout"}
"""The publisher's token. moq-rs's client asks for the announcements under ``""`` and ends the session if
that is refused, as it is for a token without ``get``."""
BROADCAST = "fanout/live"
TRACK = "video"
FRAME_SIZE = 1200
FRAMES_PER_GROUP = 10
FRAME_INTERVAL = 0.02
WANTED = 5
"""Frames each viewer must read."""
TIMEOUT = 20.0


def token(claims: dict[str, Any]) -> str:
    return sign_token(KEY, claims)


def frame(number: int) -> bytes:
    """Frame ``number``'s bytes: the number, then a pattern of it, so any corruption or mix-up shows."""
    return struct.pack(">I", number) + bytes((number + i) % 251 for i in range(FRAME_SIZE - 4))


@dataclass
class Origin:
    app: MoQ
    server: QuicServer
    fingerprint: str

    def url(self, path: str = "/") -> str:
        host, port = self.server.address
        return f"moql://{host}:{port}{path}"

    def serving(self, broadcast: str = BROADCAST, track: str = TRACK) -> list[int]:
        """Per open session, the subscriptions to ``broadcast``/``track`` it serves (non-zero ones only)."""
        counts = [sum(1 for writer in session.served.values() if writer.broadcast == broadcast and writer.track == track)
                  for session in list(self.app.metrics.live)]
        return [count for count in counts if count]


@contextlib.asynccontextmanager
async def origin(certs: Certs) -> AsyncIterator[Origin]:
    """``examples/relay.py``'s app with the key set (``MOQ_AUTH_KEY``), on native QUIC."""
    relay = Relay()
    app = MoQ(mux=relay.mux, auth=Authenticator(KeySet([Key.from_dict(KEY)])))
    app.add_route("/{path:path}", relay)
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        yield Origin(app, server, certs.fingerprint)


@contextlib.asynccontextmanager
async def publisher(url: str, fingerprint: str) -> AsyncIterator[None]:
    """A moq-rs client publishing ``fanout/live``/``video``: :func:`frame` ``0, 1, ...``, a new group every 10."""
    async with moqrs_client(url, fingerprint) as client:
        broadcast = client.create_broadcast(BROADCAST)
        track = broadcast.publish_track(TRACK)
        broadcast.announce()

        async def produce() -> None:
            group: Any = None
            number = 0
            while True:
                if number % FRAMES_PER_GROUP == 0:
                    if group is not None:
                        group.finish()
                    group = track.append_group()
                group.write_frame(frame(number))
                number += 1
                await asyncio.sleep(FRAME_INTERVAL)

        task = asyncio.ensure_future(produce())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass
class Viewer:
    """A moq-rs viewer of an edge: the frames it read, and when to leave."""

    frames: list[bytes] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    """The sequence number of the group each frame came in."""
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once :data:`WANTED` frames are read."""
    leave: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the test: the viewer stays subscribed until then."""

    def numbers(self) -> list[int]:
        return [struct.unpack_from(">I", payload)[0] for payload in self.frames]


async def watch(edge: Edge, viewer: Viewer) -> None:
    """Subscribe at ``edge``, read :data:`WANTED` frames, then stay subscribed until told to leave."""
    async with moqrs_client(edge.url(), edge.viewer_fingerprint) as client:
        broadcast = await client.announced_broadcast(BROADCAST)
        track = await broadcast.subscribe_track(TRACK)
        while len(viewer.frames) < WANTED:
            group = await track.recv_group()
            assert group is not None, "the track ended"
            while len(viewer.frames) < WANTED and (got := await group.read_frame()) is not None:
                viewer.frames.append(bytes(got.payload))
                viewer.groups.append(group.sequence)
        viewer.enough.set()
        await viewer.leave.wait()


@contextlib.asynccontextmanager
async def watching(pairs: list[tuple[Edge, Viewer]]) -> AsyncIterator[None]:
    """Every viewer watching its edge; the block runs once each has read :data:`WANTED` frames."""
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(watch(edge, viewer)) for edge, viewer in pairs]
    done: asyncio.Future[Any] = asyncio.gather(*(viewer.enough.wait() for _, viewer in pairs))
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.wait({done, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done():
                    task.result()  # a viewer that failed: raise its error
            await done
        yield
        for _, viewer in pairs:
            viewer.leave.set()
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    finally:
        for task in (done, *tasks):
            task.cancel()
        await asyncio.gather(done, *tasks, return_exceptions=True)


async def test_two_edges_serve_twenty_viewers_from_two_upstream_subscriptions(certs: Certs) -> None:
    async with origin(certs) as served, publisher(with_token(served.url(), token(PUBLISHER)), served.fingerprint):
        cluster = token(CLUSTER)
        async with Edge(served.url(), fingerprint=served.fingerprint, token=cluster) as first, \
                Edge(served.url(), fingerprint=served.fingerprint, token=cluster) as second:
            viewers = [Viewer() for _ in range(20)]
            # both edges ask for the track at once: each must be told the same about it (TRACK)
            async with watching([(first if i % 2 else second, viewer) for i, viewer in enumerate(viewers)]):
                # one upstream subscription per edge, with all twenty viewers subscribed behind them
                assert served.serving() == [1, 1]
            for viewer in viewers:
                numbers = viewer.numbers()
                assert [frame(number) for number in numbers] == viewer.frames  # byte for byte
                # each frame in the group the publisher put it in, in order, none lost within a group
                assert [number // FRAMES_PER_GROUP for number in numbers] == viewer.groups
                for i in range(1, len(numbers)):
                    if viewer.groups[i] == viewer.groups[i - 1]:
                        assert numbers[i] == numbers[i - 1] + 1, numbers


@pytest.mark.parametrize("cluster_token", [
    None,
    sign_token(generate_key("HS256"), CLUSTER),  # everything, signed with a key the origin does not know
], ids=["no-token", "unknown-key"])
async def test_an_edge_without_a_valid_token_is_refused(certs: Certs, cluster_token: str | None) -> None:
    async with origin(certs) as served, publisher(with_token(served.url(), token(PUBLISHER)), served.fingerprint):
        refused_before = sum(served.app.metrics.refused.values())
        with pytest.raises(moq.Error) as refusal:
            async with Edge(served.url(), fingerprint=served.fingerprint, token=cluster_token,
                            reconnect=False) as edge:
                await asyncio.wait_for(edge.closed(), TIMEOUT)
        assert moq.is_auth(refusal.value), repr(refusal.value)  # refused as unauthorized, not a transport failure
        await eventually(lambda: sum(served.app.metrics.refused.values()) > refused_before, "the refusal counted")
        assert served.serving() == []


@pytest.mark.parametrize("claims", [
    {"root": "", "put": [""], "get": ["elsewhere"]},  # reads only another prefix
    {"root": "elsewhere", "put": [""], "get": [""]},  # everything, but under another root
], ids=["get-elsewhere", "root-elsewhere"])
async def test_an_edge_whose_token_does_not_cover_the_path_cannot_pull_it(certs: Certs,
                                                                          claims: dict[str, Any]) -> None:
    async with origin(certs) as served, publisher(with_token(served.url(), token(PUBLISHER)), served.fingerprint):
        async with Edge(served.url(), fingerprint=served.fingerprint, token=token(claims)) as narrow, \
                Edge(served.url(), fingerprint=served.fingerprint, token=token(CLUSTER)) as full:
            async with watching([(full, Viewer())]):  # the broadcast is live and reachable through an edge
                async with moqrs_client(narrow.url(), narrow.viewer_fingerprint) as client:
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(client.announced_broadcast(BROADCAST), 2.0)
                    with pytest.raises(moq.Error) as asked:  # nor can it be asked for by name: no route to it
                        await asyncio.wait_for(client.request_broadcast(BROADCAST), TIMEOUT)
                    reason = moq.protocol_error(asked.value)
                    assert reason is not None and reason.kind == moq.ProtocolKind.UNROUTABLE, repr(reason)
                assert served.serving() == [1]  # the full edge's subscription only


def test_the_benchmark_spreads_subscribers_evenly_over_the_edges() -> None:
    edges = [f"moql://127.0.0.1:{port}/" for port in (1001, 1002, 1003)]
    targets = load_targets(250, "moql://127.0.0.1:1000/", edges, "T")
    assert len(targets) == 3 and sum(count for _, count in targets) == 250
    assert {url for url, _ in targets} == set(edges) and {count for _, count in targets} == {84, 83}
    big = load_targets(1600, "moql://127.0.0.1:1000/", edges, "T")
    assert len(big) == 18 and all(count <= 100 for _, count in big)  # at most 100 a load generator
    assert [sum(count for url, count in big if url == edge) for edge in edges] == [534, 533, 533]
    alone = load_targets(50, "moql://127.0.0.1:1000/", [], "T")
    assert alone == [("moql://127.0.0.1:1000/?jwt=T", 25)] * 2


@pytest.mark.slow
@pytest.mark.cli
def test_quick_benchmark_run_measures_both_setups(tmp_path: Path) -> None:
    """``python -m benchmarks.edges --quick``: both setups delivered; the origin served N alone, one per edge with edges."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.edges", "--quick", "--subscribers", "6", "--duration", "3", "--warmup", "1",
         "--grace", "2", "--json", "--quiet", "--logs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    points = {point["setup"]: point for point in json.loads(result.stdout)["points"]}
    assert set(points) == {"alone", "edges"}
    for setup, point in points.items():
        assert point["error"] is None, (setup, point["error"])
        assert point["connected"] == 6 and point["sent"] >= 30, setup
        assert point["received"] > 0.5 * point["expected"], setup
        assert 0 < point["p50_ms"] <= point["p99_ms"] < 5000, setup
        assert point["origin_cpu_s"] > 0, setup
    assert points["alone"]["upstream"] == 6 and points["alone"]["edges"] == 0
    assert points["edges"]["upstream"] == 3 and points["edges"]["edges"] == 3  # one per edge
    assert points["edges"]["edge_cpu_s"] > 0


@pytest.mark.cli
async def test_an_edge_process_refused_by_the_origin_exits_with_the_reason(certs: Certs, tmp_path: Path) -> None:
    """``python -m benchmarks._edge_peer`` with a token the origin does not accept: status 1, the refusal on stderr."""
    forged = tmp_path / "cluster.jwt"
    forged.write_text(sign_token(generate_key("HS256"), CLUSTER))
    async with origin(certs) as served:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks._edge_peer", served.url(), "--fingerprint", served.fingerprint,
            "--token-file", str(forged), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, (stdout, stderr)  # (it listened: on native QUIC the refusal follows SETUP)
    assert b"the origin refused the edge (unauthorized)" in stderr, stderr


async def test_an_edge_with_a_read_only_token_pulls_and_gives_the_origin_nothing(certs: Certs) -> None:
    async with origin(certs) as served, publisher(with_token(served.url(), token(PUBLISHER)), served.fingerprint):
        async with Edge(served.url(), fingerprint=served.fingerprint, token=token({"get": [""]})) as edge:
            local = edge.origin.create_broadcast("edge/own")  # something the edge could offer upstream
            local.publish_track(TRACK)
            local.announce()
            async with watching([(edge, Viewer())]):
                assert served.serving() == [1]
                await asyncio.sleep(0.5)
                assert served.app.mux.active_paths() == [BROADCAST]  # the relay took nothing from the edge

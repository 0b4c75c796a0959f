"""A relay as a leaf of a cluster: the supervised upstream link (:mod:`moqt_asgi.upstream`).

* The backoff on an injected clock, random draw and sleep, with scripted
  dials (in-memory sessions): doubling, the cap, the jitter range, the reset
  after a stable session (and none after a short one), one warning per
  change, no token in the log; closing while dialing or waiting, running in
  a task group, cancellation: nothing left running, the session closed.
* A leaf of our own relay (fast lane) over native QUIC, WebTransport and
  WebSocket: broadcasts flow both ways byte-identical, and the node dropping
  the session makes the leaf redial and the flow resume; no loop on lite-03
  (the node sends the broadcast back; the leaf keeps its own) nor lite-04+;
  a token rides the URL to a node that requires one (refused without it);
  the prefix limits what the leaf takes, not what it offers;
  ``examples/relay.py`` with ``MOQ_UPSTREAM``.
* A leaf of a moq-rs node (the Rust relay core, ``interop``): both ways,
  byte-identical; the node going away and coming back on the same port (the
  leaf retries, reconnects, and frames of the new node reach its viewer);
  the leaf's own broadcast never comes back to it, on lite-03 to lite-06.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import moq
import pytest

from moqt_asgi import Broadcast, Client, MoQ, Server, Session, TrackMux
from moqt_asgi.auth.jwk import Key, generate_key
from moqt_asgi.auth.tokens import Authenticator, KeySet, sign_token
from moqt_asgi.engine.track import TrackReader
from moqt_asgi.producer import TrackProducer
from moqt_asgi.protocol.errors import MoQError
from moqt_asgi.protocol.versions import LITE_03_VERSION, LITE_04_VERSION, LITE_05_VERSION, LITE_06_VERSION, Version
from moqt_asgi.relay import Backoff, Relay, UpstreamLink
from moqt_asgi.testing import MemoryPair, connect, lifespan
from moqt_asgi.upstream import with_token, without_query

from .conftest import Certs
from .helpers import WAIT, eventually, free_udp_port, native_server, within

UPSTREAM_LOG = "moqt_asgi.upstream"


# -- the backoff, on an injected clock ---------------------------------------------------------------

def test_backoff_doubles_to_the_cap_and_jitters_within_half_the_delay() -> None:
    backoff = Backoff()  # moq-relay's: 1 s doubling to 10 s, waits in [delay/2, delay)
    delays = [backoff.initial]
    for _ in range(6):
        delays.append(backoff.after(delays[-1]))
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert backoff.wait(4.0, 0.0) == 2.0
    assert backoff.wait(4.0, 0.5) == 3.0
    assert 3.99 < backoff.wait(4.0, 0.999999) < 4.0
    assert Backoff(jitter=0.0).wait(4.0, 0.3) == 4.0
    for bad in (dict(initial=0.0), dict(initial=5.0, maximum=1.0), dict(jitter=1.5), dict(factor=0.5)):
        with pytest.raises(ValueError):
            Backoff(**bad)  # type: ignore[arg-type]


def test_token_goes_in_the_query_unless_the_url_has_one() -> None:
    assert with_token("moql://n:4443/", "T") == "moql://n:4443/?jwt=T"
    assert with_token("https://n:4443/live?x=1", "T") == "https://n:4443/live?x=1&jwt=T"
    assert with_token("https://n:4443/?jwt=mine", "T") == "https://n:4443/?jwt=mine"
    assert with_token("https://n:4443/?jwt=", "T") == "https://n:4443/?jwt=T"  # an empty one counts as none
    assert with_token("https://n:4443/", None) == "https://n:4443/"
    assert without_query("https://n:4443/live?jwt=secret") == "https://n:4443/live"


class Script:
    """Fake dials, clock, random draw and sleep for a link: each dial follows the next step of a script.

    A step is ``"fail"`` (the dial raises) or a number: the dial gives a real
    session (in memory, to a relay app) that the node closes once the clock
    has moved on by that many seconds.
    """

    def __init__(self, steps: list[str | float], draw: float = 0.0) -> None:
        self.steps = list(steps)
        self.now = 1000.0
        self.draw = draw
        self.waits: list[float] = []
        self.pairs: list[MemoryPair] = []
        self.node = MoQ(mux=Relay().mux)
        self.done = asyncio.Event()
        self.closers: list[asyncio.Task[None]] = []

    def clock(self) -> float:
        return self.now

    def random(self) -> float:
        return self.draw

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        if not self.steps:
            self.done.set()
            await asyncio.Future()  # the script is over: wait here until the link is closed

    async def dial(self, url: str, *, mux: TrackMux | None = None, **_: Any) -> Session:
        step = self.steps.pop(0)
        if step == "fail":
            raise MoQError(f"no session with {url} within 1.0s")
        pair = MemoryPair(self.node, mux=mux)
        await pair.open()
        self.pairs.append(pair)
        self.closers.append(asyncio.ensure_future(self._end_after(pair, float(step))))
        return pair.client

    async def _end_after(self, pair: MemoryPair, seconds: float) -> None:
        await pair.client.wait_started()
        await asyncio.sleep(0.01)  # the link has taken the session (it reads the clock as it does)
        self.now += seconds
        pair.server.close(0, "node going away")

    def link(self, **options: Any) -> UpstreamLink:
        return UpstreamLink(Relay(), "moql://node.example:4443/?jwt=secret-token", client=Client(dial_quic_func=self.dial),
                            clock=self.clock, random=self.random, sleep=self.sleep, **options)

    async def aclose(self) -> None:
        for task in self.closers:
            task.cancel()
        await asyncio.gather(*self.closers, return_exceptions=True)
        for pair in self.pairs:
            await pair.aclose()


async def test_backoff_grows_on_failures_and_resets_after_a_stable_session(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=UPSTREAM_LOG)
    script = Script(["fail", "fail", "fail", 12.0, "fail", "fail", 3.0, "fail", "fail", "fail", "fail"])
    link = script.link()
    try:
        async with link:
            await within(script.done.wait())
            status = link.status()
    finally:
        await script.aclose()
    # draw 0.0: every wait is half the delay. Three failures: 1, 2, 4; a session of 12 s (stable) resets to 1;
    # failures 2, 4; a session of 3 s is churn: the delay keeps growing (8), then 10, the cap.
    assert script.waits == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert status.attempts == 11 and status.sessions == 2 and status.reconnects == 1
    assert status.state == "waiting" and status.delay == 5.0 and status.failures == 4
    assert status.url == "moql://node.example:4443/"
    assert link.state == "closed" and link.closed and not link.connected
    warnings = [r.getMessage() for r in caplog.records if r.name == UPSTREAM_LOG and r.levelno == logging.WARNING]
    # one warning per change: the first failure, each session's end, the first failure after each session
    assert len(warnings) == 5, warnings
    assert sum("session ended" in w for w in warnings) == 2
    assert sum("cannot connect" in w for w in warnings) == 3
    assert "secret-token" not in caplog.text


async def test_jitter_stays_within_the_range_at_the_cap() -> None:
    script = Script(["fail"] * 8, draw=0.999)
    try:
        async with script.link(backoff=Backoff(initial=1.0, maximum=4.0, jitter=0.25)):
            await within(script.done.wait())
    finally:
        await script.aclose()
    delays = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for wait, delay in zip(script.waits, delays, strict=True):
        assert 0.75 * delay <= wait < delay


async def test_close_while_dialing_or_waiting_leaves_nothing_running() -> None:
    started = asyncio.Event()

    async def hanging_dial(url: str, **_: Any) -> Session:
        started.set()
        await asyncio.Future()
        raise AssertionError("unreachable")

    before = set(asyncio.all_tasks())
    link = UpstreamLink(Relay(), "moql://node.example:4443/", client=Client(dial_quic_func=hanging_dial))
    task = link.start()
    await within(started.wait())
    assert link.state == "dialing"
    closing = link.close()
    assert link.closed  # at once
    assert await within(closing) is True
    assert task.done() and link.state == "closed"
    assert await within(link.close()) is False  # already closed
    with pytest.raises(MoQError):
        await within(link.wait_connected())
    await asyncio.sleep(0)
    assert set(asyncio.all_tasks()) - before == set()


async def test_run_in_a_task_group_until_closed() -> None:
    script = Script([0.5, "fail"])
    link = script.link()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(link.run())
            session = await within(link.wait_connected())
            assert link.connected and link.status().version == session.version_name
            await within(script.done.wait())  # the session ended, a dial failed: waiting now
            assert link.state == "waiting" and link.delay == 1.0 and link.last_error
            assert await within(link.close()) is True
        assert link.state == "closed" and session.closed
    finally:
        await script.aclose()


async def test_a_cancelled_link_closes_its_session() -> None:
    script = Script([60.0])
    link = script.link()
    try:
        task = link.start()
        session = await within(link.wait_connected())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert session.closed and link.closed and link.state == "closed"
        assert await within(link.close()) is False
    finally:
        await script.aclose()


# -- our relay as the node (native QUIC, fast lane) --------------------------------------------------

def relay_app(relay: Relay, **options: Any) -> MoQ:
    app = MoQ(mux=relay.mux, **options)
    app.add_route("/{path:path}", relay)
    return app


def publish(mux: TrackMux, path: str) -> TrackProducer:
    broadcast = Broadcast(path)
    track = broadcast.create_track("video")
    mux.publish(path, broadcast)
    return track


async def keep_writing(track: TrackProducer, label: str, frames: list[bytes], period: float = 0.03) -> None:
    """One group of two frames every ``period`` seconds, recorded in ``frames``."""
    for g in range(10_000):
        group = track.append_group()
        for f in range(2):
            frame = f"{label} g{g} f{f} ".encode() + bytes([g % 256, f]) * 300
            group.write_frame(frame)
            frames.append(frame)
        group.finish()
        await asyncio.sleep(period)


async def play(viewer: Session, path: str, count: int) -> list[bytes]:
    """Subscribe to ``path``/video through ``viewer`` (once it is announced) and read ``count`` frames."""
    announcements = await within(viewer.announced(""))
    try:
        await eventually(lambda: path in announcements.active, f"{path} announced to the viewer")
    finally:
        announcements.close()
    track: TrackReader = await within(viewer.subscribe(path, "video"))
    got: list[bytes] = []
    try:
        while len(got) < count:
            group = await within(track.next_group())
            assert group is not None, "the track ended"
            got.extend(await within(group.read_all()))
    finally:
        track.close()
    return got[:count]


def is_local(relay: Relay, path: str) -> bool:
    """``path`` is published in the relay's mux by its own publisher, once, and was not learned from a peer."""
    route = relay.mux.route(path)
    return route is not None and relay.mux.publications(path) == 1 and route[0] not in relay._learned


@contextlib.asynccontextmanager
async def writing(track: TrackProducer, label: str) -> AsyncIterator[list[bytes]]:
    frames: list[bytes] = []
    task = asyncio.ensure_future(keep_writing(track, label, frames))
    try:
        yield frames
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


TRANSPORTS = {"moql": "QuicTransport", "https": "WebTransportSession", "ws": "WebSocketConnection"}


def fast_backoff() -> Backoff:
    return Backoff(initial=0.1, maximum=0.4, stable=10.0)


@pytest.mark.parametrize("scheme", ["moql", "https", "ws"])
async def test_leaf_of_our_relay_both_ways_and_redials(certs: Certs, scheme: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Native QUIC, WebTransport and WebSocket: broadcasts flow both ways; the node dropping the link is survived."""
    caplog.set_level(logging.INFO, logger=UPSTREAM_LOG)
    node, leaf = Relay(), Relay()
    node_cam, leaf_cam = publish(node.mux, "node/cam"), publish(leaf.mux, "leaf/cam")
    node_app, leaf_app = relay_app(node), relay_app(leaf)
    async with Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key),
                      handler=node_app) as server:
        port = server.tcp_address[1] if scheme == "ws" else server.address[1]
        link = leaf.link(f"{scheme}://127.0.0.1:{port}/",
                         client=Client(fingerprint=certs.fingerprint, websocket_fallback=False),
                         backoff=fast_backoff())
        async with link, writing(node_cam, "node") as node_sent, writing(leaf_cam, "leaf") as leaf_sent:
            first = await within(link.wait_connected())
            assert type(first.connection).__name__ == TRANSPORTS[scheme]
            async with connect(leaf_app) as leaf_viewer, connect(node_app) as node_viewer:
                got = await play(leaf_viewer, "node/cam", 4)  # the node's broadcast, played on the leaf
                assert got == node_sent[node_sent.index(got[0]):][:4]
                got = await play(node_viewer, "leaf/cam", 4)  # the leaf's broadcast, played on the node
                assert got == leaf_sent[leaf_sent.index(got[0]):][:4]
            assert is_local(leaf, "leaf/cam") and is_local(node, "node/cam")  # neither took its own back

            # the node drops the link: the leaf redials by itself and the flow resumes
            for session in server.sessions:
                session.close(0, "node going away")
            await eventually(lambda: link.reconnects >= 1 and link.connected, "the leaf reconnected")
            assert link.session is not first and first.closed
            async with connect(leaf_app) as leaf_viewer:
                got = await play(leaf_viewer, "node/cam", 4)
                assert got == node_sent[node_sent.index(got[0]):][:4]
            assert is_local(leaf, "leaf/cam")
        assert link.state == "closed" and link.session is None
    text = caplog.text
    assert "connected (" in text and "session ended" in text and "connected again" in text


async def test_example_relay_is_a_leaf_when_moq_upstream_is_set(certs: Certs, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    node = Relay()
    node_cam = publish(node.mux, "live/node")
    async with Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key),
                      handler=relay_app(node)) as server:
        token_file = tmp_path / "cluster.jwt"
        token_file.write_text("not-checked-here\n")
        for name in [n for n in os.environ if n.startswith("MOQ_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("MOQ_UPSTREAM", f"moql://127.0.0.1:{server.address[1]}/")
        monkeypatch.setenv("MOQ_UPSTREAM_TOKEN_FILE", str(token_file))
        monkeypatch.setenv("MOQ_UPSTREAM_FINGERPRINT", certs.fingerprint)
        monkeypatch.setenv("MOQ_UPSTREAM_PREFIX", "live")
        example = importlib.reload(importlib.import_module("examples.relay"))
        link = example.upstream
        assert isinstance(link, UpstreamLink) and link.prefix == "live" and link.state == "idle"
        async with lifespan(example.moq), writing(node_cam, "node") as node_sent:
            session = await within(link.wait_connected())
            assert session.path == "/?jwt=not-checked-here"  # read from the file
            async with connect(example.moq) as viewer:
                got = await play(viewer, "live/node", 2)
                assert got == node_sent[node_sent.index(got[0]):][:2]
        assert link.state == "closed"  # stopped at shutdown
    monkeypatch.delenv("MOQ_UPSTREAM")
    assert importlib.reload(importlib.import_module("examples.relay")).upstream is None


@pytest.mark.parametrize("version", [LITE_03_VERSION, LITE_04_VERSION, LITE_06_VERSION], ids=lambda v: v.name)
async def test_no_loop_through_our_relay_as_the_node(certs: Certs, version: Version,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Our node does send the leaf's broadcast back on lite-03 (a hop count, no ids): the leaf keeps its own
    publication, and once it ends the broadcast is gone from both. On lite-04+ nothing comes back at all."""
    caplog.set_level(logging.DEBUG, logger="moqt_asgi.relay")
    node, leaf = Relay(), Relay()
    broadcast = Broadcast("leaf/cam")
    broadcast.create_track("video")
    published = leaf.mux.publish("leaf/cam", broadcast)
    async with native_server(relay_app(node), str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        link = leaf.link(f"moql://{host}:{port}/", client=Client(fingerprint=certs.fingerprint, versions=[version]))
        async with link:
            session = await within(link.wait_connected())
            assert session.version_name == version.name
            await eventually(lambda: node.mux.route("leaf/cam") is not None, "the node learned leaf/cam")
            await asyncio.sleep(0.3)  # time for an echo to come back
            assert is_local(leaf, "leaf/cam")
            published.end()
            await eventually(lambda: node.mux.route("leaf/cam") is None and leaf.mux.route("leaf/cam") is None,
                             "leaf/cam gone from both relays")
            await asyncio.sleep(0.3)
            assert node.mux.route("leaf/cam") is None and leaf.mux.route("leaf/cam") is None
    echoed = any("not relaying 'leaf/cam' from a peer: it is published here" in r.getMessage()
                 for r in caplog.records)
    assert echoed == (version is LITE_03_VERSION)
    adopted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("peer announced 'leaf/cam'")]
    assert adopted == ["peer announced 'leaf/cam' (route of 1 hops)"]  # by the node, once; never by the leaf


async def test_link_carries_a_token_to_a_node_that_requires_one(certs: Certs,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=UPSTREAM_LOG)
    jwk = generate_key("ES256", kid="cluster")
    node, leaf = Relay(), Relay()
    node_cam, leaf_cam = publish(node.mux, "live/node"), publish(leaf.mux, "live/leaf")
    publish(node.mux, ".internal/origins/https:/node.example"), publish(leaf.mux, "other/leaf")
    node_app = relay_app(node, auth=Authenticator(KeySet([Key.from_dict(jwk)])))
    token = sign_token(jwk, {"root": "", "put": [""], "get": [""], "exp": int(time.time()) + 300})
    async with native_server(node_app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        url = f"moql://{host}:{port}/"
        # without the token: refused, retried, never connected
        refused = leaf.link(url, client=Client(fingerprint=certs.fingerprint), backoff=fast_backoff())
        async with refused:
            await eventually(lambda: refused.attempts >= 3, "retries")
            assert not refused.connected and refused.status().sessions == 0
            assert refused.last_error is not None and "unauthorized" in refused.last_error
        # with it (given as a function: called before each dial)
        calls: list[int] = []

        def current_token() -> str:
            calls.append(1)
            return token

        link = leaf.link(url, token=current_token, client=Client(fingerprint=certs.fingerprint),
                         backoff=fast_backoff(), prefix="live")
        async with link, writing(node_cam, "node") as node_sent, writing(leaf_cam, "leaf") as leaf_sent:
            session = await within(link.wait_connected())
            assert calls and link.status().version == session.version_name
            async with connect(relay_app(leaf)) as leaf_viewer:
                assert set(await play(leaf_viewer, "live/node", 2)) <= set(node_sent)
            await eventually(lambda: node.mux.route("live/leaf") is not None, "the node learned the leaf's broadcast")
            # the prefix limits what the leaf takes, not what it offers
            await eventually(lambda: node.mux.route("other/leaf") is not None, "the node learned other/leaf")
            assert leaf.mux.route(".internal/origins/https:/node.example") is None
            served = [s for s in node_app.metrics.live if s.grant is not None]
            assert served and served[0].grant is not None and served[0].grant.can_publish("live/leaf")
            async with connect(node_app, path=f"/?jwt={token}") as node_viewer:
                assert set(await play(node_viewer, "live/leaf", 2)) <= set(leaf_sent)
    assert token not in caplog.text


# -- a moq-rs node (the Rust relay core) ----------------------------------------------------------------

@contextlib.asynccontextmanager
async def moqrs_node(port: int, certs: Certs, origin: moq.OriginProducer) -> AsyncIterator[None]:
    """A moq-rs relay node on 127.0.0.1:``port``: one origin shared by every session, both ways."""
    async with moq.Server(f"127.0.0.1:{port}", tls_cert=[str(certs.cert)], tls_key=[str(certs.key)],
                          publish=origin, subscribe=origin) as server:
        sessions: list[moq.Session] = []

        async def accept_all() -> None:
            async for request in server:
                sessions.append(await request.accept())

        acceptor = asyncio.ensure_future(accept_all())
        try:
            yield
        finally:
            acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acceptor
            for session in sessions:
                session.shutdown()


def rs_client(port: int, certs: Certs) -> moq.Client:
    return moq.Client(f"moql://127.0.0.1:{port}/", tls_fingerprints=[certs.fingerprint], reconnect=False,
                      websocket_enabled=False)


async def rs_read(client: moq.Client, path: str, count: int) -> list[bytes]:
    """``count`` frames of ``path``/video, read by a moq-rs subscriber of the node."""
    announced = await asyncio.wait_for(client.announced_broadcast(path), WAIT)
    track = await announced.subscribe_track("video")
    got: list[bytes] = []
    while len(got) < count:
        group = await asyncio.wait_for(track.next_group(), WAIT)
        while (frame := await asyncio.wait_for(group.read_frame(), WAIT)) is not None:
            got.append(bytes(frame.payload))
    return got[:count]


async def rs_keep_writing(track: Any, label: str, frames: list[bytes]) -> None:
    for g in range(10_000):
        group = track.append_group()
        for f in range(2):
            frame = f"{label} g{g} f{f} ".encode() + bytes([g % 256, f]) * 300
            group.write_frame(frame)
            frames.append(frame)
        group.finish()
        await asyncio.sleep(0.03)


@contextlib.asynccontextmanager
async def rs_writing(track: Any, label: str) -> AsyncIterator[list[bytes]]:
    frames: list[bytes] = []
    task = asyncio.ensure_future(rs_keep_writing(track, label, frames))
    try:
        yield frames
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def never_adopted(caplog: pytest.LogCaptureFixture, path: str) -> bool:
    """No log line of the relay says it took ``path`` from a peer."""
    return not any(r.name == "moqt_asgi.relay" and f"announced {path!r}" in r.getMessage() for r in caplog.records)


@pytest.mark.interop
@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_leaf_of_a_moqrs_node_both_ways(certs: Certs, scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = free_udp_port()
    leaf = Relay()
    leaf_app = relay_app(leaf)
    async with moqrs_node(port, certs, moq.OriginProducer()):
        async with rs_client(port, certs) as publisher, rs_client(port, certs) as subscriber:
            rs_broadcast = publisher.create_broadcast("rs/cam")
            rs_track = rs_broadcast.publish_track("video")
            rs_broadcast.announce()
            link = leaf.link(f"{scheme}://127.0.0.1:{port}/",
                             client=Client(fingerprint=certs.fingerprint, websocket_fallback=False))
            async with link, rs_writing(rs_track, "rs") as rs_sent:
                session = await within(link.wait_connected())
                assert type(session.connection).__name__ == TRANSPORTS[scheme]
                # a publisher on the leaf (a peer of ours publishing into it)
                peer_mux = TrackMux()
                async with connect(leaf_app, mux=peer_mux), connect(leaf_app) as viewer:
                    ours = publish(peer_mux, "py/cam")
                    async with writing(ours, "py") as py_sent:
                        got = await play(viewer, "rs/cam", 6)  # the node's publisher, played on the leaf
                        assert got == rs_sent[rs_sent.index(got[0]):][:6]  # byte-identical, in order
                        got = await rs_read(subscriber, "py/cam", 6)  # the leaf's publisher, played on the node
                        assert got == py_sent[py_sent.index(got[0]):][:6]
                    # the node announces py/cam to everyone; the leaf never takes it back from the node
                    route = leaf.mux.route("py/cam")
                    assert route is not None and leaf.mux.publications("py/cam") == 1
                    assert getattr(route[1], "session", None) is not session
                assert session.version_name.startswith("moq-lite-0")
    assert link.state == "closed"


@pytest.mark.interop
async def test_leaf_reconnects_when_the_moqrs_node_comes_back(certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=UPSTREAM_LOG)
    caplog.set_level(logging.INFO, logger="moqt_asgi.relay")
    port = free_udp_port()
    leaf = Relay()
    leaf_app = relay_app(leaf)
    leaf_cam = publish(leaf.mux, "leaf/cam")
    link = leaf.link(f"moql://127.0.0.1:{port}/", client=Client(fingerprint=certs.fingerprint, setup_timeout=1.0),
                     backoff=Backoff(initial=0.2, maximum=0.5, stable=10.0))
    async with link, writing(leaf_cam, "leaf") as leaf_sent:
        for epoch in (1, 2):
            origin = moq.OriginProducer()
            node_cam = origin.create_broadcast("node/cam")
            node_track = node_cam.publish_track("video")
            node_cam.announce()
            async with moqrs_node(port, certs, origin), rs_writing(node_track, f"epoch{epoch}") as node_sent:
                await within(link.wait_connected())
                async with connect(leaf_app) as viewer:
                    got = await play(viewer, "node/cam", 4)
                    assert got[0].startswith(f"epoch{epoch} ".encode()), got[0][:20]
                    assert got == node_sent[node_sent.index(got[0]):][:4]
                async with rs_client(port, certs) as subscriber:
                    got = await rs_read(subscriber, "leaf/cam", 4)
                    assert got == leaf_sent[leaf_sent.index(got[0]):][:4]
                assert is_local(leaf, "leaf/cam")  # the node's copy of it never became a remote one here
            if epoch == 1:
                # the node is gone: the leaf notices, retries, and keeps retrying while nobody answers
                await eventually(lambda: not link.connected, "the leaf noticed the node went away")
                retries_from = link.attempts + 2
                await eventually(lambda target=retries_from: link.attempts >= target, "the leaf retries")
                status = link.status()
                assert status.state in ("dialing", "waiting") and status.last_error
    assert link.reconnects == 1 and link.attempts >= 3
    messages = [r.getMessage() for r in caplog.records if r.name == UPSTREAM_LOG]
    assert any("session ended" in m for m in messages)
    assert any("cannot connect" in m for m in messages)
    assert any("connected again" in m for m in messages)
    assert never_adopted(caplog, "leaf/cam")


@pytest.mark.interop
@pytest.mark.parametrize("version", [LITE_03_VERSION, LITE_04_VERSION, LITE_05_VERSION, LITE_06_VERSION],
                         ids=lambda v: v.name)
async def test_the_leafs_broadcast_never_comes_back_from_a_moqrs_node(certs: Certs, version: Version,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """On each version moq-rs speaks: the node has the leaf's broadcast, the leaf never adopts it from the node,
    and once the leaf's publisher stops, the broadcast is gone from both (no echo keeps it alive)."""
    caplog.set_level(logging.DEBUG, logger="moqt_asgi.relay")
    port = free_udp_port()
    leaf = Relay()
    broadcast = Broadcast("leaf/cam")
    track = broadcast.create_track("video")
    published = leaf.mux.publish("leaf/cam", broadcast)
    link = leaf.link(f"moql://127.0.0.1:{port}/", client=Client(fingerprint=certs.fingerprint, versions=[version]))
    origin = moq.OriginProducer()
    async with moqrs_node(port, certs, origin), link, writing(track, "leaf") as sent:
        session = await within(link.wait_connected())
        assert session.version_name == version.name
        async with rs_client(port, certs) as subscriber:
            got = await rs_read(subscriber, "leaf/cam", 2)
            assert got == sent[sent.index(got[0]):][:2]
            node_view = origin.consume()
            await asyncio.sleep(0.5)  # time for an echo to come back, if the node sent one
            assert is_local(leaf, "leaf/cam")
            published.end()
            await eventually(lambda: leaf.mux.route("leaf/cam") is None, "the broadcast left the leaf")

            async def gone_from_node() -> None:
                while True:
                    try:
                        await asyncio.wait_for(node_view.request_broadcast("leaf/cam"), 0.2)
                    except (TimeoutError, Exception):
                        return
                    await asyncio.sleep(0.05)

            await within(gone_from_node())
            await asyncio.sleep(0.5)  # an echo in flight would be adopted now: nothing may come back
            assert leaf.mux.route("leaf/cam") is None
    assert never_adopted(caplog, "leaf/cam"), [r.getMessage() for r in caplog.records if "leaf/cam" in r.getMessage()]

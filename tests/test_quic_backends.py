"""QUIC backends: aioquic and qh3 behind QuicSettings(backend=...).

* the setting (values, ``MOQT_QUIC_BACKEND``, ``auto``) and qh3's
  compatibility check naming what moved;
* our client on each backend against our server, and the stream limits of
  the settings reaching the peer;
* our server on qh3 (native QUIC only): every client backend against
  every server backend, and its connection caps, Retry and handshake
  deadline as on aioquic;
* receive credit on qh3: its windows follow delivery (one-byte frames at
  the edge of the window earn nothing), and a stream nobody reads is
  stopped once its unread bytes pass the window (qh3 cannot hold credit back).

Every qh3 test is skipped only when qh3 is not installed (it is in the test extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib.util
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from moqt_asgi import Broadcast, ErrorCode, MoQ, QuicSettings, TrackWriter
from moqt_asgi.endpoints.dial_quic import dial_quic
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.protocol.errors import MoQError
from moqt_asgi.testing.netsim import UdpRelay
from moqt_asgi.transport.settings import qh3_available

from .conftest import Certs
from .helpers import WAIT, native_server, read_tick, tick_app
from .test_connection_limits import flood, live_connections, moq_server, wait_until

pytestmark = pytest.mark.slow

HAVE_QH3 = importlib.util.find_spec("qh3") is not None
needs_qh3 = pytest.mark.skipif(not HAVE_QH3, reason="qh3 is not installed (pip install 'moqt-asgi[fast]')")
BACKENDS = ["aioquic", pytest.param("qh3", marks=needs_qh3)]
MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=BACKENDS)
def quic_backend(request: pytest.FixtureRequest) -> str:
    """Each QUIC backend in turn (qh3 skipped only when it is not installed)."""
    return str(request.param)


# -- shared with the interop suites: our server and client on a chosen backend
@contextlib.asynccontextmanager
async def backend_native_server(app: MoQ, certfile: str, keyfile: str, *, backend: str = "aioquic"
                                ) -> AsyncIterator[QuicServer]:
    """:func:`~tests.helpers.native_server` on ``backend`` (on qh3: native QUIC only, no WebTransport)."""
    options: dict[str, Any] = {} if backend == "aioquic" else \
        {"webtransport": False, "quic": QuicSettings(backend=backend)}  # type: ignore[arg-type]
    async with native_server(app, certfile, keyfile, **options) as server:
        yield server


def on_backend(dial_function: Any, backend: str) -> Any:
    """``dial_function`` (``dial`` or ``dial_quic``) with its QUIC settings on ``backend``."""
    def dialing(url: str, **kwargs: Any) -> Any:
        kwargs["quic"] = dataclasses.replace(kwargs.get("quic") or QuicSettings(), backend=backend)
        return dial_function(url, **kwargs)
    return dialing


# -- the setting
def test_backend_setting_values_and_environment() -> None:
    assert QuicSettings().backend == "aioquic"
    with pytest.raises(ValueError, match="backend"):
        QuicSettings(backend="quiche")  # type: ignore[arg-type]
    assert QuicSettings.from_environment({"MOQT_QUIC_BACKEND": "QH3"}).backend == "qh3"
    assert QuicSettings.from_environment({"MOQT_QUIC_BACKEND": "auto"}).backend == "auto"
    with pytest.raises(ValueError, match="MOQT_QUIC_BACKEND"):
        QuicSettings.from_environment({"MOQT_QUIC_BACKEND": "fast"})
    assert QuicSettings(backend="aioquic").resolved_backend() == "aioquic"
    assert QuicSettings(backend="auto").resolved_backend() == ("qh3" if HAVE_QH3 else "aioquic")


@needs_qh3
def test_qh3_compatibility_check_names_a_moved_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from qh3.quic.connection import QuicConnection

    from moqt_asgi.transport import qh3_connection

    qh3_connection.check_compatible()
    monkeypatch.delattr(QuicConnection, "get_send_buffer_size")
    with pytest.raises(qh3_connection.IncompatibleQh3, match=r"QuicConnection\.get_send_buffer_size"):
        qh3_connection.check_compatible()
    assert not qh3_available()  # "auto" falls back to aioquic
    monkeypatch.undo()
    qh3_connection.check_compatible()


def test_a_qh3_server_serves_native_quic_only(certs: Certs) -> None:
    if HAVE_QH3:
        with pytest.raises(MoQError, match="webtransport=False"):
            QuicServer(MoQ(), port=0, certfile=str(certs.cert), keyfile=str(certs.key),
                       quic=QuicSettings(backend="qh3"))
    auto = QuicServer(MoQ(), port=0, certfile=str(certs.cert), keyfile=str(certs.key), quic=QuicSettings(backend="auto"))
    assert auto.backend == "aioquic"  # auto with WebTransport: aioquic
    native = QuicServer(MoQ(), port=0, certfile=str(certs.cert), keyfile=str(certs.key), webtransport=False,
                        quic=QuicSettings(backend="auto"))
    assert native.backend == ("qh3" if HAVE_QH3 else "aioquic")


def test_qh3_asked_for_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without qh3 (its module not found), asking for it is an error naming the extra, and auto means aioquic."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "qh3" else real_find_spec(name, *args))
    with pytest.raises(RuntimeError, match="needs qh3"):
        QuicSettings(backend="qh3").resolved_backend()
    assert QuicSettings(backend="auto").resolved_backend() == "aioquic"


# -- our client on each backend, against our server
async def test_client_on_each_backend(certs: Certs, quic_backend: str) -> None:
    app = tick_app()
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        url = f"moql://{host}:{port}/"
        session = await dial_quic(url, fingerprint=certs.fingerprint, quic=QuicSettings(backend=quic_backend))
        async with session:
            assert session.connection.backend.name == quic_backend
            assert await read_tick(session) == b"tick"
        with pytest.raises(MoQError, match="fingerprint"):
            await dial_quic(url, fingerprint="00" * 32, quic=QuicSettings(backend=quic_backend))


@pytest.mark.parametrize("server_backend", BACKENDS)
async def test_every_client_backend_against_every_server_backend(certs: Certs, quic_backend: str,
                                                                 server_backend: str) -> None:
    async with moq_server(certs, QuicSettings(backend=server_backend), webtransport=False) as server:
        assert server.backend == server_backend
        url = f"moql://127.0.0.1:{server.address[1]}/"
        session = await dial_quic(url, fingerprint=certs.fingerprint, quic=QuicSettings(backend=quic_backend))
        async with session:
            assert await read_tick(session) == b"tick"
            assert server.admission.connections == 1 == live_connections(server)
            assert server.admission.half_open == 0
        await wait_until(lambda: server.admission.connections == 0)


@pytest.mark.parametrize("server_backend", BACKENDS)
async def test_a_group_stopped_midway_on_each_backend(certs: Certs, quic_backend: str, server_backend: str) -> None:
    """STOP_SENDING and RESET_STREAM across the stacks: the stopped group ends with CANCEL, later ones arrive whole."""
    app = MoQ()
    stopped_codes: list[int] = []

    async def handler(track: TrackWriter) -> None:
        for n in range(3):
            group = await track.open_group()
            try:
                for _ in range(200 if n == 0 else 20):
                    await group.write_frame(bytes([n]) * 16384)
                await group.close()
            except Exception as exc:
                stopped_codes.append(getattr(exc, "code", -1))
            await asyncio.sleep(0.05)

    app.mux.publish("b", handler)
    async with backend_native_server(app, str(certs.cert), str(certs.key), backend=server_backend) as server:
        url = f"moql://127.0.0.1:{server.address[1]}/"
        session = await dial_quic(url, fingerprint=certs.fingerprint, quic=QuicSettings(backend=quic_backend))
        async with session:
            track = await session.subscribe("b", "t")
            first = await asyncio.wait_for(track.next_group(), WAIT)
            assert first is not None
            assert await first.read_frame() == bytes(16384)
            first.stop(ErrorCode.CANCEL)
            later = []
            for _ in range(2):
                group = await asyncio.wait_for(track.next_group(), WAIT)
                assert group is not None
                frames = await asyncio.wait_for(group.read_all(), WAIT)
                later.append((group.sequence, len(frames), {f[0] for f in frames}))
            assert not session.closed
    assert later == [(1, 20, {1}), (2, 20, {2})]
    assert stopped_codes == [ErrorCode.CANCEL]


@needs_qh3
async def test_qh3_client_resumes_with_a_ticket(certs: Certs) -> None:
    """A qh3 client keeps the ticket and resumes (1-RTT); a ticket store shared with aioquic dials mixes nothing."""
    from moqt_asgi.endpoints.tickets import ClientTicketStore

    tickets = ClientTicketStore()
    async with moq_server(certs, QuicSettings(retry=False), webtransport=False) as server:
        url = f"moql://127.0.0.1:{server.address[1]}/"
        resumed = []
        for backend in ("qh3", "qh3", "aioquic", "qh3", "qh3"):
            session = await dial_quic(url, fingerprint=certs.fingerprint, tickets=tickets,
                                      quic=QuicSettings(backend=backend))  # type: ignore[arg-type]
            async with session:
                assert await read_tick(session) == b"tick"
                resumed.append(session.connection.resumed)
                assert not session.connection.early_data_accepted
    # the aioquic dial finds a qh3 ticket (not offered), the qh3 dial after it an aioquic one (not offered)
    assert resumed == [False, True, False, False, True]


@needs_qh3
async def test_qh3_server_on_a_given_socket(certs: Certs) -> None:
    """``start(sock=...)`` on qh3: the server serves on that socket (qh3's batched transport) and closes it."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = QuicServer(tick_app(), port=0, certfile=str(certs.cert), keyfile=str(certs.key), webtransport=False,
                        quic=QuicSettings(backend="qh3"))
    await server.start(sock=sock)
    try:
        assert server.address[1] == port
        async with await dial_quic(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint) as session:
            assert await read_tick(session) == b"tick"
    finally:
        await server.close()
    await asyncio.sleep(0.1)
    assert sock.fileno() == -1


@needs_qh3
async def test_qh3_server_caps_and_retry(certs: Certs) -> None:
    quic = QuicSettings(backend="qh3", max_connections_per_address=2, retry=False)
    async with moq_server(certs, quic, webtransport=False) as server, contextlib.AsyncExitStack() as stack:
        url = f"moql://127.0.0.1:{server.address[1]}/"
        for _ in range(2):
            await stack.enter_async_context(await dial_quic(url, fingerprint=certs.fingerprint))
        with pytest.raises(MoQError, match=r"could not connect.*too many connections"):
            await dial_quic(url, fingerprint=certs.fingerprint, setup_timeout=4.0)
        assert server.admission.connections == 2 == live_connections(server)
    quic = QuicSettings(backend="qh3", retry=True, max_connections_per_address=None)
    async with moq_server(certs, quic, webtransport=False) as server:
        answers = await flood(server.address[1], 20)
        assert all(kinds == ["retry"] for kinds in answers)
        assert server.admission.connections == 0 == live_connections(server)
        for backend in ("aioquic", "qh3"):
            session = await dial_quic(f"moql://127.0.0.1:{server.address[1]}/", fingerprint=certs.fingerprint,
                                      quic=QuicSettings(backend=backend))  # type: ignore[arg-type]
            async with session:
                assert await read_tick(session) == b"tick"
        assert server.admission.retries >= 22


@needs_qh3
async def test_qh3_server_handshake_deadline_frees_half_open_connections(certs: Certs) -> None:
    quic = QuicSettings(backend="qh3", retry=False, handshake_timeout=1.0, max_connections_per_address=None)
    async with moq_server(certs, quic, webtransport=False) as server:
        answers = await flood(server.address[1], 5, settle=0.2)
        assert all(answers)  # each got the server's first flight
        assert server.admission.half_open == 5 == live_connections(server)
        started = time.monotonic()
        await wait_until(lambda: server.admission.connections == 0 and live_connections(server) == 0, timeout=5)
        assert time.monotonic() - started < 5  # the idle timeout (30 s) would have kept them


async def test_stream_limits_reach_the_server(certs: Certs, quic_backend: str) -> None:
    """300 groups open at once: a subscriber allowing 128 uni streams gets 128, on either backend."""
    app = MoQ()
    release = asyncio.Event()

    async def handler(track: TrackWriter) -> None:
        groups = []
        for n in range(300):
            group = await track.open_group()
            await group.write_frame(n.to_bytes(2, "big"))
            groups.append(group)
        await release.wait()
        for group in groups:
            await group.close()

    app.mux.publish("b", handler)
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        settings = QuicSettings(backend=quic_backend, max_streams_uni=128)
        session = await dial_quic(f"moql://{host}:{port}/", fingerprint=certs.fingerprint, quic=settings)
        async with session:
            track = await session.subscribe("b", "t")
            seen = 0
            with contextlib.suppress(TimeoutError):
                while seen < 300:
                    group = await asyncio.wait_for(track.next_group(), 1.0)
                    assert group is not None
                    seen += 1
            release.set()
    assert seen == 128


# -- receive credit on qh3
@contextlib.asynccontextmanager
async def qh3_sink_server(certs: Certs, port: int) -> AsyncIterator[Any]:
    """qh3's own server (its Rust core's flow control, nothing of ours), dropping what it receives."""
    from qh3.asyncio import QuicConnectionProtocol, serve
    from qh3.quic.configuration import QuicConfiguration

    class Sink(QuicConnectionProtocol):
        def quic_event_received(self, event: Any) -> None:
            pass

    configuration = QuicConfiguration(is_client=False, alpn_protocols=["moql"], max_data=16 * MIB,
                                      max_stream_data=MIB)
    configuration.load_cert_chain(str(certs.cert), str(certs.key))
    server = await serve("127.0.0.1", port, configuration=configuration, create_protocol=Sink)
    try:
        yield server
    finally:
        server.close()


@needs_qh3
@pytest.mark.parametrize("target", ["qh3 alone", "our server on qh3"])
async def test_qh3_windows_follow_delivery_not_arrival(certs: Certs, target: str) -> None:
    """Edge-of-window one-byte frames on 16 streams, round after round: qh3 announces no new credit."""
    from benchmarks._attack_common import Sent
    from benchmarks._attack_quic import edge_frames

    from .helpers import free_udp_port

    sent = Sent()
    async with contextlib.AsyncExitStack() as stack:
        if target == "qh3 alone":
            port = free_udp_port()
            await stack.enter_async_context(qh3_sink_server(certs, port))
        else:
            quic = QuicSettings(backend="qh3", max_connections_per_address=None)
            server = await stack.enter_async_context(moq_server(certs, quic, webtransport=False))
            port = server.address[1]
        await asyncio.wait_for(edge_frames(port, sent, connections=2, streams=16, rounds=6, stop=lambda: False),
                               60)
    # one frame per stream in the first round; a receiver that doubled would take one per stream every round
    assert sent.requests == 2 * 16, sent.summary


@needs_qh3
async def test_qh3_stream_nobody_reads_is_stopped_at_the_window(certs: Certs) -> None:
    """qh3 grants credit on delivery: past a connection window of unread bytes the stream is stopped (TOO_LARGE)."""
    app = MoQ()
    outcome: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    frame = bytes(64 * 1024)

    async def handler(track: TrackWriter) -> None:
        group = await track.open_group()
        try:
            for _ in range(8 * MIB // len(frame)):  # 8 MiB: twice the connection window below
                await group.write_frame(frame)
            await group.close()
            outcome.set_result(None)
        except Exception as exc:
            outcome.set_result(getattr(exc, "code", -1))

    app.mux.publish("b", handler)
    settings = QuicSettings(backend="qh3", stream_receive_window=256 * 1024, connection_receive_window=4 * MIB)
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        session = await dial_quic(f"moql://{host}:{port}/", fingerprint=certs.fingerprint, quic=settings)
        async with session:
            track = await session.subscribe("b", "t")
            group = await asyncio.wait_for(track.next_group(), WAIT)
            assert group is not None  # its frames are never read
            assert await asyncio.wait_for(outcome, WAIT) == ErrorCode.TOO_LARGE
            credit = session.connection.quic.held_credit
            assert credit.overruns >= 1
            assert credit.held() <= settings.connection_receive_window + 2 * len(frame) + 4096
            assert not session.closed



def test_held_credit_stops_the_stream_that_passes_the_connection_window() -> None:
    """Only the connection's unread bytes are bounded: the stream whose bytes pass that window is handed over."""
    if not HAVE_QH3:
        pytest.skip("qh3 is not installed")
    from moqt_asgi.transport.qh3_connection import HeldCredit

    async def scenario() -> list[int]:
        credit = HeldCredit(stream_window=100, connection_window=250)
        stopped: list[int] = []
        credit.on_overrun = stopped.append
        credit.hold(0, 180)  # past the stream window: a large group queued unread is kept
        credit.hold(4, 60)
        await asyncio.sleep(0)
        assert stopped == []
        credit.release(4, 60)
        credit.hold(8, 70)  # 250: at the connection window
        await asyncio.sleep(0)
        assert stopped == []
        credit.hold(12, 1)  # 251: stream 12 takes the connection past its window
        await asyncio.sleep(0)
        assert stopped == [12]
        credit.release(0, 180)
        assert credit.held() == 71 and credit.held(0) == 0 and credit.overruns == 1
        return stopped

    assert asyncio.run(scenario()) == [12]


# -- serve --quic-backend
@needs_qh3
@pytest.mark.cli
async def test_serve_on_qh3(certs: Certs) -> None:
    """``serve --quic-backend qh3 --no-webtransport`` serves native QUIC on qh3; with WebTransport it refuses to start."""
    import subprocess

    from .helpers import cli, free_udp_port, stop_serve

    def start(*extra: str) -> tuple[subprocess.Popen[str], int]:
        port = free_udp_port()
        process = subprocess.Popen(
            cli("-v", "serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert),
                "--keyfile", str(certs.key), "--no-tcp", *extra),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return process, port

    process, port = start("--quic-backend", "qh3", "--no-webtransport")
    try:
        assert process.stdout is not None
        lines = [await asyncio.to_thread(process.stdout.readline)]
        while not lines[-1].startswith("serving examples") and lines[-1]:
            lines.append(await asyncio.to_thread(process.stdout.readline))
        assert any("moql://" in line and "(qh3)" in line for line in lines), lines
        for backend in ("aioquic", "qh3"):
            session = await dial_quic(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint,
                                      quic=QuicSettings(backend=backend))  # type: ignore[arg-type]
            async with session:
                track = await session.subscribe("clock", "seconds")
                assert await asyncio.wait_for(track.next_group(), WAIT) is not None
    finally:
        stop_serve(process)
    process, _ = start("--quic-backend", "qh3")
    output, _ = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode != 0 and "webtransport=False" in output, output


@pytest.mark.parametrize("server_backend", BACKENDS)
async def test_viewers_that_leave_while_frames_flow_leave_no_errors(certs: Certs, server_backend: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Viewers close while the server writes to them: their groups end quietly, no handler fails.

    qh3 refuses stream calls as soon as it has the peer's CONNECTION_CLOSE, while
    the connection drains and before it reports the close: resetting the group
    then raised qh3's ``QuicConnectionError`` out of the track handler
    (an error and a traceback for every viewer that left).
    """
    app = MoQ()
    broadcast = Broadcast("live")
    track = broadcast.create_track("video")
    app.mux.publish("live", broadcast)
    caplog.set_level(logging.WARNING)
    async with backend_native_server(app, str(certs.cert), str(certs.key), backend=server_backend) as server:
        url = f"moql://127.0.0.1:{server.address[1]}/"
        stop = asyncio.Event()

        async def publish() -> None:
            while not stop.is_set():
                group = track.append_group()
                for _ in range(10):
                    group.write_frame(bytes(3000))
                    await asyncio.sleep(0.002)
                group.finish()

        publisher = asyncio.ensure_future(publish())
        try:
            for _ in range(3):
                sessions = [await dial_quic(url, fingerprint=certs.fingerprint) for _ in range(8)]
                readers = [await session.subscribe("live", "video") for session in sessions]
                for reader in readers:
                    group = await asyncio.wait_for(reader.next_group(), WAIT)
                    assert group is not None
                    assert await asyncio.wait_for(group.read_frame(), WAIT) == bytes(3000)
                for session in sessions:  # a CONNECTION_CLOSE while the server is mid-group for each
                    await session.close()
                await wait_until(lambda: track.subscribers == 0)
        finally:
            stop.set()
            await publisher
    failures = [record for record in caplog.records if record.levelno >= logging.WARNING
                and record.name.startswith(("moqt_asgi", "quic"))]
    assert not failures, [f"{r.name}: {r.getMessage()}" for r in failures]


@pytest.mark.parametrize("size", [None, 1452])
async def test_max_datagram_size_sets_the_largest_datagram_sent(certs: Certs, quic_backend: str,
                                                                size: int | None) -> None:
    """``QuicSettings.max_datagram_size``: a 1200-byte frame fits one 1452-byte datagram; the default stays small."""
    app = MoQ()
    broadcast = Broadcast("live")
    track = broadcast.create_track("video")
    app.mux.publish("live", broadcast)
    settings = QuicSettings(backend=quic_backend, max_datagram_size=size)  # type: ignore[arg-type]
    async with native_server(app, str(certs.cert), str(certs.key), webtransport=False, quic=settings) as server, \
            UdpRelay(server.address) as net:
        session = await dial_quic(f"moql://127.0.0.1:{net.port}/", fingerprint=certs.fingerprint,
                                  quic=QuicSettings(max_datagram_size=size))
        async with session:
            reader = await session.subscribe("live", "video", wait_for_start=False)
            await wait_until(lambda: track.subscribers == 1)
            net.log.clear()
            group = track.append_group()
            for index in range(20):
                group.write_frame(bytes([index]) * 1200)
            group.finish()
            received = await asyncio.wait_for(reader.next_group(), WAIT)
            assert received is not None
            frames = await asyncio.wait_for(received.read_all(), WAIT)
            assert frames == [bytes([index]) * 1200 for index in range(20)]
        sent = [datagram.size for datagram in net.log if datagram.direction == "server"]
    default = 1200 if quic_backend == "aioquic" else 1280
    if size is None:
        assert max(sent) <= default, sorted(sent)[-5:]
    else:
        assert default < max(sent) <= size, sorted(sent)[-5:]
        # one frame a datagram: the 20 frames took about 20 datagrams (and the small ones around them)
        assert sum(1 for s in sent if s > 1200) >= 15, sorted(sent)


def test_max_datagram_size_bounds() -> None:
    for bad in (1199, 65528):
        with pytest.raises(ValueError, match="max_datagram_size"):
            QuicSettings(max_datagram_size=bad)
    assert QuicSettings.from_environment({"MOQT_MAX_DATAGRAM_SIZE": "1452"}).max_datagram_size == 1452
    assert QuicSettings().configuration(is_client=False, alpn=["moql"]).max_datagram_size == 1200
    assert QuicSettings(max_datagram_size=9000).configuration(is_client=False, alpn=["moql"]).max_datagram_size == 9000


async def test_a_dial_that_times_out_leaves_no_unretrieved_error(quic_backend: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Nobody answers: the dial fails with its timeout, and asyncio logs nothing about a forgotten future."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # a port that swallows every datagram
        silent.bind(("127.0.0.1", 0))
        url = f"moql://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(MoQError, match="within"):
            await dial_quic(url, insecure=True, setup_timeout=0.3, quic=QuicSettings(backend=quic_backend))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        gc.collect()
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()], caplog.text

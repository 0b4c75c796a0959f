"""Time to the first frame on a fresh connection, over a relay that adds a round-trip time.

Each dial goes through a :class:`~moqt_asgi.testing.netsim.UdpRelay` that delays
every datagram by half the RTT. A moqt-asgi run dials, subscribes, and
stops the clock when the first frame arrives; the baseline is plain aioquic
doing the least an application can: connect, send one byte on a stream,
receive one byte back. Both are measured with a full handshake and with a
0-RTT resumption (the client holds a ticket from the previous run), so each
moqt-asgi row has a baseline with the same handshake.

A full TLS handshake costs one round trip before any request; 0-RTT sends
the first request with the ClientHello. moq-lite-05/06 start with a SETUP
exchange, which 0-RTT carries in the first flight; lite-03/04 have none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic import events
from aioquic.tls import SessionTicket

from moqt_asgi import ClientTicketStore, MoQ, QuicSettings, SessionTicketStore, TrackWriter, dial
from moqt_asgi.endpoints.quic_server import QuicServer
from moqt_asgi.protocol.versions import LITE_04_VERSION, LITE_06_VERSION, Version
from moqt_asgi.testing.netsim import UdpRelay

from .common import HOST, Certificate

ECHO_ALPN = "bench-echo"
RAW = "raw aioquic: 1-byte request, 1-byte answer"


@dataclass
class StartupResult:
    scenario: str
    handshake: str  # "full", "resumed" or "0-RTT"
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


class _Echo(QuicConnectionProtocol):
    """Server: answers each stream's data with the same bytes and ends the stream."""

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived) and event.data:
            self._quic.send_stream_data(event.stream_id, event.data, end_stream=True)
            self.transmit()


class _Asker(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived) and event.end_stream and not self.answer.done():
            self.answer.set_result(None)


@contextlib.asynccontextmanager
async def _echo_server(certificate: Certificate) -> AsyncIterator[int]:
    settings = QuicSettings(allow_0rtt=True)
    configuration = settings.configuration(is_client=False, alpn=[ECHO_ALPN])
    configuration.load_cert_chain(str(certificate.cert), str(certificate.key))
    tickets = SessionTicketStore()
    server = await serve(HOST, 0, configuration=configuration, create_protocol=_Echo,
                         session_ticket_fetcher=tickets.pop, session_ticket_handler=tickets.add)
    try:
        assert server._transport is not None
        yield int(server._transport.get_extra_info("sockname")[1])
    finally:
        server.close()
        await asyncio.sleep(0)


async def _raw_request(port: int, holder: list[SessionTicket], early: bool) -> float:
    configuration = QuicSettings(allow_0rtt=True).configuration(is_client=True, alpn=[ECHO_ALPN])
    configuration.verify_mode = ssl.CERT_NONE
    configuration.server_name = HOST
    if early and holder:
        configuration.session_ticket = holder.pop()
    start = time.perf_counter()
    async with connect(HOST, port, configuration=configuration, create_protocol=_Asker,
                       session_ticket_handler=holder.append, wait_connected=not early) as protocol:
        assert isinstance(protocol, _Asker)
        stream_id = protocol._quic.get_next_available_stream_id()
        protocol._quic.send_stream_data(stream_id, b"x", end_stream=True)
        protocol.transmit()
        await protocol.answer
        elapsed = time.perf_counter() - start
        for _ in range(100):  # the ticket for the next run comes after the handshake: wait for it
            if holder:
                break
            await asyncio.sleep(0.01)
    return elapsed


def _clock_app(version: Version) -> MoQ:
    app = MoQ(versions=(version,))

    async def handler(track: TrackWriter) -> None:
        group = await track.open_group()
        await group.write_frame(b"tick")
        await group.close()

    app.mux.publish("clock", handler)
    return app


async def _moq_first_frame(url: str, certificate: Certificate, version: Version, store: ClientTicketStore | None,
                           early: bool) -> float:
    start = time.perf_counter()
    session = await dial(url, fingerprint=certificate.fingerprint, versions=(version,), tickets=store,
                         quic=QuicSettings(allow_0rtt=early))
    async with session:
        track = await session.subscribe("clock", "seconds")
        group = await track.next_group()
        assert group is not None
        await group.read_frame()
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0.01)
    return elapsed


async def _measure(result: StartupResult, run: Callable[[], Awaitable[float]], repeat: int) -> StartupResult:
    try:
        await run()  # warm-up; it also leaves the ticket for the next run
        for _ in range(repeat):
            result.samples.append(await run())
    except Exception as exc:
        result.error = f"failed: {exc!r}"
    return result


async def measure_startup(certificate: Certificate, *, rtt: float = 0.04, repeat: int = 5) -> list[StartupResult]:
    """Every scenario, ``repeat`` dials each after a warm-up, over a relay adding ``rtt`` seconds."""
    results: list[StartupResult] = []
    async with contextlib.AsyncExitStack() as stack:
        echo_port = await stack.enter_async_context(_echo_server(certificate))
        relay = await stack.enter_async_context(UdpRelay((HOST, echo_port), delay=rtt / 2))
        for handshake, early in (("full", False), ("0-RTT", True)):
            holder: list[SessionTicket] = []
            run = functools.partial(_raw_request, relay.port, holder, early)
            results.append(await _measure(StartupResult(RAW, handshake), run, repeat))
        for version in (LITE_06_VERSION, LITE_04_VERSION):
            server = QuicServer(_clock_app(version), host=HOST, port=0, certfile=str(certificate.cert),
                                keyfile=str(certificate.key), quic=QuicSettings(allow_0rtt=True), webtransport=False)
            await server.start()
            stack.push_async_callback(server.close)
            moq_relay = await stack.enter_async_context(UdpRelay(server.address, delay=rtt / 2))
            url = f"moql://{HOST}:{moq_relay.port}/"
            name = f"moqt-asgi {version.name}: dial, subscribe, first frame"
            for handshake, store, early in (("full", None, False), ("resumed", ClientTicketStore(), False),
                                            ("0-RTT", ClientTicketStore(), True)):
                run = functools.partial(_moq_first_frame, url, certificate, version, store, early)
                results.append(await _measure(StartupResult(name, handshake), run, repeat))
    return results


def format_startup(results: list[StartupResult], rtt: float) -> str:
    baselines = {r.handshake: r for r in results if r.scenario == RAW and not r.error}
    header = ("scenario", "handshake", "median ms", "RTTs", "vs raw aioquic")
    rows: list[tuple[str, ...]] = []
    for result in results:
        if result.error:
            rows.append((result.scenario, result.handshake, "-", "-", result.error))
            continue
        reference = baselines.get("0-RTT" if result.handshake == "0-RTT" else "full")
        ratio = f"{result.median / reference.median:.2f}" if reference is not None else "-"
        rows.append((result.scenario, result.handshake, f"{result.median * 1000:.1f}", f"{result.median / rtt:.1f}",
                     ratio))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.rjust(widths[i]) if i >= 2 else cell.ljust(widths[i])
                                 for i, cell in enumerate(row)) + " |"

    separator = "|" + "|".join(("-" * (w + 1) + ":") if i >= 2 else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


__all__ = ["StartupResult", "format_startup", "measure_startup"]

"""Serving on a listener the caller made: ``Server.serve_quic_listener(sock)`` and aioquic's own ``serve()``
with ``Server.quic_serve_arguments()``, with our client and moq-rs's, then close and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aioquic.asyncio
import moq
import pytest

from moqt_asgi import Client, MoQError, Server, ServerClosed, TLSConfig, TLSConfigError, dial

from .conftest import Certs
from .helpers import WAIT, eventually, read_tick, tick_app
from .test_lifecycle import no_leaks

pytestmark = pytest.mark.slow



def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


async def moqrs_reads_clock(url: str, fingerprint: str) -> bytes:
    async with moq.Client(url, tls_fingerprints=[fingerprint], reconnect=False, websocket_enabled=False) as peer:
        broadcast = await asyncio.wait_for(peer.announced_broadcast("clock"), WAIT)
        track = await broadcast.subscribe_track("seconds")
        group = await asyncio.wait_for(track.next_group(), WAIT)
        assert group is not None
        frame = await asyncio.wait_for(group.read_frame(), WAIT)
        assert frame is not None
        return bytes(frame.payload)


async def wait_for_sessions(server: Server, count: int) -> None:
    """Until ``server`` lists ``count`` sessions (its side may register a moment after the client's returns)."""
    await eventually(lambda: len(server.sessions) >= count, f"{count} session(s) on the server", interval=0.01)


@contextlib.asynccontextmanager
async def listening(server: Server, sock: socket.socket) -> AsyncIterator[asyncio.Task[None]]:
    """``server.serve_quic_listener(sock)`` running; yields its task (done once the server stopped)."""
    task = asyncio.ensure_future(server.serve_quic_listener(sock))
    try:
        async with asyncio.timeout(WAIT):
            while not server.sessions and not task.done():
                with contextlib.suppress(MoQError):
                    server.address  # noqa: B018
                    break
                await asyncio.sleep(0.01)
        if task.done():
            task.result()
        yield task
    finally:
        if not task.done():
            await server.close()
        await asyncio.wait_for(task, WAIT)


# -- serve_quic_listener
@pytest.mark.parametrize("scheme", ["moql", "https"])
async def test_serve_quic_listener_with_our_client_then_close(certs: Certs, scheme: str) -> None:
    async with no_leaks():
        sock = udp_socket()
        server = Server(tls=TLSConfig(certfile=certs.cert, keyfile=certs.key), handler=tick_app())
        async with listening(server, sock) as serving:
            assert server.address == ("127.0.0.1", port_of(sock))
            client = Client(fingerprint=certs.fingerprint)
            session = await client.dial(f"{scheme}://127.0.0.1:{port_of(sock)}/")
            assert await read_tick(session) == b"tick"
            await wait_for_sessions(server, 1)
            assert await server.close() is True
            closed = await asyncio.wait_for(session.wait_closed(), WAIT)
            assert closed.remote and closed.code == 0
            await asyncio.wait_for(serving, WAIT)  # serve_quic_listener returns once the server is closed
            await client.close()
        assert sock.fileno() == -1  # the server owned the socket and closed it


@pytest.mark.interop
async def test_serve_quic_listener_with_moqrs_then_shutdown(certs: Certs) -> None:
    async with no_leaks(fds_too=False):
        sock = udp_socket()
        port = port_of(sock)
        server = Server(certfile=str(certs.cert), keyfile=str(certs.key), handler=tick_app())
        async with listening(server, sock) as serving:
            for scheme in ("moql", "https"):
                assert await moqrs_reads_clock(f"{scheme}://127.0.0.1:{port}/", certs.fingerprint) == b"tick"
            ours = await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint)
            assert await read_tick(ours) == b"tick"
            await wait_for_sessions(server, 1)

            async def leave_on_goaway() -> str:
                uri = await ours.wait_goaway()
                await ours.aclose()
                return uri

            leaving = asyncio.ensure_future(leave_on_goaway())
            assert await server.shutdown(5.0, uri="moql://elsewhere:4433/") is True  # no session left to force
            assert await asyncio.wait_for(leaving, WAIT) == "moql://elsewhere:4433/"
            await asyncio.wait_for(serving, WAIT)
        assert server.closed and sock.fileno() == -1
        with pytest.raises(MoQError, match=r"could not connect|no session"):  # nobody serves that port any more
            await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint, setup_timeout=1)


async def test_one_more_listener_on_a_serving_server(certs: Certs) -> None:
    async with no_leaks():
        mine = udp_socket()
        server = Server(addr="127.0.0.1:0", tls=TLSConfig(certfile=certs.cert, keyfile=certs.key),
                        handler=tick_app())
        await server.start()
        first = server.address
        extra = udp_socket()
        async with listening(server, extra.dup()):  # a duplicate: the server closes it, ``extra`` stays ours
            assert server.address == first  # still the first listener's
            sessions = [await dial(f"https://127.0.0.1:{port}/", fingerprint=certs.fingerprint)
                        for port in (first[1], port_of(extra))]
            for session in sessions:
                assert await read_tick(session) == b"tick"
            await wait_for_sessions(server, 2)
            assert await server.close() is True
            for session in sessions:
                await asyncio.wait_for(session.wait_closed(), WAIT)
        assert extra.fileno() != -1
        extra.close()
        with pytest.raises(ServerClosed):  # a closed server takes no socket, and closes it
            await server.serve_quic_listener(mine)
        assert mine.fileno() == -1


async def test_bad_sockets_and_bad_tls_are_refused_and_closed(certs: Certs) -> None:
    async with no_leaks():
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        unbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sock, message in ((tcp, "needs a UDP socket"), (unbound, "not bound")):
            server = Server(tls=TLSConfig(certfile=certs.cert, keyfile=certs.key), handler=tick_app())
            with pytest.raises(MoQError, match=message):
                await server.serve_quic_listener(sock)
            assert sock.fileno() == -1
            assert await server.close() is True  # lifespan ended, nothing left
        sock = udp_socket()
        server = Server(tls=TLSConfig(certfile=certs.cert), handler=tick_app())
        with pytest.raises(TLSConfigError, match="set keyfile"):
            await server.serve_quic_listener(sock)
        assert sock.fileno() == -1


# -- aioquic's own serve()
@pytest.mark.interop
async def test_aioquic_serve_with_our_arguments(certs: Certs) -> None:
    async with no_leaks(fds_too=False):
        server = Server(tls=TLSConfig(certfile=certs.cert, keyfile=certs.key), handler=tick_app())
        arguments = await server.quic_serve_arguments()
        assert set(arguments) == {"configuration", "create_protocol", "session_ticket_fetcher",
                                  "session_ticket_handler"}
        listener = await aioquic.asyncio.serve("127.0.0.1", 0, **arguments)
        try:
            port = int(listener._transport.get_extra_info("sockname")[1])
            with pytest.raises(MoQError, match="no connection"):
                server.address  # noqa: B018
            assert await moqrs_reads_clock(f"moql://127.0.0.1:{port}/", certs.fingerprint) == b"tick"
            assert server.address == ("127.0.0.1", port)
            sessions = [await dial(f"{scheme}://127.0.0.1:{port}/", fingerprint=certs.fingerprint)
                        for scheme in ("moql", "https")]
            for session in sessions:
                assert await read_tick(session) == b"tick"
            await wait_for_sessions(server, 2)
            assert await server.close() is True
            for session in sessions:
                closed = await asyncio.wait_for(session.wait_closed(), WAIT)
                assert closed.code == 0
            with pytest.raises(MoQError, match="shutting down"):  # aioquic still listens; we refuse
                await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint, setup_timeout=WAIT)
        finally:
            listener.close()  # the aioquic server is the caller's

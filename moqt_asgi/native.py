"""Native QUIC entrypoints: a server for a :class:`~.app.MoQ` app and a client dialer.

ALPN ``moql`` carries moq-lite with the version chosen in SETUP (lite-02,
then lite-01).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.server import QuicServer as AioquicServer
from aioquic.asyncio.server import serve as quic_serve
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives import serialization

from .app import MoQ
from .handshake import client_setup
from .mux import TrackMux
from .protocol.errors import ErrorCode, MoQError, SessionClosed
from .protocol.limits import DEFAULT_LIMITS, Limits
from .protocol.versions import ALPN_LITE, SETUP_VERSIONS, Version
from .serving import serve_connection
from .session import Session
from .transport.quic import QuicProtocol, QuicTransport

logger = logging.getLogger("moqt_asgi.native")

NATIVE_SCHEMES = ("moql", "moqt")


@dataclass
class QuicSettings:
    """QUIC knobs shared by server and client."""

    idle_timeout: float = 30.0
    max_datagram_frame_size: int | None = 65536
    max_data: int = 16 * 1024 * 1024
    max_stream_data: int = 4 * 1024 * 1024

    def configuration(self, *, is_client: bool, alpn: list[str]) -> QuicConfiguration:
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=alpn,
            idle_timeout=self.idle_timeout,
            max_datagram_frame_size=self.max_datagram_frame_size,
            max_data=self.max_data,
            max_stream_data=self.max_stream_data,
        )


class QuicServer:
    """Serves a :class:`MoQ` app over native QUIC on one UDP port."""

    def __init__(self, app: MoQ, *, host: str = "127.0.0.1", port: int = 4433, certfile: str, keyfile: str,
                 quic: QuicSettings | None = None, setup_timeout: float = 10.0,
                 versions: tuple[Version, ...] = SETUP_VERSIONS, log: logging.Logger = logger) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self.quic = quic or QuicSettings()
        self.setup_timeout = setup_timeout
        self.versions = versions
        self.log = log
        self._server: AioquicServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise MoQError("server is not started")
        transport = self._server._transport
        assert transport is not None
        sockname = transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    async def start(self) -> None:
        configuration = self.quic.configuration(is_client=False, alpn=[ALPN_LITE])
        configuration.load_cert_chain(self.certfile, self.keyfile)
        create_protocol = functools.partial(QuicProtocol, on_handshake=self._on_handshake, limits=self.app.limits)
        self._server = await quic_serve(self.host, self.port, configuration=configuration,
                                        create_protocol=create_protocol)
        self.log.info("serving MoQ on moql://%s:%d", *self.address)

    def _on_handshake(self, transport: QuicTransport) -> None:
        if transport.alpn != ALPN_LITE:
            self.log.info("closing connection with unsupported ALPN %r", transport.alpn)
            transport.close(ErrorCode.VERSION, "unsupported ALPN")
            return
        task = asyncio.get_running_loop().create_task(
            serve_connection(self.app, transport, transport="quic", versions=self.versions,
                             setup_timeout=self.setup_timeout, log=self.log))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and close every connection now."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def __aenter__(self) -> QuicServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def parse_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path_and_query)``; the port is required."""
    parts = urlsplit(url)
    if parts.scheme not in (*NATIVE_SCHEMES, "https"):
        raise MoQError(f"unsupported URL scheme {parts.scheme!r}: use moql://, moqt:// or https://")
    if not parts.hostname:
        raise MoQError(f"URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise MoQError(f"URL {url!r} has an invalid port: {exc}") from None
    if port is None:
        raise MoQError(f"URL {url!r} has no port (MoQ has no default port): add ':PORT'")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target


def _check_fingerprint(protocol: QuicProtocol, expected: str) -> None:
    cert = protocol._quic.tls._peer_certificate
    if cert is None:
        raise MoQError("server sent no certificate")
    actual = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if actual != expected.lower().replace(":", ""):
        raise MoQError(f"server certificate fingerprint {actual} does not match the pinned {expected}")


async def dial_quic(url: str, *, mux: TrackMux | None = None, fingerprint: str | None = None,
                    insecure: bool = False, cafile: str | None = None, quic: QuicSettings | None = None,
                    limits: Limits = DEFAULT_LIMITS, setup_timeout: float = 10.0,
                    versions: tuple[Version, ...] = SETUP_VERSIONS,
                    log: logging.Logger = logger) -> Session:
    """Connect to ``moql://host:port/path`` and set up a session (already running)."""
    scheme, host, port, target = parse_url(url)
    if scheme not in NATIVE_SCHEMES:
        raise MoQError(f"{scheme}:// needs the WebTransport client")
    configuration = (quic or QuicSettings()).configuration(is_client=True, alpn=[ALPN_LITE])
    configuration.server_name = host
    if fingerprint or insecure:
        configuration.verify_mode = ssl.CERT_NONE
    elif cafile:
        configuration.load_verify_locations(cafile)
    stack = contextlib.AsyncExitStack()
    try:
        async with asyncio.timeout(setup_timeout):
            protocol_factory: Callable[..., Any] = functools.partial(QuicProtocol, limits=limits)
            protocol = await stack.enter_async_context(
                quic_connect(host, port, configuration=configuration, create_protocol=protocol_factory))
            assert isinstance(protocol, QuicProtocol)
            if fingerprint:
                _check_fingerprint(protocol, fingerprint)
            transport = protocol.moq_transport
            codec, stream, reader = await client_setup(transport, limits, path=target, versions=versions,
                                                       timeout=setup_timeout)
    except TimeoutError:
        await stack.aclose()
        raise MoQError(f"no session with {url} within {setup_timeout:.1f}s") from None
    except ConnectionError as exc:
        await stack.aclose()
        raise MoQError(f"could not connect to {url}: {exc}") from None
    except BaseException:
        await stack.aclose()
        raise
    session = Session(transport, codec, mux=mux, limits=limits, is_client=True, path=target,
                      session_stream=(stream, reader), logger_=log, timeout=setup_timeout)
    session.add_cleanup(stack.aclose)
    session.start()
    log.info("session established with %s using %s", url, codec.name)
    return session


__all__ = ["QuicServer", "QuicSettings", "SessionClosed", "dial_quic", "parse_url"]

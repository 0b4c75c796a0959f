"""Command line: ``python -m moqt_asgi serve|sub|pub|publish|record|cert``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from .app import MoQ
from .client import dial
from .endpoints.certs import write_certificate
from .engine.mux import TrackMux
from .engine.session import Session
from .load import LoadMonitor
from .media import cli as media_cli
from .metrics import metrics_app
from .producer import Broadcast
from .protocol.errors import MoQError
from .protocol.versions import ALL_VERSIONS, DEFAULT_VERSIONS, Version
from .server import Server
from .transport.settings import BACKENDS, QuicSettings


def load_app(target: str) -> MoQ:
    """Import ``module:attribute`` and return the app object."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"expected MODULE:APP, got {target!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    module = importlib.import_module(module_name)
    app: Any = module
    for part in attribute.split("."):
        app = getattr(app, part)
    if not isinstance(app, MoQ):
        raise SystemExit(f"{target} is a {type(app).__name__}, not a moqt_asgi.MoQ app")
    return app


FORCE_EXIT_MARGIN = 2.0
"""Seconds after a second signal (or after ``--graceful-timeout``) before the process exits whatever runs."""


def _force_exit(why: str) -> None:
    """Exit now (status 1), after flushing logs: the stop did not finish in time (an app ignoring cancellation)."""
    logging.getLogger("moqt_asgi.cli").error("stopping did not finish in time after %s; exiting now", why)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def printable(text: str) -> str:
    """``text`` with control and format characters escaped (``\\x1b``...), so a peer cannot drive the terminal."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == "\t":
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _host_port(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--bind must be HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


async def _serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT: the first runs ``shutdown(--graceful-timeout)``, a second forces ``close()``."""
    app = load_app(args.app)
    if args.max_loop_lag is not None:
        app.load_monitor = LoadMonitor(args.max_loop_lag)
    host, port = _host_port(args.bind)
    server = Server(addr=f"{host}:{port}", certfile=args.certfile, keyfile=args.keyfile, handler=app,
                    webtransport=not args.no_webtransport, versions=args.versions, quic=quic_settings(args),
                    tcp=not args.no_tcp)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[bool]] = []

    log = logging.getLogger("moqt_asgi.cli")

    def on_signal() -> None:
        if not stopping:
            log.warning("shutting down (up to %.1fs; signal again to stop now)", args.graceful_timeout)
            stopping.append(loop.create_task(server.shutdown(args.graceful_timeout)))
            # Whatever the application does, the process is gone a little after its grace.
            loop.call_later(args.graceful_timeout + FORCE_EXIT_MARGIN, _force_exit, "the graceful timeout ran out")
        else:
            stopping.append(server.close())
            loop.call_later(FORCE_EXIT_MARGIN, _force_exit, "a second signal")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await server.start()
        authority = f"{server.address[0]}:{server.address[1]}"
        also = "" if args.no_webtransport else f" and https://{authority}/ (WebTransport)"
        tcp = "" if args.no_tcp else f"; on TCP http://{authority}/ and ws://{authority}/ (plain or TLS)"
        print(f"serving {args.app} on moql://{authority}/{also}{tcp}", flush=True)
        if args.metrics_bind:
            metrics_host, metrics_port = await server.serve_tcp(args.metrics_bind, metrics_app(app))
            print(f"metrics on http://{metrics_host}:{metrics_port}/metrics", flush=True)
        await server.listen_and_serve()
        await asyncio.gather(*stopping, return_exceptions=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if not server.closed:
            await server.close()


async def _dial(args: argparse.Namespace, mux: TrackMux | None = None) -> Session:
    headers = [("origin", args.origin)] if args.origin else []
    return await dial(args.url, mux=mux, fingerprint=args.fingerprint, insecure=args.insecure, cafile=args.cafile,
                      headers=headers, versions=args.versions or DEFAULT_VERSIONS)


async def _sub(args: argparse.Namespace) -> None:
    session = await _dial(args)
    async with session:
        announcements = await session.announced(args.broadcast)
        if args.broadcast not in announcements.active and not args.no_wait:
            async for announcement in announcements:
                if announcement.path == args.broadcast:
                    break
        announcements.close()
        track = await session.subscribe(args.broadcast, args.track)
        count = 0
        async for frame in track.frames():
            if args.raw:
                sys.stdout.buffer.write(frame + b"\n")
            else:
                sys.stdout.write(printable(frame.decode("utf-8", "replace")) + "\n")
            sys.stdout.flush()
            count += 1
            if args.count and count >= args.count:
                break


async def _pub(args: argparse.Namespace) -> None:
    broadcast = Broadcast(args.broadcast)
    track = broadcast.create_track(args.track)
    mux = TrackMux()
    mux.publish(args.broadcast, broadcast)
    session = await _dial(args, mux)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with session:
        while line := await reader.readline():
            track.write_frame(line.rstrip(b"\n"))
        track.finish()
        await asyncio.sleep(args.linger)


def _cert(args: argparse.Namespace) -> None:
    hosts = tuple(args.host) if args.host else ("localhost", "127.0.0.1")
    cert, key, fingerprint = write_certificate(args.out, hosts=hosts, days=args.days)
    print(f"certificate: {cert}\nkey: {key}\nsha256: {fingerprint}")


def parse_versions(value: str) -> tuple[Version, ...]:
    """``moq-lite-06,moq-lite-02`` (names as in ``--help``) to versions."""
    by_name = {v.name: v for v in ALL_VERSIONS}
    chosen = []
    for name in (part.strip() for part in value.split(",") if part.strip()):
        if name not in by_name:
            raise argparse.ArgumentTypeError(f"unknown version {name!r}; known: {', '.join(by_name)}")
        chosen.append(by_name[name])
    if not chosen:
        raise argparse.ArgumentTypeError("no version given")
    return tuple(chosen)


VERSIONS_HELP = "comma-separated versions to allow (default all: " + ", ".join(v.name for v in ALL_VERSIONS) + ")"


QUIC_FLAGS: tuple[tuple[str, Callable[[str], object], str], ...] = (
    ("stream_receive_window", int, "bytes a peer may send on a stream beyond what was read (default 1 MiB)"),
    ("connection_receive_window", int, "bytes a peer may send on a connection beyond what was read (default 16 MiB)"),
    ("max_connections", lambda v: None if v.lower() == "none" else int(v), "connections at once, or 'none' (4096)"),
    ("max_connections_per_address", lambda v: None if v.lower() == "none" else int(v),
     "connections at once from one IP address, or 'none' (256)"),
    ("retry", lambda v: {"auto": "auto", "always": True, "never": False}[v.lower()],
     "validate client addresses with a Retry: auto (under load), always, never"),
    ("retry_threshold", int, "pending handshakes from which 'auto' sends Retry (100)"),
    ("handshake_timeout", float, "seconds a connection has to complete its handshake (10)"),
    ("header_timeout", float, "seconds an HTTP/3 request has to send its HEADERS (10)"),
    ("max_webtransport_sessions", int, "WebTransport sessions per HTTP/3 connection (16)"),
    ("max_datagram_size", int, "largest UDP payload sent (default 1200 on aioquic, 1280 on qh3); larger only on "
                               "paths known to carry it, e.g. 1452 on a 1500-byte MTU"),
)
"""``serve`` flags for :class:`QuicSettings` fields; unset ones come from ``MOQT_*`` variables, then the defaults."""


def quic_settings(args: argparse.Namespace) -> QuicSettings:
    """The QUIC settings ``serve`` runs with: ``MOQT_*`` environment variables, overridden by flags."""
    base = QuicSettings.from_environment()
    chosen = {name: getattr(args, name) for name, _, _ in QUIC_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "backend", None) is not None:
        chosen["backend"] = args.backend
    try:
        return dataclasses.replace(base, **chosen) if chosen else base
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moqt_asgi", description="Media over QUIC (moq-lite) tools")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve an app on one port number: native QUIC (moql) and WebTransport "
                                              "(h3) on UDP, HTTP/1.1 and WebSocket on TCP")
    serve.add_argument("app", help="MODULE:APP, e.g. examples.clock:moq")
    serve.add_argument("--bind", default="127.0.0.1:4433", help="HOST:PORT (UDP)")
    serve.add_argument("--no-webtransport", action="store_true", help="offer only ALPN moql (no HTTP/3)")
    serve.add_argument("--no-tcp", action="store_true",
                       help="do not listen on TCP at the port's number (HTTP/1.1 for /certificate.sha256 and "
                            "the other endpoints, WebSocket; plain and TLS)")
    serve.add_argument("--metrics-bind", metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (keep it internal)")
    serve.add_argument("--max-loop-lag", type=float, default=None, metavar="SECONDS",
                       help="refuse new sessions (503) while the event loop runs this late, smoothed (e.g. 0.1); "
                            "admitted sessions go on")
    serve.add_argument("--certfile", required=True)
    serve.add_argument("--keyfile", required=True)
    serve.add_argument("--versions", type=parse_versions, default=None, help=VERSIONS_HELP)
    serve.add_argument("--graceful-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="on SIGTERM/SIGINT: GOAWAY, then wait this long before closing sessions (default 5); "
                            "a second signal stops at once")
    serve.add_argument("--quic-backend", dest="backend", choices=BACKENDS, default=None,
                       help="QUIC stack of the UDP port: aioquic (default), qh3 (faster; native QUIC only, so with "
                            "--no-webtransport) or auto (also MOQT_QUIC_BACKEND)")
    limits = serve.add_argument_group("connection limits (also MOQT_<NAME> environment variables)")
    for name, kind, text in QUIC_FLAGS:
        limits.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)

    def client_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("url", help="moql://host:port/path (native QUIC), https://host:port/path (WebTransport, "
                                         "with a WebSocket fallback) or ws[s]://host:port/path (WebSocket)")
        command.add_argument("broadcast")
        command.add_argument("track")
        command.add_argument("--fingerprint", help="pin the server certificate by its SHA-256 (hex)")
        command.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
        command.add_argument("--cafile", help="trust this CA bundle")
        command.add_argument("--origin", help="Origin header of the WebTransport CONNECT or the WebSocket upgrade "
                                              "(https://, ws:// and wss://)")
        command.add_argument("--versions", type=parse_versions, default=None, help=VERSIONS_HELP)

    sub = commands.add_parser("sub", help="print each frame of a track as a line")
    client_options(sub)
    sub.add_argument("--count", type=int, default=0, help="exit after this many frames")
    sub.add_argument("--no-wait", action="store_true", help="subscribe without waiting for the announcement")
    sub.add_argument("--raw", action="store_true",
                     help="write frames as they are (default: control characters are escaped)")

    pub = commands.add_parser("pub", help="publish each line of stdin as a frame")
    client_options(pub)
    pub.add_argument("--linger", type=float, default=0.5, help="seconds to stay connected after stdin ends")

    media_publish = commands.add_parser("publish", help="publish fragmented MP4 (a file, or ffmpeg on stdin) as a "
                                                         "hang broadcast")
    media_record = commands.add_parser("record", help="record a hang broadcast to a fragmented MP4 file")
    for media_command in (media_publish, media_record):
        media_command.add_argument("url", help="moql://host:port/path (native QUIC) or https://host:port/path")
        media_command.add_argument("broadcast", help="the broadcast name, e.g. room/alice.hang")
        media_command.add_argument("--fingerprint", help="pin the server certificate by its SHA-256 (hex)")
        media_command.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
        media_command.add_argument("--cafile", help="trust this CA bundle")
        media_command.add_argument("--origin", help="Origin header for the WebTransport CONNECT (https:// only)")
        media_command.add_argument("--versions", type=parse_versions, default=None, help=VERSIONS_HELP)
    media_cli.add_arguments(media_publish, media_record)

    cert = commands.add_parser("cert", help="write a self-signed ECDSA certificate (≤ 14 days)")
    cert.add_argument("--out", required=True, help="directory for cert.pem and key.pem")
    cert.add_argument("--host", action="append", help="DNS name or IP (repeatable); default localhost, 127.0.0.1")
    cert.add_argument("--days", type=int, default=10)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "cert":
            _cert(args)
        elif args.command == "serve":
            asyncio.run(_serve(args))
        elif args.command == "sub":
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_sub(args))
        elif args.command == "pub":
            asyncio.run(_pub(args))
        elif args.command in ("publish", "record"):
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run((media_cli.publish if args.command == "publish" else media_cli.record)(args, _dial))
    except MoQError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

"""The relays :mod:`benchmarks.fanout` measures, each in a process of its own, and what ``/proc`` says about them.

Five kinds, all on 127.0.0.1 with the same certificate:

* ``serve-quic``: ``python -m moqt_asgi serve examples.relay:moq``, reached
  over native QUIC (``moql://``);
* ``serve-quic-qh3``: the same command with ``--quic-backend qh3
  --no-webtransport`` (qh3's Rust QUIC core), native QUIC;
* ``serve-wt``: the same command, reached over WebTransport (``https://``);
* ``hypercorn``: stock ``hypercorn examples.relay:moq --quic-bind ...``,
  WebTransport;
* ``moq-rs``: moq-rs's own relay, a ``moq.Server`` whose sessions publish into
  and consume from one ``moq.OriginProducer`` (see ``_fanout_peer.relay``).

Every peer connects from 127.0.0.1, so the Python relays run with
``MOQT_MAX_CONNECTIONS_PER_ADDRESS=none`` (read by ``serve`` and by the
Hypercorn hooks alike); everything else is the default, except that
``serve`` and Hypercorn are given ``--graceful-timeout 0``: their graceful
stop after a point is not measured, and would hold every point up for 3-5 s.
A server can be pinned to a set of CPU cores (``sched_setaffinity`` in the
child before it starts, so every thread it makes inherits it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REPOSITORY = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APP = "examples.relay:moq"
START_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVER_ENVIRONMENT = {"MOQT_MAX_CONNECTIONS_PER_ADDRESS": "none"}
"""Every peer comes from 127.0.0.1: ``serve`` and the Hypercorn hooks read their connection limits from here."""
PAGE = 1024


@dataclass(frozen=True)
class ServerKind:
    key: str
    label: str
    scheme: str
    """``moql`` (native QUIC) or ``https`` (WebTransport)."""
    options: tuple[str, ...] = ()
    """Arguments added to ``python -m moqt_asgi serve ...`` (read by the ``serve-*`` kinds only)."""


SERVE_STOP = ("--graceful-timeout", "0")
"""The graceful stop of ``serve`` (GOAWAY, then up to 5 s for sessions to leave) and Hypercorn (3 s) is not what is
measured; both take the same option."""

KINDS = {
    kind.key: kind for kind in (
        ServerKind("serve-quic", "moqt-asgi serve, native QUIC", "moql"),
        ServerKind("serve-quic-qh3", "moqt-asgi serve --quic-backend qh3 --no-webtransport, native QUIC", "moql",
                   ("--quic-backend", "qh3", "--no-webtransport")),
        ServerKind("serve-wt", "moqt-asgi serve, WebTransport", "https"),
        ServerKind("hypercorn", "moqt-asgi on Hypercorn, WebTransport", "https"),
        ServerKind("moq-rs", "moq-rs relay, native QUIC", "moql"),
    )
}


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def process_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` spent runnable but waiting for a CPU (``/proc/PID/task/*/schedstat``)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def process_rss(pid: int) -> int:
    """``VmRSS`` of ``pid`` in bytes (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * PAGE
    return 0


def udp_receive_drops() -> int:
    """Datagrams this machine dropped so far because a socket's receive buffer was full (``RcvbufErrors``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
        names, values = rows[0], rows[1]
        return int(values[names.index("RcvbufErrors")])
    return 0


def socket_drops(port: int) -> int:
    """Datagrams dropped so far by the UDP sockets bound to ``port`` (the ``drops`` column of ``/proc/net/udp``)."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                with contextlib.suppress(IndexError, ValueError):
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        total += int(fields[-1])
    return total


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Hypercorn serves from a worker process it spawns)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue += children.get(current, [])
    return found


def pinned(cores: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cores`` (None: no pinning)."""
    if not cores:
        return None
    chosen = set(cores)

    def pin() -> None:
        os.sched_setaffinity(0, chosen)

    return pin


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def udp_port_bound(port: int) -> bool:
    """True once something listens on UDP ``127.0.0.1:port`` (a bind without SO_REUSEADDR then fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def open_log(path: Path) -> BinaryIO:
    """``path`` opened for appending: a child process's stderr."""
    return open(path, "ab")


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class RunningServer:
    """A relay process: its address, and its CPU time and resident set read from ``/proc``."""

    def __init__(self, kind: ServerKind, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.kind = kind
        self.process = process
        self.pid = process.pid
        self.port = port
        self.log = log
        self._last_cpu = 0.0
        self._drain = asyncio.ensure_future(self._drain_stdout())

    @property
    def url(self) -> str:
        return f"{self.kind.scheme}://{HOST}:{self.port}/"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and process_cpu(self.pid) is not None

    def cpu(self) -> float:
        """CPU seconds so far of the server and its child processes (the last value read once it is gone)."""
        values = [process_cpu(pid) for pid in descendants(self.pid)]
        if values[0] is not None:
            self._last_cpu = sum(value for value in values if value is not None)
        return self._last_cpu

    def waited(self) -> float:
        """Seconds the server (its child processes included) was ready to run but another process had its core."""
        return sum(process_wait(pid) for pid in descendants(self.pid))

    def drops(self) -> int:
        """Datagrams the server's socket dropped so far because its receive buffer was full."""
        return socket_drops(self.port)

    def rss(self) -> int:
        """Resident bytes of the server and its child processes."""
        return sum(process_rss(pid) for pid in descendants(self.pid))

    async def _drain_stdout(self) -> None:
        if self.process.stdout is None:
            return
        with contextlib.suppress(Exception):
            while await self.process.stdout.read(65536):
                pass

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds (the relays' graceful stop is not what is measured)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 8)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        self._drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain


def command(kind: ServerKind, certfile: Path, keyfile: Path, port: int) -> list[str]:
    """The command line that serves ``kind`` (``port`` is used by Hypercorn, which cannot report one it chose)."""
    cert = ["--certfile", str(certfile), "--keyfile", str(keyfile)]
    if kind.key.startswith("serve-"):
        return [sys.executable, "-m", "moqt_asgi", "serve", APP, "--bind", f"{HOST}:0", *cert, *SERVE_STOP,
                *kind.options]
    if kind.key == "hypercorn":
        return [sys.executable, "-m", "hypercorn", APP, "--quic-bind", f"{HOST}:{port}", "--bind",
                f"{HOST}:{free_tcp_port()}", *cert, *SERVE_STOP]
    if kind.key == "moq-rs":
        return [sys.executable, "-m", "benchmarks._fanout_peer", "relay", "--bind", f"{HOST}:0", *cert]
    raise ValueError(f"unknown server kind {kind.key!r}")


LISTENING = re.compile(rb"(?:moql://[^\s/]*:|listening \S*:)(\d+)")
"""The port in ``serve``'s ``serving APP on moql://HOST:PORT/`` or the moq-rs relay's ``listening HOST:PORT``."""


async def spawn_listening(argv: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path,
                          pattern: re.Pattern[bytes] = LISTENING, timeout: float = START_TIMEOUT,
                          stdin: int = subprocess.DEVNULL, cores: set[int] | None = None,
                          what: str = "the process") -> tuple[asyncio.subprocess.Process, int]:
    """Start ``argv`` (stderr appended to ``log``) and return it with the port its first stdout line names.

    ``pattern``'s first group is the port. A process that prints something
    else, or nothing within ``timeout`` seconds, is killed and a
    :class:`RuntimeError` quotes its log.
    """
    with open_log(log) as errors:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=errors, preexec_fn=pinned(cores))
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
    except TimeoutError:
        line = b""
    found = pattern.search(line)
    if found is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise RuntimeError(f"{what} did not start ({line!r}); its log: {log}\n{tail(log)}")
    return process, int(found.group(1))


async def start_server(kind: ServerKind, *, certfile: Path, keyfile: Path, log: Path,
                       cores: set[int] | None = None, root: Path = REPOSITORY,
                       extra: Sequence[str] = ()) -> RunningServer:
    """Start ``kind`` on a free port of 127.0.0.1 and return once it listens.

    ``root`` is the copy of the project the Python relays are served from
    (the moq-rs relay always runs this checkout's ``_fanout_peer``).
    """
    port = free_udp_port()
    if kind.key == "moq-rs":
        root = REPOSITORY
    environment = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1", **SERVER_ENVIRONMENT}
    argv = [*command(kind, certfile, keyfile, port), *extra]
    if kind.key != "hypercorn":
        process, port = await spawn_listening(argv, cwd=root, env=environment, log=log, cores=cores, what=kind.label)
        return RunningServer(kind, process, port, log)
    with open_log(log) as errors:  # Hypercorn says nothing of its QUIC port: wait until it is bound
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=root, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
            preexec_fn=pinned(cores))
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not udp_port_bound(port):
                if process.returncode is not None:
                    raise RuntimeError("hypercorn exited")
                await asyncio.sleep(0.05)
    except (TimeoutError, RuntimeError) as exc:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise RuntimeError(f"{kind.label} did not start ({exc!r}); its log: {log}\n{tail(log)}") from None
    return RunningServer(kind, process, port, log)

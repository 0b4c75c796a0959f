"""The attacked server, for :mod:`benchmarks.attacks`: a ``python -m moqt_asgi serve`` process and its memory.

:class:`ServerProcess` starts the CLI on a free UDP port of 127.0.0.1 and
reads the process's resident set (``VmRSS``), its peak (``VmHWM``, which
:meth:`ServerProcess.reset_peak` restarts from the current size) and its
CPU time (user + system, from ``/proc/<pid>/stat``). :class:`Monitor`
samples the resident set from a thread while an attack runs and kills the
server if it passes a ceiling, so that an attack on code without the bounds
cannot take the machine down. :func:`code_at` unpacks another revision of
the project, to serve it instead of the checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._attack_common import HOST, KIB
from ._fanout_servers import spawn_listening

REPOSITORY = Path(__file__).resolve().parent.parent
"""The checkout this package lives in: the code served unless another revision is asked for."""
SERVING = re.compile(rb"serving \S+ on moql://[^\s]*:(\d+)/")
START_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in bytes (empty once it is gone)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * KIB
    return values


def _cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


class ServerProcess:
    """One ``python -m moqt_asgi serve APP`` on 127.0.0.1, from ``root`` (a checkout of the project)."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.port = port
        self.log = log
        self._last_cpu = 0.0
        self._drain = asyncio.ensure_future(self._drain_stdout())

    @classmethod
    async def start(cls, app: str, *, certfile: Path, keyfile: Path, root: Path = REPOSITORY,
                    app_dir: Path | None = None, args: Sequence[str] = (), log: Path) -> ServerProcess:
        environment = dict(os.environ)
        paths = [str(path) for path in (root, app_dir) if path is not None]
        environment["PYTHONPATH"] = os.pathsep.join(paths)
        environment["PYTHONUNBUFFERED"] = "1"
        process, port = await spawn_listening(
            [sys.executable, "-m", "moqt_asgi", "serve", app, "--bind", f"{HOST}:0", "--certfile", str(certfile),
             "--keyfile", str(keyfile), *args], cwd=root, env=environment, log=log, pattern=SERVING,
            timeout=START_TIMEOUT, what="the server")
        return cls(process, port, log)

    async def _drain_stdout(self) -> None:
        assert self.process.stdout is not None
        with contextlib.suppress(Exception):
            while await self.process.stdout.read(65536):
                pass

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and bool(_status(self.pid))

    def rss(self) -> int:
        return _status(self.pid).get("VmRSS", 0)

    def peak(self) -> int:
        return _status(self.pid).get("VmHWM", 0)

    def cpu(self) -> float:
        """CPU seconds so far (the last value read once the process is gone)."""
        value = _cpu(self.pid)
        if value is not None:
            self._last_cpu = value
        return self._last_cpu

    def reset_peak(self) -> None:
        """Restart ``VmHWM`` from the current resident set (Linux: 5 to ``clear_refs``)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM (a graceful stop of at most a few seconds), then SIGKILL."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.kill()
                await self.process.wait()
        self._drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain


class Monitor:
    """Samples a server's resident set every ``interval`` seconds from a thread; kills it above ``ceiling`` bytes."""

    def __init__(self, server: ServerProcess, ceiling: int, interval: float = 0.02) -> None:
        self.server = server
        self.ceiling = ceiling
        self.interval = interval
        self.highest = server.rss()
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attack-monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.server.rss()
            self.server.cpu()  # keeps the last value should the process go
            self.highest = max(self.highest, rss)
            if rss > self.ceiling and not self.killed:
                self.killed = True
                self.server.kill()
            self._stop.wait(self.interval)


@contextlib.contextmanager
def code_at(revision: str) -> Iterator[tuple[Path, str]]:
    """The project at ``revision``, unpacked into a temporary directory: ``(its root, the short commit)``."""
    commit = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "--short", f"{revision}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", "--format=tar", commit],
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix=f"moqt-asgi-{commit}-") as directory:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                tar.extractall(directory, filter="data")
            else:  # pragma: no cover - our own repository's archive
                tar.extractall(directory)
        root = Path(directory)
        check = subprocess.run([sys.executable, "-c", "import moqt_asgi; print(moqt_asgi.__file__)"], cwd=root,
                               env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
        if not Path(check.stdout.strip()).resolve().is_relative_to(root.resolve()):
            raise RuntimeError(f"moqt_asgi at {revision} is not imported from its own tree: {check.stdout.strip()}")
        yield root, commit


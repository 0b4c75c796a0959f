"""Where a relay's time goes during a fan-out window: py-spy samples of the server process, summarised.

:func:`record` runs ``py-spy record --format raw --nonblocking
--subprocesses`` on a Python server (Hypercorn's worker process included)
for the window, from the load generators' cores so that the sampler does
not take the server's. py-spy samples only threads that are running, so
the samples are CPU time (except the event loop blocked in ``epoll_wait``,
which is left out); a C call (AEAD, ``sendto``) counts as the Python
function that made it. :func:`summarise` reads the collapsed stacks and
attributes each sample to its innermost frame: own time per function, and
the shares of moqt_asgi, aioquic, qh3 (its Python layer: calls into its
Rust core count there too), Hypercorn, asyncio and the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

from ._fanout_servers import RunningServer

RATE = 100
"""Samples a second."""
FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
AREAS = ("moqt_asgi/", "aioquic/", "qh3/", "hypercorn/", "asyncio/")
IDLE = {("select", "selectors.py")}
"""Innermost frames that are a thread waiting, not working: without ``--idle``, py-spy's ``--nonblocking`` mode
still reports the event loop blocked in ``epoll_wait``."""


def record(server: RunningServer, directory: Path | None, tag: str, duration: float) -> Awaitable[None] | None:
    """Start sampling ``server`` for ``duration`` seconds into ``directory/tag.txt`` (None: not asked, or moq-rs)."""
    if directory is None or server.kind.key == "moq-rs":
        return None
    executable = shutil.which("py-spy")
    if executable is None:
        raise RuntimeError("--py-spy needs py-spy (pip install py-spy)")
    output = directory / f"{tag}.txt"

    async def run() -> None:
        process = await asyncio.create_subprocess_exec(
            executable, "record", "--pid", str(server.pid), "--duration", str(max(1, round(duration))), "--rate",
            str(RATE), "--format", "raw", "--nonblocking", "--subprocesses", "--output", str(output),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await process.wait()

    return asyncio.ensure_future(run())


def area(filename: str) -> str:
    """Which part of the stack a file belongs to."""
    path = filename.replace("\\", "/")
    for marker in AREAS:
        if marker in path:
            return marker.rstrip("/")
    return "other (stdlib, builtins)"


def summarise(path: Path, top: int = 20) -> str:
    """Own time per area and per function, from one py-spy ``raw`` file."""
    functions: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            leaf = stack.rsplit(";", 1)[-1]
            found = FRAME.match(leaf)
            if found is None or not found.group("file"):  # --subprocesses' process frame: no Python frame
                idle["no Python frame"] += count
                continue
            name, filename = found.group("name"), found.group("file")
            if (name.rsplit(".", 1)[-1], Path(filename).name) in IDLE:
                idle["waiting in epoll"] += count
                continue
            where = filename.replace("\\", "/")
            for marker in AREAS:
                if marker in where:
                    where = marker + where.split(marker, 1)[1]
                    break
            functions[f"{name} ({where})"] += count
            areas[area(filename)] += count
            total += count
    if not total:
        return f"{path.name}: no busy samples"
    left_out = ", ".join(f"{count} {why}" for why, count in idle.items())
    lines = [f"{path.stem}: {total} busy samples at {RATE}/s (about {total / RATE:.1f} CPU-s)"
             + (f"; left out: {left_out}" if left_out else ""), "  own time by area:"]
    lines += [f"    {count / total * 100:5.1f}%  {name}" for name, count in areas.most_common()]
    lines.append("  functions by own time:")
    lines += [f"    {count / total * 100:5.1f}%  {name}" for name, count in functions.most_common(top)]
    return "\n".join(lines)


def print_summaries(directory: Path) -> None:
    for path in sorted(directory.glob("*.txt")):
        print()
        print(summarise(path))

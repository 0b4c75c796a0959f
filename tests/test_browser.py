"""Headless Chromium against the real ``hypercorn`` command line, over WebTransport.

* @moq/lite 0.2.2 and @moq/net 0.3.4 (npm, bundled with esbuild from ``tests/browser/``) subscribe
  to ``examples.clock:moq`` and post what they read back to the test.
* ``examples/embed.py``: the page Hypercorn serves over plain HTTP runs its own hand-written
  moq-lite-02 subscriber on the browser's ``WebTransport`` and shows the time.

Chromium, Node.js and npm must be installed (``.ci/run`` installs Chromium); a missing one fails
these tests rather than skipping them. ``npm ci`` and the bundle are cached in ``tests/browser/``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chromium import PageServer, chromium, serve_pages
from .conftest import ROOT, Certs
from .helpers import free_udp_port
from .wt_client import udp_port_bound

pytestmark = pytest.mark.browser

BROWSER_DIR = ROOT / "tests" / "browser"
TIMEOUT = 30  # seconds for any one wait; the page gives up by itself after 25


def run_npm(*args: str, timeout: float) -> None:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed for the browser tests (tests/browser/package.json)")
    result = subprocess.run([npm, *args], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"npm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def bundle() -> Path:
    """``npm ci`` when node_modules is missing or older than the lock file, then the esbuild bundle."""
    lock = BROWSER_DIR / "package-lock.json"
    installed = BROWSER_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        run_npm("ci", "--no-audit", "--no-fund", timeout=300)
    out = BROWSER_DIR / "dist" / "bundle.js"
    sources = [BROWSER_DIR / "entry.js", BROWSER_DIR / "package.json", installed]
    if not out.exists() or out.stat().st_mtime < max(source.stat().st_mtime for source in sources):
        run_npm("run", "--silent", "build", timeout=120)
    return out


PAGE_FILES = {"/index.html": (BROWSER_DIR / "index.html", "text/html; charset=utf-8"),
              "/dist/bundle.js": (BROWSER_DIR / "dist" / "bundle.js", "text/javascript; charset=utf-8")}


@pytest.fixture
def page_server(bundle: Path) -> Iterator[PageServer]:
    with serve_pages(PAGE_FILES, TIMEOUT) as server:
        yield server


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Hypercorn:
    """``hypercorn APP --quic-bind 127.0.0.1:Q --bind 127.0.0.1:T [--insecure-bind 127.0.0.1:H]`` from the repo root."""

    def __init__(self, app: str, certs: Certs, *, insecure: bool = False) -> None:
        self.quic_port = free_udp_port()
        self.http_port = free_tcp_port() if insecure else None
        executable = shutil.which("hypercorn")
        command = [executable] if executable else [sys.executable, "-m", "hypercorn"]
        command += [app, "--quic-bind", f"127.0.0.1:{self.quic_port}", "--bind", f"127.0.0.1:{free_tcp_port()}",
                    "--certfile", str(certs.cert), "--keyfile", str(certs.key)]
        if self.http_port:
            command += ["--insecure-bind", f"127.0.0.1:{self.http_port}"]
        self.process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.output = ""
        deadline = time.monotonic() + TIMEOUT
        while not (udp_port_bound(self.quic_port) and (self.http_port is None or tcp_port_open(self.http_port))):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"hypercorn did not start:\n{self.output}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=TIMEOUT)
        assert self.process.stdout is not None
        with self.process.stdout:
            self.output = self.process.stdout.read()

    def check_clean(self) -> None:
        assert self.process.returncode == 0, self.output
        assert "Traceback" not in self.output and "Error in ASGI" not in self.output, self.output


@contextlib.contextmanager
def hypercorn(app: str, certs: Certs, *, insecure: bool = False) -> Iterator[Hypercorn]:
    server = Hypercorn(app, certs, insecure=insecure)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def clock_server(certs: Certs) -> Iterator[Hypercorn]:
    with hypercorn("examples.clock:moq", certs) as server:
        yield server
    server.check_clean()


def utc_stamps(texts: list[str]) -> list[datetime.datetime]:
    stamps = [datetime.datetime.fromisoformat(text) for text in texts]
    assert all(stamp.utcoffset() == datetime.timedelta(0) for stamp in stamps), texts
    return stamps


@pytest.mark.parametrize(("lib", "version"), [("lite", "moq-lite-04"), ("net", "moq-lite-05")],
                         ids=["moq-lite-0.2.2", "moq-net-0.3.4"])
def test_npm_client_in_chromium_reads_the_clock(lib: str, version: str, clock_server: Hypercorn, page_server: PageServer,
                                                certs: Certs, tmp_path: Path) -> None:
    url = (f"http://127.0.0.1:{page_server.port}/index.html?lib={lib}&groups=2"
           f"&moq=https://127.0.0.1:{clock_server.quic_port}/&fp={certs.fingerprint}")
    with chromium(url, tmp_path) as browser:
        try:
            result = page_server.results.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"the page posted no result; page text:\n{browser.page_text()}\n{browser.log_tail()}")
    print(f"@moq/{lib}: {json.dumps(result)}")
    assert result["error"] is None, result["error"]
    assert result["version"] == version  # the newest each library offers in wt-available-protocols
    groups = result["groups"]
    assert len(groups) == 2
    assert groups[1]["sequence"] > groups[0]["sequence"]
    assert all(len(group["frames"]) == 1 for group in groups), groups
    first, second = utc_stamps([group["frames"][0] for group in groups])
    assert second > first


DISTINCT_TIMES = """(() => {
  const times = new Set([...document.querySelectorAll('#log li')].map((li) => li.textContent.split(': ')[1]));
  return times.size >= 2 ? {times: [...times], status: document.getElementById('status').textContent,
                            now: document.getElementById('now').textContent} : null;
})()"""


@pytest.mark.parametrize("app", ["app", "site"], ids=["MoQ-in-front", "Starlette-in-front"])
def test_embed_page_shows_the_clock_in_chromium(app: str, certs: Certs, tmp_path: Path) -> None:
    with hypercorn(f"examples.embed:{app}", certs, insecure=True) as server:
        with chromium(f"http://127.0.0.1:{server.http_port}/", tmp_path) as browser:
            shown = browser.wait_for(DISTINCT_TIMES, TIMEOUT)
    server.check_clean()
    print(f"embed:{app}: {shown}")
    assert "moq-lite-02" in shown["status"]
    stamps = utc_stamps(shown["times"])
    assert len(set(stamps)) >= 2
    assert shown["now"] in shown["times"]

"""Headless Chromium against ``python -m moqt_asgi serve`` (no Hypercorn) over WebTransport.

The npm clients (@moq/lite and @moq/net, bundled from ``tests/browser/``) subscribe to
``examples.clock:moq`` on the port that also speaks native ``moql``. Uses the page server, the
bundle and the Chromium driver of the browser tests.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import queue
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chromium import PageServer, chromium, serve_pages
from .conftest import ROOT, Certs
from .helpers import free_udp_port
from .test_browser import PAGE_FILES, bundle  # noqa: F401  (bundle: the fixture building the npm bundle)

TIMEOUT = 30

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("bundle")]


@contextlib.contextmanager
def page_server() -> Iterator[PageServer]:
    with serve_pages(PAGE_FILES, TIMEOUT) as server:
        yield server


@pytest.fixture(scope="module")
def serve_clock(certs: Certs) -> Iterator[int]:
    port = free_udp_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moqt_asgi", "serve", "examples.clock:moq", "--bind", f"127.0.0.1:{port}",
         "--certfile", str(certs.cert), "--keyfile", str(certs.key)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert f"https://127.0.0.1:{port}/" in line, line
    try:
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("serve did not stop on SIGTERM")
    assert process.returncode == 0, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize(("lib", "version"), [("lite", "moq-lite-04"), ("net", "moq-lite-05")],
                         ids=["moq-lite-0.2.2", "moq-net-0.3.4"])
def test_npm_client_in_chromium_reads_the_clock_from_serve(lib: str, version: str, serve_clock: int, certs: Certs,
                                                            tmp_path: Path) -> None:
    with page_server() as pages:
        url = (f"http://127.0.0.1:{pages.port}/index.html?lib={lib}&groups=2"
               f"&moq=https://127.0.0.1:{serve_clock}/&fp={certs.fingerprint}")
        with chromium(url, tmp_path) as browser:
            try:
                result = pages.results.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"the page posted no result; page text:\n{browser.page_text()}\n{browser.log_tail()}")
    print(f"@moq/{lib} via serve: {json.dumps(result)}")
    assert result["error"] is None, result["error"]
    assert result["version"] == version  # the newest each library offers in wt-available-protocols
    groups = result["groups"]
    assert len(groups) == 2 and groups[1]["sequence"] > groups[0]["sequence"]
    stamps = [datetime.datetime.fromisoformat(group["frames"][0]) for group in groups]
    assert all(stamp.utcoffset() == datetime.timedelta(0) for stamp in stamps) and stamps[1] > stamps[0]

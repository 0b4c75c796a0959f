"""Headless Chromium given an ``http://`` URL: @moq/net fetches /certificate.sha256, pins it, reads the clock.

The stock ``hypercorn`` command line serves ``examples.clock:moq`` (with its metrics at /metrics) with
its plain HTTP listener and its QUIC listener on the same port number; the app learnt its certificate
from Hypercorn's ``--certfile``. The page (``tests/browser/http.html``, bundled from ``http_entry.js``) is
served from another origin, so the certificate fetch is a cross-origin one. Chromium runs with QUIC
enabled. Once with WebSocket off, so WebTransport must carry the session, and once as the player
connects, WebSocket racing WebTransport after its head start.
"""

from __future__ import annotations

import datetime
import json
import queue
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chromium import FLAGS, PageServer, chromium, serve_pages
from .conftest import Certs
from .test_browser import BROWSER_DIR, run_npm
from .test_http_endpoints import HypercornOnePort

pytestmark = [pytest.mark.browser, pytest.mark.cli]

TIMEOUT = 30  # seconds; the page gives up by itself after 25
PAGES = {"/http.html": (BROWSER_DIR / "http.html", "text/html; charset=utf-8"),
         "/dist/http_bundle.js": (BROWSER_DIR / "dist" / "http_bundle.js", "text/javascript; charset=utf-8")}


@pytest.fixture(scope="module")
def http_bundle() -> Path:
    """``dist/http_bundle.js`` from ``http_entry.js`` (``npm ci`` first when node_modules is missing or stale)."""
    lock = BROWSER_DIR / "package-lock.json"
    installed = BROWSER_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        run_npm("ci", "--no-audit", "--no-fund", timeout=300)
    source, out = BROWSER_DIR / "http_entry.js", BROWSER_DIR / "dist" / "http_bundle.js"
    if not out.exists() or out.stat().st_mtime < max(source.stat().st_mtime, installed.stat().st_mtime):
        result = subprocess.run([str(BROWSER_DIR / "node_modules" / ".bin" / "esbuild"), source.name, "--bundle",
                                 "--format=esm", "--target=es2022", f"--outfile={out.relative_to(BROWSER_DIR)}"],
                                cwd=BROWSER_DIR, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def pages(http_bundle: Path) -> Iterator[PageServer]:
    with serve_pages(PAGES, TIMEOUT) as server:
        yield server


@pytest.mark.parametrize("websocket", [False, True], ids=["webtransport-only", "with-websocket-race"])
def test_moq_net_in_chromium_pins_the_certificate_fetched_from_an_http_url(websocket: bool, pages: PageServer,
                                                                          certs: Certs, tmp_path: Path) -> None:
    assert not any("quic" in flag for flag in FLAGS)  # QUIC stays on
    server = HypercornOnePort("tests.test_metrics:metrics_clock", certs, env={"METRICS_TEST_APP": "1"})
    try:
        moq_url = f"http://127.0.0.1:{server.port}/"
        page = f"http://127.0.0.1:{pages.server_address[1]}/http.html?moq={moq_url}&ws={int(websocket)}"
        with chromium(page, tmp_path) as browser:
            try:
                result = pages.results.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"the page posted no result; page text:\n{browser.page_text()}\n{browser.log_tail()}")
        metrics = server.get("/metrics")[2].decode()
    finally:
        server.stop()
    opened = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in metrics.splitlines()
              if line.startswith("moqt_sessions_opened_total{")}
    print(f"sessions opened: {opened}")
    if websocket:  # under load the WebSocket arm may start (and even win) before WebTransport is up
        assert sum(opened.values()) >= 1, metrics
    else:
        assert opened == {'moqt_sessions_opened_total{transport="webtransport",version="moq-lite-05"}': 1.0}, metrics
    print(f"@moq/net over an http:// URL: {json.dumps(result)}")
    assert result["error"] is None, f"{result['error']}\n{server.output}"
    assert f"{moq_url}certificate.sha256" in result["resources"]
    assert result["version"] == "moq-lite-05"
    assert len(result["frames"]) == 1
    stamp = datetime.datetime.fromisoformat(result["frames"][0])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert "Traceback" not in server.output, server.output

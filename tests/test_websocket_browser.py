"""Headless Chromium with @moq/net (and @moq/lite) over WebSocket, as in Safari and Firefox, against stock Hypercorn.

The page (``tests/browser/entry.js`` with ``transport=websocket``) hides the
browser's ``WebTransport``, so the library dials ``ws://`` on Hypercorn's plain
TCP listener (``--insecure-bind``), and reads the clock.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path

import pytest

from .chromium import chromium
from .conftest import Certs
from .test_browser import TIMEOUT, PageServer, bundle, hypercorn, page_server, utc_stamps  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.mark.parametrize(("lib", "version"), [("net", "moq-lite-05"), ("lite", "moq-lite-02")],
                         ids=["moq-net-0.3.4", "moq-lite-0.2.2"])
def test_npm_client_in_chromium_reads_the_clock_over_websocket(lib: str, version: str, certs: Certs,
                                                               page_server: PageServer, tmp_path: Path) -> None:  # noqa: F811
    with hypercorn("examples.clock:moq", certs, insecure=True) as server:
        url = (f"http://127.0.0.1:{page_server.port}/index.html?lib={lib}&groups=2&transport=websocket"
               f"&moq=http://127.0.0.1:{server.http_port}/")
        with chromium(url, tmp_path) as browser:
            try:
                result = page_server.results.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"the page posted no result; page text:\n{browser.page_text()}\n{browser.log_tail()}")
    print(f"@moq/{lib} over WebSocket: {json.dumps(result)}")
    assert result["error"] is None, result["error"]
    assert result["transport"] == "websocket"  # no WebTransport in the page, and only TCP behind the URL
    assert result["version"] == version
    groups = result["groups"]
    assert len(groups) == 2 and groups[1]["sequence"] > groups[0]["sequence"]
    first, second = utc_stamps([group["frames"][0] for group in groups])
    assert second > first

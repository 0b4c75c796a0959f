"""Headless Chromium for the browser tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` gives Chromium's DevTools protocol on file descriptors 3 (commands in)
and 4 (replies and events out), as NUL-terminated JSON, so no WebSocket client is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--mute-audio", "--remote-debugging-pipe",
]


def chromium_executable() -> str:
    """Chromium's path; fails (not skips) the test when it is missing: CI installs it (.ci/run)."""
    for candidate in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(candidate):
            return path
    pytest.fail("chromium is not installed (Debian: apt-get install chromium); the browser tests need it")


class Chromium:
    """One headless Chromium process with a fresh profile, showing ``url``."""

    def __init__(self, url: str, profile: Path) -> None:
        self.log_path = profile.parent / f"{profile.name}.log"
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # Chromium reads fd 3 and writes fd 4; its ends go above 10 first so the dup2s cannot clobber each other
        child_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_write = fcntl.fcntl(replies_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(commands_read)
        os.close(replies_write)

        def pipe_fds() -> None:  # in the child before exec: inheritable 3 and 4; the close-on-exec copies go
            os.dup2(child_read, 3)
            os.dup2(child_write, 4)

        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [chromium_executable(), *FLAGS, f"--user-data-dir={profile}", url],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=False,
                preexec_fn=pipe_fds, start_new_session=True)  # own process group: close() ends all its helpers
        os.close(child_read)
        os.close(child_write)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    # -- DevTools protocol
    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = 10) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, _, self._buffer = self._buffer.partition(b"\0")
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return dict(reply["result"])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                raise RuntimeError(f"no DevTools reply to {method} (chromium exit code {self.process.poll()})\n"
                                   + self.log_tail())
            if select.select([self._replies], [], [], remaining)[0]:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe\n" + self.log_tail())
                self._buffer += chunk

    def evaluate(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page and return its value (JSON-serialisable)."""
        if self._session is None:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self._session = str(self.call("Target.attachToTarget", {"targetId": page["targetId"],
                                                                     "flatten": True})["sessionId"])
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           session=self._session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page exception: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll ``expression`` in the page until it is truthy; fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"chromium exited with code {self.process.returncode}\n{self.log_tail()}")
            try:
                value = self.evaluate(expression)
            except (StopIteration, RuntimeError) as exc:  # no page target yet, or the page is navigating
                value = exc
            else:
                if value:
                    return value
            time.sleep(0.2)
        pytest.fail(f"page never satisfied {expression!r} within {timeout}s; last value {value!r}; page text:\n"
                    f"{self.page_text()}\n{self.log_tail()}")

    def page_text(self) -> str:
        try:
            return str(self.evaluate("document.body ? document.body.innerText : ''"))
        except Exception as exc:
            return f"(page text unavailable: {exc})"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "chromium output (tail):\n" + "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        # helpers (renderer, GPU, zygote) share the process group; make sure none outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for fd in (self._commands, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def chromium(url: str, tmp_path: Path) -> Iterator[Chromium]:
    """Headless Chromium on ``url`` with a fresh profile under ``tmp_path``; killed on exit."""
    browser = Chromium(url, tmp_path / "chromium-profile")
    try:
        yield browser
    finally:
        browser.close()


class PageServer(ThreadingHTTPServer):
    """Serves fixed files on 127.0.0.1 (``files``: URL path -> (file, content type)) for a test page;
    what the page posts to ``/result`` (JSON) lands in :attr:`results`."""

    daemon_threads = True

    def __init__(self, files: Mapping[str, tuple[Path, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _PageHandler)
        self.files = dict(files)
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def do_GET(self) -> None:
        path, content_type = self.server.files.get(self.path.partition("?")[0], (None, ""))
        if path is None:
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/result":
            self.server.results.put(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_pages(files: Mapping[str, tuple[Path, str]], timeout: float = 30.0) -> Iterator[PageServer]:
    """A :class:`PageServer` for ``files`` on a thread, stopped on exit."""
    server = PageServer(files)
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout)

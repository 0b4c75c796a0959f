"""The official player, ``<moq-watch>`` (npm @moq/watch 0.4.6), in headless Chromium, plays what is published.

* ``examples/video.py`` (ffmpeg → :class:`~moqt_asgi.media.HangBroadcast`) under Hypercorn, in H.264,
  VP9 and AV1 (and with the catalog sent as merge-patch deltas), and under ``python -m moqt_asgi serve``:
  the player fetches ``/certificate.sha256`` over TCP at the QUIC port's number, connects over
  WebTransport, reads our ``catalog.json`` and decodes.
* The example page reads the broadcast's JSON data tracks with ``@moq/json`` (a snapshot with
  merge-patch deltas, a deflated log) over the player's connection.
* moq-rs (PyPI) publishing ffmpeg's fMP4 with ``publish_container_stream`` into ``examples/relay.py``;
  the player reads it from the relay.

Playback is proven by what the player exposes (it dispatches no events, so the page is polled):
the broadcast is ``live``, frames reach the decoder (``video.out.stats``), the renderer's timestamp
of the frame it painted keeps rising, the canvas takes the video's size, and it is not black.

Chromium, Node.js/npm and ffmpeg must be installed; a missing one fails these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import moq
import pytest

from .chromium import Chromium, chromium, serve_pages
from .conftest import ROOT, Certs
from .helpers import free_udp_port, moqrs_client
from .wt_client import udp_port_bound

pytestmark = pytest.mark.browser

PLAYER_DIR = ROOT / "examples" / "video_player"
PAGE = ROOT / "tests" / "watch" / "index.html"
TIMEOUT = 60

PROBE = """(() => {
  const el = document.querySelector("moq-watch");
  const canvas = el.querySelector("canvas");
  let lit = 0;
  try {
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < data.length; i += 4 * 97) if (data[i] + data[i + 1] + data[i + 2] > 30) lit++;
  } catch (e) { lit = -1; }
  const stats = el.video?.out?.stats?.peek?.();
  return {status: el.broadcast?.out?.status?.peek?.() ?? null, track: el.video?.source?.out?.track?.peek?.() ?? null,
          error: el.video?.source?.out?.error?.peek?.() ?? null, frames: stats ? stats.frameCount : 0,
          painted: el.renderer?.out?.timestamp?.peek?.() ?? null, size: [canvas.width, canvas.height], lit};
})()"""


def run_npm(*args: str, timeout: float) -> None:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed to build the player (examples/video_player/package.json)")
    result = subprocess.run([npm, *args], cwd=PLAYER_DIR, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"npm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def player() -> Path:
    """``npm ci`` when node_modules is missing or older than the lock file, then the esbuild bundle."""
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed (Debian: apt-get install ffmpeg); the media tests need it")
    lock = PLAYER_DIR / "package-lock.json"
    installed = PLAYER_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        run_npm("ci", "--no-audit", "--no-fund", timeout=300)
    out = PLAYER_DIR / "dist" / "watch.js"
    sources = [PLAYER_DIR / "entry.js", PLAYER_DIR / "package.json", installed]
    if not out.exists() or out.stat().st_mtime < max(source.stat().st_mtime for source in sources):
        run_npm("run", "--silent", "build", timeout=120)
    return out


def free_port() -> int:
    """A port number free on 127.0.0.1 for both UDP and TCP (QUIC and HTTP share it)."""
    for _ in range(50):
        port = free_udp_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


def tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def server_process(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run ``command`` until its UDP and TCP ``port`` are up; SIGTERM at the end."""
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (udp_port_bound(port) and tcp_open(port)):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{command[0]} did not start:\n{stop(process)}")
            time.sleep(0.05)
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
    assert process.stdout is not None
    with process.stdout:
        return process.stdout.read()


def hypercorn(app: str, certs: Certs, port: int) -> list[str]:
    executable = shutil.which("hypercorn")
    command = [executable] if executable else [sys.executable, "-m", "hypercorn"]
    return [*command, app, "--insecure-bind", f"127.0.0.1:{port}", "--quic-bind", f"127.0.0.1:{port}",
            "--bind", f"127.0.0.1:{free_port()}", "--certfile", str(certs.cert), "--keyfile", str(certs.key)]


def assert_plays(browser: Chromium, size: tuple[int, int]) -> list[dict[str, Any]]:
    """Poll the player until it has painted rising timestamps at the video's size, not black; the samples."""
    browser.wait_for(f"(() => {{ const p = {PROBE}; return p.painted !== null && p.size[0] === {size[0]} ? p : null; }})()",
                     TIMEOUT)
    samples = []
    for _ in range(3):
        time.sleep(1.0)
        samples.append(browser.evaluate(PROBE))
    print(samples)
    assert all(s["status"] == "live" and s["error"] is None for s in samples), samples
    painted = [s["painted"] for s in samples]
    assert painted == sorted(painted) and painted[-1] - painted[0] >= 1000, painted  # ms of media shown
    frames = [s["frames"] for s in samples]
    assert frames[-1] - frames[0] >= 30, frames  # decoded (at 30 fps, about 60 in 2 s)
    assert all(tuple(s["size"]) == size and s["lit"] > 100 for s in samples), samples
    return samples


# -- examples/video.py -----------------------------------------------------------------------------------

VIDEO_ENV = {"MOQ_VIDEO_SIZE": "320x180", "MOQ_VIDEO_AUDIO": "0"}


@pytest.mark.parametrize(("codec", "deltas"), [("h264", "0"), ("vp9", "0"), ("av1", "0"), ("h264", "8")],
                         ids=["h264", "vp9", "av1", "h264-catalog-deltas"])
def test_watch_plays_the_video_example_under_hypercorn(codec: str, deltas: str, player: Path, certs: Certs,
                                                       tmp_path: Path) -> None:
    port = free_port()
    env = {**VIDEO_ENV, "MOQ_VIDEO_CODEC": codec, "MOQ_VIDEO_CATALOG_DELTAS": deltas}
    with server_process(hypercorn("examples.video:app", certs, port), port, env):
        with chromium(f"http://127.0.0.1:{port}/", tmp_path) as browser:
            samples = assert_plays(browser, (320, 180))
    assert samples[-1]["track"] == "0.m4s"


JSON_SHOWN = """(() => {
  const text = (id) => document.getElementById(id).textContent;
  return text("snapshot").startsWith("{") && text("log").startsWith("{") ? [text("snapshot"), text("log")] : null;
})()"""


def test_watch_plays_the_video_example_under_serve(player: Path, certs: Certs, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "moqt_asgi", "serve", "examples.video:app", "--bind", f"127.0.0.1:{port}",
               "--certfile", str(certs.cert), "--keyfile", str(certs.key)]
    with server_process(command, port, VIDEO_ENV), chromium(f"http://127.0.0.1:{port}/", tmp_path) as browser:
        assert_plays(browser, (320, 180))
        # the page reads the example's JSON tracks with @moq/json: a snapshot (deltas) and a deflated log
        first = [json.loads(text) for text in browser.wait_for(JSON_SHOWN, TIMEOUT)]
        time.sleep(2.5)
        later = [json.loads(text) for text in browser.evaluate(JSON_SHOWN)]
    assert set(first[0]) == {"time", "tick", "tracks"} and set(first[1]) == {"tick", "time"}
    assert later[0]["tick"] >= first[0]["tick"] + 2 and later[1]["tick"] >= first[1]["tick"] + 2


# -- moq-rs publishing through examples/relay.py ---------------------------------------------------------

@contextlib.contextmanager
def page_server(bundle: Path) -> Iterator[int]:
    """tests/watch/index.html and the player bundle on 127.0.0.1; yields the port."""
    with serve_pages({"/index.html": (PAGE, "text/html; charset=utf-8"),
                      "/watch.js": (bundle, "text/javascript; charset=utf-8")}) as server:
        yield server.port


async def moqrs_publish_live(url: str, fingerprint: str, name: str, stop: threading.Event) -> int:
    """moq-rs publishes ffmpeg's live fMP4 (video only) as ``name`` until ``stop``; the bytes written."""
    command = [shutil.which("ffmpeg") or "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
               "testsrc=size=320x180:rate=30", "-t", "60", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset",
               "ultrafast", "-tune", "zerolatency", "-profile:v", "baseline", "-bf", "0", "-g", "30", "-an", "-f", "mp4",
               "-movflags", "cmaf+separate_moof+delay_moov+skip_trailer+frag_every_frame", "-"]
    ffmpeg = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    assert ffmpeg.stdout is not None
    written = 0
    try:
        async with moqrs_client(url, fingerprint) as client:
            broadcast = client.create_broadcast(name)
            stream = broadcast.publish_container_stream(moq.ContainerFormat.FMP4)
            broadcast.announce()
            while not stop.is_set() and (chunk := await ffmpeg.stdout.read(65536)):
                stream.write(chunk)
                written += len(chunk)
            stream.finish()
    finally:
        if ffmpeg.returncode is None:
            ffmpeg.kill()
        await ffmpeg.wait()
    return written


def test_watch_plays_moqrs_through_the_relay(player: Path, certs: Certs, tmp_path: Path) -> None:
    port = free_port()
    stop_publishing = threading.Event()
    published: list[int] = []

    def publish() -> None:
        published.append(asyncio.run(moqrs_publish_live(f"https://127.0.0.1:{port}/", certs.fingerprint, "rs.hang",
                                                        stop_publishing)))

    with server_process(hypercorn("examples.relay:moq", certs, port), port), page_server(player) as page_port:
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        try:
            url = f"http://127.0.0.1:{page_port}/index.html?name=rs.hang&url=http://127.0.0.1:{port}/"
            with chromium(url, tmp_path) as browser:
                samples = assert_plays(browser, (320, 180))
        finally:
            stop_publishing.set()
            publisher.join(TIMEOUT)
    assert samples[-1]["track"] == "0.m4s"  # moq-rs's track name
    assert published and published[0] > 0


@pytest.mark.parametrize("container", ["legacy", "cmaf", "loc"])
def test_watch_plays_the_publish_cli_through_the_relay(container: str, player: Path, certs: Certs,
                                                       tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x180:rate=30", "-t", "3",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-bf", "0",
                    "-g", "30", "-f", "mp4", "-movflags", "cmaf+separate_moof+delay_moov+skip_trailer+frag_every_frame",
                    str(clip)], check=True, timeout=120, capture_output=True)
    port = free_port()
    publish = [sys.executable, "-m", "moqt_asgi", "publish", f"https://127.0.0.1:{port}/", "cli.hang", "--fingerprint",
               certs.fingerprint, "--input", str(clip), "--loop", "--container", container]
    with server_process(hypercorn("examples.relay:moq", certs, port), port), page_server(player) as page_port:
        publisher = subprocess.Popen(publish, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{page_port}/index.html?name=cli.hang&url=http://127.0.0.1:{port}/"
            with chromium(url, tmp_path) as browser:
                samples = assert_plays(browser, (320, 180))
        finally:
            publisher.terminate()
            _, errors = publisher.communicate(timeout=TIMEOUT)
    assert samples[-1]["track"] == ("0.m4s" if container == "cmaf" else "0.avc1"), errors

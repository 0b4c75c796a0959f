"""Live video: ffmpeg's test pattern with a clock, published as ``demo.hang`` and played by ``<moq-watch>``.

The app starts ffmpeg at startup (its ``lifespan``), reads the fragmented MP4
it writes to stdout and publishes it in moq-dev's hang format (``catalog.json``
+ one ``cmaf`` track per stream). Its HTTP side serves a page with the
official ``<moq-watch>`` player, bundled from npm by ``examples/video_player/``
(built on first start when missing: ``npm ci && npm run build`` there), and
``/certificate.sha256``, which the player fetches to pin the certificate of
the WebTransport connection it then opens on the same port number. Beside
the video it publishes live data as JSON tracks listed in the catalog
(``status.json``, a snapshot; ``log.jsonl``, a deflated log), which the page
reads with ``@moq/json``.

    python -m moqt_asgi cert --out certs
    hypercorn examples.video:app --insecure-bind 127.0.0.1:4443 --quic-bind 127.0.0.1:4443 \\
        --bind 127.0.0.1:4444 --certfile certs/cert.pem --keyfile certs/key.pem

then open http://127.0.0.1:4443/ (Chromium). ``MOQ_VIDEO_SIZE`` (``640x360``),
``MOQ_VIDEO_RATE`` (30), ``MOQ_VIDEO_CODEC`` (``h264``, or ``vp9``, ``av1``)
and ``MOQ_VIDEO_AUDIO`` (``1``: a 440 Hz tone as AAC) change what ffmpeg
encodes; Debian's ``ffmpeg`` package has every encoder used here.
``MOQ_VIDEO_CATALOG_DELTAS`` (0) > 0 sends catalog changes as merge-patch
deltas within a group, up to that many times the full catalog's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from moqt_asgi import MoQ
from moqt_asgi.media import HangBroadcast, publish_fmp4
from moqt_asgi.types import Receive, Scope, Send

logger = logging.getLogger("moqt_asgi.examples.video")

PLAYER_DIR = Path(__file__).parent / "video_player"
BUNDLE = PLAYER_DIR / "dist" / "watch.js"
BROADCAST = "demo.hang"

ENCODERS = {
    "h264": ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-profile:v", "baseline", "-bf", "0"],
    "vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1", "-lag-in-frames", "0",
            "-b:v", "1M"],
    "av1": ["-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8", "-lag-in-frames", "0", "-b:v", "1M"],
}
FMP4_FLAGS = "cmaf+separate_moof+delay_moov+skip_trailer+frag_every_frame"
"""One fragment per frame and per track: the lowest latency, and what the hang ``cmaf`` container carries as is."""


def ffmpeg_command(*, size: str = "640x360", rate: int = 30, codec: str = "h264", audio: bool = True,
                   overlay: bool = True, seconds: float | None = None) -> list[str]:
    """ffmpeg writing a live test pattern (frame counter, wall clock) as low-latency fragmented MP4 to stdout."""
    video = f"testsrc=size={size}:rate={rate}"
    if overlay:
        video += (",drawtext=text='%{localtime\\:%H\\\\\\:%M\\\\\\:%S}':fontcolor=white:fontsize=h/8:box=1:"
                  "boxcolor=black@0.6:x=(w-tw)/2:y=h-th-h/20")
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", video]
    if audio:
        command += ["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    if seconds is not None:
        command += ["-t", str(seconds)]
    command += ["-pix_fmt", "yuv420p", *ENCODERS[codec], "-g", str(rate), "-keyint_min", str(rate)]
    command += ["-c:a", "aac", "-b:a", "96k"] if audio else ["-an"]
    return [*command, "-f", "mp4", "-movflags", FMP4_FLAGS, "-"]


async def build_player() -> None:
    """Build the ``<moq-watch>`` bundle if it is missing (``npm ci``, then esbuild), once."""
    if BUNDLE.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        logger.error("no player bundle at %s and no npm to build it: run 'npm ci && npm run build' in %s",
                     BUNDLE, PLAYER_DIR)
        return
    for args in (["ci", "--no-audit", "--no-fund"], ["run", "--silent", "build"]):
        logger.info("building the player: npm %s", " ".join(args))
        process = await asyncio.create_subprocess_exec(npm, *args, cwd=PLAYER_DIR, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
        if process.returncode != 0:
            logger.error("npm %s failed:\n%s", " ".join(args), output.decode(errors="replace"))
            return


async def run_encoder(hang: HangBroadcast, command: list[str]) -> None:
    """Run ffmpeg and publish what it writes, starting it again if it stops."""
    while True:
        process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        try:
            ingest = await publish_fmp4(process.stdout, hang)
            logger.warning("ffmpeg ended after %d samples (exit code %s); starting it again", ingest.samples,
                           await process.wait())
        except Exception:
            logger.exception("publishing ffmpeg's output failed")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await asyncio.sleep(1)


async def run_status(hang: HangBroadcast) -> None:
    """Live data beside the video: a JSON snapshot (``status.json``) and a deflated JSON log (``log.jsonl``)."""
    status = hang.json_snapshot("status.json")
    log = hang.json_stream("log.jsonl", compression=True)
    tick = 0
    while True:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        status.update({"time": now, "tick": tick, "tracks": len(hang.broadcast.tracks)})
        log.append({"tick": tick, "time": now})
        tick += 1
        await asyncio.sleep(1)


@contextlib.asynccontextmanager
async def lifespan(app: MoQ) -> AsyncIterator[dict[str, object]]:
    deltas = float(os.environ.get("MOQ_VIDEO_CATALOG_DELTAS", "0"))
    hang = HangBroadcast(BROADCAST, catalog_delta_ratio=deltas)
    announcement = app.mux.publish(hang.path, hang.broadcast)
    command = ffmpeg_command(size=os.environ.get("MOQ_VIDEO_SIZE", "640x360"),
                             rate=int(os.environ.get("MOQ_VIDEO_RATE", "30")),
                             codec=os.environ.get("MOQ_VIDEO_CODEC", "h264"),
                             audio=os.environ.get("MOQ_VIDEO_AUDIO", "1") != "0",
                             overlay=os.environ.get("MOQ_VIDEO_OVERLAY", "1") != "0")
    tasks = [asyncio.create_task(run_encoder(hang, command)), asyncio.create_task(run_status(hang)),
             asyncio.create_task(build_player())]  # in the background: startup does not wait for npm
    try:
        yield {"broadcast": hang}
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        hang.close()
        announcement.end()


PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>moqt-asgi: live video</title>
<script type="module" src="/watch.js"></script>
<style>body { font-family: sans-serif; margin: 2em; } canvas { width: 640px; max-width: 100%; background: #000; }</style>
</head>
<body>
<h1>Live video over Media over QUIC</h1>
<moq-watch id="watch" name="demo.hang" visible="always" muted><canvas></canvas></moq-watch>
<p id="status">connecting...</p>
<p>status.json: <code id="snapshot">-</code></p>
<p>log.jsonl: <code id="log">-</code></p>
<script type="module">
const watch = document.getElementById("watch");
watch.setAttribute("url", location.origin + "/");
const status = document.getElementById("status");
setInterval(() => {
  const stats = watch.video?.out?.stats?.peek?.();
  status.textContent = `${watch.broadcast?.out?.status?.peek?.() ?? "loading"}: ${stats ? stats.frameCount : 0} frames`;
}, 500);

// The JSON data tracks, read with @moq/json over the player's own connection to the broadcast.
async function follow(name, Mode, options, show) {
  for (;;) {
    const broadcast = watch.broadcast?.out?.active?.peek?.();
    if (!broadcast) { await new Promise((resolve) => setTimeout(resolve, 200)); continue; }
    const consumer = new Mode.Consumer(broadcast.track(name).subscribe({ priority: 0 }), options);
    for (let value = await consumer.next(); value !== undefined; value = await consumer.next()) show(value);
  }
}
follow("status.json", window.MoqJson.Snapshot, {}, (value) => {
  document.getElementById("snapshot").textContent = JSON.stringify(value);
});
follow("log.jsonl", window.MoqJson.Stream, { compression: true }, (record) => {
  document.getElementById("log").textContent = JSON.stringify(record);
});
</script>
</body>
</html>
"""


async def site(scope: Scope, receive: Receive, send: Send) -> None:
    """The page and the player bundle (``/certificate.sha256`` is answered by the MoQ app itself)."""
    if scope["type"] != "http":
        return
    path = scope.get("path", "/")
    if path == "/":
        body, content_type, status = PAGE, b"text/html; charset=utf-8", 200
    elif path == "/watch.js" and BUNDLE.exists():
        body = await asyncio.to_thread(BUNDLE.read_bytes)
        content_type, status = b"text/javascript; charset=utf-8", 200
    elif path == "/watch.js":
        body = b"the player is being built (npm ci && npm run build in examples/video_player); reload in a moment"
        content_type, status = b"text/plain; charset=utf-8", 503
    else:
        body, content_type, status = b"Not Found", b"text/plain; charset=utf-8", 404
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


app = MoQ(lifespan=lifespan, app=site)

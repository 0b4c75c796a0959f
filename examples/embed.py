"""A web page and the MoQ clock in one Hypercorn process.

    python -m moqt_asgi cert --out certs
    hypercorn examples.embed:app --insecure-bind 127.0.0.1:8080 --bind 127.0.0.1:8443 \\
        --quic-bind 127.0.0.1:4433 --certfile certs/cert.pem --keyfile certs/key.pem

Open http://127.0.0.1:8080/ in Chrome or Chromium: the page opens a WebTransport session
to https://127.0.0.1:4433/, speaks moq-lite-02 to the clock with a few lines of plain JavaScript
(no library), and shows the time as each one-second group arrives. Plain HTTP on 127.0.0.1 is
a secure context, so ``WebTransport`` is available there. (With ``--certfile``, every ``--bind``
is TLS; ``--insecure-bind`` is the plain-HTTP one. ``--bind`` is given only to keep Hypercorn's TLS
listener off its default 127.0.0.1:8000; the page is served there too, over https.) The
certificate is self-signed: the page pins it with ``serverCertificateHashes`` (ECDSA, at most 14
days, which is what ``python -m moqt_asgi cert`` makes), fetching the SHA-256 from ``GET /fingerprint``.

``GET /fingerprint`` answers ``{"fingerprint": "<hex>", "url": "https://127.0.0.1:4433/"}``. It
reads the certificate named by ``MOQ_CERTFILE``, else Hypercorn's ``--certfile``; the URL comes
from ``MOQ_URL``, else Hypercorn's first ``--quic-bind``.

Two ways to put Starlette and MoQ in one ASGI app:

1. MoQ in front (``app`` below): ``MoQ(app=starlette_app)``. MoQ takes the ``webtransport`` and
   ``lifespan`` scopes and hands every other scope (HTTP, WebSocket) to the Starlette app. This
   module reuses the clock's mux and its startup/shutdown hooks, so the same broadcast is served.
2. Starlette in front (``site`` below): the Starlette app owns the routes and the lifespan, and
   a small middleware passes ``webtransport`` scopes to the MoQ app. Starlette's router only
   knows ``http``, ``websocket`` and ``lifespan`` scopes, so ``Mount("/", moq)`` alone is not
   enough. Serve it with ``hypercorn examples.embed:site ...`` (same flags).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from moqt_asgi import MoQ
from moqt_asgi.endpoints.certs import certificate_fingerprint

from .clock import moq as clock_moq  # broadcast "clock", track "seconds"; the ticker runs from its startup hook

PAGE = r"""<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>MoQ clock</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; }
  #now { font: 2.5rem ui-monospace, monospace; }
  #log { font: 0.9rem ui-monospace, monospace; color: #555; }
</style>
<h1>MoQ clock</h1>
<p id="status">connecting...</p>
<p id="now">--</p>
<ol id="log" reversed></ol>
<script type="module">
// A minimal moq-lite-02 subscriber on the browser's WebTransport API.
const status = document.getElementById("status");
const now = document.getElementById("now");
const log = document.getElementById("log");

// QUIC varints (RFC 9000 section 16); the values used here fit in a JavaScript number.
function varint(n) {
  if (n < 0x40) return [n];
  if (n < 0x4000) return [0x40 | (n >> 8), n & 0xff];
  return [0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
}
function string(s) {
  const bytes = new TextEncoder().encode(s);
  return [...varint(bytes.length), ...bytes];
}
function parseVarint(bytes, pos) {
  const size = 1 << (bytes[pos] >> 6);
  let value = bytes[pos] & 0x3f;
  for (let i = 1; i < size; i++) value = value * 256 + bytes[pos + i];
  return [value, pos + size];
}

// Buffered reads from a ReadableStream of bytes.
class Reader {
  constructor(stream) { this.reader = stream.getReader(); this.buffer = new Uint8Array(0); }
  async fill(n) {
    while (this.buffer.length < n) {
      const { value, done } = await this.reader.read();
      if (done) return false;
      const joined = new Uint8Array(this.buffer.length + value.length);
      joined.set(this.buffer);
      joined.set(value, this.buffer.length);
      this.buffer = joined;
    }
    return true;
  }
  async bytes(n) {
    if (!(await this.fill(n))) throw new Error("stream ended early");
    const out = this.buffer.slice(0, n);
    this.buffer = this.buffer.slice(n);
    return out;
  }
  async ended() { return !(await this.fill(1)); }
  async varint() {
    const first = (await this.bytes(1))[0];
    let value = first & 0x3f;
    for (const byte of await this.bytes((1 << (first >> 6)) - 1)) value = value * 256 + byte;
    return value;
  }
  async message() { return this.bytes(await this.varint()); }   // varint size, then the body
}

async function subscribe(broadcast, track) {
  const { fingerprint, url } = await (await fetch("/fingerprint")).json();
  const hash = new Uint8Array(fingerprint.match(/../g).map((byte) => parseInt(byte, 16)));
  const transport = new WebTransport(url, { serverCertificateHashes: [{ algorithm: "sha-256", value: hash }] });
  await transport.ready;

  // Session stream: CLIENT_SETUP 0x20, u16 size, [1 version: moq-lite-02 as an 8-byte varint], 0 parameters.
  const session = await transport.createBidirectionalStream();
  const sessionWriter = session.writable.getWriter();   // keep it open: closing it ends the session
  const setup = [0x01, 0xc0, 0x00, 0x00, 0x00, 0xff, 0x0d, 0xad, 0x02, 0x00];
  await sessionWriter.write(new Uint8Array([0x20, setup.length >> 8, setup.length & 0xff, ...setup]));
  const sessionReader = new Reader(session.readable);
  if ((await sessionReader.varint()) !== 0x21) throw new Error("expected SERVER_SETUP");
  const size = await sessionReader.bytes(2);
  const [version] = parseVarint(await sessionReader.bytes((size[0] << 8) | size[1]), 0);
  if (version !== 0xff0dad02) throw new Error("server chose version 0x" + version.toString(16));

  // Subscribe stream: type 0x02, then SUBSCRIBE (id 0, broadcast, track, priority u8), size-prefixed.
  const stream = await transport.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  const body = [...varint(0), ...string(broadcast), ...string(track), 0];
  await writer.write(new Uint8Array([0x02, ...varint(body.length), ...body]));
  await new Reader(stream.readable).message();   // SUBSCRIBE_OK (empty in moq-lite-02)
  status.textContent = `subscribed to ${broadcast}/${track} over moq-lite-02`;

  // Every group arrives on its own unidirectional stream: type 0, GROUP (subscribe id, sequence), frames.
  const groups = transport.incomingUnidirectionalStreams.getReader();
  for (;;) {
    const { value, done } = await groups.read();
    if (done) break;
    readGroup(value).catch((err) => console.warn("group", err));
  }
  await Promise.all([sessionWriter.closed, writer.closed]).catch(() => {});
}

async function readGroup(stream) {
  const reader = new Reader(stream);
  if ((await reader.varint()) !== 0) return;
  const header = await reader.message();
  const [, pos] = parseVarint(header, 0);
  const [sequence] = parseVarint(header, pos);
  while (!(await reader.ended())) {
    const text = new TextDecoder().decode(await reader.message());   // a frame: varint size, payload
    now.textContent = text;
    const item = document.createElement("li");
    item.textContent = `group ${sequence}: ${text}`;
    log.prepend(item);
    while (log.children.length > 10) log.lastChild.remove();
  }
}

subscribe("clock", "seconds").catch((err) => { status.textContent = "error: " + err; });
</script>
</html>
"""


def command_line_option(name: str) -> str | None:
    """The value of ``name`` (e.g. ``--certfile``) on the command line that started this process."""
    for index, arg in enumerate(sys.argv):
        if arg == name and index + 1 < len(sys.argv):
            return sys.argv[index + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def moq_url(request: Request) -> str:
    if url := os.environ.get("MOQ_URL"):
        return url
    host, _, port = (command_line_option("--quic-bind") or "127.0.0.1:4433").rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = request.url.hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"  # Chromium's WebTransport to "localhost" may try ::1 first and fail
    return f"https://[{host}]:{port}/" if ":" in host else f"https://{host}:{port}/"


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


def fingerprint(request: Request) -> Response:  # sync: Starlette runs it in a thread (it reads a file)
    certfile = os.environ.get("MOQ_CERTFILE") or command_line_option("--certfile")
    if not certfile:
        return JSONResponse({"error": "set MOQ_CERTFILE or start hypercorn with --certfile"}, status_code=500)
    digest = certificate_fingerprint(Path(certfile).read_bytes())
    return JSONResponse({"fingerprint": digest, "url": moq_url(request)})


routes = [Route("/", page), Route("/fingerprint", fingerprint)]

# 1. MoQ in front: WebTransport and lifespan to MoQ, everything else to Starlette.
app = MoQ(app=Starlette(routes=routes), mux=clock_moq.mux, allow_origins=clock_moq.allow_origins,
          on_startup=clock_moq.on_startup, on_shutdown=clock_moq.on_shutdown)


# 2. Starlette in front: its lifespan runs the clock; the middleware hands WebTransport to MoQ.
class WebTransportToMoQ:
    def __init__(self, app: Any, moq: MoQ) -> None:
        self.app = app
        self.moq = moq

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await (self.moq if scope["type"] == "webtransport" else self.app)(scope, receive, send)


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    await clock_moq.startup()
    try:
        yield
    finally:
        await clock_moq.shutdown()


site = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(WebTransportToMoQ, moq=clock_moq)])

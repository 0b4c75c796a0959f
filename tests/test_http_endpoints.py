"""The HTTP endpoints a MoQ app answers itself: /certificate.sha256, /health, /announced, /fetch.

In-process through ASGI calls, then through the stock ``hypercorn`` command line with the plain HTTP
listener and the QUIC listener on the same port number (as ``http://host:port/`` clients expect), and
moq-rs given such a URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from moqt_asgi import Authenticator, Broadcast, MoQ
from moqt_asgi.auth.tokens import Key, KeySet, generate_key, sign_token
from moqt_asgi.http import HttpEndpoints, certificate_sha256
from moqt_asgi.types import Message, Scope

from .conftest import ROOT, Certs
from .helpers import WAIT, free_udp_port

KEY = generate_key("HS256", kid="http")

Answer = tuple[int, dict[str, str], bytes]


async def call(app: Any, path: str, *, method: str = "GET", query: str = "",
               headers: dict[str, str] | None = None) -> Answer:
    """One HTTP request through ``app`` as an ASGI server would make it: ``(status, headers, body)``."""
    scope: Scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                    "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                    "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 4443),
                    "headers": [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent and sent[0]["type"] == "http.response.start", sent
    response_headers: dict[str, str] = {}
    for name, value in sent[0]["headers"]:
        response_headers[name.decode().lower()] = value.decode()
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], response_headers, body


def get(app: Any, path: str, **kwargs: Any) -> Answer:
    return asyncio.run(call(app, path, **kwargs))


def clock_app(**kwargs: Any) -> tuple[MoQ, Broadcast]:
    app = MoQ(**kwargs)
    broadcast = Broadcast("live/clock")
    track = broadcast.create_track("seconds", cached_groups=3)
    for text in ("one", "two"):
        group = track.append_group()
        group.write_frame(text.encode())
        group.write_frame(b"+" + text.encode())
        group.finish()
    track.append_group().write_frame(b"unfinished")  # group 2 is still being written
    app.mux.publish("live/clock", broadcast)
    return app, broadcast


def token(**claims: Any) -> str:
    return "jwt=" + sign_token(KEY, claims)


# --- /certificate.sha256 -------------------------------------------------------------------------


def test_certificate_is_64_hex_characters_with_cors(certs: Certs) -> None:
    app = MoQ()
    status, _, body = get(app, "/certificate.sha256")
    assert (status, body) == (404, b"no certificate\n")
    app.set_certificate(certs.cert)
    status, headers, body = get(app, "/certificate.sha256", headers={"Origin": "http://page.example:8000"})
    assert status == 200
    assert body == certs.fingerprint.encode() and len(body) == 64 and body == body.lower()  # no newline
    assert headers["access-control-allow-origin"] == "*"
    assert headers["content-type"].startswith("text/plain")
    assert app.certificate_sha256 == certs.fingerprint


def test_certificate_from_every_form(certs: Certs) -> None:
    pem = certs.cert.read_bytes()
    loaded = x509.load_pem_x509_certificate(pem)
    der = loaded.public_bytes(Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    for source in (pem, der, loaded, str(certs.cert), certs.cert, pem + pem, pem.decode()):
        assert certificate_sha256(source) == expected
    assert MoQ(certificate=der).certificate_sha256 == expected
    with pytest.raises(ValueError):
        certificate_sha256(b"not a certificate")
    with pytest.raises(ValueError):
        certificate_sha256(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_a_set_certificate_wins_over_what_the_server_offers(certs: Certs, tmp_path: Path) -> None:
    from moqt_asgi.endpoints.certs import write_certificate

    other, _, other_fingerprint = write_certificate(tmp_path)
    offered = MoQ()
    offered.offer_certificate(other)
    assert offered.certificate_sha256 == other_fingerprint
    offered.offer_certificate(certs.cert)  # a later offer (another listener) replaces it
    assert offered.certificate_sha256 == certs.fingerprint
    chosen = MoQ(certificate=certs.cert)
    chosen.offer_certificate(other)
    assert chosen.certificate_sha256 == certs.fingerprint


# --- /health, dispatch, methods, CORS ------------------------------------------------------------


def test_health_and_what_is_passed_on() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})

    app = MoQ(app=inner)
    assert get(app, "/health")[0::2] == (200, b"ok\n")
    assert get(app, "/healthz")[0::2] == (299, b"inner")
    assert get(app, "/announcedx")[0::2] == (299, b"inner")
    assert get(MoQ(), "/other")[0] == 404
    off = MoQ(app=inner, http_endpoints=False)
    for path in ("/health", "/certificate.sha256", "/announced", "/fetch/a/b"):
        assert get(off, path)[0] == 299
    assert seen[-4:] == ["/health", "/certificate.sha256", "/announced", "/fetch/a/b"]
    only_health = MoQ(app=inner, http_endpoints=HttpEndpoints(fetch=False))
    assert get(only_health, "/fetch/a/b")[0] == 299
    assert get(only_health, "/health")[0] == 200


def test_methods_and_preflight() -> None:
    app, _ = clock_app()
    status, headers, _ = get(app, "/health", method="POST")
    assert status == 405 and "GET" in headers["allow"]
    status, headers, body = get(app, "/health", method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "3")
    status, headers, _ = get(app, "/certificate.sha256", method="OPTIONS",
                             headers={"Origin": "http://page.example", "Access-Control-Request-Method": "GET",
                                      "Access-Control-Request-Private-Network": "true"})
    assert status == 204
    assert headers["access-control-allow-origin"] == "*"
    assert "GET" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-private-network"] == "true"
    assert "access-control-allow-origin" not in get(app, "/health")[1]  # no Origin, no CORS headers


def test_origin_rules_apply_to_announced_and_fetch() -> None:
    app, _ = clock_app(allow_origins=["https://good.example"])
    status, headers, body = get(app, "/announced", headers={"Origin": "https://good.example"})
    assert (status, body) == (200, b"live/clock")
    assert headers["access-control-allow-origin"] == "https://good.example" and headers["vary"] == "origin"
    assert get(app, "/announced", headers={"Origin": "https://evil.example"})[0] == 403
    assert get(app, "/fetch/live/clock/seconds", headers={"Origin": "https://evil.example"})[0] == 403
    # the certificate and health are public, whatever the page
    assert get(app, "/health", headers={"Origin": "https://evil.example"})[0] == 200
    strict, _ = clock_app(require_origin=True)
    assert get(strict, "/announced")[0] == 403


# --- /announced ----------------------------------------------------------------------------------


def test_announced_lists_paths_under_a_prefix() -> None:
    app, _ = clock_app()
    app.mux.publish("live/news", Broadcast("live/news"))
    app.mux.publish("vod/film", Broadcast("vod/film"))
    assert get(app, "/announced")[0::2] == (200, b"live/clock\nlive/news\nvod/film")
    assert get(app, "/announced/")[0::2] == (200, b"live/clock\nlive/news\nvod/film")
    assert get(app, "/announced/live")[0::2] == (200, b"clock\nnews")
    assert get(app, "/announced/nothing")[0::2] == (200, b"")
    headers = get(app, "/announced/live", headers={"Origin": "http://x.example"})[1]
    assert headers["access-control-allow-origin"] == "*"


def test_announced_needs_subscribe_rights() -> None:
    app, _ = clock_app(auth=Authenticator(_keys()))
    assert get(app, "/announced/live")[0] == 401
    publish_only = token(root="live", put="")
    assert get(app, "/announced/live", query=publish_only)[0] == 401
    status, _, body = get(app, "/announced/live", query=token(root="live", get=""))
    assert (status, body) == (200, b"clock")
    app.mux.publish("live/secret", Broadcast("live/secret"))
    status, _, body = get(app, "/announced/live", query=token(root="live", get="clock"))
    assert (status, body) == (200, b"clock")  # only what the token may read
    assert get(app, "/announced/vod", query=token(root="live", get=""))[0] == 403


def _keys() -> KeySet:
    return KeySet([Key.from_dict(KEY)])


# --- /fetch --------------------------------------------------------------------------------------


def test_fetch_serves_the_latest_finished_group_or_the_one_asked() -> None:
    app, _ = clock_app()
    status, headers, body = get(app, "/fetch/live/clock/seconds")
    assert (status, body, headers["moq-group"]) == (200, b"two+two", "1")
    assert "content-type" not in headers  # frames as they are, as moq-relay serves them
    assert get(app, "/fetch/live/clock/seconds", query="group=latest")[0::2] == (200, b"two+two")
    assert get(app, "/fetch/live/clock/seconds", query="group=0")[0::2] == (200, b"one+one")
    assert get(app, "/fetch/live/clock/seconds", query="group=2")[0] == 404  # still being written
    assert get(app, "/fetch/live/clock/seconds", query="group=9")[0] == 404
    assert get(app, "/fetch/live/clock/other")[0] == 404
    assert get(app, "/fetch/live/nothing/seconds")[0] == 404
    assert get(app, "/fetch/seconds")[0] == 400  # a broadcast and a track are needed
    assert get(app, "/fetch/live/clock/seconds", query="group=-1")[0] == 400
    assert get(app, "/fetch/live/clock/seconds", query="group=x")[0] == 400


def test_fetch_refuses_groups_over_the_limit() -> None:
    app, broadcast = clock_app(http_endpoints=HttpEndpoints(max_fetch_bytes=8))
    assert get(app, "/fetch/live/clock/seconds", query="group=0")[0] == 200  # 7 bytes
    big = broadcast.tracks["seconds"].create_group(10)
    big.write_frame(b"x" * 9)
    big.finish()
    status, _, body = get(app, "/fetch/live/clock/seconds")
    assert status == 413 and b"limit is 8" in body


def test_fetch_of_any_fetch_source_is_bounded_after_the_copy() -> None:
    class Source:
        async def fetch_group(self, track: str, sequence: int) -> list[tuple[bytes, int | None]] | None:
            return [(b"a" * 6, None), (b"b" * 6, None)] if sequence == 3 else None

        async def __call__(self, writer: Any) -> None:
            return None

    app = MoQ(http_endpoints=HttpEndpoints(max_fetch_bytes=11))
    app.mux.publish("remote", Source())
    assert get(app, "/fetch/remote/t", query="group=3")[0] == 413
    assert get(app, "/fetch/remote/t")[0] == 404  # no way to tell its latest group
    roomy = MoQ()
    roomy.mux.publish("remote", Source())
    assert get(roomy, "/fetch/remote/t", query="group=3")[0::2] == (200, b"a" * 6 + b"b" * 6)


def test_fetch_needs_a_grant_to_read_the_broadcast() -> None:
    app, _ = clock_app(auth=Authenticator(_keys()))
    status, _, body = get(app, "/fetch/live/clock/seconds")
    assert status == 401 and body == b"a token is required\n"
    assert get(app, "/fetch/live/clock/seconds", query=token(root="", put=""))[0] == 401
    assert get(app, "/fetch/live/clock/seconds", query=token(root="vod", get=""))[0] == 403
    assert get(app, "/fetch/live/clock/seconds", query="jwt=forged.token.here")[0] == 401
    status, _, body = get(app, "/fetch/live/clock/seconds", query=token(root="live", get="clock"))
    assert (status, body) == (200, b"two+two")
    public, _ = clock_app(auth=Authenticator(public="live"))  # anonymous reads under live/
    assert get(public, "/fetch/live/clock/seconds")[0] == 200
    public.mux.publish("vod/film", Broadcast("vod/film"))
    assert get(public, "/fetch/vod/film/video")[0] == 401


# --- the stock hypercorn command line: HTTP and QUIC on one port number ---------------------------


def free_port_both() -> int:
    """A port number free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        port = free_udp_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both TCP and UDP")


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HypercornOnePort:
    """``hypercorn APP --quic-bind 127.0.0.1:P --insecure-bind 127.0.0.1:P`` (plus a TLS --bind it needs)."""

    def __init__(self, app: str, certs: Certs, env: dict[str, str] | None = None) -> None:
        self.port = free_port_both()
        command = [sys.executable, "-m", "hypercorn", app, "--quic-bind", f"127.0.0.1:{self.port}",
                   "--insecure-bind", f"127.0.0.1:{self.port}", "--bind", f"127.0.0.1:{free_tcp_port()}",
                   "--certfile", str(certs.cert), "--keyfile", str(certs.key)]
        self.process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.output = ""
        deadline = time.monotonic() + WAIT * 3
        while True:
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"hypercorn did not start:\n{self.output}")
            time.sleep(0.1)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WAIT * 2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT)
        assert self.process.stdout is not None
        with self.process.stdout:
            self.output = self.process.stdout.read()


@pytest.fixture
def clock_one_port(certs: Certs) -> Iterator[HypercornOnePort]:
    server = HypercornOnePort("examples.clock:moq", certs)
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.output, server.output


def wait_for(probe: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.mark.cli
def test_hypercorn_serves_the_endpoints_on_the_quic_port_number(clock_one_port: HypercornOnePort,
                                                                 certs: Certs) -> None:
    server = clock_one_port
    # the certificate came from hypercorn's --certfile: the app was not told it
    status, headers, body = server.get("/certificate.sha256", headers={"Origin": "http://page.example"})
    assert (status, body) == (200, certs.fingerprint.encode())
    assert headers["access-control-allow-origin"] == "*"
    assert server.get("/health")[0::2] == (200, b"ok\n")
    assert server.get("/announced")[0::2] == (200, b"clock")
    status, headers, body = wait_for(lambda: (answer := server.get("/fetch/clock/seconds"))[0] == 200 and answer)
    assert status == 200, (status, body)
    stamp = body.decode()
    assert stamp.endswith("+00:00") and stamp[:4].isdigit(), stamp
    group = int(headers["moq-group"])
    assert server.get(f"/fetch/clock/seconds?group={group}")[2] == body
    assert server.get("/fetch/clock/minutes")[0] == 404
    assert server.get("/elsewhere")[0] == 404


auth_app = MoQ(auth=Authenticator(KeySet.from_file(os.environ["HTTP_TEST_KEY"]))) if "HTTP_TEST_KEY" in os.environ \
    else None
"""For the hypercorn test of auth: an app whose tokens are checked with the key file ``HTTP_TEST_KEY``."""
if auth_app is not None:
    _auth_broadcast = Broadcast("room")
    _auth_track = _auth_broadcast.create_track("chat")
    _auth_track.write_frame(b"hello")
    auth_app.mux.publish("room", _auth_broadcast)


@pytest.mark.cli
def test_hypercorn_fetch_refuses_without_a_grant(certs: Certs, tmp_path: Path) -> None:
    key_file = tmp_path / "key.jwk"
    key_file.write_text(json.dumps(KEY))
    server = HypercornOnePort("tests.test_http_endpoints:auth_app", certs, env={"HTTP_TEST_KEY": str(key_file)})
    try:
        assert server.get("/fetch/room/chat")[0] == 401
        assert server.get("/announced/room")[0] == 401
        assert server.get("/fetch/room/chat?" + token(root="other", get=""))[0] == 403
        assert server.get("/fetch/room/chat?" + token(root="room", get=""))[0::2] == (200, b"hello")
        assert server.get("/announced?" + token(root="", get="room"))[0::2] == (200, b"room")
    finally:
        server.stop()
    assert "Traceback" not in server.output, server.output


@pytest.mark.cli
@pytest.mark.interop
def test_moqrs_given_an_http_url_pins_the_served_certificate(clock_one_port: HypercornOnePort) -> None:
    import moq

    async def read_clock() -> str:
        url = f"http://127.0.0.1:{clock_one_port.port}/"
        async with moq.Client(url, reconnect=False, websocket_enabled=False) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), WAIT)
            track = await broadcast.subscribe_track("seconds")
            group = await asyncio.wait_for(track.next_group(), WAIT)
            return bytes((await asyncio.wait_for(group.read_frame(), WAIT)).payload).decode()

    stamp = asyncio.run(read_clock())
    assert stamp.endswith("+00:00"), stamp


class _Middleware:
    """An ASGI middleware that keeps the app it wraps as ``.app`` (as Starlette's do)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


wrapped_clock: _Middleware | None = None
"""For the hypercorn test of the certificate hand-over: ``examples.clock:moq`` inside a middleware."""
if os.environ.get("HTTP_TEST_WRAPPED"):
    from examples.clock import moq as _clock

    wrapped_clock = _Middleware(_clock)


@pytest.mark.cli
def test_hypercorn_hands_the_certificate_to_a_moq_inside_middleware(certs: Certs) -> None:
    server = HypercornOnePort("tests.test_http_endpoints:wrapped_clock", certs, env={"HTTP_TEST_WRAPPED": "1"})
    try:
        assert server.get("/certificate.sha256")[0::2] == (200, certs.fingerprint.encode())
    finally:
        server.stop()
    assert "Traceback" not in server.output, server.output

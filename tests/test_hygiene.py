"""Small trust fixes: the key file ``cert`` writes, GOAWAY to another origin, a peer's bytes on our terminal."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from moqt_asgi import Broadcast, Client, MoQ, Server, SetupRequest, TrackMux, dial
from moqt_asgi.cli import printable
from moqt_asgi.endpoints.certs import write_certificate
from moqt_asgi.protocol.versions import LITE_06_VERSION

from .conftest import ROOT, Certs

TIMEOUT = 10.0


def test_the_key_is_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: ``key.pem`` was written with the umask's mode (0644 here), then chmod-ed."""
    modes: list[int] = []
    real_replace = os.replace

    def watch(source: str, target: str) -> None:
        modes.append(stat.S_IMODE(os.stat(source).st_mode))  # what the file looked like while it was written
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watch)
    old_umask = os.umask(0o022)
    try:
        _, key, _ = write_certificate(tmp_path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert modes[-1] == 0o600  # the key, before it took its name


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    (tmp_path / "key.pem").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_certificate(tmp_path)
    assert target.read_text() == "precious"


def test_printable_escapes_what_would_drive_a_terminal() -> None:
    assert printable("plain text, tabs\tand ünïcode") == "plain text, tabs\tand ünïcode"
    assert printable("\x1b[2Jgone\x07\r\u202e") == "\\x1b[2Jgone\\x07\\x0d\\u202e"


@pytest.mark.slow
async def test_goaway_to_another_origin_does_not_carry_credentials(certs: Certs) -> None:
    seen: dict[str, dict[str, str]] = {}

    def app_named(name: str) -> MoQ:
        app = MoQ(versions=[LITE_06_VERSION])

        @app.route("/{rest:path}")
        async def record(request: SetupRequest) -> None:
            seen[name] = dict(request.headers)
            await request.accept()

        return app

    first = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app_named("first"))
    second = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app_named("second"))
    async with first, second:
        client = Client(fingerprint=certs.fingerprint, headers=[("authorization", "Bearer secret"),
                                                                ("origin", "https://app.example")])
        session = await client.dial(f"https://127.0.0.1:{first.address[1]}/")
        moving = asyncio.ensure_future(client.reconnect(session))
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(first.shutdown(5.0, uri=f"https://127.0.0.1:{second.address[1]}/"))
        moved = await asyncio.wait_for(moving, TIMEOUT)
        await asyncio.wait_for(stopping, TIMEOUT)
        assert seen["first"]["authorization"] == "Bearer secret"
        assert "authorization" not in seen["second"]  # another server: no credentials
        assert seen["second"]["origin"] == "https://app.example"
        assert ("authorization", "Bearer secret") in list(client.headers)  # still ours for the first server
        await moved.aclose()
        await client.close()


@pytest.mark.cli
async def test_sub_escapes_control_characters(certs: Certs) -> None:
    from moqt_asgi.relay import Relay

    relay = Relay()
    app = MoQ(mux=relay.mux)
    app.add_route("/{path:path}", relay)
    server = Server(addr="127.0.0.1:0", certfile=str(certs.cert), keyfile=str(certs.key), handler=app)
    async with server:
        url = f"moql://127.0.0.1:{server.address[1]}/"
        mux = TrackMux()
        broadcast = Broadcast("chat")
        track = broadcast.create_track("room")
        mux.publish("chat", broadcast)
        publisher = await dial(url, mux=mux, fingerprint=certs.fingerprint)
        async with publisher:
            reader = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "moqt_asgi", "sub", url, "chat", "room", "--fingerprint", certs.fingerprint,
                "--count", "1", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            finished = asyncio.ensure_future(reader.communicate())
            try:
                for _ in range(100):  # until sub has subscribed and printed one frame
                    track.write_frame(b"\x1b]0;owned\x07\x1b[2Jhello")
                    await asyncio.wait({finished}, timeout=0.2)
                    if finished.done():
                        break
                else:
                    raise AssertionError("sub printed nothing")
                out, _ = finished.result()
            finally:
                if reader.returncode is None:
                    reader.kill()
                    await reader.wait()
    assert b"\x1b" not in out and b"\x07" not in out
    assert out.decode().strip() == "\\x1b]0;owned\\x07\\x1b[2Jhello"


@pytest.mark.parametrize("scheme", ["moql", "https", "ws"])
async def test_a_failed_dial_does_not_repeat_the_token_of_its_url(scheme: str) -> None:
    """Errors of a dial name the server, not the ``?jwt=`` of its URL (they end up in logs)."""
    from moqt_asgi import dial

    kind = socket.SOCK_STREAM if scheme == "ws" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as silent:  # a port that answers nothing
        silent.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(Exception) as caught:  # the transport decides the type; the text is what matters
            await dial(f"{scheme}://127.0.0.1:{port}/live?jwt=secret-token", insecure=True, setup_timeout=0.3,
                       websocket_fallback=False)
    assert "secret-token" not in str(caught.value), caught.value
    assert f"127.0.0.1:{port}" in str(caught.value), caught.value

"""The aioquic and Hypercorn internals the project relies on: each in its fence, each checked by name."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import hypercorn.protocol.h3 as hc_h3
import hypercorn.protocol.quic as hc_quic
import pytest
from aioquic.asyncio import protocol as aioquic_protocol
from aioquic.h3 import connection as h3_connection

import moqt_asgi
from moqt_asgi.transport import aioquic_connection
from moqt_asgi.transport.aioquic_connection import IncompatibleAioquic
from moqt_asgi.webtransport import hypercorn as hypercorn_patch

from .conftest import Certs
from .wt_client import hypercorn_server, wt_client

PACKAGE = Path(moqt_asgi.__file__).parent
AIOQUIC_FENCE = {PACKAGE / "transport" / "aioquic_connection.py"}
HYPERCORN_FENCE = {PACKAGE / "webtransport" / "hypercorn.py", PACKAGE / "webtransport" / "hypercorn_quic.py"}
AIOQUIC_PRIVATE = re.compile(
    r"\._quic\b|_quic\._|_buffer_stop|_network_paths|_local_max_streams|_streams_queue|_peer_certificate"
    r"|_max_early_data|_datagrams_pending|_remote_max_datagram|_max_datagram_size|\._transport\b|\._loop\b"
    r"|H3Stream|\._stream\[|aioquic\._|_receive_request_or_push_data|_receive_stream_data_uni|_receive_stream_reset")
HYPERCORN_IMPORT = re.compile(r"^\s*(from|import) hypercorn\b", re.MULTILINE)
QH3_FENCE = {PACKAGE / "transport" / "qh3_connection.py"}
QH3_IMPORT = re.compile(r"^\s*(from|import) qh3\b", re.MULTILINE)


def _sources(outside: set[Path]) -> list[tuple[Path, str]]:
    return [(path, path.read_text()) for path in sorted(PACKAGE.rglob("*.py")) if path not in outside]


def test_aioquic_private_names_are_used_in_the_fence_only() -> None:
    found = [f"{path.relative_to(PACKAGE)}:{text.count(chr(10), 0, match.start()) + 1}: {match.group()}"
             for path, text in _sources(AIOQUIC_FENCE | QH3_FENCE) for match in AIOQUIC_PRIVATE.finditer(text)]
    assert found == []


def test_qh3_is_imported_in_its_fence_only() -> None:
    found = [str(path.relative_to(PACKAGE)) for path, text in _sources(QH3_FENCE) if QH3_IMPORT.search(text)]
    assert found == []


def test_hypercorn_is_imported_in_its_fence_only() -> None:
    found = [str(path.relative_to(PACKAGE)) for path, text in _sources(HYPERCORN_FENCE) if HYPERCORN_IMPORT.search(text)]
    assert found == []


def test_aioquic_check_names_a_moved_http3_stream_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    aioquic_connection.check_compatible()
    monkeypatch.delattr(h3_connection.H3Stream, "is_ended")
    with pytest.raises(IncompatibleAioquic, match=r"H3Stream\.is_ended"):
        aioquic_connection.check_compatible()


def test_aioquic_check_names_a_moved_protocol_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    original = aioquic_protocol.QuicConnectionProtocol.__init__

    def without_transport(self: Any, quic: Any, stream_handler: Any = None) -> None:
        original(self, quic, stream_handler)

    monkeypatch.setattr(aioquic_protocol.QuicConnectionProtocol, "__init__", without_transport)
    with pytest.raises(IncompatibleAioquic, match=r"QuicConnectionProtocol\._quic.*QuicConnectionProtocol\._transport"):
        aioquic_connection.check_compatible()


def test_hypercorn_check_names_a_moved_data_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    hypercorn_patch.check_compatible()

    def without_streams(self: Any, app: Any, config: Any, context: Any, task_group: Any, state: Any, client: Any,
                        server: Any, quic: Any, send: Any) -> None:
        self.app, self.client, self.config, self.context, self.send = app, client, config, context, send
        self.server, self.task_group, self.state = server, task_group, state
        self.connection = h3_connection.H3Connection(quic)

    monkeypatch.setattr(hc_h3.H3Protocol, "__init__", without_streams)
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"H3Protocol\.streams \(in __init__\)"):
        hypercorn_patch.check_compatible()


def test_hypercorn_check_names_a_moved_connection_field(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class _Connection:  # Hypercorn's record, had its timer task moved elsewhere
        cids: set[bytes]
        quic: Any
        h3: Any = None

    monkeypatch.setattr(hc_quic, "_Connection", _Connection)
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"_Connection\.task"):
        hypercorn_patch.check_compatible()


def test_hypercorn_check_names_a_changed_application_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import hypercorn.app_wrappers as app_wrappers

    async def three_arguments(self: Any, scope: Any, receive: Any, send: Any) -> None:
        pass

    monkeypatch.setattr(app_wrappers.ASGIWrapper, "__call__", three_arguments)
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"ASGIWrapper\.__call__"):
        hypercorn_patch.check_compatible()


def test_hypercorn_check_names_a_websocket_stream_that_builds_its_scope_elsewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import hypercorn.protocol.ws_stream as hc_ws_stream

    async def handle(self: Any, event: Any) -> None:  # a Hypercorn whose WSStream hands the app a scope it never stores
        self.app_put = await self.task_group.spawn_app(self.app, self.config, {"type": "websocket"}, self.app_send)

    monkeypatch.setattr(hc_ws_stream.WSStream, "handle", handle)
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"WSStream\.scope \(in handle\)"):
        hypercorn_patch.check_compatible()


def test_hypercorn_check_names_a_websocket_scope_defined_on_the_class(monkeypatch: pytest.MonkeyPatch) -> None:
    import hypercorn.protocol.ws_stream as hc_ws_stream

    hypercorn_patch.check_compatible()  # H10's own descriptor is expected there
    monkeypatch.setattr(hc_ws_stream.WSStream, "scope", property(lambda self: {}))
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"WSStream\.scope"):
        hypercorn_patch.check_compatible()


def test_hypercorn_check_covers_aioquic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(h3_connection.H3Connection, "_receive_stream_reset")
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"H3Connection\._receive_stream_reset"):
        hypercorn_patch.check_compatible()


def test_forcing_other_versions_still_needs_every_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hypercorn_patch, "SUPPORTED_HYPERCORN", "9.9.")
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"hypercorn 9\.9"):
        hypercorn_patch.check_compatible()
    hypercorn_patch.check_compatible(versions=False)  # what apply(force=True) checks
    monkeypatch.delattr(hc_quic.QuicProtocol, "_handle_events")
    monkeypatch.setattr(hypercorn_patch, "_applied", False)
    monkeypatch.setattr(hypercorn_patch, "setattr", None, raising=False)  # nothing may be patched
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"QuicProtocol\._handle_events"):
        hypercorn_patch.apply(force=True)


async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    assert scope["type"] == "http"  # answers at once, without reading the request body
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


@pytest.mark.slow
async def test_hypercorn_dispatches_plain_requests_itself(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that are not WebTransport go through Hypercorn's own ``H3Protocol.handle``."""
    seen: list[str] = []
    stock = hc_h3.H3Protocol.handle

    async def counted(self: Any, event: Any) -> None:
        seen.append(type(event).__name__)
        await stock(self, event)

    monkeypatch.setattr(hc_h3.H3Protocol, "handle", counted)
    async with hypercorn_server(http_app, str(certs.cert), str(certs.key)) as port, wt_client(port) as client:
        response = await client.get("/hello")
        assert (response.status, bytes(response.body)) == (200, b"/hello")
    assert "StreamDataReceived" in seen


@pytest.mark.slow
async def test_late_request_body_after_hypercorn_answered_keeps_the_connection(certs: Certs) -> None:
    """Hypercorn forgets a request stream once answered; body bytes arriving later are dropped, not a KeyError."""
    async with hypercorn_server(http_app, str(certs.cert), str(certs.key)) as port, wt_client(port) as client:
        stream_id, response = await client.request("POST", "/early-answer")
        assert response.status == 200
        await client.wait_for(lambda: client.responses[stream_id].ended)
        client.h3.send_data(stream_id, b"x" * 5000, end_stream=True)
        client.transmit()
        assert bytes((await client.get("/after")).body) == b"/after"
        assert not client.terminated

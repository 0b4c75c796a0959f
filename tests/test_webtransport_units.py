"""WebTransport pieces without sockets: error-code mapping, capsules, header helpers, the patch's guard rails."""

from __future__ import annotations

import pytest

import moqt_asgi.webtransport as wt
from moqt_asgi.webtransport import hypercorn as hypercorn_patch
from moqt_asgi.webtransport.asgi import parse_sf_string_list, sf_string
from moqt_asgi.webtransport.capsules import (
    WT_CODE_FIRST,
    WT_CODE_LAST,
    CapsuleError,
    CapsuleParser,
    CloseCapsule,
    DrainCapsule,
    app_to_http,
    encode_capsule,
    encode_close,
    encode_drain,
    http_to_app,
)


def test_error_code_mapping_round_trips_and_skips_reserved_points() -> None:
    assert app_to_http(0) == WT_CODE_FIRST
    assert app_to_http(42) == 0x52E4A40FA906
    assert app_to_http(0xFFFFFFFF) == WT_CODE_LAST
    for code in [*range(200), 0x1D, 0x1E, 0x3B, 0x3C, 12345, 0xFFFFFFFE, 0xFFFFFFFF]:
        assert http_to_app(app_to_http(code)) == code
    reserved = [h for h in range(WT_CODE_FIRST, WT_CODE_FIRST + 100) if (h - 0x21) % 0x1F == 0]
    assert reserved and all(http_to_app(h) is None for h in reserved)
    assert http_to_app(0x10C) is None and http_to_app(WT_CODE_LAST + 1) is None
    with pytest.raises(ValueError):
        app_to_http(1 << 32)


def test_capsules_parse_incrementally_and_skip_unknown_types() -> None:
    close = encode_close(4001, "server-bye")
    assert close[:2] == b"\x68\x43"  # 0x2843 as a two-byte varint
    stream = encode_capsule(0x1234, b"x" * 300) + encode_drain() + close
    parser = CapsuleParser()
    out = []
    for i in range(len(stream)):  # one byte at a time
        out.extend(parser.feed(stream[i:i + 1]))
    assert out == [DrainCapsule(), CloseCapsule(4001, "server-bye")]
    assert not parser.pending
    assert CapsuleParser().feed(stream) == out


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    capsule = CapsuleParser().feed(encode_close(7, "é" * 1000))[0]
    assert isinstance(capsule, CloseCapsule)
    assert capsule.code == 7 and len(capsule.reason.encode()) <= 1024 and set(capsule.reason) == {"é"}


@pytest.mark.parametrize("bad", [
    encode_capsule(0x2843, b"\x00\x01"),  # shorter than the code
    encode_capsule(0x2843, b"\x00\x00\x00\x01\xff"),  # reason not UTF-8
    encode_capsule(0x78AE, b"x"),  # DRAIN with a body
    encode_capsule(0x2843, b"\x00" * 5000)[:10],  # too large to buffer
])
def test_malformed_capsules_are_errors(bad: bytes) -> None:
    with pytest.raises(CapsuleError):
        CapsuleParser().feed(bad)


def test_structured_field_strings() -> None:
    assert parse_sf_string_list('"moq-lite-03", "moql";q=1,token, "a\\"b"') == ["moq-lite-03", "moql", 'a"b']
    assert parse_sf_string_list("") == []
    assert sf_string('mo"q') == b'"mo\\"q"'


def test_install_is_idempotent_and_patches_hypercorn() -> None:
    import hypercorn.asyncio.udp_server as udp_server
    import hypercorn.protocol.h3 as h3
    import hypercorn.protocol.quic as quic

    assert wt.install() is True and wt.install() is True
    assert wt.install_error() is None
    assert h3.H3Connection is hypercorn_patch.WebTransportH3Connection  # type: ignore[attr-defined]
    assert quic.H3Protocol is hypercorn_patch.WebTransportH3Protocol  # type: ignore[attr-defined]
    assert quic.QuicConnection is hypercorn_patch.WebTransportQuicConnection  # type: ignore[attr-defined]
    assert udp_server.UDPServer.run is hypercorn_patch._udp_server_run


def test_unsupported_versions_are_refused_with_a_clear_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hypercorn_patch, "SUPPORTED_HYPERCORN", "9.9.")
    with pytest.raises(hypercorn_patch.IncompatibleHypercorn, match=r"hypercorn 9\.9"):
        hypercorn_patch.check_compatible()
    monkeypatch.setattr(hypercorn_patch, "_applied", False)
    monkeypatch.setattr(hypercorn_patch, "setattr", None, raising=False)  # nothing may be patched
    with pytest.warns(RuntimeWarning, match="disabled"):
        assert wt.install() is False
    assert "hypercorn 9.9" in (wt.install_error() or "")
    monkeypatch.undo()
    assert wt.install() is True and wt.install_error() is None


def test_early_streams_are_bounded_and_handed_over_in_order() -> None:
    from moqt_asgi.webtransport.early import EarlyStreams

    early = EarlyStreams(max_streams=2, max_bytes=10)
    assert early.hold(0, 4, b"abc", False)
    assert early.hold(0, 8, b"de", True)
    assert not early.hold(0, 12, b"x", False)  # a third stream: over the stream limit
    assert early.hold(0, 4, b"fgh", True)
    assert not early.hold(0, 8, b"too much", False)  # over the byte limit: stream 8 is dropped whole
    assert 8 not in early and 4 in early and early.buffered == 6
    assert early.take(0) == [(4, b"abc", False), (4, b"fgh", True)]
    assert early.buffered == 0 and 4 not in early
    assert early.hold(16, 20, b"y", False) and early.take_stream_ids(16) == {20}

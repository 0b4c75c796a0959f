"""The codec interface: every version answers every message, and the facts about a version live once.

A version lacks a message exactly when its features say so, and then the
codec refuses it with a ProtocolError naming the version; a :class:`Version`
reads its number, name, ALPN and setup style from its codec class; versions
can be named; the protocol package has no import hidden inside a function.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

from moqt_asgi import MoQ
from moqt_asgi.protocol.codec import Codec
from moqt_asgi.protocol.codes import FLAT_CODES, GOMOQT_CODES, GOMOQT_SETUP_CODES, SCOPED_CODES, goaway_timeout_code
from moqt_asgi.protocol.errors import GOAWAY_TIMEOUT, ErrorCode, ProtocolError
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.protocol.lite_wire import AnnounceIds, BidiStreamType, Features, FrameClock, UniStreamType
from moqt_asgi.protocol.messages import (
    Announce,
    AnnounceInit,
    AnnounceOk,
    AnnounceStart,
    Datagram,
    Fetch,
    Goaway,
    LiteSetup,
    Probe,
    SessionInfo,
    SubscribeDrop,
    SubscribeOk,
    SubscribeUpdate,
    TrackInfo,
    TrackRequest,
)
from moqt_asgi.protocol.versions import (
    ALL_VERSIONS,
    GOMOQT_DIALECT,
    LITE_02_VERSION,
    LITE_06_VERSION,
    Version,
    native_alpns,
    ordered,
    protocols_for,
    version_named,
)

from .conftest import ROOT

# (what the version must have, the call that needs it)
Has = Callable[[Features], bool]
MESSAGES: list[tuple[str, Has, Callable[[Codec], object]]] = [
    ("SESSION_INFO", lambda f: f.session_stream, lambda c: c.encode_session_info(SessionInfo(1))),
    ("SESSION_INFO in", lambda f: f.session_stream, lambda c: c.decode_session_info(b"\x01")),
    ("uni SETUP", lambda f: f.setup_stream, lambda c: c.encode_setup_stream(LiteSetup())),
    ("uni SETUP in", lambda f: f.setup_stream, lambda c: c.decode_setup(b"\x00")),
    ("ANNOUNCE_INIT", lambda f: f.announce_init, lambda c: c.encode_announce_init(AnnounceInit(("a",)))),
    ("ANNOUNCE_OK", lambda f: f.announce_ok, lambda c: c.encode_announce_ok(AnnounceOk(1, 0))),
    ("ANNOUNCE_OK in", lambda f: f.announce_ok, lambda c: c.decode_announce_ok(b"\x01\x00")),
    ("ANNOUNCE", lambda f: not f.announce_ids, lambda c: c.encode_announce(Announce(True, "a"))),
    ("ANNOUNCE_START", lambda f: f.announce_ids, lambda c: c.encode_announcement(AnnounceStart("a"))),
    ("ANNOUNCE_START in", lambda f: f.announce_ids, lambda c: c.decode_announcement(0, b"\x01a\x00\x00\x00")),
    ("SUBSCRIBE_OK", lambda f: not f.subscribe_start_end, lambda c: c.encode_subscribe_ok(SubscribeOk())),
    ("SUBSCRIBE_DROP", lambda f: f.typed_subscribe_responses, lambda c: c.encode_subscribe_drop(SubscribeDrop(0, 0, 0))),
    ("typed response", lambda f: f.typed_subscribe_responses,
     lambda c: c.encode_subscribe_response(SubscribeDrop(0, 0, 0))),
    ("typed response in", lambda f: f.typed_subscribe_responses,
     lambda c: c.decode_subscribe_response(1 + c.features.subscribe_start_end, b"\x00\x00\x00")),
    ("SUBSCRIBE_UPDATE", lambda f: f.subscribe_update, lambda c: c.encode_subscribe_update(SubscribeUpdate(1))),
    ("FETCH", lambda f: f.fetch, lambda c: c.encode_fetch(Fetch("a", "b", 0, 0))),
    ("PROBE", lambda f: f.probe, lambda c: c.encode_probe(Probe())),
    ("GOAWAY", lambda f: f.goaway, lambda c: c.encode_goaway(Goaway(""))),
    ("GOAWAY in", lambda f: f.goaway, lambda c: c.decode_goaway(b"\x00")),
    ("TRACK", lambda f: f.track_stream, lambda c: c.encode_track_request(TrackRequest("a", "b"))),
    ("TRACK_INFO", lambda f: f.track_stream, lambda c: c.encode_track_info(TrackInfo(0, 0, 1))),
    ("timed FRAME", lambda f: f.frame_timestamps, lambda c: c.encode_timed_frame(b"x", FrameClock(), 5)),
    ("timed FRAME header", lambda f: f.frame_timestamps, lambda c: c.encode_timed_frame_header(1, FrameClock(), 5)),
    ("datagram", lambda f: f.datagrams, lambda c: c.encode_datagram(Datagram(0, 0, 0, b"x"))),
    ("datagram in", lambda f: f.datagrams, lambda c: c.decode_datagram(b"\x00\x00\x00x")),
]


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize(("what", "has", "call"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_a_version_lacks_a_message_exactly_when_its_features_say_so(
        version: Version, what: str, has: Has, call: Callable[[Codec], object]) -> None:
    codec = version.new_codec(DEFAULT_LIMITS)
    if has(codec.features):
        call(codec)
        return
    with pytest.raises(ProtocolError) as info:
        call(codec)
    assert f"{version.name} has no" in str(info.value)
    assert info.value.code in (ErrorCode.UNEXPECTED_MESSAGE, ErrorCode.UNSUPPORTED)


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: v.name)
def test_per_stream_state_comes_from_the_codec(version: Version) -> None:
    codec = version.new_codec(DEFAULT_LIMITS)
    clock = codec.new_frame_clock()
    assert (clock is not None) == codec.features.frame_timestamps
    ids = codec.new_announce_ids(2)
    assert (ids is not None) == codec.features.announce_ids
    if ids is not None:
        assert isinstance(ids, AnnounceIds) and ids.start("a") == 0 and ids.start("b") == 1
        with pytest.raises(ProtocolError):
            ids.start("c")  # the limit given to the factory


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: v.name)
def test_stream_types_follow_the_features(version: Version) -> None:
    codec = version.new_codec(DEFAULT_LIMITS)
    f = codec.features
    expected = {BidiStreamType.ANNOUNCE: True, BidiStreamType.SUBSCRIBE: True, BidiStreamType.FETCH: f.fetch,
                BidiStreamType.PROBE: f.probe, BidiStreamType.GOAWAY: f.goaway, BidiStreamType.TRACK: f.track_stream,
                BidiStreamType.SESSION: False}
    assert {kind: codec.bidi_stream_type(kind) is kind for kind in BidiStreamType} == expected
    assert codec.bidi_stream_types == version.codec.bidi_stream_types == {k for k, has in expected.items() if has}
    assert (codec.uni_stream_type(UniStreamType.SETUP) is not None) == f.setup_stream
    assert codec.uni_stream_type(UniStreamType.GROUP) is UniStreamType.GROUP
    assert codec.bidi_stream_type(0x40) is None and codec.uni_stream_type(0x40) is None
    assert codec.encode_stream_type(BidiStreamType.SUBSCRIBE) == b"\x02"
    assert codec.accepts_subscribe_update == f.subscribe_update


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: v.name)
def test_a_version_is_read_from_its_codec_class(version: Version) -> None:
    codec = version.codec
    assert Version.of(codec) is version and Version(codec) == version
    assert (version.number, version.name, version.alpn) == (codec.version, codec.name, codec.alpn)
    assert version.features is codec.features
    assert version.setup_in_alpn == (codec.alpn is not None)
    assert (version.bidi_setup, version.uni_setup) == (codec.features.session_stream, codec.features.setup_stream)
    assert version_named(version.name) is version
    assert repr(version) == f"Version({version.name!r})"


def test_versions_can_be_named() -> None:
    assert ordered(["moq-lite-06", LITE_02_VERSION, "moq-lite-06"]) == (LITE_06_VERSION, LITE_02_VERSION)
    assert ordered("gomoqt") == (GOMOQT_DIALECT,)  # one name, not its characters
    assert protocols_for(["moq-lite-02", "moq-lite-06"]) == ("moq-lite-06", "moql")
    assert native_alpns(["gomoqt"]) == ("moq-00",)
    with pytest.raises(ValueError, match=r"moq-lite-07.*moq-lite-06.*gomoqt"):
        version_named("moq-lite-07")
    with pytest.raises(ValueError, match="moq-lite-07"):
        ordered(["moq-lite-06", "moq-lite-07"])
    assert MoQ(versions=["moq-lite-06"]).versions == (LITE_06_VERSION,)


def test_goaway_timeout_is_a_fact_of_each_code_map() -> None:
    assert FLAT_CODES.goaway_timeout == goaway_timeout_code(FLAT_CODES) == ErrorCode.TIMEOUT
    for codes in (SCOPED_CODES, GOMOQT_CODES, GOMOQT_SETUP_CODES):
        assert codes.goaway_timeout == goaway_timeout_code(codes) == GOAWAY_TIMEOUT
        assert codes.session_out(GOAWAY_TIMEOUT) == 0x10 and codes.session_in(0x10) == ErrorCode.TIMEOUT


def _nested_imports(path: Path) -> list[str]:
    """``file:line`` of every import that is not at a module's top level."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    return [f"{path.name}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top]


def test_the_protocol_package_imports_at_the_top_only() -> None:
    found: list[str] = []
    for path in sorted((ROOT / "moqt_asgi" / "protocol").glob("*.py")):
        found += _nested_imports(path)
    assert found == []

"""gomoqt's dialect (0xfeedbabe): its published hex vectors byte for byte, paths, priorities, errors."""

from __future__ import annotations

import pytest

from moqt_asgi.protocol.errors import DecodeError, ErrorCode, ProtocolError
from moqt_asgi.protocol.gomoqt import ALPN_GOMOQT, GOMOQT_VERSION, GomoqtCodec
from moqt_asgi.protocol.gomoqt_codes import (
    AnnounceCode,
    ErrorScope,
    GroupCode,
    SessionCode,
    SubscribeCode,
    from_gomoqt,
    to_gomoqt,
)
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.protocol.messages import (
    Announce,
    AnnounceInit,
    AnnouncePlease,
    GroupHeader,
    ServerSetup,
    SessionInfo,
    Subscribe,
    SubscribeOk,
    SubscribeUpdate,
)
from moqt_asgi.protocol.setup import (
    PARAM_PATH,
    SetupFraming,
    decode_client_setup,
    decode_server_setup,
    encode_client_setup,
    encode_server_setup,
)
from moqt_asgi.protocol.versions import (
    GOMOQT_DIALECT,
    SETUP_VERSIONS,
    choose_version,
    features_of,
    lookup_version,
    version_by_number,
    version_name,
)
from moqt_asgi.protocol.wire import decode_varint


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def unframe(data: bytes) -> bytes:
    size, pos = decode_varint(data)
    assert len(data) - pos == size
    return data[pos:]


G = GomoqtCodec(DEFAULT_LIMITS)

# gomoqt reference §2.10 (derived from its encoders).
V_CLIENT_SETUP_WT = h("00 0a 01 c0 00 00 00 fe ed ba be 00")
V_CLIENT_SETUP_QUIC = h("00 17 01 c0 00 00 00 fe ed ba be 01 01 0b 2f 6e 61 74 69 76 65 71 75 69 63")
V_SERVER_SETUP = h("09 c0 00 00 00 fe ed ba be 00")
V_SESSION_UPDATE = h("04 80 0f 42 40")
V_ANNOUNCE_OPEN = h("01 02 01 2f")
V_ANNOUNCE_INIT = h("10 01 0e 69 6e 74 65 72 6f 70 2f 73 65 72 76 65 72")
V_ANNOUNCE_INIT_EMPTY = h("01 00")
V_ANNOUNCE_ACTIVE = h("10 01 0e 69 6e 74 65 72 6f 70 2f 63 6c 69 65 6e 74")
V_ANNOUNCE_ENDED = h("10 00 0e 69 6e 74 65 72 6f 70 2f 63 6c 69 65 6e 74")
V_SUBSCRIBE_OPEN = h("02 13 01 0f 2f 69 6e 74 65 72 6f 70 2f 73 65 72 76 65 72 00 00")
V_SUBSCRIBE_OK = h("00")
V_SUBSCRIBE_UPDATE = h("01 05")
V_GROUP = h("00 02 01 00 05 48 45 4c 4c 4f")


def test_setup_vectors() -> None:
    assert G.setup_framing is SetupFraming.LEGACY
    assert encode_client_setup(G.setup_framing, G.client_setup()) == V_CLIENT_SETUP_WT
    native = G.client_setup("/nativequic")
    assert encode_client_setup(G.setup_framing, native) == V_CLIENT_SETUP_QUIC
    decoded = decode_client_setup(SetupFraming.LEGACY, unframe(V_CLIENT_SETUP_QUIC[1:]), DEFAULT_LIMITS)
    assert decoded.versions == (GOMOQT_VERSION,)
    assert decoded.parameters == {PARAM_PATH: b"/nativequic"}
    assert encode_server_setup(G.setup_framing, ServerSetup(GOMOQT_VERSION)) == V_SERVER_SETUP
    assert decode_server_setup(SetupFraming.LEGACY, unframe(V_SERVER_SETUP), DEFAULT_LIMITS) == ServerSetup(GOMOQT_VERSION)
    assert G.encode_session_info(SessionInfo(1_000_000)) == V_SESSION_UPDATE
    assert G.decode_session_info(unframe(V_SESSION_UPDATE)) == SessionInfo(1_000_000)


def test_announce_vectors() -> None:
    assert G.encode_stream_type(1) + G.encode_announce_please(AnnouncePlease("")) == V_ANNOUNCE_OPEN
    assert G.decode_announce_please(unframe(V_ANNOUNCE_OPEN[1:])) == AnnouncePlease("")
    assert G.encode_announce_init(AnnounceInit(("interop/server",))) == V_ANNOUNCE_INIT
    assert G.decode_announce_init(unframe(V_ANNOUNCE_INIT)) == AnnounceInit(("interop/server",))
    assert G.encode_announce_init(AnnounceInit(())) == V_ANNOUNCE_INIT_EMPTY
    assert G.encode_announce(Announce(True, "interop/client")) == V_ANNOUNCE_ACTIVE
    assert G.decode_announce(unframe(V_ANNOUNCE_ACTIVE)) == Announce(True, "interop/client")
    assert G.encode_announce(Announce(False, "interop/client")) == V_ANNOUNCE_ENDED
    assert G.decode_announce(unframe(V_ANNOUNCE_ENDED)) == Announce(False, "interop/client")


def test_subscribe_and_group_vectors() -> None:
    sub = Subscribe(1, "interop/server", "", 0)
    assert G.encode_stream_type(2) + G.encode_subscribe(sub) == V_SUBSCRIBE_OPEN
    assert G.decode_subscribe(unframe(V_SUBSCRIBE_OPEN[1:])) == sub
    assert G.encode_subscribe_ok(SubscribeOk()) == V_SUBSCRIBE_OK
    assert G.decode_subscribe_ok(b"") == SubscribeOk()
    assert G.encode_subscribe_update(SubscribeUpdate(5)) == V_SUBSCRIBE_UPDATE
    assert G.decode_subscribe_update(unframe(V_SUBSCRIBE_UPDATE)) == SubscribeUpdate(5)
    assert G.encode_group_header(GroupHeader(1, 0)) + G.encode_frame(b"HELLO") == V_GROUP
    assert G.decode_group_header(unframe(V_GROUP[1:4])) == GroupHeader(1, 0)


def test_paths_and_prefixes() -> None:
    for ours, wire in (("", "/"), ("room", "/room/"), ("a/b", "/a/b/")):
        assert G.prefix_to_wire(ours) == wire
        assert G.prefix_from_wire(wire) == ours
    assert G.prefix_to_wire("/a//b/") == "/a/b/"
    for ours, wire in (("a/b", "/a/b"), ("x", "/x")):
        assert G.path_to_wire(ours) == wire
        assert G.path_from_wire(wire) == ours
    # Tolerant on input: no leading slash, doubled or trailing slashes.
    assert G.path_from_wire("a//b/") == "a/b"
    assert G.decode_announce_please(unframe(G.encode_announce_please(AnnouncePlease("room/1")))) == AnnouncePlease("room/1")
    assert G.encode_announce_please(AnnouncePlease("room/1")) == h("09 08") + b"/room/1/"
    assert G.decode_subscribe(h("00 03 61 2f 62 00 00")) == Subscribe(0, "a/b", "", 0)


def test_varint_priority() -> None:
    sub = Subscribe(3, "a", "t", 200)
    data = G.encode_subscribe(sub)
    assert data.endswith(h("40 c8"))
    assert G.decode_subscribe(unframe(data)) == sub
    assert G.encode_subscribe_update(SubscribeUpdate(64)) == h("02 40 40")
    assert G.decode_subscribe_update(h("40 ff")) == SubscribeUpdate(255)
    with pytest.raises(ProtocolError) as info:
        G.decode_subscribe_update(h("41 00"))  # 256
    assert info.value.code == ErrorCode.PROTOCOL_VIOLATION
    with pytest.raises(ValueError):
        G.encode_subscribe_update(SubscribeUpdate(256))
    # Priorities below 64 are the same bytes as kixelated's u8.
    assert G.encode_subscribe(Subscribe(1, "a", "t", 63))[-1] == 63


def test_stream_type_is_one_byte() -> None:
    assert G.encode_stream_type(0) == b"\x00" and G.encode_stream_type(2) == b"\x02"
    assert G.encode_stream_type(0x40) == b"\x40"  # a raw byte, not a 2-byte varint
    with pytest.raises(ValueError):
        G.encode_stream_type(256)


def test_malformed() -> None:
    with pytest.raises(ProtocolError) as info:
        G.decode_announce(h("02 01 61"))
    assert info.value.code == ErrorCode.PROTOCOL_VIOLATION
    for body, decode in (
        (unframe(V_SUBSCRIBE_OPEN[1:]), G.decode_subscribe),
        (unframe(V_ANNOUNCE_ACTIVE), G.decode_announce),
        (unframe(V_ANNOUNCE_OPEN[1:]), G.decode_announce_please),
        (h("40 c8"), G.decode_subscribe_update),
    ):
        for cut in range(len(body)):
            with pytest.raises(ProtocolError):
                decode(body[:cut])
        with pytest.raises(DecodeError):
            decode(body + b"\x00")
    with pytest.raises(ProtocolError) as info:
        G.decode_announce_please(h("50 01") + b"/" * 0x1001)
    assert info.value.code == ErrorCode.TOO_LARGE


def test_version_entry() -> None:
    assert GOMOQT_DIALECT.number == 0xFEEDBABE and GOMOQT_DIALECT.codec is GomoqtCodec
    assert GOMOQT_DIALECT.bidi_setup and not GOMOQT_DIALECT.uni_setup and GOMOQT_DIALECT.alpn is None
    assert ALPN_GOMOQT == "moq-00"
    assert lookup_version(GOMOQT_VERSION) is GOMOQT_DIALECT
    assert version_name(GOMOQT_VERSION) == "gomoqt"
    assert GOMOQT_DIALECT not in SETUP_VERSIONS and version_by_number(GOMOQT_VERSION) is None
    assert choose_version([GOMOQT_VERSION], (*SETUP_VERSIONS, GOMOQT_DIALECT)) is GOMOQT_DIALECT
    features = features_of(G)
    assert features.subscribe_update and features.session_stream
    assert features.unknown_stream_fatal and features.announce_init
    assert G.accepts_subscribe_update and not G.subscribe_ok_has_priority


def test_error_tables() -> None:
    # gomoqt reference §1.14.
    assert [int(c) for c in SessionCode] == [0x0, 0x1, 0x2, 0x3, 0x5, 0x6, 0x10, 0x12, 0x13]
    assert [int(c) for c in AnnounceCode] == [0, 1, 2, 3, 4, 5]
    assert [int(c) for c in SubscribeCode] == [0, 1, 2, 3, 4, 5]
    assert [int(c) for c in GroupCode] == [0, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    ("ours", "scope", "theirs"),
    [
        (ErrorCode.CANCEL, ErrorScope.SESSION, SessionCode.NO_ERROR),
        (ErrorCode.VERSION, ErrorScope.SESSION, SessionCode.UNSUPPORTED_VERSION),
        (ErrorCode.DECODE, ErrorScope.SESSION, SessionCode.PROTOCOL_VIOLATION),
        (ErrorCode.UNAUTHORIZED, ErrorScope.SESSION, SessionCode.UNAUTHORIZED),
        (ErrorCode.NOT_FOUND, ErrorScope.SESSION, SessionCode.SETUP_FAILED),
        (ErrorCode.OLD, ErrorScope.SESSION, SessionCode.INTERNAL),
        (ErrorCode.DUPLICATE, ErrorScope.ANNOUNCE, AnnounceCode.DUPLICATED_ANNOUNCE),
        (ErrorCode.PROTOCOL_VIOLATION, ErrorScope.ANNOUNCE, AnnounceCode.INVALID_ANNOUNCE_STATUS),
        (ErrorCode.CANCEL, ErrorScope.ANNOUNCE, AnnounceCode.INTERNAL),
        (ErrorCode.NOT_FOUND, ErrorScope.SUBSCRIBE, SubscribeCode.TRACK_NOT_FOUND),
        (ErrorCode.DUPLICATE, ErrorScope.SUBSCRIBE, SubscribeCode.DUPLICATE_SUBSCRIBE_ID),
        (ErrorCode.TIMEOUT, ErrorScope.SUBSCRIBE, SubscribeCode.TIMEOUT),
        (ErrorCode.CANCEL, ErrorScope.GROUP, GroupCode.SUBSCRIBE_CANCELED),
        (ErrorCode.OLD, ErrorScope.GROUP, GroupCode.EXPIRED_GROUP),
        (ErrorCode.NOT_FOUND, ErrorScope.GROUP, GroupCode.INVALID_SUBSCRIBE_ID),
        (ErrorCode.DECODE, ErrorScope.GROUP, GroupCode.INTERNAL),
    ],
)
def test_to_gomoqt(ours: ErrorCode, scope: ErrorScope, theirs: int) -> None:
    assert to_gomoqt(ours, scope) == theirs


def test_from_gomoqt() -> None:
    assert from_gomoqt(SessionCode.UNSUPPORTED_VERSION, ErrorScope.SESSION) == ErrorCode.VERSION
    assert from_gomoqt(SessionCode.NO_ERROR, ErrorScope.SESSION) == ErrorCode.CANCEL
    assert from_gomoqt(SubscribeCode.TRACK_NOT_FOUND, ErrorScope.SUBSCRIBE) == ErrorCode.NOT_FOUND
    assert from_gomoqt(GroupCode.PUBLISH_ABORTED, ErrorScope.GROUP) == ErrorCode.CANCEL
    assert from_gomoqt(GroupCode.EXPIRED_GROUP, ErrorScope.GROUP) == ErrorCode.OLD
    assert from_gomoqt(AnnounceCode.DUPLICATED_ANNOUNCE, ErrorScope.ANNOUNCE) == ErrorCode.DUPLICATE
    assert from_gomoqt(0x4, ErrorScope.SESSION) == ErrorCode.TRANSPORT  # not in gomoqt's table
    # Application codes pass through both ways; a code that is not ours maps to the scope's default.
    assert to_gomoqt(64 + 7, ErrorScope.GROUP) == 71 and from_gomoqt(71, ErrorScope.GROUP) == 71
    assert to_gomoqt(7, ErrorScope.SUBSCRIBE) == SubscribeCode.INTERNAL
    for scope in ErrorScope:
        for code in ErrorCode:
            assert 0 <= to_gomoqt(code, scope) < 64
        for value in range(0x20):
            assert from_gomoqt(value, scope) in set(ErrorCode)

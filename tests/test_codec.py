"""Sans-IO codec tests: varints, golden bytes from real peers, and decode errors."""

from __future__ import annotations

import pytest

from moqt_asgi.protocol.errors import DecodeError, ErrorCode, ProtocolError
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.lite import LITE_01, LITE_02, Codec, Lite01Codec, frame_message
from moqt_asgi.protocol.messages import (
    Announce,
    AnnounceInit,
    AnnouncePlease,
    ClientSetup,
    GroupHeader,
    ServerSetup,
    SessionInfo,
    Subscribe,
    SubscribeOk,
    SubscribeUpdate,
)
from moqt_asgi.protocol.setup import (
    COMPAT_SERVER_TYPE,
    PARAM_IMPLEMENTATION,
    PARAM_MAX_REQUEST_ID,
    PARAM_PATH,
    SetupFraming,
    decode_client_setup,
    decode_server_setup,
    encode_client_setup,
    encode_server_setup,
)
from moqt_asgi.protocol.versions import (
    LITE_01_VERSION,
    LITE_02_VERSION,
    SETUP_VERSIONS,
    choose_version,
    version_by_number,
    version_name,
)
from moqt_asgi.protocol.wire import (
    MAX_VARINT,
    NeedMore,
    Reader,
    decode_varint,
    encode_bytes,
    encode_string,
    encode_varint,
)

DRAFT_14 = 0xFF00000E


def h(text: str) -> bytes:
    """Bytes from hex with spaces and ``|`` separators, as the reference writes them."""
    return bytes.fromhex(text.replace("|", " "))


# moq-ffi 0.4.18 client -> our server, raw QUIC (reference §2.11).
GOLDEN_CLIENT_SETUP = (
    h("20 | 00 41 | 03 | c0 00 00 00 ff 0d ad 02 | c0 00 00 00 ff 0d ad 01 | c0 00 00 00 ff 00 00 0e")
    + h("05 | 02 c0 00 00 00 ff ff ff ff | 80 04 0b 5a 01 | 80 04 0b 5c 01")
    + h("01 05") + b"/room"
    + h("07 0b") + b"moq-lite-rs"
)
GOLDEN_SERVER_SETUP = h("21 | 00 09 | c0 00 00 00 ff 0d ad 02 | 00")
GOLDEN_ANNOUNCE_PLEASE = h("01 | 01 | 00")  # stream type, length, empty prefix
GOLDEN_ANNOUNCE_INIT = h("0c | 01 | 0a") + b"demo/clock"
GOLDEN_SUBSCRIBE = h("02 | 15 | 00 | 0a") + b"demo/clock" + h("07") + b"seconds" + h("00")
GOLDEN_SUBSCRIBE_OK_LITE02 = h("00")
GOLDEN_GROUP_0 = h("00 | 02 00 00")
GOLDEN_GROUP_1 = h("00 | 02 00 01")
GOLDEN_FRAME = h("0c") + b"lite02 g0 f0"


@pytest.fixture
def codec() -> Codec:
    return Codec(DEFAULT_LIMITS)


def split_compat(data: bytes) -> tuple[int, bytes]:
    """Split a ``0x20``/``0x21`` framed setup into its type byte and body (checking the u16 length)."""
    size = int.from_bytes(data[1:3], "big")
    assert len(data) == 3 + size
    return data[0], data[3:]


def unframe(data: bytes) -> bytes:
    """The body of one size-prefixed message, checking the prefix covers exactly the rest."""
    size, pos = decode_varint(data)
    assert len(data) - pos == size
    return data[pos:]


# -- varints ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, h("00")),
        (63, h("3f")),
        (64, h("40 40")),
        (16383, h("7f ff")),
        (16384, h("80 00 40 00")),
        ((1 << 30) - 1, h("bf ff ff ff")),
        (1 << 30, h("c0 00 00 00 40 00 00 00")),
        (MAX_VARINT, h("ff ff ff ff ff ff ff ff")),
        (0xFF0DAD02, h("c0 00 00 00 ff 0d ad 02")),
        (42069, h("80 00 a4 55")),
    ],
)
def test_varint_boundaries(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))
    # Decoding at an offset, followed by unrelated bytes.
    assert decode_varint(b"\xaa" + encoded + b"\x01", 1) == (value, 1 + len(encoded))
    assert Reader(encoded).varint() == value


def test_varint_non_shortest_forms_decode() -> None:
    # Peers may use a longer form than needed (moq-rs writes 0xffffffff in 8 bytes).
    assert decode_varint(h("40 05")) == (5, 2)
    assert decode_varint(h("80 00 00 05")) == (5, 4)
    assert decode_varint(h("c0 00 00 00 00 00 00 05")) == (5, 8)


@pytest.mark.parametrize("value", [-1, -(1 << 62), MAX_VARINT + 1, 1 << 64])
def test_varint_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@pytest.mark.parametrize("encoded", [b"", h("40"), h("80 00 00"), h("c0 00 00 00 00 00 00")])
def test_varint_truncated(encoded: bytes) -> None:
    with pytest.raises(NeedMore):
        decode_varint(encoded)
    with pytest.raises(DecodeError) as info:
        Reader(encoded).varint()
    assert info.value.code == ErrorCode.DECODE


def test_strings_and_bytes() -> None:
    assert encode_string("") == h("00")
    assert encode_string("é") == h("02 c3 a9")
    assert encode_bytes(b"x" * 64)[:2] == h("40 40")
    reader = Reader(encode_string("héllo") + encode_bytes(b"\x00\xff"))
    assert reader.string(100) == "héllo"
    assert reader.bytes(100) == b"\x00\xff"
    assert reader.at_end()
    reader.expect_end("test")


# -- golden bytes (§2.11) ----------------------------------------------------

def test_golden_client_setup_decodes() -> None:
    kind, body = split_compat(GOLDEN_CLIENT_SETUP)
    assert kind == SetupFraming.COMPAT
    setup = decode_client_setup(SetupFraming.COMPAT, body, DEFAULT_LIMITS)
    assert setup.versions == (LITE_02, LITE_01, DRAFT_14)
    assert setup.parameters == {
        PARAM_MAX_REQUEST_ID: 0xFFFFFFFF,
        0x40B5A: 1,
        0x40B5C: 1,
        PARAM_PATH: b"/room",
        PARAM_IMPLEMENTATION: b"moq-lite-rs",
    }
    assert list(setup.parameters) == [PARAM_MAX_REQUEST_ID, 0x40B5A, 0x40B5C, PARAM_PATH, PARAM_IMPLEMENTATION]


def test_golden_client_setup_reencodes_byte_for_byte() -> None:
    _, body = split_compat(GOLDEN_CLIENT_SETUP)
    setup = decode_client_setup(SetupFraming.COMPAT, body, DEFAULT_LIMITS)
    assert encode_client_setup(SetupFraming.COMPAT, setup) == GOLDEN_CLIENT_SETUP


def test_golden_server_setup_reply() -> None:
    encoded = encode_server_setup(SetupFraming.COMPAT, ServerSetup(LITE_02, {}))
    assert encoded == GOLDEN_SERVER_SETUP
    kind, body = split_compat(encoded)
    assert kind == COMPAT_SERVER_TYPE == 0x21
    assert decode_server_setup(SetupFraming.COMPAT, body, DEFAULT_LIMITS) == ServerSetup(LITE_02, {})


def test_golden_webtransport_client_params() -> None:
    # moq-rs over WebTransport: no Path, parameters in another order.
    params = h("04 | 80 04 0b 5a 01 | 02 c0 00 00 00 ff ff ff ff | 80 04 0b 5c 01 | 07 0b") + b"moq-lite-rs"
    body = h("01 c0 00 00 00 ff 0d ad 02") + params
    setup = decode_client_setup(SetupFraming.COMPAT, body, DEFAULT_LIMITS)
    assert setup.versions == (LITE_02,)
    assert setup.parameters == {0x40B5A: 1, PARAM_MAX_REQUEST_ID: 0xFFFFFFFF, 0x40B5C: 1,
                                PARAM_IMPLEMENTATION: b"moq-lite-rs"}
    assert PARAM_PATH not in setup.parameters


def test_golden_moq_lite_js_client_params() -> None:
    # Chromium @moq/lite 0.2.2: ``02 | 02 8000a455 | 07 0b "moq-lite-js"``.
    params = h("02 | 02 80 00 a4 55 | 07 0b") + b"moq-lite-js"
    body = h("03 c0 00 00 00 ff 0d ad 02 c0 00 00 00 ff 0d ad 01 c0 00 00 00 ff 00 00 0e") + params
    setup = decode_client_setup(SetupFraming.COMPAT, body, DEFAULT_LIMITS)
    assert setup.versions == (LITE_02, LITE_01, DRAFT_14)
    assert setup.parameters == {PARAM_MAX_REQUEST_ID: 42069, PARAM_IMPLEMENTATION: b"moq-lite-js"}
    reencoded = encode_client_setup(SetupFraming.COMPAT, setup)
    assert reencoded == bytes((0x20,)) + len(body).to_bytes(2, "big") + body


def test_golden_announce_please(codec: Codec) -> None:
    assert encode_varint(0x01) + codec.encode_announce_please(AnnouncePlease("")) == GOLDEN_ANNOUNCE_PLEASE
    assert codec.decode_announce_please(unframe(GOLDEN_ANNOUNCE_PLEASE[1:])) == AnnouncePlease("")


def test_golden_announce_init(codec: Codec) -> None:
    assert codec.encode_announce_init(AnnounceInit(("demo/clock",))) == GOLDEN_ANNOUNCE_INIT
    assert codec.decode_announce_init(unframe(GOLDEN_ANNOUNCE_INIT)) == AnnounceInit(("demo/clock",))


def test_announce_round_trip(codec: Codec) -> None:
    active = codec.encode_announce(Announce(True, "demo/clock"))
    assert active == h("0c 01 0a") + b"demo/clock"
    assert codec.decode_announce(unframe(active)) == Announce(True, "demo/clock")
    ended = codec.encode_announce(Announce(False, "x"))
    assert ended == h("03 00 01") + b"x"
    assert codec.decode_announce(unframe(ended)) == Announce(False, "x")


def test_golden_subscribe(codec: Codec) -> None:
    msg = Subscribe(0, "demo/clock", "seconds", 0)
    assert encode_varint(0x02) + codec.encode_subscribe(msg) == GOLDEN_SUBSCRIBE
    assert codec.decode_subscribe(unframe(GOLDEN_SUBSCRIBE[1:])) == msg


def test_subscribe_priority_is_one_raw_byte(codec: Codec) -> None:
    encoded = codec.encode_subscribe(Subscribe(300, "b", "t", 255))
    assert encoded == h("07 | 41 2c | 01") + b"b" + h("01") + b"t" + h("ff")
    assert codec.decode_subscribe(unframe(encoded)) == Subscribe(300, "b", "t", 255)
    with pytest.raises(ValueError):
        codec.encode_subscribe(Subscribe(0, "b", "t", 256))


def test_golden_subscribe_ok_lite02(codec: Codec) -> None:
    assert codec.encode_subscribe_ok(SubscribeOk(7)) == GOLDEN_SUBSCRIBE_OK_LITE02
    assert codec.decode_subscribe_ok(b"") == SubscribeOk(None)
    with pytest.raises(DecodeError) as info:
        codec.decode_subscribe_ok(b"\x07")  # a lite-01 reply on lite-02: trailing byte
    assert info.value.code == ErrorCode.DECODE


def test_subscribe_ok_lite01_has_priority_byte() -> None:
    codec = Lite01Codec(DEFAULT_LIMITS)
    assert codec.version == LITE_01
    assert codec.encode_subscribe_ok(SubscribeOk(7)) == h("01 07")
    assert codec.encode_subscribe_ok(SubscribeOk(None)) == h("01 00")
    assert codec.decode_subscribe_ok(h("07")) == SubscribeOk(7)
    with pytest.raises(DecodeError):
        codec.decode_subscribe_ok(b"")  # the lite-02 form is too short on lite-01


def test_golden_group_header(codec: Codec) -> None:
    assert codec.encode_group_header(GroupHeader(0, 0)) == GOLDEN_GROUP_0
    assert codec.encode_group_header(GroupHeader(0, 1)) == GOLDEN_GROUP_1
    assert codec.decode_group_header(unframe(GOLDEN_GROUP_1[1:])) == GroupHeader(0, 1)
    big = codec.encode_group_header(GroupHeader(1 << 20, 1 << 40))
    assert big[0] == 0x00
    assert codec.decode_group_header(unframe(big[1:])) == GroupHeader(1 << 20, 1 << 40)


def test_golden_frame(codec: Codec) -> None:
    assert codec.encode_frame(b"lite02 g0 f0") == GOLDEN_FRAME
    assert codec.encode_frame(b"") == h("00")
    assert codec.encode_frame(b"x" * 100)[:2] == h("40 64")


def test_session_info(codec: Codec) -> None:
    assert codec.encode_session_info(SessionInfo(1_000_000)) == h("04 80 0f 42 40")
    assert codec.decode_session_info(h("80 0f 42 40")) == SessionInfo(1_000_000)
    # Later fields are ignored.
    assert codec.decode_session_info(h("00 ff")) == SessionInfo(0)


def test_subscribe_update_only_where_supported(codec: Codec) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_subscribe_update(h("05"))
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    with pytest.raises(ProtocolError) as info:
        codec.encode_subscribe_update(SubscribeUpdate(5))
    assert info.value.code == ErrorCode.UNSUPPORTED


def test_frame_message() -> None:
    assert frame_message(b"") == h("00")
    assert frame_message(b"a" * 64) == h("40 40") + b"a" * 64


# -- the legacy 0x00 setup framing -------------------------------------------

def test_legacy_client_setup_round_trip() -> None:
    setup = ClientSetup((LITE_02, LITE_01), {PARAM_PATH: b"/room", 0x40: b"\x01\x02"})
    encoded = encode_client_setup(SetupFraming.LEGACY, setup)
    expected_body = (
        h("02 c0 00 00 00 ff 0d ad 02 c0 00 00 00 ff 0d ad 01")
        + h("02 | 01 05") + b"/room" + h("40 40 02 01 02")
    )
    assert encoded == h("00") + encode_varint(len(expected_body)) + expected_body
    assert decode_client_setup(SetupFraming.LEGACY, unframe(encoded[1:]), DEFAULT_LIMITS) == setup


def test_legacy_params_are_length_prefixed_even_for_even_ids() -> None:
    # In the 0x00 framing every parameter is ``id, len, bytes``: an int value travels as varint bytes.
    encoded = encode_client_setup(SetupFraming.LEGACY, ClientSetup((LITE_02,), {PARAM_MAX_REQUEST_ID: 42069}))
    assert encoded.endswith(h("01 02 04 80 00 a4 55"))
    decoded = decode_client_setup(SetupFraming.LEGACY, unframe(encoded[1:]), DEFAULT_LIMITS)
    assert decoded.parameters == {PARAM_MAX_REQUEST_ID: h("80 00 a4 55")}


def test_legacy_server_setup_has_no_type_byte() -> None:
    encoded = encode_server_setup(SetupFraming.LEGACY, ServerSetup(LITE_02))
    assert encoded == h("09 c0 00 00 00 ff 0d ad 02 00")
    assert decode_server_setup(SetupFraming.LEGACY, unframe(encoded), DEFAULT_LIMITS) == ServerSetup(LITE_02)
    with_params = encode_server_setup(SetupFraming.LEGACY, ServerSetup(LITE_01, {PARAM_IMPLEMENTATION: b"x"}))
    assert decode_server_setup(SetupFraming.LEGACY, unframe(with_params), DEFAULT_LIMITS) == ServerSetup(
        LITE_01, {PARAM_IMPLEMENTATION: b"x"})


def test_compat_even_parameter_must_be_int() -> None:
    with pytest.raises(TypeError):
        encode_client_setup(SetupFraming.COMPAT, ClientSetup((LITE_02,), {PARAM_MAX_REQUEST_ID: b"\x01"}))


# -- decode errors ------------------------------------------------------------

def expect_code(code: ErrorCode, func, *args) -> ProtocolError:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as info:
        func(*args)
    assert info.value.code == code, f"{info.value!r} has code {info.value.code}, expected {code!r}"
    return info.value


@pytest.mark.parametrize("cut", range(1, 21))
def test_truncated_subscribe(codec: Codec, cut: int) -> None:
    body = unframe(GOLDEN_SUBSCRIBE[1:])
    assert len(body) == 21
    error = expect_code(ErrorCode.DECODE, codec.decode_subscribe, body[:cut])
    assert isinstance(error, DecodeError)


def test_truncated_messages(codec: Codec) -> None:
    expect_code(ErrorCode.DECODE, codec.decode_subscribe, b"")
    expect_code(ErrorCode.DECODE, codec.decode_announce_please, b"")
    expect_code(ErrorCode.DECODE, codec.decode_announce_please, h("05") + b"abc")
    expect_code(ErrorCode.DECODE, codec.decode_announce_init, h("02 01") + b"a")
    expect_code(ErrorCode.DECODE, codec.decode_announce, b"")
    expect_code(ErrorCode.DECODE, codec.decode_announce, h("01"))
    expect_code(ErrorCode.DECODE, codec.decode_group_header, h("00"))
    expect_code(ErrorCode.DECODE, codec.decode_group_header, h("40"))
    expect_code(ErrorCode.DECODE, codec.decode_session_info, b"")
    expect_code(ErrorCode.DECODE, Lite01Codec(DEFAULT_LIMITS).decode_subscribe_ok, b"")
    _, setup_body = split_compat(GOLDEN_CLIENT_SETUP)
    for cut in (0, 1, 9, 26, 30, len(setup_body) - 1):
        expect_code(ErrorCode.DECODE, decode_client_setup, SetupFraming.COMPAT, setup_body[:cut], DEFAULT_LIMITS)
    expect_code(ErrorCode.DECODE, decode_server_setup, SetupFraming.COMPAT, h("c0 00 00 00 ff 0d ad"), DEFAULT_LIMITS)
    expect_code(ErrorCode.DECODE, decode_server_setup, SetupFraming.COMPAT, h("c0 00 00 00 ff 0d ad 02"), DEFAULT_LIMITS)


def test_trailing_bytes(codec: Codec) -> None:
    expect_code(ErrorCode.DECODE, codec.decode_subscribe, unframe(GOLDEN_SUBSCRIBE[1:]) + b"\x00")
    expect_code(ErrorCode.DECODE, codec.decode_announce_please, h("00 00"))
    expect_code(ErrorCode.DECODE, codec.decode_announce_init, unframe(GOLDEN_ANNOUNCE_INIT) + b"\x00")
    expect_code(ErrorCode.DECODE, codec.decode_announce, h("01 00 00"))
    expect_code(ErrorCode.DECODE, codec.decode_group_header, h("00 00 00"))
    expect_code(ErrorCode.DECODE, codec.decode_subscribe_ok, h("00"))
    expect_code(ErrorCode.DECODE, Lite01Codec(DEFAULT_LIMITS).decode_subscribe_ok, h("00 00"))
    _, setup_body = split_compat(GOLDEN_CLIENT_SETUP)
    expect_code(ErrorCode.DECODE, decode_client_setup, SetupFraming.COMPAT, setup_body + b"\x00", DEFAULT_LIMITS)
    _, server_body = split_compat(GOLDEN_SERVER_SETUP)
    expect_code(ErrorCode.DECODE, decode_server_setup, SetupFraming.COMPAT, server_body + b"\x00", DEFAULT_LIMITS)


def test_strings_over_the_path_limit() -> None:
    codec = Codec(Limits(max_path_length=9))
    body = unframe(GOLDEN_SUBSCRIBE[1:])  # "demo/clock" is 10 bytes
    expect_code(ErrorCode.TOO_LARGE, codec.decode_subscribe, body)
    expect_code(ErrorCode.TOO_LARGE, codec.decode_announce_init, unframe(GOLDEN_ANNOUNCE_INIT))
    expect_code(ErrorCode.TOO_LARGE, codec.decode_announce_please, encode_string("a" * 10))
    expect_code(ErrorCode.TOO_LARGE, codec.decode_announce, h("01") + encode_string("a" * 10))
    # The track name is limited too.
    expect_code(ErrorCode.TOO_LARGE, codec.decode_subscribe,
                h("00") + encode_string("b") + encode_string("t" * 10) + h("00"))
    # Exactly at the limit is fine.
    assert codec.decode_announce_please(encode_string("a" * 9)) == AnnouncePlease("a" * 9)


def test_huge_declared_length_is_rejected_before_reading(codec: Codec) -> None:
    # A string claiming 2^62-1 bytes is refused on its length, not by running out of data.
    expect_code(ErrorCode.TOO_LARGE, codec.decode_announce_please, h("ff ff ff ff ff ff ff ff"))


def test_non_utf8_strings(codec: Codec) -> None:
    bad = h("02 c3 28")
    expect_code(ErrorCode.DECODE, codec.decode_announce_please, bad)
    expect_code(ErrorCode.DECODE, codec.decode_subscribe, h("00") + bad + encode_string("t") + h("00"))
    expect_code(ErrorCode.DECODE, codec.decode_subscribe, h("00") + encode_string("b") + h("01 ff") + h("00"))
    expect_code(ErrorCode.DECODE, codec.decode_announce_init, h("01") + bad)
    expect_code(ErrorCode.DECODE, codec.decode_announce, h("01") + bad)


@pytest.mark.parametrize("status", [2, 3, 0x80, 0xFF])
def test_announce_bad_status(codec: Codec, status: int) -> None:
    expect_code(ErrorCode.PROTOCOL_VIOLATION, codec.decode_announce, bytes((status,)) + encode_string("x"))


def test_announce_init_count_limit() -> None:
    codec = Codec(Limits(max_announcements=2))
    expect_code(ErrorCode.TOO_LARGE, codec.decode_announce_init, h("03 01 61 01 62 01 63"))
    # A huge count is refused before any suffix is read.
    expect_code(ErrorCode.TOO_LARGE, Codec(DEFAULT_LIMITS).decode_announce_init, h("bf ff ff ff"))
    assert codec.decode_announce_init(h("02 01 61 01 62")) == AnnounceInit(("a", "b"))


def test_too_many_versions() -> None:
    limits = Limits(max_versions=2)
    three = h("03") + encode_varint(LITE_02) + encode_varint(LITE_01) + encode_varint(DRAFT_14) + h("00")
    expect_code(ErrorCode.VERSION, decode_client_setup, SetupFraming.COMPAT, three, limits)
    huge = h("ff ff ff ff ff ff ff ff")
    expect_code(ErrorCode.VERSION, decode_client_setup, SetupFraming.COMPAT, huge, DEFAULT_LIMITS)
    two = h("02") + encode_varint(LITE_02) + encode_varint(LITE_01) + h("00")
    assert decode_client_setup(SetupFraming.COMPAT, two, limits).versions == (LITE_02, LITE_01)


def test_zero_versions() -> None:
    expect_code(ErrorCode.VERSION, decode_client_setup, SetupFraming.COMPAT, h("00 00"), DEFAULT_LIMITS)


def test_too_many_parameters() -> None:
    limits = Limits(max_parameters=2)
    params = h("03 02 01 04 02 06 03")
    body = h("01") + encode_varint(LITE_02) + params
    expect_code(ErrorCode.TOO_MANY_PARAMETERS, decode_client_setup, SetupFraming.COMPAT, body, limits)
    expect_code(ErrorCode.TOO_MANY_PARAMETERS, decode_client_setup, SetupFraming.LEGACY,
                h("01") + encode_varint(LITE_02) + h("03"), limits)
    expect_code(ErrorCode.TOO_MANY_PARAMETERS, decode_server_setup, SetupFraming.COMPAT,
                encode_varint(LITE_02) + params, limits)
    # The golden setup has 5 parameters.
    _, setup_body = split_compat(GOLDEN_CLIENT_SETUP)
    expect_code(ErrorCode.TOO_MANY_PARAMETERS, decode_client_setup, SetupFraming.COMPAT, setup_body,
                Limits(max_parameters=4))
    assert len(decode_client_setup(SetupFraming.COMPAT, setup_body, Limits(max_parameters=5)).parameters) == 5


def test_oversized_odd_parameter() -> None:
    limits = Limits(max_message_size=8)
    body = h("01") + encode_varint(LITE_02) + h("01 07 09") + b"x" * 9
    expect_code(ErrorCode.TOO_LARGE, decode_client_setup, SetupFraming.COMPAT, body, limits)


def test_frame_size_limit() -> None:
    codec = Codec(Limits(max_frame_size=16))
    codec.check_frame_size(16)
    expect_code(ErrorCode.TOO_LARGE, codec.check_frame_size, 17)


def test_error_carries_code_and_message() -> None:
    error = DecodeError("boom")
    assert error.code == ErrorCode.DECODE == 5
    assert "boom" in str(error) and "decode" in str(error)


# -- version choice -------------------------------------------------------------

def test_choose_version_kixelated_offer() -> None:
    assert choose_version([LITE_02, LITE_01, DRAFT_14]) is LITE_02_VERSION


def test_choose_version_prefers_newest_supported() -> None:
    # Our preference order decides between versions the peer offered.
    assert choose_version([LITE_01, LITE_02]) is LITE_02_VERSION
    assert choose_version([DRAFT_14, LITE_01]) is LITE_01_VERSION


def test_choose_version_restricted_support() -> None:
    assert choose_version([LITE_02, LITE_01], (LITE_01_VERSION,)) is LITE_01_VERSION
    assert choose_version([LITE_02], (LITE_01_VERSION,)) is None


def test_choose_version_no_common() -> None:
    assert choose_version([DRAFT_14]) is None
    assert choose_version([]) is None
    assert choose_version([0xFF0DAD03, 0xFF0DAD06]) is None


def test_version_table() -> None:
    assert [v.number for v in SETUP_VERSIONS] == [LITE_02, LITE_01]
    assert version_by_number(LITE_01) is LITE_01_VERSION
    assert version_by_number(DRAFT_14) is None
    assert version_name(LITE_02) == "moq-lite-02"
    assert version_name(DRAFT_14) == "0xff00000e"
    assert isinstance(LITE_01_VERSION.new_codec(DEFAULT_LIMITS), Lite01Codec)
    codec02 = LITE_02_VERSION.new_codec(DEFAULT_LIMITS)
    assert type(codec02) is Codec and codec02.version == LITE_02

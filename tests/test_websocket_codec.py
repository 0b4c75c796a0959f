"""The QMux / legacy framing codec against bytes captured from moq-rs 0.5.1 and @moq/net, and malformed input."""

from __future__ import annotations

import pytest

from moqt_asgi.websocket import qmux
from moqt_asgi.websocket.asgi import choose_subprotocol, client_subprotocols, server_subprotocols, split_subprotocols
from moqt_asgi.websocket.qmux import (
    Blocked,
    Close,
    Framing,
    MaxData,
    MaxStreamData,
    MaxStreams,
    Ping,
    QMuxError,
    ResetStream,
    StopSending,
    StreamFrame,
    TransportParameters,
    decode_message,
    encode_frame,
    parse_subprotocol,
)

Q01, Q00, Q02, LEGACY = Framing.QMUX01, Framing.QMUX00, Framing.QMUX02, Framing.LEGACY

# moq-rs 0.5.1, @moq/net 0.2.8 and 0.3.4 all send these 62 bytes first on qmux-01
MOQRS_PARAMS = bytes.fromhex(
    "ff5153300d0a0d0a35010480007530040480100000050480040000060480040000070480040000080240640902406420027ffe"
    "c571c59429cd0845027ffe")
PARAMS = TransportParameters(max_idle_timeout=30000, initial_max_data=1048576, max_stream_data_bidi_local=262144,
                             max_stream_data_bidi_remote=262144, max_stream_data_uni=262144, max_streams_bidi=100,
                             max_streams_uni=100, max_datagram_frame_size=16382, max_record_size=16382)

GOLDEN: list[tuple[Framing, str, qmux.Frame]] = [
    (Q01, "0e02000d010b010508c012229fef904163",
     StreamFrame(2, bytes.fromhex("010b010508c012229fef904163"), 0, False)),
    (Q01, "0f020d00", StreamFrame(2, b"", 13, True)),
    (Q01, "0f01412c026869", StreamFrame(1, b"hi", 300, True)),
    (Q01, "0400000d", ResetStream(0, 0, 13)),
    (Q01, "04000000", ResetStream(0, 0, 0)),
    (Q01, "050300", StopSending(3, 0)),
    (Q01, "1080180000", MaxData(1572864)),
    (Q01, "110280060000", MaxStreamData(2, 393216)),
    (Q01, "124096", MaxStreams(True, 150)),
    (Q01, "134096", MaxStreams(False, 150)),
    (Q01, "1480100000", Blocked(0x14, 1048576)),
    (Q01, "1c43ea0012" + b"protocol violation".hex(), Close(1002, "protocol violation", application=False)),
    (Q01, "1d00086e6f206572726f72", Close(0, "no error")),
    (Q01, "1d0000", Close(0, "")),
    (Q01, "1d060c" + b"unauthorized".hex(), Close(6, "unauthorized")),
    (Q01, "f48c67529ef8c7bd00", Ping(0)),
    (Q01, "f48c67529ef8c7be00", Ping(0, response=True)),
    (Q00, "0f020d00", StreamFrame(2, b"", 13, True)),
    (LEGACY, "080020", StreamFrame(0, b"\x20", 0, False)),
    (LEGACY, "08000031", StreamFrame(0, b"\x00\x31", 0, False)),
    (LEGACY, "0902", StreamFrame(2, b"", 0, True)),
    (LEGACY, "040005", ResetStream(0, 5)),
    (LEGACY, "050300", StopSending(3, 0)),
    (LEGACY, "1d006e6f206572726f72", Close(0, "no error")),
]


def _legacy_equal(decoded: qmux.Frame, expected: qmux.Frame) -> bool:
    if isinstance(decoded, StreamFrame) and isinstance(expected, StreamFrame):  # no offsets on the legacy wire
        return (decoded.stream_id, decoded.data, decoded.fin) == (expected.stream_id, expected.data, expected.fin)
    return decoded == expected


@pytest.mark.parametrize(("framing", "hexed", "frame"), GOLDEN)
def test_golden_frames(framing: Framing, hexed: str, frame: qmux.Frame) -> None:
    wire = bytes.fromhex(hexed)
    assert encode_frame(frame, framing) == wire
    (decoded,) = decode_message(wire, framing)
    assert _legacy_equal(decoded, frame) if framing is LEGACY else decoded == frame


def test_parameters_match_moqrs_bytes() -> None:
    assert encode_frame(PARAMS, Q01) == MOQRS_PARAMS
    assert decode_message(MOQRS_PARAMS, Q01) == [PARAMS]
    # qmux-00 leaves the datagram size out (body 0x31), qmux-02 adds reset_stream_at (body 0x37)
    q00 = encode_frame(PARAMS, Q00)
    assert q00[8] == 0x31 and bytes.fromhex("20027ffe") not in q00
    q02 = encode_frame(TransportParameters(**{**_fields(PARAMS), "reset_stream_at": True}), Q02)
    assert q02[8] == 0x37 and q02.endswith(b"\x1d\x00")


def _fields(params: TransportParameters) -> dict[str, object]:
    return {name: getattr(params, name) for name in params.__slots__}


def test_old_js_stream_without_offset_and_records_with_padding() -> None:
    # @moq/lite 0.2.2 sends LEN without OFF; a record may hold several frames and PADDING
    assert decode_message(bytes.fromhex("0a000120"), Q00) == [StreamFrame(0, b"\x20", None, False)]
    record = bytes.fromhex("0000" "050300" "00" "f48c67529ef8c7bd07")
    assert decode_message(record, Q01) == [StopSending(3, 0), Ping(7)]
    assert decode_message(b"", Q01) == []


@pytest.mark.parametrize(("framing", "hexed", "message"), [
    (Q01, "0e02000d0102", "short frame"),  # length 13, two bytes follow
    (Q01, "0e", "short frame"),
    (Q01, "1d0005616263", "short frame"),  # reason length 5, three bytes
    (Q01, "ff5153300d0a0d0a40ff0104", "short frame"),  # parameters length 255, three bytes
    (Q01, "01", "invalid frame type: 0x1"),  # QUIC PING is not QMux
    (Q01, "06", "invalid frame type: 0x6"),  # CRYPTO
    (Q00, "f48c67529ef8c7bd00", "invalid frame type"),  # no QX_PING on qmux-00
    (Q00, "050300050300", "one frame per message"),
    (Q00, "", "empty"),
    (LEGACY, "10", "invalid frame type"),
    (LEGACY, "", "short frame"),
    (Q01, "ff5153300d0a0d0a03000100", "not allowed in QMux"),  # original_destination_connection_id
    (Q01, "ff5153300d0a0d0a06010105010105", "duplicate"),
    (Q01, "ff5153300d0a0d0a0404020500", "does not fill"),  # initial_max_data: a 1-byte varint in 2 bytes
    (Q01, "ff5153300d0a0d0a0ac571c59429cd08450100", "max_record_size"),  # record size 0
    (Q01, "ff5153300d0a0d0a09fd4f9c2a8b1e607500", "application_protocols"),
    (Q01, "0fc000000000000000" "ffffffffffffffff" "01" "00", "2^62"),  # offset near 2^62 plus data
])
def test_malformed_messages_fail_clearly(framing: Framing, hexed: str, message: str) -> None:
    with pytest.raises(QMuxError) as info:
        decode_message(bytes.fromhex(hexed), framing)
    assert message in str(info.value)
    assert info.value.code == qmux.PROTOCOL_VIOLATION


def test_message_size_is_checked_before_decoding() -> None:
    big = bytes(qmux.DEFAULT_RECORD_SIZE + 1)
    with pytest.raises(QMuxError, match="frame too large"):
        decode_message(big, Q01)
    with pytest.raises(QMuxError, match="frame too large"):
        decode_message(bytes(qmux.QMUX00_MESSAGE_SIZE + 1), Q00)
    with pytest.raises(QMuxError, match="frame too large"):
        decode_message(b"\x08\x00" + bytes(qmux.LEGACY_MESSAGE_SIZE), LEGACY)
    # a length field far beyond the message allocates nothing and fails
    with pytest.raises(QMuxError, match="short frame"):
        decode_message(bytes.fromhex("0e0000bfffffff") + b"x", Q01)


def test_subprotocols() -> None:
    assert parse_subprotocol("qmux-01.moq-lite-05") == (Q01, "moq-lite-05")
    assert parse_subprotocol("qmux-02") == (Q02, None)
    assert parse_subprotocol("webtransport") == (LEGACY, None)
    assert parse_subprotocol(None) == (LEGACY, None)
    assert parse_subprotocol("webtransport.moq-lite-05") == (LEGACY, None)
    server = server_subprotocols(["moq-lite-06", "moq-lite-05", "moq-lite-04", "moq-lite-03", "moq-lite-02"])
    assert server[0] == "qmux-01.moq-lite-05"
    moqrs = split_subprotocols([
        "qmux-02.moq-lite-06, qmux-01.moq-lite-06, qmux-00.moq-lite-06, qmux-02.moq-lite-05, qmux-01.moq-lite-05, "
        "qmux-00.moq-lite-05, qmux-02.moql, qmux-01.moql, qmux-01.moqt-22, qmux-02, qmux-01, qmux-00, webtransport"])
    assert choose_subprotocol(moqrs, server) == "qmux-01.moq-lite-05"  # never the client's first entry
    lite022 = split_subprotocols(["qmux-00,webtransport"])
    assert choose_subprotocol(lite022, server) == "qmux-00"
    assert choose_subprotocol(["qmux-01.moqt-18"], server) is None
    only05 = server_subprotocols(["moq-lite-05"])
    assert "qmux-01" not in only05 and "webtransport" not in only05  # bare means the SETUP exchange
    offer = client_subprotocols(["moq-lite-06", "moq-lite-05", "moq-lite-02"])
    assert offer[:3] == ["qmux-02.moq-lite-06", "qmux-01.moq-lite-06", "qmux-00.moq-lite-06"]
    assert offer[-4:] == ["qmux-02", "qmux-01", "qmux-00", "webtransport"]

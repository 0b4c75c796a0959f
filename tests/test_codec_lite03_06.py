"""Sans-IO codecs for moq-lite-03..06.

Golden vectors marked "captured" were recorded on the wire between a moq-rs
0.5.1 (moq-ffi 0.4.18) client and server through a logging QUIC relay; those
marked "accepted" were built here and fed to moq-rs, which decoded them as
asserted. The rest come from the reference source or the draft, as noted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from moqt_asgi.protocol.codec import Codec
from moqt_asgi.protocol.errors import DecodeError, ErrorCode, ProtocolError
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.lite import Lite01Codec
from moqt_asgi.protocol.lite03 import Lite03Codec
from moqt_asgi.protocol.lite04 import Lite04Codec
from moqt_asgi.protocol.lite05 import Lite05Codec, ProbeLevel, Role
from moqt_asgi.protocol.lite06 import Lite06Codec
from moqt_asgi.protocol.lite_wire import (
    MAX_HOPS,
    AnnounceIds,
    FrameClock,
    HopEncoding,
    LiteBidi,
    LiteUni,
    zigzag_decode,
    zigzag_encode,
)
from moqt_asgi.protocol.messages import (
    Announce,
    AnnounceEnd,
    AnnounceInit,
    AnnounceOk,
    AnnouncePlease,
    AnnounceStart,
    AnnounceUpdate,
    Datagram,
    Fetch,
    Goaway,
    GroupHeader,
    LiteSetup,
    Probe,
    SessionInfo,
    Subscribe,
    SubscribeDrop,
    SubscribeEnd,
    SubscribeOk,
    SubscribeStart,
    SubscribeUpdate,
    TrackInfo,
    TrackRequest,
)
from moqt_asgi.protocol.scoped_codes import (
    SessionCode,
    StreamCode,
    from_session_code,
    from_stream_code,
    to_session_code,
    to_stream_code,
)
from moqt_asgi.protocol.versions import (
    ALPN_PREFERENCE,
    ALPN_TO_VERSION,
    LITE_02_VERSION,
    LITE_03_VERSION,
    LITE_05_VERSION,
    LITE_06_VERSION,
    SETUP_VERSIONS,
    choose_alpn,
    features_of,
    lookup_version,
    version_by_alpn,
    version_by_number,
    version_name,
)
from moqt_asgi.protocol.wire import decode_varint, encode_varint


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def s(text: str) -> bytes:
    """A length-prefixed string, as it appears on the wire."""
    raw = text.encode()
    return encode_varint(len(raw)) + raw


def unframe(data: bytes) -> bytes:
    size, pos = decode_varint(data)
    assert len(data) - pos == size, "length prefix must cover exactly the rest"
    return data[pos:]


def untype(data: bytes) -> tuple[int, bytes]:
    msg_type, pos = decode_varint(data)
    return msg_type, unframe(data[pos:])


L03 = Lite03Codec(DEFAULT_LIMITS)
L04 = Lite04Codec(DEFAULT_LIMITS)
L05 = Lite05Codec(DEFAULT_LIMITS)
L06 = Lite06Codec(DEFAULT_LIMITS)
ALL = (L03, L04, L05, L06)
CLOCK = "demo/clock"

# -- captured: lite-03 ---------------------------------------------------------

C03_ANNOUNCE_PLEASE = h("01 | 01 | 00")
C03_ANNOUNCE = h("0d 01") + s(CLOCK) + h("01")
C03_ANNOUNCE_ENDED = h("0c 00") + s("demo/gone") + h("00")
C03_ANNOUNCE_RELAYED = h("0d 01") + s("demo/range") + h("03")
C03_SUBSCRIBE = h("02 | 1a 00") + s(CLOCK) + s("seconds") + h("07 00 41f4 00 00")
C03_SUBSCRIBE_RANGE = h("02 | 14 00") + s("demo/range") + s("t") + h("07 00 41f4 06 09")
C03_SUBSCRIBE_OK = h("00 05 | 07 00 00 00 00")
C03_UPDATE = h("06 | 09 00 40fa 02 00")
C03_UPDATE_END = h("05 | c8 00 00 00 0c")
C03_GROUP = h("00 | 02 00 00") + s("g0f0") + s("g0f1")
C03_PROBE = h("04 | 84be6a7d")

# -- captured: lite-04 ---------------------------------------------------------

C04_ANNOUNCE_SUBSCRIBE = h("01 | 09 00 c01b99421dafa13d")
C04_ANNOUNCE = h("15 01") + s(CLOCK) + h("01 c001483262779bb2")
C04_ANNOUNCE_RELAYED = h("17 01") + s("demo/range") + h("03 0b 16 c0005f08d874762b")
C04_PROBE = h("05 | 833b427b 01")

# -- captured: lite-05 ---------------------------------------------------------

C05_CLIENT_SETUP = h("01 | 22 03") + h("02") + s("/some/path?jwt=abc") + h("05 08 c0096837316c6373 | 01 01 01")
C05_SERVER_SETUP = h("01 | 0e 02 | 01 01 01 | 05 08 c01bbfd09d25de06")
C05_ANNOUNCE_REQUEST = h("01 | 09 00 c0096837316c6373")
C05_ANNOUNCE_OK = h("09 c01bbfd09d25de06 01")
C05_ANNOUNCE = h("0d 01") + s(CLOCK) + h("00")
C05_ANNOUNCE_ROUTE = h("0f 01") + s("demo/range") + h("02 0b 16")
C05_TRACK = h("06 | 13") + s(CLOCK) + s("seconds")
C05_TRACK_INFO = h("06 | 05 00 47d0 43e8")
C05_TRACK_INFO_48K = h("0a | 02 00 8000ea60 8000bb80")
C05_SUBSCRIBE_START = h("00 01 00")
C05_SUBSCRIBE_START_5 = h("00 01 05")
C05_SUBSCRIBE_END = h("01 01 03")
C05_GROUP_0 = h("00 | 02 00 00 | 02") + s("g0f0") + h("01") + s("g0f1")
C05_GROUP_1 = h("00 | 02 00 01 | 47d2") + s("g1f0") + h("01") + s("g1f1")
C05_DATAGRAM = h("00 02 4bb8") + b"dgram"
C05_FETCH = h("03 | 0f") + s("demo/vod") + s("rec") + h("03 01")
C05_FETCH_RESPONSE = h("4060") + s("r1a") + h("4780") + s("r1b")

# -- captured: lite-06 ---------------------------------------------------------

C06_CLIENT_SETUP = h("01 | 22 03 | 01 01 01 | 05 08 c00e7e964e95e55d | 02") + s("/some/path?jwt=abc")
C06_ANNOUNCE_REQUEST = h("01 | 01 00")
C06_ANNOUNCE_OK = h("09 c00171b90ffbf050 01")
C06_ANNOUNCE_START = h("00 0e") + s(CLOCK) + h("00 00 00")
C06_ANNOUNCE_START_ROUTE = h("00 10") + s("demo/range") + h("02 0b 16 21 2c")
C06_ANNOUNCE_END = h("01 01 01")
C06_TRACK_INFO = h("05 | 05 47d0 43e8")
C06_SUBSCRIBE = h("02 | 1b 00") + s(CLOCK) + s("seconds") + h("07 41f4 00 00 00 00")
C06_SUBSCRIBE_RANGE = h("02 | 15 00") + s("demo/range") + s("t") + h("07 41f4 05 09 00 00")
C06_UPDATE_START_1 = h("07 | 09 40fa 01 00 00 00")
C06_UPDATE_START_6 = h("07 | 09 40fa 06 00 00 00")
C06_UPDATE_END_12 = h("06 | c8 00 00 0c 00 00")
C06_GROUP = h("00 | 03 00 00 00 | 02") + s("g0f0") + h("01") + s("g0f1")
C06_GROUP_FRAME_START = h("00 | 03 03 03 01 | 06") + s("g3f1")
C06_FETCH = h("03 | 11") + s("demo/vod") + s("rec") + h("03 01 00 00")

# -- accepted by moq-rs (built here) -------------------------------------------

A06_UPDATE_ANNOUNCE = h("02 05 | 00 01 09 01 02")
A06_SUBSCRIBE_FRAMES = h("02 | 0e 00") + s("r") + s("t") + h("01 8000ea60 03 05 00 02")


# -- stream types and features -------------------------------------------------


def test_stream_types_per_version() -> None:
    assert L03.bidi_stream_type(0x1) is LiteBidi.ANNOUNCE
    assert L03.bidi_stream_type(0x5) is None  # GOAWAY arrives in lite-04
    assert L04.bidi_stream_type(0x5) is LiteBidi.GOAWAY
    assert L04.bidi_stream_type(0x6) is None
    assert L05.bidi_stream_type(0x6) is LiteBidi.TRACK
    assert L06.bidi_stream_type(0x0) is None  # no session stream after lite-02
    assert L06.bidi_stream_type(0x40) is None
    assert L04.uni_stream_type(0x1) is None
    assert L05.uni_stream_type(0x1) is LiteUni.SETUP
    assert L05.uni_stream_type(0x0) is LiteUni.GROUP
    assert L05.encode_stream_type(LiteBidi.TRACK) == h("06")


def test_features() -> None:
    assert features_of(Codec).session_stream and features_of(Lite01Codec).announce_init
    assert not features_of(Codec).subscribe_update
    f03, f04, f05, f06 = (features_of(c) for c in ALL)
    assert Lite03Codec.alpn is not None and not f03.session_stream and f03.hops is HopEncoding.COUNT
    assert f04.hops is HopEncoding.IDS and f04.exclude_hop and f04.goaway and f04.probe_rtt and not f03.probe_rtt
    assert f05.setup_stream and f05.announce_ok and f05.subscribe_start_end
    assert f05.frame_timestamps and f05.datagrams and f05.track_stream and f05.exclude_hop
    assert f06.announce_ids and f06.frame_ranges and not f06.exclude_hop
    assert all(not f.unknown_stream_fatal for f in (f03, f04, f05, f06))


def test_version_tables() -> None:
    assert [v.alpn for v in ALPN_TO_VERSION.values()] == ["moq-lite-06", "moq-lite-05", "moq-lite-04", "moq-lite-03"]
    assert ALPN_PREFERENCE[-1] == "moql"
    assert version_by_alpn("moq-lite-05") is LITE_05_VERSION
    assert version_by_alpn("moql") is None and version_by_alpn(None) is None
    # moq-rs offers these ALPNs, in this order (interop notes §2.2).
    offered = ["moq-lite-06", "moq-lite-05", "moq-lite-04", "moq-lite-03", "moql", "moqt-22", "moq-00"]
    assert choose_alpn(offered) == "moq-lite-06"
    assert choose_alpn(["moql", "moq-lite-03"], ("moql",)) == "moql"
    assert choose_alpn(["h3"]) is None
    found = lookup_version(0xFF0DAD04)
    assert found is not None and found.name == "moq-lite-04"
    assert lookup_version(0xFEEDBABE) is not None
    assert version_by_number(0xFF0DAD03) is None  # only SETUP-negotiated versions
    assert version_name(0xFF0DAD06) == "moq-lite-06"
    assert SETUP_VERSIONS[0] is LITE_02_VERSION
    assert LITE_03_VERSION.setup_in_alpn and not LITE_03_VERSION.has_setup_stream
    assert LITE_06_VERSION.uni_setup and LITE_06_VERSION.has_setup_stream and not LITE_06_VERSION.bidi_setup
    assert LITE_02_VERSION.bidi_setup and LITE_02_VERSION.alpn is None
    for version in ALPN_TO_VERSION.values():
        codec = version.new_codec(DEFAULT_LIMITS)
        assert codec.version == version.number and codec.name == version.name


# -- golden: lite-03 -----------------------------------------------------------


def test_lite03_golden_announce() -> None:
    assert L03.encode_stream_type(LiteBidi.ANNOUNCE) + L03.encode_announce_please(AnnouncePlease("")) == C03_ANNOUNCE_PLEASE
    assert L03.decode_announce(unframe(C03_ANNOUNCE)) == Announce(True, CLOCK, (0,))
    assert L03.encode_announce(Announce(True, CLOCK, (0,))) == C03_ANNOUNCE
    assert L03.decode_announce(unframe(C03_ANNOUNCE_ENDED)) == Announce(False, "demo/gone")
    assert L03.encode_announce(Announce(False, "demo/gone")) == C03_ANNOUNCE_ENDED
    # A route of two hops relayed once: the count only (ids are lost in lite-03).
    assert L03.decode_announce(unframe(C03_ANNOUNCE_RELAYED)).hops == (0, 0, 0)
    assert L03.encode_announce(Announce(True, "demo/range", (11, 22, 5))) == C03_ANNOUNCE_RELAYED


def test_lite03_golden_subscribe() -> None:
    sub = Subscribe(0, CLOCK, "seconds", 7, max_latency_ms=500)
    assert L03.encode_stream_type(LiteBidi.SUBSCRIBE) + L03.encode_subscribe(sub) == C03_SUBSCRIBE
    assert L03.decode_subscribe(unframe(C03_SUBSCRIBE[1:])) == sub
    ranged = Subscribe(0, "demo/range", "t", 7, max_latency_ms=500, start_group=5, end_group=8)
    assert L03.decode_subscribe(unframe(C03_SUBSCRIBE_RANGE[1:])) == ranged
    assert L03.encode_subscribe(ranged) == C03_SUBSCRIBE_RANGE[1:]
    ok = SubscribeOk(7)
    assert L03.encode_subscribe_ok(ok) == C03_SUBSCRIBE_OK
    assert L03.encode_subscribe_response(ok) == C03_SUBSCRIBE_OK
    assert L03.decode_subscribe_response(*untype(C03_SUBSCRIBE_OK)) == ok
    update = SubscribeUpdate(9, max_latency_ms=250, start_group=1)
    assert L03.encode_subscribe_update(update) == C03_UPDATE
    assert L03.decode_subscribe_update(unframe(C03_UPDATE)) == update
    assert L03.decode_subscribe_update(unframe(C03_UPDATE_END)) == SubscribeUpdate(200, end_group=11)


def test_lite03_golden_group_and_probe() -> None:
    header = GroupHeader(0, 0)
    assert L03.encode_group_header(header) + L03.encode_frame(b"g0f0") + L03.encode_frame(b"g0f1") == C03_GROUP
    assert L03.decode_group_header(unframe(C03_GROUP[1:4])) == header
    assert L03.decode_probe(unframe(C03_PROBE)) == Probe(0x04BE6A7D)
    assert L03.encode_probe(Probe(0x04BE6A7D, rtt_ms=3)) == C03_PROBE  # lite-03 has no RTT


# -- golden: lite-04 -----------------------------------------------------------


def test_lite04_golden() -> None:
    please = AnnouncePlease("", 0x1B99421DAFA13D)
    assert L04.encode_stream_type(LiteBidi.ANNOUNCE) + L04.encode_announce_please(please) == C04_ANNOUNCE_SUBSCRIBE
    assert L04.decode_announce_please(unframe(C04_ANNOUNCE_SUBSCRIBE[1:])) == please
    announce = Announce(True, CLOCK, (0x01483262779BB2,))
    assert L04.decode_announce(unframe(C04_ANNOUNCE)) == announce
    assert L04.encode_announce(announce) == C04_ANNOUNCE
    relayed = Announce(True, "demo/range", (11, 22, 0x005F08D874762B))
    assert L04.decode_announce(unframe(C04_ANNOUNCE_RELAYED)) == relayed
    assert L04.encode_announce(relayed) == C04_ANNOUNCE_RELAYED
    probe = Probe(0x033B427B, 1)
    assert L04.decode_probe(unframe(C04_PROBE)) == probe
    assert L04.encode_probe(probe) == C04_PROBE
    # Subscribe layouts are lite-03's (captured identical).
    assert L04.decode_subscribe(unframe(C03_SUBSCRIBE[1:])) == L03.decode_subscribe(unframe(C03_SUBSCRIBE[1:]))


def test_lite04_goaway_accepted() -> None:
    # Accepted: moq-rs logged "received goaway uri=moql://127.0.0.1:9/elsewhere".
    data = L04.encode_stream_type(LiteBidi.GOAWAY) + L04.encode_goaway(Goaway("moql://127.0.0.1:9/elsewhere"))
    assert data == h("05 1d") + s("moql://127.0.0.1:9/elsewhere")
    assert L04.decode_goaway(unframe(data[1:])) == Goaway("moql://127.0.0.1:9/elsewhere")
    assert L04.encode_goaway(Goaway()) == h("01 00")


# -- golden: lite-05 -----------------------------------------------------------


def test_lite05_golden_setup() -> None:
    client = LiteSetup(probe=ProbeLevel.REPORT, path="/some/path?jwt=abc", origin=0x096837316C6373)
    assert L05.decode_setup(unframe(C05_CLIENT_SETUP[1:])) == client
    server = LiteSetup(probe=ProbeLevel.REPORT, origin=0x1BBFD09D25DE06)
    assert L05.decode_setup(unframe(C05_SERVER_SETUP[1:])) == server
    # moq-rs writes parameters in hash order; ours go in id order.
    assert L05.encode_setup_stream(server) == C05_SERVER_SETUP
    ours = L05.encode_setup_stream(client)
    assert ours[:2] == C05_CLIENT_SETUP[:2] and sorted(ours) == sorted(C05_CLIENT_SETUP)
    assert L05.decode_setup(unframe(ours[1:])) == client


def test_lite05_golden_announce() -> None:
    assert L05.decode_announce_please(unframe(C05_ANNOUNCE_REQUEST[1:])) == AnnouncePlease("", 0x096837316C6373)
    ok = AnnounceOk(0x1BBFD09D25DE06, 1)
    assert L05.decode_announce_ok(unframe(C05_ANNOUNCE_OK)) == ok
    assert L05.encode_announce_ok(ok) == C05_ANNOUNCE_OK
    assert L05.decode_announce(unframe(C05_ANNOUNCE)) == Announce(True, CLOCK)
    assert L05.encode_announce(Announce(True, CLOCK)) == C05_ANNOUNCE
    assert L05.decode_announce(unframe(C05_ANNOUNCE_ROUTE)) == Announce(True, "demo/range", (11, 22))
    # lite-05 reads status 2 (restart) as "active again".
    restart = h("0d 02") + s(CLOCK) + h("00")
    assert L05.decode_announce(unframe(restart)) == Announce(True, CLOCK)


def test_lite05_golden_track_and_subscribe() -> None:
    request = TrackRequest(CLOCK, "seconds")
    assert L05.encode_stream_type(LiteBidi.TRACK) + L05.encode_track_request(request) == C05_TRACK
    assert L05.decode_track_request(unframe(C05_TRACK[1:])) == request
    info = TrackInfo(5, 2000, 1000)
    assert L05.decode_track_info(unframe(C05_TRACK_INFO)) == info
    assert L05.encode_track_info(info) == C05_TRACK_INFO
    assert L05.decode_track_info(unframe(C05_TRACK_INFO_48K)) == TrackInfo(2, 60000, 48000)
    assert L05.encode_track_info(TrackInfo(2, 60000, 48000)) == C05_TRACK_INFO_48K
    assert L05.decode_subscribe(unframe(C03_SUBSCRIBE[1:])) == Subscribe(0, CLOCK, "seconds", 7, max_latency_ms=500)
    assert L05.decode_subscribe_response(*untype(C05_SUBSCRIBE_START)) == SubscribeStart(0)
    assert L05.encode_subscribe_response(SubscribeStart(5)) == C05_SUBSCRIBE_START_5
    assert L05.decode_subscribe_response(*untype(C05_SUBSCRIBE_END)) == SubscribeEnd(3)
    assert L05.encode_subscribe_response(SubscribeEnd(3)) == C05_SUBSCRIBE_END


def test_lite05_golden_timed_frames() -> None:
    # Frames at 1 ms and 0 ms (timescale 1000), then 1001 ms and 1000 ms.
    for data, sequence, stamps in ((C05_GROUP_0, 0, (1, 0)), (C05_GROUP_1, 1, (1001, 1000))):
        out = L05.encode_group_header(GroupHeader(0, sequence))
        clock = L05.new_frame_clock()
        for index, stamp in enumerate(stamps):
            out += L05.encode_timed_frame(b"g%df%d" % (sequence, index), clock, stamp)
        assert out == data
    clock = FrameClock()
    assert L05.encode_timed_frame(b"r1a", clock, 48) + L05.encode_timed_frame(b"r1b", clock, 1008) == C05_FETCH_RESPONSE
    reader = FrameClock()
    delta, _ = decode_varint(C05_FETCH_RESPONSE)
    assert reader.decode(delta) == 48


def test_lite05_golden_fetch_and_datagram() -> None:
    fetch = Fetch("demo/vod", "rec", 3, 1)
    assert L05.encode_stream_type(LiteBidi.FETCH) + L05.encode_fetch(fetch) == C05_FETCH
    assert L05.decode_fetch(unframe(C05_FETCH[1:])) == fetch
    datagram = Datagram(0, 2, 3000, b"dgram")
    assert L05.decode_datagram(C05_DATAGRAM) == datagram
    assert L05.encode_datagram(datagram) == C05_DATAGRAM
    assert L06.decode_datagram(C05_DATAGRAM) == datagram  # unchanged in lite-06 (captured)


# -- golden: lite-06 -----------------------------------------------------------


def test_lite06_golden_setup_and_announce() -> None:
    setup = LiteSetup(probe=1, path="/some/path?jwt=abc", origin=0x0E7E964E95E55D)
    assert L06.decode_setup(unframe(C06_CLIENT_SETUP[1:])) == setup
    assert L06.encode_stream_type(LiteBidi.ANNOUNCE) + L06.encode_announce_please(AnnouncePlease("", 99)) == C06_ANNOUNCE_REQUEST
    assert L06.decode_announce_please(unframe(C06_ANNOUNCE_REQUEST[1:])) == AnnouncePlease("")
    assert L06.decode_announce_ok(unframe(C06_ANNOUNCE_OK)) == AnnounceOk(0x0171B90FFBF050, 1)
    start = AnnounceStart(CLOCK)
    assert L06.decode_announcement(*untype(C06_ANNOUNCE_START)) == start
    assert L06.encode_announcement(start) == C06_ANNOUNCE_START
    routed = AnnounceStart("demo/range", (11, 22), 33, 44)
    assert L06.decode_announcement(*untype(C06_ANNOUNCE_START_ROUTE)) == routed
    assert L06.encode_announcement(routed) == C06_ANNOUNCE_START_ROUTE
    assert L06.decode_announcement(*untype(C06_ANNOUNCE_END)) == AnnounceEnd(1)
    assert L06.encode_announcement(AnnounceEnd(1)) == C06_ANNOUNCE_END
    # Accepted: moq-rs applied it as a new route [9] with cost 1 / cold 2 for announce id 0.
    update = AnnounceUpdate(0, (9,), 1, 2)
    assert L06.encode_announcement(update) == A06_UPDATE_ANNOUNCE
    assert L06.decode_announcement(*untype(A06_UPDATE_ANNOUNCE)) == update


def test_lite06_golden_subscribe() -> None:
    sub = Subscribe(0, CLOCK, "seconds", 7, max_latency_ms=500)
    assert L06.encode_stream_type(LiteBidi.SUBSCRIBE) + L06.encode_subscribe(sub) == C06_SUBSCRIBE
    assert L06.decode_subscribe(unframe(C06_SUBSCRIBE[1:])) == sub
    # moq-rs: start_group Some(5), end_group Some(8); the start is not offset by one.
    ranged = Subscribe(0, "demo/range", "t", 7, max_latency_ms=500, start_group=5, end_group=8)
    assert L06.decode_subscribe(unframe(C06_SUBSCRIBE_RANGE[1:])) == ranged
    assert L06.encode_subscribe(ranged) == C06_SUBSCRIBE_RANGE[1:]
    # Accepted: moq-rs decoded start Some(3), end Some(4), end frame Some(1) and sent
    # group 3 whole and frames 0..1 of group 4.
    framed = Subscribe(0, "r", "t", 1, max_latency_ms=60000, start_group=3, end_group=4, end_frame=1)
    assert L06.decode_subscribe(unframe(A06_SUBSCRIBE_FRAMES[1:])) == framed
    assert L06.encode_subscribe(framed) == A06_SUBSCRIBE_FRAMES[1:]
    assert L06.decode_subscribe_update(unframe(C06_UPDATE_START_1)) == SubscribeUpdate(9, max_latency_ms=250, start_group=1)
    for data, update in (
        (C06_UPDATE_START_6, SubscribeUpdate(9, max_latency_ms=250, start_group=6)),
        (C06_UPDATE_END_12, SubscribeUpdate(200, end_group=11)),
    ):
        assert L06.decode_subscribe_update(unframe(data)) == update
        assert L06.encode_subscribe_update(update) == data


def test_lite06_start_group_zero_is_absent() -> None:
    # moq-rs writes a start of group 0 as 0, which also means "none": it cannot be asked for.
    assert L06.encode_subscribe(Subscribe(0, "r", "t", 1, start_group=0)) == L06.encode_subscribe(Subscribe(0, "r", "t", 1))
    assert L05.encode_subscribe(Subscribe(0, "r", "t", 1, start_group=0)) != L05.encode_subscribe(Subscribe(0, "r", "t", 1))


def test_lite06_golden_track_group_fetch() -> None:
    info = TrackInfo(5, 2000, 1000)
    assert L06.decode_track_info(unframe(C06_TRACK_INFO)) == info
    assert L06.encode_track_info(TrackInfo(5, 2000, 1000, ordered=True)) == C06_TRACK_INFO  # no ordered byte
    out = L06.encode_group_header(GroupHeader(0, 0))
    clock = FrameClock()
    out += L06.encode_timed_frame(b"g0f0", clock, 1) + L06.encode_timed_frame(b"g0f1", clock, 0)
    assert out == C06_GROUP
    # Captured: group 3 starting at frame 1 (timestamp 3 ms, delta from 0).
    header = GroupHeader(3, 3, 1)
    assert L06.decode_group_header(unframe(C06_GROUP_FRAME_START[1:5])) == header
    assert L06.encode_group_header(header) + L06.encode_timed_frame(b"g3f1", FrameClock(), 3) == C06_GROUP_FRAME_START
    fetch = Fetch("demo/vod", "rec", 3, 1)
    assert L06.encode_stream_type(LiteBidi.FETCH) + L06.encode_fetch(fetch) == C06_FETCH
    assert L06.decode_fetch(unframe(C06_FETCH[1:])) == fetch
    ranged = Fetch("r", "t", 1, 2, start_frame=1, end_frame=2)
    assert L06.decode_fetch(unframe(L06.encode_fetch(ranged))) == ranged
    assert L06.encode_subscribe_response(SubscribeEnd(3)) == C05_SUBSCRIBE_END


# -- round trips ---------------------------------------------------------------

SUBSCRIBES = (
    Subscribe(0, "", "", 0),
    Subscribe(1 << 40, "room/1/cam", "video", 255, ordered=True, max_latency_ms=1 << 20, start_group=0, end_group=7),
    Subscribe(3, "a", "b", 1, start_group=9),
)


def roundtrip(encode: Callable[[Any], bytes], decode: Callable[[bytes], Any], msg: Any) -> None:
    assert decode(unframe(encode(msg))) == msg


@pytest.mark.parametrize("codec", ALL, ids=lambda c: c.name)
def test_roundtrip_common(codec: Lite03Codec) -> None:
    features = codec.features
    roundtrip(codec.encode_announce_please, codec.decode_announce_please,
              AnnouncePlease("room", 77 if features.exclude_hop else 0))
    for sub in SUBSCRIBES:
        expected = sub
        if features.frame_ranges:
            expected = Subscribe(sub.subscribe_id, sub.broadcast, sub.track, sub.priority, False, sub.max_latency_ms,
                                 sub.start_group or None, sub.end_group)
        assert codec.decode_subscribe(unframe(codec.encode_subscribe(sub))) == expected
    update = SubscribeUpdate(4, not features.frame_ranges, 30, 2, 8)
    roundtrip(codec.encode_subscribe_update, codec.decode_subscribe_update, update)
    drop = SubscribeDrop(3, 5, 66)
    assert codec.decode_subscribe_response(*untype(codec.encode_subscribe_response(drop))) == drop
    probe = Probe(5_000_000, 40 if features.probe_rtt else None)
    roundtrip(codec.encode_probe, codec.decode_probe, probe)
    assert codec.decode_probe(unframe(codec.encode_probe(Probe(0, 0)))) == Probe(1, 1 if features.probe_rtt else None)
    assert codec.decode_probe(unframe(codec.encode_probe(Probe()))) == Probe()
    roundtrip(codec.encode_fetch, codec.decode_fetch, Fetch("x/y", "t", 200, 1 << 33))
    header = GroupHeader(1 << 30, 12, 4 if features.frame_ranges else 0)
    assert codec.decode_group_header(unframe(codec.encode_group_header(header)[1:])) == header
    if not features.announce_ids:
        hops = (1, 2, 3) if features.hops is HopEncoding.IDS else (0, 0)
        roundtrip(codec.encode_announce, codec.decode_announce, Announce(True, "a/b", hops))
        roundtrip(codec.encode_announce, codec.decode_announce, Announce(False, "", ()))


@pytest.mark.parametrize("codec", (L03, L04), ids=lambda c: c.name)
def test_roundtrip_subscribe_ok(codec: Lite03Codec) -> None:
    for ok in (SubscribeOk(0), SubscribeOk(255, True, 99, 4, 9)):
        assert codec.decode_subscribe_response(*untype(codec.encode_subscribe_response(ok))) == ok
    assert codec.decode_subscribe_response(*untype(codec.encode_subscribe_ok(SubscribeOk()))) == SubscribeOk(0)


@pytest.mark.parametrize("codec", (L05, L06), ids=lambda c: c.name)
def test_roundtrip_lite05_plus(codec: Lite05Codec) -> None:
    for setup in (
        LiteSetup(),
        LiteSetup(ProbeLevel.INCREASE, "", Role.PUBLISHER, 0, 1 << 50),
        LiteSetup(ProbeLevel.REPORT, "/ü?x=1", Role.SUBSCRIBER, extensions=((0x40, b""), (0xBEEF, b"abc"))),
    ):
        data = codec.encode_setup_stream(setup)
        assert data[0] == LiteUni.SETUP
        assert codec.decode_setup(unframe(data[1:])) == setup
    assert codec.encode_setup_stream(LiteSetup()) == h("01 01 00")
    roundtrip(codec.encode_announce_ok, codec.decode_announce_ok, AnnounceOk(0, 0))
    roundtrip(codec.encode_announce_ok, codec.decode_announce_ok, AnnounceOk(1 << 61, 1000))
    roundtrip(codec.encode_track_request, codec.decode_track_request, TrackRequest("a/b", ""))
    info = TrackInfo(255, 1 << 40, 90000, ordered=codec.track_info_has_ordered)
    roundtrip(codec.encode_track_info, codec.decode_track_info, info)
    for msg in (SubscribeStart(0), SubscribeStart(1 << 50), SubscribeEnd(0), SubscribeEnd(9)):
        assert codec.decode_subscribe_response(*untype(codec.encode_subscribe_response(msg))) == msg
    for datagram in (Datagram(0, 0, 0, b""), Datagram(1 << 40, 1 << 30, 1 << 50, b"x" * 1000)):
        assert codec.decode_datagram(codec.encode_datagram(datagram)) == datagram
    roundtrip(codec.encode_goaway, codec.decode_goaway, Goaway("https://relay.example/next?jwt=1"))


def test_roundtrip_lite06_announcements() -> None:
    for msg in (
        AnnounceStart(""),
        AnnounceStart("a/b", tuple(range(1, MAX_HOPS + 1)), 1 << 40, 7),
        AnnounceEnd(1 << 33),
        AnnounceUpdate(5, (), 0, 0),
        AnnounceUpdate(0, (1 << 61,), 2, 3),
    ):
        assert L06.decode_announcement(*untype(L06.encode_announcement(msg))) == msg
    update = SubscribeUpdate(1, False, 0, None, 4, 3, 2)
    roundtrip(L06.encode_subscribe_update, L06.decode_subscribe_update, update)


# -- version mismatches --------------------------------------------------------


def test_messages_a_version_lacks() -> None:
    for codec in ALL:
        for call in (
            lambda c=codec: c.encode_session_info(SessionInfo(1)),
            lambda c=codec: c.decode_session_info(b"\x01"),
            lambda c=codec: c.encode_announce_init(AnnounceInit(())),
            lambda c=codec: c.decode_announce_init(b"\x00"),
        ):
            with pytest.raises(ProtocolError) as info:
                call()
            assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    for call in (
        lambda: L03.encode_goaway(Goaway()),
        lambda: L03.decode_goaway(b"\x00"),
        lambda: L05.encode_subscribe_ok(SubscribeOk()),
        lambda: L05.decode_subscribe_ok(b"\x00\x00\x00\x00\x00"),
        lambda: L05.encode_subscribe_response(SubscribeOk()),
        lambda: L03.encode_subscribe_response(SubscribeStart(0)),
        lambda: L06.encode_announce(Announce(True, "a")),
        lambda: L06.decode_announce(b"\x01\x00\x00"),
    ):
        with pytest.raises(ProtocolError):
            call()


# -- malformed input -----------------------------------------------------------


def _framed_cases() -> list[tuple[str, Callable[[bytes], Any], bytes]]:
    cases: list[tuple[str, Callable[[bytes], Any], bytes]] = []
    for codec in ALL:
        n = codec.name
        please = codec.encode_announce_please(AnnouncePlease("ab", 300))
        update = codec.encode_subscribe_update(SubscribeUpdate(1, False, 2, 3, 4))
        cases += [
            (f"{n} announce_please", codec.decode_announce_please, unframe(please)),
            (f"{n} subscribe", codec.decode_subscribe, unframe(codec.encode_subscribe(SUBSCRIBES[1]))),
            (f"{n} update", codec.decode_subscribe_update, unframe(update)),
            (f"{n} drop", codec.decode_subscribe_drop, untype(codec.encode_subscribe_drop(SubscribeDrop(1, 2, 3)))[1]),
            (f"{n} probe", codec.decode_probe, unframe(codec.encode_probe(Probe(1000, 9)))),
            (f"{n} fetch", codec.decode_fetch, unframe(codec.encode_fetch(Fetch("b", "t", 1, 300)))),
            (f"{n} group", codec.decode_group_header, unframe(codec.encode_group_header(GroupHeader(70, 80, 2))[1:])),
        ]
        if not codec.features.announce_ids:
            cases.append((f"{n} announce", codec.decode_announce, unframe(codec.encode_announce(Announce(True, "ab", (0, 0))))))
    cases += [
        ("03 subscribe_ok", L03.decode_subscribe_ok, untype(L03.encode_subscribe_ok(SubscribeOk(1, True, 2, 3, 4)))[1]),
        ("04 goaway", L04.decode_goaway, unframe(L04.encode_goaway(Goaway("uri")))),
        ("05 setup", L05.decode_setup, unframe(L05.encode_setup_stream(LiteSetup(1, "/p", 1, 2, 3))[1:])),
        ("05 announce_ok", L05.decode_announce_ok, unframe(L05.encode_announce_ok(AnnounceOk(300, 2)))),
        ("05 track", L05.decode_track_request, unframe(L05.encode_track_request(TrackRequest("a", "b")))),
        ("05 track_info", L05.decode_track_info, unframe(L05.encode_track_info(TrackInfo(1, 300, 1000, True)))),
        ("06 track_info", L06.decode_track_info, unframe(L06.encode_track_info(TrackInfo(1, 300, 1000)))),
        ("06 start", lambda b: L06.decode_announcement(0, b), untype(L06.encode_announcement(AnnounceStart("a", (1,), 2, 3)))[1]),
        ("06 update", lambda b: L06.decode_announcement(2, b), untype(L06.encode_announcement(AnnounceUpdate(1, (1,), 2, 3)))[1]),
        ("06 end", lambda b: L06.decode_announcement(1, b), untype(L06.encode_announcement(AnnounceEnd(300)))[1]),
        ("05 start", lambda b: L05.decode_subscribe_response(0, b), untype(L05.encode_subscribe_response(SubscribeStart(3)))[1]),
        ("05 end", lambda b: L05.decode_subscribe_response(1, b), untype(L05.encode_subscribe_response(SubscribeEnd(300)))[1]),
    ]
    return cases


FRAMED = _framed_cases()


@pytest.mark.parametrize(("decode", "body"), [(d, b) for _, d, b in FRAMED], ids=[n for n, _, _ in FRAMED])
def test_truncated_and_trailing(decode: Callable[[bytes], Any], body: bytes) -> None:
    decode(body)
    for cut in range(len(body)):
        with pytest.raises(ProtocolError):
            decode(body[:cut])
    with pytest.raises(DecodeError):
        decode(body + b"\x00")


def test_datagram_malformed() -> None:
    for cut in range(3):
        with pytest.raises(DecodeError):
            L05.decode_datagram(C05_DATAGRAM[:cut])
    with pytest.raises(ProtocolError) as info:
        L05.decode_datagram(b"\x00" * 1201)
    assert info.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(ValueError):
        L05.encode_datagram(Datagram(0, 0, 0, b"x" * 1198))


def _code(call: Callable[[], Any]) -> int:
    with pytest.raises(ProtocolError) as info:
        call()
    return info.value.code


def test_bad_values() -> None:
    pv = ErrorCode.PROTOCOL_VIOLATION
    sub_body = bytearray(unframe(L03.encode_subscribe(Subscribe(0, "a", "b", 1))))
    sub_body[6] = 2  # ordered
    assert _code(lambda: L03.decode_subscribe(bytes(sub_body))) == pv
    assert _code(lambda: L03.decode_subscribe_ok(h("07 02 00 00 00"))) == pv
    assert _code(lambda: L05.decode_track_info(h("01 02 00 01"))) == pv
    assert _code(lambda: L05.decode_track_info(h("01 00 00 00"))) == pv  # timescale 0
    assert _code(lambda: L06.decode_track_info(h("01 00 00"))) == pv
    assert _code(lambda: L03.decode_announce(h("02") + s("a") + h("00"))) == pv  # restart needs lite-05
    assert _code(lambda: L04.decode_announce(h("02") + s("a") + h("00"))) == pv
    assert _code(lambda: L05.decode_announce(h("03") + s("a") + h("00"))) == pv
    assert _code(lambda: L03.decode_subscribe_response(2, b"")) == ErrorCode.UNEXPECTED_MESSAGE
    assert _code(lambda: L05.decode_subscribe_response(3, b"\x00")) == ErrorCode.UNEXPECTED_MESSAGE
    assert _code(lambda: L06.decode_announcement(3, b"\x00")) == ErrorCode.UNEXPECTED_MESSAGE
    assert _code(lambda: L03.decode_subscribe_drop(h("05 04 00"))) == pv
    # An end frame without an end group (moq-rs: "invalid subscribe location").
    assert _code(lambda: L06.decode_subscribe(h("00") + s("r") + s("t") + h("01 00 03 00 00 02"))) == pv
    assert _code(lambda: L06.decode_subscribe_update(h("01 00 03 00 00 02"))) == pv
    with pytest.raises(ValueError):
        L06.encode_subscribe(Subscribe(0, "r", "t", 1, end_frame=2))
    with pytest.raises(ValueError):
        L03.encode_subscribe(Subscribe(0, "r", "t", 256))
    with pytest.raises(ValueError):
        L05.encode_track_info(TrackInfo(1, 0, 0))


def test_hop_limits() -> None:
    too_many = encode_varint(MAX_HOPS + 1) + b"\x01" * (MAX_HOPS + 1)
    assert _code(lambda: L04.decode_announce(h("01") + s("a") + too_many)) == ErrorCode.BOUNDS_EXCEEDED
    assert _code(lambda: L03.decode_announce(h("01") + s("a") + encode_varint(1 << 40))) == ErrorCode.BOUNDS_EXCEEDED
    assert _code(lambda: L06.decode_announcement(0, s("a") + too_many + h("00 00"))) == ErrorCode.BOUNDS_EXCEEDED
    full = tuple(range(MAX_HOPS))
    assert L04.decode_announce(unframe(L04.encode_announce(Announce(True, "a", full)))).hops == full
    with pytest.raises(ValueError):
        L04.encode_announce(Announce(True, "a", (*full, 1)))
    with pytest.raises(ValueError):
        L03.encode_announce(Announce(True, "a", (*full, 1)))


def test_oversize_fields() -> None:
    small = Limits(max_path_length=4, max_parameters=2, max_announcements=3)
    codec = Lite06Codec(small)
    assert _code(lambda: codec.decode_announce_please(s("abcde"))) == ErrorCode.TOO_LARGE
    assert _code(lambda: codec.decode_subscribe(h("00") + s("abcde") + s("t") + h("00 00 00 00 00 00"))) == ErrorCode.TOO_LARGE
    assert _code(lambda: codec.decode_announcement(0, s("abcde") + h("00 00 00"))) == ErrorCode.TOO_LARGE
    assert _code(lambda: codec.decode_track_request(s("a") + s("abcde"))) == ErrorCode.TOO_LARGE
    assert _code(lambda: codec.decode_setup(h("03 40 00 41 00 42 00"))) == ErrorCode.TOO_MANY_PARAMETERS
    assert _code(lambda: codec.decode_setup(h("01 02") + s("/abcd"))) == ErrorCode.TOO_LARGE
    assert _code(lambda: codec.decode_announce_ok(h("01 04"))) == ErrorCode.TOO_LARGE
    assert _code(lambda: L04.decode_goaway(encode_varint(9000) + b"x" * 9000)) == ErrorCode.TOO_LARGE
    big = Lite05Codec(Limits(max_message_size=8))
    assert _code(lambda: big.decode_setup(h("01 40") + s("x" * 9))) == ErrorCode.TOO_LARGE
    with pytest.raises(ValueError):
        codec.encode_setup_stream(LiteSetup(1, "/", extensions=((0x40, b""),)))


def test_setup_rules() -> None:
    pv = ErrorCode.PROTOCOL_VIOLATION
    assert _code(lambda: L05.decode_setup(h("02 01 01 01 01 01 02"))) == pv  # duplicate id
    assert _code(lambda: L05.decode_setup(h("01 02 02 c3 28"))) == pv  # path not UTF-8
    assert _code(lambda: L05.decode_setup(h("01 01 02 01 01"))) == ErrorCode.DECODE  # varint + trailing byte
    assert _code(lambda: L05.decode_setup(h("01 01 01 40"))) == ErrorCode.DECODE  # truncated varint
    assert _code(lambda: L05.decode_setup(h("01 01 00"))) == ErrorCode.DECODE  # empty varint
    # Unknown probe levels saturate; unknown or "both" roles read as none; origin 0 is none.
    assert L05.decode_setup(h("03 01 02 4063 03 01 00 05 01 00")) == LiteSetup(ProbeLevel.INCREASE)
    assert L05.decode_setup(h("01 03 01 09")).role is None
    assert L05.decode_setup(h("01 03 01 02")).role == Role.SUBSCRIBER
    assert L05.decode_setup(h("02 04 01 00 3f 02 4000")) == LiteSetup(cost=0, extensions=((0x3F, h("4000")),))
    assert L05.decode_setup(h("01 02 00")) == LiteSetup(path="")
    with pytest.raises(ValueError):
        L05.encode_setup_stream(LiteSetup(extensions=((2, b"x"),)))  # collides with Path
    with pytest.raises(ValueError):
        Lite05Codec(Limits(max_parameters=1)).encode_setup_stream(LiteSetup(1, "/"))


# -- timestamps and announce ids -----------------------------------------------


def test_zigzag() -> None:
    for value, wire in ((0, 0), (-1, 1), (1, 2), (-2, 3), (2, 4), (1001, 2002), (-(1 << 61), (1 << 62) - 1)):
        assert zigzag_encode(value) == wire
        assert zigzag_decode(wire) == value
    for value in (1 << 61, -(1 << 61) - 1):
        with pytest.raises(ValueError):
            zigzag_encode(value)


def test_frame_clock() -> None:
    sender, receiver = FrameClock(), FrameClock()
    for stamp in (0, 1000, 999, 5, 1 << 40, 0):
        delta, _ = decode_varint(sender.encode(stamp))
        assert receiver.decode(delta) == stamp
    with pytest.raises(ProtocolError) as info:
        FrameClock().decode(1)  # -1 from 0
    assert info.value.code == ErrorCode.BOUNDS_EXCEEDED
    with pytest.raises(ValueError):
        FrameClock().encode(-1)


def test_announce_ids() -> None:
    table = AnnounceIds(limit=2)
    assert table.apply(AnnounceStart("a")) == ("a", True)
    assert table.start("b") == 1
    assert table.id_of("b") == 1 and len(table) == 2
    assert _code(lambda: table.start("c")) == ErrorCode.TOO_LARGE
    assert _code(lambda: table.start("a")) == ErrorCode.PROTOCOL_VIOLATION
    assert table.apply(AnnounceUpdate(0, (1,))) == ("a", True)
    assert table.apply(AnnounceEnd(0)) == ("a", False)
    assert _code(lambda: table.apply(AnnounceEnd(0))) == ErrorCode.PROTOCOL_VIOLATION  # retired
    assert _code(lambda: table.apply(AnnounceUpdate(7))) == ErrorCode.PROTOCOL_VIOLATION  # never assigned
    assert table.start("a") == 2  # ids are never reused
    assert table.id_of("zzz") is None


# -- scoped error codes (moq-rs 0.4.18) ----------------------------------------


def test_scoped_codes() -> None:
    # Verified by sending each code to a moq-rs client (see the module docstring).
    assert int(SessionCode.PROTOCOL_VIOLATION) == 3 and int(SessionCode.VERSION_NEGOTIATION_FAILED) == 0x15
    assert int(StreamCode.CANCELLED) == 1 and int(StreamCode.NOT_FOUND) == 0x33 and int(StreamCode.TIMESTAMP_MISMATCH) == 0x39
    assert to_session_code(ErrorCode.CANCEL) == 0
    assert to_session_code(ErrorCode.DECODE) == SessionCode.PROTOCOL_VIOLATION
    assert to_session_code(ErrorCode.VERSION) == SessionCode.VERSION_NEGOTIATION_FAILED
    assert to_session_code(ErrorCode.OLD) == SessionCode.INTERNAL
    assert to_session_code(7) == SessionCode.INTERNAL  # not one of ours
    assert to_stream_code(ErrorCode.CANCEL) == StreamCode.CANCELLED
    assert to_stream_code(ErrorCode.OLD) == StreamCode.OLD
    assert to_stream_code(ErrorCode.DECODE) == StreamCode.INTERNAL
    assert to_stream_code(99) == 99 and to_session_code(64) == 64
    assert from_stream_code(StreamCode.EVICTED) == ErrorCode.OLD
    assert from_stream_code(0x30) == ErrorCode.TRANSPORT
    assert from_session_code(3) == ErrorCode.PROTOCOL_VIOLATION and from_session_code(70) == 70
    for code in ErrorCode:
        assert from_stream_code(to_stream_code(code)) in set(ErrorCode)
        assert from_session_code(to_session_code(code)) in set(ErrorCode)

"""Wire details the reference implementations settled after our versions were first written.

1. lite-05/06: every clean end of a subscription is SUBSCRIBE_END, then FIN. moq-rs 0.5 fails a
   subscription whose publisher FINs without it (ProtocolViolation), so each way a track can end
   cleanly is checked here in golden bytes (a byte-scripted subscriber against our server) and
   against a moq-rs subscriber; FETCH, which is not a subscription, ends with FIN alone.
2. lite-05/06 TRACK_INFO: the publisher's max latency (its retention) is ``2**53 - 1`` for "no
   limit" and ``0`` for "only the latest group", in both directions. TRACK asked of moq-rs: our
   side of the stream stays open until TRACK_INFO arrives (moq-rs reads an early FIN as the request
   being withdrawn).
3. lite-01/02 error codes: moq-rs names them when they are numbered from its scoped registries.
4. Today's gomoqt (v0.17) dials ``moq-lite-04``: a client scripted from its encoders is served.
5. ``moq-00`` is IETF draft-14 to moq-rs: refused cleanly in IETF's numbering, while gomoqt's old
   dialect keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import moq
import pytest
from aioquic.asyncio.client import connect
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from moqt_asgi import Broadcast, MoQ, SetupRequest, SubscribeError, TrackWriter, dial
from moqt_asgi.engine._reader import StreamReader
from moqt_asgi.protocol.codes import SCOPED_CODES
from moqt_asgi.protocol.errors import ErrorCode
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.protocol.lite05 import Lite05Codec
from moqt_asgi.protocol.lite06 import Lite06Codec
from moqt_asgi.protocol.lite_wire import LiteBidi, LiteUni
from moqt_asgi.protocol.messages import UNLIMITED_MAX_LATENCY_MS, LiteSetup, Subscribe, TrackInfo, TrackRequest
from moqt_asgi.protocol.versions import (
    GOMOQT_DIALECT,
    LITE_01_VERSION,
    LITE_02_VERSION,
    LITE_05_VERSION,
    LITE_06_VERSION,
    Version,
)
from moqt_asgi.protocol.wire import encode_varint

from . import helpers
from .conftest import Certs
from .helpers import WAIT, eventually, moqrs_client, moqrs_server, native_server, read_to_end, within

TIMED = [LITE_05_VERSION, LITE_06_VERSION]


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def version_id(version: Version) -> str:
    return version.name


# -- 1. SUBSCRIBE_END before every clean FIN ---------------------------------------------------

def start_end(start: int, end: int) -> bytes:
    """SUBSCRIBE_START ``start`` and SUBSCRIBE_END ``end`` (type 0 and 1, one-byte groups): all the stream carries."""
    return bytes((0x00, 0x01, start, 0x01, 0x01, end))


class RawSubscriber(helpers.RawClient):
    """A byte-scripted lite-05/06 client of our server that subscribes and keeps what the subscribe stream carried."""

    def __init__(self, app: MoQ, version: Version) -> None:
        super().__init__(app, protocol=version.alpn)
        self.codec: Lite05Codec = version.new_codec(DEFAULT_LIMITS)  # type: ignore[assignment]

    async def setup(self) -> None:
        await self.open_uni(self.codec.encode_setup_stream(LiteSetup(path="/")))
        stream = await within(self.conn.accept_uni())
        reader = StreamReader(stream)
        assert await within(reader.read_varint()) == LiteUni.SETUP
        self.codec.decode_setup(await within(reader.read_message(1024)))

    async def open_subscription(self, broadcast: str, track: str = "t", *, start: int | None = None,
                                end: int | None = None) -> Any:
        request = Subscribe(0, broadcast, track, 0, start_group=start, end_group=end)
        return await self.open_bi(encode_varint(LiteBidi.SUBSCRIBE) + self.codec.encode_subscribe(request))

    async def subscription(self, broadcast: str, track: str = "t", *, start: int | None = None,
                           end: int | None = None) -> bytes:
        """Everything the publisher wrote on the subscribe stream, up to its FIN."""
        stream = await self.open_subscription(broadcast, track, start=start, end=end)
        return await within(read_to_end(stream))


@contextlib.asynccontextmanager
async def raw_subscriber(app: MoQ, version: Version) -> AsyncIterator[RawSubscriber]:
    peer = RawSubscriber(app, version)
    async with peer:
        await peer.setup()
        yield peer


async def groups_then_return(track: TrackWriter) -> None:
    """A plain handler: four one-frame groups (0..3), then it returns."""
    for sequence in range(4):
        group = await track.open_group()
        await group.write_frame(b"g%d" % sequence)
        await group.close()


async def returns_at_once(track: TrackWriter) -> None:
    """A plain handler that ends its track before any group."""


def upkeep_app(version: Version | None = None) -> MoQ:
    app = MoQ() if version is None else MoQ(versions=(version,))
    app.mux.publish("groups", groups_then_return)
    app.mux.publish("empty", returns_at_once)
    return app


@pytest.mark.parametrize("version", TIMED, ids=version_id)
async def test_handler_that_returns_ends_with_subscribe_end(version: Version) -> None:
    app = upkeep_app()
    async with raw_subscriber(app, version) as peer:
        assert await peer.subscription("groups") == start_end(0, 4)
        assert await peer.subscription("empty") == start_end(0, 0)


@pytest.mark.parametrize("version", TIMED, ids=version_id)
async def test_bounded_subscription_ends_with_subscribe_end(version: Version) -> None:
    """The end group is inclusive in SUBSCRIBE, SUBSCRIBE_END exclusive."""
    app = upkeep_app()
    async with raw_subscriber(app, version) as peer:
        assert await peer.subscription("groups", end=1) == start_end(0, 2)
        assert await peer.subscription("groups", start=1, end=2) == start_end(1, 3)


@pytest.mark.parametrize("version", TIMED, ids=version_id)
async def test_subscription_past_the_end_starts_where_it_asked(version: Version) -> None:
    """Asked to start at 6, a track that ends after group 3 delivers nothing: START and END both say 6.

    (A START below the requested start would claim groups the subscriber never asked for.)
    """
    app = upkeep_app()
    async with raw_subscriber(app, version) as peer:
        assert await peer.subscription("groups", start=6) == start_end(6, 6)
        assert await peer.subscription("empty", start=6) == start_end(6, 6)


@pytest.mark.parametrize("version", TIMED, ids=version_id)
async def test_producer_finish_and_unpublish_end_with_subscribe_end(version: Version) -> None:
    app = MoQ()
    broadcast = Broadcast("live")
    track = broadcast.create_track("t")
    track.write_frame(b"first")  # group 0, cached: the subscription starts there
    app.mux.publish("live", broadcast)

    wrote = asyncio.Event()

    async def forever(writer: TrackWriter) -> None:
        group = await writer.open_group()
        await group.write_frame(b"only")
        await group.close()
        wrote.set()
        await asyncio.Event().wait()

    app.mux.publish("forever", forever)
    async with raw_subscriber(app, version) as peer:
        stream = await peer.open_subscription("live")
        await eventually(lambda: track.subscribers == 1, "the producer serves the subscription")
        track.write_frame(b"second")
        track.finish()
        assert await within(read_to_end(stream)) == start_end(0, 2)

        stream = await peer.open_subscription("forever")
        await within(wrote.wait())
        app.mux.unpublish("forever")
        assert await within(read_to_end(stream)) == start_end(0, 1)


# -- 1, against moq-rs -------------------------------------------------------------------------------

async def moqrs_reads_to_the_end(consumer: Any) -> list[int]:
    """The sequences a moq-rs consumer read before the track ended; a failed end raises."""
    got = []
    async with asyncio.timeout(WAIT):
        while (group := await consumer.next_group()) is not None:
            got.append(group.sequence)
    return got


@pytest.mark.interop
@pytest.mark.parametrize("version", TIMED, ids=version_id)
async def test_moqrs_subscriber_sees_every_clean_end(certs: Certs, version: Version) -> None:
    """Each way our publisher ends a track cleanly reads as the end of the track in moq-rs, not an error."""
    app = upkeep_app(version)
    broadcast = Broadcast("live")
    track = broadcast.create_track("t")
    track.write_frame(b"first")
    app.mux.publish("live", broadcast)
    async with native_server(app, str(certs.cert), str(certs.key)) as server, \
            moqrs_client(f"moql://127.0.0.1:{server.address[1]}/", certs.fingerprint) as client:
        groups = await asyncio.wait_for(client.announced_broadcast("groups"), WAIT)
        # one track name per case: moq-rs shares a track between subscriptions of the same name
        assert set(await moqrs_reads_to_the_end(await groups.subscribe_track("whole"))) <= {0, 1, 2, 3}
        # groups 1 and 2 (the API's end is exclusive); moq-rs may skip the older of a burst
        ranged = await groups.subscribe_track("ranged", moq.Subscription(group_start=1, group_end=3))
        got = await moqrs_reads_to_the_end(ranged)
        assert 2 in got and set(got) <= {1, 2}, got
        past = await groups.subscribe_track("past", moq.Subscription(group_start=6))
        assert await moqrs_reads_to_the_end(past) == []
        empty = await asyncio.wait_for(client.announced_broadcast("empty"), WAIT)
        assert await moqrs_reads_to_the_end(await empty.subscribe_track("t")) == []

        live = await asyncio.wait_for(client.announced_broadcast("live"), WAIT)
        reading = asyncio.ensure_future(moqrs_reads_to_the_end(await live.subscribe_track("t")))
        await eventually(lambda: track.subscribers == 1, "the producer serves moq-rs")
        await asyncio.sleep(0.05)  # a moq-rs subscriber reads only the newest groups of a burst
        track.write_frame(b"second")
        track.finish()
        got = await within(reading)
        assert 1 in got and set(got) <= {0, 1}, got


@pytest.mark.interop
@pytest.mark.parametrize("version", TIMED, ids=version_id)
async def test_moqrs_fetch_ends_with_fin(certs: Certs, version: Version) -> None:
    """FETCH is not a subscription: its answer is the group's frames and a FIN, which moq-rs reads as the whole group."""
    app = MoQ(versions=(version,))
    broadcast = Broadcast("b")
    track = broadcast.create_track("t", cached_groups=4)
    for sequence in range(3):
        group = track.append_group()
        group.write_frame(b"a%d" % sequence)
        group.write_frame(b"b%d" % sequence)
        group.finish()
    app.mux.publish("b", broadcast)
    async with native_server(app, str(certs.cert), str(certs.key)) as server, \
            moqrs_client(f"moql://127.0.0.1:{server.address[1]}/", certs.fingerprint) as client:
        announced = await asyncio.wait_for(client.announced_broadcast("b"), WAIT)
        fetched = await within(announced.fetch_group("t", 1))
        frames = []
        async with asyncio.timeout(WAIT):
            while (frame := await fetched.read_frame()) is not None:
                frames.append(bytes(frame.payload))
        assert frames == [b"a1", b"b1"]


# -- 2. TRACK_INFO retention ------------------------------------------------------------------------

L05 = Lite05Codec(DEFAULT_LIMITS)
L06 = Lite06Codec(DEFAULT_LIMITS)
NO_LIMIT = h("c0 1f ff ff ff ff ff ff")
"""2**53 - 1 as a varint."""


def unframe(data: bytes) -> bytes:
    assert data[0] == len(data) - 1
    return data[1:]


def test_track_info_retention_on_the_wire() -> None:
    """Ours 0 ("no limit") goes out as 2**53 - 1; "only the latest group" as 0; a bound as itself."""
    assert UNLIMITED_MAX_LATENCY_MS == 2**53 - 1
    assert L05.encode_track_info(TrackInfo(0, 0, 1000)) == h("0c 00 00") + NO_LIMIT + h("43 e8")
    assert L06.encode_track_info(TrackInfo(0, 0, 1000)) == h("0b 00") + NO_LIMIT + h("43 e8")
    assert L05.encode_track_info(TrackInfo(0, 0, 1000, latest_only=True)) == h("05 00 00 00 43 e8")
    assert L06.encode_track_info(TrackInfo(7, 5000, 1000, latest_only=True)) == h("04 07 00 43 e8")
    assert L06.encode_track_info(TrackInfo(0, 5000, 1000)) == h("05 00 53 88 43 e8")


def test_track_info_retention_read() -> None:
    # moq-net's default track info, 5 s of retention (its cross-language test vector)
    assert L05.decode_track_info(h("00 00 53 88 43 e8")) == TrackInfo(0, 5000, 1000)
    assert L05.decode_track_info(h("00 00") + NO_LIMIT + h("43 e8")) == TrackInfo(0, 0, 1000)
    latest = L06.decode_track_info(h("07 00 43 e8"))
    assert latest == TrackInfo(7, 0, 1000, latest_only=True)
    for codec in (L05, L06):
        for info in (TrackInfo(1, 0, 90_000), TrackInfo(1, 250, 48_000), TrackInfo(1, 0, 1000, latest_only=True)):
            assert codec.decode_track_info(unframe(codec.encode_track_info(info))) == info


async def test_plain_handler_reports_no_limit() -> None:
    """A handler without ``track_info`` keeps nothing back by age: its TRACK_INFO says no limit, not "latest only"."""
    app = upkeep_app(LITE_06_VERSION)
    async with raw_subscriber(app, LITE_06_VERSION) as peer:
        stream = await peer.open_bi(encode_varint(LiteBidi.TRACK) + L06.encode_track_request(TrackRequest("groups", "t")))
        assert await within(read_to_end(stream)) == h("0b 00") + NO_LIMIT + h("43 e8")


async def test_producer_reports_latest_only() -> None:
    """``create_track(latest_only=True)``: TRACK_INFO says the newest group only, a retention of 0 on the wire."""
    app = upkeep_app(LITE_06_VERSION)
    broadcast = Broadcast("newest")
    track = broadcast.create_track("t", priority=3, latest_only=True)
    app.mux.publish("newest", broadcast)
    assert track.info() == TrackInfo(3, 0, 1000, latest_only=True)
    async with raw_subscriber(app, LITE_06_VERSION) as peer:
        stream = await peer.open_bi(encode_varint(LiteBidi.TRACK) + L06.encode_track_request(TrackRequest("newest", "t")))
        assert await within(read_to_end(stream)) == h("04 03 00 43 e8")
    with pytest.raises(ValueError):
        broadcast.create_track("u", max_latency_ms=250, latest_only=True)


class LatestOnly:
    """A track handler that declares it keeps only its latest group."""

    def track_info(self, track: str) -> TrackInfo:
        return TrackInfo(priority=3, max_latency_ms=0, timescale=1000, latest_only=True)

    async def __call__(self, writer: TrackWriter) -> None:
        writer.close()


@pytest.mark.interop
@pytest.mark.parametrize("version", TIMED, ids=version_id)
async def test_moqrs_reads_our_retention(certs: Certs, version: Version) -> None:
    app = MoQ(versions=(version,))
    broadcast = Broadcast("b")
    broadcast.create_track("default")
    broadcast.create_track("quarter", max_latency_ms=250)
    broadcast.create_track("newest", latest_only=True)
    app.mux.publish("b", broadcast)
    app.mux.publish("latest", LatestOnly())
    async with native_server(app, str(certs.cert), str(certs.key)) as server, \
            moqrs_client(f"moql://127.0.0.1:{server.address[1]}/", certs.fingerprint) as client:
        announced = await asyncio.wait_for(client.announced_broadcast("b"), WAIT)
        assert (await announced.subscribe_track("default")).info().max_age_us == UNLIMITED_MAX_LATENCY_MS * 1000
        assert (await announced.subscribe_track("quarter")).info().max_age_us == 250_000
        assert (await announced.subscribe_track("newest")).info().max_age_us == 0
        latest = await asyncio.wait_for(client.announced_broadcast("latest"), WAIT)
        assert (await latest.subscribe_track("t")).info().max_age_us == 0


@pytest.mark.interop
@pytest.mark.parametrize("version", TIMED, ids=version_id)
async def test_we_read_moqrs_retention(version: Version) -> None:
    """Also 3: moq-rs answers TRACK only while our side of the stream is open."""
    async with moqrs_server() as (port, origin, fingerprint):
        broadcast = origin.create_broadcast("r")
        tracks = {name: broadcast.publish_track(name, moq.TrackInfo(max_age_us=age)) for name, age in
                  (("latest", 0), ("two", 2_000_000), ("unlimited", UNLIMITED_MAX_LATENCY_MS * 1000))}
        broadcast.announce()
        session = await dial(f"moql://127.0.0.1:{port}/room", fingerprint=fingerprint, versions=(version,))
        try:
            announcements = await within(session.announced(""))
            async with asyncio.timeout(WAIT):
                while "r" not in announcements.active:
                    await announcements.next()
            announcements.close()
            assert await within(session.track_info("r", "latest")) == TrackInfo(127, 0, 1_000_000, latest_only=True)
            assert await within(session.track_info("r", "two")) == TrackInfo(127, 2000, 1_000_000)
            assert await within(session.track_info("r", "unlimited")) == TrackInfo(127, 0, 1_000_000)
        finally:
            await session.aclose()
        del tracks


# -- 5. moq-00 is IETF draft-14 to moq-rs; gomoqt's old dialect keeps it ---------------------------

@pytest.mark.interop
async def test_moqrs_dialing_moq_00_is_refused_and_gomoqt_still_served(certs: Certs,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A server that speaks only gomoqt's dialect offers just ``moq-00``, so moq-rs takes it and sends IETF draft-14's
    CLIENT_SETUP (``0x20``): refused with 0x15, which moq-rs reads as a failed version negotiation, and logged. A gomoqt
    client (its ``0x00`` SETUP) is served on the same port."""
    caplog.set_level(logging.INFO, logger="moqt_asgi")
    app = helpers.tick_app((GOMOQT_DIALECT,))
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        port = server.address[1]
        with pytest.raises(moq.Error) as refused:
            async with moqrs_client(f"moql://127.0.0.1:{port}/", certs.fingerprint) as client:
                await asyncio.wait_for(client.announced_broadcast("clock"), WAIT)
        detail = moq.protocol_error(refused.value)
        assert detail is not None and (detail.code, detail.kind) == (0x15, moq.ProtocolKind.VERSION), refused.value
        assert any("IETF moq-transport (a 0x20 setup on moq-00) is not supported" in r.getMessage()
                   for r in caplog.records)
        session = await dial(f"moql://127.0.0.1:{port}/", fingerprint=certs.fingerprint, versions=(GOMOQT_DIALECT,))
        async with session:
            assert session.version_name == GOMOQT_DIALECT.name
            assert await helpers.read_tick(session) == b"tick"


# -- 4. today's gomoqt (v0.17, qumo-dev) dials moq-lite-04 ------------------------------------------
#
# Built from gomoqt v0.17's encoders (moqt/internal/message/*.go, moqt/session.go): ALPN moq-lite-04 and
# nothing before the first request; stream types are one raw byte; paths start with "/" and prefixes end
# with "/" (moqt/mux.go isValidPath/isValidPrefix); ANNOUNCE_INTEREST is "prefix, exclude hop"; SUBSCRIBE is
# "id, path, track, u8 priority, u8 ordered, max latency, start, end" with groups as n + 1 (0: none); the
# answer is read as a one-byte type, 0 SUBSCRIBE_OK "u8, u8, varint, varint, varint" or 1 SUBSCRIBE_DROP;
# ANNOUNCE is "varint status, suffix, hop count, hops"; a group stream is byte 0, GROUP "subscribe id,
# sequence", then frames "varint length, payload".

def gomoqt_string(text: str) -> bytes:
    raw = text.encode()
    return encode_varint(len(raw)) + raw


def gomoqt_message(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


GOMOQT_HOP = 0x1234


class GomoqtV17Peer:
    """What gomoqt v0.17's client writes and reads, over a raw aioquic connection (helpers.QuicPeer)."""

    def __init__(self, peer: helpers.QuicPeer) -> None:
        self.peer = peer

    async def read(self, stream_id: int, size: int) -> bytes:
        """The first ``size`` bytes the server sent on ``stream_id``."""
        def have() -> bytes:
            return b"".join(bytes(e.data) for e in self.peer.events
                            if isinstance(e, events.StreamDataReceived) and e.stream_id == stream_id)
        return (await eventually(lambda: have() if len(have()) >= size else b"", f"{size} bytes on {stream_id}"))

    def announce_interest(self, prefix: str) -> int:
        return self.peer.open(b"\x01" + gomoqt_message(gomoqt_string(prefix) + encode_varint(GOMOQT_HOP)))

    async def announcements(self, stream_id: int, count: int) -> list[str]:
        """The suffixes of the first ``count`` ANNOUNCEs on ``stream_id``: each ACTIVE, with one hop (the publisher's)."""
        suffixes: list[str] = []
        offset = 0
        for _ in range(count):
            size = (await self.read(stream_id, offset + 1))[offset]
            body = (await self.read(stream_id, offset + 1 + size))[offset + 1:offset + 1 + size]
            assert body[0] == 0x01  # ACTIVE
            suffix_size = body[1]
            assert body[2 + suffix_size] == 1  # one hop: the publisher appends its own id
            suffixes.append(body[2:2 + suffix_size].decode())
            offset += 1 + size
        return suffixes

    def subscribe(self, subscribe_id: int, path: str, track: str) -> int:
        body = (encode_varint(subscribe_id) + gomoqt_string(path) + gomoqt_string(track)
                + b"\x80\x00" + encode_varint(0) + encode_varint(0) + encode_varint(0))
        return self.peer.open(b"\x02" + gomoqt_message(body))

    def uni_streams(self) -> list[int]:
        return sorted({e.stream_id for e in self.peer.events
                       if isinstance(e, events.StreamDataReceived) and e.stream_id & 3 == 3})


@pytest.mark.interop  # native QUIC on 127.0.0.1; no moq-rs involved
async def test_gomoqt_v017_client_is_served_on_lite04(certs: Certs) -> None:


    app = helpers.tick_app()
    app.mux.publish("demo/cam", returns_at_once)
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        configuration = QuicConfiguration(is_client=True, alpn_protocols=["moq-lite-04"])
        configuration.verify_mode = ssl.CERT_NONE
        async with connect("127.0.0.1", server.address[1], configuration=configuration,
                           create_protocol=helpers.QuicPeer, wait_connected=True) as quic:
            assert isinstance(quic, helpers.QuicPeer)
            gomoqt = GomoqtV17Peer(quic)
            # AcceptAnnounce("/"): the publisher lists its broadcasts and appends its own hop id
            announce = gomoqt.announce_interest("/")
            assert sorted(await gomoqt.announcements(announce, 2)) == ["clock", "demo/cam"]
            # AcceptAnnounce("/demo/"): gomoqt joins prefix and suffix, so the suffix is relative
            assert await gomoqt.announcements(gomoqt.announce_interest("/demo/"), 1) == ["cam"]
            # Subscribe("/clock", "seconds"): SUBSCRIBE_OK, then a group stream carrying "tick"
            subscription = gomoqt.subscribe(0, "/clock", "seconds")
            answer = await gomoqt.read(subscription, 2)
            assert answer[0] == 0x00  # SUBSCRIBE_OK
            ok = (await gomoqt.read(subscription, 2 + answer[1]))[2:]
            assert len(ok) == answer[1] and ok[:1] == b"\x80"  # it echoes our priority
            group_stream = (await eventually(gomoqt.uni_streams, "a group stream"))[0]
            group = await gomoqt.read(group_stream, 1 + 3 + 1 + 4)
            assert group == b"\x00" + gomoqt_message(b"\x00\x00") + gomoqt_message(b"tick")


# -- 3. lite-01/02 error codes as moq-rs 0.5.1 numbers them -------------------------------------------
#
# moq-rs 0.5.1 numbers session and stream codes from its scoped registries on lite-01/02 too (and carries
# stream codes in WebTransport's mapping on native QUIC), and so do our lite-01/02 sessions.

@pytest.mark.interop
@pytest.mark.parametrize("scheme", ["moql", "https"])
@pytest.mark.parametrize("version", [LITE_01_VERSION, LITE_02_VERSION], ids=version_id)
async def test_scoped_codes_on_lite01_02_are_named_by_moqrs(certs: Certs, version: Version, scheme: str) -> None:
    assert version.codec.error_codes is SCOPED_CODES
    app = MoQ(versions=(version,))
    broadcast = Broadcast("v")
    broadcast.create_track("t")
    app.mux.publish("v", broadcast)
    async with native_server(app, str(certs.cert), str(certs.key)) as server, \
            moqrs_client(f"{scheme}://127.0.0.1:{server.address[1]}/", certs.fingerprint) as client:
        announced = await asyncio.wait_for(client.announced_broadcast("v"), WAIT)
        with pytest.raises(moq.Error) as refused:
            await asyncio.wait_for((await announced.subscribe_track("missing")).next_group(), WAIT)
        detail = moq.protocol_error(refused.value)
        assert detail is not None and (detail.code, detail.kind) == (0x33, moq.ProtocolKind.NOT_FOUND), refused.value
    async with moqrs_server() as (port, origin, fingerprint):
        origin.create_broadcast("b").announce()
        session = await dial(f"{scheme}://127.0.0.1:{port}/room", fingerprint=fingerprint, versions=(version,))
        async with session:
            with pytest.raises(SubscribeError) as ours:
                reader = await within(session.subscribe("b", "missing"))
                await within(reader.next_group())
            assert ours.value.code == ErrorCode.NOT_FOUND


@pytest.mark.interop
@pytest.mark.parametrize("version", [LITE_01_VERSION, LITE_02_VERSION], ids=version_id)
async def test_moqrs_reads_our_refused_moql_session_as_unauthorized(certs: Certs, version: Version) -> None:
    """A 403 from the setup handler closes a ``moql`` session with the session registry's UNAUTHORIZED (0x2)."""
    app = MoQ(versions=(version,))

    @app.route("/{rest:path}")
    async def members_only(request: SetupRequest) -> None:
        await request.reject(403, "members only")

    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        with pytest.raises(moq.Error) as refused:
            async with moqrs_client(f"moql://127.0.0.1:{server.address[1]}/room", certs.fingerprint) as client:
                await asyncio.wait_for(client.announced_broadcast("anything"), WAIT)
        detail = moq.protocol_error(refused.value)
        assert detail is not None and (detail.code, detail.kind) == (0x2, moq.ProtocolKind.UNAUTHORIZED), refused.value


def ietf_setup(body: bytes) -> bytes:
    return b"\x20" + len(body).to_bytes(2, "big") + body


DRAFT_14 = h("c0 00 00 00 ff 00 00 0e")


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        pytest.param(ietf_setup(h("01") + DRAFT_14 + h("00")), 0x15, id="draft-14"),
        pytest.param(ietf_setup(h("00")), 0x15, id="no-versions"),
        pytest.param(ietf_setup(h("01") + DRAFT_14 + h("40 41") + h("02 00") * 65), 0x6, id="65-parameters"),
    ],
)
async def test_ietf_setup_on_moq_00_is_refused_in_ietf_numbering(setup: bytes, code: int) -> None:
    """Whether or not the IETF CLIENT_SETUP parses, the close code is IETF's (moq-rs's session registry), not gomoqt's
    (which would say 0x12 "unsupported version" and 0x5 "parameter length mismatch" for the last two)."""
    async with helpers.RawClient(helpers.tick_app(), protocol="moq-00") as peer:
        await peer.open_bi(setup)
        assert await peer.closed_code() == code

"""moqt_asgi.media without peers: the hang catalog, the containers, JSON tracks, MP4 boxes, hang broadcasts.

Golden values are bytes moq-rs 0.5.1 wrote (catalogs, legacy frames, JSON
track frames), so what we write and read is checked against the reference.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moqt_asgi import MoQ
from moqt_asgi.media import (
    AudioConfig,
    Catalog,
    CatalogError,
    Container,
    HangBroadcast,
    SnapshotDecoder,
    StreamDecoder,
    VideoConfig,
    decode_cmaf,
    decode_legacy,
    diff,
    encode_legacy,
    hang_name,
    merge_patch,
    read_catalogs,
)
from moqt_asgi.media.container import ContainerError, decode_loc, decode_varint, encode_loc, encode_varint
from moqt_asgi.media.ingest import Fmp4Ingest, Fmp4Parser
from moqt_asgi.media.jsontracks import Deflater, Inflater, JsonSnapshotProducer, JsonStreamProducer, JsonTrackError
from moqt_asgi.media.mp4 import (
    DELTA_FLAGS,
    KEYFRAME_FLAGS,
    Mp4Error,
    Sample,
    build_fragment,
    build_init,
    full_box,
    make_box,
    parse_init,
    set_fragment_track,
)
from moqt_asgi.media.mp4write import legacy_track
from moqt_asgi.media.record import LegacyWrapper, track_for
from moqt_asgi.producer import TrackProducer

from .helpers import WAIT, memory_sessions

# moq-rs 0.5.1: publish_video(AVC1) + encode_audio(opus) + two JSON tracks + set_catalog_section("myapp")
LEGACY_CATALOG = (
    b'{"video":{"renditions":{"video":{"codec":"avc1.42c01e","description":"0142c01effe100196742c01ed900a02ff97011000003'
    b'0001000003003c8f162e4801000568cb83cb20","codedWidth":640,"codedHeight":360,"bitrate":500000,"framerate":30.0,'
    b'"container":{"kind":"legacy"}}}},"audio":{"renditions":{"audio":{"codec":"opus","sampleRate":48000,'
    b'"numberOfChannels":2,"bitrate":64000,"description":"4f707573486561640102380180bb0000000000","container":'
    b'{"kind":"legacy"}}}},"archive":{"track":"timeline.z","timescale":1000},"clock":{"wall":218455668866467,'
    b'"timescale":1000000},"json":{"tracks":{"chat.jsonl":{"mode":"stream"},"status.json":{"mode":"snapshot"}}},'
    b'"myapp":{"hello":"world","n":1}}')

# moq-rs 0.5.1: publish_container_stream(FMP4), the video rendition of a 640x360 H.264 baseline input
CMAF_INIT = (
    "AAAAHGZ0eXBpc29tAAACAGlzb21pc282bXA0MQAAAqttb292AAAAeG12aGQBAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+gAAAAAAAAAAAABAAABAAAAAAAA"
    "AAAAAAAAAQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACAAAAKG12ZXgAAAAgdHJleAAA"
    "AAAAAAABAAAAAQAAAAAAAAAAAAAAAAAAAgN0cmFrAAAAaHRraGQBAAAHAAAAAAAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAEAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAABAAAAAAoAAAAFoAAAAAAGTbWRpYQAAACxtZGhkAQAAAAAAAAAAAAAAAAAAAAAAAAAAADwA"
    "AAAAAAAAAABVxAAAAAAALWhkbHIAAAAAAAAAAHZpZGUAAAAAAAAAAAAAAABWaWRlb0hhbmRsZXIAAAABMm1pbmYAAAAkZGluZgAAABxkcmVmAAAAAAAA"
    "AAEAAAAMdXJsIAAAAAEAAADyc3RibAAAAKZzdHNkAAAAAAAAAAEAAACWYXZjMQAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAKAAWgASAAAAEgAAAAAAAAA"
    "ARVMYXZjNTkuMzcuMTAwIGxpYngyNjQAAAAAAAAAAAAAABj//wAAADBhdmNDAULAHv/hABlnQsAe2gKAv+XARAAAAwAEAAADAPI8WLqAAQAEaM4PyAAA"
    "ABBwYXNwAAAAAQAAAAEAAAAQc3R0cwAAAAAAAAAAAAAAEHN0c2MAAAAAAAAAAAAAABRzdHN6AAAAAAAAAAAAAAAAAAAAEHN0Y28AAAAAAAAAAAAAABR2"
    "bWhkAAAAAQAAAAAAAAAA")
CMAF_DESCRIPTION = "0142c01effe100196742c01eda0280bfe5c044000003000400000300f23c58ba8001000468ce0fc8"


# -- the legacy container ---------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "wire"), [(0, "00"), (54688, "8000d5a0"), (40000, "80009c40"), (10557, "693d"),
                                             (63, "3f"), (2**30, "c000000040000000")])
def test_varint_matches_moqrs_frames(value: int, wire: str) -> None:
    assert encode_varint(value).hex() == wire
    assert decode_varint(bytes.fromhex(wire)) == (value, len(wire) // 2)


def test_legacy_frame_golden() -> None:
    # group 0 frame 1 of moq-rs's AVC1 legacy track: varint 54688 µs, then the AVCC sample
    frame = bytes.fromhex("8000d5a00000001d419a3808de0c7b")
    timestamp, payload = decode_legacy(frame)
    assert timestamp == 54688 and payload == bytes.fromhex("0000001d419a3808de0c7b")
    assert encode_legacy(timestamp, payload) == frame
    # decoders accept a longer form than the shortest
    assert decode_legacy(bytes.fromhex("c000000000000005ff")) == (5, b"\xff")
    with pytest.raises(ContainerError):
        decode_legacy(bytes.fromhex("80d5"))


def test_loc_frames() -> None:
    # what @moq/loc writes: varint(properties length) | 0x10 | varint(timestamp µs) | payload
    frame = encode_loc(54688, b"\x00\x00\x00\x01\x65")
    assert frame.hex() == "05108000d5a00000000165"
    assert decode_loc(frame) == (54688, b"\x00\x00\x00\x01\x65")
    # a timescale property (0x08) converts; an odd property (0x09: length + bytes) is skipped; the draft-03 id works
    properties = bytes([0x08]) + encode_varint(90_000) + bytes([0x01, 0x02, 0xAA, 0xBB]) + bytes([0x07]) + encode_varint(9_000)
    assert decode_loc(encode_varint(len(properties)) + properties + b"p") == (100_000, b"p")
    draft03 = bytes([0x06]) + encode_varint(5)
    assert decode_loc(encode_varint(len(draft03)) + draft03) == (5, b"")
    for bad in (b"\x02\x08\x00", b"\x01\x08", b"\x05\x10\x01", b"\x03\x09\x05\x00"):
        with pytest.raises(ContainerError):
            decode_loc(bad)


# -- the catalog ---------------------------------------------------------------------------------

def test_legacy_catalog_round_trips_byte_for_byte() -> None:
    catalog = Catalog.decode(LEGACY_CATALOG)
    assert catalog.video is not None and catalog.audio is not None
    video = catalog.video.renditions["video"]
    assert (video.codec, video.coded_width, video.coded_height, video.framerate) == ("avc1.42c01e", 640, 360, 30.0)
    assert video.container == Container("legacy")
    audio = catalog.audio.renditions["audio"]
    assert audio.description is not None and audio.description.startswith(b"OpusHead")
    assert (audio.sample_rate, audio.number_of_channels) == (48000, 2)
    assert {name: track.mode for name, track in catalog.json_tracks.items()} == {"chat.jsonl": "stream",
                                                                                 "status.json": "snapshot"}
    assert catalog.sections["myapp"] == {"hello": "world", "n": 1}
    assert catalog.encode() == LEGACY_CATALOG


def test_cmaf_catalog_init_describes_the_rendition() -> None:
    text = json.dumps({"video": {"renditions": {"0.m4s": {
        "codec": "avc1.42c01e", "description": CMAF_DESCRIPTION, "codedWidth": 640, "codedHeight": 360,
        "container": {"kind": "cmaf", "init": CMAF_INIT}}}}}, separators=(",", ":")).encode()
    catalog = Catalog.decode(text)
    assert catalog.encode() == text
    video = catalog.video.renditions["0.m4s"]  # type: ignore[union-attr]
    assert video.container.kind == "cmaf" and video.container.init == base64.b64decode(CMAF_INIT)
    # what we derive from moq-rs's init is what moq-rs put beside it
    (track,) = parse_init(video.container.init)
    assert (track.entry.codec, track.entry.width, track.entry.height) == ("avc1.42c01e", 640, 360)
    assert track.entry.description is not None and track.entry.description.hex() == CMAF_DESCRIPTION
    assert (track.kind, track.timescale, track.track_id) == ("video", 15360, 1)


@pytest.mark.parametrize(("patch", "error"), [
    ({"jitter": 2.5}, "jitter"),
    ({"bitrate": -1}, "bitrate"),
    ({"codedWidth": 2**53}, "codedWidth"),
    ({"description": "0xzz"}, "description"),
    ({"description": "abc"}, "description"),
    ({"container": {"kind": "cmaf"}}, "init"),
    ({"container": {"kind": "cmaf", "init": "not base64!"}}, "base64"),
    ({"codec": 7}, "codec"),
])
def test_catalog_rejects_what_the_player_rejects(patch: dict[str, Any], error: str) -> None:
    rendition = {"codec": "avc1.42c01e", "container": {"kind": "legacy"}, **patch}
    with pytest.raises(CatalogError, match=error):
        Catalog.from_json({"video": {"renditions": {"v": rendition}}})


def test_catalog_audio_and_display_requirements() -> None:
    with pytest.raises(CatalogError, match="numberOfChannels"):
        Catalog.from_json({"audio": {"renditions": {"a": {"codec": "opus", "sampleRate": 48000}}}})
    with pytest.raises(CatalogError, match="display"):
        Catalog.from_json({"video": {"renditions": {}, "display": {"width": 640}}})
    bad = Catalog()
    bad.video = Catalog.from_json({"video": {"renditions": {}}}).video
    assert bad.video is not None
    bad.video.renditions["v"] = VideoConfig("avc1.42c01e", jitter=-3)
    with pytest.raises(CatalogError):
        bad.validate()


def test_catalog_keeps_unknown_fields_sections_and_containers() -> None:
    raw = {"video": {"renditions": {"v": {"codec": "vp09.00.10.08", "warmup": 3, "container": {"kind": "future", "x": [1]}}},
                     "rotation": 90, "flip": True, "display": {"width": 1, "height": 2}, "more": 1},
           "audio": {"renditions": {}, "other": True},
           "json": {"tracks": {"t": {"mode": "window", "compression": "zstd", "timeline": {"track": "x"}}}, "v": 2},
           "scte35": {"cue": 1}}
    catalog = Catalog.from_json(raw)
    video = catalog.video.renditions["v"]  # type: ignore[union-attr]
    assert not video.container.known and video.extra == {"warmup": 3}
    assert not catalog.json_tracks["t"].usable
    assert catalog.to_json() == raw
    assert Catalog.from_json({"video": {"renditions": {"v": {"codec": "vp8"}}}}).video.renditions["v"].container == \
        Container("legacy")  # type: ignore[union-attr]


def test_a_missing_container_is_legacy_and_json_tracks_are_sorted() -> None:
    catalog = Catalog()
    catalog.json_tracks = {}
    hang = HangBroadcast("x.hang")
    hang.json_stream("b.jsonl")
    hang.json_snapshot("a.json", compression=True)
    assert list(hang.catalog.to_json()["json"]["tracks"]) == ["a.json", "b.jsonl"]
    assert hang.catalog.to_json()["json"]["tracks"]["a.json"] == {"mode": "snapshot", "compression": "deflate"}
    assert hang_name("room/alice") == "room/alice.hang" and hang_name("a.hang") == "a.hang"


# -- JSON tracks ---------------------------------------------------------------------------------

def test_merge_patch_rfc7396_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch(["a"], {"a": "b"}) == {"a": "b"}
    assert merge_patch({"a": "foo"}, "bar") == "bar"
    old, new = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}, {"b": {"c": 2, "d": 4}, "e": [1, 2], "f": 0}
    assert diff(old, new) == {"a": None, "b": {"d": 4}, "e": [1, 2], "f": 0}
    assert merge_patch(old, diff(old, new)) == new


def snapshot_frames(track: TrackProducer) -> list[tuple[int, list[bytes]]]:
    return [(group.sequence, list(group.frames)) for group in track.cached()]


def test_snapshot_producer_writes_moqrs_deltas() -> None:
    # moq-rs publish_json_snapshot("status.json"): g0 f0..f3 as in its output (key order aside)
    track = TrackProducer("status.json", cached_groups=8)
    producer = JsonSnapshotProducer(track)
    values = [{"state": "live", "tags": ["a"], "viewers": 1}, {"state": "live", "tags": ["a"], "viewers": 2},
              {"state": "live", "tags": ["a", "b"], "viewers": 2, "extra": {"x": 1}},
              {"state": "idle", "tags": ["a", "b"], "viewers": 2}]
    for value in values:
        assert producer.update(value)
    assert not producer.update(dict(values[-1]))  # unchanged: nothing written
    ((sequence, frames),) = snapshot_frames(track)
    assert sequence == 0 and frames[0] == b'{"state":"live","tags":["a"],"viewers":1}'
    assert [json.loads(f) for f in frames[1:]] == [{"viewers": 2}, {"extra": {"x": 1}, "tags": ["a", "b"]},
                                                  {"state": "idle", "extra": None}]
    decoder = SnapshotDecoder()
    decoder.start_group()
    assert [decoder.frame(f) for f in frames] == values


def test_snapshot_rolls_to_a_new_group() -> None:
    track = TrackProducer("s", cached_groups=8)
    producer = JsonSnapshotProducer(track, delta_ratio=0)
    producer.update({"a": 1})
    producer.update({"a": 2})
    producer.update([1, 2])  # not an object: always a snapshot
    assert [(s, f) for s, f in snapshot_frames(track)] == [(0, [b'{"a":1}']), (1, [b'{"a":2}']), (2, [b"[1,2]"])]
    assert all(group.finished for group in track.cached())
    # with deltas: a value holding a literal null forces a snapshot; so does the ratio
    track = TrackProducer("s", cached_groups=8)
    producer = JsonSnapshotProducer(track, delta_ratio=1)
    producer.update({"a": 1, "b": "x" * 4})
    producer.update({"a": 2, "b": "x" * 4})
    producer.update({"a": 3, "b": None})
    producer.update({"a": 4})
    assert [len(frames) for _, frames in snapshot_frames(track)] == [2, 2]
    assert json.loads(snapshot_frames(track)[-1][1][1]) == {"a": 4, "b": None}
    for index in range(5, 9):  # deltas past delta_ratio x the snapshot's size roll over
        producer.update({"a": index, "c": "y" * 10})
    groups = snapshot_frames(track)
    assert len(groups) == 3 and groups[2][1][0] == b'{"a":6,"c":"yyyyyyyyyy"}'
    for _, frames in groups:  # deltas stop once they outweigh the snapshot (the last may overshoot)
        assert sum(map(len, frames[1:-1])) <= len(frames[0])
    producer.new_group()
    assert snapshot_frames(track)[-1][1] == [b'{"a":8,"c":"yyyyyyyyyy"}']


def test_deflate_frames_golden() -> None:
    # moq-rs publish_json_snapshot("status.json.z", compression=True): g0 f0 and f1
    f0 = bytes.fromhex("aa562a2e492c4955b252cac92c4b55d2512a494c2f56b28a564a548ad5512acb4c2d4f2d2a56b232ac0500")
    f1 = bytes.fromhex("aa46708c6a0100")
    inflater = Inflater()
    assert inflater.frame(f0) == b'{"state":"live","tags":["a"],"viewers":1}'
    assert inflater.frame(f1) == b'{"viewers":2}'
    deflater = Deflater()
    ours = [deflater.frame(b'{"state":"live","tags":["a"],"viewers":1}'), deflater.frame(b'{"viewers":2}')]
    decoder = SnapshotDecoder(compression=True)
    decoder.start_group()
    assert [decoder.frame(f) for f in ours] == [{"state": "live", "tags": ["a"], "viewers": 1},
                                               {"state": "live", "tags": ["a"], "viewers": 2}]
    assert not any(frame.endswith(b"\x00\x00\xff\xff") for frame in ours)


def test_json_frames_that_nest_too_deeply_are_errors() -> None:
    decoder = SnapshotDecoder()
    decoder.start_group()
    with pytest.raises(JsonTrackError):
        decoder.frame(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(JsonTrackError):
        StreamDecoder().frame(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


def test_stream_producer_one_group_per_log() -> None:
    track = TrackProducer("chat.jsonl", cached_groups=4)
    producer = JsonStreamProducer(track, compression=True)
    records = [{"msg": "hi", "user": "a"}, {"msg": "yo", "user": "b"}]
    for record in records:
        producer.append(record)
    ((_, frames),) = snapshot_frames(track)
    decoder = StreamDecoder(compression=True)
    decoder.start_group()
    assert [decoder.frame(f) for f in frames] == records


# -- MP4 -----------------------------------------------------------------------------------------

def test_fragment_round_trip() -> None:
    sample = Sample(1, decode_time=512 * 7, duration=512, size=0, flags=KEYFRAME_FLAGS, cts_offset=-256, offset=0)
    frame = build_fragment(9, 1, sample, b"\x00\x00\x00\x02\x65\x88")
    moof_size = struct.unpack_from(">I", frame)[0]
    assert frame[4:8] == b"moof" and frame[moof_size + 4:moof_size + 8] == b"mdat"
    (decoded,) = decode_cmaf(frame, 15360)
    assert decoded.payload == b"\x00\x00\x00\x02\x65\x88" and decoded.keyframe
    assert decoded.timestamp_us == (512 * 7 - 256) * 1_000_000 // 15360 and decoded.duration_us == 33333


def test_a_moof_cannot_claim_billions_of_samples() -> None:
    # a trun with no per-sample fields costs nothing per sample on the wire: 2^31 empty samples in 20 bytes
    trun = full_box("trun", 0, 0, struct.pack(">I", 2**31))
    traf = make_box("traf", full_box("tfhd", 0, 0x020000, struct.pack(">I", 1)), trun)
    moof = make_box("moof", full_box("mfhd", 0, 0, struct.pack(">I", 1)), traf)
    with pytest.raises(ContainerError, match="samples"):
        decode_cmaf(moof + make_box("mdat"), 1000)


def test_parser_bounds_what_it_buffers() -> None:
    parser = Fmp4Parser(max_box_size=1024)
    with pytest.raises(Mp4Error, match="larger than the limit"):
        parser.feed(struct.pack(">I4s", 1 << 30, b"mdat"))
    parser = Fmp4Parser(max_box_size=1024)
    with pytest.raises(Mp4Error, match="larger than the limit"):
        parser.feed(struct.pack(">I4sQ", 1, b"mdat", 1 << 40))
    with pytest.raises(Mp4Error, match="size 0"):
        Fmp4Parser().feed(struct.pack(">I4s", 0, b"mdat"))
    with pytest.raises(Mp4Error, match="before the moov"):
        Fmp4Parser().feed(struct.pack(">I4s", 8, b"moof"))
    parser = Fmp4Parser()
    assert parser.feed(struct.pack(">I4s", 100, b"free") + bytes(50)) == [] and parser.buffered == 58
    with pytest.raises(Mp4Error, match="ended inside a box"):
        parser.end()


# -- hang broadcasts -------------------------------------------------------------------------------

def video_config() -> VideoConfig:
    return VideoConfig("avc1.42c01e", description=bytes.fromhex(CMAF_DESCRIPTION), coded_width=640, coded_height=360)


def test_video_groups_start_at_keyframes() -> None:
    hang = HangBroadcast("cam.hang")
    video = hang.add_video("video", video_config())
    assert not video.write_sample(b"delta", 0, keyframe=False)  # nothing to hang it on yet
    pattern = [True, False, False, True, False, True]
    for index, key in enumerate(pattern):
        assert video.write_sample(b"s%d" % index, index * 33_333, keyframe=key)
    producer = hang.broadcast.tracks["video"]
    producer_groups = producer.cached()
    assert [g.sequence for g in producer_groups] == [1, 2]  # two cached: groups 0..2 were written
    assert [len(g.frames) for g in producer_groups] == [2, 1]
    assert decode_legacy(producer_groups[0].frames[0]) == (3 * 33_333, b"s3")
    assert producer_groups[0].timestamps == [3 * 33_333, 4 * 33_333] and producer.timescale == 1_000_000
    assert producer_groups[0].finished and not producer_groups[1].finished
    assert (video.frames, video.dropped) == (6, 1)


def test_audio_groups_by_duration() -> None:
    hang = HangBroadcast("mic.hang")
    audio = hang.add_audio("audio", AudioConfig("opus", 48000, 2), group_duration_us=100_000)
    for index in range(12):
        audio.write_sample(b"o", index * 20_000, keyframe=True)
    producer = hang.broadcast.tracks["audio"]
    assert producer.latest is not None and producer.latest.sequence == 2
    assert [len(g.frames) for g in producer.cached()] == [5, 5, 2]


def test_catalog_track_one_group_per_version_and_close() -> None:
    hang = HangBroadcast("cam.hang")
    catalog_track = hang.broadcast.tracks["catalog.json"]
    hang.add_video("video", video_config())
    hang.set_section("myapp", {"a": 1})
    hang.publish_catalog()  # unchanged: nothing new
    latest = catalog_track.latest
    assert latest is not None and latest.sequence == 1 and latest.finished and len(latest.frames) == 1
    current = Catalog.decode(latest.frames[0])
    assert current.sections == {"myapp": {"a": 1}} and current.video is not None
    assert list(current.video.renditions) == ["video"]
    deflated = hang.broadcast.tracks["catalog.json.z"].latest
    assert deflated is not None and Inflater().frame(deflated.frames[0]) == latest.frames[0]
    with pytest.raises(ValueError, match="reserved"):
        hang.set_section("clock", {})
    hang.close()
    final = catalog_track.cached()[-1]
    assert json.loads(final.frames[0])["video"] == {"renditions": {}}
    assert catalog_track.finished and hang.broadcast.tracks["video"].finished


def test_catalog_with_deltas() -> None:
    hang = HangBroadcast("cam.hang", catalog_delta_ratio=8, deflated_catalog=False)
    hang.add_video("video", video_config())
    hang.set_section("myapp", {"a": 1})
    group = hang.broadcast.tracks["catalog.json"].latest
    assert group is not None and len(group.frames) == 2 and not group.finished
    assert json.loads(group.frames[1]) == {"myapp": {"a": 1}}
    hang.publish_catalog(new_group=True)
    assert hang.broadcast.tracks["catalog.json"].latest.frames == [hang.catalog.encode()]  # type: ignore[union-attr]


# -- reading a catalog over a session; recording tracks built from the catalog ---------------------------

async def test_catalog_consumer_applies_deltas_and_late_joiners_read_the_newest() -> None:
    app = MoQ()
    hang = HangBroadcast("cam.hang", catalog_delta_ratio=8)
    app.mux.publish(hang.path, hang.broadcast)
    hang.add_video("video", video_config())
    async with memory_sessions(app) as (client, _server, _c, _s):
        track = await client.subscribe("cam.hang", "catalog.json")
        catalogs = read_catalogs(track)
        first = await asyncio.wait_for(anext(catalogs), WAIT)
        assert list(first.video.renditions) == ["video"]  # type: ignore[union-attr]
        hang.set_section("myapp", {"n": 1})  # a delta in the same group
        patched = await asyncio.wait_for(anext(catalogs), WAIT)
        assert patched.sections == {"myapp": {"n": 1}} and list(patched.video.renditions) == ["video"]  # type: ignore[union-attr]
        hang.remove("video")
        emptied = await asyncio.wait_for(anext(catalogs), WAIT)
        assert emptied.video is not None and emptied.video.renditions == {}
        await catalogs.aclose()
        hang.publish_catalog(new_group=True)
        late = await client.subscribe("cam.hang", "catalog.json")
        group = await asyncio.wait_for(late.next_group(), WAIT)
        assert group is not None and group.sequence == 1
        assert Catalog.decode(await group.read_frame() or b"") == Catalog.decode(hang.catalog.encode())


def test_legacy_tracks_from_the_catalog() -> None:
    catalog = Catalog.decode(LEGACY_CATALOG)
    assert catalog.video is not None and catalog.audio is not None
    video = legacy_track(catalog.video.renditions["video"], 1)
    audio = legacy_track(catalog.audio.renditions["audio"], 2)
    assert video is not None and audio is not None
    (video_back, audio_back) = parse_init(build_init([video, audio]))
    assert (video_back.track_id, video_back.kind, video_back.timescale) == (1, "video", 1_000_000)
    assert (video_back.entry.codec, video_back.entry.width, video_back.entry.height) == ("avc1.42c01e", 640, 360)
    assert video_back.entry.description == catalog.video.renditions["video"].description
    assert (audio_back.track_id, audio_back.kind, audio_back.entry.codec) == (2, "audio", "opus")
    assert audio_back.entry.description == catalog.audio.renditions["audio"].description  # OpusHead -> dOps -> OpusHead
    aac = legacy_track(AudioConfig("mp4a.40.2", 48000, 2, bitrate=128000, description=bytes.fromhex("1190")), 3)
    assert aac is not None
    assert (aac.entry.codec, aac.entry.sample_rate, aac.entry.channels, aac.entry.bitrate) == ("mp4a.40.2", 48000, 2, 128000)
    assert legacy_track(VideoConfig("vp09.00.10.08"), 4) is None  # nothing in the catalog to describe it with


def test_loc_frames_become_fragments() -> None:
    wrap = LegacyWrapper(1, video=False, container="loc")
    assert wrap.frame(encode_loc(0, b"a"), True) is None
    fragment = wrap.frame(encode_loc(20_000, b"b"), False)
    assert fragment is not None
    (sample,) = decode_cmaf(fragment, 1_000_000)
    assert (sample.payload, sample.timestamp_us, sample.keyframe, sample.duration_us) == (b"a", 0, True, 20_000)


def test_legacy_frames_become_fragments() -> None:
    wrap = LegacyWrapper(1, video=True, window=0)  # frames in presentation order: nothing to hold back
    frames = [(encode_legacy(t * 33_333, b"frame%d" % t), t % 3 == 0) for t in range(4)]
    out = [wrap.frame(frame, first) for frame, first in frames]
    out.extend(wrap.flush())
    assert out[0] is None and all(fragment is not None for fragment in out[1:])
    samples = [decode_cmaf(fragment, 1_000_000)[0] for fragment in out[1:] if fragment is not None]
    assert [(s.payload, s.timestamp_us, s.keyframe, s.duration_us) for s in samples] == [
        (b"frame0", 0, True, 33_333), (b"frame1", 33_333, False, 33_333), (b"frame2", 66_666, False, 33_333),
        (b"frame3", 99_999, True, 33_333)]


def test_recording_refuses_what_does_not_parse() -> None:
    bad = VideoConfig("avc1.42c01e", container=Container("cmaf", b"\x00\x00\x00\x10moov\x00\x00\x00\x01"))
    assert track_for(bad, 1) is None
    good = VideoConfig("avc1.42c01e", container=Container("cmaf", base64.b64decode(CMAF_INIT)))
    track = track_for(good, 7)
    assert track is not None and parse_init(build_init([track]))[0].track_id == 7
    for frame in (b"", b"\x00\x00\x00\x08free", b"\x00\x00\x00\x10moof\x00\x00\x00\x08traf",
                  b"\x00\x00\x00\x14moof\x00\x00\x00\x0ctraf\x00\x00\x00\x0ctfhd" + b"\x00\x00\x00\x08mdat",
                  b"\x00\x00\x00\x1cmoof\x00\x00\x00\x14traf\x00\x00\x00\x0ctfhd\x00\x02\x00\x00"
                  + b"\x00\x00\x00\x08mdat"):  # a tfhd without room for its track id
        with pytest.raises(Mp4Error):
            set_fragment_track(frame, 1)
    sample = Sample(1, 0, 512, 0, KEYFRAME_FLAGS, 0, 0)
    assert decode_cmaf(set_fragment_track(build_fragment(1, 1, sample, b"x"), 9), 15360)[0].payload == b"x"


def synthetic_fmp4() -> bytes:
    """A small valid fragmented MP4: the legacy catalog's H.264 track and three one-sample fragments."""
    video = legacy_track(Catalog.decode(LEGACY_CATALOG).video.renditions["video"], 1)  # type: ignore[union-attr]
    assert video is not None
    fragments = [build_fragment(n, 1, Sample(1, n * 33_333, 33_333, 0, KEYFRAME_FLAGS if n == 0 else DELTA_FLAGS, 0, 0),
                                b"sample%d" % n) for n in range(3)]
    return build_init([video]) + b"".join(fragments)


def test_synthetic_stream_ingests() -> None:
    hang = HangBroadcast("s.hang")
    ingest = Fmp4Ingest(hang, container="legacy")
    ingest.feed(synthetic_fmp4())
    ingest.parser.end()
    group = hang.broadcast.tracks["0.avc1"].latest
    assert group is not None and [decode_legacy(f) for f in group.frames] == [(0, b"sample0"), (33_333, b"sample1"),
                                                                           (66_666, b"sample2")]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mangled_fmp4_raises_only_mp4_errors(data: st.DataObject) -> None:
    stream = bytearray(synthetic_fmp4())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(stream) - 1))
        stream[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    ingest = Fmp4Ingest(HangBroadcast("f.hang"), container=data.draw(st.sampled_from(["cmaf", "legacy"])),
                        max_box_size=4096)
    try:
        ingest.feed(bytes(stream[:cut]))
        ingest.parser.end()
    except (Mp4Error, CatalogError):
        pass

"""moqt_asgi.media against real peers: ffmpeg's fragmented MP4 in, moq-rs and ffprobe out.

* moq-rs (PyPI) reads what :class:`HangBroadcast` + :class:`Fmp4Ingest` publish over native QUIC: its
  catalog parser, its ``subscribe_media`` (samples, timestamps, keyframes equal to the input's) and its
  decoder (``decode_video``: frames of the right size).
* The same ffmpeg output given to moq-rs's own ``publish_container_stream``: the same catalog
  renditions and sample entries, and for ``cmaf`` input the same frame bytes and timestamps.
* JSON data tracks both ways: moq-rs's ``subscribe_json_snapshot``/``subscribe_json_stream`` read
  ours (plain and deflated, deltas included), and we read what moq-rs's publishers write.
* :class:`~moqt_asgi.media.record.Recorder` records what moq-rs publishes through ``examples/relay.py``.
* ``publish`` and ``record`` on the command line through ``serve examples.relay:moq``; ``ffprobe``
  reads the recording.

ffmpeg/ffprobe must be installed (``.ci/run`` installs them): without them these tests fail.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import moq
import pytest

from moqt_asgi import MoQ
from moqt_asgi.endpoints.dial_quic import dial_quic
from moqt_asgi.media import Catalog, Fmp4Ingest, HangBroadcast, decode_cmaf, read_snapshots, read_stream
from moqt_asgi.media.ingest import Fmp4Parser, SampleEvent
from moqt_asgi.media.mp4 import iter_boxes, parse_init
from moqt_asgi.media.record import Recorder

from .conftest import ROOT, Certs
from .helpers import cli, eventually, free_udp_port, moqrs_client, moqrs_server, native_server, stop_serve

TIMEOUT = 15
CMAF_FLAGS = "cmaf+separate_moof+delay_moov+skip_trailer+frag_every_frame"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian: apt-get install ffmpeg); the media tests need it")
    return path


def make_clip(path: Path, *, seconds: float = 2, audio: bool = True, movflags: str = "+frag_every_frame+empty_moov"
              "+default_base_moof", video: tuple[str, ...] = ("-c:v", "libx264", "-profile:v", "baseline",
                                                              "-tune", "zerolatency", "-bf", "0"),
              audio_codec: tuple[str, ...] = ("-c:a", "aac", "-b:a", "64k")) -> Path:
    """A small test-pattern clip (320x180, 30 fps, GoP 30, optional AAC tone) as fragmented MP4."""
    inputs = ["-f", "lavfi", "-i", "testsrc=size=320x180:rate=30"]
    if audio:
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    command = [tool("ffmpeg"), "-hide_banner", "-v", "error", "-y", *inputs, "-t", str(seconds), "-pix_fmt", "yuv420p",
               *video, "-g", "30", *(audio_codec if audio else ("-an",)),
               "-movflags", movflags, "-f", "mp4", str(path)]
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {"av": make_clip(folder / "av.mp4"),
            "video_cmaf": make_clip(folder / "v_cmaf.mp4", audio=False, movflags=CMAF_FLAGS),
            "gop": make_clip(folder / "gop.mp4", movflags="+frag_keyframe+empty_moov+default_base_moof")}


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    """(ftyp + moov, the other top-level boxes) of an fMP4 file."""
    boxes = list(iter_boxes(data))
    return (b"".join(b.raw for b in boxes if b.type in ("ftyp", "moov")),
            [b.raw for b in boxes if b.type not in ("ftyp", "moov", "mfra")])


def input_samples(data: bytes) -> dict[int, list[tuple[bytes, int, bool]]]:
    """(sample bytes, µs timestamp, keyframe) per track id, as the input says."""
    out: dict[int, list[tuple[bytes, int, bool]]] = {}
    for event in Fmp4Parser().feed(data):
        if isinstance(event, SampleEvent):
            out.setdefault(event.track.track_id, []).append((event.data, event.timestamp_us, event.sample.keyframe))
    return out


# -- moq-rs reads what we publish -------------------------------------------------------------------

@pytest.mark.interop
@pytest.mark.parametrize("clip", ["av", "gop"])
async def test_moqrs_reads_our_hang_broadcast(clips: dict[str, Path], certs: Certs, clip: str) -> None:
    data = clips[clip].read_bytes()
    init, fragments = split(data)
    expected = input_samples(data)
    app = MoQ()
    hang = HangBroadcast("demo.hang")
    app.mux.publish(hang.path, hang.broadcast)
    ingest = Fmp4Ingest(hang)
    ingest.feed(init)
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        async with moqrs_client(f"moql://{host}:{port}/", certs.fingerprint) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("demo.hang"), TIMEOUT)
            catalog = await asyncio.wait_for(broadcast.catalog(), TIMEOUT)
            assert set(catalog.video) == {"0.m4s"} and set(catalog.audio) == {"1.m4s"}
            video, audio = catalog.video["0.m4s"], catalog.audio["1.m4s"]
            assert video.codec.startswith("avc1.42") and (video.coded.width, video.coded.height) == (320, 180)
            assert (audio.codec, audio.sample_rate, audio.channel_count) == ("mp4a.40.2", 48000, 1)
            assert video.container.init == hang.catalog.video.renditions["0.m4s"].container.init  # type: ignore[union-attr]
            media = await broadcast.subscribe_media("0.m4s", video, moq.Subscription(max_age_us=30_000_000))
            sound = await broadcast.subscribe_media("1.m4s", audio, moq.Subscription(max_age_us=30_000_000))
            decoded = await broadcast.decode_video("0.m4s", video)
            async def take(consumer: object, count: int = 0, last: int = -1) -> list[object]:
                got = []
                async for frame in consumer:  # type: ignore[attr-defined]
                    got.append(frame)
                    if len(got) == count or frame.timestamp_us == last:
                        break
                return got

            reading = asyncio.ensure_future(asyncio.gather(
                take(media, len(expected[1])), take(sound, last=expected[2][-1][1]), take(decoded, 30)))
            # a subscription starts at the newest group: be sure they are in place (moq-rs shares one per track)
            tracks = hang.broadcast.tracks
            await eventually(lambda: tracks["0.m4s"].subscribers and tracks["1.m4s"].subscribers, "moq-rs subscribed")
            for fragment in fragments:
                ingest.feed(fragment)
                await asyncio.sleep(0.002)
            frames, sounds, pictures = await asyncio.wait_for(reading, TIMEOUT)
    assert [(bytes(f.payload), f.timestamp_us, f.keyframe) for f in frames] == expected[1]  # type: ignore[attr-defined]
    assert frames[0].keyframe and sum(f.keyframe for f in frames) == 2  # type: ignore[attr-defined]
    # audio: every frame from where moq-rs joined (an input fragmented by GoP writes a second of audio groups
    # at once, and moq-rs keeps only groups newer than the newest it has)
    assert len(sounds) >= 40
    assert [(bytes(f.payload), f.timestamp_us) for f in sounds] == [s[:2] for s in expected[2][-len(sounds):]]  # type: ignore[attr-defined]
    assert {(p.width, p.height) for p in pictures} == {(320, 180)}  # type: ignore[attr-defined]
    assert [p.timestamp_us for p in pictures] == [s[1] for s in expected[1][:30]]  # type: ignore[attr-defined]


async def moqrs_publishes(data: bytes) -> tuple[bytes, dict[str, list[tuple[int, list[tuple[int, bytes]]]]]]:
    """moq-rs's own fMP4 import of ``data``: its first catalog and the groups of its media tracks."""
    origin = moq.OriginProducer()
    producer = origin.create_broadcast("golden.hang")
    stream = producer.publish_container_stream(moq.ContainerFormat.FMP4)
    init, fragments = split(data)
    stream.write(init)
    producer.announce()
    consumer = await origin.consume().request_broadcast("golden.hang")
    tracks: dict[str, list[tuple[int, list[tuple[int, bytes]]]]] = {}

    async def read(name: str) -> None:
        track = await consumer.subscribe_track(name)
        groups = tracks.setdefault(name, [])
        while (group := await track.next_group()) is not None:
            frames: list[tuple[int, bytes]] = []
            groups.append((group.sequence, frames))
            while (frame := await group.read_frame()) is not None:
                frames.append((frame.timestamp_us, bytes(frame.payload)))

    catalog_track = await consumer.subscribe_track("catalog.json")
    readers = [asyncio.ensure_future(read("0.m4s"))]
    await asyncio.sleep(0.2)
    for fragment in fragments:
        stream.write(fragment)
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.5)
    group = await asyncio.wait_for(catalog_track.next_group(), TIMEOUT)
    catalog = bytes((await group.read_frame()).payload)
    for reader in readers:
        reader.cancel()
    return catalog, tracks


@pytest.mark.interop
async def test_same_input_same_output_as_moqrs(clips: dict[str, Path]) -> None:
    data = clips["video_cmaf"].read_bytes()
    theirs_catalog, theirs = await moqrs_publishes(data)
    hang = HangBroadcast("golden.hang")
    ingest = Fmp4Ingest(hang)
    producer_groups: list[tuple[int, list[tuple[int, bytes]]]] = []
    init, fragments = split(data)
    ingest.feed(init)
    for fragment in fragments:
        before = ingest.samples
        ingest.feed(fragment)
        group = ingest.tracks["0.m4s"].group
        if group is None or ingest.samples == before:  # a box that is not a fragment's end (moof, sidx...)
            continue
        if not producer_groups or producer_groups[-1][0] != group.sequence:
            producer_groups.append((group.sequence, []))
        producer_groups[-1][1].append((group.timestamps[-1], group.frames[-1]))
    ours = Catalog.from_json(json.loads(hang.catalog.encode())).to_json()["video"]["renditions"]["0.m4s"]
    reference = json.loads(theirs_catalog)["video"]["renditions"]["0.m4s"]
    for key in ("codec", "description", "codedWidth", "codedHeight"):
        assert ours[key] == reference[key], key
    (our_track,) = parse_init(base64.b64decode(ours["container"]["init"]))
    (their_track,) = parse_init(base64.b64decode(reference["container"]["init"]))
    assert our_track.entry == their_track.entry and our_track.timescale == their_track.timescale
    # ffmpeg's cmaf fragments pass through unchanged, grouped at the same keyframes, at the same timestamps
    assert producer_groups == theirs["0.m4s"]
    samples = [s for _, frames in producer_groups for _, f in frames for s in decode_cmaf(f, our_track.timescale)]
    assert [(s.payload, s.timestamp_us, s.keyframe) for s in samples] == input_samples(data)[1]


# -- the command line -----------------------------------------------------------------------------------

@pytest.fixture
def relay(certs: Certs) -> Iterator[str]:
    port = free_udp_port()
    process = subprocess.Popen(cli("serve", "examples.relay:moq", "--graceful-timeout", "1", "--bind", f"127.0.0.1:{port}",
                                   "--certfile", str(certs.cert), "--keyfile", str(certs.key)),
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "serving" in line, line
    try:
        yield f"moql://127.0.0.1:{port}/"
    finally:
        stop_serve(process, TIMEOUT)


def ffprobe(path: Path) -> dict[str, object]:
    result = subprocess.run([tool("ffprobe"), "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.cli
@pytest.mark.parametrize("container", ["cmaf", "legacy", "loc"])
def test_publish_and_record_cli_round_trip(clips: dict[str, Path], certs: Certs, relay: str, tmp_path: Path,
                                           container: str) -> None:
    out = tmp_path / "recording.mp4"
    record = subprocess.Popen(cli("record", relay, "clip.hang", "--fingerprint", certs.fingerprint, "--out", str(out),
                                  "--duration", "20", "--frames", "60"),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    publish = subprocess.Popen(cli("publish", relay, "clip.hang", "--fingerprint", certs.fingerprint, "--input",
                                   str(clips["av"]), "--loop", "--container", container),
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = record.communicate(timeout=60)
    finally:
        publish.terminate()
        publish.wait(timeout=TIMEOUT)
    assert record.returncode == 0, stderr
    assert ("0.m4s: video" if container == "cmaf" else "0.avc1: video") in stdout, stdout
    streams = {s["codec_type"]: s for s in ffprobe(out)["streams"]}  # type: ignore[index, union-attr]
    video = streams["video"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 180)
    assert int(video["nb_read_frames"]) >= 10
    assert streams["audio"]["codec_name"] == "aac"


# -- JSON data tracks both ways ----------------------------------------------------------------------

@pytest.mark.interop
async def test_moqrs_reads_our_json_tracks(certs: Certs) -> None:
    app = MoQ()
    hang = HangBroadcast("data.hang")
    app.mux.publish(hang.path, hang.broadcast)
    status = hang.json_snapshot("status.json")
    packed = hang.json_snapshot("status.json.z", compression=True)
    chat = hang.json_stream("chat.jsonl")
    values = [{"state": "live", "tags": ["a"], "viewers": 1}, {"state": "live", "tags": ["a"], "viewers": 2},
              {"state": "idle", "tags": ["a", "b"], "viewers": 2, "extra": {"x": 1}}]
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        async with moqrs_client(f"moql://{host}:{port}/", certs.fingerprint) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("data.hang"), TIMEOUT)
            raw = await broadcast.subscribe_track("catalog.json")
            group = await asyncio.wait_for(raw.next_group(), TIMEOUT)
            listed = json.loads(bytes((await group.read_frame()).payload))["json"]["tracks"]
            assert listed == {"chat.jsonl": {"mode": "stream"}, "status.json": {"mode": "snapshot"},
                              "status.json.z": {"mode": "snapshot", "compression": "deflate"}}
            deflated_catalog = await broadcast.subscribe_json_snapshot("catalog.json.z", compression=True)
            assert await asyncio.wait_for(anext(deflated_catalog), TIMEOUT) == hang.catalog.to_json()
            plain = await broadcast.subscribe_json_snapshot("status.json")
            deflated = await broadcast.subscribe_json_snapshot("status.json.z", compression=True)
            log = await broadcast.subscribe_json_stream("chat.jsonl")

            async def until(consumer: object, last: object) -> list[object]:
                seen = []
                async for value in consumer:  # type: ignore[attr-defined]
                    seen.append(value)
                    if value == last:
                        return seen
                return seen

            reading = asyncio.ensure_future(asyncio.gather(until(plain, values[-1]), until(deflated, values[-1]),
                                                           until(log, {"n": 4})))
            tracks = hang.broadcast.tracks
            await eventually(lambda: all(tracks[n].subscribers for n in ("status.json", "status.json.z", "chat.jsonl")),
                             "moq-rs subscribed")
            for value in values:  # one group: a snapshot, then merge-patch deltas
                status.update(value)
                packed.update(value)
                await asyncio.sleep(0.05)
            for n in range(5):
                chat.append({"n": n})
            seen_plain, seen_deflated, seen_log = await asyncio.wait_for(reading, TIMEOUT)
    assert seen_plain[-1] == seen_deflated[-1] == values[-1]
    assert all(value in values for value in seen_plain + seen_deflated)
    assert seen_log == [{"n": n} for n in range(5)]
    assert len(tracks["status.json"].cached()) == 1 and len(tracks["status.json"].latest.frames) == 3  # type: ignore[union-attr]


@pytest.mark.interop
async def test_we_read_moqrs_json_tracks() -> None:
    async with moqrs_server() as (port, origin, fingerprint):
        producer = origin.create_broadcast("rs.hang")
        snapshot = producer.publish_json_snapshot("status.json.z", compression=True)
        stream = producer.publish_json_stream("chat.jsonl")
        producer.announce()
        session = await dial_quic(f"moql://127.0.0.1:{port}/", fingerprint=fingerprint)
        async with session:
            announced = await session.announced("rs.hang")
            if "rs.hang" not in announced.active:
                async for announcement in announced:
                    if announcement.path == "rs.hang":
                        break
            announced.close()
            values = [{"state": "live", "viewers": n} for n in range(1, 4)]
            snapshots = read_snapshots(await session.subscribe("rs.hang", "status.json.z", wait_for_start=False),
                                       compression=True)
            records = read_stream(await session.subscribe("rs.hang", "chat.jsonl", wait_for_start=False))

            async def take(source: object, last: object) -> list[object]:
                seen = []
                async for value in source:  # type: ignore[attr-defined]
                    seen.append(value)
                    if value == last:
                        break
                return seen

            reading = asyncio.ensure_future(asyncio.gather(take(snapshots, values[-1]), take(records, {"msg": 2})))
            await asyncio.sleep(0.3)
            for n, value in enumerate(values):
                snapshot.update(value)
                stream.append({"msg": n})
                await asyncio.sleep(0.05)
            seen_values, seen_records = await asyncio.wait_for(reading, TIMEOUT)
    assert seen_values[-1] == values[-1] and all(value in values for value in seen_values)
    assert seen_records == [{"msg": n} for n in range(3)]


# -- ingest details ------------------------------------------------------------------------------------

@pytest.mark.cli
def test_ingest_refragments_and_loops(clips: dict[str, Path]) -> None:
    data = clips["gop"].read_bytes()  # one fragment per GoP, both tracks in it
    expected = input_samples(data)
    hang = HangBroadcast("loop.hang")
    ingest = Fmp4Ingest(hang)
    seen: list[tuple[int, bool, int]] = []
    for chunk_start in range(0, len(data), 4096):  # any chunking
        ingest.feed(data[chunk_start:chunk_start + 4096])
    video = hang.broadcast.tracks["0.m4s"]
    first_pass_end = video.latest.timestamps[-1]  # type: ignore[union-attr]
    ingest.feed(data)  # the same file again: a second moov, the timeline carries on
    for group in video.cached():
        for frame, timestamp in zip(group.frames, group.timestamps, strict=True):
            (sample,) = decode_cmaf(frame, 15360)  # one sample per frame, the sample's own timestamp
            seen.append((group.sequence, sample.keyframe, timestamp))
            assert sample.timestamp_us == timestamp
    assert [keyframe for _, keyframe, _ in seen] == [True] + [False] * 29 + [True] + [False] * 29
    assert [s[0] for s in seen] == [2] * 30 + [3] * 30  # a group per GoP, two passes of two
    first = seen[0][2]
    assert abs(first - (first_pass_end + 33_333)) <= 1  # right after the last frame (µs, rounded down)
    assert all(abs((t - first) - (s[1] - expected[1][0][1])) <= 1 for (_, _, t), s in zip(seen, expected[1], strict=True))
    assert set(hang.catalog.video.renditions) == {"0.m4s"}  # type: ignore[union-attr]


@pytest.mark.interop
async def test_we_record_what_moqrs_publishes(clips: dict[str, Path], certs: Certs, tmp_path: Path) -> None:
    data = clips["video_cmaf"].read_bytes()
    init, fragments = split(data)
    relay = importlib.reload(importlib.import_module("examples.relay")).moq
    out = tmp_path / "moqrs.mp4"
    async with native_server(relay, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        async with moqrs_client(f"moql://{host}:{port}/", certs.fingerprint) as client:
            producer = client.create_broadcast("rs.hang")
            stream = producer.publish_container_stream(moq.ContainerFormat.FMP4)
            stream.write(init)
            producer.announce()
            session = await dial_quic(f"moql://{host}:{port}/", fingerprint=certs.fingerprint)
            async with session:
                with out.open("wb") as file:
                    recorder = Recorder(session, "rs.hang", file)
                    recording = asyncio.ensure_future(recorder.run(duration=TIMEOUT, max_frames=45))
                    await asyncio.sleep(0.5)
                    for fragment in fragments:  # 30 fps, a little faster
                        stream.write(fragment)
                        await asyncio.sleep(0.01)
                    (track,) = await asyncio.wait_for(recording, TIMEOUT)
    assert (track.name, track.kind, track.frames) == ("0.m4s", "video", 45)
    streams = ffprobe(out)["streams"]
    (video,) = streams  # type: ignore[misc]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 180)  # type: ignore[index]
    assert int(video["nb_read_frames"]) == track.frames  # type: ignore[index]


@pytest.mark.cli
def test_publish_reads_ffmpeg_on_stdin(certs: Certs, relay: str, tmp_path: Path) -> None:
    out = tmp_path / "piped.mp4"
    ffmpeg = subprocess.Popen([tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                               "testsrc=size=320x180:rate=30", "-t", "20", "-pix_fmt", "yuv420p", "-c:v", "libx264",
                               "-tune", "zerolatency", "-bf", "0", "-g", "30", "-f", "mp4", "-movflags", CMAF_FLAGS, "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    publish = subprocess.Popen(cli("publish", relay, "pipe.hang", "--fingerprint", certs.fingerprint, "--input", "-"),
                               cwd=ROOT, stdin=ffmpeg.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert ffmpeg.stdout is not None
    ffmpeg.stdout.close()  # publish holds the pipe now
    try:
        record = subprocess.run(cli("record", relay, "pipe.hang", "--fingerprint", certs.fingerprint, "--out", str(out),
                                    "--frames", "45", "--duration", "30"),
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        ffmpeg.terminate()
        ffmpeg.wait(timeout=TIMEOUT)
        publish.wait(timeout=TIMEOUT)
    assert record.returncode == 0, record.stderr
    assert "0.m4s: video, 45 frames" in record.stdout, record.stdout
    (video,) = ffprobe(out)["streams"]  # type: ignore[misc]
    assert (video["codec_name"], int(video["nb_read_frames"])) == ("h264", 45)  # type: ignore[index]


@pytest.mark.interop
async def test_moqrs_reads_vp9_and_opus(tmp_path: Path, certs: Certs) -> None:
    """Royalty-free: VP9 video and Opus audio (the Opus description is the OpusHead rebuilt from dOps)."""
    clip = make_clip(tmp_path / "vp9_opus.mp4", movflags=CMAF_FLAGS,
                     video=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"),
                     audio_codec=("-c:a", "libopus", "-b:a", "64k"))
    data = clip.read_bytes()
    init, fragments = split(data)
    expected = input_samples(data)
    app = MoQ()
    hang = HangBroadcast("free.hang")
    app.mux.publish(hang.path, hang.broadcast)
    ingest = Fmp4Ingest(hang)
    ingest.feed(init)
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        async with moqrs_client(f"moql://{host}:{port}/", certs.fingerprint) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("free.hang"), TIMEOUT)
            catalog = await asyncio.wait_for(broadcast.catalog(), TIMEOUT)
            video, audio = catalog.video["0.m4s"], catalog.audio["1.m4s"]
            assert video.codec.startswith("vp09.00.") and (video.coded.width, video.coded.height) == (320, 180)
            assert (audio.codec, audio.sample_rate, audio.channel_count) == ("opus", 48000, 1)
            assert audio.description[:8] == b"OpusHead"
            media = await broadcast.subscribe_media("0.m4s", video, moq.Subscription(max_age_us=30_000_000))

            async def take(count: int) -> list[object]:
                got = []
                async for frame in media:
                    got.append(frame)
                    if len(got) == count:
                        break
                return got

            reading = asyncio.ensure_future(take(len(expected[1])))
            await eventually(lambda: hang.broadcast.tracks["0.m4s"].subscribers, "moq-rs subscribed")
            for fragment in fragments:
                ingest.feed(fragment)
                await asyncio.sleep(0.002)
            frames = await asyncio.wait_for(reading, TIMEOUT)
    assert [(bytes(f.payload), f.timestamp_us, f.keyframe) for f in frames] == expected[1]  # type: ignore[attr-defined]

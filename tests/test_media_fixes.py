"""moqt_asgi.media: recordings of reordered (B-frame) video, bounded ``record`` runs, JSON streams in many groups."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import itertools
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from moqt_asgi import MoQ
from moqt_asgi.engine.session import Session
from moqt_asgi.media import Container, HangBroadcast, StreamDecoder, VideoConfig, read_stream
from moqt_asgi.media import cli as media_cli
from moqt_asgi.media.catalog import Json
from moqt_asgi.media.cli import RECORD_MARGIN
from moqt_asgi.media.container import encode_legacy, encode_loc
from moqt_asgi.media.ingest import Fmp4Ingest
from moqt_asgi.media.jsontracks import DEFAULT_MAX_STREAM_GROUP_BYTES, JsonStreamProducer
from moqt_asgi.media.mp4 import Sample, iter_boxes, parse_moof
from moqt_asgi.media.record import REORDER_WINDOW, LegacyWrapper, Recorder, RecordError
from moqt_asgi.producer import TrackProducer

from .conftest import ROOT, Certs
from .helpers import WAIT, cli, eventually, free_udp_port, memory_sessions, stop_serve
from .test_media import video_config
from .test_media_peers import TIMEOUT, ffprobe, make_clip, split, tool

FRAME_US = 33_333


def samples_of(fragments: list[bytes]) -> list[Sample]:
    """The one sample of each fragment ``LegacyWrapper`` wrote."""
    return [parse_moof(next(iter_boxes(fragment)).raw, 0, {}, {}).samples[0] for fragment in fragments]


def check_timing(samples: list[Sample]) -> None:
    """Decode times increase, no frame is shown before it is decoded, durations reach the next decode time."""
    decode = [s.decode_time for s in samples]
    assert decode == sorted(set(decode)), decode
    assert all(s.cts_offset >= 0 for s in samples), [s.cts_offset for s in samples]
    assert all(a.decode_time + a.duration == b.decode_time for a, b in itertools.pairwise(samples))


def packet_times(path: Path) -> list[tuple[int, int]]:
    """(pts, dts) of each video packet of ``path``, as ffprobe reads them."""
    packets = subprocess.run([tool("ffprobe"), "-v", "error", "-select_streams", "v", "-show_entries", "packet=pts,dts",
                              "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=60, check=True)
    return [(int(pts), int(dts)) for pts, dts in (line.split(",") for line in packets.stdout.split())]


@pytest.mark.parametrize("container", ["legacy", "loc"])
def test_b_frames_get_decode_times_and_composition_offsets(container: str) -> None:
    # decode order of x264 with -bf 2 (and b-pyramid): I0 P3 B1 B2 P6 B4 B5 ..., joined mid-stream
    start = 1000
    order = [0, 3, 1, 2, 6, 4, 5, 9, 7, 8, 12, 10, 11, 15, 13, 14]
    encode = encode_loc if container == "loc" else encode_legacy
    wrap = LegacyWrapper(1, video=True, container=container)
    fragments = [f for n, pts in enumerate(order)
                 if (f := wrap.frame(encode((start + pts) * FRAME_US, b"f%d" % pts), n == 0)) is not None]
    assert len(fragments) == len(order) - wrap.window - 1  # a window of frames held back, then one behind
    check_timing(samples_of(fragments))
    fragments += wrap.flush()
    samples = samples_of(fragments)
    check_timing(samples)
    assert [s.decode_time + s.cts_offset for s in samples] == [(start + pts) * FRAME_US for pts in order]
    assert [s.keyframe for s in samples] == [True] + [False] * (len(order) - 1)
    assert max(s.cts_offset for s in samples) <= 3 * FRAME_US  # the reorder delay, not the window


def test_a_track_shorter_than_the_window() -> None:
    wrap = LegacyWrapper(1, video=True)
    assert all(wrap.frame(encode_legacy(pts * FRAME_US, b"f"), n == 0) is None for n, pts in enumerate([0, 3, 1, 2]))
    samples = samples_of(wrap.flush())
    check_timing(samples)
    assert [s.decode_time + s.cts_offset for s in samples] == [0, 3 * FRAME_US, FRAME_US, 2 * FRAME_US]
    assert LegacyWrapper(1, video=True).flush() == []


def test_audio_is_not_held_back() -> None:
    wrap = LegacyWrapper(2, video=False)
    assert wrap.frame(encode_legacy(0, b"a"), True) is None
    (sample,) = samples_of([wrap.frame(encode_legacy(20_000, b"b"), False) or b""])
    assert (sample.decode_time, sample.cts_offset, sample.duration) == (0, 0, 20_000)
    (tail,) = samples_of(wrap.flush())
    assert (tail.decode_time, tail.cts_offset, tail.duration) == (20_000, 0, 20_000)


@pytest.mark.parametrize("container", ["legacy", "loc"])
async def test_record_b_frames_every_frame_decodes(tmp_path: Path, container: str) -> None:
    clip = make_clip(tmp_path / "bframes.mp4", seconds=2, audio=False,
                     video=("-c:v", "libx264", "-bf", "2", "-s", "160x96"))
    init, fragments = split(clip.read_bytes())
    app = MoQ()
    hang = HangBroadcast("b.hang")
    app.mux.publish(hang.path, hang.broadcast)
    ingest = Fmp4Ingest(hang, container=container)
    ingest.feed(init)
    out = io.BytesIO()
    async with memory_sessions(app) as (client, _server, _c, _s):
        recorder = Recorder(client, "b.hang", out)
        recording = asyncio.ensure_future(recorder.run(duration=WAIT * 4))
        await eventually(lambda: hang.broadcast.tracks["0.avc1"].subscribers > 0, "the recorder subscribes")
        for fragment in fragments:  # at the recorder's pace: a live reader skips groups it falls behind on
            ingest.feed(fragment)
            await eventually(lambda: recorder.tracks[0].frames >= ingest.samples - REORDER_WINDOW - 1,
                             "the recorder writes all but the frames it holds back")
        ingest.parser.end()
        hang.close()
        (track,) = await asyncio.wait_for(recording, WAIT * 4)
    assert track.frames == ingest.samples == 60
    recording_path = tmp_path / "recording.mp4"
    recording_path.write_bytes(out.getvalue())
    (video,) = ffprobe(recording_path)["streams"]  # type: ignore[misc]
    assert (video["codec_name"], int(video["nb_read_frames"])) == ("h264", 60)  # type: ignore[index]
    assert int(video["has_b_frames"]) > 0  # type: ignore[index]
    times = packet_times(recording_path)
    dts = [d for _, d in times]
    assert len(times) == 60 and dts == sorted(set(dts)), times
    assert all(d <= p for p, d in times), times


# -- JSON stream tracks roll over to new groups -------------------------------------------------------

@pytest.mark.parametrize("compression", [False, True])
def test_stream_groups_roll_over_and_decode_alone(compression: bool) -> None:
    track = TrackProducer("log.jsonl", cached_groups=100)
    producer = JsonStreamProducer(track, compression=compression, max_group_bytes=2000)
    records: list[Json] = [{"n": n, "hash": hashlib.sha256(b"%d" % n).hexdigest()} for n in range(300)]
    for record in records:
        producer.append(record)
    big = {"big": "".join(hashlib.sha256(b"%d" % n).hexdigest() for n in range(100))}
    producer.append(big)  # larger than the limit (compressed too): alone in its group
    producer.finish()
    groups = track.cached()
    assert len(groups) > 5
    assert all(group.finished for group in groups)
    assert all(group.size <= 2000 for group in groups[:-1]) and len(groups[-1].frames) == 1
    read: list[Json] = []
    for group in groups:  # each group decodes with a decoder of its own, as a reader that joins there
        decoder = StreamDecoder(compression=compression)
        decoder.start_group()
        read += [decoder.frame(frame) for frame in group.frames]
    assert read == [*records, big]
    with pytest.raises(ValueError):
        JsonStreamProducer(TrackProducer("bad"), max_group_bytes=0)


def test_a_long_log_never_reaches_the_group_limit() -> None:
    # every record in one group would grow to the 64 MiB group limit, where append raises and resets it
    track = TrackProducer("log.jsonl", cached_groups=4)
    producer = JsonStreamProducer(track)
    record = {"line": "z" * 1000}
    for _ in range(1500):  # 1.5 MB
        producer.append(record)
    assert [group.sequence for group in track.cached()] == [0, 1]
    assert all(group.size <= DEFAULT_MAX_STREAM_GROUP_BYTES for group in track.cached())


async def test_a_late_joiner_reads_the_newest_stream_group() -> None:
    app = MoQ()
    hang = HangBroadcast("log.hang")
    app.mux.publish(hang.path, hang.broadcast)
    producer = hang.json_stream("log.jsonl", compression=True, max_group_bytes=500)
    for n in range(100):
        producer.append({"n": n, "pad": "p" * 20})
    newest = hang.broadcast.tracks["log.jsonl"].latest
    assert newest is not None and newest.sequence > 0
    first_of_newest = StreamDecoder(compression=True)
    first_of_newest.start_group()
    expected = first_of_newest.frame(newest.frames[0])
    async with memory_sessions(app) as (client, _server, _c, _s):
        reader = read_stream(await client.subscribe("log.hang", "log.jsonl"), compression=True)
        assert await asyncio.wait_for(anext(reader), WAIT) == expected
        assert isinstance(expected, dict) and expected["n"] > 0
        later = [await asyncio.wait_for(anext(reader), WAIT) for _ in range(len(newest.frames) - 1)]
        producer.append({"n": 100})
        assert [r["n"] for r in later if isinstance(r, dict)] == list(range(expected["n"] + 1, 100))  # type: ignore[operator]
        assert await asyncio.wait_for(anext(reader), WAIT) == {"n": 100}
        await reader.aclose()


# -- record ends within its duration ------------------------------------------------------------------

VP9_LEGACY = VideoConfig("vp09.00.10.08", coded_width=160, coded_height=96, container=Container("legacy"))


async def test_recorder_duration_covers_the_wait_for_a_recordable_catalog(caplog: pytest.LogCaptureFixture) -> None:
    app = MoQ()
    hang = HangBroadcast("vp9.hang")
    app.mux.publish(hang.path, hang.broadcast)
    hang.add_video("0.vp09", VP9_LEGACY)  # no description: nothing to build the MP4 track from
    async with memory_sessions(app) as (client, _server, _c, _s):
        recorder = Recorder(client, "vp9.hang", io.BytesIO())
        with caplog.at_level(logging.WARNING, "moqt_asgi.media"), pytest.raises(RecordError) as error:
            await asyncio.wait_for(recorder.run(duration=0.5), WAIT)
    assert "0.vp09 (vp09.00.10.08, legacy)" in str(error.value)
    assert any(r.levelno == logging.WARNING and "nothing recordable yet: 0.vp09 (vp09.00.10.08, legacy)" in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.fixture
def relay_url(certs: Certs) -> Iterator[str]:
    """``serve examples.relay:moq`` on a free port of 127.0.0.1."""
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


def record_cli(relay: str, certs: Certs, broadcast: str, out: Path, duration: float) -> subprocess.CompletedProcess[str]:
    """``record`` with ``--duration``; a run that outlives the duration by far fails the test."""
    try:
        return subprocess.run(cli("record", relay, broadcast, "--fingerprint", certs.fingerprint, "--out", str(out),
                                  "--duration", str(duration)),
                              cwd=ROOT, capture_output=True, text=True, timeout=duration + RECORD_MARGIN + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"record --duration {duration} was still waiting long after it")


@pytest.mark.cli
def test_record_gives_up_on_a_broadcast_never_announced(certs: Certs, relay_url: str, tmp_path: Path) -> None:
    result = record_cli(relay_url, certs, "nobody.hang", tmp_path / "none.mp4", 1)
    assert result.returncode != 0
    assert "nobody.hang was not announced within --duration 1 s" in result.stderr, result.stderr


@pytest.mark.cli
def test_record_gives_up_on_a_broadcast_with_nothing_recordable(certs: Certs, relay_url: str, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "vp9.mp4", seconds=1, audio=False,
                     video=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-s", "160x96"))
    publish = subprocess.Popen(cli("publish", relay_url, "vp9.hang", "--fingerprint", certs.fingerprint, "--input",
                                   str(clip), "--loop", "--container", "legacy"),
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = record_cli(relay_url, certs, "vp9.hang", tmp_path / "vp9-rec.mp4", 8)  # publish is up well before
    finally:
        publish.terminate()
        publish.wait(timeout=TIMEOUT)
    assert result.returncode != 0
    assert "WARNING moqt_asgi.media: catalog of vp9.hang lists nothing recordable yet: 0.vp09 (vp09." in result.stderr, \
        result.stderr
    assert "error: vp9.hang listed nothing that can be recorded within the duration (0.vp09 (vp09." in result.stderr


async def test_record_fails_when_nothing_was_recorded(tmp_path: Path) -> None:
    app = MoQ()
    hang = HangBroadcast("idle.hang")
    app.mux.publish(hang.path, hang.broadcast)
    hang.add_video("0.avc1", video_config())  # recordable, but no frame ever comes
    args = argparse.Namespace(broadcast="idle.hang", out=str(tmp_path / "idle.mp4"), duration=0.5, frames=None)
    async with memory_sessions(app) as (client, _server, _c, _s):

        async def dial(_args: argparse.Namespace, _mux: object) -> Session:
            return client

        with pytest.raises(SystemExit) as exit_:  # in this task: a SystemExit leaving a task stops the loop
            async with asyncio.timeout(WAIT):
                await media_cli.record(args, dial)
    assert str(exit_.value.code) == "error: nothing was recorded from idle.hang: its tracks sent no frame within " \
                                    "--duration 0.5 s"

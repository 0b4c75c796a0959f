"""moqt_asgi.media: recordings of reordered (B-frame) video, bounded ``record`` runs, JSON streams in many groups."""

from __future__ import annotations

import asyncio
import io
import itertools
import subprocess
from pathlib import Path

import pytest

from moqt_asgi import MoQ
from moqt_asgi.media import HangBroadcast
from moqt_asgi.media.container import encode_legacy, encode_loc
from moqt_asgi.media.ingest import Fmp4Ingest
from moqt_asgi.media.mp4 import Sample, iter_boxes, parse_moof
from moqt_asgi.media.record import REORDER_WINDOW, LegacyWrapper, Recorder

from .helpers import WAIT, eventually, memory_sessions
from .test_media_peers import ffprobe, make_clip, split, tool

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

"""Recording: a publish session's upscaled stream (+ its AAC audio) lands in a playable file."""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from livevsr.app import App
from livevsr.config import RecordConfig
from livevsr.ingest.base import AudioPacket, VideoPacket
from livevsr.publish.mux import parameter_sets, split_annexb
from livevsr.testing.publisher import aac_frames, synthetic_frame
from tests.conftest import loopback_config, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
WIDTH, HEIGHT, FPS = 32, 24, 30


def h264_access_units(count: int, width: int = WIDTH, height: int = HEIGHT) -> list[tuple[bytes, bool, int]]:
    """Annex-B access units of the moving test pattern: (data, keyframe, pts_ms)."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 1000)
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "keyint=15:bframes=0"}
    ctx.open()
    out = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(synthetic_frame(width, height, i), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = round(i * 1000 / FPS)
        out += [(bytes(p), p.is_keyframe, p.pts) for p in ctx.encode(frame)]
    out += [(bytes(p), p.is_keyframe, p.pts) for p in ctx.encode(None)]
    return out


async def feed(sink, video: list, audio: list, asc: bytes, realtime: bool = True) -> None:  # noqa: ANN001
    """Publish like RTMP ingest does: config first, then audio and video interleaved by pts."""
    sink.video_config("h264", None)
    sink.audio_config("aac", asc, 48000, 2)
    events = sorted([(pts, 0, d, k) for d, k, pts in video] + [(pts, 1, d, False) for d, pts in audio])
    start = time.monotonic()
    for pts, kind, data, key in events:
        if realtime:
            await asyncio.sleep(max(0.0, start + pts / 1000 - time.monotonic()))
        if kind == 0:
            sink.video_packet(VideoPacket(data, pts, pts, key, time.monotonic_ns()))
        else:
            sink.audio_packet(AudioPacket(data, pts, "aac", time.monotonic_ns()))


def read_back(path: Path) -> tuple[list[tuple[int, int]], list[float], list[float]]:
    """(video frame sizes, audio frame times in s, video frame times in s) from a recording."""
    sizes: list[tuple[int, int]] = []
    times: list[float] = []
    audio: list[float] = []
    with av.open(str(path)) as container:
        packets = container.demux(*container.streams)
        while True:
            try:
                packet = next(packets)
                frames = packet.decode()
            except StopIteration:
                break
            except av.error.InvalidDataError:
                continue  # a file cut short ends in a partial packet; players skip it too
            for frame in frames:
                if isinstance(frame, av.VideoFrame):
                    sizes.append((frame.width, frame.height))
                    times.append(float(frame.time))
                else:
                    audio.append(float(frame.time))
    return sizes, audio, times


def test_parameter_sets_come_from_the_keyframe() -> None:
    key = h264_access_units(1)[0][0]
    ps = parameter_sets(key)
    assert ps is not None
    assert [u[0] & 0x1F for u in split_annexb(ps)] == [7, 8]
    assert parameter_sets(b"\x00\x00\x00\x01\x41\x9a") is None


@pytest.mark.parametrize(("fmt", "ext"), [("fmp4", "mp4"), ("mkv", "mkv")])
async def test_recording_holds_the_upscaled_stream_and_the_audio(tmp_path: Path, fmt: str, ext: str) -> None:
    config = loopback_config(record=RecordConfig(dir=str(tmp_path), format=fmt, source=True))
    config = dataclasses.replace(
        config, streams=[dataclasses.replace(config.streams[0], record=True), config.streams[1]]
    )
    app = App(config)
    await app.start()
    try:
        sink = app.manager.open_publish("k-main", "test")
        asc, audio = aac_frames(2000)
        await feed(sink, h264_access_units(60), audio, asc, realtime=False)
        sink.close("publisher left")
        await sink.wait_finished()
        for _, writer in sink.outputs[0].writers:
            await asyncio.to_thread(writer.join, 10)
    finally:
        await app.stop()
    files = sorted((p.name for p in tmp_path.iterdir()), key=len)  # main-<time>Z.<ext>, then -source
    assert len(files) == 2 and files[0].startswith("main-") and files[0].endswith(f"Z.{ext}")
    assert files[1] == files[0].replace(f".{ext}", f"-source.{ext}")
    sizes, audio_times, times = read_back(tmp_path / files[0])
    assert sizes == [(4 * WIDTH, 4 * HEIGHT)] * 60
    assert times == sorted(times) and times[0] == 0.0
    assert len(audio_times) >= 80  # 2 s of 1024-sample frames at 48 kHz is 93
    # In sync: the tone started with the first frame and lasts as long as the video.
    assert abs(audio_times[0] - times[0]) < 0.05 and abs(audio_times[-1] - times[-1]) < 0.1
    source_sizes, _, _ = read_back(tmp_path / files[1])
    assert source_sizes == [(WIDTH, HEIGHT)] * 60


KILLED_RECORDER = """
import asyncio, dataclasses, sys, time
sys.path.insert(0, {root!r})
from livevsr.app import App
from livevsr.config import EncoderConfig, RecordConfig
from tests.conftest import loopback_config
from tests.publish.test_record import aac_frames, feed, h264_access_units

async def main():
    config = loopback_config(
        record=RecordConfig(dir={dir!r}, format={fmt!r}),
        encoder=EncoderConfig(codec="libx264", keyframe_interval_s=0.5),
    )
    config = dataclasses.replace(config, streams=[dataclasses.replace(config.streams[0], record=True)])
    app = App(config)
    await app.start()
    sink = app.manager.open_publish("k-main", "test")
    asc, audio = aac_frames(8_000)
    task = asyncio.create_task(feed(sink, h264_access_units(240), audio, asc))
    while app.manager.streams["main"].counts["encoded"] < 75:
        await asyncio.sleep(0.05)
    print("recording", flush=True)
    await task

asyncio.run(main())
"""


@pytest.mark.parametrize(("fmt", "ext"), [("fmp4", "mp4"), ("mkv", "mkv")])
async def test_recording_killed_mid_stream_still_plays(tmp_path: Path, fmt: str, ext: str) -> None:
    code = KILLED_RECORDER.format(root=str(ROOT), dir=str(tmp_path), fmt=fmt)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line == b"recording\n", proc.stderr.read().decode()[-2000:]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no close, no trailer: as if the process died
        proc.wait()
    (path,) = tmp_path.iterdir()
    assert path.suffix == f".{ext}"
    sizes, audio_times, _ = read_back(path)
    assert len(sizes) >= 30, f"only {len(sizes)} frames readable after the kill"
    assert set(sizes) == {(4 * WIDTH, 4 * HEIGHT)}
    assert audio_times


async def test_unwritable_directory_stops_only_the_recording(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = loopback_config(record=RecordConfig(dir=str(blocker / "sub")))
    config = dataclasses.replace(config, streams=[dataclasses.replace(config.streams[0], record=True)])
    app = App(config)
    await app.start()
    try:
        sink = app.manager.open_publish("k-main", "test")
        asc, audio = aac_frames(500)
        await feed(sink, h264_access_units(15), audio, asc, realtime=False)
        await wait_for(lambda: app.manager.streams["main"].counts["encoded"] >= 15)
        # The recording could not start (only the WHEP audio output did); the stream goes on.
        assert [type(o).__name__ for o in sink.outputs] == ["WhepAudioTap"]
        sink.close("done")
    finally:
        await app.stop()


async def test_rtmp_publish_with_aac_is_recorded_with_its_audio(tmp_path: Path) -> None:
    """End to end: OBS-like RTMP (libx264 + AAC) in, fragmented MP4 of the 4x stream + the AAC out."""
    from livevsr.config import RTMPConfig
    from livevsr.testing.publisher import publish

    config = loopback_config(rtmp=RTMPConfig(listen="127.0.0.1:0"), record=RecordConfig(dir=str(tmp_path)))
    config = dataclasses.replace(config, streams=[dataclasses.replace(config.streams[0], record=True)])
    app = App(config)
    await app.start()
    try:
        url = f"rtmp://127.0.0.1:{app.rtmp_port}/live/k-main"
        sent = await asyncio.to_thread(publish, url, WIDTH, HEIGHT, FPS, 60, audio=True)
        assert sent == 60
        stream = app.manager.streams["main"]
        await wait_for(lambda: stream.session is None)
    finally:
        await app.stop()
    (path,) = tmp_path.iterdir()  # App.stop waited for the writer to finish the file
    sizes, audio_times, times = read_back(path)
    assert set(sizes) == {(4 * WIDTH, 4 * HEIGHT)} and len(sizes) >= 50
    assert len(audio_times) >= 60  # ~2 s of 1024-sample frames at 48 kHz
    assert abs(audio_times[0] - times[0]) < 0.1

"""Pull ingest: a stream fed from a URL (a file, a file over HTTP), looping with backoff."""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp import web

from livevsr.app import App
from livevsr.ingest.pull import adts_to_raw
from livevsr.testing.publisher import synthetic_frame
from livevsr.testing.whep_client import WhepClient
from tests.conftest import loopback_config, wait_for
from tests.helpers.taps import AudioTap

WIDTH, HEIGHT, FPS = 32, 24, 30


def write_clip(
    path: Path, fmt: str, codec: str = "libx264", seconds: float = 1.5, audio: bool = True
) -> None:
    """A short clip of the moving pattern (+ a 440 Hz AAC tone) in container ``fmt``."""
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream(codec, rate=FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            vs.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "15"}
        as_ = out.add_stream("aac", rate=48000) if audio else None
        frames = round(seconds * FPS)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(WIDTH, HEIGHT, i), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, FPS)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if as_ is not None:
            for i in range(round(seconds * 48000 / 1024)):
                t = (np.arange(1024) + i * 1024) / 48000
                tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                af.sample_rate, af.pts = 48000, i * 1024
                out.mux(as_.encode(af))
            out.mux(as_.encode(None))


async def pulling_app(url: str) -> tuple[App, AudioTap]:
    config = loopback_config()
    main, second = config.streams
    config = dataclasses.replace(config, streams=[dataclasses.replace(main, pull=url), second])
    app = App(config)
    tap = AudioTap()
    await app.start()
    app.manager.streams["main"].output_factories.append(lambda session: tap)
    return app, tap


async def test_file_is_pulled_upscaled_and_looped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clip = tmp_path / "clip.mp4"
    write_clip(clip, "mp4")
    app, tap = await pulling_app(str(clip))
    try:
        stream = app.manager.streams["main"]
        async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
            frame = await viewer.recv(timeout=20)
            assert (frame.width, frame.height) == (4 * WIDTH, 4 * HEIGHT)
            assert 25 < stream.source_fps < 35
            # 1.5 s clip, then 1 s pause: the second loop is a new publish session.
            await wait_for(lambda: app.pulls[0].sessions >= 2, timeout=15)
            frame = await viewer.recv(timeout=20)
            assert frame.width == 4 * WIDTH
        assert ("aac", 48000, 2) in tap.configs and len(tap.packets) > 20
    finally:
        await app.stop()
    assert stream.session is None
    ended = [r.getMessage() for r in caplog.records if "reopening with backoff" in r.getMessage()]
    assert len(ended) == 1 and "the source ended" in ended[0]  # one line, however many loops


@pytest.fixture
async def http_files(tmp_path: Path) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_static("/media/", tmp_path)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/media"
    finally:
        await runner.cleanup()


async def test_mpegts_over_http_with_adts_audio(tmp_path: Path, http_files: str) -> None:
    write_clip(tmp_path / "clip.ts", "mpegts")
    app, tap = await pulling_app(f"{http_files}/clip.ts")
    try:
        async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
            frame = await viewer.recv(timeout=20)
            assert (frame.width, frame.height) == (4 * WIDTH, 4 * HEIGHT)
        await wait_for(lambda: len(tap.packets) > 10)
        assert tap.configs[0] == ("aac", 48000, 2)
        assert tap.packets[0].data[:2] != b"\xff\xf1"  # ADTS headers are stripped for the muxers
    finally:
        await app.stop()


async def test_other_codecs_are_decoded_in_the_pull_thread(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mkv"
    write_clip(clip, "matroska", codec="mpeg4", audio=False)
    app, _ = await pulling_app(str(clip))
    try:
        async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
            frame = await viewer.recv(timeout=20)
            assert (frame.width, frame.height) == (4 * WIDTH, 4 * HEIGHT)
    finally:
        await app.stop()


async def test_unreachable_url_retries_quietly_and_stops_promptly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app, _ = await pulling_app(str(tmp_path / "missing.mp4"))
    try:
        await wait_for(lambda: app.pulls[0].last_reason is not None)
        assert "No such file" in app.pulls[0].last_reason
        assert app.manager.streams["main"].state == "idle"
    finally:
        await app.stop()
    assert not app.pulls[0]._thread.is_alive()


async def test_a_pulled_stream_refuses_publishers_and_keeps_pulling(tmp_path: Path) -> None:
    """A publisher with a pulled stream's key would keep replacing the pull (and back): refused."""
    from livevsr.errors import IngestError
    from livevsr.testing.publisher import publish

    clip = tmp_path / "clip.mp4"
    write_clip(clip, "mp4")
    app, _ = await pulling_app(str(clip))
    try:
        stream = app.manager.streams["main"]
        await wait_for(lambda: stream.state == "live")
        pulled = stream.session
        with pytest.raises(IngestError, match=r"stream main pulls its input from a URL \(streams\[\]\.pull\)"):
            app.manager.open_publish("k-main", "test")
        with pytest.raises(OSError):  # a real RTMP publisher is refused at its publish command
            await asyncio.to_thread(
                publish, f"rtmp://127.0.0.1:{app.rtmp_port}/live/k-main", 64, 48, 30, 15, realtime=False
            )
        assert stream.session is pulled and not pulled.closed
        # Other streams still take publishers.
        app.manager.open_publish("k-second", "test").close("done")
    finally:
        await app.stop()


def test_adts_header_becomes_an_audio_specific_config() -> None:
    # AAC-LC, 48 kHz (index 3), 2 channels, no CRC, frame length 7 + 3
    header = bytes([0xFF, 0xF1, 0x4C, 0x80, 0x01, 0x5F, 0xFC])
    raw, asc, rate, channels = adts_to_raw(header + b"abc")
    assert (raw, rate, channels) == (b"abc", 48000, 2)
    assert asc == bytes([0x11, 0x90])  # object type 2, rate index 3, 2 channels
    assert adts_to_raw(b"\x00\x01") is None

"""A publish refused for its codec: the log names the codec, /api/streams (the viewer's player area)
says the publish was refused and why, instead of "waiting for a publisher"."""

from __future__ import annotations

import asyncio
import fractions
import logging
import sys
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from livevsr.app import App
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent


def publish_hevc(url: str, frames: int = 30) -> None:
    """What OBS sends with its HEVC encoder: Enhanced RTMP, FourCC hvc1 (FFmpeg's flv muxer)."""
    container = av.open(url, "w", format="flv")
    try:
        stream = container.add_stream("libx265", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
        stream.codec_context.time_base = fractions.Fraction(1, 30)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((96, 128, 3), i * 8 % 256, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
    finally:
        try:
            container.close()
        except av.error.FFmpegError:
            pass  # the server hung up: that is the refusal


async def test_an_hevc_publish_is_shown_as_refused_with_the_codec(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    if "libx265" not in av.codecs_available:
        pytest.skip("this PyAV build has no libx265 encoder")
    caplog.set_level(logging.INFO, logger="livevsr.ingest.rtmp")
    # In a child process: PyAV holds the GIL while it writes, which would stall the server's loop.
    url = f"rtmp://127.0.0.1:{app.rtmp_port}/live/k-main"
    code = f"from tests.server.test_refused_publish import publish_hevc; publish_hevc({url!r})"
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=ROOT)
    await asyncio.wait_for(child.wait(), 60)  # a refusal may show as a write error: the exit code is moot
    stream = app.manager.streams["main"]
    await wait_for(lambda: stream.state == "error")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{app.http_port}/api/streams") as resp:
            main = {s["name"]: s for s in (await resp.json())["streams"]}["main"]
    assert main["state"] == "error"
    assert main["refused"].startswith("video codec hevc is not supported")
    metadata = [r.getMessage() for r in caplog.records if "metadata:" in r.getMessage()]
    assert metadata and "video codec hevc," in metadata[0], metadata
    assert "1752589105" not in metadata[0]

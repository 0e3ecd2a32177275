"""OBS's default output with the default config.yaml: a real RTMP publish at 1080p (and 720p60) plays
over WHEP at the documented size, and /api/streams says what was downscaled and why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from livevsr.app import App
from livevsr.config import load_config
from livevsr.testing.publisher import publish
from livevsr.testing.whep_client import WhepClient

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"
LOOPBACK = {
    "LIVEVSR__RTMP__LISTEN": "127.0.0.1:0",
    "LIVEVSR__HTTP__LISTEN": "127.0.0.1:0",
    "LIVEVSR__WEBRTC__ICE_HOST_ADDRESSES": "[127.0.0.1]",
}


@pytest.fixture
async def default_app() -> AsyncIterator[App]:
    """The shipped config.yaml, only moved to loopback ports."""
    server = App(load_config(DEFAULT_CONFIG, environ=LOOPBACK))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def api_stream(app: App) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{app.http_port}/api/streams") as resp:
            return (await resp.json())["streams"][0]


async def publish_and_watch(app: App, width: int, height: int, fps: int, frames: int) -> tuple[set, dict]:
    """Publish to the default stream; the sizes the WHEP viewer decoded and /api/streams mid-publish."""
    url = f"rtmp://127.0.0.1:{app.rtmp_port}/live/livevsr"
    sizes: set[tuple[int, int]] = set()
    snapshot: dict = {}
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
        publisher = asyncio.create_task(asyncio.to_thread(publish, url, width, height, fps, frames))
        while True:
            try:
                frame = await viewer.recv(timeout=1.5 if publisher.done() else 15.0)
            except TimeoutError:
                break
            sizes.add((frame.width, frame.height))
            if not snapshot:
                snapshot = await api_stream(app)
        assert await publisher == frames
    return sizes, snapshot


@pytest.mark.parametrize(("width", "height", "fps", "frames"), [(1920, 1080, 30, 45), (1280, 720, 60, 60)])
async def test_obs_default_output_plays_at_the_planned_size(
    default_app: App, width: int, height: int, fps: int, frames: int
) -> None:
    stream = default_app.manager.streams["main"]
    expected = stream.sizing.plan(width, height, fps)  # the rule, with this machine's encoder and cores
    assert expected.downscaled  # 4x of 1080p or 720p is past any encoder's real-time cap
    sizes, snapshot = await publish_and_watch(default_app, width, height, fps, frames)
    assert sizes == {expected.output}
    ow, oh = expected.output
    assert ow * oh <= 3840 * 2160
    scaling = snapshot["scaling"]
    assert scaling["input"] == {"width": width, "height": height, "fps": fps}  # 60 stays 60
    assert scaling["engine_input"] == dict(zip(("width", "height"), expected.engine_input, strict=True))
    assert scaling["output"] == {"width": ow, "height": oh, "fps": fps}
    assert scaling["downscaled"] is True
    assert scaling["reason"] == expected.reason
    assert (snapshot["input"]["width"], snapshot["input"]["height"]) == (width, height)

"""streams[].output_height through the live server: real RTMP publish in, real WHEP viewer out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from livevsr.app import App
from livevsr.config import StreamConfig
from livevsr.engines.bicubic.engine import BicubicEngine
from livevsr.testing.publisher import publish
from livevsr.testing.whep_client import WhepClient
from tests.conftest import loopback_config, wait_for

FPS = 30
OUTPUT_HEIGHT = 144


@pytest.fixture
async def sized_app() -> AsyncIterator[App]:
    """Stream "main" goes out 144 px high; "second" keeps the native 4x."""
    config = loopback_config(
        streams=[
            StreamConfig(name="main", key="k-main", output_height=OUTPUT_HEIGHT),
            StreamConfig(name="second", key="k-second"),
        ]
    )
    server = App(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def watch_publish(app: App, width: int, height: int, frames: int) -> list[tuple[int, int]]:
    """Publish ``frames`` frames at ``width`` x ``height`` to "main"; the sizes the viewer decoded."""
    url = f"rtmp://127.0.0.1:{app.rtmp_port}/live/k-main"
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
        publisher = asyncio.create_task(asyncio.to_thread(publish, url, width, height, FPS, frames))
        sizes = []
        while True:
            try:
                frame = await viewer.recv(timeout=1.5 if publisher.done() else 10.0)
            except TimeoutError:
                break
            sizes.append((frame.width, frame.height))
        assert await publisher == frames
    return sizes


async def reported_output(app: App) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{app.http_port}/api/streams") as resp:
            body = await resp.json()
    return {s["name"]: s["output"] for s in body["streams"]}


async def test_viewer_gets_exactly_the_output_height_and_the_input_aspect_ratio(sized_app: App) -> None:
    sizes = await watch_publish(sized_app, 160, 90, 45)  # 4x would be 640x360
    assert len(sizes) >= 40
    assert set(sizes) == {(256, 144)}
    stream = sized_app.manager.streams["main"]
    await wait_for(lambda: stream.counts["encoded"] == 45)
    # The bicubic engine made that size itself: the encoder's rescale had nothing to do.
    assert stream.output_size == (256, 144)
    output = (await reported_output(sized_app))["main"]
    assert (output["width"], output["height"]) == (256, 144)


async def test_an_engine_at_its_native_4x_is_scaled_to_the_output_height(sized_app: App) -> None:
    # Like FlashVSR: the engine ignores output_height and makes 4x; the encode worker scales it.
    made: list[tuple[int, int]] = []

    class Native4x(BicubicEngine):
        def push(self, frames):  # noqa: ANN001, ANN202
            out = super().push(frames)
            made.extend((f.width, f.height) for f in out)
            return out

    stream = sized_app.manager.streams["main"]
    stream.engine_factory = lambda **_: Native4x()
    sizes = await watch_publish(sized_app, 64, 48, 30)  # 4:3, 4x = 256x192
    assert set(made) == {(256, 192)}
    assert len(sizes) >= 25
    assert set(sizes) == {(192, 144)}
    await wait_for(lambda: stream.counts["encoded"] == 30)
    output = (await reported_output(sized_app))["main"]
    assert (output["width"], output["height"]) == (192, 144)


async def test_a_new_resolution_keeps_the_height_and_recomputes_the_width(sized_app: App) -> None:
    stream = sized_app.manager.streams["main"]
    first = await watch_publish(sized_app, 160, 90, 30)
    await wait_for(lambda: stream.state == "idle")
    second = await watch_publish(sized_app, 96, 64, 30)  # 3:2
    assert set(first) == {(256, 144)}
    assert set(second) == {(216, 144)}
    await wait_for(lambda: stream.output_size == (216, 144))


async def test_a_stream_without_an_output_height_stays_4x(sized_app: App) -> None:
    url = f"rtmp://127.0.0.1:{sized_app.rtmp_port}/live/k-second"
    async with WhepClient(f"http://127.0.0.1:{sized_app.http_port}/whep/second") as viewer:
        publisher = asyncio.create_task(asyncio.to_thread(publish, url, 64, 48, FPS, 30))
        frame = await viewer.recv(timeout=15)
        assert (frame.width, frame.height) == (256, 192)
        await publisher
    second = sized_app.manager.streams["second"]
    await wait_for(lambda: second.counts["encoded"] == 30)
    assert second.output_size == (256, 192)

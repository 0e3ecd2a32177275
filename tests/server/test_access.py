"""Viewer and admin tokens: generic refusals, nothing else disturbed."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest

from livevsr.app import App
from livevsr.config import HTTPConfig
from livevsr.testing.whep_client import WhepClient, WhepError
from tests.conftest import loopback_config, wait_for
from tests.pipeline.test_stream import feed, h264_packets


@pytest.fixture
async def secured() -> AsyncIterator[App]:
    config = loopback_config()
    config = dataclasses.replace(
        config, http=HTTPConfig(listen="127.0.0.1:0", viewer_token="view-secret", admin_token="admin-secret")
    )
    app = App(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_api_and_whep_need_the_viewer_token(secured: App) -> None:
    base = f"http://127.0.0.1:{secured.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/streams") as resp:
            assert resp.status == 401
            assert await resp.json() == {"error": "unauthorized"}
        async with http.get(base + "/api/streams", headers={"Authorization": "Bearer view-secret"}) as resp:
            assert resp.status == 200
        async with http.get(base + "/api/streams?token=view-secret") as resp:
            assert resp.status == 200
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200  # liveness stays open for orchestrators
    with pytest.raises(WhepError) as err:
        async with WhepClient(base + "/whep/main", token="wrong"):
            pass
    assert err.value.status == 401
    sink = secured.manager.open_publish("k-main", "test")
    feeder = asyncio.create_task(feed(sink, h264_packets(64, 48, 30)))
    async with WhepClient(base + "/whep/main", token="view-secret") as viewer:
        assert (await viewer.recv()).width == 256
    await feeder
    sink.close("done")


async def test_kick_needs_the_admin_token_and_ends_the_publish(secured: App) -> None:
    base = f"http://127.0.0.1:{secured.http_port}"
    sink = secured.manager.open_publish("k-main", "test")
    feeder = asyncio.create_task(feed(sink, h264_packets(64, 48, 60)))
    stream = secured.manager.streams["main"]
    await wait_for(lambda: stream.state == "live")
    async with aiohttp.ClientSession() as http:
        kick = base + "/api/streams/main/kick"
        async with http.post(kick, headers={"Authorization": "Bearer view-secret"}) as resp:
            assert resp.status == 401
        assert stream.session is not None
        async with http.post(kick, headers={"Authorization": "Bearer admin-secret"}) as resp:
            assert resp.status == 200
        assert stream.session is None
        assert "kicked" in stream.reason
        async with http.post(kick, headers={"Authorization": "Bearer admin-secret"}) as resp:
            assert resp.status == 409
    await feeder


async def test_control_api_is_off_without_an_admin_token(app: App) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{app.http_port}/api/streams/main/kick") as resp:
            assert resp.status == 403
            assert "http.admin_token" in (await resp.json())["error"]


async def test_a_kicked_rtmp_publisher_is_hung_up_on(secured: App) -> None:
    """The kick ends the RTMP connection too, so OBS shows the disconnect instead of streaming into nothing."""
    from livevsr.testing.publisher import publish

    url = f"rtmp://127.0.0.1:{secured.rtmp_port}/live/k-main"
    publisher = asyncio.create_task(asyncio.to_thread(publish, url, 64, 48, 30, 600))  # 20 s
    stream = secured.manager.streams["main"]
    await wait_for(lambda: stream.state == "live")
    async with aiohttp.ClientSession() as http:
        kick = f"http://127.0.0.1:{secured.http_port}/api/streams/main/kick"
        async with http.post(kick, headers={"Authorization": "Bearer admin-secret"}) as resp:
            assert resp.status == 200
    with pytest.raises(OSError):  # PyAV: broken pipe / connection reset, within seconds, not 20 s
        await asyncio.wait_for(publisher, 10)
    assert "kicked" in stream.reason

"""The pipeline behind one stream, fed through its IngestSink seam and watched over real WHEP."""

from __future__ import annotations

import asyncio
import fractions
import json
import time

import aiohttp
import av
import numpy as np
import pytest

from livevsr.app import App
from livevsr.errors import IngestError
from livevsr.ingest.base import VideoPacket
from livevsr.testing.whep_client import WhepClient, WhepError
from tests.conftest import wait_for


def h264_packets(width: int, height: int, count: int, start: int = 0) -> list[tuple[bytes, bool, int]]:
    """Annex-B access units of a moving pattern: (data, keyframe, pts_ms)."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 1000)
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "keyint=15:bframes=0"}
    ctx.open()
    out = []
    for i in range(start, start + count):
        img = np.zeros((height, width, 3), np.uint8)
        img[:, (i * 4) % width] = 255
        img[(i * 3) % height, :] = 128
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = round(i * 1000 / 30)
        for p in ctx.encode(frame):
            out.append((bytes(p), p.is_keyframe, p.pts))
    for p in ctx.encode(None):
        out.append((bytes(p), p.is_keyframe, p.pts))
    return out


async def feed(sink, packets, fps: float = 30.0, corrupt_at: int | None = None) -> None:  # noqa: ANN001
    sink.video_config("h264", None)
    for i, (data, key, pts) in enumerate(packets):
        if corrupt_at is not None and i == corrupt_at:
            data = bytes([0, 0, 0, 1, 0x65]) + bytes(
                np.random.default_rng(0).integers(0, 256, 2000, np.uint8)
            )
        sink.video_packet(VideoPacket(data, pts, pts, key, time.monotonic_ns()))
        await asyncio.sleep(1 / fps)


async def api(app: App) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{app.http_port}/api/streams") as resp:
            return {s["name"]: s for s in json.loads(await resp.text())["streams"]}


async def test_viewer_receives_frames_exactly_four_times_the_input(app: App) -> None:
    sink = app.manager.open_publish("k-main", "test")
    feeder = asyncio.create_task(feed(sink, h264_packets(96, 64, 90)))
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
        sizes = set()
        for _ in range(20):
            frame = await viewer.recv()
            sizes.add((frame.width, frame.height))
        assert sizes == {(384, 256)}
        info = (await api(app))["main"]
        assert info["state"] == "live"
        assert info["input"]["width"] == 96 and info["output"]["width"] == 384
        assert info["engine"]["name"] == "bicubic"
        assert info["viewers"] == 1
        assert info["latency_ms"]["total"]["p50"] > 0
        assert app.manager.streams["main"].source_fps == pytest.approx(30, abs=1)  # learned from timestamps
    await feeder
    sink.close("publisher left")
    await wait_for(lambda: app.manager.streams["main"].state == "idle")
    assert app.manager.streams["main"].viewer_count == 0


async def test_source_rendition_is_the_original_size(app: App) -> None:
    sink = app.manager.open_publish("k-main", "test")
    feeder = asyncio.create_task(feed(sink, h264_packets(96, 64, 60)))
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main/source") as viewer:
        frame = await viewer.recv()
        assert (frame.width, frame.height) == (96, 64)
    await feeder
    sink.close("done")


async def test_wrong_key_is_refused_without_disturbing_anything(app: App) -> None:
    with pytest.raises(IngestError, match="unknown stream key"):
        app.manager.open_publish("guess", "test")
    assert all(s.state == "idle" for s in app.manager.streams.values())


async def test_corrupt_packet_and_resolution_change_do_not_stop_the_stream(app: App) -> None:
    sink = app.manager.open_publish("k-main", "test")
    packets = h264_packets(96, 64, 45, 0) + h264_packets(128, 72, 60, 45)
    feeder = asyncio.create_task(feed(sink, packets, corrupt_at=20))
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
        seen = set()
        deadline = time.monotonic() + 20
        while (512, 288) not in seen and time.monotonic() < deadline:
            frame = await viewer.recv()
            seen.add((frame.width, frame.height))
        assert (384, 256) in seen and (512, 288) in seen
    await feeder
    stream = app.manager.streams["main"]
    assert stream.state == "live"
    assert stream.counts["encoded"] >= 90
    sink.close("done")


async def test_two_streams_at_once_stay_separate(app: App) -> None:
    a = app.manager.open_publish("k-main", "test-a")
    b = app.manager.open_publish("k-second", "test-b")
    feeders = [
        asyncio.create_task(feed(a, h264_packets(96, 64, 45))),
        asyncio.create_task(feed(b, h264_packets(64, 48, 45))),
    ]
    async with (
        WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as va,
        WhepClient(f"http://127.0.0.1:{app.http_port}/whep/second") as vb,
    ):
        fa, fb = await va.recv(), await vb.recv()
        assert (fa.width, fa.height) == (384, 256)
        assert (fb.width, fb.height) == (256, 192)
    await asyncio.gather(*feeders)
    a.close("done")
    b.close("done")


async def test_reconnect_gets_the_stream_back_and_viewers_stay(app: App) -> None:
    first = app.manager.open_publish("k-main", "test")
    feeder = asyncio.create_task(feed(first, h264_packets(96, 64, 30)))
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
        await viewer.recv()
        await feeder
        first.close("connection reset")
        await wait_for(lambda: app.manager.streams["main"].session is None)
        second = app.manager.open_publish("k-main", "test again")
        encoded_before = app.manager.streams["main"].counts["encoded"]
        feeder = asyncio.create_task(feed(second, h264_packets(96, 64, 45)))
        await wait_for(lambda: app.manager.streams["main"].counts["encoded"] > encoded_before + 20)
        frame = await viewer.recv()  # the same viewer keeps receiving
        assert frame.width == 384
        await feeder
        second.close("done")


async def test_offer_without_h264_is_refused_with_a_reason(app: App) -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=recvonly\r\n"
    )
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{app.http_port}/whep/main"
        async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as resp:
            assert resp.status == 400
            assert "no H.264" in (await resp.json())["error"]
        async with http.post(url + "x", data=offer, headers={"Content-Type": "application/sdp"}) as resp:
            assert resp.status == 404


async def test_whep_delete_ends_the_session(app: App) -> None:
    viewer = WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main")
    await viewer.connect()
    assert app.manager.streams["main"].viewer_count == 1
    assert await viewer.close() == 200
    assert app.manager.streams["main"].viewer_count == 0


async def test_unknown_stream_whep_is_404(app: App) -> None:
    with pytest.raises(WhepError) as err:
        async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/nope"):
            pass
    assert err.value.status == 404


async def test_metrics_and_health(app: App) -> None:
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{app.http_port}"
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()
        assert 'livevsr_frames_total{point="received",stream="main"} 0.0' in text
        assert 'livevsr_viewers{stream="second"} 0.0' in text


async def test_a_stream_can_override_the_engine() -> None:
    import dataclasses

    from livevsr.config import StreamConfig
    from tests.conftest import loopback_config

    config = dataclasses.replace(
        loopback_config(),  # engine.name: bicubic
        streams=[StreamConfig(name="plain", key="k1"), StreamConfig(name="smart", key="k2", engine="auto")],
    )
    app = App(config)
    await app.start()
    try:
        streams = await api(app)
        assert streams["plain"]["engine"]["reason"] == "engine.name is bicubic in the config"
        # auto on this stream alone; without a GPU it falls back and says so, naming the stream's key.
        assert streams["smart"]["engine"]["name"] == "bicubic"
        assert streams["smart"]["engine"]["reason"].startswith("streams[smart].engine: auto: fell back")
    finally:
        await app.stop()


def test_an_offer_with_too_many_m_lines_is_refused_before_aiortc_sees_it() -> None:
    from livevsr.publish.whep import check_offer
    from livevsr.sdp import MAX_MEDIA_SECTIONS, OfferError

    section = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n"
    check_offer("v=0\r\n" + section * MAX_MEDIA_SECTIONS)
    with pytest.raises(OfferError, match="m-lines"):
        check_offer("v=0\r\n" + section * 150)


async def test_a_new_publish_starts_its_counters_and_rates_from_zero(app: App) -> None:
    """A fresh publisher does not inherit the last one's drops, and an ended one leaves no fps behind."""
    stream = app.manager.streams["main"]
    first = app.manager.open_publish("k-main", "first")
    await feed(first, h264_packets(96, 64, 30))
    await wait_for(lambda: stream.counts["encoded"] == 30)
    stream.drop("late", 7)  # as the engine worker counts frames it was too late for
    live = (await api(app))["main"]
    assert live["input"]["fps"] > 0 and live["output"]["fps"] > 0
    first.close("done")
    await wait_for(lambda: stream.session is None)
    ended = (await api(app))["main"]
    assert ended["input"]["fps"] == 0 and ended["output"]["fps"] == 0
    assert ended["frames"]["encoded"] == 30 and ended["frames"]["dropped"] == {"late": 7}  # the last publish

    second = app.manager.open_publish("k-main", "second")
    fresh = (await api(app))["main"]
    assert fresh["frames"] == {"received": 0, "decoded": 0, "upscaled": 0, "encoded": 0, "dropped": {}}
    assert fresh["frames_total"]["encoded"] == 30 and fresh["frames_total"]["dropped"] == {"late": 7}
    await feed(second, h264_packets(96, 64, 15))
    await wait_for(lambda: stream.counts["encoded"] == 45)
    now = (await api(app))["main"]
    assert now["frames"]["received"] == 15 and now["frames"]["encoded"] == 15
    assert now["frames_total"]["received"] == 45
    second.close("done")

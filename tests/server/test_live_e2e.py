"""The whole product on loopback: a real RTMP publish in, a real WHEP viewer out."""

from __future__ import annotations

import asyncio
import socket

import pytest

from livevsr.app import App
from livevsr.testing.publisher import publish
from livevsr.testing.whep_client import WhepClient
from tests.conftest import wait_for

W, H, FPS = 160, 96, 30


def rtmp_url(app: App, key: str) -> str:
    return f"rtmp://127.0.0.1:{app.rtmp_port}/live/{key}"


async def receive_until(
    viewer: WhepClient, done: asyncio.Task, grace_s: float = 1.5
) -> list[tuple[int, int]]:
    """Sizes of every frame the viewer decodes until the publisher is done (plus a grace period)."""
    sizes = []
    while True:
        timeout = grace_s if done.done() else 10.0
        try:
            frame = await viewer.recv(timeout=timeout)
        except TimeoutError:
            return sizes
        sizes.append((frame.width, frame.height))


async def test_rtmp_publish_plays_over_whep_at_four_times_the_size(app: App) -> None:
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
        publisher = asyncio.create_task(asyncio.to_thread(publish, rtmp_url(app, "k-main"), W, H, FPS, 90))
        sizes = await receive_until(viewer, publisher)
        assert await publisher == 90
    assert set(sizes) == {(4 * W, 4 * H)}
    # The viewer joins before the first keyframe, so it can see every frame; allow for RTP loss.
    assert len(sizes) >= 80
    stream = app.manager.streams["main"]
    await wait_for(lambda: stream.state == "idle")
    assert stream.counts["decoded"] == 90
    assert stream.counts["encoded"] == 90  # nothing dropped in the pipeline
    assert not any(stream.dropped.values())


async def test_wrong_key_is_refused_and_a_running_stream_is_not_disturbed(app: App) -> None:
    good = asyncio.create_task(asyncio.to_thread(publish, rtmp_url(app, "k-main"), W, H, FPS, 120))
    stream = app.manager.streams["main"]
    await wait_for(lambda: stream.counts["encoded"] > 10)
    with pytest.raises(Exception):  # noqa: B017 - PyAV reports the refusal as an I/O error
        await asyncio.to_thread(publish, rtmp_url(app, "wrong-key"), W, H, FPS, 30, realtime=False)
    before = stream.counts["encoded"]
    await wait_for(lambda: stream.counts["encoded"] > before + 10)
    assert await good == 120
    assert all(s.state != "error" for s in app.manager.streams.values())


async def test_two_publishers_at_once(app: App) -> None:
    a = asyncio.create_task(asyncio.to_thread(publish, rtmp_url(app, "k-main"), W, H, FPS, 60))
    b = asyncio.create_task(asyncio.to_thread(publish, rtmp_url(app, "k-second"), 128, 72, FPS, 60))
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/second") as viewer:
        frame = await viewer.recv(timeout=15)
        assert (frame.width, frame.height) == (512, 288)
    await asyncio.gather(a, b)
    main, second = app.manager.streams["main"], app.manager.streams["second"]
    await wait_for(lambda: main.counts["encoded"] == 60 and second.counts["encoded"] == 60)
    assert main.output_size == (4 * W, 4 * H)


async def test_publisher_reconnects_and_the_viewer_keeps_watching(app: App) -> None:
    stream = app.manager.streams["main"]
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
        await asyncio.to_thread(publish, rtmp_url(app, "k-main"), W, H, FPS, 30)
        await wait_for(lambda: stream.state == "idle")
        second = asyncio.create_task(asyncio.to_thread(publish, rtmp_url(app, "k-main"), 96, 64, FPS, 60))
        sizes = await receive_until(viewer, second)
        await second
    # The same viewer saw the new session, at its new size.
    assert (384, 256) in sizes
    await wait_for(lambda: stream.counts["encoded"] == 90)


async def test_garbage_on_the_rtmp_port_does_not_disturb_a_live_stream(app: App) -> None:
    publisher = asyncio.create_task(asyncio.to_thread(publish, rtmp_url(app, "k-main"), W, H, FPS, 90))
    stream = app.manager.streams["main"]
    await wait_for(lambda: stream.counts["encoded"] > 5)
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x03" + b"\xff" * 5000, b"\x00" * 10):
        with socket.create_connection(("127.0.0.1", app.rtmp_port), timeout=5) as sock:
            sock.sendall(payload)
    before = stream.counts["encoded"]
    await wait_for(lambda: stream.counts["encoded"] > before + 10)
    assert await publisher == 90


async def test_block_policy_holds_the_publisher_back_instead_of_dropping() -> None:
    import dataclasses
    import time

    import av

    from livevsr.config import PipelineConfig
    from livevsr.engines.bicubic.engine import BicubicEngine
    from tests.conftest import loopback_config

    class SlowEngine(BicubicEngine):
        def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
            time.sleep(0.008 * len(frames))  # ~125 fps: far slower than a burst publish
            return super().push(frames)

    config = dataclasses.replace(loopback_config(), pipeline=PipelineConfig(ring_policy="block", max_queue_ms=0))
    app = App(config)
    await app.start()
    try:
        stream = app.manager.streams["main"]
        stream.engine_factory = SlowEngine
        backlog: list[int] = []

        async def watch() -> None:
            while True:
                if stream.session is not None and stream.session.decoder is not None:
                    backlog.append(stream.session.decoder.backlog())
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        sent = await asyncio.to_thread(publish, rtmp_url(app, "k-main"), 320, 180, 30, 900, realtime=False)
        await wait_for(lambda: not stream.sessions_running, timeout=90)
        watcher.cancel()
        # The socket was left unread while the backlog was high: it stayed near the high-water mark
        # (150 packets plus one network read); without the pause it passes 300, the drop-mode cap.
        assert max(backlog) < 300
        assert sent == 900
        assert stream.counts["encoded"] == 900  # without backpressure the 300-packet backlog overflows
        assert not any(stream.dropped.values())
    finally:
        await app.stop()

"""Faults inside the pipeline end or restart only the affected stream, with a reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import av
import pytest

from livevsr.app import App
from livevsr.config import PipelineConfig
from livevsr.engines.bicubic.engine import BicubicEngine
from livevsr.pipeline import encode_worker
from livevsr.testing.whep_client import WhepClient
from tests.conftest import loopback_config, wait_for
from tests.pipeline.test_stream import feed, h264_packets


class ExplodingEngine(BicubicEngine):
    """Fails on every push after the first ``good`` frames, like a GPU running out of memory."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        if self.good <= 0:
            raise RuntimeError("CUDA out of memory (simulated)")
        self.good -= len(frames)
        return super().push(frames)


async def test_engine_failure_stops_that_stream_only_with_its_reason(app: App) -> None:
    app.manager.streams["main"].engine_factory = lambda: ExplodingEngine(good=10)
    bad = app.manager.open_publish("k-main", "test-bad")
    good = app.manager.open_publish("k-second", "test-good")
    feeders = [
        asyncio.create_task(feed(bad, h264_packets(64, 48, 45))),
        asyncio.create_task(feed(good, h264_packets(64, 48, 45))),
    ]
    main, second = app.manager.streams["main"], app.manager.streams["second"]
    await wait_for(lambda: main.state == "error")
    assert "out of memory" in main.reason
    assert main.dropped["engine_error"] >= 3
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/second") as viewer:
        before = second.counts["encoded"]
        frame = await viewer.recv()
        assert frame.width == 256
        await wait_for(lambda: second.counts["encoded"] > before + 5)
    await asyncio.gather(*feeders)
    good.close("done")
    # A new publish on the failed stream starts afresh.
    main.engine_factory = BicubicEngine
    again = app.manager.open_publish("k-main", "test-again")
    feeder = asyncio.create_task(feed(again, h264_packets(64, 48, 20)))
    await wait_for(lambda: main.state == "live")
    await feeder
    again.close("done")


async def test_encoder_failure_restarts_the_encoder(app: App, monkeypatch) -> None:  # noqa: ANN001
    real = encode_worker.VideoEncoder
    created: list[int] = []
    failed: list[int] = []

    class FlakyEncoder(real):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            created.append(1)
            self.calls = 0

        def encode(self, frame, pts):  # noqa: ANN001, ANN201
            self.calls += 1
            if not failed and self.calls == 5:
                failed.append(1)
                raise av.error.ExternalError(-1, "simulated encoder failure")
            return super().encode(frame, pts)

    monkeypatch.setattr(encode_worker, "VideoEncoder", FlakyEncoder)
    sink = app.manager.open_publish("k-main", "test")
    feeder = asyncio.create_task(feed(sink, h264_packets(64, 48, 40)))
    main = app.manager.streams["main"]
    await wait_for(lambda: main.counts["encoded"] >= 30)
    assert main.state == "live"
    assert failed and len(created) >= 4  # upscaled + source encoders, then both again after the failure
    await feeder
    sink.close("done")


@pytest.fixture
async def budget_app() -> AsyncIterator[App]:
    """An app with the live latency budget on (250 ms, the default)."""
    server = App(loopback_config(pipeline=PipelineConfig(max_queue_ms=250)))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class SlowEngine(BicubicEngine):
    """Takes 100 ms a frame: a machine that cannot keep up with 30 fps."""

    def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        time.sleep(0.1 * len(frames))
        return super().push(frames)


async def test_an_overloaded_engine_drops_late_frames_and_stays_live(budget_app: App) -> None:
    app = budget_app
    stream = app.manager.streams["main"]
    stream.engine_factory = SlowEngine
    sink = app.manager.open_publish("k-main", "test")
    await feed(sink, h264_packets(64, 48, 90))  # 3 s of 30 fps input for a 10 fps engine
    await wait_for(lambda: stream.dropped.get("late", 0) > 0)
    sink.close("done")
    await wait_for(lambda: not stream.sessions_running)
    assert stream.counts["encoded"] + stream.dropped.get("late", 0) + stream.dropped.get("ring_full", 0) == 90
    # Latency stays near the 250 ms queue budget plus one engine step instead of growing for 3 s.
    assert stream.stats.percentiles_ms()["queue"]["p95"] < 800


async def test_a_slow_encoder_drops_late_frames_instead_of_falling_behind(budget_app: App, monkeypatch) -> None:  # noqa: ANN001
    app = budget_app
    real = encode_worker.VideoEncoder

    class SlowEncoder(real):
        def encode(self, frame, pts):  # noqa: ANN001, ANN201
            time.sleep(0.1)  # 10 fps encoder for a 30 fps source
            return super().encode(frame, pts)

    monkeypatch.setattr(encode_worker, "VideoEncoder", SlowEncoder)
    stream = app.manager.streams["main"]
    sink = app.manager.open_publish("k-main", "test")
    await feed(sink, h264_packets(64, 48, 90))
    sink.close("done")
    await wait_for(lambda: not stream.sessions_running, timeout=30)
    assert stream.dropped.get("late", 0) > 0
    assert stream.counts["encoded"] + sum(stream.dropped.values()) == 90
    assert stream.stats.percentiles_ms()["encode"]["p95"] < 1000  # bounded by the 250 ms budget


async def test_an_ended_session_frees_its_engine_and_encoders_without_waiting_for_gc(app: App) -> None:
    import gc
    import weakref

    stream = app.manager.streams["main"]
    sink = app.manager.open_publish("k-main", "test")
    engine = weakref.ref(sink.engine)
    encoder_worker = weakref.ref(sink.encoder)
    gc.disable()  # the cyclic collector runs rarely in a busy server: do not let it help here
    try:
        await feed(sink, h264_packets(64, 48, 20))
        sink.close("done")
        await wait_for(lambda: not stream.sessions_running)
        assert engine() is None and encoder_worker() is None
    finally:
        gc.enable()

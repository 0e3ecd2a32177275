"""Admission control by measured engine load: refuse what the device cannot also carry."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from dataclasses import dataclass

import aiohttp
import av
import pytest

from livevsr.app import App
from livevsr.config import PipelineConfig
from livevsr.engines.bicubic.engine import BicubicEngine
from livevsr.errors import IngestError
from livevsr.pipeline.admission import OVERLOAD_SAMPLES, STARTING_S, LoadMonitor, machine_cpu_seconds
from livevsr.testing.publisher import publish
from tests.conftest import loopback_config, wait_for

# -- the monitor's arithmetic, on a clock the test moves -------------------------------------------


@dataclass(eq=False)  # hashable by identity
class Measured:
    name: str
    engine_busy_s: float = 0.0
    closed: bool = False


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(monitor: LoadMonitor, clock: Clock, sessions: dict[Measured, float], seconds: int) -> list:
    """Advance ``seconds`` one at a time, each session computing its given fraction of each second."""
    evicted = []
    for _ in range(seconds):
        clock.now += 1.0
        for session, fraction in sessions.items():
            session.engine_busy_s += fraction
        evicted += monitor.sample()
    return evicted


def test_load_is_the_measured_busy_fraction_summed_per_device() -> None:
    clock = Clock()
    monitor = LoadMonitor({"cpu": 4.0}, clock)
    a, b, g = Measured("a"), Measured("b"), Measured("g")
    monitor.track(a, "cpu", "bicubic")
    monitor.track(b, "cpu", "bicubic")
    monitor.track(g, "cuda:0", "flashvsr")
    run(monitor, clock, {a: 0.6, b: 1.0, g: 0.5}, 10)
    assert monitor.stream_load("a") == pytest.approx(0.6)
    assert monitor.device_load("cpu")[0] == pytest.approx(1.6 / 4)  # four cores
    assert monitor.device_load("cuda:0")[0] == pytest.approx(0.5)  # a GPU is one unit
    assert monitor.device_load("cpu", exclude="b")[0] == pytest.approx(0.6 / 4)


def test_a_busy_gpu_refuses_with_the_measured_reason() -> None:
    clock = Clock()
    monitor = LoadMonitor({}, clock)
    a = Measured("a")
    monitor.track(a, "cuda:0", "flashvsr")
    # Starting: flashvsr reserves the whole GPU until it is measured.
    assert "a 100% starting" in (monitor.refusal("cuda:0", "b", 0.85) or "")
    run(monitor, clock, {a: 0.5}, int(STARTING_S) + 5)
    assert monitor.refusal("cuda:0", "b", 0.85) is None  # half a GPU left: admitted
    run(monitor, clock, {a: 0.9}, 10)
    reason = monitor.refusal("cuda:0", "b", 0.85)
    assert reason is not None and "cuda:0 is busy: measured engine load 90% (a 90%)" in reason
    assert monitor.refusal("cuda:0", "a", 0.85) is None  # a reconnect of the same stream replaces itself
    assert monitor.refusal("cuda:0", "b", 0.0) is None  # 0 turns admission off
    a.closed = True
    run(monitor, clock, {}, 1)
    assert monitor.refusal("cuda:0", "b", 0.85) is None  # an ended stream frees its share


def test_the_newest_stream_is_ended_when_it_overloads_the_device() -> None:
    clock = Clock()
    monitor = LoadMonitor({}, clock)
    old, new = Measured("old"), Measured("new")
    monitor.track(old, "cuda:0", "bicubic")
    run(monitor, clock, {old: 0.6}, 20)
    monitor.track(new, "cuda:0", "bicubic")
    evicted = run(monitor, clock, {old: 0.6, new: 0.6}, OVERLOAD_SAMPLES + 3)
    assert [s.name for s, _ in evicted] == ["new"]
    assert "cuda:0 cannot carry this stream as well" in evicted[0][1]
    # Alone, a stream is never ended for load: it only drops frames ("late").
    clock2 = Clock()
    alone = LoadMonitor({}, clock2)
    solo = Measured("solo")
    alone.track(solo, "cuda:0", "bicubic")
    assert run(alone, clock2, {solo: 1.5}, 20) == []


def test_machine_cpu_seconds_counts_busy_time() -> None:
    before = machine_cpu_seconds()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of CPU
        pass
    assert machine_cpu_seconds() - before >= 0.25


def test_a_cpu_box_refuses_when_the_machine_is_busy() -> None:
    """Without a GPU the encoders cost more than bicubic: the machine's CPU time counts too."""
    clock = Clock()
    cpu = {"used": 0.0}
    monitor = LoadMonitor({"cpu": 2.0}, clock, cpu_seconds=lambda: cpu["used"])
    a, c = Measured("a"), Measured("c")
    monitor.track(a, "cpu", "bicubic")
    monitor.track(c, "cpu", "bicubic")

    def busy(seconds: int) -> None:  # bicubic computes 10 % of the time, x264 and the rest 1.8 cores
        for _ in range(seconds):
            clock.now += 1.0
            for session in (a, c):
                session.engine_busy_s += 0.1
            cpu["used"] += 1.8
            monitor.sample()

    busy(10)
    assert monitor.machine_cpu == pytest.approx(0.9)
    reason = monitor.refusal("cpu", "b", 0.85)
    assert reason is not None and "the CPU is busy: 90% of this machine's 2 cores in use" in reason
    assert monitor.refusal("cpu", "b", 0.95) is None
    assert monitor.refusal("cuda:0", "b", 0.85) is None  # a GPU stream does not need those cores
    assert monitor.refusal("cpu", "a", 0.85) is None  # a reconnect frees what it is counted for
    a.closed = True  # a's publisher dropped and is back 5 s later, the CPU average still high
    busy(5)
    assert monitor.refusal("cpu", "a", 0.85) is None
    busy(20)  # much later it is a new publish like any other
    assert monitor.refusal("cpu", "a", 0.85) is not None
    c.closed = True  # with no stream of ours left to protect, a busy machine still takes one
    busy(30)
    assert monitor.refusal("cpu", "b", 0.85) is None


# -- the real server: RTMP publishers, engines that take real time ---------------------------------


def slow_engine(seconds_per_frame: float) -> type[BicubicEngine]:
    class SlowEngine(BicubicEngine):
        def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
            time.sleep(seconds_per_frame * len(frames))  # wall time inside the engine, like a GPU wait
            return super().push(frames)

    return SlowEngine


async def start_app(max_engine_load: float) -> App:
    config = dataclasses.replace(
        loopback_config(), pipeline=PipelineConfig(max_queue_ms=0, max_engine_load=max_engine_load)
    )
    app = App(config)
    await app.start()
    # Engine time on one unit, whatever this machine's core count and whatever else it runs.
    app.manager.load = LoadMonitor({"cpu": 1.0})
    return app


def rtmp_url(app: App, key: str) -> str:
    return f"rtmp://127.0.0.1:{app.rtmp_port}/live/{key}"


async def test_a_publish_is_refused_while_the_device_is_busy_and_admitted_after() -> None:
    app = await start_app(max_engine_load=0.5)
    try:
        main, second = app.manager.streams["main"], app.manager.streams["second"]
        main.engine_factory = slow_engine(0.025)  # 75 % of the device at 30 fps
        busy = asyncio.create_task(asyncio.to_thread(publish, rtmp_url(app, "k-main"), 64, 48, 30, 240))
        await wait_for(lambda: (main.engine_load or 0) > 0.6)
        async with aiohttp.ClientSession() as http:  # what operators and the viewer see
            async with http.get(f"http://127.0.0.1:{app.http_port}/api/streams") as resp:
                api = {s["name"]: s for s in (await resp.json())["streams"]}
            async with http.get(f"http://127.0.0.1:{app.http_port}/metrics") as resp:
                metrics = await resp.text()
        assert api["main"]["engine"]["load"] > 0.5 and api["second"]["engine"]["load"] is None
        assert 'livevsr_engine_load{stream="main"}' in metrics
        with pytest.raises(IngestError, match=r"cpu is busy: measured engine load \d+% \(main \d+%( starting)?\)"):
            app.manager.open_publish("k-second", "test")
        # A real RTMP publisher is turned away at its publish command.
        with pytest.raises(Exception):  # noqa: B017 - PyAV reports the refusal as an I/O error
            await asyncio.to_thread(publish, rtmp_url(app, "k-second"), 64, 48, 30, 30, realtime=False)
        assert second.counts["received"] == 0
        refused = second.snapshot()  # the viewer's player area shows this, not "waiting"
        assert refused["state"] == "error" and refused["refused"].startswith("cpu is busy")
        before = main.counts["encoded"]
        await wait_for(lambda: main.counts["encoded"] > before + 15)  # main never noticed
        assert await busy == 240
        await wait_for(lambda: not main.sessions_running)
        assert main.counts["encoded"] == 240
        await wait_for(lambda: app.manager.load.device_load("cpu")[0] == 0)
        assert await asyncio.to_thread(publish, rtmp_url(app, "k-second"), 64, 48, 30, 30) == 30
        assert second.snapshot()["refused"] is None
    finally:
        await app.stop()


async def test_a_stream_that_overloads_the_device_is_ended_and_the_first_keeps_going() -> None:
    app = await start_app(max_engine_load=0.9)
    try:
        main, second = app.manager.streams["main"], app.manager.streams["second"]
        main.engine_factory = slow_engine(0.015)  # 45 %
        second.engine_factory = slow_engine(0.025)  # 75 %: together more than the device
        stop = threading.Event()
        first = asyncio.create_task(
            asyncio.to_thread(publish, rtmp_url(app, "k-main"), 64, 48, 30, 900, stop=stop)
        )
        await wait_for(lambda: (main.engine_load or 0) > 0.3)
        late = asyncio.create_task(asyncio.to_thread(publish, rtmp_url(app, "k-second"), 64, 48, 30, 450))
        await wait_for(lambda: second.state == "error", timeout=30)
        assert "cpu cannot carry this stream as well" in second.reason
        # The server hung up on the refused publisher, long before its 15 s were sent.
        with pytest.raises(Exception):  # noqa: B017 - PyAV reports the closed connection as an I/O error
            await asyncio.wait_for(late, 10)
        assert main.state == "live" and main.session is not None
        before = main.counts["encoded"]
        await wait_for(lambda: main.counts["encoded"] > before + 30)
        stop.set()
        assert 0 < await first < 900
    finally:
        await app.stop()

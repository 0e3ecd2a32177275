"""Shared fixtures: a real livevsr server on loopback with ephemeral ports."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aioice.ice
import pytest

from livevsr.app import App
from livevsr.config import (
    Config,
    EngineConfig,
    HTTPConfig,
    PipelineConfig,
    RTMPConfig,
    StreamConfig,
    WebRTCConfig,
)

# aioice never gathers loopback addresses; our tests only have loopback.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def loopback_config(**overrides: object) -> Config:
    """Ephemeral loopback ports, bicubic, two streams. The latency budget and admission control are
    off so tests that count frames or start two streams do not depend on how busy the machine is;
    the tests of those features turn them on themselves."""
    base = Config(
        pipeline=PipelineConfig(max_queue_ms=0, max_engine_load=0),
        rtmp=RTMPConfig(listen="127.0.0.1:0"),
        http=HTTPConfig(listen="127.0.0.1:0"),
        webrtc=WebRTCConfig(ice_host_addresses=["127.0.0.1"]),
        engine=EngineConfig(name="bicubic"),
        streams=[StreamConfig(name="main", key="k-main"), StreamConfig(name="second", key="k-second")],
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    server = App(loopback_config())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> None:  # noqa: ANN001
    """Poll ``predicate`` until true; fail the test with a clear message on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)

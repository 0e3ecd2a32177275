"""RTMP relay out: stream "main" pushes its upscaled output to our own RTMP server as stream "second",
which upscales it again; a WHEP viewer of "second" sees 16x the original size."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket

import av
import pytest

from livevsr.app import App
from livevsr.config import EncoderConfig, RTMPConfig
from livevsr.publish.mux import BACKOFF_START_S
from livevsr.testing.publisher import aac_frames
from livevsr.testing.whep_client import WhepClient
from tests.conftest import loopback_config, wait_for
from tests.helpers.taps import AudioTap
from tests.publish.test_record import HEIGHT, WIDTH, feed, h264_access_units


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def relay_app(relay_url: str, rtmp_port: int = 0) -> App:
    config = loopback_config(
        rtmp=RTMPConfig(listen=f"127.0.0.1:{rtmp_port}"),
        encoder=EncoderConfig(codec="libx264", keyframe_interval_s=0.5),  # relays start at a keyframe
    )
    main, second = config.streams
    config = dataclasses.replace(config, streams=[dataclasses.replace(main, relays=[relay_url]), second])
    app = App(config)
    await app.start()
    return app


async def test_relay_to_our_own_rtmp_server_is_upscaled_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    app = await relay_app(f"rtmp://127.0.0.1:{port}/live/k-second", port)
    tap = AudioTap()
    app.manager.streams["second"].output_factories.append(lambda session: tap)
    try:
        sink = app.manager.open_publish("k-main", "test")
        asc, audio = aac_frames(6000)
        feeder = asyncio.create_task(feed(sink, h264_access_units(180), audio, asc))
        second = app.manager.streams["second"]
        await wait_for(lambda: second.session is not None, timeout=20)
        async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/second") as viewer:
            frame = await viewer.recv(timeout=20)
            assert (frame.width, frame.height) == (16 * WIDTH, 16 * HEIGHT)
        assert second.input_size == (4 * WIDTH, 4 * HEIGHT)
        await wait_for(lambda: len(tap.packets) >= 20)
        assert tap.configs[0] == ("aac", 48000, 2)  # the publisher's audio rode along
        feeder.cancel()
        sink.close("publisher left")
        await wait_for(lambda: second.session is None, timeout=20)  # relay end = publish end
    finally:
        await app.stop()
    text = caplog.text
    assert f"relay rtmp://127.0.0.1:{port}/live/****: started" in text
    assert "k-second" not in text  # the target's stream key is never logged


async def test_unreachable_target_never_stalls_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    dead = free_port()  # nothing listens here
    app = await relay_app(f"rtmp://127.0.0.1:{dead}/live/secret-key")
    try:
        sink = app.manager.open_publish("k-main", "test")
        asc, audio = aac_frames(5000)
        feeder = asyncio.create_task(feed(sink, h264_access_units(150), audio, asc))
        async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
            for _ in range(30):
                frame = await viewer.recv()
            assert frame.width == 4 * WIDTH
        writer = sink.outputs[0].writers[0][1]
        await wait_for(lambda: writer.opened >= 2, timeout=10)  # it kept trying (after 1 s, then 2 s)
        await feeder
        sink.close("done")
    finally:
        await app.stop()
    warnings = [r.getMessage() for r in caplog.records if "retrying with backoff" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one line per cause, not one per attempt
    assert "Connection refused" in warnings[0] and "/live/****" in warnings[0]
    assert "secret-key" not in caplog.text
    assert BACKOFF_START_S <= 1.0


def test_flv_written_by_a_writer_reads_back_as_the_encoder_made_it(tmp_path) -> None:  # noqa: ANN001
    """The FLV muxer gets Annex-B packets with Annex-B extradata and stores avcC: decodable as-is."""
    from livevsr.publish.rtmp_relay import RelayWriter

    path = tmp_path / "out.flv"
    drops: list[int] = []
    writer = RelayWriter("t", f"file:{path}", lambda cause, n: drops.append(n))
    units = h264_access_units(30, 64, 48)
    for data, key, pts in units:
        writer.video(data, pts * 90, key)
    writer.close()
    writer.join(10)
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) == len(units) and (frames[0].width, frames[0].height) == (64, 48)
    assert not drops

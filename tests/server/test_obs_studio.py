"""OBS Studio itself publishes to our RTMP ingest (headless, under Xvfb, configured only through its
files) and a WHEP viewer sees the 4x stream. Skipped where obs-studio or xvfb is not installed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from livevsr.app import App
from livevsr.testing.whep_client import WhepClient
from tests.conftest import wait_for
from tests.helpers.obs import obs_log_tail, obs_studio, write_clip
from tests.helpers.taps import AudioTap

# Small on purpose: OBS, its x264, our decoder, the upscaler and two encoders share 2 CPU cores.
W, H = 320, 180


async def test_obs_streams_h264_and_aac_and_the_viewer_sees_it_upscaled(app: App, tmp_path: Path) -> None:
    stream = app.manager.streams["main"]
    tap = AudioTap()
    stream.output_factories.append(lambda session: tap)
    clip = write_clip(tmp_path / "clip.mp4", W, H)
    server = f"rtmp://127.0.0.1:{app.rtmp_port}/live"
    async with asyncio.timeout(120):
        with obs_studio(tmp_path, server, "k-main", clip, W, H) as obs:
            try:
                await wait_for(lambda: stream.counts["encoded"] >= 30 or obs.poll() is not None, timeout=60)
                assert obs.poll() is None, "OBS exited"
                assert stream.state == "live" and "rtmp" in stream.reason
                async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
                    sizes = {((f := await viewer.recv(timeout=15)).width, f.height) for _ in range(10)}
                await wait_for(lambda: len(tap.packets) >= 20)
            except (AssertionError, TimeoutError) as exc:
                raise AssertionError(f"{exc}; OBS's log ends:\n{obs_log_tail(tmp_path)}") from exc
    assert sizes == {(4 * W, 4 * H)}
    assert stream.input_size == (W, H)
    assert 25 < stream.source_fps < 35
    assert tap.configs[0] == ("aac", 48000, 2)
    await wait_for(lambda: stream.state == "idle")  # OBS is gone: the publish ended

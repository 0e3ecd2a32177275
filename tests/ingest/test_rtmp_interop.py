"""Other RTMP clients against our server: GStreamer's librtmp sink (the library OBS's RTMP output
descends from) and its native rtmp2sink. Skipped where GStreamer is not installed
(Debian: gstreamer1.0-tools, -plugins-bad for the sinks, -plugins-ugly for x264enc).
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess

import pytest

from livevsr.ingest.rtmp import RTMPServer
from tests.ingest.test_rtmp import GOOD_KEYS, RecordingAuthority, decode_h264, make_config, url


def _has_elements(*names: str) -> bool:
    if shutil.which("gst-inspect-1.0") is None:
        return False
    return all(subprocess.run(["gst-inspect-1.0", name], capture_output=True).returncode == 0 for name in names)


NEEDED = ("videotestsrc", "x264enc", "h264parse", "flvmux", "audiotestsrc", "voaacenc", "aacparse")
pytestmark = pytest.mark.skipif(not _has_elements(*NEEDED), reason="needs gst-launch-1.0 with x264enc and voaacenc")


async def gst_publish(sink: str, location: str, frames: int) -> int:
    """Publish ``frames`` 320x180 frames at 30 fps plus AAC with gst-launch; return its exit code."""
    pipeline = (
        f"videotestsrc num-buffers={frames} is-live=true ! video/x-raw,width=320,height=180,framerate=30/1 "
        "! x264enc tune=zerolatency key-int-max=30 ! h264parse ! flvmux streamable=true name=mux "
        f"! {sink} location={shlex.quote(location)} "
        f"audiotestsrc num-buffers={frames * 3 // 2} is-live=true ! audioconvert ! voaacenc ! aacparse ! mux."
    )
    proc = await asyncio.create_subprocess_exec(
        "gst-launch-1.0", "-e", *shlex.split(pipeline), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return await asyncio.wait_for(proc.wait(), 30.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("sink", ["rtmpsink", "rtmp2sink"])
async def test_gstreamer_publish(sink: str) -> None:
    if not _has_elements(sink):
        pytest.skip(f"GStreamer element {sink} is not installed")
    authority = RecordingAuthority()
    server = RTMPServer(make_config(), authority)
    await server.start()
    try:
        location = url(server, GOOD_KEYS[0]) + (" live=1" if sink == "rtmpsink" else "")
        assert await gst_publish(sink, location, 45) == 0
        deadline = asyncio.get_running_loop().time() + 5.0
        while not (authority.sinks and authority.sinks[0].closes) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        (recorded,) = authority.sinks
        frames = decode_h264(recorded)
        assert len(frames) == 45 and {(f.width, f.height) for f in frames} == {(320, 180)}
        assert recorded.audio_configs[0][1:] == (44100, 1) and len(recorded.audio) >= 60
        assert recorded.closes == ["publisher stopped (FCUnpublish)"]
    finally:
        await server.stop()

"""Third-party WHIP publishers against our WHIP ingest, watched over WHEP: GStreamer's webrtcbin and
FFmpeg's WHIP muxer. Both publish from a private network namespace (libnice never gathers loopback
addresses), so these tests need root and iproute2, and skip with the reason where something is missing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioice.ice
import pytest

from livevsr.app import App
from livevsr.config import HTTPConfig, WebRTCConfig
from livevsr.testing.whep_client import WhepClient
from tests.conftest import loopback_config, wait_for
from tests.helpers.netns import VethNamespace, veth_namespace
from tests.helpers.taps import AudioTap

SYSTEM_PYTHON = "/usr/bin/python3"  # python3-gi lives there, not in our venv
GST_WHIP = Path(__file__).resolve().parents[2] / "livevsr" / "testing" / "gst_whip.py"
W, H = 320, 180


def _gst_webrtc_missing() -> str | None:
    """Why the GStreamer publisher cannot run here, or None."""
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
        "gi.require_version('GstSdp', '1.0'); from gi.repository import Gst; Gst.init(None);"
        "missing = [e for e in ('webrtcbin', 'nicesrc', 'x264enc', 'opusenc', 'rtph264pay', 'dtlssrtpenc',"
        " 'srtpenc', 'videotestsrc') if Gst.ElementFactory.find(e) is None];"
        "print(' '.join(missing))"
    )
    if not os.path.exists(SYSTEM_PYTHON):
        return f"needs {SYSTEM_PYTHON} with python3-gi"
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "probing GStreamer timed out"
    if out.returncode != 0:
        return "needs python3-gi and gir1.2-gst-plugins-bad-1.0 for the system python3"
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()} (Debian: gstreamer1.0-nice, -plugins-bad/-good/-ugly)"
    return None


@pytest.fixture
def netns() -> Iterator[VethNamespace]:
    with veth_namespace() as ns:
        yield ns


@pytest.fixture
async def netns_app(netns: VethNamespace) -> AsyncIterator[App]:
    """Our server on the host end of the veth pair; ICE offers that address (and loopback for WHEP)."""
    restore = aioice.ice.get_host_addresses
    config = loopback_config(
        http=HTTPConfig(listen=f"{netns.host_address}:0"),
        webrtc=WebRTCConfig(ice_host_addresses=[netns.host_address, "127.0.0.1"]),
    )
    server = App(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        aioice.ice.get_host_addresses = restore


class Child:
    """A publisher process in its own process group, its output collected; always killed at the end."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv, self.env = argv, env
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await asyncio.wait_for(self.proc.wait(), 10)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)


def audio_tap(app: App) -> AudioTap:
    """Attached before the publisher starts, it sees the next publish session's audio."""
    tap = AudioTap()
    app.manager.streams["main"].output_factories.append(lambda session: tap)
    return tap


async def watch_and_finish(app: App, host: str, publisher: Child, seconds: float, tap: AudioTap) -> None:
    """A WHEP viewer sees the 4x stream, the publisher's Opus reaches the session as AAC, and the
    publisher then ends its session by itself (DELETE)."""
    stream = app.manager.streams["main"]
    async with WhepClient(f"http://{host}:{app.http_port}/whep/main") as viewer:
        try:
            sizes = {((f := await viewer.recv(timeout=20)).width, f.height) for _ in range(15)}
        except TimeoutError:
            raise AssertionError(f"no frame over WHEP; publisher said:\n{publisher.output()}") from None
    assert sizes == {(4 * W, 4 * H)}
    assert stream.input_size == (W, H)
    assert "whip" in stream.reason
    await wait_for(lambda: len(tap.packets) >= 10)
    assert tap.configs[0] == ("aac", 48000, 2)
    assert await publisher.wait(seconds + 20) == 0, publisher.output()
    await wait_for(lambda: stream.state == "idle")
    assert "DELETE" in stream.reason


async def test_gstreamer_webrtcbin_publishes_over_whip(netns_app: App, netns: VethNamespace) -> None:
    if reason := _gst_webrtc_missing():
        pytest.skip(reason)
    seconds = 8.0
    url = f"http://{netns.host_address}:{netns_app.http_port}/whip/main"
    argv = netns.command(SYSTEM_PYTHON, str(GST_WHIP), url, "k-main", "--seconds", str(seconds),
                         "--width", str(W), "--height", str(H))  # fmt: skip
    tap = audio_tap(netns_app)
    async with asyncio.timeout(90), Child(argv) as publisher:
        await watch_and_finish(netns_app, netns.host_address, publisher, seconds, tap)
    assert "answer 201" in publisher.lines


def _ffmpeg_whip_missing() -> str | None:
    import av

    return None if "whip" in av.formats_available else "this PyAV's FFmpeg has no whip muxer (needs FFmpeg 8)"


def ffmpeg_argv(app: App, seconds: float, *extra: str) -> list[str]:
    url = f"http://127.0.0.1:{app.http_port}/whip/main"
    return [sys.executable, "-m", "livevsr.testing.ffmpeg_whip", url, "k-main", "--seconds", str(seconds),
            "--width", str(W), "--height", str(H), *extra]  # fmt: skip


async def test_ffmpeg_whip_muxer_publishes(app: App) -> None:
    """FFmpeg's ICE sends straight to the candidate in our answer, so loopback works (no namespace);
    it is given a P-256 DTLS certificate (see livevsr/testing/ffmpeg_whip.py for why)."""
    if reason := _ffmpeg_whip_missing():
        pytest.skip(reason)
    seconds = 6.0
    tap = audio_tap(app)
    async with asyncio.timeout(90), Child(ffmpeg_argv(app, seconds)) as publisher:
        await watch_and_finish(app, "127.0.0.1", publisher, seconds, tap)
    assert publisher.lines[0] == "connected" and publisher.lines[-1].startswith("done")
    assert app.manager.streams["main"].counts["decoded"] >= seconds * 30 * 0.8


async def test_ffmpeg_with_its_own_certificate_is_told_why(app: App) -> None:
    """FFmpeg's GnuTLS build makes a P-224 certificate, which our DTLS cannot accept: the stream's
    reason says so and names the fix, instead of a bare "connection failed"."""
    if reason := _ffmpeg_whip_missing():
        pytest.skip(reason)
    stream = app.manager.streams["main"]
    async with asyncio.timeout(60), Child(ffmpeg_argv(app, 2.0, "--ffmpeg-certificate")) as publisher:
        code = await publisher.wait(40)
    if code == 0:
        pytest.skip("this FFmpeg's own DTLS certificate works: the limitation is gone")
    assert any(line.startswith("error") for line in publisher.lines), publisher.output()
    await wait_for(lambda: stream.state == "idle")
    assert "P-224" in stream.reason and "-cert_file" in stream.reason

"""WHIP ingest: an aiortc peer publishes H.264 (+ Opus) like OBS does; a WHEP viewer sees 4x frames."""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription, VideoStreamTrack

from livevsr.app import App
from livevsr.config import RecordConfig
from livevsr.ingest.base import AudioPacket
from livevsr.testing.publisher import synthetic_frame
from livevsr.testing.whep_client import WhepClient
from tests.conftest import loopback_config, wait_for

WIDTH, HEIGHT = 64, 48


class PatternTrack(VideoStreamTrack):
    """A moving test pattern at 30 fps (aiortc paces it and stamps pts on the 90 kHz clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(synthetic_frame(WIDTH, HEIGHT, self.index), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        self.index += 1
        return frame


class ToneTrack(AudioStreamTrack):
    """A 440 Hz tone in 20 ms frames, paced like a microphone (aiortc's own track is silence)."""

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # silence with the right pts, on the wall clock
        t = (np.arange(frame.samples) + frame.pts) / frame.sample_rate
        tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        out = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        out.pts, out.sample_rate, out.time_base = frame.pts, frame.sample_rate, frame.time_base
        return out


class WhipPublisher:
    """A WHIP client: what OBS does, with aiortc (H.264 forced, as OBS offers only its encoder's codec)."""

    def __init__(
        self, url: str, token: str | None, audio: bool = True, codecs: tuple = ("video/H264",), tone: bool = False
    ):
        self.url = url
        self.token = token
        self.pc = RTCPeerConnection()
        video = self.pc.addTransceiver(PatternTrack(), direction="sendonly")
        video.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in codecs]
        )
        if audio:
            self.pc.addTransceiver(ToneTrack() if tone else AudioStreamTrack(), direction="sendonly")
        self.http = aiohttp.ClientSession()
        self.location: str | None = None

    async def post(self) -> tuple[int, str]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        async with self.http.post(self.url, data=self.pc.localDescription.sdp, headers=headers) as resp:
            body = await resp.text()
            if resp.status == 201:
                self.location = str(resp.url.join(aiohttp.client.URL(resp.headers["Location"])))
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
            return resp.status, body

    async def close(self) -> int | None:
        status = None
        if self.location is not None:
            async with self.http.delete(self.location) as resp:
                status = resp.status
        await self.http.close()
        await self.pc.close()
        return status


class AudioTap:
    """Our own seam (a SessionOutput) that records what audio reached the session."""

    def __init__(self) -> None:
        self.config: tuple | None = None
        self.packets: list[AudioPacket] = []

    def video(self, rendition: str, packet: av.Packet) -> None:
        pass

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None:
        self.config = (codec, sample_rate, channels)

    def audio(self, packet: AudioPacket) -> None:
        self.packets.append(packet)

    def close(self) -> None:
        pass


async def test_obs_like_publish_is_upscaled_and_delete_ends_it(app: App) -> None:
    tap = AudioTap()
    app.manager.streams["main"].output_factories.append(lambda session: tap)
    base = f"http://127.0.0.1:{app.http_port}"
    publisher = WhipPublisher(f"{base}/whip/main", "k-main")
    status, _ = await publisher.post()
    assert status == 201
    assert publisher.location is not None and "/whip/main/session/" in publisher.location
    stream = app.manager.streams["main"]
    async with WhepClient(f"{base}/whep/main") as viewer:
        sizes = {((f := await viewer.recv()).width, f.height) for _ in range(10)}
        assert sizes == {(4 * WIDTH, 4 * HEIGHT)}
    assert stream.input_size == (WIDTH, HEIGHT)
    await wait_for(lambda: stream.source_fps > 0)
    assert 25 < stream.source_fps < 35
    assert stream.state == "live" and "whip" in stream.reason
    await wait_for(lambda: len(tap.packets) >= 10)
    assert tap.config == ("aac", 48000, 2)
    pts = [p.pts_ms for p in tap.packets]
    assert pts == sorted(pts)
    assert await publisher.close() == 200
    await wait_for(lambda: stream.state == "idle")
    assert "DELETE" in stream.reason
    assert not app.whip.sessions


async def test_whip_without_a_name_finds_the_stream_by_key(app: App) -> None:
    publisher = WhipPublisher(f"http://127.0.0.1:{app.http_port}/whip", "k-second", audio=False)
    try:
        status, _ = await publisher.post()
        assert status == 201 and "/whip/second/session/" in publisher.location
        await wait_for(lambda: app.manager.streams["second"].counts["encoded"] >= 3)
        assert app.manager.streams["main"].session is None
    finally:
        await publisher.close()


async def test_wrong_or_missing_key_is_401_and_never_echoed(app: App) -> None:
    for url, token in (("/whip/main", "k-second"), ("/whip/main", None), ("/whip", "guess-key")):
        publisher = WhipPublisher(f"http://127.0.0.1:{app.http_port}{url}", token, audio=False)
        try:
            status, body = await publisher.post()
        finally:
            await publisher.close()
        assert status == 401
        assert "Bearer" in body and (token is None or token not in body)
    assert all(s.session is None for s in app.manager.streams.values())


async def test_offer_without_h264_asks_for_the_h264_encoder(app: App) -> None:
    publisher = WhipPublisher(f"http://127.0.0.1:{app.http_port}/whip/main", "k-main", codecs=("video/VP8",))
    try:
        status, body = await publisher.post()
    finally:
        await publisher.close()
    assert status == 400
    assert "no H.264 video (offered: VP8)" in body and "H.264 video encoder" in body
    assert app.manager.streams["main"].session is None


async def test_patch_is_405_and_unknown_session_delete_is_404(app: App) -> None:
    base = f"http://127.0.0.1:{app.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.patch(f"{base}/whip/main/session/nope", data="a=x") as resp:
            assert resp.status == 405
        async with http.delete(f"{base}/whip/main/session/nope") as resp:
            assert resp.status == 404
        async with http.options(f"{base}/whip/main") as resp:
            assert resp.status == 204 and "Location" in resp.headers["Access-Control-Expose-Headers"]


async def test_publisher_vanishing_without_delete_ends_the_session(app: App) -> None:
    publisher = WhipPublisher(f"http://127.0.0.1:{app.http_port}/whip/main", "k-main", audio=False)
    status, _ = await publisher.post()
    assert status == 201
    stream = app.manager.streams["main"]
    await wait_for(lambda: stream.counts["encoded"] >= 3)
    publisher.location = None  # no DELETE: the peer connection just closes
    await publisher.close()
    await wait_for(lambda: stream.session is None, timeout=30)
    assert not app.whip.sessions


def test_aac_encoder_turns_20ms_frames_into_1024_sample_aac() -> None:
    from livevsr.ingest.whip import AacEncoder

    enc = AacEncoder()
    out = []
    for i in range(20):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960 * 2), np.int16), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        out += enc.encode(frame, 1000 + i * 20)
    assert enc.extradata  # AudioSpecificConfig for the muxers
    assert len(out) >= 15
    assert out[0][1] == 1000 - round(1024 * 1000 / 48000)  # the encoder's priming samples come first
    assert all(b[1] > a[1] for a, b in zip(out, out[1:], strict=False))


async def test_whip_audio_reaches_a_recording_in_sync(tmp_path: Path) -> None:
    """Opus from the publisher is re-encoded to AAC and recorded next to the 4x video."""
    config = loopback_config(record=RecordConfig(dir=str(tmp_path), format="mkv"))
    config = dataclasses.replace(config, streams=[dataclasses.replace(config.streams[0], record=True)])
    app = App(config)
    await app.start()
    try:
        publisher = WhipPublisher(f"http://127.0.0.1:{app.http_port}/whip/main", "k-main")
        status, _ = await publisher.post()
        assert status == 201
        stream = app.manager.streams["main"]
        await wait_for(lambda: stream.counts["encoded"] >= 45)
        session = stream.session
        assert await publisher.close() == 200
        await session.wait_finished()
        for _, writer in session.outputs[0].writers:
            await asyncio.to_thread(writer.join, 10)
    finally:
        await app.stop()
    (path,) = tmp_path.iterdir()
    video, audio = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            (video if isinstance(frame, av.VideoFrame) else audio).append(frame)
    assert {(f.width, f.height) for f in video} == {(4 * WIDTH, 4 * HEIGHT)}
    assert len(audio) > 20
    # Both tracks start together (within a jitter buffer) and cover the same span.
    assert abs(audio[0].time - video[0].time) < 0.3
    assert abs(audio[-1].time - video[-1].time) < 0.3


async def test_whip_audio_plays_to_a_whep_viewer(app: App) -> None:
    """OBS's Opus in, through AAC, out as Opus to a browser-like viewer: still the publisher's tone."""
    from tests.publish.test_whep_audio import dominant_hz

    publisher = WhipPublisher(f"http://127.0.0.1:{app.http_port}/whip/main", "k-main", tone=True)
    try:
        async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main", audio=True) as viewer:
            assert (await publisher.post())[0] == 201
            assert (await viewer.recv(timeout=15)).width == 4 * WIDTH
            await wait_for(lambda: viewer.audio_samples >= 48000 * 2)  # two seconds heard
            frames = [f for _, f in viewer.audio_frames]
    finally:
        await publisher.close()
    samples = np.concatenate([f.to_ndarray().reshape(-1)[:: len(f.layout.channels)] for f in frames])
    assert abs(dominant_hz(samples[48000 // 2 :].astype(np.float64), 48000) - 440) < 5

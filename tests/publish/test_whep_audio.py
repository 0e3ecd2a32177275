"""Audio for WHEP viewers: AAC -> Opus once per publish, released in step with the upscaled video."""

from __future__ import annotations

import asyncio

import av
import numpy as np

from livevsr.app import App
from livevsr.ingest.base import AudioPacket
from livevsr.pipeline.fanout import Broadcaster, EncodedFrame, Subscriber
from livevsr.publish.whep_audio import OPUS_RATE, OpusTranscoder, WhepAudioTap
from livevsr.telemetry.timing import FrameTiming
from livevsr.testing.publisher import aac_frames, publish
from livevsr.testing.whep_client import WhepClient
from tests.conftest import wait_for

OPUS_FRAME_90K = 90000 * 960 // OPUS_RATE  # 20 ms


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def decode_opus(packets: list[av.Packet]) -> np.ndarray:
    """Mono float samples of the first channel."""
    ctx = av.CodecContext.create("libopus", "r")
    ctx.sample_rate, ctx.layout = OPUS_RATE, "stereo"
    chunks = []
    for p in packets:
        for frame in ctx.decode(av.Packet(bytes(p))):
            chunks.append(frame.to_ndarray().reshape(-1, frame.samples)[0] if frame.format.is_planar
                          else frame.to_ndarray()[0, ::2])  # fmt: skip
    return np.concatenate(chunks).astype(np.float64)


def audio_tap(duration_ms: int, listening: bool = True) -> tuple[WhepAudioTap, Subscriber | None, list]:
    """A tap configured for the test tone, a listener on its broadcaster, and the tone's AAC frames."""
    broadcaster = Broadcaster(lambda: None, queue_packets=1000)
    listener = broadcaster.subscribe() if listening else None
    tap = WhepAudioTap("t", broadcaster)
    asc, frames = aac_frames(duration_ms)
    tap.audio_config("aac", asc, 48000, 2)
    return tap, listener, frames


def video(pts_90k: int, index: int, source_ms: int) -> EncodedFrame:
    """An upscaled video packet at ``pts_90k`` carrying the timing of source time ``source_ms``."""
    packet = av.Packet(b"\x00\x00\x00\x01\x65")
    packet.pts = pts_90k
    return EncodedFrame(packet, FrameTiming(index, source_ms))


def test_transcoder_turns_aac_into_20ms_opus_on_the_video_clock() -> None:
    asc, frames = aac_frames(2000)
    transcoder = OpusTranscoder(asc, 48000, 2)
    packets = [p for data, ms in frames for p in transcoder.transcode(data, 1_000_000 + ms * 90)]
    pts = [p.pts for p in packets]
    # Anchored at the first input, less the Opus encoder's 6.5 ms of priming.
    assert 0 <= 1_000_000 + frames[0][1] * 90 - pts[0] <= 7 * 90
    assert np.all(np.diff(pts) == OPUS_FRAME_90K)
    assert abs(len(packets) * 0.02 - 2.0) < 0.1  # the whole input, less the codec's tail
    assert all(p.is_keyframe for p in packets)
    samples = decode_opus(packets)
    assert abs(dominant_hz(samples[OPUS_RATE // 10 :], OPUS_RATE) - 440) < 5  # the publisher's tone


def test_transcoder_restarts_its_count_after_a_gap() -> None:
    asc, frames = aac_frames(1000)
    transcoder = OpusTranscoder(asc, 48000, 2)
    first = [p for data, ms in frames[:20] for p in transcoder.transcode(data, ms * 90)]
    # The publisher's audio resumes 5 s later (a reconnect, a muted source): pts follow the input.
    later = [p for data, ms in frames[20:] for p in transcoder.transcode(data, (5000 + ms) * 90)]
    pts = np.array([p.pts for p in first + later])
    steps = np.diff(pts)
    jumps = np.flatnonzero(steps != OPUS_FRAME_90K)
    assert len(jumps) == 1  # 20 ms apart on each timeline, one jump between them
    resumed = pts[jumps[0] + 1]
    assert 0 <= (5000 + frames[20][1]) * 90 - resumed <= 7 * 90
    assert pts[jumps[0]] < frames[20][1] * 90  # the old timeline ended where its input did


async def test_audio_waits_for_the_video_of_the_same_instant() -> None:
    """The engine's lookahead delays the video: audio that came first is held until its video is out."""
    tap, listener, frames = audio_tap(3000)
    base_90k = 7_000_000  # the encoder's clock starts elsewhere than the publisher's
    released_at: dict[int, int] = {}  # audio pts -> newest video pts published when it came out
    newest_video = -1
    audio = iter(frames)
    lookahead_ms = 400
    for i in range(90):  # 3 s of 30 fps video; audio runs 400 ms ahead of it, as behind an engine
        video_ms = round(i * 1000 / 30)
        for data, ms in audio:
            tap.audio(AudioPacket(data, ms, "aac", 0))
            if ms >= video_ms + lookahead_ms:
                break
        newest_video = base_90k + video_ms * 90
        tap.video("upscaled", video(newest_video, i, video_ms))
        while not listener.queue.empty():
            item = listener.queue.get_nowait()
            released_at[item.packet.pts] = newest_video
    tap.close()
    assert len(released_at) > 100  # ~2.9 s of 20 ms packets
    for audio_pts, video_pts in released_at.items():
        assert audio_pts >= base_90k - 30 * 90  # on the video's clock (AAC starts 21 ms early)
        assert audio_pts <= video_pts  # never before its video
        assert video_pts - audio_pts <= 34 * 90  # and not later than the next video frame (+ AAC)


async def test_nobody_listening_costs_no_transcode() -> None:
    tap, _, frames = audio_tap(500, listening=False)
    tap.video("upscaled", video(0, 0, 0))
    for data, ms in frames:
        tap.audio(AudioPacket(data, ms, "aac", 0))
    assert tap._transcoder is not None and tap._transcoder._anchor_90k is None  # never fed
    assert tap.sent == 0


async def test_corrupt_audio_frames_cost_only_themselves() -> None:
    tap, listener, frames = audio_tap(1000)
    tap.video("upscaled", video(10**9, 0, 0))
    for n, (data, ms) in enumerate(frames):
        tap.audio(AudioPacket(b"\xff\x00garbage" if n % 5 == 2 else data, ms, "aac", 0))
    tap.video("upscaled", video(10**9 + 2000 * 90, 1, 2000))
    assert listener is not None and listener.queue.qsize() > 30  # most of 1 s still comes out


async def test_rtmp_publish_with_aac_plays_as_opus_to_a_whep_viewer(app: App) -> None:
    url = f"rtmp://127.0.0.1:{app.rtmp_port}/live/k-main"
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main", audio=True) as viewer:
        publisher = asyncio.create_task(asyncio.to_thread(publish, url, 64, 48, 30, 90, audio=True))
        frame = await viewer.recv(timeout=15)
        assert (frame.width, frame.height) == (256, 192)
        await publisher
        await wait_for(lambda: sum(f.samples for _, f in viewer.audio_frames) >= 2.0 * OPUS_RATE)
        frames = [f for _, f in viewer.audio_frames]
    assert {f.sample_rate for f in frames} == {OPUS_RATE}
    samples = np.concatenate([f.to_ndarray().reshape(-1)[:: len(f.layout.channels)] for f in frames])
    samples = samples.astype(np.float64) / (32768 if samples.dtype == np.int16 else 1)
    assert abs(dominant_hz(samples[OPUS_RATE // 5 :], OPUS_RATE) - 440) < 5  # the publisher's tone
    assert app.manager.streams["main"].audio.subscriber_count == 0  # the viewer's audio left with it


async def test_a_viewer_without_audio_in_its_offer_gets_video_only(app: App) -> None:
    url = f"rtmp://127.0.0.1:{app.rtmp_port}/live/k-main"
    async with WhepClient(f"http://127.0.0.1:{app.http_port}/whep/main") as viewer:
        publisher = asyncio.create_task(asyncio.to_thread(publish, url, 64, 48, 30, 45, audio=True))
        await viewer.recv(timeout=15)
        assert app.manager.streams["main"].audio.subscriber_count == 0
        await publisher
    assert not viewer.audio_frames

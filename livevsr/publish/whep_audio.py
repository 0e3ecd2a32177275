"""Audio for WHEP viewers: the publisher's AAC, transcoded once per publish to Opus (the audio codec
every browser plays over WebRTC) and fanned out to every viewer's audio track.

Lip sync: the engine's lookahead delays the video, not the audio, so each Opus packet is held
until the upscaled video of the same instant has been published. Browsers line the two tracks up
through RTCP sender reports, which aiortc stamps with the send time of the last packet: audio sent
together with its video plays together with it.

The transcode runs on the event loop: one 21 ms AAC frame costs ~0.4 ms to decode, resample and
encode (under 2 % of a core per stream, `livevsr bench audio`); it runs only while someone listens.
"""

from __future__ import annotations

import collections
import fractions
import logging

import av

from livevsr.audio import FrameEncoder
from livevsr.ingest.base import AudioPacket
from livevsr.pipeline.avsync import AudioClock
from livevsr.pipeline.fanout import Broadcaster, EncodedFrame

log = logging.getLogger(__name__)

OPUS_RATE = 48000  # WebRTC's Opus clock
OPUS_BITRATE_BPS = 96_000
TIME_BASE = fractions.Fraction(1, 90000)  # the video's clock; aiortc converts to 48 kHz
RESYNC_GAP_90K = 90000 // 5  # input pts this far from the samples counted: start counting anew
AUDIO_HOLD_90K = 10 * 90000  # audio waiting for its video: more than the deepest engine lookahead


class OpusTranscoder:
    """AAC frames in (pts on the video's 90 kHz clock), 20 ms Opus packets out."""

    def __init__(self, extradata: bytes | None, sample_rate: int, channels: int) -> None:
        self._decoder = av.CodecContext.create("aac", "r")
        if extradata:
            self._decoder.extradata = extradata
        self._decoder.sample_rate = sample_rate
        self._decoder.layout = "stereo" if channels >= 2 else "mono"
        self._encoder = FrameEncoder("libopus", OPUS_RATE, "s16", OPUS_BITRATE_BPS)
        self._anchor_90k: int | None = None  # pts of the first sample counted

    def transcode(self, data: bytes, pts_90k: int) -> list[av.Packet]:
        """Opus packets stamped on the 90 kHz clock; gaps or jumps in the input restart the count."""
        out: list[av.Packet] = []
        counted = self._encoder.samples + self._encoder.buffered
        next_90k = None if self._anchor_90k is None else self._anchor_90k + counted * 90000 // OPUS_RATE
        if next_90k is None or abs(pts_90k - next_90k) > RESYNC_GAP_90K:
            if self._anchor_90k is not None:
                out += self._stamp(self._encoder.restart())  # the old timeline's last frame
            self._anchor_90k = pts_90k
        for frame in self._decoder.decode(av.Packet(data)):
            out += self._stamp(self._encoder.encode(frame))
        return out

    def _stamp(self, packets: list[av.Packet]) -> list[av.Packet]:
        assert self._anchor_90k is not None
        for packet in packets:
            packet.pts = packet.dts = self._anchor_90k + packet.pts * 90000 // OPUS_RATE
            packet.time_base = TIME_BASE
            packet.is_keyframe = True  # every Opus packet decodes on its own
        return packets


class WhepAudioTap:
    """A ``SessionOutput``: the session's audio as Opus on ``broadcaster``, in step with its video."""

    def __init__(self, stream_name: str, broadcaster: Broadcaster) -> None:
        self.name = stream_name
        self._broadcaster = broadcaster
        self._clock = AudioClock()
        self._transcoder: OpusTranscoder | None = None
        self._held: collections.deque[av.Packet] = collections.deque()
        self._video_pts = -1  # the newest upscaled video pts published
        self.sent = 0

    def video(self, rendition: str, frame: EncodedFrame) -> None:
        if rendition != "upscaled" or frame.packet.pts is None:
            return
        for packet, pts in self._clock.learn(frame):
            self._transcode(packet, pts)
        self._video_pts = max(self._video_pts, frame.packet.pts)
        self._release(self._video_pts)

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None:
        if codec != "aac":
            log.warning("[%s] %s audio is not sent to WHEP viewers (AAC only)", self.name, codec)
            self._transcoder = None
            return
        try:
            self._transcoder = OpusTranscoder(extradata, sample_rate, channels)
        except (av.error.FFmpegError, ValueError) as exc:
            log.warning("[%s] cannot transcode the audio for WHEP viewers: %s", self.name, exc)
            self._transcoder = None

    def audio(self, packet: AudioPacket) -> None:
        pts = self._clock.map(packet)
        if pts is not None:
            self._transcode(packet, pts)

    def _transcode(self, packet: AudioPacket, pts_90k: int) -> None:
        if self._transcoder is None or not self._broadcaster.subscriber_count:
            return  # nobody listens: spend nothing
        try:
            self._held.extend(self._transcoder.transcode(packet.data, pts_90k))
        except (av.error.FFmpegError, ValueError) as exc:  # one corrupt frame costs 20 ms of sound
            log.debug("[%s] audio frame skipped: %s", self.name, exc)
        while self._held and pts_90k - self._held[0].pts > AUDIO_HOLD_90K:
            self._held.popleft()  # the video stalled: keep the audio bounded
        self._release(self._video_pts)

    def _release(self, video_pts: int) -> None:
        while self._held and self._held[0].pts <= video_pts:
            self._broadcaster.publish(EncodedFrame(self._held.popleft()))
            self.sent += 1

    def close(self) -> None:
        self._release(self._video_pts)  # the last video is out: so is its audio
        self._held.clear()

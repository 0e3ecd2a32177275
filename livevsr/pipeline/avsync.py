"""Audio on the video's clock.

The publisher's audio and video share its millisecond clock; the encoder stamps the upscaled video
on its own 90 kHz clock (continuous across reconnects). Upscaled packets carry the timing of their
input frame, so the first one tells the offset between the two clocks; audio that arrives before it
(the engine's lookahead delays the video, not the audio) waits, bounded, until it is known.
"""

from __future__ import annotations

import collections

from livevsr.ingest.base import AudioPacket
from livevsr.pipeline.fanout import EncodedFrame

UNALIGNED_AUDIO_PACKETS = 500  # ~10 s of AAC: audio held before the first video packet


class AudioClock:
    def __init__(self, max_unaligned: int = UNALIGNED_AUDIO_PACKETS) -> None:
        self.offset_90k: int | None = None  # encoder pts - publisher pts * 90
        self._unaligned: collections.deque[AudioPacket] = collections.deque(maxlen=max_unaligned)

    def learn(self, frame: EncodedFrame) -> list[tuple[AudioPacket, int]]:
        """Take the offset from the first timed video packet; returns the audio that was waiting
        for it, now on the video's clock."""
        if self.offset_90k is not None or frame.timing is None or frame.packet.pts is None:
            return []
        self.offset_90k = frame.packet.pts - frame.timing.pts_ms * 90
        waiting, self._unaligned = list(self._unaligned), collections.deque(maxlen=self._unaligned.maxlen)
        return [(p, self.to_90k(p.pts_ms)) for p in waiting]

    def map(self, packet: AudioPacket) -> int | None:
        """The packet's pts on the video's 90 kHz clock, or None while the offset is unknown (then
        the packet is kept and comes back from ``learn``)."""
        if self.offset_90k is None:
            self._unaligned.append(packet)
            return None
        return self.to_90k(packet.pts_ms)

    def to_90k(self, pts_ms: int) -> int:
        assert self.offset_90k is not None
        return pts_ms * 90 + self.offset_90k

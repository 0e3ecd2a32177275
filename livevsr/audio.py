"""Audio encoding shared by WHIP ingest (Opus in -> AAC) and WHEP egress (AAC -> Opus out).

Encoders take fixed-size frames (AAC 1024 samples, Opus 960 at 48 kHz) in one sample format and
rate; decoders hand out whatever they decoded. ``FrameEncoder`` resamples into a FIFO and encodes
whole frames, stamping each with the count of samples before it.
"""

from __future__ import annotations

import fractions

import av


class FrameEncoder:
    """Decoded audio frames (any format, layout, rate) in; packets with pts in samples out."""

    def __init__(self, codec: str, sample_rate: int, sample_format: str, bit_rate: int) -> None:
        self._codec, self._format, self._bit_rate = codec, sample_format, bit_rate
        self.sample_rate = sample_rate
        self.ctx = self._open()
        self._resampler = av.AudioResampler(format=sample_format, layout="stereo", rate=sample_rate)
        self._fifo = av.AudioFifo()
        self.samples = 0  # samples handed to the encoder so far

    def _open(self) -> av.AudioCodecContext:
        ctx = av.CodecContext.create(self._codec, "w")
        ctx.sample_rate = self.sample_rate
        ctx.layout = "stereo"
        ctx.format = self._format
        ctx.bit_rate = self._bit_rate
        ctx.time_base = fractions.Fraction(1, self.sample_rate)
        ctx.open()
        return ctx

    @property
    def extradata(self) -> bytes:
        return bytes(self.ctx.extradata or b"")

    @property
    def buffered(self) -> int:
        """Samples waiting in the FIFO for a whole frame."""
        return self._fifo.samples

    def encode(self, frame: av.AudioFrame) -> list[av.Packet]:
        for resampled in self._resampler.resample(frame):
            resampled.pts = None  # the FIFO orders by arrival; pts are ours
            self._fifo.write(resampled)
        out: list[av.Packet] = []
        size = self.ctx.frame_size
        while self._fifo.samples >= size:
            chunk = self._fifo.read(size)
            chunk.pts = self.samples
            chunk.time_base = self.ctx.time_base
            self.samples += size
            out += self.ctx.encode(chunk)
        return out

    def restart(self) -> list[av.Packet]:
        """Start a new timeline: returns the frame the encoder held back (on the old count), then
        drops the FIFO's remainder and counts from zero again."""
        tail = self.ctx.encode(None)
        self.ctx = self._open()
        self._fifo = av.AudioFifo()
        self.samples = 0
        return tail

"""ONE H.264 encoder per stream rendition; its packets are fanned out to every consumer.

Low-latency settings for WebRTC: no B-frames, SPS/PPS repeated on every IDR (viewers join at any
keyframe), periodic keyframes, and a keyframe on demand when a viewer joins.
"""

from __future__ import annotations

import fractions
import logging
import os
import threading

import av

from livevsr.config import EncoderConfig

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)  # RTP video clock; aiortc converts packet pts with it

_nvenc_usable: bool | None = None
_nvenc_lock = threading.Lock()


def _nvenc_available() -> bool:
    """h264_nvenc is in the PyAV wheel, but only opens where the driver's NVENC library exists."""
    global _nvenc_usable
    with _nvenc_lock:
        if _nvenc_usable is None:
            try:
                ctx = av.CodecContext.create("h264_nvenc", "w")
                ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
                ctx.time_base = VIDEO_TIME_BASE
                ctx.open()
                _nvenc_usable = True
            except Exception as exc:  # noqa: BLE001 - any failure means "not here"
                log.debug("h264_nvenc unavailable: %s", exc)
                _nvenc_usable = False
        return _nvenc_usable


# libx264 throughput per CPU core at 2560x1440, tune=zerolatency, measured on an AMD EPYC vCPU
# (BENCHMARKS.md, "libx264 presets"): megapixels per second per core.
X264_MPIXEL_PER_CORE = {"ultrafast": 64.0, "superfast": 38.0, "veryfast": 22.0, "faster": 13.0}
X264_HEADROOM = 1.5  # leave room for decode, scaling, the source rendition and the rest of the process


def auto_preset(width: int, height: int, fps: float, cores: int | None = None) -> str:
    """The slowest (best-looking) libx264 preset that still encodes this size in real time."""
    cores = cores or os.cpu_count() or 1
    needed = width * height * fps / 1e6 * X264_HEADROOM
    for preset in ("faster", "veryfast", "superfast"):
        if X264_MPIXEL_PER_CORE[preset] * cores >= needed:
            return preset
    return "ultrafast"


def pick_codec(config: EncoderConfig) -> str:
    if config.codec == "auto":
        return "h264_nvenc" if _nvenc_available() else "libx264"
    return config.codec


class VideoEncoder:
    """Encodes yuv420p frames of one size into H.264 packets."""

    def __init__(
        self,
        config: EncoderConfig,
        width: int,
        height: int,
        fps: float,
        *,
        bitrate_bps: int | None = None,
        preset: str | None = None,
        stream: av.video.stream.VideoStream | None = None,
    ) -> None:
        """``stream``: encode through an output container's stream (files) instead of a bare codec."""
        self.width, self.height = width, height
        self.codec_name = pick_codec(config)
        fps = fps if fps and fps > 0 else 30.0
        keyint = max(1, round(config.keyframe_interval_s * fps))
        ctx = stream.codec_context if stream is not None else av.CodecContext.create(self.codec_name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = VIDEO_TIME_BASE
        ctx.framerate = fractions.Fraction(fps).limit_denominator(1001)
        ctx.bit_rate = bitrate_bps or config.bitrate_bps
        ctx.gop_size = keyint
        ctx.max_b_frames = 0
        self.preset = preset or config.preset
        if self.codec_name != "libx264":
            self.preset = "p2"  # NVENC's low-latency preset; the x264 presets do not apply
        elif self.preset == "auto":
            self.preset = auto_preset(width, height, fps)
        if self.codec_name == "libx264":
            ctx.options = {
                "preset": self.preset,
                "tune": "zerolatency",
                "x264-params": f"repeat-headers=1:bframes=0:keyint={keyint}:min-keyint={keyint}:scenecut=0",
            }
        else:
            ctx.options = {
                "preset": self.preset,
                "tune": "ull",
                "zerolatency": "1",
                "bf": "0",
                "forced-idr": "1",
            }
        if stream is not None:
            stream.time_base = VIDEO_TIME_BASE
        else:
            ctx.open()
        self._ctx = ctx
        self._encode = stream.encode if stream is not None else ctx.encode
        self._keyframe_requested = threading.Event()
        self._last_pts = -1

    def request_keyframe(self) -> None:
        """Thread-safe: the next encoded frame will be an IDR."""
        self._keyframe_requested.set()

    def next_pts(self, pts: int) -> int:
        """The pts ``encode`` will give a frame asked for at ``pts``: strictly increasing."""
        return max(pts, self._last_pts + 1)

    def encode(self, frame: av.VideoFrame, pts: int) -> list[av.Packet]:
        """Encode one frame at ``pts`` (in 1/90000 s); pts is forced strictly increasing, and the
        packets carry it (no B-frames: one packet per frame, in order)."""
        if frame.format.name != "yuv420p" or frame.width != self.width or frame.height != self.height:
            frame = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        pts = self.next_pts(pts)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        if self._keyframe_requested.is_set():
            self._keyframe_requested.clear()
            frame.pict_type = av.video.frame.PictureType.I
        else:
            frame.pict_type = av.video.frame.PictureType.NONE
        return list(self._encode(frame))

    def flush(self) -> list[av.Packet]:
        try:
            return list(self._encode(None))
        except av.error.EOFError:
            return []

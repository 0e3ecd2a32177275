"""EncodeWorker: the thread that encodes upscaled (and source) frames once per stream and hands the
packets to the event loop for fan-out."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import av

from livevsr.config import EncoderConfig
from livevsr.engines.resize import output_size, resize
from livevsr.pipeline.encode import VideoEncoder
from livevsr.pipeline.fanout import EncodedFrame
from livevsr.pipeline.worker import END, UpscaledFrame
from livevsr.telemetry.timing import FrameTiming

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ENCODER_FAILURES = 3
SOURCE_BITRATE_FRACTION = 1 / 8  # the original is 1/16 of the pixels; give it a fair share


class EncodeWorker:
    def __init__(
        self,
        name: str,
        config: EncoderConfig,
        frames: queue.Queue,
        fps_hint: Callable[[], float],
        pts_base_90k: int,
        deliver: Callable[[str, list[EncodedFrame]], None],
        on_encoded: Callable[[UpscaledFrame], None],
        on_error: Callable[[str], None],
        on_drop: Callable[[str, int], None] | None = None,
        max_queue_ms: int = 0,
        chunk_frames: int = 1,
        output_height: int = 0,
    ) -> None:
        """``output_height``: the stream's ``output_height``; upscaled frames of another size are
        scaled to it (the width by the input's aspect ratio) before the encoder; 0 = as they come."""
        self.name = name
        self._output_height = output_height
        self._on_drop = on_drop
        self._max_queue_ns = max_queue_ms * 1_000_000
        self._chunk_frames = chunk_frames
        self._config = config
        self._frames = frames
        self._fps_hint = fps_hint
        self._deliver = deliver  # (rendition, packets), called on this thread; must be thread-safe
        self._on_encoded = on_encoded
        self._on_error = on_error
        self._encoders: dict[str, VideoEncoder] = {}
        self._timings: dict[int, FrameTiming] = {}  # pts -> timing of frames inside the encoder
        self._pts_base = pts_base_90k
        self._first_pts_ms: int | None = None
        self.last_pts_90k = pts_base_90k
        self._thread = threading.Thread(target=self._run, name=f"encode-{name}", daemon=True)
        self._thread.start()

    def request_keyframe(self, rendition: str) -> None:
        enc = self._encoders.get(rendition)
        if enc is not None:
            enc.request_keyframe()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _encoder(self, rendition: str, frame: av.VideoFrame) -> VideoEncoder:
        enc = self._encoders.get(rendition)
        if enc is not None and (enc.width, enc.height) == (frame.width, frame.height):
            return enc
        if enc is not None:  # resolution change: finish the old bitstream, start a new one at an IDR
            self._deliver(rendition, [EncodedFrame(p) for p in enc.flush()])
        if rendition == "upscaled":
            enc = VideoEncoder(self._config, frame.width, frame.height, self._fps_hint())
        else:
            enc = VideoEncoder(
                self._config, frame.width, frame.height, self._fps_hint(),
                bitrate_bps=max(500_000, int(self._config.bitrate_bps * SOURCE_BITRATE_FRACTION)),
            )  # fmt: skip
        log.info(
            "[%s] %s encoder %s (%s) %dx%d",
            self.name,
            rendition,
            enc.codec_name,
            enc.preset,
            enc.width,
            enc.height,
        )
        self._encoders[rendition] = enc
        return enc

    def _pts(self, pts_ms: int) -> int:
        # Keep the RTP clock continuous across publisher reconnects: offset from this session's start.
        if self._first_pts_ms is None:
            self._first_pts_ms = pts_ms
        return self._pts_base + max(0, pts_ms - self._first_pts_ms) * 90

    def _run(self) -> None:
        failures = 0
        while True:
            item = self._frames.get()
            if item is END:
                break
            if failures >= MAX_CONSECUTIVE_ENCODER_FAILURES:
                continue  # gave up: keep draining so the engine worker never blocks on a full queue
            if self._too_late(item):
                continue
            try:
                self._encode(item)
                failures = 0
            except Exception as exc:
                # Restart: a fresh encoder begins with an IDR, so viewers recover at once.
                failures += 1
                log.exception("[%s] encoder failed (%d in a row); restarting it", self.name, failures)
                self._encoders.clear()
                if failures >= MAX_CONSECUTIVE_ENCODER_FAILURES:
                    self._on_error(f"encoder failed {failures} times in a row: {exc}")
        for rendition, enc in self._encoders.items():
            try:
                self._deliver(rendition, [EncodedFrame(p) for p in enc.flush()])
            except Exception:
                log.exception("[%s] %s encoder flush failed", self.name, rendition)

    def _too_late(self, item: UpscaledFrame) -> bool:
        """An encoder slower than the source drops frames that waited past the budget (live only)."""
        if not self._max_queue_ns or self._on_drop is None:
            return False
        # An engine emits a whole chunk at once: its last frame legitimately waits for the others.
        budget_ns = self._max_queue_ns + self._chunk_frames * 1e9 / self._fps_hint()
        if time.monotonic_ns() - item.timing.marks["engine_out"] <= budget_ns:
            return False
        self._on_drop("late", 1)
        return True

    def _output(self, item: UpscaledFrame) -> av.VideoFrame:
        """The upscaled frame at the stream's output size (a no-op when the engine already made it)."""
        if not self._output_height:
            return item.upscaled
        width, height = output_size(item.source.width, item.source.height, self._output_height)
        return resize(item.upscaled, width, height)

    def _encode(self, item: UpscaledFrame) -> None:
        upscaled = self._output(item)
        encoder = self._encoder("upscaled", upscaled)
        pts = encoder.next_pts(self._pts(item.timing.pts_ms))
        self.last_pts_90k = pts
        self._timings[pts] = item.timing
        encoded = []
        for p in encoder.encode(upscaled, pts):
            timing = self._timings.pop(p.pts, None)
            if timing is not None:
                timing.mark("encoded")
                # The frame as encoded and sent: the stream reports its size as the output size.
                self._on_encoded(UpscaledFrame(upscaled, item.source, timing))
            encoded.append(EncodedFrame(p, timing))
        self._deliver("upscaled", encoded)
        if self._config.source_rendition:
            # Same pts as the upscaled frame, so the viewer's compare mode shows the same instant.
            source = self._encoder("source", item.source).encode(item.source, pts)
            self._deliver("source", [EncodedFrame(p) for p in source])

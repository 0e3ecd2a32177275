"""DecodeThread: compressed H.264 access units in, decoded frames (with their timing) into the ring."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av

from livevsr.ingest.base import VideoPacket
from livevsr.pipeline.ring import FrameRing
from livevsr.telemetry.logs import RepeatSummary
from livevsr.telemetry.timing import FrameTiming

log = logging.getLogger(__name__)
# A publisher sending corrupt video gets one line a second, with the count, not one per packet.
_corrupt = RepeatSummary(log)

MAX_TIMINGS_IN_DECODER = 64  # far more than any decoder's reorder delay
BACKLOG_PACKETS = 300  # ~10 s at 30 fps of compressed input waiting for the decoder


@dataclass(slots=True)
class DecodedFrame:
    frame: av.VideoFrame
    timing: FrameTiming


_STOP = object()


class DecodeThread:
    """Decodes on its own thread; ``configure``/``submit``/``close`` are called from the event loop."""

    def __init__(
        self,
        name: str,
        ring: FrameRing[DecodedFrame],
        on_drop: Callable[[str, int], None],
        on_decoded: Callable[[DecodedFrame], None],
        lossless: bool = False,
    ) -> None:
        """``lossless``: never drop input; the source is held back instead (``PublishSession.drain``),
        so the backlog stays near its high-water mark plus one network read."""
        self.name = name
        self._ring = ring
        self._on_drop = on_drop
        self._on_decoded = on_decoded
        self._queue: queue.Queue = queue.Queue(maxsize=0 if lossless else BACKLOG_PACKETS)
        self._skip_to_keyframe = False
        self._ctx: av.CodecContext | None = None
        # Each frame finds its timing by pts. (PyAV's packet/frame ``opaque`` keys objects by id(),
        # which a recycled object address can clobber: frames silently lost their timing.)
        self._timings: dict[int, deque[FrameTiming]] = {}
        self._thread = threading.Thread(target=self._run, name=f"decode-{name}", daemon=True)
        self._thread.start()

    def configure(self, codec: str, extradata: bytes | None) -> None:
        self._put(("config", codec, extradata), force=True)

    def submit(self, packet: VideoPacket, timing: FrameTiming) -> None:
        if self._skip_to_keyframe:
            if not packet.keyframe:
                self._on_drop("ingest_backlog", 1)
                return
            self._skip_to_keyframe = False
        if not self._put(("packet", packet, timing)):
            # The decoder fell behind: drop until the next keyframe so the picture stays intact.
            self._skip_to_keyframe = True
            self._on_drop("ingest_backlog", 1)

    def backlog(self) -> int:
        """Packets waiting to be decoded."""
        return self._queue.qsize()

    def close(self) -> None:
        self._put(_STOP, force=True)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _put(self, item: object, force: bool = False) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            if not force:
                return False
            self._queue.put(item)  # control messages must arrive; the decoder drains quickly
            return True

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    self._decode(None, None)
                    break
                if item[0] == "config":
                    self._open(item[1], item[2])
                else:
                    self._decode(item[1], item[2])
        except Exception:  # a decoder bug must not take the process down
            log.exception("[%s] decoder thread failed", self.name)
        finally:
            self._ring.close()

    def _open(self, codec: str, extradata: bytes | None) -> None:
        if self._ctx is not None:
            self._decode(None, None)  # flush frames of the previous configuration
        ctx = av.CodecContext.create(codec, "r")
        if extradata:
            ctx.extradata = extradata
        self._ctx = ctx

    def _take_timing(self, pts: int | None) -> FrameTiming | None:
        waiting = self._timings.get(pts) if pts is not None else None
        if not waiting:
            return None
        timing = waiting.popleft()
        if not waiting:
            del self._timings[pts]
        # Timings of packets that never produced a frame (corrupt data) would pile up: drop stale ones.
        if len(self._timings) > MAX_TIMINGS_IN_DECODER:
            for stale in sorted(self._timings)[: len(self._timings) - MAX_TIMINGS_IN_DECODER]:
                del self._timings[stale]
        return timing

    def _decode(self, packet: VideoPacket | None, timing: FrameTiming | None) -> None:
        if self._ctx is None:
            if packet is not None:
                self._on_drop("decode_error", 1)  # video before its sequence header
            return
        try:
            if packet is None:
                frames = self._ctx.decode(None)
            else:
                pkt = av.Packet(packet.data)
                pkt.pts, pkt.dts = packet.pts_ms, packet.dts_ms
                self._timings.setdefault(packet.pts_ms, deque()).append(timing)
                frames = self._ctx.decode(pkt)
        except (av.error.FFmpegError, ValueError) as exc:
            if packet is not None:
                _corrupt.event(
                    logging.WARNING, "dropped corrupt video packets", f"stream {self.name}",
                    f"[{self.name}] dropped a corrupt video packet: {exc}",
                )  # fmt: skip
                self._on_drop("decode_error", 1)
            return
        for frame in frames:
            t = self._take_timing(frame.pts)
            if t is None:  # concealment output without its packet's timing
                continue
            t.mark("decoded")
            item = DecodedFrame(frame, t)
            self._on_decoded(item)
            self._ring.put(item)

"""EngineWorker: the thread that feeds whole chunks from the ring to the engine.

Outputs come back in input order, so the worker pairs each upscaled frame with its input (and the
input's timing) first-in first-out. A resolution change flushes the engine and reopens it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av

from livevsr.engines.base import Engine
from livevsr.pipeline.decode import DecodedFrame
from livevsr.pipeline.ring import FrameRing, RingClosed
from livevsr.telemetry.timing import FrameTiming

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ENGINE_ERRORS = 3


@dataclass(slots=True)
class UpscaledFrame:
    upscaled: av.VideoFrame
    source: av.VideoFrame
    timing: FrameTiming


END = None  # put on the output queue when the worker is done


class EngineWorker:
    def __init__(
        self,
        name: str,
        engine: Engine,
        ring: FrameRing[DecodedFrame],
        output: queue.Queue,
        fps_hint: Callable[[], float],
        on_error: Callable[[str], None],
        on_drop: Callable[[str, int], None],
        max_queue_ms: int = 0,
    ) -> None:
        self.name = name
        self._max_queue_ns = max_queue_ms * 1_000_000
        self.engine = engine
        self._ring = ring
        self._output = output
        self._fps_hint = fps_hint
        self._on_error = on_error
        self._on_drop = on_drop
        self._pending: deque[DecodedFrame] = deque()
        self._geometry: tuple[int, int] | None = None
        self._stop = threading.Event()
        self.busy_s = 0.0  # wall time inside the engine (open/push/flush): admission control's load
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop without draining (the decoder closing the ring is the graceful way)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        errors = 0
        try:
            while not self._stop.is_set():
                try:
                    chunk = self._ring.get_chunk(timeout=0.25)
                except RingClosed:
                    break
                if chunk is None:
                    continue
                if self._too_late(chunk):
                    continue
                try:
                    self._process(chunk)
                    errors = 0
                except Exception as exc:  # the engine failed on this chunk: drop it, reopen, go on
                    errors += 1
                    log.exception("[%s] engine %s failed", self.name, self.engine.name)
                    self._on_drop("engine_error", len(chunk) + len(self._pending))
                    self._pending.clear()
                    self._reset_engine()
                    if errors >= MAX_CONSECUTIVE_ENGINE_ERRORS:
                        self._on_error(f"engine {self.engine.name} failed {errors} times in a row: {exc}")
                        return
            self._finish()
        except Exception as exc:
            log.exception("[%s] engine worker failed", self.name)
            self._on_error(f"engine worker failed: {exc}")
        finally:
            self._close_engine()
            self._output.put(END)

    def _too_late(self, chunk: list[DecodedFrame]) -> bool:
        """Live streams stay live: a chunk that waited past the budget is dropped, not upscaled late."""
        if not self._max_queue_ns:
            return False
        waited = time.monotonic_ns() - chunk[-1].timing.marks["decoded"]
        if waited <= self._max_queue_ns:
            return False
        self._on_drop("late", len(chunk))
        return True

    def _process(self, chunk: list[DecodedFrame]) -> None:
        size = (chunk[0].frame.width, chunk[0].frame.height)
        if self._geometry != size:
            if self._geometry is not None:
                log.info(
                    "[%s] resolution changed %dx%d -> %dx%d: reopening the engine",
                    self.name,
                    *self._geometry,
                    *size,
                )
                self._emit(self._timed(self.engine.flush))
                self.engine.close()
            self._timed(self.engine.open, size[0], size[1], self._fps_hint())
            self._geometry = size
        # A chunk may straddle a resolution change: upscale the rest in the next round.
        same = list(itertools.takewhile(lambda d: (d.frame.width, d.frame.height) == size, chunk))
        rest = chunk[len(same) :]
        self._push(same)
        if rest:
            self._process(rest)

    def _push(self, items: list[DecodedFrame]) -> None:
        """Push a group; a short group is padded with its last frame and the padding's outputs dropped."""
        real = len(items)
        for d in items:
            d.timing.mark("engine_in")
            self._pending.append(d)
        frames = [d.frame for d in items]
        while len(frames) % self.engine.chunk:
            frames.append(items[-1].frame)
        outs: list[av.VideoFrame] = []
        for i in range(0, len(frames), self.engine.chunk):
            outs += self._timed(self.engine.push, frames[i : i + self.engine.chunk])
        if len(frames) > real:
            # End of input at this geometry: everything held comes out now; outputs beyond the
            # real frames belong to the padding and are discarded by _emit.
            self._emit(outs + self._timed(self.engine.flush))
            if self._pending:
                self._on_drop("engine_error", len(self._pending))
                self._pending.clear()
            self._reset_engine()
        else:
            self._emit(outs)

    def _timed(self, call: Callable, *args: object) -> list[av.VideoFrame]:
        t0 = time.monotonic()
        try:
            return call(*args)
        finally:
            self.busy_s += time.monotonic() - t0

    def _emit(self, outs: list[av.VideoFrame]) -> None:
        for out in outs:
            if not self._pending:
                break  # padding output
            src = self._pending.popleft()
            src.timing.mark("engine_out")
            self._output.put(UpscaledFrame(out, src.frame, src.timing))

    def _finish(self) -> None:
        if self._geometry is not None:
            self._emit(self._timed(self.engine.flush))

    def _reset_engine(self) -> None:
        self._close_engine()
        self._geometry = None

    def _close_engine(self) -> None:
        try:
            self.engine.close()
        except Exception:
            log.exception("[%s] engine close failed", self.name)

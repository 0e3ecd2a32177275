"""The engine interface every upscaler implements (engines/registry.py lists them and picks one).

Frames travel as ``av.VideoFrame`` in and out: the pipeline never touches pixels itself. Outputs come
back in input order; an engine with lookahead returns fewer frames than it was given while warming
up and the rest at ``flush()``. The worker pairs outputs with inputs first-in first-out, so per-frame
telemetry and timestamps never pass through the engine.

A stream's ``output_height`` is met after the engine (``engines/resize.py``): the encoder rescales
the engine's frames to it. An engine that can produce that size directly at no extra cost takes
``output_height`` at construction (bicubic does), which makes the encoder's rescale a no-op.
"""

from __future__ import annotations

from typing import Protocol

import av


class Engine(Protocol):
    name: str  # "bicubic", "flashvsr"
    scale: int  # native output size = scale x input size, exactly (unless given an output_height)
    chunk: int  # frames consumed per push (8 for flashvsr, 1 for bicubic)

    def open(self, width: int, height: int, fps: float) -> None:
        """Allocate per-stream state for this input geometry (called again after a resolution change)."""

    def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        """Consume exactly ``chunk`` frames; return the upscaled frames now ready (may be empty)."""
        ...

    def flush(self) -> list[av.VideoFrame]:
        """End of stream: return every frame still held (padding as the model needs)."""
        ...

    def close(self) -> None:
        """Release per-stream state; the engine may be opened again."""

"""Bicubic 4x upscale with libswscale: the baseline, and the engine on machines without a GPU."""

from __future__ import annotations

import av

from livevsr.engines.resize import output_size, resize


class BicubicEngine:
    name = "bicubic"
    chunk = 1

    def __init__(self, scale: int = 4, output_height: int = 0) -> None:
        """``output_height`` (the stream's ``output_height``): scale straight to that height, the width
        by the input's aspect ratio, instead of 4x and a second rescale in the encoder; 0 = 4x."""
        self.scale = scale
        self.output_height = output_height
        self._size: tuple[int, int] | None = None

    def open(self, width: int, height: int, fps: float) -> None:
        self._size = output_size(width, height, self.output_height, self.scale)

    def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        if self._size is None:
            raise RuntimeError("BicubicEngine.push before open")
        width, height = self._size
        return [resize(f, width, height) for f in frames]

    def flush(self) -> list[av.VideoFrame]:
        return []

    def close(self) -> None:
        self._size = None

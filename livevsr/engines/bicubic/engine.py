"""Bicubic 4x upscale with libswscale: the baseline, and the engine on machines without a GPU."""

from __future__ import annotations

import av


class BicubicEngine:
    name = "bicubic"
    chunk = 1

    def __init__(self, scale: int = 4) -> None:
        self.scale = scale
        self._size: tuple[int, int] | None = None

    def open(self, width: int, height: int, fps: float) -> None:
        self._size = (width * self.scale, height * self.scale)

    def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        if self._size is None:
            raise RuntimeError("BicubicEngine.push before open")
        width, height = self._size
        return [
            f.reformat(width=width, height=height, format="yuv420p", interpolation="BICUBIC") for f in frames
        ]

    def flush(self) -> list[av.VideoFrame]:
        return []

    def close(self) -> None:
        self._size = None

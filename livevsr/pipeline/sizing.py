"""What size a live input is upscaled from and sent out at, so that any input stays live.

The rule (README "Any input size"), applied to every publish once its size and frame rate are known:

1. The engine's input is the publisher's frame, downscaled (aspect ratio kept, even sizes) only as
   far as needed to meet two limits:
   - the engine's real-time input limit (``engine.max_input``; auto: the figure its registry entry
     declares), a pixel rate: at 60 fps half the pixels of 30 fps;
   - the output cap (``encoder.max_output``): the engine's output, 4x its input, at most
     3840x2160 a frame (H.264 level 5.1) and at most the pixel rate the encoder keeps up with
     (auto: level 5.1's 4K30 with NVENC; with libx264, what this CPU's cores encode per second).
2. Downscaled sizes come from one ladder of short sides (1080, 720, 540, 360, 270, 180, 90), so a
   16:9 input goes out at a familiar size: 3840x2160, 2560x1440, 1920x1080 or 1280x720.
3. The frame rate is never reduced: a faster input gets a smaller picture. A stream whose output
   still falls behind its input says so in /api/streams (``scaling.frame_rate``) and the viewer.

A stream's ``output_height`` is the user's explicit choice of output size and is not capped; its
engine input still meets the engine's limit. Files (``livevsr upscale``) are not live: never sized.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from livevsr.config import Config, parse_size_rate
from livevsr.engines.registry import EngineSpec
from livevsr.engines.resize import NATIVE_SCALE, output_size

log = logging.getLogger(__name__)

SHORT_SIDES = (1080, 720, 540, 360, 270, 180, 90)
LEVEL_51_FRAME = 3840 * 2160  # H.264 level 5.1 allows 36864 macroblocks a frame (~8.8 Mpixel)
LEVEL_51_RATE = 3840 * 2160 * 30  # and 983040 macroblocks a second: 4K at 30 fps
REPLAN_FPS_CHANGE = 0.1  # a learned frame rate this far from the planned one re-plans
SLOW_OUTPUT = 0.85  # output below this share of the input's fps is reported as falling behind


@dataclass(frozen=True)
class Limit:
    pixel_rate: float  # pixels a second
    frame_pixels: float  # pixels a frame (inf: only the rate counts)
    text: str  # e.g. "bicubic real-time limit 960x540@60 (swscale, measured)"


@dataclass(frozen=True)
class SizePlan:
    input: tuple[int, int]
    fps: float
    engine_input: tuple[int, int]
    output: tuple[int, int]
    reason: str

    @property
    def downscaled(self) -> bool:
        return self.engine_input != self.input

    def describe(self) -> str:
        w, h = self.input
        head = f"input {w}x{h}@{self.fps:g}"
        if self.downscaled:
            head += f" downscaled to {self.engine_input[0]}x{self.engine_input[1]}"
        return f"{head} ({self.reason}), output {self.output[0]}x{self.output[1]}"

    def as_dict(self) -> dict:
        return {
            "input": {"width": self.input[0], "height": self.input[1], "fps": self.fps},
            "engine_input": {"width": self.engine_input[0], "height": self.engine_input[1]},
            "output": {"width": self.output[0], "height": self.output[1], "fps": self.fps},
            "downscaled": self.downscaled,
            "reason": self.reason,
        }


def _even_scale(long: int, short: int, target: int) -> int:
    """``long * target / short`` rounded to the nearest even number (halves up), at least 2."""
    return max(2, 2 * ((long * target + short) // (2 * short)))


def _candidates(width: int, height: int) -> list[tuple[int, int]]:
    """The input itself, then the ladder's smaller sizes at its aspect ratio."""
    short = min(width, height)
    sizes = [(width, height)]
    for side in SHORT_SIDES:
        if side < short:
            if width >= height:
                sizes.append((_even_scale(width, height, side), side))
            else:
                sizes.append((side, _even_scale(height, width, side)))
    return sizes


def plan_sizes(
    width: int,
    height: int,
    fps: float,
    *,
    engine_limit: Limit | None,
    output_cap: Limit | None,
    output_height: int = 0,
    scale: int = NATIVE_SCALE,
) -> SizePlan:
    """The largest engine input on the ladder that meets both limits (the smallest if none does)."""
    fps = fps if fps > 0 else 30.0

    def broken(size: tuple[int, int]) -> Limit | None:
        w, h = size
        if engine_limit is not None and w * h * fps > engine_limit.pixel_rate:
            return engine_limit
        if output_cap is not None and not output_height:
            ow, oh = output_size(w, h, 0, scale)
            if ow * oh > output_cap.frame_pixels or ow * oh * fps > output_cap.pixel_rate:
                return output_cap
        return None

    candidates = _candidates(width, height)
    chosen, bound = candidates[-1], None
    for size in candidates:
        limit = broken(size)
        if limit is None:
            chosen = size
            break
        bound = limit
    if bound is None:
        reason = "within the engine's real-time limit and the output cap"
    elif broken(chosen) is not None:
        reason = f"{bound.text}; the smallest size on the ladder"
    else:
        reason = bound.text
    out = output_size(chosen[0], chosen[1], output_height, scale)
    return SizePlan((width, height), fps, chosen, out, reason)


def encoder_cap(config: Config, cores: int | None = None) -> Limit | None:
    """``encoder.max_output``: off, a WIDTHxHEIGHT@FPS, or auto (by the codec the encoder opens)."""
    value = config.encoder.max_output
    if value == "off":
        return None
    if value != "auto":
        w, h, f = parse_size_rate(value)
        return Limit(w * h * f, w * h, f"output cap {value} (encoder.max_output)")
    from livevsr.pipeline.encode import X264_HEADROOM, X264_MPIXEL_PER_CORE, pick_codec

    if pick_codec(config.encoder) == "libx264":
        cores = cores or os.cpu_count() or 1
        rate = X264_MPIXEL_PER_CORE["ultrafast"] * 1e6 * cores / X264_HEADROOM
        return Limit(rate, LEVEL_51_FRAME, (
            f"output cap {rate / 1e6:.0f} Mpixel/s: what libx264 encodes in real time on {cores} CPU cores"
        ))  # fmt: skip
    return Limit(LEVEL_51_RATE, LEVEL_51_FRAME, "output cap 3840x2160@30 (H.264 level 5.1)")


def engine_cap(config: Config, spec: EngineSpec) -> Limit | None:
    """``engine.max_input``: off, a WIDTHxHEIGHT@FPS, or auto (the registry's real-time limit)."""
    value = config.engine.max_input
    if value == "off":
        return None
    if value != "auto":
        w, h, f = parse_size_rate(value)
        return Limit(w * h * f, float("inf"), f"engine input limit {value} (engine.max_input)")
    limit = spec.realtime_input
    return Limit(limit.pixel_rate, float("inf"), f"{spec.name} real-time limit {limit} ({limit.basis})")


class LiveSizing:
    """One stream's rule (its engine's limit and its encoder's cap), planned per input geometry."""

    def __init__(self, config: Config, spec: EngineSpec, output_height: int) -> None:
        self._engine_limit = engine_cap(config, spec)
        self._output_cap = encoder_cap(config)
        self._output_height = output_height

    def plan(self, width: int, height: int, fps: float) -> SizePlan:
        return plan_sizes(
            width, height, fps, engine_limit=self._engine_limit, output_cap=self._output_cap,
            output_height=self._output_height,
        )  # fmt: skip

    @staticmethod
    def stale(plan: SizePlan | None, width: int, height: int, fps: float) -> bool:
        """Whether a frame of this size at this rate needs a new plan."""
        if plan is None or plan.input != (width, height):
            return True
        return fps > 0 and abs(fps - plan.fps) > REPLAN_FPS_CHANGE * plan.fps


def frame_rate_note(fps_in: float, fps_out: float) -> str | None:
    """Says so when the output keeps visibly fewer frames than the input sends."""
    if fps_in <= 0 or fps_out >= SLOW_OUTPUT * fps_in:
        return None
    return (
        f"the output keeps {fps_out:.0f} of the input's {fps_in:.0f} fps: this machine cannot keep up "
        "at this size (frames are dropped as late)"
    )

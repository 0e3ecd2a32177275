"""Every engine livevsr can run, in one table: what each needs, and how ``auto`` picks one.

An ``EngineSpec`` holds all the process needs to know about an engine: how to build one for a
stream, whether it can run here (and why not), what to load once per process, which device it
computes on (admission control counts load per device), how much of that device a starting session
reserves, and the input it keeps up with in real time (``pipeline/sizing.py`` fits a live input to
it). Adding an engine is one entry in ``ENGINES``; config validation, the CLI's ``--engine``
choices, ``auto``, preloading, admission and sizing all read this table.

Nothing here imports an engine's code until it is used: the config loader imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from livevsr.errors import EngineError

if TYPE_CHECKING:
    from livevsr.config import EngineConfig
    from livevsr.engines.base import Engine

AUTO = "auto"


@dataclass(frozen=True)
class RealtimeLimit:
    """The largest input an engine upscales in real time, as a frame size at a frame rate. What
    counts is the pixel rate (``width * height * fps``): at twice the frame rate, half the pixels."""

    width: int
    height: int
    fps: float
    basis: str  # where the figure comes from, for the log and /api/streams

    @property
    def pixel_rate(self) -> float:
        return self.width * self.height * self.fps

    def __str__(self) -> str:
        return f"{self.width}x{self.height}@{self.fps:g}"


@dataclass(frozen=True)
class EngineSpec:
    name: str
    # (config, auto) -> (usable here, why: "" when there is nothing to say); ``auto`` asks "is it
    # the right pick for auto", which may need more (a GPU) than an explicit engine.name does.
    check: Callable[[EngineConfig, bool], tuple[bool, str]]
    create: Callable[[EngineConfig, int], Engine]  # (config, the stream's output_height)
    device: Callable[[EngineConfig], str]  # "cpu", "cuda:0": where its load counts
    realtime_input: RealtimeLimit
    starting_load: float = 0.0  # share of its device a session holds until measured (admission)
    preload: Callable[[EngineConfig], None] | None = None  # once per process, off the event loop
    auto_rank: int | None = None  # auto tries engines by rank, lowest first; None: never auto


@dataclass(frozen=True)
class EngineChoice:
    name: str  # a key of ENGINES
    reason: str  # shown in the viewer and /api/streams

    @property
    def spec(self) -> EngineSpec:
        return engine_spec(self.name)


# -- bicubic ------------------------------------------------------------------------------------


def _bicubic_check(config: EngineConfig, auto: bool) -> tuple[bool, str]:
    return True, ""  # libswscale runs anywhere


def _bicubic_create(config: EngineConfig, output_height: int) -> Engine:
    from livevsr.engines.bicubic.engine import BicubicEngine

    return BicubicEngine(output_height=output_height)


# -- flashvsr -----------------------------------------------------------------------------------


def _cuda_status() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch"
    return True, f"CUDA GPU {torch.cuda.get_device_name(0)}"


def _weights_status(config: EngineConfig) -> tuple[bool, str]:
    cfg = config.flashvsr
    try:
        from livevsr.engines.flashvsr.weights import weights_available
    except ImportError as exc:  # the flashvsr package is optional at import time
        return False, f"flashvsr engine unavailable ({exc})"
    return weights_available(Path(cfg.weights_dir), cfg.variant)


def _flashvsr_check(config: EngineConfig, auto: bool) -> tuple[bool, str]:
    """auto wants it only on a CUDA GPU (real time); an explicit name on a CPU device is allowed."""
    cuda_ok, cuda_reason = _cuda_status()
    if (auto or config.flashvsr.device.startswith("cuda")) and not cuda_ok:
        if auto:
            weights_ok, weights_reason = _weights_status(config)
            return False, cuda_reason if weights_ok else f"{cuda_reason}; {weights_reason}"
        return False, f"{cuda_reason}; use engine.name: auto or bicubic"
    weights_ok, weights_reason = _weights_status(config)
    if not weights_ok:
        return False, weights_reason
    return True, f"FlashVSR weights found and {cuda_reason}" if auto else cuda_reason


def _flashvsr_create(config: EngineConfig, output_height: int) -> Engine:
    # FlashVSR stays at its native 4x; the encode worker rescales to the stream's output_height.
    from livevsr.engines.flashvsr.engine import FlashVSREngine

    return FlashVSREngine(config.flashvsr)


def _flashvsr_preload(config: EngineConfig) -> None:
    from livevsr.engines.flashvsr.engine import shared_models

    shared_models(config.flashvsr)


def _flashvsr_device(config: EngineConfig) -> str:
    device = config.flashvsr.device
    return "cuda:0" if device == "cuda" else device


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            "bicubic", _bicubic_check, _bicubic_create, lambda config: "cpu",
            # swscale's 4x costs ~1 ms a frame at this size on a 2-vCPU EPYC (BENCHMARKS.md, "Live
            # sizing"): the H.264 encoder of its 4x output, not the engine, is what runs out first.
            RealtimeLimit(960, 540, 60, "swscale, measured"),
            auto_rank=99,
        ),
        EngineSpec(
            "flashvsr", _flashvsr_check, _flashvsr_create, _flashvsr_device,
            # Declared, not yet measured here: the paper's Tiny pipeline runs 16.9 fps at 768x1408
            # out on an A100 (~1.1 Mpixel/s in); an H100 is assumed to reach about 3x that.
            RealtimeLimit(480, 270, 30, "declared from the paper's A100 figure, not measured"),
            # At live rates one stream needs most of a GPU: until measured, a starting session holds
            # the whole device, so two cannot start into one GPU at once.
            starting_load=1.0,
            preload=_flashvsr_preload,
            auto_rank=0,
        ),
    )
}  # fmt: skip


def engine_names() -> tuple[str, ...]:
    """The engines a config may name (besides ``auto``), in table order."""
    return tuple(ENGINES)


def engine_spec(name: str) -> EngineSpec:
    spec = ENGINES.get(name)
    if spec is None:
        raise EngineError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    return spec


def choose_engine(config: EngineConfig) -> EngineChoice:
    """Resolve ``engine.name`` (auto or an engine's name) to a concrete engine and a reason.

    An explicit engine that cannot run here is an error. ``auto`` takes the first usable engine by
    ``auto_rank`` and says why the better ones were passed over."""
    if config.name != AUTO:
        spec = engine_spec(config.name)
        ok, reason = spec.check(config, False)
        if not ok:
            raise EngineError(f"engine.name is {spec.name} but {reason}")
        why = f"; {reason}" if reason else " in the config"
        return EngineChoice(spec.name, f"engine.name is {spec.name}{why}")
    passed: list[str] = []
    ranked = sorted((s for s in ENGINES.values() if s.auto_rank is not None), key=lambda s: s.auto_rank)
    for spec in ranked:
        ok, reason = spec.check(config, True)
        if ok and not passed:
            return EngineChoice(spec.name, f"auto: {reason or spec.name + ' is the only choice'}")
        if ok:
            return EngineChoice(spec.name, f"auto: fell back to {spec.name} because {'; '.join(passed)}")
        passed.append(reason)
    raise EngineError(f"auto: no engine can run here ({'; '.join(passed)})")


def preload(choice: EngineChoice, config: EngineConfig) -> None:
    """Load the engine's weights once per process (blocking: call it off the event loop)."""
    spec = choice.spec
    if spec.preload is not None:
        spec.preload(config)


def create_engine(choice: EngineChoice, config: EngineConfig, *, output_height: int = 0) -> Engine:
    """A fresh engine instance for one stream (weights are shared where the engine shares them).

    ``output_height`` (the stream's; 0 = native): an engine that can make that size itself (bicubic)
    does; the others stay at their native 4x and the encoder rescales their frames.
    """
    return choice.spec.create(config, output_height)

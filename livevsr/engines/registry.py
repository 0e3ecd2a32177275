"""Pick and build the engine a stream runs, and say why it was chosen."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from livevsr.config import EngineConfig
from livevsr.engines.base import Engine
from livevsr.engines.bicubic.engine import BicubicEngine
from livevsr.errors import EngineError


@dataclass(frozen=True)
class EngineChoice:
    name: str  # "bicubic" or "flashvsr"
    reason: str  # shown in the viewer and /api/streams


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
    ok, reason = weights_available(Path(cfg.weights_dir), cfg.variant)
    return ok, reason


def choose_engine(config: EngineConfig) -> EngineChoice:
    """Resolve ``engine.name`` (auto, bicubic, flashvsr) to a concrete engine and a reason."""
    if config.name == "bicubic":
        return EngineChoice("bicubic", "engine.name is bicubic in the config")
    cuda_ok, cuda_reason = _cuda_status()
    weights_ok, weights_reason = _weights_status(config)
    if config.name == "flashvsr":
        if config.flashvsr.device.startswith("cuda") and not cuda_ok:
            raise EngineError(f"engine.name is flashvsr but {cuda_reason}; use engine.name: auto or bicubic")
        if not weights_ok:
            raise EngineError(f"engine.name is flashvsr but {weights_reason}")
        return EngineChoice("flashvsr", f"engine.name is flashvsr; {cuda_reason}")
    if cuda_ok and weights_ok:
        return EngineChoice("flashvsr", f"auto: FlashVSR weights found and {cuda_reason}")
    missing = "; ".join(r for ok, r in ((cuda_ok, cuda_reason), (weights_ok, weights_reason)) if not ok)
    return EngineChoice("bicubic", f"auto: fell back to bicubic because {missing}")


def preload(choice: EngineChoice, config: EngineConfig) -> None:
    """Load the engine's weights once per process (blocking: call it off the event loop)."""
    if choice.name == "flashvsr":
        from livevsr.engines.flashvsr.engine import shared_models

        shared_models(config.flashvsr)


def create_engine(choice: EngineChoice, config: EngineConfig, *, output_height: int = 0) -> Engine:
    """A fresh engine instance for one stream; FlashVSR weights are shared (``shared_models``).

    ``output_height`` (the stream's; 0 = native): bicubic scales straight to that size; FlashVSR
    stays at its native 4x and the encoder rescales its frames.
    """
    if choice.name == "bicubic":
        return BicubicEngine(output_height=output_height)
    from livevsr.engines.flashvsr.engine import FlashVSREngine

    return FlashVSREngine(config.flashvsr)

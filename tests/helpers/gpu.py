"""Skip markers for tests that need a CUDA GPU."""

from __future__ import annotations

import pytest
import torch


def cuda_cupy_available() -> bool:
    """A CUDA device that both torch and cupy can see."""
    if not torch.cuda.is_available():
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(
    not cuda_cupy_available(), reason="needs a CUDA GPU and cupy (cupy-cuda13x) for the cupy kernels"
)

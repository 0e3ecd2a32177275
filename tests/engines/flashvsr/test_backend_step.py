"""One engine step per attention backend against the reference backend, through the real engine.

A small random DiT with 128-dim heads (what the cupy kernels take) runs a stream's first step
(3 chunks, bidirectional) and one steady step (through the KV cache) with each backend; every
self-attention output (each layer, each step) and the DiT's velocity are compared with the
reference backend's (the velocity alone would hide a wrong attention: with random weights it moves
by under 2% when attention outputs zeros). On the CPU: FlexAttention (eager)
in float32. On a CUDA GPU: also the cupy kernels, in bfloat16. Compiled FlexAttention is compared
with the kernels by ``livevsr bench attention`` (attn_vs_flex_max_abs_diff), where it is compiled
once per size rather than once per test.
"""

from __future__ import annotations

from collections.abc import Callable

import av
import numpy as np
import pytest
import torch

from livevsr.config import FlashVSRConfig
from livevsr.engines.flashvsr.attention import FlexBackend, ReferenceBackend
from livevsr.engines.flashvsr.dit import DiTConfig
from livevsr.engines.flashvsr.engine import FlashVSREngine, random_models
from tests.helpers.gpu import cuda_cupy_available

DIT = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, freq_dim=32, text_dim=64)
IN_W, IN_H = 96, 64  # 384x256 out: 3 x 2 blocks of 128 px, S = 6


def _frames(n: int) -> list[av.VideoFrame]:
    yy, xx = np.mgrid[0:IN_H, 0:IN_W]
    return [
        av.VideoFrame.from_ndarray(
            np.stack([(xx * 5 + 3 * t) % 256, (yy * 7 + t) % 256, ((xx ^ yy) + 2 * t) % 256], -1).astype(
                np.uint8
            ),
            format="rgb24",
        )
        for t in range(n)
    ]


def _step_outputs(backend: str, device: str, dtype: str) -> dict[str, list[torch.Tensor]]:
    """Self-attention outputs (one per layer and step) and the DiT's velocity of step 0 and step 1
    with ``backend``; same weights and frames each time."""
    cfg = FlashVSRConfig(device=device, dtype=dtype, attention="reference")
    models = random_models(cfg, DIT, proj_hidden=(32, 32), decoder_channels=(8, 8, 8, 8), prompt_tokens=8)
    engine = FlashVSREngine(cfg, weights=models)
    if backend == "cupy":
        from livevsr.engines.flashvsr import kernels

        engine._backend = kernels.CupyAttentionBackend(device, layers=DIT.num_layers, heads=DIT.num_heads)
    elif backend == "flex":
        engine._backend = FlexBackend(compile=False)
    else:
        engine._backend = ReferenceBackend()
    engine.open(IN_W, IN_H, 30.0)
    session = engine._session
    assert session is not None and session.spec.geom.blocks_per_chunk == 6
    out: dict[str, list[torch.Tensor]] = {"attention": [], "velocity": []}
    dit, attend = session.dit, session.backend.attend

    def record(key: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
            y = fn(*args, **kwargs)
            out[key].append(y.float().cpu())
            return y

        return wrapper

    session.dit = record("velocity", dit)  # type: ignore[method-assign]
    session.backend.attend = record("attention", attend)  # type: ignore[method-assign]
    frames = _frames(40)
    emitted = [len(engine.push(frames[i : i + 8])) for i in range(0, 40, 8)]
    assert emitted == [0, 0, 0, 21, 8]
    assert len(out["velocity"]) == 2 and len(out["attention"]) == 2 * DIT.num_layers
    engine.close()
    return out


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


CASES = [("flex", "cpu", "float32", 1e-4)]
if cuda_cupy_available():
    CASES += [("cupy", "cuda", "bfloat16", 5e-2), ("flex", "cuda", "bfloat16", 5e-2)]


@pytest.mark.parametrize("backend,device,dtype,tol", CASES, ids=[f"{b}-{d}-{t}" for b, d, t, _ in CASES])
def test_engine_step_matches_the_reference_backend(backend: str, device: str, dtype: str, tol: float) -> None:
    want = _step_outputs("reference", device, dtype)
    got = _step_outputs(backend, device, dtype)
    for i, (g, w) in enumerate(zip(got["attention"], want["attention"], strict=True)):
        step, layer = divmod(i, DIT.num_layers)
        assert torch.isfinite(w).all() and w.norm() > 0
        err = _relative_error(g, w)
        print(
            f"{backend} on {device} {dtype}, step {step} layer {layer}: attention relative L2 error {err:.3g}"
        )
        assert err < tol, f"step {step} layer {layer}: {err:.3g}"
    for step, (g, w) in enumerate(zip(got["velocity"], want["velocity"], strict=True)):
        err = _relative_error(g, w)
        print(f"{backend} on {device} {dtype}, step {step}: velocity relative L2 error {err:.3g}")
        assert err < tol, f"step {step} velocity: {err:.3g}"

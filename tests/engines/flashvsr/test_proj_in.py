"""LQ proj-in: checkpoint layout at full size; v1.0 clip independence and v1.1 causality (tiny)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from livevsr.engines.flashvsr.proj_in import (
    BufferLQ4xProj,
    CausalLQ4xProj,
    LQ4xProj,
    build_proj_in,
    space_to_depth_3d,
)

FULL_SHAPES = {
    "conv1.weight": (2048, 768, 4, 3, 3),
    "conv1.bias": (2048,),
    "norm1.gamma": (2048, 1, 1, 1),
    "conv2.weight": (3072, 2048, 4, 3, 3),
    "conv2.bias": (3072,),
    "norm2.gamma": (3072, 1, 1, 1),
    "linear_layers.0.weight": (1536, 3072),
    "linear_layers.0.bias": (1536,),
}
TINY = {"in_dim": 3, "out_dim": 6, "hidden_dims": (8, 12)}


@pytest.mark.parametrize("cls", [BufferLQ4xProj, CausalLQ4xProj])
def test_full_size_keys_shapes_and_parameter_count(cls: type[LQ4xProj]) -> None:
    with torch.device("meta"):
        m = cls()
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == FULL_SHAPES
    assert sum(p.numel() for p in m.parameters()) == 287_845_888  # spec section 4


def _seeded(cls: type[LQ4xProj]) -> LQ4xProj:
    torch.manual_seed(0)
    m = cls(**TINY)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m


def _video(seed: int, frames: int = 13) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, 32, 48, generator=g) * 2 - 1  # 4 latents' worth plus frame 0


def _stream(m: LQ4xProj, video: torch.Tensor) -> list[torch.Tensor]:
    m.reset()
    m.warmup(video[:, :, :1])
    n = (video.shape[2] - 1) // 4
    return [m.forward_clip(video[:, :, 1 + 4 * j : 5 + 4 * j]) for j in range(n)]


def _conv(m: LQ4xProj, name: str, x: torch.Tensor) -> torch.Tensor:
    """A plain conv3d over frames that are already temporally padded; replicate 1 px spatially."""
    conv = getattr(m, name)
    return F.conv3d(F.pad(x, (1, 1, 1, 1, 0, 0), mode="replicate"), conv.weight, conv.bias, stride=(2, 1, 1))


def _act(m: LQ4xProj, name: str, x: torch.Tensor) -> torch.Tensor:
    gamma = getattr(m, name).gamma
    return F.silu(F.normalize(x, dim=1) * x.shape[1] ** 0.5 * gamma)


def _tokens(m: LQ4xProj, x: torch.Tensor) -> torch.Tensor:
    return m.linear_layers[0](x.flatten(2).transpose(1, 2))


def test_space_to_depth_channel_order() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 1, 4, 4)
    y = space_to_depth_3d(x, 1, 2, 2)  # [1, 8, 1, 2, 2]
    # channel c*4 + dy*2 + dx holds pixel (2*i + dy, 2*j + dx) of input channel c
    assert y[0, 1 * 4 + 1 * 2 + 0, 0, 1, 0] == x[0, 1, 0, 3, 0]
    assert y[0, 0 * 4 + 0 * 2 + 1, 0, 0, 1] == x[0, 0, 0, 0, 3]


@torch.no_grad()
def test_v10_clip_sees_its_own_tail_and_ignores_the_past() -> None:
    m = _seeded(BufferLQ4xProj)
    a, b = _video(1), _video(2)
    b[:, :, 9:13] = a[:, :, 9:13]  # same last clip, different history
    out_a, out_b = _stream(m, a), _stream(m, b)
    assert out_a[2].shape == (1, (32 // 16) * (48 // 16), 6)
    torch.testing.assert_close(out_a[2], out_b[2], rtol=0, atol=0)
    assert not torch.allclose(out_a[1], out_b[1])

    # conv1 sees [f2 f3 f0 f1 f2 f3], conv2 sees [a b a b] (spec section 4)
    clip = space_to_depth_3d(a[:, :, 9:13], 1, 16, 16)
    x = _act(m, "norm1", _conv(m, "conv1", torch.cat([clip[:, :, 2:], clip], dim=2)))
    x = _act(m, "norm2", _conv(m, "conv2", torch.cat([x, x], dim=2)))
    torch.testing.assert_close(out_a[2], _tokens(m, x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_v11_is_causal_and_equals_one_pass_over_the_sequence() -> None:
    m = _seeded(CausalLQ4xProj)
    a, b = _video(1), _video(2)
    b[:, :, 3:13] = a[:, :, 3:13]  # clips 1 and 2 equal, and so is the tail of clip 0
    out_a, out_b = _stream(m, a), _stream(m, b)
    # latent 1's conv2 cache holds clip 0's conv1 output, which saw frames 1 and 2
    assert not torch.allclose(out_a[1], out_b[1])
    # latent 2 reaches back through both caches only to frame 3
    torch.testing.assert_close(out_a[2], out_b[2], rtol=1e-5, atol=1e-5)

    # Oracle: one causal conv pass over [f0 f0 f0 f0 f1 ... f12] with replicate front padding,
    # dropping conv2's first output (it belongs to the discarded warm-up clip).
    seq = torch.cat([a[:, :, :1].repeat(1, 1, 3, 1, 1), a], dim=2)
    x = space_to_depth_3d(seq, 1, 16, 16)
    x = _act(m, "norm1", _conv(m, "conv1", torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)))
    x = _act(m, "norm2", _conv(m, "conv2", torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)))
    want = [_tokens(m, x[:, :, j : j + 1]) for j in range(1, x.shape[2])]
    assert len(want) == len(out_a) == 3
    for got, ref in zip(out_a, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

    out_again = _stream(m, a)  # reset() forgets the previous stream
    torch.testing.assert_close(out_again[0], out_a[0], rtol=0, atol=0)


def test_misuse_is_refused() -> None:
    m = build_proj_in("v1.1", **TINY)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="warmup"):
        m.forward_clip(torch.zeros(1, 3, 4, 32, 32))
    m.warmup(torch.zeros(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected \[B, 3, 4, H, W\], got \[1, 3, 8, 32, 32\]"):
        m.forward_clip(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="multiples of 16, got 32x40"):
        m.forward_clip(torch.zeros(1, 3, 4, 32, 40))
    with pytest.raises(ValueError, match="'v2'"):
        build_proj_in("v2")
    assert isinstance(build_proj_in("v1.0", **TINY), BufferLQ4xProj)  # type: ignore[arg-type]

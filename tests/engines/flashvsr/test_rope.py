"""3-D RoPE: the Wan2.1 channel split and rotation, and positions far beyond the official 1024 table."""

from __future__ import annotations

import torch

from livevsr.engines.flashvsr.rope import (
    apply_rope,
    block_positions,
    from_blocks,
    rope_angles,
    rope_cos_sin,
    rope_split,
    to_blocks,
)


def _official_rope(x: torch.Tensor, pos: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Wan2.1's complex float64 rotation with per-axis tables (spec section 2.4), positions < table size."""
    t_dim, h_dim, w_dim = rope_split(head_dim)

    def table(part: int) -> torch.Tensor:
        inv = 1.0 / 10000.0 ** (torch.arange(0, part, 2).double() / part)
        return torch.polar(
            torch.ones(64, part // 2, dtype=torch.float64), torch.outer(torch.arange(64).double(), inv)
        )

    freqs = torch.cat([table(t_dim)[pos[:, 0]], table(h_dim)[pos[:, 1]], table(w_dim)[pos[:, 2]]], dim=1)
    xc = torch.view_as_complex(x.double().reshape(x.shape[0], x.shape[1], -1, 2))
    return torch.view_as_real(xc * freqs[:, None]).flatten(2).to(x.dtype)


def test_split_matches_wan_for_head_dim_128_and_stays_even() -> None:
    assert rope_split(128) == (44, 42, 42)
    assert rope_split(32) == (12, 10, 10)
    for d in range(6, 260, 2):
        parts = rope_split(d)
        assert sum(parts) == d and all(p % 2 == 0 for p in parts)


def test_rotation_matches_the_official_complex_float64_rope() -> None:
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 64, (50, 3), generator=g)
    x = torch.randn(50, 3, 128, generator=g)
    got = apply_rope(x, *rope_cos_sin(pos, 128))
    torch.testing.assert_close(got, _official_rope(x, pos, 128), atol=1e-5, rtol=1e-5)
    xb = x.bfloat16()
    diff = (apply_rope(xb, *rope_cos_sin(pos, 128)).float() - _official_rope(xb, pos, 128).float()).abs()
    assert diff.max() <= 2**-7 * x.abs().max()  # at most one bf16 rounding step apart


def test_huge_positions_give_the_same_scores_as_small_ones_with_the_same_offsets() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(40, 2, 32, generator=g)
    k = torch.randn(40, 2, 32, generator=g)
    small = torch.stack([torch.arange(40) % 7, torch.arange(40) % 5, torch.arange(40) % 3], 1)
    shift = torch.tensor([1_000_000, 0, 0])
    scores = []
    for pos in (small, small + shift):
        cos, sin = rope_cos_sin(pos, 32)
        scores.append(torch.einsum("ihd,jhd->hij", apply_rope(q, cos, sin), apply_rope(k, cos, sin)))
    torch.testing.assert_close(scores[1], scores[0], atol=1e-4, rtol=1e-4)
    # and the angle itself is exact in float64 far past the official 1023-frame limit
    ang = rope_angles(torch.tensor([[10**9, 0, 0]]), 32)
    assert ang[0, 0].item() == 1e9


def test_block_order_round_trips_and_positions_follow_it() -> None:
    f, h, w = 4, 8, 16
    grid = torch.arange(f * h * w * 2).reshape(f, h, w, 2)
    blocks = to_blocks(grid, f, h, w)
    assert torch.equal(from_blocks(blocks, f, h, w), grid)
    pos = block_positions(10, f, h, w)
    assert pos.shape == (f * h * w, 3)
    # first block: frames 10, 11 x rows 0..7 x cols 0..7, order (df, dy, dx)
    assert pos[:3].tolist() == [[10, 0, 0], [10, 0, 1], [10, 0, 2]]
    assert pos[64].tolist() == [11, 0, 0]
    assert pos[128].tolist() == [10, 0, 8]  # second block of the chunk: next 8 columns
    assert pos[128 * 2].tolist() == [12, 0, 0]  # next chunk

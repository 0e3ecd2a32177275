"""3-D rotary position embedding of the Wan2.1 DiT, for positions that never run out.

Each head's channels are split into a time, a row and a column part (44/42/42 for head_dim 128,
spec section 2.4); adjacent channel pairs (2k, 2k+1) are rotated as complex numbers by
``position * 10000^(-2k/part)``. The official code slices a precomputed 1024-entry table, so a
video stops at latent frame 1023; a live stream does not stop. Here the angles are computed for
whatever integer positions are asked, in float64 (an angle of 1e9 rad still keeps ~1e-7 rad of
precision), and only then cast down, so a stream can run for as long as it likes.
"""

from __future__ import annotations

import torch

THETA = 10000.0


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of one head given to (time, row, column); each part is even.

    head_dim 128 gives (44, 42, 42) as in Wan2.1; tiny test configs follow the same rule.
    """
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"rope: head_dim must be even and >= 6, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _inv_freq(part: int, device: torch.device | None) -> torch.Tensor:
    """[part/2] float64: 10000^(-2i/part), i = 0 .. part/2 - 1 (Wan's precompute_freqs_cis)."""
    return 1.0 / THETA ** (torch.arange(0, part, 2, dtype=torch.float64, device=device) / part)


def rope_angles(positions: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rotation angles for tokens at integer (t, y, x) positions.

    positions: [L, 3] integer (int64) tensor; returns [L, head_dim / 2] float64 angles laid out as
    the head's channel pairs: time pairs first, then row, then column.
    """
    t_dim, h_dim, w_dim = rope_split(head_dim)
    pos = positions.to(torch.float64)
    dev = positions.device
    return torch.cat(
        [
            pos[:, 0:1] * _inv_freq(t_dim, dev),
            pos[:, 1:2] * _inv_freq(h_dim, dev),
            pos[:, 2:3] * _inv_freq(w_dim, dev),
        ],
        dim=1,
    )


def rope_cos_sin(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of :func:`rope_angles`, each [L, 1, head_dim / 2] float32 (broadcast over heads).

    float32 is plenty for the rotation itself once the angle is reduced in float64; it keeps the
    per-token work off the GPU's slow float64 units.
    """
    ang = rope_angles(positions, head_dim)
    return torch.cos(ang).float().unsqueeze(1), torch.sin(ang).float().unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [L, heads, head_dim] by angles given as cos/sin [L, 1, head_dim/2].

    Computed in float32 and cast back to x's dtype.
    """
    xf = x.float().unflatten(-1, (-1, 2))  # [L, H, D/2, 2] = (re, im)
    re, im = xf[..., 0], xf[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def block_positions(
    t0: int, frames: int, rows: int, cols: int, device: torch.device | None = None
) -> torch.Tensor:
    """(t, y, x) positions [frames*rows*cols, 3] int64 of latent tokens in block-major order.

    Blocks are 2 latent frames x 8 x 8 tokens, ordered (chunk, by, bx) with (df, dy, dx) inside
    (spec section 3.1); this is the order the DiT keeps its tokens in. ``t0`` is the absolute
    latent-frame index of the first frame; rows and cols count latent tokens over the whole frame.
    """
    t = torch.arange(t0, t0 + frames, dtype=torch.int64, device=device)
    y = torch.arange(rows, dtype=torch.int64, device=device)
    x = torch.arange(cols, dtype=torch.int64, device=device)
    grid = torch.stack(torch.meshgrid(t, y, x, indexing="ij"), dim=-1)  # [f, h, w, 3]
    return to_blocks(grid, frames, rows, cols).reshape(-1, 3)


def to_blocks(x: torch.Tensor, frames: int, rows: int, cols: int) -> torch.Tensor:
    """[f, h, w, C] in (frame, row, column) order -> [f*h*w, C] in block-major order."""
    c = x.shape[-1]
    x = x.reshape(frames // 2, 2, rows // 8, 8, cols // 8, 8, c)
    return x.permute(0, 2, 4, 1, 3, 5, 6).reshape(frames * rows * cols, c)


def from_blocks(x: torch.Tensor, frames: int, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_blocks`: [f*h*w, C] block-major -> [f, h, w, C]."""
    c = x.shape[-1]
    x = x.reshape(frames // 2, rows // 8, cols // 8, 2, 8, 8, c)
    return x.permute(0, 3, 1, 4, 2, 5, 6).reshape(frames, rows, cols, c)

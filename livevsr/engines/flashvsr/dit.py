"""The Wan2.1 T2V-1.3B diffusion transformer as FlashVSR runs it: one step, streamed chunk by chunk.

Attribute names equal the official checkpoint keys (``blocks.3.self_attn.q.weight``, ``head.head.bias``,
...), so ``diffusion_pytorch_model_streaming_dmd.safetensors`` loads with ``strict=True`` and no
renaming. Numerics follow flashvsr_spec.md section 2: LayerNorm eps 1e-6 without affine for the
modulated norms, RMSNorm over all channels in fp32, GELU(tanh), constant t = 1000.

Differences from the official streaming code, all exact re-arrangements of the same maths:
- Tokens are kept in block-major order (2 latent frames x 8 x 8 tokens per block, spec section 3.1)
  from the patch embedding to the head. Every layer but self-attention is per token, so this
  only saves the partition/reverse pair around each attention.
- RoPE angles come from integer positions (rope.py), so the time index is never capped.
- Whatever depends only on the prompt and the timestep (cross-attention K/V, time modulation) is
  computed once by :meth:`WanDiT.precompute` and reused by every step of every stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from livevsr.engines.flashvsr.attention import BlockGeometry, SelfAttentionBackend
from livevsr.engines.flashvsr.rope import apply_rope, block_positions, from_blocks, rope_cos_sin, to_blocks

TIMESTEP = 1000.0  # one-step FlashVSR always runs at t = 1000 (sigma = 1), spec section 1.3


@dataclass(frozen=True)
class DiTConfig:
    """Wan2.1 DiT hyper-parameters; the defaults are the 1.3B model FlashVSR ships (spec section 2.1)."""

    dim: int = 1536  # model width
    ffn_dim: int = 8960  # feed-forward hidden width
    num_heads: int = 12  # head_dim = dim / num_heads = 128
    num_layers: int = 30
    in_dim: int = 16  # latent channels in
    out_dim: int = 16  # latent channels out (the flow velocity)
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) latent cells per token
    freq_dim: int = 256  # sinusoidal timestep embedding width
    text_dim: int = 4096  # T5 embedding width of the prompt tensor
    eps: float = 1e-6  # LayerNorm and RMSNorm epsilon

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


def sinusoidal_embedding(dim: int, position: float) -> torch.Tensor:
    """[1, dim] float64: [cos | sin] of position * 10000^(-k/(dim/2)), k < dim/2 (Wan2.1)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    angles = position * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)])[None]


class RMSNorm(nn.Module):
    """Normalise over the last dim in fp32, cast back, then scale (Wan2.1 ``WanRMSNorm``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class _Attention(nn.Module):
    """q, k, v, o projections with q/k RMSNorm, named as the checkpoint keys (``blocks.N.*_attn.q`` ...)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)


class SelfAttention(_Attention):
    """q/k RMSNorm + RoPE, then the streaming block-sparse attention of the backend."""

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        layer: int,
        backend: SelfAttentionBackend,
        geom: BlockGeometry,
    ) -> torch.Tensor:
        """x: [L, dim] block-major; rope: cos, sin [L, 1, head_dim/2]. Returns [L, dim]."""
        heads = (self.num_heads, -1)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), *rope)  # [L, H, D]
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, heads), *rope)
        v = self.v(x).unflatten(-1, heads)
        out = backend.attend(layer, q, k, v, geom)  # [L, H, D]
        return self.o(out.flatten(1))


class CrossAttention(_Attention):
    """Dense attention to the fixed prompt; its K/V are computed once (:meth:`context_kv`)."""

    def context_kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx: [S_ctx, dim] embedded prompt -> K, V each [heads, S_ctx, head_dim]."""
        k = self.norm_k(self.k(ctx)).unflatten(-1, (self.num_heads, -1)).transpose(0, 1)
        v = self.v(ctx).unflatten(-1, (self.num_heads, -1)).transpose(0, 1)
        return k.contiguous(), v.contiguous()

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: [L, dim]; kv from :meth:`context_kv`. Returns [L, dim]."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)).transpose(0, 1)  # [H, L, D]
        out = F.scaled_dot_product_attention(q[None], kv[0][None], kv[1][None])[0]  # [H, L, D]
        return self.o(out.transpose(0, 1).flatten(1))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.cross_attn = CrossAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        mod: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        rope: tuple[torch.Tensor, torch.Tensor],
        layer: int,
        backend: SelfAttentionBackend,
        geom: BlockGeometry,
    ) -> torch.Tensor:
        """x: [L, dim]; mod: [6, dim] = modulation + t_mod (shift, scale, gate for attn, then ffn)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(0)
        a = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.self_attn(a, rope, layer, backend, geom)
        x = x + self.cross_attn(self.norm3(x), cross_kv)  # no modulation, no gate
        a = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.ffn(a)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """x: [L, dim]; mod: [2, dim] = modulation + t (shift, scale). Returns [L, out_dim * prod(patch)]."""
        return self.head(self.norm(x) * (1 + mod[1]) + mod[0])


@dataclass
class DiTConstants:
    """What depends only on the weights, the prompt and t = 1000: computed once, shared by every stream."""

    block_mod: list[torch.Tensor]  # per block [6, dim]: modulation + t_mod
    head_mod: torch.Tensor  # [2, dim]: head.modulation + t
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block K, V [heads, S_ctx, head_dim]


class WanDiT(nn.Module):
    def __init__(self, cfg: DiTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DiTConfig()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(
            cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    @torch.no_grad()
    def precompute(self, context: torch.Tensor, timestep: float = TIMESTEP) -> DiTConstants:
        """Prompt K/V and time modulation. context: [1, S_ctx, text_dim] or [S_ctx, text_dim].

        Mirrors ``init_cross_kv`` (spec sections 1.3, 1.4): the sinusoid is computed in float64 and
        cast to the model dtype before ``time_embedding``.
        """
        p = self.patch_embedding.weight
        t = self.time_embedding(
            sinusoidal_embedding(self.cfg.freq_dim, timestep).to(p.device, p.dtype)
        )  # [1, dim]
        t_mod = self.time_projection(t).unflatten(1, (6, self.cfg.dim))[0]  # [6, dim]
        ctx = self.text_embedding(
            context.reshape(-1, self.cfg.text_dim).to(p.device, p.dtype)
        )  # [S_ctx, dim]
        return DiTConstants(
            block_mod=[(b.modulation[0] + t_mod).contiguous() for b in self.blocks],
            head_mod=(self.head.modulation[0] + t).contiguous(),
            cross_kv=[b.cross_attn.context_kv(ctx) for b in self.blocks],
        )

    def forward(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor | None,
        t0: int,
        consts: DiTConstants,
        backend: SelfAttentionBackend,
        geom: BlockGeometry,
    ) -> torch.Tensor:
        """Flow velocity for the latent frames of one streaming step.

        latents: [1, in_dim, f, H/8, W/8] (f even; 6 on a stream's first step, then 2);
        cond: [1, f * H/16 * W/16, dim] proj-in tokens in (frame, row, column) order, added before
        block 0, or None; t0: absolute latent-frame index of the first frame (RoPE time position).
        The backend attends to its own KV cache and updates it. Returns [1, out_dim, f, H/8, W/8].
        """
        p = self.patch_embedding.weight
        pt, ph, pw = self.cfg.patch_size
        x = self.patch_embedding(latents.to(p.dtype))[0]  # [dim, f, h, w]
        dim, f, h, w = x.shape
        x = x.permute(1, 2, 3, 0)  # [f, h, w, dim]
        if cond is not None:
            x = x + cond.reshape(f, h, w, dim).to(x.dtype)
        x = to_blocks(x, f, h, w)  # [L, dim] block-major
        rope = rope_cos_sin(block_positions(t0, f, h, w, device=x.device), self.cfg.head_dim)
        for layer, block in enumerate(self.blocks):
            x = block(x, consts.block_mod[layer], consts.cross_kv[layer], rope, layer, backend, geom)
        x = from_blocks(self.head(x, consts.head_mod), f, h, w)  # [f, h, w, pt*ph*pw*out]
        # unpatchify: (f h w) (pt ph pw c) -> c (f pt) (h ph) (w pw)
        x = x.reshape(f, h, w, pt, ph, pw, self.cfg.out_dim).permute(6, 0, 3, 1, 4, 2, 5)
        return x.reshape(1, self.cfg.out_dim, f * pt, h * ph, w * pw)

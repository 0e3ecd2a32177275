"""LQ proj-in: the LR conditioning path into the FlashVSR DiT (spec section 4 and appendix A).

Each latent frame's token bias comes from 4 upscaled LR frames: 16x16 space-to-depth, two causal
3-D convolutions that halve time twice (4 frames -> 2 -> 1), RMS norms, SiLU and one linear layer.
The result is added to the DiT tokens before block 0.

Two variants share the layers (and the checkpoint keys ``conv1.*``, ``norm1.gamma``, ``conv2.*``,
``norm2.gamma``, ``linear_layers.0.*``) and differ only in what a clip's convolutions see in front:

- ``BufferLQ4xProj`` (v1.0, ``Buffer_LQ4x_Proj``, ``utils.py:132-164``): a clip [f0 f1 f2 f3] is
  padded with its *own* last two frames, so conv1 sees [f2 f3 f0 f1 f2 f3] and conv2 [a b a b].
  Clips are independent; the first call (frame 0 repeated) is computed upstream and thrown away.
- ``CausalLQ4xProj`` (v1.1, ``Causal_LQ4x_Proj``): a clip is padded with the *previous* clip's last
  two frames, at each convolution, so the conditioning depends on the past. The first call seeds
  that cache from frame 0 repeated four times.

Streaming use, per stream: ``reset()``, ``warmup(lr[:, :, :1])``, then ``forward_clip`` on LR
frames 4j+1..4j+4 for latent j (spec section 1.5).
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

SPACE_FACTOR = 16  # HR pixels per latent token side: VAE /8 x DiT patch 2
CLIP_FRAMES = 4  # LR frames per latent frame
CACHE_FRAMES = 2  # frames each causal convolution keeps from the clip in front


def space_to_depth_3d(x: torch.Tensor, ft: int, fy: int, fx: int) -> torch.Tensor:
    """``b c (f ft) (h fy) (w fx) -> b (c ft fy fx) f h w`` (upstream ``PixelShuffle3d``).

    x: [B, C, T, H, W] with T, H, W divisible by ft, fy, fx. The output channel index is
    ``((c * ft + t) * fy + dy) * fx + dx``.
    """
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // ft, ft, h // fy, fy, w // fx, fx)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # b c ft fy fx f h w
    return x.reshape(b, c * ft * fy * fx, t // ft, h // fy, w // fx)


class RMSNorm3d(nn.Module):
    """Channel RMS norm of [B, C, T, H, W]: ``normalize(x, dim=1) * sqrt(C) * gamma`` (no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ReplicateCausalConv3d(nn.Conv3d):
    """Conv3d with kernel (4, 3, 3), stride (2, 1, 1): 2 frames of causal context, 1 px each side.

    The temporal context is ``cache`` (frames that came before) where given, else the first frame
    repeated; spatial padding replicates the edge (the Wan VAE's convolutions pad with zeros).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim, kernel_size=(4, 3, 3), stride=(2, 1, 1))

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, C, T, H, W]; cache: [B, C, 2, H, W] or None. Returns [B, C', T/2, H, W]."""
        front = CACHE_FRAMES
        if cache is not None:
            x = torch.cat([cache, x], dim=2)
            front -= cache.shape[2]
        x = F.pad(x, (1, 1, 1, 1, front, 0), mode="replicate")
        return super().forward(x)


class LQ4xProj(nn.Module, abc.ABC):
    """Layers shared by both variants; attribute names are the checkpoint keys.

    Abstract: the variants supply ``warmup`` and ``forward_clip``.
    """

    def __init__(
        self, in_dim: int = 3, out_dim: int = 1536, hidden_dims: tuple[int, int] = (2048, 3072)
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        c_in = in_dim * SPACE_FACTOR * SPACE_FACTOR  # 768 for RGB
        self.conv1 = ReplicateCausalConv3d(c_in, hidden_dims[0])
        self.norm1 = RMSNorm3d(hidden_dims[0])
        self.conv2 = ReplicateCausalConv3d(hidden_dims[0], hidden_dims[1])
        self.norm2 = RMSNorm3d(hidden_dims[1])
        # One entry: the bias goes into DiT block 0 only (layer_num=1 upstream).
        self.linear_layers = nn.ModuleList([nn.Linear(hidden_dims[1], out_dim)])
        self._warm = False

    def reset(self) -> None:
        """Forget the stream: the next call must be ``warmup``."""
        self._warm = False
        self._drop_caches()

    def _drop_caches(self) -> None:
        pass

    def _check_frames(self, x: torch.Tensor, frames: int, what: str) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_dim or x.shape[2] != frames:
            want = f"[B, {self.in_dim}, {frames}, H, W]"
            raise ValueError(f"proj-in {what}: expected {want}, got {list(x.shape)}")
        if x.shape[3] % SPACE_FACTOR or x.shape[4] % SPACE_FACTOR:
            raise ValueError(
                f"proj-in {what}: H and W must be multiples of {SPACE_FACTOR}, got {x.shape[3]}x{x.shape[4]}"
            )

    def _check_clip(self, clip: torch.Tensor) -> None:
        if not self._warm:
            raise RuntimeError("proj-in: call warmup(first_frame) before forward_clip")
        self._check_frames(clip, CLIP_FRAMES, "clip")

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """conv2 output [B, C, 1, h, w] -> [B, h*w, out_dim] (frame-major, then row, then column)."""
        x = F.silu(self.norm2(x))
        return self.linear_layers[0](x.flatten(2).transpose(1, 2))

    @abc.abstractmethod
    def warmup(self, first_frame: torch.Tensor) -> None:
        """Take the stream's first LR frame [B, 3, 1, H, W] (it conditions no latent of its own)."""

    @abc.abstractmethod
    def forward_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """LR frames 4j+1..4j+4 [B, 3, 4, H, W] -> latent j's tokens [B, (H/16)(W/16), out_dim]."""

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.forward_clip(clip)


class BufferLQ4xProj(LQ4xProj):
    """v1.0 proj-in: every clip is padded with its own last two frames, so clips are independent."""

    def warmup(self, first_frame: torch.Tensor) -> None:
        """Take the stream's first LR frame [B, 3, 1, H, W].

        Upstream runs conv1 on it and discards the result; the next clip overwrites the cache before
        reading it, so nothing of it survives and we skip the computation (~1 TFLOP at 768x1408).
        """
        self._check_frames(first_frame, 1, "first frame")
        self._warm = True

    def forward_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """clip: [B, 3, 4, H, W] LR frames 4j+1..4j+4. Returns [B, (H/16)(W/16), out_dim]."""
        self._check_clip(clip)
        x = space_to_depth_3d(clip, 1, SPACE_FACTOR, SPACE_FACTOR)  # [B, 768, 4, h, w]
        x = self.conv1(x, x[:, :, -CACHE_FRAMES:])  # sees [f2 f3 f0 f1 f2 f3] -> [B, C1, 2, h, w]
        x = F.silu(self.norm1(x))
        x = self.conv2(x, x[:, :, -CACHE_FRAMES:])  # sees [a b a b] -> [B, C2, 1, h, w]
        return self._tokens(x)


class CausalLQ4xProj(LQ4xProj):
    """v1.1 proj-in: every clip is padded with the previous clip's last two frames."""

    def __init__(
        self, in_dim: int = 3, out_dim: int = 1536, hidden_dims: tuple[int, int] = (2048, 3072)
    ) -> None:
        super().__init__(in_dim, out_dim, hidden_dims)
        self._cache1: torch.Tensor | None = None  # [B, 768, 2, h, w]: conv1 input, previous clip
        self._cache2: torch.Tensor | None = None  # [B, C1, 2, h, w]: conv2 input, previous clip

    def _drop_caches(self) -> None:
        self._cache1 = None
        self._cache2 = None

    def warmup(self, first_frame: torch.Tensor) -> None:
        """Seed both caches from the stream's first LR frame [B, 3, 1, H, W], repeated 4 times."""
        self._check_frames(first_frame, 1, "first frame")
        x = space_to_depth_3d(first_frame.repeat(1, 1, CLIP_FRAMES, 1, 1), 1, SPACE_FACTOR, SPACE_FACTOR)
        self._cache1 = x[:, :, -CACHE_FRAMES:].clone()
        x = F.silu(self.norm1(self.conv1(x)))  # no cache yet: frame 0 replicated in front
        self._cache2 = x[:, :, -CACHE_FRAMES:].clone()
        self._warm = True

    def forward_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """clip: [B, 3, 4, H, W] LR frames 4j+1..4j+4. Returns [B, (H/16)(W/16), out_dim]."""
        self._check_clip(clip)
        x = space_to_depth_3d(clip, 1, SPACE_FACTOR, SPACE_FACTOR)
        cache1 = x[:, :, -CACHE_FRAMES:].clone()
        x = self.conv1(x, self._cache1)  # the cache is read before it is replaced: truly causal
        self._cache1 = cache1
        x = F.silu(self.norm1(x))
        cache2 = x[:, :, -CACHE_FRAMES:].clone()
        x = self.conv2(x, self._cache2)
        self._cache2 = cache2
        return self._tokens(x)


def build_proj_in(
    version: str, in_dim: int = 3, out_dim: int = 1536, hidden_dims: tuple[int, int] = (2048, 3072)
) -> LQ4xProj:
    """``engine.flashvsr.proj_in``: "v1.0" -> ``BufferLQ4xProj``, "v1.1" -> ``CausalLQ4xProj``."""
    if version == "v1.0":
        return BufferLQ4xProj(in_dim, out_dim, hidden_dims)
    if version == "v1.1":
        return CausalLQ4xProj(in_dim, out_dim, hidden_dims)
    raise ValueError(f"proj-in: expected version 'v1.0' or 'v1.1', got {version!r}")

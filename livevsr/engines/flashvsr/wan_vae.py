"""The Wan2.1 VAE decoder, streamed chunk by chunk: the Full pipeline's decoder (spec section 1.6).

Only the decoder half of ``Wan2.1_VAE.pth``: ``conv2.*`` (a 1x1x1 conv on the latent) and
``decoder.*``. Attribute names follow the checkpoint keys (``diffsynth/models/wan_video_vae.py``;
DiffSynth prefixes them with ``model.``), so the weights load with no renaming table.

Causality: every 3-D convolution looks 2 frames back, zero-padded at the start of a stream. Each
such convolution keeps its own cache of the last 2 input frames it saw (``CausalConv3d._cache``),
and each temporal upsampler knows whether it has seen the stream's first frame. The first latent
decodes to 1 frame (it skips the temporal upsamplers), every later latent to 4, so a stream of T
latents gives 4T - 3 frames, frame t aligned with LR frame t.

``decode_chunk`` decodes one latent at a time, as upstream does (it bounds activation memory);
``decode_video`` decodes a whole clip in one pass over time and is the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CACHE_FRAMES = 2  # CACHE_T upstream: frames of context a causal 3x3x3 conv needs
# Per-channel latent statistics of the Wan2.1 VAE (wan_video_vae.py, WanVideoVAE.__init__).
LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else v


class CausalConv3d(nn.Conv3d):
    """Conv3d padded 2*pt frames in front (zeros, or the cached frames of the stream) and none behind.

    A conv with temporal padding keeps the last 2 frames of its input across calls, so calling it
    on a sequence piece by piece equals calling it once on the whole sequence; ``reset_stream``
    forgets them. 1x1x1 convs (pt = 0) keep nothing.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int | tuple[int, int, int],
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(c_in, c_out, _triple(kernel_size))
        pt, ph, pw = _triple(padding)
        self._time_pad = 2 * pt
        self._space_pad = (pw, pw, ph, ph)
        self._cache: torch.Tensor | None = None  # [B, C_in, <=2, H, W]

    def reset_stream(self) -> None:
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, T, H, W] (the stream's next T frames) -> [B, C_out, T, H, W]."""
        front = self._time_pad
        if front:
            prev = self._cache
            if x.shape[2] >= CACHE_FRAMES:
                self._cache = x[:, :, -CACHE_FRAMES:].clone()
            elif prev is not None:
                self._cache = torch.cat([prev[:, :, -1:], x], dim=2)
            else:
                self._cache = x.clone()
            if prev is not None:
                x = torch.cat([prev, x], dim=2)
                front -= prev.shape[2]
        return super().forward(F.pad(x, (*self._space_pad, front, 0)))


class RMSNorm(nn.Module):
    """Channel RMS norm: ``normalize(x, dim=1) * sqrt(C) * gamma``; gamma [C,1,1] or [C,1,1,1]."""

    def __init__(self, dim: int, images: bool) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class Upsample2x(nn.Module):
    """Nearest-exact x2 in H and W, computed in float32 (upstream's bf16 workaround)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False),
            nn.SiLU(),
            nn.Identity(),  # dropout upstream; keeps the checkpoint index of the second conv at 6
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame, with a residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        qkv = self.to_qkv(y).reshape(b * t, 1, 3 * c, h * w).transpose(2, 3)  # [BT, 1, hw, 3C]
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)  # [BT, 1, hw, C]
        y = self.proj(y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + y.reshape(b, t, c, h, w).transpose(1, 2)


class Resample(nn.Module):
    """x2 spatial upsample with a conv halving the channels; 'upsample3d' also doubles time.

    The temporal doubling (``time_conv``, C -> 2C read as two frames) skips the stream's very
    first frame, so the first latent stays 1 frame; upstream marks that with a 'Rep' cache entry.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d"):
            raise ValueError(f"Resample: expected 'upsample2d' or 'upsample3d', got {mode!r}")
        self.mode = mode
        self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        self._seen_first = False

    def reset_stream(self) -> None:
        self._seen_first = False

    def _double_time(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.time_conv(x).reshape(b, 2, c, t, h, w)
        return torch.stack([y[:, 0], y[:, 1]], dim=3).reshape(b, c, 2 * t, h, w)  # frames interleave

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "upsample3d":
            if self._seen_first:
                x = self._double_time(x)
            else:
                self._seen_first = True
                if x.shape[2] > 1:
                    x = torch.cat([x[:, :, :1], self._double_time(x[:, :, 1:])], dim=2)
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class Decoder3d(nn.Module):
    """Latent [B, z, T, h, w] -> video [B, 3, T', 8h, 8w] with T' = 4T - 3 over a whole stream."""

    def __init__(
        self,
        dim: int = 96,
        z_dim: int = 16,
        dim_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_upsample: tuple[bool, ...] = (True, True, False),
    ) -> None:
        super().__init__()
        dims = [dim * dim_mult[-1]] + [dim * u for u in reversed(dim_mult)]  # [384, 384, 384, 192, 96]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0])
        )
        upsamples: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                in_dim //= 2  # the Resample before this stage halved the channels
            for _ in range(num_res_blocks + 1):
                upsamples.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                upsamples.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*upsamples)
        self.head = nn.Sequential(
            RMSNorm(dims[-1], images=False), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.upsamples(self.middle(self.conv1(x))))


class WanVAEDecoder(nn.Module):
    """Streaming Wan2.1 VAE decoder: ``reset()``, then ``decode_chunk`` on consecutive latents."""

    def __init__(
        self,
        z_dim: int = 16,
        dim: int = 96,
        dim_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
    ) -> None:
        super().__init__()
        if z_dim != len(LATENT_MEAN):
            n = len(LATENT_MEAN)
            raise ValueError(f"Wan VAE: the latent statistics cover {n} channels, got z_dim={z_dim}")
        self.z_dim = z_dim
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks)

    def reset(self) -> None:
        """Forget the stream: zero temporal context, and the next latent decodes to 1 frame."""
        for m in self.modules():
            if isinstance(m, CausalConv3d | Resample):
                m.reset_stream()

    def _unnormalize(self, z: torch.Tensor) -> torch.Tensor:
        """z * std + mean per channel, written as upstream does: z / (1/std) + mean, in z's dtype."""
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            raise ValueError(f"Wan VAE: expected latents [B, {self.z_dim}, T, h, w], got {list(z.shape)}")
        inv_std = (1.0 / torch.tensor(LATENT_STD)).to(z.device, z.dtype).view(1, -1, 1, 1, 1)
        mean = torch.tensor(LATENT_MEAN).to(z.device, z.dtype).view(1, -1, 1, 1, 1)
        return z / inv_std + mean

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: [B, 16, T, h, w], the stream's next DiT latents (Wan-normalised).

        Returns [B, 3, T', 8h, 8w] in [-1, 1]: T' = 4T - 3 on a stream's first chunk, 4T after.
        """
        x = self.conv2(self._unnormalize(latents))
        out = [self.decoder(x[:, :, i : i + 1]) for i in range(x.shape[2])]  # one latent at a time
        return torch.cat(out, dim=2).clamp_(-1.0, 1.0)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole clip [B, 16, T, h, w] in one pass -> [B, 3, 4T - 3, 8h, 8w] in [-1, 1].

        Resets the stream state before and after.
        """
        self.reset()
        try:
            return self.decoder(self.conv2(self._unnormalize(latents))).clamp_(-1.0, 1.0)
        finally:
            self.reset()

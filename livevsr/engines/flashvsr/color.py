"""Colour correction of decoded frames against the bicubic-upscaled LR frames (spec section 1.7).

The official pipelines call AdaIN (``flashvsr_full.py:25-40``, chosen at ``:437-447``); the
wavelet variant (``:46-81``) exists there but is unused. Both work per frame, so a stream can
correct each chunk as it is decoded. Statistics are taken in float32 and the result is cast back
to the input dtype; the official code does the same arithmetic in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ADAIN_EPS = 1e-5  # added to the biased variance before the square root
WAVELET_LEVELS = 5  # dilations 1, 2, 4, 8, 16


def _check_pair(hr: torch.Tensor, lr: torch.Tensor) -> None:
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise ValueError(f"colour fix: expected hr of shape [T, 3, H, W], got {list(hr.shape)}")
    if hr.shape != lr.shape:
        raise ValueError(f"colour fix: hr {list(hr.shape)} and lr {list(lr.shape)} must have the same shape")


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame and channel over H x W: mean and sqrt(biased var + eps), each [T, C, 1, 1]."""
    flat = x.flatten(2)
    var, mean = torch.var_mean(flat, dim=2, correction=0, keepdim=True)
    return mean.unsqueeze(-1), (var + ADAIN_EPS).sqrt().unsqueeze(-1)


def adain_fix(hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """Give each decoded frame the per-channel mean and std of its LR frame, then clamp.

    hr: [T, 3, H, W] decoded frames in [-1, 1]; lr: [T, 3, H, W] upscaled LR frames in [-1, 1].
    Returns [T, 3, H, W] in [-1, 1], dtype of ``hr``.
    """
    _check_pair(hr, lr)
    h = hr.float()
    mean_h, std_h = _mean_std(h)
    mean_l, std_l = _mean_std(lr.float())
    out = (h - mean_h) / std_h * std_l + mean_l
    return out.clamp_(-1.0, 1.0).to(hr.dtype)


def _gaussian_kernel(channels: int, device: torch.device) -> torch.Tensor:
    k1 = torch.tensor([0.25, 0.5, 0.25], device=device)
    return torch.outer(k1, k1).expand(channels, 1, 3, 3).contiguous()  # [C, 1, 3, 3], depthwise


def _low_pass(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The coarsest band of an a-trous decomposition: ``levels`` dilated 3x3 Gaussian blurs."""
    weight = _gaussian_kernel(x.shape[1], x.device)
    low = x
    for level in range(levels):
        d = 2**level
        padded = F.pad(low, (d, d, d, d), mode="replicate")
        low = F.conv2d(padded, weight, dilation=d, groups=x.shape[1])
    return low


def wavelet_fix(hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """Keep the detail bands of ``hr`` and take the coarsest band from ``lr``, then clamp.

    The detail bands of the official decomposition sum to ``x - low(x)``, so the result is
    ``hr - low(hr) + low(lr)``. Shapes as ``adain_fix``.
    """
    _check_pair(hr, lr)
    h = hr.float()
    out = h - _low_pass(h) + _low_pass(lr.float())
    return out.clamp_(-1.0, 1.0).to(hr.dtype)


def color_fix(method: str, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """Dispatch on ``engine.flashvsr.color_fix``: "adain", "wavelet" or "none"."""
    if method == "adain":
        return adain_fix(hr, lr)
    if method == "wavelet":
        return wavelet_fix(hr, lr)
    if method == "none":
        return hr
    raise ValueError(f"colour fix: expected 'adain', 'wavelet' or 'none', got {method!r}")

"""Colour fixes: AdaIN matches the LR statistics per frame; wavelet swaps the coarse band."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from livevsr.engines.flashvsr.color import adain_fix, color_fix, wavelet_fix


def _frames(seed: int, scale: float, shift: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(5, 3, 24, 40, generator=g) - 0.5) * scale + shift


def test_adain_matches_lr_statistics_per_frame() -> None:
    hr = _frames(0, 0.8, 0.2)
    lr = _frames(1, 0.5, -0.1)
    lr[2] = lr[2] * 0.3 + 0.4  # frames differ in statistics, so a whole-clip fix would fail
    out = adain_fix(hr, lr)
    assert out.shape == hr.shape and out.dtype == hr.dtype
    for t in range(hr.shape[0]):
        for c in range(3):
            o, r = out[t, c], lr[t, c]
            torch.testing.assert_close(o.mean(), r.mean(), atol=1e-5, rtol=0)
            want_std = (r.var(correction=0) + 1e-5).sqrt()
            got_std = (o.var(correction=0) + 1e-5).sqrt()
            torch.testing.assert_close(got_std, want_std, atol=2e-4, rtol=2e-3)


def test_adain_clamps_and_keeps_dtype() -> None:
    hr = _frames(2, 1.0, 0.0).bfloat16()
    lr = _frames(3, 4.0, 0.9).bfloat16()  # values well outside [-1, 1]
    out = adain_fix(hr, lr)
    assert out.dtype == torch.bfloat16
    assert out.min() >= -1 and out.max() <= 1


def _official_style_wavelet(hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """The decomposition as written upstream: sum the detail bands level by level."""

    def decompose(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        w = k.view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        high, low = torch.zeros_like(x), x
        for i in range(5):
            r = 2**i
            blurred = F.conv2d(F.pad(low, (r, r, r, r), mode="replicate"), w, dilation=r, groups=3)
            high, low = high + (low - blurred), blurred
        return high, low

    return (decompose(hr)[0] + decompose(lr)[1]).clamp(-1, 1)


def test_wavelet_equals_band_sum() -> None:
    hr, lr = _frames(4, 1.0, 0.0), _frames(5, 0.6, 0.3)
    torch.testing.assert_close(wavelet_fix(hr, lr), _official_style_wavelet(hr, lr), atol=1e-5, rtol=0)


def test_wavelet_of_same_frames_is_identity() -> None:
    hr = _frames(6, 1.0, 0.0)
    torch.testing.assert_close(wavelet_fix(hr, hr.clone()), hr, atol=1e-5, rtol=0)


def test_shape_mismatch_and_unknown_method_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[5, 3, 24, 40\]"):
        adain_fix(_frames(0, 1, 0), _frames(0, 1, 0)[:, :, :12])
    with pytest.raises(ValueError, match="'sharpen'"):
        color_fix("sharpen", _frames(0, 1, 0), _frames(0, 1, 0))
    hr = _frames(7, 3.0, 0.0)
    assert color_fix("none", hr, hr) is hr

"""Wan2.1 VAE decoder: checkpoint layout at full size; chunked streaming equals one pass (tiny)."""

from __future__ import annotations

import pytest
import torch

from livevsr.engines.flashvsr.wan_vae import CausalConv3d, WanVAEDecoder


def _res_block(prefix: str, c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        f"{prefix}.residual.0.gamma": (c_in, 1, 1, 1),
        f"{prefix}.residual.2.weight": (c_out, c_in, 3, 3, 3),
        f"{prefix}.residual.2.bias": (c_out,),
        f"{prefix}.residual.3.gamma": (c_out, 1, 1, 1),
        f"{prefix}.residual.6.weight": (c_out, c_out, 3, 3, 3),
        f"{prefix}.residual.6.bias": (c_out,),
    }
    if c_in != c_out:
        shapes |= {f"{prefix}.shortcut.weight": (c_out, c_in, 1, 1, 1), f"{prefix}.shortcut.bias": (c_out,)}
    return shapes


def _full_shapes() -> dict[str, tuple[int, ...]]:
    """Decoder half of Wan2.1_VAE.pth, written out from the layer plan (spec section 6)."""
    s: dict[str, tuple[int, ...]] = {
        "conv2.weight": (16, 16, 1, 1, 1),
        "conv2.bias": (16,),
        "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.conv1.bias": (384,),
        "decoder.middle.1.norm.gamma": (384, 1, 1),
        "decoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "decoder.middle.1.to_qkv.bias": (1152,),
        "decoder.middle.1.proj.weight": (384, 384, 1, 1),
        "decoder.middle.1.proj.bias": (384,),
        "decoder.head.0.gamma": (96, 1, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
        "decoder.head.2.bias": (3,),
    }
    s |= _res_block("decoder.middle.0", 384, 384) | _res_block("decoder.middle.2", 384, 384)
    plan = [(384, 384)] * 3 + [(192, 384), (384, 384), (384, 384)] + [(192, 192)] * 3 + [(96, 96)] * 3
    blocks = [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]
    for n, (c_in, c_out) in zip(blocks, plan, strict=True):
        s |= _res_block(f"decoder.upsamples.{n}", c_in, c_out)
    for n, c in ((3, 384), (7, 384), (11, 192)):
        s |= {
            f"decoder.upsamples.{n}.resample.1.weight": (c // 2, c, 3, 3),
            f"decoder.upsamples.{n}.resample.1.bias": (c // 2,),
        }
    for n in (3, 7):  # temporal upsamplers
        s |= {
            f"decoder.upsamples.{n}.time_conv.weight": (768, 384, 3, 1, 1),
            f"decoder.upsamples.{n}.time_conv.bias": (768,),
        }
    return s


def test_full_size_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        m = WanVAEDecoder()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == _full_shapes()
    # spec section 6: Full (1780.14 M) - DiT (1418.997 M) - proj-in (287.846 M) = ~73.3 M
    assert sum(p.numel() for p in m.parameters()) == 73_295_603


def _tiny() -> WanVAEDecoder:
    torch.manual_seed(0)
    m = WanVAEDecoder(dim=4).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim > 1 else 0.1))
    return m


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1], [3, 2], [1, 2, 2]])
def test_streaming_chunks_equal_one_pass_decode(chunks: list[int]) -> None:
    m = _tiny()
    latents = torch.randn(1, 16, 5, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = m.decode_video(latents)
    assert want.shape == (1, 3, 4 * 5 - 3, 16, 24)
    assert want.abs().max() <= 1 and 0 < want.abs().mean() < 1  # clamped, but not saturated

    m.reset()
    parts, start = [], 0
    for n in chunks:
        parts.append(m.decode_chunk(latents[:, :, start : start + n]))
        start += n
    assert [p.shape[2] for p in parts] == [4 * chunks[0] - 3] + [4 * n for n in chunks[1:]]
    torch.testing.assert_close(torch.cat(parts, dim=2), want, rtol=1e-9, atol=1e-9)


@torch.no_grad()
def test_reset_starts_a_new_stream() -> None:
    m = _tiny()
    latents = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    m.reset()
    first = m.decode_chunk(latents[:, :, :1])
    assert first.shape[2] == 1
    assert m.decode_chunk(latents[:, :, :1]).shape[2] == 4  # the same latent again is a later one
    m.reset()
    torch.testing.assert_close(m.decode_chunk(latents[:, :, :1]), first, rtol=0, atol=0)


def test_causal_conv_cache_matches_whole_sequence() -> None:
    torch.manual_seed(3)
    conv = CausalConv3d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 7, 4, 4, dtype=torch.float64)
    whole = conv(x)
    conv.reset_stream()
    pieces = torch.cat([conv(x[:, :, :1]), conv(x[:, :, 1:2]), conv(x[:, :, 2:6]), conv(x[:, :, 6:])], dim=2)
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=1e-12)
    zero_front = torch.nn.functional.conv3d(
        torch.nn.functional.pad(x, (1, 1, 1, 1, 2, 0)), conv.weight, conv.bias
    )  # zero temporal padding in front, none behind
    torch.testing.assert_close(whole, zero_front, rtol=1e-12, atol=1e-12)


def test_wrong_latent_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected latents \[B, 16, T, h, w\], got \[1, 8, 2, 2, 2\]"):
        WanVAEDecoder(dim=4).decode_chunk(torch.zeros(1, 8, 2, 2, 2))

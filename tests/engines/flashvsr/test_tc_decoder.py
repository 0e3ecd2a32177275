"""TC decoder: checkpoint layout at full size; chunked streaming equals the one-pass decode (tiny)."""

from __future__ import annotations

import pytest
import torch

from livevsr.engines.flashvsr.tc_decoder import TCDecoder


def _full_shapes() -> dict[str, tuple[int, ...]]:
    """Spec section 6, TCDecoder.ckpt."""
    shapes: dict[str, tuple[int, ...]] = {
        "decoder.1.weight": (512, 784, 3, 3),
        "decoder.1.bias": (512,),
        "decoder.3.weight": (512, 512, 3, 3),
        "decoder.9.conv.weight": (512, 512, 1, 1),
        "decoder.10.weight": (256, 512, 3, 3),
        "decoder.15.conv.weight": (512, 256, 1, 1),
        "decoder.16.weight": (128, 256, 3, 3),
        "decoder.21.conv.weight": (256, 128, 1, 1),
        "decoder.22.weight": (128, 128, 3, 3),
        "decoder.24.weight": (128, 128, 3, 3),
        "decoder.26.weight": (3, 128, 3, 3),
        "decoder.26.bias": (3,),
    }
    for blocks, c in (((5, 6, 7), 512), ((11, 12, 13), 256), ((17, 18, 19), 128)):
        for n in blocks:
            shapes[f"decoder.{n}.conv.0.weight"] = (c, 2 * c, 3, 3)
            for j in (2, 4):
                shapes[f"decoder.{n}.conv.{j}.weight"] = (c, c, 3, 3)
            for j in (0, 2, 4):
                shapes[f"decoder.{n}.conv.{j}.bias"] = (c,)
    return shapes


def test_full_size_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        m = TCDecoder()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == _full_shapes()
    assert sum(p.numel() for p in m.parameters()) == 45_338_371  # spec section 5


def _tiny() -> TCDecoder:
    torch.manual_seed(0)
    m = TCDecoder(channels=(8, 8, 6, 4)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # move the identity convs off the identity
    return m


def _inputs(t_lat: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, t_lat, 16, 2, 3, generator=g, dtype=torch.float64)
    cond = torch.rand(2, 3, 4 * t_lat - 3, 16, 24, generator=g, dtype=torch.float64) * 2 - 1
    return latents, cond


@torch.no_grad()
def test_streaming_chunks_equal_one_pass_decode() -> None:
    m = _tiny()
    latents, cond = _inputs(10)
    want = m.decode_video(latents, cond)
    assert want.shape == (2, 3, 37, 16, 24)

    m.reset()
    parts = [m.decode_chunk(latents[:, :6], cond[:, :, :21])]  # chunk 0: 6 latents, LR 0..20
    for i in range(2):  # then 2 latents and 8 LR frames each
        parts.append(m.decode_chunk(latents[:, 6 + 2 * i : 8 + 2 * i], cond[:, :, 21 + 8 * i : 29 + 8 * i]))
    assert [p.shape[2] for p in parts] == [21, 8, 8]
    torch.testing.assert_close(torch.cat(parts, dim=2), want, rtol=1e-9, atol=1e-9)

    m.reset()  # a new stream starts from zero memory and trims again
    torch.testing.assert_close(m.decode_chunk(latents[:, :6], cond[:, :, :21]), parts[0], rtol=0, atol=0)


@torch.no_grad()
def test_memory_carries_across_chunks() -> None:
    m = _tiny()
    latents, cond = _inputs(8)
    m.reset()
    m.decode_chunk(latents[:, :6], cond[:, :, :21])
    after_history = m.decode_chunk(latents[:, 6:], cond[:, :, 21:])
    m.reset()
    m.decode_chunk(latents[:, :6] * 0.5, cond[:, :, :21])
    assert not torch.allclose(m.decode_chunk(latents[:, 6:], cond[:, :, 21:]), after_history)


def test_cond_goes_first_in_unshuffled_order() -> None:
    m = TCDecoder(channels=(4, 4, 4, 4))
    latents = torch.full((1, 2, 16, 1, 1), 7.0)
    t, y, x = torch.meshgrid(torch.arange(5), torch.arange(8), torch.arange(8), indexing="ij")
    frame_code = (t * 100 + y * 10 + x).float()  # [5, 8, 8]
    cond = torch.stack([frame_code + 1000 * c for c in range(3)])[None]  # [1, 3, 5, 8, 8]
    x_in = m._input(latents, cond, first=True)  # [1, 2, 784, 1, 1]
    assert x_in.shape == (1, 2, 784, 1, 1)
    assert (x_in[0, :, 768:] == 7).all()
    # group 0 is [f0 f0 f0 f0]; group 1 is frames 1..4; channel = c*256 + ft*64 + dy*8 + dx
    assert x_in[0, 0, 2 * 256 + 3 * 64 + 5 * 8 + 6, 0, 0] == 2000 + 0 * 100 + 56
    assert x_in[0, 1, 1 * 256 + 2 * 64 + 4 * 8 + 1, 0, 0] == 1000 + 3 * 100 + 41


def test_wrong_cond_length_is_refused() -> None:
    m = TCDecoder(channels=(4, 4, 4, 4))
    latents = torch.zeros(1, 2, 16, 1, 1)
    with pytest.raises(
        ValueError, match=r"first chunk expected cond \[1, 3, 5, 8, 8\], got \[1, 3, 8, 8, 8\]"
    ):
        m.decode_chunk(latents, torch.zeros(1, 3, 8, 8, 8))
    m.decode_chunk(latents, torch.zeros(1, 3, 5, 8, 8))
    with pytest.raises(ValueError, match=r"later chunk expected cond \[1, 3, 8, 8, 8\]"):
        m.decode_chunk(latents, torch.zeros(1, 3, 5, 8, 8))

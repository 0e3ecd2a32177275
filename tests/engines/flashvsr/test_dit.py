"""WanDiT: the official key set, strict loading, and the streaming forward against a token-order oracle."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from livevsr.engines.flashvsr.attention import (
    BlockGeometry,
    ReferenceBackend,
    block_sparse_attention_reference,
    draft_block_mask,
)
from livevsr.engines.flashvsr.dit import DiTConfig, WanDiT, sinusoidal_embedding
from livevsr.engines.flashvsr.rope import rope_split

TINY = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=32, text_dim=48)


def _official_keys() -> dict[str, tuple[int, ...]]:
    """Key -> shape of diffusion_pytorch_model_streaming_dmd.safetensors, written out from spec section 6."""
    d, f = 1536, 8960
    keys = {
        "patch_embedding.weight": (d, 16, 1, 2, 2),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, 4096),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, 256),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
        "head.head.weight": (64, d),
        "head.head.bias": (64,),
        "head.modulation": (1, 2, d),
    }
    for n in range(30):
        b = f"blocks.{n}"
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                keys[f"{b}.{attn}.{lin}.weight"] = (d, d)
                keys[f"{b}.{attn}.{lin}.bias"] = (d,)
            keys[f"{b}.{attn}.norm_q.weight"] = (d,)
            keys[f"{b}.{attn}.norm_k.weight"] = (d,)
        keys[f"{b}.norm3.weight"] = (d,)
        keys[f"{b}.norm3.bias"] = (d,)
        keys[f"{b}.ffn.0.weight"] = (f, d)
        keys[f"{b}.ffn.0.bias"] = (f,)
        keys[f"{b}.ffn.2.weight"] = (d, f)
        keys[f"{b}.ffn.2.bias"] = (d,)
        keys[f"{b}.modulation"] = (1, 6, d)
    return keys


def test_full_size_model_has_exactly_the_official_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = WanDiT()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _official_keys()
    assert sum(v.numel() for v in model.parameters()) == 1_418_996_800


def test_a_saved_checkpoint_loads_strictly(tmp_path: object) -> None:
    src = WanDiT(TINY)
    path = f"{tmp_path}/dit.safetensors"
    save_file(src.state_dict(), path)
    dst = WanDiT(TINY)
    dst.load_state_dict(load_file(path), strict=True)
    assert all(
        torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True)
    )


def test_time_sinusoid_is_cos_then_sin_in_float64() -> None:
    e = sinusoidal_embedding(256, 1000.0)
    assert e.dtype == torch.float64 and e.shape == (1, 256)
    assert e[0, 0] == math.cos(1000.0) and e[0, 128] == math.sin(1000.0)
    assert e[0, 1] == math.cos(1000.0 * 10000 ** (-1 / 128))


# --- a token-order oracle of the official streaming forward (flashvsr_spec.md sections 2, 3.5) ---


def _rope_official(x: torch.Tensor, t0: int, f: int, h: int, w: int, head_dim: int) -> torch.Tensor:
    """x: [f*h*w, H, D] token order; complex float64 per-axis tables, as Wan2.1's rope_apply."""
    parts = rope_split(head_dim)

    def table(part: int, n: int, start: int = 0) -> torch.Tensor:
        inv = 1.0 / 10000.0 ** (torch.arange(0, part, 2).double() / part)
        ang = torch.outer(torch.arange(start, start + n).double(), inv)
        return torch.polar(torch.ones_like(ang), ang)

    ft, fh, fw = table(parts[0], f, t0), table(parts[1], h), table(parts[2], w)
    freqs = torch.cat(
        [
            ft.view(f, 1, 1, -1).expand(f, h, w, -1),
            fh.view(1, h, 1, -1).expand(f, h, w, -1),
            fw.view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:2], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(2).to(x.dtype)


def _partition(x: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
    """[f*h*w, C] -> [n_windows*128, C] with windows (2, 8, 8), as WindowPartition3D."""
    c = x.shape[-1]
    x = x.view(f // 2, 2, h // 8, 8, w // 8, 8, c).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(-1, c)


def _reverse(x: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
    c = x.shape[-1]
    x = x.view(f // 2, h // 8, w // 8, 2, 8, 8, c).permute(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(-1, c)


class _OfficialStream:
    """The official per-step forward, written plainly in token order with its own K/V cache."""

    def __init__(self, model: WanDiT, ctx: torch.Tensor, geom: BlockGeometry) -> None:
        self.m, self.ctx, self.geom = model, ctx, geom
        self.cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.blocks)

    def step(self, latents: torch.Tensor, cond: torch.Tensor, t0: int) -> torch.Tensor:
        m, cfg = self.m, self.m.cfg
        nh = cfg.num_heads
        t = m.time_embedding(sinusoidal_embedding(cfg.freq_dim, 1000.0).float())
        t_mod = m.time_projection(t).unflatten(1, (6, cfg.dim))
        ctx = m.text_embedding(self.ctx)
        x = m.patch_embedding(latents)
        _, _, f, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)[0] + cond[0]  # [f*h*w, dim] token order
        for i, blk in enumerate(m.blocks):
            sh1, sc1, g1, sh2, sc2, g2 = (blk.modulation + t_mod).chunk(6, dim=1)
            a = blk.norm1(x) * (1 + sc1[0]) + sh1[0]
            sa = blk.self_attn
            q = _rope_official(sa.norm_q(sa.q(a)).view(-1, nh, cfg.head_dim), t0, f, h, w, cfg.head_dim)
            k = _rope_official(sa.norm_k(sa.k(a)).view(-1, nh, cfg.head_dim), t0, f, h, w, cfg.head_dim)
            v = sa.v(a).view(-1, nh, cfg.head_dim)
            qw, kw, vw = (_partition(z.flatten(1), f, h, w).view(-1, nh, cfg.head_dim) for z in (q, k, v))
            if self.cache[i] is not None:
                kw, vw = torch.cat([self.cache[i][0], kw]), torch.cat([self.cache[i][1], vw])
            out = block_sparse_attention_reference(qw, kw, vw, draft_block_mask(qw, kw, self.geom))
            chunk = self.geom.blocks_per_chunk * 128
            if kw.shape[0] // chunk > self.geom.kv_chunks:
                kw, vw = kw[chunk:], vw[chunk:]
            self.cache[i] = (kw, vw)
            x = x + g1[0] * sa.o(_reverse(out.flatten(1), f, h, w))
            ca = blk.cross_attn
            cq = ca.norm_q(ca.q(blk.norm3(x))).view(-1, nh, cfg.head_dim).transpose(0, 1)
            ck = ca.norm_k(ca.k(ctx)).view(-1, nh, cfg.head_dim).transpose(0, 1)
            cv = ca.v(ctx).view(-1, nh, cfg.head_dim).transpose(0, 1)
            att = torch.softmax(cq @ ck.transpose(1, 2) / math.sqrt(cfg.head_dim), -1) @ cv
            x = x + ca.o(att.transpose(0, 1).flatten(1))
            a = blk.norm2(x) * (1 + sc2[0]) + sh2[0]
            x = x + g2[0] * blk.ffn(a)
        shift, scale = (m.head.modulation + t[:, None]).chunk(2, dim=1)
        x = m.head.head(m.head.norm(x) * (1 + scale[0]) + shift[0])  # [f*h*w, 64]
        x = x.view(f, h, w, 1, 2, 2, cfg.out_dim)  # (pt, ph, pw, c), channel fastest
        return x.permute(6, 0, 3, 1, 4, 2, 5).reshape(1, cfg.out_dim, f, 2 * h, 2 * w)


@pytest.mark.parametrize("blocks_hw", [(1, 2), (2, 1)])
def test_streaming_forward_matches_the_token_order_oracle(blocks_hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = WanDiT(TINY).eval()
    bh, bw = blocks_hw
    lh, lw = 16 * bh, 16 * bw  # latent size: 8x8 tokens per block, patch 2
    geom = BlockGeometry(blocks_h=bh, blocks_w=bw, topk=9, local_range=3)
    ctx = torch.randn(1, 7, TINY.text_dim)
    oracle = _OfficialStream(model, ctx, geom)
    backend = ReferenceBackend()
    consts = model.precompute(ctx)
    with torch.no_grad():
        for step, (f, t0) in enumerate([(6, 0), (2, 6), (2, 8), (2, 10)]):
            lat = torch.randn(1, 16, f, lh, lw)
            cond = torch.randn(1, f * lh * lw // 4, TINY.dim)
            got = model(lat, cond, t0, consts, backend, geom)
            want = oracle.step(lat, cond, t0)
            assert got.shape == (1, 16, f, lh, lw)
            torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4, msg=f"step {step}")


def test_huge_time_positions_give_the_same_output_as_small_ones() -> None:
    torch.manual_seed(1)
    model = WanDiT(TINY).eval()
    geom = BlockGeometry(blocks_h=1, blocks_w=2, topk=9, local_range=3)
    consts = model.precompute(torch.randn(5, TINY.text_dim))
    lat = torch.randn(1, 16, 6, 16, 32)
    cond = torch.randn(1, 6 * 8 * 16, TINY.dim)
    with torch.no_grad():
        small = model(lat, cond, 0, consts, ReferenceBackend(), geom)
        huge = model(lat, cond, 1_000_000, consts, ReferenceBackend(), geom)
    torch.testing.assert_close(huge, small, atol=2e-4, rtol=2e-4)

"""The streaming schedule: stepping a stream equals one long non-streaming pass of the same algorithm."""

from __future__ import annotations

import pytest
import torch

from livevsr.engines.flashvsr.attention import (
    BLOCK,
    BlockGeometry,
    ReferenceBackend,
    block_sparse_attention_reference,
    draft_block_mask,
)
from livevsr.engines.flashvsr.dit import DiTConfig, WanDiT
from livevsr.engines.flashvsr.proj_in import BufferLQ4xProj, CausalLQ4xProj
from livevsr.engines.flashvsr.session import (
    SessionSpec,
    StreamSession,
    as_latent_decoder,
    frames_needed,
    latent_noise,
    step_frames,
    step_latents,
)
from livevsr.engines.flashvsr.tc_decoder import TCDecoder
from livevsr.engines.flashvsr.wan_vae import WanVAEDecoder

TINY = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=32, text_dim=48)
H, W = 128, 256  # HR: 1 x 2 blocks per chunk
GEOM = BlockGeometry(blocks_h=1, blocks_w=2, topk=9, local_range=3, kv_chunks=3)


class _WindowedOffline:
    """All chunks at once: query chunk c sees key chunks 0..2 if c < 3, else c-3..c (the stream's cache)."""

    def reset(self) -> None:
        pass

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: BlockGeometry
    ) -> torch.Tensor:
        chunk = geom.blocks_per_chunk * BLOCK
        n = q.shape[0] // chunk
        out = torch.empty_like(q)
        for c in range(n):
            lo, hi = (0, 3) if c < 3 else (c - geom.kv_chunks, c + 1)
            qc, kc, vc = (
                q[c * chunk : (c + 1) * chunk],
                k[lo * chunk : hi * chunk],
                v[lo * chunk : hi * chunk],
            )
            out[c * chunk : (c + 1) * chunk] = block_sparse_attention_reference(
                qc, kc, vc, draft_block_mask(qc, kc, geom)
            )
        return out


class _StandInDecoder:
    """A cheap causal decoder with the TC decoder's framing: latent j -> 4 frames (3 trimmed from the
    stream's first), each its latent upsampled plus its own LR frame, so any misalignment shows."""

    def __init__(self) -> None:
        self.started = False

    def reset(self) -> None:
        self.started = False

    def decode(self, latents: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        up = latents[:, :3].repeat_interleave(4, dim=2).repeat_interleave(8, 3).repeat_interleave(8, 4)
        if not self.started:
            up = up[:, :, 3:]
        self.started = True
        return up + lr

    def decode_video(self, latents: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """[1, T, 16, h, w] time first, like TCDecoder.decode_video."""
        self.reset()
        return self.decode(latents.transpose(1, 2), lr)


def _models(
    proj: type = BufferLQ4xProj, decoder: str = "stand-in"
) -> tuple[WanDiT, torch.nn.Module, object, torch.Tensor]:
    torch.manual_seed(0)
    dit = WanDiT(TINY).eval()
    proj_in = proj(out_dim=TINY.dim, hidden_dims=(16, 16)).eval()
    dec = TCDecoder(channels=(4, 4, 4, 4)).eval() if decoder == "tc" else _StandInDecoder()
    prompt = torch.randn(1, 5, TINY.text_dim)
    return dit, proj_in, dec, prompt


def _lr_video(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, H, W] smooth moving content in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(
        torch.rand(1, 3, 8, 16, generator=g), size=(H, W), mode="bilinear"
    )[0]
    shifts = [torch.roll(base, shifts=(t, 2 * t), dims=(1, 2)) for t in range(n)]
    return torch.stack(shifts) * 2 - 1


def non_streaming_reference(
    dit: WanDiT,
    proj_in: torch.nn.Module,
    decoder: object,
    prompt: torch.Tensor,
    lr: torch.Tensor,
    n_latents: int,
) -> torch.Tensor:
    """The same algorithm in one pass: every latent through the DiT at once, one-pass decode."""
    proj_in.reset()
    proj_in.warmup(lr[None, 0:1].transpose(1, 2))
    cond = torch.cat(
        [proj_in.forward_clip(lr[4 * j + 1 : 4 * j + 5][None].transpose(1, 2)) for j in range(n_latents)], 1
    )
    noise = torch.stack(
        [latent_noise(0, j, (16, H // 8, W // 8), lr.device, torch.float32) for j in range(n_latents)], 1
    )
    x0 = noise[None] - dit(noise[None], cond, 0, dit.precompute(prompt), _WindowedOffline(), GEOM)
    frames = 4 * n_latents - 3
    return decoder.decode_video(x0.transpose(1, 2), lr[None, :frames].transpose(1, 2))[0].transpose(0, 1)


def _session(dit: WanDiT, proj_in: torch.nn.Module, decoder: object, prompt: torch.Tensor) -> StreamSession:
    spec = SessionSpec(height=H, width=W, geom=GEOM, seed=0, dtype=torch.float32)
    return StreamSession(
        dit, dit.precompute(prompt), proj_in, as_latent_decoder(decoder), ReferenceBackend(), spec
    )


def test_schedule_matches_the_spec_table() -> None:
    assert list(step_latents(0)) == [0, 1, 2, 3, 4, 5] and list(step_frames(0)) == list(range(21))
    assert frames_needed(0) == 25  # LR frames 0..24
    for i in range(1, 5):
        assert list(step_latents(i)) == [2 * i + 4, 2 * i + 5]
        assert list(step_frames(i)) == list(range(8 * i + 13, 8 * i + 21))
        assert frames_needed(i) == 8 * i + 25
        # latent j decodes to frames 4j-3..4j: the step's frames are exactly its latents' frames
        assert list(step_frames(i)) == list(range(4 * step_latents(i)[0] - 3, 4 * step_latents(i)[-1] + 1))
        assert step_frames(i)[0] == step_frames(i - 1)[-1] + 1


@pytest.mark.parametrize(
    "proj,dec", [(BufferLQ4xProj, "stand-in"), (CausalLQ4xProj, "stand-in"), (CausalLQ4xProj, "tc")]
)
def test_streaming_equals_the_non_streaming_reference(proj: type, dec: str) -> None:
    dit, proj_in, decoder, prompt = _models(proj, dec)
    n = 43  # 5 pushes of 8 and one of 3; with the flush padding the stream runs steps 0..3
    lr = _lr_video(n)
    session = _session(dit, proj_in, decoder, prompt)
    got, counts = [], []
    for start in range(0, n, 8):
        hr, lr_used = session.push(lr[start : start + 8])
        torch.testing.assert_close(lr_used, lr[sum(counts) : sum(counts) + hr.shape[0]])
        counts.append(hr.shape[0])
        got.append(hr)
    hr, lr_used = session.flush()
    got.append(hr)
    counts.append(hr.shape[0])
    assert counts == [0, 0, 0, 21, 8, 8, 6]  # step 2 runs at 43 >= 41 frames; flush pads for step 3
    got_all = torch.cat(got)
    assert got_all.shape == (n, 3, H, W)
    padded = torch.cat(
        [lr, lr[-1:].expand(frames_needed(3) - n, -1, -1, -1)]
    )  # repeat the last frame, as the flush does
    with torch.no_grad():
        want = non_streaming_reference(dit, proj_in, decoder, prompt, padded, n_latents=12)
    torch.testing.assert_close(got_all, want[:n], atol=1e-4, rtol=1e-4)


def test_flush_returns_exactly_the_frames_pushed() -> None:
    dit, proj_in, decoder, prompt = _models()
    session = _session(dit, proj_in, decoder, prompt)
    for n in (0, 5, 21, 26):
        out = [session.push(chunk)[0] for chunk in _lr_video(n).split(8)] if n else []
        out.append(session.flush()[0])
        assert sum(o.shape[0] for o in out) == n, n
        assert session.frames_pushed == 0  # flush resets for the next stream


def test_memory_stays_bounded_over_a_long_stream() -> None:
    dit, proj_in, decoder, prompt = _models()
    session = _session(dit, proj_in, decoder, prompt)
    frame = _lr_video(8)
    sizes = []
    for _ in range(12):
        session.push(frame)
        sizes.append((len(session._lr), session.backend.cached_chunks(0, GEOM)))
    assert session.frames_emitted == 8 * 12 - 11
    assert max(s[0] for s in sizes) == 24  # before the first step (it needs 25)
    assert {s[0] for s in sizes[3:]} == {11}  # LR frames from the next step's first output on
    assert {s[1] for s in sizes[4:]} == {3}


@pytest.mark.parametrize("kind", ["tc", "wan_vae"])
def test_decoder_adapters_stream_like_the_one_pass_decode(kind: str) -> None:
    torch.manual_seed(0)
    module = TCDecoder(channels=(4, 4, 4, 4)) if kind == "tc" else WanVAEDecoder(dim=4)
    decoder = as_latent_decoder(module.eval())
    latents = torch.randn(1, 16, 8, 2, 2)  # [1, C, T, h, w], as the session hands them over
    lr = torch.rand(1, 3, 29, 16, 16) * 2 - 1
    decoder.reset()
    with torch.no_grad():
        streamed = torch.cat(
            [
                decoder.decode(latents[:, :, :6], lr[:, :, :21]),
                decoder.decode(latents[:, :, 6:], lr[:, :, 21:]),
            ],
            2,
        )
        if kind == "tc":
            want = module.decode_video(latents.transpose(1, 2), lr)
        else:
            want = module.decode_video(latents)
    assert streamed.shape == (1, 3, 29, 16, 16)
    torch.testing.assert_close(streamed, want, atol=1e-5, rtol=1e-4)


def test_push_rejects_the_wrong_frame_size() -> None:
    dit, proj_in, decoder, prompt = _models()
    with pytest.raises(ValueError, match=r"expected LR frames \[n, 3, 128, 256\]"):
        _session(dit, proj_in, decoder, prompt).push(torch.zeros(8, 3, 128, 128))

"""FlashVSREngine end to end with tiny random models on the CPU: sizes, counts, and the LR upscale."""

from __future__ import annotations

import dataclasses
import hashlib

import av
import numpy as np
import pytest
import torch

from livevsr.config import FlashVSRConfig
from livevsr.engines.flashvsr.dit import DiTConfig
from livevsr.engines.flashvsr.engine import FlashVSREngine, PilBicubicUpscaler, padded_size, random_models
from livevsr.errors import EngineError

TINY = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=32, text_dim=48)
CPU = FlashVSRConfig(device="cpu", dtype="float32", attention="auto")


def _engine(cfg: FlashVSRConfig = CPU) -> FlashVSREngine:
    models = random_models(cfg, TINY, proj_hidden=(16, 16), decoder_channels=(4, 4, 4, 4), prompt_tokens=5)
    return FlashVSREngine(cfg, weights=models)


def _frames(n: int, width: int, height: int) -> list[av.VideoFrame]:
    """A small moving pattern."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for t in range(n):
        rgb = np.stack([(xx * 5 + t * 3) % 256, (yy * 7 + t) % 256, ((xx + yy) * 3) % 256], -1).astype(
            np.uint8
        )
        out.append(av.VideoFrame.from_ndarray(rgb, format="rgb24"))
    return out


def _run(engine: FlashVSREngine, frames: list[av.VideoFrame]) -> tuple[list[int], list[av.VideoFrame]]:
    counts, out = [], []
    for i in range(0, len(frames), engine.chunk):
        got = engine.push(frames[i : i + engine.chunk])
        counts.append(len(got))
        out += got
    tail = engine.flush()
    return [*counts, len(tail)], out + tail


def test_odd_size_stream_comes_out_exactly_4x_with_every_frame() -> None:
    engine = _engine()
    engine.open(50, 38, 30.0)  # 200x152 out, the model runs at 256x256 (2 x 2 blocks)
    counts, out = _run(engine, _frames(21, 50, 38))
    assert counts == [0, 0, 0, 21]  # nothing until the end: the first step needs LR frame 24
    assert [(f.width, f.height, f.format.name) for f in out] == [(200, 152, "rgb24")] * 21
    engine.close()


def test_steps_emit_as_soon_as_their_frames_are_in() -> None:
    engine = _engine()
    engine.open(30, 20, 30.0)  # 120x80 out, 128x128 model size
    counts, out = _run(engine, _frames(30, 30, 20))
    assert counts == [0, 0, 0, 21, 9]  # step 0 once frame 24 is in; flush pads for step 1
    assert [(f.width, f.height) for f in out] == [(120, 80)] * 30
    arrays = [f.to_ndarray(format="rgb24") for f in out]
    assert len({a.tobytes() for a in arrays}) > 1  # frames differ: not one repeated output


def test_inputs_smaller_than_one_block_are_padded_not_rejected() -> None:
    engine = _engine()
    engine.open(5, 3, 25.0)
    out = engine.push(_frames(8, 5, 3)) + engine.flush()
    assert [(f.width, f.height) for f in out] == [(20, 12)] * 8


def test_reopen_at_another_size_and_wrong_frame_sizes() -> None:
    engine = _engine()
    with pytest.raises(EngineError, match="before open"):
        engine.push(_frames(8, 16, 16))
    engine.open(16, 16, 30.0)
    with pytest.raises(EngineError, match="got a 20x16 frame on a stream opened at 16x16"):
        engine.push(_frames(8, 20, 16))
    engine.open(20, 16, 30.0)
    out = engine.push(_frames(3, 20, 16)) + engine.flush()
    assert [(f.width, f.height) for f in out] == [(80, 64)] * 3


def test_prompt_and_time_constants_are_computed_once_per_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    models = random_models(CPU, TINY, proj_hidden=(16, 16), decoder_channels=(4, 4, 4, 4), prompt_tokens=5)
    calls = []
    original = models.dit.precompute
    monkeypatch.setattr(models.dit, "precompute", lambda *a, **k: calls.append(1) or original(*a, **k))
    engine = FlashVSREngine(CPU, weights=models)
    for size in ((16, 16), (24, 8)):
        engine.open(*size, 30.0)
        engine.push(_frames(8, *size))
        engine.flush()
    assert len(calls) == 1


def test_engines_share_weights_but_not_stream_state() -> None:
    cfg = dataclasses.replace(CPU, proj_in="v1.1")  # the causal proj-in carries state across clips
    models = random_models(cfg, TINY, proj_hidden=(16, 16), decoder_channels=(4, 4, 4, 4), prompt_tokens=5)
    a, b = FlashVSREngine(cfg, weights=models), FlashVSREngine(cfg, weights=models)
    assert a.models.dit is b.models.dit
    for name in ("proj_in", "decoder"):
        ma, mb = getattr(a.models, name), getattr(b.models, name)
        assert ma is not mb
        assert all(pa is pb for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True))
    alone = FlashVSREngine(cfg, weights=models)
    for e in (a, b, alone):
        e.open(16, 16, 30.0)
    frames = _frames(34, 16, 16)
    chunks = [frames[i : i + 8] for i in range(0, 34, 8)]  # 8, 8, 8, 8, 2
    out_alone = [f for c in chunks for f in alone.push(c)] + alone.flush()
    # Interleave two streams step by step (step 0 at the 4th push, step 1 at the 5th): each must
    # come out exactly as if it ran alone.
    out_a, out_b = [], []
    for c in chunks[:4]:
        out_a += a.push(c)
    for c in chunks[:4]:
        out_b += b.push(c)
    out_a += a.push(chunks[4])
    out_b += b.push(chunks[4])
    out_b += b.flush()
    out_a += a.flush()
    assert len(out_a) == len(out_b) == len(out_alone) == 34
    for fa, fb, fc in zip(out_a, out_b, out_alone, strict=True):
        assert np.array_equal(fa.to_ndarray(format="rgb24"), fc.to_ndarray(format="rgb24"))
        assert np.array_equal(fb.to_ndarray(format="rgb24"), fc.to_ndarray(format="rgb24"))


def test_padded_size_is_a_128_multiple_of_at_least_128() -> None:
    assert padded_size(152, 200) == (256, 256)
    assert padded_size(768, 1408) == (768, 1408)
    assert padded_size(12, 20) == (128, 128)
    assert padded_size(129, 128) == (256, 128)


def test_upscale_matches_pillow_bicubic_golden() -> None:
    img = (np.arange(5 * 7 * 3, dtype=np.int64) * 37 % 256).astype(np.uint8).reshape(5, 7, 3)
    up = PilBicubicUpscaler(7, 5, 4, torch.device("cpu"))(torch.from_numpy(img).permute(2, 0, 1))
    out = up.permute(1, 2, 0).contiguous().numpy()
    assert out.shape == (20, 28, 3)
    # sha256 of PIL.Image.fromarray(img).resize((28, 20), Image.BICUBIC) from Pillow 13.0.0
    assert (
        hashlib.sha256(out.tobytes()).hexdigest()
        == "ddff6bc44d39af60bdf88868fd669ddece9d696431fb4ec19dab1ea74e8cb8b1"
    )


def test_upscale_matches_pillow_on_random_images() -> None:
    image = pytest.importorskip("PIL.Image", reason="Pillow is not a dependency; the golden test covers CI")
    rng = np.random.default_rng(0)
    for w, h in [(50, 38), (1, 1), (3, 2), (33, 17)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(image.fromarray(img).resize((4 * w, 4 * h), image.BICUBIC))
        got = PilBicubicUpscaler(w, h, 4, torch.device("cpu"))(torch.from_numpy(img).permute(2, 0, 1))
        assert np.array_equal(got.permute(1, 2, 0).numpy(), want), (w, h)


def test_upscale_keeps_a_flat_image_flat() -> None:
    img = torch.full((3, 9, 11), 77, dtype=torch.uint8)
    assert (PilBicubicUpscaler(11, 9, 4, torch.device("cpu"))(img) == 77).all()

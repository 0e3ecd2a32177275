"""``livevsr bench engine``: per-step time and GPU memory of the FlashVSR engine, random weights.

Full-size modules (DiT 1.3B, proj-in, TC decoder or Wan VAE decoder) with random weights, fed a
synthetic moving pattern through the real engine (av frames in and out, bicubic, padding, colour
fix, uint8): so the time is what a stream sees per chunk of 8 frames. Prints one JSON line.

    livevsr bench engine                      # 352x192 -> 1408x768, tiny variant, attention auto
    livevsr bench engine --attention flex --steps 30
    livevsr bench engine --tiny --device cpu  # a small model, to check the bench itself runs

Step 0 (6 latents, 21 frames) is reported apart from the steady steps (2 latents, 8 frames each).
The fps comes from steady steps with nothing added inside them (one sync at each step's end, where
the output frames reach the host anyway). ``--breakdown`` then runs a few more steps with a device
sync around each stage (DiT, self-attention, proj-in, decoder) for per-stage times: those steps
are slower by the syncs and are never the fps. Memory: peak reserved (what the caching allocator
holds, which is what a memory goal is judged on) and peak allocated, both reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import av
import numpy as np
import torch

from livevsr.config import FlashVSRConfig
from livevsr.engines.flashvsr.dit import DiTConfig
from livevsr.engines.flashvsr.engine import CHUNK_FRAMES, FlashVSREngine, random_models

GIB = 1 << 30
TINY_DIT = DiTConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, freq_dim=32, text_dim=64)


def _pattern(n: int, width: int, height: int) -> list[av.VideoFrame]:
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(n):
        rgb = np.stack([(xx * 3 + 5 * t) % 256, (yy * 2 + 3 * t) % 256, ((xx ^ yy) + t) % 256], -1)
        frames.append(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24"))
    return frames


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _timed(
    owner: object,
    attr: str,
    stages: dict[str, list[float]],
    device: torch.device,
    method: str | None = None,
    label: str | None = None,
) -> None:
    """Wrap ``owner.attr`` (or its ``method``) so every call adds its synchronised wall time to stages."""
    target = getattr(owner, attr)
    name = method or ("forward_clip" if attr == "proj_in" else "decode" if attr == "decoder" else "__call__")
    inner = getattr(target, name)
    times = stages.setdefault(label or attr, [])

    def wrapper(*args: object, **kwargs: object) -> object:
        _sync(device)
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        return out

    if name == "__call__":
        setattr(owner, attr, wrapper)  # the session calls self.dit(...)
    else:
        setattr(target, name, wrapper)


def _check_finite(session: object, results: list[bool]) -> None:
    dit = session.dit  # type: ignore[attr-defined]

    def checked(*args: object, **kwargs: object) -> torch.Tensor:
        out = dit(*args, **kwargs)
        results.append(bool(torch.isfinite(out).all()))
        return out

    session.dit = checked  # type: ignore[attr-defined]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livevsr bench engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=1408, help="output width in pixels (input = width / 4)")
    p.add_argument("--height", type=int, default=768, help="output height in pixels (input = height / 4)")
    p.add_argument("--steps", type=int, default=20, help="steady steps timed (8 frames each)")
    p.add_argument("--warmup", type=int, default=3, help="steady steps run before timing")
    p.add_argument("--variant", choices=("tiny", "full"), default="tiny")
    p.add_argument("--proj-in", choices=("v1.0", "v1.1"), default="v1.0")
    p.add_argument("--attention", choices=("auto", "cupy", "flex", "reference"), default="auto")
    p.add_argument("--sparse-ratio", type=float, default=2.0)
    p.add_argument("--local-range", type=int, default=11)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a small random model instead of the full size")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="after the timed steps, time DiT, self-attention, proj-in and decoder per step "
        "(synchronises around each; those steps do not count towards the fps)",
    )
    p.add_argument("--breakdown-steps", type=int, default=5, help="steps run with --breakdown's syncs")
    return p


def main(argv: list[str]) -> int:
    result = run(parser().parse_args(argv))
    print(json.dumps(result))
    return 2 if "error" in result else 0


def build_engine(args: argparse.Namespace) -> FlashVSREngine:
    """The engine the bench runs: full-size random modules, or small ones with ``--tiny``."""
    cfg = FlashVSRConfig(
        variant=args.variant,
        proj_in=args.proj_in,
        attention=args.attention,
        sparse_ratio=args.sparse_ratio,
        local_range=args.local_range,
        dtype=args.dtype,
        device=args.device,
    )
    if args.tiny:
        models = random_models(
            cfg, TINY_DIT, proj_hidden=(32, 32), decoder_channels=(16, 16, 16, 16), prompt_tokens=16
        )
    else:
        models = random_models(cfg)
    return FlashVSREngine(cfg, weights=models)


def _push_steps(
    engine: FlashVSREngine, frames: list[av.VideoFrame], chunks: range, device: torch.device
) -> tuple[list[float], list[int], list[tuple[float, float]]]:
    """Push chunks of 8 frames; per push: wall ms, frames out, (allocated, reserved) GiB after it.

    The only syncs are the two around each push (the push itself ends with a device-to-host copy)."""
    times_ms: list[float] = []
    emitted: list[int] = []
    mem: list[tuple[float, float]] = []
    for c in chunks:
        _sync(device)
        t0 = time.perf_counter()
        out = engine.push(frames[c * CHUNK_FRAMES : (c + 1) * CHUNK_FRAMES])
        _sync(device)
        times_ms.append((time.perf_counter() - t0) * 1e3)
        emitted.append(len(out))
        if device.type == "cuda":
            mem.append((torch.cuda.memory_allocated(device) / GIB, torch.cuda.memory_reserved(device) / GIB))
    return times_ms, emitted, mem


def run(args: argparse.Namespace) -> dict:
    """The benchmark itself; returns the result (with an "error" key if it could not run)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"bench": "engine", "error": "no CUDA device; use --device cpu --tiny to smoke-test"}
    engine = build_engine(args)
    in_w, in_h = args.width // 4, args.height // 4
    engine.open(in_w, in_h, 30.0)
    session = engine._session
    assert session is not None
    timed = 4 + args.warmup + args.steps  # the first step runs on the 4th push
    extra = 1 + (args.breakdown_steps if args.breakdown else 0)  # the finite check, then the breakdown
    frames = _pattern(CHUNK_FRAMES * (timed + extra), in_w, in_h)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times_ms, emitted, mem = _push_steps(engine, frames, range(timed), device)
    steady = times_ms[4 + args.warmup :]
    peaks = (
        (torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB)
        if device.type == "cuda"
        else None
    )

    finite: list[bool] = []  # is the DiT's velocity finite (random weights may overflow); costs a sync
    dit = session.dit
    _check_finite(session, finite)
    _push_steps(engine, frames, range(timed, timed + 1), device)
    session.dit = dit

    stages: dict[str, list[float]] = {}
    breakdown_ms: list[float] = []
    if args.breakdown:
        _timed(session, "proj_in", stages, device)
        _timed(session, "decoder", stages, device)
        _timed(session, "backend", stages, device, method="attend", label="self_attention")
        _timed(session, "dit", stages, device)
        breakdown_ms, _, _ = _push_steps(engine, frames, range(timed + 1, timed + extra), device)

    p50 = statistics.median(steady)
    r3 = lambda x: round(x, 3)
    result = {
        "bench": "engine",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": "tiny-random" if args.tiny else "full-size-random",
        "dit": dataclasses.asdict(engine.dit_config),
        "variant": args.variant,
        "proj_in": args.proj_in,
        "attention": type(engine._backend).__name__,
        "dtype": args.dtype,
        "in": [in_w, in_h],
        "out": [4 * in_w, 4 * in_h],
        "model_size": [session.spec.width, session.spec.height],
        "topk": session.spec.geom.topk,
        "first_step_ms": round(times_ms[3], 2),  # 6 latents -> 21 frames
        "step_ms_p50": round(p50, 2),
        "step_ms_p95": round(_percentile(steady, 0.95), 2),
        "step_ms_min": round(min(steady), 2),
        "fps_p50": round(CHUNK_FRAMES / (p50 / 1e3), 2),
        "steps_timed": len(steady),
        "frames_per_push": emitted,
        # The caching allocator's reserve is what the process holds on the GPU: goals are judged on it.
        "peak_reserved_gib": r3(peaks[1]) if peaks else None,
        "peak_allocated_gib": r3(peaks[0]) if peaks else None,
        "allocated_gib_after_first_step": r3(mem[3][0]) if mem else None,
        "allocated_gib_last": r3(mem[-1][0]) if mem else None,
        "reserved_gib_last": r3(mem[-1][1]) if mem else None,
        "velocity_finite": finite[-1] if finite else None,
        "stage_ms_per_step": (
            {k: round(sum(v) / len(breakdown_ms), 2) for k, v in stages.items()} if breakdown_ms else None
        ),
        "breakdown_steps": len(breakdown_ms),
        "breakdown_step_ms_p50": round(statistics.median(breakdown_ms), 2) if breakdown_ms else None,
        "torch": torch.__version__,
    }
    engine.close()
    return result


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))

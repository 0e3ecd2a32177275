"""``livevsr bench profile``: one steady FlashVSR step under torch.profiler, summarised.

Same engine and options as ``livevsr bench engine`` (full-size random weights, or ``--tiny``). After
the first step and ``--warmup`` steady steps, one push runs under the profiler. Stages are marked
with ``record_function`` ranges (no sync added), so a stage's device time is the time of the
kernels launched inside it. Prints one JSON line: the step's wall time, total kernel time and how
busy the GPU was, per-stage times, the top kernels with their share of kernel time, and kernel time
by category. On the CPU (``--device cpu --tiny``, a smoke test) the "kernels" are torch's CPU ops.

    livevsr bench profile --attention cupy            # 1408x768 output
    livevsr bench profile --trace /tmp/step.json.gz   # also a Chrome trace of the step
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from livevsr.bench import engine as engine_bench
from livevsr.engines.flashvsr.engine import CHUNK_FRAMES

# Kernel name -> category, first match wins (cuDNN, cuBLAS, Triton and our cupy kernels' names).
CATEGORIES = (
    ("sparse attention (cupy)", r"block_sparse_attn_fwd"),
    ("draft mask (cupy)", r"block_mean_pool|draft_scores_softmax|topk_block_lists"),
    ("flex attention (triton)", r"flex|triton_tem"),
    ("dense attention (sdpa)", r"flash|fmha|sdpa|attention|attn"),
    ("convolution", r"conv|fprop|implicit_gemm|dgrad|wgrad|nchwToNhwc|nhwcToNchw|cudnn"),
    ("matmul", r"gemm|nvjet|cutlass|cublas|xmma|sm90_|sm80_"),
    ("normalisation", r"norm"),
    ("copy / elementwise / reduce", r"elementwise|vectorized|copy|Copy|cat|index|gather|pad|reduce|Memcpy"),
    ("other", r"."),
)


def parser() -> argparse.ArgumentParser:
    p = engine_bench.parser()
    p.prog = "livevsr bench profile"
    p.description = __doc__.split("\n\n")[0]
    p.set_defaults(warmup=2)
    p.add_argument("--top", type=int, default=15, help="kernels listed (by total time)")
    p.add_argument("--trace", type=Path, default=None, help="write the step's Chrome trace here (.json.gz)")
    return p


def main(argv: list[str]) -> int:
    result = run(parser().parse_args(argv))
    print(json.dumps(result))
    return 2 if "error" in result else 0


def _mark(owner: object, attr: str, label: str, method: str | None = None) -> None:
    """Run ``owner.attr`` (or its ``method``) inside a profiler range named ``label``."""
    target = getattr(owner, attr)
    inner: Callable[..., Any] = getattr(target, method) if method else target

    def wrapper(*args: object, **kwargs: object) -> object:
        with record_function(label):
            return inner(*args, **kwargs)

    if method:
        setattr(target, method, wrapper)
    else:
        setattr(owner, attr, wrapper)


def _category(name: str) -> str:
    return next(c for c, rx in CATEGORIES if re.search(rx, name))


def summarise(prof: Any, wall_ms: float, cuda: bool, top: int) -> dict[str, Any]:
    """The profile as JSON-able numbers: per-stage ms, top kernels (or CPU ops) and categories."""
    averages = prof.key_averages()
    stages = {}
    for e in averages:
        if e.key.startswith("stage:"):
            ms = (e.device_time_total if cuda else e.cpu_time_total) / 1e3
            stages[e.key.removeprefix("stage:")] = {"ms": round(ms, 3), "calls": e.count}
    per_name: dict[str, list[float]] = {}
    if cuda:  # the kernels themselves, each launch with its own duration
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                per_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
    else:  # torch's ops, by self time (their children not counted twice)
        for e in averages:
            if e.self_cpu_time_total > 0 and not e.key.startswith(("stage:", "ProfilerStep")):
                per_name[e.key] = [e.self_cpu_time_total / max(1, e.count)] * e.count
    total_us = sum(sum(v) for v in per_name.values())
    share = lambda us: round(100 * us / total_us, 2) if total_us else 0.0
    ranked = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))
    kernels = [
        {"name": n[:200], "ms": round(sum(ts) / 1e3, 3), "calls": len(ts), "share_pct": share(sum(ts))}
        for n, ts in ranked[:top]
    ]
    categories: dict[str, float] = {}
    for n, ts in per_name.items():
        c = _category(n)
        categories[c] = categories.get(c, 0.0) + sum(ts)
    return {
        "step_wall_ms": round(wall_ms, 2),
        "kernel_ms_total": round(total_us / 1e3, 3),
        "kernels_launched": sum(len(v) for v in per_name.values()) if cuda else None,
        "gpu_busy_pct": round(100 * total_us / 1e3 / wall_ms, 1) if cuda and wall_ms else None,
        "stages": stages,
        "top_kernels" if cuda else "top_cpu_ops": kernels,
        "categories_pct": {c: share(us) for c, us in sorted(categories.items(), key=lambda kv: -kv[1])},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        return {"bench": "profile", "error": "no CUDA device; use --device cpu --tiny to smoke-test"}
    engine = engine_bench.build_engine(args)
    in_w, in_h = args.width // 4, args.height // 4
    engine.open(in_w, in_h, 30.0)
    session = engine._session
    assert session is not None
    _mark(session, "dit", "stage:dit")
    _mark(session, "backend", "stage:self_attention", "attend")
    _mark(session, "proj_in", "stage:proj_in", "forward_clip")
    _mark(session, "decoder", "stage:decoder", "decode")
    _mark(engine, "_prepare", "stage:prepare (upload, bicubic)")
    _mark(engine, "_finish", "stage:finish (colour fix, to host)")
    warm = 4 + args.warmup  # the first step runs on the 4th push
    frames = engine_bench._pattern(CHUNK_FRAMES * (warm + 1), in_w, in_h)
    for c in range(warm):
        engine.push(frames[c * CHUNK_FRAMES : (c + 1) * CHUNK_FRAMES])
    engine_bench._sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        engine.push(frames[warm * CHUNK_FRAMES :])
        engine_bench._sync(device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    result: dict[str, Any] = {
        "bench": "profile",
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "model": "tiny-random" if args.tiny else "full-size-random",
        "attention": type(engine._backend).__name__,
        "out": [4 * in_w, 4 * in_h],
        "model_size": [session.spec.width, session.spec.height],
        **summarise(prof, wall_ms, cuda, args.top),
        "torch": torch.__version__,
    }
    if args.trace:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(raw))
            with raw.open("rb") as src, gzip.open(args.trace, "wb") as dst:
                shutil.copyfileobj(src, dst)
        result["trace"] = str(args.trace)
    engine.close()
    return result


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))

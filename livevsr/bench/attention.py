"""``livevsr bench attention``: the LCSA kernels against dense SDPA and FlexAttention on one GPU.

For each HR size, steady state (1 query chunk against 4 key chunks: 3 cached + current) with the
spec's default sparsity (sparse_ratio 2.0, local_range 11, 12 heads of 128):
- ``draft``: block_mean_pool(q) + block_select (the draft mask as per-query-block lists),
- ``ring_write``: writing the new chunk's K/V into its ring slot and pooling its keys,
- ``attn``: block_sparse_attn over the selected blocks, read straight from the ring,
- ``sdpa``: torch scaled_dot_product_attention, dense, same q/k/v,
- ``flex``: compiled FlexAttention with the same blocks as a BlockMask (full blocks).
p50/p95 in ms from CUDA events around each call (launch gaps included). FLOPs: 4*128^3 per selected
(head, query block, key block) pair for the sparse runs, 4*Lq*Lk*128*H for the dense one.
Prints one JSON line and appends the run to BENCHMARKS.md.

``--device cpu`` (smoke test of the bench itself, e.g. ``--sizes 128x256 --heads 2``): the cupy
kernels need CUDA, so "ours" is then the torch reference of the same two steps (draft_block_mask,
block_sparse_attention_reference), FlexAttention runs eagerly, times are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from livevsr.bench import report

BLOCK = 128
HEAD_DIM = 128


def sparse_flops(pairs: int) -> float:
    """FLOPs of block-sparse attention: QK^T and PV, 2*128^3 each, per selected block pair per head."""
    return 4.0 * BLOCK**3 * pairs


def dense_flops(lq: int, lk: int, heads: int) -> float:
    return 4.0 * lq * lk * HEAD_DIM * heads


def _percentiles(times_ms: list[float]) -> dict[str, float]:
    t = sorted(times_ms)
    pick = lambda p: t[min(len(t) - 1, max(0, math.ceil(p * len(t)) - 1))]
    return {"p50": round(pick(0.50), 4), "p95": round(pick(0.95), 4)}


def _time_ms(fn: Callable[[], Any], iters: int, warmup: int, device: torch.device) -> list[float]:
    if device.type != "cuda":
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def _tokens(n_blocks: int, heads: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """[n_blocks*128, H, 128] bf16, with per-block offsets so the draft mask is not flat."""
    offset = torch.randn(n_blocks, 1, heads, HEAD_DIM, generator=gen, device=device) * 0.5
    noise = torch.randn(n_blocks, BLOCK, heads, HEAD_DIM, generator=gen, device=device)
    return (offset + noise).reshape(n_blocks * BLOCK, heads, HEAD_DIM).to(torch.bfloat16)


def _flex_runner(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_idx: torch.Tensor, kv_cnt: torch.Tensor
) -> tuple[Callable[[], torch.Tensor] | None, str]:
    """FlexAttention over the same selected blocks. On CUDA compiled, as full blocks (no per-element
    mask), falling back to partial blocks with the no-op mask_mod if that does not compile. Elsewhere
    eager, which ignores block lists: there a mask_mod looks each element's block up instead."""
    from torch.nn.attention import flex_attention as fa

    from livevsr.engines.flashvsr import kernels

    lq, lk = q.shape[0], k.shape[0]
    compiled = q.is_cuda
    flex = torch.compile(fa.flex_attention, dynamic=False) if compiled else fa.flex_attention
    cnt = kv_cnt[None].contiguous()  # [1, H, nqb]
    idx = kv_idx[None].contiguous()  # [1, H, nqb, nkb]
    qf, kf, vf = (t.permute(1, 0, 2).unsqueeze(0) for t in (q, k, v))  # [1, H, L, D]
    errors = []
    for how in ("full blocks", "partial blocks") if compiled else ("eager, mask_mod lookup",):
        if how == "full blocks":
            bm = fa.BlockMask.from_kv_blocks(
                torch.zeros_like(cnt), idx, cnt, idx, BLOCK_SIZE=BLOCK, seq_lengths=(lq, lk)
            )
        elif how == "partial blocks":
            bm = fa.BlockMask.from_kv_blocks(cnt, idx, BLOCK_SIZE=BLOCK, seq_lengths=(lq, lk))
        else:
            mask = kernels.lists_to_mask(kv_idx, kv_cnt, lk // BLOCK)

            def lookup(
                b: torch.Tensor, h: torch.Tensor, qi: torch.Tensor, ki: torch.Tensor, mask: Any = mask
            ) -> torch.Tensor:
                return mask[h, qi // BLOCK, ki // BLOCK]

            bm = fa.BlockMask.from_kv_blocks(
                cnt, idx, BLOCK_SIZE=BLOCK, mask_mod=lookup, seq_lengths=(lq, lk)
            )

        def run(bm: Any = bm) -> torch.Tensor:
            return flex(qf, kf, vf, block_mask=bm)[0].permute(1, 0, 2)

        try:
            run()
        except Exception as exc:  # a compile failure is a result to report, not a crash
            errors.append(f"{how}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        return run, how + (f" ({errors[0]})" if errors else "")
    return None, "failed: " + "; ".join(errors)


def bench_size(
    height_px: int, width_px: int, args: argparse.Namespace, gen: torch.Generator
) -> dict[str, Any]:
    from livevsr.engines.flashvsr import kernels
    from livevsr.engines.flashvsr.attention import (
        BlockGeometry,
        block_sparse_attention_reference,
        draft_block_mask,
        topk_budget,
    )

    device = kernels.canonical_device(args.device)
    cuda = device.type == "cuda"
    bh, bw, heads = height_px // BLOCK, width_px // BLOCK, args.heads
    S = bh * bw
    geom = BlockGeometry(bh, bw, topk_budget(S, height_px, width_px, args.sparse_ratio), args.local_range)
    n_k = geom.kv_chunks + 1
    lq, lk = S * BLOCK, n_k * S * BLOCK
    q = _tokens(S, heads, gen, device)
    k = _tokens(n_k * S, heads, gen, device)
    v = _tokens(n_k * S, heads, gen, device)
    ring = kernels.KVRing(1, S, heads, args.device)  # the device by name, as given ("cuda")
    for c in range(n_k):
        ring.write(0, k[c * S * BLOCK : (c + 1) * S * BLOCK], v[c * S * BLOCK : (c + 1) * S * BLOCK])
    slots = ring.slots(0)
    if cuda:

        def draft() -> Any:
            return kernels.block_select(kernels.block_mean_pool(q), ring.k_pooled[0], slots, geom)

        lists = draft()
        kv_idx, kv_cnt = lists.kv_idx, lists.kv_cnt

        def attn() -> torch.Tensor:
            return kernels.block_sparse_attn(
                q, ring.k[0], ring.v[0], kv_idx, kv_cnt, slots=slots, blocks_per_chunk=S
            )

    else:  # no cupy kernels off CUDA: the torch reference of the same two steps

        def draft() -> Any:
            return draft_block_mask(q, k, geom)

        mask = draft()
        kv_idx, kv_cnt = kernels.mask_to_lists(mask)

        def attn() -> torch.Tensor:
            return block_sparse_attention_reference(q, k, v, mask)

    pairs = int(kv_cnt.sum().item())
    res: dict[str, Any] = {
        "size": f"{height_px}x{width_px}",
        "ours": "cupy" if cuda else "reference",
        "blocks_per_chunk": S,
        "lq": lq,
        "lk": lk,
        "heads": heads,
        "topk": geom.topk,
        "local_range": geom.local_range,
        "pairs": pairs,
        "density": round(pairs / (heads * S * n_k * S), 4),
        "empty_query_blocks": int((kv_cnt == 0).sum().item()),
    }

    new_k, new_v = k[: S * BLOCK], v[: S * BLOCK]
    spare = kernels.KVRing(1, S, heads, args.device)
    for _ in range(geom.kv_chunks):
        spare.write(0, new_k, new_v)

    def ring_write() -> None:
        spare.write(0, new_k, new_v)
        spare.drop_oldest(0)

    runs: dict[str, tuple[Callable[[], Any], float]] = {
        "draft": (draft, 0.0),
        "ring_write": (ring_write, 0.0),
        "attn": (attn, sparse_flops(pairs)),
    }
    if not args.no_sdpa:
        qd, kd, vd = (t.permute(1, 0, 2).unsqueeze(0).contiguous() for t in (q, k, v))  # [1, H, L, D]
        runs["sdpa"] = (
            lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd),
            dense_flops(lq, lk, heads),
        )
    if not args.no_flex:
        flex_fn, how = _flex_runner(q, k, v, kv_idx, kv_cnt)
        res["flex_block_mask"] = how
        if flex_fn is not None:
            runs["flex"] = (flex_fn, sparse_flops(pairs))
            # Query blocks that select nothing: ours writes zeros, flex may not; compare the others.
            rows = (kv_cnt > 0).T.repeat_interleave(BLOCK, 0)  # [Lq, H]
            diff = (attn().float() - flex_fn().float()).abs()[rows]
            res["attn_vs_flex_max_abs_diff"] = round(diff.max().item(), 5) if diff.numel() else 0.0
    for name, (fn, flops) in runs.items():
        times = _time_ms(fn, args.iters, args.warmup, device)
        res[f"{name}_ms"] = _percentiles(times)
        if flops:
            res[f"{name}_tflops"] = round(flops / (res[f"{name}_ms"]["p50"] * 1e-3) / 1e12, 1)
    res["ours_total_ms_p50"] = round(
        res["draft_ms"]["p50"] + res["ring_write_ms"]["p50"] + res["attn_ms"]["p50"], 4
    )
    return res


def _cell(result: dict[str, Any], name: str) -> str:
    ms = result.get(f"{name}_ms")
    return f"{ms['p50']:.3f} / {ms['p95']:.3f}" if ms else "-"


_COLUMNS = (
    "size", "pairs (density)", "draft ms p50/p95", "ring write ms", "ours attn ms p50/p95", "ours TFLOP/s",
    "flex ms p50/p95", "flex TFLOP/s", "SDPA dense ms p50/p95", "SDPA TFLOP/s",
)  # fmt: skip


def _append_markdown(path: Path, command: str, device: str, results: list[dict[str, Any]]) -> None:
    lines = [
        f"\n### attention: `{command}` ({report.utc_timestamp()}, {device})\n",
        report.table_header(_COLUMNS),
    ]
    for r in results:
        cells = [r["size"], f"{r['pairs']} ({r['density']:.1%})", _cell(r, "draft"), _cell(r, "ring_write")]
        cells += [_cell(r, "attn"), r.get("attn_tflops", "-"), _cell(r, "flex"), r.get("flex_tflops", "-")]
        cells += [_cell(r, "sdpa"), r.get("sdpa_tflops", "-")]
        lines.append(report.table_row(cells))
    report.append_section(path, lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livevsr bench attention", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="768x1408,1152x1920", help="HR sizes HxW in pixels, multiples of 128"
    )
    parser.add_argument("--device", default="cuda", help="cuda (the kernels), or cpu to smoke-test the bench")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--sparse-ratio", type=float, default=2.0)
    parser.add_argument("--local-range", type=int, default=11)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (compiles for ~a minute)")
    parser.add_argument("--no-sdpa", action="store_true")
    parser.add_argument(
        "--markdown", type=Path, default=Path(report.BENCHMARKS_MD), help="file the run is appended to"
    )
    parser.add_argument("--no-markdown", action="store_true")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sizes = []
    for s in args.sizes.split(","):
        try:
            h, w = (int(x) for x in s.lower().split("x"))
        except ValueError:
            parser.error(f"--sizes: expected HxW like 768x1408, got {s!r}")
        if h <= 0 or w <= 0 or h % BLOCK or w % BLOCK:
            parser.error(f"--sizes: {s!r} is not a positive multiple of {BLOCK} px on both sides")
        sizes.append((h, w))
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        print(json.dumps({"bench": "attention", "error": "no CUDA device: the cupy kernels need a GPU"}))
        return 2
    if cuda:
        import cupy

        versions = {"cupy": cupy.__version__}
        device = torch.cuda.get_device_name()
    else:
        versions, device = {}, "cpu"
    gen = torch.Generator(device=args.device).manual_seed(0)
    results = [bench_size(h, w, args, gen) for h, w in sizes]
    command = "livevsr bench attention " + shlex.join(argv)
    print(
        json.dumps(
            {
                "bench": "attention",
                "device": device,
                "torch": torch.__version__,
                **versions,
                "command": command.strip(),
                "results": results,
            }
        )
    )
    if not args.no_markdown:
        _append_markdown(args.markdown, command.strip(), device, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

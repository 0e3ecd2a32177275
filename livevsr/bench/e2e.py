"""``livevsr bench e2e``: the whole FlashVSR step (proj-in, DiT, TC decoder, colour fix, transfers)
at a given output size, with per-stage times, peak memory and the ratio to the published anchors.

    livevsr bench e2e                          # 1408x768 output from 352x192, full-size random weights
    livevsr bench e2e --size 1920x1080 --steps 30
    livevsr bench e2e --tiny --device cpu      # smoke test of the bench itself

Random weights cost the same compute as the real ones. The fps is from steady steps with no
per-stage syncs; ``--breakdown`` adds per-stage times from extra, synchronised steps. Appends a row
to BENCHMARKS.md (memory: peak reserved / peak allocated GiB).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from livevsr.bench import engine as engine_bench
from livevsr.bench import report

# Published anchors at 768x1408 (flashvsr_spec.md section 8): frames per second.
ANCHORS_FPS_768x1408 = {
    "paper_tiny_a100": 16.9,  # FlashVSR paper, A100
    "best_port_gh200": 57.0,  # the fastest published Hopper port
    "h100_compute_bound": 96.5,  # 8.291 TFLOP per frame at 800 TFLOP/s
}
ANCHOR_PIXELS = 768 * 1408


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="livevsr bench e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1408x768", help="output WxH (input is a quarter of each side)")
    p.add_argument("--steps", type=int, default=20, help="steady steps timed (8 frames each)")
    p.add_argument("--warmup", type=int, default=3, help="steady steps run before timing")
    p.add_argument("--attention", choices=("auto", "cupy", "flex", "reference"), default="auto")
    p.add_argument("--variant", choices=("tiny", "full"), default="tiny")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a small random model (smoke test)")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also per-stage times, from extra steps with a sync around each stage (not the fps)",
    )
    p.add_argument("--out", default=report.BENCHMARKS_MD, help="append a row here ('' to skip)")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size: expected WxH like 1920x1080, got {args.size!r}")
    engine_args = engine_bench.parser().parse_args(
        [
            "--width", str(width), "--height", str(height), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--attention", args.attention, "--variant", args.variant,
            "--device", args.device,
        ]
        + (["--tiny"] if args.tiny else [])
        + (["--breakdown"] if args.breakdown else [])
    )  # fmt: skip
    result = engine_bench.run(engine_args)
    result["bench"] = "e2e"
    if "error" in result:
        print(json.dumps(result))
        return 2
    # Anchors scale with pixels per frame (the step's compute is nearly linear in the pixel count).
    scale = ANCHOR_PIXELS / (width * height)
    result["anchor_ratio"] = {
        k: round(result["fps_p50"] / (v * scale), 3) for k, v in ANCHORS_FPS_768x1408.items()
    }
    print(json.dumps(result))
    if args.out:
        stages = result.get("stage_ms_per_step") or {}
        line = (
            f"| {time.strftime('%Y-%m-%d')} | `livevsr bench e2e {' '.join(argv)}` | {result['device']} "
            f"({platform.node()}) | {result['model']} | {width}x{height} | {result['attention']} | "
            f"{result['step_ms_p50']} / {result['step_ms_p95']} | {result['fps_p50']} | "
            f"{', '.join(f'{k} {v}' for k, v in stages.items()) or '-'} | "
            f"{result['peak_reserved_gib']} / {result['peak_allocated_gib']} | "
            f"{result['anchor_ratio']} |\n"
        )
        columns = (
            "date", "command", "device", "model", "output", "attention", "step ms p50 / p95", "fps",
            "stage ms per step (synced steps)", "peak GiB reserved / allocated", "fps / anchor",
        )  # fmt: skip
        heading = "### FlashVSR step, e2e (fps without per-stage syncs)"
        report.append_table_row(args.out, heading, columns, line)
    return 0

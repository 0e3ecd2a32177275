"""`livevsr bench attention --device cpu`: the bench's own code (ring writes by device name, the
draft mask, timings, FlexAttention against ours, the markdown) runs without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livevsr.bench import attention


def test_cpu_run_reports_every_timing_and_agrees_with_flex(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    md = tmp_path / "BENCHMARKS.md"
    argv = ["--device", "cpu", "--sizes", "128x256", "--heads", "2", "--iters", "2", "--warmup", "0"]
    assert attention.main([*argv, "--markdown", str(md)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["device"] == "cpu"
    (r,) = out["results"]
    assert r["size"] == "128x256" and r["ours"] == "reference" and r["blocks_per_chunk"] == 2
    for name in ("draft", "ring_write", "attn", "sdpa", "flex"):
        assert r[f"{name}_ms"]["p50"] > 0, name
    assert r["attn_vs_flex_max_abs_diff"] < 2e-2  # bf16 outputs of the same sparse attention
    assert "| 128x256 |" in md.read_text()


def test_default_sizes_are_hxw_of_the_two_goals() -> None:
    # H x W: 1408x768 output, and 1920x1080 output padded to 1152x1920.
    assert attention.build_parser().parse_args([]).sizes == "768x1408,1152x1920"


def test_sizes_off_the_block_grid_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        attention.main(["--sizes", "100x100", "--device", "cpu", "--no-markdown"])
    assert exc.value.code == 2
    assert "not a positive multiple of 128" in capsys.readouterr().err

"""`livevsr bench engine` / `bench e2e` on the CPU with a tiny random model: the fps comes from steps
with no per-stage syncs, per-stage times only when asked (from extra steps), memory both ways."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from livevsr.bench import e2e
from livevsr.bench import engine as engine_bench

TINY = ["--tiny", "--device", "cpu", "--size", "256x128", "--steps", "2", "--warmup", "0"]
TIMED_PUSHES = 4 + 0 + 2  # the first step on the 4th push, no warm-up, 2 timed steps


def _spy_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record who calls engine_bench._sync: the push loop (_push_steps) or a per-stage wrapper."""
    callers: list[str] = []
    real = engine_bench._sync

    def spy(device: object) -> None:
        callers.append(sys._getframe(1).f_code.co_name)
        real(device)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_bench, "_sync", spy)
    return callers


def _result(capsys: pytest.CaptureFixture[str]) -> dict:
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def test_e2e_times_steps_without_per_stage_syncs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    callers = _spy_syncs(monkeypatch)
    assert e2e.main([*TINY, "--out", ""]) == 0
    result = _result(capsys)
    assert set(callers) == {"_push_steps"}, "a stage was synchronised without --breakdown"
    assert len(callers) == 2 * (TIMED_PUSHES + 1)  # around each push, plus the finite-check push
    assert result["bench"] == "e2e" and result["steps_timed"] == 2
    assert result["stage_ms_per_step"] is None and result["breakdown_steps"] == 0
    assert result["fps_p50"] > 0 and result["velocity_finite"] is True
    for key in ("peak_reserved_gib", "peak_allocated_gib", "reserved_gib_last"):
        assert key in result  # None on the CPU; the CUDA caching allocator's figures on a GPU


def test_e2e_breakdown_syncs_only_after_the_timed_steps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    callers = _spy_syncs(monkeypatch)
    md = tmp_path / "BENCHMARKS.md"
    assert e2e.main([*TINY, "--breakdown", "--out", str(md)]) == 0
    result = _result(capsys)
    first_stage_sync = callers.index("wrapper")
    assert callers[:first_stage_sync].count("_push_steps") >= 2 * (TIMED_PUSHES + 1)
    assert result["breakdown_steps"] == 5 and result["steps_timed"] == 2
    stages = result["stage_ms_per_step"]
    assert set(stages) == {"dit", "self_attention", "proj_in", "decoder"}
    assert all(v > 0 for v in stages.values())
    text = md.read_text()
    assert "peak GiB reserved / allocated" in text
    assert "| cpu (" in text and "self_attention" in text


def test_engine_bench_first_step_and_frames() -> None:
    args = engine_bench.parser().parse_args(
        ["--tiny", "--device", "cpu", "--width", "128", "--height", "128", "--steps", "1", "--warmup", "0"]
    )
    result = engine_bench.run(args)
    assert result["frames_per_push"] == [0, 0, 0, 21, 8]
    assert result["out"] == [128, 128] and result["model_size"] == [128, 128]
    assert result["peak_reserved_gib"] is None  # no CUDA allocator on the CPU

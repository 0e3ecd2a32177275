"""`livevsr bench gpu`: the prepared GPU check, run on the CPU.

``--smoke`` runs every stage (env, kernel_check, tests, attention, engine, profile, both e2e) with a
tiny model on the CPU, as real subprocesses; the stage runner is also checked with commands that
fail, hang or print no result: each is reported as such and the stages after it still run.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from livevsr.bench import gpu
from livevsr.engines.flashvsr import kernel_check

STAGES = [
    "env", "kernel_check", "tests", "attention", "engine", "engine_flex", "profile", "e2e_1920x1080", "e2e_1408x768",
]  # fmt: skip


def test_smoke_run_has_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stages = STAGES if kernel_check.nvrtc_available() else [s for s in STAGES if s != "kernel_check"]
    assert gpu.main(["--smoke", "--out", str(tmp_path), "--only", ",".join(stages)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and report["smoke"] and report["device"] == "cpu"
    assert list(report["stages"]) == stages
    assert report["stages"]["engine_flex"]["status"] == "not_needed"  # engine passed
    for name, stage in report["stages"].items():
        if name == "engine_flex":
            continue
        assert stage["status"] == "ok", (name, stage.get("error"), stage.get("output_tail"))
        assert stage["result"], name
        assert re.search(rf"^ok +{name} ", printed, re.M)  # the summary at the end names every stage
    s = report["stages"]
    assert s["tests"]["result"]["tests"] >= 2 and s["tests"]["result"]["failures"] == 0
    if "kernel_check" in s:  # NVRTC is in the test extra; without it, test_kernel_check skips too
        assert {k["arch"] for k in s["kernel_check"]["result"]["kernels"]} == {"90"}
    assert s["attention"]["result"]["results"][0]["flex_ms"]["p50"] > 0
    assert set(s["engine"]["result"]["stage_ms_per_step"]) == {"dit", "self_attention", "proj_in", "decoder"}
    assert "peak_reserved_gib" in s["e2e_1408x768"]["result"]
    assert s["profile"]["result"]["top_cpu_ops"] and s["profile"]["result"]["stages"]["dit"]["ms"] > 0
    with gzip.open(tmp_path / "trace.json.gz") as f:
        assert json.load(f)["traceEvents"]
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "### GPU check: `livevsr bench gpu --smoke" in md and ", cpu)" in md
    assert "### attention:" in md and "### FlashVSR step, e2e" in md
    for name in stages:
        assert f"| {name} | {'not_needed' if name == 'engine_flex' else 'ok'} |" in md


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return True  # killed, waiting for init to reap it
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_failing_stages_are_reported_and_the_others_still_run(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    hang = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    stages = [
        gpu.Stage("bad_args", gpu._bench("attention", "--device", "cpu", "--sizes", "100x100"), 60),
        gpu.Stage("hang", _py(hang), 3),
        gpu.Stage("silent", _py("print('no json here')"), 30),
        gpu.Stage("error_result", _py('print(\'{"bench": "x", "error": "no CUDA device"}\')'), 30),
        gpu.Stage("crash", _py("raise SystemExit(3)"), 30),
        gpu.Stage("fine", _py('print("log line"); print(\'{"bench": "x", "value": 1}\')'), 30),
        gpu.Stage("after_crash", _py("print('{}')"), 30, fallback_for="crash"),
        gpu.Stage("after_fine", _py("raise SystemExit(1)"), 30, fallback_for="fine"),
    ]
    records = gpu.run_stages(stages, budget_s=120, log_path=tmp_path / "log", echo=False)
    status = {name: (r["status"], r["error"]) for name, r in records.items()}
    assert status == {
        "bad_args": ("failed", "exit status 2"),
        "hang": ("timeout", "over its 3 s cap"),
        "silent": ("failed", "no result in its output"),
        "error_result": ("failed", "no CUDA device"),
        "crash": ("failed", "exit status 3"),
        "fine": ("ok", None),
        "after_crash": ("ok", None),  # its stage failed: the fallback ran
        "after_fine": ("not_needed", None),  # its stage passed: not run
    }
    assert records["fine"]["result"] == {"bench": "x", "value": 1}
    assert gpu.describe("error_result", records["error_result"]) == "no CUDA device"
    junit = {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "failing": ["t::a"]}
    failed_tests = {"status": "failed", "error": "exit status 1", "result": junit}
    assert gpu.describe("tests", failed_tests) == "exit status 1; 1 passed, 1 failed, 1 skipped (t::a)"
    assert "not a positive multiple of 128" in records["bad_args"]["output_tail"]
    assert records["hang"]["seconds"] < 30
    assert _gone(int(pid_file.read_text())), "the timed-out stage's own child outlived it"
    log = (tmp_path / "log").read_text()
    assert "===== crash: failed" in log and "===== fine: ok" in log


def test_stages_past_the_budget_are_skipped_not_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu, "MIN_STAGE_S", 1.0)
    marker = tmp_path / "ran"
    stages = [
        gpu.Stage("slow", _py("import time; time.sleep(30)"), 60),
        gpu.Stage("late", _py(f"open({str(marker)!r}, 'w'); print('{{}}')"), 60),
    ]
    records = gpu.run_stages(stages, budget_s=3, log_path=tmp_path / "log", echo=False)
    assert records["slow"]["status"] == "timeout"  # its cap trimmed to what was left of the budget
    assert records["late"]["status"] == "skipped" and records["late"]["error"].startswith("budget:")
    assert not marker.exists()


def test_main_writes_failures_down_and_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def plan(out: Path, markdown: Path, smoke: bool) -> list[gpu.Stage]:
        return [
            gpu.Stage("env", gpu._py("-m", "livevsr.bench.gpu", "--env-only"), 60),
            gpu.Stage("crash", _py("raise SystemExit(7)"), 30),
        ]

    monkeypatch.setattr(gpu, "plan", plan)
    monkeypatch.setenv("OUT", str(tmp_path))  # the default results folder, as on the GPU machine
    assert gpu.main([]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["ok"] and report["stages"]["env"]["status"] == "ok"
    assert report["stages"]["crash"]["status"] == "failed"
    assert "| crash | failed |" in (tmp_path / "BENCHMARKS.md").read_text()
    assert re.search(r"^failed +crash ", capsys.readouterr().out, re.M)
    assert os.environ["OUT"] == str(tmp_path)


def test_only_rejects_unknown_stages(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gpu.main(["--smoke", "--out", str(tmp_path), "--only", "env,nope"])


def test_the_full_plan_covers_the_gpu_run(tmp_path: Path) -> None:
    stages = {s.name: s for s in gpu.plan(tmp_path, tmp_path / "BENCHMARKS.md", smoke=False)}
    assert list(stages) == [*STAGES, "ncu_attention"]
    assert (
        stages["ncu_attention"].needs == "ncu" and "block_sparse_attn_fwd" in stages["ncu_attention"].argv[-1]
    )
    argv = {name: " ".join(s.argv) for name, s in stages.items()}
    assert "tests/kernels" in argv["tests"] and "test_backend_step.py" in argv["tests"]
    assert "--sizes 768x1408,1152x1920" in argv["attention"] and "--no-flex" not in argv["attention"]
    assert "--breakdown" in argv["engine"] and "--device" not in argv["engine"]  # cuda, full size
    assert "--size 1920x1080" in argv["e2e_1920x1080"] and "--size 1408x768" in argv["e2e_1408x768"]
    assert all(
        "--breakdown" not in argv[n] and "--tiny" not in argv[n] for n in STAGES if n.startswith("e2e")
    )
    assert f"--trace {tmp_path / 'trace.json.gz'}" in argv["profile"]
    assert all(s.cap_s <= gpu.DEFAULT_BUDGET_S / 2 for s in stages.values())  # none can starve the rest
    assert gpu.DEFAULT_BUDGET_S <= 8 * 60 - 30  # the wheel install and start-up fit in the 8 minutes


def test_list_prints_the_stages_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--list", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [*STAGES, "ncu_attention"]
    assert not (tmp_path / "gpu_check.json").exists()


def test_a_stage_whose_program_is_missing_is_unavailable_not_failed(tmp_path: Path) -> None:
    stages = [gpu.Stage("prof", ["no-such-profiler-here", "--version"], 30, needs="no-such-profiler-here")]
    records = gpu.run_stages(stages, budget_s=60, log_path=tmp_path / "log", echo=False)
    assert records["prof"]["status"] == "unavailable" and records["prof"]["status"] in gpu.PASSING
    assert gpu.describe("prof", records["prof"]) == "no no-such-profiler-here on PATH"


def test_ncu_details_keep_the_summary_metrics() -> None:
    page = """  block_sparse_attn_fwd (66, 12, 1)x(256, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Section: GPU Speed Of Light Throughput
    ----------------------- ----------- ------------
    Metric Name             Metric Unit Metric Value
    ----------------------- ----------- ------------
    Memory Throughput                 %        41.20
    Duration                         us       512.03
    Compute (SM) Throughput           %        63.75
    Section: Occupancy
    Achieved Occupancy                %        12.40
"""
    got = gpu._ncu_details(page)
    assert got == {
        "metrics": {
            "Memory Throughput": "% 41.20",
            "Duration": "us 512.03",
            "Compute (SM) Throughput": "% 63.75",
            "Achieved Occupancy": "% 12.40",
        }
    }
    assert gpu.figures("ncu_attention", got).startswith("Memory Throughput % 41.20, Duration us 512.03")
    assert gpu._ncu_details("==ERROR== no kernels were profiled") is None

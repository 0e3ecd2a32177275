"""kernel_check's command line, and the archs it covers: plain sm_90 (what cupy.RawModule builds on
an H100, the compute capability as is) besides sm_90a and sm_80."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from livevsr.engines.flashvsr import kernel_check
from livevsr.engines.flashvsr.kernels import KERNEL_ARCHS

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "livevsr.engines.flashvsr.kernel_check", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_help_prints_usage_and_compiles_nothing() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--arch" in proc.stdout
    assert "FAIL" not in proc.stdout + proc.stderr


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        kernel_check.main(["--arch", "75"])
    assert exc.value.code == 2
    assert "--arch: expected one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kernel_check.main(["--no-such-option"])


def test_a_missing_source_fails_with_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert kernel_check.main(["no_such_kernel.cu"]) == 1
    assert "no_such_kernel.cu: no such file" in capsys.readouterr().err


def test_every_source_is_checked_for_plain_sm_90_and_sm_90a_and_sm_80() -> None:
    for source, archs in KERNEL_ARCHS.items():
        assert {"90", "90a", "80"} <= set(archs), source


@pytest.mark.skipif(not kernel_check.nvrtc_available(), reason="needs cupy and NVRTC (see test_kernel_check)")
def test_json_report_for_one_arch() -> None:
    proc = _run("--json", "--arch", "90", "kernels/block_select.cu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["errors"] == []
    assert {k["arch"] for k in report["kernels"]} == {"90"}
    assert {k["kernel"] for k in report["kernels"]} == {
        "block_mean_pool",
        "draft_scores_softmax",
        "topk_block_lists",
    }

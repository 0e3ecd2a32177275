"""``livevsr bench gpu``: everything one GPU run can tell us, as one budgeted command.

Stages, in priority order, each a subprocess with its own time cap (trimmed to what is left of
the whole run's ``--budget``), so a crash, a hang or an overrun of one loses nothing of the others:

- ``env``: device, driver, torch / CUDA / cuDNN / CuPy / NVRTC / Triton versions, nvcc, ncu;
- ``kernel_check``: the kernels compiled offline (registers, spills, shared memory; sm_90 = what
  cupy builds on an H100, sm_90a, sm_80);
- ``tests``: pytest of tests/kernels (the kernels on the device) and one engine step per
  attention backend against the reference backend;
- ``attention``: ``bench attention``, cupy vs FlexAttention vs dense SDPA at 768x1408 and 1152x1920;
- ``engine``: ``bench engine`` at 1408x768: steady fps (no per-stage syncs), then per-stage ms
  from extra synced steps, peak reserved and allocated memory; ``engine_flex`` runs it with
  FlexAttention only if that failed (say the cupy kernels fail on the device), else "not_needed";
- ``profile``: ``bench profile``, one steady step under torch.profiler: top kernels, their share;
- ``e2e_1920x1080``, ``e2e_1408x768``: ``bench e2e`` at the two output sizes;
- ``ncu_attention``: Nsight Compute's full set on one block_sparse_attn_fwd launch at 768x1408
  (attn.ncu-rep; duration, throughputs, occupancy in the summary), if ncu is there and time is left.

Everything goes to ``--out`` (default ``$OUT``, else ./gpu-check): gpu_check.json (every stage's
status, time, result and output tail), gpu_check.log (all output), tests.xml, trace.json.gz,
attn.ncu-rep, and
BENCHMARKS.md (the benches' own sections plus one summary table, all with the device name). A
summary is printed at the end. Exit status 0 only if every stage passed (or was not needed).

``--smoke`` runs the same stages on the CPU with a tiny random model and tiny sizes, so CI checks
the command itself; it measures nothing. On a bare GPU image, scripts/gpu_check.sh installs the
wheels the image lacks (PyAV) and runs this.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from livevsr.bench import report

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/ and kernels/ live here
DEFAULT_BUDGET_S = 450.0  # 7.5 min: with the wheels' install, inside 8 minutes on a bare machine
MIN_STAGE_S = 15.0  # a stage is skipped, not started, with less than this left of the budget
TAIL_CHARS = 3000  # of each stage's output kept in gpu_check.json


@dataclasses.dataclass
class Stage:
    """One step of the check: a command, its own time cap, and how its result is read."""

    name: str
    argv: list[str]
    cap_s: float
    reads: str = "json"  # "json": the last JSON line of stdout; "junit": the pytest XML report
    junit: Path | None = None
    fallback_for: str | None = None  # run only if that stage did not pass (else "not_needed")
    needs: str | None = None  # a program that must be on PATH (else "unavailable")


PASSING = ("ok", "not_needed", "unavailable")  # the statuses a run can end with and still pass
NCU_METRICS = (  # the lines of ncu's details page that the summary keeps
    "Duration", "Compute (SM) Throughput", "Memory Throughput", "Registers Per Thread",
    "Achieved Occupancy", "Theoretical Occupancy", "Executed Ipc Active", "L2 Hit Rate",
)  # fmt: skip


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _bench(*args: str) -> list[str]:
    return _py("-m", "livevsr", "bench", *args)


def _workers(n: int) -> list[str]:
    """pytest-xdist's ``-n`` where it is installed (the GPU image has it): the CPU-side emulation
    tests then share the machine's cores while the GPU tests run."""
    return ["-n", str(n)] if importlib.util.find_spec("xdist") else []


def _ncu(out: Path, argv: list[str]) -> list[str]:
    """Nsight Compute's full set on one block_sparse_attn_fwd launch of ``argv``, saved as
    OUT/attn.ncu-rep, then its details page printed (what the summary reads)."""
    rep = out / "attn.ncu-rep"
    profile = [
        "ncu",
        "--clock-control",
        "none",
        "--target-processes",
        "all",
        "-k",
        "regex:block_sparse_attn_fwd",
    ]
    profile += [
        "-c",
        "1",
        "--set",
        "full",
        "--import-source",
        "no",
        "-f",
        "-o",
        str(rep.with_suffix("")),
        *argv,
    ]
    details = ["ncu", "--import", str(rep), "--page", "details"]
    return ["sh", "-c", f"{shlex.join(profile)} && {shlex.join(details)}"]


def plan(out: Path, markdown: Path, smoke: bool) -> list[Stage]:
    """The stages of a full GPU run, or of a tiny CPU run with ``smoke``."""
    md, trace, junit = str(markdown), str(out / "trace.json.gz"), out / "tests.xml"
    # --confcutdir: tests/conftest.py imports the server (aiortc, not on a GPU image); conftests of
    # tests/kernels itself still load.
    pytest = _py(*"-m pytest -q -rfEs -p no:cacheprovider -o addopts=".split())
    pytest += ["--confcutdir", str(ROOT / "tests" / "kernels"), "--junitxml", str(junit)]
    pytest += ["-o", "junit_logging=system-out"]  # the tests' printed errors and timings, into tests.xml
    kernel_check = _py("-m", "livevsr.engines.flashvsr.kernel_check", "--json")
    stages = [Stage("env", _py("-m", "livevsr.bench.gpu", "--env-only"), 60)]
    if smoke:
        tiny = "--tiny --device cpu --steps 2 --warmup 0".split()
        small = [*tiny, "--width", "256", "--height", "128"]
        tests = ["tests/kernels/test_kv_ring_device.py", "tests/engines/flashvsr/test_backend_step.py"]
        attention = "attention --device cpu --sizes 128x256 --heads 2 --iters 2 --warmup 0".split()
        return stages + [
            Stage("kernel_check", [*kernel_check, "--arch", "90"], 60),
            Stage("tests", [*pytest, *tests], 120, reads="junit", junit=junit),
            Stage("attention", _bench(*attention, "--markdown", md), 60),
            Stage("engine", _bench("engine", *small, "--breakdown", "--breakdown-steps", "1"), 60),
            Stage("engine_flex", _bench("engine", *small, "--attention", "flex"), 60, fallback_for="engine"),
            Stage("profile", _bench("profile", *small, "--trace", trace), 60),
            Stage("e2e_1920x1080", _bench("e2e", *tiny, "--size", "384x216", "--out", md), 60),
            Stage("e2e_1408x768", _bench("e2e", *tiny, "--size", "256x128", "--out", md), 60),
        ]
    steps = "--steps 10 --warmup 2".split()
    tests = ["--durations=10", "tests/kernels", "tests/engines/flashvsr/test_backend_step.py"]
    attention = "attention --sizes 768x1408,1152x1920 --iters 20 --warmup 3".split()
    ncu_attention = (
        "attention --sizes 768x1408 --no-flex --no-sdpa --iters 1 --warmup 0 --no-markdown".split()
    )
    return stages + [
        Stage("kernel_check", kernel_check, 60),
        Stage("tests", [*pytest, *_workers(4), *tests], 150, reads="junit", junit=junit),
        Stage("attention", _bench(*attention, "--markdown", md), 150),
        Stage("engine", _bench("engine", *steps, "--breakdown", "--breakdown-steps", "3"), 100),
        # Engine figures even if the cupy kernels fail on the device: FlexAttention (compiles ~a minute).
        Stage(
            "engine_flex",
            _bench("engine", "--attention", "flex", "--steps", "5", "--warmup", "1"),
            150,
            fallback_for="engine",
        ),  # fmt: skip
        Stage("profile", _bench("profile", "--trace", trace), 80),
        Stage("e2e_1920x1080", _bench("e2e", "--size", "1920x1080", *steps, "--out", md), 90),
        Stage("e2e_1408x768", _bench("e2e", "--size", "1408x768", *steps, "--out", md), 75),
        Stage("ncu_attention", _ncu(out, _bench(*ncu_attention)), 120, reads="ncu", needs="ncu"),
    ]


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def _ncu_details(text: str) -> dict[str, Any] | None:
    """The kept metrics of ncu's details page: {"Duration": "412.35 us", ...}."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        for metric in NCU_METRICS:
            if line.strip().startswith(metric) and metric not in found:
                found[metric] = " ".join(line.strip()[len(metric) :].split())
    return {"metrics": found} if found else None


def _junit(path: Path) -> dict[str, Any] | None:
    """Counts and the failing tests' names from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    failing = []
    for case in suite.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failing.append(f"{case.get('classname')}::{case.get('name')}")
    return {
        "tests": int(suite.get("tests", 0)),
        "failures": int(suite.get("failures", 0)),
        "errors": int(suite.get("errors", 0)),
        "skipped": int(suite.get("skipped", 0)),
        "seconds": float(suite.get("time", 0.0)),
        "failing": failing[:30],
    }


def run_stage(stage: Stage, cap_s: float, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Run one stage under ``cap_s`` seconds; return its record and its whole output."""
    if stage.junit is not None:
        stage.junit.unlink(missing_ok=True)
    t0 = time.monotonic()
    # Its own process group, so a timeout also ends what it started (inductor's compile workers).
    proc = subprocess.Popen(
        stage.argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=cap_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # something left its group and holds the pipe: stop reading
            proc.kill()
            output = "(output lost: a process of this stage outlived it and kept its output open)"
    seconds = round(time.monotonic() - t0, 1)
    if stage.reads == "junit" and stage.junit:
        result = _junit(stage.junit)
    elif stage.reads == "ncu":
        result = _ncu_details(output)
    else:
        result = _last_json(output)
    error = None
    if timed_out:
        status, error = "timeout", f"over its {cap_s:.0f} s cap"
    elif proc.returncode != 0:
        status, error = "failed", f"exit status {proc.returncode}"
    elif result is None:
        status, error = "failed", "no result in its output"
    elif "error" in result:
        status, error = "failed", str(result["error"])
    else:
        status = "ok"
    record = {
        "status": status,
        "seconds": seconds,
        "cap_s": round(cap_s, 1),
        "rc": None if timed_out else proc.returncode,
        "error": error,
        "command": shlex.join(stage.argv),
        "result": result,
        "output_tail": output[-TAIL_CHARS:],
    }
    return record, output


def run_stages(
    stages: list[Stage], budget_s: float, log_path: Path, echo: bool = True
) -> dict[str, dict[str, Any]]:
    """Every stage in order, each capped by its own cap and by what is left of ``budget_s``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.monotonic()
    records: dict[str, dict[str, Any]] = {}
    with log_path.open("w") as log:
        for stage in stages:
            left = budget_s - (time.monotonic() - start)
            primary = records.get(stage.fallback_for or "", {}).get("status")
            if stage.fallback_for and primary in PASSING:
                records[stage.name] = {
                    "status": "not_needed",
                    "seconds": 0.0,
                    "error": None,
                    "note": f"{stage.fallback_for} passed",
                    "command": shlex.join(stage.argv),
                    "result": None,
                }
            elif stage.needs and not shutil.which(stage.needs):
                records[stage.name] = {
                    "status": "unavailable",
                    "seconds": 0.0,
                    "error": None,
                    "note": f"no {stage.needs} on PATH",
                    "command": shlex.join(stage.argv),
                    "result": None,
                }
            elif left < MIN_STAGE_S:
                records[stage.name] = {
                    "status": "skipped",
                    "seconds": 0.0,
                    "error": f"budget: {max(0.0, left):.0f} s left of {budget_s:.0f} s",
                    "command": shlex.join(stage.argv),
                    "result": None,
                }
            else:
                cap = min(stage.cap_s, left)
                log.write(f"===== {stage.name} (cap {cap:.0f} s): {shlex.join(stage.argv)}\n")
                log.flush()
                records[stage.name], output = run_stage(stage, cap, env)
                log.write(output + f"\n===== {stage.name}: {records[stage.name]['status']}\n")
                log.flush()
            if echo:
                r = records[stage.name]
                print(
                    f"{r['status']:10s} {stage.name:16s} {r['seconds']:6.1f} s  {r.get('error') or ''}",
                    flush=True,
                )
    return records


# ------------------------------------------------------------------------------------------------
# What each stage's result says, in one line


def _ms(x: Any) -> str:
    return f"{x['p50']:.3f}" if isinstance(x, dict) and "p50" in x else "-"


def figures(name: str, result: dict[str, Any] | None) -> str:
    """The stage's key numbers in one line, for the summary and the BENCHMARKS.md row."""
    if not result:
        return "-"
    if name == "env":
        r = result
        return f"{r.get('device')}, torch {r.get('torch')}, CUDA {r.get('cuda')}, cupy {r.get('cupy')}"
    if name == "kernel_check":
        return (
            "; ".join(
                f"{k['kernel']} sm_{k['arch']} {k['registers']} regs"
                for k in result.get("kernels", [])
                if k["arch"] in ("90", "80")
            )
            or "; ".join(result.get("errors", []))
            or "-"
        )
    if name == "tests":
        passed = result["tests"] - result["failures"] - result["errors"] - result["skipped"]
        line = f"{passed} passed, {result['failures'] + result['errors']} failed, {result['skipped']} skipped"
        return line + (f" ({', '.join(result['failing'][:5])})" if result["failing"] else "")
    if name == "attention":
        return "; ".join(
            f"{r['size']}: ours {_ms(r.get('attn_ms'))} ms ({r.get('attn_tflops', '-')} TFLOP/s) + draft "
            f"{_ms(r.get('draft_ms'))}, flex {_ms(r.get('flex_ms'))}, sdpa {_ms(r.get('sdpa_ms'))}"
            for r in result.get("results", [])
        )
    if name.startswith(("engine", "e2e")):
        line = (
            f"{result['out'][0]}x{result['out'][1]} {result['attention']}: {result['fps_p50']} fps "
            f"(step p50 {result['step_ms_p50']} ms), peak reserved {result['peak_reserved_gib']} / allocated "
            f"{result['peak_allocated_gib']} GiB"
        )
        if result.get("stage_ms_per_step"):
            line += ", synced stages " + ", ".join(f"{k} {v}" for k, v in result["stage_ms_per_step"].items())
        return line
    if name.startswith("ncu"):
        return ", ".join(f"{k} {v}" for k, v in result.get("metrics", {}).items()) or "-"
    if name == "profile":
        top = result.get("top_kernels") or result.get("top_cpu_ops") or []
        busy = result.get("gpu_busy_pct")
        busy_text = f", GPU busy {busy}%" if busy is not None else ""
        top_text = ", ".join(f"{k['name'][:40]} {k['share_pct']}%" for k in top[:3])
        return f"step {result['step_wall_ms']} ms{busy_text}; top: {top_text}"
    return "-"


def describe(name: str, record: dict[str, Any]) -> str:
    """What went wrong, if anything, then the figures (a failed test run still lists its failures)."""
    parts = [record[k] for k in ("error", "note") if record.get(k)]
    if record.get("result"):
        try:
            fig = figures(name, record["result"])
        except (KeyError, TypeError, IndexError) as exc:  # a result of another shape: say so, go on
            fig = f"(unreadable result: {type(exc).__name__} {exc})"
        if fig != "-":
            parts.append(fig)
    return "; ".join(parts) or "-"


def write_markdown(path: Path, command: str, device: str, records: dict[str, dict[str, Any]]) -> None:
    lines = [
        f"\n### GPU check: `{command}` ({report.utc_timestamp()}, {device})\n",
        report.table_header(("stage", "status", "s", "figures")),
    ]
    for name, r in records.items():
        cell = describe(name, r)
        lines.append(report.table_row((name, r["status"], r["seconds"], cell.replace("|", "/"))))
    report.append_section(path, lines)


# ------------------------------------------------------------------------------------------------
# The env stage (run in its own process: a CUDA that fails to start fails this stage only)


def environment() -> dict[str, Any]:
    import platform
    import shutil

    import torch

    info: dict[str, Any] = {
        "bench": "env",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            device=p.name,
            compute_capability=f"{p.major}.{p.minor}",
            sms=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
    for name in ("cupy", "triton", "av"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # a missing package is a finding, not a crash
            info[name] = f"missing ({type(exc).__name__})"
    try:
        from cupy_backends.cuda.libs import nvrtc

        info["nvrtc"] = ".".join(map(str, nvrtc.getVersion()))
    except Exception as exc:
        info["nvrtc"] = f"missing ({type(exc).__name__})"
    for tool in ("nvcc", "ncu", "compute-sanitizer", "nvidia-smi"):
        info[f"{tool}_path"] = shutil.which(tool)
    queries = {
        "nvcc": ["nvcc", "--version"],
        "nvidia_smi": [
            "nvidia-smi",
            "--query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.used",
            "--format=csv,noheader",
        ],
    }
    for key, cmd in queries.items():
        if shutil.which(cmd[0]):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
                info[key] = out.splitlines()[-1] if out else ""
            except (OSError, subprocess.TimeoutExpired) as exc:
                info[key] = f"failed ({type(exc).__name__})"
    return info


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livevsr bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else ./gpu-check)")
    p.add_argument("--markdown", type=Path, default=None, help="BENCHMARKS.md to append to (default: OUT/)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of every stage (CI), measures nothing")
    p.add_argument("--only", default=None, help="comma-separated stage names to run (default: all)")
    p.add_argument("--list", action="store_true", help="print the stages (cap, command) and run nothing")
    p.add_argument("--env-only", action="store_true", help=argparse.SUPPRESS)  # the env stage itself
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.env_only:
        print(json.dumps(environment()))
        return 0
    out = (args.out or Path(os.environ.get("OUT") or "gpu-check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    markdown = (args.markdown or out / "BENCHMARKS.md").resolve()
    stages = plan(out, markdown, args.smoke)
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {s.name for s in stages}
        if unknown:
            build_parser().error(f"--only: no stage {', '.join(sorted(unknown))}")
        stages = [s for s in stages if s.name in wanted]
    if args.list:
        for s in stages:
            print(f"{s.name:16s} cap {s.cap_s:4.0f} s  {shlex.join(s.argv)}")
        return 0
    command = ("livevsr bench gpu " + shlex.join(argv)).strip()
    print(f"{command}: {len(stages)} stages, budget {args.budget:.0f} s, results in {out}", flush=True)
    t0 = time.monotonic()
    records = run_stages(stages, args.budget, out / "gpu_check.log")
    env = records.get("env", {}).get("result") or {}
    device = env.get("device", "unknown device")
    summary = {
        "bench": "gpu",
        "command": command,
        "smoke": args.smoke,
        "device": device,
        "budget_s": args.budget,
        "seconds": round(time.monotonic() - t0, 1),
        "ok": all(r["status"] in PASSING for r in records.values()),
        "stages": records,
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_markdown(markdown, command, device, records)
    print(f"\n== {command} on {device}: {summary['seconds']} s of {args.budget:.0f} s budget")
    for name, r in records.items():
        print(f"{r['status']:10s} {name:16s} {r['seconds']:6.1f} s  {describe(name, r)}")
    print(f"results: {out / 'gpu_check.json'}, {markdown}, {out / 'gpu_check.log'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""``livevsr fuzz``: run the atheris fuzz targets in ``tests/fuzz/`` over their seed corpora.

    livevsr fuzz --seconds 600                 # every target, 600 s each, one after another
    livevsr fuzz --seconds 3600 --target rtmp_conn

Each target runs as its own subprocess (libFuzzer owns the process). New inputs go to a work
directory (``--work``, default a temporary one), never into the committed corpus; crashing inputs
are written there as ``crashes/<target>/crash-*``. One line per target reports inputs tried,
seconds, inputs per second and crashes; the exit status is 1 if any target crashed.
Needs ``atheris`` (the ``test`` extra) and a source checkout (the targets live under ``tests/``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent.parent / "tests" / "fuzz"

# target -> largest input libFuzzer may build (bytes); the captured publishes are about 7 KB
TARGETS = {
    "amf0": 4096,
    "chunk": 16384,
    "flv": 4096,
    "handshake": 4096,  # C0 C1 C2 and the first commands; rtmp_conn fuzzes what follows
    "rtmp_conn": 16384,
    "sdp": 8192,
}
TIMEOUT_S = 10  # per input; the slowest (a large SDP offer through aiortc) takes a few ms
RSS_LIMIT_MB = 2048
MALLOC_LIMIT_MB = 512  # far below what a claimed 2**31-byte chunk or message would need

_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class TargetResult:
    target: str
    inputs: int  # inputs tried, as libFuzzer counts them
    seconds: float
    returncode: int
    crashes: list[Path] = field(default_factory=list)  # inputs that crashed, hung or ran out of memory
    summary: str = ""  # the exception line (or libFuzzer's error line) of the first crash
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.crashes


def atheris_missing() -> str | None:
    """Why the targets cannot run here, or None."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "atheris is not installed (pip install -e '.[test]')"
    if not FUZZ_DIR.is_dir():
        return f"the fuzz targets are not here ({FUZZ_DIR}); run from a source checkout"
    return None


def _summary(output: str) -> str:
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "Uncaught Python exception" in line and i + 1 < len(lines):
            return lines[i + 1].strip()[:300]
    for line in lines:
        if "ERROR: libFuzzer" in line:
            return line.strip()[:300]
    return ""


def run_target(
    target: str, work: Path, *, seconds: float | None = None, runs: int | None = None
) -> TargetResult:
    """Fuzz ``target`` for ``seconds`` or ``runs`` inputs (after replaying its corpus)."""
    if target not in TARGETS:
        raise ValueError(f"unknown fuzz target {target!r}; expected one of {', '.join(TARGETS)}")
    new_inputs = work / "corpus" / target
    crashes = work / "crashes" / target
    new_inputs.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, f"fuzz_{target}.py", str(new_inputs), str(FUZZ_DIR / "corpus" / target),
        f"-max_len={TARGETS[target]}", f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-malloc_limit_mb={MALLOC_LIMIT_MB}", "-print_final_stats=1", f"-artifact_prefix={crashes}/",
    ]  # fmt: skip
    if seconds is not None:
        command.append(f"-max_total_time={max(int(seconds), 1)}")
    if runs is not None:
        command.append(f"-runs={runs}")
    start = time.monotonic()
    proc = subprocess.run(command, cwd=FUZZ_DIR, capture_output=True, text=True, errors="replace")
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    executed = _EXECUTED.findall(output)
    written = [Path(p) for p in _ARTIFACT.findall(output)]
    inputs = int(executed[-1]) if executed else 0
    return TargetResult(target, inputs, elapsed, proc.returncode, written, _summary(output), output)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livevsr fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target (default: 60)")
    parser.add_argument("--target", choices=sorted(TARGETS), help="one target (default: all, in turn)")
    parser.add_argument("--work", type=Path, help="where new inputs and crashes go (default: a temp dir)")
    args = parser.parse_args(argv)
    why = atheris_missing()
    if why is not None:
        print(f"livevsr fuzz: {why}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="livevsr-fuzz-"))
    targets = [args.target] if args.target else list(TARGETS)
    print(f"livevsr fuzz: {', '.join(targets)} for {args.seconds:g} s each; new inputs and crashes in {work}")
    failed = 0
    for target in targets:
        result = run_target(target, work, seconds=args.seconds)
        rate = result.inputs / result.seconds if result.seconds else 0.0
        line = f"{target}: {result.inputs} inputs in {result.seconds:.0f} s ({rate:.0f}/s), "
        if result.ok:
            print(line + "no crashes", flush=True)
            continue
        failed += 1
        found = ", ".join(str(p) for p in result.crashes) or f"exit status {result.returncode}"
        print(line + f"CRASH: {result.summary or 'see output'} ({found})", flush=True)
        if not result.crashes:
            print(result.output[-3000:], file=sys.stderr)
    return 1 if failed else 0

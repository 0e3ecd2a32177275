"""Offline compile check for the CUDA kernels: no GPU or driver needed.

``python -m livevsr.engines.flashvsr.kernel_check [--arch 90 ...] [source.cu ...]`` compiles every
``kernels/*.cu`` (or the given sources) through NVRTC with the options ``cupy.RawModule`` would use,
for each arch the source targets (``kernels.KERNEL_ARCHS``: plain sm_90, which is what cupy builds
on an H100, sm_90a and sm_80) or the ``--arch`` given, with ptxas verbose output and spills as
errors. ``--json`` prints one JSON object instead of the table. It prints
registers, spills and shared memory per kernel and arch, and exits 1 on a compile error, a spill, or
static + dynamic shared memory over the arch's per-block limit. Recipe: shared/design/gpu_offline.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from livevsr.engines.flashvsr.kernels import (
    DEFAULT_ARCHS,
    DYNAMIC_SMEM_MAX_BYTES,
    KERNEL_ARCHS,
    KERNEL_DIR,
    NVRTC_OPTIONS,
)

SMEM_LIMIT_BYTES = {"80": 163 * 1024, "86": 99 * 1024, "89": 99 * 1024, "90": 227 * 1024, "90a": 227 * 1024}
PTXAS_CHECK_OPTIONS = ("-Xptxas=-v", "-Xptxas=-warn-spills", "-Xptxas=-Werror")  # one ptxas flag per option

_RE_FN = re.compile(r"Compiling entry function '(\S+)' for 'sm_(\w+)'")
_RE_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_REGS = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")


class KernelCompileError(RuntimeError):
    """NVRTC or ptxas rejected a source; the message holds the program log."""


@dataclass
class KernelStats:
    source: str
    arch: str
    kernel: str
    registers: int = 0
    stack_bytes: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    static_smem_bytes: int = 0
    dynamic_smem_bytes: int = 0  # the most the launcher asks for (kernels.DYNAMIC_SMEM_MAX_BYTES)

    @property
    def smem_bytes(self) -> int:
        return self.static_smem_bytes + self.dynamic_smem_bytes

    def problems(self) -> list[str]:
        out = []
        if self.spill_store_bytes or self.spill_load_bytes:
            out.append(f"spills {self.spill_store_bytes} B stores / {self.spill_load_bytes} B loads")
        limit = SMEM_LIMIT_BYTES[self.arch]
        if self.smem_bytes > limit:
            out.append(f"shared memory {self.smem_bytes} B over the sm_{self.arch} limit {limit} B")
        return out


def _nvrtc():  # type: ignore[no-untyped-def]
    from cupy_backends.cuda.libs import nvrtc

    nvrtc.getVersion()  # raises if libnvrtc is missing: pip install nvidia-cuda-nvrtc
    return nvrtc


def nvrtc_available() -> bool:
    try:
        _nvrtc()
    except Exception:
        return False
    return True


def compile_offline(src: str, arch: str, name: str = "kernel.cu") -> tuple[bytes, str]:
    """Compile `src` to a cubin for sm_`arch` as RawModule would; return (cubin, NVRTC log)."""
    from cupy._core.core import assemble_cupy_compiler_options

    nvrtc = _nvrtc()
    opts = assemble_cupy_compiler_options(tuple(NVRTC_OPTIONS)) + (
        "-ftz=true",  # what cupy's RawModule compile adds
        "--device-as-default-execution-space",
        f"--gpu-architecture=sm_{arch}",
        *PTXAS_CHECK_OPTIONS,
    )
    prog = nvrtc.createProgram(src, name, (), ())
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as e:
            raise KernelCompileError(f"{name}: NVRTC sm_{arch} failed:\n{nvrtc.getProgramLog(prog)}") from e
        log = nvrtc.getProgramLog(prog)
        cubin = nvrtc.getCUBIN(prog) + b"\0"  # cupy strips the cubin's last byte
    finally:
        nvrtc.destroyProgram(prog)
    return cubin, log


def parse_ptxas_log(log: str, source: str, arch: str) -> list[KernelStats]:
    stats: dict[str, KernelStats] = {}
    cur: KernelStats | None = None
    for line in log.splitlines():
        if m := _RE_FN.search(line):
            cur = stats.setdefault(m[1], KernelStats(source, arch, m[1]))
            cur.dynamic_smem_bytes = DYNAMIC_SMEM_MAX_BYTES.get(m[1], 0)
        elif cur is not None and (m := _RE_SPILL.search(line)):
            cur.stack_bytes, cur.spill_store_bytes, cur.spill_load_bytes = int(m[1]), int(m[2]), int(m[3])
        elif cur is not None and (m := _RE_REGS.search(line)):
            cur.registers, cur.static_smem_bytes = int(m[1]), int(m[2] or 0)
    return list(stats.values())


def check_source(path: Path, archs: tuple[str, ...] | None = None) -> list[KernelStats]:
    """Compile one source for each of its archs; raise KernelCompileError on a compile error."""
    archs = archs or KERNEL_ARCHS.get(path.name, DEFAULT_ARCHS)
    src = path.read_text()
    out: list[KernelStats] = []
    for arch in archs:
        _, log = compile_offline(src, arch, path.name)
        stats = parse_ptxas_log(log, path.name, arch)
        if not stats:
            raise KernelCompileError(f"{path.name}: sm_{arch}: no entry function in the ptxas log:\n{log}")
        out.extend(stats)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m livevsr.engines.flashvsr.kernel_check",
        description="Compile the CUDA kernels offline through NVRTC (no GPU needed): registers, spills, "
        "shared memory per kernel and arch; exit 1 on a compile error, a spill or too much shared memory.",
    )
    p.add_argument("sources", nargs="*", type=Path, help=f"CUDA sources (default: every {KERNEL_DIR}/*.cu)")
    p.add_argument(
        "--arch",
        action="append",
        metavar="ARCH",
        help="compile for sm_ARCH only (repeatable; e.g. 90, 90a, 80; default: each source's archs "
        "in kernels.KERNEL_ARCHS)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    for arch in args.arch or ():
        if arch not in SMEM_LIMIT_BYTES:
            parser().error(f"--arch: expected one of {', '.join(SMEM_LIMIT_BYTES)}, got {arch!r}")
    paths = args.sources or sorted(KERNEL_DIR.glob("*.cu"))
    if not paths:
        print(f"no kernels found under {KERNEL_DIR}", file=sys.stderr)
        return 1
    archs = tuple(args.arch) if args.arch else None
    rc = 0
    report: dict[str, list] = {"kernels": [], "errors": []}
    for path in paths:
        if not path.is_file():
            print(f"FAIL {path}: no such file", file=sys.stderr)
            report["errors"].append(f"{path}: no such file")
            rc = 1
            continue
        try:
            stats = check_source(path, archs)
        except KernelCompileError as e:
            print(f"FAIL {e}", file=sys.stderr)
            report["errors"].append(str(e))
            rc = 1
            continue
        for s in stats:
            bad = s.problems()
            report["kernels"].append({**dataclasses.asdict(s), "problems": bad})
            if not args.json:
                print(
                    f"{'FAIL' if bad else 'ok  '} {s.source} sm_{s.arch} {s.kernel}: {s.registers} regs, "
                    f"stack {s.stack_bytes} B, spills {s.spill_store_bytes}/{s.spill_load_bytes} B, "
                    f"smem {s.static_smem_bytes} B static + {s.dynamic_smem_bytes} B dynamic"
                    + (f"  <-- {'; '.join(bad)}" if bad else "")
                )
            rc |= bool(bad)
    if args.json:
        print(json.dumps({"bench": "kernel_check", "ok": rc == 0, **report}))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

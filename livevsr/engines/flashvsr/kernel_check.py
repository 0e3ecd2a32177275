"""Offline compile check for the CUDA kernels: no GPU or driver needed.

``python -m livevsr.engines.flashvsr.kernel_check [source.cu ...]`` compiles every ``kernels/*.cu``
(or the given sources) through NVRTC with the options ``cupy.RawModule`` would use, for each arch the
source targets (``kernels.KERNEL_ARCHS``), with ptxas verbose output and spills as errors. It prints
registers, spills and shared memory per kernel and arch, and exits 1 on a compile error, a spill, or
static + dynamic shared memory over the arch's per-block limit. Recipe: shared/design/gpu_offline.md.
"""

from __future__ import annotations

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


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(KERNEL_DIR.glob("*.cu"))
    if not paths:
        print(f"no kernels found under {KERNEL_DIR}", file=sys.stderr)
        return 1
    rc = 0
    for path in paths:
        try:
            stats = check_source(path)
        except KernelCompileError as e:
            print(f"FAIL {e}", file=sys.stderr)
            rc = 1
            continue
        for s in stats:
            bad = s.problems()
            print(
                f"{'FAIL' if bad else 'ok  '} {s.source} sm_{s.arch} {s.kernel}: {s.registers} regs, "
                f"stack {s.stack_bytes} B, spills {s.spill_store_bytes}/{s.spill_load_bytes} B, "
                f"smem {s.static_smem_bytes} B static + {s.dynamic_smem_bytes} B dynamic"
                + (f"  <-- {'; '.join(bad)}" if bad else "")
            )
            rc |= bool(bad)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

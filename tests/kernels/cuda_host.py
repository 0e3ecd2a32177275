"""Build and launch kernels/*.cu on the CPU with the host harness in tests/kernels/host.

``g++`` compiles the unmodified kernel source with ``host/cuda_host.h`` force-included (the .cu files'
inline-PTX wrappers take their ``LIVEVSR_HOST_SIM`` branch) into a shared object, cached per source
and harness hash; ctypes launches it. ``on_cpu()`` routes ``kernels.py``'s launches here, so CPU tests
run the real launchers (grid, block, argument order, shared-memory sizes) on CPU tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

HOST_DIR = Path(__file__).resolve().parent / "host"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = (
    "-std=c++20",
    "-fPIC",
    "-fno-strict-aliasing",  # the kernels pun bf16x2 <-> unsigned as CUDA code does
    "-ffp-contract=off",
    "-Wall",
    "-Wno-unknown-pragmas",  # #pragma unroll
)
KERNEL_OPT = "-O1"  # kernel bodies are cheap next to the harness; -O1 compiles mutants fast
RUNTIME_OPT = "-O2"
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
_DYN_SMEM_RE = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?([A-Za-z_][\w\s]*?)\s+(\w+)\s*\[\s*\]"
)


class KernelError(RuntimeError):
    """A kernel failed on the host: a fault, a deadlock, a divergent collective, a bad address."""


class _Config(ctypes.Structure):
    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_mem", ctypes.c_uint),
        ("seed", ctypes.c_ulonglong),
        ("workers", ctypes.c_int),
        ("schedule", ctypes.c_int),
        ("error", ctypes.c_char_p),
        ("error_len", ctypes.c_int),
    ]


def available() -> bool:
    return shutil.which(CXX) is not None


def cache_dir() -> Path:
    root = os.environ.get("LIVEVSR_CUDA_HOST_CACHE") or os.path.join(
        tempfile.gettempdir(), f"livevsr-cuda-host-{os.getuid()}"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _harness_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(HOST_DIR.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(HOST_DIR)).encode() + b"\0" + p.read_bytes())
    h.update(" ".join((CXX, *CXXFLAGS, KERNEL_OPT, RUNTIME_OPT)).encode())
    return h.hexdigest()[:16]


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise KernelError(f"host build failed: {' '.join(cmd)}\n{res.stderr}")


_build_lock = threading.Lock()


def _runtime_object(harness: str) -> Path:
    out = cache_dir() / f"runtime-{harness}.o"
    with _build_lock:
        if out.exists():
            return out
        tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.o")
        _run([CXX, *CXXFLAGS, RUNTIME_OPT, "-c", str(HOST_DIR / "runtime.cpp"), "-o", str(tmp)])
        os.replace(tmp, out)
    return out


def build(source: str, name: str = "kernel.cu") -> Path:
    """Compile kernel source text to a shared object (cached); returns its path. Thread-safe, so
    several sources can be built at once."""
    harness = _harness_hash()
    key = hashlib.sha256(source.encode() + b"\0" + harness.encode()).hexdigest()[:20]
    so = cache_dir() / f"{Path(name).stem}-{key}.so"
    if so.exists():
        return so
    kernels = _KERNEL_RE.findall(source)
    if not kernels:
        raise KernelError(f'{name}: no extern "C" __global__ kernels found')
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir()))
    try:
        (work / name).write_text(source)
        lines = [f'#include "{name}"']
        lines += [f"LIVEVSR_DEFINE_DYNAMIC_SMEM({t.strip()}, {n})" for t, n in _DYN_SMEM_RE.findall(source)]
        lines += [f"LIVEVSR_EXPORT_KERNEL({k})" for k in kernels]
        (work / "driver.cpp").write_text("\n".join(lines) + "\n")
        include = ["-I", str(HOST_DIR / "include"), "-include", str(HOST_DIR / "cuda_host.h")]
        obj = work / "driver.o"
        _run([CXX, *CXXFLAGS, KERNEL_OPT, *include, "-c", str(work / "driver.cpp"), "-o", str(obj)])
        tmp = work / "module.so"
        _run([CXX, "-shared", "-o", str(tmp), str(obj), str(_runtime_object(harness)), "-pthread", "-ldl"])
        os.replace(tmp, so)  # atomic: concurrent builds of one source are harmless
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return so


class HostModule:
    """A host-compiled kernel source; ``launch`` runs one of its kernels over a grid."""

    def __init__(self, source: str, name: str = "kernel.cu") -> None:
        self.name = name
        self.path = build(source, name)
        self._lib = ctypes.CDLL(str(self.path))
        self.kernels = tuple(_KERNEL_RE.findall(source))

    def signature(self, kernel: str) -> str:
        fn = getattr(self._lib, f"livevsr_signature_{kernel}")
        fn.restype = ctypes.c_char_p
        return fn().decode()

    def launch(
        self,
        kernel: str,
        grid: Sequence[int],
        block: Sequence[int],
        args: Sequence[Any],
        shared_mem: int = 0,
        *,
        seed: int = 0,
        schedule: int = -1,
        workers: int = 2,
    ) -> None:
        """Run `kernel` with CUDA launch semantics. args: torch tensors (their CPU address), or the
        np.uint64 / np.int32 / np.float32 scalars kernels.py passes. schedule -1 rotates through the
        harness's twelve modes (shared-memory fill x schedule x cp.async landing) by block; 0..11
        picks one for every block (runtime.cpp)."""
        if kernel not in self.kernels:
            raise KernelError(f"{self.name}: no kernel {kernel!r} (has {', '.join(self.kernels)})")
        sig = self.signature(kernel)
        if len(sig) != len(args):
            raise KernelError(f"{kernel}: takes {len(sig)} arguments ({sig}), got {len(args)}")
        boxes = []
        for i, (code, a) in enumerate(zip(sig, args, strict=True)):
            boxes.append(_box(kernel, i, code, a))
        argv = (ctypes.c_void_p * len(boxes))(
            *[ctypes.cast(ctypes.pointer(b), ctypes.c_void_p) for b in boxes]
        )
        err = ctypes.create_string_buffer(1024)
        g, b = (list(grid) + [1, 1])[:3], (list(block) + [1, 1])[:3]
        cfg = _Config(
            (ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), shared_mem, seed, workers, schedule, None, 0
        )
        cfg.error = ctypes.cast(err, ctypes.c_char_p)
        cfg.error_len = len(err)
        fn = getattr(self._lib, f"livevsr_launch_{kernel}")
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(_Config), ctypes.c_void_p]
        if fn(ctypes.byref(cfg), argv):
            raise KernelError(err.value.decode(errors="replace"))


def _box(kernel: str, i: int, code: str, a: Any) -> ctypes._SimpleCData:
    if code == "p":
        if isinstance(a, torch.Tensor):
            if a.device.type != "cpu":
                raise KernelError(
                    f"{kernel}: argument {i} is on {a.device}; the host harness needs CPU tensors"
                )
            return ctypes.c_void_p(a.data_ptr())
        if isinstance(a, (np.uint64, int)) and not isinstance(a, bool):
            return ctypes.c_void_p(int(a))
    elif code == "i" and isinstance(a, (np.int32, int)):
        return ctypes.c_int32(int(a))
    elif code == "u" and isinstance(a, (np.uint32, int)):
        return ctypes.c_uint32(int(a))
    elif code == "f" and isinstance(a, (np.float32, float)):
        return ctypes.c_float(float(a))
    raise KernelError(
        f"{kernel}: argument {i} is {type(a).__name__}, expected {dict(p='pointer', i='int', u='unsigned', f='float')[code]}"
    )


_modules: dict[tuple[str, str], HostModule] = {}


def module(source: str, name: str) -> HostModule:
    key = (name, hashlib.sha256(source.encode()).hexdigest())
    mod = _modules.get(key)
    if mod is None:
        mod = _modules[key] = HostModule(source, name)
    return mod


@contextlib.contextmanager
def on_cpu(
    sources: Mapping[str, str] | None = None, *, seed: int = 0, schedule: int = -1
) -> Iterator[list[tuple[str, str]]]:
    """Within the block, kernels.py launches its kernels through this harness on CPU tensors.

    sources: kernel file name -> source text to use instead of KERNEL_DIR's (mutation tests).
    Yields the list of (source, kernel) launched, in order."""
    from livevsr.engines.flashvsr import kernels

    launched: list[tuple[str, str]] = []
    overrides = dict(sources or {})

    def host_launch(
        source: str,
        name: str,
        device: torch.device,
        grid: tuple[int, ...],
        block: tuple[int, ...],
        args: tuple[Any, ...],
        shared_mem: int = 0,
    ) -> None:
        text = overrides.get(source)
        if text is None:
            text = (kernels.KERNEL_DIR / source).read_text()
        module(text, source).launch(name, grid, block, args, shared_mem, seed=seed, schedule=schedule)
        launched.append((source, name))

    saved = kernels._launch, kernels._on_device
    kernels._launch, kernels._on_device = host_launch, lambda t: t.device.type == "cpu"
    try:
        yield launched
    finally:
        kernels._launch, kernels._on_device = saved

"""Every kernels/*.cu compiles through NVRTC, as cupy.RawModule would, for each target arch, with no
register spills and shared memory within the arch's limit. Needs no GPU (gpu_offline.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from livevsr.engines.flashvsr import kernel_check
from livevsr.engines.flashvsr.kernels import DEFAULT_ARCHS, KERNEL_ARCHS, KERNEL_DIR

SOURCES = sorted(KERNEL_DIR.glob("*.cu"))
CASES = [(src, arch) for src in SOURCES for arch in KERNEL_ARCHS.get(src.name, DEFAULT_ARCHS)]

requires_nvrtc = pytest.mark.skipif(
    not kernel_check.nvrtc_available(),
    reason="needs cupy and NVRTC: pip install cupy-cuda13x==14.2.0 nvidia-cuda-nvrtc==13.0.88 "
    "nvidia-cuda-runtime==13.0.96",
)


def test_every_source_has_its_archs_listed() -> None:
    assert SOURCES, f"no kernels under {KERNEL_DIR}"
    assert sorted(KERNEL_ARCHS) == [s.name for s in SOURCES]


@requires_nvrtc
@pytest.mark.parametrize("source,arch", CASES, ids=[f"{s.stem}-sm_{a}" for s, a in CASES])
def test_compiles_without_spills(source: Path, arch: str) -> None:
    stats = kernel_check.check_source(source, (arch,))
    for s in stats:
        print(
            f"{s.source} sm_{s.arch} {s.kernel}: {s.registers} regs, spills "
            f"{s.spill_store_bytes}/{s.spill_load_bytes} B, smem {s.static_smem_bytes}+{s.dynamic_smem_bytes} B"
        )
        assert s.problems() == [], f"{s.kernel}: {s.problems()}"
        assert s.registers <= 255


@requires_nvrtc
def test_check_flags_spills_and_compile_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) { x[0] = undefined_thing; }\n')
    with pytest.raises(kernel_check.KernelCompileError, match="undefined_thing"):
        kernel_check.check_source(bad, ("80",))
    spill = tmp_path / "spill.cu"
    spill.write_text(
        'extern "C" __global__ void __launch_bounds__(256, 8) k(const float* in, float* out) {\n'
        "  float r[64];\n"
        "  #pragma unroll\n  for (int i = 0; i < 64; ++i) r[i] = in[threadIdx.x * 64 + i];\n"
        "  float s = 0.f;\n"
        "  #pragma unroll\n  for (int i = 0; i < 64; ++i) for (int j = 0; j <= i; ++j) s += r[i] * r[j];\n"
        "  #pragma unroll\n  for (int i = 0; i < 64; ++i) out[threadIdx.x * 64 + i] = r[i] * s;\n}\n"
    )
    with pytest.raises(kernel_check.KernelCompileError, match="spill"):
        kernel_check.check_source(spill, ("80",))


def test_main_exit_code() -> None:
    if not kernel_check.nvrtc_available():
        pytest.skip("needs cupy and NVRTC (see requires_nvrtc)")
    assert kernel_check.main([]) == 0

"""Mutation acceptance for the CPU harness: realistic one-line bugs in kernels/*.cu must make the CPU
kernel tests fail, and the unmodified sources must pass them (issue 12, item 2).

Each mutant is a copy of one kernel source with one edit (the `old` text must occur exactly once, so
a kernel change that moves the line breaks this test loudly instead of silently testing nothing). It
is built with the host harness and checked with the same functions the CPU twins of the GPU tests use;
a failure is an AssertionError of those checks or a KernelError of the harness (a fault, a deadlock).
All mutants are compiled up front, in parallel, and cached by source hash.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from livevsr.engines.flashvsr.kernels import KERNEL_DIR
from tests.kernels import cuda_host
from tests.kernels.test_block_select import _check_block_select_kernels
from tests.kernels.test_block_sparse_attn import _check_plain_layout, _check_ring_layout

pytestmark = pytest.mark.skipif(
    not cuda_host.available(), reason=f"needs {cuda_host.CXX} for the host harness"
)


@dataclass(frozen=True)
class Mutant:
    source: str  # kernels/ file
    id: str
    old: str
    new: str


SELECT = "block_select.cu"
ATTN = "block_sparse_attn.cu"

MUTANTS = [
    # --- block_select.cu ---
    Mutant(
        SELECT,
        "scores-barrier-removed",
        "    }\n    __syncthreads();\n\n    float m =",
        "    }\n\n    float m =",
    ),
    Mutant(
        SELECT,
        "red-reuse-barrier-removed",
        "    __syncthreads();  // everyone has read red before it is reused for the sum\n",
        "",
    ),
    Mutant(
        SELECT,
        "hist-zero-barrier-removed",
        "hist[b] = 0u;\n        __syncthreads();\n",
        "hist[b] = 0u;\n",
    ),
    Mutant(
        SELECT,
        "hist-scan-barrier-removed",
        "        }\n        __syncthreads();\n        if (tid == 0) {",
        "        }\n        if (tid == 0) {",
    ),
    Mutant(SELECT, "threshold-ge", "pr[j] > thr;", "pr[j] >= thr;"),
    Mutant(
        SELECT, "radix-rank-gt", "if (above + hist[d] >= rank) break;", "if (above + hist[d] > rank) break;"
    ),
    Mutant(SELECT, "match-leader-lane", "lane == __ffs(peers) - 1", "lane == __ffs(peers) % 32"),
    Mutant(
        SELECT,
        "window-row-edge",
        "r1 = min(blocks_h - 1, r - half + local_range - 1)",
        "r1 = min(blocks_h - 1, r - half + local_range)",
    ),
    Mutant(SELECT, "window-col-edge", "c0 = max(0, c - half)", "c0 = max(0, c - half + 1)"),
    Mutant(
        SELECT,
        "ring-slot-of-chunk",
        "chunk == 1 ? s1 : chunk == 2 ? s2 : s3",
        "chunk == 1 ? s2 : chunk == 2 ? s2 : s3",
    ),
    Mutant(
        SELECT,
        "warp-sum-short",
        "for (int o = 16; o > 0; o >>= 1) x +=",
        "for (int o = 16; o > 1; o >>= 1) x +=",
    ),
    Mutant(
        SELECT,
        "softmax-sum-skips-warp0",
        "for (int w = 0; w < BS_SCORE_THREADS / 32; ++w) sum += red[w];",
        "for (int w = 1; w < BS_SCORE_THREADS / 32; ++w) sum += red[w];",
    ),
    # --- block_sparse_attn.cu ---
    Mutant(
        ATTN,
        "tile-barrier-removed",
        "        }\n        __syncthreads();\n\n        if (t == 0) {",
        "        }\n\n        if (t == 0) {",
    ),
    Mutant(
        ATTN,
        "stage-refill-barrier-removed",
        "        __syncthreads();  // this stage is refilled by the prefetch of the next iteration\n",
        "",
    ),
    Mutant(
        ATTN,
        "epilogue-barrier-removed",
        "    }\n    __syncthreads();\n#pragma unroll\n    for (int i = 0; i < (BSA_BLOCK * 16) / BSA_THREADS; ++i) {\n        const int e = tid + i * BSA_THREADS;\n        const int r = e >> 4, c = e & 15;\n        const uint4",
        "    }\n#pragma unroll\n    for (int i = 0; i < (BSA_BLOCK * 16) / BSA_THREADS; ++i) {\n        const int e = tid + i * BSA_THREADS;\n        const int r = e >> 4, c = e & 15;\n        const uint4",
    ),
    Mutant(ATTN, "wait-depth-prefetch", "cp_async_wait<1>();", "cp_async_wait<2>();"),
    Mutant(ATTN, "wait-depth-last-tile", "cp_async_wait<0>();", "cp_async_wait<1>();"),
    Mutant(
        ATTN,
        "qk-fragment-b-swapped",
        "mma_bf16(s[2 * n2], qf[ks], b0, b1);",
        "mma_bf16(s[2 * n2], qf[ks], b1, b0);",
    ),
    Mutant(
        ATTN,
        "pv-fragment-b-order",
        "mma_bf16(o[2 * d2], pa, b0, b1);\n                mma_bf16(o[2 * d2 + 1], pa, b2, b3);",
        "mma_bf16(o[2 * d2], pa, b0, b2);\n                mma_bf16(o[2 * d2 + 1], pa, b1, b3);",
    ),
    Mutant(
        ATTN,
        "p-fragment-a-order",
        "pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);\n            pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);",
        "pa[2] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);\n            pa[1] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);",
    ),
    Mutant(
        ATTN,
        "k-ldmatrix-row-col-lanes",
        "const int r = n2 * 16 + (lane & 7) + (lane >> 4) * 8;\n                const int c = ks * 2 + ((lane >> 3) & 1);",
        "const int r = n2 * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;\n                const int c = ks * 2 + (lane >> 4);",
    ),
    Mutant(ATTN, "v-ldmatrix-trans-dropped", "ldsm_x4_trans(s_v + swz(r, c)", "ldsm_x4(s_v + swz(r, c)"),
    Mutant(ATTN, "k-ldmatrix-trans-added", "ldsm_x4(s_k + swz(r, c)", "ldsm_x4_trans(s_k + swz(r, c)"),
    Mutant(ATTN, "ring-slot-of-chunk", "chunk == 2 ? slot2 : slot3", "chunk == 2 ? slot3 : slot3"),
    Mutant(
        ATTN,
        "ring-chunk-off-by-one",
        "const int chunk = j / blocks_per_chunk;",
        "const int chunk = (j + 1) / blocks_per_chunk;",
    ),
    Mutant(ATTN, "rescale-wrong-row", "o[n][2] *= corr1;", "o[n][2] *= corr0;"),
    Mutant(ATTN, "rescale-sum-dropped", "        row_sum[0] *= corr0;\n", ""),
    Mutant(ATTN, "rescale-unscaled", "exp2f((row_max[0] - mx0) * scale_log2)", "exp2f(row_max[0] - mx0)"),
    Mutant(
        ATTN, "row-max-quad-short", "        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));\n", ""
    ),
    Mutant(ATTN, "row-sum-quad-short", "    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);\n", ""),
    Mutant(ATTN, "empty-row-not-skipped", "if (cnt <= 0) {", "if (cnt < 0) {"),
    Mutant(
        ATTN,
        "empty-row-half-zeroed",
        "for (int i = tid; i < BSA_BLOCK * 16; i += BSA_THREADS) {",
        "for (int i = tid; i < BSA_BLOCK * 8; i += BSA_THREADS) {",
    ),
]


def _select_checks() -> None:
    # odd grid with interior rows and columns, first step with 3 chunks, an even window, 4 ring slots
    for shape in [(2, 3, 3, 1, 2, 5), (3, 5, 3, 3, 3, 20), (3, 5, 4, 1, 4, 40)]:
        _check_block_select_kernels(shape, "cpu")


def _attn_checks() -> None:
    _check_plain_layout(2, 3, 7, 0.5, "cpu")  # empty rows, 2..7 selected blocks per row
    _check_ring_layout(2, 3, 3, 1, 4, 2, "cpu")  # a rotated 4-slot ring with NaN in no slot
    _check_ring_layout(1, 5, 3, 3, 3, 3, "cpu")  # first step: 3 chunks, slot 1 unused (NaN)


CHECKS: dict[str, Callable[[], None]] = {SELECT: _select_checks, ATTN: _attn_checks}


def _mutated(m: Mutant) -> str:
    text = (KERNEL_DIR / m.source).read_text()
    assert text.count(m.old) == 1, (
        f"{m.id}: the mutated text must occur once in {m.source}, found {text.count(m.old)}"
    )
    return text.replace(m.old, m.new)


@pytest.fixture(scope="module")
def built() -> None:
    """Compile every mutant (and the originals) at once; the cache makes later loads instant."""
    texts = [(KERNEL_DIR / s).read_text() for s in CHECKS] + [_mutated(m) for m in MUTANTS]
    names = list(CHECKS) + [m.source for m in MUTANTS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(cuda_host.build, texts, names))


@pytest.mark.parametrize("source", list(CHECKS))
def test_unmodified_kernels_pass_the_mutant_checks(source: str, built: None) -> None:
    with cuda_host.on_cpu():
        CHECKS[source]()


@pytest.mark.parametrize("mutant", MUTANTS, ids=[f"{m.source.split('.')[0]}-{m.id}" for m in MUTANTS])
def test_mutant_fails_the_cpu_checks(mutant: Mutant, built: None) -> None:
    with cuda_host.on_cpu({mutant.source: _mutated(mutant)}) as launched:
        try:
            CHECKS[mutant.source]()
        except (AssertionError, cuda_host.KernelError) as exc:
            print(f"{mutant.id}: caught by {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return
    pytest.fail(f"mutant {mutant.id} of {mutant.source} passed every check ({len(launched)} launches)")

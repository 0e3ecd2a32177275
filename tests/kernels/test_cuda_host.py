"""The CPU harness itself (tests/kernels/host): bf16 rounding, barriers, cp.async landing, faults,
deadlocks and divergent collectives, on tiny kernels written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.kernels import cuda_host

pytestmark = pytest.mark.skipif(
    not cuda_host.available(), reason=f"needs {cuda_host.CXX} for the host harness"
)

SOURCE = r"""
#include <cuda_bf16.h>

extern "C" __global__ void to_bf16(const float* x, unsigned short* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        __nv_bfloat16 b = __float2bfloat16_rn(x[i]);
        y[i] = *reinterpret_cast<unsigned short*>(&b);
    }
}

// Thread t publishes t in shared memory and reads its neighbour one warp up.
extern "C" __global__ void neighbour(float* out, int with_barrier) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = static_cast<float>(t);
    if (with_barrier) __syncthreads();
    out[blockIdx.x * 256 + t] = s[(t + 32) % 256];
}

// One 16-byte cp.async per thread in one group, then a wait of the given depth.
extern "C" __global__ void async_copy(const float* src, float* out, int depth) {
    __shared__ __align__(16) float s[32 * 4];
    const int t = threadIdx.x;
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(&s[4 * t]));
    livevsr_host::cp_async16(dst, src + 4 * t);
    livevsr_host::cp_async_commit();
    if (depth == 0) livevsr_host::cp_async_wait(0); else livevsr_host::cp_async_wait(1);
    for (int i = 0; i < 4; ++i) out[4 * t + i] = s[4 * t + i];
}

extern "C" __global__ void fault(const int* p, int* out) { out[threadIdx.x] = p[threadIdx.x]; }

extern "C" __global__ void lane_exits_early(float* out) {
    if (threadIdx.x == 0) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

extern "C" __global__ void divergent(float* out) {
    if (threadIdx.x & 1) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
    else out[threadIdx.x] = static_cast<float>(__ballot_sync(0xffffffffu, 1));
}
"""


@pytest.fixture(scope="module")
def mod() -> cuda_host.HostModule:
    return cuda_host.module(SOURCE, "harness_test.cu")


def test_bf16_rounding_matches_torch(mod: cuda_host.HostModule) -> None:
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2**32, (4096,), generator=gen, dtype=torch.int64)
    ties = (torch.arange(64, dtype=torch.int64) << 16) | 0x3F808000  # exactly halfway: to even
    specials = torch.tensor(
        [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001], dtype=torch.int64
    )
    u32 = torch.cat([bits, ties, specials]).to(torch.int32)  # wraps like a uint32 bit pattern
    x = u32.view(torch.float32).contiguous()
    y = torch.zeros(x.numel(), dtype=torch.int16)
    mod.launch("to_bf16", ((x.numel() + 127) // 128,), (128,), [x, y, np.int32(x.numel())])
    want = x.to(torch.bfloat16).view(torch.int16)
    finite = ~torch.isnan(x)
    assert torch.equal(y[finite], want[finite])
    assert (y[~finite].view(torch.uint16).int() & 0x7FFF > 0x7F80).all()  # NaN stays NaN


@pytest.mark.parametrize("mode", [0, 1])  # warp run-ahead, NaN and finite fill
def test_missing_barrier_reads_stale_shared_memory(mod: cuda_host.HostModule, mode: int) -> None:
    want = ((torch.arange(256) + 32) % 256).float().repeat(2)
    out = torch.zeros(512)
    mod.launch("neighbour", (2,), (256,), [out, np.int32(1)], schedule=mode)
    assert torch.equal(out, want)
    mod.launch("neighbour", (2,), (256,), [out, np.int32(0)], schedule=mode)
    assert not torch.equal(out, want)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])  # lazy landing: both fills, both schedules
def test_cp_async_lands_only_at_a_covering_wait(mod: cuda_host.HostModule, mode: int) -> None:
    src = torch.arange(128, dtype=torch.float32)
    out = torch.zeros(128)
    mod.launch("async_copy", (1,), (32,), [src, out, np.int32(0)], schedule=mode)
    assert torch.equal(out, src)
    mod.launch("async_copy", (1,), (32,), [src, out, np.int32(1)], schedule=mode)
    assert not (out == src).any(), "a wait_group 1 with one group outstanding must not see the copy"


def test_eager_landing_makes_copies_visible_at_issue(mod: cuda_host.HostModule) -> None:
    src = torch.arange(128, dtype=torch.float32)
    out = torch.zeros(128)
    mod.launch("async_copy", (1,), (32,), [src, out, np.int32(1)], schedule=4)  # eager
    assert torch.equal(out, src)


def test_illegal_address_is_an_error_not_a_crash(mod: cuda_host.HostModule) -> None:
    out = torch.zeros(32, dtype=torch.int32)
    with pytest.raises(
        cuda_host.KernelError, match=r"fault: illegal memory access at (0x)?0.*block \(0,0,0\)"
    ):
        mod.launch("fault", (1,), (32,), [np.uint64(0), out])
    ok = torch.arange(32, dtype=torch.int32)
    mod.launch("fault", (1,), (32,), [ok, out])  # and the module still works
    assert torch.equal(out, ok)


def test_collective_missing_a_lane_is_a_deadlock(mod: cuda_host.HostModule) -> None:
    with pytest.raises(
        cuda_host.KernelError, match=r"deadlock: 31 threads live, 0 wait at __syncthreads, 31"
    ):
        mod.launch("lane_exits_early", (1,), (32,), [torch.zeros(32)])


def test_divergent_collectives_are_an_error(mod: cuda_host.HostModule) -> None:
    with pytest.raises(cuda_host.KernelError, match=r"divergent collective"):
        mod.launch("divergent", (1,), (32,), [torch.zeros(32)])


def test_launch_checks_arguments(mod: cuda_host.HostModule) -> None:
    with pytest.raises(cuda_host.KernelError, match=r"neighbour: takes 2 arguments \(pi\), got 1"):
        mod.launch("neighbour", (1,), (256,), [torch.zeros(256)])
    with pytest.raises(cuda_host.KernelError, match=r"argument 1 is float, expected int"):
        mod.launch("neighbour", (1,), (256,), [torch.zeros(256), 1.0])
    with pytest.raises(cuda_host.KernelError, match=r"whole warps"):
        mod.launch("neighbour", (1,), (100,), [torch.zeros(256), 1])

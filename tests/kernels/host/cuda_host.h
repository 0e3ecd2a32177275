// cuda_host.h: runs kernels/*.cu on the CPU with CUDA semantics, for tests (see docs/architecture.md,
// "CUDA kernels on the CPU"). g++ force-includes this header (-include) in front of the unmodified
// kernel source; only the kernels' inline-PTX wrappers have a host branch (#ifdef LIVEVSR_HOST_SIM)
// that calls the functions declared here.
//
// Model (runtime.cpp): each CUDA thread of a block is a fiber; all fibers of a block run on one OS
// thread, switched only at __syncthreads and warp collectives, in an order chosen per block (a warp
// running ahead of the others as far as barriers allow, or a seeded random pick). `__shared__` is
// `thread_local`, so a block's shared memory is that OS thread's TLS block of this module, filled with
// NaN bit patterns before each block. Warp collectives (shuffles, ballot, match, ldmatrix, mma.sync)
// are rendezvous of all 32 lanes: each deposits its operands, the last one computes for all. cp.async
// copies are queued per thread and commit group and land when a cp.async.wait_group covering their
// group returns (or, in "eager" blocks, when issued), so too shallow a wait reads stale data.
#pragma once

#define LIVEVSR_HOST_SIM 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// bf16 as CUDA stores it; conversions round to nearest even like __float2bfloat16_rn (NaN -> 0x7fff).
struct __nv_bfloat16 {
    unsigned short __x;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline int __float_as_int(float f) { return static_cast<int>(__float_as_uint(f)); }
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned>(i)); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{static_cast<unsigned short>(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float(static_cast<unsigned>(h.__x) << 16); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

// Atomics: a block's fibers never run at the same time, and blocks never share memory here.
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old + v;
    return old;
}
inline int atomicAdd(int* p, int v) {
    const int old = *p;
    *p = old + v;
    return old;
}
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}

namespace livevsr_host {

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

void syncthreads();
unsigned shfl_xor(unsigned mask, unsigned value, int lane_mask, int width);
unsigned match_any(unsigned mask, unsigned value);
unsigned ballot(unsigned mask, bool pred);

// Shared-memory window: a 32-bit offset into the block's shared memory, as cvta.to.shared gives.
size_t cvta_to_shared(const void* p);
void cp_async16(unsigned dst, const void* src);
void cp_async_commit();
void cp_async_wait(int pending);
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane 8i+j gives row j of matrix i.
void ldmatrix_x4(unsigned addr, bool trans, unsigned (&r)[4]);
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with d = c (in place).
void mma_m16n8k16_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);

// ---- launching (used by the generated driver, not by kernels) ----

struct LaunchConfig {
    unsigned grid[3];
    unsigned block[3];
    unsigned shared_mem;  // dynamic shared memory bytes asked for
    unsigned long long seed;
    int workers;          // OS threads running blocks; <= 0: one
    int schedule;         // -1: rotate through the modes by block; else one mode (runtime.cpp)
    char* error;          // filled on failure
    int error_len;
};

using Body = void (*)(void* ctx);
int launch(const char* name, Body body, void* ctx, const LaunchConfig* cfg);

template <class T>
constexpr char arg_code() {
    if constexpr (std::is_pointer_v<T>) {
        return 'p';
    } else if constexpr (std::is_same_v<T, int>) {
        return 'i';
    } else if constexpr (std::is_same_v<T, unsigned>) {
        return 'u';
    } else if constexpr (std::is_same_v<T, float>) {
        return 'f';
    } else {
        static_assert(!sizeof(T), "kernel parameter type not supported by the host launcher");
    }
}

template <class... A>
struct KernelCall {
    void (*fn)(A...);
    void** args;

    template <size_t... I>
    void run(std::index_sequence<I...>) {
        fn(*static_cast<std::remove_cv_t<A>*>(args[I])...);
    }
    static void body(void* self) { static_cast<KernelCall*>(self)->run(std::index_sequence_for<A...>{}); }
};

template <class... A>
int launch_kernel(void (*fn)(A...), const char* name, const LaunchConfig* cfg, void** args) {
    KernelCall<A...> call{fn, args};
    return launch(name, &KernelCall<A...>::body, &call, cfg);
}

template <class... A>
const char* signature(void (*)(A...)) {
    static const char sig[] = {arg_code<std::remove_cv_t<A>>()..., '\0'};
    return sig;
}

}  // namespace livevsr_host

#define threadIdx (::livevsr_host::thread_idx())
#define blockIdx (::livevsr_host::block_idx())
#define blockDim (::livevsr_host::block_dim())
#define gridDim (::livevsr_host::grid_dim())

inline void __syncthreads() { livevsr_host::syncthreads(); }

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width = 32) {
    return __uint_as_float(livevsr_host::shfl_xor(mask, __float_as_uint(v), lane_mask, width));
}
inline int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int width = 32) {
    return static_cast<int>(livevsr_host::shfl_xor(mask, static_cast<unsigned>(v), lane_mask, width));
}
inline unsigned __shfl_xor_sync(unsigned mask, unsigned v, int lane_mask, int width = 32) {
    return livevsr_host::shfl_xor(mask, v, lane_mask, width);
}
inline unsigned __match_any_sync(unsigned mask, unsigned v) { return livevsr_host::match_any(mask, v); }
inline unsigned __match_any_sync(unsigned mask, int v) {
    return livevsr_host::match_any(mask, static_cast<unsigned>(v));
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return livevsr_host::ballot(mask, pred != 0); }

inline size_t __cvta_generic_to_shared(const void* p) { return livevsr_host::cvta_to_shared(p); }

// The generated driver: one exported launcher and signature per kernel, and the definition of each
// `extern __shared__` array (as big as sm_90's limit; each kernel here declares at most one).
#define LIVEVSR_DYNAMIC_SMEM_BYTES (227 * 1024)
#define LIVEVSR_EXPORT_KERNEL(name)                                                                 \
    extern "C" int livevsr_launch_##name(const livevsr_host::LaunchConfig* cfg, void** args) {      \
        return livevsr_host::launch_kernel(name, #name, cfg, args);                                 \
    }                                                                                               \
    extern "C" const char* livevsr_signature_##name() { return livevsr_host::signature(name); }
#define LIVEVSR_DEFINE_DYNAMIC_SMEM(type, name)                                                     \
    extern "C" {                                                                                    \
    alignas(128) thread_local type name[LIVEVSR_DYNAMIC_SMEM_BYTES / sizeof(type)];                 \
    }

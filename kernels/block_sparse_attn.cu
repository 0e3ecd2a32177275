// block_sparse_attn.cu: block-sparse flash-attention forward for FlashVSR's LCSA self-attention
// (flashvsr_spec.md section 3.4): each 128-token query block attends to its own list of 128-token
// key blocks; a query block whose list is empty writes zeros.
//
// Layouts (all row-major, contiguous):
//   q     [Lq, H, 128] bf16            Lq = nq_blocks * 128, token order as attention.py documents
//   k, v  [n_slots, S*128, H, 128] bf16  one layer of the KV ring; slot s holds one chunk of
//                                        S key blocks. Logical key block j lives in chunk j / S,
//                                        which sits in ring slot slots[j / S] (oldest chunk first),
//                                        block (j % S) of that slot. Nothing is copied per step.
//   kv_idx [H, nq_blocks, max_sel] int32  logical key-block indices selected for (head, q block)
//   kv_cnt [H, nq_blocks] int32           how many of them are valid (0 .. max_sel)
//   out   [Lq, H, 128] bf16
// Math: out = softmax(q k^T * scale) v over the tokens of the selected key blocks, fp32
// accumulation, online softmax in the exp2 domain (scale_log2 = scale * log2(e)); P is rounded to
// bf16 before the P.V product (as flash-attention 2 does).
//
// Tiles: one CTA per (query block, head), 8 warps = 256 threads, warp w owns query rows
// 16w..16w+15 of the 128-row block. Each 128-key mask block is processed as two 64-key tiles; the
// K and V tiles of the next 64 keys are prefetched with cp.async (double buffered) while the
// current ones are used. Tensor cores: mma.sync m16n8k16 bf16 -> fp32 (sm_80 and newer); Q
// fragments stay in registers for the whole CTA. Shared memory rows are 256 bytes (128 bf16) with
// the 16-byte chunks XOR-swizzled by (row & 7) so ldmatrix reads are bank-conflict free.
// Dynamic shared memory: Q 32 KiB + 2 stages x (K 16 KiB + V 16 KiB) = 96 KiB (BSA_SMEM_BYTES);
// the launcher must raise the kernel's max dynamic shared memory above 48 KiB.

#include <cuda_bf16.h>

#define BSA_HEAD_DIM 128
#define BSA_BLOCK 128                // tokens per mask block, query and key
#define BSA_TILE_N 64                // keys per pipeline stage
#define BSA_THREADS 256
#define BSA_ROW_BYTES 256            // one token of one head: 128 bf16
#define BSA_Q_BYTES (BSA_BLOCK * BSA_ROW_BYTES)
#define BSA_KV_TILE_BYTES (BSA_TILE_N * BSA_ROW_BYTES)
#define BSA_SMEM_BYTES (BSA_Q_BYTES + 2 * 2 * BSA_KV_TILE_BYTES)

static_assert(BSA_SMEM_BYTES == 98304, "kernels.py BSA_SMEM_BYTES must match");

namespace {

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Byte offset of 16-byte chunk `c` (0..15) of row `r` in a tile of 256-byte rows.
__device__ __forceinline__ unsigned swz(int r, int c) {
    return static_cast<unsigned>(r * BSA_ROW_BYTES + ((c ^ (r & 7)) << 4));
}

// The inline-PTX wrappers. LIVEVSR_HOST_SIM: the host harness of tests/kernels (cuda_host.h), which
// executes this file on the CPU with the same semantics; nothing else in the kernel differs.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src) {
#ifdef LIVEVSR_HOST_SIM
    livevsr_host::cp_async16(dst, src);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef LIVEVSR_HOST_SIM
    livevsr_host::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef LIVEVSR_HOST_SIM
    livevsr_host::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2,
                                        unsigned& r3) {
#ifdef LIVEVSR_HOST_SIM
    unsigned r[4];
    livevsr_host::ldmatrix_x4(addr, false, r);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
#endif
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2,
                                              unsigned& r3) {
#ifdef LIVEVSR_HOST_SIM
    unsigned r[4];
    livevsr_host::ldmatrix_x4(addr, true, r);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
#endif
}

// c[16x8] += a[16x16] * b[16x8]; fragment layouts as in the PTX ISA for m16n8k16.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef LIVEVSR_HOST_SIM
    livevsr_host::mma_m16n8k16_bf16(c, a, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats -> packed bf16x2, `lo` in the low half (the lower column index, as mma expects).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 t = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&t);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(BSA_THREADS, 1)
block_sparse_attn_fwd(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                      const __nv_bfloat16* __restrict__ v, const int* __restrict__ kv_idx,
                      const int* __restrict__ kv_cnt, __nv_bfloat16* __restrict__ out, int heads,
                      int nq_blocks, int max_sel, int blocks_per_chunk, int slot0, int slot1, int slot2,
                      int slot3, float scale_log2) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int qblk = blockIdx.x;
    const int h = blockIdx.y;
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const size_t row_stride = static_cast<size_t>(heads) * BSA_HEAD_DIM;  // elements per token

    const int cnt = kv_cnt[h * nq_blocks + qblk];
    __nv_bfloat16* out_blk = out + static_cast<size_t>(qblk) * BSA_BLOCK * row_stride + h * BSA_HEAD_DIM;
    if (cnt <= 0) {  // nothing selected: the reference kernel writes zeros
        for (int i = tid; i < BSA_BLOCK * 16; i += BSA_THREADS) {
            const int r = i >> 4, c = i & 15;
            *reinterpret_cast<uint4*>(out_blk + r * row_stride + c * 8) = make_uint4(0u, 0u, 0u, 0u);
        }
        return;
    }
    const int* sel = kv_idx + (static_cast<size_t>(h) * nq_blocks + qblk) * max_sel;

    const unsigned s_q = smem_addr(smem);
    const unsigned s_k0 = s_q + BSA_Q_BYTES;  // stage s: K at s_k0 + s*2*TILE, V right after it

    // Q block -> shared memory (2048 16-byte chunks, 8 per thread).
    const __nv_bfloat16* q_blk = q + static_cast<size_t>(qblk) * BSA_BLOCK * row_stride + h * BSA_HEAD_DIM;
#pragma unroll
    for (int i = 0; i < (BSA_BLOCK * 16) / BSA_THREADS; ++i) {
        const int e = tid + i * BSA_THREADS;
        const int r = e >> 4, c = e & 15;
        cp_async16(s_q + swz(r, c), q_blk + r * row_stride + c * 8);
    }

    // Tile t = keys [64*(t&1), +64) of selected key block sel[t>>1].
    auto load_kv_tile = [&](int t, int stage) {
        const int j = sel[t >> 1];
        const int chunk = j / blocks_per_chunk;
        const int sb = j - chunk * blocks_per_chunk;
        const int slot = chunk == 0 ? slot0 : chunk == 1 ? slot1 : chunk == 2 ? slot2 : slot3;
        const size_t tok0 =
            (static_cast<size_t>(slot) * blocks_per_chunk + sb) * BSA_BLOCK + (t & 1) * BSA_TILE_N;
        const __nv_bfloat16* k_src = k + tok0 * row_stride + h * BSA_HEAD_DIM;
        const __nv_bfloat16* v_src = v + tok0 * row_stride + h * BSA_HEAD_DIM;
        const unsigned s_k = s_k0 + stage * 2 * BSA_KV_TILE_BYTES;
        const unsigned s_v = s_k + BSA_KV_TILE_BYTES;
#pragma unroll
        for (int i = 0; i < (BSA_TILE_N * 16) / BSA_THREADS; ++i) {
            const int e = tid + i * BSA_THREADS;
            const int r = e >> 4, c = e & 15;
            cp_async16(s_k + swz(r, c), k_src + r * row_stride + c * 8);
            cp_async16(s_v + swz(r, c), v_src + r * row_stride + c * 8);
        }
    };

    load_kv_tile(0, 0);
    cp_async_commit();  // group 0: Q and the first K/V tile

    float o[16][4];  // [d tile of 8][fragment]: rows g and g+8 of this warp, 128 head dims
#pragma unroll
    for (int n = 0; n < 16; ++n) {
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    }
    float row_max[2] = {__int_as_float(0xff800000), __int_as_float(0xff800000)};  // raw scores (unscaled), rows g and g+8
    float row_sum[2] = {0.f, 0.f};              // this thread's partial sums; quad-reduced at the end
    unsigned qf[8][4];                          // Q A-fragments for the 8 k-steps of 16 head dims

    const int n_tiles = 2 * cnt;
    for (int t = 0; t < n_tiles; ++t) {
        if (t + 1 < n_tiles) {
            load_kv_tile(t + 1, (t + 1) & 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        if (t == 0) {
#pragma unroll
            for (int ks = 0; ks < 8; ++ks) {
                const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int c = ks * 2 + (lane >> 4);
                ldsm_x4(s_q + swz(r, c), qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3]);
            }
        }
        const unsigned s_k = s_k0 + (t & 1) * 2 * BSA_KV_TILE_BYTES;
        const unsigned s_v = s_k + BSA_KV_TILE_BYTES;

        // S = Q K^T for 16 rows x 64 keys: 8 n-tiles of 8 keys.
        float s[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
        }
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
#pragma unroll
            for (int n2 = 0; n2 < 4; ++n2) {
                const int r = n2 * 16 + (lane & 7) + (lane >> 4) * 8;
                const int c = ks * 2 + ((lane >> 3) & 1);
                unsigned b0, b1, b2, b3;
                ldsm_x4(s_k + swz(r, c), b0, b1, b2, b3);
                mma_bf16(s[2 * n2], qf[ks], b0, b1);
                mma_bf16(s[2 * n2 + 1], qf[ks], b2, b3);
            }
        }

        // Online softmax. Thread holds rows g (s[n][0..1]) and g+8 (s[n][2..3]); a row's 64 keys are
        // spread over the 4 threads of a quad.
        float mx0 = row_max[0], mx1 = row_max[1];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
            mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        // First tile: row_max is -inf, exp2(-inf) = 0 clears the (zero) accumulators harmlessly.
        const float corr0 = exp2f((row_max[0] - mx0) * scale_log2);
        const float corr1 = exp2f((row_max[1] - mx1) * scale_log2);
        row_max[0] = mx0;
        row_max[1] = mx1;
        row_sum[0] *= corr0;
        row_sum[1] *= corr1;
#pragma unroll
        for (int n = 0; n < 16; ++n) {
            o[n][0] *= corr0;
            o[n][1] *= corr0;
            o[n][2] *= corr1;
            o[n][3] *= corr1;
        }
        const float off0 = mx0 * scale_log2, off1 = mx1 * scale_log2;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            s[n][0] = exp2f(fmaf(s[n][0], scale_log2, -off0));
            s[n][1] = exp2f(fmaf(s[n][1], scale_log2, -off0));
            s[n][2] = exp2f(fmaf(s[n][2], scale_log2, -off1));
            s[n][3] = exp2f(fmaf(s[n][3], scale_log2, -off1));
            row_sum[0] += s[n][0] + s[n][1];
            row_sum[1] += s[n][2] + s[n][3];
        }

        // O += P V. The S accumulators of n-tiles 2kk and 2kk+1 form the A fragment of k-step kk.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            unsigned pa[4];
            pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int d2 = 0; d2 < 8; ++d2) {
                const int r = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int c = d2 * 2 + (lane >> 4);
                unsigned b0, b1, b2, b3;
                ldsm_x4_trans(s_v + swz(r, c), b0, b1, b2, b3);
                mma_bf16(o[2 * d2], pa, b0, b1);
                mma_bf16(o[2 * d2 + 1], pa, b2, b3);
            }
        }
        __syncthreads();  // this stage is refilled by the prefetch of the next iteration
    }

    // Epilogue: normalise, stage the bf16 tile in the (now unused) Q buffer, write 16-byte rows.
    float l0 = row_sum[0], l1 = row_sum[1];
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;  // l >= 1: the row maximum contributes exp2(0)
    const int g = lane >> 2, tig = lane & 3;
    const int r0 = warp * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int n = 0; n < 16; ++n) {
        const int c = n;                  // 16-byte chunk = 8 head dims = one n-tile
        const unsigned within = tig * 4;  // bytes: 2 bf16 per thread
        *reinterpret_cast<unsigned*>(smem + swz(r0, c) + within) = pack_bf16(o[n][0] * inv0, o[n][1] * inv0);
        *reinterpret_cast<unsigned*>(smem + swz(r1, c) + within) = pack_bf16(o[n][2] * inv1, o[n][3] * inv1);
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < (BSA_BLOCK * 16) / BSA_THREADS; ++i) {
        const int e = tid + i * BSA_THREADS;
        const int r = e >> 4, c = e & 15;
        const uint4 val = *reinterpret_cast<const uint4*>(smem + swz(r, c));
        *reinterpret_cast<uint4*>(out_blk + r * row_stride + c * 8) = val;
    }
}

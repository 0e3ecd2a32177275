// block_select.cu: FlashVSR's draft block mask (flashvsr_spec.md section 3.3), as per-query-block
// lists of selected key blocks, in three kernels:
//
// 1. block_mean_pool: x [nb*128, H, 128] bf16 -> out [nb, H, 128] bf16, the mean of each 128-token
//    block per head and channel (fp32 sum, one rounding to bf16, like torch's bf16 mean). Used for
//    the current query chunk(s), and for each key chunk once, when it is written into its KV-ring
//    slot (the pooled keys of cached chunks never change, so they are not pooled again).
//    Grid (nb, H), 128 threads (one per channel).
//
// 2. draft_scores_softmax: qb [nq_blocks, H, 128] bf16 (pooled queries) and kpool
//    [n_slots, S, H, 128] bf16 (pooled keys per ring slot; logical key chunk c is in slot slots[c],
//    oldest first) -> probs [H, nq_blocks, nk_blocks] fp32, nk_blocks = n_k * S:
//      score = bf16(bf16(<qb, kb>) * inv_sqrt_d), inv_sqrt_d = fp32(1 / fp32(sqrt(128))): torch's bf16
//              einsum, then `/ sqrt(128)`, which CUDA torch runs as a multiply by the fp32 reciprocal
//      score = -inf outside the centred, edge-truncated local window of `local_range` blocks
//              (key (r', c') is local to query (r, c) iff r - L/2 <= r' <= r - L/2 + L - 1, same for
//              columns; the same spatial window for every (query chunk, key chunk) pair)
//      probs = softmax over all nk_blocks keys of the row (0 outside the window).
//    Grid (nq_blocks, H), 128 threads; each warp scores one local key block at a time. Dynamic
//    shared memory: n_k * rows_in_window * cols_in_window floats (<= 4 * L * L * 4 bytes).
//
// 3. topk_block_lists: per (query chunk c, head h), the S x nk_blocks sub-matrix of probs shares one
//    budget: kk = min(numel - 1, topk), thr = the (kk+1)-th largest value, selected = probs > thr
//    (strict). thr is found exactly with a 4-pass radix select (8 bits per pass) on the fp32 bit
//    patterns, which order like the values because probabilities are >= 0. Then one warp per query
//    row compacts the selected key-block indices in ascending order:
//      kv_idx [H, nq_blocks, nk_blocks] int32 (first kv_cnt entries valid), kv_cnt [H, nq_blocks]
//      int32, thr [H, n_q] fp32 (for tests). Grid (n_q, H), 1024 threads, ~1 KiB static smem.

#include <cuda_bf16.h>

#define BS_HEAD_DIM 128
#define BS_BLOCK 128
#define BS_SCORE_THREADS 128
#define BS_TOPK_THREADS 1024

namespace {

__device__ __forceinline__ float bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

__device__ __forceinline__ int slot_of(int chunk, int s0, int s1, int s2, int s3) {
    return chunk == 0 ? s0 : chunk == 1 ? s1 : chunk == 2 ? s2 : s3;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(BS_HEAD_DIM)
block_mean_pool(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ out, int heads) {
    const int b = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const size_t row_stride = static_cast<size_t>(heads) * BS_HEAD_DIM;
    const __nv_bfloat16* p = x + static_cast<size_t>(b) * BS_BLOCK * row_stride + h * BS_HEAD_DIM + d;
    float acc = 0.f;
#pragma unroll 16
    for (int t = 0; t < BS_BLOCK; ++t) acc += __bfloat162float(p[t * row_stride]);
    out[(static_cast<size_t>(b) * heads + h) * BS_HEAD_DIM + d] = __float2bfloat16_rn(acc * (1.f / BS_BLOCK));
}

extern "C" __global__ void __launch_bounds__(BS_SCORE_THREADS)
draft_scores_softmax(const __nv_bfloat16* __restrict__ qb, const __nv_bfloat16* __restrict__ kpool,
                     float* __restrict__ probs, int heads, int nq_blocks, int blocks_h, int blocks_w,
                     int local_range, int n_k, int slot0, int slot1, int slot2, int slot3, float inv_sqrt_d) {
    extern __shared__ float sc[];  // scores of the local candidates of this row
    __shared__ float red[BS_SCORE_THREADS / 32];
    const int i = blockIdx.x, h = blockIdx.y;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int S = blocks_h * blocks_w;
    const int nk_blocks = n_k * S;

    const int sq = i % S;  // spatial block of this query block inside its chunk
    const int r = sq / blocks_w, c = sq - r * blocks_w;
    const int half = local_range / 2;
    const int r0 = max(0, r - half), r1 = min(blocks_h - 1, r - half + local_range - 1);
    const int c0 = max(0, c - half), c1 = min(blocks_w - 1, c - half + local_range - 1);
    const int nr = r1 - r0 + 1, nc = c1 - c0 + 1;  // >= 1: the window always holds (r, c) itself
    const int per_chunk = nr * nc;
    const int n_cand = n_k * per_chunk;

    // Each lane holds 4 of the 128 channels of the pooled query.
    const __nv_bfloat16* qp = qb + (static_cast<size_t>(i) * heads + h) * BS_HEAD_DIM + lane * 4;
    float qv[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) qv[u] = __bfloat162float(qp[u]);

    for (int e = warp; e < n_cand; e += BS_SCORE_THREADS / 32) {
        const int ck = e / per_chunk;
        const int rem = e - ck * per_chunk;
        const int rr = r0 + rem / nc, cc = c0 + rem % nc;
        const int slot = slot_of(ck, slot0, slot1, slot2, slot3);
        const __nv_bfloat16* kp =
            kpool + ((static_cast<size_t>(slot) * S + rr * blocks_w + cc) * heads + h) * BS_HEAD_DIM + lane * 4;
        float dot = 0.f;
#pragma unroll
        for (int u = 0; u < 4; ++u) dot = fmaf(qv[u], __bfloat162float(kp[u]), dot);
        dot = warp_sum(dot);
        if (lane == 0) sc[e] = bf16_round(bf16_round(dot) * inv_sqrt_d);
    }
    __syncthreads();

    float m = __int_as_float(0xff800000);
    for (int e = tid; e < n_cand; e += BS_SCORE_THREADS) m = fmaxf(m, sc[e]);
    m = warp_max(m);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = red[0];
#pragma unroll
    for (int w = 1; w < BS_SCORE_THREADS / 32; ++w) m = fmaxf(m, red[w]);
    __syncthreads();  // everyone has read red before it is reused for the sum

    float sum = 0.f;
    for (int e = tid; e < n_cand; e += BS_SCORE_THREADS) sum += expf(sc[e] - m);
    sum = warp_sum(sum);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    sum = 0.f;
#pragma unroll
    for (int w = 0; w < BS_SCORE_THREADS / 32; ++w) sum += red[w];

    float* prow = probs + (static_cast<size_t>(h) * nq_blocks + i) * nk_blocks;
    for (int j = tid; j < nk_blocks; j += BS_SCORE_THREADS) {
        const int ck = j / S;
        const int sk = j - ck * S;
        const int rr = sk / blocks_w, cc = sk - rr * blocks_w;
        float p = 0.f;
        if (rr >= r0 && rr <= r1 && cc >= c0 && cc <= c1) {
            p = expf(sc[(ck * nr + (rr - r0)) * nc + (cc - c0)] - m) / sum;
        }
        prow[j] = p;
    }
}

extern "C" __global__ void __launch_bounds__(BS_TOPK_THREADS)
topk_block_lists(const float* __restrict__ probs, int* __restrict__ kv_idx, int* __restrict__ kv_cnt,
                 float* __restrict__ thr_out, int nq_blocks, int nk_blocks, int blocks_per_chunk, int n_q,
                 int topk) {
    __shared__ unsigned hist[256];
    __shared__ unsigned s_prefix, s_rank;
    const int chunk = blockIdx.x, h = blockIdx.y;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int S = blocks_per_chunk;
    const size_t row0 = static_cast<size_t>(h) * nq_blocks + static_cast<size_t>(chunk) * S;
    const float* P = probs + row0 * nk_blocks;  // S rows x nk_blocks, contiguous
    const int numel = S * nk_blocks;
    const int kk = min(numel - 1, topk);

    // Radix select of the (kk+1)-th largest value: fix 8 bits per pass, from the top.
    unsigned prefix = 0u, fixed = 0u, rank = static_cast<unsigned>(kk) + 1u;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < 256; b += BS_TOPK_THREADS) hist[b] = 0u;
        __syncthreads();
        for (int base = 0; base < numel; base += BS_TOPK_THREADS) {  // warp-uniform loop
            const int e = base + tid;
            unsigned digit = 256u;  // 256 = not a candidate
            if (e < numel) {
                const unsigned key = __float_as_uint(P[e]);
                if ((key & fixed) == prefix) digit = (key >> shift) & 255u;
            }
            const unsigned peers = __match_any_sync(0xffffffffu, digit);
            if (digit < 256u && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
        }
        __syncthreads();
        if (tid == 0) {
            unsigned above = 0u;  // candidates with a larger digit
            int d = 255;
            for (; d > 0; --d) {
                if (above + hist[d] >= rank) break;
                above += hist[d];
            }
            s_prefix = prefix | (static_cast<unsigned>(d) << shift);
            s_rank = rank - above;
        }
        __syncthreads();
        prefix = s_prefix;
        rank = s_rank;
        fixed |= 255u << shift;
        __syncthreads();  // s_prefix/s_rank and hist are rewritten in the next pass
    }
    const float thr = __uint_as_float(prefix);
    if (tid == 0) thr_out[h * n_q + chunk] = thr;

    // Compact each row's selected key blocks, ascending; one warp per row.
    for (int row = warp; row < S; row += BS_TOPK_THREADS / 32) {
        const float* pr = P + static_cast<size_t>(row) * nk_blocks;
        int* dst = kv_idx + (row0 + row) * nk_blocks;
        int n = 0;
        for (int j0 = 0; j0 < nk_blocks; j0 += 32) {
            const int j = j0 + lane;
            const bool take = j < nk_blocks && pr[j] > thr;
            const unsigned ballot = __ballot_sync(0xffffffffu, take);
            if (take) dst[n + __popc(ballot & ((1u << lane) - 1u))] = j;
            n += __popc(ballot);
        }
        if (lane == 0) kv_cnt[row0 + row] = n;
    }
}

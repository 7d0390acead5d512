// The decode rows of an attention batch: one query per (row, head), each over its own
// sequence's paged KV cache, by split-K flash decoding. A row's span (the positions it attends
// to: its last `window` positions, or all of them up to its own when window is 0; see
// row_span) is cut into partitions of part_len_for(span length) positions, so no block wholly
// before the window is read; attention_decode_partial_* computes,
// per (head, partition, row), the partition's max score m, sum of exp(s - m) l, and
// unnormalized output sum exp(s - m) v; attention_decode_merge rescales and combines a row's
// partitions. A row's partitioning and arithmetic depend on its own position only, never on
// the other rows or the grid (batch invariance). With softcap > 0 each score s = q.k * scale
// becomes softcap * tanh(s / softcap) before the softmax.
//
// q, out: [rows, heads, hd] f32; cache_k, cache_v: [num_blocks, bs, kv_heads, hd] f32, f16,
// q8_0, q4_0 or fp8 (a quantized cache's scales at byte k_doff / v_doff, 0 for f32/f16; each
// element dequantized where it is loaded, d * code as load_kv, QuantView::get and
// Fp8View::get compute it);
// positions, table_starts: [rows] u32; tables: the step's block tables, row r's from
// tables[table_starts[r]]. Positions and tables are read from device memory, so a captured
// decode graph replays as contexts grow: the grid covers `parts` partitions (enough for the
// largest context the launch allows) and partitions past a row's context exit at once.
// Grid of the partial kernel: (heads / g, parts, rows), where a block takes g query heads that
// share a KV head (the argument g: 1, or the whole group), so each K/V value is loaded once for
// the g of them; with g = 1 the heads sharing a KV head run side by side and read its rows from
// L2. A head's arithmetic is the same whatever g is.
// Scratch: part_acc [rows, heads, parts, hd], part_ml [rows, heads, parts, 2].
// Dynamic shared memory of the partial kernel: g * (part_len_for(largest context) + hd) floats.

#define AD_THREADS 128
#define AD_WARPS (AD_THREADS / 32)
// Partitions: at least AD_PART_MIN positions, about AD_PARTS_TARGET of them at most, scores of
// one partition in shared memory (at most AD_PART_MAX of them). Mirrored in
// crates/tandem-cuda/src/ops/attention.rs.
#define AD_PART_MIN 32
#define AD_PARTS_TARGET 256
#define AD_PART_MAX 8192
// Query heads per block of the partial kernel at most: a block takes g heads sharing one KV
// head (g = 1, or the whole group when it is at most this and its scores fit in shared memory),
// so each K/V value is loaded once for them. Mirrored in crates/tandem-cuda/src/ops/attention.rs.
#define AD_GMAX 8

// Positions per partition of a context of ctx positions: the smallest power of two from
// AD_PART_MIN up that cuts it into at most AD_PARTS_TARGET partitions (AD_PART_MAX at most).
__device__ __forceinline__ u32 part_len_for(u32 ctx) {
    u32 p = AD_PART_MIN;
    while ((ctx + p - 1) / p > AD_PARTS_TARGET && p < AD_PART_MAX) p *= 2;
    return p;
}

// The first position a row at `pos` attends to, and how many it attends to.
__device__ __forceinline__ void row_span(u32 pos, u32 window, u32* first, u32* len) {
    *first = window != 0 && pos + 1 > window ? pos + 1 - window : 0;
    *len = pos + 1 - *first;
}

__device__ __forceinline__ float block_reduce(float v, bool is_max, float* red) {
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();  // red may still be read by a previous reduction
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < AD_WARPS; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    return r;
}

template <int KDT, int VDT>
__device__ void decode_partial(const float* __restrict__ q, const u8* __restrict__ ck,
                               const u8* __restrict__ cv, u64 k_doff, u64 v_doff,
                               const u32* __restrict__ positions,
                               const u32* __restrict__ table_starts, const u32* __restrict__ tables,
                               float* __restrict__ part_acc, float* __restrict__ part_ml, u32 heads,
                               u32 kv_heads, u32 hd, u32 bs, u32 num_blocks, float scale, u32 parts,
                               u32 window, float softcap, u32 g) {
    DYNAMIC_SHARED(float, smem);
    __shared__ float red[AD_WARPS];
    const u32 h0 = blockIdx.x * g, p = blockIdx.y, row = blockIdx.z;
    u32 first, span;
    row_span(positions[row], window, &first, &span);
    const u32 part_len = part_len_for(span);
    if (p * part_len >= span) return;  // beyond the row's span: the merge never reads it
    const u32 start = first + p * part_len;
    float* s = smem;                  // [g][part_len] scores, then weights
    float* qs = smem + g * part_len;  // [g][hd]
    const u32* table = tables + table_starts[row];
    const u32 cnt = min(part_len, span - p * part_len);
    const u32 kvh = h0 / (heads / kv_heads);
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u64 qh0 = (u64)row * heads + h0;
    for (u32 d = threadIdx.x; d < g * hd; d += AD_THREADS) qs[d] = q[qh0 * hd + d];
    __syncthreads();

    // Scores: a warp per position, lanes over the head dimension (coalesced K rows), each K
    // value loaded once for the block's g query heads; unrolled so that several positions'
    // loads are in flight before the first shuffle.
#pragma unroll 4
    for (u32 j = warp; j < cnt; j += AD_WARPS) {
        const u32 t = start + j;
        const u32 blk = table[t / bs];
        float dot[AD_GMAX];
#pragma unroll
        for (u32 i = 0; i < AD_GMAX; ++i) dot[i] = 0.0f;
        if (blk < num_blocks) {
            const u64 head = ((u64)blk * bs + t % bs) * kv_heads + kvh;
            for (u32 d = lane; d < hd; d += 32) {
                const float k = load_kv<KDT>(ck, k_doff, head, hd, d);
#pragma unroll
                for (u32 i = 0; i < AD_GMAX; ++i)
                    if (i < g) dot[i] += qs[i * hd + d] * k;
            }
        }
#pragma unroll
        for (u32 i = 0; i < AD_GMAX; ++i) {
            if (i >= g) break;
            const float sum = warp_sum(dot[i]);
            float sc = sum * scale;
            if (softcap > 0.0f) sc = softcap * tanhf(sc / softcap);
            if (lane == 0) s[i * part_len + j] = blk < num_blocks ? sc : neg_inf();
        }
    }
    __syncthreads();
    for (u32 i = 0; i < g; ++i) {
        float* si = s + i * part_len;
        float mx = neg_inf();
        for (u32 j = threadIdx.x; j < cnt; j += AD_THREADS) mx = fmaxf(mx, si[j]);
        mx = block_reduce(mx, true, red);
        float sum = 0.0f;
        for (u32 j = threadIdx.x; j < cnt; j += AD_THREADS) {
            const float e = expf(si[j] - mx);
            si[j] = e;
            sum += e;
        }
        sum = block_reduce(sum, false, red);  // its barriers also publish si
        if (threadIdx.x == 0) {
            const u64 slot = (qh0 + i) * parts + p;
            part_ml[slot * 2] = mx;
            part_ml[slot * 2 + 1] = sum;
        }
    }
    // Output: threads over the head dimension, positions in order (coalesced V rows), each V
    // value loaded once for the g heads.
    for (u32 d = threadIdx.x; d < hd; d += AD_THREADS) {
        float a[AD_GMAX];
#pragma unroll
        for (u32 i = 0; i < AD_GMAX; ++i) a[i] = 0.0f;
        // Unrolled for independent V loads in flight (each sum stays in position order).
#pragma unroll 8
        for (u32 j = 0; j < cnt; ++j) {
            const u32 t = start + j;
            const u32 blk = table[t / bs];
            if (blk < num_blocks) {
                const float v = load_kv<VDT>(cv, v_doff, ((u64)blk * bs + t % bs) * kv_heads + kvh, hd, d);
#pragma unroll
                for (u32 i = 0; i < AD_GMAX; ++i)
                    if (i < g) a[i] += s[i * part_len + j] * v;
            }
        }
#pragma unroll
        for (u32 i = 0; i < AD_GMAX; ++i)
            if (i < g) part_acc[((qh0 + i) * parts + p) * hd + d] = a[i];
    }
}

#define PARTIAL(suffix, KDT, VDT)                                                               \
    extern "C" __global__ void __launch_bounds__(AD_THREADS) attention_decode_partial_##suffix(   \
        const float* q, const u8* ck, const u8* cv, u64 k_doff, u64 v_doff, const u32* positions, \
        const u32* table_starts, const u32* tables, float* part_acc, float* part_ml, u32 heads,   \
        u32 kv_heads, u32 hd, u32 bs, u32 num_blocks, float scale, u32 parts, u32 window,         \
        float softcap, u32 g) {                                                                   \
        decode_partial<KDT, VDT>(q, ck, cv, k_doff, v_doff, positions, table_starts, tables,      \
                                 part_acc, part_ml, heads, kv_heads, hd, bs, num_blocks, scale,   \
                                 parts, window, softcap, g);                                      \
    }
// The K/V dtype pairs of tandem_core::quant::kv::KV_PAIRS: k's dtype, then v's where it differs.
PARTIAL(f32, DT_F32, DT_F32)
PARTIAL(f16, DT_F16, DT_F16)
PARTIAL(q8_0, DT_Q8_0, DT_Q8_0)
PARTIAL(q4_0, DT_Q4_0, DT_Q4_0)
PARTIAL(fp8, DT_FP8, DT_FP8)
PARTIAL(f16_q8_0, DT_F16, DT_Q8_0)
PARTIAL(f16_q4_0, DT_F16, DT_Q4_0)
PARTIAL(q8_0_q4_0, DT_Q8_0, DT_Q4_0)

// One block per (head, row): out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p over the
// row's partitions.
extern "C" __global__ void __launch_bounds__(AD_THREADS) attention_decode_merge(
    const float* __restrict__ part_acc, const float* __restrict__ part_ml, float* __restrict__ out,
    const u32* __restrict__ positions, u32 heads, u32 hd, u32 parts, u32 window) {
    const u32 h = blockIdx.x, row = blockIdx.y;
    u32 first, span;
    row_span(positions[row], window, &first, &span);
    const u32 part_len = part_len_for(span);
    const u32 active = min((span + part_len - 1) / part_len, parts);
    const u64 qh = (u64)row * heads + h, base = qh * parts;
    float M = neg_inf();
    for (u32 p = 0; p < active; ++p) M = fmaxf(M, part_ml[(base + p) * 2]);
    float L = 0.0f;
    for (u32 p = 0; p < active; ++p) L += part_ml[(base + p) * 2 + 1] * expf(part_ml[(base + p) * 2] - M);
    const float inv = 1.0f / L;
    for (u32 d = threadIdx.x; d < hd; d += AD_THREADS) {
        float o = 0.0f;
        for (u32 p = 0; p < active; ++p) o += part_acc[(base + p) * hd + d] * expf(part_ml[(base + p) * 2] - M);
        out[qh * hd + d] = o * inv;
    }
}

// Causal grouped-query attention for the prompt rows of an attention batch: tiled online
// softmax (FlashAttention style). Query i sits at position positions[i] and attends to
// positions first_i..=that of its own sequence (first_i = 0, or the start of its last `window`
// positions), whose block table starts at tables[table_starts[i]]: position t lives in cache
// row table[t / bs] * bs + t % bs. Only rows of some query's span are read, so poison
// elsewhere in the cache never leaks, and blocks wholly before a window are never touched.
// With softcap > 0 each score s = q.k * scale becomes softcap * tanh(s / softcap).
//
// q, out: [n, heads, hd] f32; cache_k, cache_v: [num_blocks, bs, kv_heads, hd] f32, f16,
// q8_0, q4_0 or fp8 (a quantized cache's scales at byte k_doff / v_doff, 0 for f32/f16; each
// element dequantized as its tile is staged, d * code as load_kv, QuantView::get and
// Fp8View::get compute it);
// positions, table_starts: [n] u32.
// Grid: (ceil(n / AP_Q), heads); block: AP_WARPS warps, each owning AP_QPW queries; K/V
// tiles of AP_T positions are staged in shared memory (f32) once for the block's queries of
// one sequence. A sequence's queries are consecutive, so a block's queries fall into runs
// (segments) of one block table each, usually one; the block walks each segment's tiles in
// turn. Every query walks the tiles of AP_T positions aligned to multiples of AP_T from the one
// holding first_i up to the one holding its own position, positions outside its span masked,
// with the same arithmetic whatever else shares its block or the batch (batch invariance).
// Dynamic shared memory: attention_prefill_smem(hd) floats (mirrored in Rust).

#define AP_WARPS 4
#define AP_QPW 4
#define AP_Q (AP_WARPS * AP_QPW)
#define AP_T 32
#define AP_HDMAX 128
#define AP_CH (AP_HDMAX / 32)

template <int KDT, int VDT>
__device__ void attention_prefill(const float* __restrict__ q, const u8* __restrict__ ck,
                                  const u8* __restrict__ cv, u64 k_doff, u64 v_doff,
                                  const u32* __restrict__ positions,
                                  const u32* __restrict__ table_starts, const u32* __restrict__ tables,
                                  float* __restrict__ out, u32 n, u32 heads, u32 kv_heads, u32 hd,
                                  u32 bs, u32 num_blocks, float scale, u32 window, float softcap) {
    DYNAMIC_SHARED(float, smem);
    __shared__ u32 qpos[AP_Q], qstart[AP_Q], qfirst[AP_Q];
    const u32 ks_stride = hd + 1;  // padding: lanes read different K rows at the same d
    float* Ks = smem;                    // [AP_T][hd + 1]
    float* Vs = Ks + AP_T * ks_stride;   // [AP_T][hd]
    float* Qs = Vs + AP_T * hd;          // [AP_Q][hd]
    float* Ps = Qs + AP_Q * hd;          // [AP_WARPS][AP_T]
    if (hd > AP_HDMAX) return;  // the host rejects it
    const u32 h = blockIdx.y, kvh = h / (heads / kv_heads);
    const u32 i0 = blockIdx.x * AP_Q;
    const u32 rows = min((u32)AP_Q, n - i0);
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    for (u32 r = threadIdx.x; r < rows; r += blockDim.x) {
        qpos[r] = positions[i0 + r];
        qstart[r] = table_starts[i0 + r];
        qfirst[r] = window != 0 && qpos[r] + 1 > window ? qpos[r] + 1 - window : 0;
    }
    for (u32 idx = threadIdx.x; idx < AP_Q * hd; idx += blockDim.x) {
        const u32 i = i0 + idx / hd, d = idx % hd;
        Qs[idx] = i < n ? q[((u64)i * heads + h) * hd + d] : 0.0f;
    }

    float run_max[AP_QPW], run_sum[AP_QPW], acc[AP_QPW][AP_CH];
#pragma unroll
    for (int qq = 0; qq < AP_QPW; ++qq) {
        run_max[qq] = neg_inf();
        run_sum[qq] = 0.0f;
#pragma unroll
        for (int c = 0; c < AP_CH; ++c) acc[qq][c] = 0.0f;
    }
    __syncthreads();  // qpos and qstart are written

    // Segments [seg, seg_end) of queries with one block table; every thread finds the same.
    for (u32 seg = 0, seg_end; seg < rows; seg = seg_end) {
        // The furthest position any query of the segment sees, and the earliest.
        u32 last = qpos[seg], lo = qfirst[seg];
        for (seg_end = seg + 1; seg_end < rows && qstart[seg_end] == qstart[seg]; ++seg_end) {
            last = max(last, qpos[seg_end]);
            lo = min(lo, qfirst[seg_end]);
        }
        const u32* table = tables + qstart[seg];
        for (u32 t0 = lo / AP_T * AP_T; t0 <= last; t0 += AP_T) {
            const u32 tile = min((u32)AP_T, last + 1 - t0);
            __syncthreads();  // everyone is done with the previous tile (and Qs is written)
            for (u32 idx = threadIdx.x; idx < AP_T * hd; idx += blockDim.x) {
                const u32 j = idx / hd, d = idx % hd;
                float kk = 0.0f, vv = 0.0f;
                if (j < tile && t0 + j >= lo) {
                    const u32 t = t0 + j;
                    const u32 blk = table[t / bs];
                    if (blk < num_blocks) {
                        const u64 head = ((u64)blk * bs + t % bs) * kv_heads + kvh;
                        kk = load_kv<KDT>(ck, k_doff, head, hd, d);
                        vv = load_kv<VDT>(cv, v_doff, head, hd, d);
                    }
                }
                Ks[j * ks_stride + d] = kk;
                Vs[j * hd + d] = vv;
            }
            __syncthreads();
#pragma unroll
            for (int qq = 0; qq < AP_QPW; ++qq) {
                const u32 qi = warp * AP_QPW + qq;
                // Warp-uniform: a query of another segment, or one whose tile lies in its future
                // or wholly before its window.
                if (qi < seg || qi >= seg_end || qpos[qi] < t0 || t0 + AP_T <= qfirst[qi]) continue;
                const u32 cnt = min(qpos[qi] + 1 - t0, (u32)AP_T);
                // The tile's first position in the query's span.
                const u32 jlo = qfirst[qi] > t0 ? qfirst[qi] - t0 : 0;
                const bool in_span = lane < cnt && lane >= jlo;
                float s = neg_inf();
                if (in_span) {
                    float dot = 0.0f;
                    for (u32 d = 0; d < hd; ++d) dot += Qs[qi * hd + d] * Ks[lane * ks_stride + d];
                    s = dot * scale;
                    if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
                }
                const float new_max = fmaxf(run_max[qq], warp_max(s));
                const float corr = run_max[qq] == neg_inf() ? 0.0f : expf(run_max[qq] - new_max);
                const float e = in_span ? expf(s - new_max) : 0.0f;
                run_sum[qq] = run_sum[qq] * corr + warp_sum(e);
                run_max[qq] = new_max;
                Ps[warp * AP_T + lane] = e;
                __syncwarp();
#pragma unroll
                for (int c = 0; c < AP_CH; ++c) {
                    const u32 d = lane + 32 * c;
                    if (d < hd) {
                        float a = acc[qq][c] * corr;
                        for (u32 j = jlo; j < cnt; ++j) a += Ps[warp * AP_T + j] * Vs[j * hd + d];
                        acc[qq][c] = a;
                    }
                }
                __syncwarp();
            }
        }
    }
#pragma unroll
    for (int qq = 0; qq < AP_QPW; ++qq) {
        const u32 i = i0 + warp * AP_QPW + qq;
        if (i < n) {
            const float inv = 1.0f / run_sum[qq];
#pragma unroll
            for (int c = 0; c < AP_CH; ++c) {
                const u32 d = lane + 32 * c;
                if (d < hd) out[((u64)i * heads + h) * hd + d] = acc[qq][c] * inv;
            }
        }
    }
}

#define PREFILL(suffix, KDT, VDT)                                                               \
    extern "C" __global__ void __launch_bounds__(AP_WARPS * 32) attention_prefill_##suffix(     \
        const float* q, const u8* ck, const u8* cv, u64 k_doff, u64 v_doff, const u32* positions, \
        const u32* table_starts, const u32* tables, float* out, u32 n, u32 heads, u32 kv_heads,  \
        u32 hd, u32 bs, u32 num_blocks, float scale, u32 window, float softcap) {                 \
        attention_prefill<KDT, VDT>(q, ck, cv, k_doff, v_doff, positions, table_starts, tables,   \
                                    out, n, heads, kv_heads, hd, bs, num_blocks, scale, window,   \
                                    softcap);                                                     \
    }
// The K/V dtype pairs of tandem_core::quant::kv::KV_PAIRS: k's dtype, then v's where it differs.
PREFILL(f32, DT_F32, DT_F32)
PREFILL(f16, DT_F16, DT_F16)
PREFILL(q8_0, DT_Q8_0, DT_Q8_0)
PREFILL(q4_0, DT_Q4_0, DT_Q4_0)
PREFILL(fp8, DT_FP8, DT_FP8)
PREFILL(f16_q8_0, DT_F16, DT_Q8_0)
PREFILL(f16_q4_0, DT_F16, DT_Q4_0)
PREFILL(q8_0_q4_0, DT_Q8_0, DT_Q4_0)

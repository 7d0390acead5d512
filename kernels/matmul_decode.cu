// out = x @ w^T (+ bias) for the decode rows of a product: the weight is streamed once and
// each value is dequantized in registers, with the reference's formula, then used by every
// token. x: [n, k] f32; w: [m, k] in the entry's dtype; bias: [m] f32 or null; out: [n, m] f32.
//
// Batch invariance: a row's arithmetic never depends on n (how many decode rows share the
// launch), so a sequence's decode gives the same bits alone or batched with others.
//
// matmul_decode_n1_<dtype> / matmul_decode_nt_<dtype>: the decode rows' kernels wherever
// k % 32 == 0 and k is at most 32 * N1_MAX_THREADS: a block has one thread per 32-value block
// of x and walks groups of N1Rows rows strided over the grid (about as many blocks as fit on
// the GPU at once). Each thread has every row of a group's loads in flight before it uses the
// first, and issues the next group's before reducing this one's sums (warp shuffles, then
// shared memory). n1 takes one token per blockIdx.y (one decode row alone); nt takes
// N1_TOKENS tokens per blockIdx.y, each group's weights loaded once for all of them (a batch
// of decode rows). Both run the same per-token arithmetic (matvec_nt).
// matmul_decode_<dtype>: decode rows whose k is too long for the n1 kernel (k % 32 == 0, so
// every row starts on a quantization block). One warp per output row; lane l takes blocks l,
// l + 32, ... of the row, loading each block's 32 values with 16-byte loads (one for Q4, two
// for Q8, four for f16/bf16, eight for f32), and x with float4 loads. A warp-shuffle sum
// finishes each dot. blockIdx.y picks MATVEC_MAXN tokens; each token has its own sums.
// matmul_decode_any_<dtype>: any k (rows may start mid-block): a warp per row, lanes over
// elements, MATVEC_MAXN tokens per blockIdx.y as above.
// matmul_decode_moe_<dtype>: the experts' products of a mixture-of-experts layer, each row
// (token and slot) through the very function a one-row decode product of its expert's matrix
// takes (`path`, chosen by the host as for such a product), with the weight, d and m
// sections moved to the expert's first row; see moe_rows.

#define MATVEC_MAXN 8
#define MATVEC_WARPS 4

// The two 16-bit floats of a word, low half first (the lower element index).
template <int DT>
__device__ __forceinline__ void half_pair(u32 word, float* v) {
    const u16 lo = (u16)(word & 0xffffu), hi = (u16)(word >> 16);
    v[0] = DT == DT_F16 ? f16_to_f32(lo) : bf16_to_f32(lo);
    v[1] = DT == DT_F16 ? f16_to_f32(hi) : bf16_to_f32(hi);
}

// The 32 values of block `gb` (global block index) of a row-block-aligned weight.
template <int DT>
__device__ __forceinline__ void load_block(const u8* __restrict__ w, u64 d_off, u64 m_off,
                                           u64 gb, float* v) {
    if (DT == DT_F32) {
        const float4* p = (const float4*)(w + gb * 128);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float4 f = p[i];
            v[4 * i] = f.x;
            v[4 * i + 1] = f.y;
            v[4 * i + 2] = f.z;
            v[4 * i + 3] = f.w;
        }
    } else if (DT == DT_F16 || DT == DT_BF16) {
        const uint4* p = (const uint4*)(w + gb * 64);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint4 q = p[i];
            half_pair<DT>(q.x, v + 8 * i);
            half_pair<DT>(q.y, v + 8 * i + 2);
            half_pair<DT>(q.z, v + 8 * i + 4);
            half_pair<DT>(q.w, v + 8 * i + 6);
        }
    } else if (DT == DT_Q8_0) {
        const float d = f16_to_f32(((const u16*)(w + d_off))[gb]);
        const uint4* p = (const uint4*)(w + gb * 32);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const uint4 q = p[i];
            const u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int b = 0; b < 4; ++b)
                    v[16 * i + 4 * j + b] = d * (float)(signed char)((words[j] >> (8 * b)) & 0xffu);
        }
    } else {
        const float d = f16_to_f32(((const u16*)(w + d_off))[gb]);
        const float mn = DT == DT_Q4_1 ? f16_to_f32(((const u16*)(w + m_off))[gb]) : 0.0f;
        const uint4 q = *(const uint4*)(w + gb * 16);
        const u32 words[4] = {q.x, q.y, q.z, q.w};
        // Byte i holds elements 2i (low nibble) and 2i + 1 (high nibble).
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int b = 0; b < 8; ++b) {
                const float nib = (float)((words[j] >> (4 * b)) & 15u);
                v[8 * j + b] = DT == DT_Q4_0 ? d * (nib - 8.0f) : d * nib + mn;
            }
    }
}

// The warp-per-row kernels' shape: warp w of block x owns output row MATVEC_WARPS x + w, and
// `tile` (blockIdx.y) picks MATVEC_MAXN tokens. Moves x and out to the block's first token and cuts n
// to its tokens; false for a warp past the last row (whole warps leave together).
__device__ __forceinline__ bool warp_rows(const float* __restrict__* x, float* __restrict__* out, u32* n, u32 k, u32 m, u32 tile, u32* lane, u32* row) {
    *lane = threadIdx.x & 31;
    *row = blockIdx.x * MATVEC_WARPS + (threadIdx.x >> 5);
    if (*row >= m) return false;
    *x += (u64)tile * MATVEC_MAXN * k;
    *out += (u64)tile * MATVEC_MAXN * m;
    *n = min(*n - tile * MATVEC_MAXN, (u32)MATVEC_MAXN);
    return true;
}

// Each token's sum over the warp, plus the bias, into its row of out.
__device__ __forceinline__ void store_warp_rows(const float* acc, u32 n, u32 lane, u32 row, const float* bias, float* out, u32 m) {
#pragma unroll
    for (int j = 0; j < MATVEC_MAXN; ++j) {
        if (j < (int)n) {
            const float s = warp_sum(acc[j]);
            if (lane == 0) out[(u64)j * m + row] = bias ? s + bias[row] : s;
        }
    }
}

template <int DT>
__device__ void matvec_blocks(const float* __restrict__ x, const u8* __restrict__ w, u64 d_off,
                              u64 m_off, const float* __restrict__ bias, float* __restrict__ out,
                              u32 n, u32 k, u32 m, u32 tile) {
    u32 lane, row;
    if (!warp_rows(&x, &out, &n, k, m, tile, &lane, &row)) return;
    const u32 nb = k >> 5;
    float acc[MATVEC_MAXN];
#pragma unroll
    for (int j = 0; j < MATVEC_MAXN; ++j) acc[j] = 0.0f;
    for (u32 b = lane; b < nb; b += 32) {
        float v[32];
        load_block<DT>(w, d_off, m_off, (u64)row * nb + b, v);
#pragma unroll
        for (int j = 0; j < MATVEC_MAXN; ++j) {
            if (j < (int)n) {
                const float4* xp = (const float4*)(x + (u64)j * k + (u64)b * 32);
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const float4 f = xp[i];
                    s += v[4 * i] * f.x + v[4 * i + 1] * f.y + v[4 * i + 2] * f.z + v[4 * i + 3] * f.w;
                }
                acc[j] += s;
            }
        }
    }
    store_warp_rows(acc, n, lane, row, bias, out, m);
}

// The raw bytes of one weight block (32 values), loaded with 16-byte loads before any of them
// is used, so that a thread has every row's loads in flight at once.
template <int DT>
struct Raw {
    uint4 v[DT == DT_F32 ? 8 : (DT == DT_F16 || DT == DT_BF16) ? 4 : DT == DT_Q8_0 ? 2 : 1];
    u16 d, m;
};

template <int DT>
__device__ __forceinline__ Raw<DT> load_raw(const u8* __restrict__ w, u64 d_off, u64 m_off, u64 gb) {
    Raw<DT> r;
    constexpr int N = sizeof(r.v) / 16;
    const uint4* p = (const uint4*)(w + gb * (16 * N));
#pragma unroll
    for (int i = 0; i < N; ++i) r.v[i] = p[i];
    if (DT == DT_Q8_0 || DT == DT_Q4_0 || DT == DT_Q4_1) r.d = ((const u16*)(w + d_off))[gb];
    if (DT == DT_Q4_1) r.m = ((const u16*)(w + m_off))[gb];
    return r;
}

// An integer field of a word as an exact float without a conversion instruction (those run at
// a quarter of the FMA rate, and decode would be bound by them): `bits` (at most 2^23) ORed
// into the mantissa of 2^23 gives 2^23 + bits, and subtracting `bias` (2^23 plus the field's
// zero point, scaled like the field) leaves (field - zero point) * 2^shift exactly.
__device__ __forceinline__ float field(u32 bits, float bias) {
    return __uint_as_float(0x4b000000u | bits) - bias;
}

#define TWO23 8388608.0f

// One block of the weight dotted with 32 values of x (sx = their sum). Quantized blocks are
// factored as d * sum(q x) (+ m sum(x) for Q4_1). Nibble (byte) fields are taken in place,
// masked rather than shifted down, so each element costs a LOP3, an FADD and an FFMA; the
// partial sums of each field position are scaled back by exact powers of two at the end.
template <int DT>
__device__ __forceinline__ float dot_raw(const Raw<DT>& r, const float* xv, float sx) {
    if (DT == DT_Q4_0 || DT == DT_Q4_1) {
        // Word j holds elements 8j..8j+7, element 8j+p in bits 4p..4p+3; the high half is
        // shifted down once so that every field sits below bit 16.
        const float z = DT == DT_Q4_0 ? 8.0f : 0.0f;
        const u32 words[4] = {r.v[0].x, r.v[0].y, r.v[0].z, r.v[0].w};
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 lo = words[j], hi = words[j] >> 16;
            s0 += field(lo & 0xfu, TWO23 + z) * xv[8 * j] + field(hi & 0xfu, TWO23 + z) * xv[8 * j + 4];
            s1 += field(lo & 0xf0u, TWO23 + 16.0f * z) * xv[8 * j + 1] + field(hi & 0xf0u, TWO23 + 16.0f * z) * xv[8 * j + 5];
            s2 += field(lo & 0xf00u, TWO23 + 256.0f * z) * xv[8 * j + 2] + field(hi & 0xf00u, TWO23 + 256.0f * z) * xv[8 * j + 6];
            s3 += field(lo & 0xf000u, TWO23 + 4096.0f * z) * xv[8 * j + 3] + field(hi & 0xf000u, TWO23 + 4096.0f * z) * xv[8 * j + 7];
        }
        const float s = s0 + s1 * (1.0f / 16.0f) + s2 * (1.0f / 256.0f) + s3 * (1.0f / 4096.0f);
        const float d = f16_to_f32(r.d);
        if (DT == DT_Q4_0) return d * s;
        return d * s + f16_to_f32(r.m) * sx;
    } else if (DT == DT_Q8_0) {
        // Word j holds elements 4j..4j+3 as signed bytes; XOR 0x80 makes each byte q + 128.
        float t0 = 0.0f, t1 = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const u32 words[4] = {r.v[i].x, r.v[i].y, r.v[i].z, r.v[i].w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const u32 lo = words[j] ^ 0x80808080u, hi = lo >> 16;
                const float* xj = xv + 16 * i + 4 * j;
                t0 += field(lo & 0xffu, TWO23 + 128.0f) * xj[0] + field(hi & 0xffu, TWO23 + 128.0f) * xj[2];
                t1 += field(lo & 0xff00u, TWO23 + 32768.0f) * xj[1] + field(hi & 0xff00u, TWO23 + 32768.0f) * xj[3];
            }
        }
        return f16_to_f32(r.d) * (t0 + t1 * (1.0f / 256.0f));
    } else if (DT == DT_F32) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint4 q = r.v[i];
            s += __uint_as_float(q.x) * xv[4 * i] + __uint_as_float(q.y) * xv[4 * i + 1] +
                 __uint_as_float(q.z) * xv[4 * i + 2] + __uint_as_float(q.w) * xv[4 * i + 3];
        }
        return s;
    } else {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 words[4] = {r.v[i].x, r.v[i].y, r.v[i].z, r.v[i].w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float v[2];
                half_pair<DT>(words[j], v);
                s += v[0] * xv[8 * i + 2 * j] + v[1] * xv[8 * i + 2 * j + 1];
            }
        }
        return s;
    }
}

// Rows per block of the one-token kernel: enough 16-byte loads in flight per thread to cover
// the memory's latency, few enough registers to keep several blocks per multiprocessor.
// Measured on an H100 (bench/cuda/matvec_bench.cu, crates/tandem-cuda/NOTES.md): 4 for Q4
// beat 8 by 0-25% at Llama-3.1-8B's shapes (8 kept fewer groups per block in flight), and
// 16 spilled. (crate::ops::matmul::n1_rows in Rust.)
template <int DT>
struct N1Rows {
    static constexpr int value = DT == DT_F32 ? 2 : 4;
};

// Threads per block of the one-token kernel at most: one per 32-value block of x, so k up to
// 32 * N1_MAX_THREADS (crate::ops::matmul::N1_MAX_THREADS); longer rows take matvec_blocks.
#define N1_MAX_THREADS 512
// Tokens per block of matmul_decode_nt (crate::ops::matmul::N1_TOKENS).
#define N1_TOKENS 8

// Thread b's 32 values of token row x (zeros past the row's blocks) and their sum, summed the
// same way wherever they are loaded, so every kernel below computes a token alike.
__device__ __forceinline__ void load_xv(const float* __restrict__ x, u32 b, bool mine, float* xv, float* sx) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) xv[i] = 0.0f;
    if (mine) {
        const float4* xp = (const float4*)(x + (u64)b * 32);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float4 f = xp[i];
            xv[4 * i] = f.x;
            xv[4 * i + 1] = f.y;
            xv[4 * i + 2] = f.z;
            xv[4 * i + 3] = f.w;
            s += (f.x + f.y) + (f.z + f.w);
        }
    }
    *sx = s;
}

// One weight of a product over the same x: up to three (q, k and v; gate and up) share a
// launch, their row groups one after the other, so a layer's small products are not each a
// launch's worth of ramp and tail. m = 0 marks an unused segment.
struct Seg {
    const u8* w;
    u64 d_off, m_off;
    const float* bias;
    float* out;
    u32 m;
};

// The segment holding a group: its fields and the group's first row in it.
struct At {
    const u8* w;
    u64 d_off, m_off;
    const float* bias;
    float* out;
    u32 m, row0;
};

// Where group g (of R rows) lies. (A function rather than a constructor: the emulator's
// __device__ is `static`.)
template <int R>
__device__ __forceinline__ At at_group(const Seg& s0, const Seg& s1, const Seg& s2, u32 g) {
    const u32 g0 = (s0.m + R - 1) / R, g1 = (s1.m + R - 1) / R;
    const int i = g < g0 ? 0 : g < g0 + g1 ? 1 : 2;
    const Seg& s = i == 0 ? s0 : i == 1 ? s1 : s2;
    return At{s.w, s.d_off, s.m_off, s.bias, s.out, s.m, (g - (i == 0 ? 0 : i == 1 ? g0 : g0 + g1)) * R};
}

// T tokens per block (blockIdx.y picks tokens T * blockIdx.y.., n in all): each group's
// weights are loaded once and dotted with every token's x, so a batch of decode rows reads
// the weights n / T times instead of n times. T = 1 keeps x in registers for the kernel's
// life; T > 1 reloads each token's x (from L1/L2) per group. A token's arithmetic (dot_raw,
// the warp sums, the sum over warps in order) is the same for every T and every segment
// layout: a row's bits do not depend on how many rows or products share the launch. R (rows
// per group) is a parameter so that bench/cuda/matvec_bench.cu can sweep it.
template <int DT, int T, int R = N1Rows<DT>::value>
__device__ void matvec_nt_at(const float* __restrict__ x, Seg s0, Seg s1, Seg s2, u32 n, u32 k, u32 tile) {
    __shared__ float part[2][N1_MAX_THREADS / 32][R * T];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const u32 nb = k >> 5, b = threadIdx.x;
    const bool mine = b < nb;  // the block's threads cover the row's blocks exactly once
    const u32 t0 = tile * T, nt = min((u32)T, n - t0);
    x += (u64)t0 * k;
    float xv[32], sx;
    if (T == 1) load_xv(x, b, mine, xv, &sx);
    // Groups of R rows, strided over the grid; the next group's loads are issued before this
    // group's sums are reduced, so they are in flight across the reduction and the barrier.
    const u32 groups = (s0.m + R - 1) / R + (s1.m + R - 1) / R + (s2.m + R - 1) / R;
    Raw<DT> raw[R];
    u32 g = blockIdx.x;
    if (mine && g < groups) {
        const At a = at_group<R>(s0, s1, s2, g);
#pragma unroll
        for (int r = 0; r < R; ++r)
            if (a.row0 + r < a.m) raw[r] = load_raw<DT>(a.w, a.d_off, a.m_off, (u64)(a.row0 + r) * nb + b);
    }
    for (u32 buf = 0; g < groups; g += gridDim.x, buf ^= 1) {
        const At a = at_group<R>(s0, s1, s2, g);
        float acc[R][T];
#pragma unroll
        for (int t = 0; t < T; ++t) {
            if (T > 1 && t < (int)nt) load_xv(x + (u64)t * k, b, mine, xv, &sx);
#pragma unroll
            for (int r = 0; r < R; ++r)
                acc[r][t] = mine && t < (int)nt && a.row0 + r < a.m ? dot_raw<DT>(raw[r], xv, sx) : 0.0f;
        }
        const u32 next = g + gridDim.x;
        if (mine && next < groups) {
            const At an = at_group<R>(s0, s1, s2, next);
#pragma unroll
            for (int r = 0; r < R; ++r)
                if (an.row0 + r < an.m) raw[r] = load_raw<DT>(an.w, an.d_off, an.m_off, (u64)(an.row0 + r) * nb + b);
        }
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int t = 0; t < T; ++t) {
                const float s = warp_sum(acc[r][t]);
                if (lane == 0) part[buf][warp][r * T + t] = s;
            }
        // part[buf] is rewritten two groups on, after the next group's barrier: one barrier
        // per group is enough.
        __syncthreads();
        const u32 r = threadIdx.x / T, t = threadIdx.x % T;
        if (threadIdx.x < R * T && a.row0 + r < a.m && t < nt) {
            const u32 row = a.row0 + r;
            float s = 0.0f;
            for (u32 w2 = 0; w2 < warps; ++w2) s += part[buf][w2][threadIdx.x];
            a.out[(u64)(t0 + t) * a.m + row] = a.bias ? s + a.bias[row] : s;
        }
    }
}

// The tile of tokens is blockIdx.y.
template <int DT, int T, int R = N1Rows<DT>::value>
__device__ void matvec_nt(const float* __restrict__ x, Seg s0, Seg s1, Seg s2, u32 n, u32 k) {
    matvec_nt_at<DT, T, R>(x, s0, s1, s2, n, k, blockIdx.y);
}

template <int DT>
__device__ void matvec_any(const float* __restrict__ x, const u8* __restrict__ w, u64 d_off,
                           u64 m_off, const float* __restrict__ bias, float* __restrict__ out,
                           u32 n, u32 k, u32 m, u32 tile) {
    u32 lane, row;
    if (!warp_rows(&x, &out, &n, k, m, tile, &lane, &row)) return;
    float acc[MATVEC_MAXN];
#pragma unroll
    for (int j = 0; j < MATVEC_MAXN; ++j) acc[j] = 0.0f;
    for (u32 e = lane; e < k; e += 32) {
        const float wv = load_w<DT>(w, d_off, m_off, (u64)row * k + e);
#pragma unroll
        for (int j = 0; j < MATVEC_MAXN; ++j)
            if (j < (int)n) acc[j] += wv * x[(u64)j * k + e];
    }
    store_warp_rows(acc, n, lane, row, bias, out, m);
}

// Decode rows of a GGUF block type with k % 8 == 0 (so every row starts on a run of 8 in one
// sub-block): a warp per output row, each lane a run of 8 values at a time (kq_run: the
// levels, then dl * sum(q x) - ml * sum(x)), MATVEC_MAXN tokens per blockIdx.y, each token's
// sums its own. Rows with k % 8 != 0 take matvec_any.
template <int DT>
__device__ void matvec_kq(const float* __restrict__ x, const u8* __restrict__ w,
                          const float* __restrict__ bias, float* __restrict__ out, u32 n, u32 k,
                          u32 m, u32 tile) {
    u32 lane, row;
    if (!warp_rows(&x, &out, &n, k, m, tile, &lane, &row)) return;
    float acc[MATVEC_MAXN];
#pragma unroll
    for (int j = 0; j < MATVEC_MAXN; ++j) acc[j] = 0.0f;
    for (u32 g = 8 * lane; g < k; g += 256) {
        u32 q[8];
        float dl, ml;
        kq_run<DT>(w, (u64)row * k + g, q, &dl, &ml);
        float v[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = (float)q[i] - kq_zero<DT>();
#pragma unroll
        for (int j = 0; j < MATVEC_MAXN; ++j) {
            if (j < (int)n) {
                const float4* xp = (const float4*)(x + (u64)j * k + g);
                const float4 a = xp[0], b = xp[1];
                const float s = v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y + v[6] * b.z + v[7] * b.w;
                const float sx = (a.x + a.y + a.z + a.w) + (b.x + b.y + b.z + b.w);
                acc[j] += dl * s - ml * sx;
            }
        }
    }
    store_warp_rows(acc, n, lane, row, bias, out, m);
}

// Moves a weight's pointer and section offsets to the element `first` (a whole number of its
// blocks: an expert's first row), so that the kernels index the expert from row 0 with the
// whole weight's addresses: tandem's quantized types keep their qs, d and m sections apart.
template <int DT>
__device__ __forceinline__ void expert_at(const u8** w, u64* d_off, u64* m_off, u64 first) {
    if (DT >= DT_Q4_K) {
        *w += first / KBlock<DT>::elems * KBlock<DT>::stride;
    } else if (DT == DT_F32) {
        *w += first * 4;
    } else if (DT == DT_F16 || DT == DT_BF16) {
        *w += first * 2;
    } else {
        const u64 qs = DT == DT_Q8_0 ? first : first / 2, scales = first / 32 * 2;
        *w += qs;
        *d_off = *d_off - qs + scales;
        if (DT == DT_Q4_1) *m_off = *m_off - qs + scales;
    }
}

// The decode kernel a one-row product takes (crate::ops::matmul::MoePath in Rust).
#define MOE_N1 0
#define MOE_BLOCKS 1
#define MOE_KQ 2
#define MOE_ANY 3

// The rows of an expert product, blockIdx.y striding over them: row r (token r / slots, slot
// r % slots) dots x[r] (per_slot) or x[r / slots] with the expert ids[r]'s matrix, through the
// function (`path`) and grid shape a one-row decode product of that matrix has, so that its
// bits are that product's whatever the other rows are. An id past the experts (the host
// checks the ids it uploaded; routing on the device writes valid ones) gives a NaN row.
template <int DT>
__device__ void moe_rows(const float* __restrict__ x, const u8* __restrict__ w, u64 d_off,
                         u64 m_off, const u32* __restrict__ ids, float* __restrict__ out,
                         u32 rows, u32 slots, u32 per_slot, u32 k, u32 m, u32 experts, u32 path) {
    for (u32 r = blockIdx.y; r < rows; r += gridDim.y) {
        const u32 e = ids[r];
        const float* xr = x + (u64)(per_slot ? r : r / slots) * k;
        float* o = out + (u64)r * m;
        if (e >= experts) {
            if (blockIdx.x == 0)
                for (u32 i = threadIdx.x; i < m; i += blockDim.x) o[i] = quiet_nan();
            continue;
        }
        const u8* we = w;
        u64 de = d_off, me = m_off;
        expert_at<DT>(&we, &de, &me, (u64)e * m * k);
        if constexpr (DT >= DT_Q4_K) {
            if (path == MOE_KQ) matvec_kq<DT>(xr, we, nullptr, o, 1, k, m, 0);
            else matvec_any<DT>(xr, we, de, me, nullptr, o, 1, k, m, 0);
        } else {
            if (path == MOE_N1) {
                matvec_nt_at<DT, 1>(xr, Seg{we, de, me, nullptr, o, m}, Seg{}, Seg{}, 1, k, 0);
                __syncthreads();  // the next row reuses the reduction's shared memory
            } else if (path == MOE_BLOCKS) {
                matvec_blocks<DT>(xr, we, de, me, nullptr, o, 1, k, m, 0);
            } else {
                matvec_any<DT>(xr, we, de, me, nullptr, o, 1, k, m, 0);
            }
        }
    }
}

#define MOE(suffix, DT)                                                                         \
    extern "C" __global__ void __launch_bounds__(N1_MAX_THREADS) matmul_decode_moe_##suffix(      \
        const float* x, const u8* w, u64 d_off, u64 m_off, const u32* ids, float* out, u32 rows, \
        u32 slots, u32 per_slot, u32 k, u32 m, u32 experts, u32 path) {                          \
        moe_rows<DT>(x, w, d_off, m_off, ids, out, rows, slots, per_slot, k, m, experts, path);  \
    }
MOE(f32, DT_F32)
MOE(f16, DT_F16)
MOE(bf16, DT_BF16)
MOE(q8_0, DT_Q8_0)
MOE(q4_0, DT_Q4_0)
MOE(q4_1, DT_Q4_1)
MOE(q4_k, DT_Q4_K)
MOE(q6_k, DT_Q6_K)
MOE(q5_0, DT_Q5_0)
MOE(q5_1, DT_Q5_1)
MOE(q5_k, DT_Q5_K)
MOE(q2_k, DT_Q2_K)
MOE(q3_k, DT_Q3_K)
MOE(iq4_nl, DT_IQ4_NL)
MOE(iq4_xs, DT_IQ4_XS)

// Every weight type's element-wise kernel (rows of any k).
#define MATVEC_ANY(suffix, DT)                                                                  \
    extern "C" __global__ void __launch_bounds__(MATVEC_WARPS * 32)                             \
        matmul_decode_any_##suffix(const float* x, const u8* w, u64 d_off, u64 m_off,           \
                                   const float* bias, float* out, u32 n, u32 k, u32 m) {        \
        matvec_any<DT>(x, w, d_off, m_off, bias, out, n, k, m, blockIdx.y);                     \
    }

#define MATVEC_BLOCKS(suffix, DT)                                                               \
    extern "C" __global__ void __launch_bounds__(MATVEC_WARPS * 32)                             \
        matmul_decode_kq_##suffix(const float* x, const u8* w, u64 d_off, u64 m_off,            \
                                  const float* bias, float* out, u32 n, u32 k, u32 m) {         \
        matvec_kq<DT>(x, w, bias, out, n, k, m, blockIdx.y);                                    \
    }                                                                                           \
    MATVEC_ANY(suffix, DT)
MATVEC_BLOCKS(q4_k, DT_Q4_K)
MATVEC_BLOCKS(q6_k, DT_Q6_K)
MATVEC_BLOCKS(q5_0, DT_Q5_0)
MATVEC_BLOCKS(q5_1, DT_Q5_1)
MATVEC_BLOCKS(q5_k, DT_Q5_K)
MATVEC_BLOCKS(q2_k, DT_Q2_K)
MATVEC_BLOCKS(q3_k, DT_Q3_K)
MATVEC_BLOCKS(iq4_nl, DT_IQ4_NL)
MATVEC_BLOCKS(iq4_xs, DT_IQ4_XS)

#define MATVEC(suffix, DT)                                                                      \
    extern "C" __global__ void __launch_bounds__(MATVEC_WARPS * 32)                             \
        matmul_decode_##suffix(const float* x, const u8* w, u64 d_off, u64 m_off,               \
                               const float* bias, float* out, u32 n, u32 k, u32 m) {            \
        matvec_blocks<DT>(x, w, d_off, m_off, bias, out, n, k, m, blockIdx.y);                  \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(N1_MAX_THREADS) matmul_decode_n1_##suffix(       \
        const float* x, const u8* w0, u64 d0, u64 mo0, const float* b0, float* o0, u32 m0,      \
        const u8* w1, u64 d1, u64 mo1, const float* b1, float* o1, u32 m1, const u8* w2, u64 d2, \
        u64 mo2, const float* b2, float* o2, u32 m2, u32 n, u32 k) {                            \
        matvec_nt<DT, 1>(x, Seg{w0, d0, mo0, b0, o0, m0}, Seg{w1, d1, mo1, b1, o1, m1},           \
                         Seg{w2, d2, mo2, b2, o2, m2}, n, k);                                   \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(N1_MAX_THREADS) matmul_decode_nt_##suffix(       \
        const float* x, const u8* w0, u64 d0, u64 mo0, const float* b0, float* o0, u32 m0,      \
        const u8* w1, u64 d1, u64 mo1, const float* b1, float* o1, u32 m1, const u8* w2, u64 d2, \
        u64 mo2, const float* b2, float* o2, u32 m2, u32 n, u32 k) {                            \
        matvec_nt<DT, N1_TOKENS>(x, Seg{w0, d0, mo0, b0, o0, m0}, Seg{w1, d1, mo1, b1, o1, m1},   \
                                 Seg{w2, d2, mo2, b2, o2, m2}, n, k);                           \
    }                                                                                           \
    MATVEC_ANY(suffix, DT)
MATVEC(f32, DT_F32)
MATVEC(f16, DT_F16)
MATVEC(bf16, DT_BF16)
MATVEC(q8_0, DT_Q8_0)
MATVEC(q4_0, DT_Q4_0)
MATVEC(q4_1, DT_Q4_1)

// out = x @ w^T (+ bias) for up to MATVEC_MAXN tokens (decode): the weight is streamed once
// and each value is dequantized in registers, with the reference's formula, then used by
// every token. x: [n, k] f32; w: [m, k] in the entry's dtype; bias: [m] f32 or null;
// out: [n, m] f32.
//
// matmul_decode_<dtype>: k % 32 == 0, so every row starts on a quantization block. One warp
// per output row; lane l takes blocks l, l + 32, ... of the row, loading each block's 32
// values with 16-byte loads (one for Q4, two for Q8, four for f16/bf16, eight for f32: a
// warp reads 512 contiguous bytes per Q4 load), and x with float4 loads (x is small and
// shared by every row, so it stays in L1/L2). A warp-shuffle sum finishes each dot.
// matmul_decode_n1_<dtype>: one token (the decode step itself) and k % 32 == 0: a block of
// MATVEC_WARPS warps computes MATVEC_WARPS rows together, the warps splitting the row's
// blocks; each lane loads a block of x once and uses it for every row (x is then read once
// per MATVEC_WARPS rows rather than once per row, which for Q4 would outweigh the weight),
// and has one 16-byte weight load per row in flight. Warp sums meet in shared memory.
// matmul_decode_any_<dtype>: any k (rows may start mid-block): a warp per row, lanes over
// elements.

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

template <int DT>
__device__ void matvec_blocks(const float* __restrict__ x, const u8* __restrict__ w, u64 d_off,
                              u64 m_off, const float* __restrict__ bias, float* __restrict__ out,
                              u32 n, u32 k, u32 m) {
    const u32 lane = threadIdx.x & 31;
    const u32 row = blockIdx.x * MATVEC_WARPS + (threadIdx.x >> 5);
    if (row >= m) return;  // whole warps leave together
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
#pragma unroll
    for (int j = 0; j < MATVEC_MAXN; ++j) {
        if (j < (int)n) {
            const float s = warp_sum(acc[j]);
            if (lane == 0) out[(u64)j * m + row] = bias ? s + bias[row] : s;
        }
    }
}

// Block `gb` of the weight dotted with 32 values of x (sx = their sum): quantized blocks are
// factored as d * sum(q x) (- 8 d sum(x) for Q4_0, + m sum(x) for Q4_1), so no dequantized
// copy of the block is kept and the sums of x are shared by every row.
template <int DT>
__device__ __forceinline__ float dot_block(const u8* __restrict__ w, u64 d_off, u64 m_off, u64 gb,
                                           const float* xv, float sx) {
    if (DT == DT_Q4_0 || DT == DT_Q4_1) {
        const float d = f16_to_f32(((const u16*)(w + d_off))[gb]);
        const uint4 q = *(const uint4*)(w + gb * 16);
        const u32 words[4] = {q.x, q.y, q.z, q.w};
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int b = 0; b < 8; ++b) s += (float)((words[j] >> (4 * b)) & 15u) * xv[8 * j + b];
        if (DT == DT_Q4_0) return d * (s - 8.0f * sx);
        return d * s + f16_to_f32(((const u16*)(w + m_off))[gb]) * sx;
    } else if (DT == DT_Q8_0) {
        const float d = f16_to_f32(((const u16*)(w + d_off))[gb]);
        const uint4* p = (const uint4*)(w + gb * 32);
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const uint4 q = p[i];
            const u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int b = 0; b < 4; ++b)
                    s += (float)(signed char)((words[j] >> (8 * b)) & 0xffu) * xv[16 * i + 4 * j + b];
        }
        return d * s;
    } else {
        float v[32];
        load_block<DT>(w, d_off, m_off, gb, v);
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; ++i) s += v[i] * xv[i];
        return s;
    }
}

template <int DT>
__device__ void matvec_n1(const float* __restrict__ x, const u8* __restrict__ w, u64 d_off,
                          u64 m_off, const float* __restrict__ bias, float* __restrict__ out,
                          u32 k, u32 m) {
    __shared__ float part[MATVEC_WARPS][MATVEC_WARPS];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 row0 = blockIdx.x * MATVEC_WARPS;
    const u32 nb = k >> 5;
    float acc[MATVEC_WARPS];
#pragma unroll
    for (int r = 0; r < MATVEC_WARPS; ++r) acc[r] = 0.0f;
    for (u32 b = warp * 32 + lane; b < nb; b += MATVEC_WARPS * 32) {
        float xv[32], sx = 0.0f;
        const float4* xp = (const float4*)(x + (u64)b * 32);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float4 f = xp[i];
            xv[4 * i] = f.x;
            xv[4 * i + 1] = f.y;
            xv[4 * i + 2] = f.z;
            xv[4 * i + 3] = f.w;
            sx += (f.x + f.y) + (f.z + f.w);
        }
#pragma unroll
        for (int r = 0; r < MATVEC_WARPS; ++r)
            if (row0 + r < m) acc[r] += dot_block<DT>(w, d_off, m_off, (u64)(row0 + r) * nb + b, xv, sx);
    }
#pragma unroll
    for (int r = 0; r < MATVEC_WARPS; ++r) {
        const float s = warp_sum(acc[r]);
        if (lane == 0) part[warp][r] = s;
    }
    __syncthreads();
    if (threadIdx.x < MATVEC_WARPS) {
        const u32 r = threadIdx.x, row = row0 + r;
        if (row < m) {
            float s = 0.0f;
#pragma unroll
            for (int w2 = 0; w2 < MATVEC_WARPS; ++w2) s += part[w2][r];
            out[row] = bias ? s + bias[row] : s;
        }
    }
}

template <int DT>
__device__ void matvec_any(const float* __restrict__ x, const u8* __restrict__ w, u64 d_off,
                           u64 m_off, const float* __restrict__ bias, float* __restrict__ out,
                           u32 n, u32 k, u32 m) {
    const u32 lane = threadIdx.x & 31;
    const u32 row = blockIdx.x * MATVEC_WARPS + (threadIdx.x >> 5);
    if (row >= m) return;
    float acc[MATVEC_MAXN];
#pragma unroll
    for (int j = 0; j < MATVEC_MAXN; ++j) acc[j] = 0.0f;
    for (u32 e = lane; e < k; e += 32) {
        const float wv = load_w<DT>(w, d_off, m_off, (u64)row * k + e);
#pragma unroll
        for (int j = 0; j < MATVEC_MAXN; ++j)
            if (j < (int)n) acc[j] += wv * x[(u64)j * k + e];
    }
#pragma unroll
    for (int j = 0; j < MATVEC_MAXN; ++j) {
        if (j < (int)n) {
            const float s = warp_sum(acc[j]);
            if (lane == 0) out[(u64)j * m + row] = bias ? s + bias[row] : s;
        }
    }
}

#define MATVEC(suffix, DT)                                                                      \
    extern "C" __global__ void __launch_bounds__(MATVEC_WARPS * 32)                             \
        matmul_decode_##suffix(const float* x, const u8* w, u64 d_off, u64 m_off,               \
                               const float* bias, float* out, u32 n, u32 k, u32 m) {            \
        matvec_blocks<DT>(x, w, d_off, m_off, bias, out, n, k, m);                              \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MATVEC_WARPS * 32)                             \
        matmul_decode_n1_##suffix(const float* x, const u8* w, u64 d_off, u64 m_off,            \
                                  const float* bias, float* out, u32 k, u32 m) {                \
        matvec_n1<DT>(x, w, d_off, m_off, bias, out, k, m);                                     \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MATVEC_WARPS * 32)                             \
        matmul_decode_any_##suffix(const float* x, const u8* w, u64 d_off, u64 m_off,           \
                                   const float* bias, float* out, u32 n, u32 k, u32 m) {        \
        matvec_any<DT>(x, w, d_off, m_off, bias, out, n, k, m);                                 \
    }
MATVEC(f32, DT_F32)
MATVEC(f16, DT_F16)
MATVEC(bf16, DT_BF16)
MATVEC(q8_0, DT_Q8_0)
MATVEC(q4_0, DT_Q4_0)
MATVEC(q4_1, DT_Q4_1)

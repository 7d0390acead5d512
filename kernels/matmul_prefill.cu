// out = x @ w^T (+ bias) for the prompt rows of a product where the tensor cores do not take
// them (f32 and f16 weights, k % 32 != 0, or no cuBLAS): 64 tokens x 64 weight rows per block
// of 256 threads, each thread a 4 x 4 register tile. Tiles of 32 columns of x and of w are
// staged in shared memory as f32, w dequantized on the way in with the reference's formula
// (load_w), so any k works, rows starting mid-block included. Every output sums its k
// products in order 0..k whatever its place in a tile, so a row's arithmetic never depends on
// n (batch invariance), one prompt row included.
// x: [n, k] f32; w: [m, k] in the entry's dtype; bias: [m] f32 or null; out: [n, m] f32.
// Grid: (ceil(m / 64), ceil(n / 64)).

#define PF_TM 64
#define PF_TN 64
#define PF_TK 32
#define PF_THREADS 256

template <int DT>
__device__ void matmul_tiled(const float* __restrict__ x, const u8* __restrict__ w, u64 d_off,
                             u64 m_off, const float* __restrict__ bias, float* __restrict__ out,
                             u32 n, u32 k, u32 m) {
    // +4 keeps rows 16-byte aligned and spreads the column reads over banks.
    __shared__ float xs[PF_TK][PF_TM + 4];
    __shared__ float ws[PF_TK][PF_TN + 4];
    const u32 tid = threadIdx.x;
    const u32 tx = tid % 16, ty = tid / 16;
    const u32 row0 = blockIdx.x * PF_TN, tok0 = blockIdx.y * PF_TM;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (u32 k0 = 0; k0 < k; k0 += PF_TK) {
#pragma unroll
        for (int l = 0; l < PF_TM * PF_TK / PF_THREADS; ++l) {
            const u32 idx = tid + l * PF_THREADS;
            const u32 r = idx / PF_TK, kk = idx % PF_TK;
            const u32 tok = tok0 + r, row = row0 + r, col = k0 + kk;
            xs[kk][r] = (tok < n && col < k) ? x[(u64)tok * k + col] : 0.0f;
            ws[kk][r] = (row < m && col < k) ? load_w<DT>(w, d_off, m_off, (u64)row * k + col) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < PF_TK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 tok = tok0 + ty * 4 + i;
        if (tok >= n) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 row = row0 + tx * 4 + j;
            if (row < m) out[(u64)tok * m + row] = bias ? acc[i][j] + bias[row] : acc[i][j];
        }
    }
}

#define TILED(suffix, DT)                                                                \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                             \
        matmul_prefill_##suffix(const float* x, const u8* w, u64 d_off, u64 m_off,       \
                                const float* bias, float* out, u32 n, u32 k, u32 m) {    \
        matmul_tiled<DT>(x, w, d_off, m_off, bias, out, n, k, m);                        \
    }
TILED(f32, DT_F32)
TILED(f16, DT_F16)
TILED(bf16, DT_BF16)
TILED(q8_0, DT_Q8_0)
TILED(q4_0, DT_Q4_0)
TILED(q4_1, DT_Q4_1)
TILED(q4_k, DT_Q4_K)
TILED(q6_k, DT_Q6_K)
TILED(q5_0, DT_Q5_0)
TILED(q5_1, DT_Q5_1)
TILED(q5_k, DT_Q5_K)
TILED(q2_k, DT_Q2_K)
TILED(q3_k, DT_Q3_K)
TILED(iq4_nl, DT_IQ4_NL)
TILED(iq4_xs, DT_IQ4_XS)

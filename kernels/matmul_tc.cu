// Operands of the prompt rows' tensor-core products (crates/tandem-cuda/src/blas.rs: cuBLAS
// with bf16 operands and f32 sums): the activations rounded to bf16 (zero rows pad them to
// whole chunks: every product has one shape, see crates/tandem-cuda/src/ops/matmul.rs),
// quantized weights expanded to bf16 a slice of rows at a time (the slice is scratch, reused
// by every product; no bf16 copy of a model is kept), and each chunk's product stored into the
// output with the bias added.

// Round to nearest even, as half::bf16::from_f32 does; NaN stays a quiet NaN.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    const u32 b = __float_as_uint(f);
    if (is_nan_bits(f)) return (u16)((b >> 16) | 0x40u);
    return (u16)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// out[i] = bf16(x[i]) for i < len, 0 for len <= i < padded.
extern "C" __global__ void matmul_tc_cast_x(const float* __restrict__ x, u16* __restrict__ out, u64 len, u64 padded) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < padded; i += (u64)gridDim.x * blockDim.x)
        out[i] = i < len ? f32_to_bf16(x[i]) : (u16)0;
}

// Rows [row0, row0 + rows) of a quantized weight [m, k] (k % 32 == 0) as bf16 [rows, k]: one
// thread per 32-value block, with the reference's formulas (as load_w), then rounded.
template <int DT>
__device__ void dequant_rows(const u8* __restrict__ w, u64 d_off, u64 m_off, u16* __restrict__ out,
                             u32 row0, u32 rows, u32 k) {
    const u64 nb = k >> 5, first = (u64)row0 * nb, count = (u64)rows * nb;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (u64)gridDim.x * blockDim.x) {
        const u64 gb = first + i;
        const float d = f16_to_f32(((const u16*)(w + d_off))[gb]);
        u32 packed[16];
        if (DT == DT_Q8_0) {
            const signed char* q = (const signed char*)(w + gb * 32);
#pragma unroll
            for (int e = 0; e < 32; e += 2)
                packed[e / 2] = (u32)f32_to_bf16(d * (float)q[e]) | ((u32)f32_to_bf16(d * (float)q[e + 1]) << 16);
        } else {
            const float mn = DT == DT_Q4_1 ? f16_to_f32(((const u16*)(w + m_off))[gb]) : 0.0f;
            const u8* q = w + gb * 16;
#pragma unroll
            for (int e = 0; e < 16; ++e) {
                const float lo = (float)(q[e] & 15u), hi = (float)(q[e] >> 4);
                const float a = DT == DT_Q4_0 ? d * (lo - 8.0f) : d * lo + mn;
                const float b = DT == DT_Q4_0 ? d * (hi - 8.0f) : d * hi + mn;
                packed[e] = (u32)f32_to_bf16(a) | ((u32)f32_to_bf16(b) << 16);
            }
        }
        uint4* dst = (uint4*)(out + i * 32);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            uint4 v;
            v.x = packed[4 * j];
            v.y = packed[4 * j + 1];
            v.z = packed[4 * j + 2];
            v.w = packed[4 * j + 3];
            dst[j] = v;
        }
    }
}

#define DEQUANT(suffix, DT)                                                                      \
    extern "C" __global__ void matmul_tc_dequant_##suffix(const u8* w, u64 d_off, u64 m_off,     \
                                                          u16* out, u32 row0, u32 rows, u32 k) { \
        dequant_rows<DT>(w, d_off, m_off, out, row0, rows, k);                                   \
    }
DEQUANT(q8_0, DT_Q8_0)
DEQUANT(q4_0, DT_Q4_0)
DEQUANT(q4_1, DT_Q4_1)

// out[t, col0 + j] = acc[t, j] (+ bias[col0 + j]) for t < rows, j < cols: a chunk's product
// (acc: [chunk rows, cols], computed in scratch) into its rows of the output (row stride m).
extern "C" __global__ void matmul_tc_store(const float* __restrict__ acc, const float* __restrict__ bias,
                                           float* __restrict__ out, u32 rows, u32 cols, u32 m, u32 col0) {
    const u64 len = (u64)rows * cols;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (u64)gridDim.x * blockDim.x) {
        const u64 t = i / cols, j = i % cols;
        out[t * m + col0 + j] = bias ? acc[i] + bias[col0 + j] : acc[i];
    }
}

// Index of each row's largest value: the lowest index wins ties, NaN never wins, 0 when every
// value is NaN. One block of ARGMAX_THREADS per row. x: [n, width] f32; out: [n] u32.

#define ARGMAX_THREADS 1024

// (value, index) with NONE_U32 for "nothing yet"; the better of two, as a left-to-right scan
// would choose.
__device__ __forceinline__ void better(float& v, u32& i, float ov, u32 oi) {
    if (oi == NONE_U32) return;
    if (i == NONE_U32 || ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

extern "C" __global__ void argmax(const float* __restrict__ x, u32* __restrict__ out, u32 width) {
    __shared__ float sv[ARGMAX_THREADS / 32];
    __shared__ u32 si[ARGMAX_THREADS / 32];
    const float* row = x + (u64)blockIdx.x * width;
    float bv = 0.0f;
    u32 bi = NONE_U32;
    // Each thread scans its indices in increasing order, so a tie keeps the lower one.
    for (u32 j = threadIdx.x; j < width; j += ARGMAX_THREADS) {
        const float v = row[j];
        if (is_nan_bits(v)) continue;
        if (bi == NONE_U32 || v > bv) {
            bv = v;
            bi = j;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
        const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
        better(bv, bi, ov, oi);
    }
    if ((threadIdx.x & 31) == 0) {
        sv[threadIdx.x >> 5] = bv;
        si[threadIdx.x >> 5] = bi;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        bv = sv[threadIdx.x];
        bi = si[threadIdx.x];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
            const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
            better(bv, bi, ov, oi);
        }
        if (threadIdx.x == 0) out[blockIdx.x] = bi == NONE_U32 ? 0u : bi;
    }
}

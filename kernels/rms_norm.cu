// out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight, one block per row.
// x: [n, dim] f32; weight: [dim] f32; out: [n, dim] f32. blockDim.x = RMS_THREADS.

#define RMS_THREADS 256

extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ out, u32 dim, float eps) {
    __shared__ float part[RMS_THREADS / 32];
    const float* row = x + (u64)blockIdx.x * dim;
    float* o = out + (u64)blockIdx.x * dim;
    float ss = 0.0f;
    for (u32 j = threadIdx.x; j < dim; j += RMS_THREADS) ss += row[j] * row[j];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < RMS_THREADS / 32 ? part[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    // The reference's expression: 1 / sqrt(ss / dim + eps), IEEE division and square root.
    const float scale = 1.0f / sqrtf(part[0] / (float)dim + eps);
    for (u32 j = threadIdx.x; j < dim; j += RMS_THREADS) o[j] = row[j] * scale * w[j];
}

// The experts' outputs mixed: out[t] = sum over slots j = 0, 1, ... in that order of
// weights[t, j] * y[t, j] (each product may fuse with its add).
// y: [n, slots, dim] f32; weights: [n, slots] f32; out: [n, dim] f32.

extern "C" __global__ void moe_sum(const float* __restrict__ y, const float* __restrict__ weights,
                                   float* __restrict__ out, u32 n, u32 slots, u32 dim) {
    const u64 total = (u64)n * dim;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const u64 t = i / dim, d = i - t * dim;
        const float* yt = y + t * slots * dim + d;
        const float* wt = weights + t * slots;
        float s = 0.0f;
        for (u32 j = 0; j < slots; ++j) s += wt[j] * yt[(u64)j * dim];
        out[i] = s;
    }
}

// Soft-capping in place: x = cap * tanh(x / cap) (Gemma 2's final logits). x: [len] f32;
// cap finite and > 0.

extern "C" __global__ void softcap(float* __restrict__ x, u64 len, float cap) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride)
        x[i] = cap * tanhf(x[i] / cap);
}

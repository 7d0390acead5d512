// Rotary position embedding in place, rotate-half layout: within each head, element j of the
// first rot_dim pairs with element j + rot_dim/2, rotated by positions[i] * inv_freq[j], cos
// and sin multiplied by `scale` (1, or LongRoPE's attention factor); elements rot_dim..head_dim
// pass through (partial rotary).
// x: [n, heads, head_dim] f32; positions: [n] u32; inv_freq: [rot_dim / 2] f32.

extern "C" __global__ void rope(float* __restrict__ x, const u32* __restrict__ positions,
                                const float* __restrict__ inv_freq, u32 n, u32 heads,
                                u32 head_dim, u32 rot_dim, float scale) {
    const u32 half = rot_dim / 2;
    const u64 total = (u64)n * heads * half;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const u32 j = (u32)(i % half);
        const u64 head = i / half;  // token * heads + h
        const u32 token = (u32)(head / heads);
        // Accurate sinf/cosf (no fast math): angles reach thousands of radians.
        const float angle = (float)positions[token] * inv_freq[j];
        float s, c;
        sincosf(angle, &s, &c);
        // x * 1 is x: with scale 1 this is the plain rotation.
        s *= scale;
        c *= scale;
        float* h = x + head * head_dim;
        const float a = h[j], b = h[j + half];
        h[j] = a * c - b * s;
        h[j + half] = a * s + b * c;
    }
}

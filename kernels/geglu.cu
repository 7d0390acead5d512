// out = gelu_tanh(gate) * up, elementwise, gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g +
// 0.044715 g^3))), grouped as the CPU reference groups it (PyTorch's gelu(approximate="tanh")).
// All [len] f32.

extern "C" __global__ void geglu(const float* __restrict__ gate, const float* __restrict__ up,
                                 float* __restrict__ out, u64 len) {
    const float sqrt_2_over_pi = 0.7978846f;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride) {
        const float g = gate[i];
        // Accurate tanhf (no fast math): its tails saturate to exactly +-1 as the CPU's do.
        const float inner = sqrt_2_over_pi * (g + 0.044715f * g * g * g);
        out[i] = 0.5f * g * (1.0f + tanhf(inner)) * up[i];
    }
}

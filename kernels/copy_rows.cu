// dst[i] = src[i] for i < len: rows of a batch, the host offsetting both pointers to the first
// row (dst[dst_row + r] = src[src_row + r]). src, dst: [.., width] f32.

extern "C" __global__ void copy_rows(const float* __restrict__ src, float* __restrict__ dst, u64 len) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride) dst[i] = src[i];
}

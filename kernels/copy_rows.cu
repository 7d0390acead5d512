// dst[i] = src[src_row + i]: rows of width floats. src: [.., width]; dst: [n_rows, width].

extern "C" __global__ void copy_rows(const float* __restrict__ src, float* __restrict__ dst,
                                     u64 src_offset, u64 len) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride)
        dst[i] = src[src_offset + i];
}

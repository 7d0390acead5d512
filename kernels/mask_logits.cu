// Forbidding the tokens a row's constraint rejects (structured output), before sampling:
// x[rows[i] * width + j] = -inf where bit j % 32 of mask[i * words + j / 32] is clear. Set
// bits and unlisted rows keep their bits. x: [x_rows, width] f32; rows: [n] u32 (checked <
// x_rows on the host); mask: [n * words] u32. Grid: (ceil(width / blockDim.x), n).

extern "C" __global__ void mask_logits(float* __restrict__ x, const u32* __restrict__ rows,
                                       const u32* __restrict__ mask, u32 n, u32 width, u32 words) {
    const u32 i = blockIdx.y;
    const u32 j = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || j >= width) return;
    if (((mask[(u64)i * words + j / 32] >> (j % 32)) & 1u) == 0)
        x[(u64)rows[i] * width + j] = __uint_as_float(0xff800000u);
}

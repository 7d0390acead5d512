// The orthonormal Walsh-Hadamard rotation, in place, of every run of `size` values:
// y = H x / sqrt(size), H[i][j] = (-1)^popcount(i & j). x: [len] f32, len a multiple of size,
// size a power of two (both checked by the engine). blockDim.x = HADAMARD_THREADS; a block
// rotates `chunk` values at a time (whole runs: chunk a multiple of size, so a chunk's last
// one may be shorter but still whole runs) in `chunk` floats of dynamic shared memory, the
// grid striding over the chunks. The reference's arithmetic: the fast transform's butterflies
// stage by stage (pairs i, i + h for h = 1, 2, 4, ...: a + b, a - b), then times
// 1 / sqrt(size), so the results are the CPU's to the bit.

#define HADAMARD_THREADS 256

extern "C" __global__ void __launch_bounds__(HADAMARD_THREADS)
    hadamard(float* __restrict__ x, u64 len, u32 size, u32 chunk) {
    DYNAMIC_SHARED(float, s);
    const float scale = 1.0f / sqrtf((float)size);
    for (u64 start = (u64)blockIdx.x * chunk; start < len; start += (u64)gridDim.x * chunk) {
        const u32 n = len - start < chunk ? (u32)(len - start) : chunk;
        float* xs = x + start;
        for (u32 i = threadIdx.x; i < n; i += HADAMARD_THREADS) s[i] = xs[i];
        for (u32 h = 1; h < size; h *= 2) {
            __syncthreads();
            // Pair p of the n / 2: its run's pairs are those of one run of 2h (h a power of two).
            for (u32 p = threadIdx.x; p < n / 2; p += HADAMARD_THREADS) {
                const u32 i = ((p & ~(h - 1)) << 1) | (p & (h - 1));
                const float a = s[i], b = s[i + h];
                s[i] = a + b;
                s[i + h] = a - b;
            }
        }
        __syncthreads();
        for (u32 i = threadIdx.x; i < n; i += HADAMARD_THREADS) xs[i] = s[i] * scale;
        __syncthreads();  // before the next chunk overwrites s
    }
}

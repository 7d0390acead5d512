// Writes new keys and values into their paged cache rows.
// k, v: [n, row] f32 (row = kv_heads * head_dim); cache_k, cache_v: [rows, row] in f32 or
// f16; slots: [n] u32, cache row of token i. A slot >= rows (the host reports it) is skipped.

__device__ __forceinline__ void kv_put(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_put(u16* p, float v) { *p = f32_to_f16(v); }

template <typename T>
__device__ void kv_write(const float* __restrict__ k, const float* __restrict__ v,
                         T* __restrict__ ck, T* __restrict__ cv, const u32* __restrict__ slots,
                         u32 n, u32 row, u32 rows) {
    const u64 total = (u64)n * row;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const u32 t = (u32)(i / row);
        const u32 e = (u32)(i - (u64)t * row);
        const u32 s = slots[t];
        if (s >= rows) continue;
        const u64 dst = (u64)s * row + e;
        kv_put(ck + dst, k[i]);
        kv_put(cv + dst, v[i]);
    }
}

extern "C" __global__ void kv_write_f32(const float* k, const float* v, float* ck, float* cv,
                                        const u32* slots, u32 n, u32 row, u32 rows) {
    kv_write<float>(k, v, ck, cv, slots, n, row, rows);
}

extern "C" __global__ void kv_write_f16(const float* k, const float* v, u16* ck, u16* cv,
                                        const u32* slots, u32 n, u32 row, u32 rows) {
    kv_write<u16>(k, v, ck, cv, slots, n, row, rows);
}

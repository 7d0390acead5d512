// LoRA applied unmerged, per row (tandem_core::ops::LoraShrink / LoraExpand): the rows of a
// step that carry an adapter, each with its own slot of the adapter pool. A row's arithmetic
// never depends on the other rows (batch invariance): a fixed tree over k for the shrink, a
// sequential sum over the rank for the expand. The pool (a or b) holds f32, or f16 when
// `half_pool` is set. rows and slots are checked on the host (rows < the rows of x / out,
// slots < n_slots).

#define LORA_THREADS 128

__device__ __forceinline__ float lora_w(const void* __restrict__ w, u64 e, u32 half_pool) {
    return half_pool ? f16_to_f32(((const u16*)w)[e]) : ((const float*)w)[e];
}

// t[i, j] = dot(x[rows[i]], a[slots[i], j]). Grid: (rank, n); block: LORA_THREADS.
extern "C" __global__ void lora_shrink(const float* __restrict__ x, const void* __restrict__ a,
                                       const u32* __restrict__ rows, const u32* __restrict__ slots,
                                       float* __restrict__ t, u32 n, u32 k, u32 rank,
                                       u32 half_pool) {
    __shared__ float part[LORA_THREADS / 32];
    const u32 j = blockIdx.x, i = blockIdx.y;
    if (i >= n || j >= rank) return;
    const float* xr = x + (u64)rows[i] * k;
    const u64 w0 = ((u64)slots[i] * rank + j) * k;
    float acc = 0.0f;
    for (u32 e = threadIdx.x; e < k; e += LORA_THREADS) acc += xr[e] * lora_w(a, w0 + e, half_pool);
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < LORA_THREADS / 32 ? part[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0) t[(u64)i * rank + j] = v;
    }
}

// out[rows[i], o] += sum over j ascending of t[i, j] * b[slots[i], j, o] (b is B transposed,
// [slots, rank, m]: a warp reads consecutive outputs). Grid: (ceil(m / blockDim.x), n).
extern "C" __global__ void lora_expand(const float* __restrict__ t, const void* __restrict__ b,
                                       const u32* __restrict__ rows, const u32* __restrict__ slots,
                                       float* __restrict__ out, u32 n, u32 m, u32 rank,
                                       u32 half_pool) {
    const u32 i = blockIdx.y;
    const u32 o = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || o >= m) return;
    const float* ti = t + (u64)i * rank;
    const u64 w0 = (u64)slots[i] * rank * m + o;
    float acc = 0.0f;
    for (u32 j = 0; j < rank; j++) acc += ti[j] * lora_w(b, w0 + (u64)j * m, half_pool);
    out[(u64)rows[i] * m + o] += acc;
}

// Writes new keys and values into their paged cache rows.
// k, v: [n, row] f32 (row = kv_heads * hd); cache_k, cache_v: [rows, row] in f32, f16, q8_0,
// q4_0 or fp8; slots: [n] u32, cache row of token i. A slot >= rows (the host reports it) is
// skipped. k_doff, v_doff: the byte offset of a quantized cache's scales (0 for f32/f16).
// sides: which caches a launch writes (1 keys, 2 values, 3 both): caches of two dtypes are
// written by two launches, each with its own dtype's kernel.
//
// Quantized caches (tandem_core::quant::kv): element e's code at byte e (q8_0, an i8) or in
// byte e / 2 (q4_0: low nibble for even e, high for odd, stored + 8), the f16 scale of its
// block of 32 at scales[e / 32]. A row is whole blocks (the engine checks it), so a block
// never straddles rows and a write touches no other row's bytes. Each block is quantized
// exactly as tandem_core::quant::kv::quantize_block: the same IEEE divisions and f32
// reciprocal, each product rounded on its own (__fmul_rn: never fused into the add after it).
// fp8: element e's e4m3 code at byte e, the f32 scale of its head vector (hd values, hd % 4
// == 0, checked by the engine) at scales[e / hd], each head quantized exactly as
// quantize_head (compared byte for byte with the CPU's).

__device__ __forceinline__ void kv_put(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_put(u16* p, float v) { *p = f32_to_f16(v); }

template <typename T>
__device__ void kv_write(const float* __restrict__ k, const float* __restrict__ v,
                         T* __restrict__ ck, T* __restrict__ cv, const u32* __restrict__ slots,
                         u32 n, u32 row, u32 rows, u32 sides) {
    const u64 total = (u64)n * row;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const u32 t = (u32)(i / row);
        const u32 e = (u32)(i - (u64)t * row);
        const u32 s = slots[t];
        if (s >= rows) continue;
        const u64 dst = (u64)s * row + e;
        if (sides & 1u) kv_put(ck + dst, k[i]);
        if (sides & 2u) kv_put(cv + dst, v[i]);
    }
}

extern "C" __global__ void kv_write_f32(const float* k, const float* v, float* ck, float* cv,
                                        const u32* slots, u32 n, u32 row, u32 hd, u32 rows,
                                        u64 k_doff, u64 v_doff, u32 sides) {
    kv_write<float>(k, v, ck, cv, slots, n, row, rows, sides);
}

extern "C" __global__ void kv_write_f16(const float* k, const float* v, u16* ck, u16* cv,
                                        const u32* slots, u32 n, u32 row, u32 hd, u32 rows,
                                        u64 k_doff, u64 v_doff, u32 sides) {
    kv_write<u16>(k, v, ck, cv, slots, n, row, rows, sides);
}

// One block of 32 values, lane l holding value x (its element l), stored at block b of the
// cache `c` (scales at c + doff). Every lane of the warp takes part (shuffles).
template <int DT>
__device__ void kv_quant_block(float x, u8* __restrict__ c, u64 doff, u64 b, u32 lane) {
    // A NaN or an infinity anywhere makes the whole block NaN (codes 0, or 8 for q4_0).
    u32 bad = is_finite_bits(x) ? 0u : 1u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) bad |= __shfl_xor_sync(FULL_MASK, bad, o);
    float d;
    u32 code;
    if (DT == DT_Q8_0) {
        const float amax = warp_max(fabsf(x));
        d = amax / 127.0f;
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        code = (u32)(int)roundf(fminf(fmaxf(__fmul_rn(x, id), -127.0f), 127.0f)) & 0xffu;
    } else {
        // m: the value of largest magnitude, the lowest lane's on ties (the reference's left
        // fold). Lanes l and l ^ o hold the best of their aligned groups of o lanes; the
        // partner's group comes first when bit o of l is set.
        float m = x;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float p = __shfl_xor_sync(FULL_MASK, m, o);
            const bool first = (lane & (u32)o) != 0;
            if (fabsf(p) > fabsf(m) || (fabsf(p) == fabsf(m) && first)) m = p;
        }
        if (fabsf(m) == 0.0f) m = 0.0f;  // the fold starts from +0: an all-zero block's m
        d = m / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        code = (u32)(int)fminf(fmaxf(__fmul_rn(x, id) + 8.5f, 0.0f), 15.0f);
    }
    if (bad) code = DT == DT_Q8_0 ? 0u : 8u;
    const u64 e = b * 32 + lane;
    if (DT == DT_Q8_0) {
        c[e] = (u8)code;
    } else {
        const u32 hi = __shfl_xor_sync(FULL_MASK, code, 1);  // the odd neighbour's nibble
        if ((lane & 1) == 0) c[e >> 1] = (u8)(code | (hi << 4));
    }
    // Neighbouring blocks' scales share a word; each is its own 2-byte store.
    if (lane == 0) ((u16*)(c + doff))[b] = bad ? (u16)0x7e00 : f32_to_f16(d);
}

// One warp per group of `group` source values (a block of 32, or a head vector: row / group
// of them per token), k and v in turn: write(source group, cache, scales offset, the group's
// index in the cache, lane).
template <typename Write>
__device__ void kv_write_groups(const float* __restrict__ k, const float* __restrict__ v,
                                u8* __restrict__ ck, u8* __restrict__ cv,
                                const u32* __restrict__ slots, u32 n, u32 row, u32 group, u32 rows,
                                u64 k_doff, u64 v_doff, u32 sides, Write write) {
    const u32 per_row = row / group, lane = threadIdx.x & 31;
    const u64 total = (u64)n * per_row;
    const u64 stride = ((u64)gridDim.x * blockDim.x) >> 5;
    // Warp-uniform: every lane of a warp has the same group and slot.
    for (u64 g = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; g < total; g += stride) {
        const u32 t = (u32)(g / per_row);
        const u32 s = slots[t];
        if (s >= rows) continue;
        const u64 dst = (u64)s * per_row + (g - (u64)t * per_row);
        if (sides & 1u) write(k + g * group, ck, k_doff, dst, lane);
        if (sides & 2u) write(v + g * group, cv, v_doff, dst, lane);
    }
}
// One head vector of hd values of source `x` (a warp; lanes over groups of 4 values, one u32
// of codes each) stored as cache head vector `head` of `c`: codes from element head * hd, the
// scale the head-th f32 at c + doff. Every lane takes part (shuffles).
__device__ void kv_fp8_head(const float* __restrict__ x, u8* __restrict__ c, u64 doff, u64 head,
                           u32 hd, u32 lane) {
    // A NaN or an infinity anywhere makes the whole head NaN: codes 0, a NaN scale.
    u32 bad = 0u;
    float amax = 0.0f;
    for (u32 i = 4 * lane; i < hd; i += 128) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            bad |= is_finite_bits(x[i + j]) ? 0u : 1u;
            amax = fmaxf(amax, fabsf(x[i + j]));
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) bad |= __shfl_xor_sync(FULL_MASK, bad, o);
    amax = warp_max(amax);  // exact in any order (the NaN case is already set apart)
    const float s = amax / 448.0f;  // E4M3_MAX: the largest magnitude maps to 448
    // A head so small that 1 / s overflows (or all zeros) gets zero codes: 0 * inf is NaN.
    const float r = 1.0f / s;
    const float inv = is_finite_bits(r) ? r : 0.0f;
    for (u32 i = 4 * lane; i < hd; i += 128) {
        u32 word = 0u;
#pragma unroll
        for (int j = 0; j < 4; ++j) word |= (bad ? 0u : f32_to_e4m3(__fmul_rn(x[i + j], inv))) << (8 * j);
        // head * hd and i are multiples of 4 (hd is): an aligned word of 4 codes.
        *(u32*)(c + head * hd + i) = word;
    }
    if (lane == 0) ((float*)(c + doff))[head] = bad ? quiet_nan() : s;
}

#define KV_WRITE_QUANT(suffix, DT)                                                            \
    extern "C" __global__ void kv_write_##suffix(const float* k, const float* v, u8* ck,      \
                                                 u8* cv, const u32* slots, u32 n, u32 row,    \
                                                 u32 hd, u32 rows, u64 k_doff, u64 v_doff,    \
                                                 u32 sides) {                                 \
        kv_write_groups(k, v, ck, cv, slots, n, row, 32, rows, k_doff, v_doff, sides,         \
                        [](const float* x, u8* c, u64 doff, u64 b, u32 lane) {                \
                            kv_quant_block<DT>(x[lane], c, doff, b, lane);                    \
                        });                                                                   \
    }
KV_WRITE_QUANT(q8_0, DT_Q8_0)
KV_WRITE_QUANT(q4_0, DT_Q4_0)

extern "C" __global__ void kv_write_fp8(const float* k, const float* v, u8* ck, u8* cv,
                                        const u32* slots, u32 n, u32 row, u32 hd, u32 rows,
                                        u64 k_doff, u64 v_doff, u32 sides) {
    kv_write_groups(k, v, ck, cv, slots, n, row, hd, rows, k_doff, v_doff, sides,
                    [hd](const float* x, u8* c, u64 doff, u64 head, u32 lane) {
                        kv_fp8_head(x, c, doff, head, hd, lane);
                    });
}

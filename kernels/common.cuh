// Prepended by tandem-cuda to every kernels/*.cu before NVRTC compiles it, so that no kernel
// needs a CUDA header at run time (a user's machine may have the driver and no toolkit).
// Conversions use inline PTX or bit tricks instead of cuda_fp16.h / cuda_bf16.h.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

// Weight dtype codes (crate::kernels::dtype_code in Rust): one kernel instantiation each.
#define DT_F32 0
#define DT_F16 1
#define DT_Q8_0 2
#define DT_Q4_0 3
#define DT_Q4_1 4
#define DT_BF16 5
// GGUF block types (tandem_core::quant::blocks: ggml's blocks padded to whole words).
#define DT_Q4_K 6
#define DT_Q6_K 7
#define DT_Q5_0 8
#define DT_Q5_1 9
#define DT_Q5_K 10
#define DT_Q2_K 11
#define DT_Q3_K 12
#define DT_IQ4_NL 13
#define DT_IQ4_XS 14
// A KV cache type only (tandem_core::quant::kv): e4m3 codes, an f32 scale per head vector.
#define DT_FP8 15

#define NONE_U32 0xffffffffu
#define FULL_MASK 0xffffffffu

// TANDEM_EMU: compiled by the host C++ compiler against crates/tandem-cuda/emu/cuda_emu.h,
// which stands in for the CUDA features used here, so tests can run the kernels without a
// GPU. Only the two conversions and dynamic shared memory differ.
#ifdef TANDEM_EMU
__device__ __forceinline__ float f16_to_f32(u16 h) { return emu_f16_to_f32(h); }
__device__ __forceinline__ u16 f32_to_f16(float f) { return emu_f32_to_f16(f); }
#define DYNAMIC_SHARED(T, name) T* name = (T*)emu_dynamic_shared()
#else
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even, as half::f16::from_f32 does (the CPU reference's KV cache).
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("{ .reg .f16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}
#define DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

// bf16 is the top half of an f32.
__device__ __forceinline__ float bf16_to_f32(u16 b) {
    return __uint_as_float(((u32)b) << 16);
}

__device__ __forceinline__ float neg_inf() {
    return __uint_as_float(0xff800000u);
}

__device__ __forceinline__ float quiet_nan() {
    return __uint_as_float(0x7fc00000u);
}

// Tests the bits: no fast-math assumption can fold them away.
__device__ __forceinline__ bool is_finite_bits(float v) {
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}

__device__ __forceinline__ bool is_nan_bits(float v) {
    u32 b = __float_as_uint(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// e4m3 (OCP e4m3fn) code c's value, exactly tandem_core::quant::kv::e4m3_value: a normal
// code's exponent is rebiased (7 -> 127) and its 3 mantissa bits moved up, a subnormal one
// (exponent 0) is m * 2^-9, and 0x7f / 0xff are NaN (no writer stores them; poison may).
__device__ __forceinline__ float e4m3_to_f32(u32 c) {
    const u32 em = c & 0x7fu, sign = (c & 0x80u) << 24;
    const u32 mag = em < 8u ? __float_as_uint((float)em * (1.0f / 512.0f))
                  : em == 0x7fu ? 0x7fc00000u : (em << 20) + (120u << 23);
    return __uint_as_float(sign | mag);
}

// y as an e4m3 code, exactly tandem_core::quant::kv::e4m3: round to nearest, ties to even,
// saturating at +-448 (0x7e / 0xfe), NaN as 0x7f with y's sign. Integer arithmetic on y's
// bits rather than cvt.e4m3x2 (sm_89+ only) or cuda_fp8.h, so every sm and the emulator
// produce the CPU's very codes.
__device__ __forceinline__ u32 f32_to_e4m3(float y) {
    const u32 sign = (__float_as_uint(y) >> 24) & 0x80u, b = __float_as_uint(y) & 0x7fffffffu;
    if (b > 0x7f800000u) return sign | 0x7fu;
    // Below 2^-6, e4m3's least normal: subnormal steps of 2^-9 (the product is exact, rintf
    // rounds ties to even; 8 steps round up to the least normal code, 0x08).
    if (b < 0x3c800000u) return sign | (u32)rintf(__uint_as_float(b) * 512.0f);
    // Keep 3 of the 23 mantissa bits, rounding the 20 dropped to nearest even (a carry into
    // the exponent is the next binade's code), then rebias the exponent (127 -> 7).
    const u32 r = b + 0x7ffffu + ((b >> 20) & 1u);
    return sign | min((r >> 20) - (120u << 3), 0x7eu);
}

// GGUF block types, array of structs over the flat element index (layouts in
// tandem_core::quant::blocks). kq_run gives the 8 levels of elements g..g+8 (g % 8 == 0, so
// one sub-block), each offset by kq_zero so that it is unsigned, and their sub-block's
// (dl, ml): each value is dl * (q - kq_zero) - ml, the product rounded on its own.
// Q4_K (256 in 144 bytes): d, dmin f16; 12 bytes of 6-bit (scale, min); 128 bytes of nibbles,
// each 64 elements 32 bytes, low nibbles first. Q5_K (176): the same with 32 bytes of fifth
// bits (element j's: bit j / 32 of byte j % 32) before the nibbles. Q6_K (212): 128 bytes of
// low nibbles, 64 of 2-bit highs, 16 i8 scales, d f16; q - 32. Q5_0 / Q5_1 (32 in 24): d f16,
// (Q5_1) m f16, qh u32 (bit j: element j's fifth bit), 16 bytes of nibbles (0..16 low,
// 16..32 high); Q5_0: d (q - 16), Q5_1: d q + m.
// Q2_K (256 in 84): 16 bytes of (scale, min) nibbles per 16 elements, 64 bytes of 2-bit
// levels (each half of the block 32 bytes, element j's field (j % 128) / 32 of byte j % 32),
// d, dmin f16. Q3_K (112): 32 bytes of high bits (element j's: bit j / 32 of byte j % 32; a
// clear bit means level - 4), 64 bytes of 2-bit fields as Q2_K, 12 bytes of 6-bit scales
// stored + 32, d f16. IQ4_NL (32 in 20): d f16, 16 bytes of 4-bit indices into IQ4_LEVELS
// (0..16 low nibbles, 16..32 high). IQ4_XS (256 in 136): d f16, the scales' high 2 bits (u16),
// their low nibbles (4 bytes), then per 32 elements the 16 index bytes of an IQ4_NL block.
template <int DT>
struct KBlock {
    static constexpr u32 elems = DT == DT_Q5_0 || DT == DT_Q5_1 || DT == DT_IQ4_NL ? 32 : 256;
    static constexpr u32 stride = DT == DT_Q4_K ? 144 : DT == DT_Q5_K ? 176 : DT == DT_Q6_K ? 212
                                : DT == DT_Q2_K ? 84 : DT == DT_Q3_K ? 112 : DT == DT_IQ4_NL ? 20
                                : DT == DT_IQ4_XS ? 136 : 24;
};

__device__ __forceinline__ float f16_at(const u8* p) { return f16_to_f32(*(const u16*)p); }

// The 8 bytes at p (4-byte aligned: every field a run reads starts on a word in tandem's
// padded blocks) as two word loads rather than eight byte loads.
__device__ __forceinline__ void bytes8(const u8* p, u8* out) {
    const u32 a = ((const u32*)p)[0], b = ((const u32*)p)[1];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[i] = (u8)(a >> (8 * i));
        out[4 + i] = (u8)(b >> (8 * i));
    }
}

// IQ4_LEVELS (tandem_core::quant::iq4) plus 128, a byte each, packed into two words of 64
// bits: a lookup is a shift of a constant, with no memory access (a table in constant memory
// would serialize a warp whose lanes read different entries).
// Low word: levels 0..8 (-127 -104 -83 -65 -49 -35 -22 -10), high word: 8..16 (1 13 25 38
// 53 69 89 113), entry i in byte i % 8.
#define IQ4_LEVELS_LO 0x766a5d4f3f2d1801ull
#define IQ4_LEVELS_HI 0xf1d9c5b5a6998d81ull
__device__ __forceinline__ u32 iq4_level(u32 idx) {
    const u64 t = idx < 8 ? IQ4_LEVELS_LO : IQ4_LEVELS_HI;
    return (u32)(t >> (8 * (idx & 7))) & 0xffu;
}

template <int DT>
__device__ __forceinline__ void kq_run(const u8* __restrict__ w, u64 g, u32* q, float* dl, float* ml) {
    const u8* b = w + (g / KBlock<DT>::elems) * KBlock<DT>::stride;
    const u32 j = (u32)(g % KBlock<DT>::elems);
    if (DT == DT_Q4_K || DT == DT_Q5_K) {
        const u32 s = j / 32;
        const u8* sc = b + 4;
        const u32 scale = s < 4 ? sc[s] & 63u : (sc[s + 4] & 15u) | ((sc[s - 4] >> 6) << 4);
        const u32 mn = s < 4 ? sc[s + 4] & 63u : (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
        *dl = __fmul_rn(f16_at(b), (float)scale);
        *ml = __fmul_rn(f16_at(b + 2), (float)mn);
        const u8* lo = b + (DT == DT_Q5_K ? 48 : 16) + (j / 64) * 32 + j % 32;
        const u32 shift = 4 * ((j / 32) % 2);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            q[i] = (lo[i] >> shift) & 15u;
            if (DT == DT_Q5_K) q[i] |= ((b[16 + j % 32 + i] >> (j / 32)) & 1u) << 4;
        }
    } else if (DT == DT_Q6_K) {
        *dl = __fmul_rn(f16_at(b + 208), (float)(signed char)b[192 + j / 16]);
        *ml = 0.0f;
        const u8* lo = b + (j / 128) * 64 + j % 64;
        const u8* hi = b + 128 + (j / 128) * 32 + j % 32;
        const u32 ls = 4 * ((j % 128) / 64), hs = 2 * ((j % 128) / 32);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = ((lo[i] >> ls) & 15u) | (((hi[i] >> hs) & 3u) << 4);
    } else if (DT == DT_Q2_K || DT == DT_Q3_K) {
        const u32 s = j / 16;
        if (DT == DT_Q2_K) {
            *dl = __fmul_rn(f16_at(b + 80), (float)(b[s] & 15u));
            *ml = __fmul_rn(f16_at(b + 82), (float)(b[s] >> 4));
        } else {
            const u8* sc = b + 96;
            const u32 six = ((sc[s % 8] >> (4 * (s / 8))) & 15u) | (((sc[8 + s % 4] >> (2 * (s / 4))) & 3u) << 4);
            *dl = __fmul_rn(f16_at(b + 108), (float)((int)six - 32));
            *ml = 0.0f;
        }
        u8 lo[8];
        bytes8(b + (DT == DT_Q2_K ? 16 : 32) + (j / 128) * 32 + j % 32, lo);
        const u32 shift = 2 * ((j % 128) / 32);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = (lo[i] >> shift) & 3u;
        if (DT == DT_Q3_K) {
            // Level = field - 4 + 4 * bit: stored as field + 4 * bit, kq_zero 4.
            u8 hm[8];
            bytes8(b + j % 32, hm);
#pragma unroll
            for (int i = 0; i < 8; ++i) q[i] |= ((hm[i] >> (j / 32)) & 1u) << 2;
        }
    } else if (DT == DT_IQ4_NL || DT == DT_IQ4_XS) {
        const u8* qs;
        if (DT == DT_IQ4_NL) {
            *dl = f16_at(b);
            qs = b + 4;
        } else {
            const u32 s = j / 32;
            const u32 six = ((b[4 + s / 2] >> (4 * (s % 2))) & 15u) | (((*(const u16*)(b + 2) >> (2 * s)) & 3u) << 4);
            *dl = __fmul_rn(f16_at(b), (float)((int)six - 32));
            qs = b + 8 + 16 * s;
        }
        *ml = 0.0f;
        u8 idx[8];
        bytes8(qs + j % 16, idx);
        const u32 shift = 4 * ((j % 32) / 16);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = iq4_level((idx[i] >> shift) & 15u);
    } else {
        const u32 qh = *(const u32*)(b + 4);
        const u8* lo = b + 8 + j % 16;
        const u32 shift = 4 * (j / 16);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = ((lo[i] >> shift) & 15u) | (((qh >> (j + i)) & 1u) << 4);
        *dl = f16_at(b);
        *ml = DT == DT_Q5_1 ? -f16_at(b + 2) : 0.0f;
    }
}

// The offset kq_run adds to a level to keep it unsigned (Q6_K: 32, Q5_0: 16, Q3_K: 4, the
// IQ4 types: 128), else 0. Subtracting it is exact in f32.
template <int DT>
__device__ __forceinline__ float kq_zero() {
    return DT == DT_Q6_K ? 32.0f : DT == DT_Q5_0 ? 16.0f : DT == DT_Q3_K ? 4.0f
         : DT == DT_IQ4_NL || DT == DT_IQ4_XS ? 128.0f : 0.0f;
}

// Flat element e of a weight in tandem's layout (see tandem_core::dtype): f32/f16/bf16
// row-major, quantized structure-of-arrays over blocks of 32 (qs, then f16 d at byte d_off,
// then f16 m at byte m_off), or a GGUF block type (kq_run). The same formulas as QuantView::get
// and the block decoders (each product rounded on its own).
template <int DT>
__device__ __forceinline__ float load_w(const u8* __restrict__ w, u64 d_off, u64 m_off, u64 e) {
    if (DT >= DT_Q4_K) {
        u32 q[8];
        float dl, ml;
        kq_run<DT>(w, e & ~7ull, q, &dl, &ml);
        return __fmul_rn(dl, (float)q[e & 7] - kq_zero<DT>()) - ml;
    }
    if (DT == DT_F32) return ((const float*)w)[e];
    if (DT == DT_F16) return f16_to_f32(((const u16*)w)[e]);
    if (DT == DT_BF16) return bf16_to_f32(((const u16*)w)[e]);
    const u64 b = e >> 5;
    const float d = f16_to_f32(((const u16*)(w + d_off))[b]);
    if (DT == DT_Q8_0) return d * (float)(signed char)w[e];
    const u8 byte = w[e >> 1];
    const u32 q = (e & 1) ? (byte >> 4) : (byte & 15u);
    if (DT == DT_Q4_0) return d * ((float)q - 8.0f);
    const float mn = f16_to_f32(((const u16*)(w + m_off))[b]);
    return d * (float)q + mn;
}

// Element d of head vector `head` ((cache row * kv_heads + kv head), of hd values) of a KV
// cache of dtype DT, whose scales start at byte doff: f32, f16, q8_0 and q4_0 as load_w reads
// them, fp8 as its head's f32 scale times the code's value (Fp8View::get's product).
template <int DT>
__device__ __forceinline__ float load_kv(const u8* __restrict__ c, u64 doff, u64 head, u32 hd, u32 d) {
    if constexpr (DT == DT_FP8) {
        return ((const float*)(c + doff))[head] * e4m3_to_f32(c[head * hd + d]);
    } else {
        return load_w<DT>(c, doff, 0, head * hd + d);
    }
}

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

// Flat element e of a weight in tandem's layout (see tandem_core::dtype): f32/f16/bf16
// row-major, or quantized structure-of-arrays over blocks of 32 (qs, then f16 d at byte
// d_off, then f16 m at byte m_off). The same formulas as QuantView::get.
template <int DT>
__device__ __forceinline__ float load_w(const u8* __restrict__ w, u64 d_off, u64 m_off, u64 e) {
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

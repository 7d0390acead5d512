// A CPU stand-in for the CUDA features tandem's kernels use, so that kernels/*.cu can be
// compiled by the host C++ compiler and run in tests on a machine without a GPU: each CUDA
// thread is an OS thread, a block's threads run together (blocks one after another), and
// __syncthreads, __syncwarp and warp shuffles are barriers over them. It checks what the
// kernels compute, not how fast, and not GPU-only behaviour (memory model, alignment faults,
// resource limits). Built and driven by crates/tandem-cuda/src/emu.rs.
#pragma once

#include <barrier>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define TANDEM_EMU 1
#define __global__
#define __device__ static
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks run one at a time, so a block's shared memory can be a function's static storage.
#define __shared__ static

struct uint3_emu {
    unsigned x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

namespace emu {

using Barrier = std::barrier<>;

// What the threads of the running block share.
struct Block {
    unsigned threads;
    Barrier block;
    std::vector<std::unique_ptr<Barrier>> warps;
    std::vector<std::uint64_t> xchg;  // one slot per thread, for shuffles
    std::vector<unsigned char> dynamic_shared;
    Block(unsigned n, unsigned smem) : threads(n), block(n), xchg(n), dynamic_shared(smem + 16) {
        for (unsigned w = 0; w * 32 < n; ++w) warps.push_back(std::make_unique<Barrier>(std::min(32u, n - w * 32)));
    }
};

inline thread_local uint3_emu thread_idx, block_idx, block_dim, grid_dim;
inline thread_local Block* block = nullptr;

inline unsigned linear_tid() { return thread_idx.x; }

}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

static inline void* emu_dynamic_shared() { return emu::block->dynamic_shared.data(); }

static inline void __syncthreads() { emu::block->block.arrive_and_wait(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu::block->warps[emu::linear_tid() / 32]->arrive_and_wait(); }

template <typename T>
static inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8);
    emu::Block& b = *emu::block;
    const unsigned t = emu::linear_tid();
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    b.xchg[t] = bits;
    b.warps[t / 32]->arrive_and_wait();
    const std::uint64_t got = b.xchg[(t & ~31u) | ((t & 31u) ^ (unsigned)lane_mask)];
    b.warps[t / 32]->arrive_and_wait();  // nobody overwrites a slot still being read
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

static inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }

static inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

// A product rounded on its own, never fused into a following add (as PTX's mul.rn).
static inline float __fmul_rn(float a, float b) {
    volatile float p = a * b;
    return p;
}

static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// F16C conversions: exact for f16 -> f32, round-to-nearest-even for f32 -> f16, as PTX's
// cvt.f32.f16 and cvt.rn.f16.f32.
static inline float emu_f16_to_f32(unsigned short h) { return _cvtsh_ss(h); }
static inline unsigned short emu_f32_to_f16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

namespace emu {

// A kernel by name, called with its arguments as the 8-byte values cuLaunchKernel would be
// handed (pointers, u64, u32 and f32 bits in the low half).
struct Kernel {
    int nargs;
    void (*call)(void* f, const std::uint64_t* args);
    void* f;
};

inline std::map<std::string, Kernel>& registry() {
    static std::map<std::string, Kernel> r;
    return r;
}

template <typename T>
T from_bits(std::uint64_t b) {
    if constexpr (std::is_pointer_v<T>) {
        return reinterpret_cast<T>(static_cast<std::uintptr_t>(b));
    } else if constexpr (std::is_same_v<T, float>) {
        return __uint_as_float(static_cast<unsigned>(b));
    } else {
        static_assert(std::is_integral_v<T>);
        return static_cast<T>(b);
    }
}

template <typename... A, std::size_t... I>
void call_with(void (*f)(A...), const std::uint64_t* a, std::index_sequence<I...>) {
    f(from_bits<A>(a[I])...);
}

struct Reg {
    template <typename... A>
    Reg(const char* name, void (*f)(A...)) {
        registry()[name] = Kernel{
            (int)sizeof...(A),
            [](void* g, const std::uint64_t* a) {
                call_with(reinterpret_cast<void (*)(A...)>(g), a, std::index_sequence_for<A...>{});
            },
            reinterpret_cast<void*>(f),
        };
    }
};

}  // namespace emu

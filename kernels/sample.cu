// Draws a token per row from softmax(x / temperature) restricted by top_k, top_p and min_p,
// each row with its own parameters, exactly as tandem_core::sampling::sample_with defines it
// (the same passes as shaders/sample.wgsl). x: [n, width] f32; params: [n, 5] words, a
// tandem_core::ops::SampleRow per row (temperature f32, top_k u32, top_p f32, min_p f32,
// uniform f32), read from device memory so a captured decode graph replays with fresh draws;
// out: [n] u32. One block of SAMPLE_THREADS per row; every pass reads the row again.
//
// Temperature 0 is greedy: the row's argmax (the lowest index wins ties, NaN never wins, 0
// when every value is NaN). Otherwise:
// 1. count the finite logits and the max of s = x / T; no finite logit at all: the argmax.
// 2. top_k: the k-th largest s by a radix select (4 passes of 8 bits, a 256-bin histogram)
//    on an order-preserving u32 key of s; keep key >= it (ties at the edge stay).
// 3. total = sum over kept of w = exp(s - max).
// 4. top_p < 1: bisection on the key (32 passes): the largest key K whose kept mass strictly
//    above K, over total, is >= top_p; keep key > K (ties stay together).
// 5. min_p > 0: keep w >= min_p.
// 6. the draw: each thread sums a contiguous chunk of the row, a serial scan of the chunk
//    sums gives each chunk's starting running sum, each thread walks its chunk in id order
//    for the first token whose running sum exceeds uniform x total; the lowest such id wins,
//    the last kept id if none does.

#define SAMPLE_THREADS 256

// Order-preserving key of a non-NaN float; -0 and +0 share one (they compare equal).
__device__ __forceinline__ u32 sort_key(float s) {
    u32 b = __float_as_uint(s);
    if ((b & 0x7fffffffu) == 0u) b = 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct SampleShared {
    float red_f[SAMPLE_THREADS];
    u32 red_u[SAMPLE_THREADS];
    u32 hist[256];
    float out_f;
    u32 out_u, out_u2;
};

__device__ float sum_f(SampleShared& sh, float v) {
    __syncthreads();
    sh.red_f[threadIdx.x] = v;
    __syncthreads();
    for (u32 s = SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh.red_f[threadIdx.x] += sh.red_f[threadIdx.x + s];
        __syncthreads();
    }
    return sh.red_f[0];
}

__device__ float max_f(SampleShared& sh, float v) {
    __syncthreads();
    sh.red_f[threadIdx.x] = v;
    __syncthreads();
    for (u32 s = SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float o = sh.red_f[threadIdx.x + s];
            if (o > sh.red_f[threadIdx.x]) sh.red_f[threadIdx.x] = o;
        }
        __syncthreads();
    }
    return sh.red_f[0];
}

// op: 0 sum, 1 min, 2 max.
__device__ u32 reduce_u(SampleShared& sh, u32 v, int op) {
    __syncthreads();
    sh.red_u[threadIdx.x] = v;
    __syncthreads();
    for (u32 s = SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const u32 a = sh.red_u[threadIdx.x], b = sh.red_u[threadIdx.x + s];
            sh.red_u[threadIdx.x] = op == 0 ? a + b : op == 1 ? min(a, b) : max(a, b);
        }
        __syncthreads();
    }
    return sh.red_u[0];
}

// tandem_core::sampling::argmax of a row: each thread scans its indices in increasing order
// for a value strictly above the best so far, then the pairs are combined in a tree.
__device__ u32 argmax_row(SampleShared& sh, const float* __restrict__ row, u32 width) {
    const u32 lid = threadIdx.x;
    float bv = neg_inf();
    u32 bi = NONE_U32;
    for (u32 j = lid; j < width; j += SAMPLE_THREADS) {
        const float v = row[j];
        if (!is_nan_bits(v) && (bi == NONE_U32 || v > bv)) {
            bv = v;
            bi = j;
        }
    }
    __syncthreads();
    sh.red_f[lid] = bv;
    sh.red_u[lid] = bi;
    __syncthreads();
    for (u32 s = SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if (lid < s) {
            const float ov = sh.red_f[lid + s];
            const u32 oi = sh.red_u[lid + s];
            const u32 i = sh.red_u[lid];
            if (oi != NONE_U32 && (i == NONE_U32 || ov > sh.red_f[lid] || (ov == sh.red_f[lid] && oi < i))) {
                sh.red_f[lid] = ov;
                sh.red_u[lid] = oi;
            }
        }
        __syncthreads();
    }
    return sh.red_u[0] == NONE_U32 ? 0u : sh.red_u[0];
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample(const float* __restrict__ x, const u32* __restrict__ params, u32* __restrict__ out, u32 width) {
    __shared__ SampleShared sh;
    const u32 lid = threadIdx.x;
    const float* row = x + (u64)blockIdx.x * width;
    const u32* p = params + (u64)blockIdx.x * 5;
    const float t = __uint_as_float(p[0]);
    const u32 top_k = p[1];
    const float top_p = __uint_as_float(p[2]), min_p = __uint_as_float(p[3]), uniform = __uint_as_float(p[4]);
    if (t == 0.0f) {
        const u32 best = argmax_row(sh, row, width);
        if (lid == 0) out[blockIdx.x] = best;
        return;
    }

    // 1. Candidates and the max scaled logit.
    u32 cnt = 0;
    float mx = neg_inf();
    for (u32 j = lid; j < width; j += SAMPLE_THREADS) {
        const float v = row[j];
        if (is_finite_bits(v)) {
            cnt += 1;
            const float s = v / t;
            if (s > mx) mx = s;
        }
    }
    const u32 count = reduce_u(sh, cnt, 0);
    const float max_s = max_f(sh, mx);
    if (count == 0) {
        // count is the block's: every thread takes this branch, so argmax's barriers are met.
        const u32 best = argmax_row(sh, row, width);
        if (lid == 0) out[blockIdx.x] = best;
        return;
    }

    // 2. top_k: the key of the k-th largest scaled logit.
    u32 lo = 0;
    if (top_k > 0 && top_k < count) {
        u32 prefix = 0, rem = top_k;
        for (u32 dg = 0; dg < 4; ++dg) {
            const u32 shift = 24 - 8 * dg;
            const u32 hmask = dg == 0 ? 0u : (0xffffffffu << (shift + 8));
            __syncthreads();
            for (u32 b = lid; b < 256; b += SAMPLE_THREADS) sh.hist[b] = 0;
            __syncthreads();
            for (u32 j = lid; j < width; j += SAMPLE_THREADS) {
                const float v = row[j];
                if (is_finite_bits(v)) {
                    const u32 k = sort_key(v / t);
                    if ((k & hmask) == prefix) atomicAdd(&sh.hist[(k >> shift) & 0xffu], 1u);
                }
            }
            __syncthreads();
            if (lid == 0) {
                u32 r = rem, dig = 0;
                for (int b = 255; b >= 0; --b) {
                    const u32 hc = sh.hist[b];
                    if (r <= hc) {
                        dig = (u32)b;
                        break;
                    }
                    r -= hc;
                }
                sh.out_u = prefix | (dig << shift);
                sh.out_u2 = r;
            }
            __syncthreads();
            prefix = sh.out_u;
            rem = sh.out_u2;
        }
        lo = prefix;
    }

    // 3. Total weight of the kept candidates.
    float part = 0.0f;
    for (u32 j = lid; j < width; j += SAMPLE_THREADS) {
        const float v = row[j];
        if (is_finite_bits(v)) {
            const float s = v / t;
            if (sort_key(s) >= lo) part += expf(s - max_s);
        }
    }
    const float total = sum_f(sh, part);

    // 4. top_p (a NaN total keeps everything, as on the CPU: no comparison with NaN holds).
    if (top_p < 1.0f && !is_nan_bits(total)) {
        u32 kf = 0;
        for (int bit = 31; bit >= 0; --bit) {
            const u32 c = kf | (1u << bit);
            float a = 0.0f;
            for (u32 j = lid; j < width; j += SAMPLE_THREADS) {
                const float v = row[j];
                if (is_finite_bits(v)) {
                    const float s = v / t;
                    const u32 k = sort_key(s);
                    if (k >= lo && k > c) a += expf(s - max_s);
                }
            }
            const float above = sum_f(sh, a);
            if (above / total >= top_p) kf = c;
        }
        // The largest key is never above kf (the mass above it is 0), so kf + 1 cannot wrap.
        lo = max(lo, kf + 1);
    }

    // 5 and 6. The draw, over contiguous chunks in id order.
    const u32 chunk = (width + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const u32 begin = min(lid * chunk, width);
    const u32 end = min(begin + chunk, width);
    const bool use_min_p = min_p > 0.0f;
    part = 0.0f;
    u32 last = NONE_U32;
    for (u32 j = begin; j < end; ++j) {
        const float v = row[j];
        if (is_finite_bits(v)) {
            const float s = v / t;
            if (sort_key(s) >= lo) {
                const float w = expf(s - max_s);
                if (!use_min_p || w >= min_p) {
                    part += w;
                    last = j;
                }
            }
        }
    }
    __syncthreads();
    sh.red_f[lid] = part;
    __syncthreads();
    if (lid == 0) {
        float acc = 0.0f;
        for (u32 i = 0; i < SAMPLE_THREADS; ++i) {
            const float c = sh.red_f[i];
            sh.red_f[i] = acc;
            acc += c;
        }
        sh.out_f = uniform * acc;
    }
    __syncthreads();
    const float target = sh.out_f;
    float acc = sh.red_f[lid];
    u32 found = NONE_U32;
    for (u32 j = begin; j < end; ++j) {
        const float v = row[j];
        if (is_finite_bits(v)) {
            const float s = v / t;
            if (sort_key(s) >= lo) {
                const float w = expf(s - max_s);
                if (!use_min_p || w >= min_p) {
                    acc += w;
                    if (acc > target) {
                        found = j;
                        break;
                    }
                }
            }
        }
    }
    const u32 first = reduce_u(sh, found, 1);
    const u32 last_kept = reduce_u(sh, last == NONE_U32 ? 0u : last, 2);
    // No kept token at all (only with NaN weights) gives 0, as on the CPU.
    if (lid == 0) out[blockIdx.x] = first == NONE_U32 ? last_kept : first;
}

// Mixture-of-experts routing: per token, the k experts of highest logit in descending order
// (the lower index first among equal logits, NaN after every number), decided on the logits
// themselves, and their softmax probabilities (the maximum subtracted first), divided by the
// sum of the k chosen (in slot order) when `norm`.
// logits: [n, experts] f32; ids: [n, k] u32; weights: [n, k] f32.
// One warp per token (blockIdx.x), lane l holding experts l, l + 32, ...: experts is at most
// MOE_MAX_EXPERTS (crate::ops::moe::MAX_EXPERTS), so a lane's chosen ones fit a word's bits.

#define MOE_MAX_EXPERTS 1024

// Whether (va, a) comes before (vb, b) in the routing order. A total order, so a warp's
// reduction gives every lane the same winner whatever the shuffle pattern.
__device__ __forceinline__ bool route_before(float va, u32 a, float vb, u32 b) {
    const bool na = is_nan_bits(va), nb = is_nan_bits(vb);
    if (na != nb) return nb;
    if (!na && va != vb) return va > vb;
    return a < b;
}

extern "C" __global__ void __launch_bounds__(32) moe_route(const float* __restrict__ logits,
                                                          u32* __restrict__ ids,
                                                          float* __restrict__ weights,
                                                          u32 experts, u32 k, u32 norm) {
    const u32 t = blockIdx.x, lane = threadIdx.x;
    const float* row = logits + (u64)t * experts;
    float mx = neg_inf();
    for (u32 e = lane; e < experts; e += 32) mx = fmaxf(mx, row[e]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (u32 e = lane; e < experts; e += 32) sum += expf(row[e] - mx);
    sum = warp_sum(sum);
    u32 taken = 0;  // bit i: expert lane + 32 i is chosen
    float chosen = 0.0f;  // the probability lane j's slot j got (lanes below k)
    for (u32 j = 0; j < k; ++j) {
        float best = 0.0f;
        u32 bi = NONE_U32;
        for (u32 e = lane, i = 0; e < experts; e += 32, ++i)
            if (!(taken >> i & 1u) && (bi == NONE_U32 || route_before(row[e], e, best, bi))) {
                best = row[e];
                bi = e;
            }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(FULL_MASK, best, o);
            const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
            if (oi != NONE_U32 && (bi == NONE_U32 || route_before(ob, oi, best, bi))) {
                best = ob;
                bi = oi;
            }
        }
        if (bi % 32 == lane) taken |= 1u << (bi / 32);
        if (lane == j % 32) chosen = expf(best - mx) / sum;
        if (lane == 0) ids[(u64)t * k + j] = bi;
        if (j % 32 == 31 || j + 1 == k) {
            // Slots j - j % 32 ..= j are held by lanes 0..; stored once a round is complete.
            const u32 slot = j - j % 32 + lane;
            if (slot <= j) weights[(u64)t * k + slot] = chosen;
        }
    }
    if (!norm) return;
    __syncwarp();
    // Renormalized over the chosen, summed in slot order by every lane alike.
    float s = 0.0f;
    for (u32 j = 0; j < k; ++j) s += weights[(u64)t * k + j];
    __syncwarp();
    for (u32 j = lane; j < k; j += 32) weights[(u64)t * k + j] /= s;
}

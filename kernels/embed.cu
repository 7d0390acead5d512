// Token embedding lookup, dequantizing the rows it touches: out[i] = table[ids[i]] * scale
// (1, or Gemma's sqrt(hidden size); x * 1 is x).
// table: [vocab, dim] in the entry's dtype; ids: [n] u32; out: [n, dim] f32.
// The host checks ids < vocab; an id past the table still never reads outside it (NaN row).

template <int DT>
__device__ void embed(const u8* __restrict__ table, u64 d_off, u64 m_off,
                      const u32* __restrict__ ids, float* __restrict__ out,
                      u32 n, u32 dim, u32 vocab, float scale) {
    const u64 total = (u64)n * dim;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const u32 t = (u32)(i / dim);
        const u32 j = (u32)(i - (u64)t * dim);
        const u32 id = ids[t];
        out[i] = id < vocab ? load_w<DT>(table, d_off, m_off, (u64)id * dim + j) * scale : quiet_nan();
    }
}

#define EMBED(name, DT)                                                                    \
    extern "C" __global__ void name(const u8* table, u64 d_off, u64 m_off, const u32* ids, \
                                    float* out, u32 n, u32 dim, u32 vocab, float scale) {  \
        embed<DT>(table, d_off, m_off, ids, out, n, dim, vocab, scale);                    \
    }
EMBED(embed_f32, DT_F32)
EMBED(embed_f16, DT_F16)
EMBED(embed_bf16, DT_BF16)
EMBED(embed_q8_0, DT_Q8_0)
EMBED(embed_q4_0, DT_Q4_0)
EMBED(embed_q4_1, DT_Q4_1)
EMBED(embed_q4_k, DT_Q4_K)
EMBED(embed_q6_k, DT_Q6_K)
EMBED(embed_q5_0, DT_Q5_0)
EMBED(embed_q5_1, DT_Q5_1)
EMBED(embed_q5_k, DT_Q5_K)
EMBED(embed_q2_k, DT_Q2_K)
EMBED(embed_q3_k, DT_Q3_K)
EMBED(embed_iq4_nl, DT_IQ4_NL)
EMBED(embed_iq4_xs, DT_IQ4_XS)

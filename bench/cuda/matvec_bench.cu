// The decode matvec (kernels/matmul_decode.cu, matvec_nt) alone, on the device
// machine, at Llama shapes: how its time splits into per-launch cost and streaming rate, and
// how rows per group (R) and the resident grid change it. Built there by nvcc (no Rust needed):
//   nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v bench/cuda/matvec_bench.cu -o /tmp/matvec_bench
// Prints one JSON object per (dtype, R, blocks per SM, shape): microseconds per launch in a
// replayed CUDA graph of 20 launches (as tandem's decode runs them), the weight bytes each
// moves and the rate. Weights rotate over copies that together exceed the L2, so every launch
// reads memory. Random data (never zeros); every variant's output is compared with R's default
// (same arithmetic per row, so the bits must agree) and mismatches are reported.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>

#include "../../kernels/common.cuh"
#include "../../kernels/matmul_decode.cu"

#define CHECK(x)                                                                               \
    do {                                                                                       \
        cudaError_t e = (x);                                                                   \
        if (e != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e));   \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

template <int DT, int R>
__global__ void __launch_bounds__(N1_MAX_THREADS)
    n1(const float* x, const u8* w, u64 d_off, u64 m_off, const float* bias, float* out, u32 k, u32 m) {
    matvec_nt<DT, 1, R>(x, Seg{w, d_off, m_off, bias, out, m}, Seg{}, Seg{}, 1, k);
}

// The batched kernel as tandem launches it: N1_TOKENS tokens per blockIdx.y.
template <int DT>
__global__ void __launch_bounds__(N1_MAX_THREADS)
    nt(const float* x, const u8* w, u64 d_off, u64 m_off, const float* bias, float* out, u32 n, u32 k, u32 m) {
    matvec_nt<DT, N1_TOKENS>(x, Seg{w, d_off, m_off, bias, out, m}, Seg{}, Seg{}, n, k);
}

__device__ u32 hash(u64 i, u32 seed) {
    u64 z = i * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (u32)(z ^ (z >> 31));
}

// Random bytes; then f16 scales (and Q4_1 minimums) of about 2^-7 from byte `from` on, or
// finite bf16 values everywhere.
__global__ void fill(u8* p, u64 n, u64 from, int bf16, u32 seed) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n / 2; i += (u64)gridDim.x * blockDim.x) {
        u32 h = hash(i, seed);
        u16 v = (u16)h;
        if (bf16) v = (u16)((h & 0x807fu) | 0x3c00u);
        else if (2 * i >= from) v = (u16)(0x2000u | (h & 0x83ffu));
        ((u16*)p)[i] = v;
    }
}

__global__ void fill_x(float* x, u64 n, u32 seed) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = (float)((int)(hash(i, seed) % 2001u) - 1000) * 1e-3f;
}

struct Shape { const char* name; u32 m, k; };

// Weight bytes of [m, k] in tandem's layout: qs, then d (then m), each section 256-aligned.
static void layout(int dt, u64 m, u64 k, u64* qs, u64* d_off, u64* m_off, u64* total) {
    u64 numel = m * k, blocks = numel / 32;
    auto up = [](u64 v) { return (v + 255) / 256 * 256; };
    if (dt == DT_BF16) { *qs = 2 * numel; *d_off = *m_off = 0; *total = *qs; return; }
    *qs = dt == DT_Q8_0 ? numel : numel / 2;
    *d_off = up(*qs);
    *m_off = dt == DT_Q4_1 ? up(*d_off + 2 * blocks) : 0;
    *total = dt == DT_Q4_1 ? *m_off + 2 * blocks : *d_off + 2 * blocks;
}

typedef void (*Kernel)(const float*, const u8*, u64, u64, const float*, float*, u32, u32);

template <int DT>
static void sweep(const char* dname, std::vector<std::pair<int, Kernel>> rows, int def_r,
                  const std::vector<Shape>& shapes, int sms) {
    const int bps_list[] = {1, 2, 4, 0};  // 0: a block per row group (no persistence)
    for (const Shape& s : shapes) {
        u64 qs, d_off, m_off, bytes;
        layout(DT, s.m, s.k, &qs, &d_off, &m_off, &bytes);
        const int copies = (int)std::max<u64>(2, (400ull << 20) / bytes + 1);
        std::vector<u8*> w(copies);
        for (int c = 0; c < copies; ++c) {
            CHECK(cudaMalloc(&w[c], bytes));
            fill<<<1024, 256>>>(w[c], bytes, DT == DT_BF16 ? 0 : d_off, DT == DT_BF16, 17 + c);
        }
        float *x, *out, *ref;
        CHECK(cudaMalloc(&x, 4ull * s.k));
        CHECK(cudaMalloc(&out, 4ull * s.m));
        CHECK(cudaMalloc(&ref, 4ull * s.m));
        fill_x<<<64, 256>>>(x, s.k, 5);
        CHECK(cudaGetLastError());
        const u32 threads = std::max<u32>(32, (s.k / 32 + 31) / 32 * 32);
        // The default R's result on copy 0, the reference for the others.
        for (auto& [r, kern] : rows)
            if (r == def_r) {
                u32 groups = (s.m + r - 1) / r;
                kern<<<groups, threads>>>(x, w[0], d_off, m_off, nullptr, ref, s.k, s.m);
            }
        CHECK(cudaDeviceSynchronize());
        std::vector<float> hr(s.m), ho(s.m);
        CHECK(cudaMemcpy(hr.data(), ref, 4ull * s.m, cudaMemcpyDeviceToHost));
        for (auto& [r, kern] : rows) {
            for (int bps : bps_list) {
                const u32 groups = (s.m + r - 1) / r;
                const u32 grid = bps ? std::min<u32>(groups, (u32)(sms * bps)) : groups;
                CHECK(cudaMemset(out, 0xff, 4ull * s.m));  // NaN: every element must be written
                kern<<<grid, threads>>>(x, w[0], d_off, m_off, nullptr, out, s.k, s.m);
                CHECK(cudaGetLastError());
                CHECK(cudaDeviceSynchronize());
                CHECK(cudaMemcpy(ho.data(), out, 4ull * s.m, cudaMemcpyDeviceToHost));
                int bad = 0;
                for (u32 i = 0; i < s.m; ++i) bad += memcmp(&ho[i], &hr[i], 4) != 0;
                cudaStream_t st;
                CHECK(cudaStreamCreate(&st));
                cudaGraph_t g;
                cudaGraphExec_t ge;
                const int per_graph = 20;
                CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
                for (int i = 0; i < per_graph; ++i)
                    kern<<<grid, threads, 0, st>>>(x, w[i % copies], d_off, m_off, nullptr, out, s.k, s.m);
                CHECK(cudaStreamEndCapture(st, &g));
                CHECK(cudaGraphInstantiate(&ge, g, 0));
                for (int i = 0; i < 3; ++i) CHECK(cudaGraphLaunch(ge, st));
                cudaEvent_t a, b;
                CHECK(cudaEventCreate(&a));
                CHECK(cudaEventCreate(&b));
                std::vector<float> us;
                for (int rep = 0; rep < 7; ++rep) {
                    CHECK(cudaEventRecord(a, st));
                    CHECK(cudaGraphLaunch(ge, st));
                    CHECK(cudaEventRecord(b, st));
                    CHECK(cudaEventSynchronize(b));
                    float ms;
                    CHECK(cudaEventElapsedTime(&ms, a, b));
                    us.push_back(ms * 1e3f / per_graph);
                }
                std::sort(us.begin(), us.end());
                const float med = us[us.size() / 2];
                printf("{\"dtype\":\"%s\",\"R\":%d,\"blocks_per_sm\":%d,\"shape\":\"%s\",\"m\":%u,\"k\":%u,"
                       "\"grid\":%u,\"threads\":%u,\"us\":%.2f,\"us_min\":%.2f,\"bytes\":%llu,\"gb_s\":%.0f,\"mismatches\":%d}\n",
                       dname, r, bps, s.name, s.m, s.k, grid, threads, med, us[0], (unsigned long long)bytes,
                       bytes / med * 1e-3, bad);
                fflush(stdout);
                cudaGraphExecDestroy(ge);
                cudaGraphDestroy(g);
                cudaEventDestroy(a);
                cudaEventDestroy(b);
                cudaStreamDestroy(st);
            }
        }
        for (u8* p : w) cudaFree(p);
        cudaFree(x);
        cudaFree(out);
        cudaFree(ref);
    }
}

// Batched decode rows: n tokens through matvec_nt with tandem's grid, against n one-token
// launches' worth of weight bytes; each token's output must equal the one-token kernel's.
template <int DT>
static void batched(const char* dname, Shape s, int sms) {
    u64 qs, d_off, m_off, bytes;
    layout(DT, s.m, s.k, &qs, &d_off, &m_off, &bytes);
    u8* w;
    CHECK(cudaMalloc(&w, bytes));
    fill<<<1024, 256>>>(w, bytes, DT == DT_BF16 ? 0 : d_off, DT == DT_BF16, 3);
    const u32 nmax = 64, R = N1Rows<DT>::value;
    float *x, *out, *one;
    CHECK(cudaMalloc(&x, 4ull * s.k * nmax));
    CHECK(cudaMalloc(&out, 4ull * s.m * nmax));
    CHECK(cudaMalloc(&one, 4ull * s.m));
    fill_x<<<64, 256>>>(x, (u64)s.k * nmax, 9);
    const u32 threads = std::max<u32>(32, (s.k / 32 + 31) / 32 * 32);
    const u32 groups = (s.m + R - 1) / R, resident = sms * std::max<u32>(1, 512 / threads);
    for (u32 n : {1u, 8u, 16u, 64u}) {
        const u32 tiles = (n + N1_TOKENS - 1) / N1_TOKENS;
        const dim3 grid(std::min(groups, std::max(1u, resident / tiles)), tiles);
        CHECK(cudaMemset(out, 0xff, 4ull * s.m * n));
        nt<DT><<<grid, threads>>>(x, w, d_off, m_off, nullptr, out, n, s.k, s.m);
        CHECK(cudaGetLastError());
        int bad = 0;
        std::vector<float> a(s.m), b(s.m);
        for (u32 t = 0; t < n; ++t) {
            n1<DT, N1Rows<DT>::value><<<std::min(groups, resident), threads>>>(x + (u64)t * s.k, w, d_off, m_off, nullptr, one, s.k, s.m);
            CHECK(cudaDeviceSynchronize());
            CHECK(cudaMemcpy(a.data(), one, 4ull * s.m, cudaMemcpyDeviceToHost));
            CHECK(cudaMemcpy(b.data(), out + (u64)t * s.m, 4ull * s.m, cudaMemcpyDeviceToHost));
            for (u32 i = 0; i < s.m; ++i) bad += memcmp(&a[i], &b[i], 4) != 0;
        }
        cudaEvent_t e0, e1;
        CHECK(cudaEventCreate(&e0));
        CHECK(cudaEventCreate(&e1));
        std::vector<float> us;
        for (int rep = 0; rep < 9; ++rep) {
            CHECK(cudaEventRecord(e0));
            for (int i = 0; i < 10; ++i) nt<DT><<<grid, threads>>>(x, w, d_off, m_off, nullptr, out, n, s.k, s.m);
            CHECK(cudaEventRecord(e1));
            CHECK(cudaEventSynchronize(e1));
            float ms;
            CHECK(cudaEventElapsedTime(&ms, e0, e1));
            us.push_back(ms * 100.0f);
        }
        std::sort(us.begin(), us.end());
        printf("{\"batched\":true,\"dtype\":\"%s\",\"shape\":\"%s\",\"tokens\":%u,\"grid\":[%u,%u],\"us\":%.2f,"
               "\"us_per_token\":%.2f,\"weight_gb_s\":%.0f,\"mismatches_vs_one_token\":%d}\n",
               dname, s.name, n, grid.x, grid.y, us[4], us[4] / n, bytes / us[4] * 1e-3, bad);
        fflush(stdout);
    }
    cudaFree(w);
    cudaFree(x);
    cudaFree(out);
    cudaFree(one);
}

int main() {
    int sms;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const std::vector<Shape> shapes = {
        {"8b.q", 4096, 4096},      {"8b.kv", 1024, 4096},    {"8b.qkv", 6144, 4096},
        {"8b.gate", 14336, 4096},  {"8b.gate_up", 28672, 4096}, {"8b.down", 4096, 14336},
        {"8b.lm_head", 128256, 4096}, {"1b.q", 2048, 2048},   {"1b.gate", 8192, 2048},
        {"1b.down", 2048, 8192},
    };
    const Shape gate = {"8b.gate", 14336, 4096};
    batched<DT_Q4_1>("q4_1", gate, sms);
    batched<DT_Q8_0>("q8_0", gate, sms);
    batched<DT_BF16>("bf16", gate, sms);
    sweep<DT_Q4_1>("q4_1", {{4, n1<DT_Q4_1, 4>}, {8, n1<DT_Q4_1, 8>}}, 4, shapes, sms);
    sweep<DT_Q8_0>("q8_0", {{2, n1<DT_Q8_0, 2>}, {4, n1<DT_Q8_0, 4>}, {8, n1<DT_Q8_0, 8>}}, 4, shapes, sms);
    sweep<DT_BF16>("bf16", {{2, n1<DT_BF16, 2>}, {4, n1<DT_BF16, 4>}, {8, n1<DT_BF16, 8>}}, 4, shapes, sms);
    return 0;
}

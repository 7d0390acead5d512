// Causal grouped-query attention over a paged KV cache, FlashAttention-style, for n > 1.
// q, out: [n, heads, head_dim] f32, the last n tokens of a ctx_len context (query i sits at
// position ctx_len - n + i); cache_k, cache_v: [blocks, block_size, kv_heads, head_dim] as u32
// words (f32 bits, or two f16 per word when KV_F16); block_table: [ceil(ctx_len / block_size)].
//
// One workgroup per (tile of 16 queries, head): 16 invocations per query, each owning the
// head dims lane, lane + 16, ... of the running accumulator. K/V tiles of 8 positions pass
// through workgroup memory; each query keeps a running max and sum (online softmax). Positions
// after a query's own are skipped, never multiplied by zero, so NaN in unused cache rows cannot
// leak. head_dim <= 128. Dispatch: (ceil(n / 16), heads).

struct Params {
    n: u32,
    ctx_len: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    block_size: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> cache_k: array<u32>;
@group(0) @binding(3) var<storage, read> cache_v: array<u32>;
@group(0) @binding(4) var<storage, read> block_table: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

override KV_F16: bool = false;

const BQ: u32 = 16u;  // queries per workgroup
const TQ: u32 = 16u;  // invocations per query
const BT: u32 = 8u;   // positions per K/V tile
const HDMAX: u32 = 128u;
const CMAX: u32 = 8u; // HDMAX / TQ

var<workgroup> kt: array<f32, 1024>;   // [BT][HDMAX]
var<workgroup> vt: array<f32, 1024>;   // [BT][HDMAX]
var<workgroup> red: array<f32, 2048>;  // [BT][BQ][TQ] partial dot products

fn load(buf_is_k: bool, e: u32) -> f32 {
    var word: u32;
    if buf_is_k {
        word = cache_k[select(e, e / 2u, KV_F16)];
    } else {
        word = cache_v[select(e, e / 2u, KV_F16)];
    }
    if KV_F16 {
        return unpack2x16float(word)[e & 1u];
    }
    return bitcast<f32>(word);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let qi = lid / TQ;
    let lane = lid % TQ;
    let i = wid.x * BQ + qi;
    let valid = i < p.n;
    let first = p.ctx_len - p.n; // position of query 0
    let pos = first + i;
    // The tile's last position: every invocation agrees, so the loop and barriers are uniform.
    let last = first + min(wid.x * BQ + BQ, p.n) - 1u;
    let hd = p.head_dim;

    var qr: array<f32, 8>;
    var acc: array<f32, 8>;
    for (var c = 0u; c < CMAX; c++) {
        let d = lane + TQ * c;
        qr[c] = 0.0;
        acc[c] = 0.0;
        if valid && d < hd {
            qr[c] = q[(i * p.heads + h) * hd + d];
        }
    }
    var run_max = -3.4e38;
    var run_sum = 0.0;
    var started = false;

    for (var t0 = 0u; t0 <= last; t0 += BT) {
        for (var idx = lid; idx < BT * hd; idx += 256u) {
            let tt = idx / hd;
            let d = idx % hd;
            let t = t0 + tt;
            if t <= last {
                let row = block_table[t / p.block_size] * p.block_size + t % p.block_size;
                let e = (row * p.kv_heads + kvh) * hd + d;
                kt[tt * HDMAX + d] = load(true, e);
                vt[tt * HDMAX + d] = load(false, e);
            }
        }
        workgroupBarrier();
        for (var tt = 0u; tt < BT; tt++) {
            var part = 0.0;
            for (var c = 0u; c < CMAX; c++) {
                let d = lane + TQ * c;
                if d < hd {
                    part += qr[c] * kt[tt * HDMAX + d];
                }
            }
            red[(tt * BQ + qi) * TQ + lane] = part;
        }
        workgroupBarrier();
        if valid && t0 <= pos {
            let cnt = min(pos + 1u - t0, BT);
            var s: array<f32, 8>;
            var tile_max = -3.4e38;
            for (var tt = 0u; tt < cnt; tt++) {
                var dotv = 0.0;
                for (var l = 0u; l < TQ; l++) {
                    dotv += red[(tt * BQ + qi) * TQ + l];
                }
                s[tt] = dotv * p.scale;
                tile_max = max(tile_max, s[tt]);
            }
            let new_max = max(run_max, tile_max);
            if started && new_max > run_max {
                let corr = exp(run_max - new_max);
                run_sum *= corr;
                for (var c = 0u; c < CMAX; c++) {
                    acc[c] *= corr;
                }
            }
            run_max = new_max;
            started = true;
            for (var tt = 0u; tt < cnt; tt++) {
                let e = exp(s[tt] - new_max);
                run_sum += e;
                for (var c = 0u; c < CMAX; c++) {
                    let d = lane + TQ * c;
                    if d < hd {
                        acc[c] += e * vt[tt * HDMAX + d];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if valid {
        let inv = 1.0 / run_sum;
        for (var c = 0u; c < CMAX; c++) {
            let d = lane + TQ * c;
            if d < hd {
                out[(i * p.heads + h) * hd + d] = acc[c] * inv;
            }
        }
    }
}

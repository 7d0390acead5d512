// Causal grouped-query attention over paged KV caches, FlashAttention-style, for the prompt
// rows of a ragged batch. q, out: [.., heads, head_dim] f32, rows row0..row0 + n; positions,
// table_starts: [..] u32 (row i attends to positions 0..=positions[i] of the block table at
// tables[table_starts[i]..]); cache_k, cache_v: [blocks, block_size, kv_heads, head_dim] as u32
// words of K_DTYPE / V_DTYPE (kv_load: shaders/attention_kv.wgsl, appended to this file).
//
// One workgroup per (tile of 16 rows, head): 16 invocations per row, each owning the head dims
// lane, lane + 16, ... of the running accumulator. A tile may straddle sequences: it walks its
// runs of rows sharing a table start (rows of one sequence are consecutive) one after another,
// and within a run K/V tiles of 8 positions pass through workgroup memory, from position 0 up
// to the run's last. Each row keeps a running max and sum (online softmax) over the K/V tiles
// 0, 8, 16, ... up to its own position, so its arithmetic depends on that position only, never
// on the other rows of its tile or batch. Positions after a row's own are skipped, never
// multiplied by zero, so NaN in unused cache rows cannot leak. head_dim <= 128.
// A sliding window (window > 0) narrows row i's context to positions[i] + 1 - window..=
// positions[i]: a run's K/V tiles start at the tile of its earliest window start (positions
// before it are never loaded, so blocks wholly before every window are never read), and a row
// skips the tiles wholly before its own window and the positions before it in its first tile:
// its tiles are still those of multiples of 8 through its context, fixed by its position.
// With softcap > 0 each score s becomes softcap * tanh(s / softcap) before the softmax
// (tanh_f32: shaders/tanh.wgsl, appended to this file).
// Dispatch: (ceil(n / 16), heads).

struct Params {
    row0: u32,
    n: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    block_size: u32,
    scale: f32,
    // Positions are < max_ctx (checked on the host; the clamp bounds the loops regardless).
    max_ctx: u32,
    window: u32,
    softcap: f32,
    // Word offsets of the scales in cache_k and cache_v (quantized caches only).
    k_scales: u32,
    v_scales: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> cache_k: array<u32>;
@group(0) @binding(3) var<storage, read> cache_v: array<u32>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read> table_starts: array<u32>;
@group(0) @binding(6) var<storage, read> tables: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

const BQ: u32 = 16u;  // rows per workgroup
const TQ: u32 = 16u;  // invocations per row
const BT: u32 = 8u;   // positions per K/V tile
const HDMAX: u32 = 128u;
const CMAX: u32 = 8u; // HDMAX / TQ

var<workgroup> kt: array<f32, 1024>;   // [BT][HDMAX]
var<workgroup> vt: array<f32, 1024>;   // [BT][HDMAX]
var<workgroup> red: array<f32, 2048>;  // [BT][BQ][TQ] partial dot products

fn position(i: u32) -> u32 {
    return min(positions[i], p.max_ctx - 1u);
}

// The first position of a context ending at `pos` (its window's start).
fn first_of(pos: u32) -> u32 {
    return select(0u, pos + 1u - p.window, p.window > 0u && pos + 1u > p.window);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let qi = lid / TQ;
    let lane = lid % TQ;
    let first = p.row0 + wid.x * BQ;           // the tile's first row
    let end = p.row0 + min(wid.x * BQ + BQ, p.n); // and its end
    let i = first + qi;
    let valid = i < end;
    var pos = 0u;
    if valid {
        pos = position(i);
    }
    let first_t = first_of(pos);
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

    // Runs of rows with one table start. Everything the loops and barriers depend on is read
    // from uniform parameters and read-only buffers at uniform indices: uniform control flow.
    var run = first;
    while run < end {
        let start = table_starts[run];
        var run_end = run + 1u;
        var last = position(run); // the run's last position
        var lo_t = first_of(last); // and its first
        while run_end < end && table_starts[run_end] == start {
            last = max(last, position(run_end));
            lo_t = min(lo_t, first_of(position(run_end)));
            run_end++;
        }
        let mine = valid && i >= run && i < run_end;
        for (var t0 = lo_t / BT * BT; t0 <= last; t0 += BT) {
            for (var idx = lid; idx < BT * hd; idx += 256u) {
                let tt = idx / hd;
                let d = idx % hd;
                let t = t0 + tt;
                if t >= lo_t && t <= last {
                    let row = tables[start + t / p.block_size] * p.block_size + t % p.block_size;
                    let e = (row * p.kv_heads + kvh) * hd + d;
                    kt[tt * HDMAX + d] = kv_load(true, e);
                    vt[tt * HDMAX + d] = kv_load(false, e);
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
            if mine && t0 <= pos && t0 + BT > first_t {
                let cnt = min(pos + 1u - t0, BT);
                let lo = select(0u, first_t - t0, first_t > t0); // before the window
                var s: array<f32, 8>;
                var tile_max = -3.4e38;
                for (var tt = lo; tt < cnt; tt++) {
                    var dotv = 0.0;
                    for (var l = 0u; l < TQ; l++) {
                        dotv += red[(tt * BQ + qi) * TQ + l];
                    }
                    s[tt] = dotv * p.scale;
                    if p.softcap > 0.0 {
                        s[tt] = p.softcap * tanh_f32(s[tt] / p.softcap);
                    }
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
                for (var tt = lo; tt < cnt; tt++) {
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
        run = run_end;
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

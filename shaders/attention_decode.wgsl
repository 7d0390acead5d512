// Causal grouped-query attention for decode rows (one new token of a sequence each),
// split-K ("flash decoding").
// q, out: [.., heads, head_dim] f32, rows 0..decode_rows; positions, table_starts: [rows] u32
// (row i attends to positions 0..=positions[i] of the block table at tables[table_starts[i]..]);
// cache_k, cache_v: [blocks, block_size, kv_heads, head_dim] as u32 words of K_DTYPE and
// V_DTYPE (kv_load: shaders/attention_kv.wgsl, appended to this file); scratch: [rows, heads, max_parts,
// head_dim + 2] f32 partial results.
//
// partial: one workgroup per (partition of PART positions, head, row), one invocation per
//   position. Writes the partition's max m, sum l = sum exp(s - m) and acc = sum exp(s - m) v
//   to scratch, or, when the row has a single partition, the normalized output directly.
//   Dispatch: (max_parts, heads, rows).
// merge: one workgroup per (head, row) combines the row's partitions: out = sum acc_j
//   e^(m_j - M) / sum l_j e^(m_j - M). Dispatch: (heads, rows); only when max_parts > 1.
// A sliding window (window > 0) narrows row i's context to positions[i] + 1 - window..=
// positions[i]: partitions wholly before it idle and their blocks are never read. With
// softcap > 0 each score s becomes softcap * tanh(s / softcap) before the softmax (tanh_f32:
// shaders/tanh.wgsl, appended to this file).
// A row's partitions and their order follow from its own position only; partitions outside its
// context idle, so a row is computed bit for bit alike whatever else shares the dispatch.
// Positions outside a row's context are never read, so NaN in unused cache rows cannot leak.
// head_dim <= 256.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    block_size: u32,
    scale: f32,
    // Partitions of max_ctx: the grid's x and the scratch stride.
    max_parts: u32,
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
@group(0) @binding(8) var<storage, read_write> scratch: array<f32>;

const PART: u32 = 64u; // positions per partition = invocations per workgroup
const HDMAX: u32 = 256u;

var<workgroup> qs: array<f32, HDMAX>;
var<workgroup> red: array<f32, PART>;
var<workgroup> probs: array<f32, PART>;

// Offset of position t's vector for kv head kvh in the table starting at tables[start].
fn kv_base(start: u32, t: u32, kvh: u32) -> u32 {
    let row = tables[start + t / p.block_size] * p.block_size + t % p.block_size;
    return (row * p.kv_heads + kvh) * p.head_dim;
}

// The first position of row i's context (its window's start).
fn first_pos(i: u32) -> u32 {
    let pos = positions[i];
    return select(0u, pos + 1u - p.window, p.window > 0u && pos + 1u > p.window);
}

// Partitions of row i's context (the host checked positions < max_ctx; the clamp keeps an
// unchecked one inside the grid and the scratch).
fn row_parts(i: u32) -> u32 {
    return min(positions[i] / PART + 1u, p.max_parts);
}

@compute @workgroup_size(PART)
fn partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x;
    let h = wid.y;
    let i = wid.z;
    let nparts = row_parts(i);
    let first = first_pos(i);
    let part0 = min(first / PART, nparts - 1u);
    if j < part0 || j >= nparts {
        return;
    }
    let single = nparts - part0 == 1u;
    let start = table_starts[i];
    let kvh = h / (p.heads / p.kv_heads);
    let hd = p.head_dim;
    let qo = (i * p.heads + h) * hd;
    for (var d = lid; d < hd; d += PART) {
        qs[d] = q[qo + d];
    }
    workgroupBarrier();
    let t0 = j * PART;
    let cnt = min(positions[i] + 1u - t0, PART);
    let lo = select(0u, first - t0, first > t0); // positions before the window
    let t = t0 + lid;
    var s = -3.4e38;
    if lid >= lo && lid < cnt {
        let base = kv_base(start, t, kvh);
        var dotv = 0.0;
        for (var d = 0u; d < hd; d++) {
            dotv += qs[d] * kv_load(true, base + d);
        }
        s = dotv * p.scale;
        if p.softcap > 0.0 {
            s = p.softcap * tanh_f32(s / p.softcap);
        }
    }
    red[lid] = s;
    workgroupBarrier();
    for (var st = PART / 2u; st > 0u; st >>= 1u) {
        if lid < st {
            red[lid] = max(red[lid], red[lid + st]);
        }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier();
    var e = 0.0;
    if lid >= lo && lid < cnt {
        e = exp(s - m);
    }
    probs[lid] = e;
    red[lid] = e;
    workgroupBarrier();
    for (var st = PART / 2u; st > 0u; st >>= 1u) {
        if lid < st {
            red[lid] += red[lid + st];
        }
        workgroupBarrier();
    }
    let l = red[0];
    let slot = ((i * p.heads + h) * p.max_parts + j) * (hd + 2u);
    for (var d = lid; d < hd; d += PART) {
        var a = 0.0;
        for (var tt = lo; tt < cnt; tt++) {
            a += probs[tt] * kv_load(false, kv_base(start, t0 + tt, kvh) + d);
        }
        if single {
            out[qo + d] = a / l;
        } else {
            scratch[slot + 2u + d] = a;
        }
    }
    if lid == 0u && !single {
        scratch[slot] = m;
        scratch[slot + 1u] = l;
    }
}

@compute @workgroup_size(PART)
fn merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let i = wid.y;
    let nparts = row_parts(i);
    let part0 = min(first_pos(i) / PART, nparts - 1u);
    if nparts - part0 == 1u {
        return; // partial wrote the output
    }
    let hd = p.head_dim;
    let base = (i * p.heads + h) * p.max_parts * (hd + 2u);
    var mx = -3.4e38;
    for (var j = part0; j < nparts; j++) {
        mx = max(mx, scratch[base + j * (hd + 2u)]);
    }
    var l = 0.0;
    for (var j = part0; j < nparts; j++) {
        let slot = base + j * (hd + 2u);
        l += scratch[slot + 1u] * exp(scratch[slot] - mx);
    }
    for (var d = lid; d < hd; d += PART) {
        var a = 0.0;
        for (var j = part0; j < nparts; j++) {
            let slot = base + j * (hd + 2u);
            a += scratch[slot + 2u + d] * exp(scratch[slot] - mx);
        }
        out[(i * p.heads + h) * hd + d] = a / l;
    }
}

// LoRA applied unmerged, per row (tandem_core::ops::LoraShrink / LoraExpand): the rows of a
// step that carry an adapter, each with its own slot of the adapter pool. A row's arithmetic
// never depends on the other rows (batch invariance): a fixed tree over k for the shrink, a
// sequential sum over the rank for the expand. The pool holds f32 bits, or two f16 a word
// (F16 = 1). rows and slots are checked on the host.
//
// shrink: src = x [x_rows, k], out = t [n, rank]; dispatch (rank, n) workgroups.
// expand: src = t [n, rank], w = B transposed [slots, rank, m], out = the projection's output
// [out_rows, m], added to in place; dispatch (ceil(m / WG), n) workgroups.

struct Params {
    n: u32,
    k: u32,
    rank: u32,
    m: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;
@group(0) @binding(4) var<storage, read> slots: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

override F16: u32 = 0u;
const WG: u32 = 64u;

fn pool(e: u32) -> f32 {
    if F16 == 1u {
        return unpack2x16float(w[e / 2u])[e & 1u];
    }
    return bitcast<f32>(w[e]);
}

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn shrink(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x;
    let i = wid.y;
    if j >= p.rank || i >= p.n {
        return;
    }
    let x0 = rows[i] * p.k;
    let w0 = (slots[i] * p.rank + j) * p.k;
    var acc = 0.0;
    for (var e = lid; e < p.k; e += WG) {
        acc += src[x0 + e] * pool(w0 + e);
    }
    part[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if lid < s {
            part[lid] += part[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[i * p.rank + j] = part[0];
    }
}

@compute @workgroup_size(WG)
fn expand(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = wid.x * WG + lid;
    let i = wid.y;
    if o >= p.m || i >= p.n {
        return;
    }
    let w0 = slots[i] * p.rank * p.m + o;
    var acc = 0.0;
    for (var j = 0u; j < p.rank; j++) {
        acc += src[i * p.rank + j] * pool(w0 + j * p.m);
    }
    let d = rows[i] * p.m + o;
    out[d] = out[d] + acc;
}

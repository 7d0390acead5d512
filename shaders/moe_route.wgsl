// Mixture-of-experts routing: for each token, the k experts of highest logit in descending
// order (the lower index first among equal logits), and their softmax probabilities,
// renormalized over the k chosen when p.norm != 0.
// logits: [n, experts]; ids: [n, k]; weights: [n, k].
// One invocation per token: a token's choice and its arithmetic never depend on the others.
// The order is decided on the logits themselves, so no exp rounding can reorder experts.
// Dispatch: ceil(n / WG) workgroups, folded into x and y when above 65535.

struct Params {
    n: u32,
    experts: u32,
    k: u32,
    norm: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;

override WG: u32 = 64u;

// Whether (v, e) comes after (pv, pe) in the order: lower logit, or the same at a higher index.
fn after(v: f32, e: u32, pv: f32, pe: u32) -> bool {
    return v < pv || (v == pv && e > pe);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = (wid.x + wid.y * nwg.x) * WG + lid;
    if t >= p.n {
        return;
    }
    let row = t * p.experts;
    // Softmax: the maximum subtracted, the sum in expert order.
    var mx = logits[row];
    for (var e = 1u; e < p.experts; e++) {
        mx = max(mx, logits[row + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < p.experts; e++) {
        sum += exp(logits[row + e] - mx);
    }
    // Slot j takes the first expert of the order after slot j - 1's: k passes over the row,
    // no per-token memory. A row without a next (NaN logits) keeps expert 0, inside the range.
    var pv = 0.0;
    var pe = 0u;
    var total = 0.0;
    for (var j = 0u; j < p.k; j++) {
        var bv = 0.0;
        var be = 0u;
        var found = false;
        for (var e = 0u; e < p.experts; e++) {
            let v = logits[row + e];
            let eligible = j == 0u || after(v, e, pv, pe);
            if eligible && (!found || after(bv, be, v, e)) {
                bv = v;
                be = e;
                found = found || v == v;
            }
        }
        pv = bv;
        pe = be;
        let w = exp(bv - mx) / sum;
        ids[t * p.k + j] = be;
        weights[t * p.k + j] = w;
        total += w;
    }
    if p.norm != 0u {
        for (var j = 0u; j < p.k; j++) {
            weights[t * p.k + j] = weights[t * p.k + j] / total;
        }
    }
}

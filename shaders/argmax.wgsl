// Index of the largest value of each row: the lowest index wins ties, NaN never wins, a row
// with no number at all gives 0. x: [n, width]; out: [n]. One workgroup per row.

struct Params {
    width: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

fn is_nan(v: f32) -> bool {
    // Compilers may fold v != v away under fast-math assumptions; test the bits.
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

// Whether candidate (v, i) beats the current best (bv, bi).
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if i == NONE {
        return false;
    }
    if bi == NONE {
        return true;
    }
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.width;
    var bv = 0.0;
    var bi = NONE;
    // Each invocation scans a strided slice in increasing index order, so within it the first
    // maximum is kept by the strict comparison.
    for (var j = lid; j < p.width; j += WG) {
        let v = x[base + j];
        if !is_nan(v) && (bi == NONE || v > bv) {
            bv = v;
            bi = j;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if better(ov, oi, best_v[lid], best_i[lid]) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[wid.x] = select(best_i[0], 0u, best_i[0] == NONE);
    }
}

// Draws a token per row from softmax(x / temperature) restricted by top_k, top_p and min_p,
// exactly as tandem_core::sampling::sample_with defines it, each row with its own parameters.
// x: [n, width] f32; params: [n * 5] u32, row i's SampleRow (temperature f32, top_k u32,
// top_p f32, min_p f32, uniform f32) at words 5 i..; out: [n] u32.
// One workgroup per row; every pass reads the row again (nothing is stored per element).
//
// 0. temperature 0 (greedy): the row's argmax as tandem_core::sampling::argmax (and the
//    Argmax op) define it: the lowest index of the largest value, NaN never winning; 0 when
//    every value is NaN.
// 1. count the finite logits and the max of s = x / T; no finite logit at all: the argmax.
// 2. top_k: the k-th largest s by a radix select (4 passes of 8 bits, a 256-bin histogram)
//    on an order-preserving u32 key of s; keep key >= it (ties at the edge stay).
// 3. total = sum over kept of w = exp(s - max).
// 4. top_p < 1: bisection on the key (32 passes): the largest key K whose kept mass strictly
//    above K, over total, is >= top_p; keep key > K (ties stay together).
// 5. min_p > 0: keep w >= min_p.
// 6. the draw: each invocation sums a contiguous chunk of the row, a serial scan of the chunk
//    sums gives each chunk's starting running sum, each invocation walks its chunk in id order
//    for the first token whose running sum exceeds uniform x total; the lowest such id wins,
//    the last kept id if none does.

struct Params {
    width: u32,
}

// One row's parameters (SampleRow).
struct Row {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    uniform: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

// Invocations per row: a power of two, at most MAXWG.
override WG: u32 = 256u;
const MAXWG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

var<workgroup> red_f: array<f32, MAXWG>;
var<workgroup> red_u: array<u32, MAXWG>;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> out_f: f32;
var<workgroup> out_u: u32;
var<workgroup> out_u2: u32;

fn is_finite(v: f32) -> bool {
    // Test the bits: compilers may assume finite math for comparisons.
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

fn is_nan(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

// -inf from a variable: Tint (Chrome's WGSL compiler) rejects a constant expression whose
// value is not finite, so `bitcast<f32>(0xff800000u)` must not be const-evaluated.
var<private> NEG_INF_BITS: u32 = 0xff800000u;

fn neg_inf() -> f32 {
    return bitcast<f32>(NEG_INF_BITS);
}

// Order-preserving key of a non-NaN float; -0 and +0 share one (they compare equal).
fn key(s: f32) -> u32 {
    var b = bitcast<u32>(s);
    if (b & 0x7fffffffu) == 0u {
        b = 0u;
    }
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Workgroup reductions: called in uniform control flow, return a uniform value.
fn sum_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red_f[lid] = red_f[lid] + red_f[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out_f = red_f[0];
    }
    return workgroupUniformLoad(&out_f);
}

fn max_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let o = red_f[lid + s];
            if o > red_f[lid] {
                red_f[lid] = o;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out_f = red_f[0];
    }
    return workgroupUniformLoad(&out_f);
}

// op: 0 sum, 1 min, 2 max.
fn reduce_u(lid: u32, v: u32, op: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let a = red_u[lid];
            let b = red_u[lid + s];
            var r = a + b;
            if op == 1u {
                r = min(a, b);
            } else if op == 2u {
                r = max(a, b);
            }
            red_u[lid] = r;
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out_u = red_u[0];
    }
    return workgroupUniformLoad(&out_u);
}

// The row's argmax (step 0): each invocation keeps the first maximum of its strided slice,
// then pairs meet in a tree. Called in uniform control flow.
fn argmax_row(lid: u32, base: u32, width: u32) -> u32 {
    var bv = 0.0;
    var bi = NONE;
    for (var j = lid; j < width; j += WG) {
        let v = x[base + j];
        if !is_nan(v) && (bi == NONE || v > bv) {
            bv = v;
            bi = j;
        }
    }
    red_f[lid] = bv;
    red_u[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let ov = red_f[lid + s];
            let oi = red_u[lid + s];
            let cv = red_f[lid];
            let ci = red_u[lid];
            if oi != NONE && (ci == NONE || ov > cv || (ov == cv && oi < ci)) {
                red_f[lid] = ov;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out_u = select(red_u[0], 0u, red_u[0] == NONE);
    }
    return workgroupUniformLoad(&out_u);
}

fn row_params(i: u32) -> Row {
    let w = i * 5u;
    return Row(bitcast<f32>(params[w]), params[w + 1u], bitcast<f32>(params[w + 2u]),
               bitcast<f32>(params[w + 3u]), bitcast<f32>(params[w + 4u]));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let width = p.width;
    let base = wid.x * width;
    let row = row_params(wid.x);
    let t = row.temperature;

    // 0. Greedy.
    if t == 0.0 {
        let best = argmax_row(lid, base, width);
        if lid == 0u {
            out[wid.x] = best;
        }
        return;
    }

    // 1. Candidates (finite logits) and the max scaled logit.
    var cnt = 0u;
    var mx = neg_inf();
    for (var j = lid; j < width; j += WG) {
        let v = x[base + j];
        if is_finite(v) {
            cnt += 1u;
            let s = v / t;
            if s > mx {
                mx = s;
            }
        }
    }
    let count = reduce_u(lid, cnt, 0u);
    let max_s = max_f(lid, mx);
    if count == 0u {
        let best = argmax_row(lid, base, width);
        if lid == 0u {
            out[wid.x] = best;
        }
        return;
    }

    // 2. top_k: the key of the k-th largest scaled logit.
    var lo = 0u;
    if row.top_k > 0u && row.top_k < count {
        var prefix = 0u;
        var rem = row.top_k;
        for (var d = 0u; d < 4u; d += 1u) {
            let shift = 24u - 8u * d;
            let hmask = select(0xffffffffu << (shift + 8u), 0u, d == 0u);
            for (var b = lid; b < 256u; b += WG) {
                atomicStore(&hist[b], 0u);
            }
            workgroupBarrier();
            for (var j = lid; j < width; j += WG) {
                let v = x[base + j];
                if is_finite(v) {
                    let k = key(v / t);
                    if (k & hmask) == prefix {
                        atomicAdd(&hist[(k >> shift) & 0xffu], 1u);
                    }
                }
            }
            workgroupBarrier();
            if lid == 0u {
                var r = rem;
                var dig = 0u;
                for (var b = 255i; b >= 0i; b -= 1i) {
                    let h = atomicLoad(&hist[b]);
                    if r <= h {
                        dig = u32(b);
                        break;
                    }
                    r -= h;
                }
                out_u = prefix | (dig << shift);
                out_u2 = r;
            }
            prefix = workgroupUniformLoad(&out_u);
            rem = workgroupUniformLoad(&out_u2);
        }
        lo = prefix;
    }

    // 3. Total weight of the kept candidates.
    var part = 0.0;
    for (var j = lid; j < width; j += WG) {
        let v = x[base + j];
        if is_finite(v) {
            let s = v / t;
            if key(s) >= lo {
                part += exp(s - max_s);
            }
        }
    }
    let total = sum_f(lid, part);

    // 4. top_p (a NaN total keeps everything, as on the CPU: no comparison with NaN holds).
    if row.top_p < 1.0 && !is_nan(total) {
        var kf = 0u;
        for (var bit = 31i; bit >= 0i; bit -= 1i) {
            let c = kf | (1u << u32(bit));
            var a = 0.0;
            for (var j = lid; j < width; j += WG) {
                let v = x[base + j];
                if is_finite(v) {
                    let s = v / t;
                    let k = key(s);
                    if k >= lo && k > c {
                        a += exp(s - max_s);
                    }
                }
            }
            let above = sum_f(lid, a);
            if above / total >= row.top_p {
                kf = c;
            }
        }
        // The largest key is never above kf (the mass above it is 0), so kf + 1 cannot wrap.
        lo = max(lo, kf + 1u);
    }

    // 5 and 6. The draw, over contiguous chunks in id order.
    let chunk = (width + WG - 1u) / WG;
    let begin = min(lid * chunk, width);
    let end = min(begin + chunk, width);
    let use_min_p = row.min_p > 0.0;
    part = 0.0;
    var last = NONE;
    for (var j = begin; j < end; j += 1u) {
        let v = x[base + j];
        if is_finite(v) {
            let s = v / t;
            if key(s) >= lo {
                let w = exp(s - max_s);
                if !use_min_p || w >= row.min_p {
                    part += w;
                    last = j;
                }
            }
        }
    }
    red_f[lid] = part;
    workgroupBarrier();
    if lid == 0u {
        var acc = 0.0;
        for (var i = 0u; i < WG; i += 1u) {
            let c = red_f[i];
            red_f[i] = acc;
            acc += c;
        }
        out_f = row.uniform * acc;
    }
    let target_sum = workgroupUniformLoad(&out_f);
    var acc = red_f[lid];
    var found = NONE;
    for (var j = begin; j < end; j += 1u) {
        let v = x[base + j];
        if is_finite(v) {
            let s = v / t;
            if key(s) >= lo {
                let w = exp(s - max_s);
                if !use_min_p || w >= row.min_p {
                    acc += w;
                    if acc > target_sum {
                        found = j;
                        break;
                    }
                }
            }
        }
    }
    let first = reduce_u(lid, found, 1u);
    let last_kept = reduce_u(lid, select(last, 0u, last == NONE), 2u);
    if lid == 0u {
        // No kept token at all (only with NaN weights) gives 0, as on the CPU.
        out[wid.x] = select(first, last_kept, first == NONE);
    }
}

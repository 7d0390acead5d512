// out = x @ w^T (+ bias), dequantizing w inside the kernel.
// x: [.., k] f32; w: [m, k] in DTYPE, read as u32 words (one part of a possibly split weight:
// its rows land at columns out_off.. of out); bias: [out_off + m] f32 (read when has_bias);
// out: [.., out_stride] f32. A dispatch computes token rows row0..row0 + n.
//
// Quantized weights use tandem's layout: blocks of 32 over the FLAT element index, qs first,
// f16 scales d from word d_off, (Q4_1) f16 minimums m from word m_off. A row starts at flat
// element r * k, which need not be a block (or even a byte) boundary when k % 32 != 0.
//
// Batch invariance: a token row's arithmetic depends on k, m, the dtype and the entry point
// only, never on n, row0 or the other rows, so the host picks the entry point from the row's
// class (decode rows: matvec or matvec_rows; prompt rows: tiled) and a row is computed bit for
// bit alike however many rows share the dispatch.
//
// Entry points:
// - matvec: decode rows. TPR invocations per weight row, 256 / TPR rows per workgroup,
//   one token per workgroup z; each invocation dequantizes 8 weights at a time in registers;
//   partial sums meet in workgroup memory. Dispatch: (ceil(m / (256 / TPR)) folded, n).
// - matvec_rows: decode rows when k % 32 == 0 (every row starts on a block, as in every real
//   model): one weight row per invocation, walking its blocks of 32 with the same x indices in
//   every invocation, so a CPU rasterizer loads x once per SIMD batch rather than once per lane,
//   and no partial sums meet in workgroup memory. Dispatch: (ceil(m / RWG) folded, n).
// - tiled: prompt rows (shaders/matmul_tiled.wgsl, appended to this file, as kquant.wgsl is).
// - moe_matvec, moe_matvec_rows: the expert matmul's rows (shaders/moe_matmul.wgsl, appended
//   to this file in its own module), through the same lane_dot and row_dot.

struct Params {
    n: u32,
    k: u32,
    m: u32,
    out_stride: u32,
    out_off: u32,
    has_bias: u32,
    d_off: u32,
    m_off: u32,
    row0: u32,
    // shaders/moe_matmul.wgsl's (0 for a plain product): slots per token, whether x has a row
    // per slot, the experts, and the rows of the stacked [experts * m, k] weight this part
    // holds (w_row0..w_row0 + w_rows).
    slots: u32,
    x_per_slot: u32,
    experts: u32,
    w_row0: u32,
    w_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// The weight's dtype, a DT_* number (shaders/kquant.wgsl, appended to this file, defines them
// and reads the GGUF block types). f16 and bf16: two per word, low half first.
override DTYPE: u32 = 0u;
// Invocations per weight row in matvec: a power of two dividing 256.
override TPR: u32 = 64u;

const WG: u32 = 256u;

fn half_at(word_off: u32, i: u32) -> f32 {
    return unpack2x16float(w[word_off + i / 2u])[i & 1u];
}

// The two bf16 values of a word (a bf16 is the high half of an f32).
fn bf16x2(word: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

// The weight's words for shaders/kquant.wgsl (appended to this file).
fn kword(i: u32) -> u32 {
    return w[i];
}

// Flat element e of the weight, exactly as the CPU reference computes it.
fn value(e: u32) -> f32 {
    if DTYPE >= DT_Q4_K {
        return kvalue_at(e);
    }
    switch DTYPE {
        case DT_F32: {
            return bitcast<f32>(w[e]);
        }
        case DT_F16: {
            return half_at(0u, e);
        }
        case DT_BF16: {
            return bf16x2(w[e / 2u])[e & 1u];
        }
        case DT_Q8_0: {
            let q = bitcast<i32>(w[e / 4u] << (24u - 8u * (e % 4u))) >> 24u;
            return half_at(p.d_off, e / 32u) * f32(q);
        }
        case DT_Q4_0: {
            let q = (w[e / 8u] >> (4u * (e % 8u))) & 15u;
            return half_at(p.d_off, e / 32u) * (f32(q) - 8.0);
        }
        default: {
            let q = (w[e / 8u] >> (4u * (e % 8u))) & 15u;
            return half_at(p.d_off, e / 32u) * f32(q) + half_at(p.m_off, e / 32u);
        }
    }
}

fn nibbles(word: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>(f32((word >> shift) & 15u), f32((word >> (shift + 4u)) & 15u),
                     f32((word >> (shift + 8u)) & 15u), f32((word >> (shift + 12u)) & 15u));
}

fn bytes_i8(word: u32) -> vec4<f32> {
    let v = bitcast<vec4<i32>>(vec4<u32>(word << 24u, word << 16u, word << 8u, word)) >> vec4<u32>(24u);
    return vec4<f32>(v);
}

// Weights g..g+8 (g a multiple of 8, so one block) as two vec4 of (lo, hi) values.
// For Q4_0/Q4_1 the raw nibbles come back and `scale` carries (d, m or -8 d).
struct Group {
    lo: vec4<f32>,
    hi: vec4<f32>,
    d: f32,
    m: f32,
}

fn group(g: u32) -> Group {
    var r: Group;
    r.d = 1.0;
    r.m = 0.0;
    if is_q5() {
        // Q5_0 / Q5_1: 8 elements of one block, (d, -16 d) or (d, m) as the scale.
        let base = (g / 32u) * 24u;
        r.d = whalf(base);
        r.m = select(-16.0 * r.d, whalf(base + 2u), DTYPE == DT_Q5_1);
        r.lo = q5_levels(base, g % 32u);
        r.hi = q5_levels(base, g % 32u + 4u);
        return r;
    }
    if DTYPE >= DT_Q4_K {
        // 8 elements of one sub-block: levels from two words, (dl, -ml) as the scale.
        let k = kquant((g / kelems()) * kstride(), g % kelems());
        r.d = k.dl;
        r.m = -k.ml;
        let lw = k.lo_byte / 4u;
        let hw = k.hi_byte / 4u;
        r.lo = klevels(w[lw], w[hw], k);
        r.hi = klevels(w[lw + 1u], w[hw + 1u], k);
        return r;
    }
    switch DTYPE {
        case DT_F32: {
            r.lo = vec4<f32>(bitcast<f32>(w[g]), bitcast<f32>(w[g + 1u]), bitcast<f32>(w[g + 2u]), bitcast<f32>(w[g + 3u]));
            r.hi = vec4<f32>(bitcast<f32>(w[g + 4u]), bitcast<f32>(w[g + 5u]), bitcast<f32>(w[g + 6u]), bitcast<f32>(w[g + 7u]));
        }
        case DT_F16: {
            let i = g / 2u;
            r.lo = vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u]));
            r.hi = vec4<f32>(unpack2x16float(w[i + 2u]), unpack2x16float(w[i + 3u]));
        }
        case DT_BF16: {
            let i = g / 2u;
            r.lo = vec4<f32>(bf16x2(w[i]), bf16x2(w[i + 1u]));
            r.hi = vec4<f32>(bf16x2(w[i + 2u]), bf16x2(w[i + 3u]));
        }
        case DT_Q8_0: {
            r.d = half_at(p.d_off, g / 32u);
            r.lo = bytes_i8(w[g / 4u]);
            r.hi = bytes_i8(w[g / 4u + 1u]);
        }
        case DT_Q4_0: {
            let word = w[g / 8u];
            r.d = half_at(p.d_off, g / 32u);
            r.m = -8.0 * r.d;
            r.lo = nibbles(word, 0u);
            r.hi = nibbles(word, 16u);
        }
        default: {
            let word = w[g / 8u];
            r.d = half_at(p.d_off, g / 32u);
            r.m = half_at(p.m_off, g / 32u);
            r.lo = nibbles(word, 0u);
            r.hi = nibbles(word, 16u);
        }
    }
    return r;
}

fn xvec4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

var<workgroup> red: array<f32, WG>;

// Lane `lane` (of TPR) of weight row r's dot product with x[x0..x0 + k]: its share of the
// whole groups of 8, dequantized in registers, and of a head or tail cut mid-group.
fn lane_dot(r: u32, x0: u32, lane: u32) -> f32 {
    var acc = 0.0;
    let e0 = r * p.k;
    let e1 = e0 + p.k;
    let g0 = min((e0 + 7u) & ~7u, e1); // first whole group of 8
    let g1 = max(e1 & ~7u, g0);         // end of the whole groups
    let xr = x0 - e0;                   // x index of weight element e is xr + e (mod 2^32)
    for (var g = g0 + 8u * lane; g < g1; g += 8u * TPR) {
        let q = group(g);
        let xl = xvec4(xr + g);
        let xh = xvec4(xr + g + 4u);
        // d * sum(q x) + m * sum(x): one multiply by the scale per group.
        let qx = dot(q.lo, xl) + dot(q.hi, xh);
        let sx = dot(xl + xh, vec4<f32>(1.0));
        acc += q.d * qx + q.m * sx;
    }
    // A row starting or ending mid-group: element by element.
    let head = g0 - e0;
    let tail = e1 - g1;
    if lane < head + tail {
        let e = select(g1 + (lane - head), e0 + lane, lane < head);
        acc += value(e) * x[xr + e];
    }
    return acc;
}

// The sum of the TPR lanes' partials of each row of the workgroup (a tree in workgroup
// memory): valid in the row's lane 0. Every invocation of the workgroup must call it.
fn lanes_sum(lid: u32, acc: f32) -> f32 {
    let lane = lid % TPR;
    red[lid] = acc;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    return red[lid];
}

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let rpw = WG / TPR;
    let r = (wid.x + wid.y * nwg.x) * rpw + lid / TPR;
    let lane = lid % TPR;
    let t = p.row0 + wid.z; // the token
    var acc = 0.0;
    if r < p.m {
        acc = lane_dot(r, t * p.k, lane);
    }
    let sum = lanes_sum(lid, acc);
    if lane == 0u && r < p.m {
        var b = 0.0;
        if p.has_bias != 0u {
            b = bias[p.out_off + r];
        }
        out[t * p.out_stride + p.out_off + r] = sum + b;
    }
}

// Rows (invocations) per workgroup in matvec_rows.
override RWG: u32 = 64u;

// Sum of x[xi..xi + 8] times the 8 nibbles of `word`: (sum q x, sum x).
fn dot_nibbles(word: u32, xi: u32) -> vec2<f32> {
    let xl = xvec4(xi);
    let xh = xvec4(xi + 4u);
    return vec2<f32>(dot(nibbles(word, 0u), xl) + dot(nibbles(word, 16u), xh), dot(xl + xh, vec4<f32>(1.0)));
}

// Block `blk` (32 weights, flat elements 32 blk..) dotted with x[xi..xi + 32].
fn block_dot(blk: u32, xi: u32) -> f32 {
    switch DTYPE {
        case DT_F32: {
            var acc = 0.0;
            for (var j = 0u; j < 32u; j += 4u) {
                let i = blk * 32u + j;
                acc += dot(bitcast<vec4<f32>>(vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u])), xvec4(xi + j));
            }
            return acc;
        }
        case DT_F16: {
            var acc = 0.0;
            for (var j = 0u; j < 32u; j += 4u) {
                let i = blk * 16u + j / 2u;
                acc += dot(vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u])), xvec4(xi + j));
            }
            return acc;
        }
        case DT_BF16: {
            var acc = 0.0;
            for (var j = 0u; j < 32u; j += 4u) {
                let i = blk * 16u + j / 2u;
                acc += dot(vec4<f32>(bf16x2(w[i]), bf16x2(w[i + 1u])), xvec4(xi + j));
            }
            return acc;
        }
        case DT_Q8_0: {
            let i = blk * 8u;
            var qx = 0.0;
            for (var j = 0u; j < 8u; j++) {
                qx += dot(bytes_i8(w[i + j]), xvec4(xi + 4u * j));
            }
            return half_at(p.d_off, blk) * qx;
        }
        default: {
            let i = blk * 4u;
            let s = dot_nibbles(w[i], xi) + dot_nibbles(w[i + 1u], xi + 8u)
                  + dot_nibbles(w[i + 2u], xi + 16u) + dot_nibbles(w[i + 3u], xi + 24u);
            let d = half_at(p.d_off, blk);
            var m = -8.0 * d;
            if DTYPE == DT_Q4_1 {
                m = half_at(p.m_off, blk);
            }
            return d * s.x + m * s.y;
        }
    }
}

// Weight row r's dot product with x[x0..x0 + k], block by block (k % 32 == 0).
fn row_dot(r: u32, x0: u32) -> f32 {
    let nb = p.k / 32u;
    let b0 = r * nb;
    var acc = 0.0;
    for (var b = 0u; b < nb; b++) {
        acc += block_dot(b0 + b, x0 + 32u * b);
    }
    return acc;
}

@compute @workgroup_size(RWG)
fn matvec_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * RWG + lid;
    let t = p.row0 + wid.z; // the token
    if r >= p.m {
        return;
    }
    let acc = row_dot(r, t * p.k);
    var bv = 0.0;
    if p.has_bias != 0u {
        bv = bias[p.out_off + r];
    }
    out[t * p.out_stride + p.out_off + r] = acc + bv;
}

enable f16;

// out = x @ w^T (+ bias) for f16 weights read as native f16 (adapters with shader-f16).
// Same shapes, parameters and dispatch as matmul.wgsl's matvec (decode rows) and tiled
// (prompt rows), with the same batch invariance (see there): x: [.., k] f32; w: [m, k] f16;
// bias: [out_off + m] f32; out: [.., out_stride] f32; token rows row0..row0 + n.

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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f16>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// Invocations per weight row in matvec: a power of two dividing 256.
override TPR: u32 = 64u;

const WG: u32 = 256u;

fn value(e: u32) -> f32 {
    return f32(w[e]);
}

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
    r.lo = vec4<f32>(vec4<f16>(w[g], w[g + 1u], w[g + 2u], w[g + 3u]));
    r.hi = vec4<f32>(vec4<f16>(w[g + 4u], w[g + 5u], w[g + 6u], w[g + 7u]));
    return r;
}

fn xvec4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let rpw = WG / TPR;
    let r = (wid.x + wid.y * nwg.x) * rpw + lid / TPR;
    let lane = lid % TPR;
    let t = p.row0 + wid.z; // the token
    var acc = 0.0;
    if r < p.m {
        let e0 = r * p.k;
        let e1 = e0 + p.k;
        let g0 = min((e0 + 7u) & ~7u, e1); // first whole group of 8
        let g1 = max(e1 & ~7u, g0);         // end of the whole groups
        let xr = t * p.k - e0;              // x index of weight element e is xr + e
        // Whole groups: 8 weights dequantized in registers.
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
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    if lane == 0u && r < p.m {
        var b = 0.0;
        if p.has_bias != 0u {
            b = bias[p.out_off + r];
        }
        out[t * p.out_stride + p.out_off + r] = red[lid] + b;
    }
}

const TILE: u32 = 64u;
const BK: u32 = 16u;
var<workgroup> xs: array<f32, 1024>; // [TILE tokens][BK]
var<workgroup> ws: array<f32, 1024>; // [TILE rows][BK]

@compute @workgroup_size(16, 16)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let r0 = wid.x * TILE;
    let t0 = wid.y * TILE;
    // acc_i[j]: token lid3.y + 16 i, weight row lid3.x + 16 j.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var c = 0u; c < 4u; c++) {
            let idx = lid + WG * c;
            let row = idx / BK;
            let kk = k0 + idx % BK;
            var xv = 0.0;
            if t0 + row < p.n && kk < p.k {
                xv = x[(p.row0 + t0 + row) * p.k + kk];
            }
            xs[idx] = xv;
            var wv = 0.0;
            if r0 + row < p.m && kk < p.k {
                wv = value((r0 + row) * p.k + kk);
            }
            ws[idx] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let b = vec4<f32>(ws[lid3.x * BK + kk], ws[(lid3.x + 16u) * BK + kk],
                              ws[(lid3.x + 32u) * BK + kk], ws[(lid3.x + 48u) * BK + kk]);
            acc0 += xs[lid3.y * BK + kk] * b;
            acc1 += xs[(lid3.y + 16u) * BK + kk] * b;
            acc2 += xs[(lid3.y + 32u) * BK + kk] * b;
            acc3 += xs[(lid3.y + 48u) * BK + kk] * b;
        }
        workgroupBarrier();
    }
    store(t0 + lid3.y, r0 + lid3.x, acc0);
    store(t0 + lid3.y + 16u, r0 + lid3.x, acc1);
    store(t0 + lid3.y + 32u, r0 + lid3.x, acc2);
    store(t0 + lid3.y + 48u, r0 + lid3.x, acc3);
}

// Token row0 + t, weight rows r, r + 16, r + 32, r + 48.
fn store(t: u32, r: u32, acc: vec4<f32>) {
    if t >= p.n {
        return;
    }
    let o = (p.row0 + t) * p.out_stride + p.out_off;
    for (var j = 0u; j < 4u; j++) {
        let row = r + 16u * j;
        if row < p.m {
            var b = 0.0;
            if p.has_bias != 0u {
                b = bias[p.out_off + row];
            }
            out[o + row] = acc[j] + b;
        }
    }
}

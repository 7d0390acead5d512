enable f16;

// out = x @ w^T (+ bias) for f16 weights read as native f16 (adapters with shader-f16).
// Same shapes, parameters and dispatch as matmul.wgsl's matvec (decode rows) and tiled
// (prompt rows: shaders/matmul_tiled.wgsl, appended to this file as to matmul.wgsl), with the
// same batch invariance (see there): x: [.., k] f32; w: [m, k] f16;
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

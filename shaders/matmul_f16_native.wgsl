enable f16;

// out = x @ w^T (+ bias) for f16 weights read as native f16 (adapters with shader-f16).
// Same shapes, parameters, entry points and dispatch as matmul.wgsl (see there):
// x: [n, k] f32; w: [m, k] f16; bias: [out_off + m] f32; out: [n, out_stride] f32.

struct Params {
    n: u32,
    k: u32,
    m: u32,
    out_stride: u32,
    out_off: u32,
    has_bias: u32,
    d_off: u32,
    m_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f16>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override TPR: u32 = 64u;

const WG: u32 = 256u;
const MAXN: u32 = 8u;

var<workgroup> red: array<f32, 2048>; // [MAXN][WG]

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let rpw = WG / TPR;
    let r = (wid.x + wid.y * nwg.x) * rpw + lid / TPR;
    let lane = lid % TPR;
    let n = min(p.n, MAXN);
    var acc: array<f32, 8>;
    for (var t = 0u; t < MAXN; t++) {
        acc[t] = 0.0;
    }
    if r < p.m {
        let e0 = r * p.k;
        let e1 = e0 + p.k;
        let g0 = min((e0 + 3u) & ~3u, e1);
        let g1 = max(e1 & ~3u, g0);
        for (var g = g0 + 4u * lane; g < g1; g += 4u * TPR) {
            let wv = vec4<f32>(vec4<f16>(w[g], w[g + 1u], w[g + 2u], w[g + 3u]));
            for (var t = 0u; t < n; t++) {
                let xi = t * p.k + (g - e0);
                acc[t] += dot(wv, vec4<f32>(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u]));
            }
        }
        let head = g0 - e0;
        let tail = e1 - g1;
        if lane < head + tail {
            let e = select(g1 + (lane - head), e0 + lane, lane < head);
            let v = f32(w[e]);
            for (var t = 0u; t < n; t++) {
                acc[t] += v * x[t * p.k + (e - e0)];
            }
        }
    }
    for (var t = 0u; t < MAXN; t++) {
        red[t * WG + lid] = acc[t];
    }
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            for (var t = 0u; t < n; t++) {
                red[t * WG + lid] += red[t * WG + lid + s];
            }
        }
        workgroupBarrier();
    }
    if lane == 0u && r < p.m {
        var b = 0.0;
        if p.has_bias != 0u {
            b = bias[p.out_off + r];
        }
        for (var t = 0u; t < n; t++) {
            out[t * p.out_stride + p.out_off + r] = red[t * WG + lid] + b;
        }
    }
}

const TILE: u32 = 64u;
const BK: u32 = 16u;
var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let r0 = wid.x * TILE;
    let t0 = wid.y * TILE;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var c = 0u; c < 4u; c++) {
            let idx = lid + WG * c;
            let row = idx / BK;
            let kk = k0 + idx % BK;
            var xv = 0.0;
            if t0 + row < p.n && kk < p.k {
                xv = x[(t0 + row) * p.k + kk];
            }
            xs[idx] = xv;
            var wv = 0.0;
            if r0 + row < p.m && kk < p.k {
                wv = f32(w[(r0 + row) * p.k + kk]);
            }
            ws[idx] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(lid3.y + 16u * i) * BK + kk];
                b[i] = ws[(lid3.x + 16u * i) * BK + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + lid3.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let r = r0 + lid3.x + 16u * j;
            if t < p.n && r < p.m {
                var b = 0.0;
                if p.has_bias != 0u {
                    b = bias[p.out_off + r];
                }
                out[t * p.out_stride + p.out_off + r] = acc[i][j] + b;
            }
        }
    }
}

// The tiled kernel of prompt rows, shared by matmul.wgsl and matmul_f16_native.wgsl (appended
// to each: they define Params p, x, bias, out, WG and value(e), the weight's flat element e).
// 64 tokens x 64 weight rows per workgroup, k in steps of 16 through workgroup memory, 4 x 4
// outputs per invocation; a token's sum runs over k in the same order in every tile, whatever
// n and row0 are (batch invariance). Dispatch: (ceil(m / 64), ceil(n / 64)).

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

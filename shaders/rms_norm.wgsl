// out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight, one workgroup per row of dim values.
// x, out: [n, dim]; weight: [dim]. Dispatch: (n, 1, 1).

struct Params {
    dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.dim;
    var ss = 0.0;
    for (var j = lid; j < p.dim; j += WG) {
        let v = x[base + j];
        ss += v * v;
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(p.dim) + p.eps);
    for (var j = lid; j < p.dim; j += WG) {
        out[base + j] = x[base + j] * scale * weight[j];
    }
}

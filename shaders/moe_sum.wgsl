// The experts' outputs mixed: out[t, d] = sum over j in 0..slots, in that order from 0, of
// weights[t, j] * y[t, j, d]. y: [n, slots, dim]; weights: [n, slots]; out: [n, dim].
// One invocation per output element; total = n * dim.
// Dispatch: ceil(total / WG) workgroups, folded into x and y when above 65535.

struct Params {
    total: u32,
    slots: u32,
    dim: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= p.total {
        return;
    }
    let t = i / p.dim;
    let d = i % p.dim;
    var acc = 0.0;
    for (var j = 0u; j < p.slots; j++) {
        let r = t * p.slots + j;
        acc += weights[r] * y[r * p.dim + d];
    }
    out[i] = acc;
}

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise over len values.

struct Params {
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i < p.len {
        let g = gate[i];
        // exp(-g) overflows to inf for very negative g: g / inf = -0, the right limit.
        out[i] = g / (1.0 + exp(-g)) * up[i];
    }
}

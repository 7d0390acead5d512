// Soft-capping in place: x[i] = cap * tanh(x[i] / cap) for i < len (Gemma 2's final logits).
// tanh_f32: shaders/tanh.wgsl, appended to this file.
// Dispatch: ceil(len / WG) workgroups, folded into x and y when above 65535.

struct Params {
    len: u32,
    cap: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i < p.len {
        x[i] = p.cap * tanh_f32(x[i] / p.cap);
    }
}
